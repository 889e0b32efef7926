//! A detector that sends series (`--backend stream2`): the daemon listens on one link from
//! start-up and runs each series that arrives as one engine run into the HDF1 plugin, whose
//! `Capture = 1` arms a file for the next series (opened at its first image, closed at its end).
//! The cam's readbacks show each series' size, type, timing and image count once its `start`
//! arrives; `Acquire` follows the series rather than starting the detector.

use super::*;

use std::sync::Weak;

use detflow_engine::backend::{open_series, stream2};
use detflow_engine::config::{CodecSetting, FrameSize, Seconds};
use detflow_writer::WriteMode;

/// How long the listener waits for a `start` before it looks at the shutdown flag again.
const LISTEN_SLICE: Duration = Duration::from_millis(200);

impl Ioc {
    /// Start the thread that takes series after series from `link`. It holds the daemon only
    /// while a series runs or it waits for one (one slice), so dropping the daemon ends it.
    pub(super) fn start_listener(
        self: &Arc<Self>,
        link: stream2::Stream2Link,
        silence: Duration,
    ) -> Result<(), StartError> {
        let ioc = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("detflow-series".into())
            .spawn(move || listen(&ioc, &link, silence))
            .map_err(StartError::Thread)?;
        *self.listener.lock().unwrap() = Some(thread);
        Ok(())
    }

    /// Run one series into the plugin and follow it to its end.
    fn run_series(self: &Arc<Self>, source: stream2::Stream2Source) {
        let series = source.series().clone();
        let metadata = source.metadata();
        self.post_series(&series, &metadata);
        let mut runs = self.runs.lock().unwrap();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let handle = match self.start_series_run(source) {
            Ok(handle) => handle,
            Err(message) => {
                drop(runs);
                self.post_refused(&format!("series {}: {message}", series.id));
                return;
            }
        };
        let events = handle.events().clone();
        runs.current = Some(handle);
        runs.phase = Phase::Acquiring;
        // A client's Acquire = 1 that waited for a series completes with this one.
        let waiting = runs.awaiting.take().unwrap_or_default();
        self.acquire_waiters.lock().unwrap().extend(waiting);
        drop(runs);
        self.set(Pv::CamAcquire, 1);
        self.post_run_started();
        self.clone().watch_runs(events);
        // An Acquire = 1 that came while the series closed waits for the next.
        if self.runs.lock().unwrap().awaiting.is_some() {
            self.post_awaiting();
        }
    }

    /// A run of the series `source` delivers, into the plugin, with the config's ring,
    /// workers and codec (`auto`: written as the images arrive).
    fn start_series_run(
        self: &Arc<Self>,
        source: stream2::Stream2Source,
    ) -> Result<RunHandle, Refusal> {
        let mut config = self.config.lock().unwrap().clone();
        // Encode with the armed capture's codec, else with the one the plugin would open with.
        if let Some(codec) = self.plugin.codec() {
            config.writer.codec = codec.into();
        }
        let validated = config.validate_run().map_err(|e| e.to_string())?;
        let opened = open_series(source, validated.acquisition)
            .map_err(|e| detflow_engine::error::chain(&e))?;
        self.counter_base
            .store(self.int(Pv::CamArrayCounterRbv) as i32, Ordering::Relaxed);
        self.set(Pv::CamNumImagesCounterRbv, 0);
        let slots = config.ring.slots;
        let observer: Arc<dyn Observer> = self.clone();
        Acquisition::builder(config)
            .opened(opened)
            .sink(self.plugin.clone())
            .observer(observer)
            .ring_slots(slots)
            .start()
            .map_err(|e| detflow_engine::error::chain(&e))
    }

    /// What the series' start says, as the cam's settings and readbacks: the frame size and
    /// type (and the plugins' array size after them), count and frame time, image count,
    /// the detector's description and serial number.
    fn post_series(
        &self,
        series: &stream2::SeriesInfo,
        metadata: &detflow_writer::DetectorMetadata,
    ) {
        let shape = series.shape;
        let config = {
            let mut c = self.config.lock().unwrap();
            let d = &mut c.detector;
            if let Ok(size) = FrameSize::new(shape.width, shape.height) {
                d.size = size;
            }
            d.roi = None;
            d.binning = Default::default();
            d.dtype = shape.pixel_type;
            let seconds = |s: Option<f64>| s.and_then(|s| Seconds::new(s).ok());
            if let Some(t) = seconds(series.count_time) {
                d.exposure = t;
            }
            if let Some(t) = seconds(series.frame_time) {
                d.period = t;
            }
            c.clone()
        };
        for s in settings::SETTINGS {
            if s.pv.plugin() == pvs::Plugin::Cam {
                self.set_both(s.pv, (s.read)(&config).value(s.pv));
            }
        }
        // A rank behind `detflow fan` acquires its share of the series.
        let images = series.images_here().unwrap_or(0).min(i32::MAX as u64) as i32;
        for (pv, value) in [
            (Pv::CamNumImages, images),
            (Pv::CamMaxSizeXRbv, shape.width as i32),
            (Pv::CamMaxSizeYRbv, shape.height as i32),
        ] {
            self.set_both(pv, Value::from(value));
        }
        // Multiple: as many images as the series holds.
        self.set_both(Pv::CamImageMode, Value::from(1));
        let model = series
            .description
            .as_deref()
            .unwrap_or("Stream V2 detector");
        self.set_text(Pv::CamModelRbv, model);
        let serial = metadata.serial_number.as_deref().unwrap_or("");
        self.set_text(Pv::CamSerialNumberRbv, serial);
        self.array_info();
    }

