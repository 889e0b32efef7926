//! Counters of one ring, readable from any thread without locks (for status PVs and logs).

use std::fmt;

use crate::loom::{Arc, Ordering};
use crate::shared::Shared;

/// A cloneable handle to one ring's counters.
///
/// It keeps the ring's memory alive as long as it lives (it shares the allocation with the
/// producer and consumer), so drop it with the run.
#[derive(Clone)]
pub struct RingStats {
    shared: Arc<Shared>,
}

/// A snapshot of [`RingStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Frames committed so far.
    pub produced: u64,
    /// Frames released by the consumer so far, `<= produced`.
    pub consumed: u64,
    /// Largest number of committed, unreleased frames seen after a commit, `0 ..= slots`.
    pub high_water: u64,
    /// Number of slots.
    pub slots: usize,
    /// Usable bytes per slot.
    pub slot_bytes: usize,
}

impl RingStats {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Frames committed so far (the producer cursor).
    pub fn produced(&self) -> u64 {
        // Relaxed: a counter; no data is read on the strength of it.
        self.shared.head.load(Ordering::Relaxed)
    }

    /// Frames released by the consumer so far (the consumer cursor).
    pub fn consumed(&self) -> u64 {
        // Relaxed: a counter.
        self.shared.tail.load(Ordering::Relaxed)
    }

    /// Committed frames not yet released, `0 ..= slots`.
    pub fn occupancy(&self) -> u64 {
        // Acquire on `tail`, then `head`: the consumer loaded a `head >= tail` before storing
        // that `tail`, so the later `head` load cannot return less and the difference is sound.
        let tail = self.shared.tail.load(Ordering::Acquire);
        let head = self.shared.head.load(Ordering::Relaxed);
        head.saturating_sub(tail)
    }

    /// Largest occupancy seen right after a commit, `0 ..= slots`.
    pub fn high_water(&self) -> u64 {
        // Relaxed: a statistic.
        self.shared.high_water.load(Ordering::Relaxed)
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// Usable bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// True once the producer has been dropped.
    pub fn is_closed(&self) -> bool {
        // Relaxed: a status flag.
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// All counters at once (each read individually; `consumed <= produced` holds).
    pub fn snapshot(&self) -> RingCounters {
        // Read `consumed` first: see `occupancy` for why `produced` then cannot be smaller.
        let consumed = self.shared.tail.load(Ordering::Acquire);
        RingCounters {
            produced: self.produced(),
            consumed,
            high_water: self.high_water(),
            slots: self.slots(),
            slot_bytes: self.slot_bytes(),
        }
    }
}

impl fmt::Debug for RingStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}
