//! Every way a message is refused, each by a hand-made message, and the error names the key
//! and the value.

use detflow_stream2::{DecodeError, FramingError, Message, decode};
use minicbor::Encoder;

type Enc = Encoder<Vec<u8>>;

/// An image message with the ids and `data = {"threshold_1": <channel>}`; `tweak` may write
/// more pairs (counted in `extra_pairs`) before `data`.
fn image(
    channel: impl FnOnce(&mut Enc),
    extra_pairs: u64,
    tweak: impl FnOnce(&mut Enc),
) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.tag(minicbor::data::Tag::new(55799)).unwrap();
    e.map(5 + extra_pairs).unwrap();
    e.str("type").unwrap().str("image").unwrap();
    e.str("series_id").unwrap().u64(1).unwrap();
    e.str("series_unique_id").unwrap().str("s1").unwrap();
    e.str("image_id").unwrap().u64(3).unwrap();
    tweak(&mut e);
    e.str("data")
        .unwrap()
        .map(1)
        .unwrap()
        .str("threshold_1")
        .unwrap();
    channel(&mut e);
    e.into_writer()
}

fn tag(e: &mut Enc, t: u64) {
    e.tag(minicbor::data::Tag::new(t)).unwrap();
}

/// `40([[h, w], tag(payload)])`, payload written by `content`.
fn md(h: u64, w: u64, typed: u64, content: impl FnOnce(&mut Enc)) -> impl FnOnce(&mut Enc) {
    move |e| {
        tag(e, 40);
        e.array(2)
            .unwrap()
            .array(2)
            .unwrap()
            .u64(h)
            .unwrap()
            .u64(w)
            .unwrap();
        tag(e, typed);
        content(e);
    }
}

/// A raw byte string of `n` zeros.
fn raw(n: usize) -> impl FnOnce(&mut Enc) {
    move |e| {
        e.bytes(&vec![0; n]).unwrap();
    }
}

fn compressed(alg: &'static str, modifier: u64, bytes: Vec<u8>) -> impl FnOnce(&mut Enc) {
    move |e| {
        tag(e, 56500);
        e.array(3)
            .unwrap()
            .str(alg)
            .unwrap()
            .u64(modifier)
            .unwrap()
            .bytes(&bytes)
            .unwrap();
    }
}

/// A valid lz4 chunk of `n` bytes stored as one raw block.
fn lz4_chunk(n: usize) -> Vec<u8> {
    let mut c = (n as u64).to_be_bytes().to_vec();
    c.extend_from_slice(&8192u32.to_be_bytes());
    c.extend_from_slice(&(n as u32).to_be_bytes());
    c.extend(std::iter::repeat_n(7u8, n));
    c
}

fn good() -> Vec<u8> {
    image(md(2, 3, 69, raw(12)), 0, |_| {})
}

#[test]
fn the_hand_made_image_is_valid() {
    decode(&good()).unwrap();
    let lz4 = image(md(2, 3, 69, compressed("lz4", 0, lz4_chunk(12))), 0, |_| {});
    decode(&lz4).unwrap();
}

#[test]
fn malformed_cbor_names_the_offset() {
    let msg = good();
    let err = decode(&msg[..msg.len() - 1]).unwrap_err();
    assert!(
        matches!(err, DecodeError::Malformed { offset, .. } if offset > 60),
        "{err}"
    );
    let err = decode(&[msg.as_slice(), &[0]].concat()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Malformed { offset, .. } if offset == msg.len()),
        "{err}"
    );
    assert!(matches!(
        decode(&[]).unwrap_err(),
        DecodeError::Malformed { offset: 0, .. }
    ));
}

#[test]
fn not_a_map() {
    let err = decode(&[0xd9, 0xd9, 0xf7, 0x82, 0x01, 0x02]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NotAMap {
            found: "array".into()
        }
    );
}

#[test]
fn first_key_must_be_type() {
    let msg = b"\xa2\x69series_id\x01\x64type\x63end";
    assert_eq!(
        decode(msg).unwrap_err(),
        DecodeError::FirstKeyNotType {
            key: "series_id".into()
        }
    );
    assert_eq!(
        decode(b"\xa0").unwrap_err(),
        DecodeError::FirstKeyNotType { key: String::new() }
    );
}

#[test]
fn unknown_type() {
    let err = decode(b"\xa1\x64type\x66config").unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownType {
            value: "config".into()
        }
    );
    assert!(err.to_string().contains("\"config\""));
}

