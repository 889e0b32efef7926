//! Names of NDFileHDF5's default NeXus layout (areaDetector `NDFileHDF5LayoutXML.cpp`).
//!
//! ```text
//! /entry                         NXentry
//!   instrument                   NXinstrument
//!     detector                   NXdetector
//!       data                     frames (N, H, W), one chunk per frame, @signal = 1
//!       NDAttributes             NXcollection: ColorMode
//!     NDAttributes               NXcollection, @hostname: NDArrayUniqueId, NDArrayTimeStamp,
//!                                NDArrayEpicsTSSec, NDArrayEpicsTSnSec
//!     performance                timestamp (N, 5)
//!   data                         NXdata
//!     data                       hard link to /entry/instrument/detector/data
//! ```

/// The NXentry group.
pub const ENTRY: &str = "entry";
/// The NXinstrument group, under [`ENTRY`].
pub const INSTRUMENT: &str = "instrument";
/// The NXdetector group, under [`INSTRUMENT`].
pub const DETECTOR: &str = "detector";
/// The image dataset's name (under [`DETECTOR`]) and its hard link's name (under [`NXDATA`]).
pub const DATA: &str = "data";
/// NXcollection groups of per-frame attribute datasets.
pub const ND_ATTRIBUTES: &str = "NDAttributes";
/// Group of the per-frame write timings.
pub const PERFORMANCE: &str = "performance";
/// The `[N, 5]` timing dataset under [`PERFORMANCE`].
pub const TIMESTAMP: &str = "timestamp";
/// The NXdata group, under [`ENTRY`].
pub const NXDATA: &str = "data";
/// Absolute path of the image dataset.
pub const IMAGE_PATH: &str = "/entry/instrument/detector/data";
/// Absolute path of the hard link to it.
pub const LINK_PATH: &str = "/entry/data/data";
/// Absolute path of the group holding the four NDArray* datasets.
pub const ND_ATTRIBUTES_PATH: &str = "/entry/instrument/NDAttributes";

// Names of the image layout (`StreamSpec::image_layout`), see the module doc.

/// Absolute path of the NXdetector group.
pub const DETECTOR_PATH: &str = "/entry/instrument/detector";
/// The presence mask under [`NXDATA`]: u8 per image position, 1 = arrived, 0 = missing.
pub const IMAGE_PRESENT: &str = "image_present";
/// Absolute path of the presence mask.
pub const IMAGE_PRESENT_PATH: &str = "/entry/data/image_present";
/// NXcollection under [`DETECTOR`] of what NXmx has no name for: per-image fields, series
/// ids, per-channel tables.
pub const DETECTOR_SPECIFIC: &str = "detectorSpecific";
/// Absolute path of [`DETECTOR_SPECIFIC`].
pub const DETECTOR_SPECIFIC_PATH: &str = "/entry/instrument/detector/detectorSpecific";
/// Per-image `image_id` (u64) under [`DETECTOR_SPECIFIC`].
pub const IMAGE_ID: &str = "image_id";
/// Per-image exposure time, `(N, 2)` u64 rational, under [`DETECTOR_SPECIFIC`].
pub const REAL_TIME: &str = "real_time";
/// Per-image start time, `(N, 2)` u64 rational, under [`DETECTOR_SPECIFIC`].
pub const START_TIME: &str = "start_time";
/// Per-image stop time, `(N, 2)` u64 rational, under [`DETECTOR_SPECIFIC`].
pub const STOP_TIME: &str = "stop_time";
/// Per-image raw CBOR `user_data` (vlen u8) under [`DETECTOR_SPECIFIC`]; the series' own
/// is the scalar `series_user_data`.
pub const USER_DATA: &str = "user_data";
/// Per-image `user_data` as JSON (vlen UTF-8 string) under [`DETECTOR_SPECIFIC`].
pub const USER_DATA_JSON: &str = "user_data_json";

/// Names a channel may not have: they are fields or groups of the NXdetector group, of
/// `detectorSpecific` (where each channel has a group) or of the NXdata group. `data` may
/// be the first channel's name.
pub const RESERVED_CHANNEL_NAMES: &[&str] = &[
    "data",
    "NDAttributes",
    "detectorSpecific",
    "transformations",
    "depends_on",
    "image_present",
    "description",
    "serial_number",
    "sensor_material",
    "sensor_thickness",
    "beam_center_x",
    "beam_center_y",
    "count_time",
    "frame_time",
    "x_pixel_size",
    "y_pixel_size",
    "threshold_energy",
    "saturation_value",
    "countrate_correction_applied",
    "flatfield_applied",
    "pixel_mask_applied",
    "virtual_pixel_interpolation_applied",
    "pixel_mask",
    "flatfield",
    "countrate_correction_lookup_table",
    "image_id",
    "real_time",
    "start_time",
    "stop_time",
    "user_data",
    "user_data_json",
    "series_id",
    "series_unique_id",
    "arm_date",
    "series_user_data",
    "series_user_data_json",
];
