//! Images placed by number in an image layout: channels, gaps with a fill value and a
//! presence mask, per-image fields, refusals, SWMR visibility.

use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_writer::{
    Codec, ImageLayout, ImageRefusal, ImageWrite, StreamSpec, StreamWriter, WriterError, layout,
    read_chunk,
};

const W: u32 = 33;
const H: u32 = 7;
const CHANNELS: [&str; 3] = ["threshold_1", "threshold_2", "difference"];

fn shape() -> FrameShape {
    FrameShape {
        width: W,
        height: H,
        pixel_type: PixelType::U16,
        color_mode: ColorMode::Mono,
    }
}

fn meta(k: u64) -> FrameMeta {
    FrameMeta {
        unique_id: k + 1,
        timestamp: EpicsTimestamp {
            sec: 1000 + k as u32,
            nsec: 7,
        },
        unix_time_s: 0.0,
        shape: shape(),
    }
}

/// Pixels of channel `c` of image `k`: distinct per image and channel, never 0xFFFF.
fn pixels(k: u64, c: usize) -> Vec<u8> {
    (0..W * H)
        .map(|i| (i as u16 % 50) * 3 + k as u16 * 1000 + c as u16 * 10_000)
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn layout_spec(path: &std::path::Path, codec: Codec, num_capture: u64) -> StreamSpec {
    StreamSpec {
        num_capture,
        image_layout: Some(ImageLayout {
            channels: CHANNELS.iter().map(|s| s.to_string()).collect(),
            image_fields: true,
            metadata: None,
        }),
        ..StreamSpec::new(path, shape(), codec)
    }
}

/// The encoded chunks of image `k`, one per channel.
fn chunks(codec: Codec, k: u64) -> Vec<Vec<u8>> {
    let mut c = codec.compressor(PixelType::U16);
    (0..CHANNELS.len())
        .map(|ch| {
            let mut out = Vec::new();
            c.compress(&pixels(k, ch), &mut out);
            out
        })
        .collect()
}

fn write(w: &mut StreamWriter, codec: Codec, k: u64) -> Result<(), WriterError> {
    let chunks = chunks(codec, k);
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let json = format!("{{\"k\": {k}}}");
    let cbor = [0xa1, 0x61, b'k', k as u8];
    w.write_image(
        &meta(k),
        &ImageWrite {
            number: k,
            channels: &refs,
            image_id: k,
            real_time: Some((999_995, 50_000_000)),
            start_time: Some((k * 1_000_000, 50_000_000)),
            stop_time: (k != 2).then_some((k * 1_000_000 + 999_995, 50_000_000)),
            user_data_cbor: Some(&cbor),
            user_data_json: (k != 4).then_some(json.as_str()),
        },
    )
}

const ORDER: [u64; 4] = [0, 2, 1, 4];

fn channel_path(name: &str) -> String {
    format!("{}/{name}", layout::DETECTOR_PATH)
}

#[test]
fn bslz4_channels_are_placed_by_number_and_a_gap_reads_as_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.h5");
    let codec = Codec::BitshuffleLz4;
    let mut w = StreamWriter::create(layout_spec(&path, codec, 5)).unwrap();
    for k in ORDER {
        write(&mut w, codec, k).unwrap();
    }
    assert_eq!(w.missing_images(), 1);
    assert_eq!(w.frames_written(), 4);
    let summary = w.close().unwrap();
    assert_eq!((summary.frames, summary.missing_images), (4, 1));
    assert_eq!(summary.raw_bytes, 4 * 3 * u64::from(W * H) * 2);

    let f = hdf5::File::open(&path).unwrap();
    let mut buf = Vec::new();
    for (c, name) in CHANNELS.iter().enumerate() {
        let ds = f.dataset(&channel_path(name)).unwrap();
        assert_eq!(ds.shape(), vec![5, H as usize, W as usize], "{name}");
        for k in ORDER {
            let mask = read_chunk(&ds, &[k, 0, 0], &mut buf).unwrap();
            assert_eq!(mask, Some(0), "{name} image {k}");
            assert_eq!(buf, chunks(codec, k)[c], "{name} image {k}: chunk bytes");
            assert_eq!(codec.decode(PixelType::U16, &buf).unwrap(), pixels(k, c));
        }
        assert_eq!(read_chunk(&ds, &[3, 0, 0], &mut buf).unwrap(), None);
        // The gap reads as the fill value through HDF5 (no filter runs for it).
        let gap: ndarray::Array2<u16> = ds.read_slice(ndarray::s![3, .., ..]).unwrap();
        assert!(
            gap.iter().all(|&v| v == 0xFFFF),
            "{name}: gap reads {gap:?}"
        );
        // Every channel is linked from the NXdata group.
        let link = f.dataset(&format!("/entry/data/{name}")).unwrap();
        read_chunk(&link, &[4, 0, 0], &mut buf).unwrap();
        assert_eq!(buf, chunks(codec, 4)[c]);
    }
    // The first channel is the image dataset.
    let data = f.dataset(layout::IMAGE_PATH).unwrap();
    read_chunk(&data, &[2, 0, 0], &mut buf).unwrap();
    assert_eq!(buf, chunks(codec, 2)[0]);
    let present: Vec<u8> = f
        .dataset(layout::IMAGE_PRESENT_PATH)
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 1, 1, 0, 1]);
}

