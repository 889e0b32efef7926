//! The metadata of a detector series (a Stream V2 `start` message), written once, at create,
//! as NeXus fields with NXmx names where NXmx defines them.
//!
//! Where each value goes is in [`crate::layout`]; values that are `None` or empty are left out.

use detflow_hal::PixelType;

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

/// Write `meta` into the layout's groups (created by the caller).
pub(crate) fn write(
    _entry: &hdf5::Group,
    _detector: &hdf5::Group,
    _specific: &hdf5::Group,
    _spec: &crate::StreamSpec,
    _layout: &crate::ImageLayout,
    _meta: &DetectorMetadata,
) -> hdf5::Result<()> {
    Ok(())
}
