//! One acquisition, as `detflow acquire` and `detflow serve` run it: [`Acquisition::builder`]
//! takes the [`Config`]; `start` checks it ([`Config::validate`], or
//! [`Config::validate_run`] when the frames go to a sink not of the run's own), opens the backend (which decides the frame shape), allocates
//! the ring for that shape (before any file exists, so a machine that cannot hold it is left
//! no empty file), makes the sink and starts the run's threads; [`RunHandle`] stops, observes
//! and waits for it.
//!
//! One frame's way: the detector thread ([`crate::detector`]) has the backend write it into a
//! ring slot; the compressor pool ([`crate::compress`]) encodes it from the slot; the writer
//! thread ([`crate::writer`]) hands the chunk to the [`FrameSink`] ([`crate::sink`]), which
//! writes it as one HDF5 chunk.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use detflow_ring::{Policy, Producer, Ring, RingConfig};
use detflow_sim::SimOptions;
use detflow_writer::{CaptureSession, Codec, ImageLayout};

use crate::backend::{self, Backend, OpenError, Opened};
use crate::config::{BackendSpec, Config, Validated};
use crate::detector::DetectorThread;
use crate::error::{RunError, StartError};
use crate::event::{Events, Observer, RunEnd, RunEvent, State};
use crate::sink::{FrameSink, OwnedCapture, SeriesFiles, SharedCapture, SharedSink};
use crate::status::{Run, RunSetup, Status, Summary, ThreadGuard};
use crate::writer::{Pipeline, Writer};

/// Run events the channel holds before it drops new ones, unless told otherwise.
pub const DEFAULT_EVENTS: usize = 256;

/// One acquisition: a detector thread, a ring, a compressor pool and a writer thread.
#[derive(Debug)]
pub struct Acquisition;

impl Acquisition {
    /// Settings for a run; the builder says where frames come from and go, then starts it.
    pub fn builder(config: Config) -> AcquisitionBuilder {
        AcquisitionBuilder {
            config,
            observer: None,
            sink: SinkChoice::Owned,
            backend: None,
            opened: None,
            events: DEFAULT_EVENTS,
            ring_slots: None,
        }
    }
}

/// Where a run's frames go.
enum SinkChoice {
    /// A capture of the run's own, from the settings.
    Owned,
    /// The daemon's file plugin.
    Shared(Arc<SharedCapture>),
    /// Any other sink.
    Custom(Box<dyn FrameSink>),
}

/// A run to start: its settings, and what replaces their defaults.
pub struct AcquisitionBuilder {
    config: Config,
    observer: Option<Arc<dyn Observer>>,
    sink: SinkChoice,
    backend: Option<Box<dyn Backend>>,
    opened: Option<Opened>,
    events: usize,
    ring_slots: Option<usize>,
}

impl std::fmt::Debug for AcquisitionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquisitionBuilder")
            .field("config", &self.config)
            .field("observer", &self.observer.is_some())
            .field("backend", &self.backend.is_some())
            .field("opened", &self.opened)
            .field("events", &self.events)
            .field("ring_slots", &self.ring_slots)
            .finish_non_exhaustive()
    }
}

impl AcquisitionBuilder {
    /// Hooks called per frame on the run's threads (the daemon's counters and preview).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Frames go to the daemon's file plugin instead of a capture of the run's own; they
    /// are encoded with the settings' codec while no capture is open, else with the
    /// capture's.
    pub fn sink(mut self, plugin: Arc<SharedCapture>) -> Self {
        self.sink = SinkChoice::Shared(plugin);
        self
    }

    /// Frames go to `sink` instead of a capture of the run's own.
    pub fn frame_sink(mut self, sink: Box<dyn FrameSink>) -> Self {
        self.sink = SinkChoice::Custom(sink);
        self
    }

