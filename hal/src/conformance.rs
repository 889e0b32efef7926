//! A driver-agnostic conformance suite: the behaviour every detflow backend must show, checked
//! through the [`FrameSource`] traits alone. A backend author calls it from the backend's own
//! tests; the engine relies on exactly these guarantees. Needs the `std` feature.
//!
//! # Using it
//!
//! ```
//! use detflow_hal::FrameSource;
//! use detflow_hal::conformance::{self, ConformanceConfig};
//!
//! // Call this from a `#[test]` in your backend crate (e.g. `tests/conformance.rs`) with a
//! // detector opened on a test device or in simulation mode.
//! fn my_detector_conforms<D: FrameSource>(det: &mut D) {
//!     conformance::check_all(det, &ConformanceConfig::default()).unwrap();
//! }
//! ```
//!
//! [`check_all`] returns the first failure as a [`ConformanceFailure`] naming the check and
//! what was seen, so `unwrap()` prints a readable message. Each check is also public for
//! backends that want to run them one by one. Checks leave the detector stopped.
//!
//! # What is checked
//!
//! | check | requirement |
//! |---|---|
//! | [`check_info`] | `info()` reports a nonzero sensor size and at least one pixel type |
//! | [`check_refuses_invalid_config`] | a ROI of size 0 and a binning of 0 are refused with [`ErrorKind::InvalidConfig`], and a refused configuration changes nothing |
//! | [`check_not_acquiring_before_start`] | `read_frame` on an idle detector fails with [`ErrorKind::NotAcquiring`] and `is_acquiring()` is false |
//! | [`check_multiple_run`] | a `Multiple` run of N frames delivers exactly N frames with strictly increasing unique ids, non-decreasing timestamps and `meta.shape` equal to what `configure` returned; then `NotAcquiring` and `is_acquiring() == false` |
//! | [`check_small_buffer`] | a buffer one byte short of a frame is refused with [`ErrorKind::InvalidConfig`] |
//! | [`check_stop_ends_continuous`] | `stop()` during a `Continuous` run ends it: `is_acquiring()` false, then `NotAcquiring`; stopping an idle detector is no error |
//! | [`check_pixel_types`] | every pixel type in `info()` configures and delivers one frame of exactly `width * height * size` bytes |
//! | [`check_state_machine`] | `configure` during an acquisition is refused with [`ErrorKind::InvalidConfig`] and the run goes on; a second `start()` while acquiring neither fails nor restarts the run; a configuration can be applied again once stopped |
//! | [`check_roi_and_binning`] | a ROI reaching past the sensor is refused with [`ErrorKind::InvalidConfig`]; an offset ROI, a 2 x 2 and a 2 x 1 binning either deliver frames of exactly `roi.size / binning` or are refused with [`ErrorKind::InvalidConfig`] (hardware without that feature) |
//! | [`check_timeout`] | (paced backends) a `read_frame` with a 5 ms timeout before the first frame is due returns [`ErrorKind::Timeout`] within 5 ms + 50 ms, and the frame is not lost |
//! | [`check_pacing`] | (paced backends) a run of [`ConformanceConfig::pacing_frames`] frames at [`ConformanceConfig::pacing_period`] has a mean frame interval (timestamps) within [`ConformanceConfig::pacing_tolerance`] of the period, and its wall time is not shorter than the period allows |
//! | [`check_no_allocation`] | (with [`ConformanceConfig::allocations`]) `read_frame` allocates nothing after the first frame of a run; see [`CountingAllocator`] |
//!
//! A backend whose images arrive encoded, in channels ([`crate::ImageSource`]: a network
//! detector) is checked by [`check_image_source`] against a series its test feeds it; see
//! the `images` module's table.
//!
//! A backend whose frames are paced by something else (a network receiver paced by its sender)
//! sets [`ConformanceConfig::paced`] to false: the timeout and pacing checks are skipped.
//!
//! # Counting allocations
//!
//! The test binary installs [`CountingAllocator`] as its global allocator; it counts the
//! allocations of each thread, so tests running in parallel do not disturb each other:
//!
//! ```ignore
//! use detflow_hal::conformance::{ConformanceConfig, CountingAllocator};
//!
//! #[global_allocator]
//! static ALLOC: CountingAllocator = CountingAllocator;
//!
//! let cfg = ConformanceConfig {
//!     allocations: Some(CountingAllocator::thread_allocations),
//!     ..ConformanceConfig::default()
//! };
//! ```
//!
//! The runs use a small ROI at the sensor origin ([`ConformanceConfig::roi_width`] x
//! [`ConformanceConfig::roi_height`], clipped to the sensor), the internal trigger and the
//! exposure and period of the [`ConformanceConfig`]. A [`ErrorKind::Timeout`] from
//! `read_frame` is retried until [`ConformanceConfig::timeout`] has passed for that frame, as
//! the HAL allows a backend to time out and keep the frame.

