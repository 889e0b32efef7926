//! Property tests: decode(encode(m)) == m for generated messages; the same messages written
//! by another encoder (minicbor's) with the keys shuffled after `type`, without the 55799
//! prefix, floats as f16/f32/f64 or integers, dates bare or tagged; and no input, however
//! broken, makes the decoder panic.

use detflow_stream2::{
    Axis, Compression, End, Image, Message, MessageKind, MultiDimArray, Payload, PixelType,
    Rational, SELF_DESCRIBED, Series, Start, TypedArray, decode, encode, peek, user_data_json,
};
use minicbor::Encoder;
use minicbor::data::Tag;
use proptest::prelude::*;

/// splitmix64: payload bytes and block lengths from one generated seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Raw,
    Bslz4,
    Lz4,
}

/// An owned typed array the borrowed model is built from.
#[derive(Debug, Clone)]
struct OwnedArray {
    dims: [u64; 2],
    tag: u64,
    kind: Kind,
    bytes: Vec<u8>,
}

impl OwnedArray {
    fn build(dims: [u64; 2], tag: u64, kind: Kind, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let elem = (1u64 << (((tag >> 4) & 1) + (tag & 3))) as usize;
        let size = (dims[0] * dims[1]) as usize * elem;
        let bytes = match kind {
            Kind::Raw => rng.bytes(size),
            Kind::Bslz4 => {
                let block = 8192;
                let leftover = (size / elem % 8) * elem;
                framed(&mut rng, size, block, size - leftover, leftover)
            }
            Kind::Lz4 => {
                let block = [8192, 16, 64, 1000][rng.below(4) as usize];
                framed(&mut rng, size, block, size, 0)
            }
        };
        OwnedArray {
            dims,
            tag,
            kind,
            bytes,
        }
    }

    fn typed(&self) -> TypedArray<'_> {
        let elem = 1u64 << (((self.tag >> 4) & 1) + (self.tag & 3));
        let payload = match self.kind {
            Kind::Raw => Payload::Raw(&self.bytes),
            Kind::Bslz4 => Payload::Compressed {
                compression: Compression::Bslz4,
                elem_size: elem,
                bytes: &self.bytes,
            },
            Kind::Lz4 => Payload::Compressed {
                compression: Compression::Lz4,
                elem_size: 0,
                bytes: &self.bytes,
            },
        };
        TypedArray {
            tag: self.tag,
            payload,
        }
    }

    fn md(&self) -> MultiDimArray<'_> {
        MultiDimArray {
            dims: self.dims,
            array: self.typed(),
        }
    }
}

/// A chunk with a valid block framing: header, random-length random blocks, raw leftover.
fn framed(rng: &mut Rng, size: usize, block: usize, blocked: usize, leftover: usize) -> Vec<u8> {
    let mut c = (size as u64).to_be_bytes().to_vec();
    c.extend_from_slice(&(block as u32).to_be_bytes());
    for _ in 0..blocked.div_ceil(block) {
        let n = rng.below(24) as usize;
        c.extend_from_slice(&(n as u32).to_be_bytes());
        c.extend(rng.bytes(n));
    }
    c.extend(rng.bytes(leftover));
    c
}

fn typed_tag() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(PixelType::ALL.map(TypedArray::tag_of).to_vec()),
        1 => (64u64..=87).prop_filter("reserved", |t| *t != 76),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(vec![Kind::Raw, Kind::Bslz4, Kind::Lz4])
}

fn array(max_side: u64) -> impl Strategy<Value = OwnedArray> {
    (
        1..=max_side,
        1..=max_side,
        typed_tag(),
        kind(),
        any::<u64>(),
    )
        .prop_map(|(h, w, t, k, seed)| OwnedArray::build([h, w], t, k, seed))
}

/// Any CBOR item, written by minicbor's encoder, for `user_data` and unknown keys.
#[derive(Debug, Clone)]
enum V {
    U(u64),
    I(i64),
    F(f64),
    T(String),
    B(Vec<u8>),
    Bool(bool),
    Null,
    Undefined,
    Date(String),
    A(Vec<V>),
    M(Vec<(String, V)>),
}

fn value() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(V::U),
        any::<i64>().prop_map(V::I),
        any::<f64>().prop_map(V::F),
        ".{0,8}".prop_map(V::T),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(V::B),
        any::<bool>().prop_map(V::Bool),
        Just(V::Null),
        Just(V::Undefined),
        "[0-9T:+-]{4,12}".prop_map(V::Date),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(V::A),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(V::M),
        ]
    })
}

