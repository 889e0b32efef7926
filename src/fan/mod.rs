//! `detflow fan`: one detector's Stream V2 stream dealt to N writer ranks, as DLS's EigerFan
//! and odin-data's frame processors do. It PULLs the detector's messages and PUSHes each
//! image, bytes as received, to the rank its `image_id`'s block belongs to; `start` and
//! `end` go to every rank with the rank, N and the block size added as keys. With
//! `--master`, each series' end also makes the master file over the ranks' files.

mod master;
mod ranks;
mod report;
mod stop;

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use detflow_engine::ConfigError;
use detflow_engine::config::Seconds;
use detflow_stream2::fan::Deal;
use detflow_stream2::{End, Message, MessageKind, Series, decode, encode, peek};

use master::{MasterJob, MasterPath, SeriesShape};
use ranks::{Ranks, Sent};
use report::{EndedBy, SeriesReport};
use stop::Stop;

/// Long help of `--bind`.
const BIND_HELP: &str = "Where the ranks' PUSH sockets listen, tcp://ADDR:BASEPORT: rank k \
    on BASEPORT + k (each writer connects a PULL socket to its port, e.g. `detflow acquire \
    --backend stream2 --stream2-connect tcp://FAN:PORT`). Port 0: each rank on a port the \
    OS picks, logged at start.";

/// Long help of `--master`.
const MASTER_HELP: &str = "At each series' end, write the master file PATH (DIR/NAME_master.h5) \
    over the ranks' files DIR/NAME_r{k}_*.h5 of that series (found by its series_unique_id; \
    the fan's node must see them, e.g. on a shared filesystem): every channel in image_id \
    order, image_present and image_id, the series metadata. The fan waits up to \
    --master-wait for every rank's file to be there and closed; a rank whose file is not \
    there is mapped by the name the other ranks' files have (NAME_r{k}_0001.h5 when none \
    is there) and reads as the fill value until it appears. PATH is one file: an existing \
    one (from an earlier run or series) is not replaced without --overwrite, so with several \
    series per run give --overwrite or run one fan per series. Built on a thread of its \
    own: the fan goes on taking the detector's messages meanwhile.";

/// Messages received in one go before the stop request and the consumers are looked at.
const BATCH: usize = 64;

/// What happens to an image its rank cannot take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Policy {
    /// Drop it and count it: the detector side is never held up (as a DCU does).
    Drop,
    /// Wait until the rank takes it: no image is lost, and the detector side waits.
    Block,
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(crate) struct FanArgs {
    /// The detector's Stream V2 endpoint, which the fan's PULL socket connects to (a DCU
    /// listens on port 31001).
    #[arg(long, value_name = "ENDPOINT")]
    from: String,
    /// Number of ranks (writers) the images are dealt to.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ranks: u16,
    /// tcp://ADDR:BASEPORT: rank k listens on BASEPORT + k.
    #[arg(long, value_name = "ENDPOINT", long_help = BIND_HELP)]
    bind: String,
    /// Consecutive images one rank gets in turn: block image_id / B goes to rank block % N.
    #[arg(long, value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    frames_per_block: u64,
    /// A rank that cannot take an image: drop it (counted) or make the fan wait.
    #[arg(long, value_name = "POLICY", default_value = "drop")]
    policy: Policy,
    /// High-water mark of each rank's PUSH socket, in images (ZMQ_SNDHWM; 0: none). With
    /// the rank's own receive queue, what a rank may lag by before it loses images.
    #[arg(long, value_name = "N", default_value_t = 100)]
    sndhwm: i32,
    /// High-water mark of the PULL socket on the detector, in messages (ZMQ_RCVHWM; 0:
    /// none): what may wait in the fan while a rank holds it up.
    #[arg(long, value_name = "N", default_value_t = 100)]
    rcvhwm: i32,
    /// How long `start` and `end` may wait for the ranks to take them (a rank not reached
    /// is logged as an error naming it), and how long queued images are still delivered
    /// when the fan exits.
    #[arg(long, value_name = "S", default_value = "10")]
    send_timeout: Seconds,
    /// Exit 0 after this many series (their `end`); without it, run until SIGINT/SIGTERM.
    #[arg(long, value_name = "N")]
    series: Option<u64>,
    /// Print one JSON object per series on stdout instead of text (with --master, the
    /// master's report as its `master` member).
    #[arg(long)]
    json: bool,
    /// The master file made at each series' end over the ranks' files, DIR/NAME_master.h5.
    #[arg(long, value_name = "PATH", long_help = MASTER_HELP)]
    master: Option<PathBuf>,
    /// How long --master waits for the ranks' files to be there and closed.
    #[arg(long, value_name = "S", default_value = "10", requires = "master")]
    master_wait: Seconds,
    /// Replace an existing --master file.
    #[arg(long, requires = "master")]
    overwrite: bool,
}