#[test]
fn uncompressed_channels_read_back_with_the_fill_value_in_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.h5");
    let mut w = StreamWriter::create(layout_spec(&path, Codec::None, 5)).unwrap();
    for k in ORDER {
        write(&mut w, Codec::None, k).unwrap();
    }
    w.close().unwrap();
    let f = hdf5::File::open(&path).unwrap();
    for (c, name) in CHANNELS.iter().enumerate() {
        let px: Vec<u16> = f.dataset(&channel_path(name)).unwrap().read_raw().unwrap();
        let bytes: Vec<u8> = px.iter().flat_map(|v| v.to_le_bytes()).collect();
        let frame = (W * H * 2) as usize;
        for k in 0..5u64 {
            let got = &bytes[k as usize * frame..(k as usize + 1) * frame];
            if k == 3 {
                assert!(got.iter().all(|&b| b == 0xFF), "{name}: image 3 is no data");
            } else {
                assert_eq!(got, pixels(k, c), "{name} image {k}");
            }
        }
        let fill: u16 = f
            .dataset(&channel_path(name))
            .unwrap()
            .fill_value()
            .unwrap()
            .unwrap()
            .cast()
            .unwrap();
        assert_eq!(fill, u16::MAX);
    }
}

#[test]
fn per_image_fields_are_placed_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fields.h5");
    let mut w = StreamWriter::create(layout_spec(&path, Codec::None, 5)).unwrap();
    for k in ORDER {
        write(&mut w, Codec::None, k).unwrap();
    }
    w.close().unwrap();
    let f = hdf5::File::open(&path).unwrap();
    let ds = |name: &str| {
        f.dataset(&format!("{}/{name}", layout::DETECTOR_SPECIFIC_PATH))
            .unwrap()
    };
    let ids: Vec<u64> = ds(layout::IMAGE_ID).read_raw().unwrap();
    assert_eq!(ids, [0, 1, 2, u64::MAX, 4]);
    let rational = |name: &str| -> Vec<[u64; 2]> {
        let a: ndarray::Array2<u64> = ds(name).read_2d().unwrap();
        assert_eq!(a.shape(), [5, 2], "{name}");
        a.rows().into_iter().map(|r| [r[0], r[1]]).collect()
    };
    let start = rational(layout::START_TIME);
    for k in ORDER {
        assert_eq!(start[k as usize], [k * 1_000_000, 50_000_000]);
    }
    assert_eq!(start[3], [0, 0]);
    let stop = rational(layout::STOP_TIME);
    assert_eq!(stop[2], [0, 0], "image 2 sent no stop_time");
    assert_eq!(stop[4], [4_999_995, 50_000_000]);
    assert_eq!(rational(layout::REAL_TIME)[1], [999_995, 50_000_000]);
    let units = ds(layout::REAL_TIME).attr("units").unwrap();
    assert_eq!(
        units
            .read_scalar::<hdf5::types::FixedAscii<2>>()
            .unwrap()
            .as_str(),
        "s"
    );

    let user: Vec<hdf5::types::VarLenArray<u8>> = ds(layout::USER_DATA).read_raw().unwrap();
    assert_eq!(user[1].as_slice(), [0xa1, 0x61, b'k', 1]);
    assert!(user[3].is_empty());
    let json: Vec<hdf5::types::VarLenUnicode> = ds(layout::USER_DATA_JSON).read_raw().unwrap();
    assert_eq!(json[2].as_str(), "{\"k\": 2}");
    assert_eq!(json[4].as_str(), "", "image 4's user_data did not convert");
    assert_eq!(json[3].as_str(), "");

    // The NDAttributes rows follow the images' positions too.
    let uid: Vec<i32> = f
        .dataset("/entry/instrument/NDAttributes/NDArrayUniqueId")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(uid, [1, 2, 3, 0, 5]);
}

