//! The detector side: grants empty slots, publishes filled ones.

use std::fmt;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::loom::{Arc, MutPtr, Ordering};
use crate::shared::Shared;
use crate::{RingStats, SlotMeta};

/// The writing end of a ring: owned by the detector (acquisition) thread.
///
/// Dropping it closes the ring: the consumer drains what was committed, then sees
/// [`NextError::Closed`](crate::NextError::Closed).
pub struct Producer {
    shared: Arc<Shared>,
    /// The sequence the next grant writes; always equal to `shared.head`, which only this
    /// producer writes, so it never has to load it.
    next_seq: u64,
    /// The last value of `shared.tail` this producer loaded; `<=` the real tail. The ring looks
    /// full when `next_seq - cached_tail == slots`, and only then is `tail` loaded again (the
    /// cached-index trick of rtrb), so a producer that is ahead does not touch the consumer's
    /// cache line on every grant.
    cached_tail: u64,
    /// Local copy of `shared.high_water` (only this producer writes it), `0 ..= slots`.
    high_water: u64,
}

impl Producer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            next_seq: 0,
            cached_tail: 0,
            high_water: 0,
        }
    }

    /// Grants the next free slot, or `None` when every slot holds a frame the consumer has
    /// not released yet. Never blocks.
    pub fn try_grant(&mut self) -> Option<WriteSlot<'_>> {
        if self.has_free_slot() {
            Some(WriteSlot::new(self))
        } else {
            None
        }
    }

    /// Grants the next free slot, waiting up to `timeout` for the consumer to release one.
    ///
    /// Returns `None` on timeout, or at once when the ring is full and the consumer has been
    /// dropped (no slot will ever be released). Spins briefly, then parks; the consumer unparks
    /// it when it releases a slot.
    pub fn grant_timeout(&mut self, timeout: Duration) -> Option<WriteSlot<'_>> {
        if !self.has_free_slot() {
            let deadline = Instant::now().checked_add(timeout);
            let shared = &*self.shared;
            let limit = self.next_seq - shared.slots as u64;
            shared.producer_waiter.wait_until(deadline, || {
                // Acquire on both: see `has_free_slot` for `tail`; `consumer_gone` is only a
                // reason to stop waiting, read again below.
                shared.tail.load(Ordering::Acquire) > limit
                    || shared.consumer_gone.load(Ordering::Acquire)
            });
            if !self.has_free_slot() {
                return None;
            }
        }
        Some(WriteSlot::new(self))
    }

    /// Usable bytes per slot (what [`WriteSlot::bytes_mut`] returns).
    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// Number of slots in the ring.
    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// The sequence number the next committed frame will carry (0 for the first frame).
    pub fn next_sequence(&self) -> u64 {
        self.next_seq
    }

    /// True once the consumer has been dropped: frames committed from now on are never read.
    pub fn is_consumer_gone(&self) -> bool {
        // Relaxed: a status query; nothing is read on the strength of it.
        self.shared.consumer_gone.load(Ordering::Relaxed)
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn ring_stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.shared))
    }

    /// True when slot `next_seq % slots` no longer holds an unreleased frame.
    fn has_free_slot(&mut self) -> bool {
        let slots = self.shared.slots as u64;
        if self.next_seq - self.cached_tail < slots {
            return true;
        }
        // Acquire: pairs with the consumer's Release store of `tail` when it dropped its read
        // grant; everything it read from the slot we are about to reuse happens-before our
        // writes into it.
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.next_seq - self.cached_tail < slots
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Release: a consumer that sees `closed` (Acquire) also sees the final `head`.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.consumer_waiter.notify();
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("slots", &self.shared.slots)
            .field("slot_bytes", &self.shared.slot_bytes)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// A granted, not yet published slot: the detector writes a frame into
/// [`bytes_mut`](Self::bytes_mut), then [`commit`](Self::commit)s it.
///
/// Dropping it without `commit` abandons the frame: nothing is published and the same slot
/// (with whatever bytes were written into it) is granted again next time.
pub struct WriteSlot<'a> {
    producer: &'a mut Producer,
    /// The sequence this slot will be published as; equals `producer.next_seq`.
    seq: u64,
    /// Exclusive access to the slot's metadata, held for the whole grant (under loom it also
    /// stands for the slot's bytes; see `SlotHeader`).
    meta: MutPtr<SlotMeta>,
    /// First byte of the slot; `slot_bytes` bytes are writable.
    bytes: NonNull<u8>,
}

