//! Several hosts on one machine, for tests that run a detector, a fan and writer nodes as a
//! beamline does: a holder process owns a new network and mount namespace (the sandbox), in
//! which a bridge joins named network namespaces, each with its own address on 10.217.0.0/24.
//!
//! Everything is made by the test inside the sandbox and goes away with its processes: `ip
//! netns` keeps its names under the sandbox's own tmpfs on /run, the links live in the
//! sandbox's network namespace. Every step checks its exit status and panics naming its
//! command, so a machine where namespaces cannot be made fails the test (we are root in CI).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The private subnet: namespace i (in the order given) is `10.217.0.{i + 1}`, the bridge
/// `10.217.0.254`.
pub const SUBNET: &str = "10.217.0";

/// How long a process may take to print what a test waits for, or to exit.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Lines of each process's log printed when a test fails.
const LOG_LINES_SHOWN: usize = 150;
/// Characters of a log line printed (an acquire summary lists every frame's reference).
const LOG_LINE_CHARS: usize = 600;

/// A network and mount namespace held by a `cat` that lives until the sandbox is dropped
/// (or the test process dies and its stdin closes), with a bridge and named namespaces.
pub struct Sandbox {
    holder: Child,
    names: Vec<String>,
    /// Where each process's stdout and stderr are kept.
    logs: tempfile::TempDir,
    /// Every process started, by name, with its log files: printed if the test fails.
    started: Mutex<Vec<(String, PathBuf, PathBuf)>>,
}

impl Sandbox {
    /// A sandbox where each of `names` is a network namespace joined to the bridge, with
    /// address [`SUBNET`].(i + 1) and `lo` up.
    ///
    /// # Panics
    ///
    /// When a namespace, link or address cannot be made, naming the command.
    pub fn new(names: &[&str]) -> Self {
        assert!(names.len() < 254, "one address per namespace on a /24");
        let mut holder = super::command("unshare")
            .args(["--net", "--mount", "sh", "-c", "echo ready && exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot create network namespaces: `unshare` does not run (util-linux)");
        // `unshare` makes the namespaces, then execs sh, which says so and execs cat: one
        // process, whose namespaces nsenter can join once the line is read.
        let mut ready = String::new();
        BufReader::new(holder.stdout.take().expect("stdout is piped"))
            .read_line(&mut ready)
            .expect("the holder's stdout reads");
        if ready.trim() != "ready" {
            let mut err = String::new();
            let _ = holder
                .stderr
                .take()
                .expect("piped")
                .read_to_string(&mut err);
            let _ = holder.kill();
            let _ = holder.wait();
            panic!(
                "cannot create network namespaces: `unshare --net --mount` failed \
                 (this test needs root): {err}"
            );
        }
        let sandbox = Sandbox {
            holder,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            logs: tempfile::tempdir().expect("a temporary directory for the logs"),
            started: Mutex::new(Vec::new()),
        };
        sandbox.build_network();
        sandbox
    }

    /// The tmpfs for `ip netns`, the bridge, and one veth pair per namespace.
    fn build_network(&self) {
        // `ip netns add` records names in /run/netns: on the sandbox's own /run they vanish
        // with it, and the host's /run is not touched.
        self.step(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=755",
            "detflow-netns",
            "/run",
        ]);
        self.step(&["mkdir", "/run/netns"]);
        self.step(&["ip", "link", "set", "lo", "up"]);
        self.step(&["ip", "link", "add", "br0", "type", "bridge"]);
        self.step(&[
            "ip",
            "addr",
            "add",
            &format!("{SUBNET}.254/24"),
            "dev",
            "br0",
        ]);
        self.step(&["ip", "link", "set", "br0", "up"]);
        for (i, ns) in self.names.iter().enumerate() {
            let veth = format!("v{i}");
            let addr = format!("{}/24", self.addr(ns));
            self.step(&["ip", "netns", "add", ns]);
            self.step(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            self.step(&["ip", "link", "set", &veth, "master", "br0", "up"]);
            self.step(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            self.step(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            self.step(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
    }

    /// `nsenter` into the sandbox's network and mount namespaces.
    fn enter(&self) -> Command {
        let mut c = super::command("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-n", "-m"]);
        c
    }

    /// Run one setup command in the sandbox; panic naming it unless it succeeds.
    fn step(&self, args: &[&str]) {
        let out = self
            .enter()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot create network namespaces: nsenter: {e}"));
        assert!(
            out.status.success(),
            "cannot create network namespaces: `{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// The address of namespace `ns`.
    ///
    /// # Panics
    ///
    /// When `ns` is not one of the sandbox's namespaces.
    pub fn addr(&self, ns: &str) -> String {
        let i = self
            .names
            .iter()
            .position(|n| n == ns)
            .unwrap_or_else(|| panic!("no namespace {ns} in {:?}", self.names));
        format!("{SUBNET}.{}", i + 1)
    }

    /// Start `detflow ARGS` in namespace `ns`; `name` names it in logs and failures.
    ///
    /// # Panics
    ///
    /// When `ns` is not one of the sandbox's namespaces, or nsenter cannot be started.
    pub fn spawn(&self, ns: &str, name: &str, args: &[&str]) -> Proc {
        // An unknown namespace panics here, naming it, rather than failing in `ip`.
        self.addr(ns);
        let file = |ext: &str| {
            let safe: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            self.logs.path().join(format!("{safe}.{ext}"))
        };
        let (out_path, err_path) = (file("stdout"), file("stderr"));
        let mut cmd = self.enter();
        // nsenter and `ip netns exec` exec what follows without forking: the child's PID is
        // detflow's own, so that killing the child kills detflow.
        cmd.args(["ip", "netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_detflow"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_the_test(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} in namespace {ns}: {e}"));
        let stdin = child.stdin.take();
        let (stdout, out_thread) = tee(child.stdout.take().expect("piped"), &out_path);
        let (stderr, err_thread) = tee(child.stderr.take().expect("piped"), &err_path);
        self.started
            .lock()
            .unwrap()
            .push((format!("{name} (in {ns})"), out_path, err_path));
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            threads: vec![out_thread, err_thread],
            exited: None,
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, out, err) in self.started.lock().unwrap().iter() {
                eprintln!("---- {name}: stderr\n{}", tail(err));
                eprintln!("---- {name}: stdout\n{}", tail(out));
            }
        }
        // SIGKILL: cat holds nothing. Once the processes in them are gone too (each Proc
        // kills its own), the namespaces, the bridge and the tmpfs go away.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The last [`LOG_LINES_SHOWN`] lines of a log file, each cut at [`LOG_LINE_CHARS`].
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..]
        .iter()
        .map(|l| match l.char_indices().nth(LOG_LINE_CHARS) {
            Some((at, _)) => format!("{} ...", &l[..at]),
            None => (*l).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kill the child with SIGKILL when the thread that started it (the test's) ends, whatever
/// way it ends: a test that dies leaves no process running in its namespaces.
fn die_with_the_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure makes one async-signal-safe system call (prctl) and touches no
    // memory of the parent's, as pre_exec requires. The death signal survives the execs of
    // nsenter, ip and detflow (none is set-user-ID).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Copy `pipe` line by line into the file `path` and onto a channel.
fn tee(pipe: impl Read + Send + 'static, path: &Path) -> (Receiver<String>, JoinHandle<()>) {
    let mut file = std::fs::File::create(path).expect("a log file in the sandbox's tempdir");
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    (rx, thread)
}

/// A `detflow` process in a namespace of the sandbox; killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    threads: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Wait for the stderr line containing every one of `what`; returns it.
    pub fn wait_log(&self, what: &[&str]) -> String {
        self.wait_logs(&[what]).remove(0)
    }

    /// Wait for a stderr line for each of `lines` (each given by the texts it contains), in
    /// any order; returns them in the order of `lines`.
    ///
    /// # Panics
    ///
    /// When they have not all come within [`DEADLINE`], or the process ended first.
    pub fn wait_logs(&self, lines: &[&[&str]]) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        let mut found = vec![None; lines.len()];
        while found.iter().any(Option::is_none) {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "{} did not log lines with {lines:?} ({}); found {found:?}",
                    self.name,
                    gone(e)
                )
            });
            for (want, slot) in lines.iter().zip(&mut found) {
                if slot.is_none() && want.iter().all(|w| line.contains(w)) {
                    *slot = Some(line.clone());
                }
            }
        }
        found.into_iter().map(Option::unwrap).collect()
    }

    /// The next line on stdout, as JSON (`--json` summaries).
    ///
    /// # Panics
    ///
    /// When no line comes within [`DEADLINE`], or it is not JSON.
    pub fn next_json(&self) -> serde_json::Value {
        let line = self
            .stdout
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("{} did not print a JSON line ({})", self.name, gone(e)));
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{} printed a line that is not JSON ({e}): {line}",
                self.name
            )
        })
    }

    /// Write `line` and a newline on its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("{}: stdin: {e}", self.name));
    }

