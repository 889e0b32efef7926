//! detflow-ioc (`detflow serve`): the acquisition engine as a long-lived daemon that is an
//! areaDetector IOC (ADSimDetector `cam1:`, NDFileHDF5 `HDF1:`, NDStdArrays `image1:`) over Channel Access,
//! so that ophyd, apstools and ophyd-async drive it unchanged.
//!
//! The daemon holds one [`Config`], seeded from the file and flags it started with. A write to
//! a setting PV edits the field it maps to (the table in `settings.rs`: PV, how the written
//! value lands in the config, how it reads back), through the field's own check, and is refused, naming the PV and the value, when that check fails; then it is
//! echoed to its `_RBV`. Actions run with that config: a run is
//! `Acquisition::builder(config)`, a capture opens with the writer's
//! [`WriterSettings::capture_settings`](detflow_engine::config::WriterSettings::capture_settings).
//! ImageMode and NumImages stay PV state and set the run's frame count at Acquire.
//!
//! - `cam1:Acquire = 1` starts one engine run ([`Acquisition::builder`]) with the config; its frames go to the HDF1 plugin ([`SharedCapture`]) and, at most
//!   `preview_rate` times a second, to `image1:ArrayData`. A put-callback on it completes when
//!   the run is over: every frame written (`WaitForPlugins = Yes`) or the detector stopped.
//!   An `Acquire = 1` that arrives while a run is closing is queued, and started by the run's
//!   watcher when that run ends; no client's thread waits for it.
//! - `HDF1:Capture = 1` opens a capture ([`CaptureSession`]) with the config's writer settings; it
//!   lives across acquisitions until NumCapture frames are written or `Capture = 0`. Its
//!   put-callback completes then.
//! - With `--backend stream2` the detector starts itself: a listener thread (`series.rs`)
//!   receives series after series on one link from start-up and runs each as one engine run
//!   into the plugin. `Capture = 1` arms the plugin ([`SharedCapture::arm`]): the writer
//!   opens the file at the series' first image (its channels and metadata are known only
//!   then) and closes it when the series ends or NumCapture (0: the series' image count)
//!   images are in; the capture is then complete. One file per series, written whole or not
//!   at all; a series that arrives while Capture = 0 is counted as not captured. The cam's
//!   size, type, timing and image count readbacks follow each series' `start`;
//!   `Acquire = 1` waits for the running or next series and completes when it ends;
//!   `Acquire = 0` stops waiting, never the detector.
//!
//! Threads: the CA server's (writes arrive on client threads and only ever block briefly),
//! the engine's, one watcher per chain of runs (it reacts to the run's events: Acquire falls,
//! the run ends, the queued run starts; and posts rates on a 100 ms tick), one preview
//! thread, and with `--backend stream2` the series listener (which is the watcher of the
//! series it starts). Lock order: `runs` → `acquire_waiters`; `runs` → the plugin's lock (held by the
//! engine only to take its capture out or put it back: no HDF5 call is made under it);
//! `config` is taken last and alone (a copy is made under it, nothing else). The engine's
//! observer calls are made under no lock and only post PVs and complete waiters.

#![warn(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

mod cam;
mod plugin;
mod preview;
pub mod pvs;
mod series;
mod settings;

use plugin::with_slash;
pub use plugin::{DataRootError, data_roots};
use preview::image_native;

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use detflow_ca::{Completion, Eca, NativeType, PvHandle, Server, Value, WriteReply, WriteRequest};
use detflow_hal::{ColorMode, FrameMeta, FrameShape, PixelType};
use detflow_writer::{CaptureSession, CaptureSettings, Codec, DataRoots, FileStatus};

use detflow_engine::acquisition::geometry;
use detflow_engine::backend::stream2::Stream2Link;
use detflow_engine::config::{BackendConfig, CodecSetting, Config};
use detflow_engine::{
    Acquisition, Closed, Flushed, Observer, RunEvent, RunHandle, SharedCapture, State, Status,
    Summary,
};
use pvs::{ArrayInfo, Pv, text_value};

