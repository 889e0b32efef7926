//! `detflow vds --rank-files`: the master over a fan's rank files, read by h5py + hdf5plugin
//! as one dataset per channel equal to the single-writer file of the same series (bslz4 and
//! raw), lost images as the fill value with the mask saying so, after the directory moved;
//! the text and JSON reports; bad input refused before any file exists.

mod common;
#[path = "../writer/tests/common/rank_files.rs"]
mod rank_files;

use std::path::{Path, PathBuf};

use detflow_writer::Codec;
use rank_files::{TestSeries, write_rank, write_ranks, write_single};
use serde_json::json;

const CHECK: &str = r#"
import sys, json, os
import numpy as np, h5py
import hdf5plugin

for e in json.load(open(sys.argv[1])):
    what = e["what"]
    with h5py.File(e["master"], "r") as m, h5py.File(e["single"], "r") as s:
        data = m["/entry/data/data"]
        assert data.is_virtual, what
        for src in data.virtual_sources():
            assert not os.path.isabs(src.file_name), (what, src.file_name)
        assert data.shape == (e["n"], e["h"], e["w"]) and data.dtype == np.uint16, (what, data.shape)
        lost = e["lost"]
        for c, name in enumerate(e["channels"]):
            want = s["/entry/instrument/detector/" + name][()]
            want[lost] = np.iinfo(np.uint16).max
            for path in ["/entry/data/" + name, "/entry/instrument/detector/" + name]:
                got = m[path][()]
                assert np.array_equal(got, want), f"{what} {path}: pixels differ"
            if c == 0:
                assert np.array_equal(data[()], want), what
            # One image at a time, as a viewer reads it.
            for i in [0, 5, e["n"] - 1]:
                assert np.array_equal(m["/entry/data/" + name][i], want[i]), (what, name, i)
        mask = np.ones(e["n"], dtype=np.uint8)
        mask[lost] = 0
        assert np.array_equal(m["/entry/data/image_present"][()], mask), what
        ids = np.arange(e["n"], dtype=np.uint64)
        ids[lost] = np.iinfo(np.uint64).max
        got_ids = m["/entry/instrument/detector/detectorSpecific/image_id"][()]
        assert np.array_equal(got_ids, ids), (what, got_ids)
        assert m["/entry/instrument/detector/detectorSpecific/detflow_ranks"][()] == 3
        assert m["/entry"].attrs["default"] in (b"data", "data")
print("ok")
"#;

/// What databroker does with an areaDetector HDF5 resource: its `AD_HDF5` handler (the
/// bluesky clients' own package, area-detector-handlers) reads `/entry/data/data`.
const DATABROKER_CHECK: &str = r#"
import sys
import numpy as np, h5py, hdf5plugin
from area_detector_handlers.handlers import AreaDetectorHDF5Handler

master, single, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(single, "r") as s:
    want = s["/entry/data/data"][()]
