//! How much the disk can still take, asked of the file system only when it matters: a
//! `statvfs` per frame costs a path lookup in the kernel, so the writer keeps the last answer
//! and counts down what it wrote since, asking again when that estimate runs low or grows old.

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

/// Below this many bytes of estimated free space (beyond the frame) the file system is asked
/// before every frame, so a disk that is nearly full stops the writer at exactly the frame it
/// cannot take.
const ASK_EVERY_FRAME_BELOW: u64 = 1 << 30;

/// The oldest answer trusted while space is plentiful: other writers fill the same disk.
const MAX_AGE: Duration = Duration::from_millis(250);

/// The free space of the file system holding one directory.
#[derive(Debug)]
pub(crate) struct FreeSpace {
    /// The directory, NUL-terminated once; `None` when its name holds a NUL (never asked).
    dir: Option<CString>,
    /// The last answer and when it came, less what was written since.
    known: Option<(u64, Instant)>,
}

impl FreeSpace {
    pub(crate) fn new(dir: &Path) -> Self {
        FreeSpace {
            dir: CString::new(dir.as_os_str().as_encoded_bytes()).ok(),
            known: None,
        }
    }

    /// Free bytes if fewer than `needed`, else `None`. The file system is asked when the
    /// estimate is older than [`MAX_AGE`] or would leave less than [`ASK_EVERY_FRAME_BELOW`];
    /// otherwise the estimate answers. Where it cannot be asked, any write is let through.
    pub(crate) fn short_of(&mut self, needed: u64) -> Option<u64> {
        let fresh = match self.known {
            Some((free, at)) if free >= needed + ASK_EVERY_FRAME_BELOW => at.elapsed() < MAX_AGE,
            _ => false,
        };
        if !fresh {
            self.known = self.ask().map(|free| (free, Instant::now()));
        }
        let (free, _) = self.known?;
        (free < needed).then_some(free)
    }

    /// `bytes` were written: the estimate goes down by as much.
    pub(crate) fn spent(&mut self, bytes: u64) {
        if let Some((free, _)) = &mut self.known {
            *free = free.saturating_sub(bytes);
        }
    }

    /// Bytes available to this process, from `statvfs`.
    fn ask(&self) -> Option<u64> {
        let dir = self.dir.as_ref()?;
        // SAFETY: statvfs is plain old data that statvfs() fills on success; dir is
        // NUL-terminated.
        let st = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(dir.as_ptr(), &mut st) != 0 {
                return None;
            }
            st
        };
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plenty_of_space_is_asked_again_only_when_old_and_short_space_every_time() {
        let dir = std::env::temp_dir();
        let mut space = FreeSpace::new(&dir);
        assert_eq!(space.short_of(1), None, "the temp dir has a byte free");
        let (free, at) = space.known.expect("asked");
        // Pretend the disk is nearly full: the next check asks again (and sees the truth).
        space.known = Some((ASK_EVERY_FRAME_BELOW / 2, at));
        assert_eq!(space.short_of(1), None);
        assert!(
            space.known.unwrap().1 > at,
            "asked again when space looked low"
        );
        // Plenty, and fresh: answered from the estimate, counting down what was written.
        let plenty = free + 2 * ASK_EVERY_FRAME_BELOW;
        space.known = Some((plenty + 10, Instant::now()));
        space.spent(10);
        assert_eq!(space.known.unwrap().0, plenty);
        assert_eq!(
            space.short_of(free + 1),
            None,
            "from the estimate, not asked"
        );
        // The same estimate grown old: the file system is asked, and has less than that.
        space.known = Some((plenty, Instant::now() - MAX_AGE));
        assert!(space.short_of(free + ASK_EVERY_FRAME_BELOW).is_some());
        // An estimate short of the frame is always checked with the file system.
        space.known = Some((5, Instant::now()));
        assert_eq!(
            space.short_of(10),
            None,
            "the real disk has more than 10 bytes"
        );
    }

    #[test]
    fn a_directory_that_cannot_be_asked_lets_writes_through() {
        let mut space = FreeSpace::new(Path::new("/nonexistent/detflow/dir"));
        assert_eq!(space.short_of(u64::MAX), None);
    }
}
