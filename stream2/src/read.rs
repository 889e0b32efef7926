//! Typed reads over a minicbor [`Decoder`], each naming its key in the error. Tags in front
//! of a plain value are skipped as the DECTRIS C parser does; lengths may be definite or
//! indefinite, byte and text strings must be definite (they are borrowed, never copied).

use std::fmt;

use minicbor::Decoder;
use minicbor::data::Type;

use crate::error::DecodeError;

/// A key path for error messages: `threshold_energy`, `data.threshold_1`.
#[derive(Clone, Copy)]
pub(crate) struct Key<'k> {
    parent: &'k str,
    child: Option<&'k str>,
}

impl<'k> Key<'k> {
    pub(crate) fn top(name: &'k str) -> Self {
        Key {
            parent: name,
            child: None,
        }
    }

    pub(crate) fn child(parent: &'k str, child: &'k str) -> Self {
        Key {
            parent,
            child: Some(child),
        }
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.child {
            Some(c) => write!(f, "{}.{}", self.parent, c),
            None => f.write_str(self.parent),
        }
    }
}

/// Maps a minicbor error (cut short, bad UTF-8, reserved byte) to [`DecodeError::Malformed`].
pub(crate) trait At<T> {
    fn at(self, pos: usize) -> Result<T, DecodeError>;
}

impl<T> At<T> for Result<T, minicbor::decode::Error> {
    fn at(self, pos: usize) -> Result<T, DecodeError> {
        self.map_err(|e| DecodeError::Malformed {
            offset: e.position().unwrap_or(pos),
            reason: e.to_string(),
        })
    }
}

pub(crate) fn wrong(
    key: Key<'_>,
    expected: &'static str,
    found: Type,
    offset: usize,
) -> DecodeError {
    DecodeError::WrongType {
        key: key.to_string(),
        expected,
        found: found.to_string(),
        offset,
    }
}

pub(crate) fn invalid(key: Key<'_>, value: impl fmt::Display) -> DecodeError {
    DecodeError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// The type of the next item.
pub(crate) fn peek_type(d: &Decoder<'_>) -> Result<Type, DecodeError> {
    d.datatype().at(d.position())
}

pub(crate) fn skip_tags(d: &mut Decoder<'_>) -> Result<(), DecodeError> {
    while peek_type(d)? == Type::Tag {
        let p = d.position();
        d.tag().at(p)?;
    }
    Ok(())
}

/// Reads a tag that must be there (typed arrays, multi-dim arrays, 56500).
pub(crate) fn tag(
    d: &mut Decoder<'_>,
    key: Key<'_>,
    expected: &'static str,
) -> Result<u64, DecodeError> {
    let p = d.position();
    match peek_type(d)? {
        Type::Tag => Ok(d.tag().at(p)?.as_u64()),
        t => Err(wrong(key, expected, t, p)),
    }
}

pub(crate) fn uint(d: &mut Decoder<'_>, key: Key<'_>) -> Result<u64, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64().at(p),
        t => Err(wrong(key, "an unsigned integer", t, p)),
    }
}

pub(crate) fn u32(d: &mut Decoder<'_>, key: Key<'_>) -> Result<u32, DecodeError> {
    let v = uint(d, key)?;
    u32::try_from(v).map_err(|_| invalid(key, v))
}

/// A float of any width, or an integer (some encoders write 0 as an int).
pub(crate) fn float(d: &mut Decoder<'_>, key: Key<'_>) -> Result<f64, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::F16 | Type::F32 | Type::F64 => d.f64().at(p),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Ok(d.u64().at(p)? as f64),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => Ok(d.i128().at(p)? as f64),
        t => Err(wrong(key, "a float", t, p)),
    }
}

pub(crate) fn boolean(d: &mut Decoder<'_>, key: Key<'_>) -> Result<bool, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::Bool => d.bool().at(p),
        t => Err(wrong(key, "a boolean", t, p)),
    }
}

pub(crate) fn text<'b>(d: &mut Decoder<'b>, key: Key<'_>) -> Result<&'b str, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::String => d.str().at(p),
        t => Err(wrong(key, "a definite-length text string", t, p)),
    }
}

pub(crate) fn bytes<'b>(d: &mut Decoder<'b>, key: Key<'_>) -> Result<&'b [u8], DecodeError> {
    let p = d.position();
    match peek_type(d)? {
        Type::Bytes => d.bytes().at(p),
        t => Err(wrong(key, "a definite-length byte string", t, p)),
    }
}

/// Starts a map: its length, `None` when indefinite (use [`more`] to walk it).
pub(crate) fn map(d: &mut Decoder<'_>, key: Key<'_>) -> Result<Option<u64>, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::Map | Type::MapIndef => d.map().at(p),
        t => Err(wrong(key, "a map", t, p)),
    }
}

/// Starts an array: its length, `None` when indefinite (use [`more`] to walk it).
pub(crate) fn array(d: &mut Decoder<'_>, key: Key<'_>) -> Result<Option<u64>, DecodeError> {
    skip_tags(d)?;
    let p = d.position();
    match peek_type(d)? {
        Type::Array | Type::ArrayIndef => d.array().at(p),
        t => Err(wrong(key, "an array", t, p)),
    }
}

/// True while a map or array started with `len` has another entry; consumes the break of an
/// indefinite one.
pub(crate) fn more(d: &mut Decoder<'_>, len: &mut Option<u64>) -> Result<bool, DecodeError> {
    match len {
        Some(0) => Ok(false),
        Some(n) => {
            *n -= 1;
            Ok(true)
        }
        None if peek_type(d)? == Type::Break => {
            d.set_position(d.position() + 1);
            Ok(false)
        }
        None => Ok(true),
    }
}

/// A map key (text).
pub(crate) fn map_key<'b>(d: &mut Decoder<'b>, map: &str) -> Result<&'b str, DecodeError> {
    let p = d.position();
    match peek_type(d)? {
        Type::String => d.str().at(p),
        t => Err(wrong(Key::child(map, "(key)"), "a text key", t, p)),
    }
}

/// The next item, whole and unparsed (tags included), as a slice of the message.
pub(crate) fn raw<'b>(d: &mut Decoder<'b>) -> Result<&'b [u8], DecodeError> {
    let start = d.position();
    d.skip().at(start)?;
    Ok(&d.input()[start..d.position()])
}

pub(crate) fn skip(d: &mut Decoder<'_>) -> Result<(), DecodeError> {
    let p = d.position();
    d.skip().at(p)
}
