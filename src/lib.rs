//! detflow: an acquisition stack for 2D area detectors.
//!
//! This package is the `detflow` binary and the library the binary is built from: the
//! [`config`] structure every front end writes, and the [`engine`] that runs one acquisition
//! from a detector through the frame ring into an HDF5 file; and [`ioc`], the daemon
//! (`detflow serve`) that is an areaDetector IOC over Channel Access.
#![warn(missing_docs, missing_debug_implementations)]

pub mod backend;
pub mod bench;
pub mod config;
pub mod engine;
pub mod ioc;

pub use config::{Config, ConfigError, Validated};
pub use engine::{Acquisition, AcquisitionHandle, State, Status, Summary};
