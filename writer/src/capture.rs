//! One capture, from areaDetector's `Capture=1` to `Capture=0`: which files are opened, when,
//! under which names, and what goes into them, in each write mode.
//!
//! A [`CaptureSession`] is started with the file settings and the frame geometry (the
//! detector's configuration gives it, so no "priming" frame is needed). Frames are then
//! [`push`](CaptureSession::push)ed in order, already encoded; the session opens, fills, rolls
//! over and closes files as NDPluginFile would, and [`finish`](CaptureSession::finish) writes
//! what is left. [`FileStatus`] mirrors the NDFile readbacks: FullFileName, FileNumber,
//! FilePathExists, NumCaptured, WriteStatus and WriteMessage.
//!
//! | mode | files | frames per file |
//! |---|---|---|
//! | [`WriteMode::Single`] | one per frame, dataset (H, W) | 1 |
//! | [`WriteMode::Capture`] | one, written when NumCapture frames are buffered (or at finish) | NumCapture |
//! | [`WriteMode::Stream`] | one, appended to as frames arrive; a new one every `frames_per_file` | NumCapture (0: until stopped) |
//!
//! Every frame written is also reported as a value reference (Sardana SEP2, [`crate::refs`]):
//! `h5file:///abs/file.h5::/entry/data/data[i]` (frame `i` of the file), or without `[i]` in
//! Single mode, where the dataset is the one frame. [`FileStatus::value_refs`] keeps them all
//! (compactly), and [`CaptureSettings::refs`] also writes them as JSON lines as frames are
//! written (in Capture mode, when the buffer is written).
//!
//! With a [`CaptureSettings::ref_pattern`] (`h5file:///data/scan_{index:04d}.h5`), each frame
//! is a point in its own file, as Sardana's dummy 2D controller stores them: the session runs
//! in Single mode and names files from the pattern instead of the FileTemplate. `{index}` is
//! the FileNumber (the first point uses `naming.number`, and AutoIncrement advances it), so a
//! second acquisition started with the next number continues the series instead of
//! overwriting it (the dummy restarts at 0 on every count).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use detflow_hal::{FrameMeta, FrameShape};

use crate::WriterError;
use crate::codec::Codec;
use crate::images::{ImageLayout, ImageWrite};
use crate::layout;
use crate::naming::{self, FileNaming};
use crate::refs::{RefLog, RefPattern, RefSink, ValueRef};
use crate::roots::DataRoots;
use crate::stream::{FileSummary, StreamSpec, StreamWriter};

/// areaDetector FileWriteMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// One file per frame, no frame dimension.
    Single,
    /// Buffer NumCapture frames in memory, then write them to one file.
    Capture,
    /// Append frames to an open file as they arrive.
    #[default]
    Stream,
}

impl FromStr for WriteMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "single" => Ok(WriteMode::Single),
            "capture" => Ok(WriteMode::Capture),
            "stream" => Ok(WriteMode::Stream),
            _ => Err("expected single, capture or stream".into()),
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteMode::Single => "single",
            WriteMode::Capture => "capture",
            WriteMode::Stream => "stream",
        })
    }
}

