//! Who may touch a file: the lock a writer holds on its file and on its space reserve for as
//! long as it writes them, and the checks that the file it writes is still there.
//!
//! A writer takes an open-file-description lock (`fcntl(F_OFD_SETLK)`, a write lock on the
//! whole file) on its target *before* anything can truncate it, and holds it until the file
//! is closed and renamed. A second writer of the same file (another `detflow acquire`, or
//! the daemon's capture) is refused before it changes a byte. We lock rather than write to
//! a temporary name and rename at the end, because a SWMR reader follows the file under its
//! final name while it is written, and because HDF5's own `flock` cannot do it: HDF5 drops
//! it in SWMR write mode, and `H5Fcreate(H5F_ACC_TRUNC)` truncates before it locks. An OFD
//! lock, unlike a classic `F_SETLK` lock, is not released when HDF5 closes its own
//! descriptor of the same file; on Linux it does not interact with `flock`, so HDF5's lock
//! keeps working beside it; and the kernel drops it when the holder dies, so a killed run
//! leaves no stale lock behind (its space reserve is then cleared by
//! [`remove_stale_reserves`], which uses the same lock to tell a live writer's reserve from
//! a dead one's).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::WriterError;

/// Try to take a write lock on the whole of `file`, owned by this open file description.
/// `Ok(false)`: another open file description holds a lock on it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock is plain old data; all-zero is a valid value that we then fill in.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as _;
    lk.l_whence = libc::SEEK_SET as _;
    lk.l_start = 0;
    lk.l_len = 0; // to the end of the file, however it grows
    // SAFETY: the descriptor is open for the duration of the call; `lk` is a valid flock
    // that the kernel only reads (F_OFD_SETLK), and l_pid is 0 as OFD locks require.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lk) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// `major:minor:inode` as `/proc/locks` and `/proc/PID/fdinfo` print a lock's file.
fn lock_key(meta: &std::fs::Metadata) -> String {
    let dev = meta.dev();
    format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    )
}

/// Which other process holds a lock on the file `file` is open on: `pid N (command line)`,
/// found through `/proc/*/fdinfo` (OFD locks show no pid in `/proc/locks`); this process
/// itself when another of its captures holds it. `None` when no holder can be seen (another
/// pid namespace, or it just let go).
pub fn lock_holder(file: &File) -> Option<String> {
    let key = format!(" {} ", lock_key(&file.metadata().ok()?));
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if info
                .lines()
                .any(|l| l.starts_with("lock:") && l.contains(&key))
            {
                let cmdline = std::fs::read(proc_entry.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmdline)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                return Some(if cmd.is_empty() {
                    format!("pid {pid}")
                } else {
                    format!("pid {pid} ({cmd})")
                });
            }
        }
    }
    None
}

/// The refusal for a file another writer holds.
fn busy(path: &Path, file: &File) -> WriterError {
    WriterError::Busy {
        path: path.to_path_buf(),
        holder: lock_holder(file).unwrap_or_else(|| "another process".into()),
    }
}

/// The lock a writer holds on the file it writes, from before it is created (or truncated)
/// until it is closed and renamed.
#[derive(Debug)]
pub(crate) struct TargetLock {
    /// Open on the file's inode, and holding the OFD lock on it.
    file: File,
    /// The name the file is written under.
    path: PathBuf,
    /// Whether this writer created the file (it did not exist before).
    pub(crate) created: bool,
}

impl TargetLock {
    /// Open `path` (creating it, empty, if missing) and lock it. Without `overwrite` an
    /// existing file is refused as [`WriterError::Exists`]; a file another writer holds is
    /// refused as [`WriterError::Busy`]. Either way nothing is changed on disk, except an
    /// empty file this call created, which stays only if another writer took it meanwhile.
    pub(crate) fn acquire(path: &Path, overwrite: bool) -> Result<TargetLock, WriterError> {
        let io_err = |source: io::Error| WriterError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).custom_flags(libc::O_NOFOLLOW);
        let (file, created) = match open.clone().create_new(true).mode(0o644).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !overwrite {
                    return Err(WriterError::Exists {
                        path: path.to_path_buf(),
                    });
                }
                (open.open(path).map_err(io_err)?, false)
            }
            Err(e) => return Err(io_err(e)),
        };
        match try_lock(&file) {
            Ok(true) => Ok(TargetLock {
                file,
                path: path.to_path_buf(),
                created,
            }),
            Ok(false) => Err(busy(path, &file)),
            Err(e) => {
                if created {
                    let _ = std::fs::remove_file(path);
                }
                Err(io_err(e))
            }
        }
    }

    /// Refuse to go on when the file was deleted (its directory removed) or `path` no longer
    /// names it (moved or replaced): what is written to it is lost.
    pub(crate) fn check_present(&self) -> Result<(), WriterError> {
        let vanished = |how: &'static str| WriterError::Vanished {
            path: self.path.clone(),
            how,
        };
        let held = self.file.metadata().map_err(|_| vanished("deleted"))?;
        if held.nlink() == 0 {
            return Err(vanished("deleted"));
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => Ok(()),
            _ => Err(vanished("moved or replaced")),
        }
    }

    /// Rename the file to `to`, unless `to` is a file another live writer holds.
    pub(crate) fn rename(&mut self, to: &Path) -> Result<(), WriterError> {
        // Hold the lock of the file being replaced across the rename, so no writer takes it
        // in between.
        let replaced = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(to)
        {
            Ok(f) => match try_lock(&f) {
                Ok(true) => Some(f),
                Ok(false) => return Err(busy(to, &f)),
                Err(source) => {
                    return Err(WriterError::Lock {
                        path: to.to_path_buf(),
                        source,
                    });
                }
            },
            Err(_) => None,
        };
        std::fs::rename(&self.path, to).map_err(|source| WriterError::Rename {
            from: self.path.clone(),
            to: to.to_path_buf(),
            source,
        })?;
        drop(replaced);
        self.path = to.to_path_buf();
        Ok(())
    }
}

