//! The ring's memory: a `#[repr(C)]` control header, one 64-byte header per slot, then the
//! page-aligned slot payloads, in one region that is either a heap allocation or a shared
//! mapping of a file (memmap2).
//!
//! The byte layout is the one documented in the crate docs ("Shared-memory layout"); the
//! constants and `const` assertions below pin it. Under loom the headers are loom atomics that
//! cannot live in raw memory, so they are boxed beside a heap payload instead (shared memory is
//! not modelled).

#[cfg(loom)]
use std::alloc::{self, Layout};
use std::path::Path;
#[cfg(not(loom))]
use std::path::PathBuf;
use std::ptr::NonNull;

use crate::RingError;
use crate::SlotMeta;
use crate::loom::{AtomicU64, Ordering};

/// Alignment of every slot's first byte, and the granularity of the slot stride.
pub const SLOT_ALIGN: usize = 4096;

/// First 8 bytes of a ring's memory (and of a shared-memory ring file).
pub const MAGIC: [u8; 8] = *b"DFLWRING";

/// Version of the byte layout; bumped on any incompatible change.
pub const LAYOUT_VERSION: u32 = 1;

/// Size of the control header: slot headers start at this offset.
pub const CONTROL_BYTES: usize = 256;

/// Size of one slot header.
pub const SLOT_HEADER_BYTES: usize = 64;

/// A slot's stamp while sequence `seq` is being written into it: odd.
pub(crate) const fn stamp_writing(seq: u64) -> u64 {
    2 * seq + 1
}

/// A slot's stamp once sequence `seq` is committed in it: even and non-zero.
pub(crate) const fn stamp_committed(seq: u64) -> u64 {
    2 * seq + 2
}

/// The ring's control header, at offset 0 of the region. All integers little-endian.
///
/// The fields up to `data_offset` are written once, before the magic, and never change. The
/// atomics after them are written by the producer only.
#[repr(C)]
pub(crate) struct ControlHeader {
    /// [`MAGIC`]; written last at creation.
    magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    version: u32,
    /// [`CONTROL_BYTES`].
    control_bytes: u32,
    /// Number of slots, at least 1.
    slots: u64,
    /// Usable bytes per slot, at least 1.
    slot_bytes: u64,
    /// Distance between slot payloads: `slot_bytes` rounded up to [`SLOT_ALIGN`].
    slot_stride: u64,
    /// Offset of slot header 0 ([`CONTROL_BYTES`]).
    slot_headers_offset: u64,
    /// Size of one slot header ([`SLOT_HEADER_BYTES`]).
    slot_header_bytes: u64,
    /// Offset of slot 0's payload, a multiple of [`SLOT_ALIGN`].
    data_offset: u64,
    /// 0 for `Policy::Block`, 1 for `Policy::DropNewest`.
    policy: u64,
    _reserved0: [u64; 7],
    /// Offset 128. Producer cursor: every sequence `< head` is committed; also the `produced`
    /// counter. Only the producer writes it (`Release`, after the slot's stamp).
    pub(crate) head: AtomicU64,
    /// Frames the producer dropped or the sensor could not deliver. Producer side only.
    pub(crate) dropped: AtomicU64,
    /// Largest occupancy (committed frames not yet released by the slowest lossless consumer)
    /// seen right after a commit, `0 ..= slots`. Producer only.
    pub(crate) high_water: AtomicU64,
    /// 0 while the producer lives, 1 once it was dropped (`Release`, after its last `head`).
    pub(crate) closed: AtomicU64,
    _reserved1: [u64; 12],
}

/// One slot's header: the seqlock stamp and the committed frame's metadata.
///
/// `stamp` is 0 before the slot's first grant, `2 s + 1` (odd) while sequence `s` is being
/// written, `2 s + 2` once `s` is committed. `meta` holds [`SlotMeta`] packed into six
/// little-endian words (see [`pack`]); it is written with relaxed atomic stores between the
/// odd and the even stamp, so a reader that sees the same even stamp before and after reading
/// it has read one frame's metadata, whole.
#[repr(C, align(64))]
pub(crate) struct SlotHeader {
    pub(crate) stamp: AtomicU64,
    pub(crate) meta: [AtomicU64; 6],
    _reserved: u64,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ControlHeader>() == CONTROL_BYTES);
    assert!(std::mem::offset_of!(ControlHeader, head) == 128);
    assert!(std::mem::offset_of!(ControlHeader, dropped) == 136);
    assert!(std::mem::offset_of!(ControlHeader, high_water) == 144);
    assert!(std::mem::offset_of!(ControlHeader, closed) == 152);
    assert!(std::mem::size_of::<SlotHeader>() == SLOT_HEADER_BYTES);
    assert!(std::mem::size_of::<SlotMeta>() == 48);
};

