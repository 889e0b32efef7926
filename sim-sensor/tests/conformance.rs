//! The HAL conformance suite, run against the simulated detector in every mode, with a paced
//! configuration, and with allocations counted.

use std::time::Duration;

use detflow_hal::conformance::{self, ConformanceConfig, CountingAllocator};
use detflow_hal::{Detector, PixelType};
use detflow_sim::{SimConfig, SimDetector, SimMode, SimParams};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn detector(mode: SimMode) -> SimDetector {
    SimDetector::new(SimConfig {
        max_width: 640,
        max_height: 480,
        seed: 17,
        params: SimParams {
            mode,
            noise: 10.0,
            peak_variation: 5.0,
            ..SimParams::default()
        },
    })
    .expect("valid sensor")
}

#[test]
fn every_mode_conforms() {
    for mode in SimMode::ALL {
        let mut det = detector(mode);
        let cfg = ConformanceConfig {
            allocations: Some(CountingAllocator::thread_allocations),
            ..ConformanceConfig::default()
        };
        conformance::check_all(&mut det, &cfg).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(!det.is_acquiring());
    }
}

#[test]
fn conforms_when_paced() {
    let mut det = detector(SimMode::Peaks);
    let cfg = ConformanceConfig {
        roi_width: 100,
        roi_height: 60,
        pixel_type: Some(PixelType::F32),
        num_images: 4,
        exposure: Duration::from_millis(2),
        period: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        ..ConformanceConfig::default()
    };
    conformance::check_all(&mut det, &cfg).unwrap();
}