impl<'a> WriteSlot<'a> {
    /// Call only after `has_free_slot()` returned true.
    fn new(producer: &'a mut Producer) -> Self {
        let seq = producer.next_seq;
        let index = producer.shared.index(seq);
        let meta = producer.shared.headers[index].meta.get_mut();
        let bytes = producer.shared.memory.slot_ptr(index);
        Self {
            producer,
            seq,
            meta,
            bytes,
        }
    }

    /// The slot's bytes, `slot_bytes` long, holding whatever was last written there (zeros
    /// the first time round). Write the frame from the start and set [`SlotMeta::len`].
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `seq >= head`, so no consumer can be granted this slot, and
        // `seq - tail < slots`, so the consumer released the slot's previous frame and its
        // reads happen-before this access (Acquire load of `tail` in `has_free_slot`). The
        // `&mut Producer` held by `self` makes this the only grant; the returned borrow of
        // `self` keeps it unique. The memory is initialised and `slot_bytes <= stride`.
        unsafe {
            std::slice::from_raw_parts_mut(self.bytes.as_ptr(), self.producer.shared.slot_bytes)
        }
    }

    /// The sequence number this frame will be published as.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Usable bytes in this slot.
    pub fn capacity(&self) -> usize {
        self.producer.shared.slot_bytes
    }

    /// Publishes the frame with its metadata; the consumer can read it from now on.
    ///
    /// # Panics
    ///
    /// If `meta.len` exceeds the slot size (the frame cannot be in the slot). The slot is then
    /// abandoned, as if dropped.
    pub fn commit(self, meta: SlotMeta) {
        let slot_bytes = self.producer.shared.slot_bytes;
        assert!(
            meta.len <= slot_bytes as u64,
            "frame {} len {} does not fit a ring slot of {} bytes",
            meta.frame_id,
            meta.len,
            slot_bytes
        );
        let WriteSlot {
            producer,
            seq,
            meta: meta_ptr,
            bytes: _,
        } = self;
        // SAFETY: the grant gives exclusive access to this slot's header (see `bytes_mut`).
        unsafe { *meta_ptr.deref() = meta };
        #[allow(
            clippy::drop_non_drop,
            reason = "a no-op with std; under loom it ends the tracked access before publishing"
        )]
        drop(meta_ptr);

        let next = seq + 1;
        producer.next_seq = next;
        let shared = &*producer.shared;
        // Release: publishes the frame bytes and the metadata written above; pairs with the
        // consumer's Acquire load of `head`.
        shared.head.store(next, Ordering::Release);

        // High-water mark. `next - cached_tail` is an upper bound of the occupancy; only when
        // it could be a new maximum is `tail` loaded, so in steady state the producer does not
        // pull the consumer's cache line on every commit, and the mark is the same as if it
        // did: a skipped commit's occupancy is at most the bound, which is at most the mark.
        if next - producer.cached_tail > producer.high_water {
            // Acquire, as in `has_free_slot`, since the value also refreshes `cached_tail`.
            // Read-read coherence with the load that granted this slot makes
            // `tail >= next - slots`, so the occupancy is at most `slots`.
            producer.cached_tail = shared.tail.load(Ordering::Acquire);
            let occupancy = next - producer.cached_tail;
            if occupancy > producer.high_water {
                producer.high_water = occupancy;
                // Relaxed: a statistic; only this producer writes it.
                shared.high_water.store(occupancy, Ordering::Relaxed);
            }
        }
        shared.consumer_waiter.notify();
    }
}

impl fmt::Debug for WriteSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteSlot")
            .field("sequence", &self.seq)
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}