/// Space held back beside an open file (`.NAME.detflow-reserve`), released before the file
/// is closed so that HDF5 can write its metadata even when the disk filled up. The writer
/// keeps it open and locked, so [`remove_stale_reserves`] leaves it alone while the writer
/// lives; its space stays allocated while it is open, even if someone unlinks it.
#[derive(Debug)]
pub(crate) struct SpaceReserve {
    file: File,
    path: PathBuf,
}

impl SpaceReserve {
    /// Create (or take over a stale) `path` holding `bytes` of allocated disk space.
    pub(crate) fn create(path: &Path, bytes: u64) -> io::Result<SpaceReserve> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)?;
        // Only a scan for stale reserves can hold it for a moment (the name comes from the
        // target, whose lock we hold); if it does, it may unlink the name, and the space
        // stays ours through the descriptor.
        let _ = try_lock(&file);
        let reserve = SpaceReserve {
            file,
            path: path.to_path_buf(),
        };
        reserve.file.set_len(0)?;
        // SAFETY: the fd is open for writing for the duration of the call.
        let rc =
            unsafe { libc::posix_fallocate(reserve.file.as_raw_fd(), 0, bytes as libc::off_t) };
        if rc != 0 {
            reserve.release();
            return Err(io::Error::from_raw_os_error(rc));
        }
        held_reserves().push(reserve.path.clone());
        Ok(reserve)
    }

    /// Give the space back: remove the name (if it is still ours) and close the file.
    pub(crate) fn release(self) {
        held_reserves().retain(|p| *p != self.path);
        let ours = match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The names of the space reserves this process holds now.
fn held_reserves() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remove the names of the space reserves this process holds, for a process about to end at
/// once (a second Ctrl-C) without closing its files: no `.NAME.detflow-reserve` is left
/// behind, and the space goes back when the process ends.
pub fn remove_own_reserves() {
    for path in held_reserves().drain(..) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `name` is a space reserve's file name (`.NAME.detflow-reserve`).
fn is_reserve_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".detflow-reserve") && name.len() > 17
}

/// Remove the space reserves in `dir` that no live writer holds (left by a killed run), and
/// say which. Reserves of writers still running are locked by them and left alone.
pub fn remove_stale_reserves(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_reserve_name) {
            continue;
        }
        let path = entry.path();
        // Write access: a write lock needs it.
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        if !matches!(try_lock(&file), Ok(true)) {
            continue; // a live writer's
        }
        // Remove it only if the name still names the file we locked.
        let same = match (file.metadata(), std::fs::symlink_metadata(&path)) {
            (Ok(held), Ok(named)) => {
                named.file_type().is_file()
                    && held.dev() == named.dev()
                    && held.ino() == named.ino()
            }
            _ => false,
        };
        if same && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.h5");
        let first = TargetLock::acquire(&path, false).unwrap();
        assert!(first.created);
        match TargetLock::acquire(&path, true) {
            Err(WriterError::Busy { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(matches!(
            TargetLock::acquire(&path, false),
            Err(WriterError::Exists { .. })
        ));
        drop(first);
        let again = TargetLock::acquire(&path, true).unwrap();
        assert!(!again.created);
    }

    #[test]
    fn a_deleted_or_moved_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.h5");
        let lock = TargetLock::acquire(&path, false).unwrap();
        lock.check_present().unwrap();
        std::fs::rename(&path, dir.path().join("b.h5")).unwrap();
        assert!(matches!(
            lock.check_present(),
            Err(WriterError::Vanished {
                how: "moved or replaced",
                ..
            })
        ));
        std::fs::remove_file(dir.path().join("b.h5")).unwrap();
        assert!(matches!(
            lock.check_present(),
            Err(WriterError::Vanished { how: "deleted", .. })
        ));
    }

    #[test]
    fn only_reserves_nobody_holds_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = SpaceReserve::create(&dir.path().join(".a.h5.detflow-reserve"), 4096).unwrap();
        let stale = dir.path().join(".b.h5.detflow-reserve");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(dir.path().join("c.detflow-reserve"), b"x").unwrap();
        assert_eq!(remove_stale_reserves(dir.path()), vec![stale.clone()]);
        assert!(!stale.exists());
        assert!(dir.path().join(".a.h5.detflow-reserve").exists());
        assert!(dir.path().join("c.detflow-reserve").exists());
        live.release();
        assert!(!dir.path().join(".a.h5.detflow-reserve").exists());
    }
}
