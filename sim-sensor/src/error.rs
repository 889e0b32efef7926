//! The simulated detector's error type. Every variant names the setting and the value that was
//! refused, and maps onto the portable [`detflow_hal::ErrorKind`].

use core::time::Duration;

use detflow_hal::ErrorKind;

/// What went wrong in the simulated detector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// An integer setting outside its range, e.g. `binning x=0 is out of range 1..=1024`.
    #[error("{setting}={value} is out of range {min}..={max}")]
    OutOfRange {
        /// Name of the setting (`"binning x"`, `"roi size_y"`, `"peak_num_x"`).
        setting: &'static str,
        /// The value given.
        value: i64,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// The ROI reaches past the edge of the sensor.
    #[error(
        "roi {axis}: min_{axis}={min} + size_{axis}={size} reaches past the sensor {extent} of {max} pixels"
    )]
    RoiOutsideSensor {
        /// `'x'` or `'y'`.
        axis: char,
        /// `min_x` or `min_y`.
        min: u32,
        /// `size_x` or `size_y`.
        size: u32,
        /// `"width"` or `"height"`.
        extent: &'static str,
        /// Sensor width or height.
        max: u32,
    },
    /// A floating-point parameter that is NaN or infinite.
    #[error("{setting}={value}: must be a finite number")]
    NotFinite {
        /// Name of the parameter (`"gain"`, `"x_sine1"`).
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// `TriggerMode::External` was asked for.
    #[error("trigger mode External: the simulated detector has no trigger input")]
    NoTriggerInput,
    /// `configure` was called during an acquisition.
    #[error("cannot configure while acquiring: stop the acquisition first")]
    Busy,
    /// The caller's buffer cannot hold one frame.
    #[error("buffer of {len} bytes is smaller than one frame of {needed} bytes")]
    BufferTooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes of one frame of the configured shape.
        needed: usize,
    },
    /// No frame became due within the timeout; the acquisition goes on.
    #[error("no frame within {0:?}; the acquisition goes on")]
    Timeout(Duration),
    /// A frame was asked for while idle or after the last frame of the run.
    #[error("the detector is not acquiring (start it, or its run has ended)")]
    NotAcquiring,
}

impl SimError {
    pub(crate) fn out_of_range(setting: &'static str, value: i64, min: i64, max: i64) -> Self {
        SimError::OutOfRange {
            setting,
            value,
            min,
            max,
        }
    }
}

impl detflow_hal::Error for SimError {
    fn kind(&self) -> ErrorKind {
        match self {
            SimError::OutOfRange { .. }
            | SimError::RoiOutsideSensor { .. }
            | SimError::NotFinite { .. }
            | SimError::NoTriggerInput
            | SimError::Busy
            | SimError::BufferTooSmall { .. } => ErrorKind::InvalidConfig,
            SimError::Timeout(_) => ErrorKind::Timeout,
            SimError::NotAcquiring => ErrorKind::NotAcquiring,
        }
    }
}
