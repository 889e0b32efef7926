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

use crate::{
    AcquisitionConfig, Binning, Error, ErrorKind, FrameMeta, FrameShape, FrameSource, ImageMode,
    PixelType, Roi, TriggerMode,
};

/// Settings of the conformance runs. `Default` suits a simulator or a bench-top detector.
#[derive(Debug, Clone, PartialEq)]
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
            Ok(FrameMeta {
                unique_id: self.next_id,
                timestamp: EpicsTimestamp::now(),
                unix_time_s: 0.0,
                shape,
            })
        }
    }

    #[test]
    fn a_correct_backend_passes() {
        check_all(&mut Toy::default(), &ConformanceConfig::default()).unwrap();
    }

    #[test]
    fn faults_are_reported_by_check_name() {
        let mut det = Toy {
            repeat_ids: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &ConformanceConfig::default()).unwrap_err();
        assert_eq!(e.check, "multiple_run");
        assert!(
            e.to_string().contains("unique ids not strictly increasing"),
            "{e}"
        );

        let mut det = Toy {
            accept_zero_binning: true,
            ..Toy::default()
        };
        let e = check_all(&mut det, &ConformanceConfig::default()).unwrap_err();
        assert_eq!(e.check, "refuses_invalid_config");
        assert!(e.message.starts_with("binning x = 0 was accepted"), "{e}");
    }
}
