//! The `detflow` command line.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory as _, FromArgMatches, Parser, Subcommand};
use detflow_engine::config::{
    self, BackendKeys, DetectorSettings, FrameSize, RingSettings, Seconds, ServeSettings,
    WriterSettings,
};
use detflow_engine::{Acquisition, Config, RunEvent, RunHandle, Summary};
use detflow_hal::PixelType;

mod bench;
use indicatif::{ProgressBar, ProgressStyle};

/// Acquisition stack for 2D area detectors.
#[derive(Debug, Parser)]
#[command(name = "detflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `acquire` ends, for scripts (and `--help`).
const ACQUIRE_EXIT_HELP: &str = "Exit status:
  0    every frame asked for was written, or --frames 0 ... until the detector stopped
  1    a bad setting (refused before any file is created) or a write failure
  130  stopped by Ctrl-C (SIGINT), 143 by SIGTERM: the ring was written out, the file
       closed and complete with frames_written frames
  2    aborted by a second Ctrl-C or SIGTERM during that stop: exits at once, the file
       keeps the frames flushed before (SWMR, readable with h5py swmr=True)";

/// How `serve` ends.
const SERVE_EXIT_HELP: &str = "Exit status:
  0    stopped by SIGINT or SIGTERM: any acquisition stopped, every file closed
  1    a bad setting, or the server could not start
  2    aborted by a second SIGINT or SIGTERM during that stop: exits at once";

/// Exit status when a second SIGINT or SIGTERM arrives while a stop is under way: the
/// process exits at once, without closing the file (distinct from 130/143, a clean stop,
/// and from 1, an error).
const ABORT_EXIT: i32 = 2;

#[derive(Debug, Subcommand)]
enum Command {
    /// Acquire frames from the simulated detector into HDF5 files.
    #[command(after_help = ACQUIRE_EXIT_HELP)]
    Acquire(Box<AcquireArgs>),
    /// Measure the pipeline's frame rate per codec and pixel type, next to this machine's
    /// raw write speed and each codec's single-thread speed.
    Bench(BenchArgs),
    /// Send the simulated detector's frames as UDP datagrams (the stream `acquire --backend
    /// udp` receives): the same frames `acquire` makes for the same settings and seed.
    UdpSend(UdpSendArgs),
    /// Build a master HDF5 file whose virtual dataset stitches value references together
    /// (one point per reference), e.g.
    /// `detflow vds --out master.h5 h5file:///data/scan_0001.h5::/entry/data/data[0] ...`.
    /// When no virtual dataset can be made, the master holds the references as strings and
    /// says why (a warning here; the exit status is still 0).
    Vds(VdsArgs),
    /// Run as a daemon: an areaDetector IOC (ADSimDetector cam1:, NDFileHDF5 HDF1:,
    /// NDStdArrays image1:) over Channel Access that ophyd, apstools and ophyd-async drive.
    /// Idle until a client acquires; SIGINT/SIGTERM stop any acquisition, close the files
    /// and exit 0 (a second one during that stop exits 2 at once). Logs go to stderr
    /// (RUST_LOG=debug for every put).
    #[command(after_help = SERVE_EXIT_HELP)]
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML settings: [detector], [backend], [ring], [writer] as for `acquire --config`, and
    /// [serve] (prefix, data_roots, ca_port, interface, preview_rate).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    serve: Flags<ServeSettings>,
    /// A directory files may be written under (repeat for several); added to the file's
    /// data_roots. [default: the current directory]
    #[arg(long = "data-root", value_name = "DIR")]
    data_roots: Vec<PathBuf>,
    /// Frame size WIDTHxHEIGHT of the simulated sensor.
    #[arg(long, value_name = "WxH")]
    size: Option<FrameSize>,
    /// Pixel type at start-up (cam1:DataType).
    #[arg(long, value_name = "TYPE", value_parser = config::parse::<PixelType>)]
    dtype: Option<PixelType>,
}

