//! The replay backend: a detector whose frames are those of an existing HDF5 file, so that
//! pipelines can be run on real data. It accepts any 3-D dataset `(frames, rows, columns)` of
//! one of the eight pixel types that HDF5 can read, compressed or not, and plays it at the
//! configured period, wrapping to the first frame after the last.
//!
//! Frames are read one of two ways:
//!
//! - **By HDF5**, for datasets whose filters this HDF5 decodes itself (none, deflate, shuffle,
//!   szip, any registered filter), with any chunking: each frame is read straight into the
//!   caller's buffer (a hyperslab of the ROI), with the dataspaces and memory type made at
//!   `configure`, so a frame costs no allocation.
//! - **By detflow**, for datasets compressed with a filter this HDF5 has no decoder for but
//!   detflow's writer has ([`Codec::from_filter`]: lz4 32004, bitshuffle+LZ4/zstd 32008, zstd
//!   32015, blosc 32001 — what `detflow acquire --codec` writes), provided that filter is the
//!   dataset's only one and each chunk holds one frame (chunk dims `(1, rows, columns)`): each
//!   frame's chunk is read raw (`H5Dread_chunk`, [`detflow_writer::read_chunk`]), decoded with
//!   [`Codec::decode`] (which allocates the decoded frame), and the ROI copied out. A chunk
//!   stored with the filter skipped (filter mask bit set) is used as is; a chunk never written
//!   is read by HDF5 (its fill value).
//!
//! A dataset with a filter that neither can decode is refused at `open` with `InvalidConfig`,
//! naming the filter id and the file. Binning is not supported (refused with
//! `InvalidConfig`); the ROI is any window of the frame.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use detflow_hal::{
    AcquisitionConfig, ColorMode, Detector, EpicsTimestamp, ErrorKind, ErrorType, FrameMeta,
    FrameShape, FrameSource, ImageMode, PixelType, SensorInfo, TriggerMode,
};
use detflow_writer::Codec;
use hdf5::filters::Filter;
use hdf5::types::{FloatSize, IntSize, TypeDescriptor};

/// Dataset replayed when the file name has no `::DATASET`: where `detflow acquire` writes.
pub const DEFAULT_DATASET: &str = "/entry/data/data";

/// A replay error: the message and the HAL kind.
pub type ReplayError = super::BackendError;

fn err(kind: ErrorKind, message: impl Into<String>) -> ReplayError {
    super::BackendError::new(kind, message)
}

/// Splits `FILE[::DATASET]`.
pub fn parse_source(s: &str) -> (PathBuf, String) {
    match s.rsplit_once("::") {
        Some((file, ds)) if !ds.is_empty() => (PathBuf::from(file), ds.to_owned()),
        _ => (PathBuf::from(s), DEFAULT_DATASET.to_owned()),
    }
}

fn pixel_type(d: &TypeDescriptor) -> Option<PixelType> {
    Some(match d {
        TypeDescriptor::Unsigned(IntSize::U1) => PixelType::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => PixelType::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => PixelType::U32,
        TypeDescriptor::Integer(IntSize::U1) => PixelType::I8,
        TypeDescriptor::Integer(IntSize::U2) => PixelType::I16,
        TypeDescriptor::Integer(IntSize::U4) => PixelType::I32,
        TypeDescriptor::Float(FloatSize::U4) => PixelType::F32,
        TypeDescriptor::Float(FloatSize::U8) => PixelType::F64,
        _ => return None,
    })
}

fn native_type(t: PixelType) -> hdf5::Result<hdf5::Datatype> {
    match t {
        PixelType::U8 => hdf5::Datatype::from_type::<u8>(),
        PixelType::I8 => hdf5::Datatype::from_type::<i8>(),
        PixelType::U16 => hdf5::Datatype::from_type::<u16>(),
        PixelType::I16 => hdf5::Datatype::from_type::<i16>(),
        PixelType::U32 => hdf5::Datatype::from_type::<u32>(),
        PixelType::I32 => hdf5::Datatype::from_type::<i32>(),
        PixelType::F32 => hdf5::Datatype::from_type::<f32>(),
        PixelType::F64 => hdf5::Datatype::from_type::<f64>(),
    }
}

