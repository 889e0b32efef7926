//! `[detector]`: the frames asked for (sensor size, region, binning, pixel type, count,
//! timing) and the simulated detector's picture. Every value is typed, so a value that reads
//! is a value that can be used; the rules between them (a region inside the sensor, binning
//! that leaves a frame) are [`DetectorSettings::validate`]'s; how many frames the detector
//! acquires also depends on the writer's capture (see [`super::Config::validate`]).

use detflow_hal::{AcquisitionConfig, ImageMode, PixelType, Roi, TriggerMode};
use detflow_sim::{SimMode, SimParams};
use serde::{Deserialize, Serialize};

use super::value::{Binning, FrameSize, Region, Seconds, parse, text};
use super::{ConfigError, bad};

/// Detector settings (ADBase + ADSimDetector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorSettings {
    /// Sensor size WIDTHxHEIGHT in pixels, 1 to 8192 a side (the simulated sensor is made
    /// this size); frames are this size unless roi or binning say otherwise.
    #[arg(long, value_name = "WxH")]
    pub size: FrameSize,
    /// Region of interest X,Y,WxH in sensor pixels (MinX, MinY, SizeX, SizeY); unset: the
    /// whole sensor.
    #[arg(long, value_name = "X,Y,WxH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<Region>,
    /// Binning XxY (BinX, BinY), 1 to 64 each: the frame is the region divided by it.
    #[arg(long, value_name = "XxY")]
    pub binning: Binning,
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
    /// The simulated picture (simDetector Gain, Offset, Noise, Peak*), each key optional; a
    /// key not given, or no table, takes the value of a useful picture for the mode, size and
    /// pixel type (`SimParams::demo`). TOML: `[detector.picture]`.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub picture: Option<PictureKeys>,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            size: FrameSize::new(1024, 1024).expect("1024x1024 is a frame size"),
            roi: None,
            binning: Binning::default(),
            dtype: PixelType::U16,
            mode: SimMode::Peaks,
            frames: 100,
            exposure: Seconds::ZERO,
            period: Seconds::ZERO,
            seed: 0,
            picture: None,
        }
    }
}

impl DetectorSettings {
    /// The region read out: `roi`, or the whole sensor.
    pub fn region(&self) -> Region {
        self.roi.unwrap_or(Region::full(self.size))
    }

    /// The rules between the detector's settings: the region inside the sensor, binning that
    /// leaves a frame, a picture the simulator can draw.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let region = self.region();
        region
            .check_within(self.size)
            .map_err(|e| bad("roi", region, e))?;
        self.binning
            .output(region)
            .map_err(|e| bad("binning", self.binning, e))?;
        if self.picture.is_some() {
            self.params().validate().map_err(picture_error)?;
        }
        Ok(())
    }

    /// The frame's width and height: the region, binned. Refused naming `binning` when
    /// nothing is left.
    pub fn output_size(&self) -> Result<(u32, u32), ConfigError> {
        self.binning
            .output(self.region())
            .map_err(|e| bad("binning", self.binning, e))
    }

    /// Bytes of one frame (0 when binning leaves none).
    pub fn frame_bytes(&self) -> usize {
        self.output_size()
            .map_or(0, |(w, h)| w as usize * h as usize * self.dtype.size())
    }

    /// The simulator's parameters: the picture's keys given, the demo picture's elsewhere.
    pub fn params(&self) -> SimParams {
        let demo = SimParams::demo(self.mode, self.size.pair(), self.dtype);
        match &self.picture {
            Some(keys) => keys.apply(demo),
            None => demo,
        }
    }

    /// The picture the simulator draws, every parameter, as the simDetector PVs show it.
    pub fn picture(&self) -> SimPicture {
        SimPicture::from(&self.params())
    }

    /// Draw `picture`, every parameter given (the daemon's PVs set them all).
    pub fn set_picture(&mut self, picture: SimPicture) {
        self.picture = Some(PictureKeys::from(picture));
    }

    /// What the detector is configured with for a run of `frames` frames (0: until stopped).
    pub fn acquisition(&self, frames: u64, num_images: u32) -> AcquisitionConfig {
        let r = self.region();
        AcquisitionConfig {
            roi: Roi {
                min_x: r.min_x,
                min_y: r.min_y,
                size_x: r.size_x,
                size_y: r.size_y,
            },
            binning: detflow_hal::Binning {
                x: self.binning.x(),
                y: self.binning.y(),
            },
            pixel_type: self.dtype,
            exposure: self.exposure.duration(),
            period: self.period.duration(),
            image_mode: if frames == 0 {
                ImageMode::Continuous
            } else {
                ImageMode::Multiple
            },
            num_images,
            trigger_mode: TriggerMode::Internal,
        }
    }
}

/// The simulator's refusal of a picture, naming its key in `[detector.picture]`.
pub fn picture_error(e: detflow_sim::SensorError) -> ConfigError {
    use detflow_sim::SensorError::{NotFinite, OutOfRange};
    match e {
        OutOfRange { setting, value, .. } => bad(setting, value, e),
        NotFinite { setting, value } => bad(setting, value, e),
        other => bad("picture", "", other),
    }
}

/// The simulator's picture parameters, listed once: [`SimPicture`] (every one, as the PVs show
/// them) and [`PictureKeys`] (those a TOML file gives).
macro_rules! picture_keys {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// The simulated detector's picture, as simDetector's PVs set it (Gain, GainX/Y,
        /// Offset, Noise, PeakStart/Width/Num/Step X/Y, PeakVariation). The sines keep the
        /// demo's values.
        #[derive(Debug, Clone, Copy, PartialEq)]
        #[allow(missing_docs)]
        pub struct SimPicture {
            $(pub $field: $ty,)*
        }

        impl From<&SimParams> for SimPicture {
            fn from(p: &SimParams) -> Self {
                SimPicture {
                    $($field: p.$field,)*
                }
            }
        }

        /// `[detector.picture]` as written: any of the simDetector parameters; a key not
        /// given keeps the demo picture's value for the mode, size and pixel type.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        #[allow(missing_docs)]
        pub struct PictureKeys {
            $(
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        impl PictureKeys {
            /// `base` with the keys given.
            pub fn apply(&self, base: SimParams) -> SimParams {
                SimParams {
                    $($field: self.$field.unwrap_or(base.$field),)*
                    ..base
                }
            }
        }

        impl From<SimPicture> for PictureKeys {
            fn from(p: SimPicture) -> Self {
                PictureKeys {
                    $($field: Some(p.$field),)*
                }
            }
        }
    };
}

picture_keys! {
    gain: f64,
    gain_x: f64,
    gain_y: f64,
    offset: f64,
    noise: f64,
    peak_start_x: i32,
    peak_start_y: i32,
    peak_width_x: u32,
    peak_width_y: u32,
    peak_num_x: u32,
    peak_num_y: u32,
    peak_step_x: i32,
    peak_step_y: i32,
    peak_variation: f64,
}
