//! Chunk codecs: turn one frame's bytes into the bytes of one HDF5 chunk.
//!
//! Each codec produces exactly what the matching HDF5 filter's decoder expects, so the chunk
//! can go to `H5Dwrite_chunk` with filter mask 0 and h5py (with hdf5plugin for the filters
//! HDF5 does not ship) reads it through its filter pipeline. The codec runs outside the HDF5
//! lock, on whichever thread calls [`Compressor::compress`]; [`Codec::decode`] is the reverse,
//! for tests and tools.
//!
//! | codec | filter | chunk |
//! |---|---|---|
//! | `none` | - | raw frame |
//! | `deflate[:L]` | 1 | one zlib stream |
//! | `lz4` | 32004 | H5Z-LZ4 frame of LZ4 blocks ([`lz4`]) |
//! | `bslz4`, `bszstd[:L]` | 32008 | bitshuffled blocks, each LZ4 or zstd ([`bshuf`]) |
//! | `zstd[:L]` | 32015 | one zstd frame with its content size |
//! | `blosc[:C[:L]]` | 32001 | one c-blosc 1.x frame, byte shuffle ([`blosc`]) |

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use detflow_hal::PixelType;
use flate2::{Compress, Compression, FlushCompress, Status};
use thiserror::Error;

pub mod bitshuffle;
pub mod blosc;
pub mod bshuf;
pub mod lz4;
pub mod lz4_block;

/// HDF5's deflate filter id (zlib stream).
pub const FILTER_DEFLATE: u32 = 1;
/// Blosc (c-blosc 1.x frames).
pub const FILTER_BLOSC: u32 = 32001;
/// H5Z-LZ4.
pub const FILTER_LZ4: u32 = 32004;
/// Bitshuffle, optionally with LZ4 or zstd.
pub const FILTER_BITSHUFFLE: u32 = 32008;
/// Zstandard.
pub const FILTER_ZSTD: u32 = 32015;

/// Bitshuffle filter version recorded in `cd_values[0..2]` (informational; the chunk format
/// with zstd blocks is that of bitshuffle 0.4 and later).
const BSHUF_VERSION: [u32; 2] = [0, 5];
/// Bitshuffle `cd_values[4]`: LZ4 blocks.
const BSHUF_LZ4: u32 = 2;
/// Bitshuffle `cd_values[4]`: zstd blocks.
const BSHUF_ZSTD: u32 = 3;

/// Default zstd level (zstd's own default, and hdf5plugin's).
pub const ZSTD_DEFAULT_LEVEL: u8 = 3;
/// Highest zstd level accepted.
pub const ZSTD_MAX_LEVEL: u8 = 22;
/// Default blosc level.
pub const BLOSC_DEFAULT_LEVEL: u8 = 5;

/// How each frame's chunk is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Raw frame bytes, no filter.
    #[default]
    None,
    /// HDF5 filter 1: one zlib (RFC 1950) stream per chunk, level 0-9.
    Deflate {
        /// zlib level, 0 (store) to 9 (best).
        level: u8,
    },
    /// HDF5 filter 32004: the whole chunk as one LZ4 block (below 1 GiB) in H5Z-LZ4 framing.
    Lz4,
    /// HDF5 filter 32008, compression 2: bitshuffle then LZ4, per block of ~8 KiB.
    BitshuffleLz4,
    /// HDF5 filter 32008, compression 3: bitshuffle then zstd, per block of ~8 KiB.
    BitshuffleZstd {
        /// zstd level, 1-22.
        level: u8,
    },
    /// HDF5 filter 32015: one zstd frame per chunk.
    Zstd {
        /// zstd level, 1-22.
        level: u8,
    },
    /// HDF5 filter 32001: one c-blosc 1.x frame per chunk, byte shuffle.
    Blosc {
        /// The compressor blosc runs after the shuffle.
        compressor: BloscCompressor,
        /// blosc level, 0 (store) to 9.
        level: u8,
    },
}

/// The compressors of c-blosc 1.x that this build includes (snappy is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BloscCompressor {
    /// `blosclz`, blosc's own LZ77 (code 0).
    BloscLz,
    /// `lz4` (code 1).
    Lz4,
    /// `lz4hc` (code 2).
    Lz4Hc,
    /// `zlib` (code 4).
    Zlib,
    /// `zstd` (code 5).
    Zstd,
}

impl BloscCompressor {
    /// Every compressor, in code order.
    pub const ALL: [BloscCompressor; 5] = [
        BloscCompressor::BloscLz,
        BloscCompressor::Lz4,
        BloscCompressor::Lz4Hc,
        BloscCompressor::Zlib,
        BloscCompressor::Zstd,
    ];

