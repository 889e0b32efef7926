//! What a run tells the outside while it runs: [`RunEvent`]s on a bounded channel (state
//! changes, files opened and closed, counts at most [`PROGRESS_PER_S`] times a second,
//! errors, the end), and [`Observer`] hooks called on the run's own threads for what must be
//! seen frame by frame (the daemon's counters and preview).
//!
//! The run never waits for a reader: an event that finds the channel full is dropped and
//! counted, except the last, [`RunEvent::Ended`], which makes room for itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use detflow_hal::FrameMeta;
use detflow_writer::FileStatus;
use serde::Serialize;

use crate::error::RunError;

/// Progress events a second, at most.
pub const PROGRESS_PER_S: u32 = 10;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Frames are being acquired.
    Acquiring,
    /// The detector stopped; the writer is writing what the ring still holds.
    Draining,
    /// Finished: every frame asked for was written, or the run was stopped and drained.
    Done,
    /// Finished with an error (see the write message); the file holds the frames written.
    Failed,
}

/// A [`State`] that any thread may read and move on.
#[derive(Debug)]
pub(crate) struct StateCell(AtomicU8);

impl StateCell {
    pub(crate) fn new(state: State) -> Self {
        StateCell(AtomicU8::new(state as u8))
    }

    fn decode(v: u8) -> State {
        match v {
            0 => State::Acquiring,
            1 => State::Draining,
            2 => State::Done,
            _ => State::Failed,
        }
    }

    /// Acquire: a thread that reads `Done` or `Failed` sees every count stored before.
    pub(crate) fn get(&self) -> State {
        Self::decode(self.0.load(Ordering::Acquire))
    }

    /// Store `state`; true if it changed.
    pub(crate) fn set(&self, state: State) -> bool {
        self.0.swap(state as u8, Ordering::AcqRel) != state as u8
    }

    /// Move from `from` to `to` only; true if it moved.
    pub(crate) fn advance(&self, from: State, to: State) -> bool {
        self.0
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Frame counts of a running acquisition (see [`crate::Status`] for the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Frames the detector delivered.
    pub frames_acquired: u64,
    /// Frames written.
    pub frames_written: u64,
    /// Frames acquired but not written (the writer's and the ring's drops).
    pub frames_dropped: u64,
    /// Frames a shared file plugin passed by (no capture open).
    pub frames_not_captured: u64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// Every frame asked for was acquired and written.
    Complete,
    /// Stopped before that (by [`crate::RunHandle::stop`], or a capture that was complete),
    /// then drained: every frame acquired was written.
    Stopped,
    /// Failed; the files hold the frames written.
    Failed(RunError),
}

impl RunEnd {
    /// The error, if it failed.
    pub fn error(&self) -> Option<&RunError> {
        match self {
            RunEnd::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Something that happened during a run, in the order it happened.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// The run moved to this state (first `Acquiring`, then `Draining`, then `Done` or
    /// `Failed`; a write error goes to `Failed` at once).
    State(State),
    /// A file was named and opened (or, in Capture and Single mode, is about to be written).
    FileOpened(PathBuf),
    /// A file was closed; its frames are readable.
    FileClosed(PathBuf),
    /// Counts, at most [`PROGRESS_PER_S`] a second, while frames flow.
    Progress(Progress),
    /// The error the run fails with (the first; sent once).
    Error(RunError),
    /// The run is over: every thread ended, every file is closed. The last event.
    Ended(RunEnd),
}

/// The sending side of a run's events.
#[derive(Debug)]
pub(crate) struct Events {
    tx: Sender<RunEvent>,
    /// To make room for the last event when the reader fell behind.
    rx: Receiver<RunEvent>,
    dropped: AtomicU64,
}

impl Events {
    pub(crate) fn new(capacity: usize) -> (Self, Receiver<RunEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let events = Events {
            tx,
            rx: rx.clone(),
            dropped: AtomicU64::new(0),
        };
        (events, rx)
    }

    /// Send `event` if there is room; otherwise count it as dropped. Never waits.
    pub(crate) fn send(&self, event: RunEvent) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Send the last event, dropping the oldest ones still unread if there is no room.
    pub(crate) fn send_last(&self, event: RunEvent) {
        let mut event = event;
        loop {
            match self.tx.try_send(event) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    event = back;
                    if self.rx.try_recv().is_ok() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Events dropped because the channel was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Told what happens during a run, on the thread where it happens: keep each call short
/// (post a value, copy a preview at a limited rate), because it delays that thread. No lock
/// of the engine is held during a call.
pub trait Observer: Send + Sync {
    /// Detector thread: frame number `count` of this run (from 1) was read, `bytes` are its
    /// pixels in the ring slot, before the slot is handed on (empty for an image that arrived
    /// encoded: it is not decoded for this).
    fn frame_acquired(&self, _count: u64, _meta: &FrameMeta, _bytes: &[u8]) {}
    /// Writer thread: a frame went into the shared capture; its readbacks now.
    fn frame_captured(&self, _status: &FileStatus) {}
    /// Writer thread: the shared capture ended (NumCapture reached, a write error, given, or
    /// a close asked for while the writer held it) and its files are closed.
    fn capture_ended(&self, _status: &FileStatus, _error: Option<&str>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_events_but_never_the_last() {
        let (events, rx) = Events::new(2);
        events.send(RunEvent::State(State::Acquiring));
        events.send(RunEvent::State(State::Draining));
        events.send(RunEvent::State(State::Done));
        assert_eq!(events.dropped(), 1);
        events.send_last(RunEvent::Ended(RunEnd::Complete));
        let got: Vec<_> = rx.try_iter().collect();
        assert!(
            matches!(got[0], RunEvent::State(State::Draining)),
            "{got:?}"
        );
        assert!(
            matches!(got[1], RunEvent::Ended(RunEnd::Complete)),
            "{got:?}"
        );
        assert_eq!(events.dropped(), 2);
    }

    #[test]
    fn the_state_moves_only_from_where_it_is() {
        let s = StateCell::new(State::Acquiring);
        assert!(s.advance(State::Acquiring, State::Draining));
        assert!(!s.advance(State::Acquiring, State::Draining));
        assert!(s.set(State::Failed));
        assert!(!s.set(State::Failed));
        assert_eq!(s.get(), State::Failed);
    }
}
