//! The per-frame cost of a run outside the codec and the disk: the detector thread copying a
//! finished frame into a ring slot, the ring hand-over and the writer loop, into a sink that
//! only counts bytes. A per-frame cost that creeps back into that path (an allocation, a
//! system call, a lock, a poll) shows up here, where nothing else hides it.
//!
//! `cargo bench -p detflow-engine --bench writer_loop`. Each iteration is one run through the
//! public API ([`Acquisition::builder`] with a [`FrameCycle`] backend and a null
//! [`FrameSink`]); the time is the run's own (`Status::elapsed_s`: threads started to the sink
//! finished; the ring's allocation before is left out). Two paths:
//! - `zero_copy`: codec `none` fixed for the run, the writer claims the slots itself;
//! - `pool_none`: the same codec through the compressor pool (one worker), as a sink whose
//!   codec may change (the daemon's) gets it: a worker claims the slot and hands it over,
//!   the writer puts it back in order.
//!
//! Small frames (256 x 256) make the fixed cost per frame dominate; 1024 x 1024 adds the
//! memory traffic of 2 MiB frames.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_engine::backend::cycle::FrameCycle;
use detflow_engine::config::FrameSize;
use detflow_engine::{
    Acquisition, CodecCell, Config, Encoding, FrameSink, Push, RunError, SinkReport,
};
use detflow_hal::{ColorMode, FrameMeta, FrameShape, PixelType, SensorInfo};
use detflow_writer::{Codec, FileStatus};

/// A sink that keeps nothing: it counts the bytes it is handed.
struct NullSink {
    encoding: Encoding,
    bytes: u64,
}

impl FrameSink for NullSink {
    fn encoding(&self) -> Encoding {
        self.encoding.clone()
    }

    fn readbacks(&self) -> FileStatus {
        FileStatus::default()
    }

    fn push(&mut self, _frame: &FrameMeta, chunk: &[u8], _codec: Codec, _: &SinkReport) -> Push {
        self.bytes += chunk.len() as u64;
        Push::Written
    }

    fn flush_if_due(&mut self, _asked: bool, _idle: bool, _: &SinkReport) -> Result<(), RunError> {
        Ok(())
    }

    fn finish(self: Box<Self>, _: &SinkReport) -> Result<(), RunError> {
        std::hint::black_box(self.bytes);
        Ok(())
    }
}

/// The frames cycled through: a few distinct ones, as the pipeline bench uses.
fn frames(shape: FrameShape) -> Vec<Vec<u8>> {
    (0..4u8)
        .map(|k| {
            (0..shape.bytes())
                .map(|i| (i as u8).wrapping_mul(31) ^ k)
                .collect()
        })
        .collect()
}

/// One run of `n` frames of `shape` into a null sink encoding with `encoding`; the run's
/// elapsed time.
fn one_run(shape: FrameShape, frames: &[Vec<u8>], n: u64, encoding: Encoding) -> Duration {
    let mut cfg = Config::default();
    cfg.detector.size = FrameSize::new(shape.width, shape.height).expect("a valid size");
    cfg.detector.dtype = shape.pixel_type;
    cfg.detector.frames = n;
    cfg.writer.workers = 1;
    let info = SensorInfo {
        manufacturer: heapless::String::try_from("detflow").expect("short"),
        model: heapless::String::try_from("writer loop bench").expect("short"),
        max_width: shape.width,
        max_height: shape.height,
        pixel_types: heapless::Vec::from_slice(&[shape.pixel_type]).expect("one type"),
    };
    let backend = Box::new(FrameCycle::new(frames.to_vec(), shape, info));
    let mut run = Acquisition::builder(cfg)
        .backend(backend)
        .frame_sink(Box::new(NullSink { encoding, bytes: 0 }))
        .start()
        .expect("the run starts");
    run.wait();
    let status = run.summary().status;
    assert_eq!(status.frames_written, n, "every frame reaches the sink");
    Duration::from_secs_f64(status.elapsed_s)
}

/// A fresh encoding for each run (a codec cell belongs to one run).
type MakeEncoding = fn() -> Encoding;

fn writer_loop(c: &mut Criterion) {
    for (width, height, n) in [(256u32, 256u32, 4000u64), (1024, 1024, 400)] {
        let shape = FrameShape {
            width,
            height,
            pixel_type: PixelType::U16,
            color_mode: ColorMode::Mono,
        };
        let frames = frames(shape);
        let mut group = c.benchmark_group(format!("writer_loop_{width}x{height}_u16"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(n));
        let paths: [(&str, MakeEncoding); 2] = [
            ("zero_copy", || Encoding::Fixed(Codec::None)),
            ("pool_none", || {
                Encoding::Follows(Arc::new(CodecCell::new(Codec::None)))
            }),
        ];
        for (name, encoding) in paths {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| one_run(shape, &frames, n, encoding()))
                        .sum()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, writer_loop);
criterion_main!(benches);
