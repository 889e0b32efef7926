//! The error type of [`SensorDriver`](crate::SensorDriver) and so of the simulated detector.
//! Every variant names the setting and the value that was refused, or the register or frame
//! concerned, and maps onto the portable [`detflow_hal::ErrorKind`].

use core::time::Duration;

use detflow_hal::ErrorKind;

/// The simulated detector's error: the driver's.
pub type SimError = SensorError;

/// What went wrong in the detector or on its buses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
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
    /// A pixel type the detector's `PIXEL_FORMATS` does not list.
    #[error("dtype {0}: the detector does not produce it")]
    UnsupportedPixelType(detflow_hal::PixelType),
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
    /// An I2C transaction failed (after the driver's retries, for control operations).
    #[error("I2C {op} {register}: {fault}")]
    Bus {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// The register addressed (first of a burst).
        register: &'static str,
        /// What the bus reported.
        fault: embedded_hal::i2c::ErrorKind,
    },
    /// The chip does not identify as the detector this driver knows.
    #[error("CHIP_ID reads {found:#06x}, expected {expected:#06x}: not a detflow detector")]
    WrongChip {
        /// What `CHIP_ID` read.
        found: u16,
        /// The id this driver knows.
        expected: u16,
    },
    /// The data port failed.
    #[error("data port: {message}")]
    Port {
        /// The port error's kind.
        kind: ErrorKind,
        /// The port's words.
        message: heapless::String<96>,
    },
    /// A frame whose checksum does not match its bytes; it was discarded.
    #[error(
        "frame {frame}: checksum {found:#010x} does not match the footer's {expected:#010x}; frame discarded"
    )]
    Corrupted {
        /// The detector's frame number.
        frame: u64,
        /// The footer's checksum.
        expected: u32,
        /// The checksum of the bytes received.
        found: u32,
    },
    /// A frame the detector lost because its FIFO was full.
    #[error("frame {frame} lost: the detector's FIFO overran")]
    Overrun {
        /// The detector's frame number (of one of the frames lost).
        frame: u64,
    },
    /// A frame the detector exposed that never reached its FIFO.
    #[error("frame {frame} lost before the FIFO")]
    FrameLost {
        /// The detector's frame number (of one of the frames lost).
        frame: u64,
    },
}

impl SensorError {
    pub(crate) fn out_of_range(setting: &'static str, value: i64, min: i64, max: i64) -> Self {
        SensorError::OutOfRange {
            setting,
            value,
            min,
            max,
        }
    }
}

impl detflow_hal::Error for SensorError {
    fn kind(&self) -> ErrorKind {
        match self {
            SensorError::OutOfRange { .. }
            | SensorError::RoiOutsideSensor { .. }
            | SensorError::NotFinite { .. }
            | SensorError::UnsupportedPixelType(_)
            | SensorError::Busy
            | SensorError::BufferTooSmall { .. } => ErrorKind::InvalidConfig,
            SensorError::Timeout(_) => ErrorKind::Timeout,
            SensorError::NotAcquiring => ErrorKind::NotAcquiring,
            SensorError::Bus { .. } => ErrorKind::Bus,
            SensorError::WrongChip { .. } => ErrorKind::Other,
            SensorError::Port { kind, .. } => *kind,
            SensorError::Corrupted { .. } => ErrorKind::Corrupted,
            SensorError::Overrun { .. } => ErrorKind::Overrun,
            SensorError::FrameLost { .. } => ErrorKind::FrameLost,
        }
    }
}