    /// The name on the command line and in c-blosc.
    pub fn name(self) -> &'static str {
        match self {
            BloscCompressor::BloscLz => "blosclz",
            BloscCompressor::Lz4 => "lz4",
            BloscCompressor::Lz4Hc => "lz4hc",
            BloscCompressor::Zlib => "zlib",
            BloscCompressor::Zstd => "zstd",
        }
    }

    /// The filter's compressor code (`cd_values[6]`, `BLOSC_*_FORMAT`).
    pub fn code(self) -> u32 {
        match self {
            BloscCompressor::BloscLz => 0,
            BloscCompressor::Lz4 => 1,
            BloscCompressor::Lz4Hc => 2,
            BloscCompressor::Zlib => 4,
            BloscCompressor::Zstd => 5,
        }
    }
}

/// A codec string that does not parse; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid codec {value:?}: {reason}")]
pub struct CodecError {
    /// The string given.
    pub value: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Codec {
    /// What [`FromStr`] accepts, for help texts.
    pub const SYNTAX: &'static str = "none, deflate[:LEVEL], lz4, bslz4, bszstd[:LEVEL], \
                                      zstd[:LEVEL], blosc[:COMPRESSOR[:LEVEL]]";
}

impl FromStr for Codec {
    type Err = CodecError;

    /// `none`; `deflate[:0-9]` (default 6; `zlib`, `gzip` are aliases); `lz4`; `bslz4`;
    /// `bszstd[:1-22]` and `zstd[:1-22]` (default 3); `blosc[:COMPRESSOR[:0-9]]` with
    /// COMPRESSOR one of blosclz, lz4, lz4hc, zlib, zstd (default `blosc:lz4:5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CodecError {
            value: s.to_owned(),
            reason,
        };
        let mut fields = s.split(':');
        let name = fields.next().unwrap_or_default();
        let first = fields.next();
        let second = fields.next();
        if fields.next().is_some() {
            return Err(err("too many `:` fields"));
        }
        let no_args = |codec, reason| match first {
            None => Ok(codec),
            Some(_) => Err(err(reason)),
        };
        let level = |field: Option<&str>, default: u8, range: (u8, u8), reason| match field {
            None => Ok(default),
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| (range.0..=range.1).contains(l))
                .ok_or_else(|| err(reason)),
        };
        let zstd_level = |field| {
            level(
                field,
                ZSTD_DEFAULT_LEVEL,
                (1, ZSTD_MAX_LEVEL),
                "zstd level must be an integer 1-22",
            )
        };
        if name != "blosc" && second.is_some() {
            return Err(err("too many `:` fields"));
        }
        match name {
            "none" => no_args(Codec::None, "`none` takes no level"),
            "deflate" | "zlib" | "gzip" => Ok(Codec::Deflate {
                level: level(first, 6, (0, 9), "deflate level must be an integer 0-9")?,
            }),
            "lz4" => no_args(Codec::Lz4, "`lz4` takes no level"),
            "bslz4" => no_args(Codec::BitshuffleLz4, "`bslz4` takes no level"),
            "bszstd" => Ok(Codec::BitshuffleZstd {
                level: zstd_level(first)?,
            }),
            "zstd" => Ok(Codec::Zstd {
                level: zstd_level(first)?,
            }),
            "blosc" => {
                let compressor = match first {
                    None => BloscCompressor::Lz4,
                    Some(c) => BloscCompressor::ALL
                        .into_iter()
                        .find(|k| k.name() == c)
                        .ok_or_else(|| {
                            err("blosc compressor must be one of blosclz, lz4, lz4hc, zlib, zstd")
                        })?,
                };
                let level = level(
                    second,
                    BLOSC_DEFAULT_LEVEL,
                    (0, 9),
                    "blosc level must be an integer 0-9",
                )?;
                Ok(Codec::Blosc { compressor, level })
            }
            _ => Err(err(
                "expected none, deflate[:LEVEL], lz4, bslz4, bszstd[:LEVEL], zstd[:LEVEL] \
                 or blosc[:COMPRESSOR[:LEVEL]]",
            )),
        }
    }
}

impl fmt::Display for Codec {
    /// The canonical form, which [`FromStr`] parses back to the same codec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Deflate { level } => write!(f, "deflate:{level}"),
            Codec::Lz4 => f.write_str("lz4"),
            Codec::BitshuffleLz4 => f.write_str("bslz4"),
            Codec::BitshuffleZstd { level } => write!(f, "bszstd:{level}"),
            Codec::Zstd { level } => write!(f, "zstd:{level}"),
            Codec::Blosc { compressor, level } => write!(f, "blosc:{}:{level}", compressor.name()),
        }
    }
}

