//! Interop with the clients beamlines use: pyepics (its bundled C libca), caproto's sync
//! client and CLI, and ophyd on pyepics. Each test runs `tests/interop/ca_clients.py` against
//! the `serve_demo` example, inside a private network namespace with only `lo` when
//! `unshare -n` works here (otherwise on 127.0.0.1 with an ephemeral port).
//!
//! In the namespace the ephemeral ports are narrowed to [`EPHEMERAL_PORTS`]: a client socket
//! that lands on a port that matters (the server's, or the repeater port the clients
//! register with) then happens in most runs instead of one in thousands, so such a
//! collision fails here every time rather than now and then in CI. caproto's sync client
//! opens an ephemeral UDP socket per call (about 200 in its scenario), and once one of them
//! was given the repeater port and received its own REPEATER_REGISTER.
//!
//! The Python packages are installed into a venv under the target dir. If that fails the
//! tests fail with pip's output: they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Pinned to the versions known to work together (specs/bluesky-clients.md §1).
const PY_PACKAGES: &[&str] = &[
    "pyepics==3.5.10",
    "caproto==1.3.0",
    "ophyd==1.11.2",
    "numpy<3",
];

use detflow_test_support::{run_step, run_with_deadline};

/// The ephemeral port range inside the scenarios' network namespace (64 ports).
const EPHEMERAL_PORTS: &str = "40000 40063";

/// The venv's python, made once per target dir: built in a private folder, then renamed
/// into place, so parallel test binaries do not clash.
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ca-interop-venv");
        let py = detflow_test_support::python_venv(&root, PY_PACKAGES);
        let versions = run_step(
            Command::new(&py).args([
                "-c",
                "import epics, caproto, ophyd, numpy; \
                 print('pyepics', epics.__version__, 'caproto', caproto.__version__, \
                 'ophyd', ophyd.__version__, 'numpy', numpy.__version__)",
            ]),
            "importing the interop packages",
        );
        eprintln!("interop venv: {}", versions.trim());
        py
    })
}

/// The `serve_demo` example, built by `cargo test` next to this test binary.
fn serve_demo() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let demo = dir.join("examples").join("serve_demo");
    assert!(
        demo.exists(),
        "{} is missing: run the tests with `cargo test -p detflow-ca` (which builds the \
         examples), or `cargo build -p detflow-ca --example serve_demo` first",
        demo.display()
    );
    demo
}

/// Whether a private network namespace can be made here (we are root in CI).
fn have_netns() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["-n", "sh", "-c", "ip link set lo up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Run one scenario of ca_clients.py; panics with its output unless it printed ALL OK.
fn scenario(name: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ca_clients.py");
    let py = python();
    let demo = serve_demo();
    let mut cmd = if have_netns() {
        let mut c = Command::new("unshare");
        c.args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && echo \"$0\" > /proc/sys/net/ipv4/ip_local_port_range \
             && exec \"$@\"",
            EPHEMERAL_PORTS,
        ]);
        c.arg(py);
        c
    } else {
        Command::new(py)
    };
    cmd.arg(script)
        .arg(name)
        .arg(&demo)
        .env("EPICS_CA_ADDR_LIST", "127.0.0.1")
        .env("EPICS_CA_AUTO_ADDR_LIST", "NO")
        .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
        .env_remove("EPICS_CA_SERVER_PORT")
        .env_remove("EPICS_CAS_SERVER_PORT");
    let (status, out, err) = run_with_deadline(&mut cmd, Duration::from_secs(170));
    let ok = status.is_some_and(|s| s.success()) && out.lines().any(|l| l == "ALL OK");
    assert!(
        ok,
        "scenario {name} failed (status {status:?}, netns {}):\nstdout:\n{out}\nstderr:\n{err}",
        have_netns()
    );
    for line in out
        .lines()
        .filter(|l| l.starts_with("FIGURE") || !l.starts_with("CHECK"))
    {
        eprintln!("{name}: {line}");
    }
    out
}

fn checks(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("CHECK ")).count()
}

#[test]
fn pyepics_caget_caput_camonitor_every_type() {
    let out = scenario("pyepics");
    assert!(checks(&out) >= 40, "{out}");
    assert!(out.contains("CHECK 1M u16 image"));
    assert!(out.contains("CHECK put-notify waits for completion"));
}

#[test]
fn caproto_sync_client_and_cli() {
    let out = scenario("caproto");
    assert!(checks(&out) >= 30, "{out}");
    assert!(out.contains("CHECK STRING to ENUM by name"));
    assert!(out.contains("CHECK caproto-monitor"));
}

#[test]
fn ophyd_signals_with_rbv() {
    let out = scenario("ophyd");
    assert!(checks(&out) >= 10, "{out}");
    assert!(out.contains("CHECK EpicsSignalWithRBV enum by string"));
}

/// The demo honours `EPICS_CA_SERVER_PORT` and `EPICS_CAS_INTF_ADDR_LIST` (no Python).
#[test]
fn environment_port_and_interface_are_honoured() {
    use std::io::BufRead;
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    // A port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(serve_demo())
        .env("EPICS_CA_SERVER_PORT", port.to_string())
        .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
        .env_remove("EPICS_CAS_SERVER_PORT")
        .env("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        assert_eq!(line.trim(), format!("READY port={port}"));
        let reply = detflow_ca::probe::search(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            "DET:AcquireTime",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(reply.is_some(), "UDP search on the configured port");
        // Bound to 127.0.0.1 only: another loopback address is refused.
        let other = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port));
        assert!(TcpStream::connect_timeout(&other, Duration::from_secs(2)).is_err());
    });
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
