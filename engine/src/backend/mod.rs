//! Detector backends behind one object-safe face, so the engine runs any of them.
//!
//! A backend implements the HAL ([`detflow_hal::FrameSource`]) with its own error type;
//! [`Backend`] erases that type into [`BackendError`] (the portable [`ErrorKind`] plus the
//! backend's message), and a blanket implementation covers every `FrameSource` that can move
//! to the detector thread. Opening a backend ([`open_sim`], [`open_replay`], [`open_udp`], or
//! [`configure`] for one made elsewhere) configures it and returns it with the frame shape it
//! delivers and the configuration it runs with ([`Opened`]): the one place a run's frame size
//! is decided.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub mod cycle;
pub mod replay;
pub mod stream2;
pub mod udp;

use detflow_hal::{
    AcquisitionConfig, ErrorKind, FrameEncoding, FrameMeta, FrameShape, FrameSource, ImageMeta,
    ImageSource, PixelType, Roi, SensorInfo,
};
use detflow_sim::{SimConfig, SimDetector, SimOptions, SimParams};

/// A backend's error with its type erased: the portable kind and the backend's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// What kind of failure it is.
    pub kind: ErrorKind,
    /// The backend's message.
    pub message: String,
}

impl BackendError {
    /// An error of `kind` with `message` (which names the file, setting or value at fault).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

impl detflow_hal::Error for BackendError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

fn erase<E: detflow_hal::Error + fmt::Display>(e: E) -> BackendError {
    BackendError {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// The control and data planes of any HAL backend, object-safe.
pub trait Backend: Send {
    /// [`detflow_hal::Detector::info`].
    fn info(&self) -> SensorInfo;
    /// [`detflow_hal::Detector::configure`].
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, BackendError>;
    /// [`detflow_hal::Detector::start`].
    fn start(&mut self) -> Result<(), BackendError>;
    /// [`detflow_hal::Detector::stop`].
    fn stop(&mut self) -> Result<(), BackendError>;
    /// [`detflow_hal::Detector::is_acquiring`].
    fn is_acquiring(&self) -> bool;
    /// [`detflow_hal::FrameSource::read_frame`].
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, BackendError>;
    /// What an image source delivers ([`detflow_hal::ImageSource`]); `None` for a backend of
    /// plain frames.
    fn images(&self) -> Option<ImageStream> {
        None
    }
    /// [`detflow_hal::ImageSource::read_image`], for a backend whose
    /// [`images`](Backend::images) is `Some`.
    fn read_image(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ImageMeta, BackendError> {
        let _ = (buf, timeout);
        Err(BackendError::new(
            ErrorKind::Other,
            "this backend delivers frames, not images",
        ))
    }
}

/// What an image source delivers: the layout of its images and what its series says of
/// itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageStream {
    /// Channel names, in the order of each image's parts.
    pub channels: Vec<String>,
    /// How the detector encodes its channels.
    pub encoding: FrameEncoding,
    /// The most bytes one image takes in a buffer (a ring slot holds this plus a header).
    pub max_image_bytes: usize,
    /// Images in the series, when the detector says.
    pub number_of_images: Option<u64>,
}

/// The codec whose chunks are `encoding`'s bytes.
pub fn codec_of(encoding: FrameEncoding) -> detflow_writer::Codec {
    match encoding {
        FrameEncoding::BitshuffleLz4 => detflow_writer::Codec::BitshuffleLz4,
        FrameEncoding::Lz4 => detflow_writer::Codec::Lz4,
        _ => detflow_writer::Codec::None,
    }
}

/// A [`detflow_hal::ImageSource`] as a [`Backend`]: it delivers images, never plain frames.
#[derive(Debug)]
pub struct ImageBackend<T>(pub T);

impl<T> Backend for ImageBackend<T>
where
    T: ImageSource + Send,
    T::Error: fmt::Display,
{
    fn info(&self) -> SensorInfo {
        detflow_hal::Detector::info(&self.0)
    }
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, BackendError> {
        detflow_hal::Detector::configure(&mut self.0, config).map_err(erase)
    }
    fn start(&mut self) -> Result<(), BackendError> {
        detflow_hal::Detector::start(&mut self.0).map_err(erase)
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        detflow_hal::Detector::stop(&mut self.0).map_err(erase)
    }
    fn is_acquiring(&self) -> bool {
        detflow_hal::Detector::is_acquiring(&self.0)
    }
    fn read_frame(&mut self, _: &mut [u8], _: Duration) -> Result<FrameMeta, BackendError> {
        Err(BackendError::new(
            ErrorKind::Other,
            "this backend delivers encoded images, not frames",
        ))
    }
    fn images(&self) -> Option<ImageStream> {
        let names = self.0.channel_names();
        Some(ImageStream {
            channels: names.iter().map(|n| n.as_str().to_owned()).collect(),
            encoding: self.0.encoding(),
            max_image_bytes: self.0.max_image_bytes(),
            number_of_images: self.0.series_images(),
        })
    }
    fn read_image(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ImageMeta, BackendError> {
        self.0.read_image(buf, timeout).map_err(erase)
    }
}

impl<T> Backend for T
where
    T: FrameSource + Send,
    T::Error: fmt::Display,
{
    fn info(&self) -> SensorInfo {
        detflow_hal::Detector::info(self)
    }
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, BackendError> {
        detflow_hal::Detector::configure(self, config).map_err(erase)
    }
    fn start(&mut self) -> Result<(), BackendError> {
        detflow_hal::Detector::start(self).map_err(erase)
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        detflow_hal::Detector::stop(self).map_err(erase)
    }
    fn is_acquiring(&self) -> bool {
        detflow_hal::Detector::is_acquiring(self)
    }
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, BackendError> {
        FrameSource::read_frame(self, buf, timeout).map_err(erase)
    }
}

/// A backend ready to start: configured, with the frames it will deliver.
pub struct Opened {
    /// The backend.
    pub backend: Box<dyn Backend>,
    /// The shape of every frame it delivers (the ring's slot size follows from it).
    pub shape: FrameShape,
    /// The configuration it runs with: the one asked for, with what the backend decides
    /// (a replayed file's frame size and pixel type).
    pub acquisition: AcquisitionConfig,
    /// What the detector says of its series, for the file (a Stream V2 `start`).
    pub metadata: Option<detflow_writer::DetectorMetadata>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("shape", &self.shape)
            .field("acquisition", &self.acquisition)
            .finish_non_exhaustive()
    }
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The simulated detector refused its settings.
    #[error("cannot create the simulated detector")]
    Sim(#[source] detflow_sim::SensorError),
    /// The replay file cannot be read (the message names it).
    #[error(transparent)]
    Replay(BackendError),
    /// The UDP socket cannot be bound.
    #[error("cannot receive on udp {listen}")]
    Udp {
        /// The address asked for.
        listen: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No Stream V2 series could be received.
    #[error(transparent)]
    Stream2(stream2::Stream2Error),
    /// The backend refused the acquisition configuration.
    #[error("the detector refused the configuration")]
    Refused(#[source] BackendError),
}

/// Configure `backend` for `acquisition`.
pub fn configure(
    mut backend: Box<dyn Backend>,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let shape = backend
        .configure(&acquisition)
        .map_err(OpenError::Refused)?;
    Ok(Opened {
        backend,
        shape,
        acquisition,
        metadata: None,
    })
}

/// The simulated detector: a `sensor` of this size drawing the picture `params` describe,
/// `seed`ed, with `options` (FIFO depth, injected faults).
pub fn open_sim(
    sensor: (u32, u32),
    seed: u64,
    params: SimParams,
    options: SimOptions,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let sim = SimDetector::with_options(
        SimConfig {
            max_width: sensor.0,
            max_height: sensor.1,
            seed,
            params,
        },
        options,
    )
    .map_err(OpenError::Sim)?;
    configure(Box::new(sim), acquisition)
}

/// The frames of `dataset` in the HDF5 `file`: the file decides the frame size and pixel
/// type, whatever `acquisition` says.
pub fn open_replay(
    file: &Path,
    dataset: &str,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let replay = replay::ReplayDetector::open(file, dataset).map_err(OpenError::Replay)?;
    let (w, h) = replay.frame_size();
    let acquisition = AcquisitionConfig {
        roi: Roi::full(w, h),
        pixel_type: replay.pixel_type(),
        ..acquisition
    };
    configure(Box::new(replay), acquisition)
}

/// The next series of the Stream V2 detector at `endpoint`: connect, wait for its start and
/// first image (up to `silence`), take its frame size and pixel type.
pub fn open_stream2(
    endpoint: &str,
    rcvhwm: i32,
    silence: Duration,
    expect: stream2::SeriesExpect,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let source = stream2::Stream2Source::connect(endpoint, rcvhwm, silence, expect)
        .map_err(OpenError::Stream2)?;
    open_series(source, acquisition)
}

/// A Stream V2 series received (its start and first image in): configured with the series'
/// frame size, pixel type and image count over `acquisition`, with its metadata for the file.
pub fn open_series(
    source: stream2::Stream2Source,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let metadata = source.metadata();
    let series = source.series();
    let acquisition = AcquisitionConfig {
        roi: Roi::full(series.shape.width, series.shape.height),
        pixel_type: series.shape.pixel_type,
        num_images: series
            .images_here()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(acquisition.num_images),
        ..acquisition
    };
    let mut opened = configure(Box::new(ImageBackend(source)), acquisition)?;
    opened.metadata = Some(metadata);
    Ok(opened)
}

/// Frames of `sensor` size and `pixel_type` received as UDP datagrams on `listen`.
pub fn open_udp(
    listen: SocketAddr,
    sensor: (u32, u32),
    pixel_type: PixelType,
    incomplete: udp::Incomplete,
    acquisition: AcquisitionConfig,
) -> Result<Opened, OpenError> {
    let receiver = udp::UdpReceiver::bind(listen, sensor, pixel_type, incomplete)
        .map_err(|source| OpenError::Udp { listen, source })?;
    configure(Box::new(receiver), acquisition)
}
