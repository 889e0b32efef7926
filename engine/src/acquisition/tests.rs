//! Runs through the builder over a tiny in-memory backend into a temp directory: the events
//! a run tells, how it ends, and that its counts add up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use detflow_hal::{
    AcquisitionConfig, ColorMode, EpicsTimestamp, ErrorKind, FrameMeta, FrameShape, PixelType,
    SensorInfo,
};
use detflow_writer::{CaptureSession, Codec};

use super::{Acquisition, RunHandle, geometry};
use crate::backend::cycle::FrameCycle;
use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::error::RunError;
use crate::event::{RunEnd, RunEvent, State};
use crate::sink::{Closed, SharedCapture};

const SIZE: (u32, u32) = (16, 8);
const DEADLINE: Duration = Duration::from_secs(30);

fn shape() -> FrameShape {
    FrameShape {
        width: SIZE.0,
        height: SIZE.1,
        pixel_type: PixelType::U16,
        color_mode: ColorMode::Mono,
    }
}

fn info() -> SensorInfo {
    SensorInfo {
        manufacturer: Default::default(),
        model: Default::default(),
        max_width: SIZE.0,
        max_height: SIZE.1,
        pixel_types: heapless::Vec::from_slice(&[PixelType::U16]).unwrap(),
    }
}

/// Three distinct frames: a ramp, and the ramp shifted.
fn frames() -> Vec<Vec<u8>> {
    (0..3u16)
        .map(|k| {
            (0..SIZE.0 * SIZE.1)
                .flat_map(|i| (i as u16 * 3 + k * 1000).to_le_bytes())
                .collect()
        })
        .collect()
}

fn cycle() -> Box<dyn Backend> {
    Box::new(FrameCycle::new(frames(), shape(), info()))
}

/// Settings for `frames` frames (0: until stopped) with `codec`, written under `dir`.
fn settings(dir: &std::path::Path, frames: u64, codec: &str) -> Config {
    let mut c = Config::default();
    c.detector.size = crate::config::FrameSize::new(SIZE.0, SIZE.1).unwrap();
    c.detector.frames = frames;
    c.writer.path = dir.to_str().unwrap().into();
    c.writer.codec = codec.parse().unwrap();
    c.writer.workers = 2;
    c
}

/// Every event until the end, within the deadline.
fn events_to_end(run: &RunHandle) -> Vec<RunEvent> {
    let t = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        let event = run.events().recv_timeout(left).expect("the run ends");
        let ended = matches!(event, RunEvent::Ended(_));
        seen.push(event);
        if ended {
            return seen;
        }
    }
}

