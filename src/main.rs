//! The `detflow` command line.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, FromArgMatches, Parser, Subcommand};

mod acquire;
mod bench;
mod cli;
mod fan;
mod serve;
mod signals;
mod stream2_send;
mod udp_send;
mod vds;

use acquire::AcquireArgs;
use bench::BenchArgs;
use fan::FanArgs;
use serve::ServeArgs;
use stream2_send::Stream2SendArgs;
use udp_send::UdpSendArgs;
use vds::VdsArgs;

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
    /// Send one series as a DECTRIS Stream V2 detector (EIGER2, PILATUS4) does: CBOR start,
    /// image and end messages on a bound ZeroMQ PUSH socket, images compressed bslz4 or lz4
    /// as a DCU sends them, frames from the simulator (as `acquire` makes them) or a replay.
    /// Images no consumer can take are dropped and counted, as a DCU does.
    Stream2Send(Stream2SendArgs),
    /// Deal one detector's Stream V2 stream to N writer ranks: PULL from the detector, one
    /// PUSH socket per rank on BASEPORT + k; image block image_id / B goes to rank
    /// block % N, bytes as received; start and end go to every rank with detflow_rank,
    /// detflow_ranks and detflow_frames_per_block added. Per-rank counts at each end.
    Fan(FanArgs),
    /// Build a master HDF5 file whose virtual dataset stitches value references together
    /// (one point per reference), e.g.
    /// `detflow vds --out master.h5 h5file:///data/scan_0001.h5::/entry/data/data[0] ...`.
    /// When no virtual dataset can be made, the master holds the references as strings and
    /// says why (a warning here; the exit status is still 0). With `--rank-files`, the
    /// master of a series `fan` dealt to N rank writers:
    /// `detflow vds --out scan_master.h5 --rank-files scan_r*_0001.h5`.
    Vds(VdsArgs),
    /// Run as a daemon: an areaDetector IOC (ADSimDetector cam1:, NDFileHDF5 HDF1:,
    /// NDStdArrays image1:) over Channel Access that ophyd, apstools and ophyd-async drive.
    /// Idle until a client acquires; SIGINT/SIGTERM stop any acquisition, close the files
    /// and exit 0 (a second one during that stop exits 2 at once). Logs go to stderr
    /// (RUST_LOG=debug for every put).
    #[command(after_help = SERVE_EXIT_HELP)]
    Serve(ServeArgs),
}

/// glibc hands out blocks of 128 KiB or more as fresh mappings and returns them on free, so
/// every Stream V2 image libzmq receives (one malloc per message, 0.1 to 40 MB) would fault
/// in and zero new pages: measured, that was a quarter of the receiving process's CPU. Keep
/// such blocks in the heap for reuse instead (up to 256 MiB each, and the heap's top is only
/// trimmed past 1 GiB free).
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes allocator tuning only; it is called
    // before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Log to stderr at `default` unless RUST_LOG says otherwise.
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = match cli::show_defaults(Cli::command())
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
    // Log lines go to stderr: the daemon, the sender and the fan tell what they do (info); the other
    // commands only what went wrong (warn: a bad Stream V2 message, a skipped table), beside
    // their summary, and a Stream V2 receiver which series (and which rank of it) it takes.
    // RUST_LOG overrides either.
    let level = match cli.command {
        Command::Serve(_) | Command::Stream2Send(_) | Command::Fan(_) => "info",
        Command::Acquire(_) => "warn,detflow_engine::backend::stream2=info",
        _ => "warn",
    };
    init_logging(level);
    keep_freed_buffers();
    let result = match &cli.command {
        Command::Acquire(args) => acquire::acquire(args),
        Command::Bench(args) => bench::bench(args),
        Command::UdpSend(args) => udp_send::udp_send(args),
        Command::Stream2Send(args) => stream2_send::stream2_send(args),
        Command::Fan(args) => fan::fan(args),
        Command::Vds(args) => vds::vds(args),
        Command::Serve(args) => serve::serve(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("detflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
