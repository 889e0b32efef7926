//! Where `stream2-send` takes each channel's frames: one simulated detector per channel
//! (channel k seeded `seed + k`, so `detflow acquire --seed S+k` makes the same frames), or
//! one replayed dataset whose frame every channel repeats.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use detflow_engine::backend::{self, Backend, Opened};
use detflow_engine::config::DetectorSettings;
use detflow_hal::{AcquisitionConfig, ErrorKind, FrameMeta, FrameShape};
use detflow_sim::SimOptions;

/// How long one read waits before checking the stop flag again.
const READ_SLICE: Duration = Duration::from_millis(50);

/// The frame sources of a series, in channel order.
pub(crate) struct Frames {
    backends: Vec<Box<dyn Backend>>,
    /// Channels (a replay has one backend that every channel repeats).
    channels: usize,
    /// The shape of every frame.
    pub(crate) shape: FrameShape,
    /// The acquisition every source runs (exposure, period, frames).
    pub(crate) acquisition: AcquisitionConfig,
}

/// What one read gave.
pub(crate) enum Read {
    /// Every channel's frame is in its buffer; the metadata of channel 0.
    Frame(FrameMeta),
    /// The detector lost a frame (FIFO overrun): nothing to send for it.
    Lost(String),
    /// The series is over.
    Done,
}

impl Frames {
    /// `channels` simulated detectors, channel k seeded `seed + k`, for `frames` frames (0:
    /// until stopped).
    pub(crate) fn sim(d: &DetectorSettings, frames: u64, channels: usize) -> anyhow::Result<Self> {
        d.validate()?;
        let acquisition = d.acquisition(frames, num_images(frames)?);
        let mut backends = Vec::with_capacity(channels);
        let mut shape = None;
        for k in 0..channels as u64 {
            let seed = d.seed.wrapping_add(k);
            let opened = backend::open_sim(
                d.size.pair(),
                seed,
                d.params(),
                SimOptions::default(),
                acquisition.clone(),
            )
            .with_context(|| format!("channel {} (seed {seed})", k + 1))?;
            shape = Some(opened.shape);
            backends.push(opened.backend);
        }
        Ok(Frames {
            backends,
            channels,
            shape: shape.context("no channel")?,
            acquisition,
        })
    }

    /// The frames of `dataset` in `file`, repeated in every channel.
    pub(crate) fn replay(
        d: &DetectorSettings,
        file: &Path,
        dataset: &str,
        frames: u64,
        channels: usize,
    ) -> anyhow::Result<Self> {
        let acquisition = d.acquisition(frames, num_images(frames)?);
        let Opened {
            backend,
            shape,
            acquisition,
            ..
        } = backend::open_replay(file, dataset, acquisition)?;
        Ok(Frames {
            backends: vec![backend],
            channels,
            shape,
            acquisition,
        })
    }

    /// Start every source.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        for b in &mut self.backends {
            b.start().context("cannot start the detector")?;
        }
        Ok(())
    }

    /// Stop every source (after the last frame, or on Ctrl-C).
    pub(crate) fn stop(&mut self) {
        for b in &mut self.backends {
            let _ = b.stop();
        }
    }

    /// Read the next frame of every channel into `bufs` (one per channel, each of
    /// `shape.bytes()`), waiting in slices so that `stopped` is seen.
    pub(crate) fn read(
        &mut self,
        bufs: &mut [Vec<u8>],
        stopped: &dyn Fn() -> bool,
    ) -> anyhow::Result<Read> {
        let mut first = None;
        for (k, b) in self.backends.iter_mut().enumerate() {
            let meta = loop {
                if stopped() || !b.is_acquiring() {
                    return Ok(Read::Done);
                }
                match b.read_frame(&mut bufs[k], READ_SLICE) {
                    Ok(m) => break m,
                    Err(e) if e.kind == ErrorKind::Timeout => continue,
                    Err(e) if e.kind == ErrorKind::NotAcquiring => return Ok(Read::Done),
                    Err(e) if e.kind == ErrorKind::Overrun => return Ok(Read::Lost(e.message)),
                    Err(e) => bail!("channel {}: {e}", k + 1),
                }
            };
            first.get_or_insert(meta);
        }
        // A replay fills channel 0; the other channels repeat it.
        if self.backends.len() < self.channels {
            let (head, rest) = bufs.split_at_mut(1);
            rest.iter_mut().for_each(|b| b.copy_from_slice(&head[0]));
        }
        Ok(first.map_or(Read::Done, Read::Frame))
    }
}

fn num_images(frames: u64) -> anyhow::Result<u32> {
    u32::try_from(frames.max(1)).map_err(|_| {
        detflow_engine::ConfigError::new("frames", frames, format!("at most {}", u32::MAX)).into()
    })
}
