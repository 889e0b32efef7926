//! A worker pool: one lossless consumer shared by N threads (the compressors). Each thread
//! claims the next committed sequence, reads the slot in place for as long as it needs, and
//! releases it, in any order; the pool's gate (what holds the producer back) advances over the
//! contiguous prefix of released sequences. [`Reorder`] puts the results back in sequence
//! order for the writer.

use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::loom::{Arc, AtomicU64, ConstPtr, Ordering, fence};
use crate::shared::{NOT_JOINED, Shared};
use crate::{NextError, RingStats, SlotMeta};

/// The state of one pool, shared by its claimers and claims; detaches the pool from the ring
/// when the last of them drops.
struct Pool {
    shared: Arc<Shared>,
    /// The pool's record in `shared.records`; its `gate` is the pool's released prefix.
    record: usize,
    /// The next sequence to claim; [`NOT_JOINED`] until the first claimer saw the pool
    /// admitted. Claimers advance it by CAS; it never passes `head`.
    next_claim: CachePadded<AtomicU64>,
    /// `done[s % slots] == s + 1` once sequence `s` was released. Each entry is written by the
    /// claim that releases its sequence and read by whoever advances the gate.
    done: Box<[AtomicU64]>,
}

impl Pool {
    fn gate(&self) -> &AtomicU64 {
        &self.shared.records[self.record].gate
    }

    /// Claims the next committed sequence, if there is one.
    fn try_claim(&self) -> Option<u64> {
        loop {
            // Relaxed: the claim itself needs only uniqueness (the CAS); visibility of the
            // frame comes from our own Acquire load of `head` below.
            let next = self.next_claim.load(Ordering::Relaxed);
            if next == NOT_JOINED {
                // Acquire: pairs with the producer's Release store on admission.
                let start = self.shared.records[self.record]
                    .start
                    .load(Ordering::Acquire);
                if start == NOT_JOINED {
                    return None;
                }
                // Whoever wins, `next_claim` is `start` afterwards.
                let _ = self.next_claim.compare_exchange(
                    NOT_JOINED,
                    start,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                continue;
            }
            // Acquire: pairs with the producer's Release store of `head`; the frame's bytes and
            // metadata are visible to this thread.
            let head = self.shared.control().head.load(Ordering::Acquire);
            if next >= head {
                return None;
            }
            if self
                .next_claim
                .compare_exchange_weak(next, next + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some(next);
            }
        }
    }

    /// Marks `seq` released and moves the gate over every released sequence at its front.
    fn release(&self, seq: u64) {
        let shared = &*self.shared;
        // Release: our reads of the slot happen-before whoever loads this entry (Acquire) and
        // then moves the gate, and so before the producer's reuse of the slot.
        self.done[shared.index(seq)].store(seq + 1, Ordering::Release);
        // SeqCst fence, here and after each gate CAS below: a store-buffering handshake with
        // the other releasers. A releaser stores `done[s]` then loads the gate; an advancer
        // moves the gate to `s` then loads `done[s]`. With a fence between store and load on
        // both sides, at least one of them sees the other's store, so the gate never stops at
        // a released sequence (no lost advance, no stuck producer).
        fence(Ordering::SeqCst);
        let gate = self.gate();
        // Acquire: the entries checked below were stored before the gate reached them.
        let mut g = gate.load(Ordering::Acquire);
        let mut advanced = false;
        // Relaxed on the counter: a statistic.
        shared.records[self.record]
            .consumed
            .fetch_add(1, Ordering::Relaxed);
        // The gate is at most `head`, so `g + 1` cannot overflow; it is never NO_GATE while a
        // claim exists (the pool is attached and admitted).
        // Acquire on `done`: pairs with the releasing claim's Release store, so its reads
        // happen-before our gate CAS and, through the gate's release sequence, before the
        // producer's Acquire load of the gate.
        while self.done[shared.index(g)].load(Ordering::Acquire) == g + 1 {
            // AcqRel: Release publishes to the producer (see above); every store to the gate
            // while the pool is admitted is an RMW, so a producer that reads a later value
            // still synchronises with this one.
            match gate.compare_exchange(g, g + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    g += 1;
                    advanced = true;
                    fence(Ordering::SeqCst);
                }
                Err(current) => g = current,
            }
        }
        if advanced {
            shared.producer_wait.notify();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.detach(self.record);
    }
}

/// A handle of a worker pool: clone it once per thread. Every committed frame (from the
/// pool's admission on) is claimed by exactly one [`Claimer`] of the pool.
///
/// The pool is one lossless consumer for the producer: it holds the producer back until every
/// claim of a slot's frame was released, and the frames in between were released too. It is
/// detached when the last `Claimer` and the last [`Claim`] drop.
#[derive(Clone)]
pub struct Claimer {
    pool: Arc<Pool>,
}

impl Claimer {
    pub(crate) fn new(shared: Arc<Shared>, record: usize) -> Self {
        let done = (0..shared.slots).map(|_| AtomicU64::new(0)).collect();
        Self {
            pool: Arc::new(Pool {
                shared,
                record,
                next_claim: CachePadded::new(AtomicU64::new(NOT_JOINED)),
                done,
            }),
        }
    }

