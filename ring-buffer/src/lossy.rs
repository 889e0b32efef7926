//! A lossy consumer (live preview, statistics): never holds the producer back, reads frames
//! through the per-slot seqlock and learns how many it missed.

use std::fmt;
use std::time::{Duration, Instant};

use crate::layout::{SlotHeader, stamp_committed};
use crate::loom::{Arc, Ordering, fence};
use crate::shared::Shared;
use crate::{RingStats, SlotMeta};

/// Why [`LossyConsumer::next_timeout`] returned no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LossyError {
    /// The producer overwrote this many frames before they were read; the consumer skipped
    /// them and the next call returns the oldest frame still in the ring (as tokio broadcast's
    /// `RecvError::Lagged`).
    #[error("lagged behind the producer: {0} frames missed")]
    Lagged(u64),
    /// No new frame within the timeout (at once for [`LossyConsumer::try_next`]).
    #[error("no new frame within the timeout")]
    Timeout,
    /// The producer was dropped and every frame it committed has been read or missed.
    #[error("ring closed: the producer is gone")]
    Closed,
}

/// A slot's bytes were overwritten by the producer while they were being copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame {sequence} was overwritten while it was read")]
pub struct Overwritten {
    /// The sequence whose copy was torn.
    pub sequence: u64,
}

/// A lossy reading end of a ring: sees frames from the moment it was attached, never holds
/// the producer back, and reports the frames the producer overwrote before it read them.
///
/// Each committed frame from its start on is counted exactly once, as `consumed` (read
/// intact) or `lagged` (missed or torn).
pub struct LossyConsumer {
    shared: Arc<Shared>,
    /// This consumer's record in `shared.records`.
    record: usize,
    /// The next sequence to read. Only grows.
    next_seq: u64,
    /// Local copies of the record's counters (only this consumer writes them).
    consumed: u64,
    lagged: u64,
}

impl LossyConsumer {
    pub(crate) fn new(shared: Arc<Shared>, record: usize) -> Self {
        // Acquire: pairs with the Release store in `attach`.
        let start = shared.records[record].start.load(Ordering::Acquire);
        Self {
            shared,
            record,
            next_seq: start,
            consumed: 0,
            lagged: 0,
        }
    }

    /// The oldest frame not yet read or missed, if one is committed. Never blocks.
    ///
    /// # Errors
    ///
    /// [`LossyError::Lagged`] when frames were overwritten before they were read (they are
    /// skipped; call again), [`LossyError::Timeout`] when nothing new is committed,
    /// [`LossyError::Closed`] when nothing ever will be.
    pub fn try_next(&mut self) -> Result<LossySlot<'_>, LossyError> {
        self.next_timeout(Duration::ZERO)
    }

    /// As [`try_next`](Self::try_next), waiting up to `timeout` for a frame.
    ///
    /// # Errors
    ///
    /// As [`try_next`](Self::try_next).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<LossySlot<'_>, LossyError> {
        let shared = &*self.shared;
        let seq = self.next_seq;
        // Acquire: pairs with the producer's Release store of `head`; also the slot's stamp
        // and metadata of every sequence below it are visible.
        let mut head = shared.control().head.load(Ordering::Acquire);
        if head <= seq {
            let deadline = Instant::now().checked_add(timeout);
            shared.consumer_wait.wait_until(deadline, || {
                // Acquire: as above, and for `closed` as in `Consumer::next_timeout`.
                shared.control().head.load(Ordering::Acquire) > seq
                    || shared.is_closed(Ordering::Acquire)
            });
            let closed = shared.is_closed(Ordering::Acquire);
            head = shared.control().head.load(Ordering::Acquire);
            if head <= seq {
                return Err(if closed {
                    LossyError::Closed
                } else {
                    LossyError::Timeout
                });
            }
        }
        let slots = shared.slots as u64;
        if head - seq > slots {
            // The slots of `seq .. head - slots` hold later frames already.
            return Err(self.skip_to(head - slots));
        }
        let header = shared.region.slot_header(shared.index(seq));
        match read_meta(header, seq) {
            Some(meta) => {
                self.next_seq = seq + 1;
                Ok(LossySlot {
                    consumer: self,
                    seq,
                    meta,
                    intact: true,
                })
            }
            None => {
                // Overwritten since we loaded `head`: the producer is at `seq + slots` or
                // beyond; skip to the oldest frame that may still be there.
                let head = shared.control().head.load(Ordering::Acquire);
                Err(self.skip_to((head.saturating_sub(slots)).max(seq + 1)))
            }
        }
    }

    /// Skips every sequence below `to`, counting them as lagged.
    fn skip_to(&mut self, to: u64) -> LossyError {
        let missed = to - self.next_seq;
        self.next_seq = to;
        self.add_lagged(missed);
        LossyError::Lagged(missed)
    }

    fn add_lagged(&mut self, frames: u64) {
        self.lagged += frames;
        // Relaxed: a counter only this consumer writes.
        self.shared.records[self.record]
            .lagged
            .store(self.lagged, Ordering::Relaxed);
    }

    /// Frames read intact so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Frames missed (overwritten before or while they were read) so far.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// The next sequence this consumer will try to read.
    pub fn next_sequence(&self) -> u64 {
        self.next_seq
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn ring_stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.shared))
    }
}