impl SlotHeader {
    #[cfg(loom)]
    fn new() -> Self {
        Self {
            stamp: AtomicU64::new(0),
            meta: std::array::from_fn(|_| AtomicU64::new(0)),
            _reserved: 0,
        }
    }

    /// Stores `meta` (relaxed: the stamp's Release store publishes it).
    pub(crate) fn store_meta(&self, meta: &SlotMeta) {
        for (cell, word) in self.meta.iter().zip(pack(meta)) {
            // Relaxed: ordered by the seqlock stamp (see the type docs).
            cell.store(word.to_le(), Ordering::Relaxed);
        }
    }

    /// Loads the metadata (relaxed: the caller orders it through `head` or the stamp).
    pub(crate) fn load_meta(&self) -> SlotMeta {
        // Relaxed: see above.
        unpack(std::array::from_fn(|i| {
            u64::from_le(self.meta[i].load(Ordering::Relaxed))
        }))
    }
}

/// [`SlotMeta`] as six words whose little-endian bytes are exactly `SlotMeta`'s `#[repr(C)]`
/// bytes on a little-endian machine.
pub(crate) fn pack(m: &SlotMeta) -> [u64; 6] {
    [
        m.frame_id,
        u64::from(m.epics_sec) | u64::from(m.epics_nsec) << 32,
        m.unix_time_s.to_bits(),
        u64::from(m.width) | u64::from(m.height) << 32,
        u64::from(m.pixel_type) | u64::from(m.color_mode) << 32,
        m.len,
    ]
}

/// The inverse of [`pack`].
pub(crate) fn unpack(w: [u64; 6]) -> SlotMeta {
    // The truncating casts take the low and high halves of a packed word.
    SlotMeta {
        frame_id: w[0],
        epics_sec: w[1] as u32,
        epics_nsec: (w[1] >> 32) as u32,
        unix_time_s: f64::from_bits(w[2]),
        width: w[3] as u32,
        height: (w[3] >> 32) as u32,
        pixel_type: w[4] as u32,
        color_mode: (w[4] >> 32) as u32,
        len: w[5],
    }
}

/// Sizes derived from a configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) slots: usize,
    pub(crate) slot_bytes: usize,
    pub(crate) stride: usize,
    pub(crate) data_offset: usize,
    pub(crate) total: usize,
}

impl Geometry {
    pub(crate) fn new(slots: usize, slot_bytes: usize) -> Result<Self, RingError> {
        if slots == 0 {
            return Err(RingError::InvalidSlots { slots });
        }
        if slot_bytes == 0 {
            return Err(RingError::InvalidSlotBytes { slot_bytes });
        }
        let too_large = || RingError::TooLarge { slots, slot_bytes };
        let stride = slot_bytes
            .checked_next_multiple_of(SLOT_ALIGN)
            .ok_or_else(too_large)?;
        let data_offset = slots
            .checked_mul(SLOT_HEADER_BYTES)
            .and_then(|h| h.checked_add(CONTROL_BYTES))
            .and_then(|h| h.checked_next_multiple_of(SLOT_ALIGN))
            .ok_or_else(too_large)?;
        let total = slots
            .checked_mul(stride)
            .and_then(|d| d.checked_add(data_offset))
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        Ok(Self {
            slots,
            slot_bytes,
            stride,
            data_offset,
            total,
        })
    }
}

/// Who owns the region's bytes.
enum Backing {
    /// `std::alloc` with this layout; freed on drop (loom models only).
    #[cfg(loom)]
    Heap(Layout),
    /// A private anonymous mapping (huge pages where the kernel gives them); unmapped on drop.
    #[cfg(not(loom))]
    Anon(memmap2::MmapMut),
    /// A shared mapping of a file; unmapped on drop, the file is left in place.
    #[cfg(not(loom))]
    File {
        _map: memmap2::MmapMut,
        path: PathBuf,
    },
}

/// The ring's memory. Who may touch which slot when is decided by the cursors in
/// [`Shared`](crate::shared::Shared); this type only owns the bytes.
pub(crate) struct Region {
    /// Start of the region; `SLOT_ALIGN`-aligned, `geometry.total` bytes, all initialised.
    base: NonNull<u8>,
    backing: Backing,
    pub(crate) geometry: Geometry,
    #[cfg(loom)]
    control: Box<ControlHeader>,
    #[cfg(loom)]
    slot_headers: Box<[SlotHeader]>,
}

