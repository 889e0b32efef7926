//! What several crates' tests need alike: a Python virtual environment with the packages an
//! interop test reads with (h5py, numpy, pyepics …), and running a client scenario with a
//! deadline. A dev-dependency only.
//!
//! Interop tests must fail, never skip, when their reader cannot be installed: every step
//! here panics with the command's output when it fails.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Keep the test process's open files out of `cmd`'s child.
///
/// HDF5 opens files without O_CLOEXEC, and a test binary opens HDF5 files on some threads
/// while it spawns children on others. A child that inherits such a descriptor holds that
/// file's HDF5 lock (an flock) for its whole life, so the next H5Fopen of the file fails with
/// EAGAIN ("unable to lock file"): `the_replay_backend_conforms` failed so, once in two runs
/// of the suite, while another test's `detflow acquire` was running. The child marks every
/// descriptor above stderr close-on-exec before it runs the program. It also runs with
/// HDF5's file locks even where the test process turned them off for itself
/// (`HDF5_USE_FILE_LOCKING`), as a user runs it.
pub fn no_inherited_files(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    cmd.env_remove("HDF5_USE_FILE_LOCKING");
    /// CLOSE_RANGE_CLOEXEC (linux/close_range.h): mark rather than close, so that std's own
    /// exec-error pipe still works until exec.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: the closure makes one async-signal-safe system call and touches no memory of
    // the parent's, as pre_exec requires; descriptors 0-2 are already the child's stdio.
    unsafe {
        cmd.pre_exec(|| {
            let rc = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Run `cmd`; panic with its output, naming `what`, unless it succeeds. Returns stdout.
pub fn run_step(cmd: &mut Command, what: &str) -> String {
    let out = no_inherited_files(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The interpreter of a venv at `root` with `packages` pip-installed, made if missing.
///
/// A stamp file named after a hash of the package list (a long list would not fit in a file
/// name) marks a finished venv and holds the list, so changing the list
/// rebuilds it. The venv is built in a private folder and renamed into place: test binaries
/// racing here each build their own, and one rename wins.
pub fn python_venv(root: &Path, packages: &[&str]) -> PathBuf {
    // FNV-1a: stable across runs and Rust versions, unlike the std hasher.
    let hash = packages
        .join("\n")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let stamp = format!("installed-{hash:016x}");
    let py = root.join("bin").join("python");
    if root.join(&stamp).exists() {
        return py;
    }
    let tmp = root.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    run_step(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "python3 -m venv (interop tests need python3 with venv)",
    );
    run_step(
        Command::new(tmp.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
        &format!("pip install {}", packages.join(" ")),
    );
    std::fs::write(tmp.join(&stamp), packages.join("\n")).expect("the stamp file is written");
    let _ = std::fs::remove_dir_all(root);
    if std::fs::rename(&tmp, root).is_err() {
        // Another process won the race; use its venv.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(
        py.exists(),
        "{} missing after the venv was set up",
        py.display()
    );
    py
}

/// Spawn `cmd` with its stdout and stderr piped, collect both, and kill it at `deadline`.
/// Returns the exit status (`None` when it was killed), stdout and stderr.
pub fn run_with_deadline(
    cmd: &mut Command,
    deadline: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut child = no_inherited_files(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = read_all(child.stdout.take().expect("stdout is piped"));
    let err = read_all(child.stderr.take().expect("stderr is piped"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let join = |h: std::thread::JoinHandle<String>| h.join().unwrap_or_default();
    (status, join(out), join(err))
}

/// Read `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).ok();
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
