//! `detflow serve` driven over Channel Access by the Python clients beamlines run, unchanged:
//!
//! * the seed, a real user's apstools/ophyd/bluesky/databroker session
//!   (`tests/serve/ad-custom-hdf5-filename.txt`, its code run as written),
//! * ophyd-async's `SimDetector` with the HDF writer, in a `bp.count` and a fly scan,
//! * a pyepics `camonitor` of `cam1:ArrayCounter_RBV` during a 50-frame acquisition.
//!
//! Each test runs `tests/serve/harness.py` inside fresh network, mount and PID namespaces
//! (`unshare`; we are root in CI): `lo` only, a private tmpfs on `/tmp` (the seed writes to
//! `/tmp/adsimdet/...` and reads through `/tmp/docker_ioc/iocad/tmp`), and every process
//! killed with the namespace if the test gives up. The harness starts the daemon, waits
//! until its PVs answer CA searches, runs the client script, then sends SIGTERM and reports
//! the daemon's exit status. Where namespaces cannot be made, the ophyd-async and pyepics
//! tests run on 127.0.0.1 with a port of their own; the seed test fails, as it needs `/tmp`.
//!
//! The clients live in two venvs under the target dir (ophyd-async's pulls in epicscorelibs,
//! which would switch pyepics to another libca, so it gets its own). If pip fails the tests
//! fail with its output: they never skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use detflow_test_support::{python_venv, run_step, run_with_deadline};

/// ophyd-async with its CA layer (aioca on epicscorelibs' libca), and h5py to read back.
const OPHYD_ASYNC_PACKAGES: &[&str] = &[
    "aioca==2.1",
    "bluesky==1.15.1",
    "epicscorelibs==7.0.10.99.0.2",
    "event-model==1.24.0",
    "numpy==2.4.6",
    "ophyd-async==0.21.3",
    "pydantic==2.14.3",
    "h5py==3.16.0",
];

/// The PV prefix the daemon serves and the clients use.
const PREFIX: &str = "ad:";

/// How long one scenario may take, all included, before the test gives up on it.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(240);

fn bluesky_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = common::bluesky_venv_root();
        let py = python_venv(&root, common::BLUESKY_PACKAGES);
        let versions = run_step(
            Command::new(&py).args([
                "-c",
                "import importlib.util, sys\n\
                 import apstools, bluesky, databroker, epics, matplotlib, ophyd\n\
                 assert importlib.util.find_spec('epicscorelibs') is None, \
                 'epicscorelibs would switch pyepics to its libca'\n\
                 print('apstools', apstools.__version__, 'ophyd', ophyd.__version__, \
                 'bluesky', bluesky.__version__, 'databroker', databroker.__version__, \
                 'pyepics', epics.__version__, 'matplotlib', matplotlib.__version__)",
            ]),
            "importing the seed's packages",
        );
        eprintln!("bluesky venv: {}", versions.trim());
        py
    })
}

fn ophyd_async_python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-ophyd-async-venv");
        let py = python_venv(&root, OPHYD_ASYNC_PACKAGES);
        let versions = run_step(
            Command::new(&py).args([
                "-c",
                "import ophyd_async, bluesky, aioca; \
                 print('ophyd-async', ophyd_async.__version__, 'bluesky', bluesky.__version__)",
            ]),
            "importing ophyd-async",
        );
        eprintln!("ophyd-async venv: {}", versions.trim());
        py
    })
}

/// Whether fresh network, mount and PID namespaces can be made here (root can).
fn have_namespaces() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(UNSHARE)
            .args(["sh", "-c", "ip link set lo up && mount -t tmpfs none /tmp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// New network, mount and PID namespaces; the harness is PID 1 of its namespace, so when it
/// dies (or `unshare` is killed) the kernel kills the daemon and the client with it.
const UNSHARE: &[&str] = &["-n", "-m", "-p", "--fork", "--kill-child", "--mount-proc"];

fn serve_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("serve")
}

/// One client run against a fresh daemon.
struct Scenario<'a> {
    name: &'a str,
    python: &'a Path,
    /// A script in `tests/serve/`.
    script: &'a str,
    /// Arguments after the script; `{data}` is replaced by the data directory.
    args: &'a [&'a str],
    /// The line the script prints last when every check passed.
    success: &'a str,
    /// Needs the private `/tmp` with the seed's mount symlink.
    seed_tmp: bool,
}

