//! `SensorDriver`: the HAL over any `embedded_hal::i2c::I2c` bus and any [`DataPort`],
//! knowing nothing but the register map of [`crate::regs`]. The simulated detector is this
//! driver over [`SimI2c`](crate::SimI2c) and [`SimPort`](crate::SimPort); a board with the
//! same firmware is this driver over the board's bus and frame grabber.
//!
//! # Register sequences
//!
//! | operation | I2C transactions (address bytes, then data, big-endian) |
//! |---|---|
//! | [`SensorDriver::new`] | read 11 bytes from `CHIP_ID` (identity, sensor size, formats, FIFO depth) |
//! | `configure` | write `FRAME_LIMIT`+`TRIGGER_SOURCE`; write `EXPOSURE_NS`+`FRAME_PERIOD_NS`; write `X_START`…`PIXEL_FORMAT` |
//! | `start` | write `MODE_SELECT` = 1 |
//! | `stop` | write `MODE_SELECT` = 0 |
//! | [`SensorDriver::trigger`] | write `SW_TRIGGER` = 1 |
//! | [`SensorDriver::set_params`] | write the pattern block `ANALOG_GAIN`…`SINE_OPERATION` |
//! | `read_frame` | read `STATUS`; then the data port; at the end of a run, read `FRAME_COUNT`+`OVERRUN_COUNT` |
//!
//! # Bus errors
//!
//! Control operations (`configure`, `start`, `stop`, `trigger`, `set_params`) write whole
//! registers, so repeating them is harmless: each transaction is retried up to
//! [`CONTROL_RETRIES`] times before the error is returned. `read_frame` does not retry: a
//! failed status read returns [`ErrorKind::Bus`](detflow_hal::ErrorKind::Bus) with nothing
//! consumed, and the caller decides (the engine retries a few times).
//!
//! # Lost frames
//!
//! Frame numbers in the frame headers count every exposure. A gap before a frame means frames
//! were lost: those the header's `overruns_before` accounts for are reported as
//! [`SensorError::Overrun`], the rest as [`SensorError::FrameLost`], one error per frame, on
//! the calls before the frame itself is delivered. Frames lost at the end of a run are found
//! from `FRAME_COUNT` and `OVERRUN_COUNT` once the detector is back in standby. A frame whose
//! checksum does not match is consumed and reported as [`SensorError::Corrupted`].

use core::fmt::Write as _;
use core::time::Duration;

use detflow_hal::Error as _;
use detflow_hal::{
    AcquisitionConfig, ColorMode, Detector, EpicsTimestamp, ErrorKind, ErrorType, FrameMeta,
    FrameShape, FrameSource, ImageMode, PixelType, Roi, SensorInfo, TriggerMode,
};
use embedded_hal::i2c::{Error as _, I2c};

use crate::error::SensorError;
use crate::params::{SimParams, SineOperation};
use crate::port::{DataPort, FrameChecksum};
use crate::regs::{self, Register};

/// Extra attempts of a control-plane transaction after a bus error.
pub const CONTROL_RETRIES: u32 = 3;

/// Bytes of the pattern-generator block, `ANALOG_GAIN` to `SINE_OPERATION`.
const PATTERN_BYTES: usize = (regs::SINE_OPERATION.end() - regs::ANALOG_GAIN.addr as u32) as usize;

/// Accounting of the run in progress.
#[derive(Debug, Clone, Copy, Default)]
struct RunState {
    /// Frame numbers up to this one were delivered or reported.
    accounted: u64,
    /// Overruns already reported.
    reported_overruns: u64,
    /// Lost frames found and not yet reported, by cause.
    pending_overrun: u64,
    pending_lost: u64,
    /// Frame number the next lost-frame report names.
    next_lost: u64,
    /// Every frame of the run is accounted for.
    over: bool,
}

