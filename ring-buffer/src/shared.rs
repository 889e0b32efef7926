//! The state every handle of one ring points to: the memory region, the consumer table, the
//! registry of attached consumers and the two wait queues.
//!
//! The cursor protocol itself is described in the crate docs; this module holds the fields,
//! attach/detach bookkeeping and the sleep/wake handshake used when one side waits.

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::layout::{ControlHeader, Region};
use crate::loom::{
    AtomicBool, AtomicU64, Condvar, Mutex, Ordering, UnsafeCell, fence, spin_hint, yield_now,
};
use crate::stats::{ConsumerCounters, ConsumerKind};
use crate::{Policy, RingError};

/// Most consumers (lossless, lossy and worker pools together) attached to one ring at a time.
pub const MAX_CONSUMERS: usize = 16;

/// `ConsumerRecord::start` before the producer admitted the consumer.
pub(crate) const NOT_JOINED: u64 = u64::MAX;

/// `ConsumerRecord::gate` of a record that does not hold the producer back.
pub(crate) const NO_GATE: u64 = u64::MAX;

/// Doubling spin rounds before a waiter sleeps: 1 + 2 + ... + 2^6 = 127 pause hints, a few
/// microseconds at most, about the time a busy peer needs to release or publish one slot.
const SPIN_ROUNDS: u32 = if cfg!(loom) { 1 } else { 7 };

/// `yield_now` calls after the spin and before sleeping. When the machine has fewer cores than
/// busy threads the peer may be waiting for this very core; yielding lets it run without the
/// cost of a sleep/wake pair. (Under loom every spin and yield is a scheduling point, so both
/// phases are kept minimal.)
const YIELD_ROUNDS: u32 = if cfg!(loom) { 0 } else { 4 };

/// One consumer's lock-free state, on its own cache line pair.
pub(crate) struct ConsumerRecord {
    /// Lossless consumers and worker pools: every sequence `< gate` is released by this
    /// consumer, so the producer may reuse its slot as far as this consumer is concerned. Only
    /// grows while admitted. [`NO_GATE`] while the record is free, lossy, or not yet admitted:
    /// the producer skips it. Written by the consumer (`Release`), and once by the producer on
    /// admission; read by the producer (`Acquire`).
    pub(crate) gate: AtomicU64,
    /// The first sequence this consumer sees; [`NOT_JOINED`] until the producer admits a
    /// lossless consumer or pool (`Release` store, `Acquire` load by the consumer).
    pub(crate) start: AtomicU64,
    /// Frames this consumer released (lossless, pool) or read intact (lossy).
    pub(crate) consumed: AtomicU64,
    /// Lossy consumers: frames overwritten before they were read.
    pub(crate) lagged: AtomicU64,
}

impl ConsumerRecord {
    fn new() -> Self {
        Self {
            gate: AtomicU64::new(NO_GATE),
            start: AtomicU64::new(NOT_JOINED),
            consumed: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        }
    }
}

/// An attached consumer, as the registry knows it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) kind: ConsumerKind,
}

/// Who is attached, under `Shared::registry`. Taken on attach, detach, when the producer
/// admits new lossless consumers and by counter snapshots; never on the per-frame path.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// `entries[i]` describes `records[i]`; `None` when the record is free.
    pub(crate) entries: [Option<Entry>; MAX_CONSUMERS],
    /// Final counters of consumers that were dropped, in detach order.
    pub(crate) detached: Vec<ConsumerCounters>,
}

/// Everything all handles of one ring point to (through an `Arc`).
pub(crate) struct Shared {
    /// Control header, slot headers and payloads.
    pub(crate) region: Region,
    /// One record per possible consumer; `registry.entries[i]` says whether `i` is in use.
    pub(crate) records: Box<[CachePadded<ConsumerRecord>]>,
    /// Attached consumers and final counters of detached ones.
    pub(crate) registry: Mutex<Registry>,
    /// Set (under `registry`) when a lossless consumer or pool waits for admission; the
    /// producer loads it (`Relaxed`) on every grant and admits under the lock.
    pub(crate) joins_pending: CachePadded<AtomicBool>,
    /// Where consumers sleep while no new frame is committed; the producer wakes them.
    pub(crate) consumer_wait: CachePadded<WaitQueue>,
    /// Where the producer sleeps while the lossless consumers hold every slot.
    pub(crate) producer_wait: CachePadded<WaitQueue>,
    /// One cell per slot, never read: under loom, write grants hold `get_mut` and lossless read
    /// grants hold `get` on it for their whole life, so a model reports any overlap of a
    /// writer and a lossless reader of one slot as a data race. Zero-sized with `std`.
    pub(crate) tokens: Box<[UnsafeCell<()>]>,
    /// What the producer does when the lossless consumers hold every slot.
    pub(crate) policy: Policy,
    /// Number of slots, at least 1. Sequence `s` lives in slot `s % slots`.
    pub(crate) slots: usize,
    /// Usable bytes per slot, at least 1.
    pub(crate) slot_bytes: usize,
}

