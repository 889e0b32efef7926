//! The metadata of a detector series (a Stream V2 `start` message), written once, at create,
//! as NeXus fields with NXmx names where NXmx defines them.
//!
//! Where each value goes is in [`crate::layout`]; values that are `None` or empty are left out.

use detflow_hal::{Deal, PixelType};
use hdf5::{Group, H5Type};

use crate::images::{ImageLayout, check_link_name};
use crate::{StreamSpec, WriterError, layout, sink};

/// Metadata of the series. Everything is optional: what is `Some` or non-empty is written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DetectorMetadata {
    /// `series_id`.
    pub series_id: Option<u64>,
    /// `series_unique_id`, opaque.
    pub series_unique_id: Option<String>,
    /// When the detector was armed, RFC 3339 as sent.
    pub arm_date: Option<String>,
    /// Detector model, e.g. `Dectris EIGER2 Si 16M`.
    pub description: Option<String>,
    /// Detector serial number.
    pub serial_number: Option<String>,
    /// Sensor material, e.g. `Si`.
    pub sensor_material: Option<String>,
    /// Sensor thickness, m.
    pub sensor_thickness_m: Option<f64>,
    /// Direct beam position, x, pixels.
    pub beam_center_x_px: Option<f64>,
    /// Direct beam position, y, pixels.
    pub beam_center_y_px: Option<f64>,
    /// Exposure time per image, s.
    pub count_time_s: Option<f64>,
    /// Interval between image starts, s.
    pub frame_time_s: Option<f64>,
    /// Pixel size along x, m.
    pub pixel_size_x_m: Option<f64>,
    /// Pixel size along y, m.
    pub pixel_size_y_m: Option<f64>,
    /// Incident wavelength, Å.
    pub incident_wavelength_a: Option<f64>,
    /// Incident photon energy, eV.
    pub incident_energy_ev: Option<f64>,
    /// Largest valid pixel value (the no-data value excluded).
    pub saturation_value: Option<u64>,
    /// Threshold energy per channel name, eV; may name channels the layout does not have.
    pub threshold_energy_ev: Vec<(String, f64)>,
    /// Detector translation vector, m (x, y, z).
    pub detector_translation_m: Option<[f64; 3]>,
    /// Goniometer axes: name, start angle (deg), increment per image (deg).
    pub goniometer: Vec<(String, f64, f64)>,
    /// Count-rate correction applied by the detector.
    pub countrate_correction_enabled: Option<bool>,
    /// Flatfield applied by the detector.
    pub flatfield_enabled: Option<bool>,
    /// Pixel mask applied by the detector.
    pub pixel_mask_enabled: Option<bool>,
    /// Virtual pixel interpolation applied by the detector.
    pub virtual_pixel_interpolation_enabled: Option<bool>,
    /// Pixel mask per channel name (`header_detail = all`).
    pub pixel_mask: Vec<(String, Table)>,
    /// Flatfield per channel name (`header_detail = all`).
    pub flatfield: Vec<(String, Table)>,
    /// Count-rate correction lookup table (`header_detail = all`).
    pub countrate_correction_lookup_table: Option<Table>,
    /// The series' `user_data`, raw CBOR.
    pub user_data_cbor: Option<Vec<u8>>,
    /// The same as JSON, when it converts.
    pub user_data_json: Option<String>,
    /// This file is one rank's share of a series dealt over several writers (`detflow fan`).
    pub rank: Option<RankShare>,
}

/// Which images of a series one rank's file holds: those the [`Deal`] gives rank `rank`,
/// image `deal.image_id(rank, i)` at position `i`. Written under `detectorSpecific` as
/// `detflow_rank`, `detflow_ranks`, `detflow_frames_per_block` and, when known,
/// `detflow_number_of_images` (the whole series'), so that a master file can be built from
/// the rank files alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankShare {
    /// This rank, `0..deal.ranks()`.
    pub rank: u64,
    /// How the series' images are dealt.
    pub deal: Deal,
    /// Images in the whole series, when the detector says.
    pub number_of_images: Option<u64>,
}

impl RankShare {
    /// The series image at position `index` of this rank's file.
    pub fn image_id(&self, index: u64) -> Option<u64> {
        self.deal.image_id(self.rank, index)
    }
}

