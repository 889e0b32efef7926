//! Encoding messages as a DECTRIS DCU does (§2 producer rules): the 55799 prefix, `type`
//! first, the observed key order, definite lengths, integers at their smallest width and
//! floats as f64. `start` keys after the ids are alphabetical, unknown (`extra`) and
//! rejected keys last.
//!
//! ```
//! use detflow_stream2::{End, Message, Series, decode, encode};
//!
//! let end = Message::End(End { series: Series { id: 1, unique_id: "abc" } });
//! let mut out = Vec::new();
//! encode(&end, &mut out);
//! assert_eq!(decode(&out)?, end);
//! # Ok::<(), detflow_stream2::DecodeError>(())
//! ```

use crate::SELF_DESCRIBED;
use crate::model::{
    Image, Message, MultiDimArray, Payload, Rational, Series, Start, TypedArray, dtype_name,
};

/// Appends the encoding of `msg` to `out`. Raw items (`user_data`, `extra` values) are
/// copied as they are.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&SELF_DESCRIBED);
    match msg {
        Message::Start(s) => start(s, out),
        Message::Image(i) => image(i, out),
        Message::End(e) => {
            map(out, 3);
            kind_and_series(out, "end", &e.series);
        }
    }
}

/// A CBOR head: major type `major`, argument `n` at its smallest width.
pub(crate) fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, 0, n);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn array(out: &mut Vec<u8>, n: u64) {
    head(out, 4, n);
}

fn map(out: &mut Vec<u8>, n: u64) {
    head(out, 5, n);
}

fn tag(out: &mut Vec<u8>, t: u64) {
    head(out, 6, t);
}

fn float(out: &mut Vec<u8>, x: f64) {
    out.push(0xfb);
    out.extend_from_slice(&x.to_be_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xf5 } else { 0xf4 });
}

/// Tag 0 + text.
fn date(out: &mut Vec<u8>, s: &str) {
    tag(out, 0);
    text(out, s);
}

fn rational(out: &mut Vec<u8>, r: &Rational) {
    array(out, 2);
    uint(out, r.numerator);
    uint(out, r.denominator);
}

fn kind_and_series(out: &mut Vec<u8>, kind: &str, series: &Series<'_>) {
    text(out, "type");
    text(out, kind);
    text(out, "series_id");
    uint(out, series.id);
    text(out, "series_unique_id");
    text(out, series.unique_id);
}

fn typed_array(out: &mut Vec<u8>, a: &TypedArray<'_>) {
    tag(out, a.tag);
    match a.payload {
        Payload::Raw(b) => bytes(out, b),
        Payload::Compressed {
            compression,
            elem_size,
            bytes: b,
        } => {
            tag(out, 56500);
            array(out, 3);
            text(out, compression.name());
            uint(out, elem_size);
            bytes(out, b);
        }
    }
}

fn multi_dim(out: &mut Vec<u8>, a: &MultiDimArray<'_>) {
    tag(out, 40);
    array(out, 2);
    array(out, 2);
    uint(out, a.dims[0]);
    uint(out, a.dims[1]);
    typed_array(out, &a.array);
}

fn array_map(out: &mut Vec<u8>, entries: &[(&str, MultiDimArray<'_>)]) {
    map(out, entries.len() as u64);
    for (name, a) in entries {
        text(out, name);
        multi_dim(out, a);
    }
}

/// Key order of a DCU image: `type, series_id, series_unique_id, image_id, real_time,
/// series_date, start_time, stop_time, user_data, data`.
fn image(i: &Image<'_>, out: &mut Vec<u8>) {
    let optional = [
        i.real_time.is_some(),
        i.series_date.is_some(),
        i.start_time.is_some(),
        i.stop_time.is_some(),
        i.user_data.is_some(),
    ];
    map(out, 5 + optional.iter().filter(|&&b| b).count() as u64);
    kind_and_series(out, "image", &i.series);
    text(out, "image_id");
    uint(out, i.image_id);
    if let Some(r) = &i.real_time {
        text(out, "real_time");
        rational(out, r);
    }
    if let Some(s) = i.series_date {
        text(out, "series_date");
        date(out, s);
    }
    for (key, r) in [("start_time", &i.start_time), ("stop_time", &i.stop_time)] {
        if let Some(r) = r {
            text(out, key);
            rational(out, r);
        }
    }
    if let Some(raw) = i.user_data {
        text(out, "user_data");
        out.extend_from_slice(raw);
    }
    text(out, "data");
    array_map(out, &i.data);
}

/// Writes the pairs of a map whose length is only known at the end, then puts the map head
/// in front of them (a `start` is sent once per series, so the shift does not matter).
struct Pairs<'o> {
    out: &'o mut Vec<u8>,
    at: usize,
    count: u64,
}

impl<'o> Pairs<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        let at = out.len();
        Pairs { out, at, count: 0 }
    }

    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        self.count += 1;
        text(self.out, k);
        self.out
    }

    fn opt<T>(&mut self, k: &str, v: Option<T>, f: fn(&mut Vec<u8>, T)) {
        if let Some(v) = v {
            f(self.key(k), v);
        }
    }

    fn finish(self) {
        let mut h = Vec::with_capacity(9);
        map(&mut h, self.count);
        self.out.splice(self.at..self.at, h);
    }
}