// SAFETY: the raw region (slot payloads) and the token cells are what make `Shared` neither
// `Send` nor `Sync` automatically. Payload bytes are written only through a `WriteSlot`, for a
// sequence `>= head` that no lossless consumer can be granted, and in a slot every lossless
// gate has released; they are read by lossless grants for sequences in `gate .. head` and by
// lossy readers, whose racy copies are validated by the slot's seqlock and discarded when
// overwritten (crate docs, "Lossy consumers"). Every hand-over between writer and lossless
// reader goes through a Release store / Acquire load of `head` or a gate.
unsafe impl Send for Shared {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn new(region: Region, policy: Policy) -> Self {
        let g = region.geometry;
        Self {
            records: (0..MAX_CONSUMERS)
                .map(|_| CachePadded::new(ConsumerRecord::new()))
                .collect(),
            registry: Mutex::new(Registry::default()),
            joins_pending: CachePadded::new(AtomicBool::new(false)),
            consumer_wait: CachePadded::new(WaitQueue::new()),
            producer_wait: CachePadded::new(WaitQueue::new()),
            tokens: (0..g.slots).map(|_| UnsafeCell::new(())).collect(),
            policy,
            slots: g.slots,
            slot_bytes: g.slot_bytes,
            region,
        }
    }

    /// The control header (cursor, counters, closed flag).
    pub(crate) fn control(&self) -> &ControlHeader {
        self.region.control()
    }

    /// The slot index holding sequence `seq`.
    pub(crate) fn index(&self, seq: u64) -> usize {
        // `slots` fits in u64 and the remainder is `< slots`, so both casts are lossless.
        (seq % self.slots as u64) as usize
    }

    pub(crate) fn lock_registry(&self) -> crate::loom::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free record for a consumer of `kind`. Lossless consumers and pools wait for the
    /// producer to admit them (`joins_pending`); lossy ones start at the current `head`.
    pub(crate) fn attach(&self, name: &str, kind: ConsumerKind) -> Result<usize, RingError> {
        let mut registry = self.lock_registry();
        let index = registry
            .entries
            .iter()
            .position(Option::is_none)
            .ok_or(RingError::TooManyConsumers { max: MAX_CONSUMERS })?;
        let record = &self.records[index];
        // Relaxed: the record is free, and everyone who reads these fields synchronises with
        // this thread through the registry lock or the `start` store below.
        record.consumed.store(0, Ordering::Relaxed);
        record.lagged.store(0, Ordering::Relaxed);
        record.gate.store(NO_GATE, Ordering::Relaxed);
        match kind {
            ConsumerKind::Lossy => {
                // Acquire: the lossy consumer reads slots on the strength of `head`.
                let head = self.control().head.load(Ordering::Acquire);
                record.start.store(head, Ordering::Release);
            }
            ConsumerKind::Lossless | ConsumerKind::WorkerPool => {
                record.start.store(NOT_JOINED, Ordering::Relaxed);
                // Relaxed: the producer takes the registry lock before it acts on the flag.
                self.joins_pending.store(true, Ordering::Relaxed);
            }
        }
        registry.entries[index] = Some(Entry {
            name: name.to_owned(),
            kind,
        });
        Ok(index)
    }

    /// Frees record `index`; called when its consumer is dropped, after its last read. Keeps
    /// its final counters for snapshots and wakes the producer (the consumer may have been
    /// the one holding it back).
    pub(crate) fn detach(&self, index: usize) {
        let record = &self.records[index];
        {
            let mut registry = self.lock_registry();
            // Release: every read this consumer made happens-before the producer's reuse of
            // the slots (the producer loads gates with Acquire).
            record.gate.store(NO_GATE, Ordering::Release);
            if let Some(entry) = registry.entries[index].take() {
                let counters = self.counters_of(index, &entry, false);
                registry.detached.push(counters);
            }
            record.start.store(NOT_JOINED, Ordering::Relaxed);
        }
        self.producer_wait.notify();
    }

