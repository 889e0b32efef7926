//! One acquisition's settings, as one serde structure (TOML on disk), and their validation.
//!
//! The CLI's flags, a TOML file and (later) the daemon's PVs all write these same fields.
//! [`Config::validate`] turns them into typed settings, refusing a bad value with a message
//! that names the setting and the value, before any thread starts or any file is touched.

use std::path::PathBuf;
use std::time::Duration;

use detflow_hal::{AcquisitionConfig, Binning, ImageMode, PixelType, Roi, TriggerMode};
use detflow_sim::SimMode;
use detflow_writer::{CaptureSettings, Codec, FileNaming, FileTemplate, RefPattern, WriteMode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest sensor the simulated detector models, per side.
pub const MAX_SENSOR_SIDE: u32 = 8192;

/// A setting with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {setting} {value:?}: {reason}")]
pub struct ConfigError {
    /// The setting, as the CLI flag and TOML key name it (`dtype`, `size`, `writer.template`).
    pub setting: &'static str,
    /// The value given.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

fn bad(setting: &'static str, value: impl ToString, reason: impl ToString) -> ConfigError {
    ConfigError {
        setting,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Everything one acquisition needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The detector and its image.
    pub detector: DetectorSettings,
    /// The frame ring between detector and writer.
    pub ring: RingSettings,
    /// Files, naming and compression.
    pub writer: WriterSettings,
    /// The daemon (`detflow serve`); `detflow acquire` ignores it.
    pub serve: ServeSettings,
}

/// `detflow serve`: the IOC's prefix, where it may write, how it is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// PV prefix.
    pub prefix: String,
    /// Directories files may be written under; empty: the current directory.
    pub data_roots: Vec<String>,
    /// Channel Access port; unset: EPICS_CAS_SERVER_PORT / EPICS_CA_SERVER_PORT, else 5064;
    /// 0: any free port (the log's `ready` line says which).
    pub ca_port: Option<u16>,
    /// The IPv4 interface served on (loopback unless set otherwise).
    pub interface: String,
    /// Most image1:ArrayData updates a second (0: no previews).
    pub preview_rate: f64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            prefix: "ad:".into(),
            data_roots: Vec::new(),
            ca_port: None,
            interface: "127.0.0.1".into(),
            preview_rate: 5.0,
        }
    }
}

/// Detector settings (ADBase + ADSimDetector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorSettings {
    /// Frame size `WIDTHxHEIGHT` in pixels (the simulated sensor is made this size).
    pub size: String,
    /// Pixel type: u8 u16 u32 i8 i16 i32 f32 f64.
    pub dtype: String,
    /// Image mode of the simulation: peaks, ramp, sine, noise.
    pub mode: String,
    /// Frames to acquire; 0 acquires until stopped.
    pub frames: u64,
    /// Exposure time, seconds.
    pub exposure: f64,
    /// Acquire period, seconds; 0 is as fast as possible.
    pub period: f64,
    /// Seed of the simulation's random numbers: equal seeds give equal frames.
    pub seed: u64,
    /// Where frames come from: `sim` (the simulated detector), `replay` (an HDF5 file, see
    /// `replay`) or `udp` (a datagram stream, see `udp_listen`).
    pub backend: String,
    /// replay: `FILE[::DATASET]`, a 3-D dataset (default `/entry/data/data`), raw or compressed
    /// with a filter HDF5 or detflow decodes (any `--codec`). Its frame size and pixel type
    /// replace `size` and `dtype`.
    pub replay: String,
    /// udp: `IP:PORT` to receive on; `size` and `dtype` must be what the sender sends.
    pub udp_listen: String,
    /// udp: a frame with packets missing is dropped (`drop`) or delivered zero-filled
    /// (`flag`); either way it is counted as incomplete.
    pub udp_incomplete: String,
    /// sim: frames the detector's FIFO holds before it overruns, 1 to 64.
    pub fifo_depth: usize,
    /// sim: probability that an I2C transaction is NACKed, 0 to 1.
    pub fault_nack: f64,
    /// sim: probability that an I2C transaction times out, 0 to 1.
    pub fault_bus_timeout: f64,
    /// sim: probability that a frame is dropped on the sensor link, 0 to 1.
    pub fault_drop: f64,
    /// sim: probability that a frame arrives corrupted, 0 to 1.
    pub fault_corrupt: f64,
    /// sim: probability that a frame is lost to an injected FIFO overrun, 0 to 1.
    pub fault_overrun: f64,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            size: "1024x1024".into(),
            dtype: "u16".into(),
            mode: "peaks".into(),
            frames: 100,
            exposure: 0.0,
            period: 0.0,
            seed: 0,
            backend: "sim".into(),
            replay: String::new(),
            udp_listen: String::new(),
            udp_incomplete: "drop".into(),
            fifo_depth: 16,
            fault_nack: 0.0,
            fault_bus_timeout: 0.0,
            fault_drop: 0.0,
            fault_corrupt: 0.0,
            fault_overrun: 0.0,
        }
    }
}

