//! Images that arrive already encoded, in one or more channels: the data plane of a network
//! detector such as a DECTRIS EIGER2 or PILATUS4 (Stream V2), whose frames come as HDF5 filter
//! chunks (bitshuffle + LZ4, or LZ4) and, with several energy thresholds, as several channels
//! per image.
//!
//! [`ImageSource`] is to such a detector what [`FrameSource`](crate::FrameSource) is to one
//! that delivers plain pixels: it writes one image into a buffer the caller owns and says where
//! each channel's bytes are and how they are encoded ([`ImageMeta`]). The caller writes an
//! encoded channel into the file as it is; it decodes it only to encode it with another codec.

use core::fmt;
use core::ops::Range;
use core::time::Duration;

use crate::{Detector, FrameMeta};

/// The most channels (energy thresholds and their differences) one image may carry.
pub const MAX_CHANNELS: usize = 8;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 32;

/// Channel names of a detector's images, in the order of [`ImageMeta::channels`].
pub type ChannelNames = heapless::Vec<heapless::String<MAX_CHANNEL_NAME>, MAX_CHANNELS>;

/// How the bytes of one channel are encoded.
///
/// New encodings may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameEncoding {
    /// Plain pixels, row-major, little-endian: exactly [`FrameShape::bytes`](crate::FrameShape::bytes)
    /// bytes.
    Raw,
    /// A chunk of HDF5 filter 32008 (bitshuffle) with LZ4 blocks: a 12-byte header (big-endian
    /// u64 raw size, big-endian u32 block size in bytes), then per block a big-endian u32
    /// length and an LZ4 block, then the raw leftover bytes. DECTRIS's `bslz4`.
    BitshuffleLz4,
    /// A chunk of HDF5 filter 32004 (LZ4): the same 12-byte header, then per block a
    /// big-endian u32 length and an LZ4 block, stored raw when its length equals the block's
    /// raw size. DECTRIS's `lz4`.
    Lz4,
}

impl FrameEncoding {
    /// The name detflow and DECTRIS give it: `none`, `bslz4`, `lz4`.
    pub const fn name(self) -> &'static str {
        match self {
            FrameEncoding::Raw => "none",
            FrameEncoding::BitshuffleLz4 => "bslz4",
            FrameEncoding::Lz4 => "lz4",
        }
    }

    /// Check that `chunk` is this encoding of `raw_len` bytes of `elem_size`-byte elements,
    /// from its header and block lengths alone (nothing is decompressed): a truncated or
    /// padded chunk, or one of another size, is refused.
    pub fn check_chunk(
        self,
        chunk: &[u8],
        raw_len: usize,
        elem_size: usize,
    ) -> Result<(), ChunkError> {
        match self {
            FrameEncoding::Raw if chunk.len() == raw_len => Ok(()),
            FrameEncoding::Raw => Err(ChunkError::Length {
                expected: raw_len,
                found: chunk.len(),
            }),
            FrameEncoding::BitshuffleLz4 => walk_blocks(chunk, raw_len, elem_size.max(1), true),
            FrameEncoding::Lz4 => walk_blocks(chunk, raw_len, 1, false),
        }
    }
}

impl fmt::Display for FrameEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a chunk does not hold the frame it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A raw frame of the wrong length.
    Length {
        /// Bytes the frame shape needs.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The 12-byte header is missing.
    NoHeader {
        /// Bytes found.
        found: usize,
    },
    /// The header's raw size is not the frame's.
    RawSize {
        /// Bytes the frame shape needs.
        expected: usize,
        /// The header's value.
        header: u64,
    },
    /// The header's block size is 0, or not a whole number of elements.
    BlockSize {
        /// The header's value.
        header: u32,
    },
    /// The blocks end before the chunk does, or run past it.
    Framing {
        /// Bytes of the chunk the blocks account for (can exceed the chunk when truncated).
        consumed: usize,
        /// Bytes of the chunk.
        found: usize,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChunkError::Length { expected, found } => {
                write!(f, "{found} bytes where the frame has {expected}")
            }
            ChunkError::NoHeader { found } => {
                write!(f, "{found} bytes, shorter than the 12-byte chunk header")
            }
            ChunkError::RawSize { expected, header } => {
                write!(
                    f,
                    "the header says {header} raw bytes, the frame has {expected}"
                )
            }
            ChunkError::BlockSize { header } => write!(f, "block size {header} in the header"),
            ChunkError::Framing { consumed, found } => write!(
                f,
                "the blocks account for {consumed} bytes of a {found}-byte chunk (truncated or padded)"
            ),
        }
    }
}

