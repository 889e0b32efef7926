//! Value references and master files, end to end through the binary, read back with h5py:
//! `acquire --refs --vds`, `--ref-pattern`, a moved directory, missing sources, `detflow
//! vds`, and the fallback that keeps the references as strings.

mod common;

use std::path::Path;

/// h5py: the master's VDS equals the stacked frames of its sources, in point order.
const CHECK_VDS: &str = r#"
import sys, json, os
import numpy as np, h5py
master = sys.argv[1]
with h5py.File(master, "r") as f:
    d = f["/entry/data/data"]
    assert d.is_virtual, "not a virtual dataset"
    refs = [r for r in f["/entry/data/data_refs"].asstr()[()]]
    sources = d.virtual_sources()
    frames = []
    base = os.path.dirname(os.path.abspath(master))
    for r in refs:
        path, rest = r[len("h5file://"):].split("::", 1)
        # Resolve against where the master is now (the tree may have moved).
        path = os.path.join(base, os.path.basename(path)) if not os.path.exists(path) else path
        ds, sel = (rest.split("[", 1) + [None])[:2]
        with h5py.File(path, "r") as s:
            v = s[ds][()]
        if sel is not None:
            v = v[int(sel.rstrip("]"))]
        frames.append(v)
    stacked = np.stack(frames)
    data = d[()]
    assert data.shape == stacked.shape, (data.shape, stacked.shape)
    assert data.dtype == stacked.dtype, (data.dtype, stacked.dtype)
    assert (data == stacked).all(), "VDS differs from the stacked sources"
    assert data.std() > 0, "frames are blank"
    print(json.dumps({
        "shape": list(d.shape), "dtype": str(d.dtype), "fillvalue": float(d.fillvalue),
        "sources": sorted({s.file_name for s in sources}), "points": len(refs),
        "present": f["/entry/data/data_present"][()].tolist(),
    }))
"#;

fn acquire(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "acquire", "--frames", "5", "--size", "16x12", "--seed", "3", "--json", "--path",
    ];
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = common::run(&args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::summary(&out)
}

#[test]
fn acquire_reports_refs_and_builds_a_master_that_h5py_reads() {
    let dir = tempfile::tempdir().unwrap();
    let refs_file = dir.path().join("refs.jsonl");
    let master = dir.path().join("master.h5");
    let s = acquire(
        dir.path(),
        &[
            "--frames-per-file",
            "2",
            "--refs",
            refs_file.to_str().unwrap(),
            "--vds",
            master.to_str().unwrap(),
        ],
    );
    let refs = s["value_refs"].as_array().unwrap();
    assert_eq!(refs.len(), 5);
    assert_eq!(s["value_refs_total"], 5);
    let first = format!(
        "h5file://{}/detflow_0001.h5::/entry/data/data[0]",
        dir.path().display()
    );
    assert_eq!(refs[0]["uri"], first.as_str());
    assert_eq!(refs[0]["dtype"], "uint16");
    assert_eq!(refs[0]["shape"], serde_json::json!([12, 16]));
    assert_eq!(
        refs[4]["uri"],
        format!(
            "h5file://{}/detflow_0003.h5::/entry/data/data[0]",
            dir.path().display()
        )
        .as_str()
    );
    // The JSON lines file says the same, line by line.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&refs_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&lines, refs);
    assert_eq!(s["vds"]["virtual_dataset"], true, "{s}");
    assert_eq!(s["vds"]["shape"], serde_json::json!([5, 12, 16]));

    let seen: serde_json::Value =
        serde_json::from_str(&common::run_python(CHECK_VDS, &[&master])).unwrap();
    assert_eq!(seen["shape"], serde_json::json!([5, 12, 16]));
    assert_eq!(seen["dtype"], "uint16");
    assert_eq!(seen["fillvalue"], 65535.0, "the fill value fits uint16");
    assert_eq!(
        seen["sources"],
        serde_json::json!(["detflow_0001.h5", "detflow_0002.h5", "detflow_0003.h5"]),
        "sources next to the master are named relatively"
    );
}