/// Everything NDPluginFile and NDFileHDF5 let a user set for one capture.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSettings {
    /// Single, Capture or Stream.
    pub mode: WriteMode,
    /// Frames to capture (NumCapture). Stream: 0 means until stopped. Capture: at least 1.
    /// Single: ignored (every frame is a file).
    pub num_capture: u64,
    /// Stream only: start a new file (next number) every this many frames; 0 never.
    pub frames_per_file: u64,
    /// Stream only: open the file at the first frame instead of at start.
    pub lazy_open: bool,
    /// FilePath (strftime codes allowed), FileName, FileNumber, AutoIncrement, FileTemplate.
    pub naming: FileNaming,
    /// CreateDirectory depth (0: create nothing; see [`naming::create_directories`]).
    pub create_dirs: i32,
    /// Write under name + suffix, rename on close.
    pub temp_suffix: String,
    /// Replace existing files instead of refusing them.
    pub overwrite: bool,
    /// Chunk codec.
    pub codec: Codec,
    /// SWMR mode.
    pub swmr: bool,
    /// NumFramesFlush: flush every this many frames (0: not by count).
    pub flush_every: u64,
    /// Flush at least this often while frames are waiting (`None`: not by time).
    pub flush_interval: Option<std::time::Duration>,
    /// StoreAttr.
    pub store_attributes: bool,
    /// StorePerform.
    pub store_performance: bool,
    /// Also write each frame's value reference to this file, one JSON line per frame
    /// ([`crate::refs::RefRecord`]), as the frames are written.
    pub refs: Option<PathBuf>,
    /// Name files from this reference pattern instead of the FileTemplate: one file (one
    /// frame, Single layout) per point. See the module docs and [`check_ref_pattern`].
    pub ref_pattern: Option<RefPattern>,
    /// Every file and directory the capture creates must resolve inside these, checked as it
    /// is created (a daemon's data roots); anywhere by default.
    pub roots: DataRoots,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            mode: WriteMode::Stream,
            num_capture: 0,
            frames_per_file: 0,
            lazy_open: false,
            naming: FileNaming {
                path: String::new(),
                name: String::new(),
                number: 1,
                auto_increment: true,
                template: Default::default(),
            },
            create_dirs: 0,
            temp_suffix: String::new(),
            overwrite: false,
            codec: Codec::None,
            swmr: false,
            flush_every: 0,
            flush_interval: None,
            store_attributes: true,
            store_performance: true,
            refs: None,
            ref_pattern: None,
            roots: DataRoots::anywhere(),
        }
    }
}

/// Refuse `path` when it resolves outside `roots`; `setting` names what gave it.
fn within(roots: &DataRoots, path: &std::path::Path, setting: &str) -> Result<(), WriterError> {
    roots
        .check(path)
        .map_err(|source| WriterError::OutsideRoots {
            setting: setting.to_owned(),
            source,
        })
}

/// Why detflow cannot write the files `pattern` names, if it cannot: it writes HDF5 files
/// (so `h5file://`), with frames at [`layout::LINK_PATH`] (also reachable as
/// [`layout::IMAGE_PATH`]), one frame per file (so no `[i]`).
pub fn check_ref_pattern(pattern: &RefPattern) -> Result<(), String> {
    match pattern.value_ref(0) {
        ValueRef::File { .. } => Err(
            "detflow writes HDF5 files: use an h5file:// pattern (file:// references are for \
             other formats)"
                .into(),
        ),
        ValueRef::H5 {
            dataset, selection, ..
        } => {
            if let Some(d) = dataset.as_deref() {
                let d = format!("/{}", d.trim_start_matches('/'));
                if d != layout::LINK_PATH && d != layout::IMAGE_PATH {
                    return Err(format!(
                        "detflow stores frames at {} (and {}); leave out '::dataset' or name \
                         one of those",
                        layout::LINK_PATH,
                        layout::IMAGE_PATH
                    ));
                }
            }
            if selection != crate::refs::FrameSelection::All {
                return Err(
                    "each point is its own one-frame file: leave out the [..] selection".into(),
                );
            }
            Ok(())
        }
    }
}

/// The write mode a capture runs in, once the rules that tie it to NumCapture and a
/// reference pattern hold: a pattern names one file per point, so it writes Single files
/// (Capture, which buffers frames for one file, is refused), and Capture mode buffers
/// NumCapture frames, so at least 1. The engine's configuration checks this before a run,
/// and [`CaptureSession::start`] again for captures the daemon's PVs set up.
pub fn checked_write_mode(
    mode: WriteMode,
    num_capture: u64,
    ref_pattern: Option<&RefPattern>,
) -> Result<WriteMode, WriterError> {
    if let Some(pattern) = ref_pattern {
        let refuse = |reason: String| WriterError::Setting {
            setting: "ref-pattern",
            value: pattern.to_string(),
            reason,
        };
        check_ref_pattern(pattern).map_err(refuse)?;
        if mode == WriteMode::Capture {
            return Err(refuse(
                "a pattern writes one file per point; write-mode capture buffers frames for \
                 one file"
                    .into(),
            ));
        }
        return Ok(WriteMode::Single);
    }
    if mode == WriteMode::Capture && num_capture == 0 {
        return Err(WriterError::Setting {
            setting: "capture",
            value: "0".into(),
            reason: "Capture mode buffers NumCapture frames in memory: give at least 1".into(),
        });
    }
    Ok(mode)
}

