//! Master files with a virtual dataset, read back through the HDF5 library: the mapping,
//! missing sources, relative and absolute source names, fill values, and the fallback.

use std::path::{Path, PathBuf};

use detflow_hal::PixelType;
use detflow_writer::vds::{PointDescription, VdsSpec, build_master};
use hdf5::File;
use hdf5::types::VarLenUnicode;

const H: usize = 3;
const W: usize = 4;

/// A detflow-like file: `/entry/data/data` of `frames` (H, W) u16 frames, frame k filled
/// with `base + k` (no frame axis when `frames` is `None`).
fn source(path: &Path, frames: Option<usize>, base: u16) {
    let f = File::create(path).unwrap();
    let g = f
        .create_group("entry")
        .unwrap()
        .create_group("data")
        .unwrap();
    match frames {
        None => {
            let v = ndarray::Array2::from_elem((H, W), base);
            g.new_dataset_builder()
                .with_data(&v)
                .create("data")
                .unwrap();
        }
        Some(n) => {
            let v = ndarray::Array3::from_shape_fn((n, H, W), |(k, _, _)| base + k as u16);
            g.new_dataset_builder()
                .with_data(&v)
                .create("data")
                .unwrap();
        }
    }
}

fn uri(path: &Path, suffix: &str) -> String {
    format!("h5file://{}::/entry/data/data{suffix}", path.display())
}

fn read_u16(master: &Path) -> ndarray::ArrayD<u16> {
    File::open(master)
        .unwrap()
        .dataset("/entry/data/data")
        .unwrap()
        .read_dyn::<u16>()
        .unwrap()
}

fn refs_of(master: &Path) -> Vec<String> {
    File::open(master)
        .unwrap()
        .dataset("/entry/data/data_refs")
        .unwrap()
        .read_1d::<VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect()
}

fn attr(master: &Path, name: &str) -> Option<String> {
    let f = File::open(master).unwrap();
    let ds = f.dataset("/entry/data/data_refs").unwrap();
    ds.attr(name).ok().map(|a| {
        a.read_scalar::<VarLenUnicode>()
            .unwrap()
            .as_str()
            .to_owned()
    })
}

#[test]
fn one_file_per_point_stacks_into_points_rows_cols() {
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("scan_{i:04}.h5"));
            source(&p, None, 10 * i as u16);
            uri(&p, "")
        })
        .collect();
    let master = dir.path().join("master.h5");
    let report = build_master(&refs, &VdsSpec::new(&master)).unwrap();
    assert!(report.virtual_dataset, "{report:?}");
    assert_eq!(report.shape, vec![3, H as u64, W as u64]);
    assert_eq!(report.dtype.as_deref(), Some("uint16"));
    assert_eq!(report.source_paths, "relative");
    assert_eq!(report.sources_present, 3);
    let v = read_u16(&master);
    assert_eq!(v.shape(), &[3, H, W]);
    for i in 0..3 {
        assert!(
            v.index_axis(ndarray::Axis(0), i)
                .iter()
                .all(|&x| x == 10 * i as u16)
        );
    }
    assert_eq!(refs_of(&master), refs);
    assert_eq!(attr(&master, "vds_error"), None);
    // Relative source names, resolved against the master's directory: move the tree.
    let moved = tempfile::tempdir().unwrap();
    let moved_dir = moved.path().join("elsewhere");
    std::fs::rename(dir.path(), &moved_dir).unwrap();
    let v = read_u16(&moved_dir.join("master.h5"));
    assert_eq!((v[[0, 0, 0]], v[[1, 0, 0]], v[[2, 2, 3]]), (0, 10, 20));
}

#[test]
fn frame_indices_and_slices_select_frames_of_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("run_0001.h5");
    source(&src, Some(4), 100);
    let master = dir.path().join("m.h5");
    // Points in reverse order: the mapping follows the references, not the file.
    let refs: Vec<String> = (0..4).rev().map(|i| uri(&src, &format!("[{i}]"))).collect();
    build_master(&refs, &VdsSpec::new(&master)).unwrap();
    let v = read_u16(&master);
    assert_eq!(v.shape(), &[4, H, W]);
    for p in 0..4 {
        assert_eq!(v[[p, 1, 1]], 100 + 3 - p as u16);
    }

    let sliced = dir.path().join("s.h5");
    let refs = vec![uri(&src, "[0:2]"), uri(&src, "[2:4]")];
    let report = build_master(&refs, &VdsSpec::new(&sliced)).unwrap();
    assert_eq!(report.shape, vec![2, 2, H as u64, W as u64]);
    let v = read_u16(&sliced);
    assert_eq!(v.shape(), &[2, 2, H, W]);
    assert_eq!(
        (
            v[[0, 0, 0, 0]],
            v[[0, 1, 0, 0]],
            v[[1, 0, 0, 0]],
            v[[1, 1, 2, 3]]
        ),
        (100, 101, 102, 103)
    );
}

