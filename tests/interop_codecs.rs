//! h5py + hdf5plugin, the readers beamline users have, decode every chunk codec: the files of
//! `detflow acquire` equal the uncompressed file of the same seed pixel for pixel, with the
//! expected filter declared. The bitshuffle and LZ4 chunks are also byte-identical to what
//! hdf5plugin's own C encoders make of the same pixels.

mod common;

use std::path::{Path, PathBuf};

use detflow_hal::PixelType;
use detflow_writer::Codec;
use detflow_writer::codec::bitshuffle::{self, Kernel};
use serde_json::{Value, json};

/// Checks a manifest of acquired files (argv[1], JSON): filter id and cd_values, pixels equal
/// to the `none` file, filter mask 0, and for the `reencode` entries the raw chunks against
/// hdf5plugin's encoder.
const CHECK_FILES: &str = r#"
import sys, json
import numpy as np, h5py
import hdf5plugin

def plugin(codec):
    if codec == "bslz4":
        return hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
    if codec == "lz4":
        return hdf5plugin.LZ4(nbytes=0)
    raise ValueError(codec)

def reencoded(frame, codec):
    """The chunk hdf5plugin's C encoder makes of one frame."""
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        d = f.create_dataset("d", data=frame[None], chunks=(1,) + frame.shape, **plugin(codec))
        mask, chunk = d.id.read_direct_chunk((0, 0, 0))
        assert mask == 0
        return chunk

report = []
for e in json.load(open(sys.argv[1])):
    what = f'{e["codec"]} {e["dtype"]}'
    with h5py.File(e["none_file"], "r") as f:
        ref = f["/entry/data/data"][()]
    with h5py.File(e["file"], "r") as f:
        d = f["/entry/instrument/detector/data"]
        plist = d.id.get_create_plist()
        if e["filter_id"] is None:
            assert plist.get_nfilters() == 0, what
        else:
            assert plist.get_nfilters() == 1, (what, plist.get_nfilters())
            fid, flags, cd, name = plist.get_filter(0)
            assert fid == e["filter_id"], (what, fid)
            assert list(cd) == e["cd_values"], (what, list(cd), e["cd_values"])
            assert h5py.h5z.filter_avail(fid), (what, "hdf5plugin has no decoder for", fid)
        got = f["/entry/data/data"][()]
        assert got.dtype == np.dtype(e["dtype"]), (what, got.dtype)
        assert got.shape == ref.shape == (e["frames"], e["h"], e["w"]), (what, got.shape, ref.shape)
        assert np.array_equal(got, ref, equal_nan=got.dtype.kind == "f"), f"{what}: pixels differ from the none file"
        assert len(np.unique(ref[0])) > 3, f"{what}: frames should not be flat"
        stored = 0
        same = 0
        for k in range(e["frames"]):
            mask, chunk = d.id.read_direct_chunk((k, 0, 0))
            assert mask == 0, (what, k, mask)
            stored += len(chunk)
            if e["reencode"]:
                theirs = reencoded(got[k], e["codec"])
                assert chunk == theirs, f"{what} frame {k}: our chunk ({len(chunk)} bytes) differs from hdf5plugin's ({len(theirs)} bytes)"
                same += 1
        report.append({"file": e["file"], "ratio": ref.nbytes / stored, "byte_exact_frames": same})
print(json.dumps(report))
"#;

/// Compares our chunks (argv[1] manifest: raw input file, our chunk file, dtype, shape,
/// codec) with the chunks hdf5plugin's encoders make of the same input.
const CHECK_BYTES: &str = r#"
import sys, json
import numpy as np, h5py
import hdf5plugin