#[derive(Debug, Args)]
struct VdsArgs {
    /// The master file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Path of the virtual dataset in the master; also the source dataset of references
    /// without `::dataset` unless --source-dataset is given.
    #[arg(long, value_name = "PATH", default_value = "/entry/data/data")]
    dataset: String,
    /// Source dataset for references without `::dataset`. [default: --dataset]
    #[arg(long, value_name = "PATH")]
    source_dataset: Option<String>,
    /// Pixel type of the frames (u16 or uint16, ...), used when no source exists yet.
    #[arg(long, value_name = "TYPE", requires = "size")]
    dtype: Option<String>,
    /// Frame size, used when no source exists yet.
    #[arg(long, value_name = "WxH", requires = "dtype")]
    size: Option<FrameSize>,
    /// Fill value for points without data. [default: NaN for floats, the maximum for
    /// integers]
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    fill: Option<f64>,
    /// Also read references from a JSON-lines file written by `acquire --refs` (their dtype
    /// and shape serve when no source exists yet).
    #[arg(long, value_name = "FILE")]
    from_refs: Option<PathBuf>,
    /// Replace an existing master file.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON object with the outcome instead of text.
    #[arg(long)]
    json: bool,
    /// Value references, one per point: h5file:///abs/file.h5[::dataset][[i] or [a:b]].
    #[arg(value_name = "REF")]
    refs: Vec<String>,
}

#[derive(Debug, Args)]
struct UdpSendArgs {
    /// Receiver address, IP:PORT.
    #[arg(long, value_name = "ADDR")]
    to: std::net::SocketAddr,
    /// Frames to send; 0 until Ctrl-C.
    #[arg(long, value_name = "N", default_value_t = 100)]
    frames: u64,
    /// Frame size.
    #[arg(long, value_name = "WxH", default_value = "1024x1024")]
    size: FrameSize,
    /// Pixel type: u8 u16 u32 i8 i16 i32 f32 f64.
    #[arg(long, value_name = "TYPE", default_value = "u16", value_parser = config::parse::<PixelType>)]
    dtype: PixelType,
    /// Simulated image: peaks, ramp, sine, noise.
    #[arg(long, value_name = "MODE", default_value = "peaks")]
    mode: detflow_sim::SimMode,
    /// Seed of the simulation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Exposure time in seconds.
    #[arg(
        long,
        value_name = "S",
        default_value = "0",
        allow_negative_numbers = true
    )]
    exposure: Seconds,
    /// Frame period in seconds; 0 is as fast as possible.
    #[arg(
        long,
        value_name = "S",
        default_value = "0",
        allow_negative_numbers = true
    )]
    period: Seconds,
    /// Payload bytes per datagram.
    #[arg(long, value_name = "N", default_value_t = detflow_engine::backend::udp::DEFAULT_PAYLOAD)]
    packet_bytes: usize,
    /// Print one JSON object with what was sent instead of text.
    #[arg(long)]
    json: bool,
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
    /// Runs per codec and dtype (each beside its own raw-write measurement); the table shows
    /// medians.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeat: usize,
    /// A Python interpreter with h5py and hdf5plugin: also run the plain h5py writer
    /// (benches/h5py_writer.py) on the same frames, side by side.
    #[arg(long, value_name = "PYTHON")]
    compare_h5py: Option<PathBuf>,
}

/// Flags override the `--config` file, which overrides the defaults (`Config::default()`). A
/// flag given twice takes its last value.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
struct AcquireArgs {
    /// TOML file with [detector], [backend], [ring] and [writer] tables; its keys are the flags'
    /// names (`--ring-slots` is [ring] slots).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one JSON object with the outcome instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = "Detector")]
    detector: Flags<DetectorSettings>,
    #[command(flatten, next_help_heading = "Backend")]
    backend: Flags<BackendKeys>,
    #[command(flatten, next_help_heading = "Ring")]
    ring: Flags<RingSettings>,
    #[command(flatten, next_help_heading = "Files")]
    writer: Flags<WriterSettings>,
    /// Increment the file number after each file (AutoIncrement). [default]
    #[arg(long, overrides_with = "no_auto_increment", help_heading = "Files")]
    auto_increment: bool,
    /// SWMR: readers see frames while the file is written (h5py swmr=True), and a killed
    /// writer leaves a file readable up to the last flush. [default]
    #[arg(long, overrides_with = "no_swmr", help_heading = "Files")]
    swmr: bool,
}

