//! Counters of one ring, readable from any thread (for status PVs, logs and the `--json`
//! summary). Every counter is an atomic written by one side only; reading never blocks the
//! data path.

use std::fmt;

use crate::Policy;
use crate::loom::{Arc, Ordering};
use crate::shared::{NO_GATE, Shared};

/// What kind of consumer a counter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "kebab-case")
)]
pub enum ConsumerKind {
    /// Reads every frame and holds the producer back ([`Consumer`](crate::Consumer)).
    Lossless,
    /// Never holds the producer back; counts what it missed
    /// ([`LossyConsumer`](crate::LossyConsumer)).
    Lossy,
    /// Lossless, shared by several claiming threads ([`Claimer`](crate::Claimer)).
    WorkerPool,
}

/// One consumer's counters in a [`RingCounters`] snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ConsumerCounters {
    /// The consumer's slot in the ring's table, `0 .. MAX_CONSUMERS` (reused after detach).
    pub index: usize,
    /// The name given when it was attached.
    pub name: String,
    /// Its kind.
    pub kind: ConsumerKind,
    /// False once it was dropped (these are then its final counts).
    pub attached: bool,
    /// Frames it released (lossless, pool) or read intact (lossy).
    pub consumed: u64,
    /// Lossy only: frames overwritten before (or while) it read them.
    pub lagged: u64,
}

/// A snapshot of [`RingStats`].
///
/// Invariants: `produced + dropped` is every frame offered to the ring (when the caller counts
/// as [`Producer::grant`](crate::Producer::grant) says); every lossless consumer's `consumed`
/// is at most `produced`, and equals the frames committed after it was admitted once it has
/// drained a closed ring; for a lossy consumer `consumed + lagged` is the same.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RingCounters {
    /// Frames committed so far.
    pub produced: u64,
    /// Frames dropped by the policy or counted by the producer as not delivered.
    pub dropped: u64,
    /// Largest number of committed frames not yet released by the slowest lossless consumer
    /// seen right after a commit, `0 ..= slots`.
    pub high_water: u64,
    /// Number of slots.
    pub slots: usize,
    /// Usable bytes per slot.
    pub slot_bytes: usize,
    /// The ring's policy.
    pub policy: Policy,
    /// Attached consumers in table order, then detached ones in detach order.
    pub consumers: Vec<ConsumerCounters>,
}

/// A cloneable handle to one ring's counters, `Send + Sync`.
///
/// It keeps the ring's memory alive as long as it lives (it shares it with the producer and
/// consumers), so drop it with the run.
#[derive(Clone)]
pub struct RingStats {
    shared: Arc<Shared>,
}

impl RingStats {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Frames committed so far (the producer cursor).
    pub fn produced(&self) -> u64 {
        // Relaxed: a counter; no data is read on the strength of it.
        self.shared.control().head.load(Ordering::Relaxed)
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        // Relaxed: a counter.
        self.shared.control().dropped.load(Ordering::Relaxed)
    }

    /// Committed frames the slowest lossless consumer has not released yet, `0 ..= slots`
    /// (0 without lossless consumers).
    pub fn occupancy(&self) -> u64 {
        // Acquire on the gates, then `head`: a consumer loaded a `head >= gate` before storing
        // that gate, so the later `head` load cannot return less and the difference is sound.
        let min = self
            .shared
            .records
            .iter()
            .map(|r| r.gate.load(Ordering::Acquire))
            .min()
            .unwrap_or(NO_GATE);
        let head = self.shared.control().head.load(Ordering::Relaxed);
        if min == NO_GATE {
            0
        } else {
            head.saturating_sub(min)
        }
    }

    /// Largest occupancy seen right after a commit, `0 ..= slots`.
    pub fn high_water(&self) -> u64 {
        // Relaxed: a statistic.
        self.shared.control().high_water.load(Ordering::Relaxed)
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

    /// True once the producer has been dropped.
    pub fn is_closed(&self) -> bool {
        // Relaxed: a status flag.
        self.shared.is_closed(Ordering::Relaxed)
    }

    /// All counters at once. Each is read atomically on its own; the consumer list is read
    /// under the ring's registry lock, which only attach, detach and snapshots take (never
    /// the producer's or a consumer's per-frame path).
    pub fn snapshot(&self) -> RingCounters {
        let registry = self.shared.lock_registry();
        let mut consumers: Vec<_> = registry
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                entry
                    .as_ref()
                    .map(|entry| self.shared.counters_of(index, entry, true))
            })
            .collect();
        consumers.extend(registry.detached.iter().cloned());
        drop(registry);
        RingCounters {
            produced: self.produced(),
            dropped: self.dropped(),
            high_water: self.high_water(),
            slots: self.slots(),
            slot_bytes: self.slot_bytes(),
            policy: self.policy(),
            consumers,
        }
    }
}

impl fmt::Debug for RingStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}
