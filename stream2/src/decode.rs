//! Decoding a received message into the [`Message`] model, and [`peek`] for routing. Byte
//! strings (image data, tables, `user_data`) are slices of the received buffer: nothing is
//! copied and nothing is decompressed, but every array is checked against its dimensions
//! and every compressed chunk's block framing is walked.

use minicbor::Decoder;

use crate::error::DecodeError;
use crate::model::{
    Axis, Compression, End, Header, Image, Message, MessageKind, MultiDimArray, Payload, Rational,
    Rejected, Series, Start, TypedArray, dtype_from_name,
};
use crate::payload::{elem_size, is_typed_array_tag};
use crate::read::{
    At, Key, array, boolean, bytes, float, invalid, map, map_key, more, peek_type, raw, skip, tag,
    text, u32, uint,
};

/// Tag of an RFC 8746 row-major multi-dimensional array.
const TAG_MULTI_DIM: u64 = 40;
/// Tag of a DECTRIS compressed byte string.
const TAG_COMPRESSED: u64 = 56500;

/// Decodes one Stream V2 message (with or without the 55799 prefix), validating every array
/// against its dimensions and every compressed chunk's framing.
pub fn decode(msg: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (mut d, kind, len) = open(msg)?;
    let m = match kind {
        MessageKind::Start => Message::Start(start(&mut d, len)?),
        MessageKind::Image => Message::Image(image(&mut d, len)?),
        MessageKind::End => Message::End(end(&mut d, len)?),
    };
    finish(&d)?;
    Ok(m)
}

/// Reads only the type, the series ids and `image_id`, stopping as soon as it has them: the
/// image data is neither decoded nor checked. For routing; decode the message to use it.
pub fn peek(msg: &[u8]) -> Result<Header<'_>, DecodeError> {
    let (mut d, kind, mut len) = open(msg)?;
    let (mut id, mut unique_id, mut image_id) = (None, None, None);
    while more(&mut d, &mut len)? {
        let k = map_key(&mut d, kind.name())?;
        match k {
            "series_id" => id = Some(uint(&mut d, Key::top(k))?),
            "series_unique_id" => unique_id = Some(text(&mut d, Key::top(k))?),
            "image_id" if kind == MessageKind::Image => image_id = Some(uint(&mut d, Key::top(k))?),
            _ => skip(&mut d)?,
        }
        let have_id = image_id.is_some() || kind != MessageKind::Image;
        if id.is_some() && unique_id.is_some() && have_id {
            break;
        }
    }
    let series = series(kind, id, unique_id)?;
    if kind == MessageKind::Image && image_id.is_none() {
        return Err(missing(kind, "image_id"));
    }
    Ok(Header {
        kind,
        series,
        image_id,
    })
}

/// Skips the prefix, opens the top-level map and reads `type`: the decoder, the kind and the
/// number of entries left.
fn open(msg: &[u8]) -> Result<(Decoder<'_>, MessageKind, Option<u64>), DecodeError> {
    let mut d = Decoder::new(msg);
    let p = d.position();
    crate::read::skip_tags(&mut d)?;
    let mut len = match peek_type(&d)? {
        minicbor::data::Type::Map | minicbor::data::Type::MapIndef => d.map().at(p)?,
        t => {
            return Err(DecodeError::NotAMap {
                found: t.to_string(),
            });
        }
    };
    if !more(&mut d, &mut len)? {
        return Err(DecodeError::FirstKeyNotType { key: String::new() });
    }
    let k = map_key(&mut d, "message")?;
    if k != "type" {
        return Err(DecodeError::FirstKeyNotType { key: k.to_owned() });
    }
    let kind = match text(&mut d, Key::top("type"))? {
        "start" => MessageKind::Start,
        "image" => MessageKind::Image,
        "end" => MessageKind::End,
        other => {
            return Err(DecodeError::UnknownType {
                value: other.to_owned(),
            });
        }
    };
    Ok((d, kind, len))
}

fn finish(d: &Decoder<'_>) -> Result<(), DecodeError> {
    let end = d.input().len();
    if d.position() != end {
        return Err(DecodeError::Malformed {
            offset: d.position(),
            reason: format!("{} bytes after the message's map", end - d.position()),
        });
    }
    Ok(())
}

fn missing(kind: MessageKind, key: &str) -> DecodeError {
    DecodeError::MissingKey {
        message: kind.name(),
        key: key.to_owned(),
    }
}

fn series<'b>(
    kind: MessageKind,
    id: Option<u64>,
    unique_id: Option<&'b str>,
) -> Result<Series<'b>, DecodeError> {
    Ok(Series {
        id: id.ok_or_else(|| missing(kind, "series_id"))?,
        unique_id: unique_id.ok_or_else(|| missing(kind, "series_unique_id"))?,
    })
}

