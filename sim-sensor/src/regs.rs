//! The register map of the simulated detector's firmware: the one place that says which
//! registers exist, where, how wide, who may write them, their power-on values and what a
//! write does. The firmware ([`crate::firmware`]) and the driver ([`crate::SensorDriver`])
//! both take addresses from here, and `REGISTERS.md` is generated from [`MAP`] (a test fails
//! when it is stale; `DETFLOW_BLESS=1 cargo test -p detflow-sim` rewrites it).
//!
//! Addresses are 16-bit, as on camera-module I2C (CCI) buses. A register of `n` bytes
//! occupies `n` consecutive addresses, most significant byte first. A write transaction is
//! `[address_hi, address_lo, data…]` and may cover several consecutive registers; a read
//! (`write_read` with the 2 address bytes) auto-increments across the map.

use core::fmt;

/// Who may access a register over the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only; writes are NACKed.
    ReadOnly,
    /// Read and write.
    ReadWrite,
    /// Write 1 to act; the register clears itself and always reads 0.
    WriteSelfClearing,
}

impl Access {
    /// The short form of the documentation table: `R`, `RW`, `W1SC`.
    pub const fn code(self) -> &'static str {
        match self {
            Access::ReadOnly => "R",
            Access::ReadWrite => "RW",
            Access::WriteSelfClearing => "W1SC",
        }
    }
}

/// How the bytes of a register are read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Unsigned integer.
    Unsigned,
    /// Two's complement signed integer.
    Signed,
    /// IEEE 754 binary64 (8-byte registers only).
    Float,
}

/// The value of a register after power-on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reset {
    /// A fixed integer (raw register bits for `Unsigned` and `Signed`).
    Value(u64),
    /// A float, stored as its IEEE 754 bits.
    Float(f64),
    /// The sensor width of this chip.
    SensorWidth,
    /// The sensor height of this chip.
    SensorHeight,
    /// The FIFO depth of this chip.
    FifoDepth,
}

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reset::Value(v) if *v > 255 => write!(f, "{v:#06x}"),
            Reset::Value(v) => write!(f, "{v}"),
            Reset::Float(v) => write!(f, "{v:?}"),
            Reset::SensorWidth => f.write_str("sensor width"),
            Reset::SensorHeight => f.write_str("sensor height"),
            Reset::FifoDepth => f.write_str("FIFO depth"),
        }
    }
}

/// One register of the map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    /// Name, as in the datasheet table.
    pub name: &'static str,
    /// First address.
    pub addr: u16,
    /// Width in bytes: 1, 2, 4 or 8.
    pub bytes: u8,
    /// Who may access it.
    pub access: Access,
    /// How its bytes read as a number.
    pub format: Format,
    /// Power-on value.
    pub reset: Reset,
    /// Allowed values and units.
    pub values: &'static str,
    /// What a write does (or where a read-only value comes from).
    pub effect: &'static str,
}

impl Register {
    /// One past the last address.
    pub const fn end(&self) -> u32 {
        self.addr as u32 + self.bytes as u32
    }
}

macro_rules! register_map {
    ($(
        $name:ident @ $addr:literal : $bytes:literal $access:ident $format:ident = $reset:expr,
            $values:literal, $effect:literal;
    )*) => {
        /// Register addresses, one constant per register of [`MAP`].
        pub mod addr {
            $(
                #[doc = concat!("Address of `", stringify!($name), "`.")]
                pub const $name: u16 = $addr;
            )*
        }
        $(
            #[doc = concat!("`", stringify!($name), "`: ", $effect)]
            pub const $name: Register = Register {
                name: stringify!($name),
                addr: $addr,
                bytes: $bytes,
                access: Access::$access,
                format: Format::$format,
                reset: $reset,
                values: $values,
                effect: $effect,
            };
        )*
        /// Every register, by address.
        pub const MAP: &[Register] = &[$($name),*];
    };
}