fn write_value(e: &mut Encoder<Vec<u8>>, v: &V) {
    match v {
        V::U(n) => e.u64(*n).map(drop),
        V::I(n) => e.i64(*n).map(drop),
        V::F(x) => e.f64(*x).map(drop),
        V::T(s) => e.str(s).map(drop),
        V::B(b) => e.bytes(b).map(drop),
        V::Bool(b) => e.bool(*b).map(drop),
        V::Null => e.null().map(drop),
        V::Undefined => e.undefined().map(drop),
        V::Date(s) => e.tag(Tag::new(0)).and_then(|e| e.str(s)).map(drop),
        V::A(items) => {
            e.array(items.len() as u64).unwrap();
            items.iter().for_each(|i| write_value(e, i));
            Ok(())
        }
        V::M(items) => {
            e.map(items.len() as u64).unwrap();
            for (k, i) in items {
                e.str(k).unwrap();
                write_value(e, i);
            }
            Ok(())
        }
    }
    .unwrap()
}

fn cbor(v: &V) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    write_value(&mut e, v);
    e.into_writer()
}

/// A float every width holds exactly: k/4 with |k| < 2048.
fn exact_float() -> impl Strategy<Value = f64> {
    (-2047i32..2048).prop_map(|k| f64::from(k) / 4.0)
}

#[derive(Debug, Clone)]
struct OwnedImage {
    id: u64,
    unique_id: String,
    image_id: u64,
    times: [Option<(u64, u64)>; 3],
    series_date: Option<String>,
    user_data: Option<Vec<u8>>,
    channels: Vec<(String, OwnedArray)>,
}

const CHANNELS: [&str; 5] = [
    "threshold_1",
    "threshold_2",
    "threshold_3",
    "threshold_4",
    "difference",
];

fn channels(max_side: u64) -> impl Strategy<Value = Vec<(String, OwnedArray)>> {
    (
        1usize..=4,
        prop::sample::subsequence(CHANNELS.to_vec(), 4),
        array(max_side),
        any::<u64>(),
    )
        .prop_map(|(n, names, first, seed)| {
            // One dims and dtype for all channels, as a detector sends; kinds and bytes vary.
            let mut rng = Rng(seed);
            names[..n]
                .iter()
                .map(|name| {
                    let kind = [Kind::Raw, Kind::Bslz4, Kind::Lz4][rng.below(3) as usize];
                    (
                        name.to_string(),
                        OwnedArray::build(first.dims, first.tag, kind, rng.next()),
                    )
                })
                .collect()
        })
}

fn ticks() -> impl Strategy<Value = Option<(u64, u64)>> {
    prop::option::of((any::<u64>(), prop_oneof![Just(50_000_000u64), any::<u64>()]))
}

fn owned_image() -> impl Strategy<Value = OwnedImage> {
    (
        any::<u64>(),
        "[0-9A-Z]{0,26}",
        any::<u64>(),
        [ticks(), ticks(), ticks()],
        prop::option::of("20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-9:.]{8,12}\\+01:00"),
        prop::option::of(value().prop_map(|v| cbor(&v))),
        channels(24),
    )
        .prop_map(
            |(id, unique_id, image_id, times, series_date, user_data, channels)| OwnedImage {
                id,
                unique_id,
                image_id,
                times,
                series_date,
                user_data,
                channels,
            },
        )
}

impl OwnedImage {
    fn message(&self) -> Message<'_> {
        let r = |t: Option<(u64, u64)>| {
            t.map(|(numerator, denominator)| Rational {
                numerator,
                denominator,
            })
        };
        Message::Image(Image {
            series: Series {
                id: self.id,
                unique_id: &self.unique_id,
            },
            image_id: self.image_id,
            real_time: r(self.times[0]),
            start_time: r(self.times[1]),
            stop_time: r(self.times[2]),
            series_date: self.series_date.as_deref(),
            user_data: self.user_data.as_deref(),
            data: self
                .channels
                .iter()
                .map(|(n, a)| (n.as_str(), a.md()))
                .collect(),
        })
    }
}

