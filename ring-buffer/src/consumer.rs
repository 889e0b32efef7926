//! A lossless consumer (the file writer): reads every committed slot in place, in order, and
//! releases it; the producer never overwrites a frame it has not released.

use std::fmt;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::loom::{Arc, ConstPtr, Ordering};
use crate::shared::{NOT_JOINED, Shared};
use crate::{RingStats, SlotMeta};

/// Why a lossless read ([`Consumer::next_timeout`], [`Claimer::claim_timeout`]) returned no
/// frame.
///
/// [`Claimer::claim_timeout`]: crate::Claimer::claim_timeout
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NextError {
    /// No frame was published within the timeout; the producer is still there.
    #[error("no frame published within the timeout")]
    Timeout,
    /// The producer was dropped and every frame it committed has been read: no frame will
    /// ever come.
    #[error("ring closed: the producer is gone and every committed frame was read")]
    Closed,
}

/// A lossless reading end of a ring: owned by the thread that consumes frames (the writer).
///
/// Frames come in commit order, each exactly once, from the first frame granted after the
/// consumer was attached. Until it releases a frame, the producer cannot reuse that slot.
/// Dropping the consumer detaches it: it no longer holds the producer back.
pub struct Consumer {
    shared: Arc<Shared>,
    /// This consumer's record in `shared.records`.
    record: usize,
    /// The sequence the next read grant returns; equal to the record's gate once admitted.
    next_seq: u64,
    /// The last value of `head` this consumer loaded; `<=` the real head. Reloaded only when
    /// `next_seq == cached_head` (the ring looks empty).
    cached_head: u64,
    /// False until the producer admitted this consumer (its record's `start` is set).
    joined: bool,
}

impl Consumer {
    /// The ring's shared state, for unit tests that watch its wait queues.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub(crate) fn new(shared: Arc<Shared>, record: usize) -> Self {
        Self {
            shared,
            record,
            next_seq: 0,
            cached_head: 0,
            joined: false,
        }
    }

    /// The oldest unread frame, or `None` when none is published yet (or the ring is closed
    /// and drained; see [`next_timeout`](Self::next_timeout) to tell them apart). Never blocks.
    pub fn try_next(&mut self) -> Option<ReadSlot<'_>> {
        if self.has_frame() {
            Some(ReadSlot::new(self))
        } else {
            None
        }
    }

    /// The oldest unread frame, waiting up to `timeout` for the producer to publish one.
    ///
    /// # Errors
    ///
    /// [`NextError::Closed`] when the producer is gone and every frame was read;
    /// [`NextError::Timeout`] when nothing came within `timeout`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<ReadSlot<'_>, NextError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.has_frame() {
                break;
            }
            let shared = &*self.shared;
            let record = &shared.records[self.record];
            let (joined, seq) = (self.joined, self.next_seq);
            let woke = shared.consumer_wait.wait_until(deadline, || {
                // Acquire: see `has_frame`; for `closed`, see below.
                let ready = if joined {
                    shared.control().head.load(Ordering::Acquire) > seq
                } else {
                    record.start.load(Ordering::Acquire) != NOT_JOINED
                };
                ready || shared.is_closed(Ordering::Acquire)
            });
            if self.has_frame() {
                break;
            }
            // Acquire: pairs with the producer's Release store in its `Drop`, which comes after
            // its last `head` store; so if `closed` is set, the `head` loaded by the
            // `has_frame` after it is final.
            if self.shared.is_closed(Ordering::Acquire) {
                if self.has_frame() {
                    break;
                }
                return Err(NextError::Closed);
            }
            // Woken by our admission (no frame yet) or spuriously: wait on, unless time is up.
            if !woke || deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(NextError::Timeout);
            }
        }
        Ok(ReadSlot::new(self))
    }

    /// True once the producer has been dropped (frames may still be waiting to be read).
    pub fn is_closed(&self) -> bool {
        // Relaxed: a status query; `next_timeout` does the ordered check.
        self.shared.is_closed(Ordering::Relaxed)
    }

    /// Frames this consumer has released.
    pub fn consumed(&self) -> u64 {
        // Relaxed: only this consumer writes it.
        self.shared.records[self.record]
            .consumed
            .load(Ordering::Relaxed)
    }

    /// Number of slots in the ring.
    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// Usable bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn ring_stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.shared))
    }

    /// True when sequence `next_seq` is published.
    fn has_frame(&mut self) -> bool {
        if !self.joined {
            // Acquire: pairs with the producer's Release store on admission; its store of our
            // gate comes before, so our gate stores come after it.
            let start = self.shared.records[self.record]
                .start
                .load(Ordering::Acquire);
            if start == NOT_JOINED {
                return false;
            }
            self.joined = true;
            self.next_seq = start;
            self.cached_head = start;
        }
        if self.next_seq < self.cached_head {
            return true;
        }
        // Acquire: pairs with the producer's Release store of `head` on commit; the frame's
        // bytes and metadata written before it are visible to our reads.
        self.cached_head = self.shared.control().head.load(Ordering::Acquire);
        self.next_seq < self.cached_head
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.shared.detach(self.record);
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("record", &self.record)
            .field("slots", &self.shared.slots)
            .field("slot_bytes", &self.shared.slot_bytes)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// A published frame, read in place. Dropping it releases the slot (for this consumer).
pub struct ReadSlot<'a> {
    consumer: &'a mut Consumer,
    /// The sequence of this frame; equals `consumer.next_seq`.
    seq: u64,
    /// The frame's metadata, loaded once (the slot cannot change while we hold it).
    meta: SlotMeta,
    /// Shared access to the slot's token for the whole grant (loom's race detector); taken
    /// (ended) in `Drop`, before the release store.
    token: Option<ConstPtr<()>>,
    /// First byte of the slot.
    bytes: NonNull<u8>,
}

