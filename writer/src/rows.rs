//! Per-frame rows (the performance table, the NDAttributes, and under an image layout the
//! per-image fields and the presence mask), held in memory and written in batches.
//!
//! Each row carries the position it belongs at: the next frame for appended frames, the image
//! number for placed images. A batch is written dataset by dataset in runs of consecutive
//! positions, in an order that makes the last dataset a commit mark: a reader that sees a
//! frame's `NDArrayUniqueId` (or its `image_present` flag) can trust every other row of it.

use std::ops::Range;

use detflow_hal::FrameMeta;
use hdf5::types::{VarLenArray, VarLenUnicode};
use hdf5::{Dataset, H5Type};

/// The NDAttribute datasets (NDFileHDF5's per-frame attributes).
pub(crate) struct AttributeSets {
    pub time_stamp: Dataset,
    pub epics_sec: Dataset,
    pub epics_nsec: Dataset,
    pub unique_id: Dataset,
}

/// The per-image datasets of an image layout (`detectorSpecific/`), see [`crate::layout`].
pub(crate) struct ImageFieldSets {
    pub image_id: Dataset,
    pub real_time: Dataset,
    pub start_time: Dataset,
    pub stop_time: Dataset,
    pub user_data: Dataset,
    pub user_data_json: Dataset,
}

/// What a placed image adds to its row.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageRow {
    pub image_id: u64,
    pub real_time: [u64; 2],
    pub start_time: [u64; 2],
    pub stop_time: [u64; 2],
    pub user_data: Vec<u8>,
    pub user_data_json: String,
}

/// One frame's pending row.
struct Row {
    /// Position in the frame dimension.
    pos: usize,
    ts: f64,
    sec: u32,
    nsec: u32,
    id: i32,
    perf: [f64; 5],
    image: Option<ImageRow>,
}

/// Per-frame datasets and the rows not yet written to them (at most
/// [`crate::stream::ATTRIBUTE_BATCH`]).
pub(crate) struct PerFrame {
    attrs: Option<AttributeSets>,
    /// `performance/timestamp`, `[frames, 5]`.
    performance: Option<Dataset>,
    fields: Option<ImageFieldSets>,
    /// `/entry/data/image_present` (u8, fill 0).
    present: Option<Dataset>,
    /// Extent of the per-frame datasets: one past the highest position stored.
    extent: usize,
    rows: Vec<Row>,
}

impl PerFrame {
    pub fn new(
        attrs: Option<AttributeSets>,
        performance: Option<Dataset>,
        fields: Option<ImageFieldSets>,
        present: Option<Dataset>,
    ) -> Self {
        let mut per_frame = PerFrame {
            attrs,
            performance,
            fields,
            present,
            extent: 0,
            rows: Vec::new(),
        };
        if !per_frame.is_empty() {
            per_frame.rows.reserve(crate::stream::ATTRIBUTE_BATCH);
        }
        per_frame
    }

    fn is_empty(&self) -> bool {
        self.attrs.is_none()
            && self.performance.is_none()
            && self.fields.is_none()
            && self.present.is_none()
    }

    /// Hold the row of the frame at position `pos`.
    pub fn push(&mut self, pos: usize, meta: &FrameMeta, perf: [f64; 5], image: Option<ImageRow>) {
        if self.is_empty() {
            return;
        }
        self.rows.push(Row {
            pos,
            ts: meta.timestamp.epics_seconds(),
            sec: meta.timestamp.sec,
            nsec: meta.timestamp.nsec,
            // areaDetector's uniqueId is an int: it wraps past 2^31 frames.
            id: meta.unique_id as i32,
            perf,
            image: if self.fields.is_some() { image } else { None },
        });
    }

    pub fn batch_full(&self) -> bool {
        self.rows.len() >= crate::stream::ATTRIBUTE_BATCH
    }