use core::fmt;
use core::time::Duration;
use std::format;
use std::string::String;
use std::time::Instant;
use std::vec;
use std::vec::Vec;

mod images;
pub use images::{Decode, ImageSeries, ImagesSeen, check_image_source};

use crate::{
    AcquisitionConfig, Binning, Error, ErrorKind, FrameMeta, FrameShape, FrameSource, ImageMode,
    PixelType, Roi, TriggerMode,
};

/// Settings of the conformance runs. `Default` suits a simulator or a bench-top detector.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// ROI width used by the runs, clipped to the sensor width. Default 16.
    pub roi_width: u32,
    /// ROI height used by the runs, clipped to the sensor height. Default 16.
    pub roi_height: u32,
    /// Pixel type of the runs; `None` takes the first type `info()` lists. Default `None`.
    pub pixel_type: Option<PixelType>,
    /// Frames of the `Multiple` run, at least 2. Default 5.
    pub num_images: u32,
    /// Exposure of every run. Default 1 ms.
    pub exposure: Duration,
    /// Period of every run. Default 0 (as fast as the detector goes).
    pub period: Duration,
    /// Longest wait for one frame before the check fails. Default 5 s.
    pub timeout: Duration,
    /// The backend paces frames by its own exposure and period (a detector, a replay); false
    /// for backends paced from outside (a network receiver), which skips [`check_timeout`]
    /// and [`check_pacing`]. Default true.
    pub paced: bool,
    /// Period of the [`check_pacing`] run. Default 20 ms.
    pub pacing_period: Duration,
    /// Frames of the [`check_pacing`] run, at least 3. Default 10.
    pub pacing_frames: u32,
    /// Largest relative error of the mean frame interval in [`check_pacing`]. Default 0.1
    /// (±10 %).
    pub pacing_tolerance: f64,
    /// Allocations made so far by the calling thread, usually
    /// [`CountingAllocator::thread_allocations`]; `None` skips [`check_no_allocation`].
    /// Default `None`.
    pub allocations: Option<fn() -> u64>,
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        ConformanceConfig {
            roi_width: 16,
            roi_height: 16,
            pixel_type: None,
            num_images: 5,
            exposure: Duration::from_millis(1),
            period: Duration::ZERO,
            timeout: Duration::from_secs(5),
            paced: true,
            pacing_period: Duration::from_millis(20),
            pacing_frames: 10,
            pacing_tolerance: 0.1,
            allocations: None,
        }
    }
}

/// A conformance requirement the backend does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailure {
    /// Name of the check (`"multiple_run"`, `"pixel_types"` …).
    pub check: &'static str,
    /// What was expected and what the backend did.
    pub message: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance check `{}` failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ConformanceFailure {}

/// Runs every check in the order of the table in the [module docs](self); stops at the first
/// failure. The detector is left stopped.
pub fn check_all<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    check_info(det)?;
    check_not_acquiring_before_start(det)?;
    check_refuses_invalid_config(det, cfg)?;
    check_multiple_run(det, cfg)?;
    check_small_buffer(det, cfg)?;
    check_stop_ends_continuous(det, cfg)?;
    check_pixel_types(det, cfg)?;
    check_state_machine(det, cfg)?;
    check_roi_and_binning(det, cfg)?;
    if cfg.paced {
        check_timeout(det, cfg)?;
        check_pacing(det, cfg)?;
    }
    if cfg.allocations.is_some() {
        check_no_allocation(det, cfg)?;
    }
    Ok(())
}