#[test]
fn missing_required_keys() {
    let missing = |msg: &[u8]| match decode(msg).unwrap_err() {
        DecodeError::MissingKey { key, .. } => key,
        e => panic!("{e}"),
    };
    assert_eq!(
        missing(b"\xa2\x64type\x63end\x69series_id\x01"),
        "series_unique_id"
    );
    assert_eq!(
        missing(b"\xa2\x64type\x63end\x70series_unique_id\x61a"),
        "series_id"
    );
    // image without data: the same message with the data pair's count left off
    let mut e = Encoder::new(Vec::new());
    e.map(3).unwrap().str("type").unwrap().str("image").unwrap();
    e.str("series_id")
        .unwrap()
        .u64(1)
        .unwrap()
        .str("series_unique_id")
        .unwrap()
        .str("x")
        .unwrap();
    assert_eq!(missing(e.writer()), "image_id");
    let mut e = Encoder::new(Vec::new());
    e.map(4).unwrap().str("type").unwrap().str("image").unwrap();
    e.str("series_id")
        .unwrap()
        .u64(1)
        .unwrap()
        .str("series_unique_id")
        .unwrap()
        .str("x")
        .unwrap();
    e.str("image_id").unwrap().u64(0).unwrap();
    assert_eq!(missing(e.writer()), "data");
}

#[test]
fn wrong_cbor_type_names_the_key() {
    let msg = image(md(2, 3, 69, raw(12)), 1, |e| {
        e.str("real_time").unwrap().str("soon").unwrap();
    });
    let err = decode(&msg).unwrap_err();
    assert!(
        matches!(&err, DecodeError::WrongType { key, found, .. } if key == "real_time" && found == "string"),
        "{err}"
    );
    let msg = image(raw(12), 0, |_| {});
    let err = decode(&msg).unwrap_err();
    assert!(
        matches!(&err, DecodeError::WrongType { key, .. } if key == "data.threshold_1"),
        "{err}"
    );
}

#[test]
fn dims_must_be_two() {
    let channel = |e: &mut Enc| {
        tag(e, 40);
        e.array(2)
            .unwrap()
            .array(3)
            .unwrap()
            .u64(1)
            .unwrap()
            .u64(2)
            .unwrap()
            .u64(3)
            .unwrap();
        tag(e, 69);
        e.bytes(&[0; 12]).unwrap();
    };
    let err = decode(&image(channel, 0, |_| {})).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Dims {
            key: "data.threshold_1".into(),
            count: 3
        }
    );
}

#[test]
fn unknown_typed_array_tag() {
    for t in [76, 88, 63] {
        let err = decode(&image(md(2, 3, t, raw(12)), 0, |_| {})).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownTypedArrayTag {
                key: "data.threshold_1".into(),
                tag: t
            }
        );
    }
}

#[test]
fn unknown_compression() {
    let err = decode(&image(
        md(2, 3, 69, compressed("zstd", 2, lz4_chunk(12))),
        0,
        |_| {},
    ))
    .unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownCompression {
            key: "data.threshold_1".into(),
            algorithm: "zstd".into()
        }
    );
}

#[test]
fn raw_length_must_match_dims() {
    let err = decode(&image(md(2, 3, 69, raw(10)), 0, |_| {})).unwrap_err();
    assert_eq!(
        err,
        DecodeError::RawLength {
            key: "data.threshold_1".into(),
            len: 10,
            dims: [2, 3],
            elem_size: 2,
            expected: 12
        }
    );
    assert!(err.to_string().contains("10 bytes"), "{err}");
}

#[test]
fn compressed_size_must_match_dims() {
    let err = decode(&image(
        md(2, 3, 70, compressed("lz4", 0, lz4_chunk(12))),
        0,
        |_| {},
    ))
    .unwrap_err();
    assert_eq!(
        err,
        DecodeError::CompressedSize {
            key: "data.threshold_1".into(),
            size: 12,
            dims: [2, 3],
            elem_size: 4,
            expected: 24
        }
    );
}

#[test]
fn truncated_chunk_is_caught_by_its_framing() {
    let mut chunk = lz4_chunk(12);
    chunk.pop();
    let err = decode(&image(md(2, 3, 69, compressed("lz4", 0, chunk)), 0, |_| {})).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Framing { key, source: FramingError::Truncated { block: 0, .. } } if key == "data.threshold_1"),
        "{err}"
    );
}

