//! Detector images placed by image number: several channels (thresholds) per image, gaps
//! that read as "no data", and the per-image fields a network detector sends with each image.
//!
//! An [`ImageLayout`] in the [`StreamSpec`](crate::StreamSpec) switches a file to this mode
//! (the layout is in [`crate::layout`]); [`StreamWriter::write_image`](crate::StreamWriter::write_image)
//! then writes each image at its number, whatever order images arrive in.

use detflow_hal::PixelType;
use hdf5::types::{OwnedDynValue, VarLenArray, VarLenUnicode};
use hdf5::{Dataset, Group, H5Type};

use crate::WriterError;
use crate::layout;
use crate::nxmx::DetectorMetadata;
use crate::rows::ImageFieldSets;
use crate::sink;

/// How a file holds images placed by number (a Stream V2 series); `None` in
/// [`StreamSpec::image_layout`](crate::StreamSpec::image_layout) keeps the plain
/// frame-by-frame layout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageLayout {
    /// Channel names in order; the first is `/entry/data/data` (and `.../detector/data`).
    /// Each channel has its own `(N, H, W)` dataset, same shape, dtype, codec and chunking.
    /// Names are HDF5 link names: not empty, no `/`, not `.`, distinct, and none of
    /// [`layout::RESERVED_CHANNEL_NAMES`] (`data` is allowed as the first channel only).
    pub channels: Vec<String>,
    /// Write the per-image datasets (`image_id`, `real_time`, `start_time`, `stop_time`,
    /// `user_data`, `user_data_json`).
    pub image_fields: bool,
    /// Metadata of the series, written once at create.
    pub metadata: Option<DetectorMetadata>,
}

impl ImageLayout {
    /// Refuse channel names that cannot be, or would collide with, links of the layout.
    pub fn check(&self) -> Result<(), WriterError> {
        let bad = |name: &str, reason: String| WriterError::Setting {
            setting: "image_layout.channels",
            value: name.to_owned(),
            reason,
        };
        if self.channels.is_empty() {
            return Err(bad("", "at least one channel is needed".into()));
        }
        for (i, name) in self.channels.iter().enumerate() {
            check_link_name(name).map_err(|reason| bad(name, reason))?;
            if self.channels[..i].contains(name) {
                return Err(bad(name, "the channel is named twice".into()));
            }
            if (i > 0 || name != layout::DATA)
                && layout::RESERVED_CHANNEL_NAMES.contains(&name.as_str())
            {
                return Err(bad(
                    name,
                    format!(
                        "the name is taken by the layout; reserved: {}",
                        layout::RESERVED_CHANNEL_NAMES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why `name` cannot be an HDF5 link name of ours, if it cannot.
pub(crate) fn check_link_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        Err("not a usable name".into())
    } else if name.contains('/') || name.contains('\0') {
        Err("a name may not contain '/' or NUL".into())
    } else {
        Ok(())
    }
}

/// One image to place: its number, its encoded channels and the fields the detector sent.
#[derive(Debug, Clone, Copy)]
pub struct ImageWrite<'a> {
    /// Position in the datasets (0-based), not the arrival order.
    pub number: u64,
    /// One chunk per channel, in [`ImageLayout::channels`] order, each encoded with the
    /// spec's codec (the raw frame for [`Codec::None`](crate::Codec::None)).
    pub channels: &'a [&'a [u8]],
    /// The image id as the detector sent it.
    pub image_id: u64,
    /// Exposure time, `[numerator, denominator]` seconds.
    pub real_time: Option<(u64, u64)>,
    /// Start of the exposure relative to the series date, `[numerator, denominator]` s.
    pub start_time: Option<(u64, u64)>,
    /// End of the exposure relative to the series date, `[numerator, denominator]` s.
    pub stop_time: Option<(u64, u64)>,
    /// The image's `user_data`, raw CBOR.
    pub user_data_cbor: Option<&'a [u8]>,
    /// The same as JSON, when it converts.
    pub user_data_json: Option<&'a str>,
}

/// Why an image was refused; nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRefusal {
    /// An image of that number is in the file already.
    Repeated,
    /// The number is not below the file's `num_capture`.
    PastEnd {
        /// The file's NumCapture.
        num_capture: u64,
    },
    /// The image does not have one chunk per channel of the layout.
    Channels {
        /// Channels of the layout.
        expected: usize,
        /// Chunks given.
        got: usize,
    },
    /// With `num_capture = 0`, a number this far past the highest one written is taken as
    /// corrupt rather than left as a gap of [`MAX_GAP`] images or more.
    TooFarAhead {
        /// One past the highest number written.
        extent: u64,
    },
}

/// The largest gap an image number may open past the highest one written when the file has
/// no `num_capture` to bound it: 2^24 images (2 MiB of presence bits).
pub const MAX_GAP: u64 = 1 << 24;

impl std::fmt::Display for ImageRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRefusal::Repeated => write!(f, "an image with this number was written already"),
            ImageRefusal::PastEnd { num_capture } => write!(
                f,
                "past the end of the series: num_capture = {num_capture} (images 0 to {})",
                num_capture.saturating_sub(1)
            ),
            ImageRefusal::Channels { expected, got } => write!(
                f,
                "{got} channel chunks given, the file's image layout has {expected} channels"
            ),
            ImageRefusal::TooFarAhead { extent } => write!(
                f,
                "more than {MAX_GAP} images past the highest written ({}), with num_capture = 0",
                extent.saturating_sub(1)
            ),
        }
    }
}

