//! The image generator: turns [`SimParams`] and a readout (ROI, binning, pixel type) into
//! frames. Everything that does not change from frame to frame is computed once per reset at
//! output resolution (ROI extracted, binned); a frame is then a shifted copy of the background
//! plus the precomputed signal, with only the ramp step, peak heights and sines redone.
//! Frames are written as typed pixels straight into the caller's buffer, row by row with each
//! row's peaks added while it is in cache; a background that fits in bytes is read as bytes.
//!
//! # Model (ADSimDetector §4.3/§4.4, as implemented here)
//!
//! The signal is defined on the full sensor grid, column `j` and row `i` in sensor
//! coordinates, in the pixel type `T`; the ROI is then cut out and `bin_x * bin_y` sensor
//! pixels are summed into each output pixel. Integer pixel arithmetic wraps modulo 2^bits and
//! a real value becomes an integer pixel by truncation toward zero followed by wrapping
//! (`-1.0` is 255 in `u8`). Frame `k` counts frames since the last reset.
//!
//! - Background, when `offset` or `noise` is nonzero: `T(offset + noise * U[0,1))` per sensor
//!   pixel, drawn once per reset, binned; frame `k` shows it circularly shifted by a random
//!   start index. The shift runs over the output frame rather than the full sensor, so the
//!   noise of a ROI stays inside that ROI; it is the same as §4.3 for a full unbinned frame.
//! - LinearRamp: `T(inc * (gain_x * j + gain_y * i)) + k * inc` with `inc = T(gain)`.
//! - Peaks: a template `T(gain * exp(-(dx/width_x)²/2) * exp(-(dy/width_y)²/2))` over ±4
//!   sigma, centred on each grid point and added. With `peak_variation` ≠ 0 each peak of each
//!   frame adds `T(factor * template)`, `factor = 1 + variation/100 * (U - 0.5)`; when binned,
//!   the factor scales the binned sum of the template (one truncation per output pixel).
//! - Sine: `T(gain * (Y[i] + X[j]))`, `X[j] = xsine1 ± xsine2` at time
//!   `(k * width + j) * gain_x / width`, likewise `Y`.
//! - OffsetNoise: the background alone (zeros when offset and noise are 0).

use std::collections::HashMap;

use detflow_hal::PixelType;

use crate::params::{SimMode, SimParams, Sine, SineOperation};
use crate::pixel::Pixel;
use crate::rng;

/// Stream labels under the detector's seed.
const BACKGROUND: u64 = 1;
const FRAMES: u64 = 2;
const SHIFT: u64 = 3;
const PEAK_HEIGHTS: u64 = 4;

/// Which sensor pixels make up the output frame. Values are checked by the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readout {
    /// Sensor width (`MaxSizeX`).
    pub sensor_width: usize,
    /// Sensor height (`MaxSizeY`).
    pub sensor_height: usize,
    /// First sensor column of the ROI.
    pub min_x: usize,
    /// First sensor row of the ROI.
    pub min_y: usize,
    /// Horizontal binning, at least 1.
    pub bin_x: usize,
    /// Vertical binning, at least 1.
    pub bin_y: usize,
    /// Output columns (`roi size_x / bin_x`).
    pub width: usize,
    /// Output rows.
    pub height: usize,
}

impl Readout {
    /// Output pixels per frame.
    pub(crate) fn pixels(&self) -> usize {
        self.width * self.height
    }

    /// The output plane whose pixels are the wrapping sums of `f(row, column)` over their
    /// `bin_x * bin_y` sensor pixels.
    fn bin_plane<T: Pixel>(&self, f: impl Fn(usize, usize) -> T) -> Vec<T> {
        let mut out = vec![T::default(); self.pixels()];
        for (oi, row) in out.chunks_exact_mut(self.width).enumerate() {
            for i in self.min_y + oi * self.bin_y..self.min_y + (oi + 1) * self.bin_y {
                for (oj, o) in row.iter_mut().enumerate() {
                    let j0 = self.min_x + oj * self.bin_x;
                    for j in j0..j0 + self.bin_x {
                        *o = o.wadd(f(i, j));
                    }
                }
            }
        }
        out
    }
}

/// The frames of one pixel type, precomputed for one set of parameters and one readout.
#[derive(Debug)]
pub(crate) struct Plan<T> {
    readout: Readout,
    seed: u64,
    /// Binned background, empty when offset and noise are 0.
    background: Vec<T>,
    /// The background as bytes, when `T` is a wider integer and every value fits in 0..=255
    /// (the usual noise): a frame then reads half or less of the memory. Else empty.
    background_bytes: Vec<u8>,
    /// Binned signal that is the same in every frame, empty when there is none.
    signal: Vec<T>,
    /// LinearRamp: what frame `k` adds to every output pixel, per `k`.
    ramp_step: Option<T>,
    /// Peaks whose height varies per frame.
    peaks: Option<VariedPeaks>,
    /// Sines, recomputed every frame.
    sine: Option<SinePlan>,
    /// A frame's pixels, for a caller buffer not aligned for `T` (empty until one comes).
    scratch: Vec<T>,
    /// Varied peaks: each placement's converted rows in the frame being rendered, one per
    /// distinct patch row, at [`VariedPeaks::cache_at`] (scratch).
    peak_rows: Vec<T>,
}

/// A peak template binned for one sub-bin phase, at output resolution.
#[derive(Debug)]
struct Patch {
    width: usize,
    /// Row-major sums of the template's pixel values (as `T`, then as f64) per output pixel.
    values: Vec<f64>,
    /// Per row, the columns `lo..hi` outside which every value is 0 (the template's ±4 sigma
    /// corners truncate to 0 in integer types): adding those changes no integer pixel.
    spans: Vec<(usize, usize)>,
    /// The largest `|value|`, to know when a scaled value stays within `i32`.
    max_abs: f64,
    /// No value is negative (nor NaN).
    non_negative: bool,
    /// Per row, the first row with the same values (itself if none): a peak's row is then
    /// converted once per frame and its copies added (a Gaussian is symmetric).
    first_same: Vec<usize>,
    /// Per row, the index of its distinct row (rows with the same values share one).
    distinct: Vec<usize>,
    /// Distinct rows.
    distinct_rows: usize,
}

