//! HDF5 filter 32004 (HDFGroup `H5Zlz4.c`): LZ4 *block* payloads in a big-endian frame.
//!
//! ```text
//! u64 BE  original size
//! u32 BE  block size (the C filter's default: 1 GiB, clamped to the original size)
//! per block: u32 BE compressed size, then that many bytes: an LZ4 block, or the raw
//!            block when LZ4 did not shrink it (compressed size == the block's raw size)
//! ```

use std::ffi::c_int;

use lz4::liblz4::{LZ4_compress_default, LZ4_compressBound};

use super::DecodeFailure;

/// The C filter's default block size: LZ4 blocks must stay below ~1.9 GiB.
pub const DEFAULT_BLOCK_BYTES: usize = 1 << 30;

/// The block size the filter header records for a chunk of `chunk_bytes` bytes.
pub fn block_bytes(chunk_bytes: usize) -> usize {
    DEFAULT_BLOCK_BYTES.min(chunk_bytes)
}

/// Append one block as the filters store it: `u32 BE` payload size, then the payload, an
/// LZ4 block from `LZ4_compress_default` written straight into `out`'s spare capacity. With
/// `raw_escape` (filter 32004, not 32008) a block that LZ4 does not shrink is stored raw.
///
/// # Panics
///
/// If `block` is 2 GiB or larger.
pub fn append_block(block: &[u8], out: &mut Vec<u8>, raw_escape: bool) {
    let len = c_int::try_from(block.len()).expect("LZ4 blocks are below 2 GiB");
    // SAFETY: a pure function of its argument.
    let bound = unsafe { LZ4_compressBound(len) };
    assert!(bound > 0, "LZ4 refuses a block of {len} bytes");
    let at = out.len();
    out.reserve(4 + bound as usize);
    out.extend_from_slice(&[0; 4]);
    let dst = out.spare_capacity_mut();
    // SAFETY: block is readable for len bytes; dst is the vector's spare capacity, writable
    // for at least bound bytes (reserved above) and disjoint from block; LZ4 never writes
    // more than the capacity it is given.
    let n =
        unsafe { LZ4_compress_default(block.as_ptr().cast(), dst.as_mut_ptr().cast(), len, bound) };
    assert!(n > 0, "LZ4_compress_default failed on {len} bytes");
    let n = n as usize;
    if raw_escape && n >= block.len() {
        // The C 32004 encoder stores such a block raw; its decoder recognises that by the
        // payload size equal to the block size.
        out.extend_from_slice(block);
    } else {
        // SAFETY: LZ4 initialised the first n <= bound bytes of the spare capacity.
        unsafe { out.set_len(at + 4 + n) };
    }
    let stored = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&stored.to_be_bytes());
}

/// Append the 32004 chunk of `frame` to `out`.
///
/// # Panics
///
/// If `frame` is 2 GiB or larger: the filter's encoder refuses such chunks.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) {
    assert!(
        frame.len() <= i32::MAX as usize,
        "filter 32004 chunks must be below 2 GiB, got {} bytes",
        frame.len()
    );
    let block = block_bytes(frame.len()).max(1);
    out.extend_from_slice(&(frame.len() as u64).to_be_bytes());
    out.extend_from_slice(&(block as u32).to_be_bytes());
    for raw in frame.chunks(block) {
        append_block(raw, out, true);
    }
}

/// Decode a 32004 chunk, as `H5Z_filter_lz4` does.
pub fn decode(chunk: &[u8]) -> Result<Vec<u8>, DecodeFailure> {
    let mut r = super::Reader::new(chunk);
    let orig = usize::try_from(r.u64()?).map_err(|_| DecodeFailure::from("size overflows"))?;
    let mut block = r.u32()? as usize;
    if block > orig {
        block = orig;
    }
    if block == 0 && orig > 0 {
        return Err("block size 0".into());
    }
    let mut out = vec![0u8; orig];
    let mut done = 0;
    while done < orig {
        let this = block.min(orig - done);
        let c = r.u32()? as usize;
        let payload = r.bytes(c)?;
        let dst = &mut out[done..done + this];
        if c == this {
            dst.copy_from_slice(payload);
        } else {
            let n = lz4::block::decompress_to_buffer(payload, Some(this as i32), dst)
                .map_err(|e| DecodeFailure(format!("LZ4 block at {done}: {e}")))?;
            if n != this {
                return Err(format!("LZ4 block at {done} gave {n} of {this} bytes").into());
            }
        }
        done += this;
    }
    r.finish()?;
    Ok(out)
}
