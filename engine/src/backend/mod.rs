//! Detector backends behind one object-safe face, so the engine runs any of them.
//!
//! A backend implements the HAL ([`detflow_hal::FrameSource`]) with its own error type;
//! [`Backend`] erases that type into [`BackendError`] (the portable [`ErrorKind`] plus the
//! backend's message), and a blanket implementation covers every `FrameSource` that can move
//! to the detector thread. [`crate::config::BackendSpec`] says which backend a configuration
//! asks for.

use std::fmt;
use std::time::Duration;

pub mod cycle;
pub mod replay;
pub mod udp;

use detflow_hal::{AcquisitionConfig, ErrorKind, FrameMeta, FrameShape, FrameSource, SensorInfo};

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
