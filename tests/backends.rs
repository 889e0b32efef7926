//! The replay and UDP backends: both pass the HAL conformance suite; a file replayed with
//! `--codec none` writes back exactly its frames, also when it was written with a codec whose
//! HDF5 filter this HDF5 lacks (detflow decodes those chunks itself); a seeded stream sent with `udp-send` writes
//! exactly what the simulator writes directly; lost and incomplete UDP frames are counted;
//! injected simulator faults reach the `--json` summary. Network traffic stays on 127.0.0.1.

mod common;

use std::io::BufReader;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detflow_engine::backend::replay::ReplayDetector;
use detflow_engine::backend::udp::{Incomplete, PacketHeader, UdpReceiver, UdpSender};
use detflow_hal::conformance::{self, ConformanceConfig, CountingAllocator};
use detflow_hal::{
    AcquisitionConfig, Detector, Error as _, FrameSource, ImageMode, PixelType, Roi,
};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// A free UDP port on 127.0.0.1 (bound, then released for the process under test).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The raw bytes of `/entry/data/data`, and its shape.
fn frames_of(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let f = hdf5::File::open(path).unwrap();
    let d = f.dataset("/entry/data/data").unwrap();
    let shape = d.shape();
    let bytes = match d.dtype().unwrap().size() {
        1 => d.read_raw::<u8>().unwrap(),
        2 => d
            .read_raw::<u16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        4 => d
            .read_raw::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        n => panic!("unexpected element size {n}"),
    };
    (shape, bytes)
}

fn acquire(dir: &Path, name: &str, args: &[&str]) -> (serde_json::Value, PathBuf) {
    let mut all = vec![
        "acquire",
        "--json",
        "--path",
        dir.to_str().unwrap(),
        "--name",
        name,
    ];
    all.extend_from_slice(args);
    let out = common::run(&all);
    assert!(
        out.status.success(),
        "detflow {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    let file = PathBuf::from(s["files"][0].as_str().unwrap());
    (s, file)
}

#[test]
fn a_replayed_file_writes_back_exactly_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, dtype) in [("none", "u16"), ("deflate:1", "u16"), ("deflate:6", "f32")] {
        let name = format!("src_{}_{dtype}", codec.replace(':', "_"));
        let (_, source) = acquire(
            dir.path(),
            &name,
            &[
                "--frames", "7", "--size", "40x24", "--dtype", dtype, "--mode", "peaks", "--seed",
                "11", "--codec", codec,
            ],
        );
        let replay_name = format!("replay_{name}");
        let (s, copy) = acquire(
            dir.path(),
            &replay_name,
            &[
                "--backend",
                "replay",
                "--replay",
                source.to_str().unwrap(),
                "--frames",
                "7",
                "--codec",
                "none",
                "--period",
                "0.001",
            ],
        );
        assert_eq!(s["frames_written"], 7, "{codec}: {s}");
        let (shape_a, a) = frames_of(&source);
        let (shape_b, b) = frames_of(&copy);
        assert_eq!(shape_a, [7, 24, 40], "{codec}");
        assert_eq!(shape_b, shape_a, "{codec}");
        assert!(
            a == b,
            "{codec} {dtype}: replayed pixels differ from the source"
        );
    }
}

/// Acquisition arguments of the compressed-replay tests: 7 seeded 40 x 24 frames.
fn seeded(dtype: &'static str, codec: &'static str) -> [&'static str; 14] {
    [
        "--frames", "7", "--size", "40x24", "--dtype", dtype, "--mode", "peaks", "--seed", "11",
        "--codec", codec, "--period", "0.001",
    ]
}

