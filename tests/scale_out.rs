//! One detector stream written by three writer nodes, as at a beamline, on one machine: in a
//! sandbox of network namespaces joined by a bridge (tests/common/netns.rs), "det" runs
//! `stream2-send`, "fan" runs `detflow fan`, and "node0".."node2" each run `detflow acquire
//! --backend stream2` against their rank's port, every one on its own address. The nodes
//! write into one directory (the beamline's shared filesystem), and `detflow vds
//! --rank-files` (or the fan itself, `--master`) stitches their files into one master.
//!
//! The master must equal, frame for frame and bit for bit, the file one writer makes of the
//! same series; and a node killed mid-series must cost exactly its rank's images after the
//! kill, with the presence mask, the fan's counts and the master's report all saying so.

mod common;

use std::path::{Path, PathBuf};

use common::netns::{Proc, Sandbox};
use detflow_hal::Deal;

/// The series: 600 simulated 256x256 u16 frames, bslz4 as a DCU sends them.
const FRAMES: u64 = 600;
const SIZE: &str = "256x256";
const SEED: &str = "17";
const RANKS: u64 = 3;
/// Blocks of 7: 600 is not a whole number of rounds (21 images), so the last round's
/// blocks are partial.
const BLOCK: u64 = 7;
/// The detector's Stream V2 port, and the fan's first rank port (rank k on BASE + k).
const DET_PORT: u16 = 31001;
const FAN_BASE: u16 = 32000;
/// Namespaces: the detector, the fan, the writer nodes.
const HOSTS: [&str; 5] = ["det", "fan", "node0", "node1", "node2"];

/// The detector's endpoint, as the fan and a single writer connect to it.
fn det_endpoint(sb: &Sandbox) -> String {
    format!("tcp://{}:{DET_PORT}", sb.addr("det"))
}

