//! The few HDF5 calls hdf5-metno has no safe wrapper for, in one audited place.
//!
//! - Image datasets are created from a raw dataset-creation property list, so that a filter is
//!   recorded by id and `cd_values` with `H5Z_FLAG_OPTIONAL` even when this process has no
//!   implementation of it registered (we never run the filter: chunks arrive already encoded).
//! - Frames go in with `H5Dwrite_chunk` (direct chunk write), bypassing the filter pipeline,
//!   and come back out with `H5Dread_chunk` ([`read_chunk`]) for readers that decode chunks
//!   themselves (the replay backend, for filters this HDF5 has no decoder for).
//! - Group attributes are fixed-length, NUL-terminated ASCII strings, as NDFileHDF5 writes them.
//!
//! Every raw call holds `hdf5_sys::LOCK`, the process-wide reentrant lock that hdf5-metno takes
//! around its own calls, so the library is never entered from two threads at once.

use std::ffi::CString;

use hdf5::types::TypeDescriptor;
use hdf5::{Dataset, Dataspace, Datatype, Location, SimpleExtents};
use hdf5_sys::h5a::{H5Aclose, H5Acreate2, H5Awrite};
use hdf5_sys::h5d::{H5Dcreate2, H5Dget_chunk_info_by_coord, H5Dread_chunk, H5Dwrite_chunk};
use hdf5_sys::h5p::{H5P_DEFAULT, H5Pset_filter};
use hdf5_sys::h5s::{H5S_class_t, H5Sclose, H5Screate};
use hdf5_sys::h5t::{H5T_str_t, H5Tset_strpad};
use hdf5_sys::h5z::H5Z_FLAG_OPTIONAL;

/// How a chunked dataset is created.
#[derive(Debug, Clone)]
pub struct ChunkedSpec<'a> {
    /// Element type.
    pub dtype: Datatype,
    /// Current extent (slowest first).
    pub shape: &'a [usize],
    /// Maximum extent per dimension; `None` is unlimited.
    pub max_shape: &'a [Option<usize>],
    /// Chunk dimensions.
    pub chunk: &'a [usize],
    /// Filter id and `cd_values`, recorded as optional.
    pub filter: Option<(u32, &'a [u32])>,
    /// What never-written elements read as; `None` keeps HDF5's default (zeros).
    pub fill: Option<hdf5::types::OwnedDynValue>,
}

/// Create a chunked dataset `name` under `parent` with a raw DCPL.
pub fn create_chunked(
    parent: &Location,
    name: &str,
    spec: &ChunkedSpec<'_>,
) -> hdf5::Result<Dataset> {
    let extents = SimpleExtents::new(
        spec.shape
            .iter()
            .zip(spec.max_shape)
            .map(|(&dim, &max)| hdf5::Extent::new(dim, max)),
    );
    let space = Dataspace::try_new(extents)?;
    let mut dcpl = hdf5::plist::DatasetCreate::build();
    dcpl.chunk(spec.chunk);
    if let Some(fill) = &spec.fill {
        dcpl.fill_value(fill.clone());
    }
    let dcpl = dcpl.finish()?;
    let cname = CString::new(name)
        .map_err(|_| hdf5::Error::Internal(format!("dataset name {name:?} contains NUL")))?;
    let _lock = hdf5_sys::LOCK.lock();
    if let Some((id, cd_values)) = spec.filter {
        // SAFETY: dcpl is a live dataset-creation property list owned by `dcpl`; cd_values
        // points to cd_values.len() initialised c_uints that HDF5 copies before returning.
        hdf5::h5check(unsafe {
            H5Pset_filter(
                dcpl.id(),
                id as _,
                H5Z_FLAG_OPTIONAL,
                cd_values.len(),
                cd_values.as_ptr(),
            )
        })?;
    }
    // SAFETY: every id passed is live and owned by a wrapper that outlives the call; cname is
    // a NUL-terminated string. The returned id is owned by the Dataset built from it.
    let id = hdf5::h5check(unsafe {
        H5Dcreate2(
            parent.id(),
            cname.as_ptr(),
            spec.dtype.id(),
            space.id(),
            H5P_DEFAULT,
            dcpl.id(),
            H5P_DEFAULT,
        )
    })?;
    // SAFETY: `id` is a fresh dataset id that nothing else owns.
    unsafe { hdf5::from_id::<Dataset>(id) }
}

