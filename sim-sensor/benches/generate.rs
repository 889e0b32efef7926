//! Frame generation speed of the simulated detector: 1024 x 1024 u16 frames read back to back
//! (no pacing) through `FrameSource::read_frame`, as the engine reads them into ring slots.
//! `peaks_demo` is what `detflow acquire --mode peaks --period 0` generates per frame (the
//! demo picture: 10 x 10 peaks, 10 % height variation, noise 4); the target is >= 5000
//! frames/s on one core.
//!
//! `cargo bench -p detflow-sim --bench generate`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode, PixelType, Roi};
use detflow_sim::{SimConfig, SimDetector, SimMode, SimParams};

/// A free-running 1024 x 1024 u16 detector with `params`.
fn detector(params: SimParams) -> SimDetector {
    let mut det = SimDetector::new(SimConfig {
        max_width: 1024,
        max_height: 1024,
        seed: 1,
        params,
    })
    .expect("valid sensor");
    det.configure(&AcquisitionConfig {
        roi: Roi::full(1024, 1024),
        pixel_type: PixelType::U16,
        exposure: Duration::ZERO,
        period: Duration::ZERO,
        image_mode: ImageMode::Continuous,
        ..AcquisitionConfig::default()
    })
    .expect("valid configuration");
    det.start().expect("starts");
    det
}

/// A 10 x 10 grid of peaks 100 pixels apart on a noisy background.
fn peaks(variation: f64) -> SimParams {
    SimParams {
        mode: SimMode::Peaks,
        gain: 1000.0,
        noise: 4.0,
        peak_start_x: 62,
        peak_start_y: 62,
        peak_num_x: 10,
        peak_num_y: 10,
        peak_step_x: 100,
        peak_step_y: 100,
        peak_variation: variation,
        ..SimParams::default()
    }
}

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate_1024x1024_u16");
    // Frames per second: the unit the target is given in.
    group.throughput(Throughput::Elements(1));
    let cases = [
        (
            "peaks_demo",
            SimParams::demo(SimMode::Peaks, (1024, 1024), PixelType::U16),
        ),
        ("peaks_noise", peaks(0.0)),
        ("peaks_noise_variation10", peaks(10.0)),
        ("ramp", SimParams::default()),
        (
            "ramp_noise",
            SimParams {
                noise: 4.0,
                ..SimParams::default()
            },
        ),
        (
            "sine",
            SimParams {
                mode: SimMode::Sine,
                gain: 100.0,
                ..SimParams::default()
            },
        ),
    ];
    for (name, params) in cases {
        let mut det = detector(params);
        let mut slot = vec![0u8; det.shape().bytes()];
        group.bench_function(name, |b| {
            b.iter(|| {
                let meta = det
                    .read_frame(&mut slot, Duration::from_secs(1))
                    .expect("a frame");
                black_box((&slot, meta));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
