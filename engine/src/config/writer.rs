//! `[writer]`: files, naming, compression, flushing and value references (NDPluginFile +
//! NDFileHDF5). The rules between these settings live here; the one between the write mode,
//! NumCapture and a reference pattern is the writer's own ([`detflow_writer::checked_write_mode`]),
//! which a capture checks again when it starts.

use std::path::{Path, PathBuf};

use clap::ArgAction;
use detflow_writer::{
    CaptureSettings, Codec, DataRoots, FileNaming, FileTemplate, RefPattern, WriteMode, WriterError,
};
use serde::{Deserialize, Serialize};

use super::value::{Seconds, text};
use super::{ConfigError, bad};

/// The files' codec as set: `auto`, or a codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CodecSetting {
    /// Frames are written in the encoding they arrive in: images a detector compressed
    /// (Stream V2 `bslz4`, `lz4`) as they came, with no decoding; other frames raw.
    #[default]
    Auto,
    /// Every frame is written with this codec (a compressed image is decoded first).
    Is(Codec),
}

impl CodecSetting {
    /// The codec for frames that arrive encoded with `arriving` ([`Codec::None`]: raw).
    pub fn resolve(self, arriving: Codec) -> Codec {
        match self {
            CodecSetting::Auto => arriving,
            CodecSetting::Is(c) => c,
        }
    }
}

impl From<Codec> for CodecSetting {
    fn from(c: Codec) -> Self {
        CodecSetting::Is(c)
    }
}

impl PartialEq<Codec> for CodecSetting {
    fn eq(&self, other: &Codec) -> bool {
        *self == CodecSetting::Is(*other)
    }
}

impl std::fmt::Display for CodecSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecSetting::Auto => f.write_str("auto"),
            CodecSetting::Is(c) => c.fmt(f),
        }
    }
}

impl std::str::FromStr for CodecSetting {
    type Err = detflow_writer::CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CodecSetting::Auto),
            codec => codec.parse().map(CodecSetting::Is),
        }
    }
}

/// The most a Capture-mode run may buffer in memory.
const CAPTURE_MEMORY_LIMIT: u128 = 8 << 30;

// The switches take no value and have no clap default (`ArgAction::Set` with `num_args = 0`
// rather than `SetTrue`, which defaults to false): a switch not given leaves the value the
// `--config` file set.

