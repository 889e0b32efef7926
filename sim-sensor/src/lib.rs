//! A simulated 2D area detector behind the detflow HAL, reproducing EPICS ADSimDetector's test
//! patterns (linear ramp, Gaussian peaks, sines, offset and noise). It stands at the head of
//! the pipeline wherever no hardware is present: the engine, the benches and the tests of the
//! other crates drive it like any backend and get deterministic, seeded frames.
//!
//! - [`SimDetector`] implements [`detflow_hal::Detector`] and [`detflow_hal::FrameSource`];
//!   build it from a [`SimConfig`] (sensor size, seed, [`SimParams`]).
//! - [`SimMode`] parses the CLI's `--mode` values `peaks`, `ramp`, `sine`, `noise`.
//! - Errors are [`SimError`], mapped onto [`detflow_hal::ErrorKind`].
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

mod control;
mod detector;
mod error;
mod image;
mod params;
mod pixel;
mod rng;

pub use detector::{MAX_SENSOR_SIZE, SimConfig, SimDetector};
pub use error::SimError;
pub use params::{SimMode, SimParams, Sine, SineOperation, UnknownSimMode};