/// Write one already-encoded chunk at element offset `offset` (a multiple of the chunk dims),
/// with filter mask 0: every filter of the dataset's pipeline was applied.
pub fn write_chunk(dataset: &Dataset, offset: &[u64], chunk: &[u8]) -> hdf5::Result<()> {
    let _lock = hdf5_sys::LOCK.lock();
    // SAFETY: the dataset id is live; offset has one entry per dataset dimension (the caller's
    // contract, checked by HDF5 against the rank); chunk is valid for chunk.len() bytes.
    hdf5::h5check(unsafe {
        H5Dwrite_chunk(
            dataset.id(),
            H5P_DEFAULT,
            0,
            offset.as_ptr(),
            chunk.len(),
            chunk.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// Read the stored (still encoded) bytes of the chunk at element offset `offset` (a multiple
/// of the chunk dims, one entry per dataset dimension) into `buf`, resized to the chunk's
/// stored size, bypassing the filter pipeline.
///
/// Returns the chunk's filter mask (bit `i` set: filter `i` of the pipeline was skipped, so
/// `0` means every filter was applied), or `None` if the chunk was never written (`buf` is
/// then empty; the chunk reads as the fill value).
pub fn read_chunk(
    dataset: &Dataset,
    offset: &[u64],
    buf: &mut Vec<u8>,
) -> hdf5::Result<Option<u32>> {
    if offset.len() != dataset.ndim() {
        return Err(hdf5::Error::Internal(format!(
            "chunk offset {offset:?} does not have the dataset's rank {}",
            dataset.ndim()
        )));
    }
    let _lock = hdf5_sys::LOCK.lock();
    let mut mask: u32 = 0;
    let mut addr: hdf5_sys::h5::haddr_t = 0;
    let mut stored: u64 = 0;
    // SAFETY: the dataset id is live; offset has one entry per dataset dimension (checked
    // above); the three out-pointers point to initialised locals of the types HDF5 writes.
    hdf5::h5check(unsafe {
        H5Dget_chunk_info_by_coord(
            dataset.id(),
            offset.as_ptr(),
            &mut mask,
            &mut addr,
            &mut stored,
        )
    })?;
    buf.clear();
    if stored == 0 {
        return Ok(None);
    }
    let stored = usize::try_from(stored).map_err(|_| {
        hdf5::Error::Internal(format!("chunk of {stored} bytes does not fit in memory"))
    })?;
    buf.resize(stored, 0);
    let mut size = buf.len();
    // SAFETY: the dataset id is live; offset has one entry per dataset dimension; `buf` is
    // valid for writes of `size` bytes, which HDF5 does not exceed (it reads nothing if the
    // chunk is larger); `mask` and `size` are initialised locals.
    hdf5::h5check(unsafe {
        H5Dread_chunk(
            dataset.id(),
            H5P_DEFAULT,
            offset.as_ptr(),
            &mut mask,
            buf.as_mut_ptr().cast(),
            &mut size,
        )
    })?;
    if size != buf.len() {
        // The chunk changed size between the two calls (another writer): read nothing stale.
        return Err(hdf5::Error::Internal(format!(
            "chunk at {offset:?} is {size} bytes, not the {} reported",
            buf.len()
        )));
    }
    Ok(Some(mask))
}

/// Mark the file's descriptor close-on-exec. HDF5's default driver opens files without
/// `O_CLOEXEC`, so a child process started while a file is open (a test harness, a daemon
/// running a hook) would inherit the descriptor and its `flock`, and keep the file locked
/// until it exits.
pub fn set_cloexec(file: &hdf5::File) -> hdf5::Result<()> {
    let _lock = hdf5_sys::LOCK.lock();
    let mut handle: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: the file id is live; HDF5 stores a pointer to the driver's handle in `handle`.
    hdf5::h5check(unsafe {
        hdf5_sys::h5f::H5Fget_vfd_handle(file.id(), H5P_DEFAULT, &mut handle)
    })?;
    if handle.is_null() {
        return Ok(());
    }
    // SAFETY: with the default sec2 driver (the only one we open files with) the handle
    // points to the file's `int` descriptor, valid while the file is open.
    let fd = unsafe { *(handle as *const libc::c_int) };
    // SAFETY: fcntl on a descriptor we do not close; F_GETFD/F_SETFD take no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// Write a scalar fixed-length, NUL-terminated ASCII string attribute (size = text + 1), the
/// type NDFileHDF5 uses for `NX_class` and `hostname`.
pub fn write_string_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    let text = CString::new(value)
        .map_err(|_| hdf5::Error::Internal(format!("attribute {name} value contains NUL")))?;
    let cname = CString::new(name)
        .map_err(|_| hdf5::Error::Internal(format!("attribute name {name:?} contains NUL")))?;
    let bytes = text.as_bytes_with_nul();
    let dtype = Datatype::from_descriptor(&TypeDescriptor::FixedAscii(bytes.len()))?;
    let _lock = hdf5_sys::LOCK.lock();
    // SAFETY: dtype is a fresh, unshared string type (from_descriptor copies H5T_C_S1), so
    // it may be modified; NDFileHDF5 writes NUL-terminated strings.
    hdf5::h5check(unsafe { H5Tset_strpad(dtype.id(), H5T_str_t::H5T_STR_NULLTERM) })?;
    // SAFETY: H5Screate takes no pointers; the id is closed below.
    let space = hdf5::h5check(unsafe { H5Screate(H5S_class_t::H5S_SCALAR) })?;
    // SAFETY: loc, dtype and space ids are live; cname is NUL-terminated.
    let attr = hdf5::h5check(unsafe {
        H5Acreate2(
            loc.id(),
            cname.as_ptr(),
            dtype.id(),
            space,
            H5P_DEFAULT,
            H5P_DEFAULT,
        )
    });
    let result = attr.and_then(|attr| {
        // SAFETY: attr is live; bytes holds exactly the dtype's size (text + NUL).
        let written = hdf5::h5check(unsafe { H5Awrite(attr, dtype.id(), bytes.as_ptr().cast()) });
        // SAFETY: attr was created above and is closed exactly once.
        unsafe { H5Aclose(attr) };
        written
    });
    // SAFETY: space was created above and is closed exactly once.
    unsafe { H5Sclose(space) };
    result.map(drop)
}

/// Write a scalar string dataset `name` under `loc`: fixed-length and NUL-terminated like the
/// attributes of [`write_string_attr`], ASCII when the text is, UTF-8 otherwise.
pub fn write_string_dataset(loc: &hdf5::Group, name: &str, value: &str) -> hdf5::Result<Dataset> {
    let text = CString::new(value)
        .map_err(|_| hdf5::Error::Internal(format!("dataset {name} value contains NUL")))?;
    let bytes = text.as_bytes_with_nul();
    let descriptor = if value.is_ascii() {
        TypeDescriptor::FixedAscii(bytes.len())
    } else {
        TypeDescriptor::FixedUnicode(bytes.len())
    };
    let dtype = Datatype::from_descriptor(&descriptor)?;
    {
        let _lock = hdf5_sys::LOCK.lock();
        // SAFETY: dtype is a fresh, unshared string type, so it may be modified.
        hdf5::h5check(unsafe { H5Tset_strpad(dtype.id(), H5T_str_t::H5T_STR_NULLTERM) })?;
    }
    let ds = loc.new_dataset_builder().empty_as(&dtype).create(name)?;
    write_raw(&ds, &dtype, bytes)?;
    Ok(ds)
}

/// Write `bytes` (the whole dataset, in `mem_type`'s layout) to `ds` in one call.
pub fn write_raw(ds: &Dataset, mem_type: &Datatype, bytes: &[u8]) -> hdf5::Result<()> {
    let expected = ds.size() * mem_type.size();
    if bytes.len() != expected {
        return Err(hdf5::Error::Internal(format!(
            "{} bytes for a dataset of {expected}",
            bytes.len()
        )));
    }
    let _lock = hdf5_sys::LOCK.lock();
    // SAFETY: the ids are live; `bytes` holds exactly size() elements of mem_type (checked
    // above), which H5Dwrite reads and does not keep.
    hdf5::h5check(unsafe {
        hdf5_sys::h5d::H5Dwrite(
            ds.id(),
            mem_type.id(),
            hdf5_sys::h5s::H5S_ALL,
            hdf5_sys::h5s::H5S_ALL,
            H5P_DEFAULT,
            bytes.as_ptr().cast(),
        )
    })?;
    Ok(())
}
