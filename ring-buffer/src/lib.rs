//! Pre-allocated frame slots handed from the detector thread to several consumers without
//! copies, optionally in shared memory that other processes read in place.
//!
//! In detflow's data path (sensor -> **ring** -> compressors -> HDF5 writer) this crate is the
//! hand-off. The detector backend writes each frame straight into a slot's bytes and commits
//! it with its [`SlotMeta`]; consumers read the same bytes in place. Nothing is allocated or
//! copied per frame: all memory is allocated and touched once, in [`Ring::new`].
//!
//! ```
//! use std::time::Duration;
//! use detflow_ring::{LossyError, Policy, Ring, RingConfig, SlotMeta};
//! # // A loom build's atomics only work inside a loom model: nothing to show here then.
//! # if detflow_ring::BUILT_FOR_LOOM { return Ok::<(), Box<dyn std::error::Error>>(()); }
//!
//! let (mut producer, ring) = Ring::new(RingConfig {
//!     policy: Policy::Block,
//!     ..RingConfig::new(4, 1024)
//! })?;
//! let mut writer = ring.lossless("hdf5")?; // holds the producer back
//! let mut preview = ring.lossy("preview")?; // never does
//!
//! let mut slot = producer.grant(Duration::from_secs(1))?;
//! slot.bytes_mut()[..3].copy_from_slice(&[1, 2, 3]); // the detector writes in place
//! slot.commit(SlotMeta { frame_id: 7, width: 3, height: 1, len: 3, ..SlotMeta::default() });
//!
//! let frame = writer.next_timeout(Duration::from_secs(1))?;
//! assert_eq!(frame.bytes(), &[1, 2, 3]); // read in place
//! drop(frame); // releases the slot
//!
//! let mut seen = preview.try_next()?;
//! let mut copy = Vec::new();
//! seen.read_into(&mut copy)?; // validated copy: the producer may overwrite it any time
//! assert_eq!((seen.meta().frame_id, &copy[..]), (7, &[1u8, 2, 3][..]));
//! drop(seen);
//! assert!(matches!(preview.try_next(), Err(LossyError::Timeout)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Roles
//!
//! - One [`Producer`] (the detector thread): [`Producer::grant`] a slot, write, then
//!   [`WriteSlot::commit`].
//! - Any number (up to [`MAX_CONSUMERS`]) of consumers, attached through the [`Ring`] handle
//!   before or during the run, each with its own cursor:
//!   - [`Consumer`] (lossless, e.g. the HDF5 writer): every frame, in order; holds the
//!     producer back.
//!   - [`Claimer`] (a lossless worker pool, e.g. N compressors): each frame goes to exactly one
//!     thread as an owned, `Send` [`Claim`]; claims are released in any order; [`Reorder`]
//!     restores sequence order for the writer.
//!   - [`LossyConsumer`] (live preview, statistics): never holds the producer back; sees
//!     [`LossyError::Lagged`]`(n)` when it missed `n` frames.
//!   - Another process: maps the shared-memory file and reads frames in place
//!     ([`ShmReader`], `examples/shm_reader.py`); lossy.
//!
//! # Protocol
//!
//! Frames carry `u64` sequence numbers `0, 1, 2, ...` in commit order (dropped frames take no
//! sequence); sequence `s` lives in slot `s % slots`. Who may touch a slot is decided by
//! cursors that only grow:
//!
//! - `head` (in the control header), the **producer cursor**: every sequence below it is
//!   committed. Only the producer writes it, `store(s + 1, Release)` when it commits `s`.
//! - one **gate** per lossless consumer or pool: every sequence below it is released by that
//!   consumer. Only that consumer (or pool) writes it, with `Release`.
//! - `min_gate`, the smallest gate of the admitted lossless consumers.
//!
//! `min_gate <= gate <= head <= min_gate + slots` always holds. The slots of sequences
//! `gate .. head` may be read by that lossless consumer; the slot of `head` may be written by
//! the producer, and only when `head - min_gate < slots`, that is when every lossless consumer
//! has released `head - slots`, the previous frame in the same slot. Hence:
//!
//! - **No lossless reader sees a slot being written.** The producer writes sequence `s` only
//!   after it loaded (`Acquire`) every gate `> s - slots`. Each consumer's `Release` store of its
//!   gate came after its last read of `s - slots`, so those reads happen-before the new writes.
//! - **No lossless reader reads a frame before it is complete.** A consumer reads `s` only after
//!   it loaded (`Acquire`) a `head > s`; the producer's `Release` store of `head` came after it
//!   wrote the frame's bytes and metadata.
//! - **Cheap steady state.** The producer keeps a cached `min_gate`, and each consumer a cached
//!   `head`; each reloads the other side's cursor only when the ring looks full (producer) or
//!   empty (consumer), as rtrb does, so neither pulls the other's cache line on every frame.
//! - A [`WriteSlot`] borrows the producer and a [`ReadSlot`] its consumer mutably, so each holds
//!   at most one grant. Dropping a `WriteSlot` without `commit` leaves `head` alone: nothing is
//!   published and the slot is granted again.
//!
//! **Attaching.** A lossy consumer starts at the current `head`. A lossless consumer or pool
//! cannot set its own gate safely (the producer may be past it with a stale `min_gate`), so it
//! registers under the ring's registry lock and raises `joins_pending`; the producer checks that
//! flag (one relaxed load) on every grant, and under the lock sets the newcomer's gate and start
//! to the sequence it is about to grant, then adds it to its gate list. The newcomer reads from
//! that start (loaded with `Acquire`): it sees every frame granted after it attached, and the
//! producer never wrote a slot it could read without counting its gate. Attached before the
//! first grant, it sees every frame. Dropping a consumer stores `u64::MAX` (`Release`) in its
//! gate: it no longer holds the producer back.
//!
//! **Policies** ([`Policy`]) apply when the lossless consumers hold every slot:
//! [`Policy::Block`] makes [`Producer::grant`] wait (with a timeout, so the detector thread can
//! look at its stop flag); [`Policy::DropNewest`] makes it refuse the frame at once and count it
//! in `dropped`. Frames the caller gives up on itself go to [`Producer::record_dropped`], so
//! that `offered = produced + dropped` holds exactly under either policy.
//!
//! **Worker pools.** A pool is one gate shared by its claimers. A claimer takes the next
//! sequence `n` by CAS on the pool's `next_claim` after loading (`Acquire`) a `head > n`, so each
//! committed frame goes to exactly one claim and its bytes are visible to that thread. A claim
//! is released by storing `done[n % slots] = n + 1` (`Release`); then the releaser moves the
//! gate by CAS over every sequence whose `done` entry is set. Between its `done` store and its
//! gate load, and between each gate CAS and the next `done` load, a `SeqCst` fence makes
//! releasers and advancers a store-buffering pair: at least one sees the other's store, so the
//! gate never stops in front of a released sequence. Every gate change is an RMW, so the
//! producer's `Acquire` load of any later gate value synchronises with every releaser before it
//! (a release sequence), and a slot is reused only after every claim of its old frame ended.
//! `done[n % slots]` cannot be confused with an older sequence, since a claim of `n` exists
//! only while the gate is within `slots` of `n`.
//!
//! **Lossy consumers and the seqlock.** Each slot header has a `stamp`: `0` never written,
//! `2s + 1` (odd) while sequence `s` is written, `2s + 2` once `s` is committed. On grant the
//! producer stores the odd stamp and issues a `Release` fence before writing; on commit it
//! stores the metadata (relaxed atomic words), then the even stamp (`Release`), then `head`.
//! A lossy reader of `s` loads `head` (`Acquire`): if `head - s > slots` the frames below
//! `head - slots` are gone and it reports `Lagged`. Otherwise it loads the stamp (`Acquire`),
//! which must be `2s + 2`, reads the metadata (and copies bytes), issues an `Acquire` fence and
//! loads the stamp again: if any value it read was written by a later grant, the producer's
//! `Release` fence and the reader's `Acquire` fence synchronise, so the second load sees the
//! new odd stamp and the read is discarded as lagged. Lossy readers in this process copy the
//! bytes ([`LossySlot::read_into`]) with volatile reads before that check and never hold a
//! `&[u8]` into a slot that may change; the metadata, being atomic words, is always exact.
//!
//! **Sleeping.** When the producer finds the ring full, or a consumer finds it empty, it spins
//! briefly, yields, then sleeps on a condition variable; the other side wakes it after its next
//! cursor store. A `SeqCst` fence on both sides of that handshake rules out lost wake-ups (see
//! `shared::WaitQueue`). Dropping the producer sets `closed` after its last `head` store, so
//! consumers return `Closed` once the committed frames are drained.
//!
//! **Checked by** loom models (`src/loom_models.rs`: one producer with a lossless and a lossy
//! consumer, a two-thread worker pool releasing out of order, the blocking handshakes),
//! proptest models against a `VecDeque` (`tests/model.rs`), threaded stress tests
//! (`tests/stress.rs`) and a multi-process shared-memory test (`tests/shm.rs`). Run the models
//! with `RUSTFLAGS="--cfg loom" cargo test -p detflow-ring --release --lib` (`--lib`: doctests
//! cannot run under loom); every atomic, cell, lock and thread operation goes through the
//! `loom` switch module so they check the code the detector runs.
//!
//! # Shared-memory layout
//!
//! The region is the same on the heap and in shared memory ([`RingConfig::shm`]: a file,
//! typically under `/dev/shm`, created or truncated, sized, mapped with memmap2 and left in
//! place when the ring is dropped, so a reader can still look at the last frames). All offsets
//! are from the start of the file, all integers little-endian, no pointers anywhere.
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 8]` | magic `b"DFLWRING"` ([`MAGIC`]), written last at creation |
//! | 8 | `u32` | layout version ([`LAYOUT_VERSION`], 1) |
//! | 12 | `u32` | control header size ([`CONTROL_BYTES`], 256) |
//! | 16 | `u64` | `slots` |
//! | 24 | `u64` | `slot_bytes` (usable bytes per slot) |
//! | 32 | `u64` | `slot_stride`: `slot_bytes` rounded up to 4096 |
//! | 40 | `u64` | `slot_headers_offset` (256) |
//! | 48 | `u64` | `slot_header_bytes` (64) |
//! | 56 | `u64` | `data_offset`: first slot's payload, a multiple of 4096 |
//! | 64 | `u64` | policy: 0 block, 1 drop-newest |
//! | 128 | `u64` atomic | `head`: frames committed (= `produced`); newest is `head - 1` |
//! | 136 | `u64` atomic | `dropped` |
//! | 144 | `u64` atomic | `high_water` |
//! | 152 | `u64` atomic | `closed`: 1 once the producer is gone |
//!
//! Slot header `i` is at `slot_headers_offset + i * slot_header_bytes`:
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `u64` atomic | `stamp`: 0 never written; `2s + 1` while sequence `s` is written; `2s + 2` once committed |
//! | 8 | `u64` | `frame_id` (areaDetector `UniqueId`) |
//! | 16 | `u32`, `u32` | EPICS timestamp seconds, nanoseconds |
//! | 24 | `f64` | `unix_time_s` |
//! | 32 | `u32`, `u32` | `width`, `height` (pixels) |
//! | 40 | `u32`, `u32` | `pixel_type` (areaDetector NDDataType: 0 i8, 1 u8, 2 i16, 3 u16, 4 i32, 5 u32, 6 i64, 7 u64, 8 f32, 9 f64), `color_mode` (NDColorMode, 0 mono) |
//! | 48 | `u64` | `len`: valid payload bytes |
//!
//! (Bytes 8..56 are [`SlotMeta`]'s `#[repr(C)]` layout.) Slot `i`'s payload starts at
//! `data_offset + i * slot_stride`. To read the newest complete frame from another process:
//! load `head`; for `s = head - 1` down to `head - slots`, load slot `s % slots`'s stamp; if it
//! is `2s + 2`, read the metadata and the payload in place, then load the stamp again: equal
//! means nothing was overwritten meanwhile (on x86 loads are not reordered with loads, so plain
//! loads suffice; on weakly ordered CPUs a reader needs an acquire fence before the re-check).
//! Readers must map the file read-only and never resize it.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
)]

