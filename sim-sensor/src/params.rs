//! The ADSimDetector simulation parameters (`SimMode`, gains, peak grid, sines) with the
//! defaults of the areaDetector driver. Writing them resets the base image; this module only
//! holds and checks the values, [`crate::image`] turns them into pixels.

use core::fmt;
use core::str::FromStr;

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

    /// The command-line name: `"ramp"`, `"peaks"`, `"sine"` or `"noise"`.
    pub const fn name(self) -> &'static str {
        match self {
            SimMode::LinearRamp => "ramp",
            SimMode::Peaks => "peaks",
            SimMode::Sine => "sine",
            SimMode::OffsetNoise => "noise",
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
    /// Refuses values no image can be built from: non-finite numbers, zero peak widths and
    /// grids of more than 256 x 256 peaks.
    pub(crate) fn validate(&self) -> Result<(), SensorError> {
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