fn end<'b>(d: &mut Decoder<'b>, mut len: Option<u64>) -> Result<End<'b>, DecodeError> {
    let (mut id, mut unique_id) = (None, None);
    while more(d, &mut len)? {
        let k = map_key(d, "end")?;
        match k {
            "series_id" => id = Some(uint(d, Key::top(k))?),
            "series_unique_id" => unique_id = Some(text(d, Key::top(k))?),
            _ => skip(d)?,
        }
    }
    Ok(End {
        series: series(MessageKind::End, id, unique_id)?,
    })
}

fn image<'b>(d: &mut Decoder<'b>, mut len: Option<u64>) -> Result<Image<'b>, DecodeError> {
    let (mut id, mut unique_id, mut image_id, mut data) = (None, None, None, None);
    let mut img = Image::default();
    while more(d, &mut len)? {
        let k = map_key(d, "image")?;
        let key = Key::top(k);
        match k {
            "series_id" => id = Some(uint(d, key)?),
            "series_unique_id" => unique_id = Some(text(d, key)?),
            "image_id" => image_id = Some(uint(d, key)?),
            "real_time" => img.real_time = Some(rational(d, key)?),
            "start_time" => img.start_time = Some(rational(d, key)?),
            "stop_time" => img.stop_time = Some(rational(d, key)?),
            "series_date" => img.series_date = Some(text(d, key)?),
            "user_data" => img.user_data = Some(raw(d)?),
            "data" => data = Some(array_map(d, k)?),
            _ => skip(d)?,
        }
    }
    img.series = series(MessageKind::Image, id, unique_id)?;
    img.image_id = image_id.ok_or_else(|| missing(MessageKind::Image, "image_id"))?;
    img.data = data.ok_or_else(|| missing(MessageKind::Image, "data"))?;
    Ok(img)
}

fn start<'b>(d: &mut Decoder<'b>, mut len: Option<u64>) -> Result<Start<'b>, DecodeError> {
    let mut ids = (None, None);
    let mut s = Start::default();
    while more(d, &mut len)? {
        let k = map_key(d, "start")?;
        let at = d.position();
        match start_key(d, k, &mut s, &mut ids) {
            Ok(()) => {}
            // Structure that cannot be skipped, or ids that cannot be read: the message is
            // unusable.
            Err(e @ DecodeError::Malformed { .. }) => return Err(e),
            Err(e) if k == "series_id" || k == "series_unique_id" => return Err(e),
            Err(error) => {
                d.set_position(at);
                let raw = raw(d)?;
                s.rejected.push(Rejected { key: k, raw, error });
            }
        }
    }
    s.series = series(MessageKind::Start, ids.0, ids.1)?;
    Ok(s)
}

/// Reads the value of start key `k` into `s` (or `ids`); unknown keys go to `extra`.
fn start_key<'b>(
    d: &mut Decoder<'b>,
    k: &'b str,
    s: &mut Start<'b>,
    ids: &mut (Option<u64>, Option<&'b str>),
) -> Result<(), DecodeError> {
    let key = Key::top(k);
    match k {
        "series_id" => ids.0 = Some(uint(d, key)?),
        "series_unique_id" => ids.1 = Some(text(d, key)?),
        "arm_date" => s.arm_date = Some(text(d, key)?),
        "beam_center_x" => s.beam_center_x = Some(float(d, key)?),
        "beam_center_y" => s.beam_center_y = Some(float(d, key)?),
        "channels" => s.channels = texts(d, k)?,
        "count_time" => s.count_time = Some(float(d, key)?),
        "countrate_correction_enabled" => s.countrate_correction_enabled = Some(boolean(d, key)?),
        "countrate_correction_lookup_table" => {
            s.countrate_correction_lookup_table = Some(typed_array(d, key, None)?)
        }
        "detector_description" => s.detector_description = Some(text(d, key)?),
        "detector_serial_number" => s.detector_serial_number = Some(text(d, key)?),
        "detector_translation" => s.detector_translation = Some(vector3(d, key)?),
        "flatfield" => s.flatfield = array_map(d, k)?,
        "flatfield_enabled" => s.flatfield_enabled = Some(boolean(d, key)?),
        "frame_time" => s.frame_time = Some(float(d, key)?),
        "goniometer" => s.goniometer = goniometer(d, k)?,
        "image_dtype" => {
            let name = text(d, key)?;
            s.image_dtype =
                Some(dtype_from_name(name).ok_or_else(|| invalid(key, format!("{name:?}")))?);
        }
        "image_size_x" => s.image_size_x = Some(u32(d, key)?),
        "image_size_y" => s.image_size_y = Some(u32(d, key)?),
        "incident_energy" => s.incident_energy = Some(float(d, key)?),
        "incident_wavelength" => s.incident_wavelength = Some(float(d, key)?),
        "number_of_images" => s.number_of_images = Some(uint(d, key)?),
        "pixel_mask" => s.pixel_mask = array_map(d, k)?,
        "pixel_mask_enabled" => s.pixel_mask_enabled = Some(boolean(d, key)?),
        "pixel_size_x" => s.pixel_size_x = Some(float(d, key)?),
        "pixel_size_y" => s.pixel_size_y = Some(float(d, key)?),
        "saturation_value" => s.saturation_value = Some(uint(d, key)?),
        "sensor_material" => s.sensor_material = Some(text(d, key)?),
        "sensor_thickness" => s.sensor_thickness = Some(float(d, key)?),
        "threshold_energy" => s.threshold_energy = float_map(d, k)?,
        "user_data" => s.user_data = Some(raw(d)?),
        "virtual_pixel_interpolation_enabled" => {
            s.virtual_pixel_interpolation_enabled = Some(boolean(d, key)?)
        }
        _ => s.extra.push((k, raw(d)?)),
    }
    Ok(())
}

