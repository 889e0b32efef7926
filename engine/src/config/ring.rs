//! `[ring]`: the pre-allocated frame slots between the detector and the writer, and how many
//! of them a run gets. Every slot is allocated and touched before the run, so the ring is sized
//! here against the frame size, the frames asked for and the memory the machine has.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::value::{parse, text};
use super::{ConfigError, bad};

/// The most slots a ring may be given.
pub const MAX_SLOTS: usize = 65_536;

/// Frame ring settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RingSettings {
    /// Frame slots in the ring between detector and writer (1 to 65536); 0 sizes it
    /// automatically: 32 MiB of slots, 8 to 64 of them, never more than the frames asked for,
    /// within a quarter of the available memory.
    #[arg(long = "ring-slots", value_name = "N")]
    pub slots: usize,
    /// When the writer falls behind: block (the detector waits; frames the detector itself
    /// cannot hold are counted by it) or drop-newest (the new frame is dropped and counted).
    #[arg(long = "ring-policy", value_name = "POLICY", value_parser = parse::<detflow_ring::Policy>)]
    #[serde(with = "text")]
    pub policy: detflow_ring::Policy,
    /// Put the ring in a shared mapping of this file (e.g. /dev/shm/detflow) so another
    /// process can read frames in place (examples/shm_reader.py).
    #[arg(long = "ring-shm", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm: Option<PathBuf>,
}

impl Default for RingSettings {
    fn default() -> Self {
        RingSettings {
            slots: 0,
            policy: detflow_ring::Policy::Block,
            shm: None,
        }
    }
}

impl RingSettings {
    /// Check the slot count and the shared-memory file; returns that file, if any (an empty
    /// path is none, as `--ring-shm ""` always was).
    pub fn validate(&self) -> Result<Option<PathBuf>, ConfigError> {
        if self.slots > MAX_SLOTS {
            return Err(bad(
                "ring-slots",
                self.slots,
                format!("expected 1 to {MAX_SLOTS} slots, or 0 for automatic"),
            ));
        }
        let Some(p) = self.shm.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() || p.is_dir() {
            return Err(bad(
                "ring-shm",
                p.display(),
                "expected a file path in an existing directory, for example /dev/shm/detflow",
            ));
        }
        Ok(Some(p.clone()))
    }

    /// The shared-memory file, if any (an empty path is none).
    pub fn shm_path(&self) -> Option<PathBuf> {
        self.shm.clone().filter(|p| !p.as_os_str().is_empty())
    }

    /// The slots asked for frames of `frame_bytes`: `slots`, or [`auto_slots`] for 0.
    pub fn slots_for(&self, frame_bytes: usize) -> usize {
        match self.slots {
            0 => auto_slots(frame_bytes),
            n => n,
        }
    }
}

/// The ring size used when none is given: as many slots as fit in [`AUTO_RING_BYTES`], 8 to
/// 64 of them; for frames over 32 MiB fewer than 8 (at least 4) so the ring stays within
/// 256 MiB. For 1024x1024 u16 frames that is 16 slots, which with the compressors' chunk
/// buffers holds about as many frames as areaDetector's file plugin queue (20). A larger ring
/// absorbs longer stalls of the writer, but every slot is faulted in before the first frame,
/// which costs time at each start (about 0.15 ms per MiB here, with huge pages), and cache
/// while it runs.
pub fn auto_slots(frame_bytes: usize) -> usize {
    let f = frame_bytes.max(1);
    (AUTO_RING_BYTES / f)
        .clamp(8, 64)
        .min((AUTO_RING_MAX_BYTES / f).max(4))
}

/// The memory an automatically sized ring aims at.
pub const AUTO_RING_BYTES: usize = 32 << 20;

/// The most memory an automatically sized ring of 8 slots or more takes.
const AUTO_RING_MAX_BYTES: usize = 256 << 20;

/// The ring may take at most `1 / RING_MEMORY_SHARE` of the memory the kernel reports as
/// available (MemAvailable): every slot is allocated and touched before the run, so a larger
/// ring would push the machine into swap or the OOM killer before the first frame.
pub const RING_MEMORY_SHARE: u64 = 4;

/// The ring cap when MemAvailable cannot be read (not Linux, no /proc).
pub const RING_MEMORY_FALLBACK: u64 = 8 << 30;

