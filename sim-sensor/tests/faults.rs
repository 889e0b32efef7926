//! Fault injection: each fault, on demand and at a rate, reaches the reader as its HAL error
//! kind, is counted by the chip, and loses exactly the frames it should.

use std::time::{Duration, Instant};

use detflow_hal::{
    AcquisitionConfig, Detector, Error as _, ErrorKind, FrameSource, ImageMode, Roi,
};
use detflow_sim::{
    Fault, FaultRates, SimConfig, SimDetector, SimMode, SimOptions, SimParams, regs,
};

fn detector(fifo_depth: usize) -> SimDetector {
    SimDetector::with_options(
        SimConfig {
            max_width: 32,
            max_height: 16,
            seed: 5,
            params: SimParams {
                mode: SimMode::OffsetNoise,
                offset: 10.0,
                noise: 100.0,
                ..SimParams::default()
            },
        },
        SimOptions {
            fifo_depth,
            ..SimOptions::default()
        },
    )
    .unwrap()
}

fn run(n: u32, period: Duration) -> AcquisitionConfig {
    AcquisitionConfig {
        roi: Roi::full(32, 16),
        exposure: Duration::ZERO,
        period,
        image_mode: ImageMode::Multiple,
        num_images: n,
        ..AcquisitionConfig::default()
    }
}

/// Reads the run to its end: delivered frame ids and the kinds of the errors on the way.
fn drain(det: &mut SimDetector) -> (Vec<u64>, Vec<ErrorKind>) {
    let mut buf = vec![0u8; det.shape().bytes()];
    let (mut ids, mut errors) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while det.is_acquiring() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the run does not end"
        );
        match det.read_frame(&mut buf, Duration::from_millis(50)) {
            Ok(m) => ids.push(m.unique_id),
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) if e.kind() == ErrorKind::NotAcquiring => break,
            Err(e) => errors.push(e.kind()),
        }
    }
    (ids, errors)
}

#[test]
fn each_frame_fault_on_demand_is_one_error_of_its_kind() {
    for (fault, kind) in [
        (Fault::Drop, ErrorKind::FrameLost),
        (Fault::Corrupt, ErrorKind::Corrupted),
        (Fault::Overrun, ErrorKind::Overrun),
    ] {
        let mut det = detector(16);
        det.configure(&run(5, Duration::ZERO)).unwrap();
        det.chip().inject(fault, 1);
        det.start().unwrap();
        let (ids, errors) = drain(&mut det);
        assert_eq!(errors, [kind], "{fault:?}");
        assert_eq!(ids, [1, 2, 3, 4], "{fault:?}: the other frames arrive");
        let c = det.chip().fault_counts();
        let counted = match fault {
            Fault::Drop => c.dropped,
            Fault::Corrupt => c.corrupted,
            _ => c.overruns,
        };
        assert_eq!(counted, 1, "{fault:?}: {c:?}");
        if fault == Fault::Overrun {
            assert_eq!(det.chip().peek(regs::addr::OVERRUN_COUNT), Some(1));
            let status = det.chip().peek(regs::addr::STATUS).unwrap() as u16;
            assert_ne!(status & regs::STATUS_OVERRUN, 0);
        }
    }
}

#[test]
fn a_frame_lost_at_the_end_of_a_run_is_still_reported() {
    let mut det = detector(16);
    // Software triggers, not a clock: frame 3 cannot be exposed before the drop is injected,
    // however late this thread runs.
    det.configure(&AcquisitionConfig {
        trigger_mode: detflow_hal::TriggerMode::External,
        ..run(3, Duration::ZERO)
    })
    .unwrap();
    det.start().unwrap();
    let mut buf = vec![0u8; det.shape().bytes()];
    for id in 1..=2 {
        det.driver().trigger().unwrap();
        assert_eq!(
            det.read_frame(&mut buf, Duration::from_secs(1))
                .unwrap()
                .unique_id,
            id
        );
    }
    det.chip().inject(Fault::Drop, 1);
    det.driver().trigger().unwrap();
    let (ids, errors) = drain(&mut det);
    assert!(ids.is_empty());
    assert_eq!(errors, [ErrorKind::FrameLost]);
    assert!(!det.is_acquiring());
}