/// The filter id and `cd_values` of one filter of a dataset's pipeline.
fn filter_params(f: &Filter) -> (u32, Vec<u32>) {
    match f {
        Filter::User(id, cd_values) => (*id as u32, cd_values.clone()),
        Filter::Deflate(level) => (f.id() as u32, vec![u32::from(*level)]),
        _ => (f.id() as u32, Vec::new()),
    }
}

/// How frames whose filter HDF5 cannot run are decoded (the second way in the module docs).
#[derive(Debug)]
struct ChunkDecoder {
    codec: Codec,
    /// Swap the bytes of each decoded element: the file's byte order is not this machine's.
    swap: bool,
    /// The stored chunk, reused frame after frame.
    chunk: Vec<u8>,
}

/// What `configure` prepared for reading frames.
#[derive(Debug)]
struct Reader {
    mem_type: hdf5::Datatype,
    file_space: hdf5::Dataspace,
    mem_space: hdf5::Dataspace,
}

/// Timing of one run: frame `n` is due at `start + n * frame_period + exposure`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: Instant,
    start_unix_ns: u128,
    exposure: Duration,
    frame_period: Duration,
    delivered: u64,
    limit: Option<u64>,
}

/// Plays the frames of a 3-D HDF5 dataset as a detector.
#[derive(Debug)]
pub struct ReplayDetector {
    path: PathBuf,
    name: String,
    dataset: hdf5::Dataset,
    /// Set when detflow decodes the chunks itself.
    decoder: Option<ChunkDecoder>,
    frames: u64,
    width: u32,
    height: u32,
    pixel_type: PixelType,
    config: AcquisitionConfig,
    shape: FrameShape,
    reader: Option<Reader>,
    run: Option<Run>,
    /// Index in the dataset of the next frame.
    next_index: u64,
    array_counter: u64,
}