/// `info()` is sane: nonzero sensor size, at least one pixel type.
pub fn check_info<T: FrameSource>(det: &mut T) -> Result<(), ConformanceFailure> {
    let fail = failure("info");
    let info = det.info();
    if info.max_width == 0 || info.max_height == 0 {
        return Err(fail(format!(
            "sensor size is {} x {}; both must be at least 1",
            info.max_width, info.max_height
        )));
    }
    if info.pixel_types.is_empty() {
        return Err(fail("info().pixel_types is empty".into()));
    }
    Ok(())
}

/// `read_frame` on an idle detector (after `stop()`) fails with `NotAcquiring`.
pub fn check_not_acquiring_before_start<T: FrameSource>(
    det: &mut T,
) -> Result<(), ConformanceFailure> {
    let fail = failure("not_acquiring_before_start");
    det.stop()
        .map_err(|e| fail(format!("stop() on an idle detector failed: {e:?}")))?;
    if det.is_acquiring() {
        return Err(fail("is_acquiring() is true after stop()".into()));
    }
    let mut buf = vec![0u8; 64];
    match det.read_frame(&mut buf, Duration::ZERO) {
        Err(e) if e.kind() == ErrorKind::NotAcquiring => Ok(()),
        Err(e) => Err(fail(format!(
            "expected kind NotAcquiring, got {:?} ({e:?})",
            e.kind()
        ))),
        Ok(m) => Err(fail(format!(
            "an idle detector delivered frame {}",
            m.unique_id
        ))),
    }
}

/// A ROI of size 0 and a binning of 0 (on either axis) are refused with `InvalidConfig`, and
/// a refused configuration leaves the previous one in force.
pub fn check_refuses_invalid_config<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("refuses_invalid_config");
    let good = run_config(det, cfg, ImageMode::Single, 1);
    let shape = configure(det, &good, &fail)?;

    let mut bad_cases = Vec::new();
    for (what, f) in [
        (
            "roi size_x = 0",
            (|c: &mut AcquisitionConfig| c.roi.size_x = 0) as fn(&mut _),
        ),
        ("roi size_y = 0", |c| c.roi.size_y = 0),
        ("binning x = 0", |c| c.binning.x = 0),
        ("binning y = 0", |c| c.binning.y = 0),
    ] {
        let mut c = good.clone();
        f(&mut c);
        bad_cases.push((what, c));
    }
    for (what, c) in bad_cases {
        match det.configure(&c) {
            Err(e) if e.kind() == ErrorKind::InvalidConfig => {}
            Err(e) => {
                return Err(fail(format!(
                    "{what}: expected kind InvalidConfig, got {:?} ({e:?})",
                    e.kind()
                )));
            }
            Ok(s) => return Err(fail(format!("{what} was accepted, giving shape {s:?}"))),
        }
    }

    // The earlier configuration still holds.
    let frames = acquire(det, shape, cfg, &fail)?;
    if frames.len() != 1 {
        return Err(fail(format!(
            "after the refusals a Single run delivered {} frames",
            frames.len()
        )));
    }
    Ok(())
}

/// A `Multiple` run of `cfg.num_images` frames: exactly that many frames, strictly increasing
/// unique ids, non-decreasing timestamps, `meta.shape` as configured, then idle.
pub fn check_multiple_run<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("multiple_run");
    let n = cfg.num_images.max(2);
    let shape = configure(det, &run_config(det, cfg, ImageMode::Multiple, n), &fail)?;
    let frames = acquire(det, shape, cfg, &fail)?;
    if frames.len() != n as usize {
        return Err(fail(format!(
            "a Multiple run of {n} delivered {} frames",
            frames.len()
        )));
    }
    for (i, pair) in frames.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if b.unique_id <= a.unique_id {
            return Err(fail(format!(
                "unique ids not strictly increasing: frame {i} has {}, frame {} has {}",
                a.unique_id,
                i + 1,
                b.unique_id
            )));
        }
        if b.timestamp < a.timestamp {
            return Err(fail(format!(
                "timestamps go backwards: frame {i} at {:?}, frame {} at {:?}",
                a.timestamp,
                i + 1,
                b.timestamp
            )));
        }
    }
    Ok(())
}