#[test]
fn a_ref_pattern_run_survives_moving_its_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("scan");
    std::fs::create_dir(&dir).unwrap();
    let pattern = format!("h5file://{}/point_{{index:04d}}.h5", dir.display());
    let master = dir.join("vds.h5");
    let s = acquire(
        &dir,
        &[
            "--ref-pattern",
            &pattern,
            "--number",
            "0",
            "--vds",
            master.to_str().unwrap(),
        ],
    );
    let uris: Vec<&str> = s["value_refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "h5file://{}/point_{i:04}.h5::/entry/data/data",
                dir.display()
            )
        })
        .collect();
    assert_eq!(
        uris, expected,
        "one file per point, as Sardana's dummy stores them"
    );
    assert_eq!(s["file_number"], 5);

    let moved = parent.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(&common::run_python(CHECK_VDS, &[&moved.join("vds.h5")])).unwrap();
    assert_eq!(seen["shape"], serde_json::json!([5, 12, 16]));
    assert_eq!(seen["points"], 5);
}

#[test]
fn detflow_vds_maps_missing_sources_to_the_fill_value() {
    let dir = tempfile::tempdir().unwrap();
    let s = acquire(dir.path(), &["--frames", "2"]);
    let mut refs: Vec<String> = s["value_refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap().to_owned())
        .collect();
    let late = dir.path().join("late.h5");
    refs.push(format!("h5file://{}[0]", late.display()));
    let master = dir.path().join("m.h5");
    let mut args = vec![
        "vds",
        "--out",
        master.to_str().unwrap(),
        "--dataset",
        "/entry/data/data",
        "--json",
    ];
    args.extend(refs.iter().map(String::as_str));
    let out = common::run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = common::summary(&out);
    assert_eq!(report["virtual_dataset"], true, "{report}");
    assert_eq!(report["sources_present"], 2);
    let seen = common::run_python(
        r#"
import sys, numpy as np, h5py
with h5py.File(sys.argv[1], "r") as f:
    d = f["/entry/data/data"]
    assert d.shape == (3, 12, 16), d.shape
    assert d[:2].any()
    assert (d[2] == 65535).all(), "a missing source reads as the fill value"
    assert f["/entry/data/data_present"][()].tolist() == [1, 1, 0]
print("ok")
"#,
        &[&master],
    );
    assert_eq!(seen.trim(), "ok");
}

#[test]
fn without_a_vds_the_master_keeps_the_references_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("m.h5");
    let refs = [
        "file:///data/a%20b.tif",
        "h5file:///data/b.h5::/entry/data/data[0]",
    ];
    let out = common::run(&["vds", "--out", master.to_str().unwrap(), refs[0], refs[1]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no virtual dataset"), "{stderr}");
    let seen = common::run_python(
        r#"
import sys, json, h5py
with h5py.File(sys.argv[1], "r") as f:
    g = f["/entry/data"]
    r = g["data_refs"]
    print(json.dumps({"has_vds": "data" in g, "refs": list(r.asstr()[()]),
                      "why": r.attrs["vds_error"]}))
"#,
        &[&master],
    );
    let seen: serde_json::Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["has_vds"], false);
    assert_eq!(seen["refs"], serde_json::json!(refs));
    assert!(
        seen["why"]
            .as_str()
            .unwrap()
            .contains("not an HDF5 reference"),
        "{seen}"
    );
}

#[test]
fn bad_reference_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, message) in [
        (
            vec![
                "--ref-pattern".to_owned(),
                format!("h5file://{d}/{{scan}}.h5"),
            ],
            format!("invalid ref-pattern \"h5file://{d}/{{scan}}.h5\": unknown placeholder"),
        ),
        (
            vec!["--ref-pattern".to_owned(), format!("h5file://{d}/one.h5")],
            "every point needs its own file".to_owned(),
        ),
        (
            vec![
                "--ref-pattern".to_owned(),
                format!("file://{d}/x_{{index}}.tif"),
            ],
            "use an h5file:// pattern".to_owned(),
        ),
        (
            vec!["--vds".to_owned(), format!("{d}/no/such/dir/m.h5")],
            "invalid vds".to_owned(),
        ),
    ] {
        let mut all = vec!["acquire", "--frames", "3", "--size", "16x12", "--path", d];
        all.extend(args.iter().map(String::as_str));
        let out = common::run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?} was accepted");
        assert!(stderr.contains(&message), "{all:?}: {stderr}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
