//! The acquisition engine shared by `detflow acquire` and (later) `detflow serve`.
//!
//! [`Acquisition::start`] validates nothing itself (give it [`Validated`] settings), creates
//! the file, and starts two threads: the detector thread, which is granted a ring slot, has
//! the detector write a frame straight into it and commits it; and the writer thread, which
//! reads each slot in place, encodes it, writes it as one HDF5 chunk and releases the slot.
//! [`AcquisitionHandle`] stops, observes ([`Status`]) and waits for the run.
//!
//! Counting contract: every frame the detector delivered is `acquired`; each acquired frame is
//! then either `written` to the file or `dropped` (the writer failed), so when the run has
//! ended `acquired == written + dropped`, and the file holds exactly `written` frames.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use detflow_hal::{ColorMode, EpicsTimestamp, ErrorKind, FrameMeta, FrameShape, PixelType};
use detflow_ring::{Consumer, NextError, Producer, RingConfig, SlotMeta};
use detflow_sim::{SimConfig, SimDetector, SimMode, SimParams};
use detflow_writer::{CaptureSession, Codec, FileStatus, FrameGeometry, Pushed};
use serde::Serialize;

use crate::backend::Backend;
use crate::config::Validated;

/// How long a thread waits on the ring or the detector before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Frames are being acquired.
    Acquiring,
    /// The detector stopped; the writer is writing what the ring still holds.
    Draining,
    /// Finished: every frame asked for was written, or the run was stopped and drained.
    Done,
    /// Finished with an error (see the write message); the file holds the frames written.
    Failed,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Acquiring,
            1 => State::Draining,
            2 => State::Done,
            _ => State::Failed,
        }
    }
}

/// A snapshot of a run, cheap to take from any thread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Where the run is.
    pub state: State,
    /// Frames the detector delivered into the ring.
    pub frames_acquired: u64,
    /// Frames written to the file.
    pub frames_written: u64,
    /// Frames acquired but not written.
    pub frames_dropped: u64,
    /// Frames asked for (0 = until stopped).
    pub frames_requested: u64,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Frames written per second since the start.
    pub fps: f64,
    /// Uncompressed MB (10^6 bytes) written per second since the start.
    pub mb_per_s: f64,
    /// Bytes of encoded chunks written.
    pub compressed_bytes: u64,
    /// Uncompressed bytes written.
    pub raw_bytes: u64,
    /// FullFileName: the file being written, or the last one (absolute).
    pub full_file_name: PathBuf,
    /// FileNumber: the number the next file will use.
    pub file_number: i32,
    /// FilePath after strftime expansion, ending with `/`.
    pub file_path: String,
    /// FilePathExists.
    pub file_path_exists: bool,
    /// Files closed so far.
    pub files: Vec<PathBuf>,
    /// Most ring slots ever filled at once.
    pub ring_high_water: u64,
    /// Ring slots.
    pub ring_slots: usize,
    /// False once a write failed (areaDetector WriteStatus).
    pub write_ok: bool,
    /// The error, if any (areaDetector WriteMessage).
    pub write_message: String,
}

/// Counters shared by the two threads and the handle. Each has exactly one writer thread.
#[derive(Debug, Default)]
struct Counters {
    /// Written by the detector thread only.
    acquired: AtomicU64,
    /// Written by the writer thread only.
    written: AtomicU64,
    /// Written by the writer thread only.
    dropped: AtomicU64,
    /// Written by the writer thread only.
    compressed_bytes: AtomicU64,
    /// 0 acquiring, 1 draining, 2 done, 3 failed.
    state: AtomicU8,
    /// Set by the handle (or a failing thread) to end acquisition.
    stop: AtomicBool,
    /// Set by the writer thread when a write failed: the detector thread stops.
    write_failed: AtomicBool,
    /// Set by the handle to ask the writer thread for a flush; it clears it.
    flush_now: AtomicBool,
}