    /// Claims the oldest unclaimed frame, or `None` when none is committed. Never blocks.
    pub fn try_claim(&self) -> Option<Claim> {
        self.pool.try_claim().map(|seq| Claim::new(&self.pool, seq))
    }

    /// Claims the oldest unclaimed frame, waiting up to `timeout` for one.
    ///
    /// # Errors
    ///
    /// [`NextError::Closed`] when the producer is gone and every frame was claimed;
    /// [`NextError::Timeout`] when nothing came within `timeout`.
    pub fn claim_timeout(&self, timeout: Duration) -> Result<Claim, NextError> {
        if let Some(claim) = self.try_claim() {
            return Ok(claim);
        }
        let deadline = Instant::now().checked_add(timeout);
        let shared = &*self.pool.shared;
        loop {
            let pool = &*self.pool;
            let woke = shared.consumer_wait.wait_until(deadline, || {
                // Acquire: as in `try_claim`, and for `closed` as in `Consumer::next_timeout`.
                let next = pool.next_claim.load(Ordering::Acquire);
                (if next == NOT_JOINED {
                    shared.records[pool.record].start.load(Ordering::Acquire) != NOT_JOINED
                } else {
                    shared.control().head.load(Ordering::Acquire) > next
                }) || shared.is_closed(Ordering::Acquire)
            });
            // Another claimer may take the frame that woke us: then wait again.
            if let Some(claim) = self.try_claim() {
                return Ok(claim);
            }
            // Acquire: see `Consumer::next_timeout`; `head` is final once `closed` is seen.
            if shared.is_closed(Ordering::Acquire) {
                return match self.try_claim() {
                    Some(claim) => Ok(claim),
                    None => Err(NextError::Closed),
                };
            }
            if !woke || deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(NextError::Timeout);
            }
        }
    }

    /// The first sequence of this pool once the producer admitted it (the first grant after
    /// the pool was attached), else `None`. Start a [`Reorder`] there.
    pub fn start_sequence(&self) -> Option<u64> {
        // Acquire: pairs with the producer's Release store on admission.
        let start = self.pool.shared.records[self.pool.record]
            .start
            .load(Ordering::Acquire);
        (start != NOT_JOINED).then_some(start)
    }

    /// Frames released by the pool's claims so far.
    pub fn consumed(&self) -> u64 {
        // Relaxed: a counter.
        self.pool.shared.records[self.pool.record]
            .consumed
            .load(Ordering::Relaxed)
    }

    /// A handle to this ring's counters, readable from any thread.
    pub fn ring_stats(&self) -> RingStats {
        RingStats::new(Arc::clone(&self.pool.shared))
    }
}

impl fmt::Debug for Claimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimer")
            .field("record", &self.pool.record)
            .finish_non_exhaustive()
    }
}

/// One claimed frame, read in place, owned: send it to another thread (the writer) if it
/// should release the slot. Dropping it releases the slot.
pub struct Claim {
    pool: Arc<Pool>,
    seq: u64,
    meta: SlotMeta,
    /// Shared access to the slot's token for the whole claim (loom's race detector); taken in
    /// `Drop`, before the release.
    token: Option<ConstPtr<()>>,
    bytes: NonNull<u8>,
}