/// The frames a capture receives, known before the first one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameGeometry {
    /// Shape and pixel type.
    pub shape: FrameShape,
    /// ROI offset, X first.
    pub dim_offset: [i32; 2],
    /// Binning, X first.
    pub dim_binning: [i32; 2],
}

/// The NDFile readbacks of a capture.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileStatus {
    /// FilePath after strftime expansion and normalisation (ends with `/`).
    pub file_path: String,
    /// FilePathExists_RBV.
    pub file_path_exists: bool,
    /// FullFileName_RBV: the file being written, or the last one built.
    pub full_file_name: PathBuf,
    /// FileNumber_RBV: the number the next file will use.
    pub file_number: i32,
    /// NumCaptured_RBV: frames captured (written, or buffered in Capture mode).
    pub num_captured: u64,
    /// True while frames are accepted.
    pub capturing: bool,
    /// WriteStatus: false after an error.
    pub write_ok: bool,
    /// WriteMessage.
    pub write_message: String,
    /// Every file closed so far.
    pub files: Vec<FileSummary>,
    /// Files deleted (or moved away) while they were written: their frames are lost.
    pub lost: Vec<PathBuf>,
    /// The value reference of every frame written, in order (see [`RefLog`]).
    pub value_refs: RefLog,
}

/// What [`CaptureSession::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written or buffered; the capture goes on.
    Accepted,
    /// Written or buffered, and NumCapture is reached: the capture is complete and its
    /// files are closed. Further frames are refused.
    Complete,
}

/// One running capture.
#[derive(Debug)]
pub struct CaptureSession {
    settings: CaptureSettings,
    geometry: FrameGeometry,
    status: FileStatus,
    open: Option<StreamWriter>,
    /// Frames in the open file.
    in_file: u64,
    /// Capture mode: the encoded frames, in order.
    buffer: Vec<(FrameMeta, Vec<u8>)>,
    finished: bool,
    /// The `refs` JSON lines file.
    ref_sink: Option<RefSink>,
    /// Images placed by number ([`CaptureSession::start_images`]).
    image_layout: Option<ImageLayout>,
}

impl CaptureSession {
    /// Start a capture: expand and create the directory, check it, and (Stream without
    /// LazyOpen) open the first file. Refused settings leave nothing behind.
    pub fn start(settings: CaptureSettings, geometry: FrameGeometry) -> Result<Self, WriterError> {
        Self::start_with(settings, geometry, None)
    }

