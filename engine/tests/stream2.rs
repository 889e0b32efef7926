//! The Stream V2 backend against a sender in the test: the HAL's image conformance check, and
//! whole runs into files (compressed chunks written as they came, every channel, images placed
//! by number, gaps and bad messages counted).

use std::time::Duration;

use detflow_engine::backend::stream2::{SeriesExpect, Stream2Source};
use detflow_engine::config::BackendConfig;
use detflow_engine::{Acquisition, Config, RunEnd};
use detflow_hal::conformance::{ImageSeries, check_image_source};
use detflow_hal::{FrameEncoding, FrameShape, PixelType};
use detflow_stream2::{
    Compression, End, Image, Message, MultiDimArray, Payload, Rational, Series, Start, TypedArray,
};
use detflow_writer::Codec;

const UNIQUE: &str = "01GRXWT80JSDY2FNW8SGCCDZD9";
const CHANNELS: [&str; 3] = ["threshold_1", "threshold_2", "difference"];

/// A bound PUSH socket on a free loopback port.
struct Sender {
    socket: zmq::Socket,
    endpoint: String,
    _context: zmq::Context,
}

impl Sender {
    fn bind() -> Sender {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::PUSH).unwrap();
        socket.set_linger(5000).unwrap();
        socket.set_sndtimeo(20_000).unwrap();
        socket.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        Sender {
            socket,
            endpoint,
            _context: context,
        }
    }

    fn send(&self, msg: &Message<'_>) {
        let mut bytes = Vec::new();
        detflow_stream2::encode(msg, &mut bytes);
        self.send_bytes(&bytes);
    }

    fn send_bytes(&self, bytes: &[u8]) {
        self.socket
            .send(bytes, 0)
            .expect("the receiver takes the message within 20 s");
    }
}

/// The pixels of image `i`, channel `c`: 16x8 u16, distinct per image and channel.
fn pixels(i: u64, c: usize) -> Vec<u8> {
    (0..16 * 8u32)
        .flat_map(|p| ((p * 7 + i as u32 * 131 + c as u32 * 1009) as u16).to_le_bytes())
        .collect()
}

fn start(images: u64, channels: &[&'static str]) -> Start<'static> {
    Start {
        series: Series {
            id: 7,
            unique_id: UNIQUE,
        },
        channels: channels.to_vec(),
        image_size_x: Some(16),
        image_size_y: Some(8),
        image_dtype: Some(PixelType::U16),
        number_of_images: Some(images),
        count_time: Some(0.001),
        frame_time: Some(0.002),
        beam_center_x: Some(8.5),
        detector_description: Some("Dectris EIGER2 Si 500K"),
        threshold_energy: vec![("threshold_1", 6000.0), ("threshold_2", 9000.0)],
        ..Start::default()
    }
}

/// Image `i` of the series, each channel compressed with `codec` (bslz4 or lz4).
fn image_chunks(i: u64, channels: usize, codec: Codec) -> Vec<Vec<u8>> {
    let mut compressor = codec.compressor(PixelType::U16);
    (0..channels)
        .map(|c| {
            let mut out = Vec::new();
            compressor.compress(&pixels(i, c), &mut out);
            out
        })
        .collect()
}

fn image<'a>(i: u64, chunks: &'a [Vec<u8>], compression: Compression) -> Image<'a> {
    let data = chunks
        .iter()
        .zip(CHANNELS)
        .map(|(chunk, name)| {
            let payload = Payload::Compressed {
                compression,
                elem_size: 2,
                bytes: chunk,
            };
            let array = MultiDimArray {
                dims: [8, 16],
                array: TypedArray { tag: 69, payload },
            };
            (name, array)
        })
        .collect();
    Image {
        series: Series {
            id: 7,
            unique_id: UNIQUE,
        },
        image_id: i,
        real_time: Some(Rational {
            numerator: 999_995,
            denominator: 50_000_000,
        }),
        start_time: Some(Rational {
            numerator: i * 1_000_000,
            denominator: 50_000_000,
        }),
        user_data: None,
        data,
        ..Image::default()
    }
}

