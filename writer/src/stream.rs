//! One HDF5 file in NDFileHDF5's default NeXus layout, one chunk per frame.
//!
//! [`StreamWriter::create`] builds the whole tree (see [`crate::layout`]) before the first
//! frame, then starts SWMR if asked; nothing structural is added afterwards.
//! [`StreamWriter::write_frame`] grows the image dataset by one frame and writes the encoded
//! chunk with direct chunk write; with an image layout, [`StreamWriter::write_image`] writes
//! one chunk per channel at the image's number instead, whatever the arrival order. Per-frame rows (the performance table, then the
//! NDAttributes with `NDArrayUniqueId` last) are written in batches of at most
//! [`ATTRIBUTE_BATCH`] frames, at each flush and at close, so memory does not grow with the
//! run, a SWMR reader that sees an id can trust that frame, and a killed writer leaves
//! every per-frame dataset as long as the frames it flushed.
//! [`StreamWriter::close`] writes what is pending, closes the file and renames it from its
//! temporary name. Dropping a writer without `close` still does all of that.
//!
//! The file is locked against other writers from before it is created until it is renamed
//! ([`crate::lock`]), and at each flush and at close the writer checks that the file it
//! writes is still there: a deleted file is a write error, not a silent success.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use detflow_hal::{FrameMeta, FrameShape, PixelType};
use hdf5::{Dataset, Datatype, File};

use crate::WriterError;
use crate::codec::Codec;
use crate::images::{self, ImageLayout, ImageRefusal, ImageWrite, Placement};
use crate::layout;
use crate::lock::{SpaceReserve, TargetLock};
use crate::roots::DataRoots;
use crate::rows::{AttributeSets, ImageFieldSets, ImageRow, PerFrame};
use crate::sink::{self, ChunkedSpec};
use crate::space::FreeSpace;

/// Per-frame rows (NDAttributes, performance) are written to the file at least this often:
/// at most this many frames' rows are held in memory.
pub const ATTRIBUTE_BATCH: usize = 1024;

/// Space held back beside each open file, released before it is closed, so that HDF5 can
/// write the file's metadata even when the disk filled up during the acquisition.
fn reserve_bytes(spec: &StreamSpec) -> u64 {
    let frames = if spec.num_capture > 0 {
        spec.num_capture
    } else {
        1 << 17
    };
    // Chunk index entries, batched attributes and the performance table, with room to spare.
    (4 << 20) + frames.min(1 << 20) * 96
}

/// What one file holds and how it is written, fixed when it is created.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Full path of the file (the name without any temporary suffix).
    pub path: PathBuf,
    /// Shape and pixel type of every frame.
    pub shape: FrameShape,
    /// How chunks are encoded before they reach [`StreamWriter::write_frame`].
    pub codec: Codec,
    /// Expected number of frames (NumCapture): the maximum extent of the frame dimension.
    /// `0` means unlimited.
    pub num_capture: u64,
    /// False for areaDetector's Single mode: one frame, a dataset of shape (H, W) with no
    /// frame dimension.
    pub frame_dimension: bool,
    /// ROI offset of the frames on the sensor, X first (`NDArrayDimOffset`).
    pub dim_offset: [i32; 2],
    /// Binning, X first (`NDArrayDimBinning`).
    pub dim_binning: [i32; 2],
    /// Write the NDAttribute datasets (areaDetector StoreAttr).
    pub store_attributes: bool,
    /// Write `performance/timestamp` (areaDetector StorePerform).
    pub store_performance: bool,
    /// Single-writer/multiple-reader mode: readers (`h5py.File(..., swmr=True)`) see frames
    /// as they are flushed.
    pub swmr: bool,
    /// Flush every this many frames (areaDetector NumFramesFlush); 0: by frame count never.
    pub flush_every: u64,
    /// Also flush when this much time has passed since the last flush (checked at each
    /// frame and by [`StreamWriter::flush_if_due`]); `None`: by time never.
    pub flush_interval: Option<std::time::Duration>,
    /// Create the file as `path` + this suffix and rename it on close (areaDetector
    /// TempSuffix); empty for none.
    pub temp_suffix: String,
    /// Replace an existing file. When false an existing file is refused (areaDetector
    /// overwrites silently).
    pub overwrite: bool,
    /// Keep the file in memory only (HDF5's core driver without a backing store): every
    /// HDF5 call is made, nothing reaches a disk. A null sink for benchmarks and tests.
    pub in_memory: bool,
    /// The file, its temporary name and its space reserve must resolve inside these when
    /// they are created (a daemon's data roots); anywhere by default.
    pub roots: DataRoots,
    /// Images placed by number, in one or more channels, with per-image fields and series
    /// metadata ([`StreamWriter::write_image`], layout in [`crate::layout`]); `None`: frames
    /// appended one after another as areaDetector writes them.
    pub image_layout: Option<ImageLayout>,
}

