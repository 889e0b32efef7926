//! Reading what a rank file says about itself (its rank, the deal, the series, its channels,
//! dtype and frame shape, and which of its images are present now), from a closed file or,
//! failing that, from one still open or left behind by a killed writer in SWMR mode.

use std::path::{Path, PathBuf};

use detflow_hal::{Deal, PixelType};
use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group, OpenMode};

use crate::{WriterError, layout, vds};

/// What one rank file says about itself: enough to pick the files of a series, check they
/// agree, and count the images each holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RankFileInfo {
    /// The file, absolute.
    pub path: PathBuf,
    /// Its rank (`detflow_rank`).
    pub rank: u64,
    /// The deal of the series (`detflow_ranks`, `detflow_frames_per_block`).
    pub deal: Deal,
    /// The whole series' image count (`detflow_number_of_images`), when the detector said.
    pub number_of_images: Option<u64>,
    /// `series_unique_id`, when the detector sent one.
    pub series_unique_id: Option<String>,
    /// The channels: the first (the one `/entry/data/data` is) first, then the others by name.
    pub channels: Vec<String>,
    /// Pixel type of the channels.
    pub dtype: PixelType,
    /// `[rows, columns]` of one image.
    pub frame_shape: [u64; 2],
    /// `/entry/data/image_present` as it is now.
    pub image_present: Vec<u8>,
    /// Positions that every dataset the master maps (channels, `image_present`, `image_id`)
    /// has now: their smallest extent. A rank file of a known image count has them all from
    /// creation; one that grows with its images has fewer until it is complete.
    pub positions: u64,
    /// True when the file opened for plain reading: its writer closed it. False when it
    /// opened only in SWMR read mode (its writer is still at it, or was killed).
    pub closed: bool,
}

impl RankFileInfo {
    /// Images present among the rank's first `expected` positions.
    pub fn present_among(&self, expected: u64) -> u64 {
        let n = usize::try_from(expected).unwrap_or(usize::MAX);
        self.image_present
            .iter()
            .take(n)
            .filter(|&&p| p != 0)
            .count() as u64
    }
}

/// Open a rank file for reading: plainly, or in SWMR read mode (a file its writer still has
/// open in SWMR mode, or left marked open when killed). The bool is true for a plain open.
pub(crate) fn open(path: &Path) -> Result<(File, bool), String> {
    match File::open(path) {
        Ok(f) => Ok((f, true)),
        Err(plain) => match File::open_as(path, OpenMode::ReadSWMR) {
            Ok(f) => Ok((f, false)),
            Err(_) => Err(format!("cannot be opened for reading: {plain}")),
        },
    }
}

