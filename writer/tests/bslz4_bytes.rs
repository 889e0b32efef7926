//! The `bslz4` encoder writes the bytes the C bitshuffle filter writes, whatever the CPU: the
//! chunk equals the one built from the definitions (the scalar bitshuffle transform, then
//! liblz4's `LZ4_compress_default` per block), with every transform kernel this CPU runs, and
//! an independent LZ4 decoder (lz4_flex) reads every block back. The interop tests
//! (`tests/interop_codecs.rs`) check the same chunks against hdf5plugin's.

use detflow_hal::PixelType;
use detflow_writer::Codec;
use detflow_writer::codec::bitshuffle::{self, Kernel};
use detflow_writer::codec::bshuf::{BlockCodec, BshufEncoder};
use detflow_writer::codec::lz4_block::SmallBlockEncoder;
use detflow_writer::codec::{lz4, lz4_block};
use proptest::prelude::*;

/// The 32008 chunk (LZ4 blocks, default block size) as the C filter builds it: the scalar
/// transform, then liblz4 per block.
fn reference_chunk(frame: &[u8], elem_size: usize) -> Vec<u8> {
    let block = bitshuffle::default_block_size(elem_size);
    let n = frame.len() / elem_size;
    let mut out = Vec::new();
    out.extend_from_slice(&(frame.len() as u64).to_be_bytes());
    out.extend_from_slice(&((block * elem_size) as u32).to_be_bytes());
    for (start, len) in bitshuffle::blocks(n, block) {
        let raw = &frame[start * elem_size..(start + len) * elem_size];
        let mut shuffled = vec![0u8; raw.len()];
        Kernel::scalar().trans_bit_elem(raw, &mut shuffled, elem_size);
        lz4::append_block(&shuffled, &mut out, false);
    }
    out.extend_from_slice(&frame[(n - n % bitshuffle::BLOCKED_MULT) * elem_size..]);
    out
}

/// The chunk from an encoder with `kernel`.
fn chunk_with(kernel: Kernel, frame: &[u8], elem_size: usize) -> Vec<u8> {
    let mut encoder = BshufEncoder {
        kernel,
        shuffled: Vec::new(),
        block_codec: BlockCodec::Lz4(SmallBlockEncoder::default()),
    };
    let mut out = Vec::new();
    encoder.encode(frame, elem_size, &mut out);
    out
}

/// Decode a chunk with lz4_flex and the scalar inverse transform.
fn decode_with_lz4_flex(chunk: &[u8], elem_size: usize) -> Vec<u8> {
    let orig = u64::from_be_bytes(chunk[..8].try_into().unwrap()) as usize;
    let block = u32::from_be_bytes(chunk[8..12].try_into().unwrap()) as usize / elem_size;
    let n = orig / elem_size;
    let mut out = vec![0u8; orig];
    let mut at = 12;
    for (start, len) in bitshuffle::blocks(n, block) {
        let c = u32::from_be_bytes(chunk[at..at + 4].try_into().unwrap()) as usize;
        let shuffled = lz4_flex::block::decompress(&chunk[at + 4..at + 4 + c], len * elem_size)
            .unwrap_or_else(|e| panic!("block at element {start}: {e}"));
        bitshuffle::untrans_bit_elem(
            &shuffled,
            &mut out[start * elem_size..(start + len) * elem_size],
            elem_size,
        );
        at += 4 + c;
    }
    let tail = (n - n % bitshuffle::BLOCKED_MULT) * elem_size;
    out[tail..].copy_from_slice(&chunk[at..]);
    out
}

/// xorshift64: deterministic test pixels.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A detector-like frame of `w x h` pixels: a dark background of a few counts with noise,
/// a grid of bright gaussian peaks (the high bit-planes are mostly zero), little-endian.
fn peaks(w: usize, h: usize, elem_size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(w * h * elem_size);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = ((x % 100) as f64 - 50.0, (y % 100) as f64 - 50.0);
            let peak = 1000.0 * (-(dx * dx + dy * dy) / 128.0).exp();
            let v = peak as u64 + rng.next() % 4;
            out.extend_from_slice(&v.to_le_bytes()[..elem_size]);
        }
    }
    out
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

#[test]
fn bslz4_chunks_are_the_c_filters_bytes_with_every_kernel() {
    let kernels = Kernel::available();
    for elem_size in [1usize, 2, 4, 8] {
        // Whole blocks; a partial block and a raw tail; fewer than 8 elements.
        for (w, h) in [(1024, 256), (101, 67), (5, 1)] {
            for (what, frame) in [
                ("peaks", peaks(w, h, elem_size, 7)),
                ("noise", noise(w * h * elem_size, 8)),
                ("zeros", vec![0u8; w * h * elem_size]),
            ] {
                let want = reference_chunk(&frame, elem_size);
                for &kernel in &kernels {
                    let got = chunk_with(kernel, &frame, elem_size);
                    assert!(
                        got == want,
                        "{what} {w}x{h}x{elem_size} with {}: {} bytes, want {}",
                        kernel.name(),
                        got.len(),
                        want.len()
                    );
                }
                assert_eq!(decode_with_lz4_flex(&want, elem_size), frame, "{what}");
            }
        }
    }
}

#[test]
fn the_bslz4_codec_writes_the_c_filters_bytes() {
    for (pixel_type, elem_size) in [
        (PixelType::U8, 1),
        (PixelType::U16, 2),
        (PixelType::U32, 4),
        (PixelType::F64, 8),
    ] {
        let mut compressor = Codec::BitshuffleLz4.compressor(pixel_type);
        let mut out = Vec::new();
        // Several frames through one compressor: its state carries over.
        for seed in 1..4 {
            let frame = peaks(512, 300, elem_size, seed);
            compressor.compress(&frame, &mut out);
            assert!(out == reference_chunk(&frame, elem_size), "{pixel_type:?}");
            assert_eq!(decode_with_lz4_flex(&out, elem_size), frame);
        }
    }
}

/// Elements so large that a default block is over 64 KiB go to liblz4: still the same
/// chunk, still readable.
#[test]
fn blocks_over_64_kib_still_give_the_c_filters_bytes() {
    let elem_size = 1024;
    assert!(bitshuffle::default_block_size(elem_size) * elem_size > lz4_block::MAX_BLOCK);
    let mut frame = peaks(300, 1, 8, 3).repeat(elem_size / 8);
    frame.extend(noise(elem_size * 11, 4));
    let want = reference_chunk(&frame, elem_size);
    assert!(chunk_with(Kernel::best(), &frame, elem_size) == want);
    assert_eq!(decode_with_lz4_flex(&want, elem_size), frame);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Frames made of runs of one value and runs of noise of a few bits, as bit-planes of
    /// detector frames are.
    #[test]
    fn random_frames_give_the_c_filters_bytes(
        elem_size in prop::sample::select(vec![1usize, 2, 4, 8]),
        runs in prop::collection::vec((any::<u64>(), 0usize..3000, 0u32..12), 0..20),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let mut frame = Vec::new();
        for (value, n, noise_bits) in runs {
            for _ in 0..n {
                let v = value.wrapping_add(rng.next() & ((1u64 << noise_bits) - 1));
                frame.extend_from_slice(&v.to_le_bytes()[..elem_size]);
            }
        }
        let want = reference_chunk(&frame, elem_size);
        for kernel in Kernel::available() {
            prop_assert!(chunk_with(kernel, &frame, elem_size) == want, "{}", kernel.name());
        }
        prop_assert_eq!(decode_with_lz4_flex(&want, elem_size), frame);
    }
}
