//! HDF5 filter 32001 (Blosc/hdf5-blosc `blosc_filter.c`): one c-blosc 1.x frame per chunk, as
//! `blosc_compress` writes it. We call `blosc_compress_ctx`, the context variant that takes
//! no global lock and reads no environment variables, from the C library `blosc-src` builds.

use std::ffi::{CStr, c_int};

use super::{BloscCompressor, DecodeFailure};

/// `BLOSC_MAX_OVERHEAD`: a destination of `nbytes + 16` always fits (blosc then stores the
/// data with its memcpy flag set).
const MAX_OVERHEAD: usize = blosc_src::BLOSC_MAX_OVERHEAD as usize;

/// `BLOSC_SHUFFLE`: byte shuffle, what the filter's cd_values[5] = 1 says.
const SHUFFLE: c_int = blosc_src::BLOSC_SHUFFLE as c_int;

impl BloscCompressor {
    /// The name c-blosc knows the compressor by.
    fn c_name(self) -> &'static CStr {
        match self {
            BloscCompressor::BloscLz => c"blosclz",
            BloscCompressor::Lz4 => c"lz4",
            BloscCompressor::Lz4Hc => c"lz4hc",
            BloscCompressor::Zlib => c"zlib",
            BloscCompressor::Zstd => c"zstd",
        }
    }
}

/// Append the blosc frame of `frame` to `out`: byte shuffle over `typesize`-byte elements,
/// automatic block size, one thread.
///
/// # Panics
///
/// If `frame` is larger than blosc's limit (2 GiB - 16 bytes) or c-blosc reports an internal
/// error (it documents that this does not happen).
pub fn encode(
    frame: &[u8],
    typesize: usize,
    compressor: BloscCompressor,
    level: u8,
    out: &mut Vec<u8>,
) {
    assert!(
        frame.len() <= i32::MAX as usize - MAX_OVERHEAD,
        "blosc frames must be below 2 GiB, got {} bytes",
        frame.len()
    );
    let start = out.len();
    let cap = frame.len() + MAX_OVERHEAD;
    out.reserve(cap);
    let dest = out.spare_capacity_mut();
    // SAFETY: src is valid for frame.len() bytes; dest is the vector's spare capacity, valid
    // for writes of cap <= dest.len() bytes, not overlapping src; c-blosc never writes past
    // destsize. The compressor name is a NUL-terminated static string. blosc_compress_ctx
    // keeps all state in a local context, so concurrent calls are sound.
    let n = unsafe {
        blosc_src::blosc_compress_ctx(
            c_int::from(level),
            SHUFFLE,
            typesize,
            frame.len(),
            frame.as_ptr().cast(),
            dest.as_mut_ptr().cast(),
            cap,
            compressor.c_name().as_ptr(),
            0,
            1,
        )
    };
    assert!(
        n > 0,
        "blosc_compress_ctx({}) failed with {n} on {} bytes",
        compressor.c_name().to_string_lossy(),
        frame.len()
    );
    // SAFETY: c-blosc wrote n bytes (n <= cap) at the start of the spare capacity.
    unsafe { out.set_len(start + n as usize) };
}

/// Decode a blosc frame as the filter does (`blosc_cbuffer_sizes` + `blosc_decompress`).
pub fn decode(chunk: &[u8]) -> Result<Vec<u8>, DecodeFailure> {
    let mut nbytes = 0usize;
    // SAFETY: chunk is valid for chunk.len() bytes; validate reads no further and writes
    // one usize through the valid pointer.
    let rc = unsafe {
        blosc_src::blosc_cbuffer_validate(chunk.as_ptr().cast(), chunk.len(), &mut nbytes)
    };
    if rc != 0 {
        return Err("not a valid blosc frame".into());
    }
    let mut out = vec![0u8; nbytes];
    // SAFETY: validate checked that the frame's header and sizes fit within chunk.len(), so
    // decompression reads inside chunk; it writes at most out.len() bytes into out.
    let n = unsafe {
        blosc_src::blosc_decompress_ctx(
            chunk.as_ptr().cast(),
            out.as_mut_ptr().cast(),
            out.len(),
            1,
        )
    };
    if n < 0 || n as usize != nbytes {
        return Err(format!("blosc_decompress_ctx returned {n}, expected {nbytes}").into());
    }
    Ok(out)
}
