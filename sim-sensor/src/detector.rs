//! `SimDetector`: the simulated detector as its users see it. It is a [`SensorDriver`] over
//! the simulated chip's I2C bus and data port ([`SimChip`]), plus the chip handle for fault
//! injection and inspection. Every control operation goes over the bus; frames come through
//! the data port's FIFO into the caller's buffer.

use std::time::Duration;

use detflow_hal::{
    AcquisitionConfig, Detector, ErrorType, FrameMeta, FrameShape, FrameSource, SensorInfo,
};

use crate::driver::SensorDriver;
use crate::error::SensorError;
use crate::firmware::{FaultRates, I2C_ADDRESS, SimChip, SimI2c, SimPort};
use crate::params::SimParams;

/// Largest sensor width or height accepted by [`SimDetector::new`].
pub const MAX_SENSOR_SIZE: u32 = 16_384;

/// How to build a [`SimDetector`]: the sensor, the random seed and the initial simulation
/// parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Sensor width in pixels (`MaxSizeX`), `1..=16384`.
    pub max_width: u32,
    /// Sensor height in pixels (`MaxSizeY`), `1..=16384`.
    pub max_height: u32,
    /// Seed of the noise and peak-height draws. The same configuration and seed give the same
    /// frames, bit for bit.
    pub seed: u64,
    /// Initial simulation parameters.
    pub params: SimParams,
}

impl Default for SimConfig {
    /// A 1024 x 1024 sensor, seed 0, ADSimDetector's default parameters.
    fn default() -> Self {
        SimConfig {
            max_width: 1024,
            max_height: 1024,
            seed: 0,
            params: SimParams::default(),
        }
    }
}

/// How the simulated hardware is built, beyond [`SimConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimOptions {
    /// Frames the data port FIFO holds, `1..=64`. Default 16.
    pub fifo_depth: usize,
    /// Random faults, active once the detector is built. Default none.
    pub faults: FaultRates,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fifo_depth: 16,
            faults: FaultRates::default(),
        }
    }
}

/// A simulated area detector producing ADSimDetector's test patterns through the detflow HAL:
/// the generic [`SensorDriver`] over a [`SimChip`].
///
/// All eight pixel types are supported. Until [`Detector::configure`] is called the detector
/// uses [`AcquisitionConfig::default`] with the ROI set to the whole sensor.
///
/// Frames are a pure function of the seed, the simulation parameters, the pixel type, the
/// ROI and binning, and the number of frames exposed since the last reset (see
/// [`set_params`](Self::set_params)): two detectors driven the same way deliver the same bytes.
/// Frames are paced on the detector's clock against absolute deadlines and wait in a FIFO of
/// [`SimOptions::fifo_depth`] frames; a reader that falls further behind loses frames as
/// overruns, reported as errors of kind `Overrun`. With exposure and period both 0 the
/// detector runs as fast as it is read and never overruns.
///
/// ```
/// use std::time::Duration;
/// use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode, PixelType, Roi};
/// use detflow_sim::{SimConfig, SimDetector, SimMode, SimParams};
///
/// let mut det = SimDetector::new(SimConfig {
///     max_width: 256,
///     max_height: 256,
///     seed: 7,
///     params: SimParams { mode: SimMode::Peaks, peak_start_x: 128, peak_start_y: 128, ..SimParams::default() },
/// })?;
/// let shape = det.configure(&AcquisitionConfig {
///     roi: Roi::full(256, 256),
///     pixel_type: PixelType::U16,
///     exposure: Duration::ZERO,
///     period: Duration::ZERO,
///     image_mode: ImageMode::Multiple,
///     num_images: 3,
///     ..AcquisitionConfig::default()
/// })?;
/// let mut buf = vec![0u8; shape.bytes()];
/// det.start()?;
/// while det.is_acquiring() {
///     let meta = det.read_frame(&mut buf, Duration::from_secs(1))?;
///     println!("frame {} at {:?}", meta.unique_id, meta.timestamp);
/// }
/// # Ok::<(), detflow_sim::SimError>(())
/// ```
#[derive(Debug)]
pub struct SimDetector {
    driver: SensorDriver<SimI2c, SimPort>,
    chip: SimChip,
    params: SimParams,
}

