//! What can go wrong with a run: [`StartError`] before its threads run (nothing is left
//! behind but what the message names), [`RunError`] while they run (the first one is kept;
//! the files keep every frame written). Both keep their typed source.
//!
//! A [`StartError`] says what was being done and leaves the cause to its source, as
//! `anyhow`'s context does: [`chain`] (or the binary's `{:#}`) spells the whole of it. A
//! [`RunError`]'s message is already whole (`writer: …`, `detector: …`), as the writer's
//! own errors are, and its source gives the typed cause.

use std::error::Error;
use std::sync::Arc;

use detflow_ring::RingError;
use detflow_writer::WriterError;

use crate::backend::{BackendError, OpenError};
use crate::config::ConfigError;

/// Why a run did not start. Nothing was started; a file is left only if the message says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting the run cannot use, e.g. a ring that does not fit in memory.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend could not be opened, or refused the configuration.
    #[error(transparent)]
    Backend(#[from] OpenError),
    /// The ring's memory could not be had.
    #[error(
        "cannot allocate the frame ring ({slots} slots of {slot_bytes} bytes; --ring-slots \
         sets the count)"
    )]
    Ring {
        /// Slots asked for.
        slots: usize,
        /// Bytes of each.
        slot_bytes: usize,
        /// The ring's refusal.
        #[source]
        source: RingError,
    },
    /// The writer could not attach to the ring.
    #[error("cannot attach the writer to the ring")]
    Attach(#[source] RingError),
    /// The file (or its directory) could not be created.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The detector refused to start.
    #[error("the detector did not start")]
    DetectorStart(#[source] BackendError),
    /// A thread of the run could not be started.
    #[error("cannot start the {name} thread")]
    Thread {
        /// Which thread.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a run failed. The message is whole; `source()` gives the typed cause. Cheap to clone
/// (the writer's error is shared), so the same error goes to the events, the run's end and
/// the summary.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The detector failed with an error that is not a lost frame.
    #[error("detector: {0}")]
    Detector(#[source] BackendError),
    /// Bus errors in a row, past the limit.
    #[error("detector: {count} bus errors in a row, the last: {last}")]
    BusErrors {
        /// Errors in a row.
        count: u32,
        /// The last one.
        #[source]
        last: BackendError,
    },
    /// The detector did not stop cleanly.
    #[error("detector stop: {0}")]
    DetectorStop(#[source] BackendError),
    /// A frame could not be written, or a file not flushed or closed.
    #[error("writer: {0}")]
    Writer(#[source] Arc<WriterError>),
    /// A ring slot whose metadata names no known pixel type or colour mode.
    #[error("ring slot of frame {frame_id} holds unknown metadata")]
    SlotMeta {
        /// The frame's unique id.
        frame_id: u64,
    },
    /// A thread of the run panicked.
    #[error("an acquisition thread panicked")]
    Panicked,
}

impl From<WriterError> for RunError {
    fn from(e: WriterError) -> Self {
        RunError::Writer(Arc::new(e))
    }
}

/// `e` and its sources, joined by `": "`, as `anyhow` shows an error with `{:#}`.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_hal::ErrorKind;

    #[test]
    fn a_start_error_reads_like_its_context_chain() {
        let e = StartError::Backend(OpenError::Refused(BackendError::new(
            ErrorKind::InvalidConfig,
            "roi 0x0",
        )));
        assert_eq!(chain(&e), "the detector refused the configuration: roi 0x0");
    }

    #[test]
    fn a_run_error_is_whole_and_keeps_its_source() {
        let e = RunError::from(WriterError::Closed);
        assert_eq!(e.to_string(), "writer: the file is closed");
        let source = e.source().expect("a source");
        assert!(source.downcast_ref::<Arc<WriterError>>().is_some());
        assert_eq!(source.to_string(), "the file is closed");
    }
}
