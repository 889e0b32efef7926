//! One acquisition from the simulated detector through the ring into an HDF5 file, driven
//! through the binary, with the counts checked against the file. (Runs driven through the
//! engine's API are in `engine/tests/runs.rs`.)

mod common;

fn frames_in(path: &std::path::Path) -> usize {
    let f = hdf5::File::open(path).unwrap();
    let n = f
        .dataset("/entry/instrument/detector/data")
        .unwrap()
        .shape()[0];
    let ids = f
        .dataset("/entry/instrument/NDAttributes/NDArrayUniqueId")
        .unwrap()
        .shape()[0];
    assert_eq!(
        n, ids,
        "image and NDArrayUniqueId lengths differ in {path:?}"
    );
    n
}

#[test]
fn the_cli_summary_is_json_with_the_promised_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--frames",
        "30",
        "--size",
        "80x60",
        "--dtype",
        "u8",
        "--codec",
        "deflate:1",
        "--path",
        dir.path().to_str().unwrap(),
        "--name",
        "cli",
        "--template",
        "%s%s-%03d.h5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no progress bar when not on a terminal: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    for key in [
        "files",
        "frames_acquired",
        "frames_written",
        "frames_dropped",
        "elapsed_s",
        "fps",
        "mb_per_s",
        "codec",
        "compressed_bytes",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    let file = dir.path().join("cli-001.h5");
    assert_eq!(s["files"], serde_json::json!([file.to_str().unwrap()]));
    assert_eq!(s["codec"], "deflate:1");
    assert_eq!(s["frames_written"], 30);
    assert!(s["fps"].as_f64().unwrap() > 0.0);
    assert_eq!(frames_in(&file), 30);
}

fn interrupt(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    // One line per frame as it is written: the run's own account of its progress.
    let refs = dir.path().join("frames.refs");
    let child = common::detflow()
        .args([
            "acquire", "--frames", "0", "--size", "64x64", "--period", "0.005", "--json", "--refs",
        ])
        .arg(&refs)
        .arg("--path")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = dir.path().join("detflow_0001.h5");
    let before = common::wait_for_lines(&refs, 6, "frames written before the signal");
    assert!(file.exists(), "{before} frames written, but no {file:?}");
    // SAFETY: kill(2) only sends a signal to the child's pid, alive until waited for.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + signal),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    let written = s["frames_written"].as_u64().unwrap();
    assert!(
        written >= before,
        "{before} frames were written before the signal, the summary says {written}"
    );
    assert_eq!(
        s["frames_acquired"].as_u64().unwrap(),
        written + s["frames_dropped"].as_u64().unwrap()
    );
    assert_eq!(s["stopped"], "stopped");
    assert_eq!(
        frames_in(&file) as u64,
        written,
        "the file holds exactly the frames written"
    );
}

#[test]
fn sigint_stops_cleanly_and_the_file_holds_what_was_written() {
    interrupt(libc::SIGINT);
}

#[test]
fn sigterm_stops_cleanly_too() {
    interrupt(libc::SIGTERM);
}

/// A writer slower than the detector (one worker on deflate:9, two slots) under each ring
/// policy: the counts add up exactly and the file holds exactly the frames written.
#[test]
fn both_ring_policies_keep_the_counts_exact() {
    for policy in ["block", "drop-newest"] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::run(&[
            "acquire",
            "--frames",
            "80",
            "--size",
            "256x256",
            "--codec",
            "deflate:9",
            "--workers",
            "1",
            "--ring-slots",
            "2",
            "--ring-policy",
            policy,
            "--path",
            dir.path().to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{policy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = common::summary(&out);
        let (acquired, written, dropped) = (
            s["frames_acquired"].as_u64().unwrap(),
            s["frames_written"].as_u64().unwrap(),
            s["frames_dropped"].as_u64().unwrap(),
        );
        assert_eq!(acquired, 80, "{policy}: {s}");
        assert_eq!(acquired, written + dropped, "{policy}: {s}");
        assert_eq!(
            s["ring"]["dropped"].as_u64().unwrap(),
            dropped,
            "{policy}: drops are the ring's: {s}"
        );
        assert_eq!(
            s["ring"]["produced"].as_u64().unwrap(),
            written,
            "{policy}: {s}"
        );
        match policy {
            "block" => assert_eq!(dropped, 0, "block never drops here: {s}"),
            _ => assert!(
                dropped > 0,
                "a two-slot ring before a slow writer drops: {s}"
            ),
        }
        assert_eq!(
            frames_in(&dir.path().join("detflow_0001.h5")) as u64,
            written,
            "{policy}"
        );
        assert!(s["ring"]["high_water"].as_u64().unwrap() <= 2);
    }
}
