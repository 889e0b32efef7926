//! `detflow bench --stream2`: a Stream V2 series over loopback TCP into the receiver backend,
//! written as it came (pass-through) and decoded and encoded again, next to a plain write of
//! the same compressed bytes, all in one sitting.
//!
//! The sender is a thread of this process: it encodes the messages before the run (the
//! simulator's frames, compressed with bslz4 as a DCU does) and then only sends them, with a
//! blocking send, so the receiver is measured, not the sender. On 2 cores the sender's copy
//! into the socket shares the CPUs with the receiver: the figures include that.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use detflow_engine::Acquisition;
use detflow_engine::backend::stream2::SeriesExpect;
use detflow_engine::config::{BackendConfig, Config};
use detflow_hal::PixelType;
use detflow_stream2::{
    Compression, End, Image, Message, MultiDimArray, Payload, Rational, Series, Start, TypedArray,
};
use detflow_writer::Codec;
use serde::Serialize;

use super::{CpuBreakdown, cpu_seconds, raw_write_rate, sample_frames, settle};

/// One measured run of the receiver.
#[derive(Debug, Clone, Serialize)]
pub struct Stream2Row {
    /// `auto` (pass-through) or the codec images were encoded again with.
    pub codec: String,
    /// Images written per second, wall time from connecting (the run's start, ring and
    /// file made) to the closed file.
    pub fps: f64,
    /// Images written per second from the first image to the last (the run's own rate,
    /// without its start-up).
    pub steady_fps: f64,
    /// Compressed bytes received per second, GB/s.
    pub gb_per_s: f64,
    /// A plain sequential write of the same compressed bytes, images per second.
    pub raw_fps: f64,
    /// fps / raw_fps.
    pub of_raw: f64,
    /// The same messages over the same loopback into a receiver that drops them, images per
    /// second: the transport's ceiling on this machine.
    pub loopback_fps: f64,
    /// CPU per image by thread.
    pub cpu: CpuBreakdown,
    /// Images written / sent.
    pub written: u64,
}

/// The bench's series: `frames` images of the sample frames, bslz4, one channel.
pub struct Series2 {
    messages: Vec<Vec<u8>>,
    /// Each image's compressed bytes, for the raw write.
    chunks: Vec<Vec<u8>>,
    compressed_bytes: u64,
    frames: u64,
}

const UNIQUE: &str = "detflow-bench-stream2";

impl Series2 {
    /// Encode the series' messages from `samples` frames of `size` and `pixel_type`.
    pub fn prepare(size: (u32, u32), pixel_type: PixelType, frames: u64) -> anyhow::Result<Self> {
        let samples = sample_frames(size, pixel_type, 16)?;
        let mut compressor = Codec::BitshuffleLz4.compressor(pixel_type);
        let chunks: Vec<Vec<u8>> = samples
            .iter()
            .map(|f| {
                let mut out = Vec::new();
                compressor.compress(f, &mut out);
                out
            })
            .collect();
        let series = Series {
            id: 1,
            unique_id: UNIQUE,
        };
        let mut messages = Vec::with_capacity(frames as usize + 2);
        let start = Start {
            series,
            channels: vec!["threshold_1"],
            image_size_x: Some(size.0),
            image_size_y: Some(size.1),
            image_dtype: Some(pixel_type),
            number_of_images: Some(frames),
            ..Start::default()
        };
        messages.push(encoded(&Message::Start(start)));
        let mut compressed_bytes = 0;
        for i in 0..frames {
            let chunk = &chunks[i as usize % chunks.len()];
            compressed_bytes += chunk.len() as u64;
            let payload = Payload::Compressed {
                compression: Compression::Bslz4,
                elem_size: pixel_type.size() as u64,
                bytes: chunk,
            };
            let array = MultiDimArray {
                dims: [u64::from(size.1), u64::from(size.0)],
                array: TypedArray {
                    tag: TypedArray::tag_of(pixel_type),
                    payload,
                },
            };
            let image = Image {
                series,
                image_id: i,
                real_time: Some(Rational {
                    numerator: 50_000,
                    denominator: 50_000_000,
                }),
                data: vec![("threshold_1", array)],
                ..Image::default()
            };
            messages.push(encoded(&Message::Image(image)));
        }
        messages.push(encoded(&Message::End(End { series })));
        Ok(Series2 {
            messages,
            chunks,
            compressed_bytes,
            frames,
        })
    }