/// Frame ring settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingSettings {
    /// Pre-allocated frame slots between the detector and the writer; 0 picks
    /// [`auto_slots`] for the frame size.
    pub slots: usize,
    /// When the writer falls behind: `block` (the detector waits; frames the detector itself
    /// cannot hold are counted by it) or `drop-newest` (the new frame is dropped and counted).
    pub policy: String,
    /// Place the ring in a shared mapping of this file (for example under /dev/shm) so that
    /// another process can read frames in place; empty for none.
    pub shm: String,
}

impl Default for RingSettings {
    fn default() -> Self {
        RingSettings {
            slots: 0,
            policy: "block".into(),
            shm: String::new(),
        }
    }
}

/// The ring size used when none is given: 64 slots (enough that detector and writer rarely
/// wait on each other on a loaded machine), fewer for large frames so the ring stays within
/// 512 MiB, and never fewer than 4.
pub fn auto_slots(frame_bytes: usize) -> usize {
    (512usize << 20)
        .checked_div(frame_bytes.max(1))
        .unwrap_or(64)
        .clamp(4, 64)
}

/// The ring may take at most `1 / RING_MEMORY_SHARE` of the memory the kernel reports as
/// available (MemAvailable): every slot is allocated and touched before the run, so a larger
/// ring would push the machine into swap or the OOM killer before the first frame.
pub const RING_MEMORY_SHARE: u64 = 4;

/// The ring cap when MemAvailable cannot be read (not Linux, no /proc).
pub const RING_MEMORY_FALLBACK: u64 = 8 << 30;

/// MemAvailable from /proc/meminfo, in bytes; `None` when it cannot be read.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The most bytes the ring may take on this machine now: a quarter of MemAvailable
/// ([`RING_MEMORY_SHARE`]), or [`RING_MEMORY_FALLBACK`] when MemAvailable is unknown.
pub fn ring_memory_cap() -> RingCap {
    match mem_available() {
        Some(available) => RingCap {
            bytes: available / RING_MEMORY_SHARE,
            available: Some(available),
        },
        None => RingCap {
            bytes: RING_MEMORY_FALLBACK,
            available: None,
        },
    }
}

/// How much memory the ring may take, and where that figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCap {
    /// Bytes the ring's slots may take in all.
    pub bytes: u64,
    /// MemAvailable when the cap was derived from it.
    pub available: Option<u64>,
}

impl std::fmt::Display for RingCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.available {
            Some(a) => write!(
                f,
                "{} MiB, a quarter of MemAvailable ({} MiB)",
                self.bytes >> 20,
                a >> 20
            ),
            None => write!(
                f,
                "{} MiB (MemAvailable is unknown on this system)",
                self.bytes >> 20
            ),
        }
    }
}

/// Bytes a ring slot of `frame_bytes` takes (slots are page-aligned).
fn slot_footprint(frame_bytes: usize) -> u64 {
    frame_bytes.max(1).next_multiple_of(4096) as u64
}

/// The slots a run's ring gets: `requested` (0: [`auto_slots`]), never more than `frames`
/// when that is finite (non-zero), and within `cap`. An automatic size shrinks to fit the
/// cap; a requested one that does not fit is refused, naming `ring-slots` and the cap.
pub fn fit_ring(
    requested: usize,
    frame_bytes: usize,
    frames: u64,
    cap: RingCap,
) -> Result<usize, ConfigError> {
    let by_frames = |n: usize| match usize::try_from(frames) {
        Ok(0) => n,
        Ok(f) => n.min(f),
        Err(_) => n,
    };
    let slot = slot_footprint(frame_bytes);
    let fitting = usize::try_from(cap.bytes / slot).unwrap_or(usize::MAX);
    if requested == 0 {
        let slots = by_frames(auto_slots(frame_bytes)).min(fitting);
        if slots == 0 {
            return Err(bad(
                "ring-slots",
                0,
                format!(
                    "not even one slot of {frame_bytes} bytes fits the ring's memory cap of {cap}"
                ),
            ));
        }
        return Ok(slots);
    }
    let slots = by_frames(requested);
    let need = slots as u128 * u128::from(slot);
    if need > u128::from(cap.bytes) {
        return Err(bad(
            "ring-slots",
            requested,
            format!(
                "{slots} slots of {frame_bytes} bytes need {} MiB; the ring is capped at {cap}: \
                 give --ring-slots {fitting} or fewer (TOML: [ring] slots)",
                need >> 20
            ),
        ));
    }
    Ok(slots)
}

