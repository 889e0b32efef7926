//! areaDetector file semantics as the readers see them: a live SWMR reader, a writer killed
//! mid-run, a full disk, the complete default layout (golden file) and NeXus validity.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_swmr_reader_sees_the_frame_count_grow() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live_0001.h5");
    // The reader starts first and says when it is ready (Python and h5py imported: seconds on
    // a loaded machine), so the 3.2 s run cannot be over before it looks.
    let mut reader = common::command(common::python())
        .arg("-c")
        .arg(
            r#"
import sys, time, json
import numpy as np, h5py
path, deadline = sys.argv[1], time.monotonic() + 60
print("ready", flush=True)
f, last = None, None
while f is None:
    try:
        f = h5py.File(path, "r", swmr=True)
        d = f["/entry/instrument/detector/data"]
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"]
    except (OSError, KeyError) as e:  # not there yet, or not yet open for SWMR
        if f is not None:
            f.close()
        f, last = None, e
        if time.monotonic() > deadline:
            sys.exit("%s never opened for SWMR reading: %r" % (path, last))
        time.sleep(0.01)
seen = []
while time.monotonic() < deadline:
    # Dataset.refresh also drops h5py's cached shape. The writer flushes the images, then
    # NDArrayUniqueId last: refresh in the other order, or a flush between the two refreshes
    # shows ids whose frames this reader has not refreshed yet.
    ids.refresh(); d.refresh()
    n, m = d.shape[0], ids.shape[0]
    if m:
        # Every id a reader can see belongs to a frame it can read.
        v = ids[:m]
        assert (np.diff(v) == 1).all(), v
        assert d[m - 1].any(), "frame %d is visible by id but empty" % (m - 1)
    if not seen or seen[-1] != (n, m):
        seen.append((n, m))
    if n == 80 and m == 80:
        break
    time.sleep(0.02)
print(json.dumps(seen))
"#,
        )
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(reader.stdout.take().unwrap()).lines();
    let mut reader_failed = |what: &str| -> ! {
        let _ = reader.wait();
        let mut err = String::new();
        reader.stderr.take().unwrap().read_to_string(&mut err).ok();
        panic!("the SWMR reader {what}: {err}")
    };
    if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
        reader_failed("did not start");
    }
    let child = common::detflow()
        .args([
            "acquire", "--frames", "80", "--size", "64x48", "--period", "0.04", "--swmr",
            "--flush", "2", "--name", "live", "--json", "--path",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(Ok(seen)) = lines.next() else {
        reader_failed("failed")
    };
    assert!(reader.wait().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<(u64, u64)> = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(
        seen.last(),
        Some(&(80, 80)),
        "the reader ends by seeing every frame: {seen:?}"
    );
    let partial: Vec<_> = seen.iter().filter(|(n, _)| *n > 0 && *n < 80).collect();
    assert!(
        partial.len() >= 3,
        "the count should be seen growing during the run: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "the count never shrinks: {seen:?}"
    );
}

#[test]
fn a_killed_swmr_writer_leaves_every_flushed_frame_readable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("killed_0001.h5");
    let mut child = common::detflow()
        .args([
            "acquire", "--frames", "0", "--size", "64x48", "--period", "0.01", "--swmr", "--flush",
            "5", "--name", "killed", "--path",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&file);
    // Kill only once a reader has seen at least 10 flushed frames, however slow the machine.
    let flushed = swmr_frames_at_least(&file, 10);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run (--frames 0) was still going when killed"
    );
    child.kill().unwrap(); // SIGKILL: no chance to close
    child.wait().unwrap();
    let out = common::run_python(
        r#"
import sys, numpy as np, h5py
f = h5py.File(sys.argv[1], "r", swmr=True)
d = f["/entry/instrument/detector/data"]
ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
n = len(ids)
assert n >= int(sys.argv[2]), (n, sys.argv[2])
assert list(ids) == list(range(1, n + 1)), ids
assert d.shape[0] >= n
assert all(d[k].any() for k in range(n)), "a frame with an id is empty"
print(n)
"#,
        &[&file, Path::new(&flushed.to_string())],
    );
    let kept: u64 = out.trim().parse().unwrap();
    assert!(
        kept >= flushed && kept >= 10,
        "a live reader saw {flushed} flushed frames, the killed file keeps {kept}"
    );
}

/// Run `detflow` inside a private mount namespace on a tmpfs of `size`, which fills up.
fn acquire_on_small_disk(size: &str, frames: u32) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs {m} && {bin} acquire --frames {frames} --size 64x64 --path {m} --json; \
         rc=$?; cp -a {m}/. {d}/ 2>/dev/null; exit $rc",
        m = mount.display(),
        d = dir.path().display(),
        bin = env!("CARGO_BIN_EXE_detflow"),
    );
    let out = common::command("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare runs (util-linux)");
    (out, dir)
}

