//! DECTRIS Stream V2 messages (`start`, `image`, `end`), CBOR over ZeroMQ: a decoder that
//! borrows from the received message and an encoder that writes what a DCU writes.
//!
//! Skeleton: the protocol helper fills this in (see `../shared/specs/stream2.md`).
#![deny(unsafe_code)]
#![warn(missing_docs)]
