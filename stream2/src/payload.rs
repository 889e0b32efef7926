//! Typed-array element types and the block framing of compressed payloads. The framing walk
//! reads only the block lengths (§6.1, §6.2) and never decompresses: it is how a truncated
//! or padded chunk is caught before it reaches an HDF5 file by direct chunk write.

use detflow_hal::PixelType;

use crate::model::{Compression, Payload, TypedArray};

/// Length of the header both chunk formats start with: the uncompressed size (BE u64) and
/// the block size in bytes (BE u32).
pub const CHUNK_HEADER_LEN: usize = 12;

/// Why a compressed payload's block framing does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// Shorter than the 12-byte header.
    #[error("{len} bytes, shorter than the 12-byte chunk header")]
    ShortHeader {
        /// Payload length.
        len: usize,
    },
    /// The bslz4 element size (the modifier) is not 1 to 16 or does not divide the size.
    #[error("bslz4 element size {elem_size} does not fit an uncompressed size of {size} bytes")]
    ElemSize {
        /// The element size.
        elem_size: u64,
        /// The header's uncompressed size.
        size: u64,
    },
    /// The header's block size cannot frame the data (0, or for bslz4 not a multiple of
    /// 8 elements).
    #[error("block size {block_bytes} bytes in the header cannot frame {size} bytes")]
    BlockSize {
        /// The header's block size in bytes.
        block_bytes: u32,
        /// The header's uncompressed size.
        size: u64,
    },
    /// The payload ends inside a block (or before the bslz4 leftover bytes).
    #[error("truncated: block {block} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// 0-based block index (the leftover section counts as the block after the last).
        block: u64,
        /// Offset in the payload where that block starts.
        offset: usize,
        /// Bytes the block needs.
        needed: u64,
        /// Bytes left in the payload.
        available: usize,
    },
    /// Bytes remain after the last block (and the bslz4 leftover).
    #[error("{extra} bytes after the last block")]
    Trailing {
        /// Surplus bytes.
        extra: usize,
    },
}

impl TypedArray<'_> {
    /// Bytes per element: `1 << (f + ll)` with `f = (tag >> 4) & 1`, `ll = tag & 3`
    /// (RFC 8746; meaningful for tags 64 to 87).
    pub fn elem_size(&self) -> usize {
        elem_size(self.tag)
    }

    /// The pixel type of the tag, for the tags detflow can store (64 u8, 69 u16 LE, 70 u32
    /// LE, 72 i8, 77 i16 LE, 78 i32 LE, 85 f32 LE, 86 f64 LE); `None` for the big-endian and
    /// other tags.
    pub fn pixel_type(&self) -> Option<PixelType> {
        Some(match self.tag {
            64 => PixelType::U8,
            69 => PixelType::U16,
            70 => PixelType::U32,
            72 => PixelType::I8,
            77 => PixelType::I16,
            78 => PixelType::I32,
            85 => PixelType::F32,
            86 => PixelType::F64,
            _ => return None,
        })
    }

    /// The typed-array tag of a pixel type (little-endian).
    pub const fn tag_of(pixel_type: PixelType) -> u64 {
        match pixel_type {
            PixelType::U8 => 64,
            PixelType::U16 => 69,
            PixelType::U32 => 70,
            PixelType::I8 => 72,
            PixelType::I16 => 77,
            PixelType::I32 => 78,
            PixelType::F32 => 85,
            PixelType::F64 => 86,
        }
    }
}

/// Element size of an RFC 8746 typed-array tag.
pub(crate) fn elem_size(tag: u64) -> usize {
    1 << (((tag >> 4) & 1) + (tag & 3))
}

/// True for the RFC 8746 typed-array tags (64 to 87 but the reserved 76).
pub(crate) fn is_typed_array_tag(tag: u64) -> bool {
    (64..=87).contains(&tag) && tag != 76
}

impl Payload<'_> {
    /// The size of the elements in bytes: the byte string's length when raw, the chunk
    /// header's size when compressed (`None` if the header is cut short).
    pub fn uncompressed_size(&self) -> Option<u64> {
        match *self {
            Payload::Raw(b) => Some(b.len() as u64),
            Payload::Compressed { bytes, .. } => header(bytes).ok().map(|(size, _)| size),
        }
    }

    /// Checks that a compressed payload's blocks consume it exactly, reading only the block
    /// lengths (bslz4 §6.1: full blocks, a last partial block, then the raw leftover of
    /// `(n % 8) * elem_size` bytes; lz4 §6.2: full blocks and a last partial block). A raw
    /// payload is always framed.
    pub fn check_framing(&self) -> Result<(), FramingError> {
        match *self {
            Payload::Raw(_) => Ok(()),
            Payload::Compressed {
                compression,
                elem_size,
                bytes,
            } => check_framing(compression, elem_size, bytes),
        }
    }
}

/// The header's uncompressed size and block size.
fn header(bytes: &[u8]) -> Result<(u64, u32), FramingError> {
    match (bytes.get(0..8), bytes.get(8..12)) {
        (Some(size), Some(block)) => Ok((
            u64::from_be_bytes(size.try_into().unwrap_or_default()),
            u32::from_be_bytes(block.try_into().unwrap_or_default()),
        )),
        _ => Err(FramingError::ShortHeader { len: bytes.len() }),
    }
}

