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
#![forbid(unsafe_code)]

mod cam;
mod plugin;
mod preview;
pub mod pvs;

pub use plugin::data_roots;
use plugin::with_slash;
use preview::image_native;

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
use pvs::{ArrayInfo, Pv, text_value};

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
    /// Every served PV, at its index in the table: `pvs[pv as usize]`.
    pvs: Vec<PvHandle>,
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
        let mut pvs = Vec::with_capacity(Pv::ALL.len());
        for &pv in Pv::ALL {
            let handle = server
                .add_pv(pvs::spec(&opts.prefix, pv, image))
                .with_context(|| format!("cannot serve {}{pv}", opts.prefix))?;
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
        let mode = c.detector.mode;
        let p = detflow_sim::SimParams::demo(mode, v.sensor, acq.pixel_type);
        let values: Vec<(Pv, Value)> = vec![
            // cam1: ADBase + simDetector
            (Pv::CamPortNameRbv, t("SIM1")),
            (Pv::CamManufacturerRbv, t("Simulated detector")),
            (Pv::CamModelRbv, t("detflow simulator")),
            (Pv::CamSerialNumberRbv, t("sim-0001")),
            (Pv::CamFirmwareVersionRbv, t(env!("CARGO_PKG_VERSION"))),
            (Pv::CamSDKVersionRbv, t(env!("CARGO_PKG_VERSION"))),
            (Pv::CamDriverVersionRbv, t(version)),
            (Pv::CamADCoreVersionRbv, t("3.12.1")),
            (Pv::CamMaxSizeXRbv, i(sx.into())),
            (Pv::CamMaxSizeYRbv, i(sy.into())),
            (Pv::CamMinX, i(acq.roi.min_x.into())),
            (Pv::CamMinY, i(acq.roi.min_y.into())),
            (Pv::CamSizeX, i(acq.roi.size_x.into())),
            (Pv::CamSizeY, i(acq.roi.size_y.into())),
            (Pv::CamBinX, i(acq.binning.x.into())),
            (Pv::CamBinY, i(acq.binning.y.into())),
            (Pv::CamDataType, i(acq.pixel_type.nd_data_type().into())),
            (Pv::CamColorMode, i(0)),
            (Pv::CamAcquireTime, f(c.detector.exposure.as_secs_f64())),
            (Pv::CamAcquirePeriod, f(c.detector.period.as_secs_f64())),
            (
                Pv::CamNumImages,
                i(c.detector.frames.clamp(1, i32::MAX as u64) as i64),
            ),
            (Pv::CamNumExposures, i(1)),
            (Pv::CamImageMode, i(0)),
            (Pv::CamTriggerMode, i(0)),
            (Pv::CamArrayCallbacks, i(1)),
            (Pv::CamWaitForPlugins, i(0)),
            (Pv::CamSimMode, i(c.detector.mode.index().into())),
            (Pv::CamGain, f(p.gain)),
            (Pv::CamGainX, f(p.gain_x)),
            (Pv::CamGainY, f(p.gain_y)),
            (Pv::CamOffset, f(p.offset)),
            (Pv::CamNoise, f(p.noise)),
            (Pv::CamPeakVariation, f(p.peak_variation)),
            (Pv::CamPeakStartX, i(p.peak_start_x.into())),
            (Pv::CamPeakStartY, i(p.peak_start_y.into())),
            (Pv::CamPeakWidthX, i(p.peak_width_x.into())),
            (Pv::CamPeakWidthY, i(p.peak_width_y.into())),
            (Pv::CamPeakNumX, i(p.peak_num_x.into())),
            (Pv::CamPeakNumY, i(p.peak_num_y.into())),
            (Pv::CamPeakStepX, i(p.peak_step_x.into())),
            (Pv::CamPeakStepY, i(p.peak_step_y.into())),
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
            (Pv::HdfQueueSize, i(v.ring_slots as i64)),
            (Pv::HdfQueueFree, i(v.ring_slots as i64)),
            (Pv::HdfFileFormat, i(0)),
            (Pv::HdfFileName, t(&c.writer.name)),
            (Pv::HdfFileNumber, i(c.writer.number.into())),
            (Pv::HdfAutoIncrement, i(c.writer.auto_increment.into())),
            (Pv::HdfAutoSave, i(0)),
            (Pv::HdfFileTemplate, t(c.writer.template.as_str())),
            (Pv::HdfFileWriteMode, i(write_mode_index(v.capture.mode))),
            (
                Pv::HdfNumCapture,
                i(c.writer.capture.unwrap_or(0).min(i32::MAX as u64) as i64),
            ),
            (Pv::HdfCreateDirectory, i(c.writer.create_dirs.into())),
            (Pv::HdfTempSuffix, t(&c.writer.temp_suffix)),
            (Pv::HdfLazyOpen, i(c.writer.lazy_open.into())),
            (Pv::HdfSWMRMode, i(c.writer.swmr.into())),
            (Pv::HdfSWMRSupportedRbv, i(1)),
            (
                Pv::HdfNumFramesFlush,
                i(c.writer.flush.min(i32::MAX as u64) as i64),
            ),
            (Pv::HdfStoreAttr, i(c.writer.attributes.into())),
            (Pv::HdfStorePerform, i(c.writer.performance.into())),
            (Pv::HdfNumFramesChunks, i(1)),
            (Pv::HdfChunkSizeAuto, i(1)),
            (Pv::HdfNDAttributeChunk, i(16384)),
            (Pv::HdfBloscLevel, i(5)),
            (Pv::HdfBloscShuffle, i(1)),
            (Pv::HdfZLevel, i(6)),
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
            (
                Pv::ImageMinCallbackTime,
                f(if self.opts.preview_rate > 0.0 {
                    1.0 / self.opts.preview_rate
                } else {
                    0.0
                }),
            ),
        ];
        for (pv, value) in values {
            if pv.is_readback() {
                self.set(pv, value);
            } else {
                self.set_both(pv, value);
            }
        }
        // Compression from the configured codec.
        let (compression, codec_text) = compression_of(v.capture.codec);
        self.set_both(Pv::HdfCompression, Value::from(compression));
        self.set_text(Pv::HdfCodec, &codec_text);
        self.set_text(Pv::HdfCodecRbv, &codec_text);
        if let Codec::Deflate { level } = v.capture.codec {
            self.set_both(Pv::HdfZLevel, Value::from(i32::from(level)));
        }
        if let Codec::Blosc { compressor, level } = v.capture.codec {
            let idx = pvs::BLOSC_COMPRESSORS
                .iter()
                .position(|n| *n == compressor.name())
                .unwrap_or(0);
            self.set_both(Pv::HdfBloscCompressor, Value::from(idx as i32));
            self.set_both(Pv::HdfBloscLevel, Value::from(i32::from(level)));
        }
        // FilePath: the configured one, relative to the first data root.
        let path = self.resolve(&c.writer.path);
        let path = with_slash(&path.to_string_lossy());
        self.set_text(Pv::HdfFilePath, &path);
        self.set_text(Pv::HdfFilePathRbv, &path);
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
        let dtype = self.int(Pv::CamDataTypeRbv) as i32;
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

    /// Check a write, echo it to its readback, and act on it.
    fn apply(
        self: &Arc<Self>,
        pv: Pv,
        value: Value,
        req: &WriteRequest,
    ) -> Result<WriteReply, Refusal> {
        let num = value.get_f64(0).unwrap_or(0.0);
        let text = value.as_text().unwrap_or_default();
        let echo = |v: Value| {
            if let Some(rbv) = pv.readback() {
                self.set(rbv, v);
            }
        };
        let whole = |min: f64, max: f64| -> Result<(), Refusal> {
            if num.fract() != 0.0 || num < min || num > max {
                return Err(format!(
                    "{pv} {num}: expected a whole number from {min} to {max}"
                ));
            }
            Ok(())
        };
        match pv {
            Pv::CamAcquire => return Ok(self.acquire(num != 0.0, req)),
            Pv::HdfCapture => return self.capture(num != 0.0, req),
            Pv::HdfFlushNow => {
                if num != 0.0 {
                    self.flush_now();
                }
                return Ok(WriteReply::Accept);
            }
            Pv::HdfWriteFile | Pv::HdfReadFile if num != 0.0 => {
                return Err(format!(
                    "{pv} {num}: not supported; use Capture in Capture or Stream mode, \
                     or FileWriteMode Single with AutoSave"
                ));
            }
            Pv::CamSizeX => whole(1.0, self.num(Pv::CamMaxSizeXRbv))?,
            Pv::CamSizeY => whole(1.0, self.num(Pv::CamMaxSizeYRbv))?,
            Pv::CamMinX => whole(0.0, self.num(Pv::CamMaxSizeXRbv) - 1.0)?,
            Pv::CamMinY => whole(0.0, self.num(Pv::CamMaxSizeYRbv) - 1.0)?,
            Pv::CamBinX | Pv::CamBinY => whole(1.0, 64.0)?,
            // 0 is what ophyd-async sends for Continuous; Multiple takes it as 1.
            Pv::CamNumImages | Pv::CamNumExposures => whole(0.0, i32::MAX as f64)?,
            Pv::CamAcquireTime | Pv::CamAcquirePeriod if !(0.0..=86_400.0).contains(&num) => {
                return Err(format!("{pv} {num}: expected seconds from 0 to 86400"));
            }
            Pv::CamDataType => {
                let name = pvs::DATA_TYPES.get(num as usize).copied().unwrap_or("?");
                if PixelType::from_nd_data_type(num as i32).is_none() {
                    return Err(format!(
                        "{pv} {name}: the simulated detector makes Int8, UInt8, Int16, \
                         UInt16, Int32, UInt32, Float32 and Float64"
                    ));
                }
            }
            Pv::CamColorMode if num != 0.0 => {
                let name = pvs::COLOR_MODES.get(num as usize).copied().unwrap_or("?");
                return Err(format!("{pv} {name}: the detector is Mono only"));
            }
            Pv::CamTriggerMode if num != 0.0 => {
                return Err(format!(
                    "{pv} External: the simulated detector triggers internally only"
                ));
            }
            Pv::HdfNumCapture => whole(0.0, i32::MAX as f64)?,
            // As `acquire --number`.
            Pv::HdfFileNumber if num < 0.0 => {
                return Err(format!("{pv} {num}: file numbers start at 0"));
            }
            Pv::HdfFileTemplate => {
                text.parse::<FileTemplate>()
                    .map_err(|e| format!("{pv} {text:?}: {e}"))?;
            }
            Pv::HdfCompression => {
                let name = pvs::COMPRESSIONS.get(num as usize).copied().unwrap_or("?");
                if matches!(name, "N-bit" | "szip" | "JPEG") {
                    return Err(format!(
                        "{pv} {name}: not supported; use None, zlib, Blosc, BSLZ4, LZ4, or \
                         HDF1:Codec for bszstd and zstd"
                    ));
                }
            }
            Pv::HdfZLevel => whole(0.0, 9.0)?,
            Pv::HdfNumFramesChunks if num > 1.0 => {
                return Err(format!(
                    "{pv} {num}: detflow writes one frame per chunk (direct chunk write); \
                     use 1"
                ));
            }
            Pv::HdfBloscLevel => whole(0.0, 9.0)?,
            Pv::HdfBloscCompressor if num as usize == 3 => {
                return Err(format!("{pv} snappy: this build of blosc has no snappy"));
            }
            Pv::HdfCodec if !text.is_empty() => {
                text.parse::<Codec>()
                    .map_err(|e| format!("{pv} {text:?}: {e}"))?;
            }
            _ => {}
        }
        // Stored: echo, then what follows from it.
        match pv {
            Pv::HdfFilePath => {
                let path = with_slash(&self.resolve(&text).to_string_lossy());
                self.set_text(Pv::HdfFilePathRbv, &path);
                self.check_file_path(&path, true);
            }
            _ => echo(value.clone()),
        }
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
            Pv::HdfArrayCounter | Pv::ImageArrayCounter => {
                if let Some(rbv) = pv.readback() {
                    self.set(rbv, num as i32);
                }
            }
            Pv::HdfEnableCallbacks | Pv::CamArrayCallbacks => {
                // The stored value is the new one only after this returns.
                self.plugin_enable_with(Some(pv), num != 0.0);
            }
            Pv::HdfCreateDirectory => {}
            _ => {}
        }
        Ok(WriteReply::Accept)
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
