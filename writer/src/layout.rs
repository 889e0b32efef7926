//! Names of NDFileHDF5's default NeXus layout (areaDetector `NDFileHDF5LayoutXML.cpp`), and
//! of the image layout that a network detector's series adds to it.
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
//!
//! ## Image layout (`StreamSpec::image_layout`, a Stream V2 series)
//!
//! Images are placed by their number (`image_id`), not by arrival order. Everything is created
//! when the file is, so SWMR readers see a fixed tree. With channels `threshold_1`,
//! `threshold_2`, `difference` and the series metadata (each field only when the detector
//! sent it):
//!
//! ```text
//! /entry                                 NXentry
//!   definition                           "NXmx"
//!   instrument                           NXinstrument
//!     beam                               NXbeam
//!       incident_wavelength              f64 @units angstrom
//!       incident_energy                  f64 @units eV
//!     detector                           NXdetector
//!       data                             first channel (N, H, W), @signal = 1
//!       threshold_1                      hard link to data (the first channel's name)
//!       threshold_2, difference          (N, H, W) each, same dtype, filter and chunking,
//!                                        @channel = the name
//!       description, serial_number,      strings
//!       sensor_material
//!       sensor_thickness                 f64 @units m
//!       beam_center_x, beam_center_y     f64 @units pixel
//!       count_time, frame_time           f64 @units s
//!       x_pixel_size, y_pixel_size       f64 @units m
//!       threshold_energy                 f64 (channels,) @units eV, in channel order, NaN for a
//!                                        channel without one
//!       saturation_value                 u64
//!       countrate_correction_applied,    bool
//!       flatfield_applied, pixel_mask_applied, virtual_pixel_interpolation_applied
//!       pixel_mask, flatfield            the first channel's tables (header_detail = all)
//!       countrate_correction_lookup_table
//!       depends_on                       "/entry/instrument/detector/transformations/translation"
//!       transformations                  NXtransformations
//!         translation                    f64 = |t| @units m, @vector = t/|t|,
//!                                        @transformation_type translation, @depends_on ".",
//!                                        @translation_m = t as sent
//!       detectorSpecific                 NXcollection
//!         image_id                       u64 (N), as sent; 2^64-1 where missing
//!         real_time, start_time,         u64 (N, 2) [numerator, denominator] as sent,
//!         stop_time                      @units s (seconds = num/den); [0, 0] where absent
//!         user_data                      vlen u8 (N): the image's raw CBOR; empty where absent
//!         user_data_json                 vlen UTF-8 (N): the same as JSON; empty where absent
//!                                        or not convertible
//!         series_id                      u64
//!         series_unique_id, arm_date     strings
//!         detflow_rank, detflow_ranks,   u64 each, in a rank's file only (`detflow fan`): the
//!         detflow_frames_per_block,      rank, the ranks, the block and the whole series'
//!         detflow_number_of_images       image count; position i holds image
//!                                        Deal::image_id(rank, i), and image_id says it
//!         series_user_data               u8 (bytes,): the start message's raw CBOR user_data
//!         series_user_data_json          string
//!         <name>                         NXcollection per name the metadata mentions (may be
//!                                        more than the channels):
//!           threshold_energy             f64 @units eV
//!           pixel_mask, flatfield        that channel's tables
//!       NDAttributes                     as above
//!     NDAttributes, performance          as above, rows placed by image number
//!   data                                 NXdata, @signal = data
//!     data                               hard link to /entry/instrument/detector/data
//!     threshold_1, threshold_2,          hard links to the detector's channel datasets
//!     difference
//!     image_present                      u8 (N): 1 = the image arrived, 0 = missing
//!   sample                               NXsample
//!     transformations                    NXtransformations
//!       <axis>                           f64 (num_capture,) start + i * increment, @units deg,
//!                                        @transformation_type rotation (no @vector: the
//!                                        stream does not say the axis direction)
//!       <axis>_increment_set             f64 @units deg
//! ```
//!
//! - `/entry/data/data` and `/entry/instrument/detector/data` stay the first channel, so
//!   readers written for single-channel files keep working.
//! - A position never written reads as the "no data" fill value of every channel: the dtype's
//!   maximum for integers (EIGER's convention, 0xFFFF for u16), NaN for floats; and as 0 in
//!   `image_present`. The datasets' extent is one past the highest image number written.
//! - The per-image rows (detectorSpecific, NDAttributes, performance, `image_present`) are
//!   written in batches at flushes and at close, `image_present` last: a reader that sees an
//!   image marked present can trust its fields; a killed writer leaves them consistent.
//! - With `num_capture = 0` a goniometer axis holds its start angle only.
//! - A rank's file (`detflow_rank` present) with a `num_capture` has its whole extent,
//!   `num_capture` positions, from creation, as odin-data sizes its files for a known frame
//!   count (odin-data #222): a master maps each rank file with fixed dimensions, and HDF5
//!   cannot read a mapping past its source's current extent.
//!
//! ## Master over rank files (`detflow vds --rank-files`, `detflow fan --master`)
//!
//! [`crate::ranks_master::build_rank_master`] writes `NAME_master.h5` beside the rank files
//! `NAME_r{k}_0001.h5` of a series of `n` images dealt to `N` ranks in blocks of `B`. Every
//! image is where a single writer would put it, at its `image_id`:
//!
//! ```text
//! /entry                                 NXentry, @default = data
//!   definition                           copied from a rank file
//!   instrument                           NXinstrument: the rank file's series metadata
//!     beam, ...                          copied (H5Ocopy) from the lowest rank file read
//!     detector                           NXdetector, as in the image layout without the
//!                                        per-image members and NDAttributes
//!       data, <channel>                  hard links to /entry/data/data, /entry/data/<channel>
//!       detectorSpecific                 NXcollection, copied without image_id, real_time,
//!                                        start_time, stop_time, user_data, user_data_json
//!                                        and the rank file's detflow_* keys
//!         image_id                       VDS u64 (n): each rank file's image_id; 2^64-1
//!                                        where missing
//!         detflow_ranks,                 u64 each: N, B and n of the whole series
//!         detflow_frames_per_block,
//!         detflow_number_of_images
//!         detflow_rank_files             vlen UTF-8 (N): rank k's file as the VDS names it;
//!                                        empty for a rank left unmapped
//!   data                                 NXdata, @signal = data
//!     data                               VDS (n, H, W) of the first channel, @fill_value,
//!                                        @source_paths
//!     <channel>                          VDS (n, H, W) of each other channel, @channel
//!     image_present                      VDS u8 (n): each rank file's image_present; 0 where
//!                                        missing
//!   sample/transformations/<axis>        f64 (n): start + i * increment for every image
//!                                        (rebuilt: a rank file holds its own images' angles)
//! ```
//!
//! - Each rank `r` is mapped odin-data's way, per dataset: one strided hyperslab for its
//!   full blocks (master start `r * B`, stride `N * B`, block `B`, source `0..count * B`)
//!   and one range for a partial last block. Source dimensions are fixed,
//!   `(Deal::images_of_rank(r, n), H, W)`, whatever the file holds when the master is made,
//!   so the master reads while the ranks write (SWMR) and follows them.
//! - Missing images read as the fill value, the rank files' own "no data" (the dtype's
//!   maximum, NaN for floats), and as 0 in `image_present`: lost in the fan, in a rank
//!   stopped or killed early, or in a rank without a file.
//! - A rank file read with fewer positions than its share (a writer that did not know the
//!   image count grows its datasets with the images) is mapped up to its end only, noted:
//!   build the master again once it is complete.
//! - A rank with no file is left unmapped, or mapped by its expected name when the caller
//!   gives one (`fan --master`): then it reads as the fill value until the file appears.
//! - Source file names are relative to the master's directory when the rank files are in
//!   it or below, so the directory can be moved.

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
