//! `detflow bench`: frame rate of the whole pipeline, next to this machine's limits.
//!
//! For each codec and pixel type it runs a real acquisition (simulated detector, ring,
//! compression, HDF5 file on disk, file closed) and measures, in the same run, the two limits
//! that bound it: a plain sequential write of the same number of bytes to the same directory,
//! and the codec's single-thread throughput in memory on a frame of the same kind. The table
//! shows our frame rate as a fraction of those limits.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use detflow_hal::{
    AcquisitionConfig, ColorMode, Detector, FrameShape, FrameSource, ImageMode, PixelType, Roi,
    SensorInfo,
};
use detflow_sim::{SimConfig, SimDetector, SimMode};
use detflow_writer::Codec;
use serde::Serialize;

use detflow_engine::Acquisition;
use detflow_engine::backend::cycle::FrameCycle;
use detflow_engine::config::{Config, FrameSize};

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Codecs to run, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "none,deflate:1,lz4,bslz4,bszstd,zstd,blosc"
    )]
    codecs: String,
    /// Pixel types to run, comma-separated.
    #[arg(long, value_name = "LIST", default_value = "u16,u8")]
    dtype: String,
    /// Frame size.
    #[arg(long, value_name = "WxH", default_value = "1024x1024")]
    size: String,
    /// Frames per run.
    #[arg(long, value_name = "N", default_value_t = 300)]
    frames: u64,
    /// Directory for the files (each is removed after its run). [default: the temp dir]
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// Compression workers; 0: one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
    /// Print a JSON array, one object per run, instead of the table.
    #[arg(long)]
    json: bool,
    /// Runs per codec and dtype (each beside its own raw-write measurement); the table shows
    /// medians.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeat: usize,
    /// A Python interpreter with h5py and hdf5plugin: also run the plain h5py writer
    /// (benches/h5py_writer.py) on the same frames, side by side.
    #[arg(long, value_name = "PYTHON")]
    compare_h5py: Option<PathBuf>,
}

pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.path.clone().unwrap_or_else(std::env::temp_dir);
    let mut plan = plan(
        &args.codecs,
        &args.dtype,
        &args.size,
        args.frames,
        dir,
        args.workers,
    )?;
    plan.compare_h5py.clone_from(&args.compare_h5py);
    plan.repeat = args.repeat.max(1);
    if !args.json {
        println!(
            "{} frames of {}x{} per run, {} workers, files in {}",
            plan.frames,
            plan.size.0,
            plan.size.1,
            if plan.workers == 0 {
                "one per core".to_string()
            } else {
                plan.workers.to_string()
            },
            plan.dir.display()
        );
        println!("{}", header());
    }
    let rows = run(&plan, |row| {
        if !args.json {
            println!("{}", line(row));
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "raw fps: plain sequential write of the same bytes, same directory, closed; \
             codec fps/t: the codec on one core in memory; of bound: fps / (workers x codec fps/t)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Codecs, as `--codec` spells them.
    pub codecs: Vec<String>,
    /// Pixel types.
    pub dtypes: Vec<PixelType>,
    /// Frame size.
    pub size: (u32, u32),
    /// Frames per run.
    pub frames: u64,
    /// Directory the files go to (removed after each run).
    pub dir: PathBuf,
    /// Compression workers (0: one per core).
    pub workers: usize,
    /// A Python with h5py and hdf5plugin: run `benches/h5py_writer.py` on the same frames.
    pub compare_h5py: Option<PathBuf>,
    /// Runs per (codec, dtype), each with its own raw-write measurement; the table shows
    /// medians.
    pub repeat: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The comparison writer, carried in the binary so `detflow bench` runs from anywhere.
const H5PY_WRITER: &str = include_str!("../benches/h5py_writer.py");

/// The h5py filter that stores what `codec` stores.
fn h5py_filter(codec: Codec) -> Option<&'static str> {
    Some(match codec.to_string().as_str() {
        "none" => "none",
        "deflate:1" => "gzip-1",
        "deflate:6" => "gzip-6",
        "lz4" => "lz4",
        "bslz4" => "bslz4",
        s if s.starts_with("zstd") => "zstd",
        s if s.starts_with("blosc") => "blosc-lz4",
        _ => return None,
    })
}

/// Frames per second of the h5py writer for each filter, on the frames of `source`.
fn h5py_rates(
    python: &Path,
    source: &Path,
    dir: &Path,
    frames: u64,
    filters: &[&str],
) -> anyhow::Result<Vec<(String, f64)>> {
    let script = dir.join(format!(".detflow-h5py-writer-{}.py", std::process::id()));
    std::fs::write(&script, H5PY_WRITER)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(source)
        .arg(dir)
        .arg(frames.to_string())
        .arg(filters.join(","))
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        anyhow::bail!(
            "the h5py writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((
                v["filter"].as_str().unwrap_or_default().to_owned(),
                v["fps"].as_f64().unwrap_or(0.0),
            ))
        })
        .collect()
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Codec.
    pub codec: String,
    /// Pixel type.
    pub dtype: String,
    /// Frames written.
    pub frames: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames per second, file closed (median of the runs).
    pub fps: f64,
    /// Every run's frames per second.
    pub fps_runs: Vec<f64>,
    /// Uncompressed MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Uncompressed bytes / bytes on disk of the chunks.
    pub ratio: f64,
    /// Process CPU time / (wall time x cores), 0..1.
    pub cpu_utilisation: f64,
    /// A plain sequential write of the same bytes to the same directory, file closed, frames
    /// per second: the better of one just before and one just after the run.
    pub raw_write_fps: f64,
    /// The codec on one core in memory, frames per second (for `none`: a memcpy).
    pub codec_fps_1thread: f64,
    /// Compression workers the pipeline ran with.
    pub workers: usize,
    /// `fps / raw_write_fps`.
    pub of_raw_write: f64,
    /// `fps / (workers x codec_fps_1thread)`, the compression bound.
    pub of_compression_bound: f64,
    /// The plain h5py + hdf5plugin writer with the same filter on the same frames, frames
    /// per second (with `--compare-h5py`).
    pub h5py_fps: Option<f64>,
    /// `fps / h5py_fps`.
    pub vs_h5py: Option<f64>,
}

fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data that getrusage fills; RUSAGE_SELF takes no pointer
    // besides it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A few frames the simulator makes for these settings (the same kind the pipeline writes).
fn sample_frames(
    size: (u32, u32),
    pixel_type: PixelType,
    n: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut det = SimDetector::new(SimConfig {
        max_width: size.0,
        max_height: size.1,
        seed: 1,
        params: detflow_sim::SimParams::demo(SimMode::Peaks, size, pixel_type),
    })?;
    let shape = det.configure(&AcquisitionConfig {
        roi: Roi::full(size.0, size.1),
        pixel_type,
        exposure: Duration::ZERO,
        period: Duration::ZERO,
        image_mode: ImageMode::Multiple,
        num_images: n as u32,
        ..AcquisitionConfig::default()
    })?;
    det.start()?;
    (0..n)
        .map(|_| {
            let mut buf = vec![0u8; shape.bytes()];
            det.read_frame(&mut buf, Duration::from_secs(5))?;
            Ok(buf)
        })
        .collect()
}

/// Frames per second of `codec` on one thread, in memory, over about half a second.
fn codec_rate(codec: Codec, pixel_type: PixelType, frames: &[Vec<u8>]) -> f64 {
    let mut c = codec.compressor(pixel_type);
    let mut out = Vec::new();
    let mut n = 0u64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) || n < 3 {
        let f = &frames[n as usize % frames.len()];
        if codec == Codec::None {
            out.clear();
            out.extend_from_slice(f);
        } else {
            c.compress(f, &mut out);
        }
        std::hint::black_box(&out);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Write back every dirty page of the file system holding `dir`, so each measurement starts
/// from the same state (the time this takes is not measured).
fn settle(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: syncfs takes an open descriptor and no pointers.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// Frames per second of a plain sequential write of `frames` frames to a file in `dir`,
/// closed, as the h5py baseline measures (no fsync). The frames are taken in turn from
/// `source`, distinct buffers as large as the ring, so they come from memory as the
/// pipeline's do, not from a cache-hot single buffer.
fn raw_write_rate(dir: &Path, source: &[Vec<u8>], frames: u64) -> anyhow::Result<f64> {
    let path = dir.join(format!(".detflow-bench-raw-{}", std::process::id()));
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).with_context(|| format!("cannot write {path:?}"))?;
    for k in 0..frames as usize {
        f.write_all(&source[k % source.len()])?;
    }
    drop(f);
    let rate = frames as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Run every (codec, dtype) pair of the plan.
pub fn run(plan: &BenchPlan, mut progress: impl FnMut(&BenchRow)) -> anyhow::Result<Vec<BenchRow>> {
    let workers = if plan.workers == 0 {
        cores()
    } else {
        plan.workers
    };
    let mut rows = Vec::new();
    for &pixel_type in &plan.dtypes {
        // Distinct frames (noise and peak heights vary), enough that compressors see variety.
        let samples = sample_frames(plan.size, pixel_type, 16)?;
        // As many distinct buffers as the pipeline's ring has slots, for the raw write.
        let ring_slots = detflow_engine::config::auto_slots(samples[0].len());
        let raw_source: Vec<Vec<u8>> = (0..ring_slots)
            .map(|k| samples[k % samples.len()].clone())
            .collect();
        let h5py = match &plan.compare_h5py {
            None => Vec::new(),
            Some(python) => {
                // The same frames the pipeline writes: a detflow file, uncompressed.
                let mut cfg = Config::default();
                cfg.detector.size = FrameSize::new(plan.size.0, plan.size.1)?;
                cfg.detector.dtype = pixel_type;
                cfg.detector.frames = plan.frames.min(64);
                cfg.writer.path = plan.dir.to_string_lossy().into_owned();
                cfg.writer.name = format!(".bench_source_{}", pixel_type);
                cfg.writer.overwrite = true;
                let mut source = Acquisition::builder(cfg).start()?;
                source.wait();
                let source = source.summary().status;
                let filters: Vec<&str> = plan
                    .codecs
                    .iter()
                    .filter_map(|c| c.parse::<Codec>().ok().and_then(h5py_filter))
                    .collect();
                let rates = h5py_rates(python, &source.files[0], &plan.dir, plan.frames, &filters);
                let _ = std::fs::remove_file(&source.files[0]);
                rates?
            }
        };
        for codec_name in &plan.codecs {
            let codec: Codec = codec_name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut cfg = Config::default();
            cfg.detector.size = FrameSize::new(plan.size.0, plan.size.1)?;
            cfg.detector.dtype = pixel_type;
            cfg.detector.frames = plan.frames;
            cfg.writer.path = plan.dir.to_string_lossy().into_owned();
            cfg.writer.name = format!("bench_{}_{}", pixel_type, codec_name.replace(':', "_"));
            cfg.writer.codec = codec;
            cfg.writer.overwrite = true;
            cfg.writer.auto_increment = false;
            cfg.writer.workers = plan.workers;
            cfg.validate()?;
            // Frames made beforehand and cycled, as a detector hands over finished frames:
            // the pipeline is measured, not the simulator's arithmetic.
            let shape = FrameShape {
                width: plan.size.0,
                height: plan.size.1,
                pixel_type,
                color_mode: ColorMode::Mono,
            };
            let info = SensorInfo {
                manufacturer: heapless::String::try_from("detflow").unwrap_or_default(),
                model: heapless::String::try_from("bench frame cycle").unwrap_or_default(),
                max_width: plan.size.0,
                max_height: plan.size.1,
                pixel_types: heapless::Vec::from_slice(&[pixel_type]).unwrap_or_default(),
            };
            let mut runs = Vec::new();
            let mut raws = Vec::new();
            let mut last = None;
            let mut cpu_share = Vec::new();
            for _ in 0..plan.repeat.max(1) {
                // The raw-write limit, measured just before and just after each run (the
                // better of the two counts: the disk is shared and its speed swings).
                settle(&plan.dir);
                let raw_before = raw_write_rate(&plan.dir, &raw_source, plan.frames)?;
                settle(&plan.dir);
                let detector = Box::new(FrameCycle::new(samples.clone(), shape, info.clone()));
                let cpu0 = cpu_seconds();
                let wall = Instant::now();
                let mut run = Acquisition::builder(cfg.clone())
                    .backend(detector)
                    .start()?;
                run.wait();
                let summary = run.summary();
                let wall = wall.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - cpu0;
                if let Some(e) = &summary.error {
                    anyhow::bail!("{codec_name} {pixel_type}: {e}");
                }
                for f in &summary.status.files {
                    let _ = std::fs::remove_file(f);
                }
                settle(&plan.dir);
                let raw_after = raw_write_rate(&plan.dir, &raw_source, plan.frames)?;
                runs.push(summary.status.frames_written as f64 / wall);
                raws.push(raw_before.max(raw_after));
                cpu_share.push(cpu / (wall * cores() as f64));
                last = Some((summary, wall));
            }
            let (summary, _) = last.expect("at least one run");
            let summary = summary.status;
            let fps = median(runs.clone());
            let raw_write_fps = median(raws);
            let codec_fps_1thread = codec_rate(codec, pixel_type, &samples);
            let row = BenchRow {
                codec: codec.to_string(),
                dtype: pixel_type.name().into(),
                frames: summary.frames_written,
                dropped: summary.frames_dropped,
                fps,
                fps_runs: runs,
                mb_per_s: fps * shape.bytes() as f64 / 1e6,
                ratio: if summary.compressed_bytes > 0 {
                    summary.raw_bytes as f64 / summary.compressed_bytes as f64
                } else {
                    0.0
                },
                cpu_utilisation: median(cpu_share),
                raw_write_fps,
                codec_fps_1thread,
                workers,
                of_raw_write: fps / raw_write_fps,
                of_compression_bound: fps / (workers as f64 * codec_fps_1thread),
                h5py_fps: None,
                vs_h5py: None,
            };
            let mut row = row;
            if let Some(filter) = h5py_filter(codec) {
                if let Some((_, rate)) = h5py.iter().find(|(f, _)| f == filter) {
                    row.h5py_fps = Some(*rate);
                    row.vs_h5py = Some(fps / rate);
                }
            }
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The plan from the command line's strings (one run each, no h5py comparison: set
/// [`BenchPlan::repeat`] and [`BenchPlan::compare_h5py`] after).
pub fn plan(
    codecs: &str,
    dtypes: &str,
    size: &str,
    frames: u64,
    dir: PathBuf,
    workers: usize,
) -> anyhow::Result<BenchPlan> {
    let codecs: Vec<String> = codecs
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for c in &codecs {
        c.parse::<Codec>()
            .map_err(|e| anyhow::anyhow!("invalid --codecs: {e}"))?;
    }
    let dtypes = dtypes
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<PixelType>()
                .map_err(|e| anyhow::anyhow!("invalid --dtype {s:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let size = size
        .parse::<FrameSize>()
        .map_err(|e| anyhow::anyhow!("invalid --size {size:?}: {e}"))?
        .pair();
    if frames == 0 {
        anyhow::bail!("invalid --frames 0: a bench needs at least one frame");
    }
    detflow_writer::check_directory(&dir, "path")?;
    Ok(BenchPlan {
        codecs,
        dtypes,
        size,
        frames,
        dir,
        workers,
        compare_h5py: None,
        repeat: 1,
    })
}

/// The table header line.
pub fn header() -> String {
    format!(
        "{:<16} {:>5} {:>6} {:>8} {:>8} {:>6} {:>5} {:>4} | {:>9} {:>7} | {:>11} {:>8} | {:>8} {:>6}",
        "codec",
        "dtype",
        "frames",
        "fps",
        "MB/s",
        "ratio",
        "cpu",
        "drop",
        "raw fps",
        "of raw",
        "codec fps/t",
        "of bound",
        "h5py fps",
        "x h5py"
    )
}

/// One table line.
pub fn line(r: &BenchRow) -> String {
    format!(
        "{:<16} {:>5} {:>6} {:>8.1} {:>8.1} {:>6.2} {:>4.0}% {:>4} | {:>9.1} {:>6.0}% | {:>11.1} {:>7.0}% | {:>8} {:>6}",
        r.codec,
        r.dtype,
        r.frames,
        r.fps,
        r.mb_per_s,
        r.ratio,
        100.0 * r.cpu_utilisation,
        r.dropped,
        r.raw_write_fps,
        100.0 * r.of_raw_write,
        r.codec_fps_1thread,
        100.0 * r.of_compression_bound,
        r.h5py_fps.map_or("-".into(), |v| format!("{v:.1}")),
        r.vs_h5py.map_or("-".into(), |v| format!("{v:.2}")),
    )
}