/// A run that is never flushed before its file is closed loses every frame when the writer
/// is killed: refuse that unless asked for by name (`no_flush`), and refuse `no_flush` with
/// a flush setting that contradicts it.
fn check_flushing(w: &WriterSettings) -> Result<(), ConfigError> {
    match (w.no_flush, w.flush, w.flush_interval > 0.0) {
        (false, 0, false) => Err(bad(
            "flush-interval",
            w.flush_interval,
            "with flush 0 too, nothing is flushed before the file is closed, so a writer \
             killed mid-run keeps no frame: give --flush-interval S or --flush N (TOML: \
             flush_interval, flush), or --no-flush (TOML: no_flush = true) to write that \
             way on purpose",
        )),
        (true, n, _) if n > 0 => Err(bad(
            "flush",
            n,
            "--no-flush (TOML: no_flush) flushes only at close: give one or the other",
        )),
        (true, _, true) => Err(bad(
            "flush-interval",
            w.flush_interval,
            "--no-flush (TOML: no_flush) flushes only at close: set flush_interval = 0 with \
             it, or drop no_flush",
        )),
        _ => Ok(()),
    }
}

/// File settings (NDPluginFile + NDFileHDF5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterSettings {
    /// Directory (FilePath); strftime codes such as `%Y/%m/%d` are expanded at start.
    pub path: String,
    /// Base name (FileName).
    pub name: String,
    /// File number (FileNumber) of the first file.
    pub number: i32,
    /// Increment the number after each file name is built (AutoIncrement).
    pub auto_increment: bool,
    /// C-printf template taking path, name, number (FileTemplate).
    pub template: String,
    /// Chunk codec: `none`, `deflate[:LEVEL]`, `lz4`, `bslz4`, `bszstd[:LEVEL]`,
    /// `zstd[:LEVEL]`, `blosc[:COMPRESSOR[:LEVEL]]`.
    pub codec: String,
    /// Compression worker threads; 0: one per core.
    pub workers: usize,
    /// `single`, `capture` or `stream` (FileWriteMode).
    pub write_mode: String,
    /// Frames to capture (NumCapture); unset: the number of frames acquired. In Stream mode 0
    /// means until stopped.
    pub capture: Option<u64>,
    /// Stream mode: start a new file every this many frames; 0 never.
    pub frames_per_file: u64,
    /// Stream mode: open the file when the first frame arrives (LazyOpen).
    pub lazy_open: bool,
    /// Directory levels to create (CreateDirectory): 0 none, D > 0 from component D on,
    /// -k at most the last k.
    pub create_dirs: i32,
    /// Write as name + suffix, rename when closed (TempSuffix); empty for none.
    pub temp_suffix: String,
    /// Replace an existing file of the same name (areaDetector always does; detflow refuses
    /// unless this is set).
    pub overwrite: bool,
    /// SWMR: readers (`h5py.File(path, "r", swmr=True)`) see the frames while the file is
    /// written, and a file whose writer was killed still reads back up to the last flush.
    /// On by default (areaDetector's default is off).
    pub swmr: bool,
    /// Flush every this many frames (NumFramesFlush); 0: not by count.
    pub flush: u64,
    /// Flush at least every this many seconds while frames are waiting; 0: not by time.
    /// `flush = 0` with `flush_interval = 0` is refused unless `no_flush` is set.
    pub flush_interval: f64,
    /// Flush only when the file is closed (needs `flush = 0` and `flush_interval = 0`): a
    /// writer killed mid-run then leaves no frame readable. Off by default; `detflow` warns at
    /// start when it is on.
    pub no_flush: bool,
    /// Store the NDAttribute datasets (StoreAttr).
    pub attributes: bool,
    /// Store performance/timestamp (StorePerform).
    pub performance: bool,
    /// Write each frame's value reference (URI, dtype, shape) to this file as JSON lines, as
    /// the frames are written.
    pub refs: Option<String>,
    /// Name files from a value-reference pattern instead of the template, one file per point
    /// (Single layout), e.g. `h5file:///data/scan_{index:04d}.h5`; `{index}` is the file
    /// number.
    pub ref_pattern: Option<String>,
    /// At the end, write a master file here whose virtual dataset stitches every frame
    /// written, from the references.
    pub vds: Option<String>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            path: ".".into(),
            name: "detflow".into(),
            number: 1,
            auto_increment: true,
            template: detflow_writer::naming::DEFAULT_TEMPLATE.into(),
            codec: "none".into(),
            workers: 0,
            write_mode: "stream".into(),
            capture: None,
            frames_per_file: 0,
            lazy_open: false,
            create_dirs: 0,
            temp_suffix: String::new(),
            overwrite: false,
            swmr: true,
            flush: 0,
            flush_interval: 1.0,
            no_flush: false,
            attributes: true,
            performance: true,
            refs: None,
            ref_pattern: None,
            vds: None,
        }
    }
}

