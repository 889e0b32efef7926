//! The master file of a series that `detflow fan` dealt over N writer ranks: virtual datasets
//! that put every rank's images back in `image_id` order, for every channel, with the
//! presence mask, the image ids and the series metadata. Each rank is mapped odin-data's way
//! (one strided hyperslab for its full blocks, one for a partial last block) over source
//! dimensions fixed by the series' image count, so the master reads while the ranks still
//! write (SWMR) and a rank's missing tail reads as the fill value. The layout is in
//! [`crate::layout`], "Master over rank files".

mod copy;
mod probe;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use detflow_hal::{Deal, PixelType};
use hdf5::types::{OwnedDynValue, VarLenUnicode};
use hdf5::{Dataset, Datatype, File, Group, Hyperslab, SliceOrIndex};
use serde::Serialize;

pub use probe::{RankFileInfo, read_rank_file};

use crate::{DataRoots, WriterError, layout, sink, vds};

/// What is known of the series before (or besides) its rank files: `None` or empty fields are
/// taken from the files, and what is given must agree with them. `detflow fan --master`
/// knows all of it from the `start` message, so it can map ranks whose file is not there.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RankSeries {
    /// How the series' images are dealt (ranks and frames per block).
    pub deal: Option<Deal>,
    /// Images in the whole series: the master's first dimension.
    pub number_of_images: Option<u64>,
    /// Pixel type of the channels.
    pub dtype: Option<PixelType>,
    /// `[rows, columns]` of one image.
    pub frame_shape: Option<[u64; 2]>,
    /// Channel names, the first (`/entry/data/data`) first; the others in any order.
    pub channels: Vec<String>,
    /// The series' `series_unique_id`: files of another series are refused.
    pub series_unique_id: Option<String>,
}

/// How to build a master over rank files.
#[derive(Debug, Clone, PartialEq)]
pub struct RankMasterSpec {
    /// The master file, by convention `NAME_master.h5` beside `NAME_r{k}_0001.h5`.
    pub out: PathBuf,
    /// What is known of the series besides the files.
    pub series: RankSeries,
    /// Where rank `k`'s file will be (index `k`) when no file of that rank is given: it is
    /// mapped there and reads as the fill value until it appears. Shorter (or empty): a
    /// rank with neither is left unmapped, noted.
    pub expected_files: Vec<PathBuf>,
    /// Fill value of the channels where an image is missing; `None`: NaN for floats, the
    /// dtype's maximum for integers (the rank files' own "no data" value).
    pub fill: Option<f64>,
    /// Replace an existing master file.
    pub overwrite: bool,
    /// The master must resolve inside these; anywhere by default.
    pub roots: DataRoots,
}

impl RankMasterSpec {
    /// A spec that takes everything from the rank files.
    pub fn new(out: impl Into<PathBuf>) -> RankMasterSpec {
        RankMasterSpec {
            out: out.into(),
            series: RankSeries::default(),
            expected_files: Vec::new(),
            fill: None,
            overwrite: false,
            roots: DataRoots::anywhere(),
        }
    }
}

/// One rank in the master.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankFileReport {
    /// The rank.
    pub rank: u64,
    /// The file mapped for it (absolute); `None`: left unmapped.
    pub file: Option<PathBuf>,
    /// True when the file was read when the master was built (false: mapped by its
    /// expected name, or unmapped).
    pub read: bool,
    /// Images of the series dealt to this rank.
    pub images_expected: u64,
    /// Of those, the images its file marks present now.
    pub images_present: u64,
    /// `images_expected - images_present`: they read as the fill value, mask 0.
    pub missing: u64,
}

/// What [`build_rank_master`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankMasterReport {
    /// The master file (absolute).
    pub out: PathBuf,
    /// Shape of each channel's virtual dataset: images, rows, columns.
    pub shape: [u64; 3],
    /// numpy dtype of the channels.
    pub dtype: String,
    /// The channels' fill value (NaN is written as `null` in JSON).
    pub fill_value: f64,
    /// Channel names, the first (`/entry/data/data`) first.
    pub channels: Vec<String>,
    /// Ranks of the series.
    pub ranks: u64,
    /// Images per block.
    pub frames_per_block: u64,
    /// Images of the series.
    pub number_of_images: u64,
    /// The series' unique id, when known.
    pub series_unique_id: Option<String>,
    /// `relative`, `absolute` or `mixed`: how the virtual datasets name their sources.
    pub source_paths: &'static str,
    /// Per rank, in rank order.
    pub rank_files: Vec<RankFileReport>,
    /// Images present now, all ranks together.
    pub images_present: u64,
    /// Images missing now (fill value, mask 0), all ranks together.
    pub images_missing: u64,
    /// Ranks without a file, metadata left out, and other remarks.
    pub notes: Vec<String>,
}