#[test]
fn bslz4_modifier_must_be_the_element_size() {
    // 6 u16 = 12 bytes: no full 8-element block, all leftover.
    let mut chunk = 12u64.to_be_bytes().to_vec();
    chunk.extend_from_slice(&8192u32.to_be_bytes());
    chunk.extend_from_slice(&[1; 12]);
    decode(&image(
        md(2, 3, 69, compressed("bslz4", 2, chunk.clone())),
        0,
        |_| {},
    ))
    .unwrap();
    let err = decode(&image(
        md(2, 3, 69, compressed("bslz4", 4, chunk)),
        0,
        |_| {},
    ))
    .unwrap_err();
    assert_eq!(
        err,
        DecodeError::Modifier {
            key: "data.threshold_1".into(),
            modifier: 4,
            elem_size: 2
        }
    );
}

/// A start message with the ids and `pairs` more pairs written by `rest`.
fn start(pairs: u64, rest: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(3 + pairs)
        .unwrap()
        .str("type")
        .unwrap()
        .str("start")
        .unwrap();
    e.str("series_id").unwrap().u64(1).unwrap();
    e.str("series_unique_id").unwrap().str("x").unwrap();
    rest(&mut e);
    e.into_writer()
}

#[test]
fn a_bad_start_table_is_rejected_alone_naming_it() {
    let msg = start(2, |e| {
        e.str("pixel_mask")
            .unwrap()
            .map(1)
            .unwrap()
            .str("threshold_2")
            .unwrap();
        md(2, 2, 70, raw(15))(e);
        e.str("count_time").unwrap().f64(0.5).unwrap();
    });
    let Message::Start(s) = decode(&msg).unwrap() else {
        panic!("not a start")
    };
    assert_eq!(s.count_time, Some(0.5));
    assert!(s.pixel_mask.is_empty());
    assert_eq!(s.rejected.len(), 1);
    let r = &s.rejected[0];
    assert_eq!(r.key, "pixel_mask");
    assert!(
        matches!(&r.error, DecodeError::RawLength { key, len: 15, .. } if key == "pixel_mask.threshold_2"),
        "{}",
        r.error
    );
    // Re-encoded, the rejected value goes out as it came.
    let mut out = Vec::new();
    detflow_stream2::encode(&Message::Start(s.clone()), &mut out);
    assert_eq!(decode(&out).unwrap(), Message::Start(s));
}

#[test]
fn tickit_header_detail_all_tables_are_rejected_not_the_series() {
    // tickit-devices' simulator sends base64 text bytes where DECTRIS sends typed arrays,
    // and integers for the beam centre.
    let msg = start(4, |e| {
        e.str("countrate_correction_lookup_table")
            .unwrap()
            .bytes(b"AAAA")
            .unwrap();
        e.str("flatfield")
            .unwrap()
            .map(1)
            .unwrap()
            .str("threshold_1")
            .unwrap()
            .bytes(b"AAAA")
            .unwrap();
        e.str("beam_center_x").unwrap().u16(2000).unwrap();
        e.str("image_size_x").unwrap().u16(4148).unwrap();
    });
    let Message::Start(s) = decode(&msg).unwrap() else {
        panic!("not a start")
    };
    let keys: Vec<&str> = s.rejected.iter().map(|r| r.key).collect();
    assert_eq!(keys, ["countrate_correction_lookup_table", "flatfield"]);
    assert_eq!(
        (s.beam_center_x, s.image_size_x),
        (Some(2000.0), Some(4148))
    );
}

#[test]
fn start_ids_are_never_rejected() {
    let mut e = Encoder::new(Vec::new());
    e.map(3).unwrap().str("type").unwrap().str("start").unwrap();
    e.str("series_id").unwrap().str("one").unwrap();
    e.str("series_unique_id").unwrap().str("x").unwrap();
    let err = decode(e.writer()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::WrongType { key, .. } if key == "series_id"),
        "{err}"
    );
    // A value whose CBOR is broken cannot be skipped: the message is refused.
    let mut msg = start(1, |e| {
        e.str("flatfield").unwrap().map(1).unwrap();
    });
    msg.push(0xff);
    assert!(matches!(
        decode(&msg).unwrap_err(),
        DecodeError::Malformed { .. }
    ));
}
