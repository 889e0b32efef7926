//! What a 2D area detector backend must provide to detflow.
//!
//! A backend implements two small traits in the embedded-hal 1.0 manner:
//!
//! - [`Detector`], the control plane: describe the hardware ([`Detector::info`]), take an
//!   [`AcquisitionConfig`] (ROI, binning, pixel type, exposure, period, image mode, trigger),
//!   start and stop.
//! - [`FrameSource`], the data plane: fill a buffer the caller owns (a ring slot) with one frame
//!   and return its [`FrameMeta`]. The HAL never allocates per frame.
//! - [`ImageSource`], the data plane of a detector whose images arrive already encoded (HDF5
//!   filter chunks) and in one or more channels, such as a DECTRIS Stream V2 detector: one
//!   image into the caller's buffer, with where each channel is and how it is encoded
//!   ([`ImageMeta`]).
//!
//! Errors follow embedded-hal: every backend error type implements [`Error`], whose
//! [`Error::kind`] maps it onto the portable, `#[non_exhaustive]` [`ErrorKind`]. Blanket
//! implementations for `&mut T` let a driver be passed by reference.
//!
//! The crate is `no_std`; fixed-capacity fields use `heapless`.
//!
//! ```
//! use detflow_hal::{AcquisitionConfig, ImageMode, PixelType, Roi};
//! use core::time::Duration;
//!
//! let cfg = AcquisitionConfig {
//!     roi: Roi::full(1024, 1024),
//!     pixel_type: PixelType::U16,
//!     exposure: Duration::from_millis(1),
//!     period: Duration::ZERO,
//!     image_mode: ImageMode::Multiple,
//!     num_images: 100,
//!     ..AcquisitionConfig::default()
//! };
//! assert_eq!(cfg.output_shape().unwrap(), (1024, 1024));
//! ```
#![no_std]
#![deny(unsafe_code)]
// The conformance suite's counting allocator is the one `unsafe` (allowed there alone).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(feature = "std")]
extern crate std;

use core::fmt;
use core::str::FromStr;
use core::time::Duration;

#[cfg(feature = "std")]
pub mod conformance;
mod deal;
mod image;
mod time;
pub use deal::Deal;
pub use image::{
    ChannelNames, ChannelPart, ChunkError, FrameEncoding, ImageMeta, ImageSource, ImageTimes,
    MAX_CHANNEL_NAME, MAX_CHANNELS, Ticks,
};
pub use time::EpicsTimestamp;

/// Portable classification of a backend error, as in `embedded_hal::i2c::ErrorKind`.
///
/// New kinds may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No frame arrived within the timeout. The acquisition is still running; call again.
    Timeout,
    /// The detector produced frames faster than they were read and some were lost (its FIFO
    /// overflowed). One error is returned per lost frame; the acquisition goes on.
    Overrun,
    /// A configuration value is out of range or unsupported by this hardware.
    InvalidConfig,
    /// A frame was requested while the detector is not acquiring (never started, stopped,
    /// or finished its `Single`/`Multiple` sequence).
    NotAcquiring,
    /// The control or data bus failed (I2C/SPI/PCIe/network): a NACK, a bus timeout. Nothing
    /// was lost; the call may be retried.
    Bus,
    /// A frame arrived damaged (its checksum or footer does not match) and was discarded. One
    /// error is returned per such frame; the acquisition goes on.
    Corrupted,
    /// A frame arrived with parts missing (packets of a network stream) and was discarded. One
    /// error is returned per such frame; the acquisition goes on.
    Incomplete,
    /// A frame the detector produced never arrived (a gap in the frame numbers that is not an
    /// overrun). One error is returned per lost frame; the acquisition goes on.
    FrameLost,
    /// Anything else.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Timeout => "timed out waiting for a frame",
            ErrorKind::Overrun => "frames were lost (overrun)",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::NotAcquiring => "detector is not acquiring",
            ErrorKind::Bus => "bus error",
            ErrorKind::Corrupted => "a frame arrived corrupted",
            ErrorKind::Incomplete => "a frame arrived incomplete",
            ErrorKind::FrameLost => "a frame was lost on the way",
            ErrorKind::Other => "detector error",
        })
    }
}

/// A backend error: anything that can say which [`ErrorKind`] it is.
pub trait Error: fmt::Debug {
    /// The portable kind of this error.
    fn kind(&self) -> ErrorKind;
}

impl Error for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

impl Error for core::convert::Infallible {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

/// Names the error type of a backend; both planes share it.
pub trait ErrorType {
    /// The backend's error type.
    type Error: Error;
}

impl<T: ErrorType + ?Sized> ErrorType for &mut T {
    type Error = T::Error;
}

/// Pixel data types a detector can deliver (areaDetector's NDDataType, less the 64-bit
/// integers, which no detector produces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
}

