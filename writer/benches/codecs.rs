//! Single-thread throughput of each chunk codec on one detector-like frame.
//!
//! `cargo bench -p detflow-writer --bench codecs` compresses one 1024x1024 u16 "peaks" frame
//! (a 10x10 grid of gaussian peaks of amplitude ~1000 with shot noise on a Poisson(2)
//! background, like perf-baseline §2) per iteration. Throughput is in uncompressed bytes;
//! each codec's compression ratio is printed once before its timing. Two more groups time
//! the bitshuffle transform alone per kernel, and the LZ4 encoders on the same blocks.
//!
//! `bslz4_1024x1024_u16` compares the bslz4 encoder with the one before issue #15 (AVX2
//! transform, liblz4 per block; kept below as [`bslz4_before`]) on frames in three places:
//! `hot`, one frame over and over (it stays in L2); `warm`, 16 distinct frames in turn (32 MiB,
//! as `detflow bench` measures a codec); `cold`, 64 distinct frames (128 MiB).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_hal::PixelType;
use detflow_writer::codec::bitshuffle::{self, Kernel};
use detflow_writer::{Codec, codec};

const W: usize = 1024;
const H: usize = 1024;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Knuth's method: fine for the small means of a dark background.
    fn poisson(&mut self, mean: f64) -> f64 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0.0, self.uniform());
        while p > limit {
            k += 1.0;
            p *= self.uniform();
        }
        k
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One 1024x1024 u16 peaks frame, little-endian bytes.
fn peaks_frame() -> Vec<u8> {
    peaks_frame_seeded(0x5EED_1234_ABCD_0001)
}

/// A peaks frame with its own peak amplitudes and noise.
fn peaks_frame_seeded(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let amplitude: Vec<f64> = (0..100)
        .map(|_| 1000.0 * (0.9 + 0.2 * rng.uniform()))
        .collect();
    let sigma2 = 2.0 * 8.0f64 * 8.0;
    let mut out = Vec::with_capacity(W * H * 2);
    for y in 0..H {
        for x in 0..W {
            // Nearest peak of the 10x10 grid at pitch 100 px, offset 62 px.
            let (px, py) = ((x as f64 - 62.0) / 100.0, (y as f64 - 62.0) / 100.0);
            let (ix, iy) = (px.round().clamp(0.0, 9.0), py.round().clamp(0.0, 9.0));
            let (dx, dy) = (x as f64 - 62.0 - ix * 100.0, y as f64 - 62.0 - iy * 100.0);
            let signal =
                amplitude[iy as usize * 10 + ix as usize] * (-(dx * dx + dy * dy) / sigma2).exp();
            let v = signal + signal.sqrt() * rng.normal() + rng.poisson(2.0);
            out.extend_from_slice(&(v.max(0.0).round() as u16).to_le_bytes());
        }
    }
    out
}