impl AcquireArgs {
    /// The settings: the defaults, the `--config` file over them, the flags given over that.
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        self.detector.apply(&mut c.detector)?;
        c.backend.apply(self.backend.get()?)?;
        self.ring.apply(&mut c.ring)?;
        self.writer.apply(&mut c.writer)?;
        let w = &mut c.writer;
        w.auto_increment |= self.auto_increment;
        w.swmr |= self.swmr;
        // --no-flush flushes only at close: the file's flush settings give way to it, unless
        // given beside it on the command line (then it is refused, naming them).
        if self.writer.given("no_flush") {
            if !self.writer.given("flush_interval") {
                w.flush_interval = Seconds::ZERO;
            }
            if !self.writer.given("flush") {
                w.flush = 0;
            }
        }
        Ok(c)
    }
}

/// The flags of one config section `T` as given, applied over the `--config` file with
/// [`Flags::apply`]. The sections derive their flags (`clap::Args`) with no clap defaults (the
/// defaults are `T::default()`), so clap's update sets exactly the fields whose flag was given.
#[derive(Debug, Clone)]
struct Flags<T> {
    matches: clap::ArgMatches,
    section: std::marker::PhantomData<T>,
}

impl<T: Args> Args for Flags<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // The update form: no section flag is required, as none has a default.
        T::augment_args_for_update(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        T::augment_args_for_update(cmd)
    }
}

impl<T> FromArgMatches for Flags<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Flags {
            matches: matches.clone(),
            section: std::marker::PhantomData,
        })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl<T: FromArgMatches> Flags<T> {
    /// Set the fields of `section` whose flag was given.
    fn apply(&self, section: &mut T) -> Result<(), clap::Error> {
        section.update_from_arg_matches(&self.matches)
    }

    /// The section from the flags alone (for one whose fields are all optional).
    fn get(&self) -> Result<T, clap::Error> {
        T::from_arg_matches(&self.matches)
    }

    /// True when the flag of field `id` was given.
    fn given(&self, id: &str) -> bool {
        self.matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    }
}

/// Append `[default: V]` to the help of every settings flag that takes a value, with V read
/// from `Config::default()`, where the defaults are written once.
fn show_defaults(cli: clap::Command) -> clap::Command {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let default_of = |id: &str| {
        let v = defaults.as_object()?.values().find_map(|s| s.get(id))?;
        // A switch says its default in words ("on by default"); a list, in its help.
        if !(v.is_string() || v.is_number()) {
            return None;
        }
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        (!text.is_empty()).then_some(text)
    };
    let annotate = |arg: clap::Arg| {
        let default = arg
            .get_action()
            .takes_values()
            .then(|| default_of(arg.get_id().as_str()))
            .flatten();
        let Some(default) = default else { return arg };
        let with = |h: Option<&clap::builder::StyledStr>| {
            format!(
                "{} [default: {default}]",
                h.map(|h| h.to_string()).unwrap_or_default()
            )
        };
        let help = with(arg.get_help());
        let long = arg
            .get_long_help()
            .is_some()
            .then(|| with(arg.get_long_help()));
        let arg = arg.help(help);
        match long {
            Some(long) => arg.long_help(long),
            None => arg,
        }
    };
    cli.mut_subcommand("acquire", |c| c.mut_args(annotate))
        .mut_subcommand("serve", |c| c.mut_args(annotate))
}

