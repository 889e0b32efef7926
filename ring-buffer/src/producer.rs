//! The detector side: grants free slots, publishes filled ones, counts what it drops.

use std::fmt;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::layout::{stamp_committed, stamp_writing};
use crate::loom::{Arc, MutPtr, Ordering, fence};
use crate::shared::{NO_GATE, NOT_JOINED, Shared};
use crate::stats::ConsumerKind;
use crate::{Policy, Ring, RingStats, SlotMeta};

/// Why [`Producer::grant`] gave no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// [`Policy::Block`]: the lossless consumers still held every slot when the timeout
    /// expired. Nothing was counted: the caller still has its frame and either tries again or
    /// counts it with [`Producer::record_dropped`].
    #[error("no free ring slot within the timeout")]
    Timeout,
    /// [`Policy::DropNewest`]: the lossless consumers hold every slot, so this frame is
    /// dropped; it has been counted in `dropped` already.
    #[error("ring full: frame dropped")]
    Dropped,
}

/// The writing end of a ring: owned by the detector (acquisition) thread.
///
/// Dropping it closes the ring: consumers read what was committed, then see `Closed`.
pub struct Producer {
    shared: Arc<Shared>,
    /// The sequence the next grant writes; always equal to `control.head`, which only this
    /// producer writes, so it never has to load it.
    next_seq: u64,
    /// Record indices of the admitted lossless consumers and pools (the gates), rebuilt on
    /// admission. A record in this list whose consumer detached reads [`NO_GATE`].
    gates: Vec<usize>,
    /// The smallest gate this producer last loaded, `<=` the real minimum, or [`NO_GATE`] when
    /// no gate exists. The ring looks full when `next_seq - cached_min == slots`, and only then
    /// are the gates loaded again (the cached-index trick of rtrb), so a producer that is
    /// ahead does not touch the consumers' cache lines on every grant.
    cached_min: u64,
    /// Local copy of `control.high_water` (only this producer writes it), `0 ..= slots`.
    high_water: u64,
    /// True once a lossless consumer or pool has been admitted.
    had_gates: bool,
}

