//! h5py + hdf5plugin, the readers beamline users have, read a multi-channel image-layout
//! file through HDF5's own filter path: every channel of every dtype and codec a Stream V2
//! detector sends (bslz4, lz4), the gap as no-data, the presence mask, the per-image fields
//! and the NXmx metadata with its units.

mod common;

use std::path::{Path, PathBuf};

use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_writer::{
    Codec, DetectorMetadata, ImageLayout, ImageWrite, StreamSpec, StreamWriter, Table,
};
use serde_json::json;

const CHECK: &str = r#"
import sys, json
import numpy as np, h5py
import hdf5plugin

def s(v):
    return v.decode() if isinstance(v, bytes) else str(v)

for e in json.load(open(sys.argv[1])):
    what = f'{e["codec"]} {e["dtype"]}'
    n, h, w = e["n"], e["h"], e["w"]
    dtype = np.dtype(e["dtype"])
    with h5py.File(e["file"], "r") as f:
        det = f["/entry/instrument/detector"]
        for c, name in enumerate(e["channels"]):
            d = det[name]
            fid = d.id.get_create_plist().get_filter(0)[0]
            assert fid == e["filter_id"], (what, name, fid)
            got = d[()]
            assert got.dtype == dtype and got.shape == (n, h, w), (what, name, got.dtype, got.shape)
            want = np.fromfile(e["raw"][c], dtype=dtype).reshape(n, h, w)
            assert np.array_equal(got, want), f"{what} {name}: pixels differ"
            assert (got[e["gap"]] == np.iinfo(dtype).max).all(), f"{what} {name}: gap is not no-data"
            assert np.array_equal(f["/entry/data/" + name][()], got), (what, name)
            mask, chunk = d.id.read_direct_chunk((e["first"], 0, 0))
            assert mask == 0 and chunk == open(e["chunk"][c], "rb").read(), (what, name, "chunk bytes")
        assert np.array_equal(f["/entry/data/data"][()], det[e["channels"][0]][()]), what
        assert list(f["/entry/data/image_present"][()]) == e["present"], what
        ds = det["detectorSpecific"]
        assert list(ds["image_id"][()]) == e["image_id"], (what, list(ds["image_id"][()]))
        assert ds["real_time"][()].tolist() == e["real_time"], what
        assert s(ds["real_time"].attrs["units"]) == "s"
        assert [bytes(v) for v in ds["user_data"][()]] == [bytes.fromhex(x) for x in e["user_data"]], what
        assert [s(v) for v in ds["user_data_json"][()]] == e["user_data_json"], what

        m = e["metadata"]
        assert s(f["/entry/definition"][()]) == "NXmx"
        assert s(det["description"][()]) == m["description"]
        for path, (value, units) in m["numbers"].items():
            assert f[path][()] == value, (path, f[path][()], value)
            assert s(f[path].attrs["units"]) == units, (path, f[path].attrs["units"])
        th = det["threshold_energy"][()]
        want = np.array([np.nan if v is None else v for v in m["threshold_energy"]])
        assert np.array_equal(th, want, equal_nan=True) and s(det["threshold_energy"].attrs["units"]) == "eV", th
        assert bool(det["pixel_mask_applied"][()]) is True
        assert np.array_equal(det["pixel_mask"][()], np.array(m["pixel_mask"], dtype=np.uint32))
        assert np.array_equal(ds[e["channels"][1]]["pixel_mask"][()], np.array(m["pixel_mask"], dtype=np.uint32) * 2)
        assert np.allclose(f["/entry/sample/transformations/omega"][()], m["omega"], rtol=0, atol=1e-12)
        assert int(ds["series_id"][()]) == m["series_id"]
print("ok")
"#;

fn pixel_type(dtype: &str) -> PixelType {
    match dtype {
        "uint8" => PixelType::U8,
        "uint16" => PixelType::U16,
        _ => PixelType::U32,
    }
}

