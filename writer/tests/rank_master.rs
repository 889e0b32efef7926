//! The master over rank files: every channel reads as the single-writer file of the same
//! series, the mask and image ids say what is present, a rank's missing images (gap, tail,
//! whole file) read as the fill value, a rank file that appears later resolves, the series
//! metadata is copied (the goniometer rebuilt for every image), and files that are not of
//! one series are refused before anything is created.

#[path = "common/rank_files.rs"]
mod rank_files;

use std::path::{Path, PathBuf};

use detflow_hal::{Deal, PixelType};
use detflow_writer::{
    Codec, RankMasterSpec, RankSeries, WriterError, build_rank_master, layout, read_rank_file,
};
use rank_files::{
    H, TestSeries, W, pixels, write_growing_rank, write_rank, write_ranks, write_single,
};

fn read_u16(file: &Path, path: &str) -> Vec<u16> {
    hdf5::File::open(file)
        .unwrap()
        .dataset(path)
        .unwrap()
        .read_raw()
        .unwrap()
}

fn read_u64(file: &Path, path: &str) -> Vec<u64> {
    hdf5::File::open(file)
        .unwrap()
        .dataset(path)
        .unwrap()
        .read_raw()
        .unwrap()
}

fn present(master: &Path) -> Vec<u8> {
    hdf5::File::open(master)
        .unwrap()
        .dataset(layout::IMAGE_PRESENT_PATH)
        .unwrap()
        .read_raw()
        .unwrap()
}

fn image_ids(master: &Path) -> Vec<u64> {
    read_u64(
        master,
        &format!("{}/{}", layout::DETECTOR_SPECIFIC_PATH, layout::IMAGE_ID),
    )
}

/// Image `id` of channel `c` as the master reads it.
fn image(all: &[u16], id: u64) -> &[u16] {
    let n = (W * H) as usize;
    &all[id as usize * n..(id as usize + 1) * n]
}