impl Producer {
    /// The ring's shared state, for unit tests that watch its wait queues.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            next_seq: 0,
            gates: Vec::with_capacity(crate::MAX_CONSUMERS),
            cached_min: NO_GATE,
            high_water: 0,
            had_gates: false,
        }
    }

    /// Grants the next free slot, or `None` when the lossless consumers hold every slot.
    /// Never blocks and never counts anything.
    pub fn try_grant(&mut self) -> Option<WriteSlot<'_>> {
        if self.has_free_slot() {
            Some(WriteSlot::new(self))
        } else {
            None
        }
    }

    /// Grants the next free slot, waiting up to `timeout` for the lossless consumers to
    /// release one, whatever the policy. Never counts anything: see [`grant`](Self::grant)
    /// for the policy-driven call.
    ///
    /// Spins briefly, then sleeps; a releasing consumer wakes it.
    pub fn grant_timeout(&mut self, timeout: Duration) -> Option<WriteSlot<'_>> {
        if !self.has_free_slot() {
            let deadline = Instant::now().checked_add(timeout);
            let shared = &*self.shared;
            let (gates, next) = (&self.gates, self.next_seq);
            let slots = shared.slots as u64;
            shared
                .producer_wait
                .wait_until(deadline, || fits(next, min_gate(shared, gates), slots));
            if !self.has_free_slot() {
                return None;
            }
        }
        Some(WriteSlot::new(self))
    }

    /// Grants a slot for a frame the sensor has ready, as the ring's [`Policy`] says:
    ///
    /// - [`Policy::Block`]: waits up to `timeout` (so the caller can look at its stop flag),
    ///   then returns [`GrantError::Timeout`] and counts nothing.
    /// - [`Policy::DropNewest`]: never waits; when the lossless consumers hold every slot it
    ///   counts one dropped frame and returns [`GrantError::Dropped`].
    ///
    /// Call it once per frame in hand: then `frames offered = produced + dropped` exactly,
    /// provided that frames given up after a `Timeout` go to
    /// [`record_dropped`](Self::record_dropped) and grants abandoned with a frame in them go
    /// through [`WriteSlot::discard`].
    ///
    /// # Errors
    ///
    /// [`GrantError`] as above.
    pub fn grant(&mut self, timeout: Duration) -> Result<WriteSlot<'_>, GrantError> {
        match self.shared.policy {
            Policy::Block => self.grant_timeout(timeout).ok_or(GrantError::Timeout),
            Policy::DropNewest => {
                if self.has_free_slot() {
                    Ok(WriteSlot::new(self))
                } else {
                    self.record_dropped(1);
                    Err(GrantError::Dropped)
                }
            }
        }
    }

    /// Counts `frames` frames the sensor produced but could not deliver into the ring (for
    /// example under [`Policy::Block`] after a [`GrantError::Timeout`], when the detector has
    /// moved on). They appear in [`RingCounters::dropped`](crate::RingCounters::dropped).
    pub fn record_dropped(&self, frames: u64) {
        // Relaxed: a counter; only the producer writes it.
        self.shared
            .control()
            .dropped
            .fetch_add(frames, Ordering::Relaxed);
    }

    /// The ring's policy.
    pub fn policy(&self) -> Policy {
        self.shared.policy
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

    /// True when lossless consumers were attached and none is any more: frames committed from
    /// now on only reach lossy consumers.
    pub fn is_consumer_gone(&mut self) -> bool {
        self.admit_joins_if_pending();
        self.had_gates && min_gate(&self.shared, &self.gates) == NO_GATE
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn ring_stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.shared))
    }

    /// A handle to attach more consumers to this ring.
    pub fn ring(&self) -> Ring {
        Ring::from_shared(Arc::clone(&self.shared))
    }

    fn admit_joins_if_pending(&mut self) {
        // Relaxed: `admit_joins` takes the registry lock, which orders everything else.
        if self.shared.joins_pending.load(Ordering::Relaxed) {
            self.admit_joins();
        }
    }

    /// Admits the lossless consumers and pools that attached since the last grant: each
    /// starts at `next_seq`, the sequence about to be granted, and gates from now on.
    #[cold]
    fn admit_joins(&mut self) {
        let shared = &*self.shared;
        let registry = shared.lock_registry();
        // Relaxed: set and cleared only under the lock we hold.
        shared.joins_pending.store(false, Ordering::Relaxed);
        self.gates.clear();
        for (index, entry) in registry.entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if entry.kind == ConsumerKind::Lossy {
                continue;
            }
            let record = &shared.records[index];
            // Relaxed: our own earlier store, if any.
            if record.start.load(Ordering::Relaxed) == NOT_JOINED {
                // Relaxed for the gate: the consumer writes it only after it loaded `start`
                // (Acquire), which the Release store below publishes.
                record.gate.store(self.next_seq, Ordering::Relaxed);
                record.start.store(self.next_seq, Ordering::Release);
            }
            self.gates.push(index);
        }
        drop(registry);
        self.had_gates |= !self.gates.is_empty();
        self.cached_min = min_gate(shared, &self.gates);
        // Consumers that were admitted may be asleep waiting for it.
        shared.consumer_wait.notify();
    }

    /// True when slot `next_seq % slots` holds no frame a lossless consumer still needs.
    fn has_free_slot(&mut self) -> bool {
        self.admit_joins_if_pending();
        let slots = self.shared.slots as u64;
        if fits(self.next_seq, self.cached_min, slots) {
            return true;
        }
        self.cached_min = min_gate(&self.shared, &self.gates);
        fits(self.next_seq, self.cached_min, slots)
    }
}

/// True when sequence `next` may be written while the smallest gate is `min`: every lossless
/// consumer has released `next - slots`, the previous frame in the same slot.
fn fits(next: u64, min: u64, slots: u64) -> bool {
    min == NO_GATE || next - min < slots
}

/// The smallest gate among `gates`, or [`NO_GATE`].
fn min_gate(shared: &Shared, gates: &[usize]) -> u64 {
    gates
        .iter()
        // Acquire: pairs with each consumer's Release store of its gate when it released a
        // slot; everything it read from the slot we are about to reuse happens-before our
        // writes into it. (For pools, the gate is only moved by RMWs, whose release sequence
        // carries every claimer's release; see `pool`.)
        .map(|&i| shared.records[i].gate.load(Ordering::Acquire))
        .min()
        .unwrap_or(NO_GATE)
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Release: a consumer that sees `closed` (Acquire) also sees the final `head`.
        self.shared.control().closed.store(1, Ordering::Release);
        self.shared.consumer_wait.notify();
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("slots", &self.shared.slots)
            .field("slot_bytes", &self.shared.slot_bytes)
            .field("policy", &self.shared.policy)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// A granted, not yet published slot: the detector writes a frame into
/// [`bytes_mut`](Self::bytes_mut), then [`commit`](Self::commit)s it.
///
/// Dropping it without `commit` abandons the grant: nothing is published and the same slot
/// (with whatever bytes were written into it) is granted again next time. Use
/// [`discard`](Self::discard) instead when a frame was in it, so the drop is counted.
pub struct WriteSlot<'a> {
    producer: &'a mut Producer,
    /// The sequence this slot will be published as; equals `producer.next_seq`.
    seq: u64,
    /// `seq % slots`.
    index: usize,
    /// Exclusive access to the slot's token for the whole grant (loom's race detector).
    _token: MutPtr<()>,
    /// First byte of the slot; `slot_bytes` bytes are writable.
    bytes: NonNull<u8>,
}