/// The outcome of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Files written (absolute paths).
    pub files: Vec<PathBuf>,
    /// Frames the detector delivered.
    pub frames_acquired: u64,
    /// Frames in the file.
    pub frames_written: u64,
    /// Frames acquired but not written.
    pub frames_dropped: u64,
    /// Seconds from start to the file being closed.
    pub elapsed_s: f64,
    /// Frames written per second.
    pub fps: f64,
    /// Uncompressed MB (10^6 bytes) written per second.
    pub mb_per_s: f64,
    /// The codec, as `none` or `deflate:LEVEL`.
    pub codec: String,
    /// Bytes of encoded chunks written.
    pub compressed_bytes: u64,
    /// Uncompressed bytes written.
    pub raw_bytes: u64,
    /// FullFileName: the last file written.
    pub full_file_name: PathBuf,
    /// FileNumber: the number the next file would use.
    pub file_number: i32,
    /// Most ring slots filled at once.
    pub ring_high_water: u64,
    /// Why the run ended early, if it did: `"stopped"` or the error.
    pub stopped: Option<String>,
    /// The first error, if the run failed.
    pub error: Option<String>,
}

/// One acquisition: a detector thread, a ring and a writer thread.
#[derive(Debug)]
pub struct Acquisition;

/// Control of a running acquisition.
#[derive(Debug)]
pub struct AcquisitionHandle {
    counters: Arc<Counters>,
    ring: detflow_ring::RingStats,
    started: Instant,
    finished: Arc<Mutex<Option<Instant>>>,
    files: Arc<Mutex<FileStatus>>,
    frames_requested: u64,
    frame_bytes: u64,
    codec: Codec,
    error: Arc<Mutex<Option<String>>>,
    detector: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

/// Simulation parameters that make a useful picture at any size: a 10 x 10 grid of peaks on a
/// little noise, a ramp, stationary sines, or flat noise, with amplitudes that fit the type.
pub fn demo_params(mode: SimMode, (width, height): (u32, u32), pixel_type: PixelType) -> SimParams {
    let scale = match pixel_type {
        PixelType::U8 | PixelType::I8 => 0.1,
        _ => 1.0,
    };
    let mut p = SimParams {
        mode,
        ..SimParams::default()
    };
    match mode {
        SimMode::Peaks => {
            let (sx, sy) = ((width / 10).max(1), (height / 10).max(1));
            p.peak_num_x = 10.min(width);
            p.peak_num_y = 10.min(height);
            p.peak_step_x = sx as i32;
            p.peak_step_y = sy as i32;
            p.peak_start_x = (sx / 2) as i32;
            p.peak_start_y = (sy / 2) as i32;
            p.peak_width_x = (sx / 12).max(1);
            p.peak_width_y = (sy / 12).max(1);
            p.gain = 1000.0 * scale;
            p.peak_variation = 10.0;
            p.noise = 4.0;
        }
        SimMode::LinearRamp => {}
        SimMode::Sine => {
            p.gain = 1000.0 * scale;
            p.offset = 4000.0 * scale;
        }
        SimMode::OffsetNoise => {
            p.offset = 1000.0 * scale;
            p.noise = 500.0 * scale;
        }
    }
    p
}

fn slot_meta(meta: &FrameMeta, len: usize) -> SlotMeta {
    SlotMeta {
        frame_id: meta.unique_id,
        epics_sec: meta.timestamp.sec,
        epics_nsec: meta.timestamp.nsec,
        unix_time_s: meta.unix_time_s,
        width: meta.shape.width,
        height: meta.shape.height,
        pixel_type: meta.shape.pixel_type.nd_data_type() as u32,
        color_mode: meta.shape.color_mode.code() as u32,
        len: len as u64,
    }
}

fn frame_meta(m: &SlotMeta) -> Option<FrameMeta> {
    Some(FrameMeta {
        unique_id: m.frame_id,
        timestamp: EpicsTimestamp {
            sec: m.epics_sec,
            nsec: m.epics_nsec,
        },
        unix_time_s: m.unix_time_s,
        shape: FrameShape {
            width: m.width,
            height: m.height,
            pixel_type: PixelType::from_nd_data_type(m.pixel_type as i32)?,
            color_mode: ColorMode::from_code(m.color_mode as i32)?,
        },
    })
}

impl Acquisition {
    /// Configure the detector, allocate the ring, create the file and start both threads.
    /// Errors here leave no file behind.
    pub fn start(settings: Validated) -> anyhow::Result<AcquisitionHandle> {
        let Validated {
            sensor,
            acquisition,
            mode,
            seed,
            frames,
            ring_slots,
            capture,
            workers: _,
        } = settings;
        let detector: Box<dyn Backend> = Box::new(
            SimDetector::new(SimConfig {
                max_width: sensor.0,
                max_height: sensor.1,
                seed,
                params: demo_params(mode, sensor, acquisition.pixel_type),
            })
            .context("cannot create the simulated detector")?,
        );
        Self::start_with(detector, acquisition, frames, ring_slots, capture)
    }