fn codecs(c: &mut Criterion) {
    let frame = peaks_frame();
    let mut group = c.benchmark_group("codec_1024x1024_u16");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.sample_size(20);
    for name in [
        "deflate:1",
        "lz4",
        "bslz4",
        "bszstd:1",
        "bszstd:3",
        "zstd:1",
        "zstd:3",
        "blosc:lz4:5",
        "blosc:blosclz:5",
        "blosc:zstd:1",
        "blosc:zstd:5",
    ] {
        let codec: Codec = name.parse().expect("a valid codec");
        let mut compressor = codec.compressor(PixelType::U16);
        let mut out = Vec::new();
        compressor.compress(&frame, &mut out);
        assert_eq!(codec.decode(PixelType::U16, &out).unwrap(), frame);
        eprintln!(
            "{name}: ratio {:.3} ({} -> {} bytes)",
            frame.len() as f64 / out.len() as f64,
            frame.len(),
            out.len()
        );
        group.bench_function(name, |b| {
            b.iter(|| compressor.compress(black_box(&frame), &mut out))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("bitshuffle_1024x1024_u16");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    let mut out = vec![0u8; frame.len()];
    for kernel in Kernel::available() {
        group.bench_function(kernel.name(), |b| {
            b.iter(|| bitshuffle::bitshuffle(kernel, black_box(&frame), &mut out, 2, 0))
        });
    }
    group.finish();

    // The choice of LZ4 encoder: the whole frame as one block (filter 32004), and the
    // bitshuffled 8 KiB blocks that bslz4 compresses (where the Rust port of liblz4's
    // encoder runs too).
    let mut shuffled = vec![0u8; frame.len()];
    bitshuffle::bitshuffle(Kernel::best(), &frame, &mut shuffled, 2, 0);
    let mut group = c.benchmark_group("lz4_library_1024x1024_u16");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    let mut buf = vec![0u8; lz4_flex::block::get_maximum_output_size(frame.len())];
    let block = bitshuffle::default_block_size(2) * 2;
    for (what, input, step) in [
        ("raw_frame", &frame, frame.len()),
        ("bitshuffled_8k_blocks", &shuffled, block),
    ] {
        let mut out = Vec::with_capacity(buf.len() + 4 * (input.len() / step + 1));
        group.bench_function(format!("lz4_c/{what}"), |b| {
            b.iter(|| {
                out.clear();
                for chunk in input.chunks(step) {
                    codec::lz4::append_block(black_box(chunk), &mut out, false);
                }
                out.len()
            })
        });
        if step <= codec::lz4_block::MAX_BLOCK {
            let mut rust = codec::lz4_block::SmallBlockEncoder::default();
            group.bench_function(format!("lz4_rust/{what}"), |b| {
                b.iter(|| {
                    out.clear();
                    for chunk in input.chunks(step) {
                        rust.append(black_box(chunk), &mut out, &[]);
                    }
                    out.len()
                })
            });
        }
        group.bench_function(format!("lz4_flex/{what}"), |b| {
            b.iter(|| {
                let mut n = 0;
                for chunk in input.chunks(step) {
                    n += lz4_flex::block::compress_into(black_box(chunk), &mut buf).unwrap();
                }
                n
            })
        });
    }
    group.finish();
}

/// The bslz4 encoder before issue #15: the AVX2 transform and liblz4's
/// `LZ4_compress_default` per block, nothing fetched ahead. The baseline of
/// `bslz4_1024x1024_u16`; it writes the same bytes as the encoder now.
fn bslz4_before(frame: &[u8], shuffled: &mut [u8], out: &mut Vec<u8>) {
    let kernel = Kernel::avx2().unwrap_or_else(Kernel::scalar);
    let elem_size = 2;
    let block = bitshuffle::default_block_size(elem_size);
    let n = frame.len() / elem_size;
    out.clear();
    out.reserve(12 + frame.len() / 2);
    out.extend_from_slice(&(frame.len() as u64).to_be_bytes());
    out.extend_from_slice(&((block * elem_size) as u32).to_be_bytes());
    for (start, len) in bitshuffle::blocks(n, block) {
        let raw = &frame[start * elem_size..(start + len) * elem_size];
        let shuffled = &mut shuffled[..raw.len()];
        kernel.trans_bit_elem(raw, shuffled, elem_size);
        codec::lz4::append_block(shuffled, out, false);
    }
    out.extend_from_slice(&frame[(n - n % bitshuffle::BLOCKED_MULT) * elem_size..]);
}

/// bslz4 now and before, on frames that stay in cache and frames that come from memory.
fn bslz4_now_and_before(c: &mut Criterion) {
    let distinct: Vec<Vec<u8>> = (0..16u64)
        .map(|k| peaks_frame_seeded(0x5EED_1234_ABCD_0001 ^ (k << 32)))
        .collect();
    // 64 buffers: the 16 frames again, each copy in its own memory.
    let all: Vec<Vec<u8>> = (0..64).map(|k| distinct[k % 16].clone()).collect();
    let mut compressor = Codec::BitshuffleLz4.compressor(PixelType::U16);
    let mut shuffled = vec![0u8; bitshuffle::default_block_size(2) * 2];
    let (mut now, mut before) = (Vec::new(), Vec::new());
    for frame in &distinct {
        compressor.compress(frame, &mut now);
        bslz4_before(frame, &mut shuffled, &mut before);
        assert!(now == before, "the bslz4 encoder's bytes changed");
    }
    let mut group = c.benchmark_group("bslz4_1024x1024_u16");
    group.throughput(Throughput::Bytes(all[0].len() as u64));
    group.sample_size(30);
    for (place, frames) in [("hot", &all[..1]), ("warm", &all[..16]), ("cold", &all[..])] {
        let mut k = 0;
        group.bench_function(format!("now/{place}"), |b| {
            b.iter(|| {
                k += 1;
                compressor.compress(black_box(&frames[k % frames.len()]), &mut now)
            })
        });
        group.bench_function(format!("before/{place}"), |b| {
            b.iter(|| {
                k += 1;
                bslz4_before(
                    black_box(&frames[k % frames.len()]),
                    &mut shuffled,
                    &mut before,
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = codecs, bslz4_now_and_before
}
criterion_main!(benches);