filters = {
    "bitshuffle": lambda: hdf5plugin.Bitshuffle(nelems=0, cname="none"),
    "bslz4": lambda: hdf5plugin.Bitshuffle(nelems=0, cname="lz4"),
    "lz4": lambda: hdf5plugin.LZ4(nbytes=0),
}
# For information only: codecs whose C encoders may differ from ours by library version.
extra = {
    "bszstd:3": lambda: hdf5plugin.Bitshuffle(nelems=0, cname="zstd", clevel=3),
    "zstd:3": lambda: hdf5plugin.Zstd(clevel=3),
    "blosc:lz4:5": lambda: hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE),
}
report = {"exact": 0, "extra_equal": [], "extra_differ": []}
for e in json.load(open(sys.argv[1])):
    frame = np.fromfile(e["raw"], dtype=e["dtype"]).reshape(e["h"], e["w"])
    ours = open(e["chunk"], "rb").read()
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        make = filters.get(e["codec"]) or extra[e["codec"]]
        d = f.create_dataset("d", data=frame, chunks=frame.shape, **make())
        mask, theirs = d.id.read_direct_chunk((0, 0))
        # An optional filter that fails (blosc when the data does not shrink) is skipped.
        assert mask == 0 or e["codec"] in extra, (e["codec"], mask)
        if mask:
            theirs = None
        assert np.array_equal(d[()], frame)
        # Our chunk, written raw under the same filter, decodes through hdf5plugin.
        o = f.create_dataset("ours", shape=frame.shape, dtype=frame.dtype, chunks=frame.shape, **make())
        o.id.write_direct_chunk((0, 0), ours, 0)
        assert np.array_equal(o[()], frame), e["chunk"]
    what = f'{e["codec"]} {e["dtype"]} {e["w"]}x{e["h"]} {e["content"]}'
    if e["codec"] in filters:
        if ours != theirs:
            first = next(i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]) if min(len(ours), len(theirs)) else 0
            raise AssertionError(f"{what}: {len(ours)} bytes vs hdf5plugin's {len(theirs)}, first difference at byte {first}")
        report["exact"] += 1
    else:
        report["extra_equal" if ours == theirs else "extra_differ"].append(what + ("" if theirs is not None else " (hdf5plugin stored it raw)"))
print(json.dumps(report))
"#;

const DTYPES: [&str; 4] = ["u8", "u16", "u32", "f32"];
const CODECS: [&str; 8] = [
    "none",
    "deflate:1",
    "lz4",
    "bslz4",
    "bszstd",
    "zstd",
    "blosc:lz4",
    "blosc:zstd",
];

fn numpy_dtype(pixel_type: PixelType) -> String {
    let kind = match pixel_type {
        PixelType::U8 | PixelType::U16 | PixelType::U32 => 'u',
        PixelType::I8 | PixelType::I16 | PixelType::I32 => 'i',
        PixelType::F32 | PixelType::F64 => 'f',
    };
    format!("<{kind}{}", pixel_type.size())
}

/// `detflow acquire` of 4 frames of seed 5; returns the file written.
fn acquire(dir: &Path, dtype: &str, codec: &str, (w, h): (u32, u32)) -> PathBuf {
    let name = format!("{dtype}_{w}x{h}_{}", codec.replace(':', "_"));
    let out = common::run(&[
        "acquire",
        "--frames",
        "4",
        "--size",
        &format!("{w}x{h}"),
        "--dtype",
        dtype,
        "--codec",
        codec,
        "--seed",
        "5",
        "--path",
        dir.to_str().unwrap(),
        "--name",
        &name,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "acquire --dtype {dtype} --codec {codec} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = common::summary(&out);
    assert_eq!(s["frames_written"], 4, "{dtype} {codec}: {s}");
    assert_eq!(s["frames_dropped"], 0, "{dtype} {codec}: {s}");
    PathBuf::from(s["files"][0].as_str().expect("one file"))
}

#[test]
fn h5py_with_hdf5plugin_decodes_every_codec_to_the_raw_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    // 96x64 as asked for everywhere; 101x67 (6767 pixels) adds a partial bitshuffle block and
    // a raw tail of 7 pixels to the byte-exact comparisons.
    let mut runs: Vec<(&str, (u32, u32), Vec<&str>)> = DTYPES
        .iter()
        .map(|d| (*d, (96, 64), CODECS.to_vec()))
        .collect();
    runs.push(("u16", (101, 67), vec!["none", "lz4", "bslz4"]));
    runs.push(("u32", (101, 67), vec!["none", "lz4", "bslz4"]));
    for (dtype, size, codecs) in runs {
        let pixel_type: PixelType = dtype.parse().unwrap();
        let none_file = acquire(dir.path(), dtype, "none", size);
        for name in codecs {
            let file = if name == "none" {
                none_file.clone()
            } else {
                acquire(dir.path(), dtype, name, size)
            };
            let codec: Codec = name.parse().unwrap();
            let chunk_bytes = (size.0 * size.1) as usize * pixel_type.size();
            let filter = codec.filter(pixel_type, chunk_bytes);
            let expected_id = match name.split(':').next().unwrap() {
                "none" => None,
                "deflate" => Some(1),
                "lz4" => Some(32004),
                "bslz4" | "bszstd" => Some(32008),
                "zstd" => Some(32015),
                "blosc" => Some(32001),
                other => panic!("no filter id known for {other}"),
            };
            assert_eq!(filter.as_ref().map(|f| f.id), expected_id, "{name}");
            let reencode = matches!(name, "lz4" | "bslz4") && dtype != "u8" && dtype != "f32";
            manifest.push(json!({
                "file": file,
                "none_file": none_file,
                "dtype": numpy_dtype(pixel_type),
                "codec": name,
                "frames": 4,
                "w": size.0,
                "h": size.1,
                "filter_id": expected_id,
                "cd_values": filter.map(|f| f.cd_values).unwrap_or_default(),
                "reencode": reencode,
            }));
        }
    }
    let manifest_path = dir.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = common::run_python(CHECK_FILES, &[&manifest_path]);
    let report: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.len(), manifest.len());
    let exact: u64 = report
        .iter()
        .map(|r| r["byte_exact_frames"].as_u64().unwrap())
        .sum();
    // lz4 and bslz4, u16 and u32, at two sizes, 4 frames each.
    assert_eq!(exact, 2 * 2 * 2 * 4, "{report:?}");
    for (entry, r) in manifest.iter().zip(&report) {
        let ratio = r["ratio"].as_f64().unwrap();
        if entry["codec"] == "none" {
            assert_eq!(ratio, 1.0);
        } else if entry["dtype"] != "<f4" {
            // The simulator's float pixels have noisy mantissas: some codecs do not shrink them.
            assert!(ratio > 1.0, "{} does not compress: {r}", entry["codec"]);
        }
    }
}