    /// SIGKILL: no chance to close its files.
    ///
    /// # Panics
    ///
    /// When the process is not detflow itself (nsenter or ip forked it) or has exited.
    pub fn kill(&mut self) {
        let pid = self.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "detflow",
            "{}: the process to kill ({pid}) is detflow itself",
            self.name
        );
        self.child.kill().expect("SIGKILL is sent");
        self.exited = Some(self.child.wait().expect("the killed process is reaped"));
    }

    /// Wait for the exit (its stdout and stderr closing, within [`DEADLINE`]); its status.
    /// Lines not read yet are passed over (the log files keep them).
    ///
    /// # Panics
    ///
    /// When it has not exited by the deadline.
    pub fn finish(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        for rx in [&self.stdout, &self.stderr] {
            loop {
                match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                    Ok(_) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!("{} did not exit within {DEADLINE:?}", self.name)
                    }
                }
            }
        }
        let status = self.child.wait().expect("the process is reaped");
        self.exited = Some(status);
        status
    }

    /// Wait for the exit and check that it succeeded.
    ///
    /// # Panics
    ///
    /// When it fails, or has not exited within [`DEADLINE`].
    pub fn succeeds(&mut self) {
        let status = self.finish();
        assert!(status.success(), "{} failed: {status}", self.name);
    }
}

/// Why a channel gave nothing.
fn gone(e: RecvTimeoutError) -> &'static str {
    match e {
        RecvTimeoutError::Timeout => "deadline passed",
        RecvTimeoutError::Disconnected => "it exited",
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Its pipes are closed now: the copies end.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