#[test]
fn a_full_disk_stops_the_capture_with_every_written_frame_readable() {
    let (out, dir) = acquire_on_small_disk("8m", 5000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("mount:"),
        "this test needs a private mount namespace (root): {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a write failure exits 1: {stderr}"
    );
    let s = common::summary(&out);
    let written = s["frames_written"].as_u64().unwrap();
    let acquired = s["frames_acquired"].as_u64().unwrap();
    let dropped = s["frames_dropped"].as_u64().unwrap();
    assert!(written > 10 && written < 5000, "{s}");
    assert_eq!(acquired, written + dropped, "{s}");
    assert!(s["error"].as_str().unwrap().contains("disk full"), "{s}");
    let file = dir.path().join("detflow_0001.h5");
    let n = common::run_python(
        r#"
import sys, h5py
f = h5py.File(sys.argv[1], "r", swmr=True)
d = f["/entry/instrument/detector/data"]
ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
assert d.shape[0] == len(ids), (d.shape, len(ids))
assert list(ids) == list(range(1, len(ids) + 1))
assert d[-1].any(), "the last frame is empty"
print(d.shape[0])
"#,
        &[&file],
    );
    assert_eq!(
        n.trim().parse::<u64>().unwrap(),
        written,
        "the file holds exactly frames_written"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("reserve"))
        .collect();
    assert!(left.is_empty(), "the space reserve is released: {left:?}");
}

#[test]
fn too_little_space_is_refused_before_any_frame() {
    let (out, dir) = acquire_on_small_disk("700k", 5000);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("path") && stderr.contains("reserve"),
        "{stderr}"
    );
    assert!(!dir.path().join("detflow_0001.h5").exists());
}

const DUMP: &str = r#"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
skip = {"hostname"}
def fmt(v):
    if isinstance(v, bytes): return v.decode()
    if isinstance(v, np.ndarray): return "[" + ",".join(str(x) for x in v.tolist()) + "]"
    return str(v)
def attrs(o):
    return " ".join("@%s=%s" % (k, fmt(o.attrs[k])) for k in sorted(o.attrs) if k not in skip)
lines = ["/ " + attrs(f)]
def visit(name, o):
    link = f.get(name, getlink=True).__class__.__name__
    if isinstance(o, h5py.Dataset):
        lines.append("%s dataset %s %s max=%s chunks=%s %s %s" % (name, o.dtype, o.shape, o.maxshape, o.chunks, link, attrs(o)))
    else:
        lines.append("%s group %s" % (name, attrs(o)))
names = []
f.visit(names.append)
for n in sorted(set(names) | {"entry/data/data", "entry/instrument/detector/data"}):
    visit(n, f[n])
print("\n".join(lines))
"#;

#[test]
fn the_default_layout_matches_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--frames",
        "5",
        "--size",
        "40x30",
        "--dtype",
        "u16",
        "--name",
        "golden",
        "--path",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = common::run_python(DUMP, &[&dir.path().join("golden_0001.h5")]);
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/default_layout.txt");
    if std::env::var_os("DETFLOW_BLESS").is_some() {
        std::fs::write(&golden_path, &got).unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path)
        .expect("tests/golden/default_layout.txt (DETFLOW_BLESS=1 writes it)");
    assert_eq!(
        got, golden,
        "the file layout changed; if on purpose, rerun with DETFLOW_BLESS=1 and review the diff"
    );
}

