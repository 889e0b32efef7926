//! `detflow bench`: the JSON rows keep their fields and gain the per-thread CPU breakdown, the
//! cold codec figure and the scaling curve.

mod common;

use common::run;

#[test]
fn json_rows_carry_the_cpu_breakdown_the_cold_codec_rate_and_the_scaling_curve() {
    let dir = tempfile::tempdir().expect("a temp dir");
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
        let busy = cpu["compressors_busy"].as_array().expect("a list");
        let scaling = row["scaling"].as_array().expect("--scaling gives a list");
        if row["codec"] == "none" {
            // Zero copy: the writer writes the slots; no compressor ran.
            assert!(busy.is_empty(), "{cpu}");
            assert_eq!(cpu["compressors_ms"], 0.0);
            assert!(scaling.is_empty(), "{row}");
        } else {
            let workers = row["workers"].as_u64().expect("a count") as usize;
            assert_eq!(busy.len(), workers, "one busy share per worker: {cpu}");
            assert!(cpu["compressors_ms"].as_f64().unwrap() > 0.0, "{cpu}");
            let counts: Vec<u64> = scaling
                .iter()
                .map(|p| p["workers"].as_u64().expect("a count"))
                .collect();
            assert_eq!(counts, (1..=cores as u64).collect::<Vec<_>>());
            assert!(scaling.iter().all(|p| p["fps"].as_f64().unwrap() > 0.0));
        }
    }
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
