//! Master files: one HDF5 file whose virtual dataset (VDS) stitches together the frames that
//! value references ([`crate::refs`]) point to, as Sardana's HDF5 recorder does at the end of
//! a scan, without its gaps.
//!
//! [`build_master`] takes one reference per point and writes, for the default dataset path:
//!
//! ```text
//! /entry                     NXentry, @default = data
//!   data                     NXdata, @signal = data
//!     data                   VDS (points, [frames,] rows, cols); @fill_value, @source_paths
//!     data_refs              the references, variable-length UTF-8 strings (points,); always
//!                            written, first; @vds_error says why there is no VDS when there is none
//!     data_present           uint8 (points,): 1 where the source existed with the expected
//!                            shape when the master was built
//! ```
//!
//! - dtype and shape come from the first source that exists; when none exists yet, from the
//!   acquisition's description ([`PointDescription`]). Points whose source is missing are
//!   mapped all the same, from the description: they read as the fill value until the file
//!   appears, and then as the frame.
//! - Source file names are relative to the master's directory when the source is in it or
//!   below (HDF5 resolves them against the master's directory, so the tree can move), and
//!   absolute otherwise.
//! - The fill value fits the dtype: NaN for floats, the type's maximum for integers (the
//!   value detectors use for invalid pixels); [`VdsSpec::fill`] overrides it.
//! - When no VDS can be made (a `file://` reference, an unparsable one, an unknown shape,
//!   a non-numeric dtype, HDF5 refusing), the master still holds `data_refs`, with the
//!   reason in its `vds_error` attribute, and [`MasterReport::reason`] says it too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use detflow_hal::PixelType;
use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, Datatype, File, Group};
use hdf5::{Hyperslab, Selection, SliceOrIndex};
use serde::Serialize;

use crate::WriterError;
use crate::layout;
use crate::refs::{FrameSelection, ValueRef};
use crate::sink;

/// What one point holds when its source cannot be read: the acquisition's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointDescription {
    /// Pixel type.
    pub dtype: PixelType,
    /// `[rows, columns]` of one frame.
    pub frame_shape: [u64; 2],
}

/// How to build a master file.
#[derive(Debug, Clone, PartialEq)]
pub struct VdsSpec {
    /// The master file.
    pub out: PathBuf,
    /// Absolute path of the virtual dataset in the master (default `/entry/data/data`).
    pub dataset: String,
    /// The source dataset for references without `::dataset` (default `/entry/data/data`,
    /// where detflow's files keep their frames; Sardana's dummy uses `dataset`).
    pub source_dataset: String,
    /// dtype and frame shape to use when no source exists yet.
    pub description: Option<PointDescription>,
    /// Fill value for points without data; `None`: NaN for floats, the maximum for integers.
    pub fill: Option<f64>,
    /// Replace an existing master file.
    pub overwrite: bool,
    /// The master must resolve inside these when it is created; anywhere by default.
    pub roots: crate::roots::DataRoots,
}

impl VdsSpec {
    /// A spec with the defaults: `/entry/data/data` in both the master and the sources.
    pub fn new(out: impl Into<PathBuf>) -> VdsSpec {
        VdsSpec {
            out: out.into(),
            dataset: layout::LINK_PATH.into(),
            source_dataset: layout::LINK_PATH.into(),
            description: None,
            fill: None,
            overwrite: false,
            roots: crate::roots::DataRoots::anywhere(),
        }
    }
}

/// What [`build_master`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MasterReport {
    /// The master file.
    pub out: PathBuf,
    /// The virtual dataset's path (absent from the file when `virtual_dataset` is false).
    pub dataset: String,
    /// The string dataset of references (always written).
    pub refs_dataset: String,
    /// References given (the VDS's first dimension).
    pub points: u64,
    /// True when the VDS was made.
    pub virtual_dataset: bool,
    /// Shape of the VDS: points, then what one reference selects.
    pub shape: Vec<u64>,
    /// numpy dtype of the VDS.
    pub dtype: Option<String>,
    /// The fill value (NaN is written as `null` in JSON).
    pub fill_value: Option<f64>,
    /// Points whose source existed with the expected shape.
    pub sources_present: u64,
    /// `relative`, `absolute` or `mixed`: how the VDS names its source files.
    pub source_paths: &'static str,
    /// Why there is no VDS.
    pub reason: Option<String>,
    /// Points left unmapped (they read as the fill value) and other remarks.
    pub notes: Vec<String>,
}

