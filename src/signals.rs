//! SIGINT and SIGTERM (a clean stop, then an abort), SIGUSR1 (flush now), and the exit status they
//! give.

use std::process::ExitCode;

/// Exit status when a second SIGINT or SIGTERM arrives while a stop is under way: the
/// process exits at once, without closing the file (distinct from 130/143, a clean stop,
/// and from 1, an error).
pub(crate) const ABORT_EXIT: i32 = 2;

/// What the signal thread tells the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT or SIGTERM (its number): stop cleanly.
    Stop(i32),
    /// SIGUSR1: make every frame written so far visible to readers (areaDetector FlushNow).
    Flush,
}

/// SIGINT and SIGTERM (and SIGUSR1 with `flush`), as [`Signal`]s on the returned channel:
/// the first SIGINT or SIGTERM asks the caller to stop cleanly; a second one (of either)
/// while it does exits at once with [`ABORT_EXIT`], after removing the space reserves beside
/// the open files.
pub(crate) fn signals(flush: bool) -> anyhow::Result<crossbeam_channel::Receiver<Signal>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut wanted = vec![SIGINT, SIGTERM];
    if flush {
        wanted.push(SIGUSR1);
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    let (tx, rx) = crossbeam_channel::bounded(16);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    // Flushes asked for while one waits are one flush.
                    let _ = tx.try_send(Signal::Flush);
                    continue;
                }
                if stopping {
                    detflow_writer::remove_own_reserves();
                    // _exit, not exit: the atexit handlers (HDF5's closes every open file)
                    // would race the writer thread, which is still writing.
                    // SAFETY: _exit ends the process at once; it takes no pointers.
                    unsafe { libc::_exit(ABORT_EXIT) };
                }
                stopping = true;
                let _ = tx.try_send(Signal::Stop(sig));
            }
        })?;
    Ok(rx)
}

/// Exit status when stopped by a signal: 128 + the signal number, as shells report it.
pub(crate) fn signal_exit(signal: i32) -> ExitCode {
    ExitCode::from(128 + signal as u8)
}
