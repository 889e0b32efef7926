//! detflow-engine: one acquisition, from a detector backend through the frame ring and the
//! compressor pool into HDF5 files.
//!
//! [`config`] is the one typed configuration every front end fills (CLI flags, a TOML file,
//! the daemon's PVs); [`backend`] holds the detector backends behind the HAL; the
//! [`acquisition`] module owns the threads of one run and reports it as a [`Status`].
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod acquisition;
pub mod backend;
pub mod config;

pub use acquisition::{Acquisition, AcquisitionHandle, State, Status, Summary};
pub use config::{Config, ConfigError, Validated};