impl Patch {
    fn new(width: usize, values: Vec<f64>) -> Patch {
        let spans = values
            .chunks_exact(width)
            .map(|row| {
                let lo = row.iter().position(|&v| v != 0.0).unwrap_or(0);
                let hi = row.iter().rposition(|&v| v != 0.0).map_or(0, |i| i + 1);
                (lo, hi.max(lo))
            })
            .collect();
        // NaN (never from an integer template) makes max_abs NaN: no fast path then.
        let max_abs = values.iter().fold(0.0f64, |m, v| {
            if v.is_nan() || v.abs() > m {
                v.abs()
            } else {
                m
            }
        });
        let non_negative = values.iter().all(|&v| v >= 0.0);
        let mut seen: HashMap<Vec<u64>, (usize, usize)> = HashMap::new();
        let (mut first_same, mut distinct) = (Vec::new(), Vec::new());
        for (r, row) in values.chunks_exact(width).enumerate() {
            let next = seen.len();
            let bits = row.iter().map(|v| v.to_bits()).collect();
            let &mut (first, index) = seen.entry(bits).or_insert((r, next));
            first_same.push(first);
            distinct.push(index);
        }
        Patch {
            width,
            values,
            spans,
            max_abs,
            non_negative,
            first_same,
            distinct,
            distinct_rows: seen.len(),
        }
    }
}

/// One visible peak: which patch, and the part of it inside the output frame.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Index in the peak grid, row-major; selects the peak's random height.
    grid_index: u64,
    patch: usize,
    /// Output column and row of the first visible patch pixel.
    x: usize,
    y: usize,
    /// Patch column and row of the first visible pixel.
    col: usize,
    row: usize,
    /// Visible columns and rows.
    width: usize,
    height: usize,
}

#[derive(Debug)]
struct VariedPeaks {
    patches: Vec<Patch>,
    placements: Vec<Placement>,
    variation: f64,
    /// Per output row, the placements crossing it: (index, patch row - placement's first).
    rows: Vec<Vec<(usize, usize)>>,
    /// Each placement's height factor in the frame being rendered (scratch).
    factors: Vec<f64>,
    /// Where each placement's converted rows start in [`Plan::peak_rows`]; the last entry is
    /// the length.
    cache_at: Vec<usize>,
}

#[derive(Debug)]
struct SinePlan {
    gain: f64,
    x_time_scale: f64,
    y_time_scale: f64,
    sensor_width: u64,
    sensor_height: u64,
    x_waves: (Sine, Sine, SineOperation),
    y_waves: (Sine, Sine, SineOperation),
    /// `X` of the ROI's used columns for the current frame (scratch, kept to avoid allocating).
    x: Vec<f64>,
    /// `Y` of the ROI's used rows for the current frame.
    y: Vec<f64>,
}

fn combine((a, b, op): &(Sine, Sine, SineOperation), t: f64) -> f64 {
    match op {
        SineOperation::Add => a.at(t) + b.at(t),
        SineOperation::Multiply => a.at(t) * b.at(t),
    }
}

impl<T: Pixel> Plan<T> {
    /// Precomputes everything that does not change between frames.
    pub(crate) fn build(params: &SimParams, readout: Readout, seed: u64) -> Self {
        let mut plan = Plan {
            readout,
            seed,
            background: Vec::new(),
            background_bytes: Vec::new(),
            signal: Vec::new(),
            ramp_step: None,
            peaks: None,
            sine: None,
            scratch: Vec::new(),
            peak_rows: Vec::new(),
        };
        if params.offset != 0.0 || params.noise != 0.0 {
            let key = rng::derive(seed, BACKGROUND);
            let w = readout.sensor_width as u64;
            plan.background = readout.bin_plane(|i, j| {
                let u = rng::unit(rng::at(key, i as u64 * w + j as u64));
                T::from_f64(params.offset + params.noise * u)
            });
        }
        if T::ZERO_ADDS_NOTHING && T::SIZE > 1 {
            let bytes: Option<Vec<u8>> = plan
                .background
                .iter()
                .map(|v| u8::try_from(v.to_f64() as i64).ok())
                .collect();
            plan.background_bytes = bytes.unwrap_or_default();
        }
        match params.mode {
            SimMode::LinearRamp => plan.build_ramp(params),
            SimMode::Peaks => plan.build_peaks(params),
            SimMode::Sine => plan.build_sine(params),
            SimMode::OffsetNoise => {}
        }
        plan
    }

    fn build_ramp(&mut self, p: &SimParams) {
        let r = self.readout;
        let inc = T::from_f64(p.gain);
        let inc_f = inc.to_f64();
        self.signal =
            r.bin_plane(|i, j| T::from_f64(inc_f * (p.gain_x * j as f64 + p.gain_y * i as f64)));
        self.ramp_step = Some(inc.wmul((r.bin_x * r.bin_y) as u64));
    }