impl Codec {
    /// The HDF5 filter to declare on a dataset of `pixel_type` elements whose chunks hold
    /// `chunk_bytes` raw bytes, or `None` for raw chunks. The `cd_values` are those the
    /// filter's `set_local` would store, since an unregistered filter's `set_local` never runs.
    pub fn filter(&self, pixel_type: PixelType, chunk_bytes: usize) -> Option<FilterSpec> {
        let elem_size = pixel_type.size() as u32;
        let (id, cd_values) = match *self {
            Codec::None => return None,
            Codec::Deflate { level } => (FILTER_DEFLATE, vec![u32::from(level)]),
            Codec::Lz4 => (FILTER_LZ4, vec![lz4::block_bytes(chunk_bytes) as u32]),
            // Block size 0: the filter's default, which is what the chunk uses.
            Codec::BitshuffleLz4 => (
                FILTER_BITSHUFFLE,
                vec![BSHUF_VERSION[0], BSHUF_VERSION[1], elem_size, 0, BSHUF_LZ4],
            ),
            Codec::BitshuffleZstd { level } => (
                FILTER_BITSHUFFLE,
                vec![
                    BSHUF_VERSION[0],
                    BSHUF_VERSION[1],
                    elem_size,
                    0,
                    BSHUF_ZSTD,
                    u32::from(level),
                ],
            ),
            Codec::Zstd { level } => (FILTER_ZSTD, vec![u32::from(level)]),
            // [filter revision 2, blosc format 2, typesize, chunk bytes, level, shuffle, code].
            Codec::Blosc { compressor, level } => (
                FILTER_BLOSC,
                vec![
                    2,
                    2,
                    elem_size,
                    u32::try_from(chunk_bytes).unwrap_or(u32::MAX),
                    u32::from(level),
                    1,
                    compressor.code(),
                ],
            ),
        };
        Some(FilterSpec { id, cd_values })
    }

    /// The codec whose [`decode`](Codec::decode) reads chunks of the HDF5 filter `id` with
    /// `cd_values`, as recorded on a dataset (by detflow or another writer), or `None` if
    /// there is none: another filter, a bitshuffle without compression, or a blosc chunk
    /// format other than c-blosc 1.x. Parameters that only the encoder uses (levels) are
    /// taken from `cd_values` when present, else defaulted.
    pub fn from_filter(id: u32, cd_values: &[u32]) -> Option<Codec> {
        let level = |i: usize, default: u8| {
            cd_values
                .get(i)
                .and_then(|&l| u8::try_from(l).ok())
                .unwrap_or(default)
        };
        match id {
            FILTER_DEFLATE => Some(Codec::Deflate {
                level: level(0, 6).min(9),
            }),
            FILTER_LZ4 => Some(Codec::Lz4),
            FILTER_BITSHUFFLE => match cd_values.get(4) {
                Some(&BSHUF_LZ4) => Some(Codec::BitshuffleLz4),
                Some(&BSHUF_ZSTD) => Some(Codec::BitshuffleZstd {
                    level: level(5, ZSTD_DEFAULT_LEVEL).clamp(1, ZSTD_MAX_LEVEL),
                }),
                _ => None,
            },
            FILTER_ZSTD => Some(Codec::Zstd {
                level: level(0, ZSTD_DEFAULT_LEVEL).clamp(1, ZSTD_MAX_LEVEL),
            }),
            // The decoder reads the compressor from each chunk's header, not from cd_values.
            FILTER_BLOSC => Some(Codec::Blosc {
                compressor: cd_values
                    .get(6)
                    .and_then(|&code| BloscCompressor::ALL.into_iter().find(|c| c.code() == code))
                    .unwrap_or(BloscCompressor::Lz4),
                level: level(4, BLOSC_DEFAULT_LEVEL).min(9),
            }),
            _ => None,
        }
    }

    /// A reusable compressor for frames of `pixel_type` (one per compressing thread).
    pub fn compressor(&self, pixel_type: PixelType) -> Compressor {
        let zstd = |level: u8| {
            zstd::bulk::Compressor::new(i32::from(level))
                .expect("a zstd context at a level in 1-22 can be made")
        };
        let engine = match *self {
            Codec::None => Engine::Copy,
            Codec::Deflate { level } => {
                Engine::Zlib(Compress::new(Compression::new(u32::from(level)), true))
            }
            Codec::Lz4 => Engine::Lz4,
            Codec::BitshuffleLz4 => Engine::Bshuf(bshuf::BshufEncoder {
                kernel: bitshuffle::Kernel::best(),
                shuffled: Vec::new(),
                block_codec: bshuf::BlockCodec::Lz4(lz4_block::SmallBlockEncoder::default()),
            }),
            Codec::BitshuffleZstd { level } => Engine::Bshuf(bshuf::BshufEncoder {
                kernel: bitshuffle::Kernel::best(),
                shuffled: Vec::new(),
                block_codec: bshuf::BlockCodec::Zstd(Box::new(zstd(level)), Vec::new()),
            }),
            Codec::Zstd { level } => Engine::Zstd(Box::new(zstd(level))),
            Codec::Blosc { .. } => Engine::Blosc,
        };
        Compressor {
            codec: *self,
            elem_size: pixel_type.size(),
            engine,
        }
    }

