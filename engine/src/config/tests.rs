use super::*;
use detflow_hal::{ImageMode, PixelType};
use detflow_writer::Codec;

fn with(f: impl FnOnce(&mut Config)) -> Result<Validated, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.writer.path = dir.path().to_string_lossy().into_owned();
    f(&mut c);
    c.validate()
}

fn secs(s: f64) -> Seconds {
    Seconds::new(s).unwrap()
}

#[test]
fn an_existing_file_is_refused_unless_overwriting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("detflow_0001.h5"), b"").unwrap();
    let mut c = Config::default();
    c.writer.path = dir.path().to_string_lossy().into_owned();
    let e = c.validate().unwrap_err();
    assert_eq!(e.setting, "number");
    assert!(e.reason.contains("exists"), "{e}");
    c.writer.overwrite = true;
    assert!(c.validate().is_ok());
    c.writer.overwrite = false;
    c.writer.number = 2;
    assert!(c.validate().is_ok());
}

#[test]
fn the_detector_acquires_no_more_than_the_capture_takes() {
    let v = with(|c| c.writer.capture = Some(10)).unwrap();
    assert_eq!(
        (v.frames, v.acquisition.num_images, v.capture.num_capture),
        (10, 10, 10)
    );
    let v = with(|c| {
        c.detector.frames = 0;
        c.writer.capture = Some(7);
    })
    .unwrap();
    assert_eq!(
        (v.frames, v.acquisition.image_mode),
        (7, ImageMode::Multiple)
    );
    let v = with(|c| {
        c.detector.frames = 0;
        c.writer.capture = Some(0);
    })
    .unwrap();
    assert_eq!(
        (v.frames, v.acquisition.image_mode),
        (0, ImageMode::Continuous)
    );
    let v = with(|c| {
        c.writer.write_mode = WriteMode::Single;
        c.detector.frames = 3;
        c.writer.capture = Some(1);
    })
    .unwrap();
    assert_eq!(v.frames, 3, "single mode writes every frame");
}

#[test]
fn defaults_are_valid() {
    let v = with(|_| {}).unwrap();
    assert_eq!(v.sensor, (1024, 1024));
    assert_eq!(v.acquisition.pixel_type, PixelType::U16);
    assert_eq!(v.acquisition.image_mode, ImageMode::Multiple);
    assert_eq!(v.capture.codec, Codec::None);
    assert_eq!(v.capture.mode, WriteMode::Stream);
    assert_eq!(v.capture.num_capture, 100);
    assert_eq!(v.ring_slots, 16, "32 MiB of 2 MiB slots");
    assert!(matches!(v.backend, BackendSpec::Sim { fifo_depth: 16, .. }));
}

