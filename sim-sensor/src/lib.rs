//! A simulated 2D area detector behind the detflow HAL, modelled as detector firmware: a
//! register map on an I2C bus, a frame clock, a FIFO of limited depth in front of a data port
//! that copies frames into the caller's buffer, and EPICS ADSimDetector's test patterns
//! (linear ramp, Gaussian peaks, sines, offset and noise). It stands at the head of the
//! pipeline wherever no hardware is present: the engine, the benches and the tests of the
//! other crates drive it like any backend and get deterministic, seeded frames.
//!
//! - [`regs`] is the register map, the one definition the firmware, the driver and
//!   `REGISTERS.md` follow.
//! - [`SensorDriver`] implements [`detflow_hal::Detector`] and [`detflow_hal::FrameSource`]
//!   over any `embedded_hal::i2c::I2c` bus and any [`DataPort`], knowing only the register map.
//! - [`SimChip`] is the simulated hardware: [`SimI2c`], [`SimPort`] and fault injection
//!   ([`Fault`], [`FaultRates`]: NACKs, bus timeouts, dropped, corrupted and overrun frames).
//! - [`SimDetector`] is the driver over a [`SimChip`]; build it from a [`SimConfig`] (sensor
//!   size, seed, [`SimParams`]) and optionally [`SimOptions`] (FIFO depth, fault rates).
//! - [`SimMode`] parses the CLI's `--mode` values `peaks`, `ramp`, `sine`, `noise` and maps
//!   onto ADSimDetector's `SimMode` enum values ([`SimMode::index`]); [`SimParams::demo`] gives
//!   a useful picture of each mode at any sensor size.
//! - [`SimOptions::validate`] holds the rules for the simulated hardware's options (FIFO depth,
//!   fault rates) that the engine's configuration checks.
//! - Errors are [`SensorError`] (alias [`SimError`]), mapped onto [`detflow_hal::ErrorKind`].
//!
//! What is precomputed and how each pattern is defined (wrapping integer arithmetic,
//! ROI cut from the full-sensor pattern, binned pixels summed) is described in the `image`
//! module's source documentation and on [`SimParams`].
//!
//! ```
//! use std::time::Duration;
//! use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode};
//! use detflow_sim::{SimConfig, SimDetector};
//!
//! let mut det = SimDetector::new(SimConfig::default())?;
//! let shape = det.configure(&AcquisitionConfig {
//!     image_mode: ImageMode::Single,
//!     ..AcquisitionConfig::default()
//! })?;
//! let mut slot = vec![0u8; shape.bytes()];
//! det.start()?;
//! let meta = det.read_frame(&mut slot, Duration::from_secs(1))?;
//! assert_eq!(meta.unique_id, 1);
//! // LinearRamp, gain 1: pixel (row 1, column 2) of the first frame is 1 + 2.
//! assert_eq!(u16::from_ne_bytes([slot[2 * 1026], slot[2 * 1026 + 1]]), 3);
//! # Ok::<(), detflow_sim::SimError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod detector;
mod driver;
mod error;
mod firmware;
mod image;
mod params;
mod pixel;
pub mod port;
pub mod regs;
mod rng;
mod settings;

pub use detector::{MAX_SENSOR_SIZE, SimConfig, SimDetector, SimOptions};
pub use driver::{CONTROL_RETRIES, SensorDriver};
pub use error::{SensorError, SimError};
pub use firmware::{
    Fault, FaultCounts, FaultRates, I2C_ADDRESS, MAX_FIFO_DEPTH, SimBusError, SimChip, SimI2c,
    SimPort, SimPortError,
};
pub use params::{SimMode, SimParams, Sine, SineOperation, UnknownSimMode};
pub use port::{DataPort, FrameChecksum, FrameFooter, FrameHeader, frame_checksum};
pub use settings::SimOptionsError;