impl SimDetector {
    /// A detector with the sensor, seed and parameters of `config` and default
    /// [`SimOptions`].
    ///
    /// Errors: a sensor dimension outside `1..=16384`, or a parameter
    /// [`set_params`](Self::set_params) would refuse.
    pub fn new(config: SimConfig) -> Result<Self, SensorError> {
        Self::with_options(config, SimOptions::default())
    }

    /// A detector with the given hardware options (FIFO depth, fault rates).
    pub fn with_options(config: SimConfig, options: SimOptions) -> Result<Self, SensorError> {
        for (setting, value) in [
            ("max_width", config.max_width),
            ("max_height", config.max_height),
        ] {
            if !(1..=MAX_SENSOR_SIZE).contains(&value) {
                return Err(SensorError::out_of_range(
                    setting,
                    value.into(),
                    1,
                    MAX_SENSOR_SIZE.into(),
                ));
            }
        }
        config.params.validate()?;
        let chip = SimChip::new(
            config.max_width,
            config.max_height,
            options.fifo_depth,
            config.seed,
        );
        let mut driver = SensorDriver::new(chip.i2c(), chip.port(), I2C_ADDRESS)?;
        driver.set_params(&config.params)?;
        chip.set_fault_rates(options.faults);
        Ok(SimDetector {
            driver,
            chip,
            params: config.params,
        })
    }

    /// The simulated chip: fault injection ([`SimChip::inject`],
    /// [`SimChip::set_fault_rates`]), what was injected, and register peeks.
    pub fn chip(&self) -> &SimChip {
        &self.chip
    }

    /// The driver, for what the HAL does not cover ([`SensorDriver::trigger`]).
    pub fn driver(&mut self) -> &mut SensorDriver<SimI2c, SimPort> {
        &mut self.driver
    }

    /// The current simulation parameters.
    pub fn params(&self) -> &SimParams {
        &self.params
    }

    /// Writes the simulation parameters to the pattern generator and resets the image, as
    /// writing any ADSimDetector simulation PV does: the background is drawn anew, the ramp
    /// and the sine time start over from frame 0. Allowed during an acquisition; the next
    /// frame uses the new parameters.
    ///
    /// Errors (kind `InvalidConfig`, nothing changed): a non-finite number, a peak width of 0,
    /// or more than 256 peaks along an axis; a bus error (kind `Bus`).
    pub fn set_params(&mut self, params: SimParams) -> Result<(), SensorError> {
        self.driver.set_params(&params)?;
        self.params = params;
        Ok(())
    }

    /// The shape of the frames [`read_frame`](FrameSource::read_frame) delivers with the
    /// current configuration.
    pub fn shape(&self) -> FrameShape {
        self.driver.shape()
    }

    /// Frames delivered since creation or the last [`reset_array_counter`](Self::reset_array_counter)
    /// (areaDetector's ArrayCounter).
    pub fn array_counter(&self) -> u64 {
        self.driver.array_counter()
    }

    /// Sets the array counter to 0, so that the next frame's unique id is 1.
    pub fn reset_array_counter(&mut self) {
        self.driver.reset_array_counter();
    }
}

impl ErrorType for SimDetector {
    type Error = SensorError;
}

impl Detector for SimDetector {
    fn info(&self) -> SensorInfo {
        self.driver.info()
    }
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, SensorError> {
        self.driver.configure(config)
    }
    fn start(&mut self) -> Result<(), SensorError> {
        self.driver.start()
    }
    fn stop(&mut self) -> Result<(), SensorError> {
        self.driver.stop()
    }
    fn is_acquiring(&self) -> bool {
        self.driver.is_acquiring()
    }
}

