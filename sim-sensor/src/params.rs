//! The ADSimDetector simulation parameters (`SimMode`, gains, peak grid, sines) with the
//! defaults of the areaDetector driver. Writing them resets the base image; this module only
//! holds and checks the values, [`crate::image`] turns them into pixels.

use core::fmt;
use core::str::FromStr;

use detflow_hal::PixelType;

use crate::error::SensorError;

/// Which test pattern the simulated detector draws (ADSimDetector `SimMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SimMode {
    /// `inc * (gain_x * column + gain_y * row)`, plus `inc` more on every later frame.
    #[default]
    LinearRamp,
    /// A grid of Gaussian peaks, optionally with a random height per peak and frame.
    Peaks,
    /// Sums or products of sines along x and y, drifting unless the frequencies are integers.
    Sine,
    /// Only the background `offset + noise * U[0,1)`.
    OffsetNoise,
}

impl SimMode {
    /// Every mode, in ADSimDetector's enum order (0 LinearRamp … 3 Offset&Noise).
    pub const ALL: [SimMode; 4] = [
        SimMode::LinearRamp,
        SimMode::Peaks,
        SimMode::Sine,
        SimMode::OffsetNoise,
    ];

    /// The state labels of ADSimDetector's `SimMode` record, in enum order: what a Channel
    /// Access client shows for [`index`](Self::index) 0 to 3.
    pub const AD_LABELS: [&'static str; 4] = ["LinearRamp", "Peaks", "Sine", "Offset&Noise"];

    /// The command-line name: `"ramp"`, `"peaks"`, `"sine"` or `"noise"`.
    pub const fn name(self) -> &'static str {
        match self {
            SimMode::LinearRamp => "ramp",
            SimMode::Peaks => "peaks",
            SimMode::Sine => "sine",
            SimMode::OffsetNoise => "noise",
        }
    }

    /// The value of ADSimDetector's `SimMode` enum record: 0 LinearRamp, 1 Peaks, 2 Sine,
    /// 3 Offset&Noise.
    ///
    /// ```
    /// use detflow_sim::SimMode;
    ///
    /// assert_eq!(SimMode::Sine.index(), 2);
    /// assert_eq!(SimMode::from_index(2), Some(SimMode::Sine));
    /// assert_eq!(SimMode::AD_LABELS[SimMode::OffsetNoise.index() as usize], "Offset&Noise");
    /// ```
    pub const fn index(self) -> u16 {
        match self {
            SimMode::LinearRamp => 0,
            SimMode::Peaks => 1,
            SimMode::Sine => 2,
            SimMode::OffsetNoise => 3,
        }
    }

    /// The mode of a `SimMode` enum value, `None` past the last (3).
    pub const fn from_index(index: u16) -> Option<SimMode> {
        match index {
            0 => Some(SimMode::LinearRamp),
            1 => Some(SimMode::Peaks),
            2 => Some(SimMode::Sine),
            3 => Some(SimMode::OffsetNoise),
            _ => None,
        }
    }
}

impl fmt::Display for SimMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--mode` value that is not one of `peaks`, `ramp`, `sine`, `noise`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown simulation mode {0:?}: expected one of peaks, ramp, sine, noise")]
pub struct UnknownSimMode(pub String);

impl FromStr for SimMode {
    type Err = UnknownSimMode;

    /// Parses the command-line names (`"peaks"`, `"ramp"`, `"sine"`, `"noise"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SimMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownSimMode(s.to_owned()))
    }
}

/// How the two sines of one axis are combined (ADSimDetector `XSineOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SineOperation {
    /// `sine1 + sine2`.
    #[default]
    Add,
    /// `sine1 * sine2`.
    Multiply,
}

/// One sine wave `amplitude * sin(2π (t * frequency + phase_deg / 360))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sine {
    /// Peak value.
    pub amplitude: f64,
    /// Cycles per unit of `t` (one unit is one sensor width or height at gain 1).
    pub frequency: f64,
    /// Phase in degrees.
    pub phase_deg: f64,
}