/// A buffer one byte smaller than a frame is refused with `InvalidConfig`.
pub fn check_small_buffer<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("small_buffer");
    let shape = configure(det, &run_config(det, cfg, ImageMode::Continuous, 1), &fail)?;
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let mut buf = vec![0u8; shape.bytes() - 1];
    let result = det.read_frame(&mut buf, cfg.timeout);
    stop(det, &fail)?;
    match result {
        Err(e) if e.kind() == ErrorKind::InvalidConfig => Ok(()),
        Err(e) => Err(fail(format!(
            "a {}-byte buffer for a {}-byte frame: expected kind InvalidConfig, got {:?} ({e:?})",
            buf.len(),
            shape.bytes(),
            e.kind()
        ))),
        Ok(_) => Err(fail(format!(
            "a {}-byte buffer was accepted for a {}-byte frame",
            buf.len(),
            shape.bytes()
        ))),
    }
}

/// `stop()` during a `Continuous` run ends it.
pub fn check_stop_ends_continuous<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("stop_ends_continuous");
    let shape = configure(det, &run_config(det, cfg, ImageMode::Continuous, 1), &fail)?;
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let mut buf = vec![0u8; shape.bytes()];
    for i in 0..2 {
        if let Err(e) = read(det, &mut buf, cfg.timeout) {
            return Err(fail(format!("frame {i} of a Continuous run: {e}")));
        }
    }
    if !det.is_acquiring() {
        return Err(fail(
            "is_acquiring() is false during a Continuous run".into(),
        ));
    }
    stop(det, &fail)?;
    if det.is_acquiring() {
        return Err(fail("is_acquiring() is still true after stop()".into()));
    }
    match det.read_frame(&mut buf, Duration::ZERO) {
        Err(e) if e.kind() == ErrorKind::NotAcquiring => {}
        Err(e) => {
            return Err(fail(format!(
                "read_frame after stop(): expected kind NotAcquiring, got {:?} ({e:?})",
                e.kind()
            )));
        }
        Ok(m) => {
            return Err(fail(format!(
                "frame {} delivered after stop()",
                m.unique_id
            )));
        }
    }
    det.stop()
        .map_err(|e| fail(format!("a second stop() failed: {e:?}")))
}

/// Every pixel type of `info()` configures and delivers one frame of the right byte size.
pub fn check_pixel_types<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("pixel_types");
    for t in det.info().pixel_types {
        let c = AcquisitionConfig {
            pixel_type: t,
            ..run_config(det, cfg, ImageMode::Single, 1)
        };
        let shape = configure(det, &c, &fail)?;
        let (w, h) = (shape.width as usize, shape.height as usize);
        if shape.pixel_type != t || shape.bytes() != w * h * t.size() {
            return Err(fail(format!(
                "configure with pixel type {t} returned {shape:?} ({} bytes)",
                shape.bytes()
            )));
        }
        let frames = acquire(det, shape, cfg, &fail)?;
        if frames.len() != 1 {
            return Err(fail(format!(
                "{t}: a Single run delivered {} frames",
                frames.len()
            )));
        }
    }
    Ok(())
}

/// `configure` during an acquisition is refused with `InvalidConfig` and the run goes on; a
/// second `start()` while acquiring is no error and does not restart the run.
pub fn check_state_machine<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("state_machine");
    let c = run_config(det, cfg, ImageMode::Multiple, 3);
    let shape = configure(det, &c, &fail)?;
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let mut buf = vec![0u8; shape.bytes()];
    let first = read(det, &mut buf, cfg.timeout)
        .map_err(|e| fail(format!("frame 0 of a Multiple run of 3: {e}")))?;
    let refused = det.configure(&c);
    let again = det.start();
    let result = (|| {
        match refused {
            Err(e) if e.kind() == ErrorKind::InvalidConfig => {}
            Err(e) => {
                return Err(fail(format!(
                    "configure while acquiring: expected kind InvalidConfig, got {:?} ({e:?})",
                    e.kind()
                )));
            }
            Ok(_) => return Err(fail("configure was accepted while acquiring".into())),
        }
        if let Err(e) = again {
            return Err(fail(format!(
                "a second start() while acquiring failed: {e:?}"
            )));
        }
        if !det.is_acquiring() {
            return Err(fail("the run ended after a refused configure".into()));
        }
        let mut ids = vec![first.unique_id];
        while det.is_acquiring() && ids.len() < 8 {
            let m = read(det, &mut buf, cfg.timeout)
                .map_err(|e| fail(format!("frame {} after the refusal: {e}", ids.len())))?;
            ids.push(m.unique_id);
        }
        if ids.len() != 3 {
            return Err(fail(format!(
                "a Multiple run of 3 with a second start() delivered {} frames (ids {ids:?})",
                ids.len()
            )));
        }
        Ok(())
    })();
    stop(det, &fail)?;
    result?;
    // Once stopped, the same configuration applies again.
    configure(det, &c, &fail)?;
    Ok(())
}