/// Values that do not parse never reach a `Config`: the TOML reader refuses them, naming
/// the key (its line is shown) and the reason the value's type gives.
#[test]
fn a_value_that_does_not_parse_is_refused_naming_its_key() {
    let cases = [
        ("detector", "dtype = \"u64\"", "expected one of u8"),
        ("detector", "size = \"0x10\"", "at least 1"),
        ("detector", "size = \"10by10\"", "WIDTHxHEIGHT"),
        ("detector", "mode = \"waves\"", "peaks, ramp, sine, noise"),
        ("detector", "exposure = -1", "between 0 and 86400"),
        ("detector", "period = 1e6", "between 0 and 86400"),
        ("writer", "template = \"%s%s_%q.h5\"", "unknown conversion"),
        ("writer", "codec = \"deflate:11\"", "deflate level"),
        (
            "writer",
            "write_mode = \"burst\"",
            "single, capture or stream",
        ),
        ("writer", "flush_interval = -0.5", "between 0 and 86400"),
        (
            "writer",
            "ref_pattern = \"h5file:///d/{scan}.h5\"",
            "unknown placeholder",
        ),
        ("ring", "policy = \"lossy\"", "block or drop-newest"),
        ("serve", "interface = \"localhost\"", "IPv4 address"),
        ("backend", "udp_listen = \"localhost\"", "socket address"),
    ];
    for (table, line, reason) in cases {
        let text = format!("[{table}]\n{line}\n");
        let e = toml::from_str::<Config>(&text).unwrap_err().to_string();
        let key = line.split(' ').next().unwrap();
        assert!(e.contains(line) && e.contains(reason), "{text}: {e}");
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn each_bad_value_names_its_setting() {
    type Case = (Box<dyn Fn(&mut Config)>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|c| c.writer.path = "/nonexistent/dir".into()),
            "path",
            "/nonexistent/dir",
        ),
        (Box::new(|c| c.ring.slots = 70_000), "ring-slots", "70000"),
        (
            Box::new(|c| {
                c.writer.write_mode = WriteMode::Capture;
                c.writer.capture = Some(0);
            }),
            "capture",
            "0",
        ),
        (
            Box::new(|c| c.writer.temp_suffix = "a/b".into()),
            "temp-suffix",
            "a/b",
        ),
        (Box::new(|c| c.writer.name = "a/b".into()), "name", "a/b"),
        (Box::new(|c| c.writer.workers = 300), "workers", "300"),
        (Box::new(|c| c.writer.number = -1), "number", "-1"),
        (
            Box::new(|c| c.ring.shm = Some("/nonexistent/dir/ring".into())),
            "ring-shm",
            "/nonexistent/dir/ring",
        ),
        (
            Box::new(|c| c.writer.refs = Some("/nonexistent/refs.jsonl".into())),
            "refs",
            "/nonexistent/refs.jsonl",
        ),
        (
            Box::new(|c| c.writer.template = "sub/%s%s_%d.h5".parse().unwrap()),
            "template",
            "sub/%s%s_%d.h5",
        ),
    ];
    for (f, setting, value) in cases {
        let e = with(f).unwrap_err();
        assert_eq!(e.setting, setting, "{e}");
        assert_eq!(e.value, value, "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("invalid {setting} \"{value}\"")),
            "{e}"
        );
    }
}

#[test]
fn a_reference_pattern_writes_single_files_and_refuses_capture() {
    let dir = tempfile::tempdir().unwrap();
    let pattern: detflow_writer::RefPattern =
        format!("h5file://{}/p_{{index:03d}}.h5", dir.path().display())
            .parse()
            .unwrap();
    let v = with(|c| c.writer.ref_pattern = Some(pattern.clone())).unwrap();
    assert_eq!(v.capture.mode, WriteMode::Single);
    let e = with(|c| {
        c.writer.ref_pattern = Some(pattern.clone());
        c.writer.write_mode = WriteMode::Capture;
    })
    .unwrap_err();
    assert_eq!(e.setting, "ref-pattern");
    let e = with(|c| {
        c.writer.ref_pattern = Some(pattern.clone());
        c.writer.auto_increment = false;
    })
    .unwrap_err();
    assert!(e.reason.contains("every point needs its own file"), "{e}");
}

#[test]
fn backend_settings_are_checked_by_name() {
    let e = with(|c| {
        c.backend = BackendConfig::Replay {
            file: "/nonexistent.h5".into(),
            dataset: "/d".into(),
        }
    })
    .unwrap_err();
    assert_eq!(
        (e.setting, e.value.as_str()),
        ("replay", "/nonexistent.h5::/d")
    );
    let e = with(|c| {
        c.backend = BackendConfig::Sim {
            fifo_depth: 0,
            faults: Default::default(),
        }
    })
    .unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("fifo-depth", "0"));
    let udp = BackendConfig::Udp {
        listen: "127.0.0.1:9000".parse().unwrap(),
        incomplete: crate::backend::udp::Incomplete::Flag,
    };
    let v = with(|c| c.backend = udp.clone()).unwrap();
    assert_eq!(v.backend, udp);
}