    /// Start an acquisition on any backend (`acquisition` configures it).
    pub fn start_with(
        mut detector: Box<dyn Backend>,
        acquisition: detflow_hal::AcquisitionConfig,
        frames: u64,
        ring_slots: usize,
        capture: detflow_writer::CaptureSettings,
    ) -> anyhow::Result<AcquisitionHandle> {
        let codec = capture.codec;
        let shape = detector
            .configure(&acquisition)
            .context("the detector refused the configuration")?;
        let (producer, consumer) = detflow_ring::ring(RingConfig {
            slots: ring_slots,
            slot_bytes: shape.bytes(),
        })
        .context("cannot allocate the frame ring")?;
        let ring = producer.ring_stats();

        let session = CaptureSession::start(
            capture,
            FrameGeometry {
                shape,
                dim_offset: [acquisition.roi.min_x as i32, acquisition.roi.min_y as i32],
                dim_binning: [acquisition.binning.x as i32, acquisition.binning.y as i32],
            },
        )?;
        let files = Arc::new(Mutex::new(session.status().clone()));

        let counters = Arc::new(Counters::default());
        let error = Arc::new(Mutex::new(None));
        let finished = Arc::new(Mutex::new(None));
        detector.start().context("the detector did not start")?;
        let started = Instant::now();

        let detector_thread = {
            let (counters, error) = (counters.clone(), error.clone());
            std::thread::Builder::new()
                .name("detflow-detector".into())
                .spawn(move || run_detector(detector, producer, &counters, &error))?
        };
        let writer_thread = {
            let (counters, error, finished, files) = (
                counters.clone(),
                error.clone(),
                finished.clone(),
                files.clone(),
            );
            std::thread::Builder::new()
                .name("detflow-writer".into())
                .spawn(move || {
                    run_writer(
                        session,
                        consumer,
                        codec,
                        shape.pixel_type,
                        &counters,
                        &error,
                        &files,
                    );
                    *finished.lock().unwrap() = Some(Instant::now());
                })?
        };
        Ok(AcquisitionHandle {
            counters,
            ring,
            started,
            finished,
            files,
            frames_requested: frames,
            frame_bytes: shape.bytes() as u64,
            codec,
            error,
            detector: Some(detector_thread),
            writer: Some(writer_thread),
        })
    }
}

fn record(error: &Mutex<Option<String>>, message: String) {
    error.lock().unwrap().get_or_insert(message);
}

/// The detector thread: grant a slot, let the detector fill it, commit; until the detector
/// finishes its sequence, the run is stopped, or the writer fails.
fn run_detector(
    mut detector: Box<dyn Backend>,
    mut producer: Producer,
    counters: &Counters,
    error: &Mutex<Option<String>>,
) {
    loop {
        // Acquire pairs with the Release stores in stop()/the writer: once seen, the reason
        // for stopping (the error text) is visible too.
        if counters.stop.load(Ordering::Acquire) || counters.write_failed.load(Ordering::Acquire) {
            break;
        }
        if !detector.is_acquiring() {
            break;
        }
        // Block policy: wait for the writer to free a slot.
        let Some(mut slot) = producer.grant_timeout(POLL) else {
            continue;
        };
        match detector.read_frame(slot.bytes_mut(), POLL) {
            Ok(meta) => {
                let len = meta.shape.bytes();
                slot.commit(slot_meta(&meta, len));
                counters.acquired.fetch_add(1, Ordering::Relaxed);
            }
            // Not due yet: give the slot back (nothing published) and look at the flags again.
            Err(e) if e.kind == ErrorKind::Timeout => {}
            Err(e) if e.kind == ErrorKind::NotAcquiring => break,
            Err(e) => {
                record(error, format!("detector: {e}"));
                counters.stop.store(true, Ordering::Release);
                break;
            }
        }
    }
    if let Err(e) = detector.stop() {
        record(error, format!("detector stop: {e}"));
    }
    // Only move to Draining from Acquiring; a failed writer already said Failed.
    let _ = counters
        .state
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    // Dropping the producer closes the ring: the writer drains what is left, then ends.
    drop(producer);
}

/// The writer thread: read each committed slot in place, encode it, hand it to the capture
/// session, release the slot. After a write error, or once the capture is complete, it keeps
/// draining the ring, counting each frame as dropped, so the detector is never left blocked
/// and the counts stay exact.
fn run_writer(
    mut session: CaptureSession,
    mut consumer: Consumer,
    codec: Codec,
    pixel_type: PixelType,
    counters: &Counters,
    error: &Mutex<Option<String>>,
    files: &Mutex<FileStatus>,
) {
    let mut compressor = codec.compressor(pixel_type);
    let mut chunk = Vec::new();
    let mut accepting = true;
    let mut failed = false;
    let publish = |session: &CaptureSession| {
        let s = session.status();
        let mut shared = files.lock().unwrap();
        if shared.files.len() != s.files.len()
            || shared.full_file_name != s.full_file_name
            || shared.write_message != s.write_message
        {
            // Files only grow: append the new ones rather than cloning them all.
            let known = shared.files.len();
            shared
                .files
                .extend_from_slice(&s.files[known.min(s.files.len())..]);
            shared.full_file_name.clone_from(&s.full_file_name);
            shared.write_message.clone_from(&s.write_message);
        }
        shared.file_number = s.file_number;
        shared.num_captured = s.num_captured;
        shared.write_ok = s.write_ok;
        shared.capturing = s.capturing;
    };
    loop {
        if counters.flush_now.swap(false, Ordering::AcqRel) && accepting {
            if let Err(e) = session.flush() {
                record(error, format!("writer: {e}"));
            }
        }
        let slot = match consumer.next_timeout(POLL) {
            Ok(slot) => slot,
            Err(NextError::Timeout) => {
                // Idle between slow frames: make the waiting ones visible on time.
                if accepting && let Err(e) = session.flush_if_due() {
                    record(error, format!("writer: {e}"));
                }
                continue;
            }
            Err(NextError::Closed) => break,
        };
        if !accepting {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(meta) = frame_meta(slot.meta()) else {
            record(
                error,
                format!("ring slot {} holds unknown metadata", slot.sequence()),
            );
            failed = true;
            accepting = false;
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let result = if codec == Codec::None {
            // Zero copy: the chunk is the slot itself.
            session.push(&meta, slot.bytes())
        } else {
            compressor.compress(slot.bytes(), &mut chunk);
            // The slot is free as soon as its bytes are encoded.
            drop(slot);
            session.push(&meta, &chunk)
        };
        match result {
            Ok(pushed) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
                let n = if codec == Codec::None {
                    meta.shape.bytes()
                } else {
                    chunk.len()
                };
                counters
                    .compressed_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                if pushed == Pushed::Complete {
                    // NumCapture reached: the files are closed; stop the detector.
                    accepting = false;
                    counters.stop.store(true, Ordering::Release);
                }
            }
            Err(e) => {
                record(error, format!("writer: {e}"));
                failed = true;
                accepting = false;
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                counters.state.store(3, Ordering::Release);
                counters.write_failed.store(true, Ordering::Release);
            }
        }
        publish(&session);
    }
    let (status, finished) = session.finish();
    if let Err(e) = finished {
        record(error, format!("writer: {e}"));
        failed = true;
    }
    {
        let mut shared = files.lock().unwrap();
        *shared = status;
    }
    counters
        .state
        .store(if failed { 3 } else { 2 }, Ordering::Release);
}

impl AcquisitionHandle {
    /// Ask the run to end: the detector stops, the writer writes what the ring holds and
    /// closes the file. Returns at once; [`wait`](Self::wait) for the end.
    pub fn stop(&self) {
        self.counters.stop.store(true, Ordering::Release);
    }

    /// True once the file is closed.
    pub fn is_finished(&self) -> bool {
        matches!(self.status().state, State::Done | State::Failed)
    }

    /// Ask the writer to make every frame written so far visible to readers now
    /// (areaDetector FlushNow). It happens between two frames; nothing waits for it.
    pub fn flush_now(&self) {
        self.counters.flush_now.store(true, Ordering::Release);
    }

    /// A snapshot of the counters.
    pub fn status(&self) -> Status {
        let c = &self.counters;
        // Read state first: once it says Done/Failed, the counters below are final, because
        // the writer stored them before its Release store of the state.
        let state = State::from_u8(c.state.load(Ordering::Acquire));
        let written = c.written.load(Ordering::Relaxed);
        let end = self.finished.lock().unwrap().unwrap_or_else(Instant::now);
        let elapsed = end.duration_since(self.started).as_secs_f64();
        let raw = written * self.frame_bytes;
        let per_s = |v: f64| if elapsed > 0.0 { v / elapsed } else { 0.0 };
        let message = self.error.lock().unwrap().clone().unwrap_or_default();
        let files = self.files.lock().unwrap();
        Status {
            state,
            frames_acquired: c.acquired.load(Ordering::Relaxed),
            frames_written: written,
            frames_dropped: c.dropped.load(Ordering::Relaxed),
            frames_requested: self.frames_requested,
            elapsed_s: elapsed,
            fps: per_s(written as f64),
            mb_per_s: per_s(raw as f64 / 1e6),
            compressed_bytes: c.compressed_bytes.load(Ordering::Relaxed),
            raw_bytes: raw,
            full_file_name: files.full_file_name.clone(),
            file_number: files.file_number,
            file_path: files.file_path.clone(),
            file_path_exists: files.file_path_exists,
            files: files.files.iter().map(|f| f.path.clone()).collect(),
            ring_high_water: self.ring.high_water(),
            ring_slots: self.ring.slots(),
            write_ok: !c.write_failed.load(Ordering::Acquire)
                && message.is_empty()
                && files.write_ok,
            write_message: if message.is_empty() {
                files.write_message.clone()
            } else {
                message
            },
        }
    }

    /// Wait for both threads to end and summarise the run.
    pub fn wait(mut self) -> Summary {
        for t in [self.detector.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            if t.join().is_err() {
                record(&self.error, "an acquisition thread panicked".into());
                self.counters.state.store(3, Ordering::Release);
            }
        }
        let s = self.status();
        let stopped_early = self.counters.stop.load(Ordering::Acquire)
            && (s.frames_requested == 0 || s.frames_acquired < s.frames_requested);
        let error = (!s.write_message.is_empty()).then(|| s.write_message.clone());
        Summary {
            files: s.files,
            full_file_name: s.full_file_name,
            file_number: s.file_number,
            frames_acquired: s.frames_acquired,
            frames_written: s.frames_written,
            frames_dropped: s.frames_dropped,
            elapsed_s: s.elapsed_s,
            fps: s.fps,
            mb_per_s: s.mb_per_s,
            codec: self.codec.to_string(),
            compressed_bytes: s.compressed_bytes,
            raw_bytes: s.raw_bytes,
            ring_high_water: s.ring_high_water,
            stopped: match (&error, stopped_early) {
                (Some(e), _) => Some(e.clone()),
                (None, true) => Some("stopped".into()),
                (None, false) => None,
            },
            error,
        }
    }
}

impl Drop for AcquisitionHandle {
    fn drop(&mut self) {
        // A handle dropped without wait() still stops the run and closes the file.
        self.stop();
        for t in [self.detector.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}