/// What a finished scenario printed.
struct Outcome {
    /// The client's stdout and stderr, then the harness's report lines.
    client: String,
    /// The daemon's log (its stdout and stderr).
    daemon: String,
}

/// Run `s` and panic, with the daemon's log and the client's output, unless the client
/// printed its success line and exited 0 and the daemon exited 0 on SIGTERM.
fn run_scenario(s: &Scenario) -> Outcome {
    let namespaces = have_namespaces();
    assert!(
        namespaces || !s.seed_tmp,
        "scenario {} needs `unshare -n -m -p` (root) for its private /tmp: the seed writes to \
         /tmp/adsimdet and reads through /tmp/docker_ioc",
        s.name
    );
    let (port, data_root) = if namespaces {
        (5064, PathBuf::from("/tmp"))
    } else {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "serve-data-{}-{}",
            s.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (common::free_port(), dir)
    };
    let data = data_root.join(format!("{}-data", s.name));

    let detflow = PathBuf::from(env!("CARGO_BIN_EXE_detflow"));
    let ioc: Vec<String> = vec![
        detflow.display().to_string(),
        "serve".into(),
        "--prefix".into(),
        PREFIX.into(),
        "--data-root".into(),
        data_root.display().to_string(),
    ];
    let script = serve_dir().join(s.script);
    let mut client = vec![s.python.display().to_string(), script.display().to_string()];
    let data_arg = data.display().to_string();
    client.extend(s.args.iter().map(|a| a.replace("{data}", &data_arg)));

    let venv_root = |py: &Path| py.parent().and_then(Path::parent).unwrap().to_path_buf();
    let keep: Vec<PathBuf> = vec![
        venv_root(s.python),
        detflow.parent().unwrap().to_path_buf(),
        serve_dir(),
    ];
    let symlinks: Vec<[&str; 2]> = if s.seed_tmp {
        vec![["/tmp/docker_ioc/iocad/tmp", "/tmp"]]
    } else {
        vec![]
    };
    let config = serde_json::json!({
        "netns": namespaces,
        "private_tmp": namespaces,
        "keep": keep,
        "symlinks": symlinks,
        "dirs": [data],
        "ioc": ioc,
        "ca_port": port,
        "ready_pvs": [
            format!("{PREFIX}cam1:Acquire"),
            format!("{PREFIX}HDF1:FilePath"),
            format!("{PREFIX}image1:ArrayData"),
        ],
        "client": client,
        "ready_timeout_s": 60,
        "client_timeout_s": 150,
        "stop_timeout_s": 20,
    });

    let harness = serve_dir().join("harness.py");
    let mut cmd = if namespaces {
        let mut c = Command::new("unshare");
        c.args(UNSHARE);
        c.arg(s.python);
        c
    } else {
        Command::new(s.python)
    };
    cmd.arg(&harness)
        .arg(config.to_string())
        .env("EPICS_CA_ADDR_LIST", "127.0.0.1")
        .env("EPICS_CA_AUTO_ADDR_LIST", "NO")
        .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
        .env("EPICS_CA_SERVER_PORT", port.to_string())
        .env("EPICS_CAS_SERVER_PORT", port.to_string())
        .env("EPICS_CA_REPEATER_PORT", (port + 1).to_string())
        .env("MPLBACKEND", "Agg")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("RUST_BACKTRACE", "1");
    // With namespaces, killing the harness takes the daemon and the client down too.
    let (status, client, daemon) = run_with_deadline(&mut cmd, SCENARIO_DEADLINE);
    if !namespaces {
        let _ = std::fs::remove_dir_all(&data_root);
    }

    let lines: Vec<&str> = client.lines().collect();
    let ok = status.is_some_and(|st| st.success())
        && lines.contains(&s.success)
        && lines.contains(&"HARNESS client exit 0")
        && lines.contains(&"HARNESS ioc exit 0")
        && daemon.contains("ready");
    assert!(
        ok,
        "scenario {} failed (harness status {status:?}, namespaces {namespaces}).\n\
         The last lines should be `{}`, `HARNESS client exit 0` and `HARNESS ioc exit 0` \
         (the daemon's status after SIGTERM), and the daemon should have logged `ready`.\n\
         ===== client output =====\n{client}\n\
         ===== daemon log (and harness errors) =====\n{}",
        s.name,
        s.success,
        tail(&daemon, 40_000)
    );
    Outcome { client, daemon }
}