/// The scalars of a start message; `None` = key absent.
#[derive(Debug, Clone)]
struct Scalars {
    floats: [Option<f64>; 9],
    bools: [Option<bool>; 4],
    texts: [Option<String>; 4],
    ints: [Option<u64>; 2],
    sizes: [Option<u32>; 2],
    dtype: Option<PixelType>,
    translation: Option<[f64; 3]>,
}

fn scalars() -> impl Strategy<Value = Scalars> {
    (
        prop::array::uniform9(prop::option::of(exact_float())),
        prop::array::uniform4(prop::option::of(any::<bool>())),
        prop::array::uniform4(prop::option::of("[ -~]{0,12}")),
        prop::array::uniform2(prop::option::of(any::<u64>())),
        prop::array::uniform2(prop::option::of(any::<u32>())),
        prop::option::of(prop::sample::select(PixelType::ALL.to_vec())),
        prop::option::of(prop::array::uniform3(exact_float())),
    )
        .prop_map(
            |(floats, bools, texts, ints, sizes, dtype, translation)| Scalars {
                floats,
                bools,
                texts,
                ints,
                sizes,
                dtype,
                translation,
            },
        )
}

#[derive(Debug, Clone)]
struct OwnedStart {
    id: u64,
    unique_id: String,
    s: Scalars,
    channels: Vec<String>,
    lut: Option<OwnedArray>,
    flatfield: Vec<(String, OwnedArray)>,
    pixel_mask: Vec<(String, OwnedArray)>,
    goniometer: Vec<(String, (f64, f64))>,
    thresholds: Vec<(String, f64)>,
    user_data: Option<Vec<u8>>,
    extra: Vec<(String, Vec<u8>)>,
}

fn owned_start() -> impl Strategy<Value = OwnedStart> {
    let lut = (1u64..64, typed_tag(), kind(), any::<u64>())
        .prop_map(|(n, t, k, s)| OwnedArray::build([n, 1], t, k, s));
    let axes = prop::sample::subsequence(vec!["chi", "kappa", "omega", "phi", "two_theta"], 0..=5);
    (
        (any::<u64>(), "[0-9a-f-]{0,36}", scalars()),
        prop::sample::subsequence(CHANNELS.to_vec(), 0..=4),
        prop::option::of(lut),
        prop::option::of(channels(12)),
        prop::option::of(channels(12)),
        (
            axes,
            prop::collection::vec((exact_float(), exact_float()), 5),
        ),
        prop::collection::vec(exact_float(), 5),
        prop::option::of(value().prop_map(|v| cbor(&v))),
        prop::collection::vec(("rank_[a-z]{1,5}", value().prop_map(|v| cbor(&v))), 0..3),
    )
        .prop_map(
            |(
                (id, unique_id, s),
                names,
                lut,
                ff,
                pm,
                (axes, angles),
                energies,
                user_data,
                extra,
            )| {
                let mut extra: Vec<(String, Vec<u8>)> = extra;
                extra.sort_by(|a, b| a.0.cmp(&b.0));
                extra.dedup_by(|a, b| a.0 == b.0);
                OwnedStart {
                    id,
                    unique_id,
                    s,
                    thresholds: names
                        .iter()
                        .zip(energies)
                        .map(|(n, e)| (n.to_string(), e))
                        .collect(),
                    channels: names.iter().map(|n| n.to_string()).collect(),
                    lut,
                    flatfield: ff.unwrap_or_default(),
                    pixel_mask: pm.unwrap_or_default(),
                    goniometer: axes
                        .iter()
                        .zip(angles)
                        .map(|(a, v)| (a.to_string(), v))
                        .collect(),
                    user_data,
                    extra,
                }
            },
        )
}