fn start(s: &Start<'_>, out: &mut Vec<u8>) {
    let mut p = Pairs::new(out);
    p.count = 3;
    kind_and_series(p.out, "start", &s.series);
    p.opt("arm_date", s.arm_date, date);
    p.opt("beam_center_x", s.beam_center_x, float);
    p.opt("beam_center_y", s.beam_center_y, float);
    if !s.channels.is_empty() {
        let out = p.key("channels");
        array(out, s.channels.len() as u64);
        s.channels.iter().for_each(|c| text(out, c));
    }
    p.opt("count_time", s.count_time, float);
    p.opt(
        "countrate_correction_enabled",
        s.countrate_correction_enabled,
        boolean,
    );
    p.opt(
        "countrate_correction_lookup_table",
        s.countrate_correction_lookup_table.as_ref(),
        typed_array,
    );
    p.opt("detector_description", s.detector_description, text);
    p.opt("detector_serial_number", s.detector_serial_number, text);
    p.opt("detector_translation", s.detector_translation, |out, v| {
        array(out, 3);
        v.into_iter().for_each(|x| float(out, x));
    });
    if !s.flatfield.is_empty() {
        array_map(p.key("flatfield"), &s.flatfield);
    }
    p.opt("flatfield_enabled", s.flatfield_enabled, boolean);
    p.opt("frame_time", s.frame_time, float);
    if !s.goniometer.is_empty() {
        let out = p.key("goniometer");
        map(out, s.goniometer.len() as u64);
        for (name, axis) in &s.goniometer {
            text(out, name);
            map(out, 2);
            text(out, "increment");
            float(out, axis.increment);
            text(out, "start");
            float(out, axis.start);
        }
    }
    p.opt("image_dtype", s.image_dtype, |out, t| {
        text(out, dtype_name(t))
    });
    p.opt("image_size_x", s.image_size_x, |out, n| uint(out, n.into()));
    p.opt("image_size_y", s.image_size_y, |out, n| uint(out, n.into()));
    p.opt("incident_energy", s.incident_energy, float);
    p.opt("incident_wavelength", s.incident_wavelength, float);
    p.opt("number_of_images", s.number_of_images, uint);
    if !s.pixel_mask.is_empty() {
        array_map(p.key("pixel_mask"), &s.pixel_mask);
    }
    p.opt("pixel_mask_enabled", s.pixel_mask_enabled, boolean);
    p.opt("pixel_size_x", s.pixel_size_x, float);
    p.opt("pixel_size_y", s.pixel_size_y, float);
    p.opt("saturation_value", s.saturation_value, uint);
    p.opt("sensor_material", s.sensor_material, text);
    p.opt("sensor_thickness", s.sensor_thickness, float);
    if !s.threshold_energy.is_empty() {
        let out = p.key("threshold_energy");
        map(out, s.threshold_energy.len() as u64);
        for (name, e) in &s.threshold_energy {
            text(out, name);
            float(out, *e);
        }
    }
    p.opt("user_data", s.user_data, |out, raw| {
        out.extend_from_slice(raw)
    });
    p.opt(
        "virtual_pixel_interpolation_enabled",
        s.virtual_pixel_interpolation_enabled,
        boolean,
    );
    for (k, raw) in &s.extra {
        p.key(k).extend_from_slice(raw);
    }
    for r in &s.rejected {
        p.key(r.key).extend_from_slice(r.raw);
    }
    p.finish();
}