fn end() -> Message<'static> {
    Message::End(End {
        series: Series {
            id: 7,
            unique_id: UNIQUE,
        },
    })
}

/// Send `start`, the images `order` (each with its chunks), then `end` when asked.
fn send_series(
    sender: &Sender,
    images: u64,
    channels: usize,
    order: &[u64],
    with_end: bool,
) -> Vec<Vec<Vec<u8>>> {
    sender.send(&Message::Start(start(images, &CHANNELS[..channels])));
    let all: Vec<_> = (0..images)
        .map(|i| image_chunks(i, channels, Codec::BitshuffleLz4))
        .collect();
    for &i in order {
        sender.send(&Message::Image(image(
            i,
            &all[i as usize],
            Compression::Bslz4,
        )));
    }
    if with_end {
        sender.send(&end());
    }
    all
}

#[test]
fn the_receiver_passes_the_hal_image_conformance_check() {
    let sender = Sender::bind();
    let endpoint = sender.endpoint.clone();
    // Images 0, 2, 1, 4 of 5: 3 is lost on the way.
    let feeder = std::thread::spawn(move || {
        send_series(&sender, 5, 3, &[0, 2, 1, 4], true);
        sender
    });
    let mut source = Stream2Source::connect(
        &endpoint,
        10,
        Duration::from_secs(20),
        SeriesExpect::default(),
    )
    .unwrap();
    let decode = |e: FrameEncoding, chunk: &[u8], shape: FrameShape| {
        detflow_engine::backend::codec_of(e)
            .decode(shape.pixel_type, chunk)
            .ok()
    };
    let seen = check_image_source(
        &mut source,
        &ImageSeries {
            decode: Some(&decode),
            ..ImageSeries::new(5)
        },
    )
    .unwrap();
    let numbers: Vec<u64> = seen.images.iter().map(|m| m.number).collect();
    assert_eq!((numbers, seen.lost), (vec![0, 2, 1, 4], 1));
    drop(feeder.join().unwrap());
}

fn config(dir: &std::path::Path, endpoint: &str, codec: &str) -> Config {
    let mut c = Config::default();
    c.writer.path = dir.to_str().unwrap().into();
    c.writer.name = "series".into();
    c.writer.codec = codec.parse().unwrap();
    c.backend = BackendConfig::Stream2 {
        connect: endpoint.into(),
        rcvhwm: 10,
        timeout: "20".parse().unwrap(),
        expect: SeriesExpect::default(),
    };
    c
}

#[test]
fn compressed_images_reach_the_file_unchanged_placed_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let cfg = config(dir.path(), &sender.endpoint, "auto");
    let feeder = std::thread::spawn(move || {
        let sent = send_series(&sender, 5, 3, &[0, 2, 1, 4], true);
        (sender, sent)
    });
    let mut run = Acquisition::builder(cfg).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let summary = run.summary();
    let (_sender, sent) = feeder.join().unwrap();
    assert_eq!(summary.codec, "bslz4");
    assert_eq!(
        (summary.status.frames_written, summary.status.frames_lost),
        (4, 1)
    );
    let path = summary.status.files[0].clone();
    let file = hdf5::File::open(&path).unwrap();
    let datasets = [
        "/entry/data/data",
        "/entry/data/threshold_2",
        "/entry/data/difference",
    ];
    for (c, name) in datasets.iter().enumerate() {
        let ds = file.dataset(name).unwrap();
        for i in [0u64, 1, 2, 4] {
            let mut chunk = Vec::new();
            detflow_writer::read_chunk(&ds, &[i, 0, 0], &mut chunk).unwrap();
            assert_eq!(chunk, sent[i as usize][c], "{name} image {i}");
        }
    }
    let present: Vec<u8> = file
        .dataset("/entry/data/image_present")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 1, 1, 0, 1]);
}