// The shared-memory layout is little-endian and the atomics in it are stored natively.
#[cfg(target_endian = "big")]
compile_error!(
    "detflow-ring's memory layout is little-endian; big-endian targets are not supported"
);

mod consumer;
mod layout;
mod loom;
mod lossy;
mod pool;
mod producer;
mod shared;
#[cfg(not(loom))]
mod shm;
mod stats;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use consumer::{Consumer, NextError, ReadSlot};
pub use layout::{CONTROL_BYTES, LAYOUT_VERSION, MAGIC, SLOT_ALIGN, SLOT_HEADER_BYTES};
pub use lossy::{LossyConsumer, LossyError, LossySlot, Overwritten};
pub use pool::{Claim, Claimer, Reorder};
pub use producer::{GrantError, Producer, WriteSlot};
pub use shared::MAX_CONSUMERS;
#[cfg(not(loom))]
pub use shm::{ShmFrame, ShmReader};
pub use stats::{ConsumerCounters, ConsumerKind, RingCounters, RingStats};

use crate::layout::{Geometry, Region};
use crate::loom::Arc;
use crate::shared::Shared;
use crate::stats::ConsumerKind as Kind;

/// True when the crate was compiled with `--cfg loom` (its atomics then work only inside a
/// loom model); the crate's doc examples use it to stand down under loom.
#[doc(hidden)]
pub const BUILT_FOR_LOOM: bool = cfg!(loom);