/// MemAvailable from /proc/meminfo, in bytes; `None` when it cannot be read.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The most bytes the ring may take on this machine now: a quarter of MemAvailable
/// ([`RING_MEMORY_SHARE`]), or [`RING_MEMORY_FALLBACK`] when MemAvailable is unknown.
pub fn ring_memory_cap() -> RingCap {
    match mem_available() {
        Some(available) => RingCap {
            bytes: available / RING_MEMORY_SHARE,
            available: Some(available),
        },
        None => RingCap {
            bytes: RING_MEMORY_FALLBACK,
            available: None,
        },
    }
}

/// How much memory the ring may take, and where that figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCap {
    /// Bytes the ring's slots may take in all.
    pub bytes: u64,
    /// MemAvailable when the cap was derived from it.
    pub available: Option<u64>,
}

impl std::fmt::Display for RingCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.available {
            Some(a) => write!(
                f,
                "{} MiB, a quarter of MemAvailable ({} MiB)",
                self.bytes >> 20,
                a >> 20
            ),
            None => write!(
                f,
                "{} MiB (MemAvailable is unknown on this system)",
                self.bytes >> 20
            ),
        }
    }
}

/// Bytes a ring slot of `frame_bytes` takes (slots are page-aligned).
fn slot_footprint(frame_bytes: usize) -> u64 {
    frame_bytes.max(1).next_multiple_of(4096) as u64
}

/// The slots a run's ring gets: `requested` (0: [`auto_slots`]), never more than `frames`
/// when that is finite (non-zero), and within `cap`. An automatic size shrinks to fit the
/// cap; a requested one that does not fit is refused, naming `ring-slots` and the cap.
pub fn fit_ring(
    requested: usize,
    frame_bytes: usize,
    frames: u64,
    cap: RingCap,
) -> Result<usize, ConfigError> {
    let by_frames = |n: usize| match usize::try_from(frames) {
        Ok(0) => n,
        Ok(f) => n.min(f),
        Err(_) => n,
    };
    let slot = slot_footprint(frame_bytes);
    let fitting = usize::try_from(cap.bytes / slot).unwrap_or(usize::MAX);
    if requested == 0 {
        let slots = by_frames(auto_slots(frame_bytes)).min(fitting);
        if slots == 0 {
            return Err(bad(
                "ring-slots",
                0,
                format!(
                    "not even one slot of {frame_bytes} bytes fits the ring's memory cap of {cap}"
                ),
            ));
        }
        return Ok(slots);
    }
    let slots = by_frames(requested);
    let need = slots as u128 * u128::from(slot);
    if need > u128::from(cap.bytes) {
        return Err(bad(
            "ring-slots",
            requested,
            format!(
                "{slots} slots of {frame_bytes} bytes need {} MiB; the ring is capped at {cap}: \
                 give --ring-slots {fitting} or fewer (TOML: [ring] slots)",
                need >> 20
            ),
        ));
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_sizes_shrink_for_large_frames() {
        assert_eq!(auto_slots(256 * 256 * 2), 64);
        assert_eq!(auto_slots(1024 * 1024 * 2), 16);
        assert_eq!(auto_slots(2048 * 2048 * 2), 8);
        assert_eq!(auto_slots(4096 * 4096 * 2), 8);
        assert_eq!(auto_slots(4096 * 4096 * 4), 4);
        assert_eq!(auto_slots(4096 * 4096 * 8), 4);
    }

    #[test]
    fn the_ring_fits_the_run_and_the_memory_cap() {
        let cap = |bytes: u64| RingCap {
            bytes,
            available: Some(bytes * RING_MEMORY_SHARE),
        };
        let mib2 = 1024 * 1024 * 2;
        // Never more slots than frames, requested or automatic; 0 frames keeps the request.
        assert_eq!(fit_ring(4000, mib2, 5, cap(1 << 30)), Ok(5));
        assert_eq!(fit_ring(0, mib2, 3, cap(1 << 30)), Ok(3));
        assert_eq!(fit_ring(100, mib2, 0, cap(1 << 30)), Ok(100));
        // A requested ring over the cap is refused, naming the setting and the cap.
        let e = fit_ring(4000, mib2, 0, cap(1 << 30)).unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("ring-slots", "4000"));
        assert!(
            e.reason
                .contains("1024 MiB, a quarter of MemAvailable (4096 MiB)")
                && e.reason.contains("--ring-slots 512 or fewer"),
            "{e}"
        );
        // An automatic ring shrinks to the cap; when not even one slot fits, it is refused.
        assert_eq!(fit_ring(0, mib2, 0, cap(10 * mib2 as u64)), Ok(10));
        assert_eq!(
            fit_ring(0, mib2, 0, cap(1 << 20)).unwrap_err().setting,
            "ring-slots"
        );
    }
}