#[test]
fn another_codec_decodes_and_encodes_again() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let cfg = config(dir.path(), &sender.endpoint, "deflate:1");
    let feeder = std::thread::spawn(move || {
        send_series(&sender, 3, 2, &[0, 1, 2], true);
        sender
    });
    let mut run = Acquisition::builder(cfg).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let summary = run.summary();
    drop(feeder.join().unwrap());
    assert_eq!(summary.codec, "deflate:1");
    assert_eq!(summary.status.frames_written, 3);
    let file = hdf5::File::open(&summary.status.files[0]).unwrap();
    for (c, name) in ["/entry/data/data", "/entry/data/threshold_2"]
        .iter()
        .enumerate()
    {
        let ds = file.dataset(name).unwrap();
        for i in 0..3u64 {
            let mut chunk = Vec::new();
            detflow_writer::read_chunk(&ds, &[i, 0, 0], &mut chunk).unwrap();
            let raw = Codec::Deflate { level: 1 }
                .decode(PixelType::U16, &chunk)
                .unwrap();
            assert_eq!(raw, pixels(i, c), "{name} image {i}");
        }
    }
}

#[test]
fn bad_messages_are_counted_and_the_good_images_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let mut cfg = config(dir.path(), &sender.endpoint, "auto");
    // No end comes: the series closes after a second without a message.
    if let BackendConfig::Stream2 { timeout, .. } = &mut cfg.backend {
        *timeout = "1".parse().unwrap();
    }
    let feeder = std::thread::spawn(move || {
        sender.send(&Message::Start(start(4, &CHANNELS[..1])));
        let chunks: Vec<_> = (0..4)
            .map(|i| image_chunks(i, 1, Codec::BitshuffleLz4))
            .collect();
        sender.send(&Message::Image(image(0, &chunks[0], Compression::Bslz4)));
        // Malformed CBOR.
        sender.send_bytes(&[0xd9, 0xd9, 0xf7, 0xa1, 0xff]);
        // An image of another series.
        let mut other = image(1, &chunks[1], Compression::Bslz4);
        other.series.unique_id = "another-series";
        sender.send(&Message::Image(other));
        // A truncated chunk.
        let mut cut = chunks[2].clone();
        cut[0].pop();
        sender.send(&Message::Image(image(2, &cut, Compression::Bslz4)));
        sender.send(&Message::Image(image(3, &chunks[3], Compression::Bslz4)));
        // The same image again.
        sender.send(&Message::Image(image(3, &chunks[3], Compression::Bslz4)));
        sender
    });
    let mut run = Acquisition::builder(cfg).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let s = run.summary();
    drop(feeder.join().unwrap());
    assert_eq!(s.status.frames_written, 2, "{s:?}");
    assert_eq!(s.status.frames_corrupted, 4, "{s:?}");
    // Image 2 arrived damaged (corrupted); image 1 never arrived (the image of that number
    // was another series'): lost. 2 written + 1 damaged + 1 lost = the series' 4.
    assert_eq!(s.status.frames_lost, 1, "{s:?}");
    let file = hdf5::File::open(&s.status.files[0]).unwrap();
    let present: Vec<u8> = file
        .dataset("/entry/data/image_present")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, [1, 0, 0, 1]);
}

#[test]
fn a_flag_that_contradicts_the_series_is_refused_before_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let mut cfg = config(dir.path(), &sender.endpoint, "auto");
    if let BackendConfig::Stream2 { expect, .. } = &mut cfg.backend {
        expect.size = Some((32, 8));
    }
    let feeder = std::thread::spawn(move || {
        send_series(&sender, 2, 1, &[0, 1], true);
        sender
    });
    let e = Acquisition::builder(cfg).start().unwrap_err().to_string();
    drop(feeder.join().unwrap());
    assert!(
        e.contains("size 32x8") && e.contains("16x8"),
        "the message names the flag, its value and the series': {e}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file");
}

