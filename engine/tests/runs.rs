//! Whole runs of the simulated detector through the ring into HDF5 files, driven through the
//! engine's API (the binary's runs are in the root package's `tests/end_to_end.rs`): the
//! counts checked against the files, the detector's pace, a stop, and the daemon's shared
//! file plugin losing its file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use detflow_engine::config::Seconds;
use detflow_engine::{Acquisition, Config, Observer, RunEnd, RunEvent, SharedCapture, State};

const DEADLINE: Duration = Duration::from_secs(30);

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
    let mut run = Acquisition::builder(c).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let summary = run.summary();
    let s = &summary.status;
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
    assert_eq!(summary.stopped, None);
    assert_eq!(summary.value_refs_total, 50);
    assert_eq!(frames_in(&s.files[0]), 50);
}

#[test]
fn the_summary_says_where_the_cpu_went_thread_by_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.size = "256x256".parse().unwrap();
    c.detector.frames = 40;
    c.writer.codec = "deflate:6".parse().unwrap();
    c.writer.workers = 2;
    let mut run = Acquisition::builder(c.clone()).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let t = run.summary().threads;
    assert_eq!(t.workers, 2);
    // Each thread did work: the sim draws every frame, deflate encodes it, HDF5 writes it.
    assert!(
        t.detector_s > 0.0 && t.compressors_s > 0.0 && t.writer_s > 0.0,
        "{t:?}"
    );
    // Deflate at level 6 on every frame costs the compressors more than the writer's share.
    assert!(t.compressors_s > t.writer_s, "{t:?}");

    // Zero copy: no compressor ran, and none was counted.
    c.writer.codec = detflow_writer::Codec::None.into();
    c.writer.number = 2;
    let mut run = Acquisition::builder(c).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let t = run.summary().threads;
    assert_eq!((t.workers, t.compressors_s), (0, 0.0), "{t:?}");
    assert!(t.writer_s > 0.0, "{t:?}");
}

#[test]
fn period_paces_the_detector() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.frames = 6;
    c.detector.period = Seconds::new(0.025).unwrap();
    let t = Instant::now();
    let mut run = Acquisition::builder(c).start().unwrap();
    run.wait();
    let took = t.elapsed();
    let s = run.summary().status;
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
    let mut run = Acquisition::builder(c).start().unwrap();
    let t = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        match run.events().recv_timeout(left) {
            Ok(RunEvent::Progress(p)) if p.frames_written >= 10 => break,
            Ok(RunEvent::Ended(end)) => panic!("ended by itself: {end:?}"),
            Ok(_) => {}
            Err(_) => panic!("no progress: {:?}", run.status()),
        }
    }
    assert_eq!(run.status().state, State::Acquiring);
    run.stop();
    assert!(matches!(run.wait(), RunEnd::Stopped));
    let summary = run.summary();
    let s = &summary.status;
    assert_eq!(summary.stopped.as_deref(), Some("stopped"));
    assert_eq!(s.frames_acquired, s.frames_written + s.frames_dropped);
    assert_eq!(s.frames_dropped, 0);
    assert_eq!(frames_in(&s.files[0]) as u64, s.frames_written);
}

/// Hears the shared capture as the IOC does: frames captured, and its end (WriteStatus).
struct Plugin(std::sync::Mutex<std::sync::mpsc::Sender<Heard>>);

#[derive(Debug)]
enum Heard {
    Captured(u64),
    Ended(Box<detflow_writer::FileStatus>, Option<String>),
}

impl Observer for Plugin {
    fn frame_captured(&self, status: &detflow_writer::FileStatus) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send(Heard::Captured(status.num_captured));
    }
    fn capture_ended(&self, status: &detflow_writer::FileStatus, error: Option<&str>) {
        let _ = self.0.lock().unwrap().send(Heard::Ended(
            Box::new(status.clone()),
            error.map(str::to_owned),
        ));
    }
}

/// The daemon's file plugin with a capture of `c`'s writer settings open (64x48 frames, as
/// [`config`] makes), and the capture's file.
fn shared_plugin(c: &Config) -> (Arc<SharedCapture>, std::path::PathBuf) {
    let v = c.validate().unwrap();
    let shape = detflow_hal::FrameShape {
        width: 64,
        height: 48,
        pixel_type: v.acquisition.pixel_type,
        color_mode: detflow_hal::ColorMode::Mono,
    };
    let session = detflow_writer::CaptureSession::start(
        v.capture.clone(),
        detflow_engine::acquisition::geometry(&v.acquisition, shape),
    )
    .unwrap();
    let file = session.status().full_file_name.clone();
    let plugin = Arc::new(SharedCapture::new(true));
    plugin.open(session).unwrap();
    (plugin, file)
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
    c.writer.workers = 1;
    c.ring.slots = 8;
    let (plugin, file) = shared_plugin(&c);
    let (tx, heard) = std::sync::mpsc::channel();
    let mut run = Acquisition::builder(c)
        .sink(plugin.clone())
        .observer(Arc::new(Plugin(std::sync::Mutex::new(tx))))
        .start()
        .unwrap();
    // Five frames in the file, by the plugin's own account.
    let t = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        match heard.recv_timeout(left) {
            Ok(Heard::Captured(n)) if n >= 5 => break,
            Ok(Heard::Captured(_)) => {}
            other => panic!("no frames reach {file:?}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&sub).unwrap();
    let t = Instant::now();
    let ended = loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        match heard.recv_timeout(left) {
            Ok(Heard::Captured(_)) => {}
            Ok(Heard::Ended(status, error)) => break (status, error),
            Err(e) => panic!("the capture did not end at the next flush: {e}"),
        }
    };
    let acquiring = run.status().state == State::Acquiring;
    run.stop();
    run.wait();
    let (status, error) = ended;
    let error = error.expect("with an error (WriteStatus = Write Error)");
    assert!(
        error.contains("run/detflow_0001.h5") && error.contains("deleted"),
        "{error}"
    );
    assert!(!status.write_ok);
    assert_eq!(status.lost, vec![file]);
    assert!(acquiring, "the detector runs on without a capture");
    assert!(!plugin.is_open());
}

/// The daemon's plugin with `none` hands the writer the ring slots themselves (no copy through
/// a chunk buffer): its file holds the very frames a plain run of the same seed writes.
#[test]
fn a_shared_capture_without_compression_writes_the_slots_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.detector.frames = 12;
    c.ring.slots = 3;
    c.writer.workers = 2;
    let mut plain = Acquisition::builder(c.clone()).start().unwrap();
    assert!(matches!(plain.wait(), RunEnd::Complete));
    let plain = plain.summary().status.files[0].clone();

    c.writer.number = 2;
    let (plugin, shared_file) = shared_plugin(&c);
    let mut shared = Acquisition::builder(c).sink(plugin).start().unwrap();
    assert!(matches!(shared.wait(), RunEnd::Complete));
    let summary = shared.summary();
    assert_eq!(
        summary.threads.workers, 2,
        "the plugin's frames go through the pool"
    );
    assert_eq!(summary.status.frames_written, 12);
    let read = |p: &std::path::Path| {
        hdf5::File::open(p)
            .unwrap()
            .dataset("/entry/data/data")
            .unwrap()
            .read_raw::<u16>()
            .unwrap()
    };
    assert_eq!(read(&shared_file), read(&plain));
}