/// What the signal thread tells the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT or SIGTERM (its number): stop cleanly.
    Stop(i32),
    /// SIGUSR1: make every frame written so far visible to readers (areaDetector FlushNow).
    Flush,
}

/// SIGINT and SIGTERM (and SIGUSR1 with `flush`), as [`Signal`]s on the returned channel:
/// the first SIGINT or SIGTERM asks the caller to stop cleanly; a second one (of either)
/// while it does exits at once with [`ABORT_EXIT`], after removing the space reserves beside
/// the open files.
fn signals(flush: bool) -> anyhow::Result<crossbeam_channel::Receiver<Signal>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut wanted = vec![SIGINT, SIGTERM];
    if flush {
        wanted.push(SIGUSR1);
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    let (tx, rx) = crossbeam_channel::bounded(16);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    // Flushes asked for while one waits are one flush.
                    let _ = tx.try_send(Signal::Flush);
                    continue;
                }
                if stopping {
                    detflow_writer::remove_own_reserves();
                    // _exit, not exit: the atexit handlers (HDF5's closes every open file)
                    // would race the writer thread, which is still writing.
                    // SAFETY: _exit ends the process at once; it takes no pointers.
                    unsafe { libc::_exit(ABORT_EXIT) };
                }
                stopping = true;
                let _ = tx.try_send(Signal::Stop(sig));
            }
        })?;
    Ok(rx)
}

/// Exit status when stopped by a signal: 128 + the signal number, as shells report it.
fn signal_exit(signal: i32) -> ExitCode {
    ExitCode::from(128 + signal as u8)
}

