//! The account of one run: the counters its threads keep, the snapshot any thread may take
//! of them ([`Status`]), and the outcome once it ended ([`Summary`], which is a final
//! [`Status`] and what only the end knows).
//!
//! Counting contract: every frame the detector delivered is `acquired`; each acquired frame is
//! then either `written`, `dropped` (the ring's policy or the writer) or, on a shared file
//! plugin with no capture open, `not_captured`; so when the run has ended `acquired ==
//! written + dropped + not_captured`, and the files hold exactly `written` frames.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use detflow_ring::{RingCounters, RingStats};
use detflow_writer::{Codec, FileStatus};
use serde::Serialize;

use crate::error::RunError;
use crate::event::{Events, Progress, RunEnd, RunEvent, State, StateCell};

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
    /// Frames acquired while no capture was open on a shared file plugin (daemon), or
    /// encoded for a capture that has since closed: passed by on purpose, neither written
    /// nor dropped.
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
    /// Seconds since the start (to the last file's close once the run ended).
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
    /// Files closed so far (absolute paths).
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

/// The outcome of a finished run: its final [`Status`] (flattened: the JSON keys are the
/// status's own) and what only the end knows.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The counts, files and rates at the end.
    #[serde(flatten)]
    pub status: Status,
    /// Files deleted (or moved away) while they were written: their frames are lost,
    /// although counted as written.
    pub files_lost: Vec<PathBuf>,
    /// The codec, as `none` or `deflate:LEVEL`.
    pub codec: String,
    /// Why the run ended early, if it did: `"stopped"` or the error.
    pub stopped: Option<String>,
    /// The first error, if the run failed (or the files' write message).
    pub error: Option<String>,
    /// The value reference of every frame written (JSON: the first
    /// [`detflow_writer::refs::SUMMARY_CAP`]; the `--refs` file has them all).
    pub value_refs: detflow_writer::RefLog,
    /// How many references there are in all.
    pub value_refs_total: u64,
    /// The CPU time each of the run's threads used, and how many compressed.
    pub threads: ThreadCpu,
    /// How the run ended (`None` while it runs).
    #[serde(skip)]
    pub end: Option<RunEnd>,
}

/// The CPU time (user + system) the run's threads used, each measured by the thread itself
/// when it ends (`CLOCK_THREAD_CPUTIME_ID`): where a frame's cost goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    /// The detector thread: reading frames into ring slots.
    pub detector_s: f64,
    /// Every compression worker together.
    pub compressors_s: f64,
    /// The writer thread: HDF5 calls, the kernel's copy into the page cache, bookkeeping.
    pub writer_s: f64,
    /// Compression workers the run had (0: the writer wrote the ring slots themselves).
    pub workers: usize,
}

/// The CPU time the calling thread has used so far, in nanoseconds (0 where it cannot be read).
pub(crate) fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain old data that clock_gettime fills; the clock id is a constant
    // every Linux kernel knows.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) != 0 {
            return 0;
        }
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counters shared by the run's threads and its handle. Each has exactly one writing thread
/// (but `cpu_ns_compressors`, which every worker adds to once).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Written by the detector thread only.
    pub(crate) acquired: AtomicU64,
    /// Detector faults, written by the detector thread only: bus errors (retried), and
    /// frames the detector lost, one count per frame, by cause. Lost frames are never
    /// acquired (a flagged incomplete UDP frame is acquired and counted in `incomplete`).
    pub(crate) bus_errors: AtomicU64,
    pub(crate) overruns: AtomicU64,
    pub(crate) corrupted: AtomicU64,
    pub(crate) incomplete: AtomicU64,
    pub(crate) lost: AtomicU64,
    /// Written by the writer thread only.
    pub(crate) written: AtomicU64,
    /// Written by the writer thread only.
    pub(crate) dropped: AtomicU64,
    /// Written by the writer thread only: frames a shared plugin was not capturing.
    pub(crate) not_captured: AtomicU64,
    /// Written by the writer thread only.
    pub(crate) compressed_bytes: AtomicU64,
    /// Set by the handle (or a failing thread, or a complete capture) to end acquisition.
    pub(crate) stop: AtomicBool,
    /// Set by the writer thread when a write failed: the detector thread stops.
    pub(crate) write_failed: AtomicBool,
    /// Set by the handle to ask the writer thread for a flush; it clears it.
    pub(crate) flush_now: AtomicBool,
    /// Each thread's CPU time, added when it ends (see [`ThreadCpu`]).
    pub(crate) cpu_ns_detector: AtomicU64,
    pub(crate) cpu_ns_compressors: AtomicU64,
    pub(crate) cpu_ns_writer: AtomicU64,
}