#[test]
fn refused_images_write_nothing_and_name_the_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.h5");
    let codec = Codec::BitshuffleLz4;
    let mut w = StreamWriter::create(layout_spec(&path, codec, 5)).unwrap();
    write(&mut w, codec, 1).unwrap();

    let e = write(&mut w, codec, 1).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Image {
                number: 1,
                refusal: ImageRefusal::Repeated
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("image 1"), "{e}");
    let e = write(&mut w, codec, 5).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Image {
                number: 5,
                refusal: ImageRefusal::PastEnd { num_capture: 5 }
            }
        ),
        "{e}"
    );
    let two = chunks(codec, 3);
    let e = w
        .write_image(
            &meta(3),
            &ImageWrite {
                number: 3,
                channels: &[&two[0], &two[1]],
                image_id: 3,
                real_time: None,
                start_time: None,
                stop_time: None,
                user_data_cbor: None,
                user_data_json: None,
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Image {
                number: 3,
                refusal: ImageRefusal::Channels {
                    expected: 3,
                    got: 2
                }
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("image 3"), "{e}");
    // The writer goes on after a refusal.
    write(&mut w, codec, 0).unwrap();
    assert_eq!((w.frames_written(), w.missing_images()), (2, 0));
    w.close().unwrap();

    let f = hdf5::File::open(&path).unwrap();
    let data = f.dataset(layout::IMAGE_PATH).unwrap();
    assert_eq!(data.shape()[0], 2);
    let mut buf = Vec::new();
    read_chunk(&data, &[1, 0, 0], &mut buf).unwrap();
    assert_eq!(buf, chunks(codec, 1)[0]);
    let present: Vec<u8> = f
        .dataset(layout::IMAGE_PRESENT_PATH)
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 1]);
    let ids: Vec<u64> = f
        .dataset(&format!(
            "{}/{}",
            layout::DETECTOR_SPECIFIC_PATH,
            layout::IMAGE_ID
        ))
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(ids, [0, 1]);
}

