//! detflow-ca: a small EPICS Channel Access (CA 4.13) server for process variables defined
//! in code.
//!
//! The daemon defines PVs with [`PvSpec`], serves them with a [`Server`], posts values from
//! any thread through a [`PvHandle`], and decides on client writes in a callback
//! ([`WriteReply::Accept`], [`WriteReply::Reject`], or [`WriteReply::Pending`] with a
//! [`Completion`] that finishes a put-notify later, e.g. when an acquisition ends).
//!
//! ```no_run
//! use detflow_ca::{Server, PvSpec, WriteReply};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder().port(5064).build()?; // 127.0.0.1 unless configured
//! let time = server.add_pv(PvSpec::double("DET:AcquireTime", 0.1).precision(3).units("s"))?;
//! let rbv = server.add_pv(PvSpec::double("DET:AcquireTime_RBV", 0.1).precision(3).read_only())?;
//! time.on_write(move |req| {
//!     rbv.post(req.value().clone()).ok();
//!     WriteReply::Accept
//! });
//! # Ok(()) }
//! ```
//!
//! Design: std threads and blocking sockets. One UDP thread answers name searches (only for
//! names served) and sends beacons; one thread accepts circuits; each circuit has a reader
//! thread (framing, requests, write callbacks) and a writer thread (replies, then monitor
//! updates). Monitors queue a few updates (64 for small values, one for large arrays), then
//! coalesce to the newest: a client that keeps up sees every value, a slow client sees the
//! latest value, never an unbounded backlog, and posting never waits on a client.
//!
//! Feature `probe` (off by default): the module `probe`, a minimal raw CA client that tests,
//! examples and measurements use to look at the wire. The crate's own tests turn it on; a
//! package whose tests use it names it in its dev-dependencies
//! (`detflow-ca = { workspace = true, features = ["probe"] }`).

#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

mod circuit;
pub mod dbr;
mod error;
#[cfg(feature = "probe")]
pub mod probe;
pub mod proto;
mod pv;
mod server;
mod value;

pub use error::{PostError, ServerError};
pub use proto::Eca;
pub use pv::{Completion, PvHandle, PvSpec, WriteCallback, WriteReply, WriteRequest};
pub use server::{Config, DEFAULT_BEACON_PORT, DEFAULT_SERVER_PORT, Server, ServerBuilder};
pub use value::{
    ALARM_STATUS_NAMES, Access, Alarm, EPICS_EPOCH_UNIX_S, EpicsTime, MAX_ENUM_STATES,
    MAX_ENUM_STRING, MAX_STRING, MAX_UNITS, Metadata, NativeType, SEVERITY_NAMES, Severity, Value,
};
