//! Slot memory and slot metadata: the storage the producer writes into and consumers read from.
//!
//! All payload bytes live in one allocation of `slots * stride` bytes, each slot starting on a
//! 4096-byte boundary (the page size, and the alignment a DMA engine or `O_DIRECT` write wants).
//! Metadata lives beside it in an array of [`SlotHeader`]s, one per slot.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::RingError;
use crate::loom::UnsafeCell;

/// Alignment of every slot's first byte, and the granularity of the slot stride.
pub const SLOT_ALIGN: usize = 4096;

/// What the producer says about one committed frame, stored beside the slot's bytes.
///
/// Plain `#[repr(C)]` data with no padding (48 bytes), so the same layout can later be placed
/// in shared memory and read by another process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotMeta {
    /// The detector's frame number (areaDetector `UniqueId`); any value, not checked by the ring.
    pub frame_id: u64,
    /// EPICS timestamp seconds (since 1990-01-01 UTC).
    pub epics_sec: u32,
    /// EPICS timestamp nanoseconds, `0 .. 1_000_000_000`.
    pub epics_nsec: u32,
    /// Acquisition time in seconds since the Unix epoch (areaDetector `TimeStamp`).
    pub unix_time_s: f64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// areaDetector `NDDataType` code (0 Int8, 1 UInt8, ... 9 Float64).
    pub pixel_type: u32,
    /// areaDetector `NDColorMode` code (0 Mono, 1 Bayer, 2 RGB1, ...).
    pub color_mode: u32,
    /// Valid bytes at the start of the slot, `0 ..= slot_bytes`; [`ReadSlot::bytes`] returns
    /// exactly this many.
    ///
    /// [`ReadSlot::bytes`]: crate::ReadSlot::bytes
    pub len: u64,
}

/// Per-slot control data.
///
/// The metadata cell is written only by the producer while it holds the slot's grant and read
/// only by the consumer while it holds the slot's read grant; the cursor protocol (crate docs)
/// keeps those two periods apart. Under loom, the pointer taken from this cell for the whole
/// grant also stands for the slot's bytes, so a model catches any overlap of writer and reader.
/// Aligned to 64 bytes so neighbouring slots' headers never share a cache line; the shared
/// memory placement will add a seqlock word here.
#[repr(C, align(64))]
pub(crate) struct SlotHeader {
    pub(crate) meta: UnsafeCell<SlotMeta>,
}

impl SlotHeader {
    pub(crate) fn new() -> Self {
        Self {
            meta: UnsafeCell::new(SlotMeta::default()),
        }
    }
}

/// One contiguous, page-aligned, pre-faulted allocation holding every slot's bytes.
///
/// The struct only owns the memory; who may touch which slot when is decided by the cursors in
/// [`Shared`](crate::shared::Shared).
pub(crate) struct SlotMemory {
    /// Start of the allocation; `SLOT_ALIGN`-aligned, `layout.size()` bytes, all initialised.
    base: NonNull<u8>,
    layout: Layout,
    /// Distance between slot starts: `slot_bytes` rounded up to a multiple of `SLOT_ALIGN`.
    stride: usize,
    /// Number of slots, at least 1.
    slots: usize,
}

impl SlotMemory {
    /// Allocates `slots` slots of at least `slot_bytes` bytes each and touches every page, so no
    /// page fault happens during acquisition.
    pub(crate) fn new(slots: usize, slot_bytes: usize) -> Result<Self, RingError> {
        if slots == 0 {
            return Err(RingError::InvalidSlots { slots });
        }
        if slot_bytes == 0 {
            return Err(RingError::InvalidSlotBytes { slot_bytes });
        }
        let too_large = RingError::TooLarge { slots, slot_bytes };
        let stride = slot_bytes
            .checked_next_multiple_of(SLOT_ALIGN)
            .ok_or(too_large)?;
        let size = slots.checked_mul(stride).ok_or(too_large)?;
        let layout = Layout::from_size_align(size, SLOT_ALIGN).map_err(|_| too_large)?;
        // SAFETY: `layout` has a non-zero size (slots >= 1, stride >= SLOT_ALIGN).
        let base = unsafe { alloc::alloc(layout) };
        let base = NonNull::new(base).ok_or(RingError::OutOfMemory { bytes: size })?;
        // SAFETY: `base` points to `size` writable bytes just allocated and owned by nobody
        // else. Writing them initialises the memory (a `&[u8]` over it is then valid) and
        // faults every page in now rather than on the first lap of acquisition.
        unsafe { base.as_ptr().write_bytes(0, size) };
        Ok(Self {
            base,
            layout,
            stride,
            slots,
        })
    }

    /// Pointer to the first byte of slot `index`.
    ///
    /// # Panics
    ///
    /// In debug builds, if `index >= slots`.
    pub(crate) fn slot_ptr(&self, index: usize) -> NonNull<u8> {
        debug_assert!(index < self.slots);
        // SAFETY: `index < slots`, so `index * stride < slots * stride = layout.size()`: the
        // offset stays inside the allocation and cannot overflow (the product was checked).
        unsafe { self.base.add(index * self.stride) }
    }

    /// Distance between the starts of consecutive slots.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
}

impl Drop for SlotMemory {
    fn drop(&mut self) {
        // SAFETY: `base` was returned by `alloc` with exactly `layout` and is freed only here.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}
