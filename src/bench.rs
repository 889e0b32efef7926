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

mod cpu;
mod plot;
mod stream2;

pub use cpu::CpuBreakdown;

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
    /// Compression workers; 0: the engine's default for each codec (the table says which).
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
    /// Print a JSON array, one object per row, instead of the table.
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
    /// Also run each codec with 1, 2, ... up to one compression worker per core, and print
    /// the frame rate of each count (the scaling curve; `--repeat` runs each).
    #[arg(long)]
    scaling: bool,
    /// Draw the results into this PNG file: per codec, our frame rate beside the compression
    /// bound, the raw write and the h5py writer.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Size of the `--plot` image, in pixels.
    #[arg(
        long,
        value_name = "WxH",
        default_value = "1200x700",
        requires = "plot"
    )]
    plot_size: String,
    /// Instead of the codec table: a Stream V2 series (bslz4, one channel, --frames images of
    /// --size, the first --dtype) over loopback into the receiver, written with each codec of
    /// this list (`auto`: as it came), each beside a plain write of the same compressed bytes.
    #[arg(long, value_name = "LIST", num_args = 0..=1, default_missing_value = "auto,lz4")]
    stream2: Option<String>,
}

pub(crate) fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.path.clone().unwrap_or_else(std::env::temp_dir);
    if let Some(codecs) = &args.stream2 {
        return bench_stream2(args, &dir, codecs);
    }
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
    plan.scaling = args.scaling;
    // A plot that cannot be written is refused before any run.
    let plot = match &args.plot {
        Some(path) => Some(plot::Target::check(path, &args.plot_size)?),
        None => None,
    };
    if !args.json {
        println!(
            "{} frames of {}x{} per run, {}, files in {}",
            plan.frames,
            plan.size.0,
            plan.size.1,
            if plan.workers == 0 {
                "workers: the engine's default (each row says how many)".to_string()
            } else {
                format!("{} workers", plan.workers)
            },
            plan.dir.display()
        );
        println!("{}", header());
    }
    let rows = run(&plan, |row| {
        if !args.json {
            println!("{}", line(row));
            println!("{}", cpu_line(row));
            if let Some(points) = &row.scaling {
                println!("{}", scaling_line(points));
            }
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "raw fps: plain sequential write of the same bytes, same directory, closed; \
             codec fps/t: the codec on one core in memory, frames in cache (cold: {} distinct \
             frames, as many as the ring has slots); of bound: fps / (workers x codec fps/t); \
             cpu: ms of CPU per frame by thread, busy: CPU time / wall time",
            detflow_engine::config::auto_slots(
                plan.size.0 as usize * plan.size.1 as usize * plan.dtypes[0].size()
            )
        );
    }
    if let Some(plot) = plot {
        plot.draw(&plan, &rows)?;
        if !args.json {
            println!("plot: {}", plot.path().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--stream2`: the receiver with each codec, `--repeat` times interleaved; each run's line,
/// then the medians.
fn bench_stream2(args: &BenchArgs, dir: &Path, codecs: &str) -> anyhow::Result<ExitCode> {
    let plan = plan(
        "none",
        &args.dtype,
        &args.size,
        args.frames,
        dir.to_owned(),
        0,
    )?;
    let pixel_type = plan.dtypes[0];
    let series = stream2::Series2::prepare(plan.size, pixel_type, plan.frames)?;
    let codecs: Vec<&str> = codecs.split(',').map(str::trim).collect();
    if !args.json {
        println!(
            "Stream V2 over tcp loopback: {} images of {}x{} {pixel_type}, bslz4, files in {}",
            plan.frames,
            plan.size.0,
            plan.size.1,
            dir.display()
        );
    }
    let mut rows: Vec<Vec<stream2::Stream2Row>> = vec![Vec::new(); codecs.len()];
    for _ in 0..args.repeat.max(1) {
        for (k, codec) in codecs.iter().enumerate() {
            let row = series.measure(dir, codec)?;
            if !args.json {
                println!("{}", stream2::line(&row));
            }
            rows[k].push(row);
        }
    }
    let medians: Vec<stream2::Stream2Row> = rows
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
            runs.swap_remove(runs.len() / 2)
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&medians)?);
    } else {
        println!("medians (the run of median fps):");
        for r in &medians {
            println!("{}", stream2::line(r));
        }
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
    /// Also run each codec with 1..=cores workers (the scaling curve).
    pub scaling: bool,
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
    /// The codec on one core over as many distinct frames as the ring has slots, which do
    /// not fit the caches, frames per second. The bound keeps using the in-cache figure.
    pub codec_fps_1thread_cold: f64,
    /// CPU time per frame of each pipeline thread, and each one's busy share of the wall time
    /// (medians of the runs).
    pub cpu: CpuBreakdown,
    /// With `--scaling`: frames per second for 1..=cores compression workers (empty for
    /// `none`, which runs none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Vec<ScalePoint>>,
}

/// One point of the workers scaling curve.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ScalePoint {
    /// Compression workers.
    pub workers: usize,
    /// Frames per second, file closed (median of the runs).
    pub fps: f64,
}

/// CPU time of this process so far (every thread, user and system), in seconds.
pub(crate) fn cpu_seconds() -> f64 {
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

/// What every run of one pixel type shares: the frames, and the h5py writer's rates on them.
struct DtypeSetup {
    pixel_type: PixelType,
    shape: FrameShape,
    info: SensorInfo,
    /// Distinct frames (noise and peak heights vary), enough that compressors see variety:
    /// the pipeline cycles through them, and the in-cache codec figure too.
    samples: Vec<Vec<u8>>,
    /// As many distinct buffers as the pipeline's ring has slots: the raw write and the cold
    /// codec figure read them in turn, so they come from memory as the ring's do.
    ring_sized: Vec<Vec<u8>>,
    /// The h5py writer's frames per second, by filter.
    h5py: Vec<(String, f64)>,
}

impl DtypeSetup {
    fn prepare(plan: &BenchPlan, pixel_type: PixelType) -> anyhow::Result<DtypeSetup> {
        let samples = sample_frames(plan.size, pixel_type, 16)?;
        let ring_slots = detflow_engine::config::auto_slots(samples[0].len());
        let ring_sized = (0..ring_slots)
            .map(|k| samples[k % samples.len()].clone())
            .collect();
        let h5py = match &plan.compare_h5py {
            None => Vec::new(),
            Some(python) => h5py_on_source(plan, pixel_type, python)?,
        };
        Ok(DtypeSetup {
            pixel_type,
            shape: FrameShape {
                width: plan.size.0,
                height: plan.size.1,
                pixel_type,
                color_mode: ColorMode::Mono,
            },
            info: SensorInfo {
                manufacturer: heapless::String::try_from("detflow").unwrap_or_default(),
                model: heapless::String::try_from("bench frame cycle").unwrap_or_default(),
                max_width: plan.size.0,
                max_height: plan.size.1,
                pixel_types: heapless::Vec::from_slice(&[pixel_type]).unwrap_or_default(),
            },
            samples,
            ring_sized,
            h5py,
        })
    }
}

/// The h5py writer's rates on the frames the pipeline writes (a detflow file, uncompressed).
fn h5py_on_source(
    plan: &BenchPlan,
    pixel_type: PixelType,
    python: &Path,
) -> anyhow::Result<Vec<(String, f64)>> {
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
    rates
}

/// The settings of one pipeline run of `codec_name` with `workers` (0: the engine's default).
fn bench_config(
    plan: &BenchPlan,
    pixel_type: PixelType,
    codec_name: &str,
    workers: usize,
) -> anyhow::Result<Config> {
    let mut cfg = Config::default();
    cfg.detector.size = FrameSize::new(plan.size.0, plan.size.1)?;
    cfg.detector.dtype = pixel_type;
    cfg.detector.frames = plan.frames;
    cfg.writer.path = plan.dir.to_string_lossy().into_owned();
    cfg.writer.name = format!("bench_{}_{}", pixel_type, codec_name.replace(':', "_"));
    cfg.writer.codec = codec_name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.writer.overwrite = true;
    cfg.writer.auto_increment = false;
    cfg.writer.workers = workers;
    Ok(cfg)
}

/// One pipeline run's figures.
struct RunFigures {
    fps: f64,
    /// Process CPU time / (wall time x cores).
    cpu_share: f64,
    cpu: CpuBreakdown,
    /// Compression workers the run had (0: zero copy).
    workers: usize,
    status: detflow_engine::Status,
}

/// One acquisition of `cfg` from frames made beforehand and cycled, as a detector hands over
/// finished frames: the pipeline is measured, not the simulator's arithmetic. The files are
/// removed after.
fn pipeline_run(setup: &DtypeSetup, cfg: &Config) -> anyhow::Result<RunFigures> {
    let detector = Box::new(FrameCycle::new(
        setup.samples.clone(),
        setup.shape,
        setup.info.clone(),
    ));
    let cpu0 = cpu_seconds();
    let wall = Instant::now();
    let mut run = Acquisition::builder(cfg.clone())
        .backend(detector)
        .start()?;
    run.wait();
    let summary = run.summary();
    let wall = wall.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    let written = summary.status.frames_written;
    let cpu = CpuBreakdown::of(&summary.threads, cpu_s, written, wall);
    for f in &summary.status.files {
        let _ = std::fs::remove_file(f);
    }
    if let Some(e) = &summary.error {
        anyhow::bail!("{} {}: {e}", cfg.writer.codec, setup.pixel_type);
    }
    Ok(RunFigures {
        fps: written as f64 / wall,
        cpu_share: cpu_s / (wall * cores() as f64),
        cpu,
        workers: summary.threads.workers,
        status: summary.status,
    })
}

/// Run every (codec, dtype) pair of the plan.
pub fn run(plan: &BenchPlan, mut progress: impl FnMut(&BenchRow)) -> anyhow::Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &pixel_type in &plan.dtypes {
        let setup = DtypeSetup::prepare(plan, pixel_type)?;
        for codec_name in &plan.codecs {
            let row = measure_codec(plan, &setup, codec_name)?;
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The row of one codec: `plan.repeat` runs, each beside its own raw-write measurement; the
/// codec alone on one thread, in cache and cold; the scaling curve if asked.
fn measure_codec(
    plan: &BenchPlan,
    setup: &DtypeSetup,
    codec_name: &str,
) -> anyhow::Result<BenchRow> {
    let codec: Codec = codec_name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = bench_config(plan, setup.pixel_type, codec_name, plan.workers)?;
    let mut runs = Vec::new();
    for _ in 0..plan.repeat.max(1) {
        // The raw-write limit, measured just before and just after each run (the better of
        // the two counts: the disk is shared and its speed swings).
        settle(&plan.dir);
        let raw_before = raw_write_rate(&plan.dir, &setup.ring_sized, plan.frames)?;
        settle(&plan.dir);
        let run = pipeline_run(setup, &cfg)?;
        settle(&plan.dir);
        let raw_after = raw_write_rate(&plan.dir, &setup.ring_sized, plan.frames)?;
        runs.push((run, raw_before.max(raw_after)));
    }
    let fps_runs: Vec<f64> = runs.iter().map(|(r, _)| r.fps).collect();
    let fps = median(fps_runs.clone());
    let raw_write_fps = median(runs.iter().map(|(_, raw)| *raw).collect());
    let cpu = CpuBreakdown::median(&runs.iter().map(|(r, _)| r.cpu.clone()).collect::<Vec<_>>());
    let cpu_utilisation = median(runs.iter().map(|(r, _)| r.cpu_share).collect());
    let last = &runs.last().expect("at least one run").0;
    let status = &last.status;
    // The count the engine ran with: the one asked for, or its default for these settings
    // (0: zero copy, the writer wrote the slots).
    let workers = last.workers;
    let codec_fps_1thread = codec_rate(codec, setup.pixel_type, &setup.samples);
    let codec_fps_1thread_cold = codec_rate(codec, setup.pixel_type, &setup.ring_sized);
    let scaling = if plan.scaling {
        Some(scaling_curve(plan, setup, codec_name)?)
    } else {
        None
    };
    let h5py_fps = h5py_filter(codec)
        .and_then(|filter| setup.h5py.iter().find(|(f, _)| f == filter))
        .map(|(_, rate)| *rate);
    Ok(BenchRow {
        codec: codec.to_string(),
        dtype: setup.pixel_type.name().into(),
        frames: status.frames_written,
        dropped: status.frames_dropped,
        fps,
        fps_runs,
        mb_per_s: fps * setup.shape.bytes() as f64 / 1e6,
        ratio: if status.compressed_bytes > 0 {
            status.raw_bytes as f64 / status.compressed_bytes as f64
        } else {
            0.0
        },
        cpu_utilisation,
        raw_write_fps,
        codec_fps_1thread,
        workers,
        of_raw_write: fps / raw_write_fps,
        of_compression_bound: fps / (workers.max(1) as f64 * codec_fps_1thread),
        h5py_fps,
        vs_h5py: h5py_fps.map(|rate| fps / rate),
        codec_fps_1thread_cold,
        cpu,
        scaling,
    })
}

/// Frames per second with 1..=cores compression workers (median of `plan.repeat` runs each,
/// the worker counts taking turns); empty for `none`, which runs no compressors.
fn scaling_curve(
    plan: &BenchPlan,
    setup: &DtypeSetup,
    codec_name: &str,
) -> anyhow::Result<Vec<ScalePoint>> {
    let counts: Vec<usize> = (1..=cores()).collect();
    let configs = counts
        .iter()
        .map(|&w| bench_config(plan, setup.pixel_type, codec_name, w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if configs
        .first()
        .is_some_and(|c| c.writer.codec == Codec::None)
    {
        return Ok(Vec::new());
    }
    let mut fps = vec![Vec::new(); counts.len()];
    for _ in 0..plan.repeat.max(1) {
        for (k, cfg) in configs.iter().enumerate() {
            settle(&plan.dir);
            fps[k].push(pipeline_run(setup, cfg)?.fps);
        }
    }
    Ok(counts
        .into_iter()
        .zip(fps)
        .map(|(workers, runs)| ScalePoint {
            workers,
            fps: median(runs),
        })
        .collect())
}

/// The plan from the command line's strings (one run each, no h5py comparison, no scaling
/// curve: set [`BenchPlan::repeat`], [`BenchPlan::compare_h5py`] and [`BenchPlan::scaling`]
/// after).
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
        scaling: false,
    })
}

/// The table header line.
pub fn header() -> String {
    format!(
        "{:<16} {:>5} {:>6} {:>8} {:>8} {:>6} {:>5} {:>4} | {:>9} {:>7} | {:>11} {:>6} {:>8} | {:>8} {:>6}",
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
        "cold",
        "of bound",
        "h5py fps",
        "x h5py"
    )
}

/// One table line.
pub fn line(r: &BenchRow) -> String {
    format!(
        "{:<16} {:>5} {:>6} {:>8.1} {:>8.1} {:>6.2} {:>4.0}% {:>4} | {:>9.1} {:>6.0}% | {:>11.1} {:>6.0} {:>7.0}% | {:>8} {:>6}",
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
        r.codec_fps_1thread_cold,
        100.0 * r.of_compression_bound,
        r.h5py_fps.map_or("-".into(), |v| format!("{v:.1}")),
        r.vs_h5py.map_or("-".into(), |v| format!("{v:.2}")),
    )
}

/// The second line of a row: where the CPU went, per frame and per thread.
pub fn cpu_line(r: &BenchRow) -> String {
    let c = &r.cpu;
    let pct = |v: f64| format!("{:.0}%", 100.0 * v);
    let (workers, compressors) = if r.workers == 0 {
        ("zero copy, no".to_string(), "-".to_string())
    } else {
        (
            r.workers.to_string(),
            format!("{} each", pct(c.compressors_busy)),
        )
    };
    format!(
        "  {workers} workers | cpu ms/frame: detector {:.3}, compressors {:.3}, writer {:.3}, other {:.3} | busy: detector {}, compressors {compressors}, writer {}",
        c.detector_ms,
        c.compressors_ms,
        c.writer_ms,
        c.other_ms,
        pct(c.detector_busy),
        pct(c.writer_busy),
    )
}

/// The scaling curve of a row, on a line of its own.
pub fn scaling_line(points: &[ScalePoint]) -> String {
    if points.is_empty() {
        return "  scaling: none (no compressors)".into();
    }
    let base = points[0].fps;
    let each: Vec<String> = points
        .iter()
        .map(|p| format!("{} -> {:.1} fps (x{:.2})", p.workers, p.fps, p.fps / base))
        .collect();
    format!("  scaling, workers: {}", each.join(", "))
}
