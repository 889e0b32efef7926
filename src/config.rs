//! One acquisition's settings, as one serde structure (TOML on disk), and their validation.
//!
//! The CLI's flags, a TOML file and (later) the daemon's PVs all write these same fields.
//! [`Config::validate`] turns them into typed settings, refusing a bad value with a message
//! that names the setting and the value, before any thread starts or any file is touched.

use std::path::PathBuf;
use std::time::Duration;

use detflow_hal::{AcquisitionConfig, Binning, ImageMode, PixelType, Roi, TriggerMode};
use detflow_sim::SimMode;
use detflow_writer::{Codec, FileNaming, FileTemplate};
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
        }
    }
}

/// Frame ring settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RingSettings {
    /// Pre-allocated frame slots between the detector and the writer; 0 picks
    /// [`auto_slots`] for the frame size.
    pub slots: usize,
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

/// File settings (NDPluginFile + NDFileHDF5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterSettings {
    /// Directory (FilePath). Must exist and be writable.
    pub path: String,
    /// Base name (FileName).
    pub name: String,
    /// File number (FileNumber) of the first file.
    pub number: i32,
    /// Increment the number after each file (AutoIncrement).
    pub auto_increment: bool,
    /// C-printf template taking path, name, number (FileTemplate).
    pub template: String,
    /// `none` or `deflate[:LEVEL]`.
    pub codec: String,
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
        }
    }
}

/// Settings checked and typed, ready for [`crate::engine::Acquisition::start`].
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
    /// Frames to acquire (0 = until stopped).
    pub frames: u64,
    /// Ring slots.
    pub ring_slots: usize,
    /// File naming.
    pub naming: FileNaming,
    /// Chunk codec.
    pub codec: Codec,
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
        let num_images = u32::try_from(d.frames)
            .map_err(|_| bad("frames", d.frames, format!("at most {}", u32::MAX)))?;
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
        // Keep the ring within a quarter of the machine's memory at most (the slots are
        // allocated up front and touched).
        let ring_bytes = slots as u128 * frame_bytes.next_multiple_of(4096) as u128;
        if ring_bytes > 8 << 30 {
            return Err(bad(
                "ring-slots",
                slots,
                format!(
                    "{slots} slots of {frame_bytes} bytes need {} MiB; the limit is 8192 MiB",
                    ring_bytes >> 20
                ),
            ));
        }

        let w = &self.writer;
        let template: FileTemplate = w
            .template
            .parse()
            .map_err(|e: detflow_writer::TemplateError| bad("template", &w.template, e))?;
        let codec: Codec = w
            .codec
            .parse()
            .map_err(|e: detflow_writer::CodecError| bad("codec", &w.codec, e.reason))?;
        if w.name.contains('/') || w.name.contains('\0') {
            return Err(bad(
                "name",
                &w.name,
                "a file name cannot contain '/' or NUL",
            ));
        }
        if w.number < 0 {
            return Err(bad("number", w.number, "file numbers start at 0"));
        }
        let naming = FileNaming {
            path: w.path.clone(),
            name: w.name.clone(),
            number: w.number,
            auto_increment: w.auto_increment,
            template,
        };
        let dir = naming.directory().to_path_buf();
        detflow_writer::check_directory(&dir, "path").map_err(|e| match e {
            detflow_writer::WriterError::BadDirectory { reason, .. } => {
                bad("path", &w.path, reason)
            }
            other => bad("path", &w.path, other),
        })?;
        let file = naming.peek_name();
        if file.file_name().is_none() || file.as_os_str().to_string_lossy().ends_with('/') {
            return Err(bad(
                "template",
                &w.template,
                format!("it builds {file:?}, which is not a file name"),
            ));
        }
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(bad(
                    "template",
                    &w.template,
                    format!("it builds {file:?}, whose directory {parent:?} does not exist"),
                ));
            }
        }

        Ok(Validated {
            sensor: (width, height),
            acquisition: AcquisitionConfig {
                roi: Roi::full(width, height),
                binning: Binning::default(),
                pixel_type,
                exposure,
                period,
                image_mode: if d.frames == 0 {
                    ImageMode::Continuous
                } else {
                    ImageMode::Multiple
                },
                num_images: num_images.max(1),
                trigger_mode: TriggerMode::Internal,
            },
            mode,
            seed: d.seed,
            frames: d.frames,
            ring_slots: slots,
            naming,
            codec,
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
        let mut c = Config::default();
        c.writer.path = std::env::temp_dir().to_string_lossy().into_owned();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid() {
        let v = with(|_| {}).unwrap();
        assert_eq!(v.sensor, (1024, 1024));
        assert_eq!(v.acquisition.pixel_type, PixelType::U16);
        assert_eq!(v.acquisition.image_mode, ImageMode::Multiple);
        assert_eq!(v.codec, Codec::None);
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