    fn build_peaks(&mut self, p: &SimParams) {
        let r = self.readout;
        // Full template widths: ±4 sigma, at most one less than the sensor.
        let tw = (8 * u64::from(p.peak_width_x) + 1).min(r.sensor_width as u64 - 1) as usize;
        let th = (8 * u64::from(p.peak_width_y) + 1).min(r.sensor_height as u64 - 1) as usize;
        if tw == 0 || th == 0 || p.peak_num_x == 0 || p.peak_num_y == 0 {
            return;
        }
        let gauss = |d: usize, half: usize, width: u32| {
            let z = (d as f64 - half as f64) / f64::from(width);
            (-0.5 * z * z).exp()
        };
        let gx: Vec<f64> = (0..tw).map(|l| gauss(l, tw / 2, p.peak_width_x)).collect();
        let template: Vec<f64> = (0..th)
            .flat_map(|k| {
                let gy = gauss(k, th / 2, p.peak_width_y);
                gx.iter()
                    .map(move |&g| T::from_f64(p.gain * gy * g).to_f64())
            })
            .collect();

        let mut patches: Vec<Patch> = Vec::new();
        let mut by_phase: HashMap<(usize, usize), usize> = HashMap::new();
        let mut placements = Vec::new();
        let (bx, by) = (r.bin_x as i64, r.bin_y as i64);
        for gr in 0..i64::from(p.peak_num_y) {
            for gc in 0..i64::from(p.peak_num_x) {
                // Template origin relative to the ROI, in sensor pixels.
                let cx = i64::from(p.peak_start_x) + gc * i64::from(p.peak_step_x);
                let cy = i64::from(p.peak_start_y) + gr * i64::from(p.peak_step_y);
                let rx = cx - (tw / 2) as i64 - r.min_x as i64;
                let ry = cy - (th / 2) as i64 - r.min_y as i64;
                let phase = (rx.rem_euclid(bx) as usize, ry.rem_euclid(by) as usize);
                let (ox, oy) = (rx.div_euclid(bx), ry.div_euclid(by));
                let pw = (phase.0 + tw).div_ceil(r.bin_x);
                let ph = (phase.1 + th).div_ceil(r.bin_y);
                let (x0, x1) = (ox.max(0), (ox + pw as i64).min(r.width as i64));
                let (y0, y1) = (oy.max(0), (oy + ph as i64).min(r.height as i64));
                if x0 >= x1 || y0 >= y1 {
                    continue;
                }
                let patch = *by_phase.entry(phase).or_insert_with(|| {
                    let mut values = vec![0.0; pw * ph];
                    for k in 0..th {
                        let row = (phase.1 + k) / r.bin_y;
                        for l in 0..tw {
                            values[row * pw + (phase.0 + l) / r.bin_x] += template[k * tw + l];
                        }
                    }
                    patches.push(Patch::new(pw, values));
                    patches.len() - 1
                });
                placements.push(Placement {
                    grid_index: (gr * i64::from(p.peak_num_x) + gc) as u64,
                    patch,
                    x: x0 as usize,
                    y: y0 as usize,
                    col: (x0 - ox) as usize,
                    row: (y0 - oy) as usize,
                    width: (x1 - x0) as usize,
                    height: (y1 - y0) as usize,
                });
            }
        }

        if p.peak_variation == 0.0 {
            let mut signal = vec![T::default(); r.pixels()];
            for pl in &placements {
                let patch = &patches[pl.patch];
                for dy in 0..pl.height {
                    let src = &patch.values[(pl.row + dy) * patch.width + pl.col..][..pl.width];
                    let dst = &mut signal[(pl.y + dy) * r.width + pl.x..][..pl.width];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = d.wadd(T::from_f64(v));
                    }
                }
            }
            self.signal = signal;
        } else {
            let mut rows = vec![Vec::new(); r.height];
            for (i, pl) in placements.iter().enumerate() {
                for dy in 0..pl.height {
                    rows[pl.y + dy].push((i, dy));
                }
            }
            let mut cache_at = vec![0];
            for pl in &placements {
                let patch = &patches[pl.patch];
                cache_at.push(cache_at[cache_at.len() - 1] + patch.distinct_rows * patch.width);
            }
            self.peak_rows = vec![T::default(); cache_at[cache_at.len() - 1]];
            self.peaks = Some(VariedPeaks {
                cache_at,
                factors: vec![0.0; placements.len()],
                patches,
                placements,
                variation: p.peak_variation,
                rows,
            });
        }
    }

    fn build_sine(&mut self, p: &SimParams) {
        let r = self.readout;
        let x_waves = (p.x_sine1, p.x_sine2, p.x_sine_operation);
        let y_waves = (p.y_sine1, p.y_sine2, p.y_sine_operation);
        self.sine = Some(SinePlan {
            gain: p.gain,
            x_time_scale: p.gain_x / r.sensor_width as f64,
            y_time_scale: p.gain_y / r.sensor_height as f64,
            sensor_width: r.sensor_width as u64,
            sensor_height: r.sensor_height as u64,
            x_waves,
            y_waves,
            x: vec![0.0; r.width * r.bin_x],
            y: vec![0.0; r.height * r.bin_y],
        });
    }

    /// Writes frame `k` (frames since the reset) into `dst`, exactly `pixels() * T::SIZE`
    /// bytes.
    #[cfg(test)]
    pub(crate) fn render(&mut self, k: u64, dst: &mut [u8]) {
        self.render_bands(k, dst, &mut |_, _| {});
    }

    /// [`render`](Self::render), calling `on_band(offset, bytes)` with each band of rows
    /// (about [`BAND_BYTES`]) as soon as it is final, in order, while it is in cache.
    pub(crate) fn render_bands(
        &mut self,
        k: u64,
        dst: &mut [u8],
        on_band: &mut dyn FnMut(usize, &mut [u8]),
    ) {
        debug_assert_eq!(dst.len(), self.readout.pixels() * T::SIZE);
        match bytemuck::try_cast_slice_mut::<u8, T>(dst) {
            Ok(pixels) => self.render_pixels(k, pixels, &mut |p0, band| {
                on_band(p0 * T::SIZE, bytemuck::cast_slice_mut(band));
            }),
            Err(_) => {
                // Not aligned for T: render aside, then copy the bytes.
                let mut pixels = std::mem::take(&mut self.scratch);
                pixels.resize(self.readout.pixels(), T::default());
                self.render_pixels(k, &mut pixels, &mut |_, _| {});
                dst.copy_from_slice(bytemuck::cast_slice(&pixels));
                self.scratch = pixels;
                on_band(0, dst);
            }
        }
    }

    /// Frame `k` into `dst`, one pixel per element, band by band: each band of rows gets its
    /// background, peaks and sines while it is in cache, then goes to `on_band` with the index
    /// of its first pixel.
    fn render_pixels(&mut self, k: u64, dst: &mut [T], on_band: &mut dyn FnMut(usize, &mut [T])) {
        let r = self.readout;
        let frame_key = rng::derive(rng::derive(self.seed, FRAMES), k);
        let shift = if self.background.is_empty() {
            0
        } else {
            let bits = rng::at(rng::derive(frame_key, SHIFT), 0);
            rng::below(bits, r.pixels() as u64) as usize
        };
        if let Some(peaks) = &mut self.peaks {
            let key = rng::derive(frame_key, PEAK_HEIGHTS);
            for (f, pl) in peaks.factors.iter_mut().zip(&peaks.placements) {
                let u = rng::unit(rng::at(key, pl.grid_index));
                *f = 1.0 + peaks.variation / 100.0 * (u - 0.5);
            }
        }
        if let Some(s) = &mut self.sine {
            for (n, x) in s.x.iter_mut().enumerate() {
                let counter = k.wrapping_mul(s.sensor_width) + (r.min_x + n) as u64;
                *x = combine(&s.x_waves, counter as f64 * s.x_time_scale);
            }
            for (n, y) in s.y.iter_mut().enumerate() {
                let counter = k.wrapping_mul(s.sensor_height) + (r.min_y + n) as u64;
                *y = combine(&s.y_waves, counter as f64 * s.y_time_scale);
            }
        }
        let base = Base {
            background: &self.background,
            bytes: &self.background_bytes,
            shift,
            signal: &self.signal,
            add: self.ramp_step.map_or(T::default(), |s| s.wmul(k)),
        };
        let band_rows = (BAND_BYTES / (r.width * T::SIZE).max(1)).max(1);
        for (b, band) in dst.chunks_mut(band_rows * r.width).enumerate() {
            let y0 = b * band_rows;
            match &self.peaks {
                None => base.fill(band, y0 * r.width),
                Some(peaks) => {
                    // Row by row, so that the peaks are added while the row is in L1.
                    for (dy, row) in band.chunks_exact_mut(r.width).enumerate() {
                        let y = y0 + dy;
                        base.fill(row, y * r.width);
                        for &(i, since_first) in &peaks.rows[y] {
                            let pl = &peaks.placements[i];
                            let patch = &peaks.patches[pl.patch];
                            let cache =
                                &mut self.peak_rows[peaks.cache_at[i]..peaks.cache_at[i + 1]];
                            add_peak_row(row, pl, since_first, patch, peaks.factors[i], cache);
                        }
                    }
                }
            }
            if let Some(s) = &self.sine {
                add_sines::<T>(s, r, y0, band);
            }
            on_band(y0 * r.width, band);
        }
    }
}

