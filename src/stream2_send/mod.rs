//! `detflow stream2-send`: one series of DECTRIS Stream V2 messages (`start`, one `image`
//! per frame, `end`) on a bound ZeroMQ PUSH socket, so that detflow stands in for an EIGER2
//! or PILATUS4 DCU when others test their consumers. Frames come from the simulated detector
//! (channel k is the simulator seeded `seed + k`) or from a replayed HDF5 dataset.

mod push;
mod series;
mod source;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use detflow_engine::config::{DetectorSettings, Seconds};
use detflow_stream2::{End, Image, Message, MultiDimArray, Rational, Series, encode};
use serde::Serialize;

use crate::cli::Flags;
use push::{Push, Sent};
use series::{ChannelEncoder, Compress, HeaderDetail, TICKS_PER_S, Tables};
use source::{Frames, Read};

/// Long help of `--skip`.
const SKIP_HELP: &str = "Image ids not sent, comma-separated (e.g. 3,7): the consumer sees \
    gaps in image_id, as when a DCU drops images. They count as skipped, not as sent or dropped.";

/// Long help of `--distinct-frames`.
const DISTINCT_HELP: &str = "Make and encode only the first N frames, then send image i with \
    frame i % N (its own image_id and times): the detector then costs little more than the \
    messages' copies, so that a bench on one machine measures the consumers, not the simulator \
    and the encoder (benches/scale_out.sh).";

/// Long help of `--pause-before`.
const PAUSE_HELP: &str = "Before image ID, log that the series is paused and wait for a line \
    (or the end of input) on stdin, then go on: a hand on the detector at a known image, e.g. \
    to stop a consumer and see exactly what it loses. Ctrl-C ends the wait; the end is still sent.";

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(crate) struct Stream2SendArgs {
    /// ZeroMQ endpoint the PUSH socket binds, as a DCU binds port 31001 (consumers connect a
    /// PULL socket to it).
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:31001")]
    bind: String,
    /// High-water mark of the PUSH socket, in messages per consumer (ZMQ_SNDHWM; 0: none).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    sndhwm: i32,
    /// Send `start` once a consumer has connected, or after this many seconds (then it is
    /// logged that nobody connected).
    #[arg(long, value_name = "S", default_value = "10")]
    wait_for_consumer: Seconds,
    /// How long `start` and `end` may wait for a consumer to take them (an error exit
    /// naming the message when they cannot be sent), and how long queued images are still
    /// delivered after `end`.
    #[arg(long, value_name = "S", default_value = "10")]
    send_timeout: Seconds,
    /// Image data: bslz4 (filter 32008 chunks), lz4 (filter 32004 chunks) or none.
    #[arg(long, value_name = "ALG", default_value = "bslz4")]
    compress: Compress,
    /// Channels per image, 1 to 4: threshold_1 .. threshold_N. Channel k (1-based) is the
    /// simulator's frame for seed `--seed` + k - 1, the frame `detflow acquire --seed S+k-1`
    /// writes; a replayed frame is repeated in every channel.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    channels: u8,
    /// The start message's detail: basic (every scalar key) or all (also the pixel mask,
    /// flatfield and count-rate table).
    #[arg(long, value_name = "LEVEL", default_value = "basic")]
    header_detail: HeaderDetail,
    /// Give each image a user_data of {"frame": i}.
    #[arg(long)]
    user_data: bool,
    /// The series_id of the messages.
    #[arg(long, value_name = "N", default_value_t = 1)]
    series_id: u64,
    /// Image ids not sent, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',', hide_short_help = true, long_help = SKIP_HELP)]
    skip: Vec<u64>,
    /// Before image ID, wait for a line on stdin.
    #[arg(long, value_name = "ID", hide_short_help = true, long_help = PAUSE_HELP)]
    pause_before: Option<u64>,
    /// Make (and encode) only the first N frames; image i carries frame i % N.
    #[arg(long, value_name = "N", hide_short_help = true, long_help = DISTINCT_HELP,
          value_parser = clap::value_parser!(u64).range(1..))]
    distinct_frames: Option<u64>,
    /// Send the frames of an HDF5 dataset instead of the simulator's, `FILE[::DATASET]` as
    /// `acquire --replay` takes it (default dataset /entry/data/data); its frame size and
    /// pixel type replace --size and --dtype.
    #[arg(long, value_name = "FILE[::DATASET]")]
    replay: Option<String>,
    /// The dataset of --replay, when not given after `::`.
    #[arg(long, value_name = "PATH", requires = "replay")]
    dataset: Option<String>,
    /// Print one JSON object with what was sent instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = "Detector")]
    detector: Flags<DetectorSettings>,
}

