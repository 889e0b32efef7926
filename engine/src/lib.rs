//! detflow-engine: one acquisition, from a detector backend through the frame ring and the
//! compressor pool into HDF5 files.
//!
//! [`config`] is the one typed configuration every front end fills (CLI flags, a TOML file,
//! the daemon's PVs); [`backend`] holds the detector backends behind the HAL. A run is built
//! and started by [`acquisition`] ([`Acquisition::builder`]), runs on a [`detector`] thread,
//! a [`compress`]or pool and a [`writer`] thread into a [`sink`], tells what happens as
//! [`event`]s, keeps its counts in [`status`], and fails with the typed [`error`]s.
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

/// How long a thread of a run waits on the ring or the detector before it looks at the
/// stop flag again.
pub(crate) const POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub mod acquisition;
pub mod backend;
pub mod compress;
pub mod config;
pub mod detector;
pub mod error;
pub mod event;
mod record;
pub mod sink;
pub mod status;
pub mod writer;

pub use acquisition::{Acquisition, AcquisitionBuilder, RunHandle};
pub use compress::{CodecCell, Encoding};
pub use config::{Config, ConfigError, Validated};
pub use error::{RunError, StartError};
pub use event::{Observer, Progress, RunEnd, RunEvent, State};
pub use sink::{
    CaptureEnd, Closed, Flushed, FrameSink, OwnedCapture, Push, SharedCapture, SinkReport,
};
pub use status::{Status, Summary, ThreadCpu};
