//! What `stream2-send` says about its series: the `start` message's header (basic keys, and
//! with `--header-detail all` the pixel mask, flatfield and count-rate table a DCU adds),
//! each channel's payload encoded as a DCU encodes it, and the 50 MHz image timing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use detflow_hal::{FrameShape, PixelType};
use detflow_stream2::{Axis, Compression, MultiDimArray, Payload, Series, Start, TypedArray};
use detflow_writer::{Codec, Compressor};

/// The time base of `real_time`, `start_time`, `stop_time`: a DCU counts at 50 MHz.
pub(crate) const TICKS_PER_S: u64 = 50_000_000;
/// Block size of the lz4 chunks, as a DCU writes them (§6.2): 8 KiB.
pub(crate) const LZ4_BLOCK_BYTES: usize = 8192;
/// Incident wavelength (Å) of the simulated beam; the energy follows (E = 12398.4 / λ eV).
const WAVELENGTH_A: f64 = 1.0;
const HC_EV_A: f64 = 12_398.4;
/// Length of the count-rate table of `--header-detail all` (the identity).
const LUT_LEN: u32 = 1000;

/// How image data is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Compress {
    /// Bitshuffle + LZ4 (HDF5 filter 32008 chunks), what a DCU sends by default.
    Bslz4,
    /// LZ4 (HDF5 filter 32004 chunks, 8 KiB blocks).
    Lz4,
    /// Uncompressed typed arrays.
    None,
}

/// How much the `start` message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HeaderDetail {
    /// Every scalar key, no tables.
    Basic,
    /// Also the pixel mask and flatfield per channel and the count-rate table.
    All,
}

/// The channel names of `n` thresholds: `threshold_1` .. `threshold_n`.
pub(crate) fn channel_names(n: usize) -> Vec<String> {
    (1..=n).map(|k| format!("threshold_{k}")).collect()
}

/// The tables of `--header-detail all`, owned here and borrowed by the start message.
pub(crate) struct Tables {
    mask: Vec<u8>,
    flatfield: Vec<u8>,
    lut: Vec<u8>,
}

impl Tables {
    /// A u32 mask of zeros with a fixed pattern of set bits (bit 0 "gap" along column 0,
    /// bit 1 "dead" on the diagonal every 97 pixels, bit 4 "noisy" in the middle row every
    /// 64 pixels), f32 ones, and the u32 identity table of [`LUT_LEN`] entries.
    pub(crate) fn new(width: usize, height: usize) -> Self {
        let mut mask = vec![0u32; width * height];
        for y in 0..height {
            mask[y * width] |= 1;
            if y % 97 == 0 && y < width {
                mask[y * width + y] |= 2;
            }
        }
        for x in (0..width).step_by(64) {
            mask[height / 2 * width + x] |= 16;
        }
        Tables {
            mask: mask.iter().flat_map(|m| m.to_le_bytes()).collect(),
            flatfield: std::iter::repeat_n(1.0f32.to_le_bytes(), width * height)
                .flatten()
                .collect(),
            lut: (0..LUT_LEN).flat_map(u32::to_le_bytes).collect(),
        }
    }
}

/// What the start message is made from.
pub(crate) struct Header<'a> {
    pub(crate) series: Series<'a>,
    pub(crate) arm_date: &'a str,
    pub(crate) channels: &'a [String],
    pub(crate) shape: FrameShape,
    pub(crate) exposure: Duration,
    pub(crate) period: Duration,
    pub(crate) frames: u64,
    pub(crate) description: &'a str,
    pub(crate) tables: Option<&'a Tables>,
}