/// What `detflow serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Detector, ring and writer settings at start-up (the same file as `detflow acquire
    /// --config`); the setting PVs edit them from there.
    pub config: Config,
    /// PV prefix, e.g. `ad:`.
    pub prefix: String,
    /// Directories files may be written under (existing; made absolute and canonical).
    pub data_roots: DataRoots,
    /// Channel Access port (`None`: EPICS_CAS_SERVER_PORT / EPICS_CA_SERVER_PORT / 5064).
    pub ca_port: Option<u16>,
    /// The interface to serve on.
    pub interface: std::net::Ipv4Addr,
    /// Most `image1:ArrayData` updates per second (0: none).
    pub preview_rate: f64,
}

/// The running IOC.
pub struct Ioc {
    server: Mutex<Option<Server>>,
    /// Every served PV, at its index in the table: `pvs[pv as usize]`.
    pvs: Vec<PvHandle>,
    opts: ServeOptions,
    /// The settings the PVs edit, and runs and captures use.
    config: Mutex<Config>,
    plugin: Arc<SharedCapture>,
    runs: Mutex<Runs>,
    /// Signalled when the runs go idle.
    runs_idle: Condvar,
    /// Set while a capture opened by a run for Single mode + AutoSave is open.
    auto_save_open: AtomicBool,
    acquire_waiters: Mutex<Vec<Completion>>,
    capture_waiters: Mutex<Vec<Completion>>,
    /// cam1:ArrayCounter at the start of the current run.
    counter_base: AtomicI32,
    /// Frames lost (any cause: detector FIFO, link, ring, writer) by runs that ended, since
    /// start-up: HDF1:DroppedArrays_RBV (and our cam1:DroppedFrames_RBV) with the current
    /// run's.
    lost_before: AtomicU64,
    last_full_name: Mutex<PathBuf>,
    last_number: AtomicI32,
    preview: Sender<(FrameShape, Vec<u8>)>,
    preview_free: Receiver<Vec<u8>>,
    preview_recycle: Sender<Vec<u8>>,
    last_preview: Mutex<Option<Instant>>,
    /// Set by [`Ioc::shutdown`] (under `runs`): no series starts after it.
    stopping: AtomicBool,
    /// The thread that receives series (`--backend stream2`), joined at shutdown.
    listener: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The detector sends series (`--backend stream2`): runs start when a series does.
    series_mode: bool,
}

impl std::fmt::Debug for Ioc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioc")
            .field("prefix", &self.opts.prefix)
            .field("pvs", &self.pvs.len())
            .finish_non_exhaustive()
    }
}

/// A refused write: the message names the setting and the value.
type Refusal = String;