/// Walk the blocks of a 32008 (`bitshuffle`: blocks of whole 8-element groups, raw leftover
/// after them) or 32004 chunk and check they consume it exactly.
fn walk_blocks(
    chunk: &[u8],
    raw_len: usize,
    elem_size: usize,
    bitshuffle: bool,
) -> Result<(), ChunkError> {
    let found = chunk.len();
    let header = chunk.get(..12).ok_or(ChunkError::NoHeader { found })?;
    let raw = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    if raw != raw_len as u64 {
        return Err(ChunkError::RawSize {
            expected: raw_len,
            header: raw,
        });
    }
    let block = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if block == 0 || !(block as usize).is_multiple_of(elem_size) {
        return Err(ChunkError::BlockSize { header: block });
    }
    // Bitshuffle codes whole groups of 8 elements; the rest is copied raw after the blocks.
    let (coded, leftover) = if bitshuffle {
        let group = 8 * elem_size;
        (raw_len - raw_len % group, raw_len % group)
    } else {
        (raw_len, 0)
    };
    let mut at = 12usize;
    let mut left = coded;
    while left > 0 {
        let framing = |consumed| ChunkError::Framing { consumed, found };
        let len = chunk.get(at..at + 4).ok_or(framing(at + 4))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        at = at.checked_add(4 + len).ok_or(framing(usize::MAX))?;
        if at > found {
            return Err(framing(at));
        }
        left -= left.min(block as usize);
    }
    let consumed = at + leftover;
    if consumed != found {
        return Err(ChunkError::Framing { consumed, found });
    }
    Ok(())
}

/// Where one channel's bytes are in the caller's buffer, and how they are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPart {
    /// The encoding of these bytes.
    pub encoding: FrameEncoding,
    /// The bytes, as a range of the buffer given to [`ImageSource::read_image`].
    pub bytes: Range<usize>,
}

/// A time on the detector's clock: `ticks / per_s` seconds, exactly as the detector counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticks {
    /// Clock ticks.
    pub ticks: u64,
    /// Ticks per second (the clock's frequency; DECTRIS: 50 MHz).
    pub per_s: u64,
}

impl Ticks {
    /// The time in seconds (`NaN` for a clock of 0 Hz).
    pub fn seconds(self) -> f64 {
        self.ticks as f64 / self.per_s as f64
    }
}

/// The detector's own timing of one image, each part when the detector gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageTimes {
    /// Exposure of the image.
    pub real: Option<Ticks>,
    /// Start of the exposure, from the start of the series.
    pub start: Option<Ticks>,
    /// End of the exposure, from the start of the series.
    pub stop: Option<Ticks>,
}

/// What [`ImageSource::read_image`] wrote into the caller's buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMeta {
    /// Frame metadata; `shape` is every channel's shape (raw), `unique_id` counts images
    /// delivered (1, 2, 3 …), not the detector's numbering.
    pub frame: FrameMeta,
    /// The detector's number of this image in its series, from 0: where it belongs in the
    /// file, whatever order images arrive in and whichever were lost.
    pub number: u64,
    /// The detector's id of the image in the whole series: `number` itself, except for a
    /// writer that gets a share of the series (a rank behind `detflow fan`), whose file
    /// places image `image_id` at `number`, its position among the share.
    pub image_id: u64,
    /// One part per channel, in the order of [`ImageSource::channel_names`].
    pub channels: heapless::Vec<ChannelPart, MAX_CHANNELS>,
    /// The detector's timing of the image.
    pub times: ImageTimes,
    /// Detector-specific data of this image (Stream V2: the raw CBOR of `user_data`), as a
    /// range of the buffer.
    pub user_data: Option<Range<usize>>,
}