pub(crate) fn descriptor(p: PixelType) -> TypeDescriptor {
    match p {
        PixelType::U8 => TypeDescriptor::Unsigned(IntSize::U1),
        PixelType::I8 => TypeDescriptor::Integer(IntSize::U1),
        PixelType::U16 => TypeDescriptor::Unsigned(IntSize::U2),
        PixelType::I16 => TypeDescriptor::Integer(IntSize::U2),
        PixelType::U32 => TypeDescriptor::Unsigned(IntSize::U4),
        PixelType::I32 => TypeDescriptor::Integer(IntSize::U4),
        PixelType::F32 => TypeDescriptor::Float(FloatSize::U4),
        PixelType::F64 => TypeDescriptor::Float(FloatSize::U8),
    }
}

pub(crate) fn numpy_name(t: &TypeDescriptor) -> String {
    match t {
        TypeDescriptor::Unsigned(s) => format!("uint{}", *s as usize * 8),
        TypeDescriptor::Integer(s) => format!("int{}", *s as usize * 8),
        TypeDescriptor::Float(s) => format!("float{}", *s as usize * 8),
        other => other.to_string(),
    }
}

/// The fill value for `t` as HDF5 wants it, and as a number for the report.
pub(crate) fn fill_for(
    t: &TypeDescriptor,
    wanted: Option<f64>,
) -> Result<(hdf5::types::OwnedDynValue, f64), String> {
    macro_rules! int {
        ($ty:ty) => {{
            let v = match wanted {
                None => <$ty>::MAX,
                Some(f) if f.fract() == 0.0 && f >= <$ty>::MIN as f64 && f <= <$ty>::MAX as f64 => {
                    f as $ty
                }
                Some(f) => return Err(format!("fill value {f} does not fit {}", numpy_name(t))),
            };
            Ok((v.into(), v as f64))
        }};
    }
    match t {
        TypeDescriptor::Unsigned(IntSize::U1) => int!(u8),
        TypeDescriptor::Unsigned(IntSize::U2) => int!(u16),
        TypeDescriptor::Unsigned(IntSize::U4) => int!(u32),
        TypeDescriptor::Unsigned(IntSize::U8) => int!(u64),
        TypeDescriptor::Integer(IntSize::U1) => int!(i8),
        TypeDescriptor::Integer(IntSize::U2) => int!(i16),
        TypeDescriptor::Integer(IntSize::U4) => int!(i32),
        TypeDescriptor::Integer(IntSize::U8) => int!(i64),
        TypeDescriptor::Float(FloatSize::U4) => {
            let v = wanted.unwrap_or(f64::NAN) as f32;
            Ok((v.into(), f64::from(v)))
        }
        TypeDescriptor::Float(FloatSize::U8) => {
            let v = wanted.unwrap_or(f64::NAN);
            Ok((v.into(), v))
        }
        other => Err(format!(
            "the sources hold {other}, not numbers: a virtual dataset of images needs an \
             integer or float dtype"
        )),
    }
}

/// A source as found on disk when the master is built.
#[derive(Debug, Clone)]
enum Probe {
    Missing,
    /// Exists but could not be read (not HDF5, no such dataset, locked): mapped like a
    /// missing source, with a note.
    Unreadable(String),
    Present {
        shape: Vec<u64>,
        dtype: TypeDescriptor,
    },
}

fn probe(path: &Path, dataset: &str) -> Probe {
    if !path.exists() {
        return Probe::Missing;
    }
    let read = || -> hdf5::Result<(Vec<u64>, TypeDescriptor)> {
        let file = File::open(path)?;
        let ds = file.dataset(dataset)?;
        let shape = ds.shape().iter().map(|&d| d as u64).collect();
        Ok((shape, ds.dtype()?.to_descriptor()?))
    };
    match read() {
        Ok((shape, dtype)) => Probe::Present { shape, dtype },
        Err(e) => Probe::Unreadable(e.to_string()),
    }
}

/// One point's mapping, once shapes are known.
struct Mapping {
    point: usize,
    file_name: String,
    dataset: String,
    src_extents: Vec<u64>,
    selection: FrameSelection,
}

fn hyperslab(first: Option<SliceOrIndex>, rest: &[u64]) -> Selection {
    let dims = first
        .into_iter()
        .chain(rest.iter().map(|&n| SliceOrIndex::from(0..n as usize)))
        .collect::<Vec<_>>();
    Hyperslab::from(dims).into()
}

