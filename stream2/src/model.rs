//! The message model: what a `start`, `image` and `end` message carry, borrowed from the
//! received bytes. Field names and units follow the DECTRIS Stream V2 tables (spec §3).

use detflow_hal::PixelType;

/// One decoded Stream V2 message.
// `Start` is large (~500 bytes) but comes once per series; unboxed, callers match on it
// directly and an image message costs no allocation for the enum.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// Sent once per series, on arm.
    Start(Start<'a>),
    /// Sent once per exposure, with every channel.
    Image(Image<'a>),
    /// Sent once at the end of the series (disarm, abort, cancel).
    End(End<'a>),
}

impl<'a> Message<'a> {
    /// Which of the three messages this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Start(_) => MessageKind::Start,
            Message::Image(_) => MessageKind::Image,
            Message::End(_) => MessageKind::End,
        }
    }

    /// The series every message names.
    pub fn series(&self) -> &Series<'a> {
        match self {
            Message::Start(s) => &s.series,
            Message::Image(i) => &i.series,
            Message::End(e) => &e.series,
        }
    }
}

/// The `type` of a message, without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `"start"`.
    Start,
    /// `"image"`.
    Image,
    /// `"end"`.
    End,
}

impl MessageKind {
    /// The wire name (`"start"`, `"image"`, `"end"`).
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Start => "start",
            MessageKind::Image => "image",
            MessageKind::End => "end",
        }
    }
}

/// What [`crate::peek`] reads: enough to route a message without decoding its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// The message type.
    pub kind: MessageKind,
    /// The series ids.
    pub series: Series<'a>,
    /// `image_id` for an image message, `None` for start and end.
    pub image_id: Option<u64>,
}

/// The ids every message of one series repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Series<'a> {
    /// `series_id`: the series number (same value in every message of the series).
    pub id: u64,
    /// `series_unique_id`: an opaque text (ULID on a DCU, UUID from some simulators).
    pub unique_id: &'a str,
}

/// One goniometer axis of the `start` message, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Axis {
    /// Angle of the first image (deg).
    pub start: f64,
    /// Angle added per image (deg).
    pub increment: f64,
}

/// The `start` message. Every field but the series ids is optional on the wire; an empty
/// `Vec` means the key was absent (or present and empty: the two are not told apart).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Start<'a> {
    /// `series_id`, `series_unique_id`.
    pub series: Series<'a>,
    /// `arm_date`: RFC 3339 text (tag 0 on the wire, or bare text).
    pub arm_date: Option<&'a str>,
    /// `beam_center_x` (pixels).
    pub beam_center_x: Option<f64>,
    /// `beam_center_y` (pixels).
    pub beam_center_y: Option<f64>,
    /// `channels`: channel names, in the order image data is sent.
    pub channels: Vec<&'a str>,
    /// `count_time`: exposure per image (s).
    pub count_time: Option<f64>,
    /// `frame_time`: interval between image starts (s).
    pub frame_time: Option<f64>,
    /// `countrate_correction_enabled`.
    pub countrate_correction_enabled: Option<bool>,
    /// `countrate_correction_lookup_table` (header_detail `all`): count c maps to LUT[c].
    pub countrate_correction_lookup_table: Option<TypedArray<'a>>,
    /// `detector_description`, e.g. `"Dectris EIGER2 Si 16M"`.
    pub detector_description: Option<&'a str>,
    /// `detector_serial_number`.
    pub detector_serial_number: Option<&'a str>,
    /// `detector_translation` (m).
    pub detector_translation: Option<[f64; 3]>,
    /// `flatfield` (header_detail `all`): channel name -> factors, in message order.
    pub flatfield: Vec<(&'a str, MultiDimArray<'a>)>,
    /// `flatfield_enabled`.
    pub flatfield_enabled: Option<bool>,
    /// `goniometer`: axis name -> start and increment (deg), in message order.
    pub goniometer: Vec<(&'a str, Axis)>,
    /// `image_dtype` (firmware 2024.1 and later): `"uint8"`, `"uint16"`, `"uint32"`.
    pub image_dtype: Option<PixelType>,
    /// `image_size_x`: width (pixels, the second dimension of image data).
    pub image_size_x: Option<u32>,
    /// `image_size_y`: height (pixels, the first dimension).
    pub image_size_y: Option<u32>,
    /// `incident_energy` (eV).
    pub incident_energy: Option<f64>,
    /// `incident_wavelength` (Å).
    pub incident_wavelength: Option<f64>,
    /// `number_of_images` in the series.
    pub number_of_images: Option<u64>,
    /// `pixel_mask` (header_detail `all`): channel name -> 32-bit mask, in message order.
    pub pixel_mask: Vec<(&'a str, MultiDimArray<'a>)>,
    /// `pixel_mask_enabled`.
    pub pixel_mask_enabled: Option<bool>,
    /// `pixel_size_x` (m).
    pub pixel_size_x: Option<f64>,
    /// `pixel_size_y` (m).
    pub pixel_size_y: Option<f64>,
    /// `saturation_value`: largest valid count.
    pub saturation_value: Option<u64>,
    /// `sensor_material`, e.g. `"Si"`.
    pub sensor_material: Option<&'a str>,
    /// `sensor_thickness` (m).
    pub sensor_thickness: Option<f64>,
    /// `threshold_energy`: channel -> energy (eV); keys may be a superset of `channels`.
    pub threshold_energy: Vec<(&'a str, f64)>,
    /// `user_data`: the raw CBOR item, bytes as received (see [`crate::user_data_json`]).
    pub user_data: Option<&'a [u8]>,
    /// `virtual_pixel_interpolation_enabled`.
    pub virtual_pixel_interpolation_enabled: Option<bool>,
    /// Keys this crate does not know, with their raw CBOR value, in message order. The
    /// encoder appends them after the known keys.
    pub extra: Vec<(&'a str, &'a [u8])>,
    /// Known keys whose value could not be used (a table of the wrong type or size, a
    /// float sent as text): left out of the fields above, kept here with the reason, so
    /// that one bad metadata key does not refuse a whole series. The series ids are never
    /// rejected (a start without usable ids is an error). The encoder appends them last.
    pub rejected: Vec<Rejected<'a>>,
}

/// A `start` key whose value was not usable: see [`Start::rejected`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected<'a> {
    /// The key.
    pub key: &'a str,
    /// Its raw CBOR value, as received.
    pub raw: &'a [u8],
    /// Why it was not used.
    pub error: crate::DecodeError,
}

