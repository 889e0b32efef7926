//! DECTRIS Stream V2 with code nobody here wrote: DECTRIS's own example client decodes what
//! `detflow stream2-send` sends, and DLS's tickit-devices EIGER simulator and a sender written
//! from the spec (pyzmq + cbor2) feed `detflow acquire --backend stream2`.
//!
//! The Python side lives in tests/python/ (each file says where it came from) and runs in a
//! venv of its own, pinned, made on first use like the other interop tests' venv: a pip
//! failure fails the test, it never skips. Every wait has a deadline; ports are picked free on
//! 127.0.0.1 (or by the binding Python process itself, which reports its endpoint).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::EVENT_DEADLINE;

/// The venv's packages, pinned to versions that work together here.
///
/// cbor2 stays below 6: cbor2 6 decodes a map inside tag 55799 as an immutable `frozendict`,
/// and tickit-devices 0.4.1 assigns into its replayed image message, so its EIGER raises
/// `TypeError: 'cbor2.frozendict' object does not support item assignment` on the first
/// image. dectris-compression has no wheel on PyPI: pip builds it with gcc (most of the
/// first run's two minutes). tickit-devices brings tickit, aiozmq and aiohttp.
const STREAM2_PY_PACKAGES: &[&str] = &[
    "cbor2==5.9.0",
    "pyzmq==27.3.0",
    "dectris-compression==0.4.0",
    "tickit==0.4.3",
    "tickit-devices==0.4.1",
    "aiozmq==1.0.0",
    "numpy==2.4.6",
    "h5py==3.16.0",
    "hdf5plugin==7.1.0",
];

/// The venv's folder, made once per target directory.
fn venv() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stream2-venv");
        let py = detflow_test_support::python_venv(&root, STREAM2_PY_PACKAGES);
        py.parent().and_then(Path::parent).unwrap().to_path_buf()
    })
}