#[test]
fn bus_faults_during_a_run_are_bus_errors_that_lose_nothing() {
    for fault in [Fault::Nack, Fault::BusTimeout] {
        let mut det = detector(16);
        det.configure(&run(3, Duration::ZERO)).unwrap();
        det.start().unwrap();
        det.chip().inject(fault, 1);
        let mut buf = vec![0u8; det.shape().bytes()];
        let t0 = Instant::now();
        let e = det
            .read_frame(&mut buf, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Bus, "{fault:?}: {e}");
        if fault == Fault::BusTimeout {
            assert!(t0.elapsed() >= Duration::from_millis(2));
        }
        let (ids, errors) = drain(&mut det);
        assert_eq!((ids, errors), (vec![1, 2, 3], vec![]), "{fault:?}");
        let c = det.chip().fault_counts();
        assert_eq!(c.nacks + c.bus_timeouts, 1, "{c:?}");
    }
}

#[test]
fn control_writes_ride_out_a_few_nacks_but_not_many() {
    let mut det = detector(16);
    det.chip()
        .inject(Fault::Nack, detflow_sim::CONTROL_RETRIES.into());
    det.configure(&run(2, Duration::ZERO)).unwrap();
    det.chip().inject(Fault::Nack, 10);
    let e = det.start().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Bus);
    assert!(e.to_string().starts_with("I2C write MODE_SELECT"), "{e}");
    assert!(!det.is_acquiring());
}

#[test]
fn a_reader_that_falls_behind_loses_frames_to_the_fifo() {
    let mut det = detector(2);
    det.configure(&run(12, Duration::from_millis(2))).unwrap();
    det.start().unwrap();
    // Read nothing until the detector has exposed all 12 frames (its FRAME_COUNT register):
    // a 2-frame FIFO then holds frames 1 and 2, and the other 10 overran.
    let t0 = Instant::now();
    while det.chip().peek(regs::addr::FRAME_COUNT) != Some(12) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the detector never exposed its 12 frames: FRAME_COUNT {:?}",
            det.chip().peek(regs::addr::FRAME_COUNT)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let (ids, errors) = drain(&mut det);
    let overruns = errors.iter().filter(|k| **k == ErrorKind::Overrun).count();
    assert_eq!(errors.len(), overruns, "{errors:?}");
    assert_eq!(ids, [1, 2], "the FIFO kept the first two frames");
    assert_eq!(overruns, 10, "{overruns} overruns");
    assert_eq!(
        ids.len() + overruns,
        12,
        "every frame is delivered or reported"
    );
    assert_eq!(
        det.chip().peek(regs::addr::OVERRUN_COUNT),
        Some(overruns as u64)
    );
    assert_eq!(det.chip().fault_counts().overruns, overruns as u64);
}

#[test]
fn faults_at_a_rate_account_for_every_frame() {
    let mut det = SimDetector::with_options(
        SimConfig {
            max_width: 16,
            max_height: 16,
            ..SimConfig::default()
        },
        SimOptions {
            fifo_depth: 16,
            faults: FaultRates {
                nack: 0.05,
                bus_timeout: 0.0,
                drop: 0.05,
                corrupt: 0.05,
                overrun: 0.05,
            },
        },
    )
    .unwrap();
    let mut c = run(300, Duration::ZERO);
    c.roi = Roi::full(16, 16);
    // Control writes are retried; a configure may still meet 4 NACKs in a row.
    let mut tries = 0;
    while det.configure(&c).is_err() || det.start().is_err() {
        tries += 1;
        assert!(tries < 10);
    }
    let mut buf = vec![0u8; det.shape().bytes()];
    let (mut ok, mut lost, mut bus) = (0u64, 0u64, 0u64);
    let mut kinds = std::collections::HashMap::new();
    while det.is_acquiring() {
        match det.read_frame(&mut buf, Duration::from_secs(1)) {
            Ok(_) => ok += 1,
            Err(e) if e.kind() == ErrorKind::Bus => bus += 1,
            Err(e) if e.kind() == ErrorKind::NotAcquiring => break,
            Err(e) => {
                lost += 1;
                *kinds.entry(e.kind()).or_insert(0u64) += 1;
            }
        }
    }
    assert_eq!(ok + lost, 300, "{kinds:?}");
    let f = det.chip().fault_counts();
    assert_eq!(
        kinds.get(&ErrorKind::FrameLost).copied().unwrap_or(0),
        f.dropped
    );
    assert_eq!(
        kinds.get(&ErrorKind::Corrupted).copied().unwrap_or(0),
        f.corrupted
    );
    assert_eq!(
        kinds.get(&ErrorKind::Overrun).copied().unwrap_or(0),
        f.overruns
    );
    assert!(
        f.dropped > 0 && f.corrupted > 0 && f.overruns > 0 && bus > 0,
        "{f:?}"
    );
}