/// Deterministic test pixels: a smooth peak with low noise, or full-range noise.
fn pixels(pixel_type: PixelType, w: usize, h: usize, noisy: bool) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (w * 31 + h) as u64;
    let mut out = Vec::with_capacity(w * h * pixel_type.size());
    for i in 0..w * h {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let v = if noisy {
            r
        } else {
            let (dx, dy) = (
                (i % w) as f64 - w as f64 / 2.0,
                (i / w) as f64 - h as f64 / 2.0,
            );
            (1000.0 * (-(dx * dx + dy * dy) / 800.0).exp()) as u64 + (r >> 62)
        };
        out.extend_from_slice(&v.to_le_bytes()[..pixel_type.size()]);
    }
    out
}

#[test]
fn bitshuffle_and_lz4_chunks_are_byte_identical_to_hdf5plugin() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    let mut required = 0;
    for pixel_type in [PixelType::U16, PixelType::U32] {
        // Full blocks only; full + partial block + 7-pixel tail; fewer than 8 pixels.
        for (w, h) in [(1024, 1024), (101, 67), (5, 1)] {
            for noisy in [false, true] {
                let raw = pixels(pixel_type, w, h, noisy);
                let content = if noisy { "noise" } else { "peak" };
                let stem = format!("{}_{w}x{h}_{content}", numpy_dtype(pixel_type));
                let raw_path = dir.path().join(format!("{stem}.raw"));
                std::fs::write(&raw_path, &raw).unwrap();
                for codec in [
                    "bitshuffle",
                    "bslz4",
                    "lz4",
                    "bszstd:3",
                    "zstd:3",
                    "blosc:lz4:5",
                ] {
                    let chunk = if codec == "bitshuffle" {
                        let mut out = vec![0u8; raw.len()];
                        bitshuffle::bitshuffle(
                            Kernel::best(),
                            &raw,
                            &mut out,
                            pixel_type.size(),
                            0,
                        );
                        out
                    } else {
                        let mut out = Vec::new();
                        let codec: Codec = codec.parse().unwrap();
                        codec.compressor(pixel_type).compress(&raw, &mut out);
                        out
                    };
                    let chunk_path = dir
                        .path()
                        .join(format!("{stem}.{}", codec.replace(':', "_")));
                    std::fs::write(&chunk_path, &chunk).unwrap();
                    required += usize::from(matches!(codec, "bitshuffle" | "bslz4" | "lz4"));
                    manifest.push(json!({
                        "raw": raw_path,
                        "chunk": chunk_path,
                        "dtype": numpy_dtype(pixel_type),
                        "w": w,
                        "h": h,
                        "content": content,
                        "codec": codec,
                    }));
                }
            }
        }
    }
    let manifest_path = dir.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = common::run_python(CHECK_BYTES, &[&manifest_path]);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["exact"], required, "{report}");
    // Codecs whose bytes depend on the C library versions on both sides: reported only.
    eprintln!(
        "also byte-identical to hdf5plugin: {}; different bytes (same pixels): {}",
        report["extra_equal"], report["extra_differ"]
    );
}