impl Sine {
    /// The wave at time `t`.
    pub(crate) fn at(&self, t: f64) -> f64 {
        self.amplitude
            * (core::f64::consts::TAU * (t * self.frequency + self.phase_deg / 360.0)).sin()
    }
}

/// The simulation parameters of ADSimDetector (§4.2 of the areaDetector notes), with the
/// driver's defaults. Any change resets the base image (see
/// [`SimDetector::set_params`](crate::SimDetector::set_params)).
///
/// ```
/// use detflow_sim::{SimMode, SimParams};
///
/// let p = SimParams { mode: SimMode::Peaks, peak_num_x: 10, peak_num_y: 10, ..SimParams::default() };
/// assert_eq!(p.peak_width_y, 20);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SimParams {
    /// Test pattern.
    pub mode: SimMode,
    /// Overall gain (areaDetector `Gain`): the ramp increment (truncated to integer pixel
    /// types), the peak height, the sine scale.
    pub gain: f64,
    /// Ramp slope along x; time scale of the x sines.
    pub gain_x: f64,
    /// Ramp slope along y; time scale of the y sines.
    pub gain_y: f64,
    /// Constant background added in every mode.
    pub offset: f64,
    /// Background noise amplitude: each pixel gets `noise * U[0,1)` (not ±).
    pub noise: f64,
    /// Column of the first peak's centre.
    pub peak_start_x: i32,
    /// Row of the first peak's centre.
    pub peak_start_y: i32,
    /// Peak sigma along x in pixels, at least 1.
    pub peak_width_x: u32,
    /// Peak sigma along y in pixels, at least 1.
    pub peak_width_y: u32,
    /// Peaks per grid row, `0..=256`.
    pub peak_num_x: u32,
    /// Peak grid rows, `0..=256`.
    pub peak_num_y: u32,
    /// Columns between peak centres.
    pub peak_step_x: i32,
    /// Rows between peak centres.
    pub peak_step_y: i32,
    /// Random peak height variation in percent: each peak of each frame is scaled by
    /// `1 + peak_variation / 100 * (U[0,1) - 0.5)`. 0 gives identical peaks.
    pub peak_variation: f64,
    /// First x sine.
    pub x_sine1: Sine,
    /// Second x sine.
    pub x_sine2: Sine,
    /// First y sine.
    pub y_sine1: Sine,
    /// Second y sine.
    pub y_sine2: Sine,
    /// How the x sines combine.
    pub x_sine_operation: SineOperation,
    /// How the y sines combine.
    pub y_sine_operation: SineOperation,
}

/// Upper limit of `peak_num_x` and `peak_num_y`: 65 536 peaks keep a reset under a second.
pub(crate) const MAX_PEAK_NUM: u32 = 256;

impl Default for SimParams {
    /// ADSimDetector's defaults: LinearRamp, all gains 1, no offset or noise, one peak at
    /// (1, 1) with widths 10 x 20, sines 1 Hz / 2 Hz with phases 0° / 90°, added.
    fn default() -> Self {
        let sine1 = Sine {
            amplitude: 1.0,
            frequency: 1.0,
            phase_deg: 0.0,
        };
        let sine2 = Sine {
            amplitude: 1.0,
            frequency: 2.0,
            phase_deg: 90.0,
        };
        SimParams {
            mode: SimMode::LinearRamp,
            gain: 1.0,
            gain_x: 1.0,
            gain_y: 1.0,
            offset: 0.0,
            noise: 0.0,
            peak_start_x: 1,
            peak_start_y: 1,
            peak_width_x: 10,
            peak_width_y: 20,
            peak_num_x: 1,
            peak_num_y: 1,
            peak_step_x: 1,
            peak_step_y: 1,
            peak_variation: 0.0,
            x_sine1: sine1,
            x_sine2: sine2,
            y_sine1: sine1,
            y_sine2: sine2,
            x_sine_operation: SineOperation::Add,
            y_sine_operation: SineOperation::Add,
        }
    }
}