fn states(events: &[RunEvent]) -> Vec<State> {
    events
        .iter()
        .filter_map(|e| match e {
            RunEvent::State(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn frames_in(path: &std::path::Path) -> Vec<usize> {
    hdf5::File::open(path)
        .unwrap()
        .dataset("/entry/data/data")
        .unwrap()
        .shape()
}

#[test]
fn a_complete_run_tells_its_states_and_files_in_order() {
    for codec in ["none", "deflate:1"] {
        let dir = tempfile::tempdir().unwrap();
        let mut run = Acquisition::builder(settings(dir.path(), 5, codec))
            .backend(cycle())
            .start()
            .unwrap();
        let events = events_to_end(&run);
        assert_eq!(
            states(&events),
            [State::Acquiring, State::Draining, State::Done],
            "{codec}: {events:?}"
        );
        let file = dir.path().join("detflow_0001.h5");
        let opened = events
            .iter()
            .position(|e| matches!(e, RunEvent::FileOpened(p) if *p == file));
        let closed = events
            .iter()
            .position(|e| matches!(e, RunEvent::FileClosed(p) if *p == file));
        assert!(
            opened.is_some() && opened < closed,
            "{codec}: opened, then closed: {events:?}"
        );
        assert!(matches!(
            events.last(),
            Some(RunEvent::Ended(RunEnd::Complete))
        ));
        assert!(matches!(run.wait(), RunEnd::Complete));
        let s = run.summary();
        assert_eq!(
            (
                s.status.frames_acquired,
                s.status.frames_written,
                s.status.frames_dropped
            ),
            (5, 5, 0),
            "{codec}"
        );
        assert_eq!(s.status.state, State::Done);
        assert_eq!(s.status.files, vec![file.clone()]);
        assert_eq!((s.stopped, s.error), (None, None));
        assert_eq!(s.codec, codec);
        assert_eq!(frames_in(&file), [5, 8, 16]);
        assert!(run.wait().error().is_none(), "wait again: the same end");
    }
}

#[test]
fn a_stopped_run_drains_and_ends_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Acquisition::builder(settings(dir.path(), 0, "lz4"))
        .backend(cycle())
        .start()
        .unwrap();
    // Wait for frames to be written, by the run's own account.
    let t = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        match run.events().recv_timeout(left).expect("progress") {
            RunEvent::Progress(p) if p.frames_written >= 3 => break,
            RunEvent::Ended(end) => panic!("a continuous run ended by itself: {end:?}"),
            _ => {}
        }
    }
    assert_eq!(run.status().state, State::Acquiring);
    run.stop();
    assert!(matches!(run.wait(), RunEnd::Stopped));
    let s = run.summary();
    assert_eq!(s.stopped.as_deref(), Some("stopped"));
    assert_eq!(
        s.status.frames_acquired,
        s.status.frames_written + s.status.frames_dropped
    );
    assert_eq!(s.status.frames_dropped, 0, "block: nothing is dropped");
    assert_eq!(
        frames_in(&s.status.files[0])[0] as u64,
        s.status.frames_written
    );
}

/// Delivers `good` frames, then fails with an error that is not a lost frame.
struct Failing {
    good: u32,
    acquiring: bool,
    id: u64,
}

impl Backend for Failing {
    fn info(&self) -> SensorInfo {
        info()
    }
    fn configure(&mut self, _: &AcquisitionConfig) -> Result<FrameShape, BackendError> {
        Ok(shape())
    }
    fn start(&mut self) -> Result<(), BackendError> {
        self.acquiring = true;
        Ok(())
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        self.acquiring = false;
        Ok(())
    }
    fn is_acquiring(&self) -> bool {
        self.acquiring
    }
    fn read_frame(&mut self, buf: &mut [u8], _: Duration) -> Result<FrameMeta, BackendError> {
        if self.good == 0 {
            return Err(BackendError::new(ErrorKind::Other, "link down"));
        }
        self.good -= 1;
        self.id += 1;
        buf.fill(self.id as u8);
        Ok(FrameMeta {
            unique_id: self.id,
            timestamp: EpicsTimestamp::now(),
            unix_time_s: 0.0,
            shape: shape(),
        })
    }
}

#[test]
fn a_backend_error_fails_the_run_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Failing {
        good: 3,
        acquiring: false,
        id: 0,
    };
    let mut run = Acquisition::builder(settings(dir.path(), 10, "deflate:1"))
        .backend(Box::new(failing))
        .start()
        .unwrap();
    let events = events_to_end(&run);
    assert_eq!(
        states(&events),
        [State::Acquiring, State::Draining, State::Failed],
        "{events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, RunEvent::Error(RunError::Detector(b)) if b.message == "link down")
        ),
        "{events:?}"
    );
    let end = run.wait();
    let Some(RunError::Detector(e)) = end.error() else {
        panic!("{end:?}")
    };
    assert_eq!(e.kind, ErrorKind::Other);
    let s = run.summary();
    assert_eq!(s.error.as_deref(), Some("detector: link down"));
    assert_eq!(s.stopped.as_deref(), Some("detector: link down"));
    assert!(!s.status.write_ok);
    assert_eq!((s.status.frames_acquired, s.status.frames_written), (3, 3));
    assert_eq!(frames_in(&s.status.files[0]), [3, 8, 16]);
}