handler = AreaDetectorHDF5Handler(master, frame_per_point=n)
got = np.asarray(handler(point_number=0))
handler.close()
assert got.shape == want.shape, (got.shape, want.shape)
assert np.array_equal(got, want), "the master's frames differ from the single writer's"
# One frame per point, as a step scan's resource says.
handler = AreaDetectorHDF5Handler(master, frame_per_point=1)
for i in [0, n // 2, n - 1]:
    assert np.array_equal(np.asarray(handler(point_number=i)).squeeze(), want[i]), i
handler.close()
print("ok")
"#;

fn vds(args: &[&str]) -> std::process::Output {
    let mut all = vec!["vds"];
    all.extend_from_slice(args);
    common::run(&all)
}

fn strs(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

/// `vds --json --out OUT --rank-files FILES...`, checked to succeed; its report.
fn build(out: &Path, files: &[PathBuf]) -> serde_json::Value {
    let mut args = vec!["--json", "--out", out.to_str().unwrap(), "--rank-files"];
    args.extend(strs(files));
    let o = vds(&args);
    assert!(
        o.status.success(),
        "vds --rank-files: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::summary(&o)
}

#[test]
fn h5py_reads_the_master_as_the_single_writer_file_after_the_directory_moves() {
    let root = tempfile::tempdir().unwrap();
    let before = root.path().join("before");
    std::fs::create_dir(&before).unwrap();
    let mut cases = Vec::new();
    for (codec, tag) in [(Codec::BitshuffleLz4, "bslz4"), (Codec::None, "raw")] {
        let series = TestSeries::new(codec);
        let files = write_ranks(&before, tag, &series);
        write_single(&before, &format!("{tag}_single"), &series);
        let report = build(&before.join(format!("{tag}_master.h5")), &files);
        assert_eq!(report["images_present"], 50);
        assert_eq!(report["source_paths"], "relative");
        cases.push((tag.to_string(), series, Vec::<u64>::new()));
    }
    // A bslz4 series whose rank 1 stopped after 3 of its images.
    let series = TestSeries::new(Codec::BitshuffleLz4);
    let deal = series.deal;
    let kept: Vec<u64> = (0..3).map(|i| deal.image_id(1, i).unwrap()).collect();
    let files = vec![
        write_rank(&before, "lost", &series, 0, |_| true),
        write_rank(&before, "lost", &series, 1, |id| kept.contains(&id)),
        write_rank(&before, "lost", &series, 2, |_| true),
    ];
    write_single(&before, "lost_single", &series);
    let report = build(&before.join("lost_master.h5"), &files);
    assert_eq!(report["rank_files"][1]["missing"], 13);
    let lost: Vec<u64> = (0..50)
        .filter(|&id| deal.rank_of(id) == 1 && !kept.contains(&id))
        .collect();
    cases.push(("lost".into(), series, lost));

    let after = root.path().join("after");
    std::fs::rename(&before, &after).unwrap();
    let spec: Vec<_> = cases
        .iter()
        .map(|(tag, s, lost)| {
            json!({
                "what": tag,
                "master": after.join(format!("{tag}_master.h5")),
                "single": after.join(format!("{tag}_single_0001.h5")),
                "n": s.images, "h": rank_files::H, "w": rank_files::W,
                "channels": s.channels,
                "lost": lost,
            })
        })
        .collect();
    let spec_path = root.path().join("check.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let out = common::run_python(CHECK, &[&spec_path]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn the_text_report_has_one_line_per_rank_with_present_over_expected() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let files = vec![
        write_rank(dir.path(), "scan", &series, 0, |id| id != 1),
        write_rank(dir.path(), "scan", &series, 2, |_| true),
    ];
    let out = dir.path().join("scan_master.h5");
    let mut args = vec!["--out", out.to_str().unwrap(), "--rank-files"];
    args.extend(strs(&files));
    let o = vds(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    let rank_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("rank "))
        .collect();
    assert_eq!(rank_lines.len(), 3, "{stdout}");
    for (line, (present, file)) in rank_lines.iter().zip([
        ("17/18", "scan_r0_0001.h5"),
        ("0/16", "(no file)"),
        ("16/16", "scan_r2_0001.h5"),
    ]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.contains(&present), "{line}");
        assert!(line.ends_with(file), "{line}");
    }
    assert!(
        stdout.contains("present         33 of 50 images (17 missing"),
        "{stdout}"
    );
    assert!(
        stderr.contains("note: rank 1: no file given"),
        "the missing rank is noted: {stderr}"
    );
}

#[test]
fn bad_rank_files_are_refused_before_the_master_exists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let series = TestSeries::new(Codec::None);
    let ranks = write_ranks(d, "scan", &series);
    let other = TestSeries {
        unique_id: "series-b".into(),
        ..series.clone()
    };
    let b = write_rank(d, "other", &other, 1, |_| true);
    let out = d.join("scan_master.h5");
    let refused = |files: &[&Path], words: &[&str]| {
        let mut args = vec!["--out", out.to_str().unwrap(), "--rank-files"];
        args.extend(files.iter().map(|p| p.to_str().unwrap()));
        let o = vds(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{files:?} accepted");
        for w in words {
            assert!(stderr.contains(w), "{stderr:?} does not say {w:?}");
        }
        assert!(!out.exists(), "{stderr}: the master was written");
    };
    refused(
        &[&ranks[0], &b],
        &[
            "cannot build the master file",
            "other_r1_0001.h5",
            "series_unique_id",
            "\"series-b\"",
        ],
    );
    refused(&[&ranks[0], &ranks[0]], &["two files of one rank"]);
    let single = write_single(d, "single", &series);
    refused(&[&single], &["single_0001.h5", "not a rank file"]);
    refused(&[&d.join("nothing.h5")], &["nothing.h5", "no such file"]);
    // --rank-files and value references do not mix.
    let o = vds(&[
        "--out",
        out.to_str().unwrap(),
        "--rank-files",
        ranks[0].to_str().unwrap(),
        "--from-refs",
        "refs.jsonl",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn databroker_s_area_detector_handler_reads_the_master_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::BitshuffleLz4);
    let files = write_ranks(dir.path(), "scan", &series);
    let single = write_single(dir.path(), "scan_single", &series);
    let master = dir.path().join("scan_master.h5");
    build(&master, &files);
    let py =
        detflow_test_support::python_venv(&common::bluesky_venv_root(), common::BLUESKY_PACKAGES);
    let out = detflow_test_support::run_step(
        std::process::Command::new(py)
            .arg("-c")
            .arg(DATABROKER_CHECK)
            .arg(&master)
            .arg(&single)
            .arg(series.images.to_string()),
        "databroker's AD_HDF5 handler on the master",
    );
    assert_eq!(out.trim(), "ok");
}