impl FrameSource for SimDetector {
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, SensorError> {
        self.driver.read_frame(buf, timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use detflow_hal::{
        Binning, ColorMode, EpicsTimestamp, Error as _, ErrorKind, ImageMode, PixelType, Roi,
    };

    use super::*;
    use crate::params::SimMode;

    fn fast(image_mode: ImageMode, num_images: u32) -> AcquisitionConfig {
        AcquisitionConfig {
            roi: Roi::full(64, 48),
            exposure: Duration::ZERO,
            period: Duration::ZERO,
            image_mode,
            num_images,
            ..AcquisitionConfig::default()
        }
    }

    fn detector(seed: u64, params: SimParams) -> SimDetector {
        SimDetector::new(SimConfig {
            max_width: 64,
            max_height: 48,
            seed,
            params,
        })
        .unwrap()
    }

    /// Reads every frame of a run.
    fn frames(det: &mut SimDetector) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while det.is_acquiring() {
            let mut buf = vec![0u8; det.shape().bytes()];
            det.read_frame(&mut buf, Duration::from_secs(5)).unwrap();
            out.push(buf);
        }
        out
    }

    #[test]
    fn bad_settings_are_refused_with_their_value() {
        let mut det = detector(0, SimParams::default());
        let msg = |det: &mut SimDetector, c: AcquisitionConfig| {
            let e = det.configure(&c).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            e.to_string()
        };
        let base = fast(ImageMode::Multiple, 3);
        let mut c = base.clone();
        c.binning.x = 0;
        assert_eq!(msg(&mut det, c), "binning x=0 is out of range 1..=64");
        let mut c = base.clone();
        c.binning = Binning { x: 1, y: 49 };
        c.roi.size_y = 48;
        assert_eq!(msg(&mut det, c), "binning y=49 is out of range 1..=48");
        let mut c = base.clone();
        c.roi.size_x = 0;
        assert_eq!(msg(&mut det, c), "roi size_x=0 is out of range 1..=64");
        let mut c = base.clone();
        c.roi = Roi {
            min_x: 10,
            min_y: 0,
            size_x: 60,
            size_y: 4,
        };
        assert_eq!(
            msg(&mut det, c),
            "roi x: min_x=10 + size_x=60 reaches past the sensor width of 64 pixels"
        );
        let c = fast(ImageMode::Multiple, 0);
        assert_eq!(
            msg(&mut det, c),
            "num_images=0 is out of range 1..=4294967295"
        );
        // Nothing was applied.
        assert_eq!(det.shape().width, 64);

        let big = SimDetector::new(SimConfig {
            max_width: 0,
            ..SimConfig::default()
        });
        assert_eq!(
            big.unwrap_err().to_string(),
            "max_width=0 is out of range 1..=16384"
        );
        let fine = SimDetector::new(SimConfig {
            max_width: 4096,
            max_height: 4096,
            ..SimConfig::default()
        });
        assert_eq!(fine.unwrap().info().max_width, 4096);
    }

    #[test]
    fn runs_end_and_reads_outside_a_run_are_not_acquiring() {
        let mut det = detector(0, SimParams::default());
        let mut buf = vec![0u8; 64 * 48 * 2];
        let e = det.read_frame(&mut buf, Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotAcquiring);

        det.configure(&fast(ImageMode::Multiple, 4)).unwrap();
        det.start().unwrap();
        assert_eq!(frames(&mut det).len(), 4);
        assert!(!det.is_acquiring());
        let e = det.read_frame(&mut buf, Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotAcquiring);

        det.configure(&fast(ImageMode::Single, 4)).unwrap();
        det.start().unwrap();
        assert_eq!(frames(&mut det).len(), 1);

        det.configure(&fast(ImageMode::Continuous, 0)).unwrap();
        det.start().unwrap();
        assert_eq!(
            det.configure(&fast(ImageMode::Single, 1)).unwrap_err(),
            SensorError::Busy
        );
        for _ in 0..10 {
            det.read_frame(&mut buf, Duration::from_secs(1)).unwrap();
        }
        det.stop().unwrap();
        assert!(!det.is_acquiring());
        let e = det.read_frame(&mut buf, Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotAcquiring);
        det.stop().unwrap();
    }

    #[test]
    fn metadata_counts_ids_across_runs_and_matches_the_shape() {
        let mut det = detector(0, SimParams::default());
        let c = AcquisitionConfig {
            roi: Roi {
                min_x: 4,
                min_y: 2,
                size_x: 33,
                size_y: 20,
            },
            binning: Binning { x: 2, y: 4 },
            pixel_type: PixelType::I32,
            ..fast(ImageMode::Multiple, 3)
        };
        let shape = det.configure(&c).unwrap();
        assert_eq!(
            (shape.width, shape.height, shape.pixel_type),
            (16, 5, PixelType::I32)
        );
        assert_eq!(shape.color_mode, ColorMode::Mono);
        let mut buf = vec![0xAAu8; shape.bytes() + 10];
        let mut ids = Vec::new();
        for _ in 0..2 {
            // Timestamps are readout times on the detector's clock: after the start, before
            // the frame leaves the FIFO.
            let started = EpicsTimestamp::now();
            det.start().unwrap();
            while det.is_acquiring() {
                let m = det.read_frame(&mut buf, Duration::from_secs(1)).unwrap();
                assert!(m.timestamp >= started && m.timestamp <= EpicsTimestamp::now());
                assert!((m.unix_time_s - m.timestamp.unix_seconds()).abs() < 1e-6);
                assert_eq!(m.shape, shape);
                ids.push(m.unique_id);
            }
        }
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            &buf[shape.bytes()..],
            &[0xAA; 10],
            "bytes past the frame are untouched"
        );
        det.reset_array_counter();
        det.start().unwrap();
        assert_eq!(
            det.read_frame(&mut buf, Duration::from_secs(1))
                .unwrap()
                .unique_id,
            1
        );

        let e = det
            .read_frame(&mut buf[..shape.bytes() - 1], Duration::ZERO)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert_eq!(
            e.to_string(),
            "buffer of 319 bytes is smaller than one frame of 320 bytes"
        );
    }