    /// Receive the series with `codec` (`auto`: pass-through) into `dir`, and the raw write
    /// of its bytes beside it.
    pub fn measure(&self, dir: &Path, codec: &str) -> anyhow::Result<Stream2Row> {
        let context = zmq::Context::new();
        let (push, endpoint) = bind_push(&context)?;
        let mut cfg = Config::default();
        cfg.writer.path = dir.to_string_lossy().into_owned();
        cfg.writer.name = format!("bench_stream2_{}", codec.replace(':', "_"));
        cfg.writer.codec = codec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.writer.overwrite = true;
        cfg.writer.auto_increment = false;
        cfg.backend = BackendConfig::Stream2 {
            connect: endpoint,
            rcvhwm: 64,
            timeout: "30".parse()?,
            expect: SeriesExpect::default(),
        };
        // Messages made before the clock starts and handed to libzmq without a copy, as a
        // DCU's are already in its memory: the sender costs the loopback's copies only.
        let messages: Vec<zmq::Message> = self
            .messages
            .iter()
            .map(|m| zmq::Message::from(m.clone()))
            .collect();
        settle(dir);
        let (summary, wall, cpu_s) = std::thread::scope(|scope| {
            let sender = scope.spawn(move || -> anyhow::Result<()> {
                for m in messages {
                    push.send(m, 0)?;
                }
                Ok(())
            });
            let cpu0 = cpu_seconds();
            let t = Instant::now();
            let run = Acquisition::builder(cfg).start();
            let result = run.map(|mut run| {
                run.wait();
                (
                    run.summary(),
                    t.elapsed().as_secs_f64(),
                    cpu_seconds() - cpu0,
                )
            });
            let sent = sender.join().expect("the sender thread ends");
            sent.and(result.map_err(anyhow::Error::from))
        })?;
        for f in &summary.status.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(e) = &summary.error {
            anyhow::bail!("stream2 {codec}: {e}");
        }
        let written = summary.status.frames_written;
        settle(dir);
        let raw_fps = raw_write_rate(dir, &self.chunks, self.frames).context("raw write")?;
        let loopback_fps = loopback_rate(&self.messages).context("loopback")?;
        let fps = written as f64 / wall;
        Ok(Stream2Row {
            codec: codec.to_owned(),
            steady_fps: summary.status.fps,
            fps,
            gb_per_s: self.compressed_bytes as f64 / self.frames as f64 * fps / 1e9,
            raw_fps,
            of_raw: fps / raw_fps,
            loopback_fps,
            cpu: CpuBreakdown::of(&summary.threads, cpu_s, written, wall),
            written,
        })
    }
}

/// A PUSH socket bound on a free loopback port (queue of 64 images), and its endpoint.
fn bind_push(context: &zmq::Context) -> anyhow::Result<(zmq::Socket, String)> {
    let push = context.socket(zmq::PUSH)?;
    push.set_sndhwm(64)?;
    push.bind("tcp://127.0.0.1:*")?;
    let endpoint = push
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("no endpoint"))?;
    Ok((push, endpoint))
}

/// Images per second the loopback carries alone: the same messages through a PUSH/PULL pair
/// whose receiver drops them (no decoding, no ring, no file), the transport's own ceiling.
fn loopback_rate(messages: &[Vec<u8>]) -> anyhow::Result<f64> {
    let context = zmq::Context::new();
    let (push, endpoint) = bind_push(&context)?;
    let pull = context.socket(zmq::PULL)?;
    pull.set_rcvhwm(64)?;
    pull.connect(&endpoint)?;
    let owned: Vec<zmq::Message> = messages
        .iter()
        .map(|m| zmq::Message::from(m.clone()))
        .collect();
    let n = owned.len();
    let t = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let sender = scope.spawn(move || -> anyhow::Result<()> {
            for m in owned {
                push.send(m, 0)?;
            }
            Ok(())
        });
        for _ in 0..n {
            pull.recv_msg(0)?;
        }
        sender.join().expect("the sender thread ends")
    })?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn encoded(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    detflow_stream2::encode(msg, &mut out);
    out
}

/// The table's line for a row.
pub fn line(r: &Stream2Row) -> String {
    format!(
        "stream2 {:<8} {:>6.0} fps ({:>6.0} steady) {:>5.2} GB/s  raw {:>6.0} fps  of raw {:>4.2} ({:>4.2} steady)  loopback {:>6.0} fps  of loopback {:>4.2}  cpu ms/frame: receiver {:.3}, compressors {:.3}, writer {:.3}, sender+zmq+other {:.3}",
        r.codec,
        r.fps,
        r.steady_fps,
        r.gb_per_s,
        r.raw_fps,
        r.of_raw,
        r.steady_fps / r.raw_fps,
        r.loopback_fps,
        r.fps / r.loopback_fps,
        r.cpu.detector_ms,
        r.cpu.compressors_ms,
        r.cpu.writer_ms,
        r.cpu.other_ms
    )
}