/// Value of `CHIP_ID`.
pub const CHIP_ID_VALUE: u16 = 0xDF01;
/// Value of `FW_VERSION` (1.0).
pub const FW_VERSION_VALUE: u16 = 0x0100;
/// `STATUS` bit 0: streaming.
pub const STATUS_BUSY: u16 = 1 << 0;
/// `STATUS` bit 1: a frame was lost to a full FIFO since streaming started.
pub const STATUS_OVERRUN: u16 = 1 << 1;
/// `STATUS` bit 2: streaming, waiting for `SW_TRIGGER`.
pub const STATUS_WAIT_TRIGGER: u16 = 1 << 2;
/// `STATUS` bits 8..16: frames in the FIFO.
pub const STATUS_FIFO_LEVEL_SHIFT: u32 = 8;

register_map! {
    // Identification.
    CHIP_ID @ 0x0000 : 2 ReadOnly Unsigned = Reset::Value(CHIP_ID_VALUE as u64),
        "0xDF01", "Identifies the chip; a driver checks it before anything else.";
    FW_VERSION @ 0x0002 : 2 ReadOnly Unsigned = Reset::Value(FW_VERSION_VALUE as u64),
        "0xMMmm", "Firmware major and minor version.";
    SENSOR_WIDTH @ 0x0004 : 2 ReadOnly Unsigned = Reset::SensorWidth,
        "pixels, 1..=16384", "Columns of the sensor, fixed when the chip is made.";
    SENSOR_HEIGHT @ 0x0006 : 2 ReadOnly Unsigned = Reset::SensorHeight,
        "pixels, 1..=16384", "Rows of the sensor, fixed when the chip is made.";
    PIXEL_FORMATS @ 0x0008 : 2 ReadOnly Unsigned = Reset::Value(0x033F),
        "bit n: NDDataType n", "Pixel formats the readout can produce (all eight).";
    FIFO_DEPTH @ 0x000A : 1 ReadOnly Unsigned = Reset::FifoDepth,
        "frames, 1..=64", "Frames the data port FIFO holds before it overruns.";
    // Control.
    MODE_SELECT @ 0x0100 : 1 ReadWrite Unsigned = Reset::Value(0),
        "0 standby, 1 streaming",
        "0→1: NACKed unless the ROI and binning fit the sensor; clears FRAME_COUNT, OVERRUN_COUNT and STATUS.OVERRUN, builds the image and starts the frame clock. 1→0: stops and flushes the FIFO. Falls back to 0 by itself after FRAME_LIMIT frames.";
    SW_TRIGGER @ 0x0101 : 1 WriteSelfClearing Unsigned = Reset::Value(0),
        "write 1", "Streaming with TRIGGER_SOURCE = 1: exposes one frame now.";
    PATTERN_RESET @ 0x0102 : 1 WriteSelfClearing Unsigned = Reset::Value(0),
        "write 1", "Rebuilds the image before the next frame (ADSimDetector Reset): new background, ramp and sines restart from frame 0.";
    FRAME_LIMIT @ 0x0104 : 4 ReadWrite Unsigned = Reset::Value(100),
        "frames, 0 = until stopped", "Frames per run. NACKed while streaming.";
    TRIGGER_SOURCE @ 0x0108 : 1 ReadWrite Unsigned = Reset::Value(0),
        "0 internal clock, 1 SW_TRIGGER", "What starts an exposure. NACKed while streaming.";
    // Timing.
    EXPOSURE_NS @ 0x0200 : 8 ReadWrite Unsigned = Reset::Value(1_000_000),
        "ns", "Frame n of a run is read out at n × max(FRAME_PERIOD_NS, EXPOSURE_NS) + EXPOSURE_NS after the start; a frame due while the FIFO is full is lost (OVERRUN_COUNT). NACKed while streaming.";
    FRAME_PERIOD_NS @ 0x0208 : 8 ReadWrite Unsigned = Reset::Value(5_000_000),
        "ns, 0 = free running", "With EXPOSURE_NS also 0, a frame is exposed whenever the FIFO has room (no overruns). NACKed while streaming.";
    // Readout geometry and format: NACKed while streaming.
    X_START @ 0x0300 : 2 ReadWrite Unsigned = Reset::Value(0),
        "0..SENSOR_WIDTH", "First ROI column.";
    Y_START @ 0x0302 : 2 ReadWrite Unsigned = Reset::Value(0),
        "0..SENSOR_HEIGHT", "First ROI row.";
    X_SIZE @ 0x0304 : 2 ReadWrite Unsigned = Reset::SensorWidth,
        "1..=SENSOR_WIDTH - X_START", "ROI columns before binning.";
    Y_SIZE @ 0x0306 : 2 ReadWrite Unsigned = Reset::SensorHeight,
        "1..=SENSOR_HEIGHT - Y_START", "ROI rows before binning.";
    BIN_X @ 0x0308 : 2 ReadWrite Unsigned = Reset::Value(1),
        "1..=X_SIZE", "Columns summed into one output pixel; output width X_SIZE / BIN_X.";
    BIN_Y @ 0x030A : 2 ReadWrite Unsigned = Reset::Value(1),
        "1..=Y_SIZE", "Rows summed into one output pixel; output height Y_SIZE / BIN_Y.";
    PIXEL_FORMAT @ 0x030C : 1 ReadWrite Unsigned = Reset::Value(3),
        "NDDataType: 0 i8, 1 u8, 2 i16, 3 u16, 4 i32, 5 u32, 8 f32, 9 f64",
        "Output pixel type; a new one rebuilds the image.";
    // Pattern generator: every write to this block rebuilds the image before the next
    // frame; allowed while streaming.
    ANALOG_GAIN @ 0x0400 : 8 ReadWrite Float = Reset::Float(1.0),
        "finite", "Gain: ramp increment, peak height, sine scale.";
    GAIN_X @ 0x0408 : 8 ReadWrite Float = Reset::Float(1.0),
        "finite", "Ramp slope along x; time scale of the x sines.";
    GAIN_Y @ 0x0410 : 8 ReadWrite Float = Reset::Float(1.0),
        "finite", "Ramp slope along y; time scale of the y sines.";
    OFFSET @ 0x0418 : 8 ReadWrite Float = Reset::Float(0.0),
        "finite", "Constant background.";
    NOISE @ 0x0420 : 8 ReadWrite Float = Reset::Float(0.0),
        "finite", "Background noise amplitude (noise × U[0,1)).";
    PEAK_VARIATION @ 0x0428 : 8 ReadWrite Float = Reset::Float(0.0),
        "percent, finite", "Random peak height variation per frame.";
    XSINE1_AMPLITUDE @ 0x0430 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "First x sine.";
    XSINE1_FREQUENCY @ 0x0438 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "First x sine.";
    XSINE1_PHASE @ 0x0440 : 8 ReadWrite Float = Reset::Float(0.0), "degrees, finite", "First x sine.";
    XSINE2_AMPLITUDE @ 0x0448 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "Second x sine.";
    XSINE2_FREQUENCY @ 0x0450 : 8 ReadWrite Float = Reset::Float(2.0), "finite", "Second x sine.";
    XSINE2_PHASE @ 0x0458 : 8 ReadWrite Float = Reset::Float(90.0), "degrees, finite", "Second x sine.";
    YSINE1_AMPLITUDE @ 0x0460 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "First y sine.";
    YSINE1_FREQUENCY @ 0x0468 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "First y sine.";
    YSINE1_PHASE @ 0x0470 : 8 ReadWrite Float = Reset::Float(0.0), "degrees, finite", "First y sine.";
    YSINE2_AMPLITUDE @ 0x0478 : 8 ReadWrite Float = Reset::Float(1.0), "finite", "Second y sine.";
    YSINE2_FREQUENCY @ 0x0480 : 8 ReadWrite Float = Reset::Float(2.0), "finite", "Second y sine.";
    YSINE2_PHASE @ 0x0488 : 8 ReadWrite Float = Reset::Float(90.0), "degrees, finite", "Second y sine.";
    PEAK_START_X @ 0x0490 : 4 ReadWrite Signed = Reset::Value(1), "column", "Centre of the first peak.";
    PEAK_START_Y @ 0x0494 : 4 ReadWrite Signed = Reset::Value(1), "row", "Centre of the first peak.";
    PEAK_WIDTH_X @ 0x0498 : 4 ReadWrite Unsigned = Reset::Value(10), "pixels, ≥ 1", "Peak sigma along x.";
    PEAK_WIDTH_Y @ 0x049C : 4 ReadWrite Unsigned = Reset::Value(20), "pixels, ≥ 1", "Peak sigma along y.";
    PEAK_NUM_X @ 0x04A0 : 4 ReadWrite Unsigned = Reset::Value(1), "0..=256", "Peaks per grid row.";
    PEAK_NUM_Y @ 0x04A4 : 4 ReadWrite Unsigned = Reset::Value(1), "0..=256", "Peak grid rows.";
    PEAK_STEP_X @ 0x04A8 : 4 ReadWrite Signed = Reset::Value(1), "columns", "Between peak centres.";
    PEAK_STEP_Y @ 0x04AC : 4 ReadWrite Signed = Reset::Value(1), "rows", "Between peak centres.";
    TEST_PATTERN @ 0x04B0 : 1 ReadWrite Unsigned = Reset::Value(0),
        "0 ramp, 1 peaks, 2 sine, 3 noise", "The image (ADSimDetector SimMode).";
    SINE_OPERATION @ 0x04B1 : 1 ReadWrite Unsigned = Reset::Value(0),
        "bit 0: x sines multiply, bit 1: y sines multiply (else add)", "How each axis' two sines combine.";
    // Status: live values.
    STATUS @ 0x0500 : 2 ReadOnly Unsigned = Reset::Value(0),
        "bit 0 BUSY, bit 1 OVERRUN, bit 2 WAIT_TRIGGER, bits 8..15 FIFO level",
        "BUSY while streaming; OVERRUN (sticky until the next start) once a frame was lost to a full FIFO.";
    FRAME_COUNT @ 0x0502 : 4 ReadOnly Unsigned = Reset::Value(0),
        "frames", "Frames exposed since streaming started, lost ones included.";
    OVERRUN_COUNT @ 0x0506 : 4 ReadOnly Unsigned = Reset::Value(0),
        "frames", "Frames lost to a full FIFO since streaming started.";
    TEMPERATURE @ 0x050A : 2 ReadOnly Signed = Reset::Value(2500),
        "centi-°C", "Drifts: warms toward 40 °C while streaming, cools toward 25 °C in standby, with a small ripple.";
}

