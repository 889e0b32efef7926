//! Pre-allocated frame slots handed from the detector thread to the file writer without copies.
//!
//! In detflow's data path (sensor -> **ring** -> compressor -> HDF5 writer) this crate is the
//! hand-off: the detector backend writes each frame straight into a slot's bytes, commits it
//! with its [`SlotMeta`], and the consumer reads the same bytes in place and releases the
//! slot. Nothing is allocated or copied per frame; every byte of slot memory is allocated and
//! touched once, in [`ring`].
//!
//! ```
//! use std::time::Duration;
//! use detflow_ring::{RingConfig, SlotMeta, ring};
//!
//! let (mut producer, mut consumer) = ring(RingConfig { slots: 4, slot_bytes: 1024 })?;
//!
//! let mut slot = producer.try_grant().expect("an empty ring has a free slot");
//! slot.bytes_mut()[..3].copy_from_slice(&[1, 2, 3]); // the detector writes in place
//! slot.commit(SlotMeta { frame_id: 7, width: 3, height: 1, len: 3, ..SlotMeta::default() });
//!
//! let frame = consumer.next_timeout(Duration::from_secs(1))?;
//! assert_eq!(frame.bytes(), &[1, 2, 3]);
//! assert_eq!(frame.meta().frame_id, 7);
//! drop(frame); // releases the slot
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Protocol
//!
//! Frames carry `u64` sequence numbers `0, 1, 2, ...` in commit order; sequence `s` lives in
//! slot `s % slots`. Two cursors, each on its own cache line, say who owns which slot:
//!
//! - `head`, the **producer cursor**: every sequence below it is published. Only the
//!   [`Producer`] writes it, with `store(s + 1, Release)` when it commits `s`.
//! - `tail`, the **consumer cursor**: every sequence below it is released. Only the
//!   [`Consumer`] writes it, with `store(s + 1, Release)` when the [`ReadSlot`] of `s` drops.
//!
//! Both only grow, and `tail <= head <= tail + slots` always holds. At any moment the slots of
//! sequences `tail .. head` belong to the consumer (published, readable) and those of
//! `head .. tail + slots` to the producer (free, writable). The two ranges are disjoint, so a
//! slot is never written while it is read:
//!
//! - The producer writes sequence `s = head` only after it has loaded (`Acquire`) a `tail`
//!   with `s - tail < slots`, that is after the consumer released `s - slots`, the previous
//!   frame in the same slot. The consumer's `Release` store of `tail` came after its last
//!   read of that frame, so those reads happen-before the new writes.
//! - The consumer reads sequence `s = tail` only after it has loaded (`Acquire`) a
//!   `head > s`. The producer's `Release` store of `head` came after it wrote the frame's
//!   bytes and metadata, so those writes happen-before the reads.
//! - Each side keeps a cached copy of the other's cursor and reloads it only when the ring
//!   looks full (producer) or empty (consumer), so in steady state neither side touches the
//!   other's cache line on every frame.
//! - A [`WriteSlot`] borrows the producer and a [`ReadSlot`] the consumer mutably, so each side
//!   holds at most one grant. Dropping a `WriteSlot` without [`WriteSlot::commit`] leaves
//!   `head` alone: nothing is published and the slot is granted again.
//!
//! When the producer finds the ring full, or the consumer finds it empty, it spins briefly and
//! then parks; the other side unparks it after its next cursor store. A `SeqCst` fence on both
//! sides of that handshake rules out lost wake-ups (see `shared::Waiter`). Dropping the
//! producer sets a `closed` flag after its last `head` store, so [`Consumer::next_timeout`]
//! returns [`NextError::Closed`] once the committed frames are drained.
//!
//! # Memory
//!
//! All slots are one allocation of `slots * stride` bytes, `stride` being `slot_bytes` rounded
//! up to 4096, so every slot starts on a page boundary. The [`SlotMeta`] of each slot sits in a
//! separate `#[repr(C)]` header array.
//!
//! # Later
//!
//! The layout is prepared for several consumers (lossless ones gate the producer through the
//! minimum of their cursors; lossy ones detect overruns with a per-slot seqlock and see
//! `Lagged(n)`), drop policies, and a shared-memory placement. Concurrency primitives come
//! from the `loom` module, and the models in `loom_models` check the hand-off and the
//! wake-up handshake: `RUSTFLAGS="--cfg loom" cargo test -p detflow-ring --release --lib`
//! (`--lib`: the doctest above cannot run under loom).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
)]

mod consumer;
mod loom;
mod producer;
mod shared;
mod slot;
mod stats;

pub use consumer::{Consumer, NextError, ReadSlot};
pub use producer::{Producer, WriteSlot};
pub use slot::{SLOT_ALIGN, SlotMeta};
pub use stats::{RingCounters, RingStats};

use crate::loom::Arc;
use crate::shared::Shared;

/// Size of a ring, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of frame slots, at least 1: how many committed frames may wait for the consumer.
    pub slots: usize,
    /// Bytes available for one frame, at least 1 (each slot occupies this rounded up to
    /// [`SLOT_ALIGN`]).
    pub slot_bytes: usize,
}

/// Why a ring could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// `slots` was 0.
    #[error("ring slots {slots}: must be at least 1")]
    InvalidSlots {
        /// The value given.
        slots: usize,
    },
    /// `slot_bytes` was 0.
    #[error("ring slot_bytes {slot_bytes}: must be at least 1")]
    InvalidSlotBytes {
        /// The value given.
        slot_bytes: usize,
    },
    /// `slots` times the page-rounded `slot_bytes` does not fit in the address space.
    #[error("ring of {slots} slots of {slot_bytes} bytes: total size overflows the address space")]
    TooLarge {
        /// The slot count given.
        slots: usize,
        /// The slot size given.
        slot_bytes: usize,
    },
    /// The allocator refused the slot memory.
    #[error("ring memory of {bytes} bytes could not be allocated")]
    OutOfMemory {
        /// Total bytes requested.
        bytes: usize,
    },
}

/// Creates a ring of `cfg.slots` slots of `cfg.slot_bytes` bytes and returns its two ends.
///
/// All slot memory is allocated and touched here, so no page fault or allocation happens
/// later, per frame.
///
/// # Errors
///
/// [`RingError`] naming the bad value when `slots` or `slot_bytes` is 0, when the total size
/// overflows, or when the memory cannot be allocated.
pub fn ring(cfg: RingConfig) -> Result<(Producer, Consumer), RingError> {
    let shared = Arc::new(Shared::new(cfg.slots, cfg.slot_bytes)?);
    Ok((Producer::new(Arc::clone(&shared)), Consumer::new(shared)))
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_models;