/// File settings (NDPluginFile + NDFileHDF5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct WriterSettings {
    /// Directory for the files (FilePath); must exist unless create-dirs is set. strftime
    /// codes such as %Y/%m/%d are expanded at start.
    #[arg(long, value_name = "DIR")]
    pub path: String,
    /// File base name (FileName).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// File number (FileNumber) of the first file.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub number: i32,
    /// Increment the file number after each file name is built (AutoIncrement); on by
    /// default.
    #[arg(
        id = "no_auto_increment", long = "no-auto-increment", action = ArgAction::Set,
        num_args = 0, default_missing_value = "false",
        help = "Keep the file number (AutoIncrement off)"
    )]
    pub auto_increment: bool,
    /// C-printf template taking path, name, number (FileTemplate).
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    #[serde(with = "text")]
    pub template: FileTemplate,
    /// Chunk codec: auto (images that arrive compressed, from a Stream V2 detector, are
    /// written as they came; other frames raw), none, `deflate[:LEVEL]` (HDF5 filter 1), lz4
    /// (32004), bslz4 and `bszstd[:LEVEL]` (bitshuffle, 32008), `zstd[:LEVEL]` (32015),
    /// `blosc[:COMPRESSOR[:LEVEL]]` (32001; lz4, lz4hc, blosclz, zlib, zstd). A codec other
    /// than auto decodes compressed images and encodes them again.
    #[arg(long, value_name = "CODEC")]
    #[serde(with = "text")]
    pub codec: CodecSetting,
    /// Compression worker threads, up to 256; 0: as many as this machine's cores can keep
    /// busy with this codec and frame size (`default_workers`: one per core on 2 cores).
    #[arg(long, value_name = "N")]
    pub workers: usize,
    /// File write mode (FileWriteMode): single (a file per frame), capture (buffer, then
    /// write), stream.
    #[arg(long, value_name = "MODE")]
    #[serde(with = "text")]
    pub write_mode: WriteMode,
    /// Frames to capture (NumCapture); unset: the frames acquired. Stream: 0 until stopped.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<u64>,
    /// Stream mode: start a new file every N frames; 0 never.
    #[arg(long, value_name = "N")]
    pub frames_per_file: u64,
    /// Stream mode: open the file when the first frame arrives (LazyOpen).
    #[arg(long, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub lazy_open: bool,
    /// Directory levels to create (CreateDirectory): D > 0 from component D on, -k at most
    /// the last k, 0 none.
    #[arg(long, value_name = "DEPTH", allow_negative_numbers = true)]
    pub create_dirs: i32,
    /// Write the file as NAME + S and rename it when closed (TempSuffix); empty for none.
    #[arg(long, value_name = "S")]
    pub temp_suffix: String,
    /// Replace an existing file of the same name (areaDetector always does; detflow refuses
    /// unless this is set).
    #[arg(long, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub overwrite: bool,
    /// SWMR: readers (h5py swmr=True) see the frames while the file is written, and a file
    /// whose writer was killed reads back up to the last flush. On by default
    /// (areaDetector's default is off).
    #[arg(
        id = "no_swmr", long = "no-swmr", action = ArgAction::Set, num_args = 0,
        default_missing_value = "false",
        help = "A plain HDF5 file, as areaDetector writes by default (no reader while it is \
                written; a killed writer's file still reads back up to about the last flush)"
    )]
    pub swmr: bool,
    /// Flush every N frames (NumFramesFlush); 0: not by count.
    #[arg(long, value_name = "N")]
    pub flush: u64,
    /// Flush at least every S seconds while frames wait; 0: not by time (then flush N, or
    /// no-flush).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub flush_interval: Seconds,
    /// Flush only when the file is closed: a writer killed mid-run leaves no frame readable.
    /// Warns at start; refused with a flush count or interval.
    #[arg(long, action = ArgAction::Set, num_args = 0, default_missing_value = "true")]
    pub no_flush: bool,
    /// Store the NDAttribute datasets (StoreAttr).
    #[arg(
        id = "no_attributes", long = "no-attributes", action = ArgAction::Set, num_args = 0,
        default_missing_value = "false",
        help = "Do not store the NDAttribute datasets (StoreAttr off)"
    )]
    pub attributes: bool,
    /// Store performance/timestamp (StorePerform).
    #[arg(
        id = "no_performance", long = "no-performance", action = ArgAction::Set, num_args = 0,
        default_missing_value = "false",
        help = "Do not store performance/timestamp (StorePerform off)"
    )]
    pub performance: bool,
    /// Write each frame's value reference (h5file URI, dtype, shape) to FILE as JSON lines,
    /// as the frames are written.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refs: Option<PathBuf>,
    /// Name files from a value-reference pattern instead of the template: one file per point,
    /// e.g. 'h5file:///data/scan_{index:04d}.h5' ({index} is the file number).
    #[arg(long, value_name = "P")]
    #[serde(
        with = "text::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub ref_pattern: Option<RefPattern>,
    /// At the end, write a master file whose virtual dataset (frames, H, W) stitches every
    /// frame written.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vds: Option<PathBuf>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            path: ".".into(),
            name: "detflow".into(),
            number: 1,
            auto_increment: true,
            template: FileTemplate::default(),
            codec: CodecSetting::Auto,
            workers: 0,
            write_mode: WriteMode::Stream,
            capture: None,
            frames_per_file: 0,
            lazy_open: false,
            create_dirs: 0,
            temp_suffix: String::new(),
            overwrite: false,
            swmr: true,
            flush: 0,
            flush_interval: Seconds::new(1.0).expect("1 s is a duration"),
            no_flush: false,
            attributes: true,
            performance: true,
            refs: None,
            ref_pattern: None,
            vds: None,
        }
    }
}

