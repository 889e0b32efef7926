//! Chunked HDF5 stream writer: areaDetector file naming, NDFileHDF5's NeXus layout, one chunk
//! per frame written with HDF5 direct chunk write.
//!
//! The pipeline hands this crate frames that a codec has already encoded ([`codec`]); the
//! writer thread alone talks to HDF5 ([`stream::StreamWriter`]), because the library is
//! serialised by one global lock. File names follow NDPluginFile ([`naming`]).
//!
//! ```no_run
//! use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
//! use detflow_writer::{Codec, StreamSpec, StreamWriter};
//!
//! let shape = FrameShape { width: 4, height: 2, pixel_type: PixelType::U8, color_mode: ColorMode::Mono };
//! let mut w = StreamWriter::create(StreamSpec {
//!     num_capture: 1,
//!     overwrite: true,
//!     ..StreamSpec::new("/tmp/demo_0001.h5", shape, Codec::None)
//! })?;
//! let meta = FrameMeta { unique_id: 1, timestamp: EpicsTimestamp::now(), unix_time_s: 0.0, shape };
//! w.write_frame(&meta, &[0u8; 8])?;
//! let summary = w.close()?;
//! assert_eq!(summary.frames, 1);
//! # Ok::<(), detflow_writer::WriterError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks
)]

use std::path::PathBuf;

use detflow_hal::FrameShape;
use thiserror::Error;

pub mod capture;
pub mod codec;
pub mod images;
pub mod layout;
pub mod lock;
pub mod naming;
pub mod nxmx;
pub mod ranks_master;
pub mod refs;
pub mod roots;
mod rows;
mod sink;
mod space;
pub mod stream;
pub mod vds;

pub use capture::{
    CaptureSession, CaptureSettings, FileStatus, FrameGeometry, Pushed, WriteMode,
    check_ref_pattern, checked_write_mode,
};
pub use codec::{Codec, CodecError, Compressor, FilterSpec};
pub use images::{ImageLayout, ImageRefusal, ImageWrite};
pub use lock::{remove_own_reserves, remove_stale_reserves};
pub use naming::{FileNaming, FileTemplate, TemplateError};
pub use nxmx::{DetectorMetadata, RankShare, Table};
pub use ranks_master::{
    RankFileInfo, RankFileReport, RankMasterReport, RankMasterSpec, RankSeries, build_rank_master,
    read_rank_file,
};
pub use refs::{FrameSelection, RefError, RefLog, RefPattern, RefRecord, RefSink, ValueRef};
pub use roots::{DataRoots, OutsideRoots};
pub use sink::read_chunk;
pub use stream::{FileSummary, StreamSpec, StreamWriter, check_directory};
pub use vds::{MasterReport, PointDescription, VdsSpec, build_master};

/// Everything the writer can refuse or fail at; each says which setting or file and why.
#[derive(Debug, Error)]
pub enum WriterError {
    /// A setting that cannot be used.
    #[error("invalid {setting} {value:?}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// Its value.
        value: String,
        /// Why not.
        reason: String,
    },
    /// The output directory cannot take the file.
    #[error("{setting} {path:?}: {reason}")]
    BadDirectory {
        /// The setting that named the directory.
        setting: String,
        /// The directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A frame size of zero.
    #[error("frame size {width}x{height}: width and height must be at least 1")]
    BadShape {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
    },
    /// A frame whose shape differs from the file's.
    #[error("frame of {}x{} {} does not match the file's {}x{} {}", got.width, got.height, got.pixel_type, expected.width, expected.height, expected.pixel_type)]
    FrameMismatch {
        /// The file's frame shape.
        expected: FrameShape,
        /// The frame's.
        got: FrameShape,
    },
    /// A raw chunk of the wrong size.
    #[error("raw chunk of {got} bytes, expected {expected}")]
    ChunkSize {
        /// Bytes of one frame.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// More frames than NumCapture.
    #[error("the file already holds num_capture = {num_capture} frames")]
    Full {
        /// The file's NumCapture.
        num_capture: u64,
    },
    /// The file was closed.
    #[error("the file is closed")]
    Closed,
    /// An image refused by [`StreamWriter::write_image`]; nothing of it was written.
    #[error("image {number}: {refusal}")]
    Image {
        /// The image's number.
        number: u64,
        /// Why.
        refusal: ImageRefusal,
    },
    /// The disk cannot take another frame.
    #[error("{path:?}: disk full: {free} bytes free, a frame needs {needed}")]
    DiskFull {
        /// The file.
        path: PathBuf,
        /// Bytes free on its file system.
        free: u64,
        /// Bytes the frame needs (with margin).
        needed: u64,
    },
    /// A file or directory would be created outside the data roots.
    #[error("{setting}: {source}")]
    OutsideRoots {
        /// What named it: the setting, or the kind of file (`"file"`, `"directory"`).
        setting: String,
        /// Where it leads.
        #[source]
        source: roots::OutsideRoots,
    },
    /// The file exists and overwriting was not allowed.
    #[error("file {path:?} exists; choose another name or number, or allow overwriting")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Another live writer holds the file: it is neither truncated nor replaced.
    #[error("file {path:?} is being written by {holder}: refusing to overwrite or replace it")]
    Busy {
        /// The file.
        path: PathBuf,
        /// Who holds it, as far as can be seen (`pid N (command line)`).
        holder: String,
    },
    /// The file could not be opened or locked before writing it.
    #[error("cannot lock {path:?} for writing: {source}")]
    Lock {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file being written was deleted (or its directory removed), moved or replaced:
    /// the frames written to it are lost.
    #[error("{path:?} was {how} while being written: the frames written to it are lost")]
    Vanished {
        /// The file, under the name it was written as.
        path: PathBuf,
        /// `deleted`, or `moved or replaced`.
        how: &'static str,
    },
    /// The temporary file could not be renamed to its final name.
    #[error("could not rename {from:?} to {to:?}: {source}")]
    Rename {
        /// The temporary name.
        from: PathBuf,
        /// The final name.
        to: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A rank file that cannot be part of the master being built (not a rank file, of
    /// another series, a second file of one rank, unreadable).
    #[error("rank file {path:?}: {reason}")]
    RankFile {
        /// The rank file.
        path: PathBuf,
        /// What is wrong with it, with the value.
        reason: String,
    },
    /// The HDF5 library failed.
    #[error("{path:?}: could not {what}: {source}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// HDF5's error stack.
        source: hdf5::Error,
    },
}
