//! The control path: the store the detector reads its simulation parameters from, and the
//! reset rule of ADSimDetector (any parameter write, or a new pixel type, rebuilds the base
//! image before the next frame). Today [`SimDetector::set_params`](crate::SimDetector::set_params)
//! writes it; a register map decoding bus writes (an `embedded_hal::i2c::I2c` target model)
//! can later sit in front of the same store without touching the image generator.

use crate::error::SimError;
use crate::params::SimParams;

/// Validated simulation parameters and the pending-reset flag (areaDetector's `Reset` PV).
#[derive(Debug, Clone)]
pub(crate) struct ParamStore {
    params: SimParams,
    /// Set by every write; cleared when the detector rebuilds its base image.
    reset_pending: bool,
}

impl ParamStore {
    /// A store holding `params`, with a reset pending so that the first frame builds the image.
    pub(crate) fn new(params: SimParams) -> Result<Self, SimError> {
        params.validate()?;
        Ok(ParamStore {
            params,
            reset_pending: true,
        })
    }

    pub(crate) fn params(&self) -> &SimParams {
        &self.params
    }

    /// Replaces every parameter; refused values leave the store unchanged. A write resets the
    /// image even when the values are the same, as writing an ADSimDetector PV does.
    pub(crate) fn write(&mut self, params: SimParams) -> Result<(), SimError> {
        params.validate()?;
        self.params = params;
        self.reset_pending = true;
        Ok(())
    }

    /// Asks for a rebuild of the base image (a new pixel type, or a `Reset` write).
    pub(crate) fn request_reset(&mut self) {
        self.reset_pending = true;
    }

    /// True once after each write or reset request.
    pub(crate) fn take_reset(&mut self) -> bool {
        core::mem::take(&mut self.reset_pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_validate_and_request_one_reset() {
        let mut s = ParamStore::new(SimParams::default()).unwrap();
        assert!(s.take_reset());
        assert!(!s.take_reset());
        let bad = SimParams {
            peak_num_x: 1000,
            ..SimParams::default()
        };
        assert!(s.write(bad).is_err());
        assert!(!s.take_reset(), "a refused write changes nothing");
        s.write(SimParams::default()).unwrap();
        assert!(s.take_reset());
    }
}
