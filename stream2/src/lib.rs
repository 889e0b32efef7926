//! DECTRIS Stream V2 messages (`start`, `image`, `end`), CBOR over ZeroMQ: a decoder that
//! borrows from the received message and an encoder that writes what a DCU writes.
//!
//! This crate knows CBOR and the message model only (no sockets, no files, no codecs). A
//! receiver [`decode`]s each ZeroMQ message; an image channel's compressed byte string is a
//! slice of that message, already checked against the dimensions and walked block by block,
//! ready for HDF5 direct chunk write. [`peek`] reads just enough to route a message. The
//! [`encode()`] side reproduces the DCU's byte layout (spec §2, §7). [`fan`] holds what a
//! fan-out adds to the stream for N writers: the block rule and the keys of each rank.
//!
//! ```
//! use detflow_stream2::{Message, decode};
//!
//! // spec §7.3: the end message of DECTRIS's sample series
//! let msg = b"\xd9\xd9\xf7\xa3\x64type\x63end\x69series_id\x01\
//!             \x70series_unique_id\x78\x1a01GRXWT80JSDY2FNW8SGCCDZD9";
//! let Message::End(end) = decode(msg)? else { unreachable!() };
//! assert_eq!(end.series.unique_id, "01GRXWT80JSDY2FNW8SGCCDZD9");
//! # Ok::<(), detflow_stream2::DecodeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod decode;
pub mod encode;
mod error;
pub mod fan;
mod json;
mod model;
mod payload;
mod read;

pub use decode::{decode, peek};
pub use encode::encode;
pub use error::DecodeError;
pub use json::user_data_json;
pub use model::{
    Axis, Compression, End, Header, Image, Message, MessageKind, MultiDimArray, Payload, Rational,
    Rejected, Series, Start, TypedArray, dtype_from_name, dtype_name,
};
pub use payload::{CHUNK_HEADER_LEN, FramingError};

/// Tag 55799 (self-described CBOR), the three bytes a DCU puts in front of every message.
pub const SELF_DESCRIBED: [u8; 3] = [0xd9, 0xd9, 0xf7];

/// Re-exported so that users name pixel types without depending on the HAL themselves.
pub use detflow_hal::PixelType;