impl StreamSpec {
    /// A spec with areaDetector's defaults: Stream layout, attributes and performance stored,
    /// no SWMR, no temporary suffix, existing files refused.
    pub fn new(path: impl Into<PathBuf>, shape: FrameShape, codec: Codec) -> Self {
        StreamSpec {
            path: path.into(),
            shape,
            codec,
            num_capture: 0,
            frame_dimension: true,
            dim_offset: [0, 0],
            dim_binning: [1, 1],
            store_attributes: true,
            store_performance: true,
            swmr: false,
            flush_every: 0,
            flush_interval: None,
            temp_suffix: String::new(),
            overwrite: false,
            in_memory: false,
            roots: DataRoots::anywhere(),
            image_layout: None,
        }
    }

    /// The name the file has while it is written.
    pub fn open_path(&self) -> PathBuf {
        if self.temp_suffix.is_empty() {
            self.path.clone()
        } else {
            let mut s = self.path.clone().into_os_string();
            s.push(&self.temp_suffix);
            PathBuf::from(s)
        }
    }
}

/// What a closed file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSummary {
    /// The file (its final name).
    pub path: PathBuf,
    /// Frames (images) written.
    pub frames: u64,
    /// Bytes of encoded chunks written, every channel's (equal to raw bytes for
    /// [`Codec::None`]).
    pub chunk_bytes: u64,
    /// Uncompressed bytes of those frames, every channel's.
    pub raw_bytes: u64,
    /// Positions below the image datasets' extent that hold no image (an image layout's
    /// gaps; 0 otherwise).
    pub missing_images: u64,
}

/// The HDF5 handles of an open file; closed together.
struct Handles {
    file: File,
    image: Dataset,
    /// The image layout's channels after the first (which is `image`), in order.
    channels: Vec<Dataset>,
    per_frame: PerFrame,
}

/// What [`StreamWriter::build_layout`] creates.
struct Built {
    image: Dataset,
    channels: Vec<Dataset>,
    attrs: Option<AttributeSets>,
    performance: Option<Dataset>,
    fields: Option<ImageFieldSets>,
    present: Option<Dataset>,
}