fn check_framing(
    compression: Compression,
    elem_size: u64,
    bytes: &[u8],
) -> Result<(), FramingError> {
    let (size, block_bytes) = header(bytes)?;
    let (blocked, leftover) = match compression {
        Compression::Lz4 => (size, 0),
        Compression::Bslz4 => {
            if !(1..=16).contains(&elem_size) || size % elem_size != 0 {
                return Err(FramingError::ElemSize { elem_size, size });
            }
            let leftover = (size / elem_size % 8) * elem_size;
            let blocked = size - leftover;
            if blocked > 0 && u64::from(block_bytes) % (8 * elem_size) != 0 {
                return Err(FramingError::BlockSize { block_bytes, size });
            }
            (blocked, leftover)
        }
    };
    if blocked > 0 && block_bytes == 0 {
        return Err(FramingError::BlockSize { block_bytes, size });
    }
    let mut offset = CHUNK_HEADER_LEN;
    let mut block = 0u64;
    let mut remaining = blocked;
    // Each block takes at least its 4-byte length, so the walk ends within bytes.len() / 4
    // steps whatever the header claims.
    while remaining > 0 {
        let len = bytes
            .get(offset..offset + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(FramingError::Truncated {
                block,
                offset,
                needed: 4,
                available: bytes.len() - offset,
            })?;
        let available = bytes.len() - offset - 4;
        if len as usize > available {
            return Err(FramingError::Truncated {
                block,
                offset,
                needed: 4 + u64::from(len),
                available: available + 4,
            });
        }
        offset += 4 + len as usize;
        remaining -= remaining.min(u64::from(block_bytes));
        block += 1;
    }
    let rest = bytes.len() - offset;
    if (rest as u64) < leftover {
        return Err(FramingError::Truncated {
            block,
            offset,
            needed: leftover,
            available: rest,
        });
    }
    match rest as u64 - leftover {
        0 => Ok(()),
        extra => Err(FramingError::Trailing {
            extra: extra as usize,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lz4(bytes: &[u8]) -> Payload<'_> {
        Payload::Compressed {
            compression: Compression::Lz4,
            elem_size: 0,
            bytes,
        }
    }

    fn bslz4(elem_size: u64, bytes: &[u8]) -> Payload<'_> {
        Payload::Compressed {
            compression: Compression::Bslz4,
            elem_size,
            bytes,
        }
    }

    const BSLZ4_7_2: [u8; 20] = [
        0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x20, 0, 1, 0, 2, 0, 3, 0, 0xff, 0xff,
    ];
    const LZ4_7_2: [u8; 24] = [
        0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x20, 0, 0, 0, 0, 8, 1, 0, 2, 0, 3, 0, 0xff, 0xff,
    ];

    #[test]
    fn spec_examples_are_framed() {
        assert_eq!(bslz4(2, &BSLZ4_7_2).check_framing(), Ok(()));
        assert_eq!(lz4(&LZ4_7_2).check_framing(), Ok(()));
        assert_eq!(bslz4(2, &BSLZ4_7_2).uncompressed_size(), Some(8));
    }

    #[test]
    fn truncation_and_padding_are_caught() {
        for cut in 0..LZ4_7_2.len() {
            assert!(
                lz4(&LZ4_7_2[..cut]).check_framing().is_err(),
                "lz4 cut at {cut}"
            );
        }
        for cut in 0..BSLZ4_7_2.len() {
            assert!(
                bslz4(2, &BSLZ4_7_2[..cut]).check_framing().is_err(),
                "bslz4 cut at {cut}"
            );
        }
        let mut padded = LZ4_7_2.to_vec();
        padded.push(0);
        assert_eq!(
            lz4(&padded).check_framing(),
            Err(FramingError::Trailing { extra: 1 })
        );
    }

    #[test]
    fn bslz4_blocks_then_leftover() {
        // 20 u16 elements = 40 bytes: blocks of 16 bytes (8 elements) cover 32, leftover 8.
        let mut b = vec![0, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0, 16];
        for len in [3u32, 5] {
            b.extend_from_slice(&len.to_be_bytes());
            b.extend(std::iter::repeat_n(0xaa, len as usize));
        }
        b.extend_from_slice(&[7; 8]);
        assert_eq!(bslz4(2, &b).check_framing(), Ok(()));
        assert!(matches!(
            bslz4(2, &b[..b.len() - 1]).check_framing(),
            Err(FramingError::Truncated { block: 2, .. })
        ));
        assert!(matches!(
            bslz4(0, &b).check_framing(),
            Err(FramingError::ElemSize { .. })
        ));
        let mut odd = b.clone();
        odd[11] = 12; // 6 elements per block: not a multiple of 8
        assert!(matches!(
            bslz4(2, &odd).check_framing(),
            Err(FramingError::BlockSize { .. })
        ));
    }

    #[test]
    fn elem_sizes_follow_rfc_8746() {
        for (tag, size) in [
            (64, 1),
            (69, 2),
            (70, 4),
            (71, 8),
            (80, 2),
            (85, 4),
            (86, 8),
            (87, 16),
        ] {
            assert_eq!(elem_size(tag), size, "tag {tag}");
        }
        for p in PixelType::ALL {
            let ta = TypedArray {
                tag: TypedArray::tag_of(p),
                payload: Payload::Raw(&[]),
            };
            assert_eq!(ta.pixel_type(), Some(p));
            assert_eq!(ta.elem_size(), p.size());
        }
        assert!(!is_typed_array_tag(76) && !is_typed_array_tag(88) && is_typed_array_tag(64));
    }
}