fn expected(series: &TestSeries, id: u64, c: usize) -> Vec<u16> {
    pixels(series.dtype, id, c)
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn string(file: &Path, path: &str) -> String {
    let f = hdf5::File::open(file).unwrap();
    let ds = f.dataset(path).unwrap();
    match ds.read_scalar::<hdf5::types::FixedAscii<64>>() {
        Ok(s) => s.to_string(),
        Err(_) => ds
            .read_scalar::<hdf5::types::FixedUnicode<64>>()
            .unwrap()
            .to_string(),
    }
}

fn master_equals_single_writer(codec: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(codec);
    let mut ranks = write_ranks(dir.path(), "scan", &series);
    let single = write_single(dir.path(), "single", &series);
    ranks.reverse(); // any order
    let out = dir.path().join("scan_master.h5");
    let report = build_rank_master(&ranks, &RankMasterSpec::new(&out)).unwrap();

    assert_eq!(report.shape, [50, u64::from(H), u64::from(W)]);
    assert_eq!(report.dtype, "uint16");
    assert_eq!(report.fill_value, 65535.0);
    assert_eq!(report.channels, ["threshold_1", "threshold_2"]);
    assert_eq!((report.ranks, report.frames_per_block), (3, 4));
    assert_eq!(report.number_of_images, 50);
    assert_eq!(report.series_unique_id.as_deref(), Some("series-a"));
    assert_eq!(report.source_paths, "relative");
    assert_eq!((report.images_present, report.images_missing), (50, 0));
    let per_rank: Vec<_> = report
        .rank_files
        .iter()
        .map(|r| {
            (
                r.rank,
                r.images_expected,
                r.images_present,
                r.missing,
                r.read,
            )
        })
        .collect();
    assert_eq!(
        per_rank,
        [
            (0, 18, 18, 0, true),
            (1, 16, 16, 0, true),
            (2, 16, 16, 0, true)
        ]
    );
    assert_eq!(
        report.rank_files[1].file.as_deref(),
        Some(ranks[1].as_path())
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    // Every channel, by both names, equals the single writer's.
    for (c, name) in series.channels.iter().enumerate() {
        let single_px = read_u16(&single, &format!("{}/{name}", layout::DETECTOR_PATH));
        for path in [
            format!("/entry/data/{name}"),
            format!("{}/{name}", layout::DETECTOR_PATH),
        ] {
            assert_eq!(read_u16(&out, &path), single_px, "{codec:?} {path}");
        }
        let all = read_u16(&out, &format!("/entry/data/{name}"));
        for id in [0, 4, 13, 47, 48, 49] {
            assert_eq!(
                image(&all, id),
                expected(&series, id, c),
                "{name} image {id}"
            );
        }
        if c == 0 {
            assert_eq!(read_u16(&out, layout::LINK_PATH), single_px);
            assert_eq!(read_u16(&out, layout::IMAGE_PATH), single_px);
        }
    }
    assert_eq!(present(&out), vec![1u8; 50]);
    assert_eq!(image_ids(&out), (0..50).collect::<Vec<u64>>());

    // The series metadata, the goniometer for every image, the series' rank scalars.
    assert_eq!(
        string(&out, &format!("{}/description", layout::DETECTOR_PATH)),
        "EIGER2 test"
    );
    assert_eq!(
        string(
            &out,
            &format!("{}/series_unique_id", layout::DETECTOR_SPECIFIC_PATH)
        ),
        "series-a"
    );
    assert_eq!(string(&out, "/entry/definition"), "NXmx");
    let f = hdf5::File::open(&out).unwrap();
    let omega: Vec<f64> = f
        .dataset("/entry/sample/transformations/omega")
        .unwrap()
        .read_raw()
        .unwrap();
    let single_omega: Vec<f64> = hdf5::File::open(&single)
        .unwrap()
        .dataset("/entry/sample/transformations/omega")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(omega, single_omega);
    let energies: Vec<f64> = f
        .dataset(&format!("{}/threshold_energy", layout::DETECTOR_PATH))
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(energies, [6000.0, 6001.0]);
    let specific = f.group(layout::DETECTOR_SPECIFIC_PATH).unwrap();
    let scalar = |name: &str| {
        specific
            .dataset(name)
            .unwrap()
            .read_scalar::<u64>()
            .unwrap()
    };
    assert_eq!(scalar("detflow_ranks"), 3);
    assert_eq!(scalar("detflow_frames_per_block"), 4);
    assert_eq!(scalar("detflow_number_of_images"), 50);
    assert!(!specific.link_exists("detflow_rank"), "a rank's own key");
    for per_image in ["real_time", "user_data", "user_data_json"] {
        assert!(!specific.link_exists(per_image), "{per_image} is per image");
    }
    assert!(!f.link_exists("/entry/instrument/NDAttributes"));
    assert!(!f.link_exists("/entry/instrument/performance"));
    let files: Vec<hdf5::types::VarLenUnicode> = specific
        .dataset("detflow_rank_files")
        .unwrap()
        .read_raw()
        .unwrap();
    let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        files,
        ["scan_r0_0001.h5", "scan_r1_0001.h5", "scan_r2_0001.h5"]
    );
    let nx = |path: &str| -> String {
        let a: hdf5::types::FixedAscii<64> = f
            .group(path)
            .unwrap()
            .attr("NX_class")
            .unwrap()
            .read_scalar()
            .unwrap();
        a.to_string()
    };
    assert_eq!(nx("/entry/instrument"), "NXinstrument");
    assert_eq!(nx(layout::DETECTOR_PATH), "NXdetector");
    assert_eq!(nx("/entry/data"), "NXdata");
}

#[test]
fn uncompressed_rank_files_make_a_master_equal_to_the_single_writer_file() {
    master_equals_single_writer(Codec::None);
}

#[test]
fn deflate_rank_files_make_a_master_equal_to_the_single_writer_file() {
    master_equals_single_writer(Codec::Deflate { level: 1 });
}

#[test]
fn lost_images_and_a_rank_missing_its_tail_read_as_fill_with_mask_0() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let deal = series.deal;
    // Rank 0 lost image 12 (a gap inside its file); rank 2 stopped after 5 of its 16
    // images. Rank files are sized for their images from creation, so rank 2's datasets
    // still have its 16 positions.
    let rank2_kept: Vec<u64> = (0..5).map(|i| deal.image_id(2, i).unwrap()).collect();
    let files = vec![
        write_rank(dir.path(), "scan", &series, 0, |id| id != 12),
        write_rank(dir.path(), "scan", &series, 1, |_| true),
        write_rank(dir.path(), "scan", &series, 2, |id| {
            rank2_kept.contains(&id)
        }),
    ];
    let stopped = hdf5::File::open(&files[2]).unwrap();
    for path in [layout::IMAGE_PATH, layout::IMAGE_PRESENT_PATH] {
        assert_eq!(stopped.dataset(path).unwrap().shape()[0], 16, "{path}");
    }
    drop(stopped);
    let out = dir.path().join("scan_master.h5");
    let report = build_rank_master(&files, &RankMasterSpec::new(&out)).unwrap();

    let lost: Vec<u64> = (0..50)
        .filter(|&id| id == 12 || (deal.rank_of(id) == 2 && !rank2_kept.contains(&id)))
        .collect();
    assert_eq!(lost.len(), 1 + 11);
    let mask = present(&out);
    let ids = image_ids(&out);
    for (c, name) in series.channels.iter().enumerate() {
        let all = read_u16(&out, &format!("/entry/data/{name}"));
        for id in 0..50 {
            if lost.contains(&id) {
                assert!(
                    image(&all, id).iter().all(|&v| v == u16::MAX),
                    "{name} {id}"
                );
            } else {
                assert_eq!(image(&all, id), expected(&series, id, c), "{name} {id}");
            }
        }
    }
    for id in 0..50u64 {
        let lost = lost.contains(&id);
        assert_eq!(mask[id as usize], u8::from(!lost), "mask of {id}");
        assert_eq!(
            ids[id as usize],
            if lost { u64::MAX } else { id },
            "id {id}"
        );
    }
    let per_rank: Vec<_> = report
        .rank_files
        .iter()
        .map(|r| (r.images_expected, r.images_present, r.missing))
        .collect();
    assert_eq!(per_rank, [(18, 17, 1), (16, 16, 0), (16, 5, 11)]);
    assert_eq!((report.images_present, report.images_missing), (38, 12));
}