/// Which positions hold an image: one bit each, with the count and the extent.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    bits: Vec<u64>,
    /// Images written.
    pub written: u64,
    /// One past the highest number written: the datasets' extent.
    pub extent: u64,
}

impl Placement {
    pub fn contains(&self, number: u64) -> bool {
        let (word, bit) = ((number / 64) as usize, number % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn insert(&mut self, number: u64) {
        let (word, bit) = ((number / 64) as usize, number % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
        self.written += 1;
        self.extent = self.extent.max(number + 1);
    }

    /// Positions below the extent that hold no image.
    pub fn missing(&self) -> u64 {
        self.extent - self.written
    }

    /// Why `number` with `channels` chunks cannot be written, if it cannot.
    pub fn refusal(
        &self,
        number: u64,
        channels: usize,
        expected: usize,
        num_capture: u64,
    ) -> Option<ImageRefusal> {
        if channels != expected {
            Some(ImageRefusal::Channels {
                expected,
                got: channels,
            })
        } else if num_capture > 0 && number >= num_capture {
            Some(ImageRefusal::PastEnd { num_capture })
        } else if num_capture == 0 && number >= self.extent.saturating_add(MAX_GAP) {
            Some(ImageRefusal::TooFarAhead {
                extent: self.extent,
            })
        } else if self.contains(number) {
            Some(ImageRefusal::Repeated)
        } else {
            None
        }
    }
}

/// The "no data" value of gaps: the type's maximum (EIGER's convention for integers), NaN
/// for floating point.
pub(crate) fn no_data(p: PixelType) -> OwnedDynValue {
    match p {
        PixelType::U8 => u8::MAX.into(),
        PixelType::I8 => i8::MAX.into(),
        PixelType::U16 => u16::MAX.into(),
        PixelType::I16 => i16::MAX.into(),
        PixelType::U32 => u32::MAX.into(),
        PixelType::I32 => i32::MAX.into(),
        PixelType::F32 => f32::NAN.into(),
        PixelType::F64 => f64::NAN.into(),
    }
}

/// Link the first channel's name to the image dataset, create the other channels' datasets
/// like `make` makes the first, and link every channel from the NXdata group.
pub(crate) fn create_channels(
    detector: &Group,
    nxdata: &Group,
    layout_spec: &ImageLayout,
    make: impl Fn(&str) -> hdf5::Result<Dataset>,
) -> hdf5::Result<Vec<Dataset>> {
    let mut extra = Vec::new();
    for (i, name) in layout_spec.channels.iter().enumerate() {
        if name == layout::DATA {
            continue;
        }
        if i == 0 {
            detector.link_hard(layout::DATA, name)?;
        } else {
            let ds = make(name)?;
            sink::write_string_attr(&ds, "channel", name)?;
            extra.push(ds);
        }
        nxdata.link_hard(&format!("{}/{name}", layout::DETECTOR_PATH), name)?;
    }
    Ok(extra)
}

/// `/entry/data/image_present`: 1 where an image arrived, 0 (the fill value) where not;
/// `sized` positions from the start (a rank file's, else 0).
pub(crate) fn create_presence(nxdata: &Group, chunk: usize, sized: usize) -> hdf5::Result<Dataset> {
    let ds = nxdata
        .new_dataset::<u8>()
        .chunk(chunk)
        .fill_value(0u8)
        .shape(hdf5::SimpleExtents::resizable([sized]))
        .create(layout::IMAGE_PRESENT)?;
    sink::write_string_attr(
        &ds,
        "description",
        "1 where the image arrived, 0 where it is missing (its pixels read as the fill value)",
    )?;
    Ok(ds)
}

/// The per-image datasets under `detectorSpecific`, each placed by image number; `sized`
/// positions from the start (a rank file's, else 0).
pub(crate) fn create_fields(
    group: &Group,
    chunk: usize,
    sized: usize,
) -> hdf5::Result<ImageFieldSets> {
    // Variable-length datasets keep HDF5's default fill, the empty sequence.
    fn one<T: H5Type>(
        group: &Group,
        name: &str,
        (chunk, sized): (usize, usize),
        fill: Option<T>,
    ) -> hdf5::Result<Dataset> {
        let b = group.new_dataset::<T>().chunk(chunk);
        let b = match fill {
            Some(fill) => b.fill_value(fill),
            None => b,
        };
        b.shape(hdf5::SimpleExtents::resizable([sized]))
            .create(name)
    }
    let rational = |name: &str, what: &str| -> hdf5::Result<Dataset> {
        let ds = group
            .new_dataset::<u64>()
            .chunk([chunk, 2])
            .shape(hdf5::SimpleExtents::resizable([sized, 2]))
            .create(name)?;
        sink::write_string_attr(&ds, "units", "s")?;
        sink::write_string_attr(
            &ds,
            "description",
            &format!(
                "{what}: seconds = [i, 0] / [i, 1], numerator and denominator as the detector \
                 sent them; [0, 0] where the image did not carry it or is missing"
            ),
        )?;
        Ok(ds)
    };
    let image_id = one(group, layout::IMAGE_ID, (chunk, sized), Some(u64::MAX))?;
    sink::write_string_attr(
        &image_id,
        "description",
        "image_id as the detector sent it; 18446744073709551615 where the image is missing",
    )?;
    let sets = ImageFieldSets {
        image_id,
        real_time: rational(layout::REAL_TIME, "exposure time")?,
        start_time: rational(layout::START_TIME, "exposure start after the series date")?,
        stop_time: rational(layout::STOP_TIME, "exposure end after the series date")?,
        user_data: one::<VarLenArray<u8>>(group, layout::USER_DATA, (chunk, sized), None)?,
        user_data_json: one::<VarLenUnicode>(group, layout::USER_DATA_JSON, (chunk, sized), None)?,
    };
    sink::write_string_attr(
        &sets.user_data,
        "description",
        "the image's user_data, raw CBOR bytes; empty where it had none",
    )?;
    sink::write_string_attr(
        &sets.user_data_json,
        "description",
        "the image's user_data as JSON; empty where it had none or it does not convert",
    )?;
    Ok(sets)
}
