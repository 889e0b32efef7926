//! A backend that serves frames generated beforehand, in a cycle: what `detflow bench` runs,
//! so that the pipeline (ring, compression, HDF5, disk) is measured rather than the
//! simulator's image arithmetic, as a real detector hands over finished frames by DMA.

use std::time::Duration;

use detflow_hal::{
    AcquisitionConfig, Detector, EpicsTimestamp, ErrorKind, ErrorType, FrameMeta, FrameShape,
    FrameSource, ImageMode, SensorInfo,
};

/// Serves `frames` in turn, as fast as they are read.
#[derive(Debug)]
pub struct FrameCycle {
    frames: Vec<Vec<u8>>,
    shape: FrameShape,
    info: SensorInfo,
    next: usize,
    unique_id: u64,
    /// Frames left in a Multiple run; `None` for Continuous.
    remaining: Option<u64>,
    acquiring: bool,
}

impl FrameCycle {
    /// Cycle through `frames`, each of `shape`.
    ///
    /// # Panics
    ///
    /// If `frames` is empty or a frame's length is not `shape.bytes()`.
    pub fn new(frames: Vec<Vec<u8>>, shape: FrameShape, info: SensorInfo) -> Self {
        assert!(!frames.is_empty(), "a frame cycle needs frames");
        assert!(
            frames.iter().all(|f| f.len() == shape.bytes()),
            "every frame must be {} bytes",
            shape.bytes()
        );
        FrameCycle {
            frames,
            shape,
            info,
            next: 0,
            unique_id: 0,
            remaining: Some(0),
            acquiring: false,
        }
    }
}

impl ErrorType for FrameCycle {
    type Error = ErrorKind;
}

impl Detector for FrameCycle {
    fn info(&self) -> SensorInfo {
        self.info.clone()
    }

    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, ErrorKind> {
        let (w, h) = config.output_shape()?;
        if (w, h, config.pixel_type) != (self.shape.width, self.shape.height, self.shape.pixel_type)
        {
            return Err(ErrorKind::InvalidConfig);
        }
        self.remaining = match config.image_mode {
            ImageMode::Single => Some(1),
            ImageMode::Multiple => Some(u64::from(config.num_images)),
            ImageMode::Continuous => None,
        };
        Ok(self.shape)
    }

    fn start(&mut self) -> Result<(), ErrorKind> {
        self.acquiring = true;
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ErrorKind> {
        self.acquiring = false;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.acquiring && self.remaining != Some(0)
    }
}

impl FrameSource for FrameCycle {
    fn read_frame(&mut self, buf: &mut [u8], _timeout: Duration) -> Result<FrameMeta, ErrorKind> {
        if !self.is_acquiring() {
            return Err(ErrorKind::NotAcquiring);
        }
        let frame = &self.frames[self.next % self.frames.len()];
        buf.get_mut(..frame.len())
            .ok_or(ErrorKind::InvalidConfig)?
            .copy_from_slice(frame);
        self.next += 1;
        self.unique_id += 1;
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        let timestamp = EpicsTimestamp::now();
        Ok(FrameMeta {
            unique_id: self.unique_id,
            timestamp,
            unix_time_s: timestamp.unix_seconds(),
            shape: self.shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_hal::{ColorMode, PixelType, Roi};

    #[test]
    fn cycles_through_its_frames_and_stops_after_num_images() {
        let shape = FrameShape {
            width: 2,
            height: 1,
            pixel_type: PixelType::U8,
            color_mode: ColorMode::Mono,
        };
        let info = SensorInfo {
            manufacturer: Default::default(),
            model: Default::default(),
            max_width: 2,
            max_height: 1,
            pixel_types: heapless::Vec::from_slice(&[PixelType::U8]).unwrap(),
        };
        let mut c = FrameCycle::new(vec![vec![1, 1], vec![2, 2]], shape, info);
        let cfg = AcquisitionConfig {
            roi: Roi::full(2, 1),
            pixel_type: PixelType::U8,
            num_images: 3,
            image_mode: ImageMode::Multiple,
            ..AcquisitionConfig::default()
        };
        assert_eq!(c.configure(&cfg), Ok(shape));
        c.start().unwrap();
        let mut buf = [0u8; 2];
        let mut seen = Vec::new();
        while c.is_acquiring() {
            let m = c.read_frame(&mut buf, Duration::ZERO).unwrap();
            seen.push((m.unique_id, buf[0]));
        }
        assert_eq!(seen, vec![(1, 1), (2, 2), (3, 1)]);
        assert_eq!(
            c.read_frame(&mut buf, Duration::ZERO),
            Err(ErrorKind::NotAcquiring)
        );
    }
}