/// `[numerator, denominator]`.
fn rational(d: &mut Decoder<'_>, key: Key<'_>) -> Result<Rational, DecodeError> {
    let p = d.position();
    let mut len = array(d, key)?;
    let mut v = [0u64; 2];
    for slot in &mut v {
        if !more(d, &mut len)? {
            return Err(invalid(
                key,
                format!("a rational of fewer than 2 integers at byte {p}"),
            ));
        }
        *slot = uint(d, key)?;
    }
    if more(d, &mut len)? {
        return Err(invalid(
            key,
            format!("a rational of more than 2 integers at byte {p}"),
        ));
    }
    Ok(Rational {
        numerator: v[0],
        denominator: v[1],
    })
}

fn vector3(d: &mut Decoder<'_>, key: Key<'_>) -> Result<[f64; 3], DecodeError> {
    let mut len = array(d, key)?;
    let mut v = [0.0; 3];
    let mut n = 0usize;
    while more(d, &mut len)? {
        let x = float(d, key)?;
        if let Some(slot) = v.get_mut(n) {
            *slot = x;
        }
        n += 1;
    }
    if n != 3 {
        return Err(invalid(key, format!("an array of {n} floats (expected 3)")));
    }
    Ok(v)
}

fn texts<'b>(d: &mut Decoder<'b>, k: &str) -> Result<Vec<&'b str>, DecodeError> {
    let mut len = array(d, Key::top(k))?;
    let mut v = Vec::new();
    while more(d, &mut len)? {
        v.push(text(d, Key::top(k))?);
    }
    Ok(v)
}

fn float_map<'b>(d: &mut Decoder<'b>, k: &str) -> Result<Vec<(&'b str, f64)>, DecodeError> {
    let mut len = map(d, Key::top(k))?;
    let mut v = Vec::new();
    while more(d, &mut len)? {
        let name = map_key(d, k)?;
        v.push((name, float(d, Key::child(k, name))?));
    }
    Ok(v)
}

fn goniometer<'b>(d: &mut Decoder<'b>, k: &str) -> Result<Vec<(&'b str, Axis)>, DecodeError> {
    let mut len = map(d, Key::top(k))?;
    let mut v = Vec::new();
    while more(d, &mut len)? {
        let name = map_key(d, k)?;
        let key = Key::child(k, name);
        let mut axis_len = map(d, key)?;
        let (mut start, mut increment) = (None, None);
        while more(d, &mut axis_len)? {
            match map_key(d, k)? {
                "start" => start = Some(float(d, key)?),
                "increment" => increment = Some(float(d, key)?),
                _ => skip(d)?,
            }
        }
        let axis = match (start, increment) {
            (Some(start), Some(increment)) => Axis { start, increment },
            _ => return Err(invalid(key, "an axis without \"start\" and \"increment\"")),
        };
        v.push((name, axis));
    }
    Ok(v)
}

/// A map of name -> multi-dimensional array (`data`, `flatfield`, `pixel_mask`).
fn array_map<'b>(
    d: &mut Decoder<'b>,
    k: &str,
) -> Result<Vec<(&'b str, MultiDimArray<'b>)>, DecodeError> {
    let mut len = map(d, Key::top(k))?;
    let mut v = Vec::new();
    while more(d, &mut len)? {
        let name = map_key(d, k)?;
        v.push((name, multi_dim(d, Key::child(k, name))?));
    }
    Ok(v)
}

