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
pub mod udp;

use detflow_hal::{
    AcquisitionConfig, ErrorKind, FrameMeta, FrameShape, FrameSource, PixelType, Roi, SensorInfo,
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
