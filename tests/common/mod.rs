//! Helpers shared by the integration tests: running the binary, and the Python venv used by
//! the interop tests.

#![allow(dead_code)]

pub mod ca;
pub mod netns;
pub mod stream2;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{OnceLock, mpsc};

/// The `detflow` binary built for these tests.
pub fn detflow() -> Command {
    command(env!("CARGO_BIN_EXE_detflow"))
}

/// HDF5 opens files without O_CLOEXEC, and this test process opens HDF5 files (fixtures,
/// read-backs) while other tests of the same binary fork children. Between such a child's
/// fork and its exec the child holds a copy of the descriptor and its flock, and an H5Fopen
/// of that file in that moment fails with errno 11 (`the_replay_backend_conforms` did, 1 run
/// in 5 of the suite, even once every child marks inherited files close-on-exec). So the
/// test process's own HDF5 calls run without HDF5's file locks; the variable is set before
/// `main`, while the process has one thread, and [`command`] takes it away from the children,
/// so that detflow and h5py run with locks, as a user runs them.
#[used]
#[unsafe(link_section = ".init_array")]
static NO_HDF5_LOCKS_IN_THE_TEST_PROCESS: extern "C" fn() = {
    extern "C" fn set() {
        // SAFETY: this runs from .init_array, before main, while the process has a single
        // thread, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE") };
    }
    set
};

/// A command whose child inherits none of this test process's open files (HDF5's among
/// them, with their locks) and runs with HDF5's file locks: see
/// [`detflow_test_support::no_inherited_files`].
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    detflow_test_support::no_inherited_files(&mut cmd);
    cmd
}

/// Run `detflow` with `args`; returns the output whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    detflow()
        .args(args)
        .output()
        .expect("the detflow binary runs")
}

/// Parse the `--json` summary printed on stdout.
pub fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Python packages the interop tests need.
pub const PY_PACKAGES: &[&str] = &["numpy", "h5py", "nexusformat", "hdf5plugin"];

/// A Python interpreter in a virtual environment under target/ with [`PY_PACKAGES`]
/// installed. Made once per target directory; a failure panics with pip's output, because
/// interop tests must fail, not skip, when their reader cannot be installed.
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
        detflow_test_support::python_venv(&root, PY_PACKAGES)
    })
}

/// Run a Python script with the venv's interpreter and `args`; panics with its output if it
/// fails; returns stdout.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    detflow_test_support::run_step(
        Command::new(python()).arg("-c").arg(script).args(args),
        "python check",
    )
}

/// The seed's stack, pinned exactly as specs/scripts/requirements-bluesky-clients.txt (the
/// versions known to work together, specs/bluesky-clients.md §1), plus matplotlib for the
/// seed's `.plot.pcolormesh()`.
pub const BLUESKY_PACKAGES: &[&str] = &[
    "apstools==1.7.12",
    "area-detector-handlers==0.0.10",
    "bluesky==1.15.1",
    "caproto==1.3.0",
    "dask==2026.8.0",
    "databroker==1.2.5",
    "event-model==1.24.0",
    "h5py==3.16.0",
    "hdf5plugin==7.1.0",
    "intake==0.6.4",
    "networkx==3.6.1",
    "numpy==2.4.6",
    "ophyd==1.11.2",
    "pandas==3.1.1",
    "pyepics==3.5.10",
    "xarray==2026.9.0",
    "matplotlib==3.11.2",
];

/// Where [`BLUESKY_PACKAGES`] are installed: one venv for every test binary that needs them.
pub fn bluesky_venv_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-bluesky-venv")
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lines of `pipe` (a child's stdout or stderr), each sent on the returned channel as it
/// is read; the channel closes with the pipe.
pub fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// How long a test waits for an event before it fails: generous, for a loaded machine.
pub const EVENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Wait until `path` holds at least `bytes`: its writer has it and is writing frames to it.
/// Fails after [`EVENT_DEADLINE`].
pub fn wait_for_size(path: &Path, bytes: u64) {
    let t = std::time::Instant::now();
    while std::fs::metadata(path).map_or(0, |m| m.len()) < bytes {
        assert!(
            t.elapsed() < EVENT_DEADLINE,
            "{path:?} never reached {bytes} bytes in {EVENT_DEADLINE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Lines in `path` (0 while it does not exist).
pub fn lines_in(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

/// Wait until `path` (a `--refs` file: one line per frame written) has at least `n` lines;
/// returns the count seen. Fails, naming `what`, after [`EVENT_DEADLINE`].
pub fn wait_for_lines(path: &Path, n: u64, what: &str) -> u64 {
    let t = std::time::Instant::now();
    loop {
        let got = lines_in(path);
        if got >= n {
            return got;
        }
        assert!(
            t.elapsed() < EVENT_DEADLINE,
            "{what}: {path:?} has {got} lines, not {n}, after {EVENT_DEADLINE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