impl SimParams {
    /// Parameters that make a useful picture at any sensor size: for [`SimMode::Peaks`] a
    /// 10 x 10 grid of peaks (sigma a twelfth of the spacing, heights varying by 10 %) on a
    /// little noise; for [`SimMode::Sine`] sines around an offset; for
    /// [`SimMode::OffsetNoise`] flat noise; for [`SimMode::LinearRamp`] the plain ramp.
    /// Amplitudes are scaled down tenfold for 8-bit pixel types so that they fit. This is
    /// what `detflow acquire --mode`, the daemon's initial simDetector PVs, the UDP test
    /// sender and `detflow bench` draw; with equal seeds they give equal frames.
    ///
    /// ```
    /// use detflow_hal::PixelType;
    /// use detflow_sim::{SimMode, SimParams};
    ///
    /// let p = SimParams::demo(SimMode::Peaks, (1000, 500), PixelType::U16);
    /// assert_eq!((p.peak_num_x, p.peak_step_x, p.peak_start_x), (10, 100, 50));
    /// assert_eq!((p.peak_num_y, p.peak_step_y, p.peak_width_y), (10, 50, 4));
    /// ```
    pub fn demo(mode: SimMode, (width, height): (u32, u32), pixel_type: PixelType) -> SimParams {
        let scale = match pixel_type {
            PixelType::U8 | PixelType::I8 => 0.1,
            _ => 1.0,
        };
        let mut p = SimParams {
            mode,
            ..SimParams::default()
        };
        match mode {
            SimMode::Peaks => {
                let (sx, sy) = ((width / 10).max(1), (height / 10).max(1));
                p.peak_num_x = 10.min(width);
                p.peak_num_y = 10.min(height);
                p.peak_step_x = sx as i32;
                p.peak_step_y = sy as i32;
                p.peak_start_x = (sx / 2) as i32;
                p.peak_start_y = (sy / 2) as i32;
                p.peak_width_x = (sx / 12).max(1);
                p.peak_width_y = (sy / 12).max(1);
                p.gain = 1000.0 * scale;
                p.peak_variation = 10.0;
                p.noise = 4.0;
            }
            SimMode::LinearRamp => {}
            SimMode::Sine => {
                p.gain = 1000.0 * scale;
                p.offset = 4000.0 * scale;
            }
            SimMode::OffsetNoise => {
                p.offset = 1000.0 * scale;
                p.noise = 500.0 * scale;
            }
        }
        p
    }