    /// `Acquire` of a detector that sends series: the detector starts itself, so 1 waits
    /// for a series (Acquire_RBV = 1 from now) and its put-callback completes when the
    /// series running, or else the next one, is written; 0 stops waiting. A series that runs
    /// is not stopped: it ends when the detector ends it (Capture = 0 stops writing it).
    pub(super) fn acquire_series(&self, on: bool, req: &WriteRequest) -> WriteReply {
        let mut runs = self.runs.lock().unwrap();
        if !on {
            let cancelled = runs.awaiting.take();
            let idle = runs.phase == Phase::Idle;
            drop(runs);
            complete_all(cancelled.unwrap_or_default(), None);
            if idle {
                self.post_idle();
            }
            return WriteReply::Accept;
        }
        if runs.phase == Phase::Acquiring {
            return wait_in(&self.acquire_waiters, req);
        }
        let waiting = runs.awaiting.get_or_insert_with(Vec::new);
        let reply = if req.is_notify() {
            let c = req.completion();
            waiting.push(c.clone());
            WriteReply::Pending(c)
        } else {
            WriteReply::Accept
        };
        let idle = runs.phase == Phase::Idle;
        drop(runs);
        if idle {
            self.post_awaiting();
        }
        reply
    }

    /// Acquire = 1 waits for a series.
    fn post_awaiting(&self) {
        self.set(Pv::CamAcquire, 1);
        self.set(Pv::CamAcquireRbv, 1);
        self.set(Pv::CamAcquireBusy, 1);
        self.set(Pv::CamDetectorStateRbv, 1);
        self.set_text(Pv::CamStatusMessageRbv, "Waiting for a series");
    }

    fn post_idle(&self) {
        self.set(Pv::CamAcquire, 0);
        self.set(Pv::CamAcquireRbv, 0);
        self.set(Pv::CamAcquireBusy, 0);
        self.set(Pv::CamDetectorStateRbv, 0);
        self.set_text(Pv::CamStatusMessageRbv, "Idle");
    }

    /// `Capture = 1` of a daemon that receives series: arm the plugin (no file yet; it opens
    /// at the next series' first image, with that series' channels and metadata).
    pub(super) fn arm_capture(&self, settings: CaptureSettings) -> Result<(), Refusal> {
        if settings.mode != WriteMode::Stream {
            return Err(format!(
                "FileWriteMode {:?}: a detector's series is written in Stream mode",
                settings.mode
            ));
        }
        let codec: CodecSetting = self.config.lock().unwrap().writer.codec;
        if !self.plugin.arm(settings, codec) {
            return Err("a capture is open already".into());
        }
        tracing::info!("capture armed for the next series");
        self.set(Pv::HdfNumCapturedRbv, 0);
        self.set(Pv::HdfWriteStatus, 0);
        self.set_text(Pv::HdfWriteMessage, "Waiting for a series");
        Ok(())
    }
}

/// Wait for each series' start (in bounded slices, to see a shutdown), run it to its end, and
/// wait for the next, until the daemon shuts down or is gone.
fn listen(ioc: &Weak<Ioc>, link: &stream2::Stream2Link, silence: Duration) {
    tracing::info!("waiting for Stream V2 series from {}", link.endpoint());
    loop {
        let Some(ioc) = ioc.upgrade() else { return };
        if ioc.stopping.load(Ordering::Acquire) {
            return;
        }
        match link.next_series(LISTEN_SLICE, silence, stream2::SeriesExpect::default()) {
            Ok(None) => {}
            Ok(Some(source)) => ioc.run_series(source),
            // A series that cannot be written is skipped; the next one may be fine.
            Err(e) => {
                tracing::error!("{e}");
                ioc.set_text(Pv::CamStatusMessageRbv, &e.to_string());
            }
        }
    }
}
