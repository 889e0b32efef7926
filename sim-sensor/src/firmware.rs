//! The detector's firmware, simulated: a register file with the side effects of
//! [`crate::regs`], a frame clock, a FIFO of limited depth in front of the data port, the
//! image generator behind it, and a fault injector. It is reached only through its two
//! ports: [`SimI2c`] (control, `embedded_hal::i2c::I2c`) and [`SimPort`] (frames,
//! [`DataPort`]); both are handles on one [`SimChip`].
//!
//! The FIFO holds frame descriptors; a frame's pixels are rendered when the data port
//! transfers it (the readout), from the frame's index since the last image reset, so they are
//! what the sensor exposed. Time advances lazily: whenever a port is used the firmware
//! catches up with the frames that became due since, and a frame due while the FIFO is full
//! is lost and counted in `OVERRUN_COUNT`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use detflow_hal::{ErrorKind, PixelType};
use embedded_hal::i2c::{self, NoAcknowledgeSource, Operation, SevenBitAddress};

use crate::image::{AnyPlan, Readout};
use crate::params::{SimMode, SimParams, Sine, SineOperation};
use crate::port::{DataPort, FrameChecksum, FrameFooter, FrameHeader};
use crate::regs::{self, Access, Format, MAP, Reset, addr};
use crate::rng;

/// The 7-bit I2C address the simulated detector answers on.
pub const I2C_ADDRESS: u8 = 0x36;

/// Deepest FIFO a chip can be made with, in frames.
pub const MAX_FIFO_DEPTH: usize = 64;

/// How long an injected bus timeout holds the bus before failing.
const BUS_TIMEOUT: Duration = Duration::from_millis(2);

/// A fault the simulation can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// An I2C transaction is not acknowledged (nothing is applied).
    Nack,
    /// An I2C transaction hangs, then fails (nothing is applied).
    BusTimeout,
    /// A frame is exposed but never reaches the FIFO (lost on the sensor link).
    Drop,
    /// A frame's bytes are damaged after its checksum was computed.
    Corrupt,
    /// A frame is lost as if the FIFO were full (`OVERRUN_COUNT`, `STATUS.OVERRUN`).
    Overrun,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Nack,
        Fault::BusTimeout,
        Fault::Drop,
        Fault::Corrupt,
        Fault::Overrun,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Probabilities of injected faults: per I2C transaction for `nack` and `bus_timeout`, per
/// exposed frame for the others. All 0 by default. Draws come from the chip's seed, so a run
/// is reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultRates {
    /// Probability that a transaction is NACKed.
    pub nack: f64,
    /// Probability that a transaction times out.
    pub bus_timeout: f64,
    /// Probability that a frame is dropped on the sensor link.
    pub drop: f64,
    /// Probability that a frame is corrupted.
    pub corrupt: f64,
    /// Probability that a frame is lost to an (injected) FIFO overrun.
    pub overrun: f64,
}

impl FaultRates {
    fn of(&self, f: Fault) -> f64 {
        match f {
            Fault::Nack => self.nack,
            Fault::BusTimeout => self.bus_timeout,
            Fault::Drop => self.drop,
            Fault::Corrupt => self.corrupt,
            Fault::Overrun => self.overrun,
        }
    }
}

/// What the simulation did to the detector so far (injected faults and real overruns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// I2C transactions NACKed by injection.
    pub nacks: u64,
    /// I2C transactions that timed out by injection.
    pub bus_timeouts: u64,
    /// Frames dropped on the sensor link by injection.
    pub dropped: u64,
    /// Frames corrupted by injection.
    pub corrupted: u64,
    /// Frames lost to a full FIFO, real or injected.
    pub overruns: u64,
}

#[derive(Debug)]
struct Faults {
    rates: FaultRates,
    /// Faults asked for on demand, per [`Fault`], taken before any rate draw.
    pending: [u64; 5],
    counts: FaultCounts,
    key: u64,
    draws: u64,
}

impl Faults {
    /// True if `f` strikes now.
    fn strike(&mut self, f: Fault) -> bool {
        let p = &mut self.pending[f.index()];
        if *p > 0 {
            *p -= 1;
            return true;
        }
        let rate = self.rates.of(f);
        if rate <= 0.0 {
            return false;
        }
        self.draws += 1;
        rng::unit(rng::at(self.key, self.draws)) < rate
    }
}