#[test]
fn a_shared_capture_with_another_codec_gets_its_frames_encoded_by_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    // The run's codec is none; the capture's is deflate: the pool encodes for the capture.
    let run_settings = settings(dir.path(), 6, "none");
    let mut capture = settings(dir.path(), 6, "deflate:1")
        .validate()
        .unwrap()
        .capture;
    // Until closed: the capture outlives the run.
    capture.num_capture = 0;
    let session = CaptureSession::start(
        capture,
        geometry(&run_settings.validate_run().unwrap().acquisition, shape()),
    )
    .unwrap();
    let file = session.status().full_file_name.clone();
    let plugin = Arc::new(SharedCapture::new(true));
    plugin.open(session).unwrap();
    let mut run = Acquisition::builder(run_settings)
        .backend(cycle())
        .sink(plugin.clone())
        .start()
        .unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let s = run.summary();
    assert_eq!(
        (
            s.status.frames_written,
            s.status.frames_not_captured,
            s.status.frames_dropped
        ),
        (6, 0, 0)
    );
    assert_eq!(
        s.codec, "deflate:1",
        "the frames were encoded with the capture's codec"
    );
    // The capture outlives the run; closing it here closes the file.
    let Closed::Now(end) = plugin.close(None) else {
        panic!("no writer holds the capture after the run")
    };
    assert_eq!(end.status.num_captured, 6);
    assert_eq!(end.error, None);
    let ds = hdf5::File::open(&file)
        .unwrap()
        .dataset("/entry/data/data")
        .unwrap();
    assert!(
        ds.filters()
            .iter()
            .any(|f| matches!(f, hdf5::filters::Filter::Deflate(_))),
        "{:?}",
        ds.filters()
    );
    let pixels: Vec<u16> = ds.read_raw().unwrap();
    let expected: Vec<u16> = (0..6)
        .flat_map(|k| frames()[k % 3].clone())
        .collect::<Vec<u8>>()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pixels, expected);
}

#[test]
fn a_shared_plugin_without_a_capture_passes_frames_by() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = Arc::new(SharedCapture::new(true));
    let mut run = Acquisition::builder(settings(dir.path(), 4, "lz4"))
        .backend(cycle())
        .sink(plugin.clone())
        .start()
        .unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let s = run.summary();
    assert_eq!(
        (
            s.status.frames_acquired,
            s.status.frames_written,
            s.status.frames_not_captured
        ),
        (4, 0, 4)
    );
    assert_eq!(s.codec, Codec::Lz4.to_string());
    assert!(matches!(plugin.close(None), Closed::NotOpen));
}

/// Hears the shared capture end, as the daemon does.
struct CaptureEnded(std::sync::Mutex<std::sync::mpsc::Sender<(u64, Option<String>)>>);

impl crate::event::Observer for CaptureEnded {
    fn capture_ended(&self, status: &detflow_writer::FileStatus, error: Option<&str>) {
        let _ = self
            .0
            .lock()
            .unwrap()
            .send((status.num_captured, error.map(str::to_owned)));
    }
}

#[test]
fn a_capture_opened_mid_run_with_another_codec_switches_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let run_settings = settings(dir.path(), 0, "none");
    let mut capture = settings(dir.path(), 0, "deflate:1")
        .validate()
        .unwrap()
        .capture;
    capture.num_capture = 4;
    let plugin = Arc::new(SharedCapture::new(true));
    let (tx, ended) = std::sync::mpsc::channel();
    let mut run = Acquisition::builder(run_settings.clone())
        .backend(cycle())
        .sink(plugin.clone())
        .observer(Arc::new(CaptureEnded(std::sync::Mutex::new(tx))))
        .start()
        .unwrap();
    let t = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(t.elapsed());
        match run.events().recv_timeout(left).expect("progress") {
            RunEvent::Progress(p) if p.frames_not_captured >= 3 => break,
            _ => {}
        }
    }
    let session = CaptureSession::start(
        capture,
        geometry(&run_settings.validate_run().unwrap().acquisition, shape()),
    )
    .unwrap();
    let file = session.status().full_file_name.clone();
    plugin.open(session).unwrap();
    let (captured, error) = ended.recv_timeout(DEADLINE).expect("the capture completes");
    assert_eq!((captured, error), (4, None));
    run.stop();
    assert!(matches!(run.wait(), RunEnd::Stopped));
    let s = run.summary().status;
    assert_eq!(s.frames_written, 4);
    assert_eq!(
        s.frames_acquired,
        s.frames_written + s.frames_not_captured + s.frames_dropped,
        "{s:?}"
    );
    let ds = hdf5::File::open(&file)
        .unwrap()
        .dataset("/entry/data/data")
        .unwrap();
    assert_eq!(ds.shape(), [4, 8, 16]);
    assert!(
        ds.filters()
            .iter()
            .any(|f| matches!(f, hdf5::filters::Filter::Deflate(_))),
        "{:?}",
        ds.filters()
    );
}
