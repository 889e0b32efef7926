//! How `detflow acquire` ends on signals: one Ctrl-C (SIGINT) stops cleanly (exit 130, the
//! file closed and complete), a second one during that stop aborts at once (exit 2).

mod common;

use std::io::BufRead as _;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn sigint(child: &Child) {
    // SAFETY: kill() only sends a signal to the child's pid, which is alive (not yet waited).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// The child's stderr, line by line, on a channel (so reads can have a deadline).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, what: &str) {
    let t0 = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(t0.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(what) => return,
            Ok(_) => {}
            Err(e) => panic!("no {what:?} on stderr ({e})"),
        }
    }
}

/// Wait for the child to exit, within the deadline; returns its status and stdout.
fn exit_of(mut child: Child) -> (ExitStatus, String) {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(DEADLINE)
        .expect("detflow did not exit")
        .unwrap();
    (status, reader.join().unwrap())
}

#[test]
fn one_sigint_stops_cleanly_with_130_and_a_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("once_0001.h5");
    // One line per frame as it is written: the run's own account of its progress (the
    // file's size is not: HDF5's metadata fills it ahead of the frames).
    let refs = dir.path().join("frames.refs");
    let mut child = common::detflow()
        .args([
            "acquire", "--frames", "0", "--size", "64x64", "--period", "0.002", "--name", "once",
            "--flush", "10", "--json", "--refs",
        ])
        .arg(&refs)
        .arg("--path")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    common::wait_for_lines(&refs, 20, "frames written before the signal");
    sigint(&child);
    wait_for_line(&lines, "stopping");
    let (status, stdout) = exit_of(child);
    assert_eq!(status.code(), Some(130), "{status:?}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let written = summary["frames_written"].as_u64().unwrap();
    assert!(written >= 20, "{summary}");
    assert_eq!(summary["stopped"], "stopped", "{summary}");
    // Closed and complete: a plain (non-SWMR) open reads every frame the summary counts.
    let f = hdf5::File::open(&file).unwrap();
    let shape = f.dataset("/entry/data/data").unwrap().shape();
    assert_eq!(shape, [written as usize, 64, 64]);
}

#[test]
fn a_second_sigint_during_the_stop_aborts_at_once_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twice_0001.h5");
    // Slow frames to write (deflate level 9 of noise on one worker) behind a fast detector:
    // the ring is full when the stop begins, and writing it out takes seconds.
    let mut child = common::detflow()
        .args([
            "acquire",
            "--frames",
            "0",
            "--size",
            "1024x1024",
            "--mode",
            "noise",
            "--codec",
            "deflate:9",
            "--workers",
            "1",
            "--ring-slots",
            "16",
            "--name",
            "twice",
            "--json",
            "--path",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    common::wait_for_size(&file, 3 << 20);
    sigint(&child);
    // The first signal was taken: the stop is under way.
    wait_for_line(&lines, "stopping");
    sigint(&child);
    let t0 = Instant::now();
    let (status, stdout) = exit_of(child);
    assert_eq!(
        status.code(),
        Some(2),
        "{status:?} after {:?}",
        t0.elapsed()
    );
    assert!(
        stdout.trim().is_empty(),
        "an abort prints no summary: {stdout}"
    );
    let reserves: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".detflow-reserve"))
        .collect();
    assert!(reserves.is_empty(), "the abort left {reserves:?}");
}

#[test]
fn help_documents_the_exit_statuses() {
    let out = common::run(&["acquire", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit status",
        "130",
        "143",
        "aborted by a second Ctrl-C",
        "  2 ",
    ] {
        assert!(
            help.contains(needle),
            "acquire --help lacks {needle:?}:\n{help}"
        );
    }
    let out = common::run(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit status") && help.contains("aborted"),
        "{help}"
    );
}
