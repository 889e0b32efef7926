//! Shared-memory mode across processes: a child process (this test binary, re-executed in
//! producer mode) runs a ring in a file mapping and commits frames; this process reads them
//! with `ShmReader`, and `examples/shm_reader.py` reads them with numpy while the child is
//! still producing.
//!
//! The Python test makes a virtual environment with numpy under the target directory. Like the
//! other interop tests it fails, never skips, when that is impossible.

#![cfg(not(loom))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use detflow_ring::{Policy, Ring, RingConfig, ShmReader, SlotMeta};

const WIDTH: u32 = 64;
const HEIGHT: u32 = 32;
/// areaDetector NDDataType UInt16.
const UINT16: u32 = 3;
const CHILD_ENV: &str = "DETFLOW_RING_SHM_CHILD";

/// Pixel `i` of frame `id`: every frame differs, and its sum is known to both sides.
fn pixel(id: u64, i: usize) -> u16 {
    (id.wrapping_mul(31).wrapping_add(i as u64) & 0xFFFF) as u16
}

fn expected_sum(id: u64) -> u64 {
    (0..(WIDTH * HEIGHT) as usize)
        .map(|i| u64::from(pixel(id, i)))
        .sum()
}

/// Entry point of the child process: does nothing unless [`CHILD_ENV`] is set to
/// `PATH FRAMES PERIOD_US`; then creates the ring at PATH, commits FRAMES frames (or until
/// `PATH.stop` appears) one every PERIOD_US microseconds, and drops the producer.
#[test]
fn child_producer_entry_point() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut args = args.split(' ');
    let path = PathBuf::from(args.next().unwrap());
    let frames: u64 = args.next().unwrap().parse().unwrap();
    let period = Duration::from_micros(args.next().unwrap().parse().unwrap());
    let stop = path.with_extension("stop");
    let len = (WIDTH * HEIGHT * 2) as usize;
    let (mut producer, ring) = Ring::new(RingConfig {
        slots: 4,
        slot_bytes: len,
        policy: Policy::DropNewest,
        shm: Some(path.clone()),
    })
    .unwrap();
    // No lossless consumer: a lossy-only ring never holds the producer back.
    let _keep = ring;
    let started = Instant::now();
    for id in 0..frames {
        if id.is_multiple_of(64) && stop.exists() {
            break;
        }
        let mut slot = producer.grant(Duration::from_secs(1)).unwrap();
        for (i, px) in slot.bytes_mut()[..len].chunks_exact_mut(2).enumerate() {
            px.copy_from_slice(&pixel(id, i).to_le_bytes());
        }
        slot.commit(SlotMeta {
            frame_id: id + 1000,
            width: WIDTH,
            height: HEIGHT,
            pixel_type: UINT16,
            len: len as u64,
            ..SlotMeta::default()
        });
        // Pace by the clock so the period holds on a loaded machine too.
        let due = started + period * (id as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Starts the child producer on a fresh file; returns it and the file's path.
fn spawn_producer(tag: &str, frames: u64, period_us: u64) -> (Child, PathBuf) {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    let path = dir.join(format!("detflow-ring-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("stop"));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_producer_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{} {frames} {period_us}", path.display()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("the test binary re-executes itself");
    (child, path)
}

/// Opens the ring once the child has created it.
fn open_when_ready(path: &Path) -> ShmReader {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ShmReader::open(path) {
            Ok(reader) => return reader,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the child's ring never appeared: {e}"),
        }
    }
}

fn u16_sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(2)
        .map(|px| u64::from(u16::from_le_bytes([px[0], px[1]])))
        .sum()
}

fn cleanup(mut child: Child, path: &Path) {
    let status = child.wait().unwrap();
    assert!(status.success(), "child producer failed: {status}");
    std::fs::remove_file(path).unwrap();
    let _ = std::fs::remove_file(path.with_extension("stop"));
}

#[test]
fn frames_cross_the_process_boundary_intact() {
    // The child produces until told to stop (at most FRAMES), so a reader that a loaded
    // machine starves for a while still catches frames before the end.
    const FRAMES: u64 = 200_000;
    const WANTED: u64 = 50;
    let (child, path) = spawn_producer("rust", FRAMES, 200);
    let reader = open_when_ready(&path);
    assert_eq!((reader.slots(), reader.slot_bytes()), (4, 4096));
    let mut buf = Vec::new();
    let (mut intact, mut missed, mut next) = (0u64, 0u64, 0u64);
    let mut stop_sent = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let closed = reader.is_closed();
        let head = reader.produced();
        while next < head {
            match reader.read(next, &mut buf) {
                Some(frame) => {
                    let id = frame.meta.frame_id - 1000;
                    assert_eq!(id, frame.sequence);
                    assert_eq!((frame.meta.width, frame.meta.height), (WIDTH, HEIGHT));
                    assert_eq!(buf.len(), (WIDTH * HEIGHT * 2) as usize);
                    assert_eq!(u16_sum(&buf), expected_sum(id), "frame {id} intact");
                    intact += 1;
                }
                None => missed += 1,
            }
            next += 1;
        }
        if closed {
            break;
        }
        if intact >= WANTED && !stop_sent {
            std::fs::write(path.with_extension("stop"), b"").unwrap();
            stop_sent = true;
        }
        assert!(
            Instant::now() < deadline,
            "the child never finished ({intact} frames read intact, stop sent: {stop_sent})"
        );
        std::thread::sleep(Duration::from_micros(300));
    }
    let produced = reader.produced();
    assert!(
        produced == FRAMES || produced.is_multiple_of(64),
        "the child stops only at a multiple of 64 frames: {produced}"
    );
    assert_eq!(intact + missed, produced);
    assert!(
        intact >= WANTED,
        "only {intact} of {produced} frames read intact"
    );
    let latest = reader
        .latest(&mut buf)
        .expect("the last frames stay readable");
    assert_eq!(latest.sequence, produced - 1);
    cleanup(child, &path);
}

/// A Python interpreter in a virtual environment with numpy, made once per target directory
/// (built in a private folder and renamed into place, so concurrent test binaries do not
/// trip over each other). Panics with pip's output when it cannot be made.
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ring-venv");
        detflow_test_support::python_venv(&root, &["numpy"])
    })
}

#[test]
fn python_reader_reads_the_newest_frame_in_place_while_frames_are_produced() {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shm_reader.py");
    // Long enough for the interpreter and numpy to start several times over; stopped early.
    let (mut child, path) = spawn_producer("python", 200_000, 500);
    open_when_ready(&path);
    for _ in 0..3 {
        let out = Command::new(python)
            .arg(&script)
            .arg(&path)
            .output()
            .expect("the venv's python runs");
        assert!(
            out.status.success(),
            "shm_reader.py failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let id = line["frame_id"].as_u64().expect("frame_id") - 1000;
        assert_eq!(line["sequence"].as_u64(), Some(id));
        assert_eq!(line["shape"], serde_json::json!([HEIGHT, WIDTH]));
        assert_eq!(line["dtype"], "uint16");
        assert_eq!(line["sum"].as_u64(), Some(expected_sum(id)), "{line}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "read while the producer was still running"
        );
    }
    std::fs::write(path.with_extension("stop"), b"").unwrap();
    cleanup(child, &path);
}
