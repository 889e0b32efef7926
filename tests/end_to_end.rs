//! One acquisition from the simulated detector through the ring into an HDF5 file, driven
//! through the engine and through the binary, with the counts checked against the file.

mod common;

use std::time::{Duration, Instant};

use detflow_engine::config::Seconds;
use detflow_engine::{Acquisition, Config, State};

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

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.writer.path = dir.to_str().unwrap().into();
    c.detector.size = "64x48".parse().unwrap();
    c
}

#[test]
fn a_run_writes_every_frame_and_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.frames = 50;
    c.ring.slots = 2;
    c.writer.codec = "deflate:1".parse().unwrap();
    c.writer.number = 9;
    let handle = Acquisition::start(c.validate().unwrap()).unwrap();
    let s = handle.wait();
    assert_eq!(
        (s.frames_acquired, s.frames_written, s.frames_dropped),
        (50, 50, 0)
    );
    assert_eq!(s.files, vec![dir.path().join("detflow_0009.h5")]);
    assert_eq!(
        s.file_number, 10,
        "AutoIncrement advances after the name is built"
    );
    assert_eq!(s.raw_bytes, 50 * 64 * 48 * 2);
    assert!(s.compressed_bytes > 0 && s.compressed_bytes < s.raw_bytes);
    assert!(s.ring_high_water >= 1 && s.ring_high_water <= 2);
    assert_eq!(s.stopped, None);
    assert_eq!(frames_in(&s.files[0]), 50);
}

#[test]
fn period_paces_the_detector() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.frames = 6;
    c.detector.period = Seconds::new(0.025).unwrap();
    let t = Instant::now();
    let s = Acquisition::start(c.validate().unwrap()).unwrap().wait();
    let took = t.elapsed();
    assert_eq!(s.frames_written, 6);
    // Frame k is due at k * period after the start: five periods at least.
    assert!(
        took >= Duration::from_millis(120),
        "6 frames at 25 ms took only {took:?}"
    );
    assert!(
        s.fps < 60.0,
        "fps {} is faster than the period allows",
        s.fps
    );
}

#[test]
fn stopping_a_continuous_run_drains_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.frames = 0; // until stopped
    c.detector.period = Seconds::new(0.002).unwrap();
    let handle = Acquisition::start(c.validate().unwrap()).unwrap();
    let t = Instant::now();
    while handle.status().frames_written < 10 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no progress: {:?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(handle.status().state, State::Acquiring);
    handle.stop();
    let s = handle.wait();
    assert_eq!(s.stopped.as_deref(), Some("stopped"));
    assert_eq!(s.frames_acquired, s.frames_written + s.frames_dropped);
    assert_eq!(s.frames_dropped, 0);
    assert_eq!(frames_in(&s.files[0]) as u64, s.frames_written);
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

/// Hears when the daemon's file plugin capture ends, as the IOC does (WriteStatus).
struct CaptureEnded(
    std::sync::Mutex<std::sync::mpsc::Sender<(detflow_writer::FileStatus, Option<String>)>>,
);

impl detflow_engine::acquisition::Observer for CaptureEnded {
    fn capture_ended(&self, status: &detflow_writer::FileStatus, error: Option<&str>) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send((status.clone(), error.map(str::to_owned)));
    }
}

/// The daemon's path: a capture on the shared file plugin whose directory is removed ends,
/// at the next flush, with the error the IOC posts as WriteStatus = Write Error and
/// WriteMessage; the acquisition itself goes on.
#[test]
fn a_daemon_capture_whose_file_is_deleted_ends_with_a_write_error() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("run");
    std::fs::create_dir(&sub).unwrap();
    let mut c = config(&sub);
    c.detector.frames = 0;
    c.detector.period = Seconds::new(0.005).unwrap();
    c.writer.flush_interval = Seconds::new(0.05).unwrap();
    let v = c.validate().unwrap();
    let mut acq = v.acquisition.clone();
    let detector = detflow_engine::acquisition::make_backend(
        v.backend.clone(),
        v.sensor,
        v.seed,
        v.mode,
        &mut acq,
    )
    .unwrap();
    let shape = detflow_hal::FrameShape {
        width: 64,
        height: 48,
        pixel_type: acq.pixel_type,
        color_mode: detflow_hal::ColorMode::Mono,
    };
    let session = detflow_writer::CaptureSession::start(
        v.capture.clone(),
        detflow_engine::acquisition::geometry(&acq, shape),
    )
    .unwrap();
    let file = session.status().full_file_name.clone();
    let plugin = std::sync::Arc::new(detflow_engine::acquisition::SharedCapture::new(true));
    plugin.lock().session = Some(session);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = Acquisition::start_shared(
        detector,
        acq,
        0,
        detflow_engine::acquisition::RingOptions {
            slots: 8,
            policy: v.ring_policy,
            shm: None,
            workers: 1,
        },
        plugin.clone(),
        v.capture.codec,
        Some(std::sync::Arc::new(CaptureEnded(std::sync::Mutex::new(tx)))),
    )
    .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&file).map_or(0, |m| m.len()) < 5 * 64 * 48 * 2 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no frames reach {file:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_dir_all(&sub).unwrap();
    let ended = rx.recv_timeout(Duration::from_secs(30));
    let acquiring = handle.status().state == State::Acquiring;
    handle.stop();
    let _ = handle.wait();
    let (status, error) = ended.expect("the capture ends at the next flush");
    let error = error.expect("with an error (WriteStatus = Write Error)");
    assert!(
        error.contains("run/detflow_0001.h5") && error.contains("deleted"),
        "{error}"
    );
    assert!(!status.write_ok);
    assert_eq!(status.lost, vec![file]);
    assert!(acquiring, "the detector runs on without a capture");
    assert!(plugin.lock().session.is_none());
}