/// Pixels of channel `c` of image `k`: detector-like counts, below the no-data value.
fn pixels(p: PixelType, k: u64, c: usize, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let v = ((i * 7 + k as usize * 31 + c * 101) % 97) as u32 + (i % 3) as u32;
            match p {
                PixelType::U8 => vec![v as u8],
                PixelType::U16 => (v as u16 * 300).to_le_bytes().to_vec(),
                _ => (v * 70_000).to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn metadata(h: usize, w: usize) -> (DetectorMetadata, Vec<Vec<u32>>) {
    let mask: Vec<Vec<u32>> = (0..h)
        .map(|y| (0..w).map(|x| u32::from((x + y) % 11 == 0)).collect())
        .collect();
    let table = |scale: u32| Table {
        dims: vec![h, w],
        pixel_type: PixelType::U32,
        bytes: mask
            .iter()
            .flatten()
            .flat_map(|v| (v * scale).to_le_bytes())
            .collect(),
    };
    let m = DetectorMetadata {
        series_id: Some(7),
        description: Some("Dectris EIGER2 Si 500K".into()),
        beam_center_x_px: Some(12.5),
        count_time_s: Some(0.001),
        pixel_size_x_m: Some(7.5e-5),
        incident_wavelength_a: Some(1.0332),
        threshold_energy_ev: vec![("t1".into(), 4000.0), ("t2".into(), 8000.0)],
        goniometer: vec![("omega".into(), -5.0, 0.25)],
        pixel_mask_enabled: Some(true),
        pixel_mask: vec![("t1".into(), table(1)), ("t2".into(), table(2))],
        ..Default::default()
    };
    (m, mask)
}

/// Write one file of `dtype` and `codec` with images 1, 0, 3 of 4 (2 missing); returns its
/// manifest entry.
fn write_file(dir: &Path, dtype: &str, codec: Codec) -> serde_json::Value {
    let (w, h, n) = (37usize, 11usize, 4u64);
    let p = pixel_type(dtype);
    let shape = FrameShape {
        width: w as u32,
        height: h as u32,
        pixel_type: p,
        color_mode: ColorMode::Mono,
    };
    let channels = ["t1", "t2", "diff"];
    let (meta_data, mask) = metadata(h, w);
    let path = dir.join(format!("{codec}_{dtype}.h5"));
    let mut writer = StreamWriter::create(StreamSpec {
        num_capture: n,
        image_layout: Some(ImageLayout {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            image_fields: true,
            metadata: Some(meta_data),
        }),
        ..StreamSpec::new(&path, shape, codec)
    })
    .unwrap();
    let mut compressor = codec.compressor(p);
    let frame_bytes = shape.bytes();
    let mut raw = vec![vec![0xFFu8; frame_bytes * n as usize]; channels.len()];
    let mut first_chunks = Vec::new();
    for k in [1u64, 0, 3] {
        let chunks: Vec<Vec<u8>> = (0..channels.len())
            .map(|c| {
                let px = pixels(p, k, c, w * h);
                raw[c][k as usize * frame_bytes..(k as usize + 1) * frame_bytes]
                    .copy_from_slice(&px);
                let mut out = Vec::new();
                compressor.compress(&px, &mut out);
                out
            })
            .collect();
        if k == 1 {
            first_chunks = chunks.clone();
        }
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let cbor = [0x82, 0x01, k as u8];
        let json = format!("[1, {k}]");
        writer
            .write_image(
                &FrameMeta {
                    unique_id: k,
                    timestamp: EpicsTimestamp::now(),
                    unix_time_s: 0.0,
                    shape,
                },
                &ImageWrite {
                    number: k,
                    channels: &refs,
                    image_id: k,
                    real_time: Some((k + 10, 50_000_000)),
                    start_time: None,
                    stop_time: None,
                    user_data_cbor: Some(&cbor),
                    user_data_json: Some(&json),
                },
            )
            .unwrap();
    }
    writer.close().unwrap();
    let file = |suffix: String, bytes: &[u8]| {
        let f = dir.join(format!("{codec}_{dtype}_{suffix}"));
        std::fs::write(&f, bytes).unwrap();
        f
    };
    let raw_files: Vec<PathBuf> = (0..channels.len())
        .map(|c| file(format!("{c}.raw"), &raw[c]))
        .collect();
    let chunk_files: Vec<PathBuf> = (0..channels.len())
        .map(|c| file(format!("{c}.chunk"), &first_chunks[c]))
        .collect();
    let hex = |k: u8| format!("8201{k:02x}");
    json!({
        "file": path, "codec": codec.to_string(), "dtype": dtype,
        "filter_id": codec.filter(p, frame_bytes).unwrap().id,
        "n": n, "h": h, "w": w, "gap": 2, "first": 1,
        "channels": channels, "raw": raw_files, "chunk": chunk_files,
        "present": [1, 1, 0, 1],
        "image_id": [0u64, 1, u64::MAX, 3],
        "real_time": [[10, 50_000_000], [11, 50_000_000], [0, 0], [13, 50_000_000]],
        "user_data": [hex(0), hex(1), String::new(), hex(3)],
        "user_data_json": ["[1, 0]", "[1, 1]", "", "[1, 3]"],
        "metadata": {
            "description": "Dectris EIGER2 Si 500K",
            "numbers": {
                "/entry/instrument/detector/beam_center_x": [12.5, "pixel"],
                "/entry/instrument/detector/count_time": [0.001, "s"],
                "/entry/instrument/detector/x_pixel_size": [7.5e-5, "m"],
                "/entry/instrument/beam/incident_wavelength": [1.0332, "angstrom"],
                "/entry/instrument/detector/detectorSpecific/t2/threshold_energy": [8000.0, "eV"],
                "/entry/sample/transformations/omega_increment_set": [0.25, "deg"],
            },
            "threshold_energy": [4000.0, 8000.0, serde_json::Value::Null],
            "pixel_mask": mask,
            "omega": [-5.0, -4.75, -4.5, -4.25],
            "series_id": 7,
        },
    })
}

#[test]
fn h5py_and_hdf5plugin_read_every_channel_field_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    for codec in [Codec::BitshuffleLz4, Codec::Lz4] {
        for dtype in ["uint8", "uint16", "uint32"] {
            manifest.push(write_file(dir.path(), dtype, codec));
        }
    }
    let m = dir.path().join("manifest.json");
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = common::run_python(CHECK, &[&m]);
    assert_eq!(out.trim(), "ok");
}
