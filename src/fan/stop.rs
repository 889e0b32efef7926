//! SIGINT and SIGTERM for the fan: the first asks for a clean stop, seen both as a flag and
//! as a readable socket that zmq_poll waits on beside the ZeroMQ sockets (so a wait ends at
//! once, whichever thread the signal hit); a second one exits at once with
//! [`ABORT_EXIT`](crate::signals::ABORT_EXIT).

use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The stop request, as the signal handlers leave it.
pub(crate) struct Stop {
    /// The signal number of the first SIGINT or SIGTERM, 0 before one.
    signal: Arc<AtomicUsize>,
    /// Readable once a signal arrived (signal-hook writes a byte to its other end).
    wake: UnixStream,
}

impl Stop {
    /// Install the handlers.
    pub(crate) fn install() -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let (wake, wake_writer) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_writer.set_nonblocking(true)?;
        let signal = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Handlers run in the order registered: the second signal finds `stopping` set
            // by the first and exits.
            signal_hook::flag::register_conditional_shutdown(
                sig,
                crate::signals::ABORT_EXIT,
                stopping.clone(),
            )?;
            signal_hook::flag::register(sig, stopping.clone())?;
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
            signal_hook::low_level::pipe::register(sig, wake_writer.try_clone()?)?;
        }
        Ok(Stop { signal, wake })
    }

    /// The signal that asked for the stop, if one did.
    pub(crate) fn signal(&self) -> Option<i32> {
        // Acquire: pairs with the handler's store.
        match self.signal.load(Ordering::Acquire) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// True once a stop was asked for.
    pub(crate) fn requested(&self) -> bool {
        self.signal().is_some()
    }

    /// The wake-up socket, for zmq_poll.
    pub(crate) fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN)
    }
}