#[test]
fn nexus_readers_find_the_image_through_default_and_signal() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--frames",
        "3",
        "--size",
        "40x30",
        "--name",
        "nx",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = common::run_python(
        r#"
import sys
from nexusformat.nexus import nxload
root = nxload(sys.argv[1])
data = root.plottable_data
assert data is not None, "no plottable data"
signal = data.nxsignal
assert signal.nxpath == "/entry/data/data", signal.nxpath
assert tuple(signal.shape) == (3, 30, 40), signal.shape
assert root["entry"].nxclass == "NXentry"
assert root["entry/instrument/detector"].nxclass == "NXdetector"
print("ok")
"#,
        &[&dir.path().join("nx_0001.h5")],
    );
    assert_eq!(got.trim(), "ok");
}

#[test]
fn write_modes_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap();
    // Single: one (H, W) file per frame; the summary lists them and the next number.
    let out = common::run(&[
        "acquire",
        "--frames",
        "3",
        "--size",
        "8x6",
        "--write-mode",
        "single",
        "--name",
        "one",
        "--path",
        p,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    assert_eq!(s["files"].as_array().unwrap().len(), 3);
    assert_eq!(s["file_number"], 4);
    assert_eq!(
        s["full_file_name"],
        dir.path().join("one_0003.h5").to_str().unwrap()
    );
    // Stream with frames per file, a temp suffix and no auto increment refusing to overwrite.
    let out = common::run(&[
        "acquire",
        "--frames",
        "7",
        "--size",
        "8x6",
        "--frames-per-file",
        "3",
        "--temp-suffix",
        ".tmp",
        "--name",
        "roll",
        "--path",
        p,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    assert_eq!(s["files"].as_array().unwrap().len(), 3, "{s}");
    assert!(!dir.path().join("roll_0001.h5.tmp").exists());
    let out = common::run(&[
        "acquire", "--frames", "2", "--size", "8x6", "--name", "roll", "--path", p,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    // Capture mode with --capture smaller than --frames: the detector stops at the capture.
    let out = common::run(&[
        "acquire",
        "--frames",
        "10",
        "--capture",
        "4",
        "--size",
        "8x6",
        "--write-mode",
        "capture",
        "--name",
        "cap",
        "--path",
        p,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    assert_eq!(
        (s["frames_acquired"].as_u64(), s["frames_written"].as_u64()),
        (Some(4), Some(4))
    );
    // Directory creation with strftime codes.
    let out = common::run(&[
        "acquire",
        "--frames",
        "1",
        "--size",
        "8x6",
        "--create-dirs",
        "-2",
        "--name",
        "dated",
        "--path",
        &format!("{p}/%Y/%m"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    let f = s["files"][0].as_str().unwrap();
    assert!(!f.contains('%') && Path::new(f).exists(), "{f}");
    // Without --create-dirs a missing directory is refused before anything is written.
    let out = common::run(&[
        "acquire",
        "--frames",
        "1",
        "--size",
        "8x6",
        "--path",
        &format!("{p}/nope"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid path"));
}

#[test]
fn sigusr1_flushes_now_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fnow_0001.h5");
    // The references file gets one line per frame as it is written: the run's own account of
    // its progress. --frames 0: the run goes on until SIGINT, however loaded the machine.
    let refs = dir.path().join("fnow.refs");
    let mut child = common::detflow()
        .args([
            "acquire",
            "--frames",
            "0",
            "--size",
            "32x24",
            "--period",
            "0.01",
            "--swmr",
            "--no-flush",
            "--name",
            "fnow",
            "--json",
            "--refs",
        ])
        .arg(&refs)
        .arg("--path")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&file);
    let before = common::wait_for_lines(&refs, 20, "frames written before SIGUSR1");
    // SAFETY: kill(2) only sends a signal to the child's pid, alive until waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let seen = swmr_frames_at_least(&file, before);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run stopped: SIGUSR1 must flush without stopping"
    );
    // Nothing flushes again before close (--no-flush), and the run keeps writing.
    let later = common::wait_for_lines(&refs, seen + 10, "frames written after the flush");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run stopped after the flush"
    );
    // SAFETY: kill(2) only sends a signal to the child's pid, alive until waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGINT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = common::summary(&out)["frames_written"].as_u64().unwrap();
    assert!(
        seen >= before && seen < written && later <= written,
        "after SIGUSR1 a reader sees the {before} frames written so far (saw {seen}), \
         and the run goes on ({later} written later, {written} in all)"
    );
    assert_eq!(common::lines_in(&refs), written);
    assert_eq!(swmr_frames_at_least(&file, written), written);
}

#[test]
fn store_attributes_and_performance_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--frames",
        "3",
        "--size",
        "8x6",
        "--no-attributes",
        "--no-performance",
        "--name",
        "bare",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = common::run_python(
        r#"
import sys, h5py
f = h5py.File(sys.argv[1], "r")
assert "NDAttributes" not in f["/entry/instrument"], list(f["/entry/instrument"])
assert "NDAttributes" not in f["/entry/instrument/detector"]
assert "performance" not in f["/entry/instrument"]
assert f["/entry/data/data"].shape == (3, 6, 8)
print("ok")
"#,
        &[&dir.path().join("bare_0001.h5")],
    );
    assert_eq!(got.trim(), "ok");
}

/// Another process reads frames in place from the ring's shared memory while an acquisition
/// runs; the frame it reports is the one the file holds.
#[test]
fn a_second_process_reads_frames_from_the_shared_ring_during_acquisition() {
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("ring.shm");
    let mut child = common::detflow()
        .args([
            "acquire",
            "--frames",
            "0",
            "--size",
            "64x48",
            "--period",
            "0.02",
            "--name",
            "shm",
            "--json",
            "--ring-shm",
        ])
        .arg(&shm)
        .arg("--path")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&dir.path().join("shm_0001.h5"));
    // The reader waits for a first complete frame itself, with a deadline.
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shm_reader.py");
    let out = common::command(common::python())
        .arg(&reader)
        .arg(&shm)
        .args(["--timeout", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shm_reader.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "read while running (--frames 0 runs until SIGINT): {line}"
    );
    // SAFETY: kill(2) only sends a signal to the child's pid, alive until waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let run = child.wait_with_output().unwrap();
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGINT),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = common::summary(&run)["frames_written"].as_u64().unwrap();

    let id = line["frame_id"].as_u64().unwrap();
    assert!((1..=written).contains(&id), "{written} written: {line}");
    assert_eq!(line["shape"], serde_json::json!([48, 64]));
    assert_eq!(line["dtype"], "uint16");
    let sum_in_file = common::run_python(
        r#"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
k = int(np.nonzero(ids == int(sys.argv[2]))[0][0])
print(int(f["/entry/data/data"][k].astype(np.int64).sum()))
"#,
        &[&dir.path().join("shm_0001.h5"), Path::new(&id.to_string())],
    );
    assert_eq!(
        line["sum"].as_u64().unwrap(),
        sum_in_file.trim().parse::<u64>().unwrap(),
        "{line}"
    );
}

fn interrupt(child: &std::process::Child) {
    // SAFETY: kill() takes no pointers; the child has not been waited for, so its pid is ours.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// A first run writes `same_0001.h5`; a second run of the same file with `--overwrite` is
/// refused before it touches it, and the first run's file reads back whole.
fn a_second_writer_is_refused(swmr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("same_0001.h5");
    let args = |frames: &'static str| {
        [
            "acquire", "--frames", frames, "--size", "256x256", "--period", "0.01", "--name",
            "same", swmr, "--json", "--path",
        ]
    };
    let first = common::detflow()
        .args(args("0"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_size(&file, 10 * 256 * 256 * 2);
    let second = common::detflow()
        .args(args("200"))
        .arg(dir.path())
        .arg("--overwrite")
        .output()
        .unwrap();
    interrupt(&first);
    let first_pid = first.id();
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second writer must be refused: {stderr}"
    );
    assert!(
        stderr.contains(file.to_str().unwrap())
            && stderr.contains(&format!("being written by pid {first_pid} ")),
        "the refusal names the file and its writer: {stderr}"
    );
    let s = common::summary(&out);
    assert!(s["error"].is_null(), "{s}");
    let written = s["frames_written"].as_u64().unwrap() as usize;
    assert!(written >= 10, "{s}");
    let f = hdf5::File::open(&file).unwrap();
    let data = f.dataset("/entry/instrument/detector/data").unwrap();
    assert_eq!(data.shape(), vec![written, 256, 256]);
    let ids: Vec<i32> = f
        .dataset("/entry/instrument/NDAttributes/NDArrayUniqueId")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(ids, (1..=written as i32).collect::<Vec<_>>());
    let pixels: Vec<u16> = data.read_raw().unwrap();
    for (k, frame) in pixels.chunks(256 * 256).enumerate() {
        assert!(
            frame.iter().any(|&p| p != 0),
            "frame {k} of {written} is empty"
        );
    }
}

#[test]
fn a_second_writer_is_refused_before_it_touches_a_no_swmr_file() {
    a_second_writer_is_refused("--no-swmr");
}

#[test]
fn a_second_writer_is_refused_before_it_touches_a_swmr_file() {
    a_second_writer_is_refused("--swmr");
}

#[test]
fn a_file_deleted_mid_run_fails_the_run_and_is_named_lost() {
    for swmr in ["--swmr", "--no-swmr"] {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("X");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("gone_0001.h5");
        let child = common::detflow()
            .args([
                "acquire", "--frames", "300", "--size", "64x48", "--period", "0.02", "--name",
                "gone", swmr, "--json", "--path",
            ])
            .arg(&sub)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_for_size(&file, 5 * 64 * 48 * 2);
        std::fs::remove_dir_all(&sub).unwrap(); // rm -rf X
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{swmr}: a lost file is an error: {stderr}"
        );
        let s = common::summary(&out);
        assert_eq!(s["files_lost"], serde_json::json!([file]), "{swmr}: {s}");
        assert_eq!(s["files"], serde_json::json!([]), "{swmr}: {s}");
        let error = s["error"].as_str().unwrap();
        assert!(
            error.contains("gone_0001.h5") && error.contains("deleted"),
            "{swmr}: {error}"
        );
        assert!(
            s["frames_written"].as_u64().unwrap() < 300,
            "stopped early: {s}"
        );
    }
}

#[test]
fn a_killed_writer_leaves_every_per_frame_dataset_as_long_as_its_flushed_frames() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kill_0001.h5");
    let mut child = common::detflow()
        .args([
            "acquire", "--frames", "0", "--size", "64x48", "--period", "0.002", "--flush", "10",
            "--name", "kill", "--path",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until a reader sees 150 flushed frames: several flushes happened.
    common::run_python(
        r#"
import sys, time, h5py
deadline = time.time() + 60
while True:
    try:
        with h5py.File(sys.argv[1], "r", swmr=True) as f:
            n = len(f["/entry/instrument/NDAttributes/NDArrayUniqueId"])
    except (OSError, KeyError):  # not written far enough yet
        n = 0
    if n >= 150:
        break
    assert time.time() < deadline, "only %d frames flushed after 60 s" % n
    time.sleep(0.05)
"#,
        &[&file],
    );
    child.kill().unwrap(); // SIGKILL: no chance to close
    child.wait().unwrap();
    let rows = common::run_python(
        r#"
import sys, json, numpy as np, h5py
f = h5py.File(sys.argv[1], "r", swmr=True)
ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
n = len(ids)
assert list(ids) == list(range(1, n + 1)), ids
frames = f["/entry/instrument/detector/data"].shape[0]
rows = {name: len(f["/entry/instrument/" + name]) for name in [
    "NDAttributes/NDArrayTimeStamp", "NDAttributes/NDArrayEpicsTSSec",
    "NDAttributes/NDArrayEpicsTSnSec", "performance/timestamp"]}
perf = f["/entry/instrument/performance/timestamp"][()]
since_first = perf[:n, 2]
assert (np.diff(since_first) >= 0).all() and since_first[-1] > 0, since_first
print(json.dumps(dict(ids=n, frames=frames, **rows)))
"#,
        &[&file],
    );
    let rows: serde_json::Value = serde_json::from_str(rows.trim()).unwrap();
    let ids = rows["ids"].as_u64().unwrap();
    let frames = rows["frames"].as_u64().unwrap();
    assert!(ids >= 150, "{rows}");
    // Rows are written performance first and NDArrayUniqueId last, after the image: each
    // per-frame dataset holds at least every frame with an id, and no more than the image.
    for (name, n) in rows.as_object().unwrap() {
        let n = n.as_u64().unwrap();
        assert!(ids <= n && n <= frames, "{name} has {n} rows: {rows}");
    }
}

#[test]
fn a_killed_runs_space_reserve_goes_at_the_next_start_and_a_live_runs_stays() {
    let dir = tempfile::tempdir().unwrap();
    let reserve = |name: &str| dir.path().join(format!(".{name}_0001.h5.detflow-reserve"));
    let spawn = |name: &str| {
        common::detflow()
            .args([
                "acquire", "--frames", "0", "--size", "64x48", "--period", "0.01", "--name", name,
                "--json", "--path",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut killed = spawn("killed");
    let live = spawn("live");
    for name in ["killed", "live"] {
        common::wait_for_size(&dir.path().join(format!("{name}_0001.h5")), 5 * 64 * 48 * 2);
        assert!(
            reserve(name).exists(),
            "{name}: a running writer holds a reserve"
        );
    }
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    assert!(
        reserve("killed").exists(),
        "a killed run cannot remove its reserve"
    );
    let out = common::run(&[
        "acquire",
        "--frames",
        "2",
        "--size",
        "8x6",
        "--name",
        "next",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    let next_ok = out.status.success();
    let (stale_gone, live_kept) = (!reserve("killed").exists(), reserve("live").exists());
    interrupt(&live);
    let live_out = live.wait_with_output().unwrap();
    assert!(next_ok, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stale_gone,
        "the next start in the directory removes the stale reserve"
    );
    assert!(live_kept, "a live writer's reserve is left alone");
    assert!(!reserve("next").exists());
    assert!(common::summary(&live_out)["error"].is_null());
    assert!(
        !reserve("live").exists(),
        "a stopped run removes its reserve"
    );
}

/// Wait until a SWMR reader of `file` sees at least `n` frames (NDArrayUniqueId entries, and
/// as many images); returns the count it saw. Fails after [`common::EVENT_DEADLINE`] with the last
/// count or error.
fn swmr_frames_at_least(file: &Path, n: u64) -> u64 {
    let out = common::run_python(
        r#"
import sys, time, h5py
path, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
last = None
while True:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            m = len(f["/entry/instrument/NDAttributes/NDArrayUniqueId"])
            d = f["/entry/instrument/detector/data"].shape[0]
            last = (m, d)
            if m >= want and d >= m:
                print(m)
                sys.exit(0)
    except (OSError, KeyError) as e:
        last = e
    if time.monotonic() > deadline:
        sys.exit("a SWMR reader never saw %d frames in %s: last (ids, images) %r" % (want, path, last))
    time.sleep(0.02)
"#,
        &[
            file,
            Path::new(&n.to_string()),
            Path::new(&common::EVENT_DEADLINE.as_secs().to_string()),
        ],
    );
    out.trim().parse().unwrap()
}