/// What the producer does with a new frame when the lossless consumers hold every slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "kebab-case")
)]
pub enum Policy {
    /// Wait for a free slot ([`Producer::grant`] with a timeout); the sensor counts the frames
    /// it could not deliver meanwhile ([`Producer::record_dropped`]).
    #[default]
    Block,
    /// Drop the new frame at once and count it.
    DropNewest,
}

impl Policy {
    /// The name used on the command line and in the shared-memory header's documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropNewest => "drop-newest",
        }
    }

    fn code(self) -> u64 {
        match self {
            Policy::Block => 0,
            Policy::DropNewest => 1,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(Policy::Block),
            "drop-newest" => Ok(Policy::DropNewest),
            _ => Err(RingError::InvalidPolicy {
                policy: s.to_owned(),
            }),
        }
    }
}

/// Shape and placement of a ring, fixed when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of frame slots, at least 1: how many committed frames may wait for the slowest
    /// lossless consumer.
    pub slots: usize,
    /// Bytes available for one frame, at least 1 (each slot occupies this rounded up to
    /// [`SLOT_ALIGN`]).
    pub slot_bytes: usize,
    /// What happens when the lossless consumers fall behind.
    pub policy: Policy,
    /// Place the ring in a shared mapping of this file (created or truncated, sized, left in
    /// place on drop) instead of the heap; see "Shared-memory layout" in the crate docs.
    pub shm: Option<PathBuf>,
}