impl OwnedStart {
    fn message(&self) -> Message<'_> {
        let [f0, f1, f2, f3, f4, f5, f6, f7, f8] = self.s.floats;
        let [b0, b1, b2, b3] = self.s.bools;
        let t = |i: usize| self.s.texts[i].as_deref();
        Message::Start(Start {
            series: Series {
                id: self.id,
                unique_id: &self.unique_id,
            },
            arm_date: t(0),
            beam_center_x: f0,
            beam_center_y: f1,
            channels: self.channels.iter().map(String::as_str).collect(),
            count_time: f2,
            frame_time: f3,
            countrate_correction_enabled: b0,
            countrate_correction_lookup_table: self.lut.as_ref().map(OwnedArray::typed),
            detector_description: t(1),
            detector_serial_number: t(2),
            detector_translation: self.s.translation,
            flatfield: self
                .flatfield
                .iter()
                .map(|(n, a)| (n.as_str(), a.md()))
                .collect(),
            flatfield_enabled: b1,
            goniometer: self
                .goniometer
                .iter()
                .map(|(n, (start, increment))| {
                    (
                        n.as_str(),
                        Axis {
                            start: *start,
                            increment: *increment,
                        },
                    )
                })
                .collect(),
            image_dtype: self.s.dtype,
            image_size_x: self.s.sizes[0],
            image_size_y: self.s.sizes[1],
            incident_energy: f4,
            incident_wavelength: f5,
            number_of_images: self.s.ints[0],
            pixel_mask: self
                .pixel_mask
                .iter()
                .map(|(n, a)| (n.as_str(), a.md()))
                .collect(),
            pixel_mask_enabled: b2,
            pixel_size_x: f6,
            pixel_size_y: f7,
            saturation_value: self.s.ints[1],
            sensor_material: t(3),
            sensor_thickness: f8,
            threshold_energy: self
                .thresholds
                .iter()
                .map(|(n, e)| (n.as_str(), *e))
                .collect(),
            user_data: self.user_data.as_deref(),
            virtual_pixel_interpolation_enabled: b3,
            extra: self
                .extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
            rejected: Vec::new(),
        })
    }
}

/// How the second encoder (minicbor's `Encoder`) writes a message.
#[derive(Debug, Clone, Copy)]
struct Style {
    prefix: bool,
    /// 0: integers where the float is integral (else f64), 1: f16, 2: f32, 3: f64.
    floats: u8,
    tagged_dates: bool,
    shuffle: u64,
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), 0u8..4, any::<bool>(), any::<u64>()).prop_map(
        |(prefix, floats, tagged_dates, shuffle)| Style {
            prefix,
            floats,
            tagged_dates,
            shuffle,
        },
    )
}

type Enc = Encoder<Vec<u8>>;

struct Writer {
    style: Style,
    pairs: Vec<(String, Vec<u8>)>,
}

impl Writer {
    fn pair(&mut self, key: &str, f: impl FnOnce(&mut Enc, Style)) {
        let mut e = Encoder::new(Vec::new());
        f(&mut e, self.style);
        self.pairs.push((key.to_owned(), e.into_writer()));
    }

    fn opt<T>(&mut self, key: &str, v: Option<T>, f: impl FnOnce(&mut Enc, Style, T)) {
        if let Some(v) = v {
            self.pair(key, |e, st| f(e, st, v));
        }
    }