/// Refuse an output file (`refs`, `vds`) whose directory does not exist.
fn check_output_file(setting: &'static str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() || path.ends_with('/') {
        return Err(bad(setting, path, "expected a file name"));
    }
    let p = std::path::Path::new(path);
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(bad(
            setting,
            path,
            format!("its directory {dir:?} does not exist"),
        ));
    }
    if p.is_dir() {
        return Err(bad(setting, path, "is a directory"));
    }
    Ok(())
}

/// Settings checked and typed, ready for [`crate::acquisition::Acquisition::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Sensor width and height.
    pub sensor: (u32, u32),
    /// What the detector is configured with.
    pub acquisition: AcquisitionConfig,
    /// Simulation mode.
    pub mode: SimMode,
    /// Simulation seed.
    pub seed: u64,
    /// Frames the detector acquires (0 = until stopped).
    pub frames: u64,
    /// Ring slots.
    pub ring_slots: usize,
    /// Ring policy.
    pub ring_policy: detflow_ring::Policy,
    /// Shared-memory file of the ring, if any.
    pub ring_shm: Option<std::path::PathBuf>,
    /// Files: mode, naming, codec and the rest.
    pub capture: CaptureSettings,
    /// Compression worker threads (at least 1).
    pub workers: usize,
    /// Where the frames come from.
    pub backend: BackendSpec,
}

/// Which backend an acquisition runs, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    /// The simulated detector, its FIFO depth and fault rates.
    Sim {
        /// Frames the FIFO holds.
        fifo_depth: usize,
        /// Injected faults.
        faults: detflow_sim::FaultRates,
    },
    /// The frames of an HDF5 dataset.
    Replay {
        /// The file.
        file: PathBuf,
        /// The dataset's path in it.
        dataset: String,
    },
    /// A UDP datagram stream.
    Udp {
        /// Where to receive.
        listen: std::net::SocketAddr,
        /// What to do with incomplete frames.
        incomplete: crate::backend::udp::Incomplete,
    },
}

impl DetectorSettings {
    /// The backend settings, checked.
    fn backend(&self) -> Result<BackendSpec, ConfigError> {
        let sim_only = [
            ("fault-nack", self.fault_nack),
            ("fault-bus-timeout", self.fault_bus_timeout),
            ("fault-drop", self.fault_drop),
            ("fault-corrupt", self.fault_corrupt),
            ("fault-overrun", self.fault_overrun),
        ];
        for (setting, p) in sim_only {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(setting, p, "expected a probability from 0 to 1"));
            }
        }
        match self.backend.as_str() {
            "sim" => {
                if !(1..=detflow_sim::MAX_FIFO_DEPTH).contains(&self.fifo_depth) {
                    return Err(bad(
                        "fifo-depth",
                        self.fifo_depth,
                        format!("expected 1 to {} frames", detflow_sim::MAX_FIFO_DEPTH),
                    ));
                }
                Ok(BackendSpec::Sim {
                    fifo_depth: self.fifo_depth,
                    faults: detflow_sim::FaultRates {
                        nack: self.fault_nack,
                        bus_timeout: self.fault_bus_timeout,
                        drop: self.fault_drop,
                        corrupt: self.fault_corrupt,
                        overrun: self.fault_overrun,
                    },
                })
            }
            "replay" => {
                if self.replay.is_empty() {
                    return Err(bad(
                        "replay",
                        &self.replay,
                        "the replay backend needs FILE[::DATASET]",
                    ));
                }
                let (file, dataset) = crate::backend::replay::parse_source(&self.replay);
                if !file.is_file() {
                    return Err(bad("replay", &self.replay, "no such file"));
                }
                Ok(BackendSpec::Replay { file, dataset })
            }
            "udp" => {
                let listen = self.udp_listen.parse().map_err(|_| {
                    bad(
                        "udp-listen",
                        &self.udp_listen,
                        "expected IP:PORT, for example 127.0.0.1:9000",
                    )
                })?;
                let incomplete = self
                    .udp_incomplete
                    .parse()
                    .map_err(|e: String| bad("udp-incomplete", &self.udp_incomplete, e))?;
                Ok(BackendSpec::Udp { listen, incomplete })
            }
            other => Err(bad("backend", other, "expected one of sim, replay, udp")),
        }
    }
}