    /// Decode one chunk written with this codec for `pixel_type` frames, the way the HDF5
    /// filter's decoder does, and return the frame's bytes. For tests and tools: it
    /// allocates, and checks the framing strictly.
    pub fn decode(&self, pixel_type: PixelType, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let elem_size = pixel_type.size();
        let out = match *self {
            Codec::None => Ok(chunk.to_vec()),
            Codec::Deflate { .. } => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(chunk)
                    .read_to_end(&mut out)
                    .map(|_| out)
                    .map_err(|e| DecodeFailure(format!("zlib: {e}")))
            }
            Codec::Lz4 => lz4::decode(chunk),
            Codec::BitshuffleLz4 => bshuf::decode(chunk, elem_size, false),
            Codec::BitshuffleZstd { .. } => bshuf::decode(chunk, elem_size, true),
            Codec::Zstd { .. } => match zstd::zstd_safe::get_frame_content_size(chunk) {
                Ok(Some(n)) => zstd::bulk::decompress(chunk, n as usize)
                    .map_err(|e| DecodeFailure(format!("zstd: {e}"))),
                Ok(None) => Err("the zstd frame header has no content size".into()),
                Err(_) => Err("not a zstd frame".into()),
            },
            Codec::Blosc { .. } => blosc::decode(chunk),
        };
        out.map_err(|DecodeFailure(reason)| DecodeError {
            codec: *self,
            reason,
        })
    }
}

/// An HDF5 filter as declared on a dataset: id and `cd_values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    /// Registered HDF5 filter id.
    pub id: u32,
    /// The filter's client data values, as the decoder expects them.
    pub cd_values: Vec<u32>,
}

/// A chunk that [`Codec::decode`] cannot decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("chunk does not decode as {codec}: {reason}")]
pub struct DecodeError {
    /// The codec it was decoded as.
    pub codec: Codec,
    /// What is wrong.
    pub reason: String,
}

/// The reason of a [`DecodeError`], before the codec is attached.
#[derive(Debug)]
pub struct DecodeFailure(String);

impl From<&str> for DecodeFailure {
    fn from(s: &str) -> Self {
        DecodeFailure(s.to_owned())
    }
}

impl From<String> for DecodeFailure {
    fn from(s: String) -> Self {
        DecodeFailure(s)
    }
}

/// Ask the CPU to bring `bytes` into its L2 cache, without waiting for them. A hint only: a
/// no-op where there is no prefetch instruction we can reach on stable Rust.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: a prefetch is a hint that never faults nor changes memory (and the address
        // is inside bytes anyway); SSE is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Big-endian reads through a chunk, failing on truncation.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(chunk: &'a [u8]) -> Self {
        Reader { rest: chunk }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeFailure> {
        if self.rest.len() < n {
            return Err(format!("truncated: {n} bytes wanted, {} left", self.rest.len()).into());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, DecodeFailure> {
        Ok(u32::from_be_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, DecodeFailure> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().unwrap()))
    }

    fn finish(self) -> Result<(), DecodeFailure> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the last block").into()),
        }
    }
}

/// Per-thread codec state, reused frame after frame.
pub struct Compressor {
    codec: Codec,
    /// Bytes per pixel of the frames this compressor encodes.
    elem_size: usize,
    engine: Engine,
}

