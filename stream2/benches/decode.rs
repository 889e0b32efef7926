//! What decoding costs a receiver per message, for the DCU's message sizes: the EIGER2 500K
//! sample (514x1030 u16, bslz4, three channels, 130 blocks each) and the EIGER2 16M frame
//! (4362x4148 u16, bslz4, one channel, 4418 blocks). The chunks are synthetic (random
//! block lengths around the real ones) but framed exactly: `decode` walks every block
//! length, `peek` stops after `image_id`, `encode` is the sender's side.
//!
//! Run with `cargo bench -p detflow-stream2 --bench decode`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_stream2::{
    Compression, Image, Message, MultiDimArray, Payload, Rational, Series, TypedArray, decode,
    encode, peek,
};

/// A bslz4 chunk of `h` x `w` u16 with 8 KiB blocks of `block_len` compressed bytes each.
fn chunk(h: u64, w: u64, block_len: u32) -> Vec<u8> {
    let size = h * w * 2;
    let leftover = (h * w % 8) * 2;
    let mut c = size.to_be_bytes().to_vec();
    c.extend_from_slice(&8192u32.to_be_bytes());
    for _ in 0..(size - leftover).div_ceil(8192) {
        c.extend_from_slice(&block_len.to_be_bytes());
        c.extend(std::iter::repeat_n(0x5a, block_len as usize));
    }
    c.extend(std::iter::repeat_n(0, leftover as usize));
    c
}

fn message(h: u64, w: u64, channels: &[&'static str], chunk: &[u8]) -> Vec<u8> {
    let tick = |n| {
        Some(Rational {
            numerator: n,
            denominator: 50_000_000,
        })
    };
    let array = MultiDimArray {
        dims: [h, w],
        array: TypedArray {
            tag: 69,
            payload: Payload::Compressed {
                compression: Compression::Bslz4,
                elem_size: 2,
                bytes: chunk,
            },
        },
    };
    let image = Image {
        series: Series {
            id: 1,
            unique_id: "01GRXWT80JSDY2FNW8SGCCDZD9",
        },
        image_id: 7,
        real_time: tick(999_995),
        start_time: tick(7_000_000),
        stop_time: tick(7_999_995),
        series_date: Some("2023-02-10T15:49:05.281+01:00"),
        user_data: Some(&[0x82, 0x01, 0x64, 0xf0, 0x9f, 0x92, 0x99]),
        data: channels.iter().map(|&c| (c, array.clone())).collect(),
    };
    let mut out = Vec::new();
    encode(&Message::Image(image), &mut out);
    out
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "500k_3ch",
            514,
            1030,
            vec!["threshold_1", "threshold_2", "difference"],
            1200,
        ),
        ("16m_1ch", 4362, 4148, vec!["threshold_1"], 100),
    ];
    let mut g = c.benchmark_group("stream2");
    for (name, h, w, channels, block_len) in cases {
        let chunk = chunk(h, w, block_len);
        let msg = message(h, w, &channels, &chunk);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| black_box(decode(black_box(&msg)).unwrap()))
        });
        g.bench_function(format!("peek/{name}"), |b| {
            b.iter(|| black_box(peek(black_box(&msg)).unwrap()))
        });
        let decoded = decode(&msg).unwrap();
        let mut out = Vec::with_capacity(msg.len());
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&decoded), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