/// What one series sent; the summary line and `--json`.
#[derive(Debug, Default, Serialize)]
struct Report {
    endpoint: String,
    series_id: u64,
    series_unique_id: String,
    consumer_connected: bool,
    /// Image messages queued for a consumer.
    sent: u64,
    /// Image messages no consumer could take (EAGAIN at the high-water mark).
    dropped: u64,
    /// Image ids left out (--skip).
    skipped: u64,
    /// Frames the detector lost before they could be sent (FIFO overruns).
    lost: u64,
    /// Bytes of the image messages sent.
    bytes: u64,
    /// From `start` sent to `end` sent.
    elapsed_s: f64,
    fps: f64,
    gb_per_s: f64,
}

pub(crate) fn stream2_send(args: &Stream2SendArgs) -> anyhow::Result<ExitCode> {
    let mut d = DetectorSettings::default();
    args.detector.apply(&mut d)?;
    let channels = usize::from(args.channels);
    let mut frames = open_frames(args, &d, channels)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    // Acquire: seen after the signal handler's store.
    let stopped = || stop.load(Ordering::Acquire);
    let push = Push::bind(&args.bind, args.sndhwm, args.send_timeout.duration())?;
    tracing::info!(endpoint = %push.endpoint, "PUSH socket bound, waiting for a consumer");
    let connected = push.wait_for_consumer(args.wait_for_consumer.duration(), &stopped)?;
    if !connected {
        tracing::warn!(
            wait_s = args.wait_for_consumer.duration().as_secs_f64(),
            "no consumer connected within --wait-for-consumer: sending start anyway"
        );
    }
    let unique_id = unique_id();
    let mut report = Report {
        endpoint: push.endpoint.clone(),
        series_id: args.series_id,
        series_unique_id: unique_id.clone(),
        consumer_connected: connected,
        ..Report::default()
    };
    let series = Series {
        id: args.series_id,
        unique_id: &unique_id,
    };
    let result = run(
        args,
        d.frames,
        &mut frames,
        &push,
        series,
        &stopped,
        &mut report,
    );
    frames.stop();
    print_report(&report, args.json)?;
    result.map(|()| ExitCode::SUCCESS)
}

fn open_frames(
    args: &Stream2SendArgs,
    d: &DetectorSettings,
    channels: usize,
) -> anyhow::Result<Frames> {
    match &args.replay {
        None => Frames::sim(d, d.frames, channels),
        Some(source) => {
            let (file, mut dataset) = detflow_engine::backend::replay::parse_source(source);
            if let Some(ds) = &args.dataset {
                if source.contains("::") && *ds != dataset {
                    let reason = format!("--replay already names dataset {dataset}");
                    return Err(detflow_engine::ConfigError::new("dataset", ds, reason).into());
                }
                dataset.clone_from(ds);
            }
            Frames::replay(d, &file, &dataset, d.frames, channels)
        }
    }
}