#[test]
fn unlimited_files_refuse_an_absurd_gap_and_a_file_without_layout_refuses_images() {
    let dir = tempfile::tempdir().unwrap();
    let codec = Codec::None;
    let mut w = StreamWriter::create(layout_spec(&dir.path().join("u.h5"), codec, 0)).unwrap();
    write(&mut w, codec, 7).unwrap();
    let far = 8 + detflow_writer::images::MAX_GAP;
    let c = chunks(codec, 0);
    let refs: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
    let image = ImageWrite {
        number: far,
        channels: &refs,
        image_id: far,
        real_time: None,
        start_time: None,
        stop_time: None,
        user_data_cbor: None,
        user_data_json: None,
    };
    let e = w.write_image(&meta(0), &image).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Image {
                refusal: ImageRefusal::TooFarAhead { extent: 8 },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(w.missing_images(), 7);
    w.close().unwrap();

    let mut plain =
        StreamWriter::create(StreamSpec::new(dir.path().join("plain.h5"), shape(), codec)).unwrap();
    let e = plain
        .write_image(&meta(0), &ImageWrite { number: 0, ..image })
        .unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Setting {
                setting: "image_layout",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn channel_names_that_collide_with_the_layout_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (channels, bad) in [
        (vec!["a", "a"], "a"),
        (vec!["a", "data"], "data"),
        (vec!["image_present"], "image_present"),
        (vec!["x/y"], "x/y"),
        (vec![], ""),
    ] {
        let spec = StreamSpec {
            image_layout: Some(ImageLayout {
                channels: channels.iter().map(|s| s.to_string()).collect(),
                ..ImageLayout::default()
            }),
            ..StreamSpec::new(dir.path().join("bad.h5"), shape(), Codec::None)
        };
        let e = StreamWriter::create(spec).unwrap_err();
        match &e {
            WriterError::Setting { setting, value, .. } => {
                assert_eq!(
                    (*setting, value.as_str()),
                    ("image_layout.channels", bad),
                    "{e}"
                )
            }
            other => panic!("{channels:?}: {other}"),
        }
        assert!(!dir.path().join("bad.h5").exists());
    }
    // `data` as the first channel is the image dataset itself.
    let spec = StreamSpec {
        image_layout: Some(ImageLayout {
            channels: vec!["data".into(), "b".into()],
            ..ImageLayout::default()
        }),
        ..StreamSpec::new(dir.path().join("ok.h5"), shape(), Codec::None)
    };
    StreamWriter::create(spec).unwrap().close().unwrap();
}

#[test]
fn write_frame_appends_to_a_one_channel_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.h5");
    let spec = StreamSpec {
        image_layout: Some(ImageLayout {
            channels: vec!["threshold_1".into()],
            image_fields: true,
            metadata: None,
        }),
        ..StreamSpec::new(&path, shape(), Codec::None)
    };
    let mut w = StreamWriter::create(spec).unwrap();
    for k in 0..3 {
        w.write_frame(&meta(k), &pixels(k, 0)).unwrap();
    }
    w.close().unwrap();
    let f = hdf5::File::open(&path).unwrap();
    let a: Vec<u16> = f
        .dataset(&channel_path("threshold_1"))
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(a.len(), 3 * (W * H) as usize);
    let present: Vec<u8> = f
        .dataset(layout::IMAGE_PRESENT_PATH)
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 1, 1]);
}

#[test]
fn a_swmr_reader_sees_images_and_presence_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swmr.h5");
    let codec = Codec::BitshuffleLz4;
    let mut w = StreamWriter::create(StreamSpec {
        swmr: true,
        ..layout_spec(&path, codec, 5)
    })
    .unwrap();
    write(&mut w, codec, 0).unwrap();
    write(&mut w, codec, 2).unwrap();
    w.flush().unwrap();

    let r = hdf5::File::open_as(&path, hdf5::file::OpenMode::ReadSWMR).unwrap();
    let data = r.dataset(&channel_path("difference")).unwrap();
    assert_eq!(data.shape()[0], 3);
    let mut buf = Vec::new();
    read_chunk(&data, &[2, 0, 0], &mut buf).unwrap();
    assert_eq!(buf, chunks(codec, 2)[2]);
    let present = r.dataset(layout::IMAGE_PRESENT_PATH).unwrap();
    assert_eq!(present.read_raw::<u8>().unwrap(), [1, 0, 1]);
    let ids = r
        .dataset(&format!(
            "{}/{}",
            layout::DETECTOR_SPECIFIC_PATH,
            layout::IMAGE_ID
        ))
        .unwrap();
    assert_eq!(ids.read_raw::<u64>().unwrap(), [0, u64::MAX, 2]);

    write(&mut w, codec, 1).unwrap();
    w.flush().unwrap();
    present.refresh().unwrap();
    assert_eq!(present.read_raw::<u8>().unwrap(), [1, 1, 1]);
    drop(r);
    w.close().unwrap();
}

fn table_u32(h: usize, w: usize) -> detflow_writer::Table {
    detflow_writer::Table {
        dims: vec![h, w],
        pixel_type: PixelType::U32,
        bytes: (0..(h * w) as u32)
            .map(|i| if i % 7 == 0 { 1u32 << (i % 5) } else { 0 })
            .flat_map(u32::to_le_bytes)
            .collect(),
    }
}

