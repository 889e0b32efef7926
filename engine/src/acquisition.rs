//! The acquisition engine shared by `detflow acquire` and (later) `detflow serve`.
//!
//! [`Acquisition::start`] validates nothing itself (give it [`Validated`] settings), allocates
//! the ring (before any file exists, so a machine that cannot hold it is left no empty file),
//! creates the file, and starts two threads: the detector thread, which is granted a ring slot, has
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
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use detflow_hal::{ColorMode, EpicsTimestamp, ErrorKind, FrameMeta, FrameShape, PixelType};
use detflow_ring::{
    Claimer, NextError, Policy, Producer, Reorder, Ring, RingConfig, RingCounters, SlotMeta,
};
use detflow_sim::{SimConfig, SimDetector, SimMode, SimOptions, SimParams};
use detflow_writer::{CaptureSession, Codec, FileStatus, FrameGeometry, Pushed};
use serde::Serialize;

use crate::backend::Backend;
use crate::config::{BackendSpec, Validated};

/// How long a thread waits on the ring or the detector before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// The ring between the detector and the writer, and the compressors behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct RingOptions {
    /// Frame slots asked for (0: automatic); a run gets no more than its frame count, within
    /// the memory cap ([`crate::config::fit_ring`]).
    pub slots: usize,
    /// What the detector thread does when every slot is taken.
    pub policy: Policy,
    /// Place the ring in a shared mapping of this file, so another process can read frames.
    pub shm: Option<PathBuf>,
    /// Compression threads (used when the codec is not `none`).
    pub workers: usize,
}

/// A file plugin shared by the daemon and the engine's writer thread (areaDetector's
/// NDFileHDF5): its capture starts and stops while frames flow and lives across
/// acquisitions. While no capture is open (or the plugin is disabled) frames pass it by
/// without being written, and are counted as `frames_not_captured`, not as dropped.
#[derive(Debug, Default)]
pub struct SharedCapture {
    slot: Mutex<CaptureSlot>,
}

/// What [`SharedCapture`] holds.
#[derive(Debug, Default)]
pub struct CaptureSlot {
    /// The open capture (Capture = 1), if any.
    pub session: Option<CaptureSession>,
    /// EnableCallbacks: a disabled plugin takes no frames.
    pub enabled: bool,
    /// The readbacks of the last capture that ended, with the reason when it failed.
    pub last: Option<(FileStatus, Option<String>)>,
}

impl SharedCapture {
    /// A plugin with no capture open.
    pub fn new(enabled: bool) -> Self {
        SharedCapture {
            slot: Mutex::new(CaptureSlot {
                enabled,
                ..CaptureSlot::default()
            }),
        }
    }