/// A frame waiting in the FIFO.
#[derive(Debug, Clone, Copy)]
struct Entry {
    frame_number: u32,
    overruns_before: u32,
    /// Frames since the last image reset: selects the ramp step, sine time, noise shift.
    k: u64,
    timestamp_ns: u64,
    corrupt: bool,
}

/// A run in progress (or finished: `streaming` false).
#[derive(Debug, Clone, Copy)]
struct Run {
    start: Instant,
    start_unix_ns: u64,
    exposure: Duration,
    /// `max(period, exposure)`; zero means free running on FIFO room.
    frame_period: Duration,
    limit: Option<u64>,
    software_trigger: bool,
    /// Software triggers received and not yet exposed.
    triggers: u64,
}

/// The firmware state. Only [`SimChip`] touches it, under its lock.
#[derive(Debug)]
struct Firmware {
    sensor: (u32, u32),
    fifo_depth: usize,
    seed: u64,
    /// Register values by index in [`MAP`] (raw bits); live registers are computed on read.
    values: Vec<u64>,
    /// The geometry and format latched when streaming started.
    readout: Readout,
    pixel_type: PixelType,
    plan: Option<AnyPlan>,
    reset_pending: bool,
    frames_since_reset: u64,
    streaming: bool,
    run: Option<Run>,
    /// `FRAME_COUNT`, `OVERRUN_COUNT`.
    frame_count: u64,
    overrun_count: u64,
    overrun_flag: bool,
    fifo: VecDeque<Entry>,
    faults: Faults,
    /// Address pointer for reads that follow a separate address write.
    pointer: u16,
    temperature_c: f64,
    temperature_at: Instant,
    created: Instant,
}