fn table_f32(h: usize, w: usize, scale: f32) -> detflow_writer::Table {
    detflow_writer::Table {
        dims: vec![h, w],
        pixel_type: PixelType::F32,
        bytes: (0..h * w)
            .map(|i| 1.0 + i as f32 * scale)
            .flat_map(f32::to_le_bytes)
            .collect(),
    }
}

fn full_metadata() -> detflow_writer::DetectorMetadata {
    detflow_writer::DetectorMetadata {
        series_id: Some(15614),
        series_unique_id: Some("01GRXWT80JSDY2FNW8SGCCDZD9".into()),
        arm_date: Some("2023-02-10T15:49:05.281+01:00".into()),
        description: Some("Dectris EIGER2 Si 16M 💙".into()),
        serial_number: Some("E-32-0117".into()),
        sensor_material: Some("Si".into()),
        sensor_thickness_m: Some(0.00045),
        beam_center_x_px: Some(2110.5),
        beam_center_y_px: Some(2200.25),
        count_time_s: Some(0.0099999),
        frame_time_s: Some(0.01),
        pixel_size_x_m: Some(7.5e-5),
        pixel_size_y_m: Some(7.5e-5),
        incident_wavelength_a: Some(0.9762),
        incident_energy_ev: Some(12700.0),
        saturation_value: Some(65534),
        threshold_energy_ev: vec![
            ("threshold_2".into(), 9000.0),
            ("threshold_1".into(), 6350.0),
            ("threshold_3".into(), 11000.0),
        ],
        detector_translation_m: Some([0.01, -0.02, 0.15]),
        goniometer: vec![("omega".into(), 10.0, 0.1), ("chi".into(), 30.0, 0.0)],
        countrate_correction_enabled: Some(true),
        flatfield_enabled: Some(false),
        pixel_mask_enabled: Some(true),
        virtual_pixel_interpolation_enabled: Some(false),
        pixel_mask: vec![
            ("threshold_1".into(), table_u32(H as usize, W as usize)),
            ("threshold_2".into(), table_u32(H as usize, W as usize)),
        ],
        flatfield: vec![
            (
                "threshold_1".into(),
                table_f32(H as usize, W as usize, 0.001),
            ),
            (
                "threshold_2".into(),
                table_f32(H as usize, W as usize, 0.002),
            ),
        ],
        countrate_correction_lookup_table: Some(detflow_writer::Table {
            dims: vec![4],
            pixel_type: PixelType::U32,
            bytes: [0u32, 1, 3, 7]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        }),
        user_data_cbor: Some(vec![0x82, 0x01, 0x61, b'x']),
        user_data_json: Some("[1, \"x\"]".into()),
        rank: None,
    }
}

fn metadata_spec(path: &std::path::Path, m: detflow_writer::DetectorMetadata) -> StreamSpec {
    let mut spec = layout_spec(path, Codec::BitshuffleLz4, 5);
    spec.image_layout.as_mut().unwrap().metadata = Some(m);
    spec
}

/// A fixed-length string dataset: ASCII, or UTF-8 for text that is not.
fn text(f: &hdf5::File, path: &str) -> String {
    let ds = f.dataset(path).unwrap();
    match ds.read_scalar::<hdf5::types::FixedAscii<64>>() {
        Ok(v) => v.as_str().to_owned(),
        Err(_) => ds
            .read_scalar::<hdf5::types::FixedUnicode<64>>()
            .unwrap()
            .as_str()
            .to_owned(),
    }
}

fn attr_text(ds: &hdf5::Dataset, name: &str) -> String {
    let v: hdf5::types::FixedAscii<64> = ds.attr(name).unwrap().read_scalar().unwrap();
    v.as_str().to_owned()
}