impl ReplayDetector {
    /// Opens `dataset` of `path` read-only and checks it is 3-D with at least one frame, of a
    /// pixel type detflow knows, and that HDF5 or detflow can decode its filters.
    pub fn open(path: &Path, dataset: &str) -> Result<Self, ReplayError> {
        let bad = |m: String| err(ErrorKind::InvalidConfig, m);
        let file = hdf5::File::open(path)
            .map_err(|e| bad(format!("replay {}: cannot open: {e}", path.display())))?;
        let ds = file.dataset(dataset).map_err(|e| {
            bad(format!(
                "replay {}::{dataset}: no such dataset: {e}",
                path.display()
            ))
        })?;
        let shape = ds.shape();
        let [frames, height, width] = shape[..] else {
            return Err(bad(format!(
                "replay {}::{dataset}: shape {shape:?} is not 3-D (frames, rows, columns)",
                path.display()
            )));
        };
        if frames == 0 || height == 0 || width == 0 || height > 65_535 || width > 65_535 {
            return Err(bad(format!(
                "replay {}::{dataset}: shape {shape:?} holds no frame detflow can replay",
                path.display()
            )));
        }
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| bad(format!("replay {}::{dataset}: {e}", path.display())))?;
        let pixel_type = pixel_type(&desc).ok_or_else(|| {
            bad(format!(
                "replay {}::{dataset}: pixel type {desc} is not one of u8 u16 u32 i8 i16 i32 f32 f64",
                path.display()
            ))
        })?;
        let filters = ds.filters();
        let missing = filters.iter().map(|f| f.id()).find(|&id| {
            let _lock = hdf5_sys::LOCK.lock();
            // SAFETY: H5Zfilter_avail only reads the filter table; the HDF5 lock is held.
            unsafe { hdf5_sys::h5z::H5Zfilter_avail(id) <= 0 }
        });
        let decoder = match missing {
            None => None,
            Some(id) => Some(
                Self::chunk_decoder(&ds, &filters, pixel_type).map_err(|why| {
                    bad(format!(
                        "replay {}::{dataset}: compressed with HDF5 filter {id}, which this HDF5 \
                     cannot decode; {why}",
                        path.display()
                    ))
                })?,
            ),
        };
        let (width, height) = (width as u32, height as u32);
        let config = AcquisitionConfig {
            roi: detflow_hal::Roi::full(width, height),
            pixel_type,
            ..AcquisitionConfig::default()
        };
        Ok(ReplayDetector {
            path: path.to_owned(),
            name: dataset.to_owned(),
            dataset: ds,
            decoder,
            frames: frames as u64,
            width,
            height,
            pixel_type,
            shape: FrameShape {
                width,
                height,
                pixel_type,
                color_mode: ColorMode::Mono,
            },
            config,
            reader: None,
            run: None,
            next_index: 0,
            array_counter: 0,
        })
    }

    /// The decoder for a dataset with a filter this HDF5 cannot run, or why detflow cannot
    /// decode it either.
    fn chunk_decoder(
        ds: &hdf5::Dataset,
        filters: &[Filter],
        pixel_type: PixelType,
    ) -> Result<ChunkDecoder, String> {
        let [f] = filters else {
            return Err(format!(
                "detflow decodes chunks itself only with a single filter, and the pipeline has \
                 filters {:?}",
                filters.iter().map(|f| f.id()).collect::<Vec<_>>()
            ));
        };
        let (id, cd_values) = filter_params(f);
        let codec = Codec::from_filter(id, &cd_values)
            .ok_or_else(|| format!("nor can detflow (cd_values {cd_values:?})"))?;
        let shape = ds.shape();
        let chunk = ds.chunk().unwrap_or_default();
        if chunk != [1, shape[1], shape[2]] {
            return Err(format!(
                "detflow decodes {codec} chunks itself only with one frame per chunk, and the \
                 chunks are {chunk:?}, not [1, {}, {}]",
                shape[1], shape[2]
            ));
        }
        let foreign = if cfg!(target_endian = "little") {
            hdf5::datatype::ByteOrder::BigEndian
        } else {
            hdf5::datatype::ByteOrder::LittleEndian
        };
        let order = ds.dtype().map_err(|e| e.to_string())?.byte_order();
        Ok(ChunkDecoder {
            codec,
            swap: order == foreign && pixel_type.size() > 1,
            chunk: Vec::new(),
        })
    }

    /// Frames in the dataset.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// `(width, height)` of the dataset's frames.
    pub fn frame_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Pixel type of the dataset.
    pub fn pixel_type(&self) -> PixelType {
        self.pixel_type
    }

    fn prepare(&self, c: &AcquisitionConfig) -> hdf5::Result<Reader> {
        let n = c.roi.size_x as usize * c.roi.size_y as usize;
        Ok(Reader {
            mem_type: native_type(c.pixel_type)?,
            file_space: self.dataset.space()?,
            mem_space: hdf5::Dataspace::try_new(n)?,
        })
    }

    /// Reads frame `index` of the ROI into `buf` (exactly one frame long).
    fn read_into(&mut self, index: u64, buf: &mut [u8]) -> Result<(), ReplayError> {
        if self.reader.is_none() {
            let r = self
                .prepare(&self.config)
                .map_err(|e| err(ErrorKind::Other, format!("replay: {e}")))?;
            self.reader = Some(r);
        }
        let roi = self.config.roi;
        if let Some(d) = self.decoder.as_mut() {
            let fail = |what: String| {
                err(
                    ErrorKind::Other,
                    format!(
                        "replay {}::{}: frame {index}: {what}",
                        self.path.display(),
                        self.name
                    ),
                )
            };
            let mask = detflow_writer::read_chunk(&self.dataset, &[index, 0, 0], &mut d.chunk)
                .map_err(|e| fail(format!("HDF5 could not read the chunk: {e}")))?;
            if let Some(mask) = mask {
                let elem = self.pixel_type.size();
                let row = self.width as usize * elem;
                let decoded;
                let frame: &[u8] = if mask & 1 == 0 {
                    decoded = d
                        .codec
                        .decode(self.pixel_type, &d.chunk)
                        .map_err(|e| fail(e.to_string()))?;
                    &decoded
                } else {
                    &d.chunk
                };
                if frame.len() != row * self.height as usize {
                    return Err(fail(format!(
                        "the chunk holds {} bytes, a frame is {}",
                        frame.len(),
                        row * self.height as usize
                    )));
                }
                let (x0, w) = (roi.min_x as usize * elem, roi.size_x as usize * elem);
                let rows = frame
                    .chunks_exact(row)
                    .skip(roi.min_y as usize)
                    .take(roi.size_y as usize);
                for (out, src) in buf.chunks_exact_mut(w).zip(rows) {
                    out.copy_from_slice(&src[x0..x0 + w]);
                    if d.swap {
                        out.chunks_exact_mut(elem).for_each(<[u8]>::reverse);
                    }
                }
                return Ok(());
            }
            // Never written: HDF5 reads the fill value without running the filter.
        }
        let r = self.reader.as_ref().expect("prepared above");
        let start: [u64; 3] = [index, roi.min_y.into(), roi.min_x.into()];
        let count: [u64; 3] = [1, roi.size_y.into(), roi.size_x.into()];
        let _lock = hdf5_sys::LOCK.lock();
        // SAFETY: the ids are live (owned by `r` and `self.dataset`); `start` and `count` have
        // the dataspace's rank of 3; `buf` holds exactly `count` elements of the memory type,
        // which `mem_space` describes; the HDF5 lock is held for both calls.
        let status = unsafe {
            let s = hdf5_sys::h5s::H5Sselect_hyperslab(
                r.file_space.id(),
                hdf5_sys::h5s::H5S_seloper_t::H5S_SELECT_SET,
                start.as_ptr(),
                std::ptr::null(),
                count.as_ptr(),
                std::ptr::null(),
            );
            if s < 0 {
                s
            } else {
                hdf5_sys::h5d::H5Dread(
                    self.dataset.id(),
                    r.mem_type.id(),
                    r.mem_space.id(),
                    r.file_space.id(),
                    hdf5_sys::h5p::H5P_DEFAULT,
                    buf.as_mut_ptr().cast(),
                )
            }
        };
        if status < 0 {
            return Err(err(
                ErrorKind::Other,
                format!(
                    "replay {}::{}: HDF5 could not read frame {index}",
                    self.path.display(),
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl ErrorType for ReplayDetector {
    type Error = ReplayError;
}

impl Detector for ReplayDetector {
    fn info(&self) -> SensorInfo {
        let name = |s: &str| heapless::String::try_from(s).unwrap_or_default();
        let mut pixel_types = heapless::Vec::new();
        let _ = pixel_types.push(self.pixel_type);
        SensorInfo {
            manufacturer: name("detflow"),
            model: name("HDF5 replay"),
            max_width: self.width,
            max_height: self.height,
            pixel_types,
        }
    }

    /// Refused with `InvalidConfig`: while acquiring, a ROI of size 0 or past the frame, a
    /// binning other than 1 x 1, another pixel type than the file's, an external trigger,
    /// `num_images` 0 in Multiple mode.
    fn configure(&mut self, c: &AcquisitionConfig) -> Result<FrameShape, ReplayError> {
        let bad = |m: String| Err(err(ErrorKind::InvalidConfig, m));
        if self.run.is_some() {
            return bad("cannot configure while acquiring: stop first".into());
        }
        let r = c.roi;
        if r.size_x == 0
            || r.size_y == 0
            || u64::from(r.min_x) + u64::from(r.size_x) > u64::from(self.width)
            || u64::from(r.min_y) + u64::from(r.size_y) > u64::from(self.height)
        {
            return bad(format!(
                "roi {r:?} does not fit the replayed frames of {} x {}",
                self.width, self.height
            ));
        }
        if c.binning.x != 1 || c.binning.y != 1 {
            return bad(format!(
                "binning {} x {}: replay does not bin",
                c.binning.x, c.binning.y
            ));
        }
        if c.pixel_type != self.pixel_type {
            return bad(format!(
                "dtype {}: the replayed dataset is {}",
                c.pixel_type, self.pixel_type
            ));
        }
        if c.trigger_mode == TriggerMode::External {
            return bad("trigger mode External: replay has no trigger input".into());
        }
        if c.image_mode == ImageMode::Multiple && c.num_images == 0 {
            return bad("num_images 0 in Multiple mode".into());
        }
        let reader = self
            .prepare(c)
            .map_err(|e| err(ErrorKind::Other, format!("replay: {e}")))?;
        self.reader = Some(reader);
        self.config = c.clone();
        self.shape = FrameShape {
            width: r.size_x,
            height: r.size_y,
            pixel_type: c.pixel_type,
            color_mode: ColorMode::Mono,
        };
        Ok(self.shape)
    }

    /// Starts playing from the first frame of the dataset.
    fn start(&mut self) -> Result<(), ReplayError> {
        if self.run.is_some() {
            return Ok(());
        }
        let c = &self.config;
        self.next_index = 0;
        self.run = Some(Run {
            start: Instant::now(),
            start_unix_ns: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            exposure: c.exposure,
            frame_period: c.period.max(c.exposure),
            delivered: 0,
            limit: match c.image_mode {
                ImageMode::Single => Some(1),
                ImageMode::Multiple => Some(c.num_images.into()),
                ImageMode::Continuous => None,
            },
        });
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ReplayError> {
        self.run = None;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.run.is_some()
    }
}

impl FrameSource for ReplayDetector {
    /// Waits until the next frame is due (at most `timeout`), reads it into `buf`. A timeout
    /// loses nothing.
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, ReplayError> {
        let Some(run) = self.run else {
            return Err(err(ErrorKind::NotAcquiring, "replay is not acquiring"));
        };
        let needed = self.shape.bytes();
        if buf.len() < needed {
            return Err(err(
                ErrorKind::InvalidConfig,
                format!(
                    "buffer of {} bytes is smaller than one frame of {needed} bytes",
                    buf.len()
                ),
            ));
        }
        let offset =
            run.frame_period.as_nanos() * u128::from(run.delivered) + run.exposure.as_nanos();
        let due = run.start.checked_add(Duration::from_nanos(
            u64::try_from(offset).unwrap_or(u64::MAX),
        ));
        if let Some(due) = due {
            let now = Instant::now();
            if due > now {
                let wait = due - now;
                if wait > timeout {
                    std::thread::sleep(timeout);
                    return Err(err(
                        ErrorKind::Timeout,
                        format!("no frame due within {timeout:?}"),
                    ));
                }
                std::thread::sleep(wait);
            }
        }
        let index = self.next_index;
        self.read_into(index, &mut buf[..needed])?;
        self.next_index = (index + 1) % self.frames;
        self.array_counter += 1;
        let delivered = run.delivered + 1;
        self.run = if run.limit.is_some_and(|n| delivered >= n) {
            None
        } else {
            Some(Run { delivered, ..run })
        };
        let ns = run.start_unix_ns + offset;
        let timestamp =
            EpicsTimestamp::from_unix((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
        Ok(FrameMeta {
            unique_id: self.array_counter,
            timestamp,
            unix_time_s: timestamp.unix_seconds(),
            shape: self.shape,
        })
    }
}