#[test]
fn files_compressed_with_filters_hdf5_lacks_replay_pixel_for_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = std::collections::HashMap::new();
    for dtype in ["u16", "u8", "f32"] {
        let (_, raw) = acquire(dir.path(), &format!("raw_{dtype}"), &seeded(dtype, "none"));
        reference.insert(dtype, frames_of(&raw));
    }
    let cases = [
        ("lz4", "u16"),
        ("bslz4", "u16"),
        ("bszstd", "u16"),
        ("zstd", "u16"),
        ("blosc", "u16"),
        ("bslz4", "u8"),
        ("blosc:zstd:3", "u8"),
        ("zstd:9", "f32"),
        ("bszstd:5", "f32"),
        ("lz4", "f32"),
    ];
    for (codec, dtype) in cases {
        let name = format!("src_{}_{dtype}", codec.replace(':', "_"));
        let (_, source) = acquire(dir.path(), &name, &seeded(dtype, codec));
        // This HDF5 cannot read the source itself: the test exercises detflow's decoding.
        {
            let f = hdf5::File::open(&source).unwrap();
            let d = f.dataset("/entry/data/data").unwrap();
            assert!(
                d.read_raw::<u8>().is_err(),
                "{codec}: HDF5 decoded it itself"
            );
        }
        let (s, copy) = acquire(
            dir.path(),
            &format!("replay_{name}"),
            &[
                "--backend",
                "replay",
                "--replay",
                source.to_str().unwrap(),
                "--frames",
                "9",
                "--codec",
                "none",
                "--period",
                "0.001",
            ],
        );
        assert_eq!(s["frames_written"], 9, "{codec} {dtype}: {s}");
        let (shape_a, a) = &reference[dtype];
        let (shape_b, b) = frames_of(&copy);
        assert_eq!(shape_a, &[7, 24, 40], "{codec} {dtype}");
        assert_eq!(shape_b, [9, 24, 40], "{codec} {dtype}");
        // Frames 7 and 8 wrap to 0 and 1.
        let frame = a.len() / 7;
        let want: Vec<u8> = a.iter().chain(&a[..2 * frame]).copied().collect();
        assert!(
            b == want,
            "{codec} {dtype}: replayed pixels differ from a raw acquisition of the same seed"
        );
    }
}

#[test]
fn a_detflow_decoded_replay_conforms_and_windows_the_roi() {
    let dir = tempfile::tempdir().unwrap();
    let (_, raw) = acquire(dir.path(), "raw", &seeded("u16", "none"));
    let (_, source) = acquire(dir.path(), "bslz4", &seeded("u16", "bslz4"));
    let mut det = ReplayDetector::open(&source, "/entry/data/data").unwrap();
    assert_eq!((det.frames(), det.frame_size()), (7, (40, 24)));
    conformance::check_all(&mut det, &ConformanceConfig::default()).unwrap();

    let roi = Roi {
        min_x: 3,
        min_y: 2,
        size_x: 5,
        size_y: 4,
    };
    det.configure(&AcquisitionConfig {
        roi,
        pixel_type: PixelType::U16,
        exposure: Duration::ZERO,
        period: Duration::ZERO,
        image_mode: ImageMode::Multiple,
        num_images: 8,
        ..AcquisitionConfig::default()
    })
    .unwrap();
    det.start().unwrap();
    let (_, all) = frames_of(&raw);
    let frame = 40 * 24 * 2;
    let mut buf = vec![0u8; 5 * 4 * 2];
    for n in 0..8 {
        det.read_frame(&mut buf, Duration::from_secs(1)).unwrap();
        let f = &all[(n % 7) * frame..][..frame];
        let want: Vec<u8> = (2..6)
            .flat_map(|y| &f[(y * 40 + 3) * 2..(y * 40 + 8) * 2])
            .copied()
            .collect();
        assert_eq!(buf, want, "frame {n}");
    }
    assert!(!det.is_acquiring());
}