/// A `u32` typed array of `values`, raw.
fn u32_array(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn header_detail_all_tables_and_the_nxmx_fields_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let cfg = config(dir.path(), &sender.endpoint, "auto");
    let mask: Vec<u32> = (0..16 * 8).map(|p| u32::from(p % 5 == 0)).collect();
    let flat: Vec<u8> = (0..16 * 8)
        .flat_map(|p| (1.0f32 + p as f32 / 100.0).to_le_bytes())
        .collect();
    let lut: Vec<u32> = (0..1000).collect();
    let (mask_b, lut_b) = (u32_array(&mask), u32_array(&lut));
    let feeder = std::thread::spawn(move || {
        let table = |tag, bytes: &'static [u8]| MultiDimArray {
            dims: [8, 16],
            array: TypedArray {
                tag,
                payload: Payload::Raw(bytes),
            },
        };
        let (mask_b, flat, lut_b): (&'static [u8], &'static [u8], &'static [u8]) = (
            Box::leak(mask_b.into_boxed_slice()),
            Box::leak(flat.into_boxed_slice()),
            Box::leak(lut_b.into_boxed_slice()),
        );
        let mut s = start(1, &CHANNELS[..1]);
        s.pixel_mask = vec![("threshold_1", table(70, mask_b))];
        s.flatfield = vec![("threshold_1", table(85, flat))];
        s.countrate_correction_lookup_table = Some(TypedArray {
            tag: 70,
            payload: Payload::Raw(lut_b),
        });
        s.sensor_thickness = Some(0.00045);
        s.incident_wavelength = Some(1.0);
        sender.send(&Message::Start(s));
        let chunks = image_chunks(0, 1, Codec::BitshuffleLz4);
        sender.send(&Message::Image(image(0, &chunks, Compression::Bslz4)));
        sender.send(&end());
        sender
    });
    let mut run = Acquisition::builder(cfg).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let s = run.summary();
    drop(feeder.join().unwrap());
    let file = hdf5::File::open(&s.status.files[0]).unwrap();
    let det = "/entry/instrument/detector";
    let read_u32 = |p: &str| file.dataset(p).unwrap().read_raw::<u32>().unwrap();
    assert_eq!(read_u32(&format!("{det}/pixel_mask")), mask);
    assert_eq!(
        read_u32(&format!("{det}/countrate_correction_lookup_table")),
        lut
    );
    let f: Vec<f32> = file
        .dataset(&format!("{det}/flatfield"))
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(f[7], 1.07);
    let scalar = |p: &str| file.dataset(p).unwrap().read_scalar::<f64>().unwrap();
    assert_eq!(scalar(&format!("{det}/sensor_thickness")), 0.00045);
    assert_eq!(scalar(&format!("{det}/beam_center_x")), 8.5);
    assert_eq!(scalar("/entry/instrument/beam/incident_wavelength"), 1.0);
    assert_eq!(scalar(&format!("{det}/count_time")), 0.001);
}

/// `msg` encoded, with the fan's keys for `rank` of `deal` added to its top-level map.
fn through_fan(msg: &Message<'_>, keys: detflow_stream2::fan::RankKeys) -> Vec<u8> {
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    detflow_stream2::encode(msg, &mut plain);
    keys.add_to(&plain, &mut out).unwrap();
    out
}