pub(crate) fn fan(args: &FanArgs) -> anyhow::Result<ExitCode> {
    let endpoints = rank_endpoints(&args.bind, args.ranks)?;
    let master = args.master.as_deref().map(MasterPath::parse).transpose()?;
    if let Some(m) = master
        .as_ref()
        .filter(|m| !args.overwrite && m.path.exists())
    {
        return Err(ConfigError::new(
            "master",
            m.path.display(),
            "the file exists; give --overwrite to replace it, or another path",
        )
        .into());
    }
    let deal = Deal::new(args.ranks.into(), args.frames_per_block)
        .ok_or_else(|| ConfigError::new("frames-per-block", args.frames_per_block, "at least 1"))?;
    let stop = Stop::install()?;
    let ctx = zmq::Context::new();
    let ranks = Ranks::bind(
        &ctx,
        &endpoints,
        deal,
        args.policy,
        args.sndhwm,
        args.send_timeout.duration(),
    )?;
    for r in &ranks.ranks {
        tracing::info!(rank = r.number, endpoint = %r.endpoint, "rank {} listening on {}", r.number, r.endpoint);
    }
    let pull = ctx
        .socket(zmq::PULL)
        .context("cannot make a zmq PULL socket")?;
    pull.set_rcvhwm(args.rcvhwm)
        .with_context(|| format!("rcvhwm {} refused", args.rcvhwm))?;
    pull.set_linger(0)?;
    pull.connect(&args.from)
        .with_context(|| format!("cannot connect to {} (--from)", args.from))?;
    tracing::info!(from = %args.from, ranks = args.ranks, frames_per_block = args.frames_per_block, policy = ?args.policy, "fan connected to the detector");
    let mut fan = Fan {
        args,
        ranks,
        series: None,
        done: 0,
        bad_warned: None,
        master,
        masters: Vec::new(),
    };
    let exit = fan.run(&pull, &stop);
    // Every master under way is written (or has failed, logged) before the fan exits.
    for m in fan.masters.drain(..) {
        let _ = m.join();
    }
    exit
}

/// `--bind tcp://ADDR:BASEPORT` as one endpoint per rank.
fn rank_endpoints(bind: &str, ranks: u16) -> Result<Vec<String>, ConfigError> {
    let bad = |reason: &str| ConfigError::new("bind", bind, reason);
    let rest = bind
        .strip_prefix("tcp://")
        .ok_or_else(|| bad("expected tcp://ADDR:BASEPORT"))?;
    let (addr, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected tcp://ADDR:BASEPORT (no port)"))?;
    let base: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if addr.is_empty() {
        return Err(bad("expected tcp://ADDR:BASEPORT (no address; * for all)"));
    }
    if base == 0 {
        return Ok(vec![format!("tcp://{addr}:0"); usize::from(ranks)]);
    }
    let last = u32::from(base) + u32::from(ranks) - 1;
    if last > u32::from(u16::MAX) {
        return Err(bad(&format!(
            "rank {} would listen on port {last}, past 65535",
            ranks - 1
        )));
    }
    Ok((0..ranks)
        .map(|k| format!("tcp://{addr}:{}", base + k))
        .collect())
}

/// The series going through the fan.
struct Running {
    id: u64,
    unique_id: String,
    t0: Instant,
    cpu0: f64,
    images_in: u64,
    bad: u64,
    /// What the master needs to know of the series (`--master`).
    shape: SeriesShape,
}

impl Running {
    fn new(series: &Series<'_>, shape: SeriesShape) -> Self {
        Running {
            id: series.id,
            unique_id: series.unique_id.to_owned(),
            t0: Instant::now(),
            cpu0: crate::bench::cpu_seconds(),
            images_in: 0,
            bad: 0,
            shape,
        }
    }
}

/// What to do after a message.
enum Next {
    Go,
    /// `--series` series are done.
    Done,
}

struct Fan<'a> {
    args: &'a FanArgs,
    ranks: Ranks,
    series: Option<Running>,
    /// Series ended so far.
    done: u64,
    /// When a bad message was last logged, and how many came since.
    bad_warned: Option<(Instant, u64)>,
    /// `--master`.
    master: Option<MasterPath>,
    /// The masters being built, one thread each.
    masters: Vec<JoinHandle<()>>,
}