fn index_of(a: u16) -> usize {
    MAP.iter()
        .position(|r| r.addr == a)
        .expect("address constants come from the map")
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Firmware {
    fn new(sensor: (u32, u32), fifo_depth: usize, seed: u64) -> Self {
        let values = MAP
            .iter()
            .map(|r| match r.reset {
                Reset::Value(v) => v,
                Reset::Float(f) => f.to_bits(),
                Reset::SensorWidth => u64::from(sensor.0),
                Reset::SensorHeight => u64::from(sensor.1),
                Reset::FifoDepth => fifo_depth as u64,
            })
            .collect();
        let now = Instant::now();
        Firmware {
            sensor,
            fifo_depth,
            seed,
            values,
            readout: Readout {
                sensor_width: sensor.0 as usize,
                sensor_height: sensor.1 as usize,
                min_x: 0,
                min_y: 0,
                bin_x: 1,
                bin_y: 1,
                width: sensor.0 as usize,
                height: sensor.1 as usize,
            },
            pixel_type: PixelType::U16,
            plan: None,
            reset_pending: true,
            frames_since_reset: 0,
            streaming: false,
            run: None,
            frame_count: 0,
            overrun_count: 0,
            overrun_flag: false,
            fifo: VecDeque::with_capacity(fifo_depth),
            faults: Faults {
                rates: FaultRates::default(),
                pending: [0; 5],
                counts: FaultCounts::default(),
                key: rng::derive(seed, 0xFA17),
                draws: 0,
            },
            pointer: 0,
            temperature_c: 25.0,
            temperature_at: now,
            created: now,
        }
    }

    fn get(&self, a: u16) -> u64 {
        self.values[index_of(a)]
    }

    fn float(&self, a: u16) -> f64 {
        f64::from_bits(self.get(a))
    }

    fn signed32(&self, a: u16) -> i32 {
        self.get(a) as u32 as i32
    }

    /// The simulation parameters the pattern registers hold.
    fn params(&self) -> SimParams {
        let sine = |base: u16| Sine {
            amplitude: self.float(base),
            frequency: self.float(base + 8),
            phase_deg: self.float(base + 16),
        };
        let op = |bit: u64| {
            if self.get(addr::SINE_OPERATION) & bit != 0 {
                SineOperation::Multiply
            } else {
                SineOperation::Add
            }
        };
        SimParams {
            mode: SimMode::ALL[(self.get(addr::TEST_PATTERN) as usize).min(3)],
            gain: self.float(addr::ANALOG_GAIN),
            gain_x: self.float(addr::GAIN_X),
            gain_y: self.float(addr::GAIN_Y),
            offset: self.float(addr::OFFSET),
            noise: self.float(addr::NOISE),
            peak_start_x: self.signed32(addr::PEAK_START_X),
            peak_start_y: self.signed32(addr::PEAK_START_Y),
            peak_width_x: self.get(addr::PEAK_WIDTH_X) as u32,
            peak_width_y: self.get(addr::PEAK_WIDTH_Y) as u32,
            peak_num_x: self.get(addr::PEAK_NUM_X) as u32,
            peak_num_y: self.get(addr::PEAK_NUM_Y) as u32,
            peak_step_x: self.signed32(addr::PEAK_STEP_X),
            peak_step_y: self.signed32(addr::PEAK_STEP_Y),
            peak_variation: self.float(addr::PEAK_VARIATION),
            x_sine1: sine(addr::XSINE1_AMPLITUDE),
            x_sine2: sine(addr::XSINE2_AMPLITUDE),
            y_sine1: sine(addr::YSINE1_AMPLITUDE),
            y_sine2: sine(addr::YSINE2_AMPLITUDE),
            x_sine_operation: op(1),
            y_sine_operation: op(2),
        }
    }

    /// The value a read of register `i` returns.
    fn read_register(&mut self, i: usize, now: Instant) -> u64 {
        let r = &MAP[i];
        match r.addr {
            addr::MODE_SELECT => u64::from(self.streaming),
            addr::STATUS => {
                let mut s = 0u16;
                if self.streaming {
                    s |= regs::STATUS_BUSY;
                    if self.run.is_some_and(|r| r.software_trigger) {
                        s |= regs::STATUS_WAIT_TRIGGER;
                    }
                }
                if self.overrun_flag {
                    s |= regs::STATUS_OVERRUN;
                }
                s |= (self.fifo.len().min(255) as u16) << regs::STATUS_FIFO_LEVEL_SHIFT;
                u64::from(s)
            }
            addr::FRAME_COUNT => self.frame_count.min(u64::from(u32::MAX)),
            addr::OVERRUN_COUNT => self.overrun_count.min(u64::from(u32::MAX)),
            addr::TEMPERATURE => {
                let dt = now.duration_since(self.temperature_at).as_secs_f64();
                let target = if self.streaming { 40.0 } else { 25.0 };
                self.temperature_c += (target - self.temperature_c) * (1.0 - (-dt / 20.0).exp());
                self.temperature_at = now;
                let t = now.duration_since(self.created).as_secs_f64();
                let ripple = 0.05 * (core::f64::consts::TAU * t / 7.0).sin();
                let centi = ((self.temperature_c + ripple) * 100.0).round() as i16;
                u64::from(centi as u16)
            }
            _ if r.access == Access::WriteSelfClearing => 0,
            _ => self.values[i],
        }
    }

    /// Checks a value for register `i`; `false` NACKs the write.
    fn value_ok(&self, i: usize, v: u64) -> bool {
        let r = &MAP[i];
        if r.format == Format::Float {
            return f64::from_bits(v).is_finite();
        }
        match r.addr {
            addr::MODE_SELECT | addr::TRIGGER_SOURCE | addr::SW_TRIGGER | addr::PATTERN_RESET => {
                v <= 1
            }
            addr::X_SIZE | addr::Y_SIZE | addr::BIN_X | addr::BIN_Y => v >= 1,
            addr::PIXEL_FORMAT => PixelType::from_nd_data_type(v as i32).is_some(),
            addr::TEST_PATTERN => v <= 3,
            addr::SINE_OPERATION => v <= 3,
            addr::PEAK_WIDTH_X | addr::PEAK_WIDTH_Y => v >= 1,
            addr::PEAK_NUM_X | addr::PEAK_NUM_Y => v <= u64::from(crate::params::MAX_PEAK_NUM),
            _ => true,
        }
    }

    /// Applies one write transaction (`data` after the 2 address bytes) whole, or NACKs it.
    fn write(&mut self, start: u16, data: &[u8], now: Instant) -> Result<(), SimBusError> {
        let nack = Err(SimBusError::Nack(NoAcknowledgeSource::Data));
        // Decode and check first: nothing is applied unless all of it is good.
        let mut writes: heapless::Vec<(usize, u64), 64> = heapless::Vec::new();
        let mut a = u32::from(start);
        let mut rest = data;
        while !rest.is_empty() {
            let Some((i, r)) = u16::try_from(a).ok().and_then(regs::find) else {
                return nack;
            };
            if u32::from(r.addr) != a || rest.len() < r.bytes as usize {
                return nack;
            }
            let (bytes, tail) = rest.split_at(r.bytes as usize);
            let v = bytes.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
            // Timing, geometry and run settings are latched while streaming.
            let locked = self.streaming
                && (matches!(r.addr & 0xFF00, 0x0200 | 0x0300)
                    || matches!(r.addr, addr::FRAME_LIMIT | addr::TRIGGER_SOURCE));
            if r.access == Access::ReadOnly || locked || !self.value_ok(i, v) {
                return nack;
            }
            if writes.push((i, v)).is_err() {
                return nack;
            }
            a += u32::from(r.bytes);
            rest = tail;
        }
        // Starting checks the geometry as it will be after this transaction.
        let starting = writes
            .iter()
            .any(|&(i, v)| MAP[i].addr == addr::MODE_SELECT && v == 1)
            && !self.streaming;
        if starting {
            let mut values = self.values.clone();
            for &(i, v) in &writes {
                values[i] = v;
            }
            if self.geometry(&values).is_none() {
                return nack;
            }
        }
        for &(i, v) in &writes {
            let r = &MAP[i];
            match r.addr {
                addr::MODE_SELECT => {
                    if v == 1 && !self.streaming {
                        self.start(now);
                    } else if v == 0 {
                        self.stop();
                    }
                }
                addr::SW_TRIGGER => {
                    if let Some(run) = self.run.as_mut().filter(|r| r.software_trigger)
                        && self.streaming
                    {
                        run.triggers += 1;
                    }
                }
                addr::PATTERN_RESET => self.reset_pending = true,
                _ => {
                    self.values[i] = v;
                    if r.addr & 0xFF00 == 0x0400 {
                        self.reset_pending = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// The readout and pixel type of `values`, if the geometry fits the sensor.
    fn geometry(&self, values: &[u64]) -> Option<(Readout, PixelType)> {
        let v = |a: u16| values[index_of(a)];
        let (x0, y0, sx, sy, bx, by) = (
            v(addr::X_START),
            v(addr::Y_START),
            v(addr::X_SIZE),
            v(addr::Y_SIZE),
            v(addr::BIN_X),
            v(addr::BIN_Y),
        );
        let (w, h) = (u64::from(self.sensor.0), u64::from(self.sensor.1));
        if sx == 0 || sy == 0 || x0 + sx > w || y0 + sy > h || bx == 0 || by == 0 {
            return None;
        }
        if bx > sx || by > sy {
            return None;
        }
        let pixel_type = PixelType::from_nd_data_type(v(addr::PIXEL_FORMAT) as i32)?;
        Some((
            Readout {
                sensor_width: w as usize,
                sensor_height: h as usize,
                min_x: x0 as usize,
                min_y: y0 as usize,
                bin_x: bx as usize,
                bin_y: by as usize,
                width: (sx / bx) as usize,
                height: (sy / by) as usize,
            },
            pixel_type,
        ))
    }

    fn start(&mut self, now: Instant) {
        let Some((readout, pixel_type)) = self.geometry(&self.values) else {
            return;
        };
        if pixel_type != self.pixel_type {
            self.reset_pending = true;
        }
        if readout != self.readout || pixel_type != self.pixel_type {
            self.plan = None;
        }
        self.readout = readout;
        self.pixel_type = pixel_type;
        self.apply_reset();
        // Build the image before the clock starts, as the old ADSimDetector reset does.
        self.plan();
        let exposure = Duration::from_nanos(self.get(addr::EXPOSURE_NS));
        let period = Duration::from_nanos(self.get(addr::FRAME_PERIOD_NS));
        let limit = self.get(addr::FRAME_LIMIT);
        self.fifo.clear();
        self.frame_count = 0;
        self.overrun_count = 0;
        self.overrun_flag = false;
        self.streaming = true;
        let start = Instant::now().max(now);
        self.run = Some(Run {
            start,
            start_unix_ns: unix_ns(SystemTime::now()),
            exposure,
            frame_period: period.max(exposure),
            limit: (limit > 0).then_some(limit),
            software_trigger: self.get(addr::TRIGGER_SOURCE) == 1,
            triggers: 0,
        });
    }

    fn stop(&mut self) {
        self.streaming = false;
        self.fifo.clear();
    }

    fn apply_reset(&mut self) {
        if core::mem::take(&mut self.reset_pending) {
            self.frames_since_reset = 0;
            self.plan = None;
        }
    }

    fn plan(&mut self) -> &mut AnyPlan {
        if self.plan.is_none() {
            let params = self.params();
            self.plan = Some(AnyPlan::build(
                self.pixel_type,
                &params,
                self.readout,
                self.seed,
            ));
        }
        self.plan.as_mut().expect("built above")
    }

    /// When the next frame of the running clock is due; `None` when none will come by the
    /// clock (idle, software trigger, free running, or the limit reached).
    fn next_due(&self) -> Option<Instant> {
        let run = self.run.filter(|r| self.streaming && !r.software_trigger)?;
        if run.frame_period.is_zero() {
            return None;
        }
        let n = self.frame_count;
        let nanos = run.frame_period.as_nanos() * u128::from(n) + run.exposure.as_nanos();
        run.start
            .checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }

    /// Exposes every frame that became due up to `now`.
    fn tick(&mut self, now: Instant) {
        while self.streaming {
            let Some(run) = self.run else { return };
            if run.limit.is_some_and(|n| self.frame_count >= n) {
                self.streaming = false;
                return;
            }
            let at = if run.software_trigger {
                if run.triggers == 0 {
                    return;
                }
                if let Some(r) = self.run.as_mut() {
                    r.triggers -= 1;
                }
                now
            } else if run.frame_period.is_zero() {
                if self.fifo.len() >= self.fifo_depth {
                    return;
                }
                now
            } else {
                match self.next_due() {
                    Some(due) if due <= now => due,
                    _ => return,
                }
            };
            let ns = run.start_unix_ns + duration_ns(at.saturating_duration_since(run.start));
            self.expose(ns);
        }
    }

    /// One exposure: into the FIFO, or lost.
    fn expose(&mut self, timestamp_ns: u64) {
        self.apply_reset();
        self.frame_count += 1;
        let k = self.frames_since_reset;
        self.frames_since_reset += 1;
        if self.fifo.len() >= self.fifo_depth || self.faults.strike(Fault::Overrun) {
            self.overrun_count += 1;
            self.overrun_flag = true;
            self.faults.counts.overruns += 1;
            return;
        }
        if self.faults.strike(Fault::Drop) {
            self.faults.counts.dropped += 1;
            return;
        }
        let corrupt = self.faults.strike(Fault::Corrupt);
        if corrupt {
            self.faults.counts.corrupted += 1;
        }
        self.fifo.push_back(Entry {
            frame_number: self.frame_count.min(u64::from(u32::MAX)) as u32,
            overruns_before: self.overrun_count.min(u64::from(u32::MAX)) as u32,
            k,
            timestamp_ns,
            corrupt,
        });
    }

    fn header(&self, e: &Entry) -> FrameHeader {
        let r = self.readout;
        FrameHeader {
            frame_number: e.frame_number,
            overruns_before: e.overruns_before,
            width: r.width as u16,
            height: r.height as u16,
            pixel_format: self.pixel_type.nd_data_type() as u8,
            bytes: (r.pixels() * self.pixel_type.size()) as u32,
            timestamp_ns: e.timestamp_ns,
        }
    }
}

/// Errors of the simulated I2C bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimBusError {
    /// The transaction was not acknowledged: wrong address, or a write the firmware refused.
    #[error("I2C NACK ({0:?})")]
    Nack(NoAcknowledgeSource),
    /// The bus hung and the transaction timed out.
    #[error("I2C bus timeout")]
    Timeout,
}

impl i2c::Error for SimBusError {
    fn kind(&self) -> i2c::ErrorKind {
        match self {
            SimBusError::Nack(s) => i2c::ErrorKind::NoAcknowledge(*s),
            SimBusError::Timeout => i2c::ErrorKind::Other,
        }
    }
}

/// Errors of the simulated data port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimPortError {
    /// No frame arrived within the timeout.
    #[error("no frame in the FIFO within {0:?}")]
    Timeout(Duration),
    /// The FIFO is empty and the detector is in standby.
    #[error("the FIFO is empty and the detector is in standby")]
    Idle,
    /// A transfer into a buffer smaller than the frame.
    #[error("a {len}-byte buffer cannot take a {needed}-byte frame")]
    BufferTooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes of the frame.
        needed: usize,
    },
}

impl detflow_hal::Error for SimPortError {
    fn kind(&self) -> ErrorKind {
        match self {
            SimPortError::Timeout(_) => ErrorKind::Timeout,
            SimPortError::Idle => ErrorKind::NotAcquiring,
            SimPortError::BufferTooSmall { .. } => ErrorKind::InvalidConfig,
        }
    }
}

/// The simulated detector chip: firmware state shared by its I2C and data ports, and the
/// fault-injection and inspection handle tests use. Cloning gives another handle on the same
/// chip.
#[derive(Debug, Clone)]
pub struct SimChip {
    shared: Arc<(Mutex<Firmware>, Condvar)>,
}

impl SimChip {
    /// A chip with a `width` x `height` sensor, a FIFO of `fifo_depth` frames (clamped to
    /// `1..=64`) and the seed of its noise and fault draws. Registers hold their reset values.
    pub fn new(width: u32, height: u32, fifo_depth: usize, seed: u64) -> Self {
        let fw = Firmware::new((width, height), fifo_depth.clamp(1, MAX_FIFO_DEPTH), seed);
        SimChip {
            shared: Arc::new((Mutex::new(fw), Condvar::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Firmware> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The control port.
    pub fn i2c(&self) -> SimI2c {
        SimI2c { chip: self.clone() }
    }

    /// The data port.
    pub fn port(&self) -> SimPort {
        SimPort { chip: self.clone() }
    }

    /// Injects `count` more faults of kind `fault`, one at each next opportunity (transaction
    /// or frame).
    pub fn inject(&self, fault: Fault, count: u64) {
        self.lock().faults.pending[fault.index()] += count;
    }

    /// Sets the rates of random faults.
    pub fn set_fault_rates(&self, rates: FaultRates) {
        self.lock().faults.rates = rates;
    }

    /// Faults injected so far, and FIFO overruns.
    pub fn fault_counts(&self) -> FaultCounts {
        self.lock().faults.counts
    }

    /// Reads a register without the bus (a debugger's view): live registers show their
    /// current value. `None` for an address no register starts at.
    pub fn peek(&self, register: u16) -> Option<u64> {
        let mut fw = self.lock();
        let now = Instant::now();
        fw.tick(now);
        let i = MAP.iter().position(|r| r.addr == register)?;
        Some(fw.read_register(i, now))
    }

    /// Discards on-demand faults not yet injected.
    pub fn clear_injections(&self) {
        self.lock().faults.pending = [0; Fault::ALL.len()];
    }
}

/// The simulated control bus: an `embedded_hal::i2c::I2c` target at [`I2C_ADDRESS`].
///
/// A transaction starts with a write of the 2-byte register address; the rest of that write
/// (and of writes following it in the same transaction) is data for consecutive registers;
/// a read returns consecutive register bytes from the address (unmapped bytes read 0).
#[derive(Debug, Clone)]
pub struct SimI2c {
    chip: SimChip,
}

impl i2c::ErrorType for SimI2c {
    type Error = SimBusError;
}

impl i2c::I2c<SevenBitAddress> for SimI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        let timed_out = {
            let mut fw = self.chip.lock();
            if address != I2C_ADDRESS {
                return Err(SimBusError::Nack(NoAcknowledgeSource::Address));
            }
            if fw.faults.strike(Fault::Nack) {
                fw.faults.counts.nacks += 1;
                return Err(SimBusError::Nack(NoAcknowledgeSource::Address));
            }
            let t = fw.faults.strike(Fault::BusTimeout);
            if t {
                fw.faults.counts.bus_timeouts += 1;
            }
            t
        };
        if timed_out {
            std::thread::sleep(BUS_TIMEOUT);
            return Err(SimBusError::Timeout);
        }
        let mut fw = self.chip.lock();
        let now = Instant::now();
        fw.tick(now);
        // Adjacent writes form one write; a read or the end of the transaction applies it.
        let mut pending: heapless::Vec<u8, 512> = heapless::Vec::new();
        let mut result = Ok(());
        let flush = |fw: &mut Firmware, pending: &mut heapless::Vec<u8, 512>| {
            if pending.is_empty() {
                return Ok(());
            }
            if pending.len() < 2 {
                pending.clear();
                return Err(SimBusError::Nack(NoAcknowledgeSource::Data));
            }
            let a = u16::from_be_bytes([pending[0], pending[1]]);
            fw.pointer = a;
            let r = fw.write(a, &pending[2..], now);
            pending.clear();
            r
        };
        for op in operations.iter_mut() {
            match op {
                Operation::Write(bytes) => {
                    if pending.extend_from_slice(bytes).is_err() {
                        result = Err(SimBusError::Nack(NoAcknowledgeSource::Data));
                        break;
                    }
                }
                Operation::Read(buf) => {
                    if let Err(e) = flush(&mut fw, &mut pending) {
                        result = Err(e);
                        break;
                    }
                    let mut a = u32::from(fw.pointer);
                    for b in buf.iter_mut() {
                        *b = match u16::try_from(a).ok().and_then(regs::find) {
                            Some((i, r)) => {
                                let v = fw.read_register(i, now);
                                let shift = 8 * (r.end() - a - 1);
                                (v >> shift) as u8
                            }
                            None => 0,
                        };
                        a += 1;
                    }
                    fw.pointer = a as u16;
                }
            }
        }
        if result.is_ok() {
            result = flush(&mut fw, &mut pending);
        }
        // A start or a trigger may have made a frame available: wake a waiting port.
        drop(fw);
        self.chip.shared.1.notify_all();
        result
    }
}

/// The simulated data port: the FIFO's descriptors and the DMA of each frame into the
/// caller's buffer.
#[derive(Debug, Clone)]
pub struct SimPort {
    chip: SimChip,
}

impl DataPort for SimPort {
    type Error = SimPortError;

    fn wait_frame(&mut self, timeout: Duration) -> Result<FrameHeader, SimPortError> {
        let give_up = Instant::now().checked_add(timeout);
        let mut fw = self.chip.lock();
        loop {
            let now = Instant::now();
            fw.tick(now);
            if let Some(e) = fw.fifo.front() {
                return Ok(fw.header(e));
            }
            if !fw.streaming {
                return Err(SimPortError::Idle);
            }
            if give_up.is_some_and(|g| now >= g) {
                return Err(SimPortError::Timeout(timeout));
            }
            let wake = match (fw.next_due(), give_up) {
                (Some(d), Some(g)) => d.min(g),
                (d, g) => d.or(g).unwrap_or(now + Duration::from_secs(3600)),
            };
            let wait = wake.saturating_duration_since(now);
            fw = self
                .chip
                .shared
                .1
                .wait_timeout(fw, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn transfer(&mut self, buf: &mut [u8]) -> Result<FrameFooter, SimPortError> {
        self.transfer_blocks(buf, &mut |_| {})
    }

    /// Renders the frame a band of rows at a time; each band is checksummed, damaged if the
    /// frame is to be corrupted there, and handed on while it is in cache.
    fn transfer_blocks(
        &mut self,
        buf: &mut [u8],
        on_block: &mut dyn FnMut(&[u8]),
    ) -> Result<FrameFooter, SimPortError> {
        let mut fw = self.chip.lock();
        fw.tick(Instant::now());
        let Some(e) = fw.fifo.front().copied() else {
            return Err(if fw.streaming {
                SimPortError::Timeout(Duration::ZERO)
            } else {
                SimPortError::Idle
            });
        };
        let needed = fw.header(&e).bytes as usize;
        if buf.len() < needed {
            return Err(SimPortError::BufferTooSmall {
                len: buf.len(),
                needed,
            });
        }
        fw.fifo.pop_front();
        let dst = &mut buf[..needed];
        let corrupt_at = (e.corrupt && !dst.is_empty())
            .then(|| (e.k as usize).wrapping_mul(2_654_435_761) % dst.len());
        let mut checksum = FrameChecksum::new();
        fw.plan().render_bands(e.k, dst, &mut |offset, band| {
            checksum.update(band);
            // Damaged on the link after the detector computed its checksum.
            if let Some(i) = corrupt_at
                .and_then(|i| i.checked_sub(offset))
                .filter(|&i| i < band.len())
            {
                band[i] ^= 0x10;
            }
            on_block(band);
        });
        Ok(FrameFooter {
            checksum: checksum.finish(),
        })
    }
}
