//! `[detector]`: the frames asked for (size, pixel type, count, timing) and the simulated
//! detector's picture. Every value is typed, so a value that reads is a value that can be used;
//! how many frames the detector acquires also depends on the writer's capture (see
//! [`super::Config::validate`]).

use detflow_hal::PixelType;
use detflow_sim::SimMode;
use serde::{Deserialize, Serialize};

use super::value::{FrameSize, Seconds, parse, text};

/// Detector settings (ADBase + ADSimDetector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorSettings {
    /// Frame size WIDTHxHEIGHT in pixels, 1 to 8192 a side (the simulated sensor is made this
    /// size).
    #[arg(long, value_name = "WxH")]
    pub size: FrameSize,
    /// Pixel type: u8 u16 u32 i8 i16 i32 f32 f64.
    #[arg(long, value_name = "TYPE", value_parser = parse::<PixelType>)]
    #[serde(with = "text")]
    pub dtype: PixelType,
    /// Simulated image: peaks, ramp, sine, noise.
    #[arg(long, value_name = "MODE")]
    #[serde(with = "text")]
    pub mode: SimMode,
    /// Frames to acquire; 0 acquires until stopped (Ctrl-C).
    #[arg(long, value_name = "N")]
    pub frames: u64,
    /// Exposure time in seconds, 0 to 86400.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub exposure: Seconds,
    /// Acquire period in seconds, 0 to 86400; 0 is as fast as possible.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub period: Seconds,
    /// Seed of the simulation's random numbers: equal seeds give equal frames.
    #[arg(long, value_name = "N")]
    pub seed: u64,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            size: FrameSize::new(1024, 1024).expect("1024x1024 is a frame size"),
            dtype: PixelType::U16,
            mode: SimMode::Peaks,
            frames: 100,
            exposure: Seconds::ZERO,
            period: Seconds::ZERO,
            seed: 0,
        }
    }
}

impl DetectorSettings {
    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.size.pixels() * self.dtype.size()
    }
}