#[test]
fn filters_neither_hdf5_nor_detflow_decode_are_refused_by_id_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.h5");
    {
        let f = hdf5::File::create(&path).unwrap();
        // hdf5-metno refuses filters this HDF5 lacks, so they are added to the DCPL raw, as
        // optional filters (as detflow and h5py record them).
        let with_filters = |name: &str, chunk: [usize; 3], shuffle: bool, id: i32, cd: &[u32]| {
            let mut dcpl = hdf5::plist::DatasetCreate::build();
            dcpl.chunk(chunk);
            if shuffle {
                dcpl.shuffle();
            }
            let dcpl = dcpl.finish().unwrap();
            let _lock = hdf5_sys::LOCK.lock();
            // SAFETY: the DCPL id is live; cd points to cd.len() u32s that HDF5 copies.
            let status = unsafe {
                hdf5_sys::h5p::H5Pset_filter(
                    dcpl.id(),
                    id,
                    hdf5_sys::h5z::H5Z_FLAG_OPTIONAL,
                    cd.len(),
                    cd.as_ptr(),
                )
            };
            assert!(status >= 0);
            f.new_dataset::<u16>()
                .set_create_plist(&dcpl)
                .chunk(chunk)
                .shape([2, 4, 5])
                .create(name)
                .unwrap();
        };
        // An unknown filter.
        with_filters("unknown", [1, 4, 5], false, 32099, &[1, 2]);
        // LZ4, which detflow decodes, but two frames per chunk.
        with_filters("two_per_chunk", [2, 4, 5], false, 32004, &[40]);
        // LZ4 after shuffle: detflow decodes a single filter only.
        with_filters("shuffled", [1, 4, 5], true, 32004, &[40]);
        // LZ4 with one frame per chunk, no chunk written: playable, the frames are the fill.
        with_filters("unwritten", [1, 4, 5], false, 32004, &[40]);
    }
    let mut det = ReplayDetector::open(&path, "/unwritten").unwrap();
    det.configure(&AcquisitionConfig {
        roi: Roi::full(5, 4),
        pixel_type: PixelType::U16,
        exposure: Duration::ZERO,
        image_mode: ImageMode::Single,
        ..AcquisitionConfig::default()
    })
    .unwrap();
    det.start().unwrap();
    let mut buf = vec![0xEEu8; 5 * 4 * 2];
    det.read_frame(&mut buf, Duration::from_secs(1)).unwrap();
    assert_eq!(buf, [0; 40], "an unwritten chunk reads as the fill value 0");
    let file = path.display().to_string();
    for (ds, why) in [
        ("/unknown", "nor can detflow"),
        ("/two_per_chunk", "one frame per chunk"),
        ("/shuffled", "single filter"),
    ] {
        let e = ReplayDetector::open(&path, ds).unwrap_err();
        let want = format!("replay {file}::{ds}: compressed with HDF5 filter ");
        assert!(e.message.starts_with(&want), "{ds}: {e}");
        let id = if ds == "/unknown" { "32099" } else { "32004" };
        assert!(
            e.message.contains(&format!("filter {id}, which")),
            "{ds}: {e}"
        );
        assert!(e.message.contains(why), "{ds}: {e}");
        assert_eq!(e.kind(), detflow_hal::ErrorKind::InvalidConfig);
    }
}

#[test]
fn replay_refuses_what_it_cannot_play() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--backend",
        "replay",
        "--replay",
        "/nonexistent/file.h5",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid replay \"/nonexistent/file.h5\": no such file"),
        "{err}"
    );
    let path = dir.path().join("flat.h5");
    {
        let f = hdf5::File::create(&path).unwrap();
        f.new_dataset::<u16>().shape([4, 5]).create("d").unwrap();
    }
    let e = ReplayDetector::open(&path, "/d").unwrap_err();
    assert!(e.message.contains("is not 3-D"), "{e}");
}

#[test]
fn the_replay_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stack.h5");
    {
        let f = hdf5::File::create(&path).unwrap();
        let data: Vec<u16> = (0..6 * 20 * 24).map(|i| (i * 7 % 65_521) as u16).collect();
        let ds = f
            .new_dataset::<u16>()
            .shape([6, 20, 24])
            .chunk([1, 20, 24])
            .deflate(3)
            .create("stack")
            .unwrap();
        ds.write_raw(&data).unwrap();
    }
    let mut det = ReplayDetector::open(&path, "/stack").unwrap();
    assert_eq!((det.frames(), det.frame_size()), (6, (24, 20)));
    let cfg = ConformanceConfig {
        allocations: Some(CountingAllocator::thread_allocations),
        ..ConformanceConfig::default()
    };
    conformance::check_all(&mut det, &cfg).unwrap();

    // An offset ROI is a window of the stored frame; frames wrap after the last.
    det.configure(&AcquisitionConfig {
        roi: Roi {
            min_x: 3,
            min_y: 2,
            size_x: 5,
            size_y: 4,
        },
        pixel_type: PixelType::U16,
        exposure: Duration::ZERO,
        period: Duration::ZERO,
        image_mode: ImageMode::Multiple,
        num_images: 7,
        ..AcquisitionConfig::default()
    })
    .unwrap();
    det.start().unwrap();
    let mut buf = vec![0u8; 5 * 4 * 2];
    let mut firsts = Vec::new();
    while det.is_acquiring() {
        det.read_frame(&mut buf, Duration::from_secs(1)).unwrap();
        firsts.push(u16::from_ne_bytes([buf[0], buf[1]]));
    }
    let at = |frame: usize| ((frame * 480 + 2 * 24 + 3) * 7 % 65_521) as u16;
    assert_eq!(firsts, [0, 1, 2, 3, 4, 5, 0].map(at));
}