#[test]
fn the_software_trigger_exposes_one_frame_per_write_and_clears_itself() {
    let mut det = detector(16);
    det.configure(&AcquisitionConfig {
        trigger_mode: detflow_hal::TriggerMode::External,
        ..run(2, Duration::ZERO)
    })
    .unwrap();
    det.start().unwrap();
    let mut buf = vec![0u8; det.shape().bytes()];
    let e = det
        .read_frame(&mut buf, Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let status = det.chip().peek(regs::addr::STATUS).unwrap() as u16;
    assert_ne!(status & regs::STATUS_WAIT_TRIGGER, 0);
    for id in 1..=2 {
        det.driver().trigger().unwrap();
        assert_eq!(det.chip().peek(regs::addr::SW_TRIGGER), Some(0));
        assert_eq!(
            det.read_frame(&mut buf, Duration::from_secs(1))
                .unwrap()
                .unique_id,
            id
        );
    }
    assert!(!det.is_acquiring());
}

#[test]
fn the_temperature_drifts_up_while_streaming() {
    let mut det = detector(16);
    let t0 = det.chip().peek(regs::addr::TEMPERATURE).unwrap() as u16 as i16;
    assert!((2490..=2510).contains(&t0), "{t0}");
    det.configure(&AcquisitionConfig {
        image_mode: ImageMode::Continuous,
        ..run(1, Duration::from_millis(5))
    })
    .unwrap();
    det.start().unwrap();
    // Not a hope: the chip's temperature follows the wall clock, and a sleep lasts at least
    // this long, so it has risen by 15 * (1 - exp(-0.3 / 20)) = 0.22 degrees or more.
    std::thread::sleep(Duration::from_millis(300));
    let t1 = det.chip().peek(regs::addr::TEMPERATURE).unwrap() as u16 as i16;
    det.stop().unwrap();
    assert!(t1 > t0 + 5, "{t0} -> {t1}");
}

#[test]
fn frames_of_many_bands_are_checked_whole_and_corruption_anywhere_is_found() {
    // 512 x 256 u16: 256 KiB, rendered and checked in many bands; the byte each corrupted
    // frame damages moves with the frame index, across the bands.
    let mut det = SimDetector::new(SimConfig {
        max_width: 512,
        max_height: 256,
        seed: 7,
        params: SimParams::demo(SimMode::Peaks, (512, 256), detflow_hal::PixelType::U16),
    })
    .unwrap();
    let config = AcquisitionConfig {
        roi: Roi::full(512, 256),
        ..run(12, Duration::ZERO)
    };
    det.configure(&config).unwrap();
    det.start().unwrap();
    let (ids, errors) = drain(&mut det);
    assert_eq!(
        ids,
        (1..=12).collect::<Vec<_>>(),
        "clean frames pass the check"
    );
    assert!(errors.is_empty(), "{errors:?}");

    det.configure(&config).unwrap();
    det.chip().inject(Fault::Corrupt, 12);
    det.start().unwrap();
    let (ids, errors) = drain(&mut det);
    assert!(ids.is_empty(), "{ids:?}");
    assert_eq!(errors, [ErrorKind::Corrupted; 12]);
}