impl Fan<'_> {
    /// Receive until `--series` series are done or a signal stops the fan.
    fn run(&mut self, pull: &zmq::Socket, stop: &Stop) -> anyhow::Result<ExitCode> {
        loop {
            let ready = {
                let mut items: Vec<_> = [pull.as_poll_item(zmq::POLLIN), stop.poll_item()]
                    .into_iter()
                    .chain(self.ranks.monitor_items())
                    .collect();
                ranks::poll(&mut items, None)?;
                items[0].is_readable()
            };
            self.ranks.drain_monitors();
            if let Some(sig) = stop.signal() {
                self.stopped()?;
                return Ok(crate::signals::signal_exit(sig));
            }
            if !ready {
                continue;
            }
            for _ in 0..BATCH {
                let msg = match pull.recv_msg(zmq::DONTWAIT) {
                    Ok(m) => m,
                    Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => break,
                    Err(e) => return Err(e).context("cannot receive from the detector"),
                };
                if let Next::Done = self.on_message(msg, stop)? {
                    return Ok(ExitCode::SUCCESS);
                }
                if stop.requested() {
                    break;
                }
            }
        }
    }

    fn on_message(&mut self, msg: zmq::Message, stop: &Stop) -> anyhow::Result<Next> {
        let header = match peek(&msg) {
            Ok(h) => h,
            Err(e) => {
                self.bad_message(&e);
                return Ok(Next::Go);
            }
        };
        match header.kind {
            MessageKind::Image => {
                let image_id = header.image_id.unwrap_or_default();
                let master = self.master.is_some();
                let run = self.running(&header.series, "image");
                run.images_in += 1;
                if master {
                    run.shape.images_seen = run.shape.images_seen.max(image_id + 1);
                    if run.shape.wants_image()
                        && let Ok(Message::Image(image)) = decode(&msg)
                    {
                        run.shape.learn(&image);
                    }
                }
                if self.ranks.send_image(image_id, msg, stop)? == Sent::Stopped {
                    tracing::warn!(image_id, "stopped while the image waited for its rank");
                }
                Ok(Next::Go)
            }
            MessageKind::Start => {
                if let Some(prev) = self.series.take() {
                    tracing::warn!(
                        series_id = prev.id,
                        "start of series {} before the end of series {}",
                        header.series.id,
                        prev.id
                    );
                    self.finish(prev, EndedBy::NextStart)?;
                }
                self.ranks.reset_counts();
                let shape = match decode(&msg) {
                    Ok(Message::Start(start)) => SeriesShape::from_start(&start),
                    _ => SeriesShape::default(),
                };
                self.series = Some(Running::new(&header.series, shape));
                tracing::info!(
                    series_id = header.series.id,
                    unique_id = header.series.unique_id,
                    "start of series {}",
                    header.series.id
                );
                self.ranks.send_to_all("start", &msg, Some(stop), None)?;
                Ok(Next::Go)
            }
            MessageKind::End => {
                let run = self.running(&header.series, "end");
                if run.id != header.series.id || run.unique_id != header.series.unique_id {
                    tracing::warn!(
                        series_id = run.id,
                        "end of series {} during series {}",
                        header.series.id,
                        run.id
                    );
                }
                let images = run.shape.number_of_images;
                self.ranks.send_to_all("end", &msg, Some(stop), images)?;
                let run = self.series.take().expect("running() made it");
                self.finish(run, EndedBy::End)?;
                self.done += 1;
                Ok(match self.args.series {
                    Some(n) if self.done >= n => Next::Done,
                    _ => Next::Go,
                })
            }
        }
    }

    /// The running series; a message of a series whose `start` the fan did not see starts
    /// one (logged).
    fn running(&mut self, series: &Series<'_>, what: &str) -> &mut Running {
        self.series.get_or_insert_with(|| {
            tracing::warn!(series_id = series.id, "{what} of series {} without its start (the fan started late, or the start was lost)", series.id);
            Running::new(series, SeriesShape::default())
        })
    }

    /// A message `peek` cannot read: counted, logged (at most once a second), not forwarded.
    fn bad_message(&mut self, e: &detflow_stream2::DecodeError) {
        if let Some(run) = &mut self.series {
            run.bad += 1;
        }
        let now = Instant::now();
        match &mut self.bad_warned {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(1) => *n += 1,
            _ => {
                let before = self.bad_warned.map_or(0, |(_, n)| n);
                tracing::warn!(
                    not_logged_before = before,
                    "a message from the detector is not Stream V2, not forwarded: {e}"
                );
                self.bad_warned = Some((now, 0));
            }
        }
    }

    /// Print the series' summary; with `--master`, build the master on a thread that then
    /// prints it (with `--json`, in the series' object).
    fn finish(&mut self, run: Running, ended_by: EndedBy) -> anyhow::Result<()> {
        let mut report = SeriesReport {
            series_id: run.id,
            series_unique_id: run.unique_id,
            ended_by,
            images_in: run.images_in,
            bad_messages: run.bad,
            elapsed_s: run.t0.elapsed().as_secs_f64(),
            cpu_s: crate::bench::cpu_seconds() - run.cpu0,
            ranks: SeriesReport::ranks_of(&self.ranks.ranks),
            master: None,
        };
        let dropped: u64 = report.ranks.iter().map(|r| r.dropped).sum();
        tracing::info!(
            series_id = report.series_id,
            images_in = report.images_in,
            dropped,
            elapsed_s = report.elapsed_s,
            "series {} done",
            report.series_id
        );
        let Some(at) = self.master.clone() else {
            return report.print(self.args.json);
        };
        let json = self.args.json;
        if !json {
            report.print(false)?;
        }
        let job = MasterJob {
            at,
            deal: self.ranks.deal(),
            unique_id: report.series_unique_id.clone(),
            shape: run.shape,
            wait: self.args.master_wait.duration(),
            overwrite: self.args.overwrite,
        };
        let thread = std::thread::Builder::new().name("master".into());
        let handle = thread
            .spawn(move || {
                let outcome = job.run();
                if let Err(e) = &outcome {
                    tracing::error!(master = %job.at.path.display(), "master {} not written: {e}", job.at.path.display());
                }
                report.master = Some(report::MasterOutcome::of(&job.at.path, outcome));
                if let Err(e) = report.print_master(json) {
                    tracing::error!("cannot print the master's report: {e}");
                }
            })
            .context("cannot start the master's thread")?;
        self.masters.push(handle);
        Ok(())
    }

    /// Stopped by a signal: a series under way gets an `end` made by the fan, so that every
    /// rank closes its files, and its summary.
    fn stopped(&mut self) -> anyhow::Result<()> {
        let Some(run) = self.series.take() else {
            return Ok(());
        };
        tracing::warn!(
            series_id = run.id,
            "stopped during series {}: sending each rank an end",
            run.id
        );
        let mut msg = Vec::new();
        let series = Series {
            id: run.id,
            unique_id: &run.unique_id,
        };
        encode(&Message::End(End { series }), &mut msg);
        // The stop request is not passed on: this end still gets its --send-timeout.
        self.ranks.send_to_all("end", &msg, None, None)?;
        self.finish(run, EndedBy::Stopped)
    }
}