fn acquire(args: &AcquireArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let settings = config.validate()?;
    if config.writer.no_flush {
        eprintln!("detflow: warning: {NO_FLUSH_WARNING}");
    }
    let frames = settings.frames;
    let vds = config
        .writer
        .vds
        .as_ref()
        .map(|out| detflow_writer::VdsSpec {
            description: Some(detflow_writer::PointDescription {
                dtype: settings.acquisition.pixel_type,
                frame_shape: frame_shape(&settings.acquisition),
            }),
            overwrite: config.writer.overwrite,
            ..detflow_writer::VdsSpec::new(out)
        });

    // First Ctrl-C or SIGTERM: stop cleanly (drain, close the file). A second one: exit now.
    // SIGUSR1: flush now, so readers see every frame written so far (areaDetector FlushNow).
    let signals = signals(true)?;

    let udp = match &settings.backend {
        detflow_engine::config::BackendSpec::Udp { listen, .. } => Some(*listen),
        _ => None,
    };
    let mut handle = Acquisition::builder(config.clone()).start()?;
    if let Some(listen) = udp {
        // Senders (and tests) wait for this line: the socket is bound from here on.
        eprintln!("detflow: receiving on udp {listen}");
    }
    let bar = if std::io::stderr().is_terminal() {
        progress_bar(frames, indicatif::ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let stopped_by = follow(&handle, &signals, &bar);
    bar.finish_and_clear();
    handle.wait();
    let summary = handle.summary();
    // The master file is built after the capture, from the references of the frames written.
    let master = vds.map(|spec| {
        let refs: Vec<String> = summary.value_refs.iter().map(|r| r.uri).collect();
        if refs.is_empty() {
            Err(anyhow::anyhow!(
                "no frame was written: no master file {:?}",
                spec.out
            ))
        } else {
            detflow_writer::build_master(&refs, &spec).context("cannot write the master file")
        }
    });
    let master = match master {
        Some(Ok(report)) => Some(report),
        Some(Err(e)) => {
            eprintln!("detflow: {e:#}");
            None
        }
        None => None,
    };
    print_summary(&summary, master.as_ref(), args.json)?;

    Ok(match (&summary.error, stopped_by) {
        (Some(_), _) => ExitCode::FAILURE,
        (None, Some(sig)) => signal_exit(sig),
        (None, None) => ExitCode::SUCCESS,
    })
}

/// Follow a run to its end: the progress bar on its events, a stop or a flush on signals.
/// Returns the stop signal, if one came (also as the run ended by itself).
fn follow(
    handle: &RunHandle,
    signals: &crossbeam_channel::Receiver<Signal>,
    bar: &ProgressBar,
) -> Option<i32> {
    let mut stopped_by = None;
    loop {
        crossbeam_channel::select! {
            recv(handle.events()) -> event => match event {
                Ok(RunEvent::Progress(_)) => {
                    let s = handle.status();
                    bar.set_position(s.frames_written);
                    bar.set_message(progress_message(s.fps, s.mb_per_s, s.frames_dropped));
                }
                Ok(RunEvent::Ended(_)) | Err(_) => break,
                Ok(_) => {}
            },
            recv(signals) -> signal => match signal {
                Ok(Signal::Stop(sig)) => {
                    stopped_by = Some(sig);
                    handle.stop();
                    bar.suspend(|| {
                        eprintln!(
                            "detflow: stopping: writing the frames in the ring, then closing \
                             the file (again to abort: exit {ABORT_EXIT}, the file keeps what \
                             was flushed)"
                        );
                    });
                }
                Ok(Signal::Flush) => handle.flush_now(),
                // The signal thread never ends.
                Err(_) => {}
            },
        }
    }
    stopped_by.or_else(|| {
        signals.try_iter().find_map(|s| match s {
            Signal::Stop(sig) => Some(sig),
            Signal::Flush => None,
        })
    })
}

/// What `--no-flush` costs, said at start.
const NO_FLUSH_WARNING: &str = "--no-flush (no_flush): nothing is flushed before the file is \
    closed; a writer killed mid-run leaves no frame readable";

/// The progress bar of a run of `frames` frames (0: until stopped). Its line fits an
/// 80-column terminal with the longest values a run shows (see the tests).
fn progress_bar(frames: u64, target: indicatif::ProgressDrawTarget) -> ProgressBar {
    let (bar, template) = if frames > 0 {
        (
            ProgressBar::with_draw_target(Some(frames), target),
            "{spinner} {elapsed_precise} {wide_bar} {pos}/{len} {msg}",
        )
    } else {
        (
            ProgressBar::with_draw_target(None, target),
            "{spinner} {elapsed_precise} {pos} frames {msg}",
        )
    };
    bar.set_style(ProgressStyle::with_template(template).expect("progress template is valid"));
    bar
}

/// The rates beside the progress bar; frames dropped only when there are some.
fn progress_message(fps: f64, mb_per_s: f64, dropped: u64) -> String {
    let mut m = format!("{fps:.0} fps {mb_per_s:.0} MB/s");
    if dropped > 0 {
        m.push_str(&format!(" {dropped} dropped"));
    }
    m
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.path.clone().unwrap_or_else(std::env::temp_dir);
    let mut plan = bench::plan(
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
        println!("{}", bench::header());
    }
    let rows = bench::run(&plan, |row| {
        if !args.json {
            println!("{}", bench::line(row));
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

fn print_summary(
    s: &Summary,
    master: Option<&detflow_writer::MasterReport>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(s).context("summary to JSON")?;
        if let Some(m) = master {
            v["vds"] = serde_json::to_value(m).context("master report to JSON")?;
        }
        println!("{v}");
        return Ok(());
    }
    let st = &s.status;
    for f in &st.files {
        println!("file            {}", f.display());
    }
    for f in &s.files_lost {
        println!("LOST            {} (deleted while written)", f.display());
    }
    println!("next number     {}", st.file_number);
    println!(
        "frames          {} acquired, {} written, {} dropped",
        st.frames_acquired, st.frames_written, st.frames_dropped
    );
    println!(
        "rate            {:.1} fps, {:.1} MB/s over {:.3} s",
        st.fps, st.mb_per_s, st.elapsed_s
    );
    let ratio = if st.compressed_bytes > 0 {
        st.raw_bytes as f64 / st.compressed_bytes as f64
    } else {
        1.0
    };
    println!(
        "codec           {} ({} bytes, ratio {:.2})",
        s.codec, st.compressed_bytes, ratio
    );
    if let Some(why) = &s.stopped {
        println!("stopped early   {why}");
    }
    if let Some(m) = master {
        print_master(m);
    }
    Ok(())
}

/// `[rows, columns]` of the frames `acquisition` gives.
fn frame_shape(acquisition: &detflow_hal::AcquisitionConfig) -> [u64; 2] {
    let (roi, bin) = (&acquisition.roi, &acquisition.binning);
    [
        u64::from(roi.size_y / bin.y.max(1)),
        u64::from(roi.size_x / bin.x.max(1)),
    ]
}

fn print_master(m: &detflow_writer::MasterReport) {
    if m.virtual_dataset {
        println!(
            "master          {} {} {:?} {} ({} of {} sources present, {} paths)",
            m.out.display(),
            m.dataset,
            m.shape,
            m.dtype.as_deref().unwrap_or("?"),
            m.sources_present,
            m.points,
            m.source_paths
        );
    } else {
        println!(
            "master          {} holds the {} references as strings at {}",
            m.out.display(),
            m.points,
            m.refs_dataset
        );
    }
    for note in &m.notes {
        eprintln!("detflow: note: {note}");
    }
    if let Some(why) = &m.reason {
        eprintln!("detflow: warning: no virtual dataset: {why}");
    }
}

fn vds(args: &VdsArgs) -> anyhow::Result<ExitCode> {
    let mut refs = Vec::new();
    let mut described = None;
    if let Some(path) = &args.from_refs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
            let uri = v["uri"]
                .as_str()
                .with_context(|| format!("{}:{}: no \"uri\" string", path.display(), n + 1))?;
            refs.push(uri.to_owned());
            if described.is_none() {
                let dtype = v["dtype"]
                    .as_str()
                    .and_then(detflow_writer::refs::pixel_type_from_name);
                let shape: Option<Vec<u64>> = v["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
                if let (Some(dtype), Some(shape)) = (dtype, shape)
                    && shape.len() >= 2
                {
                    let frame = [shape[shape.len() - 2], shape[shape.len() - 1]];
                    described = Some(detflow_writer::PointDescription {
                        dtype,
                        frame_shape: frame,
                    });
                }
            }
        }
    }
    refs.extend(args.refs.iter().cloned());
    if refs.is_empty() {
        anyhow::bail!("no references given: list them after the options, or use --from-refs");
    }
    if let (Some(dtype), Some(size)) = (&args.dtype, &args.size) {
        let dtype = detflow_writer::refs::pixel_type_from_name(dtype).with_context(|| {
            format!("invalid dtype {dtype:?}: expected u8 u16 u32 i8 i16 i32 f32 f64")
        })?;
        described = Some(detflow_writer::PointDescription {
            dtype,
            frame_shape: [u64::from(size.height()), u64::from(size.width())],
        });
    }
    let spec = detflow_writer::VdsSpec {
        dataset: args.dataset.clone(),
        source_dataset: args
            .source_dataset
            .clone()
            .unwrap_or_else(|| args.dataset.clone()),
        description: described,
        fill: args.fill,
        overwrite: args.overwrite,
        ..detflow_writer::VdsSpec::new(&args.out)
    };
    let report = detflow_writer::build_master(&refs, &spec)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        if let Some(why) = &report.reason {
            eprintln!("detflow: warning: no virtual dataset: {why}");
        }
    } else {
        print_master(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn udp_send(args: &UdpSendArgs) -> anyhow::Result<ExitCode> {
    let max = detflow_engine::backend::udp::MAX_PAYLOAD;
    if args.packet_bytes == 0 || args.packet_bytes > max {
        let reason = format!("expected 1 to {max}");
        return Err(
            detflow_engine::ConfigError::new("packet-bytes", args.packet_bytes, reason).into(),
        );
    }
    let stream = detflow_engine::backend::udp::SimStream {
        to: args.to,
        frames: args.frames,
        size: args.size.pair(),
        pixel_type: args.dtype,
        mode: args.mode,
        seed: args.seed,
        exposure: args.exposure.duration(),
        period: args.period.duration(),
        packet_bytes: args.packet_bytes,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let report = detflow_engine::backend::udp::send_sim(&stream, &stop)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} frames ({} datagrams, {} bytes) to {} in {:.3} s",
            report.frames, report.packets, report.bytes, args.to, report.elapsed_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = match &args.config {
        Some(path) => Config::from_toml_file(path)?,
        None => Config::default(),
    };
    if let Some(size) = args.size {
        config.detector.size = size;
    }
    if let Some(dtype) = args.dtype {
        config.detector.dtype = dtype;
    }
    args.serve.apply(&mut config.serve)?;
    config
        .serve
        .data_roots
        .extend(args.data_roots.iter().cloned());
    config.serve.validate()?;
    config.validate()?;
    if config.writer.no_flush {
        tracing::warn!("{NO_FLUSH_WARNING}");
    }
    let s = &config.serve;
    let opts = detflow_ioc::ServeOptions {
        data_roots: detflow_ioc::data_roots(&s.data_roots)?,
        prefix: s.prefix.clone(),
        ca_port: s.ca_port,
        interface: s.interface,
        preview_rate: s.preview_rate,
        config,
    };
    let signals = signals(false)?;
    let roots = opts.data_roots.to_string();
    let prefix = opts.prefix.clone();
    let ioc = detflow_ioc::Ioc::start(opts)?;
    tracing::info!(
        "ready: {} PVs under {prefix} on port {}, data roots {roots}",
        ioc.pv_count(),
        ioc.port()
    );
    // Serve until SIGINT or SIGTERM.
    let signal = loop {
        match signals.recv() {
            Ok(Signal::Stop(sig)) => break sig,
            Ok(Signal::Flush) => {}
            Err(_) => anyhow::bail!("the signal thread ended"),
        }
    };
    tracing::info!("signal {signal}: stopping (a second signal aborts at once, exit {ABORT_EXIT})");
    ioc.shutdown();
    tracing::info!("stopped; every file closed");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = match show_defaults(Cli::command())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        // A value clap refuses is a bad setting: exit status 1, as for the rules checked after.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    let result = match &cli.command {
        Command::Acquire(args) => acquire(args),
        Command::Bench(args) => bench(args),
        Command::UdpSend(args) => udp_send(args),
        Command::Vds(args) => vds(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("detflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An 80-column terminal that keeps what is drawn on it.
    #[derive(Debug, Default, Clone)]
    struct Term80(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Term80 {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `acquire`'s settings for `args` over the TOML `file`.
    fn settings(file: &str, args: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv = vec!["detflow", "acquire", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let Command::Acquire(acquire) = Cli::try_parse_from(argv)?.command else {
            unreachable!("acquire was parsed")
        };
        acquire.config()
    }

    #[test]
    fn a_switch_not_given_leaves_the_files_value() {
        let file = "[writer]\noverwrite = true\nlazy_open = true\nno_flush = true\n\
                    flush_interval = 0\nswmr = false\nauto_increment = false\n\
                    attributes = false\nperformance = false\n";
        let w = settings(file, &[]).unwrap().writer;
        assert!(w.overwrite && w.lazy_open && w.no_flush);
        assert!(!w.swmr && !w.auto_increment && !w.attributes && !w.performance);
        // The positive twins turn back on what the file turned off.
        let w = settings(file, &["--swmr", "--auto-increment"])
            .unwrap()
            .writer;
        assert!(w.swmr && w.auto_increment && w.overwrite);
        // The negative switches turn off what the file (or the default) turned on.
        let w = settings(
            "[writer]\nswmr = true\n",
            &[
                "--no-swmr",
                "--no-auto-increment",
                "--no-attributes",
                "--no-performance",
            ],
        )
        .unwrap()
        .writer;
        assert!(!w.swmr && !w.auto_increment && !w.attributes && !w.performance);
        // The last of a pair wins.
        assert!(settings("", &["--no-swmr", "--swmr"]).unwrap().writer.swmr);
        assert!(!settings("", &["--swmr", "--no-swmr"]).unwrap().writer.swmr);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = "[detector]\nframes = 7\nsize = \"64x48\"\n[ring]\nslots = 3\n\
                    [writer]\ncodec = \"lz4\"\nflush_interval = 2\n\
                    [backend]\nbackend = \"udp\"\nudp_listen = \"127.0.0.1:9000\"\n";
        let c = settings(file, &["--frames", "9", "--ring-policy", "drop-newest"]).unwrap();
        assert_eq!((c.detector.frames, c.detector.size.pair()), (9, (64, 48)));
        assert_eq!(
            (c.ring.slots, c.ring.policy),
            (3, detflow_ring::Policy::DropNewest)
        );
        assert_eq!(c.writer.codec, detflow_writer::Codec::Lz4);
        assert_eq!(c.detector.dtype, PixelType::U16, "the default stays");
        assert_eq!(c.backend.kind(), detflow_engine::config::BackendKind::Udp);
        // --no-flush clears the file's flush interval; given beside it, the interval stays
        // (and validation refuses the pair).
        let c = settings(file, &["--no-flush"]).unwrap();
        assert!(c.writer.no_flush && c.writer.flush_interval.is_zero());
        let c = settings(file, &["--no-flush", "--flush-interval", "3"]).unwrap();
        assert_eq!(c.writer.flush_interval.as_secs_f64(), 3.0);
        // A flag of another backend than the file's is refused by name.
        let e = settings(file, &["--fault-drop", "0.1"]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid fault-drop \"0.1\""),
            "{e}"
        );
        let c = settings(file, &["--backend", "sim", "--fault-drop", "0.1"]).unwrap();
        assert_eq!(c.backend.kind(), detflow_engine::config::BackendKind::Sim);
    }

    #[test]
    fn help_shows_the_defaults_of_the_config() {
        let mut cmd = show_defaults(Cli::command());
        let acquire = cmd.find_subcommand_mut("acquire").unwrap();
        let help = |id: &str| {
            let arg = acquire.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_help().unwrap().to_string()
        };
        assert!(
            help("frames").ends_with("[default: 100]"),
            "{}",
            help("frames")
        );
        assert!(help("slots").ends_with("[default: 0]"));
        assert!(help("codec").ends_with("[default: none]"));
        assert!(!help("overwrite").contains("[default"));
    }

    #[test]
    fn the_progress_line_fits_80_columns_with_the_longest_values() {
        // The most frames a run takes (num_images is a u32), a small-frame rate, a fast
        // disk's MB/s, and every frame dropped.
        for frames in [u64::from(u32::MAX), 0] {
            let term = Term80::default();
            let bar = progress_bar(
                frames,
                indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())),
            );
            bar.set_position(u64::from(u32::MAX) - 1);
            bar.set_message(progress_message(999_999.0, 99_999.0, u64::from(u32::MAX)));
            bar.tick();
            let drawn = term.0.lock().unwrap().clone();
            let text: Vec<&str> = drawn
                .iter()
                .flat_map(|s| s.split(['\n', '\r']))
                .filter(|l| !l.trim().is_empty())
                .collect();
            for line in &text {
                assert!(
                    line.chars().count() <= 80,
                    "{} columns: {line:?}",
                    line.chars().count()
                );
            }
            let last = text.last().expect("something was drawn");
            assert!(last.contains("4294967294"), "the count is shown: {last:?}");
            assert!(
                last.contains("999999 fps 99999 MB/s 4294967295 dropped"),
                "the whole message is shown: {last:?}"
            );
        }
    }
}