/// A decoded array: dimensions (slowest first), element type, little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Dimensions, slowest first (`[height, width]` for a mask).
    pub dims: Vec<usize>,
    /// Element type.
    pub pixel_type: PixelType,
    /// Elements, little-endian, `dims` product × element size bytes.
    pub bytes: Vec<u8>,
}

impl DetectorMetadata {
    /// Refuse names that cannot be links of the layout and tables whose bytes do not match
    /// their dimensions, before the file is created.
    pub fn check(&self) -> Result<(), WriterError> {
        let bad = |setting: &'static str, value: String, reason: String| WriterError::Setting {
            setting,
            value,
            reason,
        };
        let key = |setting: &'static str, name: &str| {
            check_link_name(name)
                .and_then(|()| {
                    // Under detectorSpecific, `data` (a first channel's name) collides with nothing.
                    if name != layout::DATA && layout::RESERVED_CHANNEL_NAMES.contains(&name) {
                        Err(format!(
                            "the name is taken by the layout; reserved: {}",
                            layout::RESERVED_CHANNEL_NAMES.join(", ")
                        ))
                    } else {
                        Ok(())
                    }
                })
                .map_err(|reason| bad(setting, name.to_owned(), reason))
        };
        for (name, _) in &self.threshold_energy_ev {
            key("metadata.threshold_energy", name)?;
        }
        for (name, table) in &self.pixel_mask {
            key("metadata.pixel_mask", name)?;
            table.check("metadata.pixel_mask")?;
        }
        for (name, table) in &self.flatfield {
            key("metadata.flatfield", name)?;
            table.check("metadata.flatfield")?;
        }
        if let Some(t) = &self.countrate_correction_lookup_table {
            t.check("metadata.countrate_correction_lookup_table")?;
        }
        for (axis, _, _) in &self.goniometer {
            check_link_name(axis)
                .map_err(|reason| bad("metadata.goniometer", axis.clone(), reason))?;
        }
        Ok(())
    }
}

impl Table {
    fn check(&self, setting: &'static str) -> Result<(), WriterError> {
        let elements = self.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let expected = elements.and_then(|n| n.checked_mul(self.pixel_type.size()));
        if self.dims.is_empty() || expected != Some(self.bytes.len()) {
            return Err(WriterError::Setting {
                setting,
                value: format!("{:?} {}", self.dims, self.pixel_type),
                reason: format!(
                    "{} bytes do not fill those dimensions of {}-byte elements",
                    self.bytes.len(),
                    self.pixel_type.size()
                ),
            });
        }
        Ok(())
    }
}

/// Write `meta` into the layout's groups: NXmx fields of the detector, the beam, the sample's
/// goniometer and the detector translation, and in `detectorSpecific` what NXmx has no name
/// for. Tables are written as they are, contiguous.
pub(crate) fn write(
    entry: &Group,
    detector: &Group,
    specific: &Group,
    spec: &StreamSpec,
    image_layout: &ImageLayout,
    meta: &DetectorMetadata,
) -> hdf5::Result<()> {
    sink::write_string_dataset(entry, "definition", "NXmx")?;
    write_detector(detector, image_layout, meta)?;
    write_specific(specific, meta)?;
    if meta.incident_wavelength_a.is_some() || meta.incident_energy_ev.is_some() {
        let beam = entry.group(layout::INSTRUMENT)?.create_group("beam")?;
        sink::write_string_attr(&beam, "NX_class", "NXbeam")?;
        number(
            &beam,
            "incident_wavelength",
            meta.incident_wavelength_a,
            "angstrom",
        )?;
        number(&beam, "incident_energy", meta.incident_energy_ev, "eV")?;
    }
    if let Some(t) = meta.detector_translation_m {
        write_translation(detector, t)?;
    }
    if !meta.goniometer.is_empty() {
        write_goniometer(entry, spec.num_capture, &meta.goniometer, meta.rank)?;
    }
    Ok(())
}