/// The `start` message: the basic keys always, the tables when given.
pub(crate) fn start<'a>(h: &Header<'a>) -> Start<'a> {
    let (w, ht) = (h.shape.width, h.shape.height);
    let names: Vec<&str> = h.channels.iter().map(String::as_str).collect();
    let thresholds = names
        .iter()
        .enumerate()
        .map(|(k, &n)| (n, HC_EV_A / WAVELENGTH_A / 2.0 + 1000.0 * k as f64));
    let mut s = Start {
        series: h.series,
        arm_date: Some(h.arm_date),
        beam_center_x: Some(f64::from(w) / 2.0),
        beam_center_y: Some(f64::from(ht) / 2.0),
        count_time: Some(h.exposure.as_secs_f64()),
        frame_time: Some(h.period.as_secs_f64()),
        countrate_correction_enabled: Some(false),
        detector_description: Some(h.description),
        detector_serial_number: Some("DF-SIM-0001"),
        detector_translation: Some([0.0, 0.0, 0.1]),
        flatfield_enabled: Some(false),
        goniometer: vec![(
            "omega",
            Axis {
                start: 0.0,
                increment: 0.1,
            },
        )],
        image_dtype: Some(h.shape.pixel_type),
        image_size_x: Some(w),
        image_size_y: Some(ht),
        incident_energy: Some(HC_EV_A / WAVELENGTH_A),
        incident_wavelength: Some(WAVELENGTH_A),
        number_of_images: (h.frames > 0).then_some(h.frames),
        pixel_mask_enabled: Some(false),
        pixel_size_x: Some(75e-6),
        pixel_size_y: Some(75e-6),
        saturation_value: saturation(h.shape.pixel_type),
        sensor_material: Some("Si"),
        sensor_thickness: Some(450e-6),
        threshold_energy: thresholds.collect(),
        virtual_pixel_interpolation_enabled: Some(false),
        channels: names.clone(),
        ..Start::default()
    };
    if let Some(t) = h.tables {
        let dims = [u64::from(ht), u64::from(w)];
        let array = |tag, bytes| MultiDimArray {
            dims,
            array: TypedArray {
                tag,
                payload: Payload::Raw(bytes),
            },
        };
        s.pixel_mask = names.iter().map(|&n| (n, array(70, &t.mask[..]))).collect();
        s.flatfield = names
            .iter()
            .map(|&n| (n, array(85, &t.flatfield[..])))
            .collect();
        s.countrate_correction_lookup_table = Some(TypedArray {
            tag: 70,
            payload: Payload::Raw(&t.lut),
        });
    }
    s
}

/// The largest count of an integer pixel type; none for floats.
fn saturation(p: PixelType) -> Option<u64> {
    Some(match p {
        PixelType::U8 => u8::MAX.into(),
        PixelType::U16 => u16::MAX.into(),
        PixelType::U32 => u32::MAX.into(),
        PixelType::I8 => i8::MAX as u64,
        PixelType::I16 => i16::MAX as u64,
        PixelType::I32 => i32::MAX as u64,
        PixelType::F32 | PixelType::F64 => return None,
    })
}

/// Encodes one channel's frame as `--compress` says, into a reused buffer.
pub(crate) struct ChannelEncoder {
    compress: Compress,
    pixel_type: PixelType,
    bslz4: Compressor,
}

impl ChannelEncoder {
    pub(crate) fn new(compress: Compress, pixel_type: PixelType) -> Self {
        ChannelEncoder {
            compress,
            pixel_type,
            bslz4: Codec::BitshuffleLz4.compressor(pixel_type),
        }
    }

    /// The channel's array: `frame` itself when uncompressed, else its chunk written into
    /// `out` (detflow's 32008 encoder, whose blocks are the DCU's 8 KiB; for lz4 the DCU's
    /// 8 KiB blocks with the raw escape of filter 32004).
    pub(crate) fn encode<'a>(
        &mut self,
        frame: &'a [u8],
        out: &'a mut Vec<u8>,
        shape: FrameShape,
    ) -> MultiDimArray<'a> {
        match self.compress {
            Compress::None => return self.array(frame, shape),
            Compress::Bslz4 => self.bslz4.compress(frame, out),
            Compress::Lz4 => lz4_dcu(frame, out),
        }
        self.array(out, shape)
    }

    /// The channel's array of `bytes` already encoded (the frame itself when uncompressed).
    pub(crate) fn array<'a>(&self, bytes: &'a [u8], shape: FrameShape) -> MultiDimArray<'a> {
        let payload = match self.compress {
            Compress::None => Payload::Raw(bytes),
            Compress::Bslz4 => Payload::Compressed {
                compression: Compression::Bslz4,
                elem_size: self.pixel_type.size() as u64,
                bytes,
            },
            Compress::Lz4 => Payload::Compressed {
                compression: Compression::Lz4,
                elem_size: 0,
                bytes,
            },
        };
        MultiDimArray {
            dims: [u64::from(shape.height), u64::from(shape.width)],
            array: TypedArray {
                tag: TypedArray::tag_of(self.pixel_type),
                payload,
            },
        }
    }
}