enum Engine {
    Copy,
    Zlib(Compress),
    Lz4,
    Bshuf(bshuf::BshufEncoder),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Blosc,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("codec", &self.codec)
            .field("elem_size", &self.elem_size)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// The codec this compressor encodes.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encode `frame` into `out` (cleared first; its capacity is reused). For
    /// [`Codec::None`] this copies, so callers write raw frames straight from the frame
    /// buffer instead.
    ///
    /// # Panics
    ///
    /// If `frame` is not whole pixels (bitshuffle), or is 2 GiB or larger (LZ4, blosc: their
    /// filters refuse such chunks; HDF5 chunks are below 4 GiB anyway).
    pub fn compress(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match &mut self.engine {
            Engine::Copy => out.extend_from_slice(frame),
            Engine::Zlib(z) => {
                z.reset();
                // zlib's compressBound: the stream nearly always fits, so one call finishes
                // it; stored blocks of tiny or incompressible inputs can take a few more.
                let bound = frame.len() + (frame.len() >> 12) + (frame.len() >> 14) + 64;
                out.reserve(bound);
                loop {
                    let rest = &frame[z.total_in() as usize..];
                    let status = z
                        .compress_vec(rest, out, FlushCompress::Finish)
                        .expect("zlib compression of an in-memory buffer cannot fail");
                    if status == Status::StreamEnd {
                        break;
                    }
                    out.reserve(out.capacity() / 8 + 1024);
                }
                debug_assert_eq!(z.total_in(), frame.len() as u64);
            }
            Engine::Lz4 => lz4::encode(frame, out),
            Engine::Bshuf(enc) => enc.encode(frame, self.elem_size, out),
            Engine::Zstd(z) => {
                // bulk::Compressor pledges the source size, so the frame header carries the
                // content size that the 32015 decoder sizes its buffer with.
                out.reserve(zstd::zstd_safe::compress_bound(frame.len()));
                z.compress_to_buffer(frame, out)
                    .expect("zstd into a buffer of ZSTD_compressBound bytes cannot fail");
            }
            Engine::Blosc => {
                let Codec::Blosc { compressor, level } = self.codec else {
                    unreachable!("the blosc engine is made for blosc codecs only")
                };
                blosc::encode(frame, self.elem_size, compressor, level, out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PIXEL_TYPES: [PixelType; 8] = [
        PixelType::U8,
        PixelType::I8,
        PixelType::U16,
        PixelType::I16,
        PixelType::U32,
        PixelType::I32,
        PixelType::F32,
        PixelType::F64,
    ];

    fn all_codecs() -> Vec<Codec> {
        let mut v = vec![
            Codec::None,
            Codec::Deflate { level: 0 },
            Codec::Deflate { level: 1 },
            Codec::Lz4,
            Codec::BitshuffleLz4,
            Codec::BitshuffleZstd { level: 1 },
            Codec::BitshuffleZstd { level: 3 },
            Codec::Zstd { level: 3 },
            Codec::Zstd { level: 19 },
        ];
        for compressor in BloscCompressor::ALL {
            for level in [0, 1, 5, 9] {
                v.push(Codec::Blosc { compressor, level });
            }
        }
        v
    }

    /// Detector-like pixels: a smooth peak on low noise, as little-endian `pixel_type`.
    fn frame(pixel_type: PixelType, w: usize, h: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        let mut out = Vec::with_capacity(w * h * pixel_type.size());
        for y in 0..h {
            for x in 0..w {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (dx, dy) = (x as f64 - w as f64 / 2.0, y as f64 - h as f64 / 3.0);
                let v = 200.0 * (-(dx * dx + dy * dy) / 50.0).exp() + f64::from(state % 4);
                match pixel_type.size() {
                    1 => out.push(v as u8),
                    2 => out.extend_from_slice(&(v as u16).to_le_bytes()),
                    4 if pixel_type == PixelType::F32 => {
                        out.extend_from_slice(&(v as f32).to_le_bytes())
                    }
                    4 => out.extend_from_slice(&(v as u32).to_le_bytes()),
                    _ => out.extend_from_slice(&v.to_le_bytes()),
                }
            }
        }
        out
    }

    /// Incompressible bytes (xorshift64*).
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn parses_codecs_and_names_bad_values() {
        assert_eq!("none".parse(), Ok(Codec::None));
        assert_eq!("deflate".parse(), Ok(Codec::Deflate { level: 6 }));
        assert_eq!("deflate:1".parse(), Ok(Codec::Deflate { level: 1 }));
        assert_eq!("lz4".parse(), Ok(Codec::Lz4));
        assert_eq!("bslz4".parse(), Ok(Codec::BitshuffleLz4));
        assert_eq!("bszstd".parse(), Ok(Codec::BitshuffleZstd { level: 3 }));
        assert_eq!("bszstd:9".parse(), Ok(Codec::BitshuffleZstd { level: 9 }));
        assert_eq!("zstd".parse(), Ok(Codec::Zstd { level: 3 }));
        assert_eq!("zstd:22".parse(), Ok(Codec::Zstd { level: 22 }));
        let blosc = |compressor, level| Ok(Codec::Blosc { compressor, level });
        assert_eq!("blosc".parse(), blosc(BloscCompressor::Lz4, 5));
        assert_eq!("blosc:zstd".parse(), blosc(BloscCompressor::Zstd, 5));
        assert_eq!("blosc:lz4hc:9".parse(), blosc(BloscCompressor::Lz4Hc, 9));
        assert_eq!(
            "blosc:blosclz:0".parse(),
            blosc(BloscCompressor::BloscLz, 0)
        );
        let msg = |s: &str| s.parse::<Codec>().unwrap_err().to_string();
        assert_eq!(
            msg("deflate:12"),
            r#"invalid codec "deflate:12": deflate level must be an integer 0-9"#
        );
        assert_eq!(
            msg("zstd:0"),
            r#"invalid codec "zstd:0": zstd level must be an integer 1-22"#
        );
        assert_eq!(
            msg("blosc:snappy"),
            r#"invalid codec "blosc:snappy": blosc compressor must be one of blosclz, lz4, lz4hc, zlib, zstd"#
        );
        assert_eq!(
            msg("blosc:lz4:10"),
            r#"invalid codec "blosc:lz4:10": blosc level must be an integer 0-9"#
        );
        assert_eq!(
            msg("lz4:1"),
            r#"invalid codec "lz4:1": `lz4` takes no level"#
        );
        assert_eq!(
            msg("zstd:3:1"),
            r#"invalid codec "zstd:3:1": too many `:` fields"#
        );
        assert!(msg("lz5").contains("\"lz5\""));
        assert!(msg("").starts_with("invalid codec \"\": expected none"));
        assert_eq!(Codec::Deflate { level: 3 }.to_string(), "deflate:3");
        assert_eq!(
            Codec::Blosc {
                compressor: BloscCompressor::Zlib,
                level: 2
            }
            .to_string(),
            "blosc:zlib:2"
        );
    }

    #[test]
    fn filters_carry_the_cd_values_the_decoders_read() {
        let f = |c: &str, p, bytes| c.parse::<Codec>().unwrap().filter(p, bytes);
        assert_eq!(f("none", PixelType::U16, 100), None);
        let spec = |id, cd_values: &[u32]| {
            Some(FilterSpec {
                id,
                cd_values: cd_values.to_vec(),
            })
        };
        assert_eq!(f("deflate:4", PixelType::U16, 100), spec(1, &[4]));
        assert_eq!(f("lz4", PixelType::U16, 100), spec(32004, &[100]));
        assert_eq!(f("lz4", PixelType::U8, 3 << 30), spec(32004, &[1 << 30]));
        assert_eq!(
            f("bslz4", PixelType::U32, 100),
            spec(32008, &[0, 5, 4, 0, 2])
        );
        assert_eq!(
            f("bszstd:7", PixelType::U16, 100),
            spec(32008, &[0, 5, 2, 0, 3, 7])
        );
        assert_eq!(f("zstd:5", PixelType::F64, 100), spec(32015, &[5]));
        assert_eq!(
            f("blosc:zstd:1", PixelType::U16, 2 << 20),
            spec(32001, &[2, 2, 2, 2 << 20, 1, 1, 5])
        );
        assert_eq!(
            f("blosc:blosclz:9", PixelType::F32, 64),
            spec(32001, &[2, 2, 4, 64, 9, 1, 0])
        );
    }

    #[test]
    fn the_filter_a_codec_declares_maps_back_to_it() {
        for codec in all_codecs() {
            for p in PIXEL_TYPES {
                let Some(f) = codec.filter(p, 4096) else {
                    continue;
                };
                assert_eq!(
                    Codec::from_filter(f.id, &f.cd_values),
                    Some(codec),
                    "{codec} {p:?}"
                );
            }
        }
        assert_eq!(
            Codec::from_filter(32008, &[0, 5, 2, 0, 0]),
            None,
            "bitshuffle alone"
        );
        assert_eq!(Codec::from_filter(2, &[]), None, "shuffle");
        assert_eq!(Codec::from_filter(32004, &[]), Some(Codec::Lz4));
        assert_eq!(
            Codec::from_filter(32015, &[]),
            Some(Codec::Zstd { level: 3 })
        );
    }

    #[test]
    fn every_codec_round_trips_every_pixel_type() {
        for p in PIXEL_TYPES {
            // 61x37: an element count that is not a multiple of 8, and several bitshuffle
            // blocks for 1-byte pixels only at the larger size.
            for (w, h) in [(61, 37), (300, 200), (1, 1), (3, 1)] {
                let raw = frame(p, w, h, 7);
                for codec in all_codecs() {
                    let mut c = codec.compressor(p);
                    let mut out = Vec::new();
                    for _ in 0..2 {
                        c.compress(&raw, &mut out);
                        let back = codec
                            .decode(p, &out)
                            .unwrap_or_else(|e| panic!("{p:?} {w}x{h}: {e}"));
                        assert!(back == raw, "{codec} {p:?} {w}x{h} does not round-trip");
                    }
                }
            }
        }
    }

    #[test]
    fn detector_frames_shrink() {
        let raw = frame(PixelType::U16, 512, 256, 3);
        for codec in all_codecs() {
            let mut out = Vec::new();
            codec.compressor(PixelType::U16).compress(&raw, &mut out);
            let stores = matches!(
                codec,
                Codec::None | Codec::Deflate { level: 0 } | Codec::Blosc { level: 0, .. }
            );
            assert_eq!(
                out.len() < raw.len() * 3 / 4,
                !stores,
                "{codec}: {} of {} bytes",
                out.len(),
                raw.len()
            );
        }
    }

    #[test]
    fn deflate_chunk_is_a_zlib_stream_of_the_frame() {
        let frame: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7000) as u8)
            .collect();
        let mut c = Codec::Deflate { level: 1 }.compressor(PixelType::U8);
        let mut out = Vec::new();
        for _ in 0..2 {
            c.compress(&frame, &mut out);
            assert!(out.len() < frame.len() / 2);
            assert_eq!(out[0], 0x78, "zlib header, not raw deflate or gzip");
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, frame);
        }
        // Incompressible input still fits.
        let noise = noise(65_536);
        c.compress(&noise, &mut out);
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, noise);
    }