/// `start`, the images, `end`: the report filled as it goes.
fn run(
    args: &Stream2SendArgs,
    number_of_images: u64,
    frames: &mut Frames,
    push: &Push,
    series: Series<'_>,
    stopped: &dyn Fn() -> bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let names = series::channel_names(usize::from(args.channels));
    let shape = frames.shape;
    let tables = (args.header_detail == HeaderDetail::All)
        .then(|| Tables::new(shape.width as usize, shape.height as usize));
    let (arm_s, arm_date) = series::now();
    let header = series::Header {
        series,
        arm_date: &arm_date,
        channels: &names,
        shape,
        exposure: frames.acquisition.exposure,
        period: frames.acquisition.period,
        frames: number_of_images,
        description: if args.replay.is_some() {
            "detflow replay"
        } else {
            "detflow simulated detector"
        },
        tables: tables.as_ref(),
    };
    let mut msg = Vec::new();
    encode(&Message::Start(series::start(&header)), &mut msg);
    frames.start()?;
    push.send_blocking("start", &msg)?;
    tracing::info!(
        unique_id = series.unique_id,
        channels = names.len(),
        "start sent"
    );
    let t0 = Instant::now();
    let images = Images {
        args,
        number_of_images,
        names: &names,
        series,
        arm_s,
        arm_date: &arm_date,
    };
    let result = images.send_all(frames, push, stopped, report);
    // Consumers (and tests) may wait for this line to know that only `end` is left.
    tracing::info!(
        sent = report.sent,
        dropped = report.dropped,
        "images done, sending end"
    );
    msg.clear();
    encode(&Message::End(End { series }), &mut msg);
    // The end goes out even after a failure or Ctrl-C, as a DCU sends it on abort.
    let end = push.send_blocking("end", &msg);
    report.elapsed_s = t0.elapsed().as_secs_f64();
    if report.elapsed_s > 0.0 {
        report.fps = report.sent as f64 / report.elapsed_s;
        report.gb_per_s = report.bytes as f64 / report.elapsed_s / 1e9;
    }
    result.and(end)
}

/// The image messages of one series.
struct Images<'a> {
    args: &'a Stream2SendArgs,
    /// The series' image count (0: until stopped).
    number_of_images: u64,
    names: &'a [String],
    series: Series<'a>,
    arm_s: f64,
    arm_date: &'a str,
}