/// Sends 16 x 16 u16 frames in 3 packets each to `to`, one per millisecond, until stopped.
fn stream(to: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sender = UdpSender::new(to, 200).unwrap();
        let frame: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let t0 = Instant::now();
        let mut id = 1;
        while !stop.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(60) {
            sender.send_frame(id, &frame).unwrap();
            id += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

#[test]
fn the_udp_backend_conforms() {
    let mut det = UdpReceiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        (16, 16),
        PixelType::U16,
        Incomplete::Drop,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = stream(det.local_addr(), stop.clone());
    let cfg = ConformanceConfig {
        paced: false,
        allocations: Some(CountingAllocator::thread_allocations),
        ..ConformanceConfig::default()
    };
    let result = conformance::check_all(&mut det, &cfg);
    stop.store(true, Ordering::Release);
    sender.join().unwrap();
    result.unwrap();
}

/// Sends the packets of frame `id` (3 packets of a 48-byte frame) except those in `skip`.
fn send_packets(socket: &UdpSocket, to: SocketAddr, id: u64, skip: &[u32]) {
    for i in 0..3 {
        if skip.contains(&i) {
            continue;
        }
        let h = PacketHeader {
            frame_id: id,
            packet_index: i,
            packet_count: 3,
            frame_bytes: 48,
        };
        let mut d = h.encode().to_vec();
        d.extend(std::iter::repeat_n(id as u8, h.span().1));
        socket.send_to(&d, to).unwrap();
    }
}

#[test]
fn missing_packets_and_frames_are_reported_once_each() {
    for policy in [Incomplete::Drop, Incomplete::Flag] {
        let mut det = UdpReceiver::bind(
            "127.0.0.1:0".parse().unwrap(),
            (4, 6),
            PixelType::U16,
            policy,
        )
        .unwrap();
        det.configure(&AcquisitionConfig {
            roi: Roi::full(4, 6),
            pixel_type: PixelType::U16,
            image_mode: ImageMode::Multiple,
            num_images: 5,
            ..AcquisitionConfig::default()
        })
        .unwrap();
        det.start().unwrap();
        let to = det.local_addr();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_packets(&tx, to, 1, &[]);
        send_packets(&tx, to, 2, &[1]); // incomplete
        send_packets(&tx, to, 4, &[]); // frame 3 never sent
        send_packets(&tx, to, 5, &[2]); // incomplete, and the last: found by timeout
        let mut buf = vec![0xEEu8; 48];
        let mut seen = Vec::new();
        let t0 = Instant::now();
        while det.is_acquiring() && t0.elapsed() < Duration::from_secs(5) {
            match det.read_frame(&mut buf, Duration::from_millis(500)) {
                Ok(m) => {
                    let zeros = buf.iter().filter(|b| **b == 0).count();
                    seen.push(format!("{}:{zeros}", m.unique_id));
                }
                Err(e) => seen.push(format!("{:?}", e.kind())),
            }
        }
        let want = match policy {
            Incomplete::Drop => vec!["1:0", "Incomplete", "FrameLost", "4:0", "Incomplete"],
            Incomplete::Flag => vec![
                "1:0",
                "2:16",
                "Incomplete",
                "FrameLost",
                "4:0",
                "5:16",
                "Incomplete",
            ],
        };
        assert_eq!(seen, want, "{policy:?}");
        assert!(!det.is_acquiring());
    }
}

/// Reads lines of `child`'s stderr until one contains `what` (at most 30 s).
fn wait_for_line(stderr: &mut impl std::io::BufRead, what: &str) {
    let t0 = Instant::now();
    let mut line = String::new();
    while t0.elapsed() < Duration::from_secs(30) {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("stderr closed before {what:?}");
        }
        if line.contains(what) {
            return;
        }
    }
    panic!("no {what:?} on stderr within 30 s");
}

#[test]
fn a_seeded_udp_stream_writes_what_the_simulator_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = [
        "--frames", "20", "--size", "64x48", "--dtype", "u16", "--mode", "peaks", "--seed", "9",
    ];
    let (_, direct) = acquire(dir.path(), "direct", &sim);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut receiver = common::detflow()
        .args([
            "acquire",
            "--json",
            "--backend",
            "udp",
            "--udp-listen",
            &listen,
            "--frames",
            "20",
            "--size",
            "64x48",
            "--dtype",
            "u16",
            "--path",
            dir.path().to_str().unwrap(),
            "--name",
            "udp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(receiver.stderr.take().unwrap());
    wait_for_line(&mut stderr, "receiving on udp");
    let sent = common::command(env!("CARGO_BIN_EXE_detflow"))
        .args([
            "udp-send",
            "--to",
            &listen,
            "--json",
            "--packet-bytes",
            "1400",
            "--period",
            "0.002",
        ])
        .args(sim)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(report["frames"], 20);
    assert_eq!(
        report["packets"],
        20 * 5,
        "6144-byte frames in 1400-byte packets"
    );

    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = receiver.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = receiver.kill();
            panic!("the receiver did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut receiver.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "receiver failed: {out}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            &s["frames_written"],
            &s["frames_incomplete"],
            &s["frames_lost"]
        ),
        (&20.into(), &0.into(), &0.into()),
        "{s}"
    );
    let udp_file = PathBuf::from(s["files"][0].as_str().unwrap());
    let (shape_a, a) = frames_of(&direct);
    let (shape_b, b) = frames_of(&udp_file);
    assert_eq!(shape_a, [20, 48, 64]);
    assert_eq!(shape_b, shape_a);
    assert!(a == b, "the received frames differ from the simulator's");
}

#[test]
fn injected_faults_are_counted_in_the_summary_and_lose_no_frame_silently() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = acquire(
        dir.path(),
        "faults",
        &[
            "--frames",
            "300",
            "--size",
            "32x32",
            "--fault-corrupt",
            "0.05",
            "--fault-drop",
            "0.05",
            "--fault-overrun",
            "0.05",
            "--fault-nack",
            "0.02",
            "--fault-bus-timeout",
            "0.01",
        ],
    );
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
    assert_eq!(
        n("frames_acquired") + n("frames_corrupted") + n("frames_lost") + n("frames_overrun"),
        300,
        "{s}"
    );
    for k in [
        "frames_corrupted",
        "frames_lost",
        "frames_overrun",
        "bus_errors",
    ] {
        assert!(n(k) > 0, "{k} is 0: {s}");
    }
    assert_eq!(n("frames_written"), n("frames_acquired"));
    assert_eq!(n("frames_incomplete"), 0);
    assert!(s["error"].is_null(), "{s}");
}

#[test]
fn persistent_bus_errors_fail_the_run_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--json",
        "--frames",
        "50",
        "--size",
        "16x16",
        "--fault-nack",
        "0.9",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    // Either the start's control writes already fail, or the run fails on 10 bus errors
    // in a row; never a silent success.
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("I2C"), "{all}");
}

/// A child the tests spawn while this process has an HDF5 file open (as another test's
/// `detflow acquire` may be spawned) does not inherit that file, nor so its lock, and runs
/// with HDF5's file locks on.
#[test]
fn a_child_of_the_tests_inherits_none_of_their_files() {
    // The test process itself runs without HDF5's locks (tests/common).
    assert_eq!(
        std::env::var("HDF5_USE_FILE_LOCKING").as_deref(),
        Ok("FALSE")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.h5");
    let file = hdf5::File::create(&path).unwrap();
    let out = common::command("sh")
        .args([
            "-c",
            "ls -l /proc/$$/fd; echo \"locking=${HDF5_USE_FILE_LOCKING-unset}\"",
        ])
        .output()
        .unwrap();
    drop(file);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}");
    assert!(
        !listing.contains("held.h5"),
        "the child holds the test's file:\n{listing}"
    );
    assert!(listing.contains("locking=unset"), "{listing}");
}