/// What the run's threads and its handle share.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) counters: Counters,
    pub(crate) state: StateCell,
    /// The first error; never replaced.
    error: OnceLock<RunError>,
    /// The files' readbacks, as the writer last published them.
    files: Mutex<FileStatus>,
    pub(crate) events: Events,
    ring: RingStats,
    started: Instant,
    /// When the writer closed the last file.
    finished: OnceLock<Instant>,
    frames_requested: u64,
    frame_bytes: u64,
    codec: Codec,
    workers: usize,
    /// Threads of the run still running; the last one to end sends the end.
    alive: AtomicUsize,
    end: OnceLock<RunEnd>,
}

/// What a run is started with, besides its events.
pub(crate) struct RunSetup {
    pub(crate) ring: RingStats,
    pub(crate) files: FileStatus,
    pub(crate) frames_requested: u64,
    pub(crate) frame_bytes: u64,
    pub(crate) codec: Codec,
    /// Compression workers (0: zero copy).
    pub(crate) workers: usize,
}

impl Run {
    pub(crate) fn new(setup: RunSetup, events: Events) -> Self {
        Run {
            counters: Counters::default(),
            state: StateCell::new(State::Acquiring),
            error: OnceLock::new(),
            files: Mutex::new(setup.files),
            events,
            ring: setup.ring,
            started: Instant::now(),
            finished: OnceLock::new(),
            frames_requested: setup.frames_requested,
            frame_bytes: setup.frame_bytes,
            codec: setup.codec,
            workers: setup.workers,
            alive: AtomicUsize::new(0),
            end: OnceLock::new(),
        }
    }

    /// Keep `e` if it is the first error, and tell the events.
    pub(crate) fn record(&self, e: RunError) {
        if self.error.set(e.clone()).is_ok() {
            self.events.send(RunEvent::Error(e));
        }
    }

    pub(crate) fn error(&self) -> Option<&RunError> {
        self.error.get()
    }

    /// Move to `state`, telling the events if it changed.
    pub(crate) fn set_state(&self, state: State) {
        if self.state.set(state) {
            self.events.send(RunEvent::State(state));
        }
    }

    /// Move from `from` to `to` only, telling the events if it moved.
    pub(crate) fn advance(&self, from: State, to: State) {
        if self.state.advance(from, to) {
            self.events.send(RunEvent::State(to));
        }
    }

    /// End acquisition (the detector thread looks at this between frames).
    pub(crate) fn stop(&self) {
        // Release: pairs with the detector thread's Acquire load.
        self.counters.stop.store(true, Ordering::Release);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.counters.stop.load(Ordering::Acquire)
            || self.counters.write_failed.load(Ordering::Acquire)
    }

    /// The writer failed: the run is `Failed` now and the detector stops.
    pub(crate) fn writing_failed(&self) {
        self.set_state(State::Failed);
        self.counters.write_failed.store(true, Ordering::Release);
    }