impl Images<'_> {
    fn send_all(
        &self,
        frames: &mut Frames,
        push: &Push,
        stopped: &dyn Fn() -> bool,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let shape = frames.shape;
        let skip: BTreeSet<u64> = self.args.skip.iter().copied().collect();
        let mut bufs = vec![vec![0u8; shape.bytes()]; self.names.len()];
        let mut chunks = vec![Vec::new(); self.names.len()];
        let mut encoders: Vec<_> = self
            .names
            .iter()
            .map(|_| ChannelEncoder::new(self.args.compress, shape.pixel_type))
            .collect();
        let mut out = Outgoing {
            exposure: series::ticks(frames.acquisition.exposure.as_secs_f64()),
            msg: Vec::new(),
            user_data: Vec::new(),
        };
        // --distinct-frames: each channel's encoded bytes of the frames made so far (None:
        // lost by the detector).
        let mut made: Vec<Option<Vec<Vec<u8>>>> = Vec::new();
        let distinct = self.args.distinct_frames.unwrap_or(u64::MAX);
        let caching = self.args.distinct_frames.is_some();
        let mut image_id = 0u64;
        loop {
            if self.args.pause_before == Some(image_id) {
                pause(image_id, stopped)?;
            }
            let id = image_id;
            if id >= distinct {
                if stopped() || (self.number_of_images > 0 && id >= self.number_of_images) {
                    return Ok(());
                }
                image_id += 1;
                if skip.contains(&id) {
                    report.skipped += 1;
                    continue;
                }
                let Some(again) = &made[(id % distinct) as usize] else {
                    report.lost += 1;
                    continue;
                };
                let data = again.iter().zip(&encoders).zip(self.names);
                let data =
                    data.map(|((bytes, enc), name)| (name.as_str(), enc.array(bytes, shape)));
                let stop = series::ticks(series::now().0 - self.arm_s);
                self.send(id, stop, data.collect(), &mut out, push, report)?;
                continue;
            }
            let meta = match frames.read(&mut bufs, stopped)? {
                Read::Done => return Ok(()),
                Read::Lost(why) => {
                    tracing::warn!(image_id, "frame lost by the detector: {why}");
                    report.lost += 1;
                    image_id += 1;
                    if caching {
                        made.push(None);
                    }
                    continue;
                }
                Read::Frame(meta) => meta,
            };
            image_id += 1;
            let skipped = skip.contains(&id);
            if skipped {
                report.skipped += 1;
                if !caching {
                    continue;
                }
            }
            // The frame is read out at the end of its exposure.
            let stop = series::ticks(meta.unix_time_s - self.arm_s);
            let data = bufs
                .iter()
                .zip(chunks.iter_mut())
                .zip(encoders.iter_mut())
                .zip(self.names)
                .map(|(((frame, out), enc), name)| (name.as_str(), enc.encode(frame, out, shape)))
                .collect();
            if !skipped {
                self.send(id, stop, data, &mut out, push, report)?;
            }
            if caching {
                let encoded = match self.args.compress {
                    Compress::None => &bufs,
                    _ => &chunks,
                };
                made.push(Some(encoded.clone()));
            }
        }
    }

    /// Encode image `id` read out at `stop` (ticks since arm) with the channels' `data`,
    /// and send it.
    fn send(
        &self,
        id: u64,
        stop: u64,
        data: Vec<(&str, MultiDimArray<'_>)>,
        out: &mut Outgoing,
        push: &Push,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let exposure = out.exposure;
        let image = Image {
            series: self.series,
            image_id: id,
            real_time: Some(Rational {
                numerator: exposure,
                denominator: TICKS_PER_S,
            }),
            start_time: Some(Rational {
                numerator: stop.saturating_sub(exposure),
                denominator: TICKS_PER_S,
            }),
            stop_time: Some(Rational {
                numerator: stop,
                denominator: TICKS_PER_S,
            }),
            series_date: Some(self.arm_date),
            user_data: self.args.user_data.then(|| {
                series::frame_user_data(id, &mut out.user_data);
                out.user_data.as_slice()
            }),
            data,
        };
        out.msg.clear();
        encode(&Message::Image(image), &mut out.msg);
        match push.send_image(&out.msg)? {
            Sent::Queued => {
                report.sent += 1;
                report.bytes += out.msg.len() as u64;
            }
            Sent::Dropped => {
                report.dropped += 1;
                tracing::debug!(image_id = id, "dropped: no consumer could take it");
            }
        }
        Ok(())
    }
}

/// The buffers an image message is encoded with, reused from image to image.
struct Outgoing {
    /// The exposure, in ticks.
    exposure: u64,
    msg: Vec<u8>,
    user_data: Vec<u8>,
}

/// `--pause-before`: wait for a line (or the end of input) on stdin, or a stop.
fn pause(image_id: u64, stopped: &dyn Fn() -> bool) -> anyhow::Result<()> {
    // Tests wait for this line before they act on the paused series.
    tracing::info!(
        image_id,
        "paused before image {image_id}: waiting for a line on stdin (--pause-before)"
    );
    let mut stdin = [zmq::PollItem::from_fd(0, zmq::POLLIN)];
    loop {
        match zmq::poll(&mut stdin, -1) {
            Ok(_) => break,
            // A signal: Ctrl-C ends the wait, anything else goes back to it.
            Err(zmq::Error::EINTR) if stopped() => return Ok(()),
            Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e).context("waiting for a line on stdin (--pause-before)"),
        }
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading stdin (--pause-before)")?;
    tracing::info!(image_id, "going on from image {image_id}");
    Ok(())
}

/// A series_unique_id unique to this run: the arm time and the process.
fn unique_id() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("detflow-{ns:x}-{:x}", std::process::id())
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "sent {} images ({} dropped, {} skipped, {} lost, {} bytes) on {} in {:.3} s: {:.1} fps, {:.3} GB/s",
            r.sent,
            r.dropped,
            r.skipped,
            r.lost,
            r.bytes,
            r.endpoint,
            r.elapsed_s,
            r.fps,
            r.gb_per_s
        );
    }
    Ok(())
}