#[test]
fn never_flushing_needs_no_flush_and_no_flush_needs_no_flush_setting() {
    let e = with(|c| c.writer.flush_interval = Seconds::ZERO).unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("flush-interval", "0"));
    assert!(
        e.reason.contains("flush 0") && e.reason.contains("no_flush"),
        "{e}"
    );
    let v = with(|c| {
        c.writer.flush_interval = Seconds::ZERO;
        c.writer.no_flush = true;
    })
    .unwrap();
    assert_eq!((v.capture.flush_every, v.capture.flush_interval), (0, None));
    assert!(
        with(|c| c.writer.no_flush = true).is_err(),
        "flush_interval 1 contradicts it"
    );
    let e = with(|c| {
        c.writer.flush_interval = Seconds::ZERO;
        c.writer.no_flush = true;
        c.writer.flush = 4;
    })
    .unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("flush", "4"));
    assert!(
        with(|c| {
            c.writer.flush_interval = Seconds::ZERO;
            c.writer.flush = 4;
        })
        .is_ok()
    );
    let v = with(|c| c.writer.flush_interval = secs(0.25)).unwrap();
    assert_eq!(
        v.capture.flush_interval,
        Some(std::time::Duration::from_millis(250))
    );
}

#[test]
fn toml_round_trips_and_refuses_unknown_keys() {
    let mut c = Config::default();
    let text = toml::to_string(&c).unwrap();
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    c.writer.ref_pattern = Some("h5file:///d/s_{index}.h5".parse().unwrap());
    c.writer.capture = Some(3);
    c.ring.shm = Some("/dev/shm/x".into());
    c.detector.exposure = secs(0.002);
    c.backend = BackendConfig::Udp {
        listen: "127.0.0.1:9000".parse().unwrap(),
        incomplete: Default::default(),
    };
    let text = toml::to_string(&c).unwrap();
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");
    assert!(toml::from_str::<Config>("[detector]\nfrmes = 3\n").is_err());
    assert!(toml::from_str::<Config>("[detector]\nfault_drop = 0.1\n").is_err());
    let partial: Config = toml::from_str("[writer]\ncodec = \"deflate:1\"\n").unwrap();
    assert_eq!(partial.writer.codec, Codec::Deflate { level: 1 });
    assert_eq!(partial.detector, DetectorSettings::default());
}

#[test]
fn a_config_file_that_cannot_be_used_says_which_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let e = Config::from_toml_file(&path).unwrap_err();
    assert!(matches!(e, ConfigFileError::Read { .. }), "{e}");
    std::fs::write(&path, "[detector]\nsize = \"64\"\n").unwrap();
    let e = Config::from_toml_file(&path).unwrap_err();
    assert!(e.to_string().starts_with("invalid config"), "{e}");
    let source = std::error::Error::source(&e).unwrap().to_string();
    assert!(source.contains("size = \"64\""), "{source}");
}

#[test]
fn a_region_binning_and_picture_round_trip_and_shape_the_run() {
    let mut c = Config::default();
    c.detector.size = "64x48".parse().unwrap();
    c.detector.roi = Some("8,4,32x16".parse().unwrap());
    c.detector.binning = "2x4".parse().unwrap();
    let mut picture = c.detector.picture();
    picture.gain = 7.5;
    picture.peak_num_x = 3;
    c.detector.set_picture(picture);
    let text = toml::to_string(&c).unwrap();
    assert!(
        text.contains("roi = \"8,4,32x16\"")
            && text.contains("binning = \"2x4\"")
            && text.contains("[detector.picture]"),
        "{text}"
    );
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), c, "{text}");
    let dir = tempfile::tempdir().unwrap();
    c.writer.path = dir.path().to_string_lossy().into_owned();
    let v = c.validate().unwrap();
    assert_eq!(v.acquisition.output_shape(), Ok((16, 4)));
    assert_eq!((v.acquisition.roi.min_x, v.acquisition.roi.min_y), (8, 4));
    assert_eq!((v.params.gain, v.params.peak_num_x), (7.5, 3));
    assert_eq!(c.detector.frame_bytes(), 16 * 4 * 2);
}