#[test]
fn series_metadata_is_written_with_nxmx_names_and_units() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.h5");
    let m = full_metadata();
    let w = StreamWriter::create(metadata_spec(&path, m.clone())).unwrap();
    w.close().unwrap();
    let f = hdf5::File::open(&path).unwrap();
    let det = layout::DETECTOR_PATH;
    let spec = layout::DETECTOR_SPECIFIC_PATH;
    assert_eq!(text(&f, "/entry/definition"), "NXmx");
    for (name, want) in [
        ("description", "Dectris EIGER2 Si 16M 💙"),
        ("serial_number", "E-32-0117"),
        ("sensor_material", "Si"),
    ] {
        assert_eq!(text(&f, &format!("{det}/{name}")), want, "{name}");
    }
    for (path, want, units) in [
        (format!("{det}/sensor_thickness"), 0.00045, "m"),
        (format!("{det}/beam_center_x"), 2110.5, "pixel"),
        (format!("{det}/beam_center_y"), 2200.25, "pixel"),
        (format!("{det}/count_time"), 0.0099999, "s"),
        (format!("{det}/frame_time"), 0.01, "s"),
        (format!("{det}/x_pixel_size"), 7.5e-5, "m"),
        (format!("{det}/y_pixel_size"), 7.5e-5, "m"),
        (
            "/entry/instrument/beam/incident_wavelength".into(),
            0.9762,
            "angstrom",
        ),
        (
            "/entry/instrument/beam/incident_energy".into(),
            12700.0,
            "eV",
        ),
        (
            format!("{spec}/threshold_3/threshold_energy"),
            11000.0,
            "eV",
        ),
        (
            "/entry/sample/transformations/omega_increment_set".into(),
            0.1,
            "deg",
        ),
    ] {
        let ds = f.dataset(&path).unwrap();
        assert_eq!(ds.read_scalar::<f64>().unwrap(), want, "{path}");
        assert_eq!(attr_text(&ds, "units"), units, "{path}");
    }
    let sat: u64 = f
        .dataset(&format!("{det}/saturation_value"))
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(sat, 65534);
    for (name, want) in [
        ("countrate_correction_applied", true),
        ("flatfield_applied", false),
        ("pixel_mask_applied", true),
        ("virtual_pixel_interpolation_applied", false),
    ] {
        let v: bool = f
            .dataset(&format!("{det}/{name}"))
            .unwrap()
            .read_scalar()
            .unwrap();
        assert_eq!(v, want, "{name}");
    }
    // One threshold per channel, in channel order; `difference` has none.
    let th = f.dataset(&format!("{det}/threshold_energy")).unwrap();
    let th: Vec<f64> = th.read_raw().unwrap();
    assert_eq!(&th[..2], [6350.0, 9000.0]);
    assert!(th[2].is_nan());

    let tr = f
        .dataset(&format!("{det}/transformations/translation"))
        .unwrap();
    let length: f64 = tr.read_scalar().unwrap();
    let vector: Vec<f64> = tr.attr("vector").unwrap().read_raw().unwrap();
    let exact: Vec<f64> = tr.attr("translation_m").unwrap().read_raw().unwrap();
    assert_eq!(exact, [0.01, -0.02, 0.15]);
    for (i, t) in [0.01, -0.02, 0.15].into_iter().enumerate() {
        assert!(
            (vector[i] * length - t).abs() < 1e-15,
            "{vector:?} × {length}"
        );
    }
    assert_eq!(attr_text(&tr, "transformation_type"), "translation");
    assert_eq!(
        text(&f, &format!("{det}/depends_on")),
        "/entry/instrument/detector/transformations/translation"
    );
    let omega: Vec<f64> = f
        .dataset("/entry/sample/transformations/omega")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(omega.len(), 5);
    for (i, a) in omega.iter().enumerate() {
        assert_eq!(*a, 10.0 + i as f64 * 0.1);
    }
    let chi: Vec<f64> = f
        .dataset("/entry/sample/transformations/chi")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(chi, [30.0; 5]);

    let id: u64 = f
        .dataset(&format!("{spec}/series_id"))
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(id, 15614);
    assert_eq!(
        text(&f, &format!("{spec}/series_unique_id")),
        "01GRXWT80JSDY2FNW8SGCCDZD9"
    );
    assert_eq!(
        text(&f, &format!("{spec}/arm_date")),
        "2023-02-10T15:49:05.281+01:00"
    );
    assert_eq!(
        text(&f, &format!("{spec}/series_user_data_json")),
        "[1, \"x\"]"
    );
    let cbor: Vec<u8> = f
        .dataset(&format!("{spec}/series_user_data"))
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(cbor, [0x82, 0x01, 0x61, b'x']);
}