// SAFETY: a `Claim` only reads its slot, which the producer cannot rewrite before the claim is
// released (the pool's gate stays at or below `seq` until then), whichever thread holds or
// drops the claim; the release path uses only atomics. The raw pointer and the (loom-only)
// tracked token are what keep the auto traits off.
unsafe impl Send for Claim {}
// SAFETY: `&Claim` only gives out `&[u8]` and `&SlotMeta` of data nobody writes meanwhile.
unsafe impl Sync for Claim {}

impl Claim {
    fn new(pool: &Arc<Pool>, seq: u64) -> Self {
        let shared = &*pool.shared;
        let index = shared.index(seq);
        Self {
            pool: Arc::clone(pool),
            seq,
            meta: shared.region.slot_header(index).load_meta(),
            token: Some(shared.tokens[index].get()),
            bytes: shared.region.slot_ptr(index),
        }
    }

    /// The frame's metadata as committed.
    pub fn meta(&self) -> &SlotMeta {
        &self.meta
    }

    /// The frame's bytes, in place: exactly `meta().len` bytes from the start of the slot.
    pub fn bytes(&self) -> &[u8] {
        // `commit` checked `len <= slot_bytes`, so the cast is lossless and the slice in bounds.
        let len = self.meta.len as usize;
        // SAFETY: this claim's sequence is committed (Acquire load of `head > seq` in
        // `try_claim`) and the pool's gate is at most `seq` until the claim drops, so the
        // producer cannot be granted the slot again meanwhile. The memory is initialised and
        // `len <= slot_bytes <= stride`.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr(), len) }
    }

    /// The ring sequence number of this frame.
    pub fn sequence(&self) -> u64 {
        self.seq
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // End the tracked access (a no-op with std) before the slot is released.
        self.token = None;
        self.pool.release(self.seq);
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("sequence", &self.seq)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Puts items that finish out of order (compressed chunks, or [`Claim`]s themselves) back
/// into sequence order for the writer.
///
/// Holds at most as many items as are in flight; with a pool those are at most the ring's
/// slot count, so give [`with_capacity`](Self::with_capacity) the slot count and it never
/// allocates after that.
///
/// ```
/// use detflow_ring::Reorder;
///
/// let mut order = Reorder::new(10);
/// order.push(11, "b");
/// assert_eq!(order.pop(), None); // 10 is not here yet
/// order.push(10, "a");
/// assert_eq!(order.pop(), Some((10, "a")));
/// assert_eq!(order.pop(), Some((11, "b")));
/// ```
#[derive(Debug)]
pub struct Reorder<T> {
    /// The sequence `pop` returns next.
    next: u64,
    /// `window[i]` holds the item of sequence `next + i`, if it arrived.
    window: VecDeque<Option<T>>,
}

impl<T> Reorder<T> {
    /// Starts at sequence `first`.
    pub fn new(first: u64) -> Self {
        Self::with_capacity(first, 0)
    }

    /// Starts at sequence `first`, with room for `capacity` items in flight.
    pub fn with_capacity(first: u64, capacity: usize) -> Self {
        Self {
            next: first,
            window: VecDeque::with_capacity(capacity),
        }
    }

    /// Files the item of sequence `seq`.
    ///
    /// # Panics
    ///
    /// If `seq` was already popped or pushed.
    pub fn push(&mut self, seq: u64, item: T) {
        let offset = seq
            .checked_sub(self.next)
            .unwrap_or_else(|| panic!("sequence {seq} pushed after {} was popped", self.next - 1));
        let offset = usize::try_from(offset).expect("sequence gap fits in memory");
        if offset >= self.window.len() {
            self.window.resize_with(offset + 1, || None);
        }
        let cell = &mut self.window[offset];
        assert!(cell.is_none(), "sequence {seq} pushed twice");
        *cell = Some(item);
    }

    /// The item of the next sequence, if it has arrived.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let item = self.window.front_mut()?.take()?;
        self.window.pop_front();
        let seq = self.next;
        self.next += 1;
        Some((seq, item))
    }

    /// The sequence `pop` returns next.
    pub fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Items waiting for an earlier sequence.
    pub fn pending(&self) -> usize {
        self.window.iter().filter(|item| item.is_some()).count()
    }
}