/// Parse `WIDTHxHEIGHT`.
pub fn parse_size(s: &str) -> Result<(u32, u32), ConfigError> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| bad("size", s, "expected WIDTHxHEIGHT, for example 1024x1024"))?;
    let side = |v: &str| {
        v.trim().parse::<u32>().map_err(|_| {
            bad(
                "size",
                s,
                "expected WIDTHxHEIGHT with whole numbers, for example 1024x1024",
            )
        })
    };
    let (w, h) = (side(w)?, side(h)?);
    if w == 0 || h == 0 {
        return Err(bad("size", s, "width and height must be at least 1"));
    }
    if w > MAX_SENSOR_SIDE || h > MAX_SENSOR_SIDE {
        return Err(bad(
            "size",
            s,
            format!("width and height must be at most {MAX_SENSOR_SIDE}"),
        ));
    }
    Ok((w, h))
}

fn seconds(setting: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !(0.0..=86_400.0).contains(&v) {
        return Err(bad(setting, v, "expected seconds between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Check every setting; the first bad one is refused with its name and value.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let d = &self.detector;
        let (width, height) = parse_size(&d.size)?;
        let pixel_type: PixelType = d.dtype.parse().map_err(|e| bad("dtype", &d.dtype, e))?;
        let mode: SimMode = d
            .mode
            .parse()
            .map_err(|_| bad("mode", &d.mode, "expected one of peaks, ramp, sine, noise"))?;
        let exposure = seconds("exposure", d.exposure)?;
        let period = seconds("period", d.period)?;
        let frame_bytes = width as usize * height as usize * pixel_type.size();
        let slots = match self.ring.slots {
            0 => auto_slots(frame_bytes),
            n if n > 65_536 => {
                return Err(bad(
                    "ring-slots",
                    n,
                    "expected 1 to 65536 slots, or 0 for automatic",
                ));
            }
            n => n,
        };
        let ring_policy: detflow_ring::Policy = self.ring.policy.parse().map_err(|_| {
            bad(
                "ring-policy",
                &self.ring.policy,
                "expected block or drop-newest",
            )
        })?;
        let ring_shm = if self.ring.shm.is_empty() {
            None
        } else {
            let p = std::path::PathBuf::from(&self.ring.shm);
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() || p.is_dir() {
                return Err(bad(
                    "ring-shm",
                    &self.ring.shm,
                    "expected a file path in an existing directory, for example /dev/shm/detflow",
                ));
            }
            Some(p)
        };
        let w = &self.writer;
        let template: FileTemplate = w
            .template
            .parse()
            .map_err(|e: detflow_writer::TemplateError| bad("template", &w.template, e))?;
        let codec: Codec = w
            .codec
            .parse()
            .map_err(|e: detflow_writer::CodecError| bad("codec", &w.codec, e.reason))?;
        let write_mode: WriteMode = w
            .write_mode
            .parse()
            .map_err(|e: String| bad("write-mode", &w.write_mode, e))?;
        if w.name.contains('/') || w.name.contains('\0') {
            return Err(bad(
                "name",
                &w.name,
                "a file name cannot contain '/' or NUL",
            ));
        }
        if w.workers > 256 {
            return Err(bad(
                "workers",
                w.workers,
                "expected 0 (one per core) to 256",
            ));
        }
        if w.number < 0 {
            return Err(bad("number", w.number, "file numbers start at 0"));
        }
        seconds("flush-interval", w.flush_interval)?;
        check_flushing(w)?;
        if w.temp_suffix.contains('/') {
            return Err(bad(
                "temp-suffix",
                &w.temp_suffix,
                "a suffix cannot contain '/'",
            ));
        }
        let ref_pattern = match &w.ref_pattern {
            None => None,
            Some(p) => {
                let pattern: RefPattern = p
                    .parse()
                    .map_err(|e: detflow_writer::RefError| bad("ref-pattern", p, e.reason))?;
                detflow_writer::check_ref_pattern(&pattern)
                    .map_err(|reason| bad("ref-pattern", p, reason))?;
                if write_mode == WriteMode::Capture {
                    return Err(bad(
                        "ref-pattern",
                        p,
                        "a pattern writes one file per point; write-mode capture buffers \
                         frames for one file",
                    ));
                }
                if d.frames != 1 && !(pattern.has_index() && w.auto_increment) {
                    return Err(bad(
                        "ref-pattern",
                        p,
                        "every point needs its own file: put {index} in the pattern, with \
                         auto-increment on",
                    ));
                }
                let first = pattern.value_ref(w.number.max(0) as u64);
                let first = first.path();
                if w.create_dirs == 0 && !first.parent().is_some_and(std::path::Path::is_dir) {
                    return Err(bad(
                        "ref-pattern",
                        p,
                        format!("the directory of {first:?} does not exist"),
                    ));
                }
                if !w.overwrite && first.exists() {
                    return Err(bad(
                        "ref-pattern",
                        p,
                        format!("the file {first:?} exists; give another --number, or --overwrite"),
                    ));
                }
                Some(pattern)
            }
        };
        // A pattern stores each point as one frame in its own file: Single mode.
        let write_mode = if ref_pattern.is_some() {
            WriteMode::Single
        } else {
            write_mode
        };
        if let Some(refs) = &w.refs {
            check_output_file("refs", refs)?;
        }
        if let Some(vds) = &w.vds {
            check_output_file("vds", vds)?;
            if !w.overwrite && std::path::Path::new(vds).exists() {
                return Err(bad(
                    "vds",
                    vds,
                    "the file exists; give another name, or --overwrite",
                ));
            }
        }
        let num_capture = w.capture.unwrap_or(d.frames);
        if write_mode == WriteMode::Capture && num_capture == 0 {
            return Err(bad(
                "capture",
                num_capture,
                "Capture mode buffers NumCapture frames in memory: give at least 1",
            ));
        }
        if write_mode == WriteMode::Capture {
            let need = num_capture as u128 * frame_bytes as u128;
            if need > 8 << 30 {
                return Err(bad(
                    "capture",
                    num_capture,
                    format!(
                        "Capture mode would buffer {} MiB; the limit is 8192 MiB (use stream)",
                        need >> 20
                    ),
                ));
            }
        }
        // The detector acquires no more frames than the capture takes.
        let frames = match (write_mode, d.frames, num_capture) {
            (WriteMode::Single, f, _) => f,
            (_, 0, c) | (_, c, 0) => c,
            (_, f, c) => f.min(c),
        };
        // The slots are allocated and touched before the run: refuse now a ring the machine
        // cannot hold (the engine checks again with the run's frame count and frame size).
        fit_ring(self.ring.slots, frame_bytes, frames, ring_memory_cap())?;
        let naming = FileNaming {
            path: w.path.clone(),
            name: w.name.clone(),
            number: w.number,
            auto_increment: w.auto_increment,
            template,
        };
        // Check the directory now unless it is to be created at start (with strftime codes
        // expanded as they will be then).
        let expanded =
            detflow_writer::naming::expand_path_time(&w.path, std::time::SystemTime::now())
                .map_err(|e| bad("path", &w.path, e.reason))?;
        if w.create_dirs == 0 && ref_pattern.is_none() {
            let dir = if expanded.is_empty() {
                ".".to_owned()
            } else {
                expanded.clone()
            };
            detflow_writer::check_directory(std::path::Path::new(&dir), "path").map_err(
                |e| match e {
                    detflow_writer::WriterError::BadDirectory { reason, .. } => {
                        bad("path", &w.path, reason)
                    }
                    other => bad("path", &w.path, other),
                },
            )?;
        }
        let first = FileNaming {
            path: expanded,
            ..naming.clone()
        }
        .peek_name();
        if ref_pattern.is_some() {
            // Names come from the pattern, checked above.
        } else if first.file_name().is_none() || first.as_os_str().to_string_lossy().ends_with('/')
        {
            return Err(bad(
                "template",
                &w.template,
                format!("it builds {first:?}, which is not a file name"),
            ));
        }
        if w.create_dirs == 0 && ref_pattern.is_none() {
            if let Some(parent) = first.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(bad(
                        "template",
                        &w.template,
                        format!("it builds {first:?}, whose directory {parent:?} does not exist"),
                    ));
                }
            }
        }
        if !w.overwrite
            && write_mode != WriteMode::Capture
            && ref_pattern.is_none()
            && first.exists()
        {
            return Err(bad(
                "number",
                w.number,
                format!(
                    "the file {first:?} exists; give another --number or --name, or --overwrite"
                ),
            ));
        }

        let mut acquisition = AcquisitionConfig {
            roi: Roi::full(width, height),
            binning: Binning::default(),
            pixel_type,
            exposure,
            period,
            image_mode: if frames == 0 {
                ImageMode::Continuous
            } else {
                ImageMode::Multiple
            },
            num_images: 1,
            trigger_mode: TriggerMode::Internal,
        };
        acquisition.num_images = u32::try_from(frames.max(1))
            .map_err(|_| bad("frames", d.frames, format!("at most {}", u32::MAX)))?;

        let backend = d.backend()?;
        Ok(Validated {
            backend,
            sensor: (width, height),
            acquisition,
            mode,
            seed: d.seed,
            frames,
            ring_slots: slots,
            ring_policy,
            ring_shm,
            workers: match w.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            capture: CaptureSettings {
                mode: write_mode,
                num_capture,
                frames_per_file: w.frames_per_file,
                lazy_open: w.lazy_open,
                naming,
                create_dirs: w.create_dirs,
                temp_suffix: w.temp_suffix.clone(),
                overwrite: w.overwrite,
                codec,
                swmr: w.swmr,
                flush_every: w.flush,
                flush_interval: (w.flush_interval > 0.0)
                    .then(|| Duration::from_secs_f64(w.flush_interval)),
                store_attributes: w.attributes,
                store_performance: w.performance,
                refs: w.refs.as_ref().map(|r| absolute(std::path::Path::new(r))),
                ref_pattern,
                // `acquire` writes where it is told; the daemon sets its data roots.
                roots: detflow_writer::DataRoots::anywhere(),
            },
        })
    }

    /// Read a TOML file; unknown keys are refused.
    pub fn from_toml_file(path: &std::path::Path) -> anyhow::Result<Config> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }
}

