//! Why a message was refused. Every variant names the key (a dotted path such as
//! `data.threshold_1` for nested values) and the offending value, so that a receiver's log
//! line says what was wrong without a hex dump.

use crate::payload::FramingError;

/// A message that cannot be decoded, or whose content contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not well-formed CBOR (cut short, a reserved byte, invalid UTF-8, bytes after the end).
    #[error("malformed CBOR at byte {offset}: {reason}")]
    Malformed {
        /// Offset in the message.
        offset: usize,
        /// What the CBOR reader found.
        reason: String,
    },
    /// The top-level item is not a map.
    #[error("a Stream V2 message is a CBOR map, found {found}")]
    NotAMap {
        /// The CBOR type found.
        found: String,
    },
    /// The first key is not `type`.
    #[error("the first key of a Stream V2 message must be \"type\", found {key:?}")]
    FirstKeyNotType {
        /// The first key (empty for an empty map).
        key: String,
    },
    /// `type` is not `start`, `image` or `end`.
    #[error("unknown message type {value:?} (expected \"start\", \"image\" or \"end\")")]
    UnknownType {
        /// The `type` value.
        value: String,
    },
    /// A required key is absent.
    #[error("{message} message without {key:?}")]
    MissingKey {
        /// The message type.
        message: &'static str,
        /// The absent key.
        key: String,
    },
    /// A value of the wrong CBOR type.
    #[error("{key:?} at byte {offset}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the spec allows there.
        expected: &'static str,
        /// The CBOR type found.
        found: String,
        /// Offset of the value in the message.
        offset: usize,
    },
    /// A value of the right CBOR type but out of range (`image_size_x` over u32, an unknown
    /// `image_dtype`, a tag other than 40 or 56500 where one of them must be).
    #[error("{key:?}: invalid value {value}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value as text.
        value: String,
    },
    /// A multi-dimensional array with other than 2 dimensions.
    #[error("{key:?}: {count} dimensions, Stream V2 arrays have 2 ([height, width])")]
    Dims {
        /// The key.
        key: String,
        /// Number of dimensions found.
        count: u64,
    },
    /// A typed-array tag outside RFC 8746's 64 to 87 (or the reserved 76).
    #[error("{key:?}: unknown typed-array tag {tag}")]
    UnknownTypedArrayTag {
        /// The key.
        key: String,
        /// The tag.
        tag: u64,
    },
    /// A tag 56500 algorithm other than `bslz4` and `lz4`.
    #[error("{key:?}: unknown compression {algorithm:?} (known: \"bslz4\", \"lz4\")")]
    UnknownCompression {
        /// The key.
        key: String,
        /// The algorithm text.
        algorithm: String,
    },
    /// A raw byte string whose length is not `dims[0] * dims[1] * elem_size`.
    #[error("{key:?}: {len} bytes of data for dims {dims:?} x {elem_size} bytes = {expected}")]
    RawLength {
        /// The key.
        key: String,
        /// Byte string length.
        len: usize,
        /// `[height, width]` (`[elements, 1]` for the count-rate table).
        dims: [u64; 2],
        /// Element size of the tag.
        elem_size: usize,
        /// The expected length (saturated on overflow).
        expected: u128,
    },
    /// A compressed chunk whose header size is not `dims[0] * dims[1] * elem_size`.
    #[error(
        "{key:?}: chunk header says {size} bytes, dims {dims:?} x {elem_size} bytes = {expected}"
    )]
    CompressedSize {
        /// The key.
        key: String,
        /// The header's uncompressed size.
        size: u64,
        /// `[height, width]` (`[elements, 1]` for the count-rate table).
        dims: [u64; 2],
        /// Element size of the tag.
        elem_size: usize,
        /// The expected size (saturated on overflow).
        expected: u128,
    },
    /// A byte count that is not a whole number of elements (count-rate table, no dims).
    #[error("{key:?}: {len} bytes is not a whole number of {elem_size}-byte elements")]
    PartialElement {
        /// The key.
        key: String,
        /// Byte count (raw length or chunk header size).
        len: u64,
        /// Element size of the tag.
        elem_size: usize,
    },
    /// A compressed chunk whose blocks do not consume it exactly.
    #[error("{key:?}: {source}")]
    Framing {
        /// The key.
        key: String,
        /// What is wrong with the framing.
        source: FramingError,
    },
    /// A bslz4 modifier that is not the typed array's element size.
    #[error("{key:?}: bslz4 element size {modifier}, the typed array's is {elem_size}")]
    Modifier {
        /// The key.
        key: String,
        /// The modifier sent.
        modifier: u64,
        /// Element size of the tag.
        elem_size: usize,
    },
}