/// The register that holds `addr`, if any.
pub fn find(addr: u16) -> Option<(usize, &'static Register)> {
    MAP.iter()
        .enumerate()
        .find(|(_, r)| r.addr <= addr && u32::from(addr) < r.end())
}

/// The documentation table (`REGISTERS.md`), generated from [`MAP`].
pub fn markdown() -> String {
    let mut s = String::from(
        "# Register map of the detflow simulated detector\n\n\
         Generated from `sim-sensor/src/regs.rs` (the definition); a test fails when this file \
         is stale, and `DETFLOW_BLESS=1 cargo test -p detflow-sim` rewrites it.\n\n\
         I2C address 0x36 (7-bit), 16-bit register addresses, multi-byte registers most \
         significant byte first. Access: R read only (writes are NACKed), RW read/write, W1SC \
         write 1 to act, self-clearing (reads 0). A write transaction is checked whole: an \
         unmapped or read-only address, a register split by the transaction, a value out of \
         range or a write refused while streaming NACKs it and nothing is applied.\n\n\
         | address | name | bytes | access | format | reset | values | effect |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in MAP {
        let format = match r.format {
            Format::Unsigned => "u",
            Format::Signed => "i",
            Format::Float => "f64",
        };
        s.push_str(&format!(
            "| {:#06x} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.addr,
            r.name,
            r.bytes,
            r.access.code(),
            format,
            r.reset,
            r.values,
            r.effect
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_sorted_disjoint_and_well_formed() {
        for pair in MAP.windows(2) {
            assert!(
                pair[0].end() <= u32::from(pair[1].addr),
                "{} overlaps {}",
                pair[0].name,
                pair[1].name
            );
        }
        for r in MAP {
            assert!(matches!(r.bytes, 1 | 2 | 4 | 8), "{}", r.name);
            if r.format == Format::Float {
                assert_eq!(r.bytes, 8, "{}", r.name);
            }
        }
        assert_eq!(find(0x0201).unwrap().1.name, "EXPOSURE_NS");
        assert!(find(0x0103).is_none());
    }

    #[test]
    fn the_documentation_table_is_generated_from_the_map() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/REGISTERS.md");
        let want = markdown();
        if std::env::var_os("DETFLOW_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: run DETFLOW_BLESS=1 cargo test -p detflow-sim"
        );
    }
}