/// Data plane of a detector whose images arrive encoded, in one or more channels.
///
/// Errors are those of [`FrameSource::read_frame`](crate::FrameSource::read_frame):
/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (call again),
/// [`ErrorKind::NotAcquiring`](crate::ErrorKind::NotAcquiring) (the series is over),
/// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) (`buf` shorter than
/// [`max_image_bytes`](ImageSource::max_image_bytes)), and one
/// [`ErrorKind::Corrupted`](crate::ErrorKind::Corrupted) or
/// [`ErrorKind::FrameLost`](crate::ErrorKind::FrameLost) per image that arrived damaged or
/// never arrived; the acquisition goes on after those.
pub trait ImageSource: Detector {
    /// Names of the channels every image carries (at least one), in order.
    fn channel_names(&self) -> ChannelNames;

    /// The encoding the detector sends its channels in (a channel may still come raw).
    fn encoding(&self) -> FrameEncoding;

    /// The most bytes one image can take in the buffer: every channel and its user data.
    fn max_image_bytes(&self) -> usize;

    /// Images in the series, or in this source's share of it (a rank's), when the detector
    /// says: [`ImageMeta::number`]s run from 0 to this, less one.
    fn series_images(&self) -> Option<u64> {
        None
    }

    /// Wait up to `timeout` for the next image and write it into `buf`.
    fn read_image(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ImageMeta, Self::Error>;
}

impl<T: ImageSource + ?Sized> ImageSource for &mut T {
    fn channel_names(&self) -> ChannelNames {
        T::channel_names(self)
    }
    fn encoding(&self) -> FrameEncoding {
        T::encoding(self)
    }
    fn max_image_bytes(&self) -> usize {
        T::max_image_bytes(self)
    }
    fn series_images(&self) -> Option<u64> {
        T::series_images(self)
    }
    fn read_image(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ImageMeta, Self::Error> {
        T::read_image(self, buf, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32004-style chunk of `raw` bytes in blocks of `block`, each stored raw.
    fn stored(raw: usize, block: usize) -> heapless::Vec<u8, 256> {
        let mut c = heapless::Vec::new();
        c.extend_from_slice(&(raw as u64).to_be_bytes()).unwrap();
        c.extend_from_slice(&(block as u32).to_be_bytes()).unwrap();
        let mut left = raw;
        while left > 0 {
            let n = left.min(block);
            c.extend_from_slice(&(n as u32).to_be_bytes()).unwrap();
            for _ in 0..n {
                c.push(7).unwrap();
            }
            left -= n;
        }
        c
    }

    #[test]
    fn a_whole_chunk_passes_and_a_truncated_or_padded_one_does_not() {
        let c = stored(40, 16);
        assert_eq!(FrameEncoding::Lz4.check_chunk(&c, 40, 2), Ok(()));
        let short = &c[..c.len() - 1];
        assert!(matches!(
            FrameEncoding::Lz4.check_chunk(short, 40, 2),
            Err(ChunkError::Framing { .. })
        ));
        let mut long = c.clone();
        long.push(0).unwrap();
        assert!(matches!(
            FrameEncoding::Lz4.check_chunk(&long, 40, 2),
            Err(ChunkError::Framing { .. })
        ));
        assert_eq!(
            FrameEncoding::Lz4.check_chunk(&c, 42, 2),
            Err(ChunkError::RawSize {
                expected: 42,
                header: 40
            })
        );
        assert_eq!(
            FrameEncoding::Lz4.check_chunk(&c[..5], 40, 2),
            Err(ChunkError::NoHeader { found: 5 })
        );
    }

    #[test]
    fn bitshuffle_leftover_follows_the_blocks_raw() {
        // The spec's 2x2 u16 example: 4 elements < 8, no block, 8 leftover bytes.
        let mut c = heapless::Vec::<u8, 32>::new();
        c.extend_from_slice(&8u64.to_be_bytes()).unwrap();
        c.extend_from_slice(&8192u32.to_be_bytes()).unwrap();
        c.extend_from_slice(&[1, 0, 2, 0, 3, 0, 0xff, 0xff])
            .unwrap();
        assert_eq!(FrameEncoding::BitshuffleLz4.check_chunk(&c, 8, 2), Ok(()));
        assert!(
            FrameEncoding::BitshuffleLz4
                .check_chunk(&c[..19], 8, 2)
                .is_err()
        );
        assert_eq!(FrameEncoding::Raw.check_chunk(&c[12..], 8, 2), Ok(()));
    }
}