/// Why the IOC did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The Channel Access server could not be started (e.g. its port is taken).
    #[error("cannot start the Channel Access server")]
    Server(#[source] detflow_ca::ServerError),
    /// A PV could not be served.
    #[error("cannot serve {name}")]
    Pv {
        /// The PV's full name.
        name: String,
        /// The server's refusal.
        #[source]
        source: detflow_ca::ServerError,
    },
    /// The preview thread or the series listener could not be started.
    #[error("cannot start the preview thread or the series listener")]
    Thread(#[source] std::io::Error),
    /// The Stream V2 socket could not be made.
    #[error(transparent)]
    Stream2(detflow_engine::backend::stream2::Stream2Error),
}

impl Ioc {
    /// Serve every PV, set the start-up values ("already primed": the plugins' array size,
    /// data type and colour mode are the cam's) and hook the writes.
    pub fn start(mut opts: ServeOptions) -> Result<Arc<Ioc>, StartError> {
        let mut builder = Server::builder().interface(opts.interface);
        if let Some(port) = opts.ca_port {
            builder = builder.port(port);
        }
        let server = builder.build().map_err(StartError::Server)?;
        let config = seeded(std::mem::take(&mut opts.config), &opts.data_roots);
        let link = match &config.backend {
            BackendConfig::Stream2 {
                connect,
                rcvhwm,
                timeout,
                ..
            } => Some((
                Stream2Link::connect(connect, *rcvhwm).map_err(StartError::Stream2)?,
                timeout.duration(),
            )),
            _ => None,
        };
        let image = (
            image_native(config.detector.dtype),
            config.detector.size.pixels(),
        );
        let mut pvs = Vec::with_capacity(Pv::ALL.len());
        for &pv in Pv::ALL {
            let handle = server
                .add_pv(pvs::spec(&opts.prefix, pv, image))
                .map_err(|source| StartError::Pv {
                    name: format!("{}{pv}", opts.prefix),
                    source,
                })?;
            pvs.push(handle);
        }
        let (preview, preview_rx) = bounded::<(FrameShape, Vec<u8>)>(1);
        let (preview_recycle, preview_free) = bounded::<Vec<u8>>(2);
        let ioc = Arc::new(Ioc {
            server: Mutex::new(Some(server)),
            pvs,
            plugin: Arc::new(SharedCapture::new(true)),
            runs: Mutex::new(Runs::default()),
            runs_idle: Condvar::new(),
            auto_save_open: AtomicBool::new(false),
            acquire_waiters: Mutex::new(Vec::new()),
            capture_waiters: Mutex::new(Vec::new()),
            counter_base: AtomicI32::new(0),
            lost_before: AtomicU64::new(0),
            last_full_name: Mutex::new(PathBuf::new()),
            last_number: AtomicI32::new(config.writer.number),
            config: Mutex::new(config),
            preview,
            preview_free,
            preview_recycle,
            last_preview: Mutex::new(None),
            stopping: AtomicBool::new(false),
            listener: Mutex::new(None),
            series_mode: link.is_some(),
            opts,
        });
        ioc.initial_values();
        ioc.hook_writes();
        if let Some((link, silence)) = link {
            ioc.start_listener(link, silence)?;
        }
        {
            let ioc = Arc::downgrade(&ioc);
            std::thread::Builder::new()
                .name("detflow-preview".into())
                .spawn(move || {
                    for (shape, bytes) in preview_rx {
                        let Some(ioc) = ioc.upgrade() else { return };
                        ioc.post_preview(shape, &bytes);
                        let _ = ioc.preview_recycle.try_send(bytes);
                    }
                })
                .map_err(StartError::Thread)?;
        }
        Ok(ioc)
    }

    /// The CA port served.
    pub fn port(&self) -> u16 {
        self.server.lock().unwrap().as_ref().map_or(0, |s| s.port())
    }

    /// Number of PVs served.
    pub fn pv_count(&self) -> usize {
        self.pvs.len()
    }

    /// Stop any acquisition, write what the ring holds, close the capture's files, stop
    /// serving. Returns once every file is closed.
    pub fn shutdown(&self) {
        let cancelled = {
            let mut runs = self.runs.lock().unwrap();
            self.stopping.store(true, Ordering::Release);
            if let Some(run) = runs.current.as_ref() {
                run.stop();
            }
            let mut cancelled = runs.queued.take().unwrap_or_default();
            cancelled.extend(runs.awaiting.take().unwrap_or_default());
            cancelled
        };
        complete_all(cancelled, None);
        // The watcher drains the run and closes its files, then says so (bounded: a disk
        // that hangs for ten minutes is given up on, and the capture closed regardless).
        let runs = self.runs.lock().unwrap();
        let (runs, waited) = self
            .runs_idle
            .wait_timeout_while(runs, Duration::from_secs(600), |r| r.phase != Phase::Idle)
            .unwrap();
        drop(runs);
        if waited.timed_out() {
            tracing::error!("the run did not end within 600 s; closing the capture anyway");
        }
        let listener = self.listener.lock().unwrap().take();
        if let Some(listener) = listener {
            // It sees `stopping` within one wait for a start.
            let _ = listener.join();
        }
        self.end_capture(None);
        if let Some(server) = self.server.lock().unwrap().take() {
            server.shutdown();
        }
    }

    // ---- PV access -------------------------------------------------------------------

    /// A served PV: every [`Pv`] is, so this is an index, not a lookup by name.
    fn pv(&self, pv: Pv) -> &PvHandle {
        &self.pvs[pv as usize]
    }

    fn set(&self, pv: Pv, value: impl Into<Value>) {
        if let Err(e) = self.pv(pv).post(value) {
            tracing::warn!("cannot post {pv}: {e}");
        }
    }

    /// Post a text to a string or long-string PV.
    fn set_text(&self, pv: Pv, text: &str) {
        self.set(pv, text_value(&pv.kind(), text));
    }

    /// Post to a PV and to its readback, if it has one.
    fn set_both(&self, pv: Pv, value: Value) {
        if let Some(rbv) = pv.readback() {
            self.set(rbv, value.clone());
        }
        self.set(pv, value);
    }

    fn num(&self, pv: Pv) -> f64 {
        self.pv(pv).value().get_f64(0).unwrap_or(0.0)
    }

    fn int(&self, pv: Pv) -> i64 {
        self.num(pv) as i64
    }

    fn flag(&self, pv: Pv) -> bool {
        self.num(pv) != 0.0
    }

    fn text(&self, pv: Pv) -> String {
        self.pv(pv).value().as_text().unwrap_or_default()
    }

    // ---- start-up ----------------------------------------------------------------------

    /// The start-up values: each setting PV from the config ([`settings::SETTINGS`]), the
    /// codec's PVs from its codec, FilePath resolved under the data roots, and the rest
    /// ([`Ioc::fixed_values`]) as a freshly booted simDetector IOC has them.
    fn initial_values(&self) {
        let c = self.config.lock().unwrap().clone();
        for s in settings::SETTINGS {
            self.set_both(s.pv, (s.read)(&c).value(s.pv));
        }
        let frames = c.detector.frames.clamp(1, i32::MAX as u64) as i32;
        let slots = c.ring.slots_for(c.detector.frame_bytes()) as i32;
        let (sx, sy) = c.detector.size.pair();
        for (pv, value) in [
            (Pv::CamNumImages, frames),
            (Pv::HdfQueueSize, slots),
            (Pv::HdfQueueFree, slots),
            (Pv::CamMaxSizeXRbv, sx as i32),
            (Pv::CamMaxSizeYRbv, sy as i32),
        ] {
            self.set_both(pv, Value::from(value));
        }
        let rate = self.opts.preview_rate;
        let min_time = if rate > 0.0 { 1.0 / rate } else { 0.0 };
        self.set_both(Pv::ImageMinCallbackTime, Value::from(min_time));
        for (pv, value) in self.fixed_values() {
            if pv.is_readback() {
                self.set(pv, value);
            } else {
                self.set_both(pv, value);
            }
        }
        if self.series_mode {
            // As the engine's Stream V2 source names it; Model follows each series' start.
            self.set_text(Pv::CamManufacturerRbv, "DECTRIS Stream V2");
            self.set_text(Pv::CamModelRbv, "Stream V2 detector");
            self.set_text(Pv::CamSerialNumberRbv, "");
        }
        self.post_codec(c.writer.codec.resolve(Codec::None));
        if self.series_mode && c.writer.codec == CodecSetting::Auto {
            // The detector's compressed images are written as they arrive.
            self.set_text(Pv::HdfCodec, plugin::AUTO);
            self.set_text(Pv::HdfCodecRbv, plugin::AUTO);
        }
        // FilePath: the configured one, resolved under the first data root when seeded.
        let path = c.writer.path;
        self.set_text(Pv::HdfFilePath, &path);
        self.set_text(Pv::HdfFilePathRbv, &path);
        self.check_file_path(&path, false);
        self.array_info();
        self.plugin_enable();
    }

    /// The PVs no setting decides: identities, versions, and areaDetector's defaults.
    fn fixed_values(&self) -> Vec<(Pv, Value)> {
        let t = |s: &str| Value::from(s);
        let i = |n: i32| Value::from(n);
        let f = Value::from;
        let version = concat!("detflow ", env!("CARGO_PKG_VERSION"));
        vec![
            // cam1: ADBase + simDetector
            (Pv::CamPortNameRbv, t("SIM1")),
            (Pv::CamManufacturerRbv, t("Simulated detector")),
            (Pv::CamModelRbv, t("detflow simulator")),
            (Pv::CamSerialNumberRbv, t("sim-0001")),
            (Pv::CamFirmwareVersionRbv, t(env!("CARGO_PKG_VERSION"))),
            (Pv::CamSDKVersionRbv, t(env!("CARGO_PKG_VERSION"))),
            (Pv::CamDriverVersionRbv, t(version)),
            (Pv::CamADCoreVersionRbv, t("3.12.1")),
            (Pv::CamColorMode, i(0)),
            (Pv::CamNumExposures, i(1)),
            (Pv::CamImageMode, i(0)),
            (Pv::CamTriggerMode, i(0)),
            (Pv::CamArrayCallbacks, i(1)),
            (Pv::CamWaitForPlugins, i(0)),
            (Pv::CamGainRed, f(1.0)),
            (Pv::CamGainGreen, f(1.0)),
            (Pv::CamGainBlue, f(1.0)),
            (Pv::CamTemperature, f(25.0)),
            (Pv::CamTemperatureActual, f(25.0)),
            (Pv::CamDetectorStateRbv, i(0)),
            (Pv::CamStatusMessageRbv, t("Idle")),
            (Pv::CamShutterStatusRbv, i(0)),
            // HDF1: NDPluginBase + NDFile + NDFileHDF5
            (Pv::HdfPortNameRbv, t("FileHDF1")),
            (Pv::HdfPluginTypeRbv, t("NDFileHDF5")),
            (Pv::HdfNDArrayPort, t("SIM1")),
            (Pv::HdfADCoreVersionRbv, t("3.12.1")),
            (Pv::HdfDriverVersionRbv, t(version)),
            (Pv::HdfEnableCallbacks, i(1)),
            (Pv::HdfArrayCallbacks, i(1)),
            (Pv::HdfBlockingCallbacks, i(0)),
            (Pv::HdfFileFormat, i(0)),
            (Pv::HdfAutoSave, i(0)),
            (Pv::HdfSWMRSupportedRbv, i(1)),
            (Pv::HdfNumFramesChunks, i(1)),
            (Pv::HdfChunkSizeAuto, i(1)),
            (Pv::HdfNDAttributeChunk, i(16384)),
            (Pv::HdfBloscShuffle, i(1)),
            (Pv::HdfWriteStatus, i(0)),
            // image1: NDPluginBase + NDStdArrays
            (Pv::ImagePortNameRbv, t("IMAGE1")),
            (Pv::ImagePluginTypeRbv, t("NDPluginStdArrays")),
            (Pv::ImageNDArrayPort, t("SIM1")),
            (Pv::ImageADCoreVersionRbv, t("3.12.1")),
            (Pv::ImageDriverVersionRbv, t(version)),
            (Pv::ImageEnableCallbacks, i(1)),
            (Pv::ImageArrayCallbacks, i(1)),
            (Pv::ImageBlockingCallbacks, i(0)),
        ]
    }

    /// The cam's output size and type, posted to the cam's readbacks and (so that nothing
    /// needs priming) to the plugins'.
    fn array_info(&self) {
        let shape = self.frame_shape();
        let (w, h) = match &shape {
            Ok(s) => (s.width as i32, s.height as i32),
            Err(_) => (0, 0),
        };
        let dtype = self.config.lock().unwrap().detector.dtype.nd_data_type();
        let color = self.int(Pv::CamColorModeRbv) as i32;
        let bytes = shape.map(|s| s.bytes() as i32).unwrap_or(0);
        self.set(Pv::CamArraySizeXRbv, w);
        self.set(Pv::CamArraySizeYRbv, h);
        self.set(Pv::CamArraySizeZRbv, 0);
        self.set(Pv::CamArraySizeRbv, bytes);
        self.set_both(Pv::CamDataType, Value::from(dtype));
        for p in [ArrayInfo::HDF, ArrayInfo::IMAGE] {
            for (pv, v) in [
                (p.array_size0, w),
                (p.array_size1, h),
                (p.array_size2, 0),
                (p.array_size_x, w),
                (p.array_size_y, h),
                (p.array_size_z, 0),
                (p.ndimensions, 2),
                (p.data_type, dtype),
                (p.color_mode, color),
                (p.array_size, bytes),
            ] {
                self.set_both(pv, Value::from(v));
            }
            self.set_both(p.dimensions, Value::from(vec![w, h]));
        }
        self.set(Pv::HdfNumRowChunksRbv, h);
        self.set(Pv::HdfNumColChunksRbv, w);
    }

    // ---- writes ------------------------------------------------------------------------

    fn hook_writes(self: &Arc<Self>) {
        for &pv in Pv::ALL {
            if pv.access() == detflow_ca::Access::ReadOnly {
                continue;
            }
            let ioc = Arc::downgrade(self);
            self.pv(pv).on_write(move |req| {
                let Some(ioc) = ioc.upgrade() else {
                    return WriteReply::reject();
                };
                ioc.on_write(pv, req)
            });
        }
    }

    /// A refused write is answered as rsrv answers a put that fails: ECA_PUTFAIL on the
    /// put-callback, CA_PROTO_ERROR(ECA_PUTFAIL) for a plain put. The message goes to
    /// StatusMessage / WriteMessage, and the PV stays in WRITE alarm (INVALID) until a write
    /// to it is accepted, as an asyn record does.
    fn on_write(self: &Arc<Self>, pv: Pv, req: &WriteRequest) -> WriteReply {
        let value = req.value().clone();
        tracing::debug!(%pv, ?value, "put");
        let reply = match self.apply(pv, value, req) {
            Ok(reply) => reply,
            Err(message) => {
                tracing::warn!("{}{pv}: {message}", self.opts.prefix);
                let target = if pv.plugin() == pvs::Plugin::Hdf {
                    Pv::HdfWriteMessage
                } else {
                    Pv::CamStatusMessageRbv
                };
                self.set_text(target, &message);
                WriteReply::reject()
            }
        };
        // Posted before the reply is queued: the client sees the alarm when its put returns.
        req.pv()
            .set_alarm(if matches!(reply, WriteReply::Reject(_)) {
                detflow_ca::Alarm::WRITE_FAILED
            } else {
                detflow_ca::Alarm::NONE
            });
        reply
    }

    /// Check a write, store it (in the config for a setting PV), echo it to its readback,
    /// and act on it.
    fn apply(
        self: &Arc<Self>,
        pv: Pv,
        value: Value,
        req: &WriteRequest,
    ) -> Result<WriteReply, Refusal> {
        let num = value.get_f64(0).unwrap_or(0.0);
        let refuse = |why: String| format!("{pv} {}: {why}", settings::shown(pv, &value));
        match pv {
            Pv::CamAcquire => return Ok(self.acquire(num != 0.0, req)),
            Pv::HdfCapture => return self.capture(num != 0.0, req),
            Pv::HdfFlushNow => {
                if num != 0.0 {
                    self.flush_now();
                }
                return Ok(WriteReply::Accept);
            }
            Pv::HdfFilePath => {
                self.set_file_path(&value.as_text().unwrap_or_default());
                return Ok(WriteReply::Accept);
            }
            _ => {}
        }
        if let Some(setting) = settings::setting(pv) {
            let read = {
                let mut config = self.config.lock().unwrap();
                let mut next = config.clone();
                (setting.write)(&mut next, &value).map_err(refuse)?;
                *config = next;
                (setting.read)(&config)
            };
            self.echo(pv, read.value(pv));
        } else if let Some(codec) = self.codec_setting(pv, &value) {
            let codec = codec.map_err(refuse)?;
            self.config.lock().unwrap().writer.codec = codec;
            self.echo(pv, value);
            if pv != Pv::HdfCodec && self.text(Pv::HdfCodecRbv) == plugin::AUTO {
                // An areaDetector codec PV written: `auto` no longer holds.
                self.set_text(Pv::HdfCodec, "");
                self.set_text(Pv::HdfCodecRbv, "");
            }
        } else {
            Self::check_state(pv, &value).map_err(refuse)?;
            self.echo(pv, value);
        }
        self.after_write(pv, num);
        Ok(WriteReply::Accept)
    }

    /// Post `value` to `pv`'s readback, if it has one.
    fn echo(&self, pv: Pv, value: Value) {
        if let Some(rbv) = pv.readback() {
            self.set(rbv, value);
        }
    }

    /// The checks of the PVs that are state of the IOC's own rather than settings.
    fn check_state(pv: Pv, value: &Value) -> Result<(), String> {
        let num = value.get_f64(0).unwrap_or(0.0);
        match pv {
            Pv::HdfWriteFile | Pv::HdfReadFile if num != 0.0 => Err("not supported; use \
                Capture in Capture or Stream mode, or FileWriteMode Single with AutoSave"
                .into()),
            // 0 is what ophyd-async sends for Continuous; Multiple takes it as 1.
            Pv::CamNumImages | Pv::CamNumExposures => {
                settings::whole(value, 0, i32::MAX.into()).map(drop)
            }
            Pv::CamColorMode if num != 0.0 => Err("the detector is Mono only".into()),
            Pv::CamTriggerMode if num != 0.0 => {
                Err("the simulated detector triggers internally only".into())
            }
            Pv::HdfNumFramesChunks if num > 1.0 => Err("detflow writes one frame per chunk \
                (direct chunk write); use 1"
                .into()),
            _ => Ok(()),
        }
    }

    /// What follows from a write accepted.
    fn after_write(&self, pv: Pv, num: f64) {
        match pv {
            Pv::CamSizeX
            | Pv::CamSizeY
            | Pv::CamMinX
            | Pv::CamMinY
            | Pv::CamBinX
            | Pv::CamBinY
            | Pv::CamDataType
            | Pv::CamColorMode => self.array_info(),
            Pv::CamArrayCounter => {
                self.counter_base.store(num as i32, Ordering::Relaxed);
                self.set(Pv::CamArrayCounterRbv, num as i32);
            }
            Pv::HdfArrayCounter | Pv::ImageArrayCounter => self.echo(pv, Value::from(num as i32)),
            Pv::HdfEnableCallbacks | Pv::CamArrayCallbacks => {
                // The stored value is the new one only after this returns.
                self.plugin_enable_with(Some(pv), num != 0.0);
            }
            _ => {}
        }
    }

    fn plugin_enable(&self) {
        self.plugin_enable_with(None, false);
    }

    /// HDF1 takes frames when its EnableCallbacks and the cam's ArrayCallbacks are on.
    fn plugin_enable_with(&self, changed: Option<Pv>, value: bool) {
        let get = |pv: Pv| {
            if Some(pv) == changed {
                value
            } else {
                self.flag(pv)
            }
        };
        let on = get(Pv::HdfEnableCallbacks) && get(Pv::CamArrayCallbacks);
        self.plugin.set_enabled(on);
    }
}

/// The config the daemon starts with: FilePath resolved under the first data root (as a
/// write to it is), the simulated picture made explicit (its PVs edit it), and none of
/// `acquire`'s value-reference and master-file outputs (the daemon names its files by its PVs
/// alone).
fn seeded(mut config: Config, roots: &DataRoots) -> Config {
    let path = plugin::resolve(roots, &config.writer.path);
    config.writer.path = with_slash(&path.to_string_lossy());
    if !matches!(config.backend, BackendConfig::Stream2 { .. }) {
        config.detector.set_picture(config.detector.picture());
    }
    config.writer.refs = None;
    config.writer.ref_pattern = None;
    config.writer.vds = None;
    config
}

/// The reply to a write that finishes later (Acquire, Capture): a put-callback waits in
/// `waiters` until [`complete`]; a plain put is done now.
fn wait_in(waiters: &Mutex<Vec<Completion>>, req: &WriteRequest) -> WriteReply {
    if req.is_notify() {
        let c = req.completion();
        waiters.lock().unwrap().push(c.clone());
        WriteReply::Pending(c)
    } else {
        WriteReply::Accept
    }
}

/// Finish every put-callback waiting in `waiters`, with `error` if given.
fn complete(waiters: &Mutex<Vec<Completion>>, error: Option<Eca>) {
    let waiting = std::mem::take(&mut *waiters.lock().unwrap());
    complete_all(waiting, error);
}

/// Finish the put-callbacks `waiting`, with `error` if given.
fn complete_all(waiting: Vec<Completion>, error: Option<Eca>) {
    for c in waiting {
        match error {
            None => c.complete(),
            Some(eca) => c.fail(eca),
        }
    }
}

/// The cam's runs: the current one, and the one asked for while it closes.
#[derive(Default)]
struct Runs {
    current: Option<RunHandle>,
    phase: Phase,
    /// `Acquire = 1` arrived while the current run was closing: its watcher starts a run
    /// when this one ends; these put-callbacks complete with that run.
    queued: Option<Vec<Completion>>,
    /// A detector that sends series: `Acquire = 1` waits for the next series; these
    /// put-callbacks complete when it ends.
    awaiting: Option<Vec<Completion>>,
}

/// Where the cam's runs are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No run.
    #[default]
    Idle,
    /// The detector is acquiring (Acquire_RBV = 1).
    Acquiring,
    /// The detector stopped; the run is writing its last frames and closing its files.
    Closing,
}

