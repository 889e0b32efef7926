//! One HDF5 file per acquisition, in NDFileHDF5's default NeXus layout, one chunk per frame.
//!
//! [`StreamWriter::create`] builds the whole tree (see [`crate::layout`]) before the first
//! frame; [`StreamWriter::write_frame`] grows the image dataset by one frame, writes the encoded
//! chunk with direct chunk write, and appends the frame's NDAttributes (`NDArrayUniqueId`
//! last, as NDFileHDF5 does); [`StreamWriter::close`] writes the performance table and closes
//! the file. Dropping a writer without `close` still closes the file with every frame written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use detflow_hal::{FrameMeta, FrameShape, PixelType};
use hdf5::{Dataset, Datatype, File, Group, H5Type};

use crate::WriterError;
use crate::codec::Codec;
use crate::layout;
use crate::sink::{self, ChunkedSpec};

/// What one stream file holds, fixed when it is created.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Full path of the file to create (truncated if it exists, as areaDetector does).
    pub path: PathBuf,
    /// Shape and pixel type of every frame.
    pub shape: FrameShape,
    /// How chunks are encoded before they reach [`StreamWriter::write_frame`].
    pub codec: Codec,
    /// Expected number of frames (NumCapture): the maximum extent of the frame dimension.
    /// `0` means unlimited.
    pub num_capture: u64,
    /// ROI offset of the frames on the sensor, X first (`NDArrayDimOffset`).
    pub dim_offset: [i32; 2],
    /// Binning, X first (`NDArrayDimBinning`).
    pub dim_binning: [i32; 2],
}

/// What a closed file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSummary {
    /// The file.
    pub path: PathBuf,
    /// Frames in the image dataset.
    pub frames: u64,
    /// Bytes of encoded chunks written (equal to raw bytes for [`Codec::None`]).
    pub chunk_bytes: u64,
    /// Uncompressed bytes of those frames.
    pub raw_bytes: u64,
}

struct AttrDatasets {
    unique_id: Dataset,
    time_stamp: Dataset,
    epics_sec: Dataset,
    epics_nsec: Dataset,
    color_mode: Dataset,
}

/// The HDF5 handles of an open file; closed together.
struct Handles {
    file: File,
    image: Dataset,
    attrs: AttrDatasets,
    performance: Group,
}

/// An open stream file.
pub struct StreamWriter {
    open: Option<Handles>,
    spec: StreamSpec,
    frames: u64,
    chunk_bytes: u64,
    last_done: Instant,
    first_frame: Option<Instant>,
    perf_rows: Vec<[f64; 5]>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("path", &self.spec.path)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Refuse a directory that does not exist, is not a directory, or cannot be written, before
/// any file is created. `setting` names the option in the message (`"path"`, `"FilePath"`).
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
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".detflow-probe-{}-{n}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(bad(format!("cannot create files here: {e}"))),
    }
}

