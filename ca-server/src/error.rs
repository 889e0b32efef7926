//! Errors of the server API: starting the server, defining PVs and posting values. Protocol
//! failures never surface here; they become ECA codes on the wire.

use std::net::SocketAddr;

use thiserror::Error;

use crate::proto::Eca;
use crate::value::NativeType;

/// Starting or configuring the server failed.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A socket could not be bound.
    #[error("cannot bind the {what} socket to {addr}: {source}")]
    Bind {
        /// Which socket ("TCP", "UDP search", "UDP beacon").
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An environment variable holds something unusable.
    #[error("invalid {var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A server thread could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PV with this name is already served.
    #[error("PV {name:?} is already served")]
    DuplicatePv {
        /// The name.
        name: String,
    },
    /// A PV definition is not valid.
    #[error("invalid PV {name:?}: {reason}")]
    InvalidPv {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Posting a value to a PV failed; the PV keeps its previous value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PostError {
    /// The array is longer than the PV's element count.
    #[error("cannot post {count} elements to {pv:?}: it holds at most {max}")]
    TooLong {
        /// The PV.
        pv: String,
        /// Elements posted.
        count: usize,
        /// The PV's native count.
        max: usize,
    },
    /// The value cannot be converted to the PV's type.
    #[error("cannot post a {from} value to {pv:?} of type {to}: {eca}")]
    Convert {
        /// The PV.
        pv: String,
        /// Type of the posted value.
        from: &'static str,
        /// The PV's native type.
        to: &'static str,
        /// Why.
        eca: Eca,
    },
}

impl PostError {
    pub(crate) fn convert(pv: &str, from: NativeType, to: NativeType, eca: Eca) -> PostError {
        PostError::Convert {
            pv: pv.to_owned(),
            from: from.name(),
            to: to.name(),
            eca,
        }
    }
}