#[test]
fn a_bad_region_binning_or_picture_is_refused_naming_its_key() {
    for (text, key) in [
        ("[detector]\nroi = \"1,2\"\n", "roi"),
        ("[detector]\nbinning = \"0x2\"\n", "binning"),
        ("[detector]\nbinning = \"65x1\"\n", "binning"),
    ] {
        let e = toml::from_str::<Config>(text).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("expected"), "{text}: {e}");
    }
    let e = with(|c| {
        c.detector.size = "64x48".parse().unwrap();
        c.detector.roi = Some("40,0,32x16".parse().unwrap());
    })
    .unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("roi", "40,0,32x16"));
    assert!(e.reason.contains("past the sensor of 64x48"), "{e}");
    let e = with(|c| {
        c.detector.roi = Some("0,0,8x8".parse().unwrap());
        c.detector.binning = "16x1".parse().unwrap();
    })
    .unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("binning", "16x1"));
    let e = with(|c| {
        let mut p = c.detector.picture();
        p.peak_width_x = 0;
        c.detector.set_picture(p);
    })
    .unwrap_err();
    assert_eq!((e.setting, e.value.as_str()), ("peak_width_x", "0"));
}

#[test]
fn a_run_into_another_sink_is_not_refused_over_the_writer_files() {
    let mut c = Config::default();
    c.writer.path = "/nonexistent/detflow".into();
    c.writer.codec = Codec::Lz4.into();
    c.detector.frames = 0;
    assert_eq!(c.validate().unwrap_err().setting, "path");
    let v = c.validate_run().unwrap();
    assert_eq!((v.frames, v.capture.codec), (0, Codec::Lz4));
    c.detector.roi = Some("0,0,2000x1".parse().unwrap());
    assert_eq!(c.validate_run().unwrap_err().setting, "roi");
}

#[test]
fn a_picture_table_may_give_some_keys_and_the_rest_is_the_demo_picture() {
    use detflow_sim::{SimMode, SimParams};
    let c: Config =
        toml::from_str("[detector]\nmode = \"sine\"\n\n[detector.picture]\ngain = 7.5\n").unwrap();
    let demo = SimParams::demo(SimMode::Sine, (1024, 1024), PixelType::U16);
    let p = c.detector.params();
    assert_eq!(p.gain, 7.5);
    assert_ne!(demo.gain, 7.5);
    assert_eq!(
        SimParams {
            gain: demo.gain,
            ..p.clone()
        },
        demo,
        "every other parameter is the demo picture's"
    );
    // Written back, the table holds only the key given.
    let text = toml::to_string(&c).unwrap();
    assert!(
        text.contains("gain = 7.5") && !text.contains("gain_x"),
        "{text}"
    );
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    // A misspelt key is refused, naming it.
    let e = toml::from_str::<Config>("[detector.picture]\ngian = 1.0\n").unwrap_err();
    assert!(e.to_string().contains("gian"), "{e}");
}

#[test]
fn the_default_worker_count_follows_cores_codec_and_frame_size() {
    use super::default_workers;
    let mib2 = 1024 * 1024 * 2;
    let bslz4: Codec = "bslz4".parse().unwrap();
    let deflate: Codec = "deflate:1".parse().unwrap();
    // Two cores: every codec keeps both busy (the bench's scaling curve on this machine).
    for codec in [bslz4, deflate, Codec::Lz4, "zstd".parse().unwrap()] {
        assert_eq!(default_workers(2, codec, mib2), 2, "{codec}");
    }
    assert_eq!(default_workers(1, bslz4, mib2), 1);
    // Many cores: a slow codec takes them all, a fast one leaves some to the detector and
    // writer; small frames lean on the writer's per-frame cost.
    assert_eq!(default_workers(16, deflate, mib2), 16);
    let fast = default_workers(16, bslz4, mib2);
    assert!((10..16).contains(&fast), "{fast}");
    assert!(default_workers(16, bslz4, 64 * 64 * 2) < fast);
    // A pool for `none` runs only where the codec may change later: one per core.
    assert_eq!(default_workers(4, Codec::None, mib2), 4);
}