/// A 32004 chunk with 8 KiB blocks, as a DCU writes it.
fn lz4_dcu(frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(frame.len() as u64).to_be_bytes());
    out.extend_from_slice(&(LZ4_BLOCK_BYTES as u32).to_be_bytes());
    for block in frame.chunks(LZ4_BLOCK_BYTES) {
        detflow_writer::codec::lz4::append_block(block, out, true);
    }
}

/// Seconds since the Unix epoch as 50 MHz ticks.
pub(crate) fn ticks(seconds: f64) -> u64 {
    (seconds.max(0.0) * TICKS_PER_S as f64).round() as u64
}

/// Now, as Unix seconds and as RFC 3339 text with milliseconds in UTC (what a DCU sends,
/// with its local offset).
pub(crate) fn now() -> (f64, String) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_secs_f64(), rfc3339(t))
}

fn rfc3339(t: Duration) -> String {
    let secs = t.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// The Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `{"frame": i}` in CBOR, the `--user-data` of image i.
pub(crate) fn frame_user_data(i: u64, out: &mut Vec<u8>) {
    out.clear();
    out.push(0xa1);
    out.push(0x65);
    out.extend_from_slice(b"frame");
    match i {
        0..=23 => out.push(i as u8),
        24..=0xff => out.extend_from_slice(&[0x18, i as u8]),
        0x100..=0xffff => {
            out.push(0x19);
            out.extend_from_slice(&(i as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x1a);
            out.extend_from_slice(&(i as u32).to_be_bytes());
        }
        _ => {
            out.push(0x1b);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(Duration::from_millis(0)),
            "1970-01-01T00:00:00.000+00:00"
        );
        // 2023-02-10T14:49:05.281Z, the DCU sample's instant
        assert_eq!(
            rfc3339(Duration::from_millis(1_676_040_545_281)),
            "2023-02-10T14:49:05.281+00:00"
        );
    }

    #[test]
    fn user_data_is_the_frame_as_json() {
        let mut out = Vec::new();
        for i in [0, 23, 24, 300, 70_000, 5_000_000_000] {
            frame_user_data(i, &mut out);
            assert_eq!(
                detflow_stream2::user_data_json(&out),
                Some(format!("{{\"frame\":{i}}}"))
            );
        }
    }

    #[test]
    fn chunks_have_the_dcu_block_size_and_frame_exactly() {
        for (w, h) in [(200u32, 200u32), (15, 7), (1, 1), (4096, 3)] {
            for p in [PixelType::U8, PixelType::U16, PixelType::U32] {
                let n = (w * h) as usize * p.size();
                let frame: Vec<u8> = (0..n).map(|i| (i % 251 / 3) as u8).collect();
                let shape = FrameShape {
                    width: w,
                    height: h,
                    pixel_type: p,
                    color_mode: detflow_hal::ColorMode::Mono,
                };
                for c in [Compress::Bslz4, Compress::Lz4] {
                    let mut out = Vec::new();
                    let a = ChannelEncoder::new(c, p).encode(&frame, &mut out, shape);
                    let Payload::Compressed { bytes, .. } = a.array.payload else {
                        panic!("{c:?} is compressed")
                    };
                    assert_eq!(bytes[8..12], 8192u32.to_be_bytes(), "{c:?} {w}x{h} {p}");
                    a.array
                        .payload
                        .check_framing()
                        .unwrap_or_else(|e| panic!("{c:?} {w}x{h} {p}: {e}"));
                    let codec = if c == Compress::Lz4 {
                        Codec::Lz4
                    } else {
                        Codec::BitshuffleLz4
                    };
                    assert_eq!(codec.decode(p, bytes).unwrap(), frame, "{c:?} {w}x{h} {p}");
                }
            }
        }
    }
}
