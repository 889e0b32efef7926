//! The `detflow` command line.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use detflow::{Acquisition, Config, Summary};
use indicatif::{ProgressBar, ProgressStyle};

/// Acquisition stack for 2D area detectors.
#[derive(Debug, Parser)]
#[command(name = "detflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Acquire frames from the simulated detector into HDF5 files.
    Acquire(Box<AcquireArgs>),
    /// Measure the pipeline's frame rate per codec and pixel type, next to this machine's
    /// raw write speed and each codec's single-thread speed.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
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
    /// A Python interpreter with h5py and hdf5plugin: also run the plain h5py writer
    /// (benches/h5py_writer.py) on the same frames, side by side.
    #[arg(long, value_name = "PYTHON")]
    compare_h5py: Option<PathBuf>,
}

/// Flags override the `--config` file, which overrides the defaults. A flag given twice
/// takes its last value.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct AcquireArgs {
    /// TOML file with [detector], [ring] and [writer] tables.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Frames to acquire; 0 acquires until Ctrl-C. [default: 100]
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Frame size. [default: 1024x1024]
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    /// Pixel type: u8 u16 u32 i8 i16 i32 f32 f64. [default: u16]
    #[arg(long, value_name = "TYPE")]
    dtype: Option<String>,
    /// Simulated image: peaks, ramp, sine, noise. [default: peaks]
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Exposure time in seconds. [default: 0]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    exposure: Option<f64>,
    /// Acquire period in seconds; 0 is as fast as possible. [default: 0]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    period: Option<f64>,
    /// Chunk codec: none, deflate[:LEVEL] (HDF5 filter 1), lz4 (32004), bslz4 and
    /// bszstd[:LEVEL] (bitshuffle, 32008), zstd[:LEVEL] (32015), blosc[:COMPRESSOR[:LEVEL]]
    /// (32001; lz4, lz4hc, blosclz, zlib, zstd). [default: none]
    #[arg(long, value_name = "CODEC")]
    codec: Option<String>,
    /// Directory for the file (areaDetector FilePath); must exist. [default: .]
    #[arg(long, value_name = "DIR")]
    path: Option<String>,
    /// File base name (FileName). [default: detflow]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// File number (FileNumber). [default: 1]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    number: Option<i32>,
    /// C-printf template taking path, name, number (FileTemplate). [default: %s%s_%4.4d.h5]
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    template: Option<String>,
    /// Seed of the simulation: equal seeds give equal frames. [default: 0]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Compression worker threads; 0: one per core. [default: 0]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Frame slots in the ring between detector and writer; 0 sizes it automatically
    /// (64 slots, fewer for frames over 8 MiB). [default: 0]
    #[arg(long, value_name = "N")]
    ring_slots: Option<usize>,
    /// File write mode: single (a file per frame), capture (buffer, then write), stream.
    /// [default: stream]
    #[arg(long, value_name = "MODE")]
    write_mode: Option<String>,
    /// Frames to capture (NumCapture); stream: 0 until stopped. [default: --frames]
    #[arg(long, value_name = "N")]
    capture: Option<u64>,
    /// Stream mode: start a new file every N frames. [default: 0, never]
    #[arg(long, value_name = "N")]
    frames_per_file: Option<u64>,
    /// Increment the file number after each file (AutoIncrement). [default]
    #[arg(long, overrides_with = "no_auto_increment")]
    auto_increment: bool,
    /// Keep the file number (AutoIncrement off).
    #[arg(long)]
    no_auto_increment: bool,
    /// Directory levels to create (CreateDirectory): D > 0 from component D on, -k at most
    /// the last k, 0 none. [default: 0]
    #[arg(long, value_name = "DEPTH", allow_negative_numbers = true)]
    create_dirs: Option<i32>,
    /// Write the file as NAME + S and rename it when closed (TempSuffix).
    #[arg(long, value_name = "S")]
    temp_suffix: Option<String>,
    /// Stream mode: open the file when the first frame arrives (LazyOpen).
    #[arg(long)]
    lazy_open: bool,
    /// Replace an existing file of the same name (refused otherwise).
    #[arg(long)]
    overwrite: bool,
    /// SWMR: readers see frames while the file is written (h5py swmr=True), and a killed
    /// writer leaves a file readable up to the last flush. [default]
    #[arg(long, overrides_with = "no_swmr")]
    swmr: bool,
    /// A plain HDF5 file, as areaDetector writes by default (unreadable if the writer is
    /// killed).
    #[arg(long)]
    no_swmr: bool,
    /// Flush every N frames (NumFramesFlush); 0: not by count. [default: 0]
    #[arg(long, value_name = "N")]
    flush: Option<u64>,
    /// Flush at least every S seconds while frames wait; 0: not by time. [default: 1]
    #[arg(long, value_name = "S")]
    flush_interval: Option<f64>,
    /// Do not store the NDAttribute datasets (StoreAttr off).
    #[arg(long)]
    no_attributes: bool,
    /// Do not store performance/timestamp (StorePerform off).
    #[arg(long)]
    no_performance: bool,
    /// Print one JSON object with the outcome instead of text.
    #[arg(long)]
    json: bool,
}