/// Bytes of a band of rows the frame is rendered in: well within L1, so that a band's
/// peaks, sines and checksums find it there.
const BAND_BYTES: usize = 16 * 1024;

/// `dst[i][j] += sum over the bin of T(gain * (Y[i] + X[j]))`, for the rows from `y0` on.
#[inline]
fn add_sines<T: Pixel>(s: &SinePlan, r: Readout, y0: usize, dst: &mut [T]) {
    for (oi, row) in (y0..).zip(dst.chunks_exact_mut(r.width)) {
        let ys = &s.y[oi * r.bin_y..][..r.bin_y];
        if r.bin_x == 1 && r.bin_y == 1 {
            let y = ys[0];
            for (d, &x) in row.iter_mut().zip(&s.x) {
                *d = d.wadd(T::from_f64(s.gain * (y + x)));
            }
            continue;
        }
        for (d, xs) in row.iter_mut().zip(s.x.chunks_exact(r.bin_x)) {
            let mut acc = *d;
            for &y in ys {
                for &x in xs {
                    acc = acc.wadd(T::from_f64(s.gain * (y + x)));
                }
            }
            *d = acc;
        }
    }
}

/// The part of every frame that streams through memory once:
/// `dst[p] = background[(p + shift) % n] + signal[p] + add`, with empty planes left out.
struct Base<'a, T> {
    background: &'a [T],
    /// The background as bytes, or empty.
    bytes: &'a [u8],
    shift: usize,
    signal: &'a [T],
    add: T,
}

impl<T: Pixel> Base<'_, T> {
    /// Pixels `p0..p0 + dst.len()` of the frame into `dst`.
    fn fill(&self, dst: &mut [T], p0: usize) {
        let len = dst.len();
        if self.background.is_empty() {
            match self.signal {
                [] => dst.fill(self.add),
                signal => sum2(dst, &signal[p0..p0 + len], self.add),
            }
            return;
        }
        // The shifted background wraps around at most once within the span.
        let n = self.background.len();
        let q = (p0 + self.shift) % n;
        let first = len.min(n - q);
        let (head, tail) = dst.split_at_mut(first);
        self.part(head, q, p0);
        self.part(tail, 0, p0 + first);
    }

    /// `dst` from the background at `q`, the signal at `p`.
    fn part(&self, dst: &mut [T], q: usize, p: usize) {
        let len = dst.len();
        match self.signal {
            [] if !self.bytes.is_empty() && self.add == T::default() => {
                // Integers only (the bytes exist for them): adding zero is nothing.
                for (d, &b) in dst.iter_mut().zip(&self.bytes[q..q + len]) {
                    *d = T::from_i64(i64::from(b));
                }
            }
            [] => sum2(dst, &self.background[q..q + len], self.add),
            signal => sum3(
                dst,
                &self.background[q..q + len],
                &signal[p..p + len],
                self.add,
            ),
        }
    }
}

#[inline]
fn sum2<T: Pixel>(dst: &mut [T], a: &[T], add: T) {
    if T::ZERO_ADDS_NOTHING && add == T::default() {
        dst.copy_from_slice(a);
        return;
    }
    for (d, &x) in dst.iter_mut().zip(a) {
        *d = x.wadd(add);
    }
}

#[inline]
fn sum3<T: Pixel>(dst: &mut [T], a: &[T], b: &[T], add: T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = x.wadd(y).wadd(add);
    }
}