impl PixelType {
    /// Every pixel type, in areaDetector's NDDataType order.
    pub const ALL: [PixelType; 8] = [
        PixelType::I8,
        PixelType::U8,
        PixelType::I16,
        PixelType::U16,
        PixelType::I32,
        PixelType::U32,
        PixelType::F32,
        PixelType::F64,
    ];

    /// Bytes per pixel.
    pub const fn size(self) -> usize {
        match self {
            PixelType::U8 | PixelType::I8 => 1,
            PixelType::U16 | PixelType::I16 => 2,
            PixelType::U32 | PixelType::I32 | PixelType::F32 => 4,
            PixelType::F64 => 8,
        }
    }

    /// Short name as used on the command line and by numpy (`"u16"`, `"f32"`).
    pub const fn name(self) -> &'static str {
        match self {
            PixelType::U8 => "u8",
            PixelType::I8 => "i8",
            PixelType::U16 => "u16",
            PixelType::I16 => "i16",
            PixelType::U32 => "u32",
            PixelType::I32 => "i32",
            PixelType::F32 => "f32",
            PixelType::F64 => "f64",
        }
    }

    /// areaDetector's NDDataType code (Int8 = 0 … Float64 = 9).
    pub const fn nd_data_type(self) -> i32 {
        match self {
            PixelType::I8 => 0,
            PixelType::U8 => 1,
            PixelType::I16 => 2,
            PixelType::U16 => 3,
            PixelType::I32 => 4,
            PixelType::U32 => 5,
            PixelType::F32 => 8,
            PixelType::F64 => 9,
        }
    }

    /// The pixel type of an areaDetector NDDataType code, if it is one of ours.
    pub const fn from_nd_data_type(code: i32) -> Option<Self> {
        Some(match code {
            0 => PixelType::I8,
            1 => PixelType::U8,
            2 => PixelType::I16,
            3 => PixelType::U16,
            4 => PixelType::I32,
            5 => PixelType::U32,
            8 => PixelType::F32,
            9 => PixelType::F64,
            _ => return None,
        })
    }

    /// True for the two floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, PixelType::F32 | PixelType::F64)
    }
}