/// Seqlock read of sequence `seq`'s metadata from its slot header: `None` if the slot does not
/// hold `seq` committed, or was overwritten while read.
fn read_meta(header: &SlotHeader, seq: u64) -> Option<SlotMeta> {
    // Acquire: pairs with the producer's Release store of the committed stamp; the metadata
    // of `seq` is visible.
    let stamp = header.stamp.load(Ordering::Acquire);
    if stamp != stamp_committed(seq) {
        // A later stamp: overwritten. (An earlier one is impossible: `head > seq` was loaded
        // with Acquire and the stamp is stored before `head`.)
        debug_assert!(
            stamp > stamp_committed(seq),
            "stamp {stamp} for sequence {seq}"
        );
        return None;
    }
    let meta = header.load_meta();
    still_stamped(header, stamp).then_some(meta)
}

/// The seqlock re-check: true when nothing was written into the slot since `stamp` was loaded
/// and the reads before this call.
fn still_stamped(header: &SlotHeader, stamp: u64) -> bool {
    // Acquire fence: if any read before it saw a byte or word the producer wrote after its odd
    // stamp and Release fence (`WriteSlot::new`), the fences synchronise and the load below
    // sees that odd stamp or a later one.
    fence(Ordering::Acquire);
    // Relaxed: ordered by the fence.
    header.stamp.load(Ordering::Relaxed) == stamp
}

impl Drop for LossyConsumer {
    fn drop(&mut self) {
        self.shared.detach(self.record);
    }
}

impl fmt::Debug for LossyConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossyConsumer")
            .field("record", &self.record)
            .field("next_seq", &self.next_seq)
            .field("consumed", &self.consumed)
            .field("lagged", &self.lagged)
            .finish_non_exhaustive()
    }
}

/// A committed frame seen by a lossy consumer. Its metadata was read intact; its bytes may be
/// overwritten at any time, so they are only available as a validated copy.
///
/// Dropping it counts the frame as consumed, or as lagged if a copy found it overwritten.
pub struct LossySlot<'a> {
    consumer: &'a mut LossyConsumer,
    seq: u64,
    meta: SlotMeta,
    /// False once a copy found the slot overwritten.
    intact: bool,
}

impl LossySlot<'_> {
    /// The frame's metadata as committed.
    pub fn meta(&self) -> &SlotMeta {
        &self.meta
    }

    /// The ring sequence number of this frame.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// True while the producer has not started overwriting this frame's slot.
    pub fn is_intact(&self) -> bool {
        let shared = &*self.consumer.shared;
        still_stamped(
            shared.region.slot_header(shared.index(self.seq)),
            stamp_committed(self.seq),
        )
    }

    /// Copies the frame's `meta().len` bytes into `buf` (replacing its contents) and checks
    /// that the producer did not overwrite the slot meanwhile.
    ///
    /// The copy is the only way to the bytes: the producer may rewrite the slot at any moment,
    /// so a `&[u8]` into it could change under the reader. (Another process maps the slots and
    /// reads them in place with the same seqlock check; see the crate docs.)
    ///
    /// # Errors
    ///
    /// [`Overwritten`] when the copy may be torn; `buf` then holds garbage and the frame is
    /// counted as lagged.
    pub fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<(), Overwritten> {
        let shared = &*self.consumer.shared;
        let index = shared.index(self.seq);
        // `commit` checked `len <= slot_bytes`, so the cast is lossless.
        let len = self.meta.len as usize;
        buf.clear();
        buf.reserve(len);
        let src = shared.region.slot_ptr(index).as_ptr();
        // SAFETY: `src .. src + len` lies inside the slot (`len <= slot_bytes`) and is
        // initialised; `buf` has capacity for `len` bytes and does not overlap the ring. The
        // producer may be writing the same bytes concurrently: like crossbeam's `AtomicCell`
        // seqlock, we copy with volatile reads (never forming a reference to the slot) and
        // throw the copy away when the stamp changed; u8 has no invalid values.
        unsafe {
            copy_volatile(src, buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        if still_stamped(shared.region.slot_header(index), stamp_committed(self.seq)) {
            Ok(())
        } else {
            self.intact = false;
            Err(Overwritten { sequence: self.seq })
        }
    }
}

/// Copies `len` bytes with volatile reads, a word at a time where aligned.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, not overlapping.
pub(crate) unsafe fn copy_volatile(src: *const u8, dst: *mut u8, len: usize) {
    let words = len / 8;
    let word_src = src.cast::<u64>();
    if word_src.is_aligned() {
        for i in 0..words {
            // SAFETY: `i * 8 + 8 <= len`, aligned (checked), in bounds by the caller's
            // contract; `dst` may be unaligned, hence `write_unaligned`.
            unsafe {
                let word = word_src.add(i).read_volatile();
                dst.add(i * 8).cast::<u64>().write_unaligned(word);
            }
        }
    }
    let done = if word_src.is_aligned() { words * 8 } else { 0 };
    for i in done..len {
        // SAFETY: `i < len`, in bounds by the caller's contract.
        unsafe { dst.add(i).write(src.add(i).read_volatile()) };
    }
}

impl Drop for LossySlot<'_> {
    fn drop(&mut self) {
        let consumer = &mut *self.consumer;
        if self.intact {
            consumer.consumed += 1;
            // Relaxed: a counter only this consumer writes.
            consumer.shared.records[consumer.record]
                .consumed
                .store(consumer.consumed, Ordering::Relaxed);
        } else {
            consumer.add_lagged(1);
        }
    }
}

impl fmt::Debug for LossySlot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossySlot")
            .field("sequence", &self.seq)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}
