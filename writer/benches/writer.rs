//! The HDF5 writer alone, per frame: into a null sink (an in-memory HDF5 file, every HDF5
//! call made, nothing written to disk) and into a real file in the temp directory.
//!
//! Read the null sink with care: HDF5's in-memory (core) driver zero-fills and page-faults
//! fresh memory as the image grows, which costs more per byte than the kernel's page cache,
//! so for small (compressed) chunks the real file is the faster of the two.
//!
//! `cargo bench -p detflow-writer --bench writer`. Frames are 1024x1024 u16, raw chunks
//! (`Codec::None`) and bslz4 chunks encoded beforehand, so the figure is HDF5 and I/O only.
//! Each iteration opens a file, writes `FRAMES` frames (`DETFLOW_BENCH_FRAMES` overrides)
//! and closes it. The `image_layout` cases write the same bslz4 chunks with
//! `write_image` (one channel, per-image fields on, images placed by number) beside
//! `write_frame`, so the cost of placement and the per-image rows shows in the same run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_writer::{Codec, ImageLayout, ImageWrite, StreamSpec, StreamWriter};

const FRAMES: u64 = 400;

fn frames() -> u64 {
    std::env::var("DETFLOW_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FRAMES)
}
const SHAPE: FrameShape = FrameShape {
    width: 1024,
    height: 1024,
    pixel_type: PixelType::U16,
    color_mode: ColorMode::Mono,
};

fn frame() -> Vec<u8> {
    // Peaks-like content: a smooth pattern plus a little pseudo-random noise.
    (0..SHAPE.width * SHAPE.height)
        .flat_map(|i| {
            let (x, y) = (i % 1024, i / 1024);
            let peak = if (x % 100).abs_diff(50) < 8 && (y % 100).abs_diff(50) < 8 {
                900
            } else {
                0
            };
            let noise = (i.wrapping_mul(2_654_435_761) >> 29) as u16;
            (peak + noise).to_le_bytes()
        })
        .collect()
}

fn writer(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let raw = frame();
    let mut group = c.benchmark_group("hdf5_writer_1024x1024_u16");
    group.sample_size(10);
    group.throughput(Throughput::Elements(frames()));
    for codec in [Codec::None, "bslz4".parse().expect("bslz4 parses")] {
        let mut chunk = Vec::new();
        codec.compressor(PixelType::U16).compress(&raw, &mut chunk);
        let chunk = if codec == Codec::None {
            raw.clone()
        } else {
            chunk
        };
        for (sink, in_memory) in [("null_sink", true), ("real_file", false)] {
            group.bench_function(format!("{codec}/{sink}"), |b| {
                b.iter(|| {
                    let mut w = StreamWriter::create(StreamSpec {
                        num_capture: frames(),
                        overwrite: true,
                        in_memory,
                        ..StreamSpec::new(dir.path().join("bench.h5"), SHAPE, codec)
                    })
                    .expect("the file opens");
                    for k in 0..frames() {
                        let meta = FrameMeta {
                            unique_id: k + 1,
                            timestamp: EpicsTimestamp::default(),
                            unix_time_s: 0.0,
                            shape: SHAPE,
                        };
                        w.write_frame(&meta, &chunk).expect("the frame is written");
                    }
                    w.close().expect("the file closes")
                })
            });
        }
    }
    image_layout(&mut group, dir.path(), &raw);
    group.finish();
}

/// bslz4 chunks through `write_image` with a one-channel image layout and per-image fields.
fn image_layout(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &std::path::Path,
    raw: &[u8],
) {
    let codec = Codec::BitshuffleLz4;
    let mut chunk = Vec::new();
    codec.compressor(PixelType::U16).compress(raw, &mut chunk);
    for (sink, in_memory) in [("null_sink", true), ("real_file", false)] {
        group.bench_function(format!("{codec}/{sink}/image_layout"), |b| {
            b.iter(|| {
                let mut w = StreamWriter::create(StreamSpec {
                    num_capture: frames(),
                    overwrite: true,
                    in_memory,
                    image_layout: Some(ImageLayout {
                        channels: vec!["threshold_1".into()],
                        image_fields: true,
                        metadata: None,
                    }),
                    ..StreamSpec::new(dir.join("bench.h5"), SHAPE, codec)
                })
                .expect("the file opens");
                for k in 0..frames() {
                    let meta = FrameMeta {
                        unique_id: k + 1,
                        timestamp: EpicsTimestamp::default(),
                        unix_time_s: 0.0,
                        shape: SHAPE,
                    };
                    let image = ImageWrite {
                        number: k,
                        channels: &[&chunk],
                        image_id: k,
                        real_time: Some((999_995, 50_000_000)),
                        start_time: Some((k * 1_000_000, 50_000_000)),
                        stop_time: Some((k * 1_000_000 + 999_995, 50_000_000)),
                        user_data_cbor: None,
                        user_data_json: None,
                    };
                    w.write_image(&meta, &image).expect("the image is written");
                }
                w.close().expect("the file closes")
            })
        });
    }
}

criterion_group!(benches, writer);
criterion_main!(benches);
