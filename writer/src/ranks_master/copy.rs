//! The series-level metadata of a rank file copied into the master: everything under
//! `/entry/instrument` that does not hold one value per image, `/entry/definition`, and the
//! goniometer rebuilt for every image of the series (a rank file holds its own images'
//! angles only).

use std::ffi::CString;

use detflow_hal::Deal;
use hdf5::{File, Group, Location};
use hdf5_sys::h5a::{H5Aclose, H5Acreate2, H5Aread, H5Awrite};
use hdf5_sys::h5o::H5Ocopy;
use hdf5_sys::h5p::H5P_DEFAULT;
use hdf5_sys::h5t::H5Treclaim;

use crate::{layout, sink};

/// Members of `detectorSpecific` that hold one value per image, or describe one rank's file
/// only: the master has its own (virtual `image_id`, the `detflow_*` of the whole series).
const PER_IMAGE: &[&str] = &[
    layout::IMAGE_ID,
    layout::REAL_TIME,
    layout::START_TIME,
    layout::STOP_TIME,
    layout::USER_DATA,
    layout::USER_DATA_JSON,
];

/// Copy the series metadata of `src` (one rank file, rank `rank`) into `dst`, leaving out the
/// channel datasets (`channels`, and `data`), the per-image members and the NDAttributes and
/// performance tables. Returns remarks for the report.
pub(crate) fn series_metadata(
    src: &File,
    dst: &File,
    channels: &[String],
    deal: Deal,
    rank: u64,
    number_of_images: u64,
) -> hdf5::Result<Vec<String>> {
    let mut notes = Vec::new();
    let src_entry = src.group(layout::ENTRY)?;
    let dst_entry = dst.group(layout::ENTRY)?;
    if src_entry.link_exists("definition") {
        copy_object(&src_entry, "definition", &dst_entry)?;
    }
    if let Ok(instrument) = src_entry.group(layout::INSTRUMENT) {
        let out = mirror_group(&instrument, &dst_entry, layout::INSTRUMENT)?;
        for name in instrument.member_names()? {
            match name.as_str() {
                layout::ND_ATTRIBUTES | layout::PERFORMANCE => {}
                layout::DETECTOR => detector(&instrument.group(&name)?, &out, channels)?,
                _ => copy_object(&instrument, &name, &out)?,
            }
        }
    }
    if let Ok(sample) = src_entry.group("sample") {
        goniometer(
            &sample,
            &dst_entry,
            deal,
            rank,
            number_of_images,
            &mut notes,
        )?;
    }
    Ok(notes)
}

/// The NXdetector group without the channel datasets and NDAttributes; `detectorSpecific`
/// without the per-image members and the rank's own `detflow_*`.
fn detector(src: &Group, instrument: &Group, channels: &[String]) -> hdf5::Result<()> {
    let out = mirror_group(src, instrument, layout::DETECTOR)?;
    for name in src.member_names()? {
        if name == layout::DATA || name == layout::ND_ATTRIBUTES || channels.contains(&name) {
            continue;
        }
        if name != layout::DETECTOR_SPECIFIC {
            copy_object(src, &name, &out)?;
            continue;
        }
        let specific = src.group(&name)?;
        let out_specific = mirror_group(&specific, &out, &name)?;
        for member in specific.member_names()? {
            if !PER_IMAGE.contains(&member.as_str()) && !member.starts_with("detflow_") {
                copy_object(&specific, &member, &out_specific)?;
            }
        }
    }
    Ok(())
}

/// `/entry/sample` with each goniometer axis rebuilt for images `0..number_of_images`:
/// `start + i * increment`, the start taken back from the rank's first angle (that of image
/// `deal.image_id(rank, 0)`). An axis without its `<axis>_increment_set` is left out, noted.
fn goniometer(
    src: &Group,
    dst_entry: &Group,
    deal: Deal,
    rank: u64,
    number_of_images: u64,
    notes: &mut Vec<String>,
) -> hdf5::Result<()> {
    let sample = mirror_group(src, dst_entry, "sample")?;
    for name in src.member_names()? {
        if name != "transformations" {
            copy_object(src, &name, &sample)?;
            continue;
        }
        let axes = src.group(&name)?;
        let out = mirror_group(&axes, &sample, &name)?;
        for member in axes.member_names()? {
            let increment_name = format!("{member}_increment_set");
            if member.ends_with("_increment_set") {
                copy_object(&axes, &member, &out)?;
                continue;
            }
            if !axes.link_exists(&increment_name) {
                notes.push(format!(
                    "goniometer axis {member}: no {increment_name} to rebuild it for every \
                     image from; left out"
                ));
                continue;
            }
            let ds = axes.dataset(&member)?;
            let increment: f64 = axes.dataset(&increment_name)?.read_scalar()?;
            let first: Vec<f64> = ds.read_raw()?;
            let first_id = deal.image_id(rank, 0).unwrap_or(0);
            let start = first.first().copied().unwrap_or(0.0) - first_id as f64 * increment;
            let angles: Vec<f64> = (0..number_of_images.max(1))
                .map(|i| start + i as f64 * increment)
                .collect();
            let rebuilt = out
                .new_dataset::<f64>()
                .shape(angles.len())
                .create(member.as_str())?;
            rebuilt.write(&angles)?;
            copy_attrs(&ds, &rebuilt)?;
        }
    }
    Ok(())
}

