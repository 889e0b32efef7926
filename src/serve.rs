//! `detflow serve`: the daemon, an areaDetector IOC over Channel Access (detflow-ioc), until a
//! signal stops it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use detflow_engine::Config;
use detflow_engine::config::{self, BackendKeys, FrameSize, ServeSettings};
use detflow_hal::PixelType;

use crate::cli::Flags;
use crate::signals::{ABORT_EXIT, Signal, signals};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML settings: [detector], [backend], [ring], [writer] as for `acquire --config`, and
    /// [serve] (prefix, data_roots, ca_port, interface, preview_rate). With `--backend
    /// stream2` the daemon receives the detector's series from start-up and writes each one
    /// that arrives while HDF1:Capture = 1 to a file of its own.
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
    #[command(flatten, next_help_heading = "Backend")]
    backend: Flags<BackendKeys>,
}

pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
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
    config.backend.apply(args.backend.get()?)?;
    config
        .serve
        .data_roots
        .extend(args.data_roots.iter().cloned());
    config.serve.validate()?;
    config.validate()?;
    if config.writer.no_flush {
        tracing::warn!("{}", crate::acquire::NO_FLUSH_WARNING);
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