/// The absolute form of `p` (relative to the current directory), without resolving links.
pub fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Config)) -> Result<Validated, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.writer.path = dir.path().to_string_lossy().into_owned();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn an_existing_file_is_refused_unless_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("detflow_0001.h5"), b"").unwrap();
        let mut c = Config::default();
        c.writer.path = dir.path().to_string_lossy().into_owned();
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "number");
        assert!(e.reason.contains("exists"), "{e}");
        c.writer.overwrite = true;
        assert!(c.validate().is_ok());
        c.writer.overwrite = false;
        c.writer.number = 2;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_detector_acquires_no_more_than_the_capture_takes() {
        let v = with(|c| c.writer.capture = Some(10)).unwrap();
        assert_eq!(
            (v.frames, v.acquisition.num_images, v.capture.num_capture),
            (10, 10, 10)
        );
        let v = with(|c| {
            c.detector.frames = 0;
            c.writer.capture = Some(7);
        })
        .unwrap();
        assert_eq!(
            (v.frames, v.acquisition.image_mode),
            (7, ImageMode::Multiple)
        );
        let v = with(|c| {
            c.detector.frames = 0;
            c.writer.capture = Some(0);
        })
        .unwrap();
        assert_eq!(
            (v.frames, v.acquisition.image_mode),
            (0, ImageMode::Continuous)
        );
        let v = with(|c| {
            c.writer.write_mode = "single".into();
            c.detector.frames = 3;
            c.writer.capture = Some(1);
        })
        .unwrap();
        assert_eq!(v.frames, 3, "single mode writes every frame");
    }

    #[test]
    fn defaults_are_valid() {
        let v = with(|_| {}).unwrap();
        assert_eq!(v.sensor, (1024, 1024));
        assert_eq!(v.acquisition.pixel_type, PixelType::U16);
        assert_eq!(v.acquisition.image_mode, ImageMode::Multiple);
        assert_eq!(v.capture.codec, Codec::None);
        assert_eq!(v.capture.mode, WriteMode::Stream);
        assert_eq!(v.capture.num_capture, 100);
        assert_eq!(v.ring_slots, 64);
        assert_eq!(auto_slots(4096 * 4096 * 8), 4);
        assert_eq!(auto_slots(2048 * 2048 * 2), 64);
        assert_eq!(auto_slots(4096 * 4096 * 2), 16);
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        type Case = (Box<dyn Fn(&mut Config)>, &'static str, &'static str);
        let cases: Vec<Case> = vec![
            (
                Box::new(|c| c.detector.dtype = "u64".into()),
                "dtype",
                "u64",
            ),
            (
                Box::new(|c| c.detector.size = "0x10".into()),
                "size",
                "0x10",
            ),
            (
                Box::new(|c| c.detector.size = "10by10".into()),
                "size",
                "10by10",
            ),
            (
                Box::new(|c| c.detector.mode = "waves".into()),
                "mode",
                "waves",
            ),
            (Box::new(|c| c.detector.exposure = -1.0), "exposure", "-1"),
            (
                Box::new(|c| c.writer.template = "%s%s_%q.h5".into()),
                "template",
                "%s%s_%q.h5",
            ),
            (
                Box::new(|c| c.writer.codec = "deflate:11".into()),
                "codec",
                "deflate:11",
            ),
            (
                Box::new(|c| c.writer.path = "/nonexistent/dir".into()),
                "path",
                "/nonexistent/dir",
            ),
            (Box::new(|c| c.ring.slots = 70_000), "ring-slots", "70000"),
            (
                Box::new(|c| c.writer.write_mode = "burst".into()),
                "write-mode",
                "burst",
            ),
            (
                Box::new(|c| {
                    c.writer.write_mode = "capture".into();
                    c.writer.capture = Some(0);
                }),
                "capture",
                "0",
            ),
            (
                Box::new(|c| c.writer.temp_suffix = "a/b".into()),
                "temp-suffix",
                "a/b",
            ),
        ];
        for (f, setting, value) in cases {
            let e = with(f).unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
            assert_eq!(e.value, value, "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid {setting} \"{value}\"")),
                "{e}"
            );
        }
    }

    #[test]
    fn backend_settings_are_checked_by_name() {
        let v = with(|_| {}).unwrap();
        assert!(matches!(v.backend, BackendSpec::Sim { fifo_depth: 16, .. }));
        type Case = (fn(&mut Config), &'static str, &'static str);
        let cases: [Case; 6] = [
            (
                |c| c.detector.backend = "camera".into(),
                "backend",
                "camera",
            ),
            (|c| c.detector.backend = "replay".into(), "replay", ""),
            (
                |c| {
                    c.detector.backend = "replay".into();
                    c.detector.replay = "/nonexistent.h5::/d".into();
                },
                "replay",
                "/nonexistent.h5::/d",
            ),
            (
                |c| {
                    c.detector.backend = "udp".into();
                    c.detector.udp_listen = "localhost".into();
                },
                "udp-listen",
                "localhost",
            ),
            (|c| c.detector.fault_drop = 1.5, "fault-drop", "1.5"),
            (|c| c.detector.fifo_depth = 0, "fifo-depth", "0"),
        ];
        for (f, setting, value) in cases {
            let e = with(f).unwrap_err();
            assert_eq!((e.setting, e.value.as_str()), (setting, value), "{e}");
        }
        let v = with(|c| {
            c.detector.backend = "udp".into();
            c.detector.udp_listen = "127.0.0.1:9000".into();
            c.detector.udp_incomplete = "flag".into();
        })
        .unwrap();
        assert_eq!(
            v.backend,
            BackendSpec::Udp {
                listen: "127.0.0.1:9000".parse().unwrap(),
                incomplete: crate::backend::udp::Incomplete::Flag
            }
        );
    }

    #[test]
    fn the_ring_fits_the_run_and_the_memory_cap() {
        let cap = |bytes: u64| RingCap {
            bytes,
            available: Some(bytes * RING_MEMORY_SHARE),
        };
        let mib2 = 1024 * 1024 * 2;
        // Never more slots than frames, requested or automatic; 0 frames keeps the request.
        assert_eq!(fit_ring(4000, mib2, 5, cap(1 << 30)), Ok(5));
        assert_eq!(fit_ring(0, mib2, 3, cap(1 << 30)), Ok(3));
        assert_eq!(fit_ring(100, mib2, 0, cap(1 << 30)), Ok(100));
        // A requested ring over the cap is refused, naming the setting and the cap.
        let e = fit_ring(4000, mib2, 0, cap(1 << 30)).unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("ring-slots", "4000"));
        assert!(
            e.reason
                .contains("1024 MiB, a quarter of MemAvailable (4096 MiB)")
                && e.reason.contains("--ring-slots 512 or fewer"),
            "{e}"
        );
        // An automatic ring shrinks to the cap; when not even one slot fits, it is refused.
        assert_eq!(fit_ring(0, mib2, 0, cap(10 * mib2 as u64)), Ok(10));
        assert_eq!(
            fit_ring(0, mib2, 0, cap(1 << 20)).unwrap_err().setting,
            "ring-slots"
        );
    }

    #[test]
    fn never_flushing_needs_no_flush_and_no_flush_needs_no_flush_setting() {
        let e = with(|c| c.writer.flush_interval = 0.0).unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("flush-interval", "0"));
        assert!(
            e.reason.contains("flush 0") && e.reason.contains("no_flush"),
            "{e}"
        );
        let v = with(|c| {
            c.writer.flush_interval = 0.0;
            c.writer.no_flush = true;
        })
        .unwrap();
        assert_eq!((v.capture.flush_every, v.capture.flush_interval), (0, None));
        assert!(
            with(|c| c.writer.no_flush = true).is_err(),
            "flush_interval 1 contradicts it"
        );
        let e = with(|c| {
            c.writer.flush_interval = 0.0;
            c.writer.no_flush = true;
            c.writer.flush = 4;
        })
        .unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("flush", "4"));
        assert!(
            with(|c| {
                c.writer.flush_interval = 0.0;
                c.writer.flush = 4;
            })
            .is_ok()
        );
    }

    #[test]
    fn toml_round_trips_and_refuses_unknown_keys() {
        let c = Config::default();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        assert!(toml::from_str::<Config>("[detector]\nfrmes = 3\n").is_err());
        let partial: Config = toml::from_str("[writer]\ncodec = \"deflate:1\"\n").unwrap();
        assert_eq!(partial.writer.codec, "deflate:1");
        assert_eq!(partial.detector, DetectorSettings::default());
    }
}
