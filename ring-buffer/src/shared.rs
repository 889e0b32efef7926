//! The state the producer and the consumer share: cursors, flags, waiters, slots.
//!
//! The cursor protocol itself is described in the crate docs; this module holds the fields
//! and the park/unpark handshake used when one side has to wait for the other.

use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::loom::{
    AtomicBool, AtomicU64, Mutex, Ordering, Thread, current_thread, fence, park_timeout, spin_hint,
    yield_now,
};
use crate::slot::{SlotHeader, SlotMemory};

/// Doubling spin rounds before a waiter parks: 1 + 2 + ... + 2^6 = 127 pause hints, a few
/// microseconds at most, about the time a busy peer needs to release or publish one slot.
const SPIN_ROUNDS: u32 = if cfg!(loom) { 1 } else { 7 };

/// `yield_now` calls after the spin and before parking. When the machine has fewer cores than
/// busy threads the peer may be waiting for this very core; yielding lets it run without the
/// cost of a park/unpark pair.
/// (Under loom every spin and yield is a scheduling point, so both phases are kept minimal.)
const YIELD_ROUNDS: u32 = if cfg!(loom) { 0 } else { 4 };

/// Everything both ends of one ring point to (through an `Arc`).
pub(crate) struct Shared {
    /// Producer cursor: every sequence `< head` is published (committed). Only the producer
    /// writes it, by `store(seq + 1, Release)` on commit; it never decreases. It doubles as the
    /// `produced` counter. Invariant: `tail <= head <= tail + slots`.
    pub(crate) head: CachePadded<AtomicU64>,
    /// Consumer cursor: every sequence `< tail` is released, so its slot may be reused. Only the
    /// consumer writes it, by `store(seq + 1, Release)` when a read grant drops; it never
    /// decreases. It doubles as the `consumed` counter.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Largest `head - tail` the producer saw right after a commit, `0 ..= slots`. Only the
    /// producer writes it; a statistic, so every access is `Relaxed`.
    pub(crate) high_water: AtomicU64,
    /// Set (once, `Release`) when the producer is dropped: no sequence beyond the current `head`
    /// will ever be published.
    pub(crate) closed: AtomicBool,
    /// Set (once, `Release`) when the consumer is dropped: no slot will ever be released again.
    pub(crate) consumer_gone: AtomicBool,
    /// Where the consumer parks while the ring is empty; the producer wakes it.
    pub(crate) consumer_waiter: CachePadded<Waiter>,
    /// Where the producer parks while the ring is full; the consumer wakes it.
    pub(crate) producer_waiter: CachePadded<Waiter>,
    /// Metadata of slot `i` at index `i`; `slots` entries.
    pub(crate) headers: Box<[SlotHeader]>,
    /// Payload bytes of every slot.
    pub(crate) memory: SlotMemory,
    /// Number of slots, at least 1. Sequence `s` lives in slot `s % slots`.
    pub(crate) slots: usize,
    /// Usable bytes per slot, at least 1 (the stride may be larger).
    pub(crate) slot_bytes: usize,
}

// SAFETY: the raw slot memory and the metadata cells are what make `Shared` neither `Send` nor
// `Sync` automatically. They are only accessed through `WriteSlot` (for a sequence in
// `head .. tail + slots`, granted to the single producer) and `ReadSlot` (for a sequence in
// `tail .. head`, granted to the single consumer). Those ranges never overlap, and crossing from
// one to the other goes through a Release store / Acquire load of `head` or `tail`, so no slot
// is ever accessed from two threads without a happens-before edge between the accesses.
unsafe impl Send for Shared {}
// SAFETY: as for `Send` above.
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn new(slots: usize, slot_bytes: usize) -> Result<Self, crate::RingError> {
        let memory = SlotMemory::new(slots, slot_bytes)?;
        let headers = (0..slots).map(|_| SlotHeader::new()).collect();
        Ok(Self {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            high_water: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            consumer_gone: AtomicBool::new(false),
            consumer_waiter: CachePadded::new(Waiter::new()),
            producer_waiter: CachePadded::new(Waiter::new()),
            headers,
            memory,
            slots,
            slot_bytes,
        })
    }

    /// The slot index holding sequence `seq`.
    pub(crate) fn index(&self, seq: u64) -> usize {
        // `slots` fits in u64 and the remainder is `< slots`, so both casts are lossless.
        (seq % self.slots as u64) as usize
    }
}

/// One side's parking place: lets the other side wake it without a lost wake-up.
///
/// The waiting thread publishes its handle, raises `parked`, issues a `SeqCst` fence and then
/// re-checks its condition before parking. The notifying thread first makes the condition true
/// (a `Release` store of a cursor or flag), issues a `SeqCst` fence and then reads `parked`.
/// The two fences are totally ordered, so either the waiter's re-check sees the new cursor or
/// the notifier sees `parked == true` and unparks the waiter (a store-buffering handshake, as
/// in Dekker's algorithm). An unpark that arrives when nobody is parked leaves a token, so the
/// next park returns early; every waiter loops and re-checks, which makes that harmless.
pub(crate) struct Waiter {
    /// True between "handle published" and "woke up". Written only by the waiting side.
    parked: AtomicBool,
    /// The handle of the thread that last parked here. Locked only on the slow path: by the
    /// waiter before it parks and by the notifier when it saw `parked` (which clones the handle
    /// and unlocks before unparking).
    thread: Mutex<Option<Thread>>,
}

impl Waiter {
    fn new() -> Self {
        Self {
            parked: AtomicBool::new(false),
            thread: Mutex::new(None),
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
        // A short spin, then a few yields first: when the peer is running it frees a slot within a few hundred
        // nanoseconds, far less than a park/unpark round trip through the kernel.
        for round in 0..SPIN_ROUNDS {
            if ready() {
                return true;
            }
            for _ in 0..(1u32 << round) {
                spin_hint();
            }
        }
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
            *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(current_thread());
            // Release: a notifier that reads `true` (Acquire) also sees the handle stored above.
            self.parked.store(true, Ordering::Release);
            // SeqCst fence: orders the `parked` store before the condition re-check against the
            // notifier's fence (see the type docs); without it both sides could miss each other.
            fence(Ordering::SeqCst);
            if ready() {
                // Relaxed: only this thread writes `parked`, and a stale `true` read by a
                // notifier costs nothing but a spurious unpark.
                self.parked.store(false, Ordering::Relaxed);
                return true;
            }
            // One hour stands in for "forever"; the loop parks again if nothing happened.
            park_timeout(remaining.unwrap_or(std::time::Duration::from_secs(3600)));
            // Relaxed: as above.
            self.parked.store(false, Ordering::Relaxed);
        }
    }

    /// Wakes the waiting side if it is parked (or about to park).
    ///
    /// Call after the `Release` store that made the waiter's condition true.
    pub(crate) fn notify(&self) {
        // SeqCst fence: pairs with the waiter's fence; orders our preceding cursor store
        // before the `parked` load below (see the type docs).
        fence(Ordering::SeqCst);
        // Acquire: pairs with the waiter's Release store, so the handle it stored is visible.
        if self.parked.load(Ordering::Acquire) {
            // Clone the handle and unlock before unparking, so the woken thread never finds
            // the lock held (loom's mutex model also needs that).
            let thread = self
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(thread) = thread {
                thread.unpark();
            }
        }
    }
}