    /// Frames come from `backend` (configured with the settings' acquisition) instead of the
    /// backend the settings name.
    pub fn backend(mut self, backend: Box<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Frames come from a backend opened and configured already (a Stream V2 series the
    /// daemon received: [`backend::open_series`]), with the metadata it gave, instead of the
    /// backend the settings name.
    pub fn opened(mut self, opened: Opened) -> Self {
        self.opened = Some(opened);
        self
    }

    /// Room for `capacity` unread events (default [`DEFAULT_EVENTS`]); more are dropped.
    pub fn events(mut self, capacity: usize) -> Self {
        self.events = capacity;
        self
    }

    /// Ring slots to ask for, instead of the settings' (0: automatic for the frame shape the
    /// backend delivers).
    pub fn ring_slots(mut self, slots: usize) -> Self {
        self.ring_slots = Some(slots);
        self
    }

    /// Check the settings, open the backend, allocate the ring, open the sink and start the
    /// threads. Errors here leave no thread running, and no file unless the sink had made it.
    /// A run into a capture of its own checks the writer's settings too
    /// ([`Config::validate`]); one into another sink, only the run's
    /// ([`Config::validate_run`]): the sink's captures are checked as they open.
    pub fn start(self) -> Result<RunHandle, StartError> {
        let settings = match self.sink {
            SinkChoice::Owned => self.config.validate()?,
            _ => self.config.validate_run()?,
        };
        let from_settings = self.backend.is_none() && self.opened.is_none();
        let opened = match (self.opened, self.backend) {
            (Some(opened), _) => opened,
            (None, Some(b)) => backend::configure(b, settings.acquisition.clone())?,
            (None, None) => open_backend(&settings)?,
        };
        // An image source's slot holds an image record: a header, then the image as it came;
        // the series says the codec `auto` means and how many images there are.
        let mut settings = settings;
        let frame_bytes = match opened.backend.images() {
            Some(images) => {
                let arriving = backend::codec_of(images.encoding);
                settings.for_images(arriving, images.number_of_images, opened.shape.bytes());
                crate::record::HEADER_BYTES + images.max_image_bytes
            }
            None => opened.shape.bytes(),
        };
        let s = &settings;
        let requested = match self.ring_slots {
            Some(n) => n,
            // The file decided the frame size: the settings' count is only a ceiling, within
            // the ring's memory budget for that size.
            None if from_settings
                && matches!(
                    s.backend,
                    BackendSpec::Replay { .. } | BackendSpec::Stream2 { .. }
                ) =>
            {
                s.ring_slots.min(crate::config::auto_slots(frame_bytes))
            }
            None => s.ring_slots,
        };
        // The ring first: a machine that cannot hold it must not be left with an empty file
        // (which would refuse the rerun as existing).
        let ring = allocate_ring(requested, frame_bytes, s.frames, s.ring_policy, &s.ring_shm)?;
        let sink: Box<dyn FrameSink> = match self.sink {
            SinkChoice::Owned => {
                let geometry = geometry(&opened.acquisition, opened.shape);
                match opened.backend.images() {
                    Some(images) => {
                        let layout = ImageLayout {
                            channels: images.channels,
                            image_fields: true,
                            metadata: opened.metadata.clone(),
                        };
                        let session =
                            CaptureSession::start_images(s.capture.clone(), geometry, layout)?;
                        Box::new(OwnedCapture::images(session))
                    }
                    None => Box::new(OwnedCapture::new(CaptureSession::start(
                        s.capture.clone(),
                        geometry,
                    )?)),
                }
            }
            SinkChoice::Shared(plugin) => {
                let series = opened.backend.images().map(|images| SeriesFiles {
                    geometry: geometry(&opened.acquisition, opened.shape),
                    layout: ImageLayout {
                        channels: images.channels,
                        image_fields: true,
                        metadata: opened.metadata.clone(),
                    },
                    number_of_images: images.number_of_images,
                });
                Box::new(SharedSink::new(plugin, s.capture.codec, series))
            }
            SinkChoice::Custom(sink) => sink,
        };
        let launch = Launch {
            frames: s.frames,
            workers: s.workers,
            events: self.events,
            observer: self.observer,
        };
        launch.start(opened, ring, sink)
    }
}

/// Open the backend `settings` name.
fn open_backend(settings: &Validated) -> Result<Opened, OpenError> {
    let acquisition = settings.acquisition.clone();
    match &settings.backend {
        BackendSpec::Sim { fifo_depth, faults } => backend::open_sim(
            settings.sensor,
            settings.seed,
            settings.params.clone(),
            SimOptions {
                fifo_depth: *fifo_depth,
                faults: *faults,
            },
            acquisition,
        ),
        BackendSpec::Replay { file, dataset } => backend::open_replay(file, dataset, acquisition),
        BackendSpec::Stream2 {
            connect,
            rcvhwm,
            timeout,
            expect,
        } => backend::open_stream2(connect, *rcvhwm, timeout.duration(), *expect, acquisition),
        BackendSpec::Udp { listen, incomplete } => backend::open_udp(
            *listen,
            settings.sensor,
            acquisition.pixel_type,
            *incomplete,
            acquisition,
        ),
    }
}

/// Allocate (and touch) the ring for a run of `frames` frames of `slot_bytes` each (0: until
/// stopped): `requested` slots (0: automatic for the size), never more than frames, and
/// within the machine's memory cap ([`crate::config::fit_ring`]).
fn allocate_ring(
    requested: usize,
    slot_bytes: usize,
    frames: u64,
    policy: Policy,
    shm: &Option<PathBuf>,
) -> Result<(Producer, Ring), StartError> {
    let slots = crate::config::fit_ring(
        requested,
        slot_bytes,
        frames,
        crate::config::ring_memory_cap(),
    )?;
    Ring::new(RingConfig {
        slots,
        slot_bytes,
        policy,
        shm: shm.clone(),
    })
    .map_err(|source| StartError::Ring {
        slots,
        slot_bytes,
        source,
    })
}

/// What starting the threads needs besides the backend, the ring and the sink.
struct Launch {
    frames: u64,
    workers: usize,
    events: usize,
    observer: Option<Arc<dyn Observer>>,
}

impl Launch {
    /// Attach the writer to the ring, start the detector, spawn the writer and detector
    /// threads.
    fn start(
        self,
        mut opened: Opened,
        (producer, ring): (Producer, Ring),
        sink: Box<dyn FrameSink>,
    ) -> Result<RunHandle, StartError> {
        // One lossless consumer for the file: a pool of compressors, or the writer alone
        // when chunks are the frames themselves.
        let claimer = ring.worker_pool("writer").map_err(StartError::Attach)?;
        let encoding = sink.encoding();
        let images = opened.backend.images();
        let slot_codec = images
            .as_ref()
            .map_or(Codec::None, |i| backend::codec_of(i.encoding));
        let workers = if crate::writer::zero_copy(&encoding, slot_codec) {
            0
        } else {
            self.workers.max(1)
        };
        let files = sink.readbacks();
        let opened_file = (files.capturing && !files.full_file_name.as_os_str().is_empty())
            .then(|| files.full_file_name.clone());
        let (events, receiver) = Events::new(self.events);
        events.send(RunEvent::State(State::Acquiring));
        if let Some(file) = opened_file {
            events.send(RunEvent::FileOpened(file));
        }
        let run = Arc::new(Run::new(
            RunSetup {
                ring: ring.stats(),
                files,
                frames_requested: self.frames,
                frame_bytes: opened.shape.bytes() as u64,
                codec: encoding.codec(),
                workers,
            },
            events,
        ));
        opened.backend.start().map_err(StartError::DetectorStart)?;
        let pipeline = Pipeline {
            claimer,
            pixel_type: opened.shape.pixel_type,
            workers,
            slot_codec,
            images: images.is_some(),
        };
        let writer = {
            let (guard, observer) = (ThreadGuard::new(run.clone()), self.observer.clone());
            spawn("writer", move || {
                Writer::new(sink, guard.run(), observer.as_deref()).run(pipeline);
            })?
        };
        // The writer ends once the ring closes, which it does when the detector thread's
        // producer is dropped: also if that thread never starts.
        let detector = {
            let (guard, observer) = (ThreadGuard::new(run.clone()), self.observer);
            let backend = opened.backend;
            let images = images.is_some();
            spawn("detector", move || {
                DetectorThread {
                    backend,
                    images,
                    producer,
                    run: guard.run(),
                    observer: observer.as_deref(),
                }
                .run();
            })?
        };
        Ok(RunHandle {
            run,
            events: receiver,
            threads: vec![detector, writer],
            _ring: ring,
        })
    }
}

/// Start the run's `name` thread, called `detflow-det` or `detflow-writer`: the kernel keeps
/// 15 bytes of a thread's name, which `top -H` and `perf --sort comm` show.
fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StartError> {
    let short = if name == "detector" { "det" } else { name };
    std::thread::Builder::new()
        .name(format!("detflow-{short}"))
        .spawn(f)
        .map_err(|source| StartError::Thread { name, source })
}

/// Control of a running acquisition.
#[derive(Debug)]
pub struct RunHandle {
    run: Arc<Run>,
    events: Receiver<RunEvent>,
    /// Joined by `wait` (empty after).
    threads: Vec<JoinHandle<()>>,
    /// Keeps the ring (and a shared-memory mapping) alive while the handle lives.
    _ring: Ring,
}

impl RunHandle {
    /// A snapshot of the counters.
    pub fn status(&self) -> Status {
        self.run.status()
    }

    /// Ask the run to end: the detector stops, the writer writes what the ring holds and
    /// closes the file. Returns at once; [`wait`](Self::wait) for the end.
    pub fn stop(&self) {
        self.run.stop();
    }

    /// Ask the writer to make every frame written so far visible to readers now
    /// (areaDetector FlushNow). It happens between two frames; nothing waits for it.
    pub fn flush_now(&self) {
        self.run.counters.flush_now.store(true, Ordering::Release);
    }

    /// The run's events, bounded: the run never waits for them, and drops new ones (but
    /// never [`RunEvent::Ended`]) while the channel is full.
    pub fn events(&self) -> &Receiver<RunEvent> {
        &self.events
    }

    /// Events dropped so far because the channel was full.
    pub fn events_dropped(&self) -> u64 {
        self.run.events.dropped()
    }

    /// True once every thread ended and the files are closed.
    pub fn is_finished(&self) -> bool {
        self.run.end().is_some()
    }

    /// Wait for the run's threads to end; how it ended. Again: the same answer at once.
    pub fn wait(&mut self) -> RunEnd {
        for t in self.threads.drain(..) {
            // A panic was recorded by the thread's guard as it unwound.
            let _ = t.join();
        }
        self.run
            .end()
            .cloned()
            .unwrap_or(RunEnd::Failed(RunError::Panicked))
    }

    /// The run's outcome: final after [`wait`](Self::wait), a snapshot before.
    pub fn summary(&self) -> Summary {
        self.run.summary()
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // A handle dropped without wait() still stops the run and closes the file.
        self.stop();
        self.wait();
    }
}

pub use crate::sink::geometry;

#[cfg(test)]
mod tests;