impl RingConfig {
    /// `slots` slots of `slot_bytes` bytes on the heap, [`Policy::Block`].
    pub fn new(slots: usize, slot_bytes: usize) -> Self {
        Self {
            slots,
            slot_bytes,
            policy: Policy::Block,
            shm: None,
        }
    }
}

/// A frame's metadata as the producer commits it, stored beside the slot's bytes.
///
/// Plain `#[repr(C)]` data with no padding (48 bytes); in the slot header (and so in shared
/// memory) it has exactly this layout, little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotMeta {
    /// The detector's frame number (areaDetector `UniqueId`); any value, not checked by the ring.
    pub frame_id: u64,
    /// EPICS timestamp seconds (since 1990-01-01 UTC).
    pub epics_sec: u32,
    /// EPICS timestamp nanoseconds, `0 .. 1_000_000_000`.
    pub epics_nsec: u32,
    /// Acquisition time in seconds since the Unix epoch (areaDetector `TimeStamp`).
    pub unix_time_s: f64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// areaDetector `NDDataType` code (0 Int8, 1 UInt8, ... 9 Float64).
    pub pixel_type: u32,
    /// areaDetector `NDColorMode` code (0 Mono, 1 Bayer, 2 RGB1, ...).
    pub color_mode: u32,
    /// Valid bytes at the start of the slot, `0 ..= slot_bytes`; readers get exactly this many.
    pub len: u64,
}