#[test]
fn a_rank_without_a_file_reads_as_fill_and_resolves_once_its_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let files = vec![
        write_rank(dir.path(), "scan", &series, 0, |_| true),
        write_rank(dir.path(), "scan", &series, 2, |_| true),
    ];
    // Left unmapped.
    let out = dir.path().join("unmapped_master.h5");
    let report = build_rank_master(&files, &RankMasterSpec::new(&out)).unwrap();
    assert_eq!(report.rank_files[1].file, None);
    assert_eq!(report.rank_files[1].missing, 16);
    assert_eq!(report.images_missing, 16);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("rank 1: no file given")),
        "{:?}",
        report.notes
    );
    let rank1 = |id: u64| series.deal.rank_of(id) == 1;
    let mask = present(&out);
    assert!((0..50).all(|id| mask[id as usize] == u8::from(!rank1(id))));

    // Mapped by its expected name: fill until the file is written, then its images.
    let out = dir.path().join("scan_master.h5");
    let expected_files: Vec<PathBuf> = (0..3)
        .map(|k| dir.path().join(format!("scan_r{k}_0001.h5")))
        .collect();
    let spec = RankMasterSpec {
        expected_files,
        ..RankMasterSpec::new(&out)
    };
    let report = build_rank_master(&files, &spec).unwrap();
    assert!(!report.rank_files[1].read);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("rank 1: no file read"))
    );
    let before = read_u16(&out, layout::LINK_PATH);
    assert!(image(&before, 4).iter().all(|&v| v == u16::MAX));
    write_rank(dir.path(), "scan", &series, 1, |_| true);
    let after = read_u16(&out, layout::LINK_PATH);
    for id in 0..50 {
        assert_eq!(image(&after, id), expected(&series, id, 0), "image {id}");
    }
    assert_eq!(present(&out), vec![1u8; 50]);
}

#[test]
fn the_series_can_be_given_before_any_rank_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let out = dir.path().join("scan_master.h5");
    let spec = RankMasterSpec {
        series: RankSeries {
            deal: Some(series.deal),
            number_of_images: Some(50),
            dtype: Some(PixelType::U16),
            frame_shape: Some([u64::from(H), u64::from(W)]),
            channels: series.channels.clone(),
            series_unique_id: Some("series-a".into()),
        },
        expected_files: (0..3)
            .map(|k| dir.path().join(format!("scan_r{k}_0001.h5")))
            .collect(),
        ..RankMasterSpec::new(&out)
    };
    let report = build_rank_master(&[], &spec).unwrap();
    assert_eq!(report.images_missing, 50);
    assert_eq!(present(&out), vec![0u8; 50]);
    write_ranks(dir.path(), "scan", &series);
    assert_eq!(present(&out), vec![1u8; 50]);
    assert_eq!(image_ids(&out), (0..50).collect::<Vec<u64>>());
    let all = read_u16(&out, "/entry/data/threshold_2");
    assert_eq!(image(&all, 49), expected(&series, 49, 1));
}

/// `build_rank_master` refuses, naming `file`, with `words` in the message, and creates
/// nothing.
fn refused(files: &[PathBuf], spec: &RankMasterSpec, file: &Path, words: &[&str]) {
    let err = build_rank_master(files, spec).unwrap_err();
    let text = err.to_string();
    match &err {
        WriterError::RankFile { path, .. } => assert_eq!(path, file, "{text}"),
        other => panic!("not a rank file refusal: {other}"),
    }
    for w in words {
        assert!(text.contains(w), "{text:?} does not say {w:?}");
    }
    assert!(!spec.out.exists(), "{text}: the master was created");
}