impl WriterSettings {
    /// The rules of this section alone: the name, counts, flushing and the output files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.contains('/') || self.name.contains('\0') {
            return Err(bad(
                "name",
                &self.name,
                "a file name cannot contain '/' or NUL",
            ));
        }
        self.check_workers()?;
        self.check_number()?;
        self.check_flushing()?;
        if self.temp_suffix.contains('/') {
            return Err(bad(
                "temp-suffix",
                &self.temp_suffix,
                "a suffix cannot contain '/'",
            ));
        }
        if let Some(refs) = &self.refs {
            check_output_file("refs", refs)?;
        }
        if let Some(vds) = &self.vds {
            check_output_file("vds", vds)?;
            if !self.overwrite && vds.exists() {
                return Err(bad(
                    "vds",
                    vds.display(),
                    "the file exists; give another name, or --overwrite",
                ));
            }
        }
        Ok(())
    }

    /// The first file number: 0 or more.
    pub fn check_number(&self) -> Result<(), ConfigError> {
        if self.number < 0 {
            return Err(bad("number", self.number, "file numbers start at 0"));
        }
        Ok(())
    }

    /// The compressor pool's size: 0 (chosen by [`default_workers`]) to 256.
    pub fn check_workers(&self) -> Result<(), ConfigError> {
        if self.workers > 256 {
            return Err(bad(
                "workers",
                self.workers,
                "expected 0 (automatic) to 256",
            ));
        }
        Ok(())
    }

    /// The capture these settings describe, of `num_capture` frames in `mode`, writing under
    /// `roots`: what `detflow acquire` writes (after [`super::Config::validate`]), and what the
    /// daemon's `Capture = 1` opens. The writer checks the directory and the first file again
    /// as it opens them.
    pub fn capture_settings(
        &self,
        mode: WriteMode,
        num_capture: u64,
        roots: DataRoots,
    ) -> CaptureSettings {
        CaptureSettings {
            mode,
            num_capture,
            frames_per_file: self.frames_per_file,
            lazy_open: self.lazy_open,
            naming: self.file_naming(),
            create_dirs: self.create_dirs,
            temp_suffix: self.temp_suffix.clone(),
            overwrite: self.overwrite,
            codec: self.codec.resolve(Codec::None),
            swmr: self.swmr,
            flush_every: self.flush,
            flush_interval: (!self.flush_interval.is_zero())
                .then(|| self.flush_interval.duration()),
            store_attributes: self.attributes,
            store_performance: self.performance,
            refs: self.refs.as_deref().map(super::absolute),
            ref_pattern: self.ref_pattern.clone(),
            roots,
        }
    }

    /// The file naming: path, name, number, auto-increment, template.
    fn file_naming(&self) -> FileNaming {
        FileNaming {
            path: self.path.clone(),
            name: self.name.clone(),
            number: self.number,
            auto_increment: self.auto_increment,
            template: self.template.clone(),
        }
    }

    /// A run that is never flushed before its file is closed loses every frame when the
    /// writer is killed: refuse that unless asked for by name (`no_flush`), and refuse
    /// `no_flush` with a flush setting that contradicts it.
    pub fn check_flushing(&self) -> Result<(), ConfigError> {
        match (self.no_flush, self.flush, !self.flush_interval.is_zero()) {
            (false, 0, false) => Err(bad(
                "flush-interval",
                self.flush_interval,
                "with flush 0 too, nothing is flushed before the file is closed, so a writer \
                 killed mid-run keeps no frame: give --flush-interval S or --flush N (TOML: \
                 flush_interval, flush), or --no-flush (TOML: no_flush = true) to write that \
                 way on purpose",
            )),
            (true, n, _) if n > 0 => Err(bad(
                "flush",
                n,
                "--no-flush (TOML: no_flush) flushes only at close: give one or the other",
            )),
            (true, _, true) => Err(bad(
                "flush-interval",
                self.flush_interval,
                "--no-flush (TOML: no_flush) flushes only at close: set flush_interval = 0 \
                 with it, or drop no_flush",
            )),
            _ => Ok(()),
        }
    }

    /// The write mode the capture runs in (Single with a reference pattern), and the
    /// pattern's own rules: one file per point needs `{index}` and AutoIncrement when more
    /// than one frame is asked for, in a directory that exists, over no existing file.
    pub fn write_mode_for(&self, frames: u64, num_capture: u64) -> Result<WriteMode, ConfigError> {
        let mode = detflow_writer::checked_write_mode(
            self.write_mode,
            num_capture,
            self.ref_pattern.as_ref(),
        )
        .map_err(setting_error)?;
        let Some(pattern) = &self.ref_pattern else {
            return Ok(mode);
        };
        let refuse = |reason: String| bad("ref-pattern", pattern, reason);
        if frames != 1 && !(pattern.has_index() && self.auto_increment) {
            return Err(refuse(
                "every point needs its own file: put {index} in the pattern, with \
                 auto-increment on"
                    .into(),
            ));
        }
        let first = pattern.value_ref(self.number.max(0) as u64);
        let first = first.path();
        if self.create_dirs == 0 && !first.parent().is_some_and(Path::is_dir) {
            return Err(refuse(format!("the directory of {first:?} does not exist")));
        }
        if !self.overwrite && first.exists() {
            return Err(refuse(format!(
                "the file {first:?} exists; give another --number, or --overwrite"
            )));
        }
        Ok(mode)
    }

    /// Capture mode buffers every frame of the capture in memory: refuse more than 8 GiB.
    pub fn check_capture_memory(
        mode: WriteMode,
        num_capture: u64,
        frame_bytes: usize,
    ) -> Result<(), ConfigError> {
        let need = num_capture as u128 * frame_bytes as u128;
        if mode == WriteMode::Capture && need > CAPTURE_MEMORY_LIMIT {
            return Err(bad(
                "capture",
                num_capture,
                format!(
                    "Capture mode would buffer {} MiB; the limit is {} MiB (use stream)",
                    need >> 20,
                    CAPTURE_MEMORY_LIMIT >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Check the first file now: the directory exists (unless it is to be created at start),
    /// the template builds a file name there, and no file of that name exists unless
    /// overwriting (Capture mode writes only at the end, so it is checked then). A reference
    /// pattern names the files instead, checked by [`WriterSettings::write_mode_for`].
    pub fn check_first_file(&self, mode: WriteMode) -> Result<(), ConfigError> {
        let naming = self.file_naming();
        // strftime codes expanded as they will be at start.
        let expanded =
            detflow_writer::naming::expand_path_time(&self.path, std::time::SystemTime::now())
                .map_err(|e| bad("path", &self.path, e.reason))?;
        if self.ref_pattern.is_some() {
            return Ok(());
        }
        if self.create_dirs == 0 {
            let dir = if expanded.is_empty() { "." } else { &expanded };
            detflow_writer::check_directory(Path::new(dir), "path").map_err(|e| match e {
                WriterError::BadDirectory { reason, .. } => bad("path", &self.path, reason),
                other => bad("path", &self.path, other),
            })?;
        }
        let first = FileNaming {
            path: expanded,
            ..naming.clone()
        }
        .peek_name();
        let refuse = |reason: String| bad("template", &self.template, reason);
        if first.file_name().is_none() || first.as_os_str().to_string_lossy().ends_with('/') {
            return Err(refuse(format!(
                "it builds {first:?}, which is not a file name"
            )));
        }
        if self.create_dirs == 0 {
            if let Some(parent) = first.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(refuse(format!(
                        "it builds {first:?}, whose directory {parent:?} does not exist"
                    )));
                }
            }
        }
        if !self.overwrite && mode != WriteMode::Capture && first.exists() {
            return Err(bad(
                "number",
                self.number,
                format!(
                    "the file {first:?} exists; give another --number or --name, or --overwrite"
                ),
            ));
        }
        Ok(())
    }
}

/// The writer's refusal of a setting, as a [`ConfigError`].
fn setting_error(e: WriterError) -> ConfigError {
    match e {
        WriterError::Setting {
            setting,
            value,
            reason,
        } => bad(setting, value, reason),
        other => bad("write-mode", "", other),
    }
}

/// Refuse an output file (`refs`, `vds`) whose directory does not exist.
fn check_output_file(setting: &'static str, path: &Path) -> Result<(), ConfigError> {
    let shown = path.display();
    if path.as_os_str().is_empty() || path.as_os_str().to_string_lossy().ends_with('/') {
        return Err(bad(setting, shown, "expected a file name"));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(bad(
            setting,
            shown,
            format!("its directory {dir:?} does not exist"),
        ));
    }
    if path.is_dir() {
        return Err(bad(setting, shown, "is a directory"));
    }
    Ok(())
}

/// The compression workers a run gets when `workers = 0`: the share of the cores the codec
/// keeps busy. A frame costs the codec's time, on a worker, and the rest of the pipeline's (the
/// detector's copy-in, the writer's HDF5 call and the kernel's copy to the page cache) on other
/// threads; with every core busy, workers = cores x codec / (codec + rest), rounded up, and at
/// least one. The costs are per byte, measured with `detflow bench` on 1024x1024 u16 frames
/// (Intel Sapphire Rapids, 2 cores; see the README's Performance section), plus a fixed cost
/// per frame that makes small frames lean on the writer. On 2 cores every codec gets 2 workers
/// (the bench's scaling curve: 1 worker is slower for every codec); on 16 cores bslz4 gets 12.
pub fn default_workers(cores: usize, codec: Codec, frame_bytes: usize) -> usize {
    // Nanoseconds per frame byte on one core, in memory.
    let codec_ns_per_byte = match codec {
        // No pool runs for `none` (the writer writes the ring slots), unless the codec may
        // change while the run goes on (the daemon's file plugin): then one per core, for
        // whichever codec comes.
        Codec::None => return cores.max(1),
        Codec::BitshuffleLz4 => 0.66,
        Codec::Blosc { .. } => 1.2,
        Codec::Lz4 => 1.8,
        Codec::BitshuffleZstd { .. } => 2.1,
        Codec::Deflate { .. } | Codec::Zstd { .. } => 5.0,
    };
    // The rest of the pipeline: per byte (copy-in, page cache) and per frame (HDF5, hand-offs).
    let (rest_ns_per_byte, rest_ns_per_frame) = (0.29, 20_000.0);
    let b = frame_bytes as f64;
    let encode = codec_ns_per_byte * b;
    let rest = rest_ns_per_byte * b + rest_ns_per_frame;
    let share = encode / (encode + rest);
    ((cores as f64 * share).ceil() as usize).clamp(1, cores.max(1))
}
