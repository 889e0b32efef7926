//! Value references reported by a capture: one per frame written, in every write mode, in
//! the status and as JSON lines written as the frames are; and the `ref_pattern` naming.

use std::path::Path;

use detflow_hal::{EpicsTimestamp, FrameMeta};
use detflow_writer::refs::{FrameSelection, RefPattern, ValueRef};
use detflow_writer::{CaptureSession, CaptureSettings, FileNaming, WriteMode, WriterError, layout};

mod common;

use common::{SHAPE, geometry};

/// The common capture settings, with the JSON-lines reference file in `dir`.
fn settings(dir: &Path, mode: WriteMode, num_capture: u64) -> CaptureSettings {
    CaptureSettings {
        refs: Some(dir.join("refs.jsonl")),
        ..common::settings(dir, mode, num_capture)
    }
}

fn frame(id: u64) -> (FrameMeta, Vec<u8>) {
    let meta = FrameMeta {
        unique_id: id,
        timestamp: EpicsTimestamp { sec: 1, nsec: 0 },
        unix_time_s: 0.0,
        shape: SHAPE,
    };
    (meta, vec![id as u8; SHAPE.bytes()])
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn uri(dir: &Path, file: &str, index: Option<u64>) -> String {
    ValueRef::h5(
        dir.join(file),
        Some(layout::LINK_PATH),
        index.map_or(FrameSelection::All, FrameSelection::Index),
    )
    .to_string()
}

#[test]
fn stream_mode_reports_each_frame_as_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = CaptureSession::start(
        CaptureSettings {
            frames_per_file: 2,
            ..settings(dir.path(), WriteMode::Stream, 3)
        },
        geometry(),
    )
    .unwrap();
    let refs = dir.path().join("refs.jsonl");
    let (m, px) = frame(1);
    s.push(&m, &px).unwrap();
    // Already on disk, before the capture ends.
    let seen = lines(&refs);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["uri"], uri(dir.path(), "t_001.h5", Some(0)));
    assert_eq!(seen[0]["dtype"], "uint16");
    assert_eq!(seen[0]["shape"], serde_json::json!([3, 4]));
    for id in 2..=3 {
        let (m, px) = frame(id);
        s.push(&m, &px).unwrap();
    }
    let (status, result) = s.finish();
    result.unwrap();
    let expected = vec![
        uri(dir.path(), "t_001.h5", Some(0)),
        uri(dir.path(), "t_001.h5", Some(1)),
        uri(dir.path(), "t_002.h5", Some(0)),
    ];
    let from_status: Vec<String> = status.value_refs.iter().map(|r| r.uri).collect();
    assert_eq!(from_status, expected);
    let from_file: Vec<String> = lines(&refs)
        .iter()
        .map(|v| v["uri"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(from_file, expected);
    // Each reference resolves to the frame it names.
    for (k, r) in expected.iter().enumerate() {
        let r: ValueRef = r.parse().unwrap();
        let FrameSelection::Index(i) = r.selection() else {
            panic!("{r}")
        };
        let f = hdf5::File::open(r.path()).unwrap();
        let d = f.dataset(r.dataset().unwrap()).unwrap();
        let v: Vec<u16> = d.read_raw().unwrap();
        let frame = &v[i as usize * 12..(i as usize + 1) * 12];
        let id = k as u16 + 1;
        assert!(frame.iter().all(|&x| x == id | (id << 8)), "{r}: {frame:?}");
    }
}

#[test]
fn single_and_capture_modes_report_their_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Single, 0), geometry()).unwrap();
    for id in 1..=2 {
        let (m, px) = frame(id);
        s.push(&m, &px).unwrap();
    }
    let (status, result) = s.finish();
    result.unwrap();
    let got: Vec<String> = status.value_refs.iter().map(|r| r.uri).collect();
    assert_eq!(
        got,
        vec![
            uri(dir.path(), "t_001.h5", None),
            uri(dir.path(), "t_002.h5", None)
        ],
        "Single mode files hold one (H, W) frame: no index"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Capture, 2), geometry()).unwrap();
    let (m, px) = frame(1);
    s.push(&m, &px).unwrap();
    assert!(
        lines(&dir.path().join("refs.jsonl")).is_empty(),
        "Capture mode reports frames when it writes them"
    );
    let (m, px) = frame(2);
    s.push(&m, &px).unwrap();
    let (status, result) = s.finish();
    result.unwrap();
    assert_eq!(status.value_refs.len(), 2);
    assert_eq!(lines(&dir.path().join("refs.jsonl")).len(), 2);
}

#[test]
fn a_ref_pattern_puts_each_point_in_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let pattern: RefPattern = format!("h5file://{}/scan_{{index:04d}}.h5", dir.path().display())
        .parse()
        .unwrap();
    let mut s = CaptureSession::start(
        CaptureSettings {
            ref_pattern: Some(pattern),
            naming: FileNaming {
                number: 7,
                ..settings(dir.path(), WriteMode::Stream, 0).naming
            },
            ..settings(dir.path(), WriteMode::Stream, 0)
        },
        geometry(),
    )
    .unwrap();
    for id in 1..=3 {
        let (m, px) = frame(id);
        s.push(&m, &px).unwrap();
    }
    let (status, result) = s.finish();
    result.unwrap();
    let got: Vec<String> = status.value_refs.iter().map(|r| r.uri).collect();
    let expected: Vec<String> = (7..10)
        .map(|i| uri(dir.path(), &format!("scan_{i:04}.h5"), None))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(status.file_number, 10);
    for i in 7..10 {
        let f = hdf5::File::open(dir.path().join(format!("scan_{i:04}.h5"))).unwrap();
        assert_eq!(f.dataset(layout::LINK_PATH).unwrap().shape(), vec![3, 4]);
    }
}

#[test]
fn patterns_detflow_cannot_write_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    for (pattern, why) in [
        ("file:///tmp/x_{index}.tif", "h5file://"),
        ("h5file:///tmp/x_{index}.h5::bar", "leave out '::dataset'"),
        (
            "h5file:///tmp/x_{index}.h5::/entry/data/data[0]",
            "[..] selection",
        ),
    ] {
        let e = CaptureSession::start(
            CaptureSettings {
                ref_pattern: Some(pattern.parse().unwrap()),
                ..settings(dir.path(), WriteMode::Stream, 0)
            },
            geometry(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                WriterError::Setting {
                    setting: "ref-pattern",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{pattern}: {e}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "refused settings leave nothing behind"
    );
}