/// An open HDF5 file being written frame by frame.
pub struct StreamWriter {
    open: Option<Handles>,
    /// The space reserve file, while it exists.
    reserve: Option<SpaceReserve>,
    /// Held from before the file was created until it is closed and renamed (`None` for an
    /// in-memory file).
    lock: Option<TargetLock>,
    /// A write failed: the file is closed with what it has, without further additions.
    failed: bool,
    /// What the disk can still take, checked before each frame.
    space: FreeSpace,
    spec: StreamSpec,
    frames: u64,
    chunk_bytes: u64,
    last_done: Instant,
    /// When frames were last made visible to readers.
    last_flush: Instant,
    /// Frames written since the last flush.
    unflushed: u64,
    first_frame: Option<Instant>,
    /// Which image numbers are written, with an image layout.
    placement: Option<Placement>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("path", &self.spec.path)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Refuse a directory that does not exist, is not a directory, or cannot take new files,
/// before any file is created. `setting` names the option in the message (`"path"`).
pub fn check_directory(dir: &Path, setting: &str) -> Result<(), WriterError> {
    let bad = |reason: String| WriterError::BadDirectory {
        setting: setting.to_owned(),
        path: dir.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("contains a NUL byte".into()))?;
    // SAFETY: c is a valid NUL-terminated path; access() only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    // access() says yes to root everywhere, and knows nothing of file systems that refuse
    // new files (procfs, a read-only bind mount): create and remove a probe to be sure.
    // The name must be unique across processes that share the directory but not a PID
    // namespace (two daemons in containers are both pid 2): pid, a counter and the clock,
    // and another name when one is taken.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = None;
    for _ in 0..8 {
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let probe = dir.join(format!(".detflow-probe-{}-{n}-{nanos}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(bad(format!("cannot create files here: {e}"))),
        }
    }
    Err(bad(format!(
        "cannot create files here: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

pub(crate) fn datatype(p: PixelType) -> hdf5::Result<Datatype> {
    match p {
        PixelType::U8 => Datatype::from_type::<u8>(),
        PixelType::I8 => Datatype::from_type::<i8>(),
        PixelType::U16 => Datatype::from_type::<u16>(),
        PixelType::I16 => Datatype::from_type::<i16>(),
        PixelType::U32 => Datatype::from_type::<u32>(),
        PixelType::I32 => Datatype::from_type::<i32>(),
        PixelType::F32 => Datatype::from_type::<f32>(),
        PixelType::F64 => Datatype::from_type::<f64>(),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl StreamWriter {
    /// Create the file and its whole layout. Nothing is left behind when this fails.
    pub fn create(spec: StreamSpec) -> Result<Self, WriterError> {
        let FrameShape { width, height, .. } = spec.shape;
        if width == 0 || height == 0 {
            return Err(WriterError::BadShape { width, height });
        }
        if let Some(l) = &spec.image_layout {
            if !spec.frame_dimension {
                return Err(WriterError::Setting {
                    setting: "frame_dimension",
                    value: "false".into(),
                    reason: "an image layout places images along the frame dimension".into(),
                });
            }
            l.check()?;
            if let Some(m) = &l.metadata {
                m.check()?;
            }
        }
        let dir = spec
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let open_path = spec.open_path();
        let reserve_name = reserve_path(&open_path);
        if !spec.in_memory {
            // Checked now, just before anything is created (the directory's write probe
            // too), so that a link swapped in after the settings were accepted cannot
            // redirect the file.
            for p in [&spec.path, &open_path, &reserve_name] {
                spec.roots
                    .check(p)
                    .map_err(|source| WriterError::OutsideRoots {
                        setting: "file".into(),
                        source,
                    })?;
            }
        }
        check_directory(dir, "path")?;
        if !spec.overwrite && spec.path.exists() {
            return Err(WriterError::Exists {
                path: spec.path.clone(),
            });
        }
        // Lock the file before anything can truncate it: a file another writer holds is
        // refused here, untouched.
        let lock = if spec.in_memory {
            None
        } else {
            Some(TargetLock::acquire(&open_path, spec.overwrite)?)
        };
        let created = lock.as_ref().is_some_and(|l| l.created);
        let forget = |lock: Option<TargetLock>| {
            if created {
                let _ = std::fs::remove_file(&open_path);
            }
            drop(lock);
        };
        let reserve = if spec.in_memory {
            None
        } else {
            match SpaceReserve::create(&reserve_name, reserve_bytes(&spec)) {
                Ok(r) => Some(r),
                Err(e) => {
                    forget(lock);
                    return Err(WriterError::BadDirectory {
                        setting: "path".into(),
                        path: dir.to_path_buf(),
                        reason: format!(
                            "cannot reserve {} bytes to close files safely: {e}",
                            reserve_bytes(&spec)
                        ),
                    });
                }
            }
        };
        let ctx = |what: &'static str| {
            let path = open_path.clone();
            move |source: hdf5::Error| WriterError::Hdf5 { path, what, source }
        };
        let mut builder = File::with_options();
        // Memory must not grow with the frames written: a fixed-size metadata cache (the
        // chunk index, object headers; HDF5's adaptive cache grows to 32 MiB), and small
        // raw-chunk caches that favour evicting chunks already full (the per-frame
        // datasets only append).
        builder.with_fapl(|p| {
            p.mdc_config(&bounded_metadata_cache())
                .chunk_cache(101, CHUNK_CACHE_BYTES, 1.0)
        });
        if spec.in_memory {
            builder.with_fapl(|p| p.core_options(64 << 20, false));
        }
        if spec.swmr {
            // SWMR needs the 1.10 file format; stay on it so HDF5 1.10+ readers open the file.
            use hdf5::file::LibraryVersion;
            builder.with_fapl(|p| p.libver_bounds(LibraryVersion::V110, LibraryVersion::V110));
        }
        // The lock made (or holds) the file: HDF5 truncates what is now ours alone.
        let file = match create_past_readers(&builder, &open_path) {
            Ok(file) => file,
            Err(e) => {
                if let Some(r) = reserve {
                    r.release();
                }
                forget(lock);
                return Err(ctx("create the file")(e));
            }
        };
        let _ = sink::set_cloexec(&file);
        let built = Self::build_layout(&file, &spec)
            .and_then(|parts| {
                if spec.swmr {
                    file.start_swmr()?;
                }
                Ok(parts)
            })
            .map_err(ctx("build the NeXus layout"));
        let built = match built {
            Ok(parts) => parts,
            Err(e) => {
                drop(file);
                if let Some(r) = reserve {
                    r.release();
                }
                let _ = std::fs::remove_file(&open_path);
                drop(lock);
                return Err(e);
            }
        };
        let spec_has_layout = spec.image_layout.is_some();
        Ok(StreamWriter {
            open: Some(Handles {
                file,
                image: built.image,
                channels: built.channels,
                per_frame: PerFrame::new(
                    built.attrs,
                    built.performance,
                    built.fields,
                    built.present,
                ),
            }),
            reserve,
            lock,
            failed: false,
            space: FreeSpace::new(
                spec.path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            ),
            spec,
            frames: 0,
            chunk_bytes: 0,
            last_done: Instant::now(),
            last_flush: Instant::now(),
            unflushed: 0,
            first_frame: None,
            placement: spec_has_layout.then(Placement::default),
        })
    }

    fn build_layout(file: &File, spec: &StreamSpec) -> hdf5::Result<Built> {
        let attr_chunk = match (spec.frame_dimension, spec.num_capture) {
            (false, _) => 1,
            (true, 0) => 16384,
            (true, n) => n.min(16384) as usize,
        };

        // NeXus readers follow @default from the root to the NXdata group, then its @signal.
        sink::write_string_attr(file, "default", layout::ENTRY)?;
        let entry = file.create_group(layout::ENTRY)?;
        sink::write_string_attr(&entry, "NX_class", "NXentry")?;
        sink::write_string_attr(&entry, "default", layout::NXDATA)?;
        let instrument = entry.create_group(layout::INSTRUMENT)?;
        sink::write_string_attr(&instrument, "NX_class", "NXinstrument")?;
        let detector = instrument.create_group(layout::DETECTOR)?;
        sink::write_string_attr(&detector, "NX_class", "NXdetector")?;

        let image = Self::create_image(&detector, spec, layout::DATA)?;
        image.new_attr::<i32>().create("signal")?.write_scalar(&1)?;
        image
            .new_attr::<i32>()
            .create("NDArrayNumDims")?
            .write_scalar(&2)?;
        for (name, value) in [
            ("NDArrayDimOffset", spec.dim_offset),
            ("NDArrayDimBinning", spec.dim_binning),
            ("NDArrayDimReverse", [0, 0]),
        ] {
            image
                .new_attr::<i32>()
                .shape(2)
                .create(name)?
                .write(&value)?;
        }
        let attrs = if spec.store_attributes {
            Some(Self::create_attributes(
                &instrument,
                &detector,
                spec,
                attr_chunk,
            )?)
        } else {
            None
        };
        let performance = if spec.store_performance {
            let group = instrument.create_group(layout::PERFORMANCE)?;
            // Created now (SWMR forbids new objects later), filled in batches.
            Some(
                group
                    .new_dataset::<f64>()
                    .chunk([attr_chunk, 5])
                    .shape(hdf5::SimpleExtents::resizable([0, 5]))
                    .create(layout::TIMESTAMP)?,
            )
        } else {
            None
        };

        let data = entry.create_group(layout::NXDATA)?;
        sink::write_string_attr(&data, "NX_class", "NXdata")?;
        sink::write_string_attr(&data, "signal", layout::DATA)?;
        data.link_hard(layout::IMAGE_PATH, layout::DATA)?;
        let mut built = Built {
            image,
            channels: Vec::new(),
            attrs,
            performance,
            fields: None,
            present: None,
        };
        if let Some(l) = &spec.image_layout {
            built.channels = images::create_channels(&detector, &data, l, |name| {
                Self::create_image(&detector, spec, name)
            })?;
            let sized = presized(spec) as usize;
            built.present = Some(images::create_presence(&data, attr_chunk, sized)?);
            let specific = detector.create_group(layout::DETECTOR_SPECIFIC)?;
            sink::write_string_attr(&specific, "NX_class", "NXcollection")?;
            if l.image_fields {
                built.fields = Some(images::create_fields(&specific, attr_chunk, sized)?);
            }
            if let Some(m) = &l.metadata {
                crate::nxmx::write(&entry, &detector, &specific, spec, l, m)?;
            }
        }
        Ok(built)
    }

    /// An image dataset `name` under `detector`: one chunk per frame, the codec's filter,
    /// and with an image layout the "no data" fill value for gaps.
    fn create_image(
        detector: &hdf5::Group,
        spec: &StreamSpec,
        name: &str,
    ) -> hdf5::Result<Dataset> {
        let (w, h) = (spec.shape.width as usize, spec.shape.height as usize);
        let max_frames = (spec.num_capture > 0).then_some(spec.num_capture as usize);
        let filter = spec.codec.filter(spec.shape.pixel_type, spec.shape.bytes());
        let (shape, max_shape, chunk): (Vec<usize>, Vec<Option<usize>>, Vec<usize>) =
            if spec.frame_dimension {
                (
                    vec![presized(spec) as usize, h, w],
                    vec![max_frames, Some(h), Some(w)],
                    vec![1, h, w],
                )
            } else {
                (vec![h, w], vec![Some(h), Some(w)], vec![h, w])
            };
        sink::create_chunked(
            detector,
            name,
            &ChunkedSpec {
                dtype: datatype(spec.shape.pixel_type)?,
                shape: &shape,
                max_shape: &max_shape,
                chunk: &chunk,
                filter: filter.as_ref().map(|f| (f.id, f.cd_values.as_slice())),
                fill: spec
                    .image_layout
                    .as_ref()
                    .map(|_| images::no_data(spec.shape.pixel_type)),
            },
        )
    }

    /// The NDAttribute datasets: `ColorMode` once, the four NDArray* per frame.
    fn create_attributes(
        instrument: &hdf5::Group,
        detector: &hdf5::Group,
        spec: &StreamSpec,
        attr_chunk: usize,
    ) -> hdf5::Result<AttributeSets> {
        let det_attrs = detector.create_group(layout::ND_ATTRIBUTES)?;
        sink::write_string_attr(&det_attrs, "NX_class", "NXcollection")?;
        // ColorMode cannot change within a file (the frame shape is fixed), so it is
        // written once, as a scalar, rather than once per frame (ADCore #603).
        let color = det_attrs.new_dataset::<i32>().create("ColorMode")?;
        color.write_scalar(&spec.shape.color_mode.code())?;
        describe(&color, "ColorMode", "Color mode", "NDAttrSourceDriver")?;
        sink::write_string_attr(
            &color,
            "NDAttrStatic",
            "written once: constant for the file",
        )?;

        let nd = instrument.create_group(layout::ND_ATTRIBUTES)?;
        sink::write_string_attr(&nd, "NX_class", "NXcollection")?;
        sink::write_string_attr(&nd, "hostname", &hostname())?;
        let make = |name: &str, description: &str, dtype: Datatype| -> hdf5::Result<Dataset> {
            let ds = nd
                .new_dataset_builder()
                .empty_as(&dtype)
                .chunk(attr_chunk)
                .shape(hdf5::SimpleExtents::resizable([0]))
                .create(name)?;
            describe(&ds, name, description, "NDAttrSourceDriver")?;
            Ok(ds)
        };
        Ok(AttributeSets {
            time_stamp: make(
                "NDArrayTimeStamp",
                "The timestamp of the NDArray as float64",
                Datatype::from_type::<f64>()?,
            )?,
            epics_sec: make(
                "NDArrayEpicsTSSec",
                "The NDArray EPICS timestamp seconds past epoch",
                Datatype::from_type::<u32>()?,
            )?,
            epics_nsec: make(
                "NDArrayEpicsTSnSec",
                "The NDArray EPICS timestamp nanoseconds",
                Datatype::from_type::<u32>()?,
            )?,
            unique_id: make(
                "NDArrayUniqueId",
                "The unique ID of the NDArray",
                Datatype::from_type::<i32>()?,
            )?,
        })
    }

    /// The file's final name.
    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    /// The spec the file was created with.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// Append one frame. `chunk` is the frame encoded with the spec's codec (the raw frame
    /// bytes for [`Codec::None`]). On error the frame is not counted, the image dataset keeps
    /// exactly the frames before it, and the caller should [`close`](Self::close).
    ///
    /// With an image layout of one channel the frame is the image numbered one past the
    /// highest written ([`write_image`](Self::write_image) with `image_id` = that number);
    /// with several channels use `write_image`.
    pub fn write_frame(&mut self, meta: &FrameMeta, chunk: &[u8]) -> Result<(), WriterError> {
        if let Some(placement) = &self.placement {
            let number = placement.extent;
            return self.write_image(
                meta,
                &ImageWrite {
                    number,
                    channels: &[chunk],
                    image_id: number,
                    real_time: None,
                    start_time: None,
                    stop_time: None,
                    user_data_cbor: None,
                    user_data_json: None,
                },
            );
        }
        self.admit(meta, std::slice::from_ref(&chunk))?;
        let capacity = if self.spec.frame_dimension {
            self.spec.num_capture
        } else {
            1
        };
        if capacity > 0 && self.frames >= capacity {
            return Err(WriterError::Full {
                num_capture: capacity,
            });
        }
        self.check_space(chunk.len() as u64)?;
        let Some(open) = self.open.as_mut() else {
            return Err(WriterError::Closed);
        };
        let t0 = Instant::now();
        let k = self.frames as usize;
        let (w, h) = (
            self.spec.shape.width as usize,
            self.spec.shape.height as usize,
        );
        let written = if self.spec.frame_dimension {
            open.image
                .resize([k + 1, h, w])
                .map_err(|e| (e, "extend the image dataset"))
                .and_then(|()| {
                    sink::write_chunk(&open.image, &[k as u64, 0, 0], chunk).map_err(|e| {
                        // HDF5 cannot shrink the extent over a chunk whose write failed
                        // ("B-tree key not found"), so the free-space check is what keeps the
                        // count exact; this covers a disk that filled between that check and
                        // the write.
                        let _ = open.image.resize([k, h, w]);
                        (e, "write a frame chunk")
                    })
                })
        } else {
            sink::write_chunk(&open.image, &[0, 0], chunk).map_err(|e| (e, "write the frame chunk"))
        };
        if let Err((e, what)) = written {
            // Free the reserve so the close that follows can write the metadata (a full disk).
            self.write_failed();
            return Err(self.hdf5_error(what, e));
        }
        self.finish_frame(t0, k, meta, chunk.len() as u64, None)
    }

    /// Write image `image.number` (its 0-based position in the datasets, not its arrival
    /// order): one encoded chunk per channel, in [`ImageLayout::channels`] order, at offset
    /// `{number, 0, 0}` with direct chunk write; the datasets grow to `number + 1` if shorter
    /// and never shrink. Positions never written read as the fill value, and as 0 in
    /// `image_present`.
    ///
    /// An image number `>= num_capture` (when it is not 0), a channel count that differs
    /// from the layout, or a number already written is refused with [`WriterError::Image`],
    /// naming the number, and writes nothing; the file stays as it was. A file created
    /// without an image layout refuses every image ([`WriterError::Setting`]).
    pub fn write_image(
        &mut self,
        meta: &FrameMeta,
        image: &ImageWrite<'_>,
    ) -> Result<(), WriterError> {
        let number = image.number;
        let (Some(placement), Some(l)) = (&self.placement, &self.spec.image_layout) else {
            return Err(WriterError::Setting {
                setting: "image_layout",
                value: "none".into(),
                reason: format!(
                    "image {number}: the file was created without an image layout; \
                     frames go in with write_frame"
                ),
            });
        };
        if let Some(refusal) = placement.refusal(
            number,
            image.channels.len(),
            l.channels.len(),
            self.spec.num_capture,
        ) {
            return Err(WriterError::Image { number, refusal });
        }
        // The datasets' extent: one past the highest image written, or a rank file's size.
        let extent = placement.extent.max(presized(&self.spec)) as usize;
        self.admit(meta, image.channels)?;
        let bytes: u64 = image.channels.iter().map(|c| c.len() as u64).sum();
        self.check_space(bytes)?;
        let Some(open) = self.open.as_mut() else {
            return Err(WriterError::Closed);
        };
        let t0 = Instant::now();
        let (w, h) = (
            self.spec.shape.width as usize,
            self.spec.shape.height as usize,
        );
        let k = usize::try_from(number).map_err(|_| WriterError::Image {
            number,
            refusal: ImageRefusal::PastEnd {
                num_capture: usize::MAX as u64,
            },
        })?;
        let datasets = std::iter::once(&open.image).chain(&open.channels);
        let mut written = Ok(());
        for (ds, chunk) in datasets.zip(image.channels) {
            written = (if k >= extent {
                ds.resize([k + 1, h, w])
            } else {
                Ok(())
            })
            .map_err(|e| (e, "extend an image dataset"))
            .and_then(|()| {
                sink::write_chunk(ds, &[k as u64, 0, 0], chunk)
                    .map_err(|e| (e, "write an image chunk"))
            });
            if written.is_err() {
                break;
            }
        }
        if let Err((e, what)) = written {
            // The image is not marked present: its position reads as missing.
            self.write_failed();
            return Err(self.hdf5_error(what, e));
        }
        if let Some(p) = self.placement.as_mut() {
            p.insert(number);
        }
        let row = ImageRow {
            image_id: image.image_id,
            real_time: image.real_time.map_or([0; 2], |(n, d)| [n, d]),
            start_time: image.start_time.map_or([0; 2], |(n, d)| [n, d]),
            stop_time: image.stop_time.map_or([0; 2], |(n, d)| [n, d]),
            user_data: image.user_data_cbor.map(<[u8]>::to_vec).unwrap_or_default(),
            user_data_json: image.user_data_json.map(str::to_owned).unwrap_or_default(),
        };
        self.finish_frame(t0, k, meta, bytes, Some(row))
    }

    /// Positions below the image datasets' extent that were never written (gaps), with an
    /// image layout; 0 without one.
    pub fn missing_images(&self) -> u64 {
        self.placement.as_ref().map_or(0, Placement::missing)
    }

    /// Refuse a frame of another shape, a raw chunk of the wrong size, or a closed file.
    fn admit(&self, meta: &FrameMeta, chunks: &[&[u8]]) -> Result<(), WriterError> {
        if meta.shape != self.spec.shape {
            return Err(WriterError::FrameMismatch {
                expected: self.spec.shape,
                got: meta.shape,
            });
        }
        if self.spec.codec == Codec::None {
            if let Some(c) = chunks.iter().find(|c| c.len() != self.spec.shape.bytes()) {
                return Err(WriterError::ChunkSize {
                    expected: self.spec.shape.bytes(),
                    got: c.len(),
                });
            }
        }
        if self.open.is_none() {
            return Err(WriterError::Closed);
        }
        Ok(())
    }

    /// Refuse a frame the disk cannot take before HDF5 allocates anything for it, so the
    /// file keeps exactly the frames written, and the reserve pays for closing it.
    fn check_space(&mut self, chunk_bytes: u64) -> Result<(), WriterError> {
        let needed = chunk_bytes + DISK_MARGIN;
        if let Some(free) = self.space.short_of(needed) {
            self.write_failed();
            return Err(WriterError::DiskFull {
                path: self.spec.open_path(),
                free,
                needed,
            });
        }
        Ok(())
    }

    /// A write failed: the file is closed with what it has, and the reserve is freed so that
    /// closing can write the metadata (a full disk).
    fn write_failed(&mut self) {
        self.failed = true;
        self.release_reserve();
    }

    fn hdf5_error(&self, what: &'static str, source: hdf5::Error) -> WriterError {
        WriterError::Hdf5 {
            path: self.spec.open_path(),
            what,
            source,
        }
    }

    /// Count a written frame of `chunk_bytes` at position `pos`, hold its per-frame row, and
    /// flush or store a batch when one is due.
    fn finish_frame(
        &mut self,
        t0: Instant,
        pos: usize,
        meta: &FrameMeta,
        chunk_bytes: u64,
        image: Option<ImageRow>,
    ) -> Result<(), WriterError> {
        self.space.spent(chunk_bytes);
        self.frames += 1;
        self.chunk_bytes += chunk_bytes;

        // The performance row measures the chunk write (what areaDetector times), and is
        // pending with the frame's attributes before any flush, so a flush covers it too.
        let done = Instant::now();
        let first = *self.first_frame.get_or_insert(t0);
        let mbit = self.spec.shape.bytes() as f64 * 8.0 / (1u64 << 20) as f64;
        let since_prev = done.duration_since(self.last_done).as_secs_f64();
        let since_first = done.duration_since(first).as_secs_f64();
        let perf = [
            done.duration_since(t0).as_secs_f64(),
            since_prev,
            since_first,
            if since_prev > 0.0 {
                mbit / since_prev
            } else {
                0.0
            },
            if since_first > 0.0 {
                self.frames as f64 * mbit / since_first
            } else {
                0.0
            },
        ];
        self.last_done = done;
        let flush_due = (self.spec.flush_every > 0
            && self.frames.is_multiple_of(self.spec.flush_every))
            || self.flush_interval_passed();
        let Some(open) = self.open.as_mut() else {
            return Err(WriterError::Closed);
        };
        open.per_frame.push(pos, meta, perf, image);
        self.unflushed += 1;

        let stored = if flush_due {
            self.flush()
        } else if open.per_frame.batch_full() {
            open.per_frame
                .store(false)
                .map_err(|source| WriterError::Hdf5 {
                    path: self.spec.open_path(),
                    what: "append the per-frame rows (NDAttributes, performance)",
                    source,
                })
        } else {
            Ok(())
        };
        if let Err(e) = stored {
            self.write_failed();
            return Err(e);
        }
        Ok(())
    }

    fn flush_interval_passed(&self) -> bool {
        self.spec
            .flush_interval
            .is_some_and(|d| self.last_flush.elapsed() >= d)
    }

    /// Flush if frames are waiting and the flush interval has passed: for a writer that is
    /// idle between slow frames.
    pub fn flush_if_due(&mut self) -> Result<(), WriterError> {
        if self.unflushed > 0 && self.flush_interval_passed() {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Make every frame written so far visible to readers: flush the image datasets, then
    /// write and flush the pending per-frame rows with `NDArrayUniqueId` (and with an image
    /// layout `image_present`) last. Fails with
    /// [`WriterError::Vanished`] when the file was deleted or moved meanwhile.
    pub fn flush(&mut self) -> Result<(), WriterError> {
        self.last_flush = Instant::now();
        self.unflushed = 0;
        let path = self.spec.open_path();
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let result = (|| -> hdf5::Result<()> {
            open.image.flush()?;
            for channel in &open.channels {
                channel.flush()?;
            }
            open.per_frame.store(true)?;
            if !self.spec.swmr {
                open.file.flush()?;
            }
            Ok(())
        })();
        result.map_err(|source| WriterError::Hdf5 {
            path,
            what: "flush",
            source,
        })?;
        self.check_present()
    }

    /// Fail when the file being written was deleted (or its directory removed), or its
    /// name no longer leads to it.
    fn check_present(&self) -> Result<(), WriterError> {
        match &self.lock {
            Some(lock) => lock.check_present(),
            None => Ok(()),
        }
    }

    /// Write the pending attributes and the performance table, close the file, rename it to
    /// its final name, and say what it holds.
    pub fn close(self) -> Result<FileSummary, WriterError> {
        let (summary, result) = self.close_reporting();
        result.map(|()| summary)
    }

    /// [`close`](Self::close), but the summary of what was written comes back even when
    /// closing failed.
    pub fn close_reporting(mut self) -> (FileSummary, Result<(), WriterError>) {
        let result = self.finish();
        let path = if result.is_ok() {
            self.spec.path.clone()
        } else {
            self.spec.open_path()
        };
        let summary = FileSummary {
            path,
            frames: self.frames,
            chunk_bytes: self.chunk_bytes,
            raw_bytes: self.frames
                * self.spec.shape.bytes() as u64
                * self
                    .spec
                    .image_layout
                    .as_ref()
                    .map_or(1, |l| l.channels.len() as u64),
            missing_images: self.missing_images(),
        };
        (summary, result)
    }

    fn release_reserve(&mut self) {
        if let Some(r) = self.reserve.take() {
            r.release();
        }
    }

    fn finish(&mut self) -> Result<(), WriterError> {
        let Some(Handles {
            file,
            image,
            channels,
            mut per_frame,
        }) = self.open.take()
        else {
            return Ok(());
        };
        // Give the space back before the last metadata goes to disk.
        self.release_reserve();
        let open_path = self.spec.open_path();
        let hdf5_err = |what| {
            let path = open_path.clone();
            move |source| WriterError::Hdf5 { path, what, source }
        };
        let mut first_error = None;
        if let Err(e) = per_frame.store(false) {
            first_error.get_or_insert(hdf5_err(
                "append the per-frame rows (NDAttributes, performance)",
            )(e));
        }
        drop(per_frame);
        drop(channels);
        drop(image);
        // Flush first: a write error (disk full) surfaces here rather than being lost in close.
        if let Err(e) = file.flush().and_then(|()| file.close()) {
            first_error.get_or_insert(hdf5_err("close the file")(e));
        }
        // A deleted file closes without an error: say that its frames are lost.
        self.check_present()?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if open_path != self.spec.path {
            match self.lock.as_mut() {
                Some(lock) => lock.rename(&self.spec.path)?,
                None => std::fs::rename(&open_path, &self.spec.path).map_err(|source| {
                    WriterError::Rename {
                        from: open_path.clone(),
                        to: self.spec.path.clone(),
                        source,
                    }
                })?,
            }
        }
        // Other writers may have the file from here on.
        self.lock = None;
        Ok(())
    }
}

/// Raw-chunk cache of each dataset: the per-frame datasets' current chunks (the image
/// dataset is written with direct chunk writes, past the cache).
const CHUNK_CACHE_BYTES: usize = 256 << 10;

/// How long a file's creation waits for readers that hold HDF5's lock on it.
const CREATE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// `H5Fcreate`, retried while a reader holds HDF5's lock on the path. The target lock has made
/// the (empty) file before HDF5 creates it, and a reader that polls for the file (a live
/// viewer waiting for it to appear) takes HDF5's shared lock for the length of each failed
/// open; HDF5's create asks for an exclusive lock without waiting and fails with EAGAIN when it
/// meets one. Another writer never gets here: the target lock refused it already. After
/// [`CREATE_LOCK_WAIT`] the error is returned (a reader that keeps the file open).
///
/// The created file is then opened and closed once more, while it is still a few KiB: see
/// [`forget_truncation`].
fn create_past_readers(builder: &hdf5::file::FileBuilder, path: &Path) -> hdf5::Result<File> {
    let deadline = Instant::now() + CREATE_LOCK_WAIT;
    loop {
        match builder.create(path) {
            // HDF5 says which lock call failed only in its message.
            Err(e)
                if e.to_string().contains("unable to lock file") && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(file) => {
                forget_truncation(path);
                return Ok(file);
            }
            other => return other,
        }
    }
}

/// HDF5 creates the file over the empty one the target lock made, with `O_TRUNC`. ext4 (and
/// XFS) remember a truncated file and, at the next close of any descriptor of it, write back
/// all its dirty pages on the closing thread (ext4's `auto_da_alloc`, for programs that replace
/// a file by truncating it). Left alone, that close is the file's last: closing a 600 MB file
/// took the writer thread 250-340 ms, time a plain write of the same bytes never spends, with
/// frames waiting in the ring. Closing a descriptor now, while the file holds only its
/// superblock, spends that writeback on a few KiB and clears the mark; the data then goes to
/// disk by the kernel's normal writeback, as any other file's.
fn forget_truncation(path: &Path) {
    // A file that cannot be opened here is no worse off: it is only the fast path that is lost.
    drop(std::fs::File::open(path));
}

/// Images a rank's file (an image layout with [`DetectorMetadata::rank`](crate::DetectorMetadata::rank)
/// and a `num_capture`) is sized for when it is created, as odin-data sizes its files for a
/// known frame count (odin-data #222): a master file maps each rank file with fixed
/// dimensions, and HDF5 refuses to read a mapping past its source's current extent, so the
/// master reads while the rank writes, and after a killed rank, only if the extent is whole
/// from the start (positions not written read as the fill value, `image_present` 0). 0 for
/// every other file: its extent grows with the images written.
fn presized(spec: &StreamSpec) -> u64 {
    let rank_file = spec
        .image_layout
        .as_ref()
        .and_then(|l| l.metadata.as_ref())
        .is_some_and(|m| m.rank.is_some());
    if rank_file && spec.frame_dimension {
        spec.num_capture
    } else {
        0
    }
}

/// HDF5's metadata cache at a fixed 4 MiB: what one file's writer touches (the newest
/// chunk-index blocks and the object headers) fits many times over.
fn bounded_metadata_cache() -> hdf5::plist::file_access::MetadataCacheConfig {
    use hdf5::plist::file_access::{
        CacheDecreaseMode, CacheIncreaseMode, FlashIncreaseMode, MetadataCacheConfig,
    };
    MetadataCacheConfig {
        set_initial_size: true,
        initial_size: 4 << 20,
        min_size: 4 << 20,
        max_size: 4 << 20,
        incr_mode: CacheIncreaseMode::Off,
        flash_incr_mode: FlashIncreaseMode::Off,
        decr_mode: CacheDecreaseMode::Off,
        ..MetadataCacheConfig::default()
    }
}

/// Free space a frame must leave on the disk beyond its own bytes (chunk index growth and
/// the next attribute batch).
const DISK_MARGIN: u64 = 1 << 20;

fn reserve_path(open_path: &Path) -> PathBuf {
    let name = open_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    open_path.with_file_name(format!(".{name}.detflow-reserve"))
}

fn describe(ds: &Dataset, name: &str, description: &str, source_type: &str) -> hdf5::Result<()> {
    sink::write_string_attr(ds, "NDAttrName", name)?;
    sink::write_string_attr(ds, "NDAttrDescription", description)?;
    sink::write_string_attr(ds, "NDAttrSourceType", source_type)
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