    #[test]
    fn lz4_chunk_is_h5z_lz4_framing_with_raw_escape() {
        let raw = frame(PixelType::U16, 100, 50, 1);
        let mut out = Vec::new();
        let mut c = Codec::Lz4.compressor(PixelType::U16);
        c.compress(&raw, &mut out);
        assert_eq!(out[..8], (raw.len() as u64).to_be_bytes());
        assert_eq!(out[8..12], (raw.len() as u32).to_be_bytes(), "one block");
        let csize = u32::from_be_bytes(out[12..16].try_into().unwrap()) as usize;
        assert_eq!(out.len(), 16 + csize);
        assert!(csize < raw.len());
        // An independent LZ4 implementation reads the block.
        assert_eq!(
            lz4_flex::block::decompress(&out[16..], raw.len()).unwrap(),
            raw
        );

        // Noise does not shrink: the block is stored raw, size == block size.
        let noise = noise(4096);
        c.compress(&noise, &mut out);
        assert_eq!(out.len(), 16 + 4096);
        assert_eq!(out[12..16], 4096u32.to_be_bytes());
        assert_eq!(out[16..], noise[..]);
        assert_eq!(Codec::Lz4.decode(PixelType::U16, &out).unwrap(), noise);
    }

    #[test]
    fn bslz4_chunk_has_the_bitshuffle_header_blocks_and_raw_tail() {
        // 4096 + 4096 + 1000 u16 elements: two full blocks, a 1000-element block (a multiple
        // of 8), and no tail; then 3 more elements to make a raw tail.
        for (n, blocks, tail) in [(9192usize, 3usize, 0usize), (9195, 3, 3), (5, 0, 5)] {
            let raw: Vec<u8> = frame(PixelType::U16, n, 1, 9);
            let mut out = Vec::new();
            Codec::BitshuffleLz4
                .compressor(PixelType::U16)
                .compress(&raw, &mut out);
            assert_eq!(out[..8], (raw.len() as u64).to_be_bytes());
            assert_eq!(
                out[8..12],
                8192u32.to_be_bytes(),
                "4096 elements of 2 bytes"
            );
            let mut at = 12;
            let mut shuffled = Vec::new();
            for (i, (start, len)) in bitshuffle::blocks(n, 4096).enumerate() {
                let c = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
                let block = lz4_flex::block::decompress(&out[at + 4..at + 4 + c], len * 2)
                    .unwrap_or_else(|e| panic!("block {i}: {e}"));
                let mut want = vec![0u8; len * 2];
                bitshuffle::Kernel::scalar().trans_bit_elem(
                    &raw[start * 2..(start + len) * 2],
                    &mut want,
                    2,
                );
                assert_eq!(block, want, "block {i} holds the bitshuffled elements");
                shuffled.push(block);
                at += 4 + c;
            }
            assert_eq!(shuffled.len(), blocks);
            assert_eq!(out.len() - at, tail * 2);
            assert_eq!(out[at..], raw[raw.len() - tail * 2..], "tail stored raw");
        }
    }