    #[test]
    fn the_ramp_continues_across_runs_and_resets_on_new_params() {
        let mut det = detector(0, SimParams::default());
        det.configure(&fast(ImageMode::Multiple, 2)).unwrap();
        let pixel0 = |f: &Vec<u8>| u16::from_ne_bytes([f[0], f[1]]);
        det.start().unwrap();
        let a = frames(&mut det);
        det.start().unwrap();
        let b = frames(&mut det);
        let firsts: Vec<u16> = a.iter().chain(&b).map(pixel0).collect();
        assert_eq!(firsts, [0, 1, 2, 3]);
        // A new ROI does not reset.
        let c = AcquisitionConfig {
            roi: Roi {
                min_x: 1,
                min_y: 0,
                size_x: 8,
                size_y: 8,
            },
            ..fast(ImageMode::Single, 1)
        };
        det.configure(&c).unwrap();
        det.start().unwrap();
        assert_eq!(pixel0(&frames(&mut det)[0]), 1 + 4);
        // New parameters reset: frame 0 again, with gain 2.
        det.set_params(SimParams {
            gain: 2.0,
            ..SimParams::default()
        })
        .unwrap();
        det.start().unwrap();
        assert_eq!(pixel0(&frames(&mut det)[0]), 2);
        // A new pixel type resets as well.
        det.configure(&AcquisitionConfig {
            pixel_type: PixelType::U8,
            ..c
        })
        .unwrap();
        det.start().unwrap();
        assert_eq!(frames(&mut det)[0][0], 2);
    }

    #[test]
    fn same_seed_gives_the_same_frames_and_another_seed_differs() {
        let p = SimParams {
            mode: SimMode::Peaks,
            noise: 100.0,
            peak_variation: 10.0,
            peak_start_x: 32,
            peak_start_y: 24,
            gain: 1000.0,
            ..SimParams::default()
        };
        let run = |seed| {
            let mut det = detector(seed, p.clone());
            det.configure(&fast(ImageMode::Multiple, 5)).unwrap();
            det.start().unwrap();
            frames(&mut det)
        };
        let a = run(1);
        assert_eq!(a, run(1));
        let b = run(2);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        assert!(
            a.windows(2).all(|w| w[0] != w[1]),
            "noise moves between frames"
        );
    }

    #[test]
    fn every_pixel_type_fills_its_frame() {
        let mut det = detector(
            3,
            SimParams {
                mode: SimMode::OffsetNoise,
                offset: 5.0,
                noise: 3.0,
                ..SimParams::default()
            },
        );
        for t in PixelType::ALL {
            let shape = det
                .configure(&AcquisitionConfig {
                    pixel_type: t,
                    ..fast(ImageMode::Single, 1)
                })
                .unwrap();
            assert_eq!(shape.bytes(), 64 * 48 * t.size());
            det.start().unwrap();
            let f = frames(&mut det).remove(0);
            assert_eq!(f.len(), shape.bytes());
            let first = first_pixel(t, &f);
            assert!((5.0..8.0).contains(&first), "{t}: {first}");
        }
    }