/// `stream2-send` in "det" with the series' settings and `extra` flags.
fn sender(sb: &Sandbox, name: &str, extra: &[&str]) -> Proc {
    let bind = det_endpoint(sb);
    let frames = FRAMES.to_string();
    let mut args = vec![
        "stream2-send",
        "--json",
        "--bind",
        &bind,
        "--compress",
        "bslz4",
        "--frames",
        &frames,
        "--size",
        SIZE,
        "--seed",
        SEED,
        "--wait-for-consumer",
        "60",
        "--send-timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    sb.spawn("det", name, &args)
}

/// `detflow acquire --backend stream2` in `ns`, connected to `endpoint`, writing NAME_* in
/// `dir`.
fn writer(sb: &Sandbox, ns: &str, endpoint: &str, dir: &Path, name: &str) -> Proc {
    let path = dir.display().to_string();
    sb.spawn(
        ns,
        &format!("acquire {name} in {ns}"),
        &[
            "acquire",
            "--backend",
            "stream2",
            "--stream2-connect",
            endpoint,
            "--stream2-timeout",
            "60",
            "--path",
            &path,
            "--name",
            name,
            "--json",
        ],
    )
}

/// The single-writer file of the series: `stream2-send` in "det" straight into one
/// `acquire` in "node0".
fn reference(sb: &Sandbox, dir: &Path) -> PathBuf {
    let mut acquire = writer(sb, "node0", &det_endpoint(sb), dir, "reference");
    // stream2-send holds the start until its consumer has connected.
    let mut send = sender(sb, "stream2-send (reference)", &[]);
    assert_eq!(send.next_json()["sent"], FRAMES);
    send.succeeds();
    let summary = acquire.next_json();
    acquire.succeeds();
    assert_eq!(summary["frames_written"], FRAMES, "{summary}");
    let file = dir.join("reference_0001.h5");
    assert_eq!(summary["files"][0], file.display().to_string(), "{summary}");
    file
}

/// `detflow fan` in "fan" for 3 ranks with `extra` flags, and a writer node per rank
/// connected to it (the fan has logged each rank's consumer).
fn fan_and_nodes(sb: &Sandbox, dir: &Path, extra: &[&str]) -> (Proc, Vec<Proc>) {
    let from = det_endpoint(sb);
    let fan_ip = sb.addr("fan");
    let bind = format!("tcp://{fan_ip}:{FAN_BASE}");
    let (ranks, block) = (RANKS.to_string(), BLOCK.to_string());
    let mut args = vec![
        "fan",
        "--json",
        "--from",
        &from,
        "--ranks",
        &ranks,
        "--bind",
        &bind,
        "--frames-per-block",
        &block,
        "--series",
        "1",
        "--send-timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    let fan = sb.spawn("fan", "fan", &args);
    let nodes: Vec<Proc> = (0..RANKS)
        .map(|k| {
            let port = FAN_BASE + k as u16;
            let endpoint = format!("tcp://{fan_ip}:{port}");
            writer(sb, &format!("node{k}"), &endpoint, dir, "scan")
        })
        .collect();
    let connected: Vec<String> = (0..RANKS)
        .map(|k| format!("rank {k}: consumer connected"))
        .collect();
    let wanted: Vec<[&str; 1]> = connected.iter().map(|l| [l.as_str()]).collect();
    let wanted: Vec<&[&str]> = wanted.iter().map(|l| &l[..]).collect();
    fan.wait_logs(&wanted);
    (fan, nodes)
}

/// Rank `rank`'s node summary once it has exited 0, and its file, checked to be named by
/// its rank.
fn node_file(node: &mut Proc, rank: u64, dir: &Path) -> (serde_json::Value, PathBuf) {
    let summary = node.next_json();
    node.succeeds();
    let file = dir.join(format!("scan_r{rank}_0001.h5"));
    assert_eq!(summary["files"][0], file.display().to_string(), "{summary}");
    (summary, file)
}

/// `detflow vds --rank-files` in "node0" (any node that sees the shared directory) writing
/// DIR/NAME_master.h5: its --json report and the master's path.
fn master(sb: &Sandbox, dir: &Path, name: &str, files: &[PathBuf]) -> (serde_json::Value, PathBuf) {
    let out = dir.join(format!("{name}_master.h5"));
    let out_arg = out.display().to_string();
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec!["vds", "--json", "--out", &out_arg, "--rank-files"];
    args.extend(files.iter().map(String::as_str));
    let mut vds = sb.spawn("node0", "vds", &args);
    let report = vds.next_json();
    vds.succeeds();
    (report, out)
}

/// `vds --json`'s report: each rank's images expected by the deal, present, and `missing`.
fn check_master_report(report: &serde_json::Value, deal: Deal, missing: &[u64]) {
    for (k, &lost) in missing.iter().enumerate() {
        let r = &report["rank_files"][k];
        let expected = deal.images_of_rank(k as u64, FRAMES);
        assert_eq!(r["rank"], k, "{report}");
        assert_eq!(
            (&r["images_expected"], &r["images_present"], &r["missing"]),
            (&expected.into(), &(expected - lost).into(), &lost.into()),
            "rank {k}: {report}"
        );
    }
    let lost: u64 = missing.iter().sum();
    assert_eq!(
        (&report["images_present"], &report["images_missing"]),
        (&(FRAMES - lost).into(), &lost.into()),
        "{report}"
    );
}

/// Compare the master with the single-writer file in Python (h5py + hdf5plugin, as users
/// read them). Every image not in `missing` is present and equal, bit for bit; every image in
/// `missing` is marked absent and reads as the fill value (the u16 maximum), and its
/// image_id as 2^64-1.
const COMPARE: &str = r#"
import json, sys
import h5py, hdf5plugin, numpy as np
master, reference, missing = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
# swmr: a killed rank's file still carries its writer's SWMR mark; only SWMR readers open it.
with h5py.File(master, "r", swmr=True) as m, h5py.File(reference, "r") as r:
    d, e = m["/entry/data/data"], r["/entry/data/data"]
    n = e.shape[0]
    assert d.shape == e.shape, (d.shape, e.shape)
    assert d.dtype == e.dtype, (d.dtype, e.dtype)
    present = m["/entry/data/image_present"][()]
    ids = m["/entry/instrument/detector/detectorSpecific/image_id"][()]
    assert present.shape == (n,) and ids.shape == (n,), (present.shape, ids.shape)
    assert list(r["/entry/data/image_present"][()]) == [1] * n
    fill = np.iinfo(d.dtype).max
    for start in range(0, n, 50):
        got, want = d[start:start + 50], e[start:start + 50]
        for i in range(start, min(start + 50, n)):
            if i in missing:
                assert present[i] == 0, "image %d is marked present" % i
                assert ids[i] == 2**64 - 1, "image %d has id %d" % (i, ids[i])
                assert (got[i - start] == fill).all(), "missing image %d is not the fill value" % i
            else:
                assert present[i] == 1, "image %d is marked missing" % i
                assert ids[i] == i, "image %d has id %d" % (i, ids[i])
                assert np.array_equal(got[i - start], want[i - start]), "image %d differs" % i
print(json.dumps({"present": int(present.sum()), "missing": len(missing)}))
"#;

fn compare(master: &Path, reference: &Path, missing: &[u64]) -> serde_json::Value {
    let missing = serde_json::to_string(missing).unwrap();
    let out = common::run_python(COMPARE, &[master, reference, Path::new(&missing)]);
    serde_json::from_str(out.trim()).unwrap()
}

/// The images rank `rank` gets of ids `ids`.
fn of_rank(deal: Deal, rank: u64, ids: std::ops::Range<u64>) -> Vec<u64> {
    ids.filter(|&i| deal.rank_of(i) == rank).collect()
}

#[test]
fn three_nodes_write_a_series_whose_master_equals_one_writers_file() {
    let sb = Sandbox::new(&HOSTS);
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(&sb, dir.path());
    // Block: no image may be lost on the way, whatever the machine's load. The fan's node
    // sees the shared directory too, and writes a master of its own at the series' end.
    let fan_master = dir.path().join("scan_master.h5");
    let fan_master_arg = fan_master.display().to_string();
    let (mut fan, mut nodes) = fan_and_nodes(
        &sb,
        dir.path(),
        &["--policy", "block", "--master", &fan_master_arg],
    );
    let mut send = sender(&sb, "stream2-send", &[]);
    assert_eq!(send.next_json()["sent"], FRAMES);
    send.succeeds();
    let report = fan.next_json();
    fan.succeeds();
    let files: Vec<_> = (0..RANKS)
        .map(|k| node_file(&mut nodes[k as usize], k, dir.path()))
        .collect();

    let deal = Deal::new(RANKS, BLOCK).unwrap();
    assert_eq!(report["images_in"], FRAMES, "{report}");
    for (k, (summary, _)) in files.iter().enumerate() {
        let expected = deal.images_of_rank(k as u64, FRAMES);
        let r = &report["ranks"][k];
        assert_eq!(
            (&r["sent"], &r["dropped"]),
            (&expected.into(), &0.into()),
            "{report}"
        );
        assert_eq!(summary["frames_written"], expected, "node{k}: {summary}");
    }
    let files: Vec<PathBuf> = files.into_iter().map(|(_, f)| f).collect();
    let (master_report, master) = master(&sb, dir.path(), "vds", &files);
    check_master_report(&master_report, deal, &[0, 0, 0]);
    check_master_report(&report["master"], deal, &[0, 0, 0]);
    for m in [&master, &fan_master] {
        let seen = compare(m, &reference, &[]);
        assert_eq!(seen["present"], FRAMES, "{}", m.display());
    }
}

#[test]
fn a_node_killed_mid_series_loses_exactly_its_images_after_the_kill() {
    let sb = Sandbox::new(&HOSTS);
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(&sb, dir.path());
    // Drop (the detector side is never held up), with no limit on a connected rank's queue:
    // only the killed rank can lose images, however loaded the machine.
    let (mut fan, mut nodes) =
        fan_and_nodes(&sb, dir.path(), &["--policy", "drop", "--sndhwm", "0"]);
    // The detector pauses inside one of rank 1's blocks (301..=307).
    const PAUSE: u64 = 304;
    let pause = PAUSE.to_string();
    let mut send = sender(&sb, "stream2-send", &["--pause-before", &pause]);
    send.wait_log(&[&format!("paused before image {PAUSE}")]);
    let deal = Deal::new(RANKS, BLOCK).unwrap();
    let before = of_rank(deal, 1, 0..PAUSE);
    // Kill node1 once its file holds, flushed, every image it was sent before the pause.
    let file1 = dir.path().join("scan_r1_0001.h5");
    swmr_present_reaches(&file1, before.len() as u64);
    nodes[1].kill();
    fan.wait_log(&["rank 1: consumer disconnected"]);
    send.send_line("go on");
    assert_eq!(send.next_json()["sent"], FRAMES);
    send.succeeds();
    let report = fan.next_json();
    fan.succeeds();

    let files: Vec<_> = (0..RANKS)
        .map(|k| match k {
            1 => (serde_json::Value::Null, file1.clone()),
            _ => node_file(&mut nodes[k as usize], k, dir.path()),
        })
        .collect();
    let expected1 = deal.images_of_rank(1, FRAMES);
    let lost: Vec<u64> = of_rank(deal, 1, PAUSE..FRAMES);
    assert_eq!(report["images_in"], FRAMES, "{report}");
    for k in 0..RANKS as usize {
        let r = &report["ranks"][k];
        let (sent, dropped) = (r["sent"].as_u64().unwrap(), r["dropped"].as_u64().unwrap());
        assert_eq!(
            sent + dropped,
            deal.images_of_rank(k as u64, FRAMES),
            "{report}"
        );
        if k == 1 {
            // The fan saw the disconnect before the detector went on: what it queued, node1
            // had written; every later image found no consumer.
            assert_eq!(
                (sent, dropped),
                (before.len() as u64, lost.len() as u64),
                "{report}"
            );
            assert_eq!(r["end_sent"], false, "{report}");
        } else {
            assert_eq!(dropped, 0, "rank {k}: {report}");
            assert_eq!(files[k].0["frames_written"], sent, "node{k}");
        }
    }
    let files: Vec<PathBuf> = files.into_iter().map(|(_, f)| f).collect();
    let (master_report, master) = master(&sb, dir.path(), "scan", &files);
    check_master_report(&master_report, deal, &[0, lost.len() as u64, 0]);
    assert_eq!(expected1, before.len() as u64 + lost.len() as u64);
    let seen = compare(&master, &reference, &lost);
    assert_eq!(seen["present"], FRAMES - lost.len() as u64);
}

/// Wait until `file`'s presence mask, read as a SWMR reader reads it while its writer runs,
/// counts `n` images (failing if it counts more, or not within the deadline).
fn swmr_present_reaches(file: &Path, n: u64) {
    common::run_python(
        r#"
import sys, time, h5py
path, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
last = None
while True:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            last = int(f["/entry/data/image_present"][()].sum())
    except (OSError, KeyError) as e:
        last = e
    if last == want:
        sys.exit(0)
    if isinstance(last, int) and last > want:
        sys.exit("%s marks %d images present, more than the %d sent" % (path, last, want))
    if time.monotonic() > deadline:
        sys.exit("%s never marked %d images present: last %r" % (path, want, last))
    time.sleep(0.02)
"#,
        &[
            file,
            Path::new(&n.to_string()),
            Path::new(&common::netns::DEADLINE.as_secs().to_string()),
        ],
    );
}
