//! The write-mode state machine: which files a capture makes, when, under which names, and
//! what they hold, read back through the HDF5 library.

use std::path::Path;

use detflow_hal::{EpicsTimestamp, FrameMeta};
use detflow_writer::{CaptureSession, Pushed, WriteMode, WriterError, layout};

mod common;

use common::{SHAPE, geometry, settings};

fn frame(id: u64) -> (FrameMeta, Vec<u8>) {
    let meta = FrameMeta {
        unique_id: id,
        timestamp: EpicsTimestamp {
            sec: 100 + id as u32,
            nsec: 0,
        },
        unix_time_s: 0.0,
        shape: SHAPE,
    };
    let pixels: Vec<u8> = (0..12u16)
        .flat_map(|i| (i + 100 * id as u16).to_le_bytes())
        .collect();
    (meta, pixels)
}

trait FinishOk {
    fn finish_ok(self) -> detflow_writer::FileStatus;
}

impl FinishOk for CaptureSession {
    fn finish_ok(self) -> detflow_writer::FileStatus {
        let (status, result) = self.finish();
        result.unwrap();
        status
    }
}

fn shape_of(path: &Path) -> Vec<usize> {
    hdf5::File::open(path)
        .unwrap()
        .dataset(layout::IMAGE_PATH)
        .unwrap()
        .shape()
}

fn ids_of(path: &Path) -> Vec<i32> {
    hdf5::File::open(path)
        .unwrap()
        .dataset("/entry/instrument/NDAttributes/NDArrayUniqueId")
        .unwrap()
        .read_raw()
        .unwrap()
}

#[test]
fn single_mode_writes_one_file_per_frame_without_a_frame_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Single, 0), geometry()).unwrap();
    assert!(
        s.status().files.is_empty(),
        "nothing is opened before a frame"
    );
    for id in 1..=3 {
        let (m, px) = frame(id);
        assert_eq!(s.push(&m, &px).unwrap(), Pushed::Accepted);
    }
    let status = s.finish_ok();
    assert_eq!(status.files.len(), 3);
    assert_eq!(status.file_number, 4);
    for (i, f) in status.files.iter().enumerate() {
        assert_eq!(f.path, dir.path().join(format!("t_{:03}.h5", i + 1)));
        assert_eq!(shape_of(&f.path), vec![3, 4]);
        assert_eq!(ids_of(&f.path), vec![i as i32 + 1]);
    }
    assert_eq!(status.full_file_name, dir.path().join("t_003.h5"));
}

#[test]
fn capture_mode_buffers_then_writes_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Capture, 3), geometry()).unwrap();
    for id in 1..=2 {
        let (m, px) = frame(id);
        assert_eq!(s.push(&m, &px).unwrap(), Pushed::Accepted);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no file until the buffer is full"
        );
        assert_eq!(s.status().num_captured, id);
    }
    let (m, px) = frame(3);
    assert_eq!(s.push(&m, &px).unwrap(), Pushed::Complete);
    assert!(
        matches!(s.push(&m, &px), Err(WriterError::Closed)),
        "a complete capture takes no more"
    );
    let status = s.finish_ok();
    assert_eq!(status.files.len(), 1);
    assert_eq!(shape_of(&status.files[0].path), vec![3, 3, 4]);
    assert_eq!(ids_of(&status.files[0].path), vec![1, 2, 3]);
}

#[test]
fn capture_mode_stopped_early_writes_what_it_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Capture, 10), geometry()).unwrap();
    for id in 1..=4 {
        let (m, px) = frame(id);
        s.push(&m, &px).unwrap();
    }
    let status = s.finish_ok();
    assert_eq!(
        shape_of(&status.files[0].path),
        vec![4, 3, 4],
        "exactly the frames received, no padding"
    );
}

#[test]
fn stream_mode_stops_by_itself_at_num_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Stream, 2), geometry()).unwrap();
    assert!(
        dir.path().join("t_001.h5").exists(),
        "stream opens at start"
    );
    assert_eq!(
        s.status().file_number,
        2,
        "the number advanced when the name was built"
    );
    let (m, px) = frame(1);
    assert_eq!(s.push(&m, &px).unwrap(), Pushed::Accepted);
    let (m, px) = frame(2);
    assert_eq!(s.push(&m, &px).unwrap(), Pushed::Complete);
    let status = s.finish_ok();
    assert_eq!(shape_of(&status.files[0].path), vec![2, 3, 4]);
    let f = hdf5::File::open(&status.files[0].path).unwrap();
    let maxdims = f
        .dataset(layout::IMAGE_PATH)
        .unwrap()
        .space()
        .unwrap()
        .maxdims();
    assert_eq!(
        maxdims,
        vec![Some(2), Some(3), Some(4)],
        "max extent = NumCapture"
    );
}

#[test]
fn stream_mode_rolls_over_every_frames_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(dir.path(), WriteMode::Stream, 0);
    st.frames_per_file = 2;
    let mut s = CaptureSession::start(st, geometry()).unwrap();
    for id in 1..=5 {
        let (m, px) = frame(id);
        s.push(&m, &px).unwrap();
    }
    let status = s.finish_ok();
    let names: Vec<_> = status
        .files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["t_001.h5", "t_002.h5", "t_003.h5"]);
    assert_eq!(ids_of(&status.files[0].path), vec![1, 2]);
    assert_eq!(ids_of(&status.files[1].path), vec![3, 4]);
    assert_eq!(ids_of(&status.files[2].path), vec![5]);
    assert_eq!(status.file_number, 4);
}