    /// Lock the plugin (the writer thread holds it only while it writes one frame).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, CaptureSlot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Told what happens during a run, on the thread where it happens: keep each call short
/// (post a value, copy a preview at a limited rate), because it delays that thread.
pub trait Observer: Send + Sync {
    /// Detector thread: frame number `count` of this run (from 1) was read, `bytes` are its
    /// pixels in the ring slot, before the slot is handed on.
    fn frame_acquired(&self, _count: u64, _meta: &FrameMeta, _bytes: &[u8]) {}
    /// Writer thread: a frame went into the shared capture; its readbacks now.
    fn frame_captured(&self, _status: &FileStatus) {}
    /// Writer thread: the shared capture ended by itself (NumCapture reached, or a write
    /// error, given) and its files are closed.
    fn capture_ended(&self, _status: &FileStatus, _error: Option<&str>) {}
}

/// Where the writer thread puts frames.
enum Sink {
    /// The run's own capture (the CLI): it ends with the run, and a complete capture stops
    /// the detector.
    Owned(Box<CaptureSession>),
    /// The daemon's file plugin: captures come and go; the detector runs on.
    Shared(Arc<SharedCapture>),
}

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
    /// Frames acquired while no capture was open on a shared file plugin (daemon): passed
    /// by on purpose, neither written nor dropped.
    pub frames_not_captured: u64,
    /// Frames the detector lost to a full FIFO (overrun); never acquired.
    pub frames_overrun: u64,
    /// Frames that arrived corrupted (checksum mismatch) and were discarded; never acquired.
    pub frames_corrupted: u64,
    /// Frames with parts missing (UDP packets): discarded, or with `udp_incomplete = "flag"`
    /// delivered zero-filled (then also among the acquired frames).
    pub frames_incomplete: u64,
    /// Frames the detector produced that never arrived; never acquired.
    pub frames_lost: u64,
    /// Bus errors met and retried (a run fails after 10 in a row).
    pub bus_errors: u64,
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
    /// The ring's counters: produced, dropped by its policy, high-water mark, and each
    /// consumer's consumed and lagged counts.
    pub ring: RingCounters,
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
    /// Detector faults, written by the detector thread only: bus errors (retried), and
    /// frames the detector lost, one count per frame, by cause. Lost frames are never
    /// acquired (a flagged incomplete UDP frame is acquired and counted in `incomplete`).
    bus_errors: AtomicU64,
    overruns: AtomicU64,
    corrupted: AtomicU64,
    incomplete: AtomicU64,
    lost: AtomicU64,
    /// Written by the writer thread only.
    written: AtomicU64,
    /// Written by the writer thread only.
    dropped: AtomicU64,
    /// Written by the writer thread only: frames a shared plugin was not capturing.
    not_captured: AtomicU64,
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
    /// Files deleted (or moved away) while they were written: their frames are lost,
    /// although counted as written.
    pub files_lost: Vec<PathBuf>,
    /// Frames the detector delivered.
    pub frames_acquired: u64,
    /// Frames in the file.
    pub frames_written: u64,
    /// Frames acquired but not written.
    pub frames_dropped: u64,
    /// Frames the detector lost to a full FIFO (overrun); never acquired.
    pub frames_overrun: u64,
    /// Frames that arrived corrupted (checksum mismatch) and were discarded; never acquired.
    pub frames_corrupted: u64,
    /// Frames with parts missing (UDP packets): discarded, or with `udp_incomplete = "flag"`
    /// delivered zero-filled (then also among the acquired frames).
    pub frames_incomplete: u64,
    /// Frames the detector produced that never arrived; never acquired.
    pub frames_lost: u64,
    /// Bus errors met and retried (a run fails after 10 in a row).
    pub bus_errors: u64,
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
    /// The ring's counters (produced, dropped by policy, high water, per consumer).
    pub ring: RingCounters,
    /// Why the run ended early, if it did: `"stopped"` or the error.
    pub stopped: Option<String>,
    /// The first error, if the run failed.
    pub error: Option<String>,
    /// The value reference of every frame written (JSON: the first
    /// [`detflow_writer::refs::SUMMARY_CAP`]; the `--refs` file has them all).
    pub value_refs: detflow_writer::RefLog,
    /// How many references there are in all.
    pub value_refs_total: u64,
}

/// One acquisition: a detector thread, a ring and a writer thread.
#[derive(Debug)]
pub struct Acquisition;