/// Read what `path` says about itself. Refuses a file that is not a rank file of an image
/// layout (no rank keys, no channels, a dtype that is not a pixel type).
pub fn read_rank_file(path: &Path) -> Result<RankFileInfo, WriterError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let bad = |reason: String| WriterError::RankFile {
        path: path.clone(),
        reason,
    };
    if !path.exists() {
        return Err(bad("no such file".into()));
    }
    let (file, closed) = open(&path).map_err(bad)?;
    let specific = file
        .group(layout::DETECTOR_SPECIFIC_PATH)
        .map_err(|_| bad(format!("no {} group", layout::DETECTOR_SPECIFIC_PATH)))?;
    let key = |name: &str| -> Result<Option<u64>, WriterError> {
        if !specific.link_exists(name) {
            return Ok(None);
        }
        let v = specific.dataset(name).and_then(|d| d.read_scalar::<u64>());
        v.map(Some)
            .map_err(|e| bad(format!("detectorSpecific/{name} is not a u64 scalar: {e}")))
    };
    let missing = |name: &str| {
        bad(format!(
            "no detectorSpecific/{name}: not a rank file (written by a rank of `detflow fan`)"
        ))
    };
    let rank = key("detflow_rank")?.ok_or_else(|| missing("detflow_rank"))?;
    let ranks = key("detflow_ranks")?.ok_or_else(|| missing("detflow_ranks"))?;
    let block =
        key("detflow_frames_per_block")?.ok_or_else(|| missing("detflow_frames_per_block"))?;
    let deal = Deal::new(ranks, block).ok_or_else(|| {
        bad(format!(
            "detflow_ranks = {ranks}, detflow_frames_per_block = {block}: both must be at least 1"
        ))
    })?;
    if rank >= ranks {
        return Err(bad(format!(
            "detflow_rank = {rank} is not below detflow_ranks = {ranks}"
        )));
    }
    let series_unique_id = match specific.dataset("series_unique_id") {
        Ok(ds) => Some(read_text(&ds).map_err(|e| bad(format!("series_unique_id: {e}")))?),
        Err(_) => None,
    };
    let nxdata = file
        .group(&format!("/{}/{}", layout::ENTRY, layout::NXDATA))
        .map_err(|_| bad("no /entry/data group".into()))?;
    let (channels, data) = channels(&nxdata).map_err(bad)?;
    let shape = data.shape();
    let dtype = data
        .dtype()
        .and_then(|t| t.to_descriptor())
        .ok()
        .and_then(|t| pixel_type(&t))
        .ok_or_else(|| bad("/entry/data/data does not hold a pixel type".into()))?;
    let image_present = match nxdata.dataset(layout::IMAGE_PRESENT) {
        Ok(ds) => ds
            .read_raw::<u8>()
            .map_err(|e| bad(format!("cannot read image_present: {e}")))?,
        Err(_) => return Err(bad("no /entry/data/image_present".into())),
    };
    let mut positions = image_present.len() as u64;
    for name in channels.iter().skip(1) {
        let ds = nxdata
            .dataset(name)
            .map_err(|e| bad(format!("channel {name}: {e}")))?;
        positions = positions.min(ds.shape()[0] as u64);
    }
    positions = positions.min(shape[0] as u64);
    if let Ok(ids) = specific.dataset(layout::IMAGE_ID) {
        positions = positions.min(ids.shape().first().copied().unwrap_or(0) as u64);
    }
    Ok(RankFileInfo {
        positions,
        rank,
        deal,
        number_of_images: key("detflow_number_of_images")?,
        series_unique_id,
        channels,
        dtype,
        frame_shape: [shape[1] as u64, shape[2] as u64],
        image_present,
        closed,
        path,
    })
}

/// The channels of an image layout's NXdata group: the 3-D datasets there. `data` is the
/// first channel; a link to it without `@channel` names it; the others carry `@channel`.
fn channels(nxdata: &Group) -> Result<(Vec<String>, Dataset), String> {
    let data = nxdata
        .dataset(layout::DATA)
        .map_err(|_| "no /entry/data/data".to_string())?;
    if data.ndim() != 3 {
        return Err(format!(
            "/entry/data/data has shape {:?}, not (images, rows, columns)",
            data.shape()
        ));
    }
    let mut first = None;
    let mut others = Vec::new();
    let names = nxdata.member_names().map_err(|e| e.to_string())?;
    for name in names.into_iter().filter(|n| n != layout::DATA) {
        let Ok(ds) = nxdata.dataset(&name) else {
            continue;
        };
        if ds.ndim() != 3 {
            continue;
        }
        if ds.attr("channel").is_ok() {
            others.push(name);
        } else {
            first = Some(name);
        }
    }
    others.sort();
    let channels = std::iter::once(first.unwrap_or_else(|| layout::DATA.into()))
        .chain(others)
        .collect();
    Ok((channels, data))
}

/// The pixel type HDF5's `t` is, if it is one.
pub(crate) fn pixel_type(t: &TypeDescriptor) -> Option<PixelType> {
    PixelType::ALL
        .into_iter()
        .find(|&p| vds::descriptor(p) == *t)
}

/// A scalar string dataset, fixed or variable length.
pub(crate) fn read_text(ds: &Dataset) -> hdf5::Result<String> {
    Ok(match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::VarLenUnicode => ds.read_scalar::<VarLenUnicode>()?.to_string(),
        TypeDescriptor::VarLenAscii => ds.read_scalar::<VarLenAscii>()?.to_string(),
        TypeDescriptor::FixedUnicode(_) => ds.read_scalar::<FixedUnicode<1024>>()?.to_string(),
        TypeDescriptor::FixedAscii(_) => ds.read_scalar::<FixedAscii<1024>>()?.to_string(),
        other => {
            return Err(hdf5::Error::Internal(format!("{other}, not a string")));
        }
    })
}
