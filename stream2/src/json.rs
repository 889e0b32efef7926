//! `user_data` as JSON, for files and logs that want text: the CBOR item converts when it
//! holds only what JSON can say (text-keyed maps, arrays, text, integers, finite floats,
//! booleans, null; tag 0 dates become text).

use std::fmt::Write;

use minicbor::Decoder;
use minicbor::data::Type;

/// Nesting deeper than this is refused rather than risk the stack on hostile input.
const MAX_DEPTH: usize = 64;

/// The raw CBOR item `raw` as compact JSON, or `None` when it does not convert (byte
/// strings, tags other than 0 on text, non-text map keys, undefined, non-finite floats,
/// trailing bytes, malformed CBOR).
///
/// ```
/// // [1, "💙"], the image user_data of DECTRIS's sample series
/// let raw = [0x82, 0x01, 0x64, 0xf0, 0x9f, 0x92, 0x99];
/// assert_eq!(detflow_stream2::user_data_json(&raw).as_deref(), Some("[1,\"💙\"]"));
/// ```
pub fn user_data_json(raw: &[u8]) -> Option<String> {
    let mut d = Decoder::new(raw);
    let mut out = String::new();
    item(&mut d, &mut out, 0)?;
    (d.position() == raw.len()).then_some(out)
}

fn item(d: &mut Decoder<'_>, out: &mut String, depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    match d.datatype().ok()? {
        Type::Bool => out.push_str(if d.bool().ok()? { "true" } else { "false" }),
        Type::Null => {
            d.null().ok()?;
            out.push_str("null");
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => write!(out, "{}", d.u64().ok()?).ok()?,
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            write!(out, "{}", d.i128().ok()?).ok()?
        }
        Type::F16 | Type::F32 | Type::F64 => {
            let x = d.f64().ok()?;
            if !x.is_finite() {
                return None;
            }
            // Debug keeps a fraction or exponent ("1.0", "1e300"): valid JSON numbers.
            write!(out, "{x:?}").ok()?;
        }
        Type::String | Type::StringIndef => string(d, out)?,
        Type::Tag => {
            if d.tag().ok()?.as_u64() != 0
                || !matches!(d.datatype().ok()?, Type::String | Type::StringIndef)
            {
                return None;
            }
            string(d, out)?;
        }
        Type::Array | Type::ArrayIndef => {
            let mut len = d.array().ok()?;
            out.push('[');
            let mut first = true;
            while more(d, &mut len)? {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                item(d, out, depth + 1)?;
            }
            out.push(']');
        }
        Type::Map | Type::MapIndef => {
            let mut len = d.map().ok()?;
            out.push('{');
            let mut first = true;
            while more(d, &mut len)? {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                if !matches!(d.datatype().ok()?, Type::String | Type::StringIndef) {
                    return None;
                }
                string(d, out)?;
                out.push(':');
                item(d, out, depth + 1)?;
            }
            out.push('}');
        }
        _ => return None,
    }
    Some(())
}

fn more(d: &mut Decoder<'_>, len: &mut Option<u64>) -> Option<bool> {
    match len {
        Some(0) => Some(false),
        Some(n) => {
            *n -= 1;
            Some(true)
        }
        None if d.datatype().ok()? == Type::Break => {
            d.set_position(d.position() + 1);
            Some(false)
        }
        None => Some(true),
    }
}

fn string(d: &mut Decoder<'_>, out: &mut String) -> Option<()> {
    out.push('"');
    for chunk in d.str_iter().ok()? {
        for c in chunk.ok()?.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => write!(out, "\\u{:04x}", u32::from(c)).ok()?,
                c => out.push(c),
            }
        }
    }
    out.push('"');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::user_data_json;

    #[test]
    fn converts_what_json_can_say() {
        // {"frame": 7, "a": [true, null, -1, 1.5], "d": 0("2023")}
        let raw = [
            0xa3, 0x65, b'f', b'r', b'a', b'm', b'e', 0x07, 0x61, b'a', 0x84, 0xf5, 0xf6, 0x20,
            0xf9, 0x3e, 0x00, 0x61, b'd', 0xc0, 0x64, b'2', b'0', b'2', b'3',
        ];
        assert_eq!(
            user_data_json(&raw).as_deref(),
            Some(r#"{"frame":7,"a":[true,null,-1,1.5],"d":"2023"}"#)
        );
        assert_eq!(
            user_data_json(&[0x62, b'"', 0x01]).as_deref(),
            Some(r#""\"\u0001""#)
        );
    }

    #[test]
    fn refuses_what_json_cannot_say() {
        for raw in [
            &[0x41, 0x00][..],   // byte string
            &[0xa1, 0x01, 0x02], // integer key
            &[0xf7],             // undefined
            &[0xf9, 0x7c, 0x00], // +inf
            &[0xc1, 0x01],       // tag 1 on an integer
            &[0x01, 0x02],       // trailing bytes
            &[0x82, 0x01],       // cut short
        ] {
            assert_eq!(user_data_json(raw), None, "{raw:02x?}");
        }
        let deep = [vec![0x81; 100], vec![0x01]].concat();
        assert_eq!(user_data_json(&deep), None);
    }
}