/// The last `max` bytes of `s`, on a char boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut at = s.len().saturating_sub(max);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// A TCP port that was free a moment ago (only used without namespaces).
/// Each of `checks` begins a line of the client's output.
fn assert_checks(out: &Outcome, checks: &[&str]) {
    for check in checks {
        assert!(
            out.client.lines().any(|l| l.starts_with(check)),
            "no line starting `{check}` in the client output"
        );
    }
}

/// Print a scenario's client output and the daemon's log to the test log, passing or not:
/// written straight to stderr (libtest captures only the print macros), in one piece so
/// that tests running side by side do not interleave.
fn show(name: &str, out: &Outcome) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let mut text = String::new();
    for line in out.client.lines() {
        writeln!(text, "{name}: {line}").unwrap();
    }
    for line in out.daemon.lines() {
        writeln!(text, "{name} daemon: {line}").unwrap();
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The seed session, code as the user wrote it, then: 5 frames captured, the local file is
/// databroker's resource file, shape (1, 5, 1024, 1024), valid NeXus, and a second count
/// writes the next file number without touching the first file.
#[test]
fn seed_apstools_session_runs_unchanged() {
    let out = run_scenario(&Scenario {
        name: "seed",
        python: bluesky_python(),
        script: "seed_session.py",
        args: &[concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/serve/ad-custom-hdf5-filename.txt"
        )],
        success: "SEED SESSION OK",
        seed_tmp: true,
    });
    show("seed", &out);
    assert_checks(
        &out,
        &[
            "CHECK HDF1:NumCaptured_RBV == 5",
            "CHECK databroker image shape (1, 5, 1024, 1024)",
            "CHECK /entry is an NXentry",
            "CHECK databroker frames == h5py frames",
            "CHECK FileNumber advanced to",
            "CHECK first file",
        ],
    );
}

/// ophyd-async `SimDetector` + `ADWriterFactory.hdf`: connect (all 90 PVs type-checked),
/// `bp.count` and a fly scan; the StreamResource points at the file written, the
/// StreamDatum indices cover every frame, and h5py reads them back.
#[test]
fn ophyd_async_sim_detector_writes_what_its_documents_say() {
    let out = run_scenario(&Scenario {
        name: "ophyd-async",
        python: ophyd_async_python(),
        script: "ophyd_async_count.py",
        args: &["{data}"],
        success: "OPHYD-ASYNC OK",
        seed_tmp: false,
    });
    show("ophyd-async", &out);
    assert_checks(
        &out,
        &[
            "CHECK bp.count: StreamDatum indices cover 0..3",
            "CHECK bp.count: h5py reads (3, 1024, 1024)",
            "CHECK fly scan: StreamDatum indices cover 0..8",
            "CHECK fly scan: h5py reads (8, 1024, 1024)",
        ],
    );
}

/// pyepics camonitor sees every `cam1:ArrayCounter_RBV` value of a 50-frame run, in order.
#[test]
fn pyepics_camonitor_sees_every_array_counter() {
    let out = run_scenario(&Scenario {
        name: "camonitor",
        python: bluesky_python(),
        script: "camonitor_counter.py",
        args: &["50"],
        success: "CAMONITOR OK",
        seed_tmp: false,
    });
    show("camonitor", &out);
    assert_checks(
        &out,
        &[
            "CHECK the monitor saw each of",
            "CHECK the detector made NumImages=50 frames",
        ],
    );
}