/// Write the master file for `refs` (one per point, in point order). Fails only when the
/// master itself cannot be written; every other problem leaves a master holding the
/// references as strings, with the reason.
pub fn build_master(refs: &[String], spec: &VdsSpec) -> Result<MasterReport, WriterError> {
    if refs.is_empty() {
        return Err(WriterError::Setting {
            setting: "refs",
            value: String::new(),
            reason: "no references to build a master file from".into(),
        });
    }
    let Some((parent_path, name)) = spec
        .dataset
        .strip_prefix('/')
        .and_then(|d| d.rsplit_once('/').or(Some(("", d))))
        .filter(|(_, name)| !name.is_empty())
    else {
        return Err(WriterError::Setting {
            setting: "dataset",
            value: spec.dataset.clone(),
            reason: "expected an absolute dataset path such as /entry/data/data".into(),
        });
    };
    let out = std::path::absolute(&spec.out).unwrap_or_else(|_| spec.out.clone());
    let master_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut report = MasterReport {
        out: out.clone(),
        dataset: spec.dataset.clone(),
        refs_dataset: format!("{}_refs", spec.dataset),
        points: refs.len() as u64,
        virtual_dataset: false,
        shape: Vec::new(),
        dtype: None,
        fill_value: None,
        sources_present: 0,
        source_paths: "absolute",
        reason: None,
        notes: Vec::new(),
    };
    let plan = plan(refs, spec, &master_dir, &mut report);

    let file = create_master(&out, spec.overwrite, &spec.roots)?;
    let ctx = |what: &'static str| {
        let path = out.clone();
        move |source: hdf5::Error| WriterError::Hdf5 { path, what, source }
    };
    let parent = parents(&file, parent_path, spec.dataset == layout::LINK_PATH)
        .map_err(ctx("create the master's groups"))?;

    // The references first: whatever happens next, they are in the file.
    let strings = refs
        .iter()
        .map(|r| {
            r.replace('\0', "%00")
                .parse::<VarLenUnicode>()
                .expect("no NUL left")
        })
        .collect::<Vec<_>>();
    let refs_ds = parent
        .new_dataset_builder()
        .with_data(&strings)
        .create(format!("{name}_refs").as_str())
        .map_err(ctx("write the references"))?;
    text_attr(
        &refs_ds,
        "description",
        "one value reference (URI) per point",
    )
    .map_err(ctx("write the references"))?;

    let made = match plan {
        Ok(plan) => {
            let present: Vec<u8> = plan.present.iter().map(|&p| u8::from(p)).collect();
            parent
                .new_dataset_builder()
                .with_data(&present)
                .create(format!("{name}_present").as_str())
                .map_err(ctx("write the present mask"))?;
            create_vds(&parent, name, &plan)
                .map(|()| plan)
                .map_err(|e| format!("HDF5 could not create the virtual dataset: {e}"))
        }
        Err(reason) => Err(reason),
    };
    match made {
        Ok(plan) => {
            report.virtual_dataset = true;
            report.shape = plan.vds_shape.clone();
            report.dtype = Some(numpy_name(&plan.dtype));
            report.fill_value = Some(plan.fill.1);
            text_attr(&refs_ds, "vds", &spec.dataset).map_err(ctx("write the references"))?;
        }
        Err(reason) => {
            text_attr(&refs_ds, "vds_error", &reason).map_err(ctx("write the references"))?;
            report.reason = Some(reason);
        }
    }
    if !report.notes.is_empty() {
        text_attr(&refs_ds, "vds_notes", &report.notes.join("\n"))
            .map_err(ctx("write the references"))?;
    }
    file.close().map_err(ctx("close the master file"))?;
    Ok(report)
}

/// Create the master file `out` (absolute): refused when it exists unless `overwrite`, or
/// when it lies outside `roots`.
pub(crate) fn create_master(
    out: &Path,
    overwrite: bool,
    roots: &crate::roots::DataRoots,
) -> Result<File, WriterError> {
    if !overwrite && out.exists() {
        return Err(WriterError::Exists {
            path: out.to_path_buf(),
        });
    }
    roots
        .check(out)
        .map_err(|source| WriterError::OutsideRoots {
            setting: "master".into(),
            source,
        })?;
    if overwrite {
        File::create(out)
    } else {
        File::create_excl(out)
    }
    .map_err(|source| WriterError::Hdf5 {
        path: out.to_path_buf(),
        what: "create the master file",
        source,
    })
}

struct Plan {
    dtype: TypeDescriptor,
    fill: (hdf5::types::OwnedDynValue, f64),
    vds_shape: Vec<u64>,
    mappings: Vec<Mapping>,
    present: Vec<bool>,
}