/// Why a ring could not be created, attached to or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// The ring's total size does not fit in the address space.
    #[error("ring of {slots} slots of {slot_bytes} bytes: total size overflows the address space")]
    TooLarge {
        /// The slot count given.
        slots: usize,
        /// The slot size given.
        slot_bytes: usize,
    },
    /// The allocator refused the ring memory.
    #[error("ring memory of {bytes} bytes could not be allocated")]
    OutOfMemory {
        /// Total bytes requested.
        bytes: usize,
    },
    /// A policy name other than `block` or `drop-newest`.
    #[error("ring policy \"{policy}\": expected block or drop-newest")]
    InvalidPolicy {
        /// The name given.
        policy: String,
    },
    /// Every consumer record is in use.
    #[error("ring has {max} consumers attached already")]
    TooManyConsumers {
        /// [`MAX_CONSUMERS`].
        max: usize,
    },
    /// The shared-memory file could not be created, sized, mapped or opened.
    #[error("ring shared memory {}: {message}", path.display())]
    Shm {
        /// The file.
        path: PathBuf,
        /// What failed, with the OS error.
        message: String,
    },
    /// The shared-memory file is not a ring of a layout this crate reads.
    #[error("{}: not a detflow ring: {reason}", path.display())]
    BadLayout {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}

/// A handle to one ring: attaches consumers (before or during the run) and reads counters.
/// Cloneable, `Send + Sync`.
#[derive(Clone)]
pub struct Ring {
    shared: Arc<Shared>,
}

impl Ring {
    /// Creates a ring and returns its producer and a handle to attach consumers with.
    ///
    /// All memory is allocated (or mapped) and touched here, so no page fault or allocation
    /// happens later, per frame.
    ///
    /// # Errors
    ///
    /// [`RingError`] naming the bad value when `slots` or `slot_bytes` is 0 or the total size
    /// overflows, when the memory cannot be allocated, or when the shared-memory file cannot
    /// be created, sized or mapped.
    pub fn new(cfg: RingConfig) -> Result<(Producer, Ring), RingError> {
        let geometry = Geometry::new(cfg.slots, cfg.slot_bytes)?;
        let region = Region::new(geometry, cfg.policy.code(), cfg.shm.as_deref())?;
        let shared = Arc::new(Shared::new(region, cfg.policy));
        Ok((
            Producer::new(Arc::clone(&shared)),
            Ring::from_shared(shared),
        ))
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Attaches a lossless consumer named `name` (for the counters). It sees every frame
    /// granted after this call, in order, and holds the producer back.
    ///
    /// # Errors
    ///
    /// [`RingError::TooManyConsumers`] when [`MAX_CONSUMERS`] are attached.
    pub fn lossless(&self, name: &str) -> Result<Consumer, RingError> {
        let record = self.shared.attach(name, Kind::Lossless)?;
        Ok(Consumer::new(Arc::clone(&self.shared), record))
    }

    /// Attaches a lossy consumer named `name`: it sees frames committed after this call,
    /// never holds the producer back and reports what it missed.
    ///
    /// # Errors
    ///
    /// [`RingError::TooManyConsumers`] when [`MAX_CONSUMERS`] are attached.
    pub fn lossy(&self, name: &str) -> Result<LossyConsumer, RingError> {
        let record = self.shared.attach(name, Kind::Lossy)?;
        Ok(LossyConsumer::new(Arc::clone(&self.shared), record))
    }

    /// Attaches a lossless worker pool named `name`; clone the returned [`Claimer`] for each
    /// worker thread. It sees every frame granted after this call, each by one claim.
    ///
    /// # Errors
    ///
    /// [`RingError::TooManyConsumers`] when [`MAX_CONSUMERS`] are attached.
    pub fn worker_pool(&self, name: &str) -> Result<Claimer, RingError> {
        let record = self.shared.attach(name, Kind::WorkerPool)?;
        Ok(Claimer::new(Arc::clone(&self.shared), record))
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.shared))
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// Usable bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// The ring's policy.
    pub fn policy(&self) -> Policy {
        self.shared.policy
    }

    /// The shared-memory file, when the ring lives in one.
    pub fn shm_path(&self) -> Option<&Path> {
        self.shared.region.shm_path()
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.shared.slots)
            .field("slot_bytes", &self.shared.slot_bytes)
            .field("policy", &self.shared.policy)
            .field("shm", &self.shm_path())
            .finish()
    }
}

/// A ring with one lossless consumer (named `"writer"`): the single-consumer shape.
///
/// # Errors
///
/// As [`Ring::new`].
pub fn ring(cfg: RingConfig) -> Result<(Producer, Consumer), RingError> {
    let (producer, ring) = Ring::new(cfg)?;
    let consumer = ring.lossless("writer")?;
    Ok((producer, consumer))
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_models;
