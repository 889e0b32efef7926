//! A stream file read back through the HDF5 library: layout, links, attributes, pixels.

use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_writer::{Codec, StreamSpec, StreamWriter, WriterError, layout};

fn shape(pixel_type: PixelType) -> FrameShape {
    FrameShape {
        width: 5,
        height: 3,
        pixel_type,
        color_mode: ColorMode::Mono,
    }
}

fn frame(k: u16) -> Vec<u16> {
    (0..15u16).map(|i| i * 100 + k).collect()
}

fn write(
    path: &std::path::Path,
    codec: Codec,
    frames: u16,
    num_capture: u64,
) -> detflow_writer::FileSummary {
    let mut w = StreamWriter::create(StreamSpec {
        num_capture,
        dim_offset: [7, 9],
        dim_binning: [1, 2],
        ..StreamSpec::new(path, shape(PixelType::U16), codec)
    })
    .unwrap();
    let mut c = codec.compressor(PixelType::U16);
    let mut buf = Vec::new();
    for k in 0..frames {
        let meta = FrameMeta {
            unique_id: u64::from(k) + 1,
            timestamp: EpicsTimestamp {
                sec: 1000 + u32::from(k),
                nsec: 500,
            },
            unix_time_s: 0.0,
            shape: shape(PixelType::U16),
        };
        let raw: Vec<u8> = frame(k).iter().flat_map(|v| v.to_le_bytes()).collect();
        c.compress(&raw, &mut buf);
        w.write_frame(&meta, if codec == Codec::None { &raw } else { &buf })
            .unwrap();
    }
    w.close().unwrap()
}

#[test]
fn frames_layout_and_attributes_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for codec in [Codec::None, Codec::Deflate { level: 1 }] {
        let path = dir.path().join(format!("f_{codec}.h5"));
        let summary = write(&path, codec, 4, 10);
        assert_eq!(summary.frames, 4);
        assert_eq!(summary.raw_bytes, 4 * 30);

        let f = hdf5::File::open(&path).unwrap();
        let data = f.dataset(layout::IMAGE_PATH).unwrap();
        assert_eq!(data.shape(), vec![4, 3, 5]);
        assert_eq!(data.chunk(), Some(vec![1, 3, 5]));
        let px: Vec<u16> = data.read_raw().unwrap();
        for k in 0..4u16 {
            assert_eq!(
                &px[k as usize * 15..(k as usize + 1) * 15],
                &frame(k)[..],
                "{codec} frame {k}"
            );
        }
        let link = f.dataset(layout::LINK_PATH).unwrap();
        assert_eq!(link.read_raw::<u16>().unwrap(), px);
        assert_eq!(
            data.attr("signal").unwrap().read_scalar::<i32>().unwrap(),
            1
        );
        assert_eq!(
            data.attr("NDArrayDimOffset")
                .unwrap()
                .read_raw::<i32>()
                .unwrap(),
            vec![7, 9]
        );
        let ids: Vec<i32> = f
            .dataset("/entry/instrument/NDAttributes/NDArrayUniqueId")
            .unwrap()
            .read_raw()
            .unwrap();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        let secs: Vec<u32> = f
            .dataset("/entry/instrument/NDAttributes/NDArrayEpicsTSSec")
            .unwrap()
            .read_raw()
            .unwrap();
        assert_eq!(secs, vec![1000, 1001, 1002, 1003]);
        let ts: Vec<f64> = f
            .dataset("/entry/instrument/NDAttributes/NDArrayTimeStamp")
            .unwrap()
            .read_raw()
            .unwrap();
        assert_eq!(ts[1], 1001.0000005);
        let perf = f
            .dataset("/entry/instrument/performance/timestamp")
            .unwrap();
        assert_eq!(perf.shape(), vec![4, 5]);
        let filters = data.filters();
        assert_eq!(filters.len(), usize::from(codec != Codec::None), "{codec}");
    }
}

#[test]
fn a_full_file_refuses_more_frames_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.h5");
    let s = shape(PixelType::U8);
    let mut w = StreamWriter::create(StreamSpec {
        num_capture: 1,
        ..StreamSpec::new(&path, s, Codec::None)
    })
    .unwrap();
    let meta = FrameMeta {
        unique_id: 1,
        timestamp: EpicsTimestamp::default(),
        unix_time_s: 0.0,
        shape: s,
    };
    w.write_frame(&meta, &[1; 15]).unwrap();
    assert!(matches!(
        w.write_frame(&meta, &[1; 15]),
        Err(WriterError::Full { num_capture: 1 })
    ));
    let wrong = FrameMeta {
        shape: shape(PixelType::U16),
        ..meta
    };
    assert!(matches!(
        w.write_frame(&wrong, &[1; 30]),
        Err(WriterError::FrameMismatch { .. })
    ));
    drop(w); // dropping closes the file too
    let f = hdf5::File::open(&path).unwrap();
    assert_eq!(
        f.dataset(layout::IMAGE_PATH).unwrap().shape(),
        vec![1, 3, 5]
    );
}

#[test]
fn a_missing_directory_is_refused_before_any_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope").join("x.h5");
    let err = StreamWriter::create(StreamSpec::new(&path, shape(PixelType::U8), Codec::None))
        .unwrap_err();
    assert!(err.to_string().starts_with("path "), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!path.exists());
}