impl AcquireArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        let d = &mut c.detector;
        macro_rules! set {
            ($($flag:ident => $field:expr),* $(,)?) => {
                $(if let Some(v) = &self.$flag { $field = v.clone(); })*
            };
        }
        set!(frames => d.frames, size => d.size, dtype => d.dtype, mode => d.mode,
             exposure => d.exposure, period => d.period, seed => d.seed);
        let w = &mut c.writer;
        set!(codec => w.codec, path => w.path, name => w.name, number => w.number,
             template => w.template, workers => w.workers, write_mode => w.write_mode, frames_per_file => w.frames_per_file,
             create_dirs => w.create_dirs, temp_suffix => w.temp_suffix, flush => w.flush);
        if let Some(n) = self.capture {
            w.capture = Some(n);
        }
        if self.auto_increment {
            w.auto_increment = true;
        }
        if self.no_auto_increment {
            w.auto_increment = false;
        }
        w.lazy_open |= self.lazy_open;
        w.overwrite |= self.overwrite;
        if self.swmr {
            w.swmr = true;
        }
        if self.no_swmr {
            w.swmr = false;
        }
        if let Some(s) = self.flush_interval {
            w.flush_interval = s;
        }
        if self.no_attributes {
            w.attributes = false;
        }
        if self.no_performance {
            w.performance = false;
        }
        set!(ring_slots => c.ring.slots);
        Ok(c)
    }
}

/// Exit status when stopped by a signal: 128 + the signal number, as shells report it.
fn signal_exit(signal: usize) -> ExitCode {
    ExitCode::from(128 + signal as u8)
}

fn acquire(args: &AcquireArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let settings = config.validate()?;
    let frames = settings.frames;

    // First Ctrl-C or SIGTERM: stop cleanly (drain, close the file). A second one: exit now.
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
        let signal = signal.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = signal.compare_exchange(0, sig as usize, Ordering::AcqRel, Ordering::Acquire);
        });
    }

    // SIGUSR1: flush now, so readers see every frame written so far (areaDetector FlushNow).
    let flush_request = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, flush_request.clone())?;

    let handle = Acquisition::start(settings)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = if frames > 0 {
            ProgressBar::new(frames)
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} frames  {msg}",
            )
            .expect("progress template is valid"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut stop_sent = false;
    while !handle.is_finished() {
        if signal.load(Ordering::Acquire) != 0 && !stop_sent {
            handle.stop();
            stop_sent = true;
        }
        if flush_request.swap(false, Ordering::AcqRel) {
            handle.flush_now();
        }
        let s = handle.status();
        bar.set_position(s.frames_written);
        bar.set_message(format!(
            "{:.0} fps  {:.0} MB/s  dropped {}",
            s.fps, s.mb_per_s, s.frames_dropped
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    let summary = handle.wait();
    print_summary(&summary, args.json)?;

    let sig = signal.load(Ordering::Acquire);
    Ok(if summary.error.is_some() {
        ExitCode::FAILURE
    } else if sig != 0 {
        signal_exit(sig)
    } else {
        ExitCode::SUCCESS
    })
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.path.clone().unwrap_or_else(std::env::temp_dir);
    let plan = detflow::bench::plan(
        &args.codecs,
        &args.dtype,
        &args.size,
        args.frames,
        dir,
        args.workers,
        args.compare_h5py.clone(),
    )?;
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
        println!("{}", detflow::bench::header());
    }
    let rows = detflow::bench::run(&plan, |row| {
        if !args.json {
            println!("{}", detflow::bench::line(row));
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

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s).context("summary to JSON")?);
        return Ok(());
    }
    for f in &s.files {
        println!("file            {}", f.display());
    }
    println!("next number     {}", s.file_number);
    println!(
        "frames          {} acquired, {} written, {} dropped",
        s.frames_acquired, s.frames_written, s.frames_dropped
    );
    println!(
        "rate            {:.1} fps, {:.1} MB/s over {:.3} s",
        s.fps, s.mb_per_s, s.elapsed_s
    );
    let ratio = if s.compressed_bytes > 0 {
        s.raw_bytes as f64 / s.compressed_bytes as f64
    } else {
        1.0
    };
    println!(
        "codec           {} ({} bytes, ratio {:.2})",
        s.codec, s.compressed_bytes, ratio
    );
    if let Some(why) = &s.stopped {
        println!("stopped early   {why}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Acquire(args) => acquire(args),
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("detflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