fn python() -> Command {
    common::command(venv().join("bin").join("python"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

/// `n` distinct free TCP ports on 127.0.0.1 (held together while picked, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A child process with its stdout read line by line and its stderr collected; killed when
/// dropped, so a failing test leaves no simulator behind.
struct Proc {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            err.read_to_string(&mut s).ok();
            s
        }));
        Proc {
            what: what.to_owned(),
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, waiting at most [`EVENT_DEADLINE`].
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(EVENT_DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let (status, _, err) = self.finish(Duration::ZERO);
                panic!(
                    "{}: no line on stdout ({e}); status {status:?}\n{err}",
                    self.what
                )
            }
        }
    }

    /// Wait for the exit (killing it after `deadline`): status, the rest of stdout, stderr.
    fn finish(&mut self, deadline: Duration) -> (Option<ExitStatus>, String, String) {
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                break Some(status);
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread may still hold the last lines: read until it hangs up at EOF.
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(EVENT_DEADLINE) {
            out.push(line);
        }
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, out.join("\n"), err)
    }

    /// Wait for a successful exit; panics with its output otherwise. Returns stdout's rest.
    fn succeed(mut self) -> String {
        let (status, out, err) = self.finish(EVENT_DEADLINE);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} failed or hung ({status:?}):\n{out}\n{err}",
            self.what
        );
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the check `args` of tests/python/stream2_checks.py; returns its JSON line.
fn check(args: &[&str]) -> serde_json::Value {
    let out = detflow_test_support::run_step(
        python().arg(script("stream2_checks.py")).args(args),
        &format!("stream2_checks.py {}", args[0]),
    );
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("check printed {out:?}: {e}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// ---- the spec sender and DECTRIS's client, with no detflow in between ----

/// Start the spec sender with `args`; returns it and the endpoint it bound.
fn spec_sender(expected: &Path, args: &[&str]) -> (Proc, String) {
    let mut sender = Proc::spawn(
        "stream2_spec_sender.py",
        python()
            .arg(script("stream2_spec_sender.py"))
            .args(["--out", path_str(expected), "--timeout", "60"])
            .args(args),
    );
    let line = sender.line();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the sender's first line {line:?}: {e}"));
    let endpoint = v["endpoint"].as_str().expect("an endpoint").to_owned();
    (sender, endpoint)
}

/// DECTRIS's client, connected to `endpoint`, writing what it decodes to `out`.
fn dectris_client(endpoint: &str, out: &Path) -> Proc {
    Proc::spawn(
        "stream2_dectris_client.py",
        python()
            .arg(script("stream2_dectris_client.py"))
            .args([endpoint, path_str(out), "60"]),
    )
}

/// The sender is proven against DECTRIS's decoder before it is used against detflow.
#[test]
fn the_dectris_client_decodes_the_spec_sender() {
    let dir = tempfile::tempdir().unwrap();
    for (k, args) in [
        &["--dtype", "u8", "--compression", "bslz4", "--channels", "3"][..],
        &[
            "--dtype",
            "u16",
            "--compression",
            "lz4",
            "--no-prefix",
            "--skip",
            "1,4",
        ],
        &["--dtype", "u32", "--compression", "none", "--f16"],
    ]
    .into_iter()
    .enumerate()
    {
        let expected = dir.path().join(format!("expected{k}.npz"));
        let got = dir.path().join(format!("client{k}.npz"));
        let (sender, endpoint) = spec_sender(&expected, args);
        let client = dectris_client(&endpoint, &got);
        let summary = client.succeed();
        sender.succeed();
        let v = check(&["client-vs-expected", path_str(&got), path_str(&expected)]);
        assert!(v["images"].as_u64().unwrap() >= 4, "{summary}\n{v}");
    }
}

// ---- DECTRIS's client decodes `detflow stream2-send` ----

/// `detflow stream2-send` sends `frames` simulator frames per channel to DECTRIS's client;
/// channel k of image i must be frame i of `detflow acquire --seed SEED+k --codec none`.
fn dectris_client_reads_stream2_send(dtype: &str, compress: &str, channels: u64, detail: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (size, seed, frames) = ("96x64", 21u64, "4");
    let endpoint = format!("tcp://127.0.0.1:{}", free_ports(1)[0]);
    let got = dir.path().join("client.npz");
    let client = dectris_client(&endpoint, &got);
    let channels_arg = channels.to_string();
    let seed_arg = seed.to_string();
    let sender = Proc::spawn(
        "detflow stream2-send",
        common::detflow().args([
            "stream2-send",
            "--bind",
            &endpoint,
            "--size",
            size,
            "--dtype",
            dtype,
            "--mode",
            "peaks",
            "--seed",
            &seed_arg,
            "--frames",
            frames,
            "--compress",
            compress,
            "--channels",
            &channels_arg,
            "--header-detail",
            detail,
            "--user-data",
            "--json",
        ]),
    );
    let received = client.succeed();
    let sent = sender.succeed();
    let report: serde_json::Value = serde_json::from_str(sent.trim())
        .unwrap_or_else(|e| panic!("stream2-send's report {sent:?}: {e}"));
    assert_eq!(report["sent"], 4, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["consumer_connected"], true, "{report}");
    let received: serde_json::Value =
        serde_json::from_str(received.lines().last().unwrap_or_default()).unwrap();
    let algorithms: Vec<&str> = match compress {
        "none" => vec![],
        c => vec![c],
    };
    assert_eq!(
        received["compression"],
        serde_json::json!(algorithms),
        "{sent}"
    );

    let mut refs = Vec::new();
    for k in 0..channels {
        let name = format!("ref{k}");
        let out = common::run(&[
            "acquire",
            "--seed",
            &(seed + k).to_string(),
            "--codec",
            "none",
            "--frames",
            frames,
            "--size",
            size,
            "--dtype",
            dtype,
            "--mode",
            "peaks",
            "--path",
            path_str(dir.path()),
            "--name",
            &name,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        refs.push(dir.path().join(format!("{name}_0001.h5")));
    }
    let mut args = vec!["client-vs-files", path_str(&got), detail];
    args.extend(refs.iter().map(|p| path_str(p)));
    let v = check(&args);
    assert_eq!(v["channels"].as_array().unwrap().len() as u64, channels);
}

#[test]
fn dectris_client_decodes_stream2_send_u8_bslz4_three_channels() {
    dectris_client_reads_stream2_send("u8", "bslz4", 3, "all");
}

#[test]
fn dectris_client_decodes_stream2_send_u16_lz4_two_channels() {
    dectris_client_reads_stream2_send("u16", "lz4", 2, "all");
}

#[test]
fn dectris_client_decodes_stream2_send_u32_uncompressed() {
    dectris_client_reads_stream2_send("u32", "none", 2, "basic");
}

#[test]
fn dectris_client_decodes_stream2_send_u32_bslz4_four_channels() {
    dectris_client_reads_stream2_send("u32", "bslz4", 4, "all");
}

// ---- tickit-devices' EIGER feeds `detflow acquire --backend stream2` ----

/// Wait until a TCP connection to or from 127.0.0.1:`port` is established (the kernel's
/// table, /proc/net/tcp), polled until `deadline` has passed; panics then.
fn wait_established(port: u16, deadline: Duration) {
    let until = std::time::Instant::now() + deadline;
    let hex = format!(":{port:04X}");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let up = table.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        });
        if up {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "no connection to port {port} within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// tickit's EIGER on 127.0.0.1 (REST, legacy stream and Stream V2 ports all configurable, so
/// no network namespace is needed), armed and triggered over SIMPLON REST for 3 images. It
/// replays a real EIGER2 16M bslz4 frame (4362 x 4148 u16, 513 kB): the file's chunks must be
/// those bytes, and h5py + hdf5plugin must decode them as dectris.compression does.
#[test]
fn tickit_eiger_feeds_acquire() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (rest, legacy, cbor) = (ports[0], ports[1], ports[2]);
    let config = dir.path().join("eiger.yaml");
    std::fs::write(
        &config,
        format!(
            "- type: tickit_devices.eiger.Eiger\n  name: eiger\n  inputs: {{}}\n  \
             host: 127.0.0.1\n  port: {rest}\n  stream_host: 127.0.0.1\n  \
             stream_legacy_port: {legacy}\n  stream_cbor_port: {cbor}\n"
        ),
    )
    .unwrap();
    let mut tickit = Proc::spawn(
        "tickit",
        // tickit's CLI through a script, not bin/tickit: the venv was built under another
        // name and renamed, so its console scripts' #! lines name a folder that is gone. The
        // script binds tickit's PUSH sockets only: tickit's own also connect to themselves,
        // which loses messages at random (tickit_bind_only.py says how).
        python()
            .arg(script("tickit_bind_only.py"))
            .args(["--log-level", "WARNING", "all"])
            .arg(&config),
    );
    let acquire = Proc::spawn(
        "detflow acquire --backend stream2 (tickit)",
        common::detflow().args([
            "acquire",
            "--backend",
            "stream2",
            "--stream2-connect",
            &format!("tcp://127.0.0.1:{cbor}"),
            "--ring-slots",
            "4",
            "--path",
            path_str(dir.path()),
            "--name",
            "tickit",
            "--json",
        ]),
    );
    // tickit drops a message its stream socket has no consumer for: arm only once the
    // receiver's connection to that port is up (tickit may take a while to bind it).
    wait_established(cbor, Duration::from_secs(120));
    let images = 3u64;
    let drive = std::panic::catch_unwind(|| {
        detflow_test_support::run_step(
            python().arg(script("tickit_eiger_drive.py")).args([
                rest.to_string(),
                images.to_string(),
                "60".to_owned(),
            ]),
            "tickit_eiger_drive.py",
        )
    });
    if drive.is_err() {
        let (status, out, err) = tickit.finish(Duration::ZERO);
        panic!("driving tickit failed; tickit {status:?}:\n{out}\n{err}");
    }
    let out = acquire.succeed();
    let summary: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("acquire's summary {out:?}: {e}"));
    assert_eq!(summary["frames_written"], images, "{summary}");
    assert_eq!(summary["frames_lost"], 0, "{summary}");
    assert_eq!(summary["frames_corrupted"], 0, "{summary}");
    let file = dir.path().join("tickit_0001.h5");
    let v = check(&["tickit-file", path_str(&file), &images.to_string()]);
    assert_eq!(v["shape"], serde_json::json!([4362, 4148]));
}

// ---- the spec sender feeds `detflow acquire --backend stream2` ----

/// Run the spec sender with `args` into `detflow acquire --backend stream2` (plus
/// `acquire_args`); returns acquire's summary, the file, the expectations and the folder.
fn spec_into_acquire(
    args: &[&str],
    acquire_args: &[&str],
) -> (serde_json::Value, PathBuf, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.npz");
    let (sender, endpoint) = spec_sender(&expected, args);
    let acquire = Proc::spawn(
        "detflow acquire --backend stream2 (spec sender)",
        common::detflow()
            .args([
                "acquire",
                "--backend",
                "stream2",
                "--stream2-connect",
                &endpoint,
                "--path",
                path_str(dir.path()),
                "--name",
                "spec",
                "--json",
            ])
            .args(acquire_args),
    );
    let out = acquire.succeed();
    sender.succeed();
    let summary: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("acquire's summary {out:?}: {e}"));
    (summary, dir.path().join("spec_0001.h5"), expected, dir)
}

/// A clean series of `images`: all written, nothing lost or corrupted, the file checked.
fn spec_series_is_stored(args: &[&str], images: u64, passthrough: bool) {
    let (summary, file, expected, _dir) = spec_into_acquire(args, &[]);
    assert_eq!(summary["frames_written"], images, "{summary}");
    assert_eq!(summary["frames_lost"], 0, "{summary}");
    assert_eq!(summary["frames_corrupted"], 0, "{summary}");
    let flag = if passthrough { "1" } else { "0" };
    let v = check(&["spec-file", path_str(&file), path_str(&expected), flag]);
    assert_eq!(v["present"], images, "{v}");
}

#[test]
fn spec_sender_u8_bslz4_three_channels_pass_through() {
    spec_series_is_stored(
        &["--dtype", "u8", "--compression", "bslz4", "--channels", "3"],
        6,
        true,
    );
}

#[test]
fn spec_sender_u16_lz4_without_the_55799_prefix() {
    spec_series_is_stored(
        &[
            "--dtype",
            "u16",
            "--compression",
            "lz4",
            "--channels",
            "2",
            "--no-prefix",
        ],
        6,
        true,
    );
}

#[test]
fn spec_sender_u32_uncompressed_with_f16_floats_in_start() {
    spec_series_is_stored(
        &["--dtype", "u32", "--compression", "none", "--f16"],
        6,
        false,
    );
}

#[test]
fn spec_sender_u32_bslz4_pass_through() {
    spec_series_is_stored(&["--dtype", "u32", "--compression", "bslz4"], 6, true);
}

/// Skipped image ids are gaps at their own positions: counted, masked, never shifted.
#[test]
fn spec_sender_missing_images_are_counted_gaps() {
    let (summary, file, expected, _dir) = spec_into_acquire(
        &[
            "--dtype",
            "u16",
            "--compression",
            "bslz4",
            "--channels",
            "2",
            "--images",
            "7",
            "--skip",
            "1,4,5",
        ],
        &[],
    );
    assert_eq!(summary["frames_written"], 4, "{summary}");
    assert_eq!(summary["frames_lost"], 3, "{summary}");
    assert_eq!(summary["frames_corrupted"], 0, "{summary}");
    let v = check(&["spec-file", path_str(&file), path_str(&expected), "1"]);
    assert_eq!(v["extent"], 7, "{v}");
    assert_eq!(v["present"], 4, "{v}");
}

/// A malformed message, an image of another series, a truncated chunk and an unknown
/// compression are each counted as corrupted; every good frame is kept where it belongs.
#[test]
fn spec_sender_bad_messages_lose_no_good_frame() {
    let (summary, file, expected, _dir) = spec_into_acquire(
        &[
            "--dtype",
            "u16",
            "--compression",
            "bslz4",
            "--channels",
            "3",
            "--images",
            "6",
            "--bad",
            "malformed@0,foreign@2,truncated@3,unknown-compression@4",
        ],
        &[],
    );
    assert_eq!(summary["frames_written"], 4, "{summary}");
    assert_eq!(summary["frames_corrupted"], 4, "{summary}");
    let v = check(&["spec-file", path_str(&file), path_str(&expected), "1"]);
    assert_eq!(v["extent"], 6, "{v}");
    assert_eq!(v["present"], 4, "{v}");
}

/// `--codec` other than auto decodes and re-encodes: lz4 in, bslz4 (32008) in the file, the
/// same pixels.
#[test]
fn spec_sender_lz4_reencoded_as_bslz4() {
    let (summary, file, expected, _dir) = spec_into_acquire(
        &["--dtype", "u16", "--compression", "lz4", "--channels", "2"],
        &["--codec", "bslz4"],
    );
    assert_eq!(summary["frames_written"], 6, "{summary}");
    let v = check(&["spec-file", path_str(&file), path_str(&expected), "0"]);
    assert_eq!(v["present"], 6, "{v}");
    assert_eq!(v["filters"][0], 32008, "{v}");
}

// ---- detflow's decoder reads what others encoded ----

/// The spec sender's messages (encoded by cbor2: f16 floats, no prefix, every dtype and
/// compression, bad ones) and tickit's real EIGER2 16M bytes, decoded by detflow-stream2:
/// good ones to the payload bytes that were sent, bad ones to an error.
#[test]
fn detflow_stream2_decodes_what_cbor2_and_an_eiger2_encoded() {
    use detflow_stream2::{Compression, Message, Payload, decode};
    let dir = tempfile::tempdir().unwrap();
    let variants: [&[&str]; 3] = [
        &[
            "--dtype",
            "u8",
            "--compression",
            "bslz4",
            "--channels",
            "3",
            "--f16",
            "--no-prefix",
            "--skip",
            "2",
            "--bad",
            "malformed@0,foreign@1,truncated@3,unknown-compression@4",
        ],
        &["--dtype", "u16", "--compression", "lz4", "--channels", "2"],
        &[
            "--dtype",
            "u32",
            "--compression",
            "none",
            "--bad",
            "truncated@1",
        ],
    ];
    for (k, args) in variants.into_iter().enumerate() {
        let d = dir.path().join(format!("v{k}"));
        detflow_test_support::run_step(
            python()
                .arg(script("stream2_spec_sender.py"))
                .args(["--out", path_str(&d.join("expected.npz"))])
                .args(["--dump", path_str(&d)])
                .args(args),
            "stream2_spec_sender.py --dump",
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cbor"))
            .collect();
        files.sort();
        let read = |name: String| std::fs::read(d.join(name)).unwrap();
        let mut images = 0;
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            let stem = file.file_stem().unwrap().to_str().unwrap();
            let kind = stem.split_once('-').unwrap().1;
            let msg = decode(&bytes);
            match (kind, msg) {
                ("start", Ok(Message::Start(s))) => {
                    assert_eq!(s.series.id, 7);
                    if args.contains(&"--f16") {
                        // f16 on the wire (101.5, 1.0), f32 (6000.5), f64 (12398.4).
                        assert_eq!(s.beam_center_x, Some(101.5));
                        assert_eq!(s.incident_wavelength, Some(1.0));
                        // canonical CBOR sorts map keys: find, not index.
                        let th = s.threshold_energy.iter().find(|t| t.0 == "threshold_1");
                        assert_eq!(th, Some(&("threshold_1", 6000.5)));
                        assert_eq!(s.incident_energy, Some(12398.4));
                        assert_eq!(s.channels, ["threshold_1", "threshold_2", "difference"]);
                    }
                }
                ("image", Ok(Message::Image(im))) => {
                    images += 1;
                    assert_eq!(im.series.id, 7);
                    for (name, md) in &im.data {
                        let id = im.image_id;
                        match md.array.payload {
                            Payload::Compressed { bytes, .. } => {
                                assert_eq!(bytes, read(format!("payload-{id}-{name}.bin")))
                            }
                            Payload::Raw(bytes) => {
                                assert_eq!(bytes, read(format!("frame-{id}-{name}.bin")))
                            }
                        }
                    }
                }
                ("foreign", Ok(Message::Image(im))) => assert_eq!(im.series.id, 8),
                ("end", Ok(Message::End(e))) => assert_eq!(e.series.id, 7),
                ("malformed" | "truncated" | "unknown-compression", Err(_)) => {}
                (kind, msg) => panic!("variant {k}, {stem}: {kind} decoded as {msg:?}"),
            }
        }
        assert!(images >= 3, "variant {k}: {images} images");
    }

    // tickit-devices' sample: one image and the end of a real EIGER2 Si 16M series.
    let lib = venv().join("lib");
    let site = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.exists())
        .expect("the venv's site-packages");
    let data = site.join("tickit_devices/eiger/data/stream2");
    let image = std::fs::read(data.join("image.cbor")).unwrap();
    let Ok(Message::Image(im)) = decode(&image) else {
        panic!("tickit's image.cbor: {:?}", decode(&image))
    };
    assert_eq!((im.series.id, im.image_id), (15614, 0));
    assert_eq!(im.data.len(), 1);
    let (name, md) = &im.data[0];
    assert_eq!(
        (*name, md.dims, md.array.tag),
        ("threshold_1", [4362, 4148], 69)
    );
    let Payload::Compressed {
        compression,
        elem_size,
        bytes,
    } = md.array.payload
    else {
        panic!("tickit's image is compressed")
    };
    assert_eq!(
        (compression, elem_size, bytes.len()),
        (Compression::Bslz4, 2, 513_082)
    );
    let end = std::fs::read(data.join("end.cbor")).unwrap();
    assert!(matches!(decode(&end), Ok(Message::End(e)) if e.series.id == 15614));
}