/// A group `name` under `parent` in the master with the attributes of `src`.
fn mirror_group(src: &Group, parent: &Group, name: &str) -> hdf5::Result<Group> {
    let out = match parent.group(name) {
        Ok(g) => g,
        Err(_) => parent.create_group(name)?,
    };
    copy_attrs(src, &out)?;
    Ok(out)
}

/// The group `name` under `parent`, made with `@NX_class = nx_class` when it is not there.
pub(crate) fn nx_group(parent: &Group, name: &str, nx_class: &str) -> hdf5::Result<Group> {
    if let Ok(g) = parent.group(name) {
        if g.attr("NX_class").is_err() {
            sink::write_string_attr(&g, "NX_class", nx_class)?;
        }
        return Ok(g);
    }
    let g = parent.create_group(name)?;
    sink::write_string_attr(&g, "NX_class", nx_class)?;
    Ok(g)
}

/// Copy object `name` of `src` (with everything under it and its attributes) to `dst`.
fn copy_object(src: &Group, name: &str, dst: &Group) -> hdf5::Result<()> {
    let cname = CString::new(name).map_err(|e| hdf5::Error::Internal(e.to_string()))?;
    hdf5::sync::sync(|| {
        // SAFETY: both ids are live groups; `cname` is a NUL-terminated name valid for the
        // call; H5P_DEFAULT property lists.
        hdf5::h5check(unsafe {
            H5Ocopy(
                src.id(),
                cname.as_ptr(),
                dst.id(),
                cname.as_ptr(),
                H5P_DEFAULT,
                H5P_DEFAULT,
            )
        })
    })?;
    Ok(())
}

/// Copy every attribute of `src` that `dst` does not have yet, in its own type and shape.
fn copy_attrs(src: &Location, dst: &Location) -> hdf5::Result<()> {
    for name in src.attr_names()? {
        if dst.attr(&name).is_ok() {
            continue;
        }
        let attr = src.attr(&name)?;
        let dtype = attr.dtype()?;
        let space = attr.space()?;
        let mut buf = vec![0u8; dtype.size() * attr.size().max(1)];
        let cname = CString::new(name).map_err(|e| hdf5::Error::Internal(e.to_string()))?;
        hdf5::sync::sync(|| -> hdf5::Result<()> {
            // SAFETY: the ids are live; `buf` holds one element of the attribute's own type
            // per point of its dataspace, which H5Aread fills (with pointers for variable
            // length data, reclaimed below once written).
            hdf5::h5check(unsafe { H5Aread(attr.id(), dtype.id(), buf.as_mut_ptr().cast()) })?;
            // SAFETY: `dst` is a live object; `cname` is NUL-terminated; the type and space
            // ids are live; H5P_DEFAULT property lists. The new id is closed below.
            let made = hdf5::h5check(unsafe {
                H5Acreate2(
                    dst.id(),
                    cname.as_ptr(),
                    dtype.id(),
                    space.id(),
                    H5P_DEFAULT,
                    H5P_DEFAULT,
                )
            });
            let written = made.and_then(|id| {
                // SAFETY: `id` is the attribute just made, of the type `buf` was read in.
                let w = hdf5::h5check(unsafe { H5Awrite(id, dtype.id(), buf.as_ptr().cast()) });
                // SAFETY: `id` is live and closed once.
                unsafe { H5Aclose(id) };
                w
            });
            // SAFETY: `buf` was filled by H5Aread with this type and space; the
            // variable-length pieces HDF5 allocated (if any) are freed once, here.
            unsafe { H5Treclaim(dtype.id(), space.id(), H5P_DEFAULT, buf.as_mut_ptr().cast()) };
            written.map(|_| ())
        })?;
    }
    Ok(())
}
