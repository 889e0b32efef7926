//! The writer side: reads published slots in place, in order, and releases them.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::loom::{Arc, ConstPtr, Ordering};
use crate::shared::Shared;
use crate::{RingStats, SlotMeta};

/// Why [`Consumer::next_timeout`] returned no frame.
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

/// The reading end of a ring: owned by the thread that consumes frames (the file writer).
///
/// Frames come in commit order, each exactly once. Dropping the consumer lets a waiting
/// producer give up ([`Producer::grant_timeout`](crate::Producer::grant_timeout) returns `None`
/// once the ring is full).
pub struct Consumer {
    shared: Arc<Shared>,
    /// The sequence the next read grant returns; always equal to `shared.tail`, which only
    /// this consumer writes.
    next_seq: u64,
    /// The last value of `shared.head` this consumer loaded; `<=` the real head. Reloaded only
    /// when `next_seq == cached_head` (the ring looks empty).
    cached_head: u64,
}

impl Consumer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            next_seq: 0,
            cached_head: 0,
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
        if !self.has_frame() {
            let deadline = Instant::now().checked_add(timeout);
            let shared = &*self.shared;
            let seq = self.next_seq;
            shared.consumer_waiter.wait_until(deadline, || {
                // Acquire: see `has_frame`; for `closed`, see below.
                shared.head.load(Ordering::Acquire) > seq || shared.closed.load(Ordering::Acquire)
            });
            if !self.has_frame() {
                // Acquire: pairs with the producer's Release store in its `Drop`, which comes
                // after its last `head` store; so if `closed` is set, the `head` loaded by the
                // `has_frame` after it is final.
                if !self.shared.closed.load(Ordering::Acquire) {
                    return Err(NextError::Timeout);
                }
                if !self.has_frame() {
                    return Err(NextError::Closed);
                }
            }
        }
        Ok(ReadSlot::new(self))
    }

    /// True once the producer has been dropped (frames may still be waiting to be read).
    pub fn is_closed(&self) -> bool {
        // Relaxed: a status query; `next_timeout` does the ordered check.
        self.shared.closed.load(Ordering::Relaxed)
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
        if self.next_seq < self.cached_head {
            return true;
        }
        // Acquire: pairs with the producer's Release store of `head` on commit; the frame's
        // bytes and metadata written before it are visible to our reads.
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        self.next_seq < self.cached_head
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Release: orders this after every read grant's release; pairs with the Acquire load in
        // the producer's wait condition.
        self.shared.consumer_gone.store(true, Ordering::Release);
        self.shared.producer_waiter.notify();
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("slots", &self.shared.slots)
            .field("slot_bytes", &self.shared.slot_bytes)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// A published frame, read in place. Dropping it releases the slot to the producer.
pub struct ReadSlot<'a> {
    consumer: &'a mut Consumer,
    /// The sequence of this frame; equals `consumer.next_seq`.
    seq: u64,
    /// Shared access to the slot's metadata for the whole grant (under loom it also stands for
    /// the slot's bytes). Dropped in `Drop`, before the release store.
    meta: ManuallyDrop<ConstPtr<SlotMeta>>,
    /// First byte of the slot.
    bytes: NonNull<u8>,
}

impl<'a> ReadSlot<'a> {
    /// Call only after `has_frame()` returned true.
    fn new(consumer: &'a mut Consumer) -> Self {
        let seq = consumer.next_seq;
        let index = consumer.shared.index(seq);
        let meta = ManuallyDrop::new(consumer.shared.headers[index].meta.get());
        let bytes = consumer.shared.memory.slot_ptr(index);
        Self {
            consumer,
            seq,
            meta,
            bytes,
        }
    }

    /// The frame's metadata as committed.
    pub fn meta(&self) -> &SlotMeta {
        // SAFETY: `tail <= seq < head`: the producer published this slot (Acquire load of
        // `head` in `has_frame`) and will not be granted it again before our release store of
        // `tail`, so nothing writes the metadata while this borrow lives.
        unsafe { self.meta.deref() }
    }

    /// The frame's bytes: exactly `meta().len` bytes from the start of the slot.
    pub fn bytes(&self) -> &[u8] {
        // `commit` checked `len <= slot_bytes`, so the cast is lossless and the slice in bounds.
        let len = self.meta().len as usize;
        // SAFETY: as in `meta`, the slot is published and not writable until release; the
        // memory is initialised and `len <= slot_bytes <= stride`.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), len) }
    }

    /// The ring sequence number of this frame: 0 for the first committed frame, then +1 each.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.meta` is not used after this point.
        unsafe { ManuallyDrop::drop(&mut self.meta) };
        let next = self.seq + 1;
        self.consumer.next_seq = next;
        let shared = &*self.consumer.shared;
        // Release: our reads of the slot happen-before the producer's reuse of it, which
        // starts with an Acquire load of `tail`.
        shared.tail.store(next, Ordering::Release);
        shared.producer_waiter.notify();
    }
}

impl fmt::Debug for ReadSlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadSlot")
            .field("sequence", &self.seq)
            .field("meta", self.meta())
            .finish()
    }
}