    #[test]
    fn zstd_frames_carry_their_content_size() {
        let raw = frame(PixelType::U32, 64, 64, 2);
        let mut out = Vec::new();
        Codec::Zstd { level: 3 }
            .compressor(PixelType::U32)
            .compress(&raw, &mut out);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&out).ok(),
            Some(Some(raw.len() as u64))
        );
        // A streaming frame without a pledged size is refused, as the filter would.
        let mut streamed = Vec::new();
        {
            let mut e = zstd::stream::Encoder::new(&mut streamed, 3).unwrap();
            std::io::Write::write_all(&mut e, &raw).unwrap();
            e.finish().unwrap();
        }
        let err = Codec::Zstd { level: 3 }
            .decode(PixelType::U32, &streamed)
            .unwrap_err();
        assert!(err.reason.contains("content size"), "{err}");
    }

    #[test]
    fn blosc_frames_have_the_c_blosc_1_header() {
        let raw = frame(PixelType::U16, 128, 64, 4);
        for compressor in BloscCompressor::ALL {
            let mut out = Vec::new();
            Codec::Blosc {
                compressor,
                level: 5,
            }
            .compressor(PixelType::U16)
            .compress(&raw, &mut out);
            assert_eq!(out[0], 2, "blosc format version 2");
            assert_eq!(out[2] & 0x1, 0x1, "byte shuffle flag");
            // The flags hold the compressor's *format* (lz4hc writes lz4's), not its code.
            let format = match compressor {
                BloscCompressor::BloscLz => 0,
                BloscCompressor::Lz4 | BloscCompressor::Lz4Hc => 1,
                BloscCompressor::Zlib => 3,
                BloscCompressor::Zstd => 4,
            };
            assert_eq!(out[2] >> 5, format, "compressor format in the flags");
            assert_eq!(out[3], 2, "typesize");
            assert_eq!(out[4..8], (raw.len() as u32).to_le_bytes(), "nbytes, LE");
            assert_eq!(out[12..16], (out.len() as u32).to_le_bytes(), "cbytes, LE");
        }
        // Incompressible data still fits in nbytes + 16.
        let noise = noise(10_000);
        let codec = Codec::Blosc {
            compressor: BloscCompressor::Lz4,
            level: 9,
        };
        let mut out = Vec::new();
        codec.compressor(PixelType::U8).compress(&noise, &mut out);
        assert!(out.len() <= noise.len() + 16);
        assert_eq!(codec.decode(PixelType::U8, &out).unwrap(), noise);
    }

    #[test]
    fn corrupt_chunks_give_errors_not_panics() {
        let raw = frame(PixelType::U16, 40, 40, 5);
        for codec in all_codecs() {
            if codec == Codec::None {
                continue;
            }
            let mut out = Vec::new();
            codec.compressor(PixelType::U16).compress(&raw, &mut out);
            for cut in [0, 3, 11, out.len() / 2, out.len() - 1] {
                assert!(
                    codec.decode(PixelType::U16, &out[..cut]).is_err(),
                    "{codec} truncated to {cut}"
                );
            }
        }
    }

    fn any_codec() -> impl Strategy<Value = Codec> {
        prop_oneof![
            Just(Codec::None),
            (0u8..=9).prop_map(|level| Codec::Deflate { level }),
            Just(Codec::Lz4),
            Just(Codec::BitshuffleLz4),
            (1u8..=22).prop_map(|level| Codec::BitshuffleZstd { level }),
            (1u8..=22).prop_map(|level| Codec::Zstd { level }),
            (prop::sample::select(BloscCompressor::ALL.to_vec()), 0u8..=9)
                .prop_map(|(compressor, level)| Codec::Blosc { compressor, level }),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back(codec in any_codec()) {
            prop_assert_eq!(codec.to_string().parse::<Codec>(), Ok(codec));
        }

        #[test]
        fn parsing_never_panics_and_quotes_bad_input(s in "[a-z0-9:]{0,16}") {
            match s.parse::<Codec>() {
                Ok(c) => prop_assert_eq!(c.to_string().parse::<Codec>(), Ok(c)),
                Err(e) => {
                    let quoted = format!("invalid codec {s:?}: ");
                    prop_assert!(e.to_string().starts_with(&quoted));
                }
            }
        }

    }

    proptest! {
        // Every codec at every level on unoptimised C code: keep the case count modest.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_frames_round_trip(
            p in prop::sample::select(PIXEL_TYPES.to_vec()),
            codec in any_codec(),
            data in prop::collection::vec(any::<u8>(), 0..20_000),
        ) {
            let len = data.len() / p.size() * p.size();
            let raw = &data[..len];
            let mut out = Vec::new();
            codec.compressor(p).compress(raw, &mut out);
            prop_assert_eq!(codec.decode(p, &out).unwrap(), raw);
        }
    }
}
