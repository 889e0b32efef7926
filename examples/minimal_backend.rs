//! The smallest complete detflow backend: a paced "camera" whose frames are a moving ramp.
//! Copy it to start a real backend (PORTING.md walks through each part); replace the marked
//! places with calls to your hardware.
//!
//! `cargo run --example minimal_backend` runs the HAL conformance suite on it;
//! `tests/porting_example.rs` does the same in CI.

use std::time::{Duration, Instant};

use detflow_hal::{
    AcquisitionConfig, ColorMode, Detector, EpicsTimestamp, ErrorKind, ErrorType, FrameMeta,
    FrameShape, FrameSource, ImageMode, PixelType, SensorInfo, TriggerMode,
};

/// 1. The error type: anything with a `kind()`. A real backend wraps its bus and driver
///    errors in an enum (see `detflow_sim::SensorError`); `ErrorKind` itself is enough here.
pub type RampError = ErrorKind;

/// Sensor size of this camera.
const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;

/// 2. The backend's state: the applied configuration and the run in progress.
#[derive(Debug)]
pub struct RampCamera {
    config: AcquisitionConfig,
    shape: FrameShape,
    run: Option<Run>,
    /// Frames delivered since creation: the next frame's unique id is one more.
    delivered: u64,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    start: Instant,
    /// Time from one frame to the next: `max(period, exposure)`.
    frame_period: Duration,
    exposure: Duration,
    /// Frames delivered in this run, and how many it delivers (`None`: until stopped).
    done: u64,
    limit: Option<u64>,
}

impl Default for RampCamera {
    fn default() -> Self {
        RampCamera {
            config: AcquisitionConfig {
                roi: detflow_hal::Roi::full(WIDTH, HEIGHT),
                pixel_type: PixelType::U16,
                ..AcquisitionConfig::default()
            },
            shape: FrameShape {
                width: WIDTH,
                height: HEIGHT,
                pixel_type: PixelType::U16,
                color_mode: ColorMode::Mono,
            },
            run: None,
            delivered: 0,
        }
    }
}

impl ErrorType for RampCamera {
    type Error = RampError;
}

/// 3. The control plane.
impl Detector for RampCamera {
    fn info(&self) -> SensorInfo {
        let mut pixel_types = heapless::Vec::new();
        let _ = pixel_types.push(PixelType::U16);
        SensorInfo {
            manufacturer: heapless::String::try_from("Example").unwrap_or_default(),
            model: heapless::String::try_from("Ramp camera").unwrap_or_default(),
            max_width: WIDTH,
            max_height: HEIGHT,
            pixel_types,
        }
    }

    /// Check everything first, apply nothing on refusal. Hardware: write the registers here.
    fn configure(&mut self, c: &AcquisitionConfig) -> Result<FrameShape, RampError> {
        if self.run.is_some() {
            return Err(ErrorKind::InvalidConfig); // no reconfiguration while acquiring
        }
        let (width, height) = c.output_shape()?; // refuses zero sizes and binnings
        let r = c.roi;
        let fits = r.min_x + r.size_x <= WIDTH && r.min_y + r.size_y <= HEIGHT;
        let supported = c.binning.x == 1
            && c.binning.y == 1
            && c.pixel_type == PixelType::U16
            && c.trigger_mode == TriggerMode::Internal
            && !(c.image_mode == ImageMode::Multiple && c.num_images == 0);
        if !fits || !supported {
            return Err(ErrorKind::InvalidConfig);
        }
        self.config = c.clone();
        self.shape = FrameShape {
            width,
            height,
            pixel_type: PixelType::U16,
            color_mode: ColorMode::Mono,
        };
        Ok(self.shape)
    }

    /// Hardware: start streaming. Starting twice changes nothing.
    fn start(&mut self) -> Result<(), RampError> {
        if self.run.is_none() {
            let c = &self.config;
            self.run = Some(Run {
                start: Instant::now(),
                frame_period: c.period.max(c.exposure),
                exposure: c.exposure,
                done: 0,
                limit: match c.image_mode {
                    ImageMode::Single => Some(1),
                    ImageMode::Multiple => Some(c.num_images.into()),
                    ImageMode::Continuous => None,
                },
            });
        }
        Ok(())
    }

    /// Hardware: stop streaming and discard what is buffered. Idle is no error.
    fn stop(&mut self) -> Result<(), RampError> {
        self.run = None;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.run.is_some()
    }
}

/// 4. The data plane: wait for the next frame, write it into the caller's buffer, no
///    allocation.
impl FrameSource for RampCamera {
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, RampError> {
        let mut run = self.run.ok_or(ErrorKind::NotAcquiring)?;
        let bytes = self.shape.bytes();
        let frame = buf.get_mut(..bytes).ok_or(ErrorKind::InvalidConfig)?;
        // Frame n is due at start + n * frame_period + exposure (absolute, so no drift).
        let due = run.start + run.frame_period * run.done as u32 + run.exposure;
        let now = Instant::now();
        if due > now {
            if due - now > timeout {
                std::thread::sleep(timeout);
                return Err(ErrorKind::Timeout); // the frame is not lost: call again
            }
            std::thread::sleep(due - now);
        }
        // Hardware: DMA the frame into `frame` here. The ramp moves one step per frame.
        let r = self.config.roi;
        let step = self.delivered as u16;
        for (i, px) in frame.chunks_exact_mut(2).enumerate() {
            let (x, y) = (r.min_x + i as u32 % r.size_x, r.min_y + i as u32 / r.size_x);
            px.copy_from_slice(&((x + y) as u16).wrapping_add(step).to_ne_bytes());
        }
        self.delivered += 1;
        run.done += 1;
        self.run = if run.limit.is_some_and(|n| run.done >= n) {
            None
        } else {
            Some(run)
        };
        let timestamp = EpicsTimestamp::now();
        Ok(FrameMeta {
            unique_id: self.delivered,
            timestamp,
            unix_time_s: timestamp.unix_seconds(),
            shape: self.shape,
        })
    }
}

/// 5. Prove it: the conformance suite every backend passes.
pub fn conforms(
    allocations: Option<fn() -> u64>,
) -> Result<(), detflow_hal::conformance::ConformanceFailure> {
    let cfg = detflow_hal::conformance::ConformanceConfig {
        allocations,
        ..Default::default()
    };
    detflow_hal::conformance::check_all(&mut RampCamera::default(), &cfg)
}

#[allow(dead_code)]
fn main() {
    match conforms(None) {
        Ok(()) => println!("RampCamera passes the detflow HAL conformance suite"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