#[test]
fn missing_sources_read_as_a_fill_value_that_fits_the_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let there = dir.path().join("a.h5");
    source(&there, None, 7);
    let missing = dir.path().join("b.h5");
    let master = dir.path().join("m.h5");
    let report = build_master(
        &[uri(&there, ""), uri(&missing, "")],
        &VdsSpec::new(&master),
    )
    .unwrap();
    assert!(report.virtual_dataset);
    assert_eq!(report.sources_present, 1);
    assert_eq!(report.fill_value, Some(f64::from(u16::MAX)));
    let v = read_u16(&master);
    assert!(v.index_axis(ndarray::Axis(0), 0).iter().all(|&x| x == 7));
    assert!(
        v.index_axis(ndarray::Axis(0), 1)
            .iter()
            .all(|&x| x == u16::MAX)
    );
    let present = File::open(&master)
        .unwrap()
        .dataset("/entry/data/data_present")
        .unwrap()
        .read_raw::<u8>()
        .unwrap();
    assert_eq!(present, vec![1, 0]);
    // The late file appears: the same master now reads it.
    source(&missing, None, 9);
    let v = read_u16(&master);
    assert!(v.index_axis(ndarray::Axis(0), 1).iter().all(|&x| x == 9));
}

#[test]
fn with_no_source_yet_the_description_gives_dtype_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = (0..2)
        .map(|i| uri(&dir.path().join(format!("late_{i}.h5")), "[0]"))
        .collect();
    let master = dir.path().join("m.h5");
    let report = build_master(&refs, &VdsSpec::new(&master)).unwrap();
    assert!(!report.virtual_dataset);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("shape is unknown"),
        "{report:?}"
    );
    assert_eq!(refs_of(&master), refs, "the references are kept");
    assert!(
        attr(&master, "vds_error")
            .unwrap()
            .contains("shape is unknown")
    );

    let spec = VdsSpec {
        description: Some(PointDescription {
            dtype: PixelType::F32,
            frame_shape: [H as u64, W as u64],
        }),
        overwrite: true,
        ..VdsSpec::new(&master)
    };
    let report = build_master(&refs, &spec).unwrap();
    assert!(report.virtual_dataset, "{report:?}");
    assert_eq!(report.dtype.as_deref(), Some("float32"));
    let f = File::open(&master).unwrap();
    let v = f
        .dataset("/entry/data/data")
        .unwrap()
        .read_dyn::<f32>()
        .unwrap();
    assert_eq!(v.shape(), &[2, H, W]);
    assert!(v.iter().all(|x| x.is_nan()), "floats fill with NaN");
}

#[test]
fn sources_elsewhere_are_named_by_absolute_path() {
    let src_dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("a.h5");
    source(&src, Some(1), 5);
    let master = out_dir.path().join("m.h5");
    let report = build_master(&[uri(&src, "[0]")], &VdsSpec::new(&master)).unwrap();
    assert_eq!(report.source_paths, "absolute");
    let f = File::open(&master).unwrap();
    let map = f
        .dataset("/entry/data/data")
        .unwrap()
        .dcpl()
        .unwrap()
        .virtual_map();
    assert_eq!(PathBuf::from(&map[0].src_filename), src);
    assert_eq!(read_u16(&master)[[0, 2, 3]], 5);
}

#[test]
fn when_no_vds_can_be_made_the_references_stay_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("m.h5");
    for (refs, why) in [
        (
            vec!["file:///tmp/a.edf".to_owned()],
            "not an HDF5 reference",
        ),
        (vec!["h5file://host/a.h5".to_owned()], "only local files"),
    ] {
        let spec = VdsSpec {
            overwrite: true,
            ..VdsSpec::new(&master)
        };
        let report = build_master(&refs, &spec).unwrap();
        assert!(!report.virtual_dataset);
        assert!(
            report.reason.as_deref().unwrap().contains(why),
            "{report:?}"
        );
        assert_eq!(refs_of(&master), refs);
        assert!(attr(&master, "vds_error").unwrap().contains(why));
        assert!(
            File::open(&master)
                .unwrap()
                .dataset("/entry/data/data")
                .is_err()
        );
    }
    // An existing master is not replaced unless asked.
    let e = build_master(&["file:///a".into()], &VdsSpec::new(&master)).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
}

#[test]
fn a_source_of_another_shape_is_left_unmapped_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.h5");
    let b = dir.path().join("b.h5");
    source(&a, None, 1);
    {
        let f = File::create(&b).unwrap();
        let v = ndarray::Array2::from_elem((2, 2), 3u16);
        f.create_group("entry")
            .unwrap()
            .create_group("data")
            .unwrap()
            .new_dataset_builder()
            .with_data(&v)
            .create("data")
            .unwrap();
    }
    let master = dir.path().join("m.h5");
    let report = build_master(&[uri(&a, ""), uri(&b, "")], &VdsSpec::new(&master)).unwrap();
    assert!(report.virtual_dataset);
    assert_eq!(report.notes.len(), 1, "{report:?}");
    assert!(report.notes[0].contains("point 1"));
    let v = read_u16(&master);
    assert!(
        v.index_axis(ndarray::Axis(0), 1)
            .iter()
            .all(|&x| x == u16::MAX)
    );
    assert!(attr(&master, "vds_notes").unwrap().contains("point 1"));
}

#[test]
fn a_source_name_with_a_percent_sign_is_read_as_written() {
    // HDF5 reads VDS source names as printf-style patterns: "%1" must not become a block
    // number, nor "%%" one percent sign.
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = ["scan%b_0000.h5", "100%%_0001.h5"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let p = dir.path().join(name);
            source(&p, None, 7 + i as u16);
            // In a URI, '%' itself is percent-encoded.
            uri(&p, "").replace('%', "%25")
        })
        .collect();
    let master = dir.path().join("master.h5");
    let report = build_master(&refs, &VdsSpec::new(&master)).unwrap();
    assert_eq!(report.sources_present, 2, "{report:?}");
    let v = read_u16(&master);
    assert_eq!((v[[0, 0, 0]], v[[1, 2, 3]]), (7, 8));
}