#[test]
fn lazy_open_waits_for_the_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(dir.path(), WriteMode::Stream, 0);
    st.lazy_open = true;
    let mut s = CaptureSession::start(st, geometry()).unwrap();
    assert_eq!(s.status().write_message, "Lazy Open...");
    assert!(!dir.path().join("t_001.h5").exists());
    assert_eq!(
        s.status().file_number,
        1,
        "no name is built before the first frame"
    );
    let (m, px) = frame(1);
    s.push(&m, &px).unwrap();
    assert!(dir.path().join("t_001.h5").exists());
    assert_eq!(s.status().write_message, "");
    s.finish_ok();
}

#[test]
fn temp_suffix_renames_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(dir.path(), WriteMode::Stream, 0);
    st.temp_suffix = ".part".into();
    let mut s = CaptureSession::start(st, geometry()).unwrap();
    let (m, px) = frame(1);
    s.push(&m, &px).unwrap();
    assert!(dir.path().join("t_001.h5.part").exists());
    assert!(!dir.path().join("t_001.h5").exists());
    assert_eq!(
        s.status().full_file_name,
        dir.path().join("t_001.h5"),
        "FullFileName never has the suffix"
    );
    let status = s.finish_ok();
    assert!(!dir.path().join("t_001.h5.part").exists());
    assert_eq!(shape_of(&status.files[0].path), vec![1, 3, 4]);
}

#[test]
fn an_existing_file_is_refused_and_left_alone_unless_overwriting() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("t_001.h5");
    std::fs::write(&existing, b"precious").unwrap();
    let err =
        CaptureSession::start(settings(dir.path(), WriteMode::Stream, 0), geometry()).unwrap_err();
    assert!(matches!(err, WriterError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let mut st = settings(dir.path(), WriteMode::Stream, 0);
    st.overwrite = true;
    let mut s = CaptureSession::start(st, geometry()).unwrap();
    let (m, px) = frame(1);
    s.push(&m, &px).unwrap();
    s.finish_ok();
    assert_eq!(shape_of(&existing), vec![1, 3, 4]);
}

#[test]
fn a_frame_of_another_shape_is_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        CaptureSession::start(settings(dir.path(), WriteMode::Stream, 0), geometry()).unwrap();
    let (mut m, px) = frame(1);
    m.shape.width = 5;
    assert!(matches!(
        s.push(&m, &px),
        Err(WriterError::FrameMismatch { .. })
    ));
    assert_eq!(s.status().write_message, "Invalid frame. Ignoring.");
    assert!(!s.status().write_ok);
    let (m, px) = frame(2);
    s.push(&m, &px).unwrap();
    let status = s.finish_ok();
    assert_eq!(ids_of(&status.files[0].path), vec![2]);
}

#[test]
fn create_dirs_and_strftime_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(dir.path(), WriteMode::Stream, 1);
    st.naming.path = format!("{}/%Y/run", dir.path().display());
    st.create_dirs = -2;
    let mut s = CaptureSession::start(st, geometry()).unwrap();
    let year = s.status().file_path.clone();
    assert!(year.ends_with("/run/") && !year.contains('%'), "{year}");
    assert!(s.status().file_path_exists);
    let (m, px) = frame(1);
    assert_eq!(s.push(&m, &px).unwrap(), Pushed::Complete);
    let status = s.finish_ok();
    assert!(status.files[0].path.starts_with(&year));

    // Without CreateDirectory a missing directory is refused.
    let mut st = settings(dir.path(), WriteMode::Stream, 1);
    st.naming.path = format!("{}/missing", dir.path().display());
    let err = CaptureSession::start(st, geometry()).unwrap_err();
    assert!(matches!(err, WriterError::BadDirectory { .. }), "{err}");
}

/// The data roots are checked as each file is created, not only when the capture starts: a
/// directory swapped for a link out of the root mid-capture does not redirect the next file.
#[test]
fn a_link_swapped_in_mid_capture_does_not_take_files_out_of_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut s = settings(&root.join("sub"), WriteMode::Single, 0);
    s.roots = detflow_writer::DataRoots::new(std::slice::from_ref(&root)).unwrap();
    let mut session = CaptureSession::start(s, geometry()).unwrap();
    let (meta, pixels) = frame(1);
    session.push(&meta, &pixels).unwrap();
    let first = session.status().full_file_name.clone();
    assert!(first.starts_with(&root), "{first:?}");
    // Swap the directory for a link that leads out of the root.
    std::fs::rename(root.join("sub"), root.join("old")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
    let (meta, pixels) = frame(2);
    let err = session.push(&meta, &pixels).unwrap_err();
    assert!(
        matches!(err, WriterError::OutsideRoots { .. }),
        "expected OutsideRoots, got {err}"
    );
    assert!(err.to_string().contains("outside the data roots"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let (status, _) = session.finish();
    assert!(!status.write_ok);
    // The first file, written before the swap, is intact.
    assert_eq!(
        shape_of(&root.join("old").join(first.file_name().unwrap())),
        vec![3, 4]
    );
}