/// A ROI reaching past the sensor is refused; an offset ROI and 2 x 2 / 2 x 1 binnings give
/// exactly `roi.size / binning`, or are refused as unsupported.
pub fn check_roi_and_binning<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("roi_and_binning");
    let info = det.info();
    let base = run_config(det, cfg, ImageMode::Single, 1);
    let mut outside = base.clone();
    outside.roi.min_x = info.max_width - outside.roi.size_x + 1;
    match det.configure(&outside) {
        Err(e) if e.kind() == ErrorKind::InvalidConfig => {}
        Err(e) => {
            return Err(fail(format!(
                "a ROI reaching past the sensor: expected kind InvalidConfig, got {:?} ({e:?})",
                e.kind()
            )));
        }
        Ok(s) => {
            return Err(fail(format!(
                "a ROI reaching past the sensor ({:?} on {} x {}) was accepted, giving {s:?}",
                outside.roi, info.max_width, info.max_height
            )));
        }
    }
    let (w, h) = (base.roi.size_x, base.roi.size_y);
    let mut cases = Vec::new();
    if info.max_width > 2 && info.max_height > 2 && w > 1 && h > 1 {
        let mut c = base.clone();
        c.roi = Roi {
            min_x: 1,
            min_y: 1,
            size_x: w.min(info.max_width - 1) - 1,
            size_y: h.min(info.max_height - 1) - 1,
        };
        cases.push(("offset roi", c));
    }
    for (x, y) in [(2, 2), (2, 1)] {
        if w >= x && h >= y {
            let mut c = base.clone();
            c.binning = Binning { x, y };
            cases.push((if y == 2 { "binning 2x2" } else { "binning 2x1" }, c));
        }
    }
    for (what, c) in cases {
        let shape = match det.configure(&c) {
            Err(e) if e.kind() == ErrorKind::InvalidConfig => continue,
            Err(e) => {
                return Err(fail(format!(
                    "{what}: expected a shape or kind InvalidConfig, got {:?} ({e:?})",
                    e.kind()
                )));
            }
            Ok(shape) => shape,
        };
        let expected = c.output_shape().unwrap_or((0, 0));
        if (shape.width, shape.height) != expected {
            return Err(fail(format!(
                "{what} ({:?}, {:?}): configure returned {} x {}, expected {} x {}",
                c.roi, c.binning, shape.width, shape.height, expected.0, expected.1
            )));
        }
        let frames = acquire(det, shape, cfg, &fail)?;
        if frames.len() != 1 {
            return Err(fail(format!(
                "{what}: a Single run delivered {} frames",
                frames.len()
            )));
        }
    }
    Ok(())
}

/// A read with a short timeout before the first frame is due returns `Timeout` on time, and
/// the frame is delivered by a later read.
pub fn check_timeout<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("timeout");
    let slow = Duration::from_millis(200);
    let c = AcquisitionConfig {
        exposure: slow,
        period: slow,
        ..run_config(det, cfg, ImageMode::Single, 1)
    };
    let shape = configure(det, &c, &fail)?;
    let mut buf = vec![0u8; shape.bytes()];
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let short = Duration::from_millis(5);
    let t0 = Instant::now();
    let r = det.read_frame(&mut buf, short);
    let took = t0.elapsed();
    let result = match r {
        Err(e) if e.kind() == ErrorKind::Timeout => {
            if took < short || took > short + Duration::from_millis(50) {
                Err(fail(format!(
                    "read_frame with a {short:?} timeout returned Timeout after {took:?}"
                )))
            } else {
                read(det, &mut buf, cfg.timeout)
                    .map(|_| ())
                    .map_err(|e| fail(format!("the frame after the timeout: {e}")))
            }
        }
        Err(e) => Err(fail(format!(
            "a frame due in {slow:?} read with a {short:?} timeout: expected kind Timeout, got {:?} ({e:?})",
            e.kind()
        ))),
        Ok(m) => Err(fail(format!(
            "frame {} was delivered after {took:?}, before its exposure of {slow:?} ended",
            m.unique_id
        ))),
    };
    stop(det, &fail)?;
    result
}

