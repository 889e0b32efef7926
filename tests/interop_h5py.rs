//! h5py, the reader beamline users have, reads what `detflow acquire` wrote: shape, dtype,
//! the NeXus layout, the hard link, attributes, NDAttributes, and the simulator's pixels.

mod common;

use std::path::Path;
use std::time::Duration;

use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode, PixelType, Roi};
use detflow_sim::{SimConfig, SimDetector, SimMode};

const CHECK: &str = r#"
import sys, json
import numpy as np, h5py

path, expected_path, dtype, n, h, w, codec = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
f = h5py.File(path, "r")

def s(v):
    return v.decode() if isinstance(v, bytes) else str(v)

for group, cls in [("/entry", "NXentry"), ("/entry/instrument", "NXinstrument"),
                   ("/entry/instrument/detector", "NXdetector"), ("/entry/data", "NXdata"),
                   ("/entry/instrument/NDAttributes", "NXcollection"),
                   ("/entry/instrument/detector/NDAttributes", "NXcollection")]:
    assert s(f[group].attrs["NX_class"]) == cls, (group, f[group].attrs.get("NX_class"))

d = f["/entry/instrument/detector/data"]
assert d.shape == (n, h, w), d.shape
assert d.dtype == np.dtype(dtype), (d.dtype, dtype)
assert d.chunks == (1, h, w), d.chunks
assert int(d.attrs["signal"]) == 1
assert list(d.attrs["NDArrayDimBinning"]) == [1, 1]
if codec == "none":
    assert d.compression is None, d.compression
else:
    assert d.compression == "gzip", d.compression
    assert d.compression_opts == int(codec.split(":")[1]), d.compression_opts

link = f["/entry/data/data"]
assert link.id == d.id, "/entry/data/data is not a hard link to the detector data"
assert f["/entry/data"].get("data", getlink=True).__class__.__name__ == "HardLink"

nd = f["/entry/instrument/NDAttributes"]
for name, dt in [("NDArrayUniqueId", "int32"), ("NDArrayTimeStamp", "float64"),
                 ("NDArrayEpicsTSSec", "uint32"), ("NDArrayEpicsTSnSec", "uint32")]:
    assert nd[name].shape == (n,), (name, nd[name].shape)
    assert nd[name].dtype == np.dtype(dt), (name, nd[name].dtype)
ids = nd["NDArrayUniqueId"][()]
assert (np.diff(ids) == 1).all(), ids
sec, nsec, ts = nd["NDArrayEpicsTSSec"][()], nd["NDArrayEpicsTSnSec"][()], nd["NDArrayTimeStamp"][()]
assert np.allclose(ts, sec + nsec * 1e-9), "NDArrayTimeStamp != EpicsTSSec + nSec"
# Seconds past 1990: a 2020s date is between 0.9e9 and 1.3e9.
assert 0.9e9 < sec[0] < 1.3e9, sec[0]
assert (np.diff(ts) >= 0).all()
# ColorMode cannot change within a file: it is written once, as a scalar (ADCore #603).
assert f["/entry/instrument/detector/NDAttributes/ColorMode"].shape == ()
assert f["/entry/instrument/detector/NDAttributes/ColorMode"][()] == 0
assert f["/entry/instrument/performance/timestamp"].shape == (n, 5)

expected = np.fromfile(expected_path, dtype=dtype).reshape(-1, h, w)
k = expected.shape[0]
got = d[:k]
assert np.array_equal(got, expected), "pixels differ from the simulator's frames for this seed"
print(json.dumps({"frames": n, "sum0": float(d[0].astype(np.float64).sum()), "checked": k}))
"#;