    /// Start a capture of one detector series whose images are placed by number
    /// ([`push_image`](Self::push_image)) in files with `image_layout`. Stream mode only, one
    /// file for the series (`frames_per_file` 0, no reference pattern); `num_capture` is the
    /// series' number of images (0: until stopped). Otherwise as [`start`](Self::start).
    ///
    /// A rank's share of a series ([`DetectorMetadata::rank`](crate::DetectorMetadata::rank))
    /// is named with the rank after the file name, odin-data's way: FileName `scan` becomes
    /// `scan_r2`, so rank 2 writes `scan_r2_0001.h5` with the default FileTemplate.
    pub fn start_images(
        mut settings: CaptureSettings,
        geometry: FrameGeometry,
        image_layout: ImageLayout,
    ) -> Result<Self, WriterError> {
        let refuse = |setting: &'static str, value: String| {
            Err(WriterError::Setting {
                setting,
                value,
                reason: "a detector series is written in Stream mode, one file per series".into(),
            })
        };
        if settings.mode != WriteMode::Stream {
            return refuse("mode", settings.mode.to_string());
        }
        if settings.frames_per_file != 0 {
            return refuse("frames_per_file", settings.frames_per_file.to_string());
        }
        if let Some(p) = &settings.ref_pattern {
            return refuse("ref-pattern", p.to_string());
        }
        image_layout.check()?;
        if let Some(m) = &image_layout.metadata {
            m.check()?;
            if let Some(share) = m.rank {
                settings.naming.name = format!("{}_r{}", settings.naming.name, share.rank);
            }
        }
        Self::start_with(settings, geometry, Some(image_layout))
    }

    fn start_with(
        settings: CaptureSettings,
        geometry: FrameGeometry,
        image_layout: Option<ImageLayout>,
    ) -> Result<Self, WriterError> {
        let mut settings = settings;
        settings.mode = checked_write_mode(
            settings.mode,
            settings.num_capture,
            settings.ref_pattern.as_ref(),
        )?;
        let mut naming = settings.naming.clone();
        naming.path = naming::expand_path_time(&naming.path, std::time::SystemTime::now())
            .map_err(|e| WriterError::Setting {
                setting: "path",
                value: e.path,
                reason: e.reason,
            })?;
        if settings.create_dirs != 0 && !naming::path_exists(&naming.path) {
            naming::create_directories(&naming.path, settings.create_dirs, &settings.roots)
                .map_err(|e| WriterError::BadDirectory {
                    setting: "path".into(),
                    path: naming.path.clone().into(),
                    reason: format!(
                        "could not create it with create-dirs {}: {e}",
                        settings.create_dirs
                    ),
                })?;
        }
        match &settings.ref_pattern {
            Some(pattern) => {
                let first = pattern.value_ref(naming.number.max(0) as u64);
                let dir = first.path().parent().unwrap_or(std::path::Path::new("/"));
                if settings.create_dirs != 0 && !dir.exists() {
                    naming::create_directories(
                        &dir.to_string_lossy(),
                        settings.create_dirs,
                        &settings.roots,
                    )
                    .map_err(|e| WriterError::BadDirectory {
                        setting: "ref-pattern".into(),
                        path: dir.to_path_buf(),
                        reason: format!(
                            "could not create it with create-dirs {}: {e}",
                            settings.create_dirs
                        ),
                    })?;
                }
                within(&settings.roots, dir, "ref-pattern")?;
                crate::stream::check_directory(dir, "ref-pattern")?;
                crate::lock::remove_stale_reserves(dir);
            }
            None => {
                within(&settings.roots, naming.directory(), "path")?;
                crate::stream::check_directory(naming.directory(), "path")?;
                // Space reserves left by killed runs (no live writer holds them) go now.
                crate::lock::remove_stale_reserves(naming.directory());
            }
        }
        let status = FileStatus {
            file_path: naming::normalise_path(&naming.path),
            file_path_exists: naming::path_exists(&naming.path),
            full_file_name: PathBuf::new(),
            file_number: naming.number,
            num_captured: 0,
            capturing: true,
            write_ok: true,
            write_message: if settings.lazy_open {
                "Lazy Open...".into()
            } else {
                String::new()
            },
            files: Vec::new(),
            lost: Vec::new(),
            value_refs: RefLog::new(
                geometry.shape.pixel_type,
                [
                    u64::from(geometry.shape.height),
                    u64::from(geometry.shape.width),
                ],
            ),
        };
        let ref_sink = match &settings.refs {
            Some(path) => Some(within(&settings.roots, path, "refs").and_then(|()| {
                RefSink::create(path).map_err(|e| WriterError::BadDirectory {
                    setting: "refs".into(),
                    path: path.clone(),
                    reason: format!("cannot create the references file: {e}"),
                })
            })?),
            None => None,
        };
        let mut session = CaptureSession {
            settings: CaptureSettings { naming, ..settings },
            geometry,
            status,
            open: None,
            in_file: 0,
            buffer: Vec::new(),
            finished: false,
            ref_sink,
            image_layout,
        };
        if session.settings.mode == WriteMode::Stream && !session.settings.lazy_open {
            if let Err(e) = session.open_next() {
                // Refused settings leave nothing behind.
                if let Some(sink) = session.ref_sink.take() {
                    let _ = std::fs::remove_file(sink.path());
                }
                return Err(e);
            }
        }
        Ok(session)
    }

    /// The readbacks.
    pub fn status(&self) -> &FileStatus {
        &self.status
    }

    /// The settings, with FilePath expanded and FileNumber advanced as files were named.
    pub fn settings(&self) -> &CaptureSettings {
        &self.settings
    }

    fn fail(&mut self, e: WriterError) -> WriterError {
        self.status.write_ok = false;
        self.status.write_message = e.to_string();
        self.status.capturing = false;
        self.finished = true;
        // Close what is open so that every frame written stays readable, and list it: it
        // holds frames even when closing reported an error too.
        if let Some(w) = self.open.take() {
            let (summary, closed) = w.close_reporting();
            let lost = matches!(e, WriterError::Vanished { .. });
            match closed {
                Err(close_error @ WriterError::Vanished { .. }) => {
                    if !lost {
                        self.status.write_message = format!("{e}; then {close_error}");
                    }
                    self.status.lost.push(summary.path);
                }
                Err(close_error) => {
                    self.status.write_message = format!("{e}; then {close_error}");
                    self.status.files.push(summary);
                }
                Ok(()) if lost => self.status.lost.push(summary.path),
                Ok(()) => self.status.files.push(summary),
            }
        }
        e
    }

    fn spec(&self, path: PathBuf, num_capture: u64, frame_dimension: bool) -> StreamSpec {
        let s = &self.settings;
        StreamSpec {
            roots: s.roots.clone(),
            num_capture,
            frame_dimension,
            dim_offset: self.geometry.dim_offset,
            dim_binning: self.geometry.dim_binning,
            store_attributes: s.store_attributes,
            store_performance: s.store_performance,
            swmr: s.swmr,
            flush_every: s.flush_every,
            flush_interval: s.flush_interval,
            temp_suffix: s.temp_suffix.clone(),
            overwrite: s.overwrite,
            image_layout: self.image_layout.clone(),
            ..StreamSpec::new(path, self.geometry.shape, s.codec)
        }
    }

    /// Frames the next file will hold at most (its NumCapture).
    fn next_file_capacity(&self) -> u64 {
        let s = &self.settings;
        let left = if s.num_capture > 0 {
            s.num_capture - self.status.num_captured
        } else {
            0
        };
        match (s.frames_per_file, left) {
            (0, left) => left,
            (per, 0) => per,
            (per, left) => per.min(left),
        }
    }

    fn build_name(&mut self) -> PathBuf {
        let built = match &self.settings.ref_pattern {
            Some(pattern) => {
                let naming = &mut self.settings.naming;
                let built = pattern
                    .value_ref(naming.number.max(0) as u64)
                    .path()
                    .to_path_buf();
                if naming.auto_increment {
                    naming.number = naming.number.wrapping_add(1);
                }
                built
            }
            None => self.settings.naming.next_name(),
        };
        let name = std::path::absolute(&built).unwrap_or(built);
        self.status.full_file_name = name.clone();
        self.status.file_number = self.settings.naming.number;
        name
    }

    fn open_next(&mut self) -> Result<(), WriterError> {
        let name = self.build_name();
        let spec = self.spec(name, self.next_file_capacity(), true);
        match StreamWriter::create(spec) {
            Ok(w) => {
                self.open = Some(w);
                self.in_file = 0;
                self.status.write_message.clear();
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn close_open(&mut self) -> Result<(), WriterError> {
        if let Some(w) = self.open.take() {
            let (summary, closed) = w.close_reporting();
            match closed {
                Ok(()) => self.status.files.push(summary),
                Err(e) => {
                    if matches!(e, WriterError::Vanished { .. }) {
                        self.status.lost.push(summary.path);
                    } else {
                        self.status.files.push(summary);
                    }
                    return Err(self.fail(e));
                }
            }
        }
        Ok(())
    }

    /// The dataset the references name: the pattern's, or the NeXus link to the frames.
    fn ref_dataset(&self) -> String {
        self.settings
            .ref_pattern
            .as_ref()
            .and_then(|p| p.value_ref(0).dataset().map(str::to_owned))
            .unwrap_or_else(|| layout::LINK_PATH.to_owned())
    }

    /// Report frames `indices` of `path` (`None`: the file's one frame, no frame axis).
    fn report(
        &mut self,
        path: &std::path::Path,
        indices: impl Iterator<Item = Option<u64>>,
    ) -> Result<(), WriterError> {
        let dataset = self.ref_dataset();
        for index in indices {
            let record = self.status.value_refs.push(path, &dataset, index);
            if let Some(sink) = self.ref_sink.as_mut()
                && let Err(e) = sink.write(&record)
            {
                let e = WriterError::BadDirectory {
                    setting: "refs".into(),
                    path: sink.path().to_path_buf(),
                    reason: format!("cannot write a reference: {e}"),
                };
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Take one encoded frame. Errors stop the capture (the files written so far are closed
    /// and readable) and are also kept in [`FileStatus::write_message`].
    pub fn push(&mut self, meta: &FrameMeta, chunk: &[u8]) -> Result<Pushed, WriterError> {
        if self.finished {
            return Err(WriterError::Closed);
        }
        if meta.shape != self.geometry.shape {
            // areaDetector: "Invalid frame. Ignoring." The capture goes on.
            self.status.write_ok = false;
            self.status.write_message = "Invalid frame. Ignoring.".into();
            return Err(WriterError::FrameMismatch {
                expected: self.geometry.shape,
                got: meta.shape,
            });
        }
        match self.settings.mode {
            WriteMode::Single => {
                let name = self.build_name();
                let spec = self.spec(name, 1, false);
                let written = StreamWriter::create(spec).and_then(|mut w| {
                    w.write_frame(meta, chunk)?;
                    w.close()
                });
                let path = match written {
                    Ok(summary) => {
                        let path = summary.path.clone();
                        self.status.files.push(summary);
                        path
                    }
                    Err(e) => return Err(self.fail(e)),
                };
                self.status.num_captured += 1;
                self.report(&path, std::iter::once(None))?;
            }
            WriteMode::Capture => {
                self.buffer.push((*meta, chunk.to_vec()));
                self.status.num_captured += 1;
                if self.status.num_captured >= self.settings.num_capture {
                    self.write_buffer()?;
                    self.finished = true;
                    self.status.capturing = false;
                    return Ok(Pushed::Complete);
                }
            }
            WriteMode::Stream => {
                if self.open.is_none() {
                    self.open_next()?;
                }
                let w = self.open.as_mut().expect("a file is open");
                if let Err(e) = w.write_frame(meta, chunk) {
                    return Err(self.fail(e));
                }
                self.in_file += 1;
                self.status.num_captured += 1;
                let path = w.path().to_path_buf();
                self.report(&path, std::iter::once(Some(self.in_file - 1)))?;
                let s = &self.settings;
                if s.num_capture > 0 && self.status.num_captured >= s.num_capture {
                    self.close_open()?;
                    self.finished = true;
                    self.status.capturing = false;
                    return Ok(Pushed::Complete);
                }
                if s.frames_per_file > 0 && self.in_file >= s.frames_per_file {
                    self.close_open()?;
                    // The next file opens with the next frame, so a capture that ends right
                    // here leaves no empty file behind.
                }
            }
        }
        Ok(Pushed::Accepted)
    }

    /// Take one image of the series, encoded, placed by its number
    /// ([`StreamWriter::write_image`]); for a session made with
    /// [`start_images`](Self::start_images). An image the file refuses (a repeated number, one
    /// past `num_capture`, a wrong channel count or shape, a raw chunk of the wrong size) is
    /// refused here too, with the capture going
    /// on; other errors stop it as [`push`](Self::push) does. The capture is complete when
    /// `num_capture` images are written.
    pub fn push_image(
        &mut self,
        meta: &FrameMeta,
        image: &ImageWrite<'_>,
    ) -> Result<Pushed, WriterError> {
        if self.finished {
            return Err(WriterError::Closed);
        }
        if self.image_layout.is_none() {
            return Err(WriterError::Setting {
                setting: "image_layout",
                value: "none".into(),
                reason: format!(
                    "image {}: the capture was started without an image layout",
                    image.number
                ),
            });
        }
        if self.open.is_none() {
            self.open_next()?;
        }
        let w = self.open.as_mut().expect("a file is open");
        match w.write_image(meta, image) {
            Ok(()) => {}
            Err(
                e @ (WriterError::Image { .. }
                | WriterError::FrameMismatch { .. }
                | WriterError::ChunkSize { .. }),
            ) => {
                self.status.write_message = e.to_string();
                return Err(e);
            }
            Err(e) => return Err(self.fail(e)),
        }
        self.in_file += 1;
        self.status.num_captured += 1;
        let path = w.path().to_path_buf();
        self.report(&path, std::iter::once(Some(image.number)))?;
        let n = self.settings.num_capture;
        if n > 0 && self.status.num_captured >= n {
            self.close_open()?;
            self.finished = true;
            self.status.capturing = false;
            return Ok(Pushed::Complete);
        }
        Ok(Pushed::Accepted)
    }

    /// Image positions never written (gaps) in the files of this capture, the open one
    /// included.
    pub fn missing_images(&self) -> u64 {
        let closed: u64 = self.status.files.iter().map(|f| f.missing_images).sum();
        closed + self.open.as_ref().map_or(0, StreamWriter::missing_images)
    }

    fn write_buffer(&mut self) -> Result<(), WriterError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let name = self.build_name();
        let spec = self.spec(name, self.buffer.len() as u64, true);
        let buffer = std::mem::take(&mut self.buffer);
        let written = StreamWriter::create(spec).and_then(|mut w| {
            for (meta, chunk) in &buffer {
                w.write_frame(meta, chunk)?;
            }
            w.close()
        });
        match written {
            Ok(summary) => {
                let (path, frames) = (summary.path.clone(), summary.frames);
                self.status.files.push(summary);
                self.report(&path, (0..frames).map(Some))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Make every frame written so far visible to readers now (areaDetector FlushNow).
    /// A failure (the file deleted meanwhile, an HDF5 error) ends the capture as a write
    /// error would: the file is closed and the error kept in the readbacks.
    pub fn flush(&mut self) -> Result<(), WriterError> {
        if let Some(sink) = self.ref_sink.as_mut() {
            let _ = sink.flush();
        }
        match self.open.as_mut().map(StreamWriter::flush) {
            Some(Err(e)) => Err(self.fail(e)),
            _ => Ok(()),
        }
    }

    /// Flush the open file if its flush interval has passed with frames waiting; for the
    /// writer thread to call while no frame arrives. Fails as [`flush`](Self::flush) does.
    pub fn flush_if_due(&mut self) -> Result<(), WriterError> {
        match self.open.as_mut().map(StreamWriter::flush_if_due) {
            Some(Err(e)) => Err(self.fail(e)),
            _ => Ok(()),
        }
    }

    /// True once the capture ended by itself (complete, or a write error): frames are
    /// refused and [`finish`](Self::finish) only reports.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// End the capture: close the open file, or write the frames buffered in Capture mode
    /// (areaDetector keeps them until WriteFile; here stopping writes them). Returns the
    /// final status, and the error if closing or writing failed.
    pub fn finish(mut self) -> (FileStatus, Result<(), WriterError>) {
        let result = if self.finished {
            Ok(())
        } else {
            match self.settings.mode {
                WriteMode::Capture => self.write_buffer(),
                WriteMode::Stream => self.close_open(),
                WriteMode::Single => Ok(()),
            }
        };
        self.finished = true;
        self.status.capturing = false;
        let result = match (result, self.ref_sink.take().map(|mut s| (s.flush(), s))) {
            (Ok(()), Some((Err(e), sink))) => Err(WriterError::BadDirectory {
                setting: "refs".into(),
                path: sink.path().to_path_buf(),
                reason: format!("cannot write the references: {e}"),
            }),
            (result, _) => result,
        };
        (std::mem::take(&mut self.status), result)
    }
}