/// Frames come at the configured period: the mean interval between timestamps is within the
/// tolerance, and the run takes at least `(n - 1) * period`.
pub fn check_pacing<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("pacing");
    let n = cfg.pacing_frames.max(3);
    let period = cfg.pacing_period;
    let c = AcquisitionConfig {
        exposure: Duration::ZERO,
        period,
        ..run_config(det, cfg, ImageMode::Multiple, n)
    };
    let shape = configure(det, &c, &fail)?;
    let t0 = Instant::now();
    let frames = acquire(det, shape, cfg, &fail)?;
    let wall = t0.elapsed();
    if frames.len() != n as usize {
        return Err(fail(format!(
            "a paced Multiple run of {n} delivered {} frames",
            frames.len()
        )));
    }
    let span =
        frames[frames.len() - 1].timestamp.unix_seconds() - frames[0].timestamp.unix_seconds();
    let mean = span / f64::from(n - 1);
    let want = period.as_secs_f64();
    if (mean - want).abs() > cfg.pacing_tolerance * want {
        return Err(fail(format!(
            "mean frame interval {:.3} ms, period {:.3} ms: off by more than {:.0} %",
            mean * 1e3,
            want * 1e3,
            cfg.pacing_tolerance * 100.0
        )));
    }
    let least = period * (n - 1);
    if wall + Duration::from_millis(1) < least {
        return Err(fail(format!(
            "{n} frames at {period:?} took {wall:?}, less than {least:?}"
        )));
    }
    Ok(())
}