    /// The map: `type` first, the other pairs in a shuffled order.
    fn finish(mut self, kind: &str) -> Vec<u8> {
        let mut rng = Rng(self.style.shuffle);
        for i in (1..self.pairs.len()).rev() {
            self.pairs.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut e = Encoder::new(Vec::new());
        if self.style.prefix {
            e.tag(Tag::new(55799)).unwrap();
        }
        e.map(self.pairs.len() as u64 + 1)
            .unwrap()
            .str("type")
            .unwrap()
            .str(kind)
            .unwrap();
        let mut out = e.into_writer();
        for (k, v) in &self.pairs {
            let mut e = Encoder::new(Vec::new());
            e.str(k).unwrap();
            out.extend(e.into_writer());
            out.extend(v);
        }
        out
    }
}

fn float(e: &mut Enc, st: Style, x: f64) {
    match st.floats {
        0 if x.fract() == 0.0 && x >= 0.0 => e.u64(x as u64),
        0 if x.fract() == 0.0 => e.i64(x as i64),
        1 => e.f16(x as f32),
        2 => e.f32(x as f32),
        _ => e.f64(x),
    }
    .unwrap();
}

fn date(e: &mut Enc, st: Style, s: &str) {
    if st.tagged_dates {
        e.tag(Tag::new(0)).unwrap();
    }
    e.str(s).unwrap();
}

fn typed(e: &mut Enc, a: &TypedArray<'_>) {
    e.tag(Tag::new(a.tag)).unwrap();
    match a.payload {
        Payload::Raw(b) => e.bytes(b).map(drop).unwrap(),
        Payload::Compressed {
            compression,
            elem_size,
            bytes,
        } => {
            e.tag(Tag::new(56500)).unwrap();
            e.array(3)
                .unwrap()
                .str(compression.name())
                .unwrap()
                .u64(elem_size)
                .unwrap()
                .bytes(bytes)
                .unwrap();
        }
    }
}

fn arrays(e: &mut Enc, entries: &[(&str, MultiDimArray<'_>)]) {
    e.map(entries.len() as u64).unwrap();
    for (name, a) in entries {
        e.str(name).unwrap().tag(Tag::new(40)).unwrap();
        e.array(2)
            .unwrap()
            .array(2)
            .unwrap()
            .u64(a.dims[0])
            .unwrap()
            .u64(a.dims[1])
            .unwrap();
        typed(e, &a.array);
    }
}

fn rational(e: &mut Enc, _: Style, r: Rational) {
    e.array(2)
        .unwrap()
        .u64(r.numerator)
        .unwrap()
        .u64(r.denominator)
        .unwrap();
}

fn raw(e: &mut Enc, _: Style, raw: &[u8]) {
    e.writer_mut().extend_from_slice(raw);
}

fn ids(w: &mut Writer, s: &Series<'_>) {
    w.pair("series_id", |e, _| {
        e.u64(s.id).unwrap();
    });
    w.pair("series_unique_id", |e, _| {
        e.str(s.unique_id).unwrap();
    });
}

fn other_encoding(msg: &Message<'_>, style: Style) -> Vec<u8> {
    let mut w = Writer {
        style,
        pairs: Vec::new(),
    };
    ids(&mut w, msg.series());
    match msg {
        Message::End(_) => {}
        Message::Image(i) => {
            w.pair("image_id", |e, _| {
                e.u64(i.image_id).unwrap();
            });
            w.opt("real_time", i.real_time, rational);
            w.opt("start_time", i.start_time, rational);
            w.opt("stop_time", i.stop_time, rational);
            w.opt("series_date", i.series_date, date);
            w.opt("user_data", i.user_data, raw);
            w.pair("data", |e, _| arrays(e, &i.data));
        }
        Message::Start(s) => start_pairs(&mut w, s),
    }
    w.finish(msg.kind().name())
}

fn start_pairs(w: &mut Writer, s: &Start<'_>) {
    let text = |e: &mut Enc, _: Style, t: &str| {
        e.str(t).unwrap();
    };
    let boolean = |e: &mut Enc, _: Style, b: bool| {
        e.bool(b).unwrap();
    };
    let uint = |e: &mut Enc, _: Style, n: u64| {
        e.u64(n).unwrap();
    };
    w.opt("arm_date", s.arm_date, date);
    for (k, v) in [
        ("beam_center_x", s.beam_center_x),
        ("beam_center_y", s.beam_center_y),
        ("count_time", s.count_time),
        ("frame_time", s.frame_time),
        ("incident_energy", s.incident_energy),
        ("incident_wavelength", s.incident_wavelength),
        ("pixel_size_x", s.pixel_size_x),
        ("pixel_size_y", s.pixel_size_y),
        ("sensor_thickness", s.sensor_thickness),
    ] {
        w.opt(k, v, float);
    }
    for (k, v) in [
        (
            "countrate_correction_enabled",
            s.countrate_correction_enabled,
        ),
        ("flatfield_enabled", s.flatfield_enabled),
        ("pixel_mask_enabled", s.pixel_mask_enabled),
        (
            "virtual_pixel_interpolation_enabled",
            s.virtual_pixel_interpolation_enabled,
        ),
    ] {
        w.opt(k, v, boolean);
    }
    for (k, v) in [
        ("detector_description", s.detector_description),
        ("detector_serial_number", s.detector_serial_number),
        ("sensor_material", s.sensor_material),
        (
            "image_dtype",
            s.image_dtype.map(detflow_stream2::dtype_name),
        ),
    ] {
        w.opt(k, v, text);
    }
    w.opt("number_of_images", s.number_of_images, uint);
    w.opt("saturation_value", s.saturation_value, uint);
    w.opt("image_size_x", s.image_size_x.map(u64::from), uint);
    w.opt("image_size_y", s.image_size_y.map(u64::from), uint);
    w.opt(
        "countrate_correction_lookup_table",
        s.countrate_correction_lookup_table.as_ref(),
        |e, _, a| typed(e, a),
    );
    w.opt(
        "detector_translation",
        s.detector_translation,
        |e, st, v| {
            e.array(3).unwrap();
            v.into_iter().for_each(|x| float(e, st, x));
        },
    );
    if !s.channels.is_empty() {
        w.pair("channels", |e, _| {
            e.array(s.channels.len() as u64).unwrap();
            s.channels.iter().for_each(|c| {
                e.str(c).unwrap();
            });
        });
    }
    for (k, v) in [("flatfield", &s.flatfield), ("pixel_mask", &s.pixel_mask)] {
        if !v.is_empty() {
            w.pair(k, |e, _| arrays(e, v));
        }
    }
    if !s.goniometer.is_empty() {
        w.pair("goniometer", |e, st| {
            e.map(s.goniometer.len() as u64).unwrap();
            for (name, axis) in &s.goniometer {
                e.str(name).unwrap().map(2).unwrap().str("start").unwrap();
                float(e, st, axis.start);
                e.str("increment").unwrap();
                float(e, st, axis.increment);
            }
        });
    }
    if !s.threshold_energy.is_empty() {
        w.pair("threshold_energy", |e, st| {
            e.map(s.threshold_energy.len() as u64).unwrap();
            for (name, x) in &s.threshold_energy {
                e.str(name).unwrap();
                float(e, st, *x);
            }
        });
    }
    w.opt("user_data", s.user_data, raw);
    for (k, v) in &s.extra {
        w.opt(k, Some(*v), raw);
    }
}

/// Unknown keys come back in message order: after shuffling, that is the order they were
/// written in, so compare them as sets.
fn normalised(mut m: Message<'_>) -> Message<'_> {
    if let Message::Start(s) = &mut m {
        s.extra.sort();
    }
    m
}

fn roundtrip(m: &Message<'_>) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    encode(m, &mut out);
    prop_assert!(out.starts_with(&SELF_DESCRIBED));
    prop_assert_eq!(
        &decode(&out).map_err(|e| TestCaseError::fail(e.to_string()))?,
        m
    );
    let header = peek(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(header.kind, m.kind());
    prop_assert_eq!(&header.series, m.series());
    if let Message::Image(i) = m {
        prop_assert_eq!(header.image_id, Some(i.image_id));
        if let Some(u) = i.user_data {
            let _ = user_data_json(u);
        }
    }
    Ok(())
}

fn other_roundtrip(m: &Message<'_>, st: Style) -> Result<(), TestCaseError> {
    let bytes = other_encoding(m, st);
    let decoded = decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e} ({st:?})")))?;
    prop_assert_eq!(normalised(decoded), normalised(m.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn images_roundtrip(img in owned_image()) {
        roundtrip(&img.message())?;
    }

    #[test]
    fn starts_roundtrip(s in owned_start()) {
        roundtrip(&s.message())?;
    }

    #[test]
    fn ends_roundtrip(id in any::<u64>(), unique_id in ".{0,30}") {
        roundtrip(&Message::End(End { series: Series { id, unique_id: &unique_id } }))?;
    }

    #[test]
    fn images_from_another_encoder_decode(img in owned_image(), st in style()) {
        other_roundtrip(&img.message(), st)?;
    }

    #[test]
    fn starts_from_another_encoder_decode(s in owned_start(), st in style()) {
        other_roundtrip(&s.message(), st)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = peek(&bytes);
        let _ = user_data_json(&bytes);
        // The same bytes behind a valid message opening reach the per-key readers.
        for kind in ["start", "image", "end"] {
            let mut e = Encoder::new(Vec::new());
            e.map(6).unwrap().str("type").unwrap().str(kind).unwrap();
            let msg = [e.into_writer(), bytes.clone()].concat();
            let _ = decode(&msg);
            let _ = peek(&msg);
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        img in owned_image(),
        s in owned_start(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for m in [img.message(), s.message()] {
            let mut out = Vec::new();
            encode(&m, &mut out);
            let _ = decode(&out[..cut.index(out.len())]);
            let _ = peek(&out[..cut.index(out.len())]);
            for (at, byte) in &edits {
                let i = at.index(out.len());
                out[i] = *byte;
            }
            let _ = decode(&out);
            let _ = peek(&out);
        }
    }
}

#[test]
fn every_truncation_of_a_compressed_image_is_refused() {
    let a = OwnedArray::build([5, 7], 69, Kind::Bslz4, 1);
    let b = OwnedArray::build([5, 7], 69, Kind::Lz4, 2);
    let img = Image {
        series: Series {
            id: 1,
            unique_id: "u",
        },
        image_id: 0,
        data: vec![("threshold_1", a.md()), ("threshold_2", b.md())],
        ..Image::default()
    };
    let mut out = Vec::new();
    encode(&Message::Image(img), &mut out);
    decode(&out).unwrap();
    for cut in 0..out.len() {
        assert!(decode(&out[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn floats_as_f16_and_ints_decode() {
    // Written by hand with minicbor: a TICKIT-like start without the prefix, f16 and int
    // floats, a bare date, an unknown key.
    let mut e = Encoder::new(Vec::new());
    e.map(7).unwrap().str("type").unwrap().str("start").unwrap();
    e.str("beam_center_x").unwrap().f16(1.5).unwrap();
    e.str("count_time").unwrap().u8(0).unwrap();
    e.str("arm_date")
        .unwrap()
        .str("2023-10-03T17:47:48.329000+02:00")
        .unwrap();
    e.str("series_unique_id").unwrap().str("x").unwrap();
    e.str("magic_number").unwrap().u64(11).unwrap();
    e.str("series_id").unwrap().u16(15614).unwrap();
    let bytes = e.into_writer();
    let Message::Start(s) = decode(&bytes).unwrap() else {
        panic!("not a start")
    };
    assert_eq!(s.beam_center_x, Some(1.5));
    assert_eq!(s.count_time, Some(0.0));
    assert_eq!(s.arm_date, Some("2023-10-03T17:47:48.329000+02:00"));
    assert_eq!(
        s.series,
        Series {
            id: 15614,
            unique_id: "x"
        }
    );
    assert_eq!(s.extra, vec![("magic_number", &[0x0b][..])]);
    assert_eq!(peek(&bytes).unwrap().kind, MessageKind::Start);
}

/// `msg` (a definite map, maybe behind the 55799 prefix) rewritten as an indefinite map.
fn indefinite(msg: &[u8]) -> Vec<u8> {
    let at = if msg.starts_with(&SELF_DESCRIBED) {
        3
    } else {
        0
    };
    let head_len = match msg[at] {
        0xa0..=0xb7 => 1,
        0xb8 => 2,
        0xb9 => 3,
        0xba => 5,
        _ => 9,
    };
    [&msg[..at], &[0xbf], &msg[at + head_len..], &[0xff]].concat()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A start from any encoder (with or without the prefix, a definite or an indefinite
    /// map) gains exactly the fan's three keys: it decodes to the same start with them last
    /// in `extra`, and `RankKeys::from_start` reads them back.
    #[test]
    fn starts_gain_exactly_the_fan_keys(
        s in owned_start(),
        st in style(),
        indefinite_map in any::<bool>(),
        (ranks, rank) in (1u64..=u64::MAX).prop_flat_map(|n| (Just(n), 0..n)),
        frames_per_block in 1u64..=u64::MAX,
    ) {
        use detflow_stream2::fan::{Deal, RankKeys};
        let m = s.message();
        let mut msg = other_encoding(&m, st);
        if indefinite_map {
            msg = indefinite(&msg);
        }
        let keys = RankKeys::new(rank, Deal::new(ranks, frames_per_block).unwrap()).unwrap();
        let mut out = Vec::new();
        keys.add_to(&msg, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.starts_with(&SELF_DESCRIBED), st.prefix);
        let head = out[if st.prefix { 3 } else { 0 }];
        prop_assert_eq!(head == 0xbf, indefinite_map);
        let Message::Start(got) = decode(&out).map_err(|e| TestCaseError::fail(e.to_string()))? else {
            return Err(TestCaseError::fail("not a start"));
        };
        prop_assert_eq!(RankKeys::from_start(&got), Ok(Some(keys)));
        let n = got.extra.len();
        prop_assert!(n >= 3);
        let added: Vec<(&str, Vec<u8>)> =
            got.extra[n - 3..].iter().map(|(k, v)| (*k, v.to_vec())).collect();
        let want: Vec<(&str, Vec<u8>)> = keys
            .pairs()
            .iter()
            .map(|(k, v)| {
                let mut e = Encoder::new(Vec::new());
                e.u64(*v).unwrap();
                (*k, e.into_writer())
            })
            .collect();
        prop_assert_eq!(added, want);
        let mut without = got.clone();
        without.extra.truncate(n - 3);
        prop_assert_eq!(normalised(Message::Start(without)), normalised(m));
    }
}