fn table_bytes<T: hdf5::H5Type + Copy>(
    f: &hdf5::File,
    path: &str,
    to_le: fn(T) -> Vec<u8>,
) -> (Vec<usize>, Vec<u8>) {
    let ds = f.dataset(path).unwrap();
    let v: Vec<T> = ds.read_raw().unwrap();
    (ds.shape(), v.into_iter().flat_map(to_le).collect())
}

#[test]
fn pixel_masks_flatfields_and_the_countrate_table_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables.h5");
    let m = full_metadata();
    StreamWriter::create(metadata_spec(&path, m.clone()))
        .unwrap()
        .close()
        .unwrap();
    let f = hdf5::File::open(&path).unwrap();
    let det = layout::DETECTOR_PATH;
    let spec = layout::DETECTOR_SPECIFIC_PATH;
    let u32s = |p: &str| table_bytes::<u32>(&f, p, |v| v.to_le_bytes().to_vec());
    let f32s = |p: &str| table_bytes::<f32>(&f, p, |v| v.to_le_bytes().to_vec());
    let dims = vec![H as usize, W as usize];
    // The first channel's under the NXmx names, every channel's under detectorSpecific.
    assert_eq!(
        u32s(&format!("{det}/pixel_mask")),
        (dims.clone(), m.pixel_mask[0].1.bytes.clone())
    );
    assert_eq!(
        f32s(&format!("{det}/flatfield")),
        (dims.clone(), m.flatfield[0].1.bytes.clone())
    );
    for (i, ch) in ["threshold_1", "threshold_2"].iter().enumerate() {
        assert_eq!(
            u32s(&format!("{spec}/{ch}/pixel_mask")),
            (dims.clone(), m.pixel_mask[i].1.bytes.clone()),
            "{ch}"
        );
        assert_eq!(
            f32s(&format!("{spec}/{ch}/flatfield")),
            (dims.clone(), m.flatfield[i].1.bytes.clone()),
            "{ch}"
        );
    }
    assert_ne!(m.flatfield[0].1.bytes, m.flatfield[1].1.bytes);
    assert_eq!(
        u32s(&format!("{det}/countrate_correction_lookup_table")),
        (vec![4], m.countrate_correction_lookup_table.unwrap().bytes)
    );
}

#[test]
fn metadata_that_cannot_be_written_is_refused_before_the_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("badmeta.h5");
    let mut m = full_metadata();
    m.pixel_mask[1].1.bytes.pop();
    let e = StreamWriter::create(metadata_spec(&path, m)).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Setting {
                setting: "metadata.pixel_mask",
                ..
            }
        ),
        "{e}"
    );
    let mut m = full_metadata();
    m.goniometer.push(("a/b".into(), 0.0, 1.0));
    let e = StreamWriter::create(metadata_spec(&path, m)).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Setting {
                setting: "metadata.goniometer",
                ..
            }
        ),
        "{e}"
    );
    assert!(!path.exists());
    // Nothing given, nothing written but the definition.
    let w = StreamWriter::create(metadata_spec(&path, Default::default())).unwrap();
    w.close().unwrap();
    let f = hdf5::File::open(&path).unwrap();
    assert_eq!(text(&f, "/entry/definition"), "NXmx");
    assert!(f.group("/entry/instrument/beam").is_err());
    assert!(
        f.dataset(&format!("{}/description", layout::DETECTOR_PATH))
            .is_err()
    );
}

fn capture_settings(dir: &std::path::Path, num_capture: u64) -> detflow_writer::CaptureSettings {
    detflow_writer::CaptureSettings {
        num_capture,
        codec: Codec::BitshuffleLz4,
        naming: detflow_writer::FileNaming {
            path: dir.to_str().unwrap().into(),
            name: "series".into(),
            number: 1,
            auto_increment: true,
            template: "%s%s_%3.3d.h5".parse().unwrap(),
        },
        ..detflow_writer::CaptureSettings::default()
    }
}