/// Everything decided before the master is created.
struct Plan {
    deal: Deal,
    number_of_images: u64,
    dtype: PixelType,
    frame_shape: [u64; 2],
    channels: Vec<String>,
    series_unique_id: Option<String>,
    /// Per rank: the file read for it (index into the infos).
    read: Vec<Option<usize>>,
    /// Per rank: the source name the virtual datasets use, and the absolute path.
    sources: Vec<Option<(String, PathBuf)>>,
    /// Per rank: the positions of its file that are mapped, `images_of_rank` unless the file
    /// read is shorter (HDF5 cannot read a mapping past its source's extent).
    mapped: Vec<u64>,
}

/// Write the master file `spec.out` over `rank_files` (in any order). Every file is read and
/// checked first: files of different series, deals, image counts, dtypes, frame shapes or
/// channels, two files of one rank, a file that is not a rank file, are refused before
/// anything is created, with the file and the value named.
pub fn build_rank_master(
    rank_files: &[PathBuf],
    spec: &RankMasterSpec,
) -> Result<RankMasterReport, WriterError> {
    let infos = rank_files
        .iter()
        .map(|p| read_rank_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    let out = std::path::absolute(&spec.out).unwrap_or_else(|_| spec.out.clone());
    let master_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut notes = Vec::new();
    let plan = plan(&infos, spec, &master_dir, &mut notes)?;
    let dtype = vds::descriptor(plan.dtype);
    let fill = vds::fill_for(&dtype, spec.fill).map_err(|reason| WriterError::Setting {
        setting: "fill",
        value: spec.fill.map_or_else(String::new, |f| f.to_string()),
        reason,
    })?;
    let file = vds::create_master(&out, spec.overwrite, &spec.roots)?;
    let ctx = |what: &'static str| {
        let path = out.clone();
        move |source: hdf5::Error| WriterError::Hdf5 { path, what, source }
    };
    let written = fill_master(&file, &plan, &infos, &fill, &mut notes, &out)
        .and_then(|()| file.close().map_err(ctx("close the master file")));
    if let Err(e) = written {
        // A master half written would only stand in the way of the next attempt.
        let _ = std::fs::remove_file(&out);
        return Err(e);
    }
    Ok(report(out, &plan, &infos, fill.1, notes))
}

/// Everything in the master: its groups, the series metadata of the lowest rank file read,
/// the virtual datasets.
fn fill_master(
    file: &File,
    plan: &Plan,
    infos: &[RankFileInfo],
    fill: &(OwnedDynValue, f64),
    notes: &mut Vec<String>,
    out: &Path,
) -> Result<(), WriterError> {
    let ctx = |what: &'static str| {
        let path = out.to_path_buf();
        move |source: hdf5::Error| WriterError::Hdf5 { path, what, source }
    };
    let nxdata =
        vds::parents(file, "entry/data", true).map_err(ctx("create the master's groups"))?;
    let first_read = plan.read.iter().flatten().next().map(|&i| &infos[i]);
    if let Some(info) = first_read {
        let (src, _) = probe::open(&info.path).map_err(|reason| WriterError::RankFile {
            path: info.path.clone(),
            reason,
        })?;
        let copied = copy::series_metadata(
            &src,
            file,
            &plan.channels,
            plan.deal,
            info.rank,
            plan.number_of_images,
        )
        .map_err(ctx("copy the series metadata"))?;
        notes.extend(copied);
    } else {
        notes.push("no rank file was read: the master has no series metadata".into());
    }
    write_master(file, &nxdata, plan, fill).map_err(ctx("write the virtual datasets"))
}