/// The `image` message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Image<'a> {
    /// `series_id`, `series_unique_id`.
    pub series: Series<'a>,
    /// `image_id`: 0-based, consecutive unless the detector dropped images.
    pub image_id: u64,
    /// `real_time`: real exposure time (s = ticks / frequency).
    pub real_time: Option<Rational>,
    /// `start_time`: image start, relative to `series_date`.
    pub start_time: Option<Rational>,
    /// `stop_time`: image stop, relative to `series_date`.
    pub stop_time: Option<Rational>,
    /// `series_date`: RFC 3339 text (tag 0 on the wire, or bare text).
    pub series_date: Option<&'a str>,
    /// `user_data`: the raw CBOR item, bytes as received (see [`crate::user_data_json`]).
    pub user_data: Option<&'a [u8]>,
    /// `data`: channel name -> image, in message order.
    pub data: Vec<(&'a str, MultiDimArray<'a>)>,
}

/// The `end` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct End<'a> {
    /// `series_id`, `series_unique_id`.
    pub series: Series<'a>,
}

/// A time as a count of ticks of a time base: `[numerator, denominator]` on the wire (a DCU
/// uses 50 MHz), not necessarily reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rational {
    /// Ticks.
    pub numerator: u64,
    /// Ticks per second.
    pub denominator: u64,
}

impl Rational {
    /// The value in seconds (infinite or NaN when the denominator is 0).
    pub fn seconds(&self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }
}

/// A 2-D array (tag 40, row-major): one image channel, a flatfield or a pixel mask.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiDimArray<'a> {
    /// `[rows = y = height, cols = x = width]`.
    pub dims: [u64; 2],
    /// The elements.
    pub array: TypedArray<'a>,
}

/// An RFC 8746 typed array (tags 64 to 87): its tag says the element type, its content is a
/// byte string, raw or compressed (tag 56500).
#[derive(Debug, Clone, PartialEq)]
pub struct TypedArray<'a> {
    /// The RFC 8746 tag (64 u8, 69 u16 LE, 70 u32 LE, 85 f32 LE, ...).
    pub tag: u64,
    /// The element bytes.
    pub payload: Payload<'a>,
}

/// A typed array's bytes, as they were in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The elements, little-endian for the LE tags.
    Raw(&'a [u8]),
    /// Tag 56500 `[algorithm, modifier, bytes]`: `bytes` is a whole HDF5 filter chunk (32008
    /// for bslz4, 32004 for lz4), its 12-byte header included.
    Compressed {
        /// The algorithm.
        compression: Compression,
        /// The modifier as sent: the bitshuffle element size for bslz4, 0 (unused) for lz4.
        elem_size: u64,
        /// The chunk, header included.
        bytes: &'a [u8],
    },
}

/// A tag 56500 algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `"bslz4"`: bitshuffle + LZ4, the HDF5 filter 32008 chunk format.
    Bslz4,
    /// `"lz4"`: the HDF5 LZ4 filter 32004 chunk format.
    Lz4,
}

impl Compression {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::Bslz4 => "bslz4",
            Compression::Lz4 => "lz4",
        }
    }

    /// The algorithm of a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bslz4" => Some(Compression::Bslz4),
            "lz4" => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// The `image_dtype` text of a pixel type (`"uint16"`); DECTRIS sends the unsigned three.
pub const fn dtype_name(pixel_type: PixelType) -> &'static str {
    match pixel_type {
        PixelType::U8 => "uint8",
        PixelType::U16 => "uint16",
        PixelType::U32 => "uint32",
        PixelType::I8 => "int8",
        PixelType::I16 => "int16",
        PixelType::I32 => "int32",
        PixelType::F32 => "float32",
        PixelType::F64 => "float64",
    }
}

/// The pixel type of an `image_dtype` text.
pub fn dtype_from_name(name: &str) -> Option<PixelType> {
    PixelType::ALL.into_iter().find(|&p| dtype_name(p) == name)
}