/// Row `dy` of one peak of height `factor`: `row[x] += T(factor * value)` over its visible
/// part. For integer pixels, the columns where the patch is 0 are left out, and within
/// `i32` the conversion takes a path that vectorises: the same values. The converted row is
/// kept in `cache` (the placement's distinct rows); a later row with the same values, once
/// its first is visible and so converted in this frame, adds the kept row instead.
fn add_peak_row<T: Pixel>(
    row: &mut [T],
    pl: &Placement,
    dy: usize,
    patch: &Patch,
    factor: f64,
    cache: &mut [T],
) {
    let prow = pl.row + dy;
    let (mut lo, mut hi) = (pl.col, pl.col + pl.width);
    if T::ZERO_ADDS_NOTHING {
        let (zlo, zhi) = patch.spans[prow];
        (lo, hi) = (lo.max(zlo), hi.min(zhi));
        if lo >= hi {
            return;
        }
    }
    let start = pl.x + (lo - pl.col);
    let dst = &mut row[start..start + (hi - lo)];
    let kept = &mut cache[patch.distinct[prow] * patch.width..][lo..hi];
    let first = patch.first_same[prow];
    if first != prow && first >= pl.row {
        for (d, &k) in dst.iter_mut().zip(kept.iter()) {
            *d = d.wadd(k);
        }
        return;
    }
    let src = &patch.values[prow * patch.width + lo..prow * patch.width + hi];
    // False for NaN or infinite factors or values: they take the general path.
    let small = factor.abs() * patch.max_abs < 2_147_483_647.0;
    if small && T::ZERO_ADDS_NOTHING && patch.non_negative && factor >= 0.0 {
        // The usual case: every product in 0..2^31, truncation is the floor.
        scale_add(dst, kept, src, factor, |v| T::from_i64(floor_small(v)));
    } else if small && T::ZERO_ADDS_NOTHING {
        // |factor * v| <= |factor| * max_abs < 2^31 for every v of the patch (rounding is
        // monotonic), both finite, as `small` says.
        scale_add(dst, kept, src, factor, |v| T::from_i64(trunc_small(v)));
    } else {
        scale_add(dst, kept, src, factor, T::from_f64);
    }
}

/// `x` truncated toward zero, for finite `|x| < 2^51`: the same integer as `x as i64`, by
/// f64 additions, a comparison and a bit cast, which vectorise where the saturating
/// conversion does not.
#[inline(always)]
fn trunc_small(x: f64) -> i64 {
    // 2^52: a + 2^52 has a unit last place, so the sum is a rounded to an integer, exactly.
    const UNIT: f64 = 4_503_599_627_370_496.0;
    let a = x.abs();
    let nearest = (a + UNIT) - UNIT;
    let floor = if nearest > a { nearest - 1.0 } else { nearest };
    // floor + 2^52 is exact; its bits count up by one per integer from those of 2^52.
    let n = (floor + UNIT).to_bits() as i64 - UNIT.to_bits() as i64;
    if x < 0.0 { -n } else { n }
}

/// `x` rounded down, for finite `0 <= x < 2^51`: [`trunc_small`] without the signs.
#[inline(always)]
fn floor_small(x: f64) -> i64 {
    const UNIT: f64 = 4_503_599_627_370_496.0;
    // The bits of x + 2^52 are those of 2^52 plus x rounded to the nearest integer.
    let sum = x + UNIT;
    let rounded_up = i64::from(sum - UNIT > x);
    sum.to_bits() as i64 - UNIT.to_bits() as i64 - rounded_up
}

/// `dst[p] += convert(factor * src[p])`, keeping each converted value in `kept[p]`.
#[inline(always)]
fn scale_add<T: Pixel>(
    dst: &mut [T],
    kept: &mut [T],
    src: &[f64],
    factor: f64,
    convert: impl Fn(f64) -> T,
) {
    for ((d, k), &v) in dst.iter_mut().zip(kept.iter_mut()).zip(src) {
        let t = convert(factor * v);
        *k = t;
        *d = d.wadd(t);
    }
}

/// A [`Plan`] for whichever pixel type is configured.
#[derive(Debug)]
pub(crate) enum AnyPlan {
    U8(Plan<u8>),
    I8(Plan<i8>),
    U16(Plan<u16>),
    I16(Plan<i16>),
    U32(Plan<u32>),
    I32(Plan<i32>),
    F32(Plan<f32>),
    F64(Plan<f64>),
}

impl AnyPlan {
    /// Precomputes the frames of `pixel_type` for `params` and `readout`.
    pub(crate) fn build(
        pixel_type: PixelType,
        params: &SimParams,
        readout: Readout,
        seed: u64,
    ) -> Self {
        match pixel_type {
            PixelType::U8 => AnyPlan::U8(Plan::build(params, readout, seed)),
            PixelType::I8 => AnyPlan::I8(Plan::build(params, readout, seed)),
            PixelType::U16 => AnyPlan::U16(Plan::build(params, readout, seed)),
            PixelType::I16 => AnyPlan::I16(Plan::build(params, readout, seed)),
            PixelType::U32 => AnyPlan::U32(Plan::build(params, readout, seed)),
            PixelType::I32 => AnyPlan::I32(Plan::build(params, readout, seed)),
            PixelType::F32 => AnyPlan::F32(Plan::build(params, readout, seed)),
            PixelType::F64 => AnyPlan::F64(Plan::build(params, readout, seed)),
        }
    }