impl Region {
    /// Allocates (or maps `shm`) the region, touches every page so no page fault happens
    /// during acquisition, and writes the control header.
    pub(crate) fn new(
        geometry: Geometry,
        policy_code: u64,
        shm: Option<&Path>,
    ) -> Result<Self, RingError> {
        let (base, backing) = match shm {
            #[cfg(not(loom))]
            None => {
                let mut map = map_anon(geometry.total)?;
                let base = NonNull::new(map.as_mut_ptr()).expect("a mapping is never at null");
                (base, Backing::Anon(map))
            }
            #[cfg(loom)]
            None => {
                let layout = Layout::from_size_align(geometry.total, SLOT_ALIGN).map_err(|_| {
                    RingError::TooLarge {
                        slots: geometry.slots,
                        slot_bytes: geometry.slot_bytes,
                    }
                })?;
                // SAFETY: `layout` has a non-zero size (`total >= data_offset >= 4096`).
                let base = unsafe { alloc::alloc(layout) };
                let base = NonNull::new(base).ok_or(RingError::OutOfMemory {
                    bytes: geometry.total,
                })?;
                (base, Backing::Heap(layout))
            }
            #[cfg(not(loom))]
            Some(path) => {
                let (mut map, path) = map_file(path, geometry.total)?;
                let base = NonNull::new(map.as_mut_ptr()).expect("a mapping is never at null");
                (
                    base,
                    Backing::File {
                        _map: map,
                        path: path.to_owned(),
                    },
                )
            }
            #[cfg(loom)]
            Some(_) => unreachable!("shared memory is not modelled under loom"),
        };
        // SAFETY: `base` points to `total` writable bytes owned by nobody else yet. Zeroing
        // them initialises the memory (a `&[u8]` over it is then valid, and the headers are
        // valid atomics, all zero) and faults every page in now rather than during the run.
        unsafe { fault_in_zeroed(base, geometry.total, &backing) };
        let region = Self {
            base,
            backing,
            geometry,
            #[cfg(loom)]
            control: Box::new(ControlHeader::zeroed()),
            #[cfg(loom)]
            slot_headers: (0..geometry.slots).map(|_| SlotHeader::new()).collect(),
        };
        #[cfg(not(loom))]
        region.write_control(policy_code);
        #[cfg(loom)]
        let _ = policy_code;
        Ok(region)
    }

    #[cfg(not(loom))]
    fn write_control(&self, policy_code: u64) {
        let g = self.geometry;
        // SAFETY: nobody else holds a reference into the region yet (it was just created and
        // is not shared), so this exclusive access is unique; the header fits (total >= 4096)
        // and offset 0 is page-aligned.
        let control = unsafe { &mut *self.base.as_ptr().cast::<ControlHeader>() };
        control.version = LAYOUT_VERSION.to_le();
        control.control_bytes = (CONTROL_BYTES as u32).to_le();
        control.slots = (g.slots as u64).to_le();
        control.slot_bytes = (g.slot_bytes as u64).to_le();
        control.slot_stride = (g.stride as u64).to_le();
        control.slot_headers_offset = (CONTROL_BYTES as u64).to_le();
        control.slot_header_bytes = (SLOT_HEADER_BYTES as u64).to_le();
        control.data_offset = (g.data_offset as u64).to_le();
        control.policy = policy_code.to_le();
        // The magic goes last, so a reader that polls for it finds the sizes already there.
        crate::loom::fence(Ordering::Release);
        control.magic = MAGIC;
    }

    /// The control header.
    pub(crate) fn control(&self) -> &ControlHeader {
        #[cfg(loom)]
        {
            &self.control
        }
        #[cfg(not(loom))]
        // SAFETY: offset 0 of the region holds a `ControlHeader` (initialised in `new`, all
        // later writes go through its atomics), aligned because the region is page-aligned.
        unsafe {
            &*self.base.as_ptr().cast::<ControlHeader>()
        }
    }