    /// Write the pending rows: the performance table first, then the per-image fields, the
    /// NDAttributes with `NDArrayUniqueId` last of them, and the presence mask last of all;
    /// flush each dataset when `flush`. A reader (or a killed writer's file) then never shows
    /// an id or a presence flag whose other rows are missing.
    pub fn store(&mut self, flush: bool) -> hdf5::Result<()> {
        // Appended frames come sorted already (a linear pass); placed images nearly so.
        self.rows.sort_by_key(|r| r.pos);
        let runs = runs(&self.rows);
        let extent = self
            .rows
            .last()
            .map_or(self.extent, |r| self.extent.max(r.pos + 1));
        let rows = &self.rows;
        let w = Batch {
            rows,
            runs: &runs,
            extent,
            flush,
        };
        if let Some(ds) = &self.performance {
            w.put2(ds, |r| r.perf)?;
        }
        if let Some(f) = &self.fields {
            w.put2(&f.real_time, |r| {
                r.image.as_ref().map_or([0; 2], |i| i.real_time)
            })?;
            w.put2(&f.start_time, |r| {
                r.image.as_ref().map_or([0; 2], |i| i.start_time)
            })?;
            w.put2(&f.stop_time, |r| {
                r.image.as_ref().map_or([0; 2], |i| i.stop_time)
            })?;
            w.put1(&f.user_data, |r| {
                VarLenArray::from_slice(r.image.as_ref().map_or(&[][..], |i| &i.user_data))
            })?;
            w.put1(&f.user_data_json, |r| {
                r.image
                    .as_ref()
                    .and_then(|i| i.user_data_json.parse::<VarLenUnicode>().ok())
                    .unwrap_or_default()
            })?;
            w.put1(&f.image_id, |r| r.image.as_ref().map_or(0, |i| i.image_id))?;
        }
        if let Some(a) = &self.attrs {
            w.put1(&a.time_stamp, |r| r.ts)?;
            w.put1(&a.epics_sec, |r| r.sec)?;
            w.put1(&a.epics_nsec, |r| r.nsec)?;
            w.put1(&a.unique_id, |r| r.id)?;
        }
        if let Some(ds) = &self.present {
            w.put1(ds, |_| 1u8)?;
        }
        self.extent = extent;
        self.rows.clear();
        Ok(())
    }
}

/// One batch of sorted rows, written dataset by dataset.
struct Batch<'a> {
    rows: &'a [Row],
    /// Index ranges into `rows` of consecutive positions.
    runs: &'a [Range<usize>],
    extent: usize,
    flush: bool,
}

impl Batch<'_> {
    /// A 1-D dataset: one value per row.
    fn put1<T: H5Type>(&self, ds: &Dataset, value: impl Fn(&Row) -> T) -> hdf5::Result<()> {
        if ds.shape()[0] < self.extent {
            ds.resize(self.extent)?;
        }
        for run in self.runs {
            let values: Vec<T> = self.rows[run.clone()].iter().map(&value).collect();
            let at = self.rows[run.start].pos;
            ds.write_slice(values.as_slice(), at..at + values.len())?;
        }
        if self.flush {
            ds.flush()?;
        }
        Ok(())
    }

    /// A 2-D dataset `(N, K)`: K values per row.
    fn put2<T: H5Type + Copy, const K: usize>(
        &self,
        ds: &Dataset,
        value: impl Fn(&Row) -> [T; K],
    ) -> hdf5::Result<()> {
        if ds.shape()[0] < self.extent {
            ds.resize([self.extent, K])?;
        }
        for run in self.runs {
            let values: Vec<T> = self.rows[run.clone()].iter().flat_map(&value).collect();
            let n = run.len();
            let at = self.rows[run.start].pos;
            let view = ndarray::ArrayView2::from_shape((n, K), &values)
                .map_err(|e| hdf5::Error::Internal(e.to_string()))?;
            ds.write_slice(view, (at..at + n, ..))?;
        }
        if self.flush {
            ds.flush()?;
        }
        Ok(())
    }
}

/// Index ranges of `rows` (sorted by position) whose positions are consecutive.
fn runs(rows: &[Row]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || rows[i].pos != rows[i - 1].pos + 1 {
            if start < i {
                runs.push(start..i);
            }
            start = i;
        }
    }
    runs
}