#[test]
fn files_not_of_one_series_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let series = TestSeries::new(Codec::None);
    let ranks = write_ranks(d, "scan", &series);
    let spec = RankMasterSpec::new(d.join("scan_master.h5"));

    let other = TestSeries {
        unique_id: "series-b".into(),
        ..series.clone()
    };
    let b = write_rank(d, "other", &other, 1, |_| true);
    refused(
        &[ranks[0].clone(), b.clone()],
        &spec,
        &b,
        &["series_unique_id", "series-b", "series-a"],
    );
    refused(
        &[ranks[0].clone(), ranks[1].clone(), ranks[0].clone()],
        &spec,
        &ranks[0],
        &["detflow_rank = 0", "two files of one rank"],
    );
    let four = TestSeries {
        deal: Deal::new(4, 4).unwrap(),
        ..series.clone()
    };
    let f = write_rank(d, "four", &four, 3, |_| true);
    refused(
        &[ranks[0].clone(), f.clone()],
        &spec,
        &f,
        &["detflow_ranks", "4"],
    );
    let more = TestSeries {
        images: 60,
        ..series.clone()
    };
    let m = write_rank(d, "more", &more, 1, |_| true);
    refused(
        &[ranks[0].clone(), m.clone()],
        &spec,
        &m,
        &["detflow_number_of_images = 60", "50"],
    );
    let wide = TestSeries {
        dtype: PixelType::U32,
        ..series.clone()
    };
    let w = write_rank(d, "wide", &wide, 1, |_| true);
    refused(
        &[ranks[0].clone(), w.clone()],
        &spec,
        &w,
        &["dtype", "U32", "U16"],
    );
    let three = TestSeries {
        channels: vec!["threshold_1".into(), "threshold_2".into(), "diff".into()],
        ..series.clone()
    };
    let t = write_rank(d, "three", &three, 1, |_| true);
    refused(
        &[ranks[0].clone(), t.clone()],
        &spec,
        &t,
        &["channels", "diff"],
    );
    let single = write_single(d, "single", &series);
    refused(
        &[ranks[0].clone(), single.clone()],
        &spec,
        &single,
        &["no detectorSpecific/detflow_rank", "not a rank file"],
    );
    let absent = d.join("absent_r1_0001.h5");
    refused(
        std::slice::from_ref(&absent),
        &spec,
        &absent,
        &["no such file"],
    );
    // What the caller says must agree with the files too.
    let given = RankMasterSpec {
        series: RankSeries {
            series_unique_id: Some("series-c".into()),
            ..RankSeries::default()
        },
        ..spec.clone()
    };
    refused(
        &ranks,
        &given,
        &ranks[0],
        &["series-c", "the series as given"],
    );
    // A master that exists is not replaced without `overwrite`.
    std::fs::write(&spec.out, b"keep").unwrap();
    let err = build_rank_master(&ranks, &spec).unwrap_err();
    assert!(matches!(err, WriterError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&spec.out).unwrap(), b"keep");
}

#[test]
fn a_rank_file_says_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let path = write_rank(dir.path(), "scan", &series, 2, |id| id != 8);
    let info = read_rank_file(&path).unwrap();
    assert_eq!((info.rank, info.deal), (2, series.deal));
    assert_eq!(info.number_of_images, Some(50));
    assert_eq!(info.series_unique_id.as_deref(), Some("series-a"));
    assert_eq!(info.channels, series.channels);
    assert_eq!((info.dtype, info.frame_shape), (PixelType::U16, [12, 16]));
    assert!(info.closed);
    assert_eq!(info.present_among(16), 15);
}

#[test]
fn a_rank_file_shorter_than_its_share_is_mapped_up_to_its_end_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let series = TestSeries::new(Codec::None);
    let deal = series.deal;
    // A file that grows with its images (no image count when it was made) and ends after
    // 6 of rank 1's 16 images: HDF5 cannot read a fixed mapping past a source's end.
    let kept: Vec<u64> = (0..6).map(|i| deal.image_id(1, i).unwrap()).collect();
    let files = vec![
        write_rank(dir.path(), "scan", &series, 0, |_| true),
        write_growing_rank(dir.path(), "scan", &series, 1, |id| kept.contains(&id)),
        write_rank(dir.path(), "scan", &series, 2, |_| true),
    ];
    assert_eq!(read_rank_file(&files[1]).unwrap().positions, 6);
    let out = dir.path().join("scan_master.h5");
    let report = build_rank_master(&files, &RankMasterSpec::new(&out)).unwrap();
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("rank 1:") && n.contains("6 of the rank's 16")),
        "{:?}",
        report.notes
    );
    assert_eq!(
        (
            report.rank_files[1].images_present,
            report.rank_files[1].missing
        ),
        (6, 10)
    );
    let all = read_u16(&out, layout::LINK_PATH);
    let mask = present(&out);
    for id in 0..50u64 {
        let lost = deal.rank_of(id) == 1 && !kept.contains(&id);
        assert_eq!(mask[id as usize], u8::from(!lost), "mask of {id}");
        if lost {
            assert!(image(&all, id).iter().all(|&v| v == u16::MAX), "image {id}");
        } else {
            assert_eq!(image(&all, id), expected(&series, id, 0), "image {id}");
        }
    }
}