/// Decide dtype, shape and one mapping per point; `Err` is why there can be no VDS.
fn plan(
    refs: &[String],
    spec: &VdsSpec,
    master_dir: &Path,
    report: &mut MasterReport,
) -> Result<Plan, String> {
    let parsed = refs
        .iter()
        .enumerate()
        .map(|(i, r)| r.parse::<ValueRef>().map_err(|e| format!("point {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((i, r)) = parsed
        .iter()
        .enumerate()
        .find(|(_, r)| matches!(r, ValueRef::File { .. }))
    {
        return Err(format!(
            "point {i}: {r} is not an HDF5 reference; a virtual dataset maps h5file:// \
             references only"
        ));
    }
    let mut probes: HashMap<(PathBuf, String), Probe> = HashMap::new();
    let sources: Vec<(PathBuf, String, FrameSelection, Probe)> = parsed
        .iter()
        .map(|r| {
            let dataset = r.dataset().unwrap_or(&spec.source_dataset).to_owned();
            let key = (r.path().to_path_buf(), dataset.clone());
            let found = probes
                .entry(key)
                .or_insert_with(|| probe(r.path(), &dataset))
                .clone();
            (r.path().to_path_buf(), dataset, r.selection(), found)
        })
        .collect();

    // What one point holds: from the first source that exists, else the description.
    let from_sources = sources.iter().find_map(|(_, _, sel, p)| match p {
        Probe::Present { shape, dtype } => sel.apply(shape).ok().map(|s| (s, dtype.clone())),
        _ => None,
    });
    let (point_shape, dtype) = match (from_sources, spec.description) {
        (Some((shape, dtype)), description) => {
            if let Some(d) = description {
                if descriptor(d.dtype) != dtype {
                    report.notes.push(format!(
                        "the sources hold {}, the description says {}; the sources win",
                        numpy_name(&dtype),
                        numpy_name(&descriptor(d.dtype))
                    ));
                }
                if shape[shape.len().saturating_sub(2)..] != d.frame_shape {
                    report.notes.push(format!(
                        "the sources' frames are {:?}, the description says {:?}; the \
                         sources win",
                        &shape[shape.len().saturating_sub(2)..],
                        d.frame_shape
                    ));
                }
            }
            (shape, dtype)
        }
        (None, Some(d)) => {
            let frame = d.frame_shape.to_vec();
            let shape = match sources[0].2 {
                FrameSelection::Slice { start, end } => {
                    std::iter::once(end - start).chain(frame).collect()
                }
                _ => frame,
            };
            (shape, descriptor(d.dtype))
        }
        (None, None) => {
            return Err(
                "no source exists yet and no dtype and frame shape were given, so the \
                 virtual dataset's shape is unknown"
                    .into(),
            );
        }
    };
    let fill = fill_for(&dtype, spec.fill)?;

    let mut mappings = Vec::with_capacity(sources.len());
    let mut present = vec![false; sources.len()];
    let (mut relative, mut absolute) = (0u64, 0u64);
    for (point, (path, dataset, selection, found)) in sources.into_iter().enumerate() {
        let src_extents = match &found {
            Probe::Present { shape, .. } => match selection.apply(shape) {
                Ok(s) if s == point_shape => {
                    present[point] = true;
                    shape.clone()
                }
                Ok(s) => {
                    report.notes.push(format!(
                        "point {point}: {} selects shape {s:?}, the others {point_shape:?}; \
                         left unmapped",
                        path.display()
                    ));
                    continue;
                }
                Err(why) => {
                    report.notes.push(format!(
                        "point {point}: {}::{dataset}: {why}; left unmapped",
                        path.display()
                    ));
                    continue;
                }
            },
            Probe::Missing | Probe::Unreadable(_) => {
                if let Probe::Unreadable(why) = &found {
                    report.notes.push(format!(
                        "point {point}: {} cannot be read now ({why}); mapped from the \
                         declared shape",
                        path.display()
                    ));
                }
                match selection {
                    FrameSelection::All => point_shape.clone(),
                    FrameSelection::Index(i) => {
                        std::iter::once(i + 1).chain(point_shape.clone()).collect()
                    }
                    FrameSelection::Slice { start, end }
                        if point_shape.first() == Some(&(end - start)) =>
                    {
                        std::iter::once(end)
                            .chain(point_shape[1..].to_vec())
                            .collect()
                    }
                    FrameSelection::Slice { start, end } => {
                        report.notes.push(format!(
                            "point {point}: [{start}:{end}] selects {} frames, the others \
                             {point_shape:?}; left unmapped",
                            end - start
                        ));
                        continue;
                    }
                }
            }
        };
        let Some((file_name, is_relative)) = source_name(&path, master_dir) else {
            report.notes.push(format!(
                "point {point}: {} is not UTF-8, which HDF5 source names must be; left \
                 unmapped",
                path.display()
            ));
            continue;
        };
        if is_relative {
            relative += 1;
        } else {
            absolute += 1;
        }
        mappings.push(Mapping {
            point,
            file_name,
            dataset,
            src_extents,
            selection,
        });
    }
    report.sources_present = present.iter().filter(|&&p| p).count() as u64;
    report.source_paths = match (relative, absolute) {
        (_, 0) => "relative",
        (0, _) => "absolute",
        _ => "mixed",
    };
    let vds_shape = std::iter::once(refs.len() as u64)
        .chain(point_shape)
        .collect();
    Ok(Plan {
        dtype,
        fill,
        vds_shape,
        mappings,
        present,
    })
}

/// How a virtual dataset names the source file `path`: relative to the master's directory
/// when it is in it or below (HDF5 resolves such names against the master's directory, so
/// the tree can move; true), absolute otherwise (false). `None` when the path is not UTF-8,
/// which HDF5 source names must be.
pub(crate) fn source_name(path: &Path, master_dir: &Path) -> Option<(String, bool)> {
    match path.strip_prefix(master_dir) {
        Ok(rel) if !master_dir.as_os_str().is_empty() => Some((rel.to_str()?.to_owned(), true)),
        _ => Some((path.to_str()?.to_owned(), false)),
    }
}

/// A source file or dataset name as HDF5 wants it: `%` doubled, since HDF5 reads source
/// names as printf-style patterns (`%b` is a block number).
pub(crate) fn pattern_escaped(name: &str) -> String {
    name.replace('%', "%%")
}

fn create_vds(parent: &Group, name: &str, plan: &Plan) -> hdf5::Result<()> {
    let dtype = Datatype::from_descriptor(&plan.dtype)?;
    let vds_extents: Vec<usize> = plan.vds_shape.iter().map(|&d| d as usize).collect();
    let point_shape = &plan.vds_shape[1..];
    let mut builder = parent
        .new_dataset_builder()
        .empty_as(&dtype)
        .shape(vds_extents.clone())
        .fill_value(plan.fill.0.clone());
    for m in &plan.mappings {
        let src_extents: Vec<usize> = m.src_extents.iter().map(|&d| d as usize).collect();
        let src_selection = match m.selection {
            FrameSelection::All => Selection::All,
            FrameSelection::Index(i) => {
                hyperslab(Some(SliceOrIndex::Index(i as usize)), &m.src_extents[1..])
            }
            FrameSelection::Slice { start, end } => hyperslab(
                Some(SliceOrIndex::from(start as usize..end as usize)),
                &m.src_extents[1..],
            ),
        };
        let vds_selection = hyperslab(Some(SliceOrIndex::Index(m.point)), point_shape);
        builder = builder.virtual_map(
            pattern_escaped(&m.file_name),
            pattern_escaped(&m.dataset),
            src_extents,
            src_selection,
            vds_extents.clone(),
            vds_selection,
        );
    }
    let ds = builder.create(name)?;
    text_attr(
        &ds,
        "description",
        "virtual dataset: one point per reference in the _refs dataset beside it",
    )?;
    let source_paths = if plan.mappings.iter().all(|m| !m.file_name.starts_with('/')) {
        "relative to this file's directory"
    } else {
        "absolute (sources outside this file's directory)"
    };
    text_attr(&ds, "source_paths", source_paths)?;
    ds.new_attr_builder()
        .with_data(&[plan.fill.1])
        .create("fill_value")?;
    Ok(())
}

/// Create (or open) the groups above the dataset; NeXus attributes for `/entry/data/data`.
pub(crate) fn parents(file: &File, parent_path: &str, nexus: bool) -> hdf5::Result<Group> {
    let mut group: Group = file.as_group()?;
    for part in parent_path.split('/').filter(|p| !p.is_empty()) {
        group = match group.group(part) {
            Ok(g) => g,
            Err(_) => group.create_group(part)?,
        };
    }
    if nexus {
        sink::write_string_attr(file, "default", layout::ENTRY)?;
        let entry = file.group(layout::ENTRY)?;
        sink::write_string_attr(&entry, "NX_class", "NXentry")?;
        sink::write_string_attr(&entry, "default", layout::NXDATA)?;
        sink::write_string_attr(&group, "NX_class", "NXdata")?;
        sink::write_string_attr(&group, "signal", layout::DATA)?;
    }
    Ok(group)
}

pub(crate) fn text_attr(ds: &Dataset, name: &str, value: &str) -> hdf5::Result<()> {
    let v: VarLenUnicode = value
        .replace('\0', " ")
        .parse()
        .map_err(|e| hdf5::Error::Internal(format!("{e}")))?;
    ds.new_attr::<VarLenUnicode>()
        .create(name)?
        .write_scalar(&v)
}