/// The first `k` frames the simulator makes for these settings, as raw bytes.
fn expected_frames(size: (u32, u32), pixel_type: PixelType, seed: u64, k: usize) -> Vec<u8> {
    let mut det = SimDetector::new(SimConfig {
        max_width: size.0,
        max_height: size.1,
        seed,
        params: detflow_sim::SimParams::demo(SimMode::Peaks, size, pixel_type),
    })
    .unwrap();
    let shape = det
        .configure(&AcquisitionConfig {
            roi: Roi::full(size.0, size.1),
            pixel_type,
            exposure: Duration::ZERO,
            period: Duration::ZERO,
            image_mode: ImageMode::Multiple,
            num_images: k as u32,
            ..AcquisitionConfig::default()
        })
        .unwrap();
    det.start().unwrap();
    let mut out = vec![0u8; shape.bytes() * k];
    for frame in out.chunks_mut(shape.bytes()) {
        det.read_frame(frame, Duration::from_secs(5)).unwrap();
    }
    out
}

fn acquire_and_check(
    dir: &Path,
    dtype: &str,
    codec: &str,
    frames: u64,
    seed: u64,
) -> serde_json::Value {
    let (w, h) = (96u32, 64u32);
    let name = format!("{dtype}_{}_s{seed}", codec.replace(':', "_"));
    let out = common::run(&[
        "acquire",
        "--frames",
        &frames.to_string(),
        "--size",
        &format!("{w}x{h}"),
        "--dtype",
        dtype,
        "--mode",
        "peaks",
        "--codec",
        codec,
        "--seed",
        &seed.to_string(),
        "--path",
        dir.to_str().unwrap(),
        "--name",
        &name,
        "--number",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "acquire failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    assert_eq!(s["frames_written"], frames);
    assert_eq!(s["frames_dropped"], 0);
    let file = dir.join(format!("{name}_0003.h5"));
    assert_eq!(s["files"][0], file.to_str().unwrap());

    let pixel_type: PixelType = dtype.parse().unwrap();
    let expected = dir.join(format!("{name}.expected"));
    std::fs::write(&expected, expected_frames((w, h), pixel_type, seed, 3)).unwrap();
    let np_dtype = format!(
        "<{}{}",
        match dtype.as_bytes()[0] {
            b'u' => 'u',
            b'i' => 'i',
            _ => 'f',
        },
        pixel_type.size()
    );
    let stdout = common::run_python(
        CHECK,
        &[
            &file,
            &expected,
            Path::new(&np_dtype),
            Path::new(&frames.to_string()),
            Path::new(&h.to_string()),
            Path::new(&w.to_string()),
            Path::new(codec),
        ],
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn h5py_reads_every_pixel_type_and_codec() {
    let dir = tempfile::tempdir().unwrap();
    // Every pixel type uncompressed, then deflate on two of them.
    for dtype in ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "f64"] {
        acquire_and_check(dir.path(), dtype, "none", 5, 11);
    }
    let raw = acquire_and_check(dir.path(), "u16", "none", 12, 42);
    let packed = acquire_and_check(dir.path(), "u16", "deflate:1", 12, 42);
    assert_eq!(
        raw["sum0"], packed["sum0"],
        "same seed, same pixels, whatever the codec"
    );
    acquire_and_check(dir.path(), "f32", "deflate:6", 4, 42);
}

#[test]
fn deflate_and_raw_files_of_one_seed_hold_equal_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for codec in ["none", "deflate:1"] {
        let name = format!("eq_{}", codec.replace(':', "_"));
        let out = common::run(&[
            "acquire",
            "--frames",
            "20",
            "--size",
            "128x100",
            "--codec",
            codec,
            "--seed",
            "7",
            "--path",
            dir.path().to_str().unwrap(),
            "--name",
            &name,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(dir.path().join(format!("{name}_0001.h5")));
    }
    let out = common::run_python(
        r#"
import sys, numpy as np, h5py
a = h5py.File(sys.argv[1], "r")["/entry/data/data"][()]
b = h5py.File(sys.argv[2], "r")["/entry/data/data"][()]
assert a.shape == (20, 100, 128) and a.dtype == np.uint16, (a.shape, a.dtype)
assert np.array_equal(a, b)
assert a.max() > 0 and len(np.unique(a[0])) > 10, "frames should show peaks and noise"
assert not np.array_equal(a[0], a[1]), "noise and peak variation change frame to frame"
print("ok")
"#,
        &[&files[0], &files[1]],
    );
    assert_eq!(out.trim(), "ok");
}
