//! The reading side of a shared-memory ring for another process: maps the file read-only and
//! reads frames through the per-slot seqlock. It never holds the producer back.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::layout::{
    CONTROL_BYTES, ControlHeader, Geometry, LAYOUT_VERSION, MAGIC, SLOT_HEADER_BYTES, SlotHeader,
    stamp_committed,
};
use crate::loom::{Ordering, fence};
use crate::{RingError, SlotMeta};

/// A frame read from a shared-memory ring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShmFrame {
    /// Its ring sequence number.
    pub sequence: u64,
    /// Its metadata.
    pub meta: SlotMeta,
}

/// A read-only view of a ring that another process placed in shared memory
/// ([`RingConfig::shm`](crate::RingConfig::shm)).
pub struct ShmReader {
    map: memmap2::Mmap,
    path: PathBuf,
    geometry: Geometry,
}

impl ShmReader {
    /// Maps `path` and checks its magic, version and sizes.
    ///
    /// # Errors
    ///
    /// [`RingError::Shm`] when the file cannot be opened or mapped, [`RingError::BadLayout`]
    /// when it is not (yet) a ring of [`LAYOUT_VERSION`] (the magic is written last, so a file
    /// being created reads as not a ring until it is complete).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RingError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| RingError::Shm {
            path: path.to_owned(),
            message: format!("cannot open: {e}"),
        })?;
        // SAFETY: memmap2's contract: nobody truncates the file while it is mapped. The
        // producer sizes it once, before writing the magic we check below, and never again.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| RingError::Shm {
            path: path.to_owned(),
            message: format!("cannot map: {e}"),
        })?;
        let bad = |reason: String| RingError::BadLayout {
            path: path.to_owned(),
            reason,
        };
        if map.len() < CONTROL_BYTES || map[..8] != MAGIC {
            return Err(bad("no magic (not a ring, or still being created)".into()));
        }
        fence(Ordering::Acquire);
        let u32_at = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != LAYOUT_VERSION {
            return Err(bad(format!(
                "layout version {version}, this reader knows {LAYOUT_VERSION}"
            )));
        }
        let size = |v: u64| usize::try_from(v).map_err(|_| bad(format!("size {v} too large")));
        let geometry =
            Geometry::new(size(u64_at(16))?, size(u64_at(24))?).map_err(|e| bad(e.to_string()))?;
        let expected = [
            (12, u64::from(u32_at(12)), CONTROL_BYTES),
            (32, u64_at(32), geometry.stride),
            (40, u64_at(40), CONTROL_BYTES),
            (48, u64_at(48), SLOT_HEADER_BYTES),
            (56, u64_at(56), geometry.data_offset),
        ];
        for (offset, found, want) in expected {
            if found != want as u64 {
                return Err(bad(format!(
                    "header field at {offset} is {found}, expected {want}"
                )));
            }
        }
        if map.len() < geometry.total {
            return Err(bad(format!(
                "file is {} bytes, the layout needs {}",
                map.len(),
                geometry.total
            )));
        }
        Ok(Self {
            map,
            path: path.to_owned(),
            geometry,
        })
    }

    fn control(&self) -> &ControlHeader {
        // SAFETY: the mapping is page-aligned, at least `CONTROL_BYTES` long (checked in
        // `open`) and offset 0 holds the control header; the producer writes its fields only
        // through atomics, which we only load.
        unsafe { &*self.map.as_ptr().cast::<ControlHeader>() }
    }

    fn slot_header(&self, index: usize) -> &SlotHeader {
        assert!(index < self.geometry.slots);
        // SAFETY: `CONTROL_BYTES + index * 64 < data_offset <= map.len()` (checked in `open`),
        // 64-aligned; the producer writes slot headers only through atomics.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(CONTROL_BYTES + index * SLOT_HEADER_BYTES)
                .cast::<SlotHeader>()
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.geometry.slots
    }

    /// Usable bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.geometry.slot_bytes
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames committed so far; the newest is `produced() - 1`.
    pub fn produced(&self) -> u64 {
        // Acquire: pairs with the producer's Release store; the frames below are visible.
        self.control().head.load(Ordering::Acquire)
    }

    /// Frames the producer dropped so far.
    pub fn dropped(&self) -> u64 {
        // Relaxed: a counter.
        self.control().dropped.load(Ordering::Relaxed)
    }

    /// True once the producer is gone.
    pub fn is_closed(&self) -> bool {
        // Acquire: as in `Consumer::next_timeout`.
        self.control().closed.load(Ordering::Acquire) != 0
    }

    /// Copies sequence `seq` into `buf` (replacing its contents), or `None` when it is not
    /// committed yet or was overwritten before or while it was copied.
    pub fn read(&self, seq: u64, buf: &mut Vec<u8>) -> Option<ShmFrame> {
        if seq >= self.produced() {
            return None;
        }
        let index = (seq % self.geometry.slots as u64) as usize;
        let header = self.slot_header(index);
        let stamp = stamp_committed(seq);
        // Acquire: pairs with the producer's Release store of the committed stamp.
        if header.stamp.load(Ordering::Acquire) != stamp {
            return None;
        }
        let meta = header.load_meta();
        let len = usize::try_from(meta.len)
            .ok()
            .filter(|&len| len <= self.geometry.slot_bytes)?;
        let start = self.geometry.data_offset + index * self.geometry.stride;
        buf.clear();
        buf.reserve(len);
        // SAFETY: `start + len <= total <= map.len()`; `buf` has room for `len` bytes and is
        // not in the mapping. The producer may be rewriting the slot meanwhile: we copy with
        // volatile reads and keep the copy only if the stamp is unchanged afterwards (the
        // seqlock check below), like `LossySlot::read_into`.
        unsafe {
            crate::lossy::copy_volatile(self.map.as_ptr().add(start), buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        // Acquire fence: see `lossy::still_stamped`.
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence.
        (header.stamp.load(Ordering::Relaxed) == stamp).then_some(ShmFrame {
            sequence: seq,
            meta,
        })
    }

    /// Copies the newest frame that can be read intact into `buf`; `None` when no frame was
    /// committed yet (or the producer overwrote every candidate while it was read).
    pub fn latest(&self, buf: &mut Vec<u8>) -> Option<ShmFrame> {
        let head = self.produced();
        let oldest = head.saturating_sub(self.geometry.slots as u64);
        (oldest..head).rev().find_map(|seq| self.read(seq, buf))
    }
}

impl fmt::Debug for ShmReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmReader")
            .field("path", &self.path)
            .field("slots", &self.geometry.slots)
            .field("slot_bytes", &self.geometry.slot_bytes)
            .finish()
    }
}