fn geometry() -> detflow_writer::FrameGeometry {
    detflow_writer::FrameGeometry {
        shape: shape(),
        dim_offset: [0, 0],
        dim_binning: [1, 1],
    }
}

fn three_channels() -> ImageLayout {
    ImageLayout {
        channels: CHANNELS.iter().map(|s| s.to_string()).collect(),
        image_fields: true,
        metadata: None,
    }
}

fn push(
    s: &mut detflow_writer::CaptureSession,
    k: u64,
) -> Result<detflow_writer::Pushed, WriterError> {
    let c = chunks(Codec::BitshuffleLz4, k);
    let refs: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
    s.push_image(
        &meta(k),
        &ImageWrite {
            number: k,
            channels: &refs,
            image_id: k,
            real_time: None,
            start_time: None,
            stop_time: None,
            user_data_cbor: None,
            user_data_json: None,
        },
    )
}

#[test]
fn a_capture_session_writes_a_series_placed_by_number_and_completes_with_the_last_image() {
    use detflow_writer::{CaptureSession, Pushed};
    let dir = tempfile::tempdir().unwrap();
    let mut s = CaptureSession::start_images(
        capture_settings(dir.path(), 3),
        geometry(),
        three_channels(),
    )
    .unwrap();
    assert_eq!(push(&mut s, 2).unwrap(), Pushed::Accepted);
    assert_eq!(s.missing_images(), 2);
    // A refused image leaves the capture going.
    let e = push(&mut s, 2).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Image {
                number: 2,
                refusal: ImageRefusal::Repeated
            }
        ),
        "{e}"
    );
    assert!(!s.is_finished());
    assert_eq!(push(&mut s, 0).unwrap(), Pushed::Accepted);
    assert_eq!(push(&mut s, 1).unwrap(), Pushed::Complete);
    let (status, result) = s.finish();
    result.unwrap();
    assert_eq!(status.num_captured, 3);
    assert_eq!(status.files.len(), 1);
    assert_eq!(
        (status.files[0].frames, status.files[0].missing_images),
        (3, 0)
    );
    let path = dir.path().join("series_001.h5");
    assert_eq!(status.files[0].path, path);
    let f = hdf5::File::open(&path).unwrap();
    let present: Vec<u8> = f
        .dataset(layout::IMAGE_PRESENT_PATH)
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 1, 1]);
    let mut buf = Vec::new();
    let diff = f.dataset(&channel_path("difference")).unwrap();
    read_chunk(&diff, &[0, 0, 0], &mut buf).unwrap();
    assert_eq!(buf, chunks(Codec::BitshuffleLz4, 0)[2]);
}

#[test]
fn a_series_stopped_early_keeps_its_gap_counted() {
    use detflow_writer::CaptureSession;
    let dir = tempfile::tempdir().unwrap();
    let mut s = CaptureSession::start_images(
        capture_settings(dir.path(), 6),
        geometry(),
        three_channels(),
    )
    .unwrap();
    for k in [0, 1, 3] {
        push(&mut s, k).unwrap();
    }
    let (status, result) = s.finish();
    result.unwrap();
    assert_eq!(
        (status.files[0].frames, status.files[0].missing_images),
        (3, 1)
    );

    // Only Stream mode, one file per series.
    let mut settings = capture_settings(dir.path(), 6);
    settings.frames_per_file = 2;
    let e = CaptureSession::start_images(settings, geometry(), three_channels()).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Setting {
                setting: "frames_per_file",
                ..
            }
        ),
        "{e}"
    );
    // A plain capture takes no images.
    let mut settings = capture_settings(dir.path(), 2);
    settings.naming.number = 2;
    let mut plain = CaptureSession::start(settings, geometry()).unwrap();
    let e = push(&mut plain, 0).unwrap_err();
    assert!(
        matches!(
            e,
            WriterError::Setting {
                setting: "image_layout",
                ..
            }
        ),
        "{e}"
    );
}