/// `40([[rows, cols], typed array])`.
fn multi_dim<'b>(d: &mut Decoder<'b>, key: Key<'_>) -> Result<MultiDimArray<'b>, DecodeError> {
    let t = tag(d, key, "a multi-dimensional array (tag 40)")?;
    if t != TAG_MULTI_DIM {
        return Err(invalid(
            key,
            format!("tag {t} (expected 40, a row-major multi-dimensional array)"),
        ));
    }
    let p = d.position();
    if array(d, key)? != Some(2) {
        return Err(invalid(
            key,
            format!("tag 40 content at byte {p} is not a 2-element array"),
        ));
    }
    let mut dims_len = array(d, key)?;
    let mut dims = [0u64; 2];
    let mut count = 0u64;
    while more(d, &mut dims_len)? {
        let n = uint(d, key)?;
        if let Some(slot) = dims.get_mut(count as usize) {
            *slot = n;
        }
        count += 1;
    }
    if count != 2 {
        return Err(DecodeError::Dims {
            key: key.to_string(),
            count,
        });
    }
    let array = typed_array(d, key, Some(dims))?;
    Ok(MultiDimArray { dims, array })
}

/// A typed array, checked against `dims` (or, without dims, for whole elements).
fn typed_array<'b>(
    d: &mut Decoder<'b>,
    key: Key<'_>,
    dims: Option<[u64; 2]>,
) -> Result<TypedArray<'b>, DecodeError> {
    let t = tag(d, key, "a typed array (tags 64 to 87)")?;
    if !is_typed_array_tag(t) {
        return Err(DecodeError::UnknownTypedArrayTag {
            key: key.to_string(),
            tag: t,
        });
    }
    let payload = if peek_type(d)? == minicbor::data::Type::Tag {
        let c = tag(d, key, "tag 56500")?;
        if c != TAG_COMPRESSED {
            return Err(invalid(
                key,
                format!("tag {c} inside typed array {t} (expected 56500)"),
            ));
        }
        compressed(d, key)?
    } else {
        Payload::Raw(bytes(d, key)?)
    };
    let array = TypedArray { tag: t, payload };
    check_size(key, &array, dims)?;
    Ok(array)
}

/// `56500([algorithm, modifier, bytes])`.
fn compressed<'b>(d: &mut Decoder<'b>, key: Key<'_>) -> Result<Payload<'b>, DecodeError> {
    let p = d.position();
    if array(d, key)? != Some(3) {
        return Err(invalid(
            key,
            format!("tag 56500 content at byte {p} is not a 3-element array"),
        ));
    }
    let algorithm = text(d, key)?;
    let compression =
        Compression::from_name(algorithm).ok_or_else(|| DecodeError::UnknownCompression {
            key: key.to_string(),
            algorithm: algorithm.to_owned(),
        })?;
    let elem_size = uint(d, key)?;
    let bytes = bytes(d, key)?;
    Ok(Payload::Compressed {
        compression,
        elem_size,
        bytes,
    })
}

/// The payload holds exactly the elements the dimensions announce, and a compressed chunk is
/// framed as its algorithm says.
fn check_size(
    key: Key<'_>,
    array: &TypedArray<'_>,
    dims: Option<[u64; 2]>,
) -> Result<(), DecodeError> {
    let elem = elem_size(array.tag);
    if let Payload::Compressed {
        compression: Compression::Bslz4,
        elem_size: modifier,
        ..
    } = array.payload
    {
        if modifier != elem as u64 {
            return Err(DecodeError::Modifier {
                key: key.to_string(),
                modifier,
                elem_size: elem,
            });
        }
    }
    let size = match array.payload {
        Payload::Raw(b) => b.len() as u64,
        Payload::Compressed { bytes, .. } => array
            .payload
            .uncompressed_size()
            .ok_or_else(|| framing(key, crate::FramingError::ShortHeader { len: bytes.len() }))?,
    };
    let dims = match dims {
        Some(dims) => dims,
        None if size % elem as u64 == 0 => [size / elem as u64, 1],
        None => {
            return Err(DecodeError::PartialElement {
                key: key.to_string(),
                len: size,
                elem_size: elem,
            });
        }
    };
    let expected = u128::from(dims[0])
        .saturating_mul(u128::from(dims[1]))
        .saturating_mul(elem as u128);
    if u128::from(size) != expected {
        let key = key.to_string();
        return Err(match array.payload {
            Payload::Raw(b) => DecodeError::RawLength {
                key,
                len: b.len(),
                dims,
                elem_size: elem,
                expected,
            },
            Payload::Compressed { .. } => DecodeError::CompressedSize {
                key,
                size,
                dims,
                elem_size: elem,
                expected,
            },
        });
    }
    array.payload.check_framing().map_err(|e| framing(key, e))
}

fn framing(key: Key<'_>, source: crate::FramingError) -> DecodeError {
    DecodeError::Framing {
        key: key.to_string(),
        source,
    }
}
