//! `detflow bench`: the JSON rows keep their fields and gain the per-thread CPU breakdown, the
//! cold codec figure and the scaling curve; `--plot` draws a PNG of the requested size, and a
//! plot that cannot be written is refused before any run.

mod common;

use common::run;

/// The PNG signature, and width and height from the IHDR chunk that must follow it.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "the file starts with the PNG signature"
    );
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    assert_eq!(be(&bytes[8..12]), 13, "IHDR holds 13 bytes");
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn json_rows_carry_the_cpu_breakdown_the_cold_codec_rate_and_the_scaling_curve() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let png = dir.path().join("bench.png");
    let out = run(&[
        "bench",
        "--codecs",
        "none,lz4",
        "--dtype",
        "u16",
        "--size",
        "128x96",
        // More frames than the ring's 64 slots: the detector waits for the compressors, so
        // at its last frame every thread has worked.
        "--frames",
        "200",
        "--repeat",
        "1",
        "--scaling",
        "--json",
        "--path",
        dir.path().to_str().expect("a UTF-8 path"),
        "--plot",
        png.to_str().expect("a UTF-8 path"),
        "--plot-size",
        "640x400",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().expect("an array, one object per row");
    assert_eq!(rows.len(), 2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for row in rows {
        // The fields that were there before stay.
        for key in [
            "codec",
            "dtype",
            "frames",
            "fps",
            "raw_write_fps",
            "codec_fps_1thread",
            "workers",
            "of_raw_write",
            "of_compression_bound",
        ] {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
        assert_eq!(row["frames"], 200);
        assert!(row["codec_fps_1thread_cold"].as_f64().expect("a number") > 0.0);
        let cpu = &row["cpu"];
        for key in ["detector_ms", "compressors_ms", "writer_ms", "other_ms"] {
            assert!(cpu[key].as_f64().expect("a number") >= 0.0, "{key}: {cpu}");
        }
        // The detector thread copied every frame into the ring: it used some CPU.
        assert!(cpu["detector_ms"].as_f64().unwrap() > 0.0, "{cpu}");
        let busy = cpu["compressors_busy"].as_f64().expect("a share");
        let scaling = row["scaling"].as_array().expect("--scaling gives a list");
        if row["codec"] == "none" {
            // Zero copy: the writer writes the slots; no compressor ran.
            assert_eq!((busy, row["workers"].as_u64()), (0.0, Some(0)), "{row}");
            assert_eq!(cpu["compressors_ms"], 0.0);
            assert!(scaling.is_empty(), "{row}");
        } else {
            assert!(row["workers"].as_u64().expect("a count") >= 1, "{row}");
            assert!(busy > 0.0 && busy <= 1.0, "{cpu}");
            assert!(cpu["compressors_ms"].as_f64().unwrap() > 0.0, "{cpu}");
            let counts: Vec<u64> = scaling
                .iter()
                .map(|p| p["workers"].as_u64().expect("a count"))
                .collect();
            assert_eq!(counts, (1..=cores as u64).collect::<Vec<_>>());
            assert!(scaling.iter().all(|p| p["fps"].as_f64().unwrap() > 0.0));
        }
    }
    let bytes = std::fs::read(&png).expect("the PNG was written");
    assert_eq!(png_size(&bytes), (640, 400));
}

#[test]
fn the_table_shows_the_cpu_line_and_the_default_worker_count() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = run(&[
        "bench",
        "--codecs",
        "lz4",
        "--dtype",
        "u8",
        "--size",
        "64x64",
        "--frames",
        "10",
        "--repeat",
        "1",
        "--path",
        dir.path().to_str().expect("a UTF-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("workers: the engine's default"), "{stdout}");
    let cpu = stdout
        .lines()
        .find(|l| l.contains("cpu ms/frame"))
        .unwrap_or_else(|| panic!("no cpu line: {stdout}"));
    for part in [
        "workers |",
        "detector",
        "compressors",
        "writer",
        "other",
        "busy",
    ] {
        assert!(cpu.contains(part), "{part} missing: {cpu}");
    }
}

#[test]
fn a_plot_that_cannot_be_written_is_refused_before_any_run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let missing = dir.path().join("no/such/dir/b.png");
    let not_png = dir.path().join("b.txt");
    for (plot, why) in [
        (missing.to_str().unwrap(), "cannot write it"),
        (not_png.to_str().unwrap(), "must end in .png"),
    ] {
        let out = run(&[
            "bench",
            "--codecs",
            "none",
            "--dtype",
            "u8",
            "--size",
            "64x64",
            "--frames",
            "10",
            "--path",
            dir.path().to_str().unwrap(),
            "--plot",
            plot,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("--plot {plot}")), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!not_png.exists(), "no file left behind");
    }
    let out = run(&["bench", "--plot-size", "1200x700"]);
    assert_eq!(out.status.code(), Some(2), "--plot-size needs --plot");
    let out = run(&[
        "bench",
        "--plot",
        dir.path().join("b.png").to_str().unwrap(),
        "--plot-size",
        "12x7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid --plot-size \"12x7\""), "{stderr}");
}