/// After the first frame of a run, `read_frame` allocates nothing (counted by
/// [`ConformanceConfig::allocations`]).
pub fn check_no_allocation<T: FrameSource>(
    det: &mut T,
    cfg: &ConformanceConfig,
) -> Result<(), ConformanceFailure> {
    let fail = failure("no_allocation");
    let Some(count) = cfg.allocations else {
        return Ok(());
    };
    let n = cfg.num_images.max(2) + 3;
    let shape = configure(det, &run_config(det, cfg, ImageMode::Multiple, n), &fail)?;
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let mut buf = vec![0u8; shape.bytes()];
    let mut result = read(det, &mut buf, cfg.timeout)
        .map(|_| ())
        .map_err(|e| fail(format!("frame 0: {e}")));
    let mut i = 1;
    while result.is_ok() && det.is_acquiring() && i < n {
        let started = Instant::now();
        loop {
            let before = count();
            let r = det.read_frame(&mut buf, cfg.timeout);
            let after = count();
            match r {
                Ok(_) if after != before => {
                    result = Err(fail(format!(
                        "read_frame of frame {i} made {} allocations",
                        after - before
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Timeout && started.elapsed() < cfg.timeout => {
                    continue;
                }
                Err(e) => {
                    result = Err(fail(format!(
                        "frame {i}: read_frame failed with kind {:?}: {e:?}",
                        e.kind()
                    )));
                }
            }
            break;
        }
        i += 1;
    }
    stop(det, &fail)?;
    result
}

/// A global allocator that counts each thread's allocations, for [`check_no_allocation`].
/// It forwards to [`std::alloc::System`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

std::thread_local! {
    /// Allocations by this thread. Const-initialised without a destructor, so touching it
    /// inside the allocator never allocates.
    static ALLOCATIONS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

impl CountingAllocator {
    /// Allocations (including reallocations) made so far by the calling thread while this
    /// allocator was the global allocator.
    pub fn thread_allocations() -> u64 {
        ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
    }

    fn count() {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; counting touches only a
// const-initialised thread-local `Cell`, which neither allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::count();
        // SAFETY: the caller upholds `alloc`'s contract; forwarded unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::count();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        Self::count();
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

fn failure(check: &'static str) -> impl Fn(String) -> ConformanceFailure {
    move |message| ConformanceFailure { check, message }
}

/// The configuration of a conformance run.
fn run_config<T: FrameSource>(
    det: &T,
    cfg: &ConformanceConfig,
    image_mode: ImageMode,
    num_images: u32,
) -> AcquisitionConfig {
    let info = det.info();
    AcquisitionConfig {
        roi: Roi {
            min_x: 0,
            min_y: 0,
            size_x: cfg.roi_width.clamp(1, info.max_width.max(1)),
            size_y: cfg.roi_height.clamp(1, info.max_height.max(1)),
        },
        binning: Binning::default(),
        pixel_type: cfg
            .pixel_type
            .or(info.pixel_types.first().copied())
            .unwrap_or(PixelType::U16),
        exposure: cfg.exposure,
        period: cfg.period,
        image_mode,
        num_images,
        trigger_mode: TriggerMode::Internal,
    }
}

fn configure<T: FrameSource>(
    det: &mut T,
    c: &AcquisitionConfig,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<FrameShape, ConformanceFailure> {
    let shape = det
        .configure(c)
        .map_err(|e| fail(format!("a valid configuration was refused: {e:?}\n{c:#?}")))?;
    let expected = c.output_shape().unwrap_or((0, 0));
    if (shape.width, shape.height) != expected || shape.pixel_type != c.pixel_type {
        return Err(fail(format!(
            "configure returned {shape:?}; the configuration asks for {} x {} {}",
            expected.0, expected.1, c.pixel_type
        )));
    }
    Ok(shape)
}

fn stop<T: FrameSource>(
    det: &mut T,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<(), ConformanceFailure> {
    det.stop()
        .map_err(|e| fail(format!("stop() failed: {e:?}")))
}

/// One frame, retrying `Timeout` until `timeout` has passed.
fn read<T: FrameSource>(
    det: &mut T,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<FrameMeta, String> {
    let started = Instant::now();
    loop {
        match det.read_frame(buf, timeout) {
            Ok(m) => return Ok(m),
            Err(e) if e.kind() == ErrorKind::Timeout && started.elapsed() < timeout => {}
            Err(e) => return Err(format!("read_frame failed with kind {:?}: {e:?}", e.kind())),
        }
    }
}

/// Starts, reads frames with a buffer of exactly `shape.bytes()` until the run ends, and
/// checks that it ends properly.
fn acquire<T: FrameSource>(
    det: &mut T,
    shape: FrameShape,
    cfg: &ConformanceConfig,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<Vec<FrameMeta>, ConformanceFailure> {
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let mut buf = vec![0u8; shape.bytes()];
    let mut frames: Vec<FrameMeta> = Vec::new();
    // A run that never ends is caught after far more frames than it was asked for.
    let limit = cfg.num_images.max(2) as usize * 4 + 16;
    while det.is_acquiring() {
        let meta = read(det, &mut buf, cfg.timeout)
            .map_err(|e| fail(format!("frame {} of {shape:?}: {e}", frames.len())))?;
        if meta.shape != shape {
            return Err(fail(format!(
                "frame {} has shape {:?}; configure returned {shape:?}",
                frames.len(),
                meta.shape
            )));
        }
        frames.push(meta);
        if frames.len() > limit {
            let _ = det.stop();
            return Err(fail(format!("the run did not end after {limit} frames")));
        }
    }
    match det.read_frame(&mut buf, Duration::ZERO) {
        Err(e) if e.kind() == ErrorKind::NotAcquiring => Ok(frames),
        Err(e) => Err(fail(format!(
            "read_frame after the last frame: expected kind NotAcquiring, got {:?} ({e:?})",
            e.kind()
        ))),
        Ok(m) => Err(fail(format!(
            "frame {} delivered after is_acquiring() turned false",
            m.unique_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;
    use crate::{ColorMode, Detector, EpicsTimestamp, ErrorType, SensorInfo};

    /// A minimal backend of a 4 x 4 sensor without pacing, with switchable faults.
    #[derive(Default)]
    struct Toy {
        /// Configured shape and frames per run (`None`: Continuous).
        config: Option<(FrameShape, Option<u32>)>,
        acquiring: bool,
        /// Frames left in the run (`None`: Continuous).
        remaining: Option<u32>,
        next_id: u64,
        /// Fault: every frame has the same unique id.
        repeat_ids: bool,
        /// Fault: a binning of 0 is taken as 1.
        accept_zero_binning: bool,
        /// Fault: every frame allocates.
        allocates: bool,
        /// Fault: configure is accepted while acquiring.
        configure_while_acquiring: bool,
    }

    impl ErrorType for Toy {
        type Error = ErrorKind;
    }

    impl Detector for Toy {
        fn info(&self) -> SensorInfo {
            SensorInfo {
                manufacturer: heapless::String::new(),
                model: heapless::String::new(),
                max_width: 4,
                max_height: 4,
                pixel_types: heapless::Vec::from_slice(&[PixelType::U8, PixelType::F64]).unwrap(),
            }
        }
        fn configure(&mut self, c: &AcquisitionConfig) -> Result<FrameShape, ErrorKind> {
            if self.acquiring && !self.configure_while_acquiring {
                return Err(ErrorKind::InvalidConfig);
            }
            if c.roi.min_x + c.roi.size_x > 4 || c.roi.min_y + c.roi.size_y > 4 {
                return Err(ErrorKind::InvalidConfig);
            }
            let mut c = c.clone();
            if self.accept_zero_binning {
                c.binning.x = c.binning.x.max(1);
            }
            let (width, height) = c.output_shape()?;
            let shape = FrameShape {
                width,
                height,
                pixel_type: c.pixel_type,
                color_mode: ColorMode::Mono,
            };
            let frames = match c.image_mode {
                ImageMode::Single => Some(1),
                ImageMode::Multiple => Some(c.num_images),
                ImageMode::Continuous => None,
            };
            self.config = Some((shape, frames));
            Ok(shape)
        }
        fn start(&mut self) -> Result<(), ErrorKind> {
            let (_, frames) = self.config.ok_or(ErrorKind::InvalidConfig)?;
            if self.acquiring {
                return Ok(());
            }
            self.remaining = frames;
            self.acquiring = true;
            Ok(())
        }
        fn stop(&mut self) -> Result<(), ErrorKind> {
            self.acquiring = false;
            Ok(())
        }
        fn is_acquiring(&self) -> bool {
            self.acquiring
        }
    }

    impl FrameSource for Toy {
        fn read_frame(&mut self, buf: &mut [u8], _: Duration) -> Result<FrameMeta, ErrorKind> {
            let (shape, _) = self
                .config
                .filter(|_| self.acquiring)
                .ok_or(ErrorKind::NotAcquiring)?;
            if buf.len() < shape.bytes() {
                return Err(ErrorKind::InvalidConfig);
            }
            if let Some(n) = &mut self.remaining {
                *n -= 1;
                self.acquiring = *n > 0;
            }
            if !self.repeat_ids {
                self.next_id += 1;
            }
            if self.allocates {
                core::hint::black_box(vec![0u8; 16]);
            }
            Ok(FrameMeta {
                unique_id: self.next_id,
                timestamp: EpicsTimestamp::now(),
                unix_time_s: 0.0,
                shape,
            })
        }
    }

    #[global_allocator]
    static ALLOC: CountingAllocator = CountingAllocator;

    /// The toy is not paced: it delivers at once.
    fn toy_config() -> ConformanceConfig {
        ConformanceConfig {
            paced: false,
            allocations: Some(CountingAllocator::thread_allocations),
            ..ConformanceConfig::default()
        }
    }

    #[test]
    fn a_correct_backend_passes() {
        check_all(&mut Toy::default(), &toy_config()).unwrap();
    }

    #[test]
    fn allocation_and_state_faults_are_caught() {
        let mut det = Toy {
            allocates: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &toy_config()).unwrap_err();
        assert_eq!(e.check, "no_allocation", "{e}");
        assert!(e.message.contains("made 1 allocations"), "{e}");

        let mut det = Toy {
            configure_while_acquiring: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &toy_config()).unwrap_err();
        assert_eq!(e.check, "state_machine", "{e}");

        let before = CountingAllocator::thread_allocations();
        let v = std::vec![1u8; 3];
        assert_eq!(CountingAllocator::thread_allocations(), before + 1);
        drop(v);
    }

    #[test]
    fn faults_are_reported_by_check_name() {
        let mut det = Toy {
            repeat_ids: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &toy_config()).unwrap_err();
        assert_eq!(e.check, "multiple_run");
        assert!(
            e.to_string().contains("unique ids not strictly increasing"),
            "{e}"
        );

        let mut det = Toy {
            accept_zero_binning: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &toy_config()).unwrap_err();
        assert_eq!(e.check, "refuses_invalid_config");
        assert!(e.message.starts_with("binning x = 0 was accepted"), "{e}");
    }
}
