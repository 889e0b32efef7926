//! One acquisition's settings, as one serde structure (TOML on disk) whose fields are the real
//! types, and the rules between them.
//!
//! The CLI's flags (clap derive on the same section structs), a TOML file and the daemon's PVs
//! all write these fields. A value that does not parse is refused where it is read, naming the
//! flag, key or PV; [`Config::validate`] (a run with its own files) or [`Config::validate_run`]
//! (a run into the daemon's plugin) then checks the rules between settings and the world
//! (directories, existing files, memory) and returns the [`Validated`] plan the engine runs,
//! before any thread starts or any file is touched. [`crate::Acquisition::builder`] takes the
//! `Config` and does that check itself.

mod backend;
mod detector;
mod ring;
mod serve;
mod value;
mod writer;

use std::path::{Path, PathBuf};

use detflow_hal::AcquisitionConfig;
use detflow_sim::{SimMode, SimParams};
use detflow_writer::{CaptureSettings, Codec, DataRoots, WriteMode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use backend::{BackendConfig, BackendKeys, BackendKind};
pub use detector::{DetectorSettings, PictureKeys, SimPicture, picture_error};
pub use ring::{
    MAX_SLOTS, RING_MEMORY_FALLBACK, RING_MEMORY_SHARE, RingCap, RingSettings, auto_slots,
    fit_ring, mem_available, ring_memory_cap,
};
pub use serve::{MAX_PREVIEW_RATE, ServeSettings};
pub use value::{Binning, FrameSize, Region, Seconds, ValueError, parse, text};
pub use writer::{CodecSetting, WriterSettings, default_workers};

/// The checked backend the engine opens: [`BackendConfig`] after [`BackendConfig::validate`].
pub type BackendSpec = BackendConfig;

/// A setting with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {setting} {value:?}: {reason}")]
pub struct ConfigError {
    /// The setting, as the CLI flag names it (`dtype`, `size`, `ring-slots`); the message
    /// adds the TOML key where it is spelt otherwise.
    pub setting: &'static str,
    /// The value given.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ConfigError {
    /// `setting` cannot be `value`, because `reason`.
    pub fn new(setting: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        ConfigError {
            setting,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

fn bad(setting: &'static str, value: impl ToString, reason: impl ToString) -> ConfigError {
    ConfigError::new(setting, value, reason)
}

/// A settings file that cannot be read.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, has an unknown key or a value that does not parse; the source's
    /// message shows the key's line.
    #[error("invalid config {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the line.
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// Everything one acquisition needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The frames asked for and the simulated detector's picture.
    pub detector: DetectorSettings,
    /// Where the frames come from.
    pub backend: BackendConfig,
    /// The frame ring between detector and writer.
    pub ring: RingSettings,
    /// Files, naming and compression.
    pub writer: WriterSettings,
    /// The daemon (`detflow serve`); `detflow acquire` ignores it.
    pub serve: ServeSettings,
}

/// Settings checked and typed: the plan [`crate::Acquisition::builder`] runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Sensor width and height.
    pub sensor: (u32, u32),
    /// What the detector is configured with.
    pub acquisition: AcquisitionConfig,
    /// Simulation mode.
    pub mode: SimMode,
    /// The simulated picture: `[detector.picture]`, or the demo picture for the mode.
    pub params: SimParams,
    /// Simulation seed.
    pub seed: u64,
    /// Frames the detector acquires (0 = until stopped).
    pub frames: u64,
    /// Ring slots.
    pub ring_slots: usize,
    /// Ring policy.
    pub ring_policy: detflow_ring::Policy,
    /// Shared-memory file of the ring, if any.
    pub ring_shm: Option<PathBuf>,
    /// Files: mode, naming, codec and the rest.
    pub capture: CaptureSettings,
    /// Compression worker threads (at least 1).
    pub workers: usize,
    /// The codec as set (`auto` follows what the frames arrive in): `capture.codec` is
    /// decided from it, again once an image source says how its images arrive.
    pub codec: CodecSetting,
    /// The worker count as set (0: automatic).
    pub workers_setting: usize,
    /// Where the frames come from.
    pub backend: BackendSpec,
}

impl Validated {
    /// The plan for a series of images that arrive encoded with `arriving`, `images` of them
    /// (when the detector says): the codec `auto` resolves to, a capture of that many
    /// frames unless one was set, the workers for that codec.
    pub fn for_images(&mut self, arriving: Codec, images: Option<u64>, frame_bytes: usize) {
        self.capture.codec = self.codec.resolve(arriving);
        if self.capture.num_capture == 0 {
            self.capture.num_capture = images.unwrap_or(0);
        }
        self.frames = images.unwrap_or(0);
        if self.workers_setting == 0 {
            self.workers = default_workers(cores(), self.capture.codec, frame_bytes);
        }
    }
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Check every rule for a run that writes its own files (`detflow acquire`): the run's
    /// ([`Config::validate_run`]) and the writer's, with the files' directory and first name
    /// checked against the disk. The first rule broken is refused with its setting and value.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let (d, w) = (&self.detector, &self.writer);
        self.ring.validate()?;
        d.validate()?;
        w.validate()?;
        // A Stream V2 series says how many images it holds: until then, 0 (until it ends).
        let d_frames = match self.backend {
            BackendSpec::Stream2 { .. } => 0,
            _ => d.frames,
        };
        let num_capture = w.capture.unwrap_or(d_frames);
        let mode = w.write_mode_for(d_frames, num_capture)?;
        WriterSettings::check_capture_memory(mode, num_capture, d.frame_bytes())?;
        let frames = frames_acquired(mode, d_frames, num_capture);
        let capture = w.capture_settings(mode, num_capture, DataRoots::anywhere());
        let run = self.plan(frames, capture)?;
        w.check_first_file(mode)?;
        Ok(run)
    }

    /// Check the rules of a run whose frames go to a sink that is not its own (the daemon's
    /// file plugin, which opens captures from [`WriterSettings::capture_settings`] when told):
    /// the detector, the backend, the ring and the compressor pool; of the writer, only the
    /// codec the pool encodes with is used. The detector acquires `detector.frames`.
    pub fn validate_run(&self) -> Result<Validated, ConfigError> {
        self.ring.validate()?;
        self.detector.validate()?;
        let w = &self.writer;
        w.check_workers()?;
        // The sink opens its captures itself; the pool encodes with the writer's codec.
        let capture =
            w.capture_settings(w.write_mode, w.capture.unwrap_or(0), DataRoots::anywhere());
        self.plan(self.detector.frames, capture)
    }

    /// The run of `frames` frames writing with `capture`, the sections' own rules checked: the
    /// ring against the machine's memory, the backend's values.
    fn plan(&self, frames: u64, capture: CaptureSettings) -> Result<Validated, ConfigError> {
        let (d, w) = (&self.detector, &self.writer);
        let frame_bytes = d.frame_bytes();
        // The slots are allocated and touched before the run: refuse now a ring the machine
        // cannot hold (the engine checks again with the run's frame count and frame size).
        fit_ring(self.ring.slots, frame_bytes, frames, ring_memory_cap())?;
        let num_images = u32::try_from(frames.max(1))
            .map_err(|_| bad("frames", d.frames, format!("at most {}", u32::MAX)))?;
        self.backend.validate()?;
        Ok(Validated {
            sensor: d.size.pair(),
            acquisition: d.acquisition(frames, num_images),
            mode: d.mode,
            params: d.params(),
            seed: d.seed,
            frames,
            ring_slots: self.ring.slots_for(frame_bytes),
            ring_policy: self.ring.policy,
            ring_shm: self.ring.shm_path(),
            workers: match w.workers {
                0 => default_workers(cores(), w.codec.resolve(Codec::None), frame_bytes),
                n => n,
            },
            codec: w.codec,
            workers_setting: w.workers,
            capture,
            backend: self.backend.clone(),
        })
    }

    /// Read a TOML file; unknown keys are refused, and so is a value that does not parse,
    /// naming its key.
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

/// The frames the detector acquires: no more than the capture takes (Single mode writes every
/// frame; 0 on either side is "until stopped").
fn frames_acquired(mode: WriteMode, frames: u64, num_capture: u64) -> u64 {
    match (mode, frames, num_capture) {
        (WriteMode::Single, f, _) => f,
        (_, 0, c) | (_, c, 0) => c,
        (_, f, c) => f.min(c),
    }
}

/// The absolute form of `p` (relative to the current directory), without resolving links.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests;
