//! detflow-ioc (`detflow serve`): the acquisition engine as a long-lived daemon that is an
//! areaDetector IOC (ADSimDetector `cam1:`, NDFileHDF5 `HDF1:`, NDStdArrays `image1:`) over Channel Access,
//! so that ophyd, apstools and ophyd-async drive it unchanged.
//!
//! The PVs are the state: a setpoint write is checked, stored, and echoed to its `_RBV`;
//! actions read the settings they need from the readbacks when they run.
//!
//! - `cam1:Acquire = 1` starts one engine run ([`Acquisition::builder`]) with the cam's
//!   settings; its frames go to the HDF1 plugin ([`SharedCapture`]) and, at most
//!   `preview_rate` times a second, to `image1:ArrayData`. A put-callback on it completes when
//!   the run is over: every frame written (`WaitForPlugins = Yes`) or the detector stopped.
//!   An `Acquire = 1` that arrives while a run is closing is queued, and started by the run's
//!   watcher when that run ends; no client's thread waits for it.
//! - `HDF1:Capture = 1` opens a capture ([`CaptureSession`]) with the plugin's settings; it
//!   lives across acquisitions until NumCapture frames are written or `Capture = 0`. Its
//!   put-callback completes then.
//!
//! Threads: the CA server's (writes arrive on client threads and only ever block briefly),
//! the engine's, one watcher per chain of runs (it reacts to the run's events: Acquire falls,
//! the run ends, the queued run starts; and posts rates on a 100 ms tick), one preview
//! thread. Lock order: `runs` → `acquire_waiters`; `runs` → the plugin's lock (held by the
//! engine only to take its capture out or put it back: no HDF5 call is made under it); the
//! engine's observer calls are made under no lock and only post PVs and complete waiters.

#![warn(missing_docs, missing_debug_implementations)]

mod cam;
mod plugin;
mod preview;
pub mod pvs;

pub use plugin::data_roots;
use plugin::with_slash;
use preview::image_native;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use detflow_ca::{Completion, Eca, NativeType, PvHandle, Server, Value, WriteReply, WriteRequest};
use detflow_hal::{
    AcquisitionConfig, Binning, ColorMode, FrameMeta, FrameShape, ImageMode, PixelType, Roi,
    TriggerMode,
};
use detflow_writer::{
    CaptureSession, CaptureSettings, Codec, DataRoots, FileNaming, FileStatus, FileTemplate,
    WriteMode,
};

use detflow_engine::acquisition::geometry;
use detflow_engine::config::{BackendSpec, Config, Validated};
use detflow_engine::{
    Acquisition, Closed, Flushed, Observer, RunEvent, RunHandle, SharedCapture, State, Status,
    Summary,
};
use pvs::{kind, split, text_value};

/// What `detflow serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Detector, ring and writer defaults (the same file as `detflow acquire --config`).
    pub config: Config,
    /// The checked form of `config`.
    pub validated: Validated,
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
    pvs: HashMap<String, PvHandle>,
    opts: ServeOptions,
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