impl<'a> ReadSlot<'a> {
    /// Call only after `has_frame()` returned true.
    fn new(consumer: &'a mut Consumer) -> Self {
        let seq = consumer.next_seq;
        let shared = &*consumer.shared;
        let index = shared.index(seq);
        let token = shared.tokens[index].get();
        let meta = shared.region.slot_header(index).load_meta();
        let bytes = shared.region.slot_ptr(index);
        Self {
            consumer,
            seq,
            meta,
            token: Some(token),
            bytes,
        }
    }

    /// The frame's metadata as committed.
    pub fn meta(&self) -> &SlotMeta {
        &self.meta
    }

    /// The frame's bytes: exactly `meta().len` bytes from the start of the slot.
    pub fn bytes(&self) -> &[u8] {
        // `commit` checked `len <= slot_bytes`, so the cast is lossless and the slice in bounds.
        let len = self.meta.len as usize;
        // SAFETY: `gate <= seq < head`: the producer published this slot (Acquire load of
        // `head` in `has_frame`) and will not be granted it again before our gate passes
        // `seq`, which happens only when this grant drops; so nothing writes these bytes
        // while the borrow lives. The memory is initialised and `len <= slot_bytes <= stride`.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), len) }
    }

    /// The ring sequence number of this frame: 0 for the first committed frame, then +1 each.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        // End the tracked access (a no-op with std) before the slot is released.
        self.token = None;
        let next = self.seq + 1;
        let consumer = &mut *self.consumer;
        consumer.next_seq = next;
        let shared = &*consumer.shared;
        let record = &shared.records[consumer.record];
        // Relaxed: a counter only this consumer writes.
        let consumed = record.consumed.load(Ordering::Relaxed);
        record.consumed.store(consumed + 1, Ordering::Relaxed);
        // Release: our reads of the slot happen-before the producer's reuse of it, which
        // starts with an Acquire load of our gate.
        record.gate.store(next, Ordering::Release);
        shared.producer_wait.notify();
    }
}

impl fmt::Debug for ReadSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadSlot")
            .field("sequence", &self.seq)
            .field("meta", &self.meta)
            .finish()
    }
}