/// Check the files against each other and against what the spec says; decide the master.
fn plan(
    infos: &[RankFileInfo],
    spec: &RankMasterSpec,
    master_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Plan, WriterError> {
    let given = &spec.series;
    let mut deal = Agreed::new("detflow_ranks and detflow_frames_per_block", given.deal);
    let mut count = Agreed::new("detflow_number_of_images", given.number_of_images);
    let mut dtype = Agreed::new("dtype", given.dtype);
    let mut frame = Agreed::new("frame shape [rows, columns]", given.frame_shape);
    let mut unique = Agreed::new("series_unique_id", given.series_unique_id.clone().map(Some));
    let mut channels = Agreed::new(
        "channels",
        (!given.channels.is_empty()).then(|| channel_set(&given.channels)),
    );
    for info in infos {
        deal.check(info.deal, info)?;
        if let Some(n) = info.number_of_images {
            count.check(n, info)?;
        }
        dtype.check(info.dtype, info)?;
        frame.check(info.frame_shape, info)?;
        channels.check(channel_set(&info.channels), info)?;
        unique.check(info.series_unique_id.clone(), info)?;
    }
    let missing = |what: &str| WriterError::Setting {
        setting: "rank-files",
        value: format!("{} files", infos.len()),
        reason: format!("the series' {what} is not known: no rank file read says it"),
    };
    let deal = deal
        .value
        .ok_or_else(|| missing("deal (ranks, frames per block)"))?;
    let number_of_images = count.value.ok_or_else(|| missing("number of images"))?;
    let dtype = dtype.value.ok_or_else(|| missing("dtype"))?;
    let frame_shape = frame.value.ok_or_else(|| missing("frame shape"))?;
    let channels = match given.channels.is_empty() {
        true => infos.first().map(|i| i.channels.clone()),
        false => Some(given.channels.clone()),
    }
    .ok_or_else(|| missing("channel list"))?;

    let read = by_rank(infos, deal)?;
    let mut mapped = Vec::with_capacity(read.len());
    let mut sources = Vec::with_capacity(read.len());
    for (rank, found) in read.iter().enumerate() {
        let (source, positions) = rank_source(
            rank as u64,
            *found,
            infos,
            spec,
            master_dir,
            number_of_images,
            deal,
            notes,
        )?;
        sources.push(source);
        mapped.push(positions);
    }
    Ok(Plan {
        deal,
        number_of_images,
        dtype,
        frame_shape,
        channels,
        series_unique_id: unique.value.flatten(),
        read,
        sources,
        mapped,
    })
}

/// Which file (index into `infos`) each rank has; two files of one rank are refused.
fn by_rank(infos: &[RankFileInfo], deal: Deal) -> Result<Vec<Option<usize>>, WriterError> {
    let mut read = vec![None; deal.ranks() as usize];
    for (i, info) in infos.iter().enumerate() {
        if let Some(other) = read[info.rank as usize].replace(i) {
            return Err(WriterError::RankFile {
                path: info.path.clone(),
                reason: format!(
                    "detflow_rank = {}, as {} is: two files of one rank",
                    info.rank,
                    infos[other].path.display()
                ),
            });
        }
    }
    Ok(read)
}

/// Rank `rank`'s source (its file read, else its expected file, else none) and how many of
/// its positions are mapped; what is unusual is noted.
#[allow(clippy::too_many_arguments)]
fn rank_source(
    rank: u64,
    found: Option<usize>,
    infos: &[RankFileInfo],
    spec: &RankMasterSpec,
    master_dir: &Path,
    number_of_images: u64,
    deal: Deal,
    notes: &mut Vec<String>,
) -> Result<(Option<(String, PathBuf)>, u64), WriterError> {
    let path = match found {
        Some(i) => Some(infos[i].path.clone()),
        None => spec
            .expected_files
            .get(rank as usize)
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
    };
    let images = deal.images_of_rank(rank, number_of_images);
    let positions = found.map_or(images, |i| infos[i].positions.min(images));
    if positions < images {
        notes.push(format!(
            "rank {rank}: {} has {positions} of the rank's {images} positions now (a file \
             sized as images arrive): mapped up to there, the rest reads as the fill \
             value; build the master again once the file is complete",
            path.as_deref().unwrap_or(Path::new("?")).display()
        ));
    }
    match (&path, found) {
        (None, _) => notes.push(format!(
            "rank {rank}: no file given; its {images} images are unmapped (fill value)"
        )),
        (Some(p), None) => notes.push(format!(
            "rank {rank}: no file read; mapped to {} where its {images} images read as \
             the fill value until it is written",
            p.display()
        )),
        _ => {}
    }
    let source = match path {
        Some(p) => Some((source_name(&p, master_dir)?, p)),
        None => None,
    };
    Ok((source, positions))
}

/// A value all rank files (and the spec) must share, with who said it first.
struct Agreed<T> {
    what: &'static str,
    value: Option<T>,
    by: String,
}

impl<T: PartialEq + Debug> Agreed<T> {
    fn new(what: &'static str, given: Option<T>) -> Self {
        Agreed {
            what,
            by: "the series as given".into(),
            value: given,
        }
    }

    fn check(&mut self, value: T, info: &RankFileInfo) -> Result<(), WriterError> {
        match &self.value {
            Some(v) if *v != value => Err(WriterError::RankFile {
                path: info.path.clone(),
                reason: format!(
                    "{} = {value:?}, but {} has {v:?}: the files are not of one series",
                    self.what, self.by
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.value = Some(value);
                self.by = info.path.display().to_string();
                Ok(())
            }
        }
    }
}

/// Channels as compared between files: the first, then the others by name.
fn channel_set(channels: &[String]) -> Vec<String> {
    let mut others = channels.get(1..).unwrap_or_default().to_vec();
    others.sort();
    channels.iter().take(1).cloned().chain(others).collect()
}

/// The source file name as HDF5 wants it: relative to the master's directory when the file
/// is in it or below, `%` doubled (HDF5 reads source names as printf-style patterns).
fn source_name(path: &Path, master_dir: &Path) -> Result<String, WriterError> {
    let (name, _) = vds::source_name(path, master_dir).ok_or_else(|| WriterError::RankFile {
        path: path.to_path_buf(),
        reason: "the path is not UTF-8, which HDF5 source file names must be".into(),
    })?;
    Ok(vds::pattern_escaped(&name))
}

/// One placement of a rank's images in the master, along the image dimension: master
/// positions `master_start + j * step + (0..block)` for `j` in `0..count` hold the rank's
/// positions `source_start ..` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockMap {
    master_start: u64,
    step: u64,
    count: u64,
    block: u64,
    source_start: u64,
}

/// Where the first `images` positions of rank `rank`'s file go (odin-data's mapping): its
/// full blocks in one strided selection (start `rank * B`, stride `N * B`, block `B`), then
/// a partial last block, if any, as a plain range.
fn block_maps(deal: Deal, rank: u64, images: u64) -> Vec<BlockMap> {
    let (n, b) = (deal.ranks(), deal.frames_per_block());
    let (full, rest) = (images / b, images % b);
    let mut maps = Vec::new();
    if full > 0 {
        maps.push(BlockMap {
            master_start: rank * b,
            step: n * b,
            count: full,
            block: b,
            source_start: 0,
        });
    }
    if rest > 0 {
        maps.push(BlockMap {
            master_start: (full * n + rank) * b,
            step: 1,
            count: 1,
            block: rest,
            source_start: full * b,
        });
    }
    maps
}

/// The master's groups, one virtual dataset per channel, the presence mask, the image ids,
/// the series' rank scalars and the list of rank files.
fn write_master(
    file: &File,
    nxdata: &Group,
    plan: &Plan,
    fill: &(OwnedDynValue, f64),
) -> hdf5::Result<()> {
    let entry = file.group(layout::ENTRY)?;
    let instrument = copy::nx_group(&entry, layout::INSTRUMENT, "NXinstrument")?;
    let detector = copy::nx_group(&instrument, layout::DETECTOR, "NXdetector")?;
    let specific = copy::nx_group(&detector, layout::DETECTOR_SPECIFIC, "NXcollection")?;
    let [rows, cols] = plan.frame_shape;
    let pixels = Datatype::from_descriptor(&vds::descriptor(plan.dtype))?;
    for (i, channel) in plan.channels.iter().enumerate() {
        let name = if i == 0 { layout::DATA } else { channel };
        let source = match i {
            0 => layout::IMAGE_PATH.to_owned(),
            _ => format!("{}/{channel}", layout::DETECTOR_PATH),
        };
        let ds = virtual_dataset(nxdata, name, &pixels, &[rows, cols], &fill.0, &source, plan)?;
        vds::text_attr(
            &ds,
            "description",
            "virtual dataset: every rank file's images in image_id order",
        )?;
        vds::text_attr(&ds, "source_paths", source_paths(plan))?;
        ds.new_attr_builder()
            .with_data(&[fill.1])
            .create("fill_value")?;
        if i > 0 {
            sink::write_string_attr(&ds, "channel", channel)?;
        }
        detector.link_hard(&format!("/entry/data/{name}"), name)?;
        if i == 0 && channel != layout::DATA {
            nxdata.link_hard("/entry/data/data", channel)?;
            detector.link_hard("/entry/data/data", channel)?;
        }
    }
    let u8s = Datatype::from_type::<u8>()?;
    let present = virtual_dataset(
        nxdata,
        layout::IMAGE_PRESENT,
        &u8s,
        &[],
        &0u8.into(),
        layout::IMAGE_PRESENT_PATH,
        plan,
    )?;
    vds::text_attr(
        &present,
        "description",
        "1 where the image is in its rank's file, 0 where it is missing (its pixels read as \
         the fill value); virtual, so it follows the rank files as they are written",
    )?;
    let ids = virtual_dataset(
        &specific,
        layout::IMAGE_ID,
        &Datatype::from_type::<u64>()?,
        &[],
        &u64::MAX.into(),
        &format!("{}/{}", layout::DETECTOR_SPECIFIC_PATH, layout::IMAGE_ID),
        plan,
    )?;
    vds::text_attr(
        &ids,
        "description",
        "image_id as the detector sent it; 18446744073709551615 where the image is missing",
    )?;
    for (name, value) in [
        ("detflow_ranks", plan.deal.ranks()),
        ("detflow_frames_per_block", plan.deal.frames_per_block()),
        ("detflow_number_of_images", plan.number_of_images),
    ] {
        if !specific.link_exists(name) {
            specific
                .new_dataset::<u64>()
                .create(name)?
                .write_scalar(&value)?;
        }
    }
    let names: Vec<VarLenUnicode> = plan
        .sources
        .iter()
        .map(|s| s.as_ref().map_or("", |(name, _)| name.as_str()))
        .map(|s| s.parse().expect("source names have no NUL"))
        .collect();
    let list = specific
        .new_dataset_builder()
        .with_data(&names)
        .create("detflow_rank_files")?;
    vds::text_attr(
        &list,
        "description",
        "rank k's file as the virtual datasets name it (relative to this file's directory \
         unless absolute); empty: rank k is unmapped",
    )?;
    Ok(())
}

/// `parent/name`: a virtual dataset of `number_of_images` elements of `frame` shape, mapping
/// `source` of every rank file by the deal, over fixed source extents.
fn virtual_dataset(
    parent: &Group,
    name: &str,
    dtype: &Datatype,
    frame: &[u64],
    fill: &OwnedDynValue,
    source: &str,
    plan: &Plan,
) -> hdf5::Result<Dataset> {
    let dims = |first: u64| -> Vec<usize> {
        std::iter::once(first)
            .chain(frame.iter().copied())
            .map(|d| d as usize)
            .collect()
    };
    let vds_extents = dims(plan.number_of_images);
    let mut builder = parent
        .new_dataset_builder()
        .empty_as(dtype)
        .shape(vds_extents.clone())
        .fill_value(fill.clone());
    let source = vds::pattern_escaped(source);
    for (rank, src) in plan.sources.iter().enumerate() {
        let Some((file_name, _)) = src else { continue };
        let images = plan.deal.images_of_rank(rank as u64, plan.number_of_images);
        for m in block_maps(plan.deal, rank as u64, plan.mapped[rank]) {
            let rest = frame.iter().map(|&d| SliceOrIndex::from(0..d as usize));
            let master_first = SliceOrIndex::SliceCount {
                start: m.master_start as usize,
                step: m.step as usize,
                count: m.count as usize,
                block: m.block as usize,
            };
            let source_len = (m.count * m.block) as usize;
            let source_first =
                SliceOrIndex::from(m.source_start as usize..m.source_start as usize + source_len);
            let master_sel: Vec<_> = std::iter::once(master_first).chain(rest.clone()).collect();
            let source_sel: Vec<_> = std::iter::once(source_first).chain(rest).collect();
            builder = builder.virtual_map(
                file_name,
                &source,
                dims(images),
                Hyperslab::from(source_sel),
                vds_extents.clone(),
                Hyperslab::from(master_sel),
            );
        }
    }
    builder.create(name)
}

fn source_paths(plan: &Plan) -> &'static str {
    if plan
        .sources
        .iter()
        .flatten()
        .all(|(n, _)| !n.starts_with('/'))
    {
        "relative to this file's directory"
    } else {
        "absolute (sources outside this file's directory)"
    }
}

fn report(
    out: PathBuf,
    plan: &Plan,
    infos: &[RankFileInfo],
    fill_value: f64,
    notes: Vec<String>,
) -> RankMasterReport {
    let rank_files: Vec<RankFileReport> = (0..plan.deal.ranks())
        .map(|rank| {
            let expected = plan.deal.images_of_rank(rank, plan.number_of_images);
            let info = plan.read[rank as usize].map(|i| &infos[i]);
            let present = info.map_or(0, |i| i.present_among(expected));
            RankFileReport {
                rank,
                file: plan.sources[rank as usize].as_ref().map(|(_, p)| p.clone()),
                read: info.is_some(),
                images_expected: expected,
                images_present: present,
                missing: expected - present,
            }
        })
        .collect();
    let (relative, absolute) = plan
        .sources
        .iter()
        .flatten()
        .fold((0, 0), |(r, a), (n, _)| match n.starts_with('/') {
            true => (r, a + 1),
            false => (r + 1, a),
        });
    let images_present = rank_files.iter().map(|r| r.images_present).sum();
    RankMasterReport {
        out,
        shape: [
            plan.number_of_images,
            plan.frame_shape[0],
            plan.frame_shape[1],
        ],
        dtype: vds::numpy_name(&vds::descriptor(plan.dtype)),
        fill_value,
        channels: plan.channels.clone(),
        ranks: plan.deal.ranks(),
        frames_per_block: plan.deal.frames_per_block(),
        number_of_images: plan.number_of_images,
        series_unique_id: plan.series_unique_id.clone(),
        source_paths: match (relative, absolute) {
            (_, 0) => "relative",
            (0, _) => "absolute",
            _ => "mixed",
        },
        images_missing: plan.number_of_images - images_present,
        images_present,
        rank_files,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every image lands once, at `image_id`, from position `index_in_rank` of its rank.
    #[test]
    fn block_maps_place_every_image_once_where_the_deal_put_it() {
        for (n, b, images) in [
            (3, 4, 50),
            (1, 5, 12),
            (3, 1, 7),
            (2, 3, 6),
            (4, 2, 3),
            (3, 4, 0),
        ] {
            let deal = Deal::new(n, b).unwrap();
            let mut placed = vec![None; images as usize];
            for rank in 0..n {
                let mut source = 0;
                for m in block_maps(deal, rank, deal.images_of_rank(rank, images)) {
                    assert_eq!(m.source_start, source, "contiguous in the rank's file");
                    for j in 0..m.count {
                        for k in 0..m.block {
                            let at = (m.master_start + j * m.step + k) as usize;
                            assert!(placed[at].is_none(), "{n} {b} {images}: {at} twice");
                            placed[at] = Some((rank, source));
                            source += 1;
                        }
                    }
                }
                assert_eq!(source, deal.images_of_rank(rank, images));
            }
            for (id, p) in placed.iter().enumerate() {
                let id = id as u64;
                assert_eq!(
                    *p,
                    Some((deal.rank_of(id), deal.index_in_rank(id))),
                    "{n} {b} {images}: image {id}"
                );
            }
            assert!(
                (0..n).all(|r| block_maps(deal, r, deal.images_of_rank(r, images)).len() <= 2),
                "one strided mapping and at most one partial block per rank"
            );
        }
    }

    #[test]
    fn a_short_file_maps_its_first_positions_only() {
        let deal = Deal::new(3, 4).unwrap();
        for limit in 0..=18 {
            let mut ids = Vec::new();
            for m in block_maps(deal, 0, limit) {
                for j in 0..m.count {
                    ids.extend((0..m.block).map(|k| m.master_start + j * m.step + k));
                }
            }
            let want: Vec<u64> = (0..limit).map(|i| deal.image_id(0, i).unwrap()).collect();
            assert_eq!(ids, want, "limit {limit}");
        }
    }

    #[test]
    fn channels_compare_by_first_then_by_name() {
        let a = channel_set(&["t1".into(), "t3".into(), "t2".into()]);
        assert_eq!(a, ["t1", "t2", "t3"]);
        assert_ne!(a, channel_set(&["t2".into(), "t1".into(), "t3".into()]));
    }
}
