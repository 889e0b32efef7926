//! The register sequences of `SensorDriver`, pinned with embedded-hal-mock: what goes on the
//! I2C bus for new, configure, start, trigger, stop, a frame read, and the retry of a NACKed
//! control write. A change to the driver or the map that alters them fails here.

use std::time::Duration;

use detflow_hal::{
    AcquisitionConfig, Binning, Detector, ErrorKind, FrameSource, ImageMode, PixelType, Roi,
    TriggerMode,
};
use detflow_sim::{DataPort, FrameFooter, FrameHeader, SensorDriver, frame_checksum};
use embedded_hal::i2c::{ErrorKind as I2cErrorKind, NoAcknowledgeSource};
use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

const ADDR: u8 = 0x36;

/// A data port holding at most one scripted frame of zeros.
#[derive(Debug, Default)]
struct OneFramePort {
    frame: Option<FrameHeader>,
}

impl DataPort for OneFramePort {
    type Error = ErrorKind;
    fn wait_frame(&mut self, _: Duration) -> Result<FrameHeader, ErrorKind> {
        self.frame.ok_or(ErrorKind::Timeout)
    }
    fn transfer(&mut self, buf: &mut [u8]) -> Result<FrameFooter, ErrorKind> {
        let h = self.frame.take().ok_or(ErrorKind::Timeout)?;
        let dst = &mut buf[..h.bytes as usize];
        dst.fill(0);
        Ok(FrameFooter {
            checksum: frame_checksum(dst),
        })
    }
}

/// `new` reads the identity block: CHIP_ID 0xDF01, firmware 1.0, 64 x 32 pixels, all
/// formats, FIFO of 8.
fn identify() -> Transaction {
    Transaction::write_read(
        ADDR,
        vec![0x00, 0x00],
        vec![
            0xDF, 0x01, 0x01, 0x00, 0x00, 0x40, 0x00, 0x20, 0x03, 0x3F, 0x08,
        ],
    )
}

fn config() -> AcquisitionConfig {
    AcquisitionConfig {
        roi: Roi {
            min_x: 2,
            min_y: 1,
            size_x: 40,
            size_y: 30,
        },
        binning: Binning { x: 2, y: 3 },
        pixel_type: PixelType::U8,
        exposure: Duration::from_millis(2),
        period: Duration::from_millis(10),
        image_mode: ImageMode::Multiple,
        num_images: 5,
        trigger_mode: TriggerMode::External,
    }
}

fn configure_writes() -> Vec<Transaction> {
    let mut timing = vec![0x02, 0x00];
    timing.extend_from_slice(&2_000_000u64.to_be_bytes());
    timing.extend_from_slice(&10_000_000u64.to_be_bytes());
    vec![
        // FRAME_LIMIT = 5, TRIGGER_SOURCE = 1 (software).
        Transaction::write(ADDR, vec![0x01, 0x04, 0, 0, 0, 5, 1]),
        // EXPOSURE_NS, FRAME_PERIOD_NS.
        Transaction::write(ADDR, timing),
        // X_START 2, Y_START 1, X_SIZE 40, Y_SIZE 30, BIN_X 2, BIN_Y 3, PIXEL_FORMAT 1 (u8).
        Transaction::write(
            ADDR,
            vec![0x03, 0x00, 0, 2, 0, 1, 0, 40, 0, 30, 0, 2, 0, 3, 1],
        ),
    ]
}

#[test]
fn configure_start_trigger_stop() {
    let mut expected = vec![identify()];
    expected.extend(configure_writes());
    expected.extend([
        Transaction::write(ADDR, vec![0x01, 0x00, 0x01]), // MODE_SELECT = 1
        Transaction::write(ADDR, vec![0x01, 0x01, 0x01]), // SW_TRIGGER = 1
        Transaction::write(ADDR, vec![0x01, 0x00, 0x00]), // MODE_SELECT = 0
    ]);
    let mut i2c = Mock::new(&expected);
    let mut det = SensorDriver::new(i2c.clone(), OneFramePort::default(), ADDR).unwrap();
    let shape = det.configure(&config()).unwrap();
    assert_eq!((shape.width, shape.height), (20, 10));
    det.start().unwrap();
    det.trigger().unwrap();
    det.stop().unwrap();
    // Stopping changed nothing else: a second configure would write again.
    i2c.done();
}

#[test]
fn a_frame_read_polls_status_then_transfers() {
    let mut expected = vec![identify()];
    expected.extend(configure_writes());
    expected.extend([
        Transaction::write(ADDR, vec![0x01, 0x00, 0x01]),
        // STATUS: BUSY, FIFO level 1.
        Transaction::write_read(ADDR, vec![0x05, 0x00], vec![0x01, 0x01]),
    ]);
    let mut i2c = Mock::new(&expected);
    let header = FrameHeader {
        frame_number: 1,
        overruns_before: 0,
        width: 20,
        height: 10,
        pixel_format: 1,
        bytes: 200,
        timestamp_ns: 1_700_000_000_000_000_000,
    };
    let port = OneFramePort {
        frame: Some(header),
    };
    let mut det = SensorDriver::new(i2c.clone(), port, ADDR).unwrap();
    det.configure(&config()).unwrap();
    det.start().unwrap();
    let mut buf = vec![0xFFu8; 200];
    let m = det.read_frame(&mut buf, Duration::ZERO).unwrap();
    assert_eq!(m.unique_id, 1);
    assert_eq!(m.timestamp.unix_seconds(), 1_700_000_000.0);
    assert!(buf.iter().all(|b| *b == 0));
    i2c.done();
}

#[test]
fn a_nacked_control_write_is_retried_and_a_persistent_one_fails() {
    let start = || Transaction::write(ADDR, vec![0x01, 0x00, 0x01]);
    let nack = I2cErrorKind::NoAcknowledge(NoAcknowledgeSource::Data);
    let mut expected = vec![identify(), start().with_error(nack), start()];
    // 1 + CONTROL_RETRIES attempts, all NACKed.
    expected.extend(
        (0..=detflow_sim::CONTROL_RETRIES)
            .map(|_| Transaction::write(ADDR, vec![0x01, 0x00, 0x00]).with_error(nack)),
    );
    let mut i2c = Mock::new(&expected);
    let mut det = SensorDriver::new(i2c.clone(), OneFramePort::default(), ADDR).unwrap();
    det.start().unwrap();
    let e = det.stop().unwrap_err();
    assert_eq!(detflow_hal::Error::kind(&e), ErrorKind::Bus);
    assert_eq!(
        e.to_string(),
        "I2C write MODE_SELECT: The device did not acknowledge the data"
    );
    i2c.done();
}

#[test]
fn a_wrong_chip_id_is_refused() {
    let mut i2c = Mock::new(&[Transaction::write_read(
        ADDR,
        vec![0x00, 0x00],
        vec![0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )]);
    let e = SensorDriver::new(i2c.clone(), OneFramePort::default(), ADDR).unwrap_err();
    assert_eq!(
        e.to_string(),
        "CHIP_ID reads 0x1234, expected 0xdf01: not a detflow detector"
    );
    i2c.done();
}