/// NXdetector fields: description, sensor, beam centre, times, pixel size, thresholds,
/// corrections and the first channel's tables.
fn write_detector(
    detector: &Group,
    image_layout: &ImageLayout,
    meta: &DetectorMetadata,
) -> hdf5::Result<()> {
    for (name, value) in [
        ("description", &meta.description),
        ("serial_number", &meta.serial_number),
        ("sensor_material", &meta.sensor_material),
    ] {
        if let Some(v) = value {
            sink::write_string_dataset(detector, name, v)?;
        }
    }
    for (name, value, units) in [
        ("sensor_thickness", meta.sensor_thickness_m, "m"),
        ("beam_center_x", meta.beam_center_x_px, "pixel"),
        ("beam_center_y", meta.beam_center_y_px, "pixel"),
        ("count_time", meta.count_time_s, "s"),
        ("frame_time", meta.frame_time_s, "s"),
        ("x_pixel_size", meta.pixel_size_x_m, "m"),
        ("y_pixel_size", meta.pixel_size_y_m, "m"),
    ] {
        number(detector, name, value, units)?;
    }
    if let Some(v) = meta.saturation_value {
        detector
            .new_dataset::<u64>()
            .create("saturation_value")?
            .write_scalar(&v)?;
    }
    for (name, value) in [
        (
            "countrate_correction_applied",
            meta.countrate_correction_enabled,
        ),
        ("flatfield_applied", meta.flatfield_enabled),
        ("pixel_mask_applied", meta.pixel_mask_enabled),
        (
            "virtual_pixel_interpolation_applied",
            meta.virtual_pixel_interpolation_enabled,
        ),
    ] {
        if let Some(v) = value {
            detector
                .new_dataset::<bool>()
                .create(name)?
                .write_scalar(&v)?;
        }
    }
    if !meta.threshold_energy_ev.is_empty() {
        // One per channel, in channel order; NaN for a channel the detector gave none.
        let energies: Vec<f64> = image_layout
            .channels
            .iter()
            .map(|c| {
                lookup(&meta.threshold_energy_ev, c)
                    .copied()
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let ds = detector
            .new_dataset::<f64>()
            .shape(energies.len())
            .create("threshold_energy")?;
        ds.write(&energies)?;
        sink::write_string_attr(&ds, "units", "eV")?;
    }
    let first = &image_layout.channels[0];
    for (name, tables) in [
        ("pixel_mask", &meta.pixel_mask),
        ("flatfield", &meta.flatfield),
    ] {
        // The first channel's, or the first given when it has none.
        if let Some(t) = lookup(tables, first).or(tables.first().map(|(_, t)| t)) {
            table(detector, name, t)?;
        }
    }
    if let Some(t) = &meta.countrate_correction_lookup_table {
        table(detector, "countrate_correction_lookup_table", t)?;
    }
    Ok(())
}

/// `detectorSpecific`: series ids, the series' user data, and per channel name (every name
/// the metadata mentions) its threshold energy, pixel mask and flatfield.
fn write_specific(specific: &Group, meta: &DetectorMetadata) -> hdf5::Result<()> {
    if let Some(id) = meta.series_id {
        specific
            .new_dataset::<u64>()
            .create("series_id")?
            .write_scalar(&id)?;
    }
    for (name, value) in [
        ("series_unique_id", &meta.series_unique_id),
        ("arm_date", &meta.arm_date),
        ("series_user_data_json", &meta.user_data_json),
    ] {
        if let Some(v) = value {
            sink::write_string_dataset(specific, name, v)?;
        }
    }
    if let Some(r) = meta.rank {
        let total = r.number_of_images.map(|n| ("detflow_number_of_images", n));
        for (name, value) in [
            ("detflow_rank", r.rank),
            ("detflow_ranks", r.deal.ranks()),
            ("detflow_frames_per_block", r.deal.frames_per_block()),
        ]
        .into_iter()
        .chain(total)
        {
            specific
                .new_dataset::<u64>()
                .create(name)?
                .write_scalar(&value)?;
        }
    }
    if let Some(cbor) = &meta.user_data_cbor {
        let ds = specific
            .new_dataset::<u8>()
            .shape(cbor.len())
            .create("series_user_data")?;
        ds.write(cbor)?;
        sink::write_string_attr(&ds, "description", "the series' user_data, raw CBOR bytes")?;
    }
    let mut names: Vec<&str> = Vec::new();
    let keys = meta
        .threshold_energy_ev
        .iter()
        .map(|(k, _)| k)
        .chain(meta.pixel_mask.iter().map(|(k, _)| k))
        .chain(meta.flatfield.iter().map(|(k, _)| k));
    for k in keys {
        if !names.contains(&k.as_str()) {
            names.push(k);
        }
    }
    for name in names {
        let g = specific.create_group(name)?;
        sink::write_string_attr(&g, "NX_class", "NXcollection")?;
        number(
            &g,
            "threshold_energy",
            lookup(&meta.threshold_energy_ev, name).copied(),
            "eV",
        )?;
        if let Some(t) = lookup(&meta.pixel_mask, name) {
            table(&g, "pixel_mask", t)?;
        }
        if let Some(t) = lookup(&meta.flatfield, name) {
            table(&g, "flatfield", t)?;
        }
    }
    Ok(())
}

/// `detector/transformations/translation`: the translation's length along its unit vector,
/// and `detector/depends_on` pointing at it.
fn write_translation(detector: &Group, t: [f64; 3]) -> hdf5::Result<()> {
    let group = detector.create_group("transformations")?;
    sink::write_string_attr(&group, "NX_class", "NXtransformations")?;
    let length = t.iter().map(|v| v * v).sum::<f64>().sqrt();
    let vector = if length > 0.0 {
        t.map(|v| v / length)
    } else {
        [0.0, 0.0, 1.0]
    };
    let ds = group.new_dataset::<f64>().create("translation")?;
    ds.write_scalar(&length)?;
    sink::write_string_attr(&ds, "units", "m")?;
    sink::write_string_attr(&ds, "transformation_type", "translation")?;
    sink::write_string_attr(&ds, "depends_on", ".")?;
    ds.new_attr::<f64>()
        .shape(3)
        .create("vector")?
        .write(&vector)?;
    ds.new_attr::<f64>()
        .shape(3)
        .create("translation_m")?
        .write(&t)?;
    sink::write_string_dataset(
        detector,
        "depends_on",
        "/entry/instrument/detector/transformations/translation",
    )?;
    Ok(())
}

/// `/entry/sample/transformations/<axis>`: the angle of each image, start + id × increment
/// for the image id at each position 0..num_capture (the position itself, or the series
/// image a rank's position holds; the start alone when num_capture is 0), and
/// `<axis>_increment_set`.
fn write_goniometer(
    entry: &Group,
    num_capture: u64,
    axes: &[(String, f64, f64)],
    rank: Option<RankShare>,
) -> hdf5::Result<()> {
    let sample = entry.create_group("sample")?;
    sink::write_string_attr(&sample, "NX_class", "NXsample")?;
    let group = sample.create_group("transformations")?;
    sink::write_string_attr(&group, "NX_class", "NXtransformations")?;
    for (axis, start, increment) in axes {
        let angles: Vec<f64> = (0..num_capture.max(1))
            .map(|i| rank.map_or(Some(i), |r| r.image_id(i)).unwrap_or(i))
            .map(|id| start + id as f64 * increment)
            .collect();
        let ds = group
            .new_dataset::<f64>()
            .shape(angles.len())
            .create(axis.as_str())?;
        ds.write(&angles)?;
        sink::write_string_attr(&ds, "units", "deg")?;
        sink::write_string_attr(&ds, "transformation_type", "rotation")?;
        number(
            &group,
            &format!("{axis}_increment_set"),
            Some(*increment),
            "deg",
        )?;
    }
    Ok(())
}

fn lookup<'a, T>(pairs: &'a [(String, T)], key: &str) -> Option<&'a T> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A scalar f64 dataset with its `units`, when there is a value.
fn number(group: &Group, name: &str, value: Option<f64>, units: &str) -> hdf5::Result<()> {
    if let Some(v) = value {
        scalar(group, name, v, units)?;
    }
    Ok(())
}

fn scalar<T: H5Type>(group: &Group, name: &str, value: T, units: &str) -> hdf5::Result<()> {
    let ds = group.new_dataset::<T>().create(name)?;
    ds.write_scalar(&value)?;
    sink::write_string_attr(&ds, "units", units)
}

/// A table as a contiguous dataset of its own element type (detflow runs on little-endian
/// hosts, so the bytes are the native elements).
fn table(group: &Group, name: &str, t: &Table) -> hdf5::Result<()> {
    let dtype = crate::stream::datatype(t.pixel_type)?;
    let ds = group
        .new_dataset_builder()
        .empty_as(&dtype)
        .shape(t.dims.as_slice())
        .create(name)?;
    sink::write_raw(&ds, &dtype, &t.bytes)
}