    /// The counters of record `index` described by `entry`.
    pub(crate) fn counters_of(
        &self,
        index: usize,
        entry: &Entry,
        attached: bool,
    ) -> ConsumerCounters {
        let record = &self.records[index];
        // Relaxed: counters; each is exact once its consumer is idle.
        ConsumerCounters {
            index,
            name: entry.name.clone(),
            kind: entry.kind,
            attached,
            consumed: record.consumed.load(Ordering::Relaxed),
            lagged: record.lagged.load(Ordering::Relaxed),
        }
    }

    /// True once the producer was dropped.
    pub(crate) fn is_closed(&self, order: Ordering) -> bool {
        self.control().closed.load(order) != 0
    }
}

/// Where one side of the ring sleeps until the other side makes its condition true.
///
/// The waiter registers (`waiting += 1`) under the lock, issues a `SeqCst` fence, re-checks its
/// condition and only then sleeps on the condition variable, which releases the lock
/// atomically. The notifier first makes the condition true (a `Release` store of a cursor or
/// flag), issues a `SeqCst` fence and reads `waiting`; only when it is non-zero does it take
/// the lock and `notify_all`. The two fences are totally ordered, so either the waiter's
/// re-check sees the new cursor, or the notifier sees `waiting > 0` and, since it must take
/// the lock the waiter holds until it sleeps, wakes it (a store-buffering handshake, as in
/// Dekker's algorithm). On the fast path, with nobody asleep, a notify costs one fence and one
/// load.
pub(crate) struct WaitQueue {
    /// Threads registered to sleep here. Incremented under `lock`; a stale non-zero value
    /// only costs the notifier a needless lock.
    waiting: AtomicU64,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl WaitQueue {
    fn new() -> Self {
        Self {
            waiting: AtomicU64::new(0),
            lock: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }

    /// Waits until `ready()` is true (returns true) or `deadline` passes (returns false).
    /// `None` waits forever.
    ///
    /// `ready` must read the condition with `Acquire` loads of the atomics the notifying side
    /// stores before it calls [`notify`](Self::notify).
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        // A zero timeout means "try once": no spinning past the deadline.
        if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return ready();
        }
        // A short spin, then a few yields: a running peer frees or publishes a slot within a
        // few hundred nanoseconds, far less than a sleep/wake round trip through the kernel.
        for round in 0..SPIN_ROUNDS {
            if ready() {
                return true;
            }
            for _ in 0..(1u32 << round) {
                spin_hint();
            }
        }
        #[allow(clippy::reversed_empty_ranges, reason = "no yield phase under loom")]
        for _ in 0..YIELD_ROUNDS {
            if ready() {
                return true;
            }
            yield_now();
        }
        loop {
            if ready() {
                return true;
            }
            let remaining = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(remaining) if !remaining.is_zero() => Some(remaining),
                    _ => return false,
                },
            };
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            // Relaxed RMW: the fence below orders it before the re-check.
            self.waiting.fetch_add(1, Ordering::Relaxed);
            // SeqCst fence: see the type docs; without it both sides could miss each other.
            fence(Ordering::SeqCst);
            if ready() {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
            // One hour stands in for "forever"; the loop sleeps again if nothing happened.
            let timeout = remaining.unwrap_or(Duration::from_secs(3600));
            let (guard, _) = self
                .condvar
                .wait_timeout(guard, timeout)
                .unwrap_or_else(|e| e.into_inner());
            // Relaxed: only a hint for notifiers (see the field docs).
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
        }
    }

    /// Threads registered to sleep here (or about to: past the point where a notify is the
    /// only way to wake them). For tests that must act only once a thread sleeps.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn sleepers(&self) -> u64 {
        // Relaxed: the test polls it; the handshake does not depend on this load.
        self.waiting.load(Ordering::Relaxed)
    }

    /// Wakes every thread sleeping here (or about to).
    ///
    /// Call after the `Release` store that made the waiters' condition true.
    pub(crate) fn notify(&self) {
        // SeqCst fence: pairs with the waiter's fence; orders our preceding cursor store
        // before the `waiting` load below (see the type docs).
        fence(Ordering::SeqCst);
        // Relaxed: the fences order it; the lock orders the rest.
        if self.waiting.load(Ordering::Relaxed) != 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.condvar.notify_all();
        }
    }
}
