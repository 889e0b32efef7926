//! HDF5 filter 32008 (kiyo-masui/bitshuffle `bshuf_h5filter.c`) with LZ4 or zstd.
//!
//! ```text
//! u64 BE  original size in bytes
//! u32 BE  block size in bytes (block elements * element size)
//! per block (every full block, then the rest rounded down to 8 elements if not empty):
//!         u32 BE compressed size, then one LZ4 block or one zstd frame of the
//!         bitshuffled block (no raw escape, unlike 32004)
//! the last (elements % 8) elements, raw
//! ```

use super::DecodeFailure;
use super::bitshuffle::{self, Kernel};
use super::lz4_block::{self, SmallBlockEncoder};

/// The per-block compressor behind the bitshuffle.
pub enum BlockCodec {
    /// The bytes of `LZ4_compress_default` (filter compression code 2): from
    /// [`SmallBlockEncoder`] for blocks up to [`lz4_block::MAX_BLOCK`] bytes (the default
    /// blocks of elements up to 512 bytes), from liblz4 above.
    Lz4(SmallBlockEncoder),
    /// `ZSTD_compress` at a level (filter compression code 3). The scratch buffer holds one
    /// block's frame.
    Zstd(Box<zstd::bulk::Compressor<'static>>, Vec<u8>),
}

impl std::fmt::Debug for BlockCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockCodec::Lz4(_) => "Lz4",
            BlockCodec::Zstd(..) => "Zstd",
        })
    }
}

/// Reused state of one bitshuffle compressor.
#[derive(Debug)]
pub struct BshufEncoder {
    /// The transform implementation, chosen once.
    pub kernel: Kernel,
    /// One block, bitshuffled.
    pub shuffled: Vec<u8>,
    /// The compressor of shuffled blocks.
    pub block_codec: BlockCodec,
}

impl BshufEncoder {
    /// Append the 32008 chunk of `frame` (elements of `elem_size` bytes, default block
    /// size) to `out`.
    ///
    /// # Panics
    ///
    /// If `frame` is not whole elements, or a block is 2 GiB or larger.
    pub fn encode(&mut self, frame: &[u8], elem_size: usize, out: &mut Vec<u8>) {
        assert!(
            frame.len().is_multiple_of(elem_size),
            "a frame of {} bytes is not whole {elem_size}-byte elements",
            frame.len()
        );
        let block = bitshuffle::default_block_size(elem_size);
        let n = frame.len() / elem_size;
        out.reserve(12 + frame.len() / 2);
        out.extend_from_slice(&(frame.len() as u64).to_be_bytes());
        out.extend_from_slice(&((block * elem_size) as u32).to_be_bytes());
        self.shuffled.resize(block * elem_size, 0);
        let mut blocks = bitshuffle::blocks(n, block);
        while let Some((start, len)) = blocks.next() {
            let raw = &frame[start * elem_size..(start + len) * elem_size];
            let shuffled = &mut self.shuffled[..raw.len()];
            self.kernel.trans_bit_elem(raw, shuffled, elem_size);
            // The frame is mostly in L3 or memory (another thread wrote it, or it is one of
            // many), and the transform would wait for every line of it: fetch the next block
            // while this one compresses, which needs nothing beyond L1.
            let ahead = blocks.clone().next().map_or(&[][..], |(start, len)| {
                &frame[start * elem_size..(start + len) * elem_size]
            });
            match &mut self.block_codec {
                BlockCodec::Lz4(lz4) if shuffled.len() <= lz4_block::MAX_BLOCK => {
                    let at = out.len();
                    out.extend_from_slice(&[0; 4]);
                    let n = lz4.append(shuffled, out, ahead);
                    out[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
                }
                BlockCodec::Lz4(_) => {
                    super::prefetch(ahead);
                    super::lz4::append_block(shuffled, out, false)
                }
                BlockCodec::Zstd(z, scratch) => {
                    super::prefetch(ahead);
                    let bound = zstd::zstd_safe::compress_bound(shuffled.len());
                    if scratch.len() < bound {
                        scratch.resize(bound, 0);
                    }
                    let c = z
                        .compress_to_buffer(shuffled, &mut scratch[..])
                        .expect("zstd into a buffer of ZSTD_compressBound bytes cannot fail");
                    out.extend_from_slice(&(c as u32).to_be_bytes());
                    out.extend_from_slice(&scratch[..c]);
                }
            }
        }
        out.extend_from_slice(&frame[(n - n % bitshuffle::BLOCKED_MULT) * elem_size..]);
    }
}

/// Decode a 32008 chunk with compression `2` (LZ4) or `3` (zstd), as `bshuf_h5_filter`
/// does: the block size comes from the header.
pub fn decode(chunk: &[u8], elem_size: usize, zstd: bool) -> Result<Vec<u8>, DecodeFailure> {
    let mut r = super::Reader::new(chunk);
    let orig = usize::try_from(r.u64()?).map_err(|_| DecodeFailure::from("size overflows"))?;
    let block_bytes = r.u32()? as usize;
    if orig % elem_size != 0 {
        return Err("size is not whole elements".into());
    }
    let block = block_bytes / elem_size;
    if block == 0 || !block.is_multiple_of(bitshuffle::BLOCKED_MULT) {
        return Err(format!("bad block size {block_bytes} bytes").into());
    }
    let n = orig / elem_size;
    let mut out = vec![0u8; orig];
    let mut shuffled = Vec::new();
    for (start, len) in bitshuffle::blocks(n, block) {
        let c = r.u32()? as usize;
        let payload = r.bytes(c)?;
        let want = len * elem_size;
        shuffled = if zstd {
            zstd::bulk::decompress(payload, want)
                .map_err(|e| DecodeFailure(format!("zstd block at element {start}: {e}")))?
        } else {
            shuffled.resize(want, 0);
            let got = lz4::block::decompress_to_buffer(payload, Some(want as i32), &mut shuffled)
                .map_err(|e| DecodeFailure(format!("LZ4 block at element {start}: {e}")))?;
            shuffled.truncate(got);
            shuffled
        };
        if shuffled.len() != want {
            return Err(format!(
                "block at element {start} gave {} of {want} bytes",
                shuffled.len()
            )
            .into());
        }
        bitshuffle::untrans_bit_elem(&shuffled, &mut out[start * elem_size..][..want], elem_size);
    }
    let tail = (n - n % bitshuffle::BLOCKED_MULT) * elem_size;
    out[tail..].copy_from_slice(r.bytes(orig - tail)?);
    r.finish()?;
    Ok(out)
}