    /// The header of slot `index`.
    pub(crate) fn slot_header(&self, index: usize) -> &SlotHeader {
        debug_assert!(index < self.geometry.slots);
        #[cfg(loom)]
        {
            &self.slot_headers[index]
        }
        #[cfg(not(loom))]
        // SAFETY: `CONTROL_BYTES + index * 64 < data_offset <= total` for `index < slots`, the
        // offset is 64-aligned, and the header was initialised (zeroed) in `new`; all writes
        // after that go through its atomics.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(CONTROL_BYTES + index * SLOT_HEADER_BYTES)
                .cast::<SlotHeader>()
        }
    }

    /// Pointer to the first payload byte of slot `index`.
    pub(crate) fn slot_ptr(&self, index: usize) -> NonNull<u8> {
        debug_assert!(index < self.geometry.slots);
        // SAFETY: `data_offset + index * stride < total` for `index < slots`: the offset stays
        // inside the region and cannot overflow (the sizes were checked in `Geometry::new`).
        unsafe {
            self.base
                .add(self.geometry.data_offset + index * self.geometry.stride)
        }
    }

    /// The file this region maps, if it is shared memory.
    pub(crate) fn shm_path(&self) -> Option<&Path> {
        match &self.backing {
            #[cfg(loom)]
            Backing::Heap(_) => None,
            #[cfg(not(loom))]
            Backing::Anon(_) => None,
            #[cfg(not(loom))]
            Backing::File { path, .. } => Some(path),
        }
    }
}

#[cfg(loom)]
impl ControlHeader {
    fn zeroed() -> Self {
        Self {
            magic: [0; 8],
            version: 0,
            control_bytes: 0,
            slots: 0,
            slot_bytes: 0,
            slot_stride: 0,
            slot_headers_offset: 0,
            slot_header_bytes: 0,
            data_offset: 0,
            policy: 0,
            _reserved0: [0; 7],
            head: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            _reserved1: [0; 12],
        }
    }
}

impl Drop for Region {
    #[allow(
        irrefutable_let_patterns,
        reason = "under loom there is no file backing"
    )]
    fn drop(&mut self) {
        #[cfg(loom)]
        if let Backing::Heap(layout) = self.backing {
            // SAFETY: `base` was returned by `alloc` with exactly `layout` and is freed only
            // here. (A file mapping unmaps itself when `_map` drops.)
            unsafe { alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

/// A private anonymous mapping of `total` bytes, zero-filled by the kernel, asking for
/// transparent huge pages: a 2 MiB page per fault instead of 512 small ones, both when the ring
/// is faulted in at start (a 128 MiB ring: 64 faults, not 32768) and in the TLB while frames
/// are copied in and compressed.
#[cfg(not(loom))]
fn map_anon(total: usize) -> Result<memmap2::MmapMut, RingError> {
    let map = memmap2::MmapOptions::new()
        .len(total)
        .map_anon()
        .map_err(|_| RingError::OutOfMemory { bytes: total })?;
    // Only a hint: where THP is off ("never") the ring works the same on small pages.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// Make every page of the `total` bytes at `base` resident, and zero. An anonymous or fresh
/// file mapping is already zero: the kernel faults it in (`MADV_POPULATE_WRITE`, Linux 5.14),
/// or one write per page does where that is refused. A heap block is written in full.
///
/// # Safety
///
/// `base` points to `total` writable bytes that nobody else references yet.
unsafe fn fault_in_zeroed(base: NonNull<u8>, total: usize, backing: &Backing) {
    match backing {
        #[cfg(loom)]
        Backing::Heap(_) => {
            // SAFETY: the caller's contract.
            unsafe { base.as_ptr().write_bytes(0, total) }
        }
        #[cfg(not(loom))]
        Backing::Anon(map) | Backing::File { _map: map, .. } => {
            #[cfg(target_os = "linux")]
            if map.advise(memmap2::Advice::PopulateWrite).is_ok() {
                return;
            }
            let _ = map;
            for offset in (0..total).step_by(4096) {
                // SAFETY: offset < total, inside the caller's writable bytes; the page is
                // zero already, so writing zero keeps its contents.
                unsafe { base.as_ptr().add(offset).write_volatile(0) };
            }
        }
    }
}

/// Creates (or truncates) `path`, sizes it to `total` bytes and maps it shared.
#[cfg(not(loom))]
fn map_file(path: &Path, total: usize) -> Result<(memmap2::MmapMut, &Path), RingError> {
    let err = |what: &str, e: std::io::Error| RingError::Shm {
        path: path.to_owned(),
        message: format!("{what}: {e}"),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| err("cannot create", e))?;
    file.set_len(total as u64)
        .map_err(|e| err(&format!("cannot size to {total} bytes"), e))?;
    // SAFETY: memmap2's contract: the file must not be truncated or resized by anyone while
    // mapped. We created it just now and the crate docs tell other processes to open it
    // read-only; the ring never resizes it.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| err("cannot map", e))?;
    Ok((map, path))
}