impl fmt::Display for PixelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pixel type name that is not one of `u8 u16 u32 i8 i16 i32 f32 f64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPixelType;

impl fmt::Display for UnknownPixelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of u8, u16, u32, i8, i16, i32, f32, f64")
    }
}

impl FromStr for PixelType {
    type Err = UnknownPixelType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PixelType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or(UnknownPixelType)
    }
}

/// How colour is laid out in a frame (areaDetector NDColorMode). Only `Mono` is produced
/// today; the RGB modes are listed so that metadata can carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ColorMode {
    /// One value per pixel.
    #[default]
    Mono,
    /// Pixel-interleaved RGB.
    Rgb1,
    /// Row-interleaved RGB.
    Rgb2,
    /// Planar RGB.
    Rgb3,
}

impl ColorMode {
    /// areaDetector's NDColorMode code (Mono = 0, RGB1 = 2, RGB2 = 3, RGB3 = 4).
    pub const fn code(self) -> i32 {
        match self {
            ColorMode::Mono => 0,
            ColorMode::Rgb1 => 2,
            ColorMode::Rgb2 => 3,
            ColorMode::Rgb3 => 4,
        }
    }

    /// The colour mode of an NDColorMode code, if it is one of ours.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => ColorMode::Mono,
            2 => ColorMode::Rgb1,
            3 => ColorMode::Rgb2,
            4 => ColorMode::Rgb3,
            _ => return None,
        })
    }
}

/// How many frames one start produces (areaDetector ImageMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImageMode {
    /// One frame, then idle.
    Single,
    /// `num_images` frames, then idle.
    #[default]
    Multiple,
    /// Frames until stopped.
    Continuous,
}

/// What starts each exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TriggerMode {
    /// The detector's own clock, paced by exposure and period.
    #[default]
    Internal,
    /// An external trigger input. Backends without one refuse it with `InvalidConfig`.
    External,
}

/// Region of interest in unbinned sensor pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Roi {
    /// First column (0-based).
    pub min_x: u32,
    /// First row (0-based).
    pub min_y: u32,
    /// Columns, before binning; at least 1.
    pub size_x: u32,
    /// Rows, before binning; at least 1.
    pub size_y: u32,
}

impl Roi {
    /// The whole sensor of `width` x `height` pixels.
    pub const fn full(width: u32, height: u32) -> Self {
        Roi {
            min_x: 0,
            min_y: 0,
            size_x: width,
            size_y: height,
        }
    }
}

/// Binning factors: `x` x `y` sensor pixels are summed into one output pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binning {
    /// Horizontal factor, at least 1.
    pub x: u32,
    /// Vertical factor, at least 1.
    pub y: u32,
}

impl Default for Binning {
    fn default() -> Self {
        Binning { x: 1, y: 1 }
    }
}

/// Everything the control plane sets before an acquisition.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquisitionConfig {
    /// Readout region, unbinned sensor pixels.
    pub roi: Roi,
    /// Binning applied to the ROI; output size is `roi.size / binning`.
    pub binning: Binning,
    /// Pixel type of the frames delivered.
    pub pixel_type: PixelType,
    /// Exposure time of each frame.
    pub exposure: Duration,
    /// Time from the start of one frame to the start of the next; `ZERO` means as fast as
    /// possible. An exposure longer than the period wins.
    pub period: Duration,
    /// Single, Multiple or Continuous.
    pub image_mode: ImageMode,
    /// Frames per start in `Multiple` mode (ignored otherwise); at least 1.
    pub num_images: u32,
    /// Internal or external trigger.
    pub trigger_mode: TriggerMode,
}

impl Default for AcquisitionConfig {
    /// ADSimDetector's defaults on a 1024 x 1024 sensor, u16, Multiple mode.
    fn default() -> Self {
        AcquisitionConfig {
            roi: Roi::full(1024, 1024),
            binning: Binning::default(),
            pixel_type: PixelType::U16,
            exposure: Duration::from_millis(1),
            period: Duration::from_millis(5),
            image_mode: ImageMode::Multiple,
            num_images: 100,
            trigger_mode: TriggerMode::Internal,
        }
    }
}

impl AcquisitionConfig {
    /// Output frame size `(width, height)` after binning, or `InvalidConfig` when the ROI or
    /// binning is zero or the binning exceeds the ROI.
    pub fn output_shape(&self) -> Result<(u32, u32), ErrorKind> {
        let (r, b) = (self.roi, self.binning);
        if r.size_x == 0
            || r.size_y == 0
            || b.x == 0
            || b.y == 0
            || b.x > r.size_x
            || b.y > r.size_y
        {
            return Err(ErrorKind::InvalidConfig);
        }
        Ok((r.size_x / b.x, r.size_y / b.y))
    }

    /// Bytes of one output frame (`width * height * pixel size`).
    pub fn frame_bytes(&self) -> Result<usize, ErrorKind> {
        let (w, h) = self.output_shape()?;
        Ok(w as usize * h as usize * self.pixel_type.size())
    }
}

/// Shape and type of the frames a configured detector will deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameShape {
    /// Columns (fastest-varying dimension).
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Pixel type.
    pub pixel_type: PixelType,
    /// Colour layout.
    pub color_mode: ColorMode,
}

impl FrameShape {
    /// Bytes of one frame.
    pub const fn bytes(&self) -> usize {
        self.width as usize * self.height as usize * self.pixel_type.size()
    }
}

/// Static description of a detector.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorInfo {
    /// Manufacturer, as areaDetector's `Manufacturer_RBV`.
    pub manufacturer: heapless::String<40>,
    /// Model, as areaDetector's `Model_RBV`.
    pub model: heapless::String<40>,
    /// Sensor width in pixels (`MaxSizeX_RBV`).
    pub max_width: u32,
    /// Sensor height in pixels (`MaxSizeY_RBV`).
    pub max_height: u32,
    /// Pixel types this detector can deliver.
    pub pixel_types: heapless::Vec<PixelType, 8>,
}

/// Metadata of one frame, returned by [`FrameSource::read_frame`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameMeta {
    /// areaDetector's NDArray uniqueId: 1, 2, 3 … since the detector was created (or its
    /// counter reset). Unique per detector, never reused within an acquisition.
    pub unique_id: u64,
    /// Time the frame was read out, EPICS epoch (seconds and nanoseconds since
    /// 1990-01-01 UTC).
    pub timestamp: EpicsTimestamp,
    /// The same instant as Unix seconds (f64).
    pub unix_time_s: f64,
    /// Shape and pixel type of the bytes written into the caller's buffer.
    pub shape: FrameShape,
}

/// Control plane: what the detector is and how it acquires.
pub trait Detector: ErrorType {
    /// Static description: sensor size, supported pixel types, names.
    fn info(&self) -> SensorInfo;

    /// Apply a configuration. Values the hardware cannot take are refused with an error of
    /// kind [`ErrorKind::InvalidConfig`]; nothing is applied then. Returns the shape of the
    /// frames that will be delivered.
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, Self::Error>;

    /// Start acquiring with the last configuration.
    fn start(&mut self) -> Result<(), Self::Error>;

    /// Stop acquiring. Frames not yet read are discarded. Stopping an idle detector is not
    /// an error.
    fn stop(&mut self) -> Result<(), Self::Error>;

    /// True while the detector has frames to deliver (started and not finished).
    fn is_acquiring(&self) -> bool;
}

/// Data plane: deliver frames into buffers the caller owns.
pub trait FrameSource: Detector {
    /// Wait up to `timeout` for the next frame and write it into `buf`, which must hold at
    /// least [`FrameShape::bytes`] bytes of the configured shape.
    ///
    /// Errors: [`ErrorKind::Timeout`] when no frame was ready in time (the acquisition goes
    /// on and the frame is not lost: call again); [`ErrorKind::NotAcquiring`] when the
    /// detector is idle or has delivered its last frame; [`ErrorKind::InvalidConfig`] when
    /// `buf` is too small.
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, Self::Error>;
}

impl<T: Detector + ?Sized> Detector for &mut T {
    fn info(&self) -> SensorInfo {
        T::info(self)
    }
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, Self::Error> {
        T::configure(self, config)
    }
    fn start(&mut self) -> Result<(), Self::Error> {
        T::start(self)
    }
    fn stop(&mut self) -> Result<(), Self::Error> {
        T::stop(self)
    }
    fn is_acquiring(&self) -> bool {
        T::is_acquiring(self)
    }
}

impl<T: FrameSource + ?Sized> FrameSource for &mut T {
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, Self::Error> {
        T::read_frame(self, buf, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_type_names_round_trip() {
        for t in PixelType::ALL {
            assert_eq!(t.name().parse::<PixelType>(), Ok(t));
        }
        assert_eq!("u64".parse::<PixelType>(), Err(UnknownPixelType));
        assert_eq!(PixelType::F64.size(), 8);
        assert_eq!(PixelType::U16.nd_data_type(), 3);
        for t in PixelType::ALL {
            assert_eq!(PixelType::from_nd_data_type(t.nd_data_type()), Some(t));
        }
        assert_eq!(PixelType::from_nd_data_type(6), None);
        for c in [
            ColorMode::Mono,
            ColorMode::Rgb1,
            ColorMode::Rgb2,
            ColorMode::Rgb3,
        ] {
            assert_eq!(ColorMode::from_code(c.code()), Some(c));
        }
    }

    #[test]
    fn output_shape_divides_by_binning_and_refuses_zero() {
        let mut c = AcquisitionConfig {
            roi: Roi {
                min_x: 10,
                min_y: 0,
                size_x: 101,
                size_y: 64,
            },
            binning: Binning { x: 2, y: 4 },
            ..AcquisitionConfig::default()
        };
        assert_eq!(c.output_shape(), Ok((50, 16)));
        assert_eq!(c.frame_bytes(), Ok(50 * 16 * 2));
        c.binning.x = 0;
        assert_eq!(c.output_shape(), Err(ErrorKind::InvalidConfig));
        c.binning.x = 200;
        assert_eq!(c.output_shape(), Err(ErrorKind::InvalidConfig));
    }

    struct Counter(u64);
    impl ErrorType for Counter {
        type Error = ErrorKind;
    }
    impl Detector for Counter {
        fn info(&self) -> SensorInfo {
            SensorInfo {
                manufacturer: heapless::String::new(),
                model: heapless::String::new(),
                max_width: 2,
                max_height: 1,
                pixel_types: heapless::Vec::from_slice(&[PixelType::U8]).unwrap(),
            }
        }
        fn configure(&mut self, _: &AcquisitionConfig) -> Result<FrameShape, ErrorKind> {
            Err(ErrorKind::InvalidConfig)
        }
        fn start(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
        fn stop(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
        fn is_acquiring(&self) -> bool {
            true
        }
    }
    impl FrameSource for Counter {
        fn read_frame(&mut self, buf: &mut [u8], _: Duration) -> Result<FrameMeta, ErrorKind> {
            self.0 += 1;
            buf[..2].copy_from_slice(&[self.0 as u8; 2]);
            Ok(FrameMeta {
                unique_id: self.0,
                timestamp: EpicsTimestamp::from_unix_seconds(0.0),
                unix_time_s: 0.0,
                shape: FrameShape {
                    width: 2,
                    height: 1,
                    pixel_type: PixelType::U8,
                    color_mode: ColorMode::Mono,
                },
            })
        }
    }

    fn drive<S: FrameSource>(mut s: S) -> u64 {
        let mut buf = [0u8; 2];
        s.read_frame(&mut buf, Duration::ZERO).unwrap().unique_id
    }

    #[test]
    fn blanket_impl_lets_a_driver_be_borrowed() {
        let mut c = Counter(0);
        assert_eq!(drive(&mut c), 1);
        assert_eq!(drive(&mut c), 2);
        assert_eq!(c.0, 2);
        // The blanket impl forwards the control plane too.
        let borrowed: &mut Counter = &mut c;
        let mut by_ref = borrowed;
        assert_eq!(
            Detector::configure(&mut by_ref, &AcquisitionConfig::default())
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidConfig
        );
    }
}
