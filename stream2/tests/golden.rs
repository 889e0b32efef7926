//! The worked examples of the spec (§7), byte for byte, both ways.

use detflow_stream2::{
    Compression, End, Image, Message, MultiDimArray, Payload, Rational, SELF_DESCRIBED, Series,
    TypedArray, decode, encode, peek,
};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// §7.1, one line.
const IMAGE_7_1: &str = "d9d9f7a9647479706565696d616765697365726965735f696401707365726965735f756e697175655f69646361626368696d6167655f696400697265616c5f74696d65821a000f423b1a02faf0806b7365726965735f64617465c0781d323032332d30322d31305431353a34393a30352e3238312b30313a30306a73746172745f74696d6582001a02faf0806973746f705f74696d65821a000f423b1a02faf0806464617461a16b7468726573686f6c645f31d82882820202d84548010002000300ffff";

const PIXELS: [u8; 8] = [0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0xff, 0xff];

fn image_7_1(payload: Payload<'_>) -> Message<'_> {
    let exposure = Rational {
        numerator: 999_995,
        denominator: 50_000_000,
    };
    Message::Image(Image {
        series: Series {
            id: 1,
            unique_id: "abc",
        },
        image_id: 0,
        real_time: Some(exposure),
        start_time: Some(Rational {
            numerator: 0,
            denominator: 50_000_000,
        }),
        stop_time: Some(exposure),
        series_date: Some("2023-02-10T15:49:05.281+01:00"),
        user_data: None,
        data: vec![(
            "threshold_1",
            MultiDimArray {
                dims: [2, 2],
                array: TypedArray { tag: 69, payload },
            },
        )],
    })
}

#[test]
fn image_7_1_encodes_byte_for_byte() {
    let golden = unhex(IMAGE_7_1);
    assert_eq!(golden.len(), 196);
    let mut out = Vec::new();
    encode(&image_7_1(Payload::Raw(&PIXELS)), &mut out);
    assert_eq!(out, golden);
}

#[test]
fn image_7_1_decodes_with_and_without_prefix() {
    let golden = unhex(IMAGE_7_1);
    let expected = image_7_1(Payload::Raw(&PIXELS));
    assert_eq!(decode(&golden).unwrap(), expected);
    assert_eq!(decode(&golden[SELF_DESCRIBED.len()..]).unwrap(), expected);
    let header = peek(&golden).unwrap();
    assert_eq!(header.image_id, Some(0));
    assert_eq!(
        header.series,
        Series {
            id: 1,
            unique_id: "abc"
        }
    );
    let Message::Image(img) = decode(&golden).unwrap() else {
        unreachable!()
    };
    // Zero copy: the pixels are a slice of the message, at offset 188.
    let Payload::Raw(px) = img.data[0].1.array.payload else {
        unreachable!()
    };
    assert_eq!(px.as_ptr(), golden[188..].as_ptr());
    assert_eq!(img.real_time.unwrap().seconds(), 0.0199999);
}

/// The message of §7.1 with the channel replaced by `channel` (the §7.2 forms): the map
/// head and everything before `data`'s value are unchanged.
fn with_channel(channel: &str) -> Vec<u8> {
    let golden = unhex(IMAGE_7_1);
    [&golden[..179], &unhex(channel)[..]].concat()
}

const BSLZ4_7_2: &str = "d8 28 82 82 02 02 d8 45 d9 dc b4 83 65 62 73 6c 7a 34 02 54
    00 00 00 00 00 00 00 08 00 00 20 00 01 00 02 00 03 00 ff ff";
const LZ4_7_2: &str = "d8 28 82 82 02 02 d8 45 d9 dc b4 83 63 6c 7a 34 00 58 18
    00 00 00 00 00 00 00 08  00 00 20 00  00 00 00 08  01 00 02 00 03 00 ff ff";

#[test]
fn compressed_channels_7_2_both_ways() {
    for (hex, compression, modifier) in [
        (BSLZ4_7_2, Compression::Bslz4, 2),
        (LZ4_7_2, Compression::Lz4, 0),
    ] {
        let msg = with_channel(hex);
        let chunk = &unhex(hex)[if modifier == 2 { 20 } else { 19 }..];
        let expected = image_7_1(Payload::Compressed {
            compression,
            elem_size: modifier,
            bytes: chunk,
        });
        assert_eq!(decode(&msg).unwrap(), expected, "{compression:?}");
        let mut out = Vec::new();
        encode(&expected, &mut out);
        assert_eq!(out, msg, "{compression:?}");
    }
}

#[test]
fn end_7_3_both_ways() {
    let golden = [
        &[0xd9, 0xd9, 0xf7, 0xa3, 0x64][..],
        b"type\x63end\x69series_id\x01\x70series_unique_id\x78\x1a01GRXWT80JSDY2FNW8SGCCDZD9",
    ]
    .concat();
    assert_eq!(golden.len(), 69);
    let end = Message::End(End {
        series: Series {
            id: 1,
            unique_id: "01GRXWT80JSDY2FNW8SGCCDZD9",
        },
    });
    assert_eq!(decode(&golden).unwrap(), end);
    let mut out = Vec::new();
    encode(&end, &mut out);
    assert_eq!(out, golden);
}