    /// Writes frame `k` into `dst` (exactly one frame of bytes), handing each band of rows
    /// to `on_band(offset, bytes)` as soon as it is final.
    pub(crate) fn render_bands(
        &mut self,
        k: u64,
        dst: &mut [u8],
        on_band: &mut dyn FnMut(usize, &mut [u8]),
    ) {
        match self {
            AnyPlan::U8(p) => p.render_bands(k, dst, on_band),
            AnyPlan::I8(p) => p.render_bands(k, dst, on_band),
            AnyPlan::U16(p) => p.render_bands(k, dst, on_band),
            AnyPlan::I16(p) => p.render_bands(k, dst, on_band),
            AnyPlan::U32(p) => p.render_bands(k, dst, on_band),
            AnyPlan::I32(p) => p.render_bands(k, dst, on_band),
            AnyPlan::F32(p) => p.render_bands(k, dst, on_band),
            AnyPlan::F64(p) => p.render_bands(k, dst, on_band),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(w: usize, h: usize) -> Readout {
        Readout {
            sensor_width: w,
            sensor_height: h,
            min_x: 0,
            min_y: 0,
            bin_x: 1,
            bin_y: 1,
            width: w,
            height: h,
        }
    }

    /// Frame `k` of a fresh plan, as pixels.
    fn frame<T: Pixel>(p: &SimParams, r: Readout, seed: u64, k: u64) -> Vec<T> {
        let mut plan = Plan::<T>::build(p, r, seed);
        let mut bytes = vec![0u8; r.pixels() * T::SIZE];
        plan.render(k, &mut bytes);
        bytes
            .chunks_exact(T::SIZE)
            .map(bytemuck::pod_read_unaligned)
            .collect()
    }

    #[test]
    fn linear_ramp_is_base_plus_k_increments_and_wraps() {
        let p = SimParams {
            gain: 3.7, // truncated to inc = 3 for integers
            gain_x: 2.0,
            gain_y: 5.0,
            ..SimParams::default()
        };
        let r = full(300, 200);
        for k in [0u64, 1, 7, 40_000] {
            let f = frame::<u16>(&p, r, 0, k);
            for i in 0..200usize {
                for j in 0..300usize {
                    let inc = 3u64;
                    let want = (inc * (2 * j as u64 + 5 * i as u64) + k * inc) % 65_536;
                    assert_eq!(
                        u64::from(f[i * 300 + j]),
                        want,
                        "pixel ({i},{j}) of frame {k}"
                    );
                }
            }
        }
        // u8 cycles visibly.
        let f = frame::<u8>(&SimParams::default(), full(300, 1), 0, 0);
        assert_eq!(f[255], 255);
        assert_eq!(f[256], 0);
        // Floats do not truncate the gain.
        let f = frame::<f32>(&p, full(4, 4), 0, 2);
        assert_eq!(f[5], 3.7 * (2.0 + 5.0) + 2.0 * 3.7, "pixel (1, 1)");
    }

    #[test]
    fn peak_maximum_is_the_gain_at_the_centre() {
        let p = SimParams {
            mode: SimMode::Peaks,
            gain: 1000.0,
            peak_start_x: 100,
            peak_start_y: 60,
            peak_num_x: 3,
            peak_num_y: 2,
            peak_step_x: 200,
            peak_step_y: 180,
            ..SimParams::default()
        };
        let r = full(640, 480);
        let f = frame::<u16>(&p, r, 0, 5);
        let max = *f.iter().max().unwrap();
        assert_eq!(max, 1000);
        for (gr, gc) in [(0, 0), (0, 2), (1, 1)] {
            let (x, y) = (100 + 200 * gc, 60 + 180 * gr);
            assert_eq!(f[y * 640 + x], 1000, "peak ({gr},{gc})");
            assert!(f[y * 640 + x + 3] < 1000);
        }
        // 2 sigma away along x: 1000 * exp(-2), truncated.
        assert_eq!(f[60 * 640 + 120], (1000.0 * (-2.0f64).exp()) as u16);
        // Far from every peak (beyond 4 sigma) nothing is added.
        assert_eq!(f[300 * 640 + 200], 0);
        // The gains of the ramp do not affect peaks.
        let q = SimParams {
            gain_x: 7.0,
            gain_y: 3.0,
            ..p.clone()
        };
        assert_eq!(frame::<u16>(&q, r, 0, 5), f);
    }

    #[test]
    fn peak_variation_scales_each_peak_within_bounds() {
        let p = SimParams {
            mode: SimMode::Peaks,
            gain: 10_000.0,
            peak_start_x: 50,
            peak_start_y: 100,
            peak_num_x: 4,
            peak_step_x: 100,
            peak_variation: 20.0,
            ..SimParams::default()
        };
        let r = full(400, 200);
        let mut heights = Vec::new();
        for k in 0..5 {
            let f = frame::<f64>(&p, r, 9, k);
            for c in 0..4 {
                let h = f[100 * 400 + 50 + 100 * c];
                assert!((9_000.0..11_000.0).contains(&h), "frame {k} peak {c}: {h}");
                heights.push(h);
            }
        }
        heights.sort_by(f64::total_cmp);
        heights.dedup();
        assert_eq!(
            heights.len(),
            20,
            "each peak of each frame has its own height"
        );
    }

    #[test]
    fn offset_without_noise_is_constant_and_noise_stays_in_its_range() {
        let p = SimParams {
            mode: SimMode::OffsetNoise,
            offset: 42.9,
            ..SimParams::default()
        };
        for k in 0..3 {
            assert!(
                frame::<u16>(&p, full(64, 32), 1, k)
                    .iter()
                    .all(|&v| v == 42)
            );
            assert!(
                frame::<f32>(&p, full(64, 32), 1, k)
                    .iter()
                    .all(|&v| v == 42.9f32)
            );
        }
        let p = SimParams { noise: 10.0, ..p };
        let f = frame::<f64>(&p, full(64, 32), 1, 0);
        assert!(f.iter().all(|&v| (42.9..52.9).contains(&v)));
        let mean = f.iter().sum::<f64>() / f.len() as f64;
        assert!((mean - 47.9).abs() < 0.5, "mean {mean}");
        // OffsetNoise with neither is all zeros.
        let zero = SimParams {
            mode: SimMode::OffsetNoise,
            ..SimParams::default()
        };
        assert!(
            frame::<i32>(&zero, full(8, 8), 1, 3)
                .iter()
                .all(|&v| v == 0)
        );
    }

    #[test]
    fn noise_frames_are_shifted_copies_of_one_background() {
        let p = SimParams {
            mode: SimMode::OffsetNoise,
            noise: 1000.0,
            ..SimParams::default()
        };
        let r = full(50, 40);
        let f0 = frame::<u32>(&p, r, 3, 0);
        let f1 = frame::<u32>(&p, r, 3, 1);
        assert_ne!(f0, f1);
        let shift = (0..f0.len())
            .find(|&s| (0..f0.len()).all(|q| f1[q] == f0[(q + s) % f0.len()]))
            .expect("frame 1 is a rotation of frame 0");
        assert_ne!(shift, 0);
    }

    #[test]
    fn background_is_added_to_the_ramp() {
        let plain = SimParams::default();
        let with_bg = SimParams {
            offset: 100.0,
            noise: 5.0,
            ..SimParams::default()
        };
        let r = full(32, 16);
        let a = frame::<i16>(&plain, r, 0, 2);
        let b = frame::<i16>(&with_bg, r, 0, 2);
        for (x, y) in a.iter().zip(&b) {
            assert!((100..105).contains(&(y - x)), "{y} - {x}");
        }
    }

    #[test]
    fn sine_follows_the_counters() {
        let p = SimParams {
            mode: SimMode::Sine,
            gain: 100.0,
            gain_x: 1.0,
            gain_y: 0.5,
            x_sine_operation: SineOperation::Multiply,
            x_sine2: Sine {
                amplitude: 2.0,
                frequency: 0.3,
                phase_deg: 10.0,
            },
            ..SimParams::default()
        };
        let (w, h) = (40usize, 30usize);
        let s = |a: f64, f: f64, ph: f64, t: f64| {
            a * (std::f64::consts::TAU * (t * f + ph / 360.0)).sin()
        };
        for k in [0u64, 3] {
            let f = frame::<f64>(&p, full(w, h), 0, k);
            for (i, j) in [(0usize, 0usize), (7, 13), (29, 39)] {
                let tx = (k * w as u64 + j as u64) as f64 * 1.0 / w as f64;
                let ty = (k * h as u64 + i as u64) as f64 * 0.5 / h as f64;
                let x = s(1.0, 1.0, 0.0, tx) * s(2.0, 0.3, 10.0, tx);
                let y = s(1.0, 1.0, 0.0, ty) + s(1.0, 2.0, 90.0, ty);
                let want = 100.0 * (y + x);
                assert!((f[i * w + j] - want).abs() < 1e-9, "({i},{j}) frame {k}");
            }
        }
        // Integer pixels truncate per pixel.
        let f = frame::<i16>(&p, full(w, h), 0, 1);
        let g = frame::<f64>(&p, full(w, h), 0, 1);
        assert!(f.iter().zip(&g).all(|(&a, &b)| a == b as i16));
    }

    /// Every mode, no noise: the parameters the readout tests run over.
    fn noiseless_modes() -> Vec<SimParams> {
        vec![
            SimParams {
                gain: 3.0,
                gain_x: 1.5,
                gain_y: 40.0,
                ..SimParams::default()
            },
            SimParams {
                mode: SimMode::Peaks,
                gain: 3000.0,
                peak_start_x: 5,
                peak_start_y: 9,
                peak_num_x: 4,
                peak_num_y: 3,
                peak_step_x: 31,
                peak_step_y: 27,
                peak_width_x: 3,
                peak_width_y: 4,
                ..SimParams::default()
            },
            SimParams {
                mode: SimMode::Sine,
                gain: 500.0,
                gain_x: 2.0,
                ..SimParams::default()
            },
            SimParams {
                mode: SimMode::OffsetNoise,
                offset: 77.0,
                ..SimParams::default()
            },
        ]
    }

    #[test]
    fn roi_is_the_same_region_of_the_full_frame() {
        let sensor = full(120, 90);
        let roi = Readout {
            min_x: 17,
            min_y: 30,
            width: 61,
            height: 44,
            ..sensor
        };
        for p in noiseless_modes() {
            for k in [0, 4] {
                let whole = frame::<u16>(&p, sensor, 5, k);
                let part = frame::<u16>(&p, roi, 5, k);
                for i in 0..roi.height {
                    for j in 0..roi.width {
                        assert_eq!(
                            part[i * roi.width + j],
                            whole[(i + 30) * 120 + j + 17],
                            "{:?} frame {k} roi pixel ({i},{j})",
                            p.mode
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn binning_sums_the_unbinned_pixels() {
        let sensor = full(120, 90);
        for (bx, by) in [(2usize, 2usize), (3, 1), (4, 5)] {
            let binned = Readout {
                min_x: 7,
                min_y: 3,
                bin_x: bx,
                bin_y: by,
                width: 100 / bx,
                height: 80 / by,
                ..sensor
            };
            for p in noiseless_modes() {
                for k in [0, 3] {
                    let whole = frame::<u8>(&p, sensor, 5, k);
                    let part = frame::<u8>(&p, binned, 5, k);
                    for oi in 0..binned.height {
                        for oj in 0..binned.width {
                            let mut want = 0u8;
                            for i in 3 + oi * by..3 + (oi + 1) * by {
                                for j in 7 + oj * bx..7 + (oj + 1) * bx {
                                    want = want.wrapping_add(whole[i * 120 + j]);
                                }
                            }
                            assert_eq!(
                                part[oi * binned.width + oj],
                                want,
                                "{:?} {bx}x{by} frame {k} pixel ({oi},{oj})",
                                p.mode
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn frames_depend_only_on_the_seed_and_frame_index() {
        let p = SimParams {
            mode: SimMode::Peaks,
            noise: 50.0,
            peak_variation: 30.0,
            peak_num_x: 3,
            peak_num_y: 3,
            peak_step_x: 30,
            peak_step_y: 30,
            peak_start_x: 20,
            peak_start_y: 20,
            gain: 500.0,
            ..SimParams::default()
        };
        let r = full(100, 100);
        // Rendering frames out of order or twice gives the same bytes.
        let mut plan = Plan::<u16>::build(&p, r, 11);
        let mut a = vec![0u8; r.pixels() * 2];
        let mut b = vec![0u8; r.pixels() * 2];
        plan.render(6, &mut a);
        plan.render(2, &mut b);
        plan.render(6, &mut b);
        assert_eq!(a, b);
        assert_eq!(frame::<u16>(&p, r, 11, 4), frame::<u16>(&p, r, 11, 4));
        assert_ne!(frame::<u16>(&p, r, 11, 4), frame::<u16>(&p, r, 12, 4));
        // Without noise or variation the seed does not matter.
        let q = SimParams {
            noise: 0.0,
            peak_variation: 0.0,
            ..p
        };
        assert_eq!(frame::<u16>(&q, r, 11, 4), frame::<u16>(&q, r, 12, 4));
    }

    /// Frame `k` computed pixel by pixel from the plan's parts, the slow way: every patch
    /// value scaled and converted in full, the background indexed modulo the frame.
    fn reference<T: Pixel>(plan: &Plan<T>, k: u64) -> Vec<T> {
        let r = plan.readout;
        let n = r.pixels();
        let frame_key = rng::derive(rng::derive(plan.seed, FRAMES), k);
        let shift = if plan.background.is_empty() {
            0
        } else {
            rng::below(rng::at(rng::derive(frame_key, SHIFT), 0), n as u64) as usize
        };
        let add = plan.ramp_step.map_or(T::default(), |s| s.wmul(k));
        let mut out: Vec<T> = (0..n)
            .map(|p| {
                let mut v = add;
                if !plan.background.is_empty() {
                    v = plan.background[(p + shift) % n].wadd(v);
                }
                if !plan.signal.is_empty() {
                    v = v.wadd(plan.signal[p]);
                }
                v
            })
            .collect();
        if let Some(peaks) = &plan.peaks {
            let key = rng::derive(frame_key, PEAK_HEIGHTS);
            for pl in &peaks.placements {
                let u = rng::unit(rng::at(key, pl.grid_index));
                let factor = 1.0 + peaks.variation / 100.0 * (u - 0.5);
                let patch = &peaks.patches[pl.patch];
                for dy in 0..pl.height {
                    for dx in 0..pl.width {
                        let v = patch.values[(pl.row + dy) * patch.width + pl.col + dx];
                        let o = &mut out[(pl.y + dy) * r.width + pl.x + dx];
                        *o = o.wadd(T::from_f64(factor * v));
                    }
                }
            }
        }
        out
    }

    fn renders_as_the_reference<T: Pixel>(p: &SimParams, r: Readout) {
        let mut plan = Plan::<T>::build(p, r, 21);
        let bytes = r.pixels() * T::SIZE;
        // One buffer aligned for T, one not (a byte further on).
        let mut aligned = vec![T::default(); r.pixels()];
        let mut unaligned = vec![0u8; bytes + 1];
        for k in [0, 1, 5] {
            let want = reference(&plan, k);
            plan.render(k, bytemuck::cast_slice_mut(&mut aligned));
            let same = |got: &[T]| {
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| bytemuck::bytes_of(a) == bytemuck::bytes_of(b))
            };
            assert!(same(&aligned), "{:?} {} frame {k}", p.mode, T::SIZE);
            plan.render(k, &mut unaligned[1..]);
            let got: Vec<T> = unaligned[1..]
                .chunks_exact(T::SIZE)
                .map(bytemuck::pod_read_unaligned)
                .collect();
            assert!(same(&got), "{:?} {} frame {k}, unaligned", p.mode, T::SIZE);
        }
    }

    #[test]
    fn the_fast_truncation_is_the_saturating_one_within_range() {
        let mut cases = vec![0.0, -0.0, 0.5, 0.999_999, 1.0, 2.5, 3.5, -2.5, 1e9 + 0.5];
        cases.extend([2_147_483_647.9, -2_147_483_648.9, 4.503_599_627_370_495e15]);
        let mut x = 0.123_f64;
        for _ in 0..10_000 {
            x = (x * 7919.123).rem_euclid(3e9) - 1.5e9;
            cases.push(x);
        }
        for v in cases {
            assert_eq!(trunc_small(v), v as i64, "{v}");
            if v >= 0.0 {
                assert_eq!(floor_small(v), v as i64, "{v}");
            }
        }
    }

    #[test]
    fn frames_are_the_pixel_by_pixel_model_in_every_type_aligned_or_not() {
        let varied = SimParams {
            mode: SimMode::Peaks,
            gain: 3000.0,
            noise: 40.0,
            peak_variation: 30.0,
            peak_start_x: -3,
            peak_start_y: 9,
            peak_num_x: 5,
            peak_num_y: 4,
            peak_step_x: 31,
            peak_step_y: 27,
            peak_width_x: 3,
            peak_width_y: 4,
            ..SimParams::default()
        };
        // Heights beyond i32: the general conversion.
        let huge = SimParams {
            gain: 6e9,
            offset: -7.0,
            ..varied.clone()
        };
        let sensor = full(120, 90);
        let binned = Readout {
            min_x: 7,
            min_y: 3,
            bin_x: 3,
            bin_y: 2,
            width: 33,
            height: 40,
            ..sensor
        };
        // Sines are computed per frame the one way (sine_follows_the_counters checks them).
        let mut cases: Vec<SimParams> = noiseless_modes()
            .into_iter()
            .filter(|p| p.mode != SimMode::Sine)
            .collect();
        cases.extend([varied, huge]);
        for p in &cases {
            for r in [sensor, binned] {
                renders_as_the_reference::<u8>(p, r);
                renders_as_the_reference::<i16>(p, r);
                renders_as_the_reference::<u16>(p, r);
                renders_as_the_reference::<u32>(p, r);
                renders_as_the_reference::<i32>(p, r);
                renders_as_the_reference::<f32>(p, r);
                renders_as_the_reference::<f64>(p, r);
            }
        }
    }

    #[test]
    fn peaks_outside_the_sensor_and_tiny_sensors_are_harmless() {
        let p = SimParams {
            mode: SimMode::Peaks,
            peak_start_x: -500,
            peak_start_y: 10_000,
            peak_num_x: 2,
            peak_num_y: 2,
            ..SimParams::default()
        };
        assert!(frame::<u16>(&p, full(64, 64), 0, 0).iter().all(|&v| v == 0));
        let p = SimParams {
            mode: SimMode::Peaks,
            peak_start_x: 0,
            peak_start_y: 0,
            ..SimParams::default()
        };
        assert_eq!(frame::<u16>(&p, full(1, 1), 0, 0), vec![0]);
        assert_eq!(frame::<u16>(&p, full(2, 2), 0, 0)[0], 1);
    }
}