impl Observer for Ioc {
    fn frame_acquired(&self, count: u64, meta: &FrameMeta, bytes: &[u8]) {
        let counter = self
            .counter_base
            .load(Ordering::Relaxed)
            .wrapping_add(count as i32);
        self.set(Pv::CamArrayCounterRbv, counter);
        self.set(Pv::CamNumImagesCounterRbv, count as i32);
        if !self.flag(Pv::CamArrayCallbacksRbv) {
            return;
        }
        // Per frame: names spelled out, no formatting on the detector thread.
        const PLUGINS: [[Pv; 3]; 2] = [
            [
                Pv::HdfEnableCallbacksRbv,
                Pv::HdfArrayCounterRbv,
                Pv::HdfUniqueIdRbv,
            ],
            [
                Pv::ImageEnableCallbacksRbv,
                Pv::ImageArrayCounterRbv,
                Pv::ImageUniqueIdRbv,
            ],
        ];
        let mut image_enabled = false;
        for [enabled, counter, unique_id] in PLUGINS {
            let on = self.flag(enabled);
            if on {
                self.set(counter, self.int(counter) as i32 + 1);
                self.set(unique_id, meta.unique_id as i32);
            }
            image_enabled = on; // image1 comes last
        }
        // The newest frame to image1, at most preview_rate a second; never waits. (An image
        // that arrived compressed is not decoded for it.)
        let rate = self.opts.preview_rate;
        if rate <= 0.0 || !image_enabled || bytes.is_empty() {
            return;
        }
        let due = {
            let mut last = self.last_preview.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0 / rate);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let mut buf = self.preview_free.try_recv().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(bytes);
            if let Err(TrySendError::Full((_, buf)) | TrySendError::Disconnected((_, buf))) =
                self.preview.try_send((meta.shape, buf))
            {
                let _ = self.preview_recycle.try_send(buf);
            }
        }
    }

    fn frame_captured(&self, status: &FileStatus) {
        self.set(
            Pv::HdfNumCapturedRbv,
            status.num_captured.min(i32::MAX as u64) as i32,
        );
        self.post_file_status(status);
    }

    fn capture_ended(&self, status: &FileStatus, error: Option<&str>) {
        match error {
            None => tracing::info!(
                file = %status.full_file_name.display(),
                frames = status.num_captured,
                "capture complete"
            ),
            Some(e) => tracing::warn!(
                file = %status.full_file_name.display(),
                frames = status.num_captured,
                "capture ended: {e}"
            ),
        }
        self.capture_done(status, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_convert_like_ndstdarrays() {
        use preview::image_value;
        let px: Vec<u8> = [1u16, 40000, 7]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            image_value(NativeType::Short, PixelType::U16, &px, 10),
            Value::Short(vec![1i16, 40000u16 as i16, 7].into())
        );
        assert_eq!(
            image_value(NativeType::Long, PixelType::U16, &px, 2),
            Value::Long(vec![1, 40000].into())
        );
    }

    #[test]
    fn file_paths_end_with_a_slash() {
        assert_eq!(with_slash("/data/x"), "/data/x/");
        assert_eq!(with_slash("/data/x/"), "/data/x/");
    }
}