/// A detector with the detflow firmware, over an I2C bus and a data port.
///
/// ```
/// use std::time::Duration;
/// use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode, Roi};
/// use detflow_sim::{SensorDriver, SimChip, I2C_ADDRESS};
///
/// let chip = SimChip::new(64, 32, 8, 0);
/// let mut det = SensorDriver::new(chip.i2c(), chip.port(), I2C_ADDRESS)?;
/// let shape = det.configure(&AcquisitionConfig {
///     roi: Roi::full(64, 32),
///     image_mode: ImageMode::Single,
///     ..AcquisitionConfig::default()
/// })?;
/// let mut buf = vec![0u8; shape.bytes()];
/// det.start()?;
/// assert_eq!(det.read_frame(&mut buf, Duration::from_secs(1))?.unique_id, 1);
/// # Ok::<(), detflow_sim::SensorError>(())
/// ```
#[derive(Debug)]
pub struct SensorDriver<I2C, PORT> {
    i2c: I2C,
    port: PORT,
    address: u8,
    sensor: (u32, u32),
    pixel_formats: u16,
    fifo_depth: u8,
    config: AcquisitionConfig,
    shape: FrameShape,
    limit: Option<u64>,
    run: Option<RunState>,
    array_counter: u64,
}

fn put(block: &mut [u8], base: u16, reg: &Register, value: u64) {
    let at = (reg.addr - base) as usize;
    let n = reg.bytes as usize;
    block[at..at + n].copy_from_slice(&value.to_be_bytes()[8 - n..]);
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn port_error<E: detflow_hal::Error>(e: E) -> SensorError {
    let mut message = heapless::String::new();
    let _ = write!(message, "{e:?}");
    SensorError::Port {
        kind: match e.kind() {
            ErrorKind::Timeout | ErrorKind::NotAcquiring => ErrorKind::Bus,
            k => k,
        },
        message,
    }
}

impl<I2C: I2c, PORT: DataPort> SensorDriver<I2C, PORT> {
    /// Identifies the chip at `address` and reads its sensor size, pixel formats and FIFO
    /// depth. The driver then assumes the power-on configuration:
    /// [`AcquisitionConfig::default`] on the whole sensor.
    ///
    /// Errors: a bus error, or [`SensorError::WrongChip`].
    pub fn new(i2c: I2C, port: PORT, address: u8) -> Result<Self, SensorError> {
        let mut d = SensorDriver {
            i2c,
            port,
            address,
            sensor: (0, 0),
            pixel_formats: 0,
            fifo_depth: 0,
            config: AcquisitionConfig::default(),
            shape: FrameShape {
                width: 0,
                height: 0,
                pixel_type: PixelType::U16,
                color_mode: ColorMode::Mono,
            },
            limit: None,
            run: None,
            array_counter: 0,
        };
        let mut id = [0u8; 11];
        d.read(&regs::CHIP_ID, &mut id, CONTROL_RETRIES)?;
        let word = |i: usize| u16::from_be_bytes([id[i], id[i + 1]]);
        if word(0) != regs::CHIP_ID_VALUE {
            return Err(SensorError::WrongChip {
                found: word(0),
                expected: regs::CHIP_ID_VALUE,
            });
        }
        d.sensor = (u32::from(word(4)), u32::from(word(6)));
        d.pixel_formats = word(8);
        d.fifo_depth = id[10];
        d.config.roi = Roi::full(d.sensor.0, d.sensor.1);
        d.shape = d.check(&d.config)?;
        d.limit = Some(u64::from(d.config.num_images));
        Ok(d)
    }

    /// Frames the detector's FIFO holds.
    pub fn fifo_depth(&self) -> u8 {
        self.fifo_depth
    }

    /// The shape of the frames `read_frame` delivers with the current configuration.
    pub fn shape(&self) -> FrameShape {
        self.shape
    }

    /// Frames delivered since creation or [`reset_array_counter`](Self::reset_array_counter);
    /// the next frame's unique id is one more.
    pub fn array_counter(&self) -> u64 {
        self.array_counter
    }

    /// Sets the array counter to 0, so that the next frame's unique id is 1.
    pub fn reset_array_counter(&mut self) {
        self.array_counter = 0;
    }

    /// Exposes one frame now (`SW_TRIGGER`), when configured with
    /// [`TriggerMode::External`] (the firmware's software trigger) and acquiring.
    pub fn trigger(&mut self) -> Result<(), SensorError> {
        self.write(&regs::SW_TRIGGER, &[1])
    }

    /// Writes the pattern-generator registers: the image resets before the next frame.
    /// Allowed while acquiring. Refused (nothing written) when `params` has a non-finite
    /// number, a peak width of 0 or more than 256 peaks along an axis.
    pub fn set_params(&mut self, p: &SimParams) -> Result<(), SensorError> {
        p.validate()?;
        let base = regs::ANALOG_GAIN.addr;
        let mut b = [0u8; PATTERN_BYTES];
        let f = |v: f64| v.to_bits();
        let i = |v: i32| u64::from(v as u32);
        for (reg, v) in [
            (&regs::ANALOG_GAIN, f(p.gain)),
            (&regs::GAIN_X, f(p.gain_x)),
            (&regs::GAIN_Y, f(p.gain_y)),
            (&regs::OFFSET, f(p.offset)),
            (&regs::NOISE, f(p.noise)),
            (&regs::PEAK_VARIATION, f(p.peak_variation)),
            (&regs::XSINE1_AMPLITUDE, f(p.x_sine1.amplitude)),
            (&regs::XSINE1_FREQUENCY, f(p.x_sine1.frequency)),
            (&regs::XSINE1_PHASE, f(p.x_sine1.phase_deg)),
            (&regs::XSINE2_AMPLITUDE, f(p.x_sine2.amplitude)),
            (&regs::XSINE2_FREQUENCY, f(p.x_sine2.frequency)),
            (&regs::XSINE2_PHASE, f(p.x_sine2.phase_deg)),
            (&regs::YSINE1_AMPLITUDE, f(p.y_sine1.amplitude)),
            (&regs::YSINE1_FREQUENCY, f(p.y_sine1.frequency)),
            (&regs::YSINE1_PHASE, f(p.y_sine1.phase_deg)),
            (&regs::YSINE2_AMPLITUDE, f(p.y_sine2.amplitude)),
            (&regs::YSINE2_FREQUENCY, f(p.y_sine2.frequency)),
            (&regs::YSINE2_PHASE, f(p.y_sine2.phase_deg)),
            (&regs::PEAK_START_X, i(p.peak_start_x)),
            (&regs::PEAK_START_Y, i(p.peak_start_y)),
            (&regs::PEAK_WIDTH_X, u64::from(p.peak_width_x)),
            (&regs::PEAK_WIDTH_Y, u64::from(p.peak_width_y)),
            (&regs::PEAK_NUM_X, u64::from(p.peak_num_x)),
            (&regs::PEAK_NUM_Y, u64::from(p.peak_num_y)),
            (&regs::PEAK_STEP_X, i(p.peak_step_x)),
            (&regs::PEAK_STEP_Y, i(p.peak_step_y)),
            (
                &regs::TEST_PATTERN,
                crate::SimMode::ALL
                    .iter()
                    .position(|m| *m == p.mode)
                    .unwrap_or(0) as u64,
            ),
            (
                &regs::SINE_OPERATION,
                u64::from(p.x_sine_operation == SineOperation::Multiply)
                    | u64::from(p.y_sine_operation == SineOperation::Multiply) << 1,
            ),
        ] {
            put(&mut b, base, reg, v);
        }
        self.write(&regs::ANALOG_GAIN, &b)
    }

    /// Rebuilds the image before the next frame (`PATTERN_RESET`).
    pub fn reset_pattern(&mut self) -> Result<(), SensorError> {
        self.write(&regs::PATTERN_RESET, &[1])
    }

    /// The bus and the port back.
    pub fn release(self) -> (I2C, PORT) {
        (self.i2c, self.port)
    }

    /// One write transaction from `reg` on, retried on bus errors.
    fn write(&mut self, reg: &Register, data: &[u8]) -> Result<(), SensorError> {
        let mut tx: heapless::Vec<u8, { 2 + PATTERN_BYTES }> = heapless::Vec::new();
        let _ = tx.extend_from_slice(&reg.addr.to_be_bytes());
        let _ = tx.extend_from_slice(data);
        let mut attempt = 0;
        loop {
            match self.i2c.write(self.address, &tx) {
                Ok(()) => return Ok(()),
                Err(_) if attempt < CONTROL_RETRIES => attempt += 1,
                Err(e) => {
                    return Err(SensorError::Bus {
                        op: "write",
                        register: reg.name,
                        fault: e.kind(),
                    });
                }
            }
        }
    }

    /// One read transaction of `buf.len()` bytes from `reg` on.
    fn read(&mut self, reg: &Register, buf: &mut [u8], retries: u32) -> Result<(), SensorError> {
        let mut attempt = 0;
        loop {
            match self
                .i2c
                .write_read(self.address, &reg.addr.to_be_bytes(), buf)
            {
                Ok(()) => return Ok(()),
                Err(_) if attempt < retries => attempt += 1,
                Err(e) => {
                    return Err(SensorError::Bus {
                        op: "read",
                        register: reg.name,
                        fault: e.kind(),
                    });
                }
            }
        }
    }

    /// Checks `c` against the sensor; returns the frame shape.
    fn check(&self, c: &AcquisitionConfig) -> Result<FrameShape, SensorError> {
        let axes = [
            (
                'x',
                "width",
                c.roi.min_x,
                c.roi.size_x,
                c.binning.x,
                self.sensor.0,
            ),
            (
                'y',
                "height",
                c.roi.min_y,
                c.roi.size_y,
                c.binning.y,
                self.sensor.1,
            ),
        ];
        let mut out = [0u32; 2];
        for (n, (axis, extent, min, size, bin, max)) in axes.into_iter().enumerate() {
            let (size_name, bin_name) = if axis == 'x' {
                ("roi size_x", "binning x")
            } else {
                ("roi size_y", "binning y")
            };
            if size == 0 {
                return Err(SensorError::out_of_range(size_name, 0, 1, max.into()));
            }
            if u64::from(min) + u64::from(size) > u64::from(max) {
                return Err(SensorError::RoiOutsideSensor {
                    axis,
                    min,
                    size,
                    extent,
                    max,
                });
            }
            if bin == 0 || bin > size {
                return Err(SensorError::out_of_range(
                    bin_name,
                    bin.into(),
                    1,
                    size.into(),
                ));
            }
            out[n] = size / bin;
        }
        if c.image_mode == ImageMode::Multiple && c.num_images == 0 {
            return Err(SensorError::out_of_range(
                "num_images",
                0,
                1,
                u32::MAX.into(),
            ));
        }
        if self.pixel_formats & (1 << c.pixel_type.nd_data_type()) == 0 {
            return Err(SensorError::UnsupportedPixelType(c.pixel_type));
        }
        Ok(FrameShape {
            width: out[0],
            height: out[1],
            pixel_type: c.pixel_type,
            color_mode: ColorMode::Mono,
        })
    }

    /// Reports the next pending lost frame, if any.
    fn report_pending(&mut self) -> Option<SensorError> {
        let run = self.run.as_mut()?;
        let frame = run.next_lost;
        if run.pending_overrun > 0 {
            run.pending_overrun -= 1;
            run.next_lost += 1;
            return Some(SensorError::Overrun { frame });
        }
        if run.pending_lost > 0 {
            run.pending_lost -= 1;
            run.next_lost += 1;
            return Some(SensorError::FrameLost { frame });
        }
        None
    }

    /// Frames up to `last` are missing, `overruns` (the detector's count) explains some.
    fn missing(&mut self, last: u64, overruns: u64) {
        if let Some(run) = self.run.as_mut()
            && last > run.accounted
        {
            let gap = last - run.accounted;
            let by_overrun = overruns.saturating_sub(run.reported_overruns).min(gap);
            run.reported_overruns += by_overrun;
            run.pending_overrun += by_overrun;
            run.pending_lost += gap - by_overrun;
            run.next_lost = run.accounted + 1;
            run.accounted = last;
        }
    }

    /// The detector is in standby with an empty FIFO: account for frames lost at the end.
    fn finish_run(&mut self) -> SensorError {
        let mut counts = [0u8; 8];
        if let Err(e) = self.read(&regs::FRAME_COUNT, &mut counts, 0) {
            return e;
        }
        let exposed = u64::from(u32::from_be_bytes([
            counts[0], counts[1], counts[2], counts[3],
        ]));
        let overruns = u64::from(u32::from_be_bytes([
            counts[4], counts[5], counts[6], counts[7],
        ]));
        self.missing(exposed, overruns);
        if let Some(run) = self.run.as_mut() {
            run.over = true;
        }
        self.report_pending().unwrap_or_else(|| {
            self.run = None;
            SensorError::NotAcquiring
        })
    }
}

impl<I2C, PORT> ErrorType for SensorDriver<I2C, PORT> {
    type Error = SensorError;
}

impl<I2C: I2c, PORT: DataPort> Detector for SensorDriver<I2C, PORT> {
    fn info(&self) -> SensorInfo {
        let name = |s: &str| heapless::String::try_from(s).unwrap_or_default();
        SensorInfo {
            manufacturer: name("Simulated detector"),
            model: name("Basic simulator"),
            max_width: self.sensor.0,
            max_height: self.sensor.1,
            pixel_types: PixelType::ALL
                .into_iter()
                .filter(|t| self.pixel_formats & (1 << t.nd_data_type()) != 0)
                .collect(),
        }
    }

    /// Checks `config` against the sensor and writes it. Refused with kind `InvalidConfig`
    /// (nothing written): a ROI of size 0 or reaching past the sensor, a binning of 0 or
    /// larger than the ROI, `num_images` 0 in Multiple mode, a pixel type the chip does not
    /// list, or any call during an acquisition. [`TriggerMode::External`] selects the
    /// firmware's software trigger ([`SensorDriver::trigger`]).
    fn configure(&mut self, c: &AcquisitionConfig) -> Result<FrameShape, SensorError> {
        if self.is_acquiring() {
            return Err(SensorError::Busy);
        }
        self.run = None;
        let shape = self.check(c)?;
        let limit: u32 = match c.image_mode {
            ImageMode::Single => 1,
            ImageMode::Multiple => c.num_images,
            ImageMode::Continuous => 0,
        };
        let mut run = [0u8; 5];
        run[..4].copy_from_slice(&limit.to_be_bytes());
        run[4] = u8::from(c.trigger_mode == TriggerMode::External);
        self.write(&regs::FRAME_LIMIT, &run)?;
        let mut timing = [0u8; 16];
        timing[..8].copy_from_slice(&duration_ns(c.exposure).to_be_bytes());
        timing[8..].copy_from_slice(&duration_ns(c.period).to_be_bytes());
        self.write(&regs::EXPOSURE_NS, &timing)?;
        let mut geometry = [0u8; 13];
        for (i, v) in [
            c.roi.min_x,
            c.roi.min_y,
            c.roi.size_x,
            c.roi.size_y,
            c.binning.x,
            c.binning.y,
        ]
        .into_iter()
        .enumerate()
        {
            geometry[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes());
        }
        geometry[12] = c.pixel_type.nd_data_type() as u8;
        self.write(&regs::X_START, &geometry)?;
        self.config = c.clone();
        self.shape = shape;
        self.limit = (limit > 0).then_some(u64::from(limit));
        Ok(shape)
    }

    /// Starts streaming (`MODE_SELECT` = 1). Starting while acquiring changes nothing.
    fn start(&mut self) -> Result<(), SensorError> {
        if self.is_acquiring() {
            return Ok(());
        }
        self.write(&regs::MODE_SELECT, &[1])?;
        self.run = Some(RunState::default());
        Ok(())
    }

    /// Stops streaming (`MODE_SELECT` = 0); frames in the FIFO are discarded.
    fn stop(&mut self) -> Result<(), SensorError> {
        self.write(&regs::MODE_SELECT, &[0])?;
        self.run = None;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.run
            .is_some_and(|r| !r.over || r.pending_overrun + r.pending_lost > 0)
    }
}

impl<I2C: I2c, PORT: DataPort> FrameSource for SensorDriver<I2C, PORT> {
    /// Polls `STATUS`, waits up to `timeout` for a frame at the head of the FIFO, transfers it
    /// into `buf` and checks its checksum. Lost and corrupted frames are reported one error
    /// per frame (see the module docs); a timeout loses nothing.
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, SensorError> {
        if let Some(e) = self.report_pending() {
            return Err(e);
        }
        let Some(run) = self.run else {
            return Err(SensorError::NotAcquiring);
        };
        if run.over {
            self.run = None;
            return Err(SensorError::NotAcquiring);
        }
        let needed = self.shape.bytes();
        if buf.len() < needed {
            return Err(SensorError::BufferTooSmall {
                len: buf.len(),
                needed,
            });
        }
        // The frame-ready status, as an interrupt handler reads it.
        let mut st = [0u8; 2];
        self.read(&regs::STATUS, &mut st, 0)?;
        let status = u16::from_be_bytes(st);
        let level = status >> regs::STATUS_FIFO_LEVEL_SHIFT;
        if level == 0 && status & regs::STATUS_BUSY == 0 {
            return Err(self.finish_run());
        }
        let wait = if level > 0 { Duration::ZERO } else { timeout };
        let header = match self.port.wait_frame(wait) {
            Ok(h) => h,
            Err(e) if e.kind() == ErrorKind::NotAcquiring => return Err(self.finish_run()),
            Err(e) if e.kind() == ErrorKind::Timeout => return Err(SensorError::Timeout(timeout)),
            Err(e) => return Err(port_error(e)),
        };
        let number = u64::from(header.frame_number);
        if number > run.accounted + 1 {
            self.missing(number - 1, u64::from(header.overruns_before));
            if let Some(e) = self.report_pending() {
                return Err(e);
            }
        }
        if header.bytes as usize != needed {
            let mut message = heapless::String::new();
            let _ = write!(
                message,
                "frame {number} has {} bytes, the configuration {needed}",
                header.bytes
            );
            return Err(SensorError::Port {
                kind: ErrorKind::Corrupted,
                message,
            });
        }
        // Each block is checked as it lands, while it is in cache.
        let mut check = FrameChecksum::new();
        let footer = self
            .port
            .transfer_blocks(&mut buf[..needed], &mut |block| check.update(block))
            .map_err(port_error)?;
        if let Some(run) = self.run.as_mut() {
            run.accounted = number;
            run.over = self.limit.is_some_and(|n| number >= n);
        }
        let found = check.finish();
        if found != footer.checksum {
            return Err(SensorError::Corrupted {
                frame: number,
                expected: footer.checksum,
                found,
            });
        }
        self.array_counter += 1;
        let ns = header.timestamp_ns;
        let timestamp = EpicsTimestamp::from_unix(ns / 1_000_000_000, (ns % 1_000_000_000) as u32);
        Ok(FrameMeta {
            unique_id: self.array_counter,
            timestamp,
            unix_time_s: timestamp.unix_seconds(),
            shape: self.shape,
        })
    }
}