    pub(crate) fn files(&self) -> std::sync::MutexGuard<'_, FileStatus> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in the readbacks `s` of the sink: new files are told as events; the list of a
    /// new shared capture starts again.
    pub(crate) fn publish(&self, s: &FileStatus) {
        let mut shared = self.files();
        if shared.files.len() > s.files.len() {
            // A new capture of a shared plugin: its own list starts again.
            shared.files.clear();
        }
        if shared.full_file_name != s.full_file_name && !s.full_file_name.as_os_str().is_empty() {
            self.events
                .send(RunEvent::FileOpened(s.full_file_name.clone()));
        }
        if shared.files.len() != s.files.len()
            || shared.full_file_name != s.full_file_name
            || shared.write_message != s.write_message
        {
            // Files only grow: append the new ones rather than cloning them all.
            let known = shared.files.len().min(s.files.len());
            for f in &s.files[known..] {
                self.events.send(RunEvent::FileClosed(f.path.clone()));
            }
            shared.files.extend_from_slice(&s.files[known..]);
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
    }

    /// The sink's final readbacks (with every value reference) replace the published ones.
    pub(crate) fn publish_final(&self, s: FileStatus) {
        self.publish(&s);
        *self.files() = s;
    }

    /// The writer closed the last file.
    pub(crate) fn writer_finished(&self) {
        let _ = self.finished.set(Instant::now());
    }

    pub(crate) fn progress(&self) -> Progress {
        let c = &self.counters;
        Progress {
            frames_acquired: c.acquired.load(Ordering::Relaxed),
            frames_written: c.written.load(Ordering::Relaxed),
            frames_dropped: c.dropped.load(Ordering::Relaxed) + self.ring.dropped(),
            frames_not_captured: c.not_captured.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn status(&self) -> Status {
        let c = &self.counters;
        // Read the state first: once it says Done/Failed, the counters below are final,
        // because every thread stored them before the last one stored the state.
        let state = self.state.get();
        let written = c.written.load(Ordering::Relaxed);
        let end = self.finished.get().copied().unwrap_or_else(Instant::now);
        let elapsed = end.duration_since(self.started).as_secs_f64();
        let raw = written * self.frame_bytes;
        let per_s = |v: f64| if elapsed > 0.0 { v / elapsed } else { 0.0 };
        let message = self.error().map(ToString::to_string).unwrap_or_default();
        let files = self.files();
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

    /// A thread of the run starts: it must call [`thread_ended`](Self::thread_ended).
    fn thread_started(&self) {
        self.alive.fetch_add(1, Ordering::AcqRel);
    }

    /// A thread of the run ended (`panicked`: by a panic). The last one ends the run.
    fn thread_ended(&self, panicked: bool) {
        if panicked {
            self.record(RunError::Panicked);
            self.stop();
        }
        if self.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.end_run();
        }
    }

    /// Every thread ended: the final state, the last counts and the end, told once.
    fn end_run(&self) {
        let failed = self.error().is_some() || self.counters.write_failed.load(Ordering::Acquire);
        self.events.send(RunEvent::Progress(self.progress()));
        self.set_state(if failed { State::Failed } else { State::Done });
        let end = match self.error() {
            Some(e) => RunEnd::Failed(e.clone()),
            None if self.stopped_early() => RunEnd::Stopped,
            None => RunEnd::Complete,
        };
        if self.end.set(end.clone()).is_ok() {
            self.events.send_last(RunEvent::Ended(end));
        }
    }

    fn stopped_early(&self) -> bool {
        let acquired = self.counters.acquired.load(Ordering::Relaxed);
        self.counters.stop.load(Ordering::Acquire)
            && (self.frames_requested == 0 || acquired < self.frames_requested)
    }

    pub(crate) fn end(&self) -> Option<&RunEnd> {
        self.end.get()
    }

    /// The CPU time of the threads that ended so far.
    fn thread_cpu(&self) -> ThreadCpu {
        let c = &self.counters;
        let s = |n: &AtomicU64| n.load(Ordering::Acquire) as f64 * 1e-9;
        ThreadCpu {
            detector_s: s(&c.cpu_ns_detector),
            compressors_s: s(&c.cpu_ns_compressors),
            writer_s: s(&c.cpu_ns_writer),
            workers: self.workers,
        }
    }

    /// The status with what the end knows (final once every thread ended).
    pub(crate) fn summary(&self) -> Summary {
        let status = self.status();
        let error = (!status.write_message.is_empty()).then(|| status.write_message.clone());
        let (value_refs, files_lost) = {
            let files = self.files();
            (files.value_refs.clone(), files.lost.clone())
        };
        Summary {
            files_lost,
            codec: self.codec.to_string(),
            stopped: match (&error, self.stopped_early()) {
                (Some(e), _) => Some(e.clone()),
                (None, true) => Some("stopped".into()),
                (None, false) => None,
            },
            error,
            value_refs_total: value_refs.len(),
            value_refs,
            threads: self.thread_cpu(),
            end: self.end().cloned(),
            status,
        }
    }
}

/// A thread's share of the run: made before the thread is spawned and moved into it, it
/// ends that share when dropped, by a return, a panic, or a thread that never started.
pub(crate) struct ThreadGuard(Arc<Run>);

impl ThreadGuard {
    pub(crate) fn new(run: Arc<Run>) -> Self {
        run.thread_started();
        ThreadGuard(run)
    }

    pub(crate) fn run(&self) -> &Run {
        &self.0
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.thread_ended(std::thread::panicking());
    }
}