impl<'a> WriteSlot<'a> {
    /// Call only after `has_free_slot()` returned true.
    fn new(producer: &'a mut Producer) -> Self {
        let seq = producer.next_seq;
        let shared = &*producer.shared;
        let index = shared.index(seq);
        let token = shared.tokens[index].get_mut();
        // Seqlock write side: the odd stamp goes out before any byte of the new frame. Relaxed
        // store + Release fence: a lossy reader that reads any byte or metadata word written
        // after this fence and then issues an Acquire fence sees this stamp (or a later one)
        // on its re-check, so it cannot mistake a torn slot for the old frame.
        shared
            .region
            .slot_header(index)
            .stamp
            .store(stamp_writing(seq), Ordering::Relaxed);
        fence(Ordering::Release);
        let bytes = shared.region.slot_ptr(index);
        Self {
            producer,
            seq,
            index,
            _token: token,
            bytes,
        }
    }

    /// The slot's bytes, `slot_bytes` long, holding whatever was last written there (zeros
    /// the first time round). Write the frame from the start and set [`SlotMeta::len`].
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `seq >= head`, so no lossless consumer can be granted this slot, and every
        // gate is past `seq - slots`, so every lossless consumer released the slot's previous
        // frame and its reads happen-before this access (Acquire loads of the gates in
        // `has_free_slot`). The `&mut Producer` held by `self` makes this the only grant; the
        // returned borrow of `self` keeps it unique. Lossy readers may read concurrently; they
        // never form references to the bytes and discard what the seqlock flags. The memory
        // is initialised and `slot_bytes <= stride`.
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

    /// Abandons the grant and counts one dropped frame: for a frame that was read into the
    /// slot but must not be published.
    pub fn discard(self) {
        self.producer.record_dropped(1);
    }

    /// Publishes the frame with its metadata; every consumer can read it from now on.
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
            index,
            _token: token,
            bytes: _,
        } = self;
        let shared = &*producer.shared;
        let header = shared.region.slot_header(index);
        header.store_meta(&meta);
        #[allow(
            clippy::drop_non_drop,
            reason = "a no-op with std; under loom it ends the tracked access before publishing"
        )]
        drop(token);
        // Release: publishes the bytes and metadata to lossy readers that load the stamp.
        header.stamp.store(stamp_committed(seq), Ordering::Release);

        let next = seq + 1;
        producer.next_seq = next;
        // Release: publishes the frame's bytes and metadata (and the stamp) to consumers that
        // load `head` with Acquire.
        shared.control().head.store(next, Ordering::Release);

        // High-water mark. `next - cached_min` is an upper bound of the occupancy; only when it
        // could be a new maximum are the gates loaded, so in steady state the producer does not
        // pull the consumers' cache lines on every commit, and the mark is the same as if it
        // did: a skipped commit's occupancy is at most the bound, which is at most the mark.
        if producer.cached_min != NO_GATE && next - producer.cached_min > producer.high_water {
            // Acquire, as in `has_free_slot`, since the value also refreshes `cached_min`.
            // Coherence with the loads that granted this slot keeps the minimum
            // `>= next - slots`, so the occupancy is at most `slots`.
            producer.cached_min = min_gate(shared, &producer.gates);
            if producer.cached_min != NO_GATE {
                let occupancy = next - producer.cached_min;
                if occupancy > producer.high_water {
                    producer.high_water = occupancy;
                    // Relaxed: a statistic; only this producer writes it.
                    shared
                        .control()
                        .high_water
                        .store(occupancy, Ordering::Relaxed);
                }
            }
        }
        shared.consumer_wait.notify();
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