/// Control of a running acquisition.
#[derive(Debug)]
pub struct AcquisitionHandle {
    counters: Arc<Counters>,
    ring: detflow_ring::RingStats,
    /// Keeps the ring (and a shared-memory mapping) alive while the handle lives.
    #[allow(dead_code)]
    ring_handle: Ring,
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
            ring_policy,
            ring_shm,
            capture,
            workers,
            backend,
        } = settings;
        let (mut acquisition, mut ring_slots) = (acquisition, ring_slots);
        let replay = matches!(backend, BackendSpec::Replay { .. });
        let detector = make_backend(backend, sensor, seed, mode, &mut acquisition)?;
        if replay {
            // The file decided the frame size: keep the ring within its memory budget.
            let bytes = acquisition.roi.size_x as usize
                * acquisition.roi.size_y as usize
                * acquisition.pixel_type.size();
            ring_slots = ring_slots.min(crate::config::auto_slots(bytes));
        }
        let ring = RingOptions {
            slots: ring_slots,
            policy: ring_policy,
            shm: ring_shm,
            workers,
        };
        Self::start_with(detector, acquisition, frames, ring, capture)
    }

    /// Start an acquisition on any backend (`acquisition` configures it).
    pub fn start_with(
        mut detector: Box<dyn Backend>,
        acquisition: detflow_hal::AcquisitionConfig,
        frames: u64,
        ring: RingOptions,
        capture: detflow_writer::CaptureSettings,
    ) -> anyhow::Result<AcquisitionHandle> {
        let codec = capture.codec;
        let shape = detector
            .configure(&acquisition)
            .context("the detector refused the configuration")?;
        // The ring first: a machine that cannot hold it must not be left with an empty file
        // (which would refuse the rerun as existing).
        let ring_memory = allocate_ring(&ring, shape, frames)?;
        let session = CaptureSession::start(capture, geometry(&acquisition, shape))?;
        Self::launch(
            detector,
            shape,
            ring_memory,
            ring.workers,
            codec,
            Sink::Owned(Box::new(session)),
            None,
        )
    }

    /// Start an acquisition whose frames go to a file plugin the caller keeps (the daemon):
    /// the plugin's capture may open and close during the run and outlive it. Frames are
    /// encoded with `codec` (a capture opened with another codec gets its frames re-encoded
    /// on the writer thread). `observer` hears every frame.
    pub fn start_shared(
        mut detector: Box<dyn Backend>,
        acquisition: detflow_hal::AcquisitionConfig,
        frames: u64,
        ring: RingOptions,
        plugin: Arc<SharedCapture>,
        codec: Codec,
        observer: Option<Arc<dyn Observer>>,
    ) -> anyhow::Result<AcquisitionHandle> {
        let shape = detector
            .configure(&acquisition)
            .context("the detector refused the configuration")?;
        let ring_memory = allocate_ring(&ring, shape, frames)?;
        Self::launch(
            detector,
            shape,
            ring_memory,
            ring.workers,
            codec,
            Sink::Shared(plugin),
            observer,
        )
    }

    fn launch(
        mut detector: Box<dyn Backend>,
        shape: FrameShape,
        (producer, ring_handle, frames): (Producer, Ring, u64),
        ring_workers: usize,
        codec: Codec,
        sink: Sink,
        observer: Option<Arc<dyn Observer>>,
    ) -> anyhow::Result<AcquisitionHandle> {
        // One lossless consumer for the file: a pool of compressors, or the writer alone
        // when chunks are the frames themselves.
        let claimer = ring_handle
            .worker_pool("writer")
            .context("cannot attach the writer to the ring")?;
        let ring_stats = ring_handle.stats();
        let workers = if codec == Codec::None {
            0
        } else {
            ring_workers.max(1)
        };
        let files = Arc::new(Mutex::new(match &sink {
            Sink::Owned(session) => session.status().clone(),
            Sink::Shared(plugin) => {
                let slot = plugin.lock();
                match (&slot.session, &slot.last) {
                    (Some(session), _) => session.status().clone(),
                    (None, Some((status, _))) => status.clone(),
                    (None, None) => FileStatus::default(),
                }
            }
        }));

        let counters = Arc::new(Counters::default());
        let error = Arc::new(Mutex::new(None));
        let finished = Arc::new(Mutex::new(None));
        detector.start().context("the detector did not start")?;
        let started = Instant::now();

        let detector_thread = {
            let (counters, error, observer) = (counters.clone(), error.clone(), observer.clone());
            std::thread::Builder::new()
                .name("detflow-detector".into())
                .spawn(move || {
                    run_detector(detector, producer, &counters, &error, observer.as_deref())
                })?
        };
        let writer_thread = {
            let (counters, error, finished, files) = (
                counters.clone(),
                error.clone(),
                finished.clone(),
                files.clone(),
            );
            let pipeline = Pipeline {
                claimer,
                codec,
                pixel_type: shape.pixel_type,
                workers,
            };
            std::thread::Builder::new()
                .name("detflow-writer".into())
                .spawn(move || {
                    run_writer(
                        sink,
                        pipeline,
                        &counters,
                        &error,
                        &files,
                        observer.as_deref(),
                    );
                    *finished.lock().unwrap() = Some(Instant::now());
                })?
        };
        Ok(AcquisitionHandle {
            counters,
            ring: ring_stats,
            ring_handle,
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

/// Allocate (and touch) the ring for a run of `frames` frames of `shape` (0: until
/// stopped): never more slots than frames, and within the machine's memory cap
/// ([`crate::config::fit_ring`]). Returns the producer, the ring and `frames` for `launch`.
fn allocate_ring(
    ring: &RingOptions,
    shape: FrameShape,
    frames: u64,
) -> anyhow::Result<(Producer, Ring, u64)> {
    let slots = crate::config::fit_ring(
        ring.slots,
        shape.bytes(),
        frames,
        crate::config::ring_memory_cap(),
    )?;
    let (producer, handle) = Ring::new(RingConfig {
        slots,
        slot_bytes: shape.bytes(),
        policy: ring.policy,
        shm: ring.shm.clone(),
    })
    .with_context(|| {
        format!(
            "cannot allocate the frame ring ({slots} slots of {} bytes; --ring-slots sets \
             the count)",
            shape.bytes()
        )
    })?;
    Ok((producer, handle, frames))
}

/// Make the backend `spec` names. A replay file sets `acquisition`'s frame size and pixel
/// type to its own.
pub fn make_backend(
    spec: BackendSpec,
    sensor: (u32, u32),
    seed: u64,
    mode: SimMode,
    acquisition: &mut detflow_hal::AcquisitionConfig,
) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match spec {
        BackendSpec::Sim { fifo_depth, faults } => Box::new(
            SimDetector::with_options(
                SimConfig {
                    max_width: sensor.0,
                    max_height: sensor.1,
                    seed,
                    params: demo_params(mode, sensor, acquisition.pixel_type),
                },
                SimOptions { fifo_depth, faults },
            )
            .context("cannot create the simulated detector")?,
        ),
        BackendSpec::Replay { file, dataset } => {
            let replay = crate::backend::replay::ReplayDetector::open(&file, &dataset)?;
            // The file's frames decide the frame size and pixel type.
            let (w, h) = replay.frame_size();
            acquisition.roi = detflow_hal::Roi::full(w, h);
            acquisition.pixel_type = replay.pixel_type();
            Box::new(replay)
        }
        BackendSpec::Udp { listen, incomplete } => Box::new(
            crate::backend::udp::UdpReceiver::bind(
                listen,
                sensor,
                acquisition.pixel_type,
                incomplete,
            )
            .with_context(|| format!("cannot receive on udp {listen}"))?,
        ),
    })
}

/// Where the frames of `acquisition` sit in the sensor, for the file's NDArrayDim attributes.
pub fn geometry(acquisition: &detflow_hal::AcquisitionConfig, shape: FrameShape) -> FrameGeometry {
    FrameGeometry {
        shape,
        dim_offset: [acquisition.roi.min_x as i32, acquisition.roi.min_y as i32],
        dim_binning: [acquisition.binning.x as i32, acquisition.binning.y as i32],
    }
}

fn record(error: &Mutex<Option<String>>, message: String) {
    error.lock().unwrap().get_or_insert(message);
}

/// Bus errors in a row after which the detector thread gives up and the run fails.
const MAX_BUS_ERRORS_IN_A_ROW: u32 = 10;

/// The detector thread: grant a slot, let the detector fill it, commit; until the detector
/// finishes its sequence, the run is stopped, or the writer fails.
///
/// Fault policy: a frame the detector reports lost (`Overrun`, `Corrupted`, `Incomplete`,
/// `FrameLost`: one error per frame) is counted by cause and the run goes on; nothing was
/// committed for it. A `Bus` error is counted and retried after a short pause growing with
/// each error in a row (1 ms, 2 ms, … 10 ms); [`MAX_BUS_ERRORS_IN_A_ROW`] in a row fail the
/// run. Any other error fails the run.
fn run_detector(
    mut detector: Box<dyn Backend>,
    mut producer: Producer,
    counters: &Counters,
    error: &Mutex<Option<String>>,
    observer: Option<&dyn Observer>,
) {
    let policy = producer.policy();
    let tell = |meta: &FrameMeta, bytes: &[u8]| {
        if let Some(o) = observer {
            let count = counters.acquired.load(Ordering::Relaxed) + 1;
            o.frame_acquired(count, meta, &bytes[..meta.shape.bytes().min(bytes.len())]);
        }
    };
    // Drop-newest: a frame that finds every slot taken is still taken out of the detector
    // (into this buffer) so the detector moves on, and counted as dropped.
    let mut scratch = if policy == Policy::DropNewest {
        vec![0u8; producer.slot_bytes()]
    } else {
        Vec::new()
    };
    let mut bus_in_a_row = 0u32;
    loop {
        // Acquire pairs with the Release stores in stop()/the writer: once seen, the reason
        // for stopping (the error text) is visible too.
        if counters.stop.load(Ordering::Acquire) || counters.write_failed.load(Ordering::Acquire) {
            break;
        }
        if !detector.is_acquiring() {
            break;
        }
        let slot = match policy {
            // Block: wait for the writer to free a slot (the detector holds its frames
            // meanwhile, and counts what its own buffer cannot hold as overruns).
            Policy::Block => match producer.grant_timeout(POLL) {
                Some(slot) => Some(slot),
                None => continue,
            },
            Policy::DropNewest => producer.try_grant(),
        };
        let read = match slot {
            // A slot is published only once the detector filled it; on an error it goes back
            // unpublished.
            Some(mut slot) => detector.read_frame(slot.bytes_mut(), POLL).map(|meta| {
                tell(&meta, slot.bytes_mut());
                slot.commit(slot_meta(&meta, meta.shape.bytes()));
            }),
            // Drop-newest with every slot taken: the frame still leaves the detector (into
            // the scratch buffer) so that it moves on, and is counted as dropped.
            None => detector.read_frame(&mut scratch, POLL).map(|meta| {
                tell(&meta, &scratch);
                producer.record_dropped(1);
            }),
        };
        match read {
            Ok(()) => {
                counters.acquired.fetch_add(1, Ordering::Relaxed);
                bus_in_a_row = 0;
            }
            // Not due yet: look at the flags again.
            Err(e) if e.kind == ErrorKind::Timeout => {}
            Err(e) if e.kind == ErrorKind::NotAcquiring => break,
            // A frame lost by the detector: counted, nothing committed, the run goes on.
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::Overrun
                        | ErrorKind::Corrupted
                        | ErrorKind::Incomplete
                        | ErrorKind::FrameLost
                ) =>
            {
                let counter = match e.kind {
                    ErrorKind::Overrun => &counters.overruns,
                    ErrorKind::Corrupted => &counters.corrupted,
                    ErrorKind::Incomplete => &counters.incomplete,
                    _ => &counters.lost,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind == ErrorKind::Bus => {
                counters.bus_errors.fetch_add(1, Ordering::Relaxed);
                bus_in_a_row += 1;
                if bus_in_a_row >= MAX_BUS_ERRORS_IN_A_ROW {
                    record(
                        error,
                        format!("detector: {bus_in_a_row} bus errors in a row, the last: {e}"),
                    );
                    counters.stop.store(true, Ordering::Release);
                    break;
                }
                std::thread::sleep(Duration::from_millis(bus_in_a_row.into()));
            }
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

/// How frames go from the ring to the writer thread.
struct Pipeline {
    /// The writer's place in the ring: a pool of claims, one per committed frame.
    claimer: Claimer,
    codec: Codec,
    pixel_type: PixelType,
    /// Compression threads; 0 when the writer writes the slots themselves (`codec none`).
    workers: usize,
}

/// What a compression worker hands the writer for one frame.
struct Encoded {
    meta: SlotMeta,
    /// The encoded chunk, or `None` when the frame was not encoded because nothing more is
    /// being written (the writer counts it as dropped).
    chunk: Option<Vec<u8>>,
}

/// A compression worker: take a free buffer, claim the next frame, encode it in place into
/// the buffer, release the slot, hand the chunk to the writer. The buffer is taken before the
/// claim, so the frame the writer waits for always has one (no deadlock with the reordering).
fn run_compressor(
    claimer: Claimer,
    codec: Codec,
    pixel_type: PixelType,
    free: Receiver<Vec<u8>>,
    done: Sender<(u64, Encoded)>,
    accepting: &AtomicBool,
) {
    let mut compressor = codec.compressor(pixel_type);
    loop {
        let Ok(mut buf) = free.recv() else { return };
        let claim = loop {
            match claimer.claim_timeout(POLL) {
                Ok(claim) => break Some(claim),
                Err(NextError::Timeout) => continue,
                Err(NextError::Closed) => break None,
            }
        };
        let Some(claim) = claim else { return };
        let seq = claim.sequence();
        let meta = *claim.meta();
        // Relaxed: a hint; a frame encoded after the writer stopped accepting is dropped there.
        let chunk = if accepting.load(Ordering::Relaxed) {
            compressor.compress(claim.bytes(), &mut buf);
            Some(buf)
        } else {
            None
        };
        // The slot is free as soon as its bytes are encoded.
        drop(claim);
        if done.send((seq, Encoded { meta, chunk })).is_err() {
            return;
        }
    }
}

/// The writer thread: frames in ring order to the capture session, and the counts.
///
/// With `codec none` it claims each frame itself and writes the slot as the chunk (zero
/// copy). Otherwise `workers` compression threads encode frames in parallel and the writer
/// puts their chunks back in order ([`Reorder`]) before writing them. The only HDF5 calls
/// are made here. Every queue is bounded: `2 x workers + 2` chunk buffers circulate, so a
/// slow disk holds the compressors, which hold the ring, which holds the detector (or drops,
/// by the ring's policy). After a write error, or once the capture is complete, frames keep
/// being taken from the ring and counted as dropped, so the detector is never left blocked
/// and `acquired = written + dropped` stays exact.
fn run_writer(
    mut sink: Sink,
    pipeline: Pipeline,
    counters: &Counters,
    error: &Mutex<Option<String>>,
    files: &Mutex<FileStatus>,
    observer: Option<&dyn Observer>,
) {
    let accepting = AtomicBool::new(true);
    let mut failed = false;
    let publish = |s: &FileStatus| {
        let mut shared = files.lock().unwrap();
        if shared.files.len() > s.files.len() {
            // A new capture of a shared plugin: its own list starts again.
            shared.files.clear();
        }
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
        if shared.lost.len() != s.lost.len() {
            shared.lost.clone_from(&s.lost);
        }
        shared.file_number = s.file_number;
        shared.num_captured = s.num_captured;
        shared.write_ok = s.write_ok;
        shared.capturing = s.capturing;
    };
    // A shared capture that ended (complete or failed): close it, keep its readbacks.
    let end_capture = |slot: &mut CaptureSlot, failure: Option<String>| {
        let Some(session) = slot.session.take() else {
            return;
        };
        let (mut status, finished) = session.finish();
        let failure = failure.or_else(|| finished.err().map(|e| e.to_string()));
        if let Some(message) = &failure {
            status.write_ok = false;
            status.write_message.clone_from(message);
        }
        publish(&status);
        if let Some(o) = observer {
            o.capture_ended(&status, failure.as_deref());
        }
        slot.last = Some((status, failure));
    };
    let count_written = |chunk_len: usize| {
        counters.written.fetch_add(1, Ordering::Relaxed);
        counters
            .compressed_bytes
            .fetch_add(chunk_len as u64, Ordering::Relaxed);
    };
    // Write one frame (or count it dropped, or not captured).
    let mut write = |sink: &mut Sink, meta: &SlotMeta, chunk: Option<&[u8]>| {
        let accepted = accepting.load(Ordering::Relaxed);
        let (Some(chunk), true) = (chunk, accepted) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(frame) = frame_meta(meta) else {
            record(
                error,
                format!(
                    "ring slot of frame {} holds unknown metadata",
                    meta.frame_id
                ),
            );
            failed = true;
            accepting.store(false, Ordering::Relaxed);
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match sink {
            Sink::Owned(session) => {
                match session.push(&frame, chunk) {
                    Ok(pushed) => {
                        count_written(chunk.len());
                        if pushed == Pushed::Complete {
                            // NumCapture reached: the files are closed; stop the detector.
                            accepting.store(false, Ordering::Relaxed);
                            counters.stop.store(true, Ordering::Release);
                        }
                    }
                    Err(e) => {
                        record(error, format!("writer: {e}"));
                        failed = true;
                        accepting.store(false, Ordering::Relaxed);
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        counters.state.store(3, Ordering::Release);
                        counters.write_failed.store(true, Ordering::Release);
                    }
                }
                publish(session.status());
            }
            Sink::Shared(plugin) => {
                let mut slot = plugin.lock();
                let enabled = slot.enabled;
                let Some(session) = slot.session.as_mut().filter(|_| enabled) else {
                    counters.not_captured.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                // A capture opened with another codec than the run's: re-encode here.
                let want = session.settings().codec;
                let recoded;
                let chunk = if want == pipeline.codec {
                    chunk
                } else {
                    match pipeline.codec.decode(pipeline.pixel_type, chunk) {
                        Ok(raw) => {
                            let mut out = Vec::new();
                            want.compressor(pipeline.pixel_type)
                                .compress(&raw, &mut out);
                            recoded = out;
                            &recoded[..]
                        }
                        Err(e) => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                            end_capture(&mut slot, Some(format!("re-encoding a frame: {e}")));
                            return;
                        }
                    }
                };
                match session.push(&frame, chunk) {
                    Ok(pushed) => {
                        count_written(chunk.len());
                        if pushed == Pushed::Complete {
                            end_capture(&mut slot, None);
                        } else {
                            publish(session.status());
                            if let Some(o) = observer {
                                o.frame_captured(session.status());
                            }
                        }
                    }
                    Err(e) => {
                        // The capture ends with the error; acquisition goes on.
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        end_capture(&mut slot, Some(e.to_string()));
                    }
                }
            }
        }
    };
    // Between frames: flush on request, or when the flush interval passed while idle.
    let housekeeping = |sink: &mut Sink, idle: bool| {
        let wanted = counters.flush_now.swap(false, Ordering::AcqRel);
        if !accepting.load(Ordering::Relaxed) {
            return;
        }
        let flush = |session: &mut CaptureSession| {
            if wanted {
                session.flush()
            } else if idle {
                session.flush_if_due()
            } else {
                Ok(())
            }
        };
        match sink {
            Sink::Owned(session) => {
                if let Err(e) = flush(session) {
                    // The capture closed its file (a flush failed, or the file was deleted):
                    // the run fails as on a write error.
                    record(error, format!("writer: {e}"));
                    accepting.store(false, Ordering::Relaxed);
                    counters.state.store(3, Ordering::Release);
                    counters.write_failed.store(true, Ordering::Release);
                    publish(session.status());
                }
            }
            Sink::Shared(plugin) => {
                let mut slot = plugin.lock();
                if let Some(Err(e)) = slot.session.as_mut().map(flush) {
                    // The capture ends with the error (Write Error); acquisition goes on.
                    end_capture(&mut slot, Some(e.to_string()));
                }
            }
        }
    };

    if pipeline.workers == 0 {
        // Zero copy: claims arrive in ring order and the chunk is the slot itself.
        loop {
            housekeeping(&mut sink, false);
            match pipeline.claimer.claim_timeout(POLL) {
                Ok(claim) => write(&mut sink, claim.meta(), Some(claim.bytes())),
                Err(NextError::Timeout) => housekeeping(&mut sink, true),
                Err(NextError::Closed) => break,
            }
        }
    } else {
        let buffers = 2 * pipeline.workers + 2;
        let (free_tx, free_rx) = bounded::<Vec<u8>>(buffers);
        let (done_tx, done_rx) = bounded::<(u64, Encoded)>(buffers);
        for _ in 0..buffers {
            free_tx
                .send(Vec::new())
                .expect("the channel has room for every buffer");
        }
        std::thread::scope(|scope| {
            for i in 0..pipeline.workers {
                let (claimer, free, done) =
                    (pipeline.claimer.clone(), free_rx.clone(), done_tx.clone());
                let accepting = &accepting;
                std::thread::Builder::new()
                    .name(format!("detflow-compress-{i}"))
                    .spawn_scoped(scope, move || {
                        run_compressor(
                            claimer,
                            pipeline.codec,
                            pipeline.pixel_type,
                            free,
                            done,
                            accepting,
                        )
                    })
                    .expect("a compression thread starts");
            }
            drop(done_tx);
            let mut order: Option<Reorder<Encoded>> = None;
            loop {
                housekeeping(&mut sink, false);
                match done_rx.recv_timeout(POLL) {
                    Ok((seq, item)) => {
                        let order = order.get_or_insert_with(|| {
                            let first = pipeline.claimer.start_sequence().unwrap_or(seq);
                            Reorder::with_capacity(first, buffers)
                        });
                        order.push(seq, item);
                        while let Some((_, item)) = order.pop() {
                            write(&mut sink, &item.meta, item.chunk.as_deref());
                            if let Some(mut buf) = item.chunk {
                                buf.clear();
                                // The workers may all have ended; then the buffer is not needed.
                                let _ = free_tx.send(buf);
                            } else {
                                let _ = free_tx.send(Vec::new());
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => housekeeping(&mut sink, true),
                    // Every worker ended: the ring is closed and drained.
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            // Closing the free list ends workers still waiting for a buffer.
            drop(free_tx);
        });
    }

    match sink {
        Sink::Owned(session) => {
            let (status, finished) = session.finish();
            if let Err(e) = finished {
                record(error, format!("writer: {e}"));
                failed = true;
            }
            *files.lock().unwrap() = status;
        }
        // The capture outlives the run: make what was written visible to readers now.
        Sink::Shared(plugin) => {
            let mut slot = plugin.lock();
            if let Some(Err(e)) = slot.session.as_mut().map(CaptureSession::flush) {
                let message = e.to_string();
                end_capture(&mut slot, Some(message.clone()));
                drop(slot);
                record(error, format!("writer: {message}"));
            }
        }
    }
    let failed = failed || counters.write_failed.load(Ordering::Acquire);
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
        let ring = self.ring.snapshot();
        Status {
            state,
            frames_acquired: c.acquired.load(Ordering::Relaxed),
            frames_written: written,
            // Frames dropped by the ring's policy plus frames the writer could not write.
            frames_dropped: c.dropped.load(Ordering::Relaxed) + ring.dropped,
            frames_not_captured: c.not_captured.load(Ordering::Relaxed),
            frames_overrun: c.overruns.load(Ordering::Relaxed),
            frames_corrupted: c.corrupted.load(Ordering::Relaxed),
            frames_incomplete: c.incomplete.load(Ordering::Relaxed),
            frames_lost: c.lost.load(Ordering::Relaxed),
            bus_errors: c.bus_errors.load(Ordering::Relaxed),
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
            ring_high_water: ring.high_water,
            ring_slots: ring.slots,
            ring: ring.clone(),
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
        let (value_refs, files_lost) = {
            let files = self.files.lock().unwrap();
            (files.value_refs.clone(), files.lost.clone())
        };
        Summary {
            files: s.files,
            files_lost,
            full_file_name: s.full_file_name,
            file_number: s.file_number,
            frames_acquired: s.frames_acquired,
            frames_written: s.frames_written,
            frames_dropped: s.frames_dropped,
            frames_overrun: s.frames_overrun,
            frames_corrupted: s.frames_corrupted,
            frames_incomplete: s.frames_incomplete,
            frames_lost: s.frames_lost,
            bus_errors: s.bus_errors,
            elapsed_s: s.elapsed_s,
            fps: s.fps,
            mb_per_s: s.mb_per_s,
            codec: self.codec.to_string(),
            compressed_bytes: s.compressed_bytes,
            raw_bytes: s.raw_bytes,
            ring_high_water: s.ring_high_water,
            ring: s.ring.clone(),
            stopped: match (&error, stopped_early) {
                (Some(e), _) => Some(e.clone()),
                (None, true) => Some("stopped".into()),
                (None, false) => None,
            },
            error,
            value_refs_total: value_refs.len(),
            value_refs,
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