fn datatype(p: PixelType) -> hdf5::Result<Datatype> {
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
    /// Create the file and its whole layout. Nothing is created when the spec is invalid.
    pub fn create(spec: StreamSpec) -> Result<Self, WriterError> {
        let FrameShape { width, height, .. } = spec.shape;
        if width == 0 || height == 0 {
            return Err(WriterError::BadShape { width, height });
        }
        let dir = spec
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        check_directory(dir, "path")?;
        let ctx = |what: &'static str| {
            let path = spec.path.clone();
            move |source: hdf5::Error| WriterError::Hdf5 { path, what, source }
        };
        let file = File::create(&spec.path).map_err(ctx("create the file"))?;
        let built = Self::build_layout(&file, &spec).map_err(ctx("build the NeXus layout"));
        let (image, attrs, performance) = match built {
            Ok(parts) => parts,
            Err(e) => {
                drop(file);
                let _ = std::fs::remove_file(&spec.path);
                return Err(e);
            }
        };
        let now = Instant::now();
        Ok(StreamWriter {
            open: Some(Handles {
                file,
                image,
                attrs,
                performance,
            }),
            perf_rows: Vec::with_capacity(spec.num_capture.min(1 << 20) as usize),
            spec,
            frames: 0,
            chunk_bytes: 0,
            last_done: now,
            first_frame: None,
        })
    }

    fn build_layout(
        file: &File,
        spec: &StreamSpec,
    ) -> hdf5::Result<(Dataset, AttrDatasets, Group)> {
        let (w, h) = (spec.shape.width as usize, spec.shape.height as usize);
        let max_frames = (spec.num_capture > 0).then_some(spec.num_capture as usize);
        let attr_chunk = if spec.num_capture > 0 {
            spec.num_capture.min(16384) as usize
        } else {
            16384
        };

        let entry = file.create_group(layout::ENTRY)?;
        sink::write_string_attr(&entry, "NX_class", "NXentry")?;
        let instrument = entry.create_group(layout::INSTRUMENT)?;
        sink::write_string_attr(&instrument, "NX_class", "NXinstrument")?;
        let detector = instrument.create_group(layout::DETECTOR)?;
        sink::write_string_attr(&detector, "NX_class", "NXdetector")?;

        let filter = spec.codec.filter(spec.shape.pixel_type, spec.shape.bytes());
        let image = sink::create_chunked(
            &detector,
            layout::DATA,
            &ChunkedSpec {
                dtype: datatype(spec.shape.pixel_type)?,
                shape: &[0, h, w],
                max_shape: &[max_frames, Some(h), Some(w)],
                chunk: &[1, h, w],
                filter: filter.as_ref().map(|f| (f.id, f.cd_values.as_slice())),
            },
        )?;
        image.new_attr::<i32>().create("signal")?.write_scalar(&1)?;
        image
            .new_attr::<i32>()
            .create("NDArrayNumDims")?
            .write_scalar(&2)?;
        image
            .new_attr::<i32>()
            .shape(2)
            .create("NDArrayDimOffset")?
            .write(&spec.dim_offset)?;
        image
            .new_attr::<i32>()
            .shape(2)
            .create("NDArrayDimBinning")?
            .write(&spec.dim_binning)?;
        image
            .new_attr::<i32>()
            .shape(2)
            .create("NDArrayDimReverse")?
            .write(&[0, 0])?;

        let det_attrs = detector.create_group(layout::ND_ATTRIBUTES)?;
        sink::write_string_attr(&det_attrs, "NX_class", "NXcollection")?;
        let color_mode = Self::attr_dataset::<i32>(
            &det_attrs,
            "ColorMode",
            "Color mode",
            "NDAttrSourceDriver",
            attr_chunk,
        )?;

        let nd = instrument.create_group(layout::ND_ATTRIBUTES)?;
        sink::write_string_attr(&nd, "NX_class", "NXcollection")?;
        sink::write_string_attr(&nd, "hostname", &hostname())?;
        let virt = "NDAttrSourceDriver";
        let time_stamp = Self::attr_dataset::<f64>(
            &nd,
            "NDArrayTimeStamp",
            "The timestamp of the NDArray as float64",
            virt,
            attr_chunk,
        )?;
        let epics_sec = Self::attr_dataset::<u32>(
            &nd,
            "NDArrayEpicsTSSec",
            "The NDArray EPICS timestamp seconds past epoch",
            virt,
            attr_chunk,
        )?;
        let epics_nsec = Self::attr_dataset::<u32>(
            &nd,
            "NDArrayEpicsTSnSec",
            "The NDArray EPICS timestamp nanoseconds",
            virt,
            attr_chunk,
        )?;
        let unique_id = Self::attr_dataset::<i32>(
            &nd,
            "NDArrayUniqueId",
            "The unique ID of the NDArray",
            virt,
            attr_chunk,
        )?;

        let performance = instrument.create_group(layout::PERFORMANCE)?;

        let data = entry.create_group(layout::NXDATA)?;
        sink::write_string_attr(&data, "NX_class", "NXdata")?;
        data.link_hard(layout::IMAGE_PATH, layout::DATA)?;

        Ok((
            image,
            AttrDatasets {
                unique_id,
                time_stamp,
                epics_sec,
                epics_nsec,
                color_mode,
            },
            performance,
        ))
    }

    fn attr_dataset<T: H5Type>(
        group: &Group,
        name: &str,
        description: &str,
        source_type: &str,
        chunk: usize,
    ) -> hdf5::Result<Dataset> {
        let ds = group
            .new_dataset::<T>()
            .chunk(chunk)
            .shape(hdf5::SimpleExtents::resizable([0]))
            .create(name)?;
        sink::write_string_attr(&ds, "NDAttrName", name)?;
        sink::write_string_attr(&ds, "NDAttrDescription", description)?;
        sink::write_string_attr(&ds, "NDAttrSourceType", source_type)?;
        Ok(ds)
    }

    /// The file being written.
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
    /// bytes for [`Codec::None`]). On error the frame is not counted and the file stays
    /// readable with the frames before it; callers should stop and [`close`](Self::close).
    pub fn write_frame(&mut self, meta: &FrameMeta, chunk: &[u8]) -> Result<(), WriterError> {
        if meta.shape != self.spec.shape {
            return Err(WriterError::FrameMismatch {
                expected: self.spec.shape,
                got: meta.shape,
            });
        }
        if self.spec.num_capture > 0 && self.frames >= self.spec.num_capture {
            return Err(WriterError::Full {
                num_capture: self.spec.num_capture,
            });
        }
        if self.spec.codec == Codec::None && chunk.len() != self.spec.shape.bytes() {
            return Err(WriterError::ChunkSize {
                expected: self.spec.shape.bytes(),
                got: chunk.len(),
            });
        }
        let Some(open) = self.open.as_ref() else {
            return Err(WriterError::Closed);
        };
        let t0 = Instant::now();
        let k = self.frames as usize;
        let (w, h) = (
            self.spec.shape.width as usize,
            self.spec.shape.height as usize,
        );
        let path = &self.spec.path;
        let ctx = |what: &'static str| {
            move |source: hdf5::Error| WriterError::Hdf5 {
                path: path.clone(),
                what,
                source,
            }
        };
        open.image
            .resize([k + 1, h, w])
            .map_err(ctx("extend the image dataset"))?;
        if let Err(e) = sink::write_chunk(&open.image, &[k as u64, 0, 0], chunk) {
            // Keep the extent equal to the frames actually written.
            let _ = open.image.resize([k, h, w]);
            return Err(ctx("write a frame chunk")(e));
        }
        let append = || -> hdf5::Result<()> {
            fn put<T: H5Type>(ds: &Dataset, k: usize, v: T) -> hdf5::Result<()> {
                ds.resize(k + 1)?;
                ds.write_slice(&[v], k..k + 1)
            }
            put(&open.attrs.color_mode, k, meta.shape.color_mode.code())?;
            put(&open.attrs.time_stamp, k, meta.timestamp.epics_seconds())?;
            put(&open.attrs.epics_sec, k, meta.timestamp.sec)?;
            put(&open.attrs.epics_nsec, k, meta.timestamp.nsec)?;
            // Last, so a SWMR reader that sees UniqueId[k] can trust the others for frame k.
            put(&open.attrs.unique_id, k, meta.unique_id as i32)
        };
        append().map_err(ctx("append the frame's NDAttributes"))?;
        self.frames += 1;
        self.chunk_bytes += chunk.len() as u64;

        let done = Instant::now();
        let first = *self.first_frame.get_or_insert(t0);
        let mbit = self.spec.shape.bytes() as f64 * 8.0 / (1u64 << 20) as f64;
        let since_prev = done.duration_since(self.last_done).as_secs_f64();
        let since_first = done.duration_since(first).as_secs_f64();
        self.perf_rows.push([
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
        ]);
        self.last_done = done;
        Ok(())
    }

    /// Write the performance table, close the file, and say what it holds.
    pub fn close(mut self) -> Result<FileSummary, WriterError> {
        let result = self.finish();
        let summary = FileSummary {
            path: self.spec.path.clone(),
            frames: self.frames,
            chunk_bytes: self.chunk_bytes,
            raw_bytes: self.frames * self.spec.shape.bytes() as u64,
        };
        result.map(|()| summary)
    }

    fn finish(&mut self) -> Result<(), WriterError> {
        let Some(Handles {
            file,
            image,
            attrs,
            performance,
        }) = self.open.take()
        else {
            return Ok(());
        };
        let path = self.spec.path.clone();
        let rows = self.perf_rows.len();
        let perf = (|| -> hdf5::Result<()> {
            let ds = performance
                .new_dataset::<f64>()
                .chunk([rows.clamp(1, 16384), 5])
                .shape(hdf5::SimpleExtents::resizable([rows, 5]))
                .create(layout::TIMESTAMP)?;
            if rows > 0 {
                let flat: Vec<f64> = self.perf_rows.iter().flatten().copied().collect();
                ds.write_raw(&flat)?;
            }
            Ok(())
        })();
        drop((image, attrs, performance));
        // Flush first: a write error (disk full) surfaces here rather than being lost in close.
        let closed = file.flush().and_then(|()| file.close());
        perf.map_err(|source| WriterError::Hdf5 {
            path: path.clone(),
            what: "write the performance table",
            source,
        })?;
        closed.map_err(|source| WriterError::Hdf5 {
            path,
            what: "close the file",
            source,
        })
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