#[test]
fn a_rank_writes_its_share_at_its_positions_with_the_series_image_ids() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let cfg = config(dir.path(), &sender.endpoint, "auto");
    // 14 images dealt to 3 ranks in blocks of 2: rank 1 gets 2, 3, 8 and 9.
    let deal = detflow_hal::Deal::new(3, 2).unwrap();
    let keys = detflow_stream2::fan::RankKeys::new(1, deal).unwrap();
    let feeder = std::thread::spawn(move || {
        let mut start = start(14, &CHANNELS[..2]);
        start.goniometer = vec![(
            "omega",
            detflow_stream2::Axis {
                start: 10.0,
                increment: 0.5,
            },
        )];
        sender.send_bytes(&through_fan(&Message::Start(start), keys));
        let all: Vec<_> = (0..14)
            .map(|i| image_chunks(i, 2, Codec::BitshuffleLz4))
            .collect();
        // Rank 1's images but 9 (lost on the way), and image 0, which is rank 0's.
        for i in [2u64, 8, 0, 3] {
            let msg = Message::Image(image(i, &all[i as usize], Compression::Bslz4));
            sender.send(&msg);
        }
        sender.send_bytes(&through_fan(&end(), keys));
        (sender, all)
    });
    let mut run = Acquisition::builder(cfg).start().unwrap();
    assert!(matches!(run.wait(), RunEnd::Complete));
    let s = run.summary();
    let (_sender, sent) = feeder.join().unwrap();
    let st = &s.status;
    assert_eq!(
        (st.frames_written, st.frames_lost, st.frames_corrupted),
        (3, 1, 1),
        "3 of rank 1's 4 written, image 9 lost, image 0 (rank 0's) refused: {s:?}"
    );
    let path = &st.files[0];
    assert_eq!(
        path.file_name().unwrap(),
        "series_r1_0001.h5",
        "the rank in the name"
    );
    let file = hdf5::File::open(path).unwrap();
    for (c, name) in ["/entry/data/data", "/entry/data/threshold_2"]
        .iter()
        .enumerate()
    {
        let ds = file.dataset(name).unwrap();
        for (position, id) in [(0u64, 2usize), (1, 3), (2, 8)] {
            let mut chunk = Vec::new();
            detflow_writer::read_chunk(&ds, &[position, 0, 0], &mut chunk).unwrap();
            assert_eq!(chunk, sent[id][c], "{name} position {position}");
        }
    }
    let present: Vec<u8> = file
        .dataset("/entry/data/image_present")
        .unwrap()
        .read_raw()
        .unwrap();
    // A rank file has its share's 4 positions from creation (so a master maps it whole).
    assert_eq!(present, [1, 1, 1, 0], "position 3 (image 9) never came");
    let specific = file
        .group("/entry/instrument/detector/detectorSpecific")
        .unwrap();
    let ids: Vec<u64> = specific.dataset("image_id").unwrap().read_raw().unwrap();
    assert_eq!(
        ids,
        [2, 3, 8, u64::MAX],
        "the series' image ids, not the positions"
    );
    let scalar = |name: &str| -> u64 { specific.dataset(name).unwrap().read_scalar().unwrap() };
    assert_eq!(
        [
            scalar("detflow_rank"),
            scalar("detflow_ranks"),
            scalar("detflow_frames_per_block"),
            scalar("detflow_number_of_images"),
        ],
        [1, 3, 2, 14]
    );
    let omega: Vec<f64> = file
        .dataset("/entry/sample/transformations/omega")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(
        omega,
        [2.0, 3.0, 8.0, 9.0].map(|id| 10.0 + id * 0.5),
        "the angles of the series images the rank holds"
    );
}

#[test]
fn a_start_with_only_some_of_the_fan_keys_is_refused_naming_the_one_missing() {
    let dir = tempfile::tempdir().unwrap();
    let sender = Sender::bind();
    let cfg = config(dir.path(), &sender.endpoint, "auto");
    let feeder = std::thread::spawn(move || {
        let (mut plain, mut with_keys) = (Vec::new(), Vec::new());
        detflow_stream2::encode(&Message::Start(start(4, &CHANNELS[..1])), &mut plain);
        let keys = [("detflow_rank", 0), ("detflow_ranks", 2)];
        detflow_stream2::fan::add_uint_keys(&plain, &keys, &mut with_keys).unwrap();
        sender.send_bytes(&with_keys);
        let chunks = image_chunks(0, 1, Codec::BitshuffleLz4);
        sender.send(&Message::Image(image(0, &chunks, Compression::Bslz4)));
        sender
    });
    let err = match Acquisition::builder(cfg).start() {
        Ok(_) => panic!("a start with two of the three fan keys was taken"),
        Err(e) => format!("{e:#}"),
    };
    drop(feeder.join().unwrap());
    assert!(err.contains("detflow_frames_per_block"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file for a refused series"
    );
}
