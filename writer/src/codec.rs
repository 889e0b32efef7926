//! Chunk codecs: turn one frame's bytes into the bytes of one HDF5 chunk.
//!
//! Each codec produces exactly what the matching HDF5 filter's decoder expects, so the chunk
//! can go to `H5Dwrite_chunk` with filter mask 0 and h5py reads it through its filter
//! pipeline. The codec runs outside the HDF5 lock, on whichever thread calls
//! [`Compressor::compress`].

use std::fmt;
use std::str::FromStr;

use detflow_hal::PixelType;
use flate2::{Compress, Compression, FlushCompress, Status};
use thiserror::Error;

/// HDF5's deflate filter id (zlib stream).
pub const FILTER_DEFLATE: u32 = 1;

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

impl FromStr for Codec {
    type Err = CodecError;

    /// `none`, `deflate` (level 6) or `deflate:LEVEL` with LEVEL 0-9.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CodecError {
            value: s.to_owned(),
            reason,
        };
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        match name {
            "none" if level.is_none() => Ok(Codec::None),
            "none" => Err(err("`none` takes no level")),
            "deflate" | "zlib" | "gzip" => {
                let level = match level {
                    None => 6,
                    Some(l) => l
                        .parse::<u8>()
                        .ok()
                        .filter(|l| *l <= 9)
                        .ok_or_else(|| err("deflate level must be an integer 0-9"))?,
                };
                Ok(Codec::Deflate { level })
            }
            _ => Err(err("expected none or deflate[:LEVEL]")),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Deflate { level } => write!(f, "deflate:{level}"),
        }
    }
}

impl Codec {
    /// The HDF5 filter to declare on a dataset of `pixel_type` elements whose chunks hold
    /// `chunk_bytes` raw bytes, or `None` for raw chunks.
    pub fn filter(&self, pixel_type: PixelType, chunk_bytes: usize) -> Option<FilterSpec> {
        let _ = (pixel_type, chunk_bytes);
        match *self {
            Codec::None => None,
            Codec::Deflate { level } => Some(FilterSpec {
                id: FILTER_DEFLATE,
                cd_values: vec![u32::from(level)],
            }),
        }
    }

    /// A reusable compressor for frames of `pixel_type` (one per compressing thread).
    pub fn compressor(&self, pixel_type: PixelType) -> Compressor {
        Compressor {
            codec: *self,
            elem_size: pixel_type.size(),
            zlib: match *self {
                Codec::Deflate { level } => {
                    Some(Compress::new(Compression::new(u32::from(level)), true))
                }
                Codec::None => None,
            },
        }
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

/// Per-thread codec state, reused frame after frame.
pub struct Compressor {
    codec: Codec,
    /// Bytes per pixel of the frames this compressor encodes.
    #[allow(dead_code)]
    elem_size: usize,
    zlib: Option<Compress>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("codec", &self.codec)
            .finish()
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
    pub fn compress(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self.zlib.as_mut() {
            None => out.extend_from_slice(frame),
            Some(z) => {
                z.reset();
                // zlib's compressBound: the stream always fits, so one call finishes it.
                let bound = frame.len() + (frame.len() >> 12) + (frame.len() >> 14) + 64;
                out.reserve(bound);
                let status = z
                    .compress_vec(frame, out, FlushCompress::Finish)
                    .expect("zlib compression of an in-memory buffer cannot fail");
                debug_assert_eq!(status, Status::StreamEnd);
                debug_assert_eq!(z.total_in(), frame.len() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parses_codecs_and_names_bad_values() {
        assert_eq!("none".parse(), Ok(Codec::None));
        assert_eq!("deflate".parse(), Ok(Codec::Deflate { level: 6 }));
        assert_eq!("deflate:1".parse(), Ok(Codec::Deflate { level: 1 }));
        let e = "deflate:12".parse::<Codec>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid codec "deflate:12": deflate level must be an integer 0-9"#
        );
        assert!(
            "lz5"
                .parse::<Codec>()
                .unwrap_err()
                .to_string()
                .contains("\"lz5\"")
        );
        assert_eq!(Codec::Deflate { level: 3 }.to_string(), "deflate:3");
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
        let noise: Vec<u8> = (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        c.compress(&noise, &mut out);
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, noise);
    }
}