    /// Refuses values no image can be built from: non-finite numbers, zero peak widths and
    /// grids of more than 256 x 256 peaks. The detector checks again when it is made.
    pub fn validate(&self) -> Result<(), SensorError> {
        let floats = [
            ("gain", self.gain),
            ("gain_x", self.gain_x),
            ("gain_y", self.gain_y),
            ("offset", self.offset),
            ("noise", self.noise),
            ("peak_variation", self.peak_variation),
        ];
        let sines = [
            ("x_sine1", &self.x_sine1),
            ("x_sine2", &self.x_sine2),
            ("y_sine1", &self.y_sine1),
            ("y_sine2", &self.y_sine2),
        ];
        for (setting, value) in floats {
            if !value.is_finite() {
                return Err(SensorError::NotFinite { setting, value });
            }
        }
        for (setting, s) in sines {
            for value in [s.amplitude, s.frequency, s.phase_deg] {
                if !value.is_finite() {
                    return Err(SensorError::NotFinite { setting, value });
                }
            }
        }
        for (setting, value) in [
            ("peak_width_x", self.peak_width_x),
            ("peak_width_y", self.peak_width_y),
        ] {
            if value == 0 {
                return Err(SensorError::out_of_range(setting, 0, 1, u32::MAX.into()));
            }
        }
        for (setting, value) in [
            ("peak_num_x", self.peak_num_x),
            ("peak_num_y", self.peak_num_y),
        ] {
            if value > MAX_PEAK_NUM {
                return Err(SensorError::out_of_range(
                    setting,
                    value.into(),
                    0,
                    MAX_PEAK_NUM.into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip_and_bad_name_is_quoted() {
        for m in SimMode::ALL {
            assert_eq!(m.to_string().parse::<SimMode>(), Ok(m));
        }
        assert_eq!("peaks".parse::<SimMode>(), Ok(SimMode::Peaks));
        let err = "Peak".parse::<SimMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown simulation mode \"Peak\": expected one of peaks, ramp, sine, noise"
        );
    }

    #[test]
    fn mode_indices_follow_adsimdetector_and_round_trip() {
        let labels: Vec<_> = SimMode::ALL
            .iter()
            .map(|m| SimMode::AD_LABELS[usize::from(m.index())])
            .collect();
        assert_eq!(labels, ["LinearRamp", "Peaks", "Sine", "Offset&Noise"]);
        for (i, m) in SimMode::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(m.index()), i);
            assert_eq!(SimMode::from_index(m.index()), Some(m));
        }
        assert_eq!(SimMode::from_index(4), None);
        assert_eq!(SimMode::from_index(u16::MAX), None);
    }

    /// The numbers the root's `demo_params` used, pinned: the daemon's initial PVs and the
    /// figures of earlier runs depend on them.
    #[test]
    fn demo_parameters_are_pinned() {
        let p = SimParams::demo(SimMode::Peaks, (1024, 1024), PixelType::U16);
        let expected = SimParams {
            mode: SimMode::Peaks,
            peak_num_x: 10,
            peak_num_y: 10,
            peak_step_x: 102,
            peak_step_y: 102,
            peak_start_x: 51,
            peak_start_y: 51,
            peak_width_x: 8,
            peak_width_y: 8,
            gain: 1000.0,
            peak_variation: 10.0,
            noise: 4.0,
            ..SimParams::default()
        };
        assert_eq!(p, expected);
        // Tiny sensors: fewer peaks than ten, steps and widths at least one pixel.
        let p = SimParams::demo(SimMode::Peaks, (4, 30), PixelType::U8);
        assert_eq!((p.peak_num_x, p.peak_step_x, p.peak_start_x), (4, 1, 0));
        assert_eq!((p.peak_num_y, p.peak_step_y, p.peak_start_y), (10, 3, 1));
        assert_eq!((p.peak_width_x, p.peak_width_y), (1, 1));
        assert_eq!((p.gain, p.noise), (100.0, 4.0));
        assert_eq!(
            SimParams::demo(SimMode::LinearRamp, (7, 9), PixelType::F64),
            SimParams::default()
        );
        for (ty, scale) in [(PixelType::I8, 0.1), (PixelType::I32, 1.0)] {
            let p = SimParams::demo(SimMode::Sine, (64, 64), ty);
            assert_eq!(
                (p.mode, p.gain, p.offset),
                (SimMode::Sine, 1000.0 * scale, 4000.0 * scale)
            );
            let p = SimParams::demo(SimMode::OffsetNoise, (64, 64), ty);
            assert_eq!((p.offset, p.noise), (1000.0 * scale, 500.0 * scale));
            assert_eq!(p.gain, 1.0);
        }
        for mode in SimMode::ALL {
            for ty in [PixelType::U8, PixelType::U16, PixelType::F32] {
                for size in [(1, 1), (13, 7), (8192, 8192)] {
                    let p = SimParams::demo(mode, size, ty);
                    assert_eq!(p.mode, mode);
                    assert!(p.validate().is_ok(), "{mode} {size:?} {ty}: {p:?}");
                }
            }
        }
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let p = SimParams {
            peak_width_x: 0,
            ..SimParams::default()
        };
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "peak_width_x=0 is out of range 1..=4294967295"
        );
        let p = SimParams {
            noise: f64::NAN,
            ..SimParams::default()
        };
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "noise=NaN: must be a finite number"
        );
        assert!(SimParams::default().validate().is_ok());
    }
}
