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