    /// The first pixel of a frame of type `t`, as f64.
    fn first_pixel(t: PixelType, f: &[u8]) -> f64 {
        let b2 = [f[0], f[1]];
        let b4 = [f[0], f[1], f[2], f[3]];
        match t {
            PixelType::U8 => f64::from(f[0]),
            PixelType::I8 => f64::from(f[0] as i8),
            PixelType::U16 => f64::from(u16::from_ne_bytes(b2)),
            PixelType::I16 => f64::from(i16::from_ne_bytes(b2)),
            PixelType::U32 => f64::from(u32::from_ne_bytes(b4)),
            PixelType::I32 => f64::from(i32::from_ne_bytes(b4)),
            PixelType::F32 => f64::from(f32::from_ne_bytes(b4)),
            PixelType::F64 => f64::from_ne_bytes(f[..8].try_into().unwrap()),
        }
    }

    #[test]
    fn frames_are_paced_against_absolute_deadlines() {
        let mut det = detector(0, SimParams::default());
        det.configure(&AcquisitionConfig {
            exposure: Duration::ZERO,
            period: Duration::from_millis(20),
            ..fast(ImageMode::Multiple, 5)
        })
        .unwrap();
        let t0 = Instant::now();
        det.start().unwrap();
        let mut stamps_ns = Vec::new();
        while det.is_acquiring() {
            let mut buf = vec![0u8; det.shape().bytes()];
            let m = det.read_frame(&mut buf, Duration::from_secs(5)).unwrap();
            stamps_ns
                .push(u64::from(m.timestamp.sec) * 1_000_000_000 + u64::from(m.timestamp.nsec));
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        // Absolute deadlines: frame k is stamped exactly k periods after frame 0, however late
        // the reader came (a wall-clock upper bound would fail on a loaded machine).
        let offsets: Vec<u64> = stamps_ns.iter().map(|t| t - stamps_ns[0]).collect();
        assert_eq!(
            offsets,
            [0, 20, 40, 60, 80].map(|ms| ms * 1_000_000),
            "{stamps_ns:?}"
        );
        // A reader that slept a whole read timeout (5 s) per frame would show here.
        assert!(took < Duration::from_secs(5), "{took:?}");

        // An exposure longer than the period sets the pace; the first frame waits one exposure.
        det.configure(&AcquisitionConfig {
            exposure: Duration::from_millis(15),
            period: Duration::from_millis(5),
            ..fast(ImageMode::Multiple, 3)
        })
        .unwrap();
        let t0 = Instant::now();
        det.start().unwrap();
        frames(&mut det);
        assert!(
            t0.elapsed() >= Duration::from_millis(45),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_timeout_loses_no_frame() {
        let mut det = detector(0, SimParams::default());
        // Frames one second apart: a 5 ms read times out long before the first one, even on a
        // machine loaded enough to hold this thread back for hundreds of milliseconds.
        det.configure(&AcquisitionConfig {
            exposure: Duration::from_secs(1),
            period: Duration::from_secs(1),
            ..fast(ImageMode::Multiple, 2)
        })
        .unwrap();
        let mut buf = vec![0u8; det.shape().bytes()];
        let t0 = Instant::now(); // before start: frame 1 is due 1 s after start, so after t0
        det.start().unwrap();
        let e = det
            .read_frame(&mut buf, Duration::from_millis(5))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(t0.elapsed() >= Duration::from_millis(5));
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "returned at the timeout, not at the frame"
        );
        assert!(det.is_acquiring());
        let m = det.read_frame(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!((m.unique_id, buf[0], buf[1]), (1, 0, 0), "frame 0 was kept");
        assert!(t0.elapsed() >= Duration::from_secs(1));
        let e = det.read_frame(&mut buf, Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(
            det.read_frame(&mut buf, Duration::from_secs(1))
                .unwrap()
                .unique_id,
            2
        );
        assert!(!det.is_acquiring());
    }
}