impl Ioc {
    /// Serve every PV, set the start-up values ("already primed": the plugins' array size,
    /// data type and colour mode are the cam's) and hook the writes.
    pub fn start(opts: ServeOptions) -> anyhow::Result<Arc<Ioc>> {
        let mut builder = Server::builder().interface(opts.interface);
        if let Some(port) = opts.ca_port {
            builder = builder.port(port);
        }
        let server = builder
            .build()
            .context("cannot start the Channel Access server")?;
        let sensor = opts.validated.sensor;
        let image = (
            image_native(opts.validated.acquisition.pixel_type),
            sensor.0 as usize * sensor.1 as usize,
        );
        let mut pvs = HashMap::new();
        for suffix in pvs::suffixes() {
            let spec = pvs::spec(&opts.prefix, &suffix, image);
            let handle = server
                .add_pv(spec)
                .with_context(|| format!("cannot serve {}{suffix}", opts.prefix))?;
            pvs.insert(suffix, handle);
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
            last_number: AtomicI32::new(opts.config.writer.number),
            preview,
            preview_free,
            preview_recycle,
            last_preview: Mutex::new(None),
            opts,
        });
        ioc.initial_values();
        ioc.hook_writes();
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
                })?;
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
            if let Some(run) = runs.current.as_ref() {
                run.stop();
            }
            runs.queued.take()
        };
        complete_all(cancelled.unwrap_or_default(), None);
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
        self.end_capture(None);
        if let Some(server) = self.server.lock().unwrap().take() {
            server.shutdown();
        }
    }

    // ---- PV access -------------------------------------------------------------------

    /// A served PV. Every name used in this file is checked to be served by a test; a
    /// missing one is a bug, logged rather than taking the daemon down.
    fn pv(&self, suffix: &str) -> Option<&PvHandle> {
        let pv = self.pvs.get(suffix);
        if pv.is_none() {
            tracing::error!("{suffix} is not in the PV set");
        }
        pv
    }

    fn set(&self, suffix: &str, value: impl Into<Value>) {
        if let Some(Err(e)) = self.pv(suffix).map(|pv| pv.post(value)) {
            tracing::warn!("cannot post {suffix}: {e}");
        }
    }

    /// Post a text to a string or long-string PV.
    fn set_text(&self, suffix: &str, text: &str) {
        let (plugin, base) = split(suffix);
        self.set(suffix, text_value(&kind(plugin, base), text));
    }

    /// Post to `X` and `X_RBV` (whichever exist).
    fn set_both(&self, suffix: &str, value: Value) {
        let rbv = format!("{suffix}_RBV");
        if self.pvs.contains_key(&rbv) {
            self.set(&rbv, value.clone());
        }
        if self.pvs.contains_key(suffix) {
            self.set(suffix, value);
        }
    }

    fn num(&self, suffix: &str) -> f64 {
        self.pv(suffix)
            .and_then(|pv| pv.value().get_f64(0))
            .unwrap_or(0.0)
    }

    fn int(&self, suffix: &str) -> i64 {
        self.num(suffix) as i64
    }

    fn flag(&self, suffix: &str) -> bool {
        self.num(suffix) != 0.0
    }

    fn text(&self, suffix: &str) -> String {
        self.pv(suffix)
            .and_then(|pv| pv.value().as_text())
            .unwrap_or_default()
    }

    // ---- start-up ----------------------------------------------------------------------

    fn initial_values(&self) {
        let c = &self.opts.config;
        let v = &self.opts.validated;
        let (sx, sy) = v.sensor;
        let acq = &v.acquisition;
        let t = |s: &str| Value::from(s);
        let i = |n: i64| Value::from(n as i32);
        let f = Value::from;
        let version = concat!("detflow ", env!("CARGO_PKG_VERSION"));
        // simDetector's parameters: a useful picture at this size and type.
        let mode = c
            .detector
            .mode
            .parse()
            .unwrap_or(detflow_sim::SimMode::Peaks);
        let p = detflow_engine::acquisition::demo_params(mode, v.sensor, acq.pixel_type);
        let values: Vec<(&str, Value)> = vec![
            // cam1: ADBase + simDetector
            ("cam1:PortName_RBV", t("SIM1")),
            ("cam1:Manufacturer_RBV", t("Simulated detector")),
            ("cam1:Model_RBV", t("detflow simulator")),
            ("cam1:SerialNumber_RBV", t("sim-0001")),
            ("cam1:FirmwareVersion_RBV", t(env!("CARGO_PKG_VERSION"))),
            ("cam1:SDKVersion_RBV", t(env!("CARGO_PKG_VERSION"))),
            ("cam1:DriverVersion_RBV", t(version)),
            ("cam1:ADCoreVersion_RBV", t("3.12.1")),
            ("cam1:MaxSizeX_RBV", i(sx.into())),
            ("cam1:MaxSizeY_RBV", i(sy.into())),
            ("cam1:MinX", i(acq.roi.min_x.into())),
            ("cam1:MinY", i(acq.roi.min_y.into())),
            ("cam1:SizeX", i(acq.roi.size_x.into())),
            ("cam1:SizeY", i(acq.roi.size_y.into())),
            ("cam1:BinX", i(acq.binning.x.into())),
            ("cam1:BinY", i(acq.binning.y.into())),
            ("cam1:DataType", i(acq.pixel_type.nd_data_type().into())),
            ("cam1:ColorMode", i(0)),
            ("cam1:AcquireTime", f(c.detector.exposure)),
            ("cam1:AcquirePeriod", f(c.detector.period)),
            (
                "cam1:NumImages",
                i(c.detector.frames.clamp(1, i32::MAX as u64) as i64),
            ),
            ("cam1:NumExposures", i(1)),
            ("cam1:ImageMode", i(0)),
            ("cam1:TriggerMode", i(0)),
            ("cam1:ArrayCallbacks", i(1)),
            ("cam1:WaitForPlugins", i(0)),
            ("cam1:SimMode", i(sim_mode_index(&c.detector.mode))),
            ("cam1:Gain", f(p.gain)),
            ("cam1:GainX", f(p.gain_x)),
            ("cam1:GainY", f(p.gain_y)),
            ("cam1:Offset", f(p.offset)),
            ("cam1:Noise", f(p.noise)),
            ("cam1:PeakVariation", f(p.peak_variation)),
            ("cam1:PeakStartX", i(p.peak_start_x.into())),
            ("cam1:PeakStartY", i(p.peak_start_y.into())),
            ("cam1:PeakWidthX", i(p.peak_width_x.into())),
            ("cam1:PeakWidthY", i(p.peak_width_y.into())),
            ("cam1:PeakNumX", i(p.peak_num_x.into())),
            ("cam1:PeakNumY", i(p.peak_num_y.into())),
            ("cam1:PeakStepX", i(p.peak_step_x.into())),
            ("cam1:PeakStepY", i(p.peak_step_y.into())),
            ("cam1:GainRed", f(1.0)),
            ("cam1:GainGreen", f(1.0)),
            ("cam1:GainBlue", f(1.0)),
            ("cam1:Temperature", f(25.0)),
            ("cam1:TemperatureActual", f(25.0)),
            ("cam1:DetectorState_RBV", i(0)),
            ("cam1:StatusMessage_RBV", t("Idle")),
            ("cam1:ShutterStatus_RBV", i(0)),
            // HDF1: NDPluginBase + NDFile + NDFileHDF5
            ("HDF1:PortName_RBV", t("FileHDF1")),
            ("HDF1:PluginType_RBV", t("NDFileHDF5")),
            ("HDF1:NDArrayPort", t("SIM1")),
            ("HDF1:ADCoreVersion_RBV", t("3.12.1")),
            ("HDF1:DriverVersion_RBV", t(version)),
            ("HDF1:EnableCallbacks", i(1)),
            ("HDF1:ArrayCallbacks", i(1)),
            ("HDF1:BlockingCallbacks", i(0)),
            ("HDF1:QueueSize", i(v.ring_slots as i64)),
            ("HDF1:QueueFree", i(v.ring_slots as i64)),
            ("HDF1:FileFormat", i(0)),
            ("HDF1:FileName", t(&c.writer.name)),
            ("HDF1:FileNumber", i(c.writer.number.into())),
            ("HDF1:AutoIncrement", i(c.writer.auto_increment.into())),
            ("HDF1:AutoSave", i(0)),
            ("HDF1:FileTemplate", t(&c.writer.template)),
            ("HDF1:FileWriteMode", i(write_mode_index(v.capture.mode))),
            (
                "HDF1:NumCapture",
                i(c.writer.capture.unwrap_or(0).min(i32::MAX as u64) as i64),
            ),
            ("HDF1:CreateDirectory", i(c.writer.create_dirs.into())),
            ("HDF1:TempSuffix", t(&c.writer.temp_suffix)),
            ("HDF1:LazyOpen", i(c.writer.lazy_open.into())),
            ("HDF1:SWMRMode", i(c.writer.swmr.into())),
            ("HDF1:SWMRSupported_RBV", i(1)),
            (
                "HDF1:NumFramesFlush",
                i(c.writer.flush.min(i32::MAX as u64) as i64),
            ),
            ("HDF1:StoreAttr", i(c.writer.attributes.into())),
            ("HDF1:StorePerform", i(c.writer.performance.into())),
            ("HDF1:NumFramesChunks", i(1)),
            ("HDF1:ChunkSizeAuto", i(1)),
            ("HDF1:NDAttributeChunk", i(16384)),
            ("HDF1:BloscLevel", i(5)),
            ("HDF1:BloscShuffle", i(1)),
            ("HDF1:ZLevel", i(6)),
            ("HDF1:WriteStatus", i(0)),
            // image1: NDPluginBase + NDStdArrays
            ("image1:PortName_RBV", t("IMAGE1")),
            ("image1:PluginType_RBV", t("NDPluginStdArrays")),
            ("image1:NDArrayPort", t("SIM1")),
            ("image1:ADCoreVersion_RBV", t("3.12.1")),
            ("image1:DriverVersion_RBV", t(version)),
            ("image1:EnableCallbacks", i(1)),
            ("image1:ArrayCallbacks", i(1)),
            ("image1:BlockingCallbacks", i(0)),
            (
                "image1:MinCallbackTime",
                f(if self.opts.preview_rate > 0.0 {
                    1.0 / self.opts.preview_rate
                } else {
                    0.0
                }),
            ),
        ];
        for (suffix, value) in values {
            if suffix.ends_with("_RBV") {
                self.set(suffix, value);
            } else {
                self.set_both(suffix, value);
            }
        }
        // Compression from the configured codec.
        let (compression, codec_text) = compression_of(v.capture.codec);
        self.set_both("HDF1:Compression", Value::from(compression));
        self.set_text("HDF1:Codec", &codec_text);
        self.set_text("HDF1:Codec_RBV", &codec_text);
        if let Codec::Deflate { level } = v.capture.codec {
            self.set_both("HDF1:ZLevel", Value::from(i32::from(level)));
        }
        if let Codec::Blosc { compressor, level } = v.capture.codec {
            let idx = pvs::BLOSC_COMPRESSORS
                .iter()
                .position(|n| *n == compressor.name())
                .unwrap_or(0);
            self.set_both("HDF1:BloscCompressor", Value::from(idx as i32));
            self.set_both("HDF1:BloscLevel", Value::from(i32::from(level)));
        }
        // FilePath: the configured one, relative to the first data root.
        let path = self.resolve(&c.writer.path);
        let path = with_slash(&path.to_string_lossy());
        self.set_text("HDF1:FilePath", &path);
        self.set_text("HDF1:FilePath_RBV", &path);
        self.check_file_path(&path, false);
        self.array_info();
        self.plugin_enable();
    }

    /// The cam's output size and type, posted to the cam's readbacks and (so that nothing
    /// needs priming) to the plugins'.
    fn array_info(&self) {
        let shape = self.frame_shape();
        let (w, h) = match &shape {
            Ok(s) => (s.width as i32, s.height as i32),
            Err(_) => (0, 0),
        };
        let dtype = self.int("cam1:DataType_RBV") as i32;
        let color = self.int("cam1:ColorMode_RBV") as i32;
        let bytes = shape.map(|s| s.bytes() as i32).unwrap_or(0);
        self.set("cam1:ArraySizeX_RBV", w);
        self.set("cam1:ArraySizeY_RBV", h);
        self.set("cam1:ArraySizeZ_RBV", 0);
        self.set("cam1:ArraySize_RBV", bytes);
        self.set_both("cam1:DataType", Value::from(dtype));
        for p in ["HDF1", "image1"] {
            for (s, v) in [
                ("ArraySize0", w),
                ("ArraySize1", h),
                ("ArraySize2", 0),
                ("ArraySizeX", w),
                ("ArraySizeY", h),
                ("ArraySizeZ", 0),
                ("NDimensions", 2),
                ("DataType", dtype),
                ("ColorMode", color),
                ("ArraySize", bytes),
            ] {
                self.set_both(&format!("{p}:{s}"), Value::from(v));
            }
            self.set_both(&format!("{p}:Dimensions"), Value::from(vec![w, h]));
        }
        self.set("HDF1:NumRowChunks_RBV", h);
        self.set("HDF1:NumColChunks_RBV", w);
    }

    // ---- writes ------------------------------------------------------------------------

    fn hook_writes(self: &Arc<Self>) {
        for (suffix, handle) in &self.pvs {
            if handle.access() == detflow_ca::Access::ReadOnly {
                continue;
            }
            let ioc = Arc::downgrade(self);
            let suffix = suffix.clone();
            handle.on_write(move |req| {
                let Some(ioc) = ioc.upgrade() else {
                    return WriteReply::reject();
                };
                ioc.on_write(&suffix, req)
            });
        }
    }

    /// A refused write is answered as rsrv answers a put that fails: ECA_PUTFAIL on the
    /// put-callback, CA_PROTO_ERROR(ECA_PUTFAIL) for a plain put. The message goes to
    /// StatusMessage / WriteMessage, and the PV stays in WRITE alarm (INVALID) until a write
    /// to it is accepted, as an asyn record does.
    fn on_write(self: &Arc<Self>, suffix: &str, req: &WriteRequest) -> WriteReply {
        let value = req.value().clone();
        tracing::debug!(pv = suffix, ?value, "put");
        let reply = match self.apply(suffix, value, req) {
            Ok(reply) => reply,
            Err(message) => {
                tracing::warn!("{}{suffix}: {message}", self.opts.prefix);
                let target = if suffix.starts_with("HDF1:") {
                    "HDF1:WriteMessage"
                } else {
                    "cam1:StatusMessage_RBV"
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

    /// Check a write, echo it to its readback, and act on it.
    fn apply(
        self: &Arc<Self>,
        suffix: &str,
        value: Value,
        req: &WriteRequest,
    ) -> Result<WriteReply, Refusal> {
        let num = value.get_f64(0).unwrap_or(0.0);
        let text = value.as_text().unwrap_or_default();
        let (plugin, base) = split(suffix);
        let echo = |v: Value| {
            let rbv = format!("{suffix}_RBV");
            if self.pvs.contains_key(&rbv) {
                self.set(&rbv, v);
            }
        };
        let whole = |min: f64, max: f64| -> Result<(), Refusal> {
            if num.fract() != 0.0 || num < min || num > max {
                return Err(format!(
                    "{suffix} {num}: expected a whole number from {min} to {max}"
                ));
            }
            Ok(())
        };
        match (plugin, base) {
            ("cam1", "Acquire") => return Ok(self.acquire(num != 0.0, req)),
            ("HDF1", "Capture") => return self.capture(num != 0.0, req),
            ("HDF1", "FlushNow") => {
                if num != 0.0 {
                    self.flush_now();
                }
                return Ok(WriteReply::Accept);
            }
            ("HDF1", "WriteFile") | ("HDF1", "ReadFile") if num != 0.0 => {
                return Err(format!(
                    "{suffix} {num}: not supported; use Capture in Capture or Stream mode, \
                     or FileWriteMode Single with AutoSave"
                ));
            }
            ("cam1", "SizeX") => whole(1.0, self.num("cam1:MaxSizeX_RBV"))?,
            ("cam1", "SizeY") => whole(1.0, self.num("cam1:MaxSizeY_RBV"))?,
            ("cam1", "MinX") => whole(0.0, self.num("cam1:MaxSizeX_RBV") - 1.0)?,
            ("cam1", "MinY") => whole(0.0, self.num("cam1:MaxSizeY_RBV") - 1.0)?,
            ("cam1", "BinX") | ("cam1", "BinY") => whole(1.0, 64.0)?,
            // 0 is what ophyd-async sends for Continuous; Multiple takes it as 1.
            ("cam1", "NumImages") | ("cam1", "NumExposures") => whole(0.0, i32::MAX as f64)?,
            ("cam1", "AcquireTime") | ("cam1", "AcquirePeriod")
                if !(0.0..=86_400.0).contains(&num) =>
            {
                return Err(format!("{suffix} {num}: expected seconds from 0 to 86400"));
            }
            ("cam1", "DataType") => {
                let name = pvs::DATA_TYPES.get(num as usize).copied().unwrap_or("?");
                if PixelType::from_nd_data_type(num as i32).is_none() {
                    return Err(format!(
                        "{suffix} {name}: the simulated detector makes Int8, UInt8, Int16, \
                         UInt16, Int32, UInt32, Float32 and Float64"
                    ));
                }
            }
            ("cam1", "ColorMode") if num != 0.0 => {
                let name = pvs::COLOR_MODES.get(num as usize).copied().unwrap_or("?");
                return Err(format!("{suffix} {name}: the detector is Mono only"));
            }
            ("cam1", "TriggerMode") if num != 0.0 => {
                return Err(format!(
                    "{suffix} External: the simulated detector triggers internally only"
                ));
            }
            ("HDF1", "NumCapture") => whole(0.0, i32::MAX as f64)?,
            // As `acquire --number`.
            ("HDF1", "FileNumber") if num < 0.0 => {
                return Err(format!("{suffix} {num}: file numbers start at 0"));
            }
            ("HDF1", "FileTemplate") => {
                text.parse::<FileTemplate>()
                    .map_err(|e| format!("{suffix} {text:?}: {e}"))?;
            }
            ("HDF1", "Compression") => {
                let name = pvs::COMPRESSIONS.get(num as usize).copied().unwrap_or("?");
                if matches!(name, "N-bit" | "szip" | "JPEG") {
                    return Err(format!(
                        "{suffix} {name}: not supported; use None, zlib, Blosc, BSLZ4, LZ4, or \
                         HDF1:Codec for bszstd and zstd"
                    ));
                }
            }
            ("HDF1", "ZLevel") => whole(0.0, 9.0)?,
            ("HDF1", "NumFramesChunks") if num > 1.0 => {
                return Err(format!(
                    "{suffix} {num}: detflow writes one frame per chunk (direct chunk write); \
                     use 1"
                ));
            }
            ("HDF1", "BloscLevel") => whole(0.0, 9.0)?,
            ("HDF1", "BloscCompressor") if num as usize == 3 => {
                return Err(format!(
                    "{suffix} snappy: this build of blosc has no snappy"
                ));
            }
            ("HDF1", "Codec") if !text.is_empty() => {
                text.parse::<Codec>()
                    .map_err(|e| format!("{suffix} {text:?}: {e}"))?;
            }
            _ => {}
        }
        // Stored: echo, then what follows from it.
        match (plugin, base) {
            ("HDF1", "FilePath") => {
                let path = with_slash(&self.resolve(&text).to_string_lossy());
                self.set_text("HDF1:FilePath_RBV", &path);
                self.check_file_path(&path, true);
            }
            _ => echo(value.clone()),
        }
        match (plugin, base) {
            ("cam1", "SizeX" | "SizeY" | "MinX" | "MinY" | "BinX" | "BinY" | "DataType")
            | ("cam1", "ColorMode") => self.array_info(),
            ("cam1", "ArrayCounter") => {
                self.counter_base.store(num as i32, Ordering::Relaxed);
                self.set("cam1:ArrayCounter_RBV", num as i32);
            }
            ("HDF1" | "image1", "ArrayCounter") => {
                self.set(&format!("{plugin}:ArrayCounter_RBV"), num as i32)
            }
            ("HDF1", "EnableCallbacks") | ("cam1", "ArrayCallbacks") => {
                // The stored value is the new one only after this returns.
                self.plugin_enable_with(suffix, num != 0.0);
            }
            ("HDF1", "CreateDirectory") => {}
            _ => {}
        }
        Ok(WriteReply::Accept)
    }

    fn plugin_enable(&self) {
        self.plugin_enable_with("", false);
    }

    /// HDF1 takes frames when its EnableCallbacks and the cam's ArrayCallbacks are on.
    fn plugin_enable_with(&self, changed: &str, value: bool) {
        let get = |s: &str| {
            if s == changed { value } else { self.flag(s) }
        };
        let on = get("HDF1:EnableCallbacks") && get("cam1:ArrayCallbacks");
        self.plugin.set_enabled(on);
    }
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
        self.set("cam1:ArrayCounter_RBV", counter);
        self.set("cam1:NumImagesCounter_RBV", count as i32);
        if !self.flag("cam1:ArrayCallbacks_RBV") {
            return;
        }
        // Per frame: names spelled out, no formatting on the detector thread.
        const PLUGINS: [[&str; 3]; 2] = [
            [
                "HDF1:EnableCallbacks_RBV",
                "HDF1:ArrayCounter_RBV",
                "HDF1:UniqueId_RBV",
            ],
            [
                "image1:EnableCallbacks_RBV",
                "image1:ArrayCounter_RBV",
                "image1:UniqueId_RBV",
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
        // The newest frame to image1, at most preview_rate a second; never waits.
        let rate = self.opts.preview_rate;
        if rate <= 0.0 || !image_enabled {
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
            "HDF1:NumCaptured_RBV",
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

/// The Compression index and the HDF1:Codec text (empty when Compression names it).
fn compression_of(codec: Codec) -> (i32, String) {
    match codec {
        Codec::None => (0, String::new()),
        Codec::Deflate { .. } => (3, String::new()),
        Codec::Blosc { .. } => (4, String::new()),
        Codec::BitshuffleLz4 => (5, String::new()),
        Codec::Lz4 => (6, String::new()),
        other => (0, other.to_string()),
    }
}

fn sim_mode_index(mode: &str) -> i64 {
    match mode {
        "ramp" => 0,
        "sine" => 2,
        "noise" => 3,
        _ => 1,
    }
}

fn write_mode_index(mode: WriteMode) -> i64 {
    match mode {
        WriteMode::Single => 0,
        WriteMode::Capture => 1,
        WriteMode::Stream => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every PV name this file posts to or reads is served.
    #[test]
    fn every_pv_named_here_is_served() {
        let served = pvs::suffixes();
        let source = [
            include_str!("lib.rs"),
            include_str!("cam.rs"),
            include_str!("plugin.rs"),
            include_str!("preview.rs"),
        ]
        .concat();
        let mut named = 0;
        for piece in source.split('"').skip(1).step_by(2) {
            let Some((plugin, name)) = piece.split_once(':') else {
                continue;
            };
            if !["cam1", "HDF1", "image1"].contains(&plugin)
                || name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            named += 1;
            assert!(served.contains(piece), "{piece} is used but not served");
        }
        assert!(named > 60, "{named}");
    }

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
