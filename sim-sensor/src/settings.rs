//! The simulated detector as a backend the user configures: test pattern, seed, FIFO depth
//! and fault rates, as one flat struct that a TOML file, the CLI's flags or the daemon fill.
//! [`SimSettings::validate`] holds the rules for these values in one place; the engine embeds
//! the struct in its configuration (serde with the `serde` feature).

use detflow_hal::PixelType;

use crate::detector::{SimConfig, SimOptions};
use crate::firmware::{FaultRates, MAX_FIFO_DEPTH};
use crate::params::{SimMode, SimParams};

/// How to build the simulated detector, as the user writes it.
///
/// The field names are the TOML keys; the CLI flags are the same with `-` for `_`
/// (`--fifo-depth`, `--fault-drop`). With the `serde` feature missing fields take their
/// [`Default`] and unknown ones are refused; `mode` is read by [`SimMode`]'s `FromStr`.
///
/// ```
/// use detflow_hal::PixelType;
/// use detflow_sim::{SimDetector, SimMode, SimSettings};
///
/// let s = SimSettings { mode: SimMode::Sine, fault_drop: 0.01, ..SimSettings::default() };
/// s.validate()?;
/// let det = SimDetector::with_options(s.config((256, 128), PixelType::U16), s.options())?;
/// # let _ = det;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct SimSettings {
    /// Test pattern, drawn with [`SimParams::demo`]. Default [`SimMode::Peaks`].
    pub mode: SimMode,
    /// Seed of the noise and peak-height draws: equal seeds give equal frames. Default 0.
    pub seed: u64,
    /// Frames the detector's FIFO holds before it overruns, `1..=`[`MAX_FIFO_DEPTH`].
    /// Default 16.
    pub fifo_depth: usize,
    /// Probability that an I2C transaction is NACKed, `0..=1`.
    pub fault_nack: f64,
    /// Probability that an I2C transaction times out, `0..=1`.
    pub fault_bus_timeout: f64,
    /// Probability that a frame is dropped on the sensor link, `0..=1`.
    pub fault_drop: f64,
    /// Probability that a frame arrives corrupted (checksum mismatch), `0..=1`.
    pub fault_corrupt: f64,
    /// Probability that a frame is lost to an injected FIFO overrun, `0..=1`.
    pub fault_overrun: f64,
}

impl Default for SimSettings {
    /// Peaks, seed 0, a FIFO of 16 frames, no faults: `detflow acquire`'s defaults.
    fn default() -> Self {
        let options = SimOptions::default();
        SimSettings {
            mode: SimMode::Peaks,
            seed: 0,
            fifo_depth: options.fifo_depth,
            fault_nack: options.faults.nack,
            fault_bus_timeout: options.faults.bus_timeout,
            fault_drop: options.faults.drop,
            fault_corrupt: options.faults.corrupt,
            fault_overrun: options.faults.overrun,
        }
    }
}

/// A [`SimSettings`] value that cannot be used, named as the CLI flag names it:
/// `invalid fault-drop "1.5": expected a probability from 0 to 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} {value:?}: {reason}")]
pub struct SimSettingsError {
    /// The setting as the CLI flag names it (`fifo-depth`, `fault-drop`).
    pub setting: &'static str,
    /// The value given, as written by `Display`.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl SimSettings {
    /// Checks every value; the first bad one is refused with its name and value. The fault
    /// rates are checked first, then the FIFO depth.
    pub fn validate(&self) -> Result<(), SimSettingsError> {
        for (setting, p) in [
            ("fault-nack", self.fault_nack),
            ("fault-bus-timeout", self.fault_bus_timeout),
            ("fault-drop", self.fault_drop),
            ("fault-corrupt", self.fault_corrupt),
            ("fault-overrun", self.fault_overrun),
        ] {
            // NaN is outside every range, so it is refused here too.
            if !(0.0..=1.0).contains(&p) {
                return Err(SimSettingsError {
                    setting,
                    value: p.to_string(),
                    reason: "expected a probability from 0 to 1".into(),
                });
            }
        }
        if !(1..=MAX_FIFO_DEPTH).contains(&self.fifo_depth) {
            return Err(SimSettingsError {
                setting: "fifo-depth",
                value: self.fifo_depth.to_string(),
                reason: format!("expected 1 to {MAX_FIFO_DEPTH} frames"),
            });
        }
        Ok(())
    }

    /// The injected fault rates.
    pub fn faults(&self) -> FaultRates {
        FaultRates {
            nack: self.fault_nack,
            bus_timeout: self.fault_bus_timeout,
            drop: self.fault_drop,
            corrupt: self.fault_corrupt,
            overrun: self.fault_overrun,
        }
    }

    /// How the simulated hardware is built: FIFO depth and fault rates.
    pub fn options(&self) -> SimOptions {
        SimOptions {
            fifo_depth: self.fifo_depth,
            faults: self.faults(),
        }
    }

    /// A sensor of `sensor` (width, height) pixels drawing [`SimParams::demo`] of this mode
    /// for `pixel_type`, with this seed.
    pub fn config(&self, sensor: (u32, u32), pixel_type: PixelType) -> SimConfig {
        SimConfig {
            max_width: sensor.0,
            max_height: sensor.1,
            seed: self.seed,
            params: SimParams::demo(self.mode, sensor, pixel_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_detector_defaults() {
        let s = SimSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.options(), SimOptions::default());
        assert_eq!(s.mode, SimMode::Peaks);
    }

    #[test]
    fn bad_values_are_named_as_the_flags_are() {
        type Case = (fn(&mut SimSettings), &'static str);
        let cases: [Case; 8] = [
            (|s| s.fault_nack = -0.1, "invalid fault-nack \"-0.1\""),
            (
                |s| s.fault_bus_timeout = 2.0,
                "invalid fault-bus-timeout \"2\"",
            ),
            (|s| s.fault_drop = 1.5, "invalid fault-drop \"1.5\""),
            (
                |s| s.fault_corrupt = f64::NAN,
                "invalid fault-corrupt \"NaN\"",
            ),
            (
                |s| s.fault_overrun = f64::INFINITY,
                "invalid fault-overrun \"inf\"",
            ),
            (|s| s.fifo_depth = 0, "invalid fifo-depth \"0\""),
            (|s| s.fifo_depth = 65, "invalid fifo-depth \"65\""),
            // The fault rates are checked before the FIFO depth.
            (
                |s| {
                    s.fifo_depth = 0;
                    s.fault_drop = 7.0;
                },
                "invalid fault-drop \"7\"",
            ),
        ];
        for (edit, start) in cases {
            let mut s = SimSettings::default();
            edit(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.starts_with(start), "{e}");
        }
        let e = SimSettings {
            fault_drop: 1.5,
            ..SimSettings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid fault-drop \"1.5\": expected a probability from 0 to 1"
        );
        assert_eq!((e.setting, e.value.as_str()), ("fault-drop", "1.5"));
        let e = SimSettings {
            fifo_depth: 0,
            ..SimSettings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid fifo-depth \"0\": expected 1 to 64 frames"
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let s = SimSettings {
            fifo_depth: MAX_FIFO_DEPTH,
            fault_nack: 1.0,
            fault_bus_timeout: 0.0,
            fault_drop: 1.0,
            fault_corrupt: 0.5,
            fault_overrun: 1.0,
            ..SimSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
        let s = SimSettings {
            fifo_depth: 1,
            ..SimSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn settings_build_the_detector_they_name() {
        let s = SimSettings {
            mode: SimMode::OffsetNoise,
            seed: 7,
            fifo_depth: 3,
            fault_nack: 0.1,
            fault_bus_timeout: 0.2,
            fault_drop: 0.3,
            fault_corrupt: 0.4,
            fault_overrun: 0.5,
        };
        assert_eq!(
            s.options(),
            SimOptions {
                fifo_depth: 3,
                faults: FaultRates {
                    nack: 0.1,
                    bus_timeout: 0.2,
                    drop: 0.3,
                    corrupt: 0.4,
                    overrun: 0.5,
                },
            }
        );
        let c = s.config((640, 480), PixelType::U8);
        assert_eq!((c.max_width, c.max_height, c.seed), (640, 480, 7));
        assert_eq!(
            c.params,
            SimParams::demo(SimMode::OffsetNoise, (640, 480), PixelType::U8)
        );
    }

    fn two_frames(s: &SimSettings) -> Vec<u8> {
        use detflow_hal::{AcquisitionConfig, Detector, FrameSource, ImageMode};
        let mut det =
            crate::SimDetector::with_options(s.config((96, 64), PixelType::U16), s.options())
                .unwrap();
        let shape = det
            .configure(&AcquisitionConfig {
                image_mode: ImageMode::Multiple,
                num_images: 2,
                roi: detflow_hal::Roi::full(96, 64),
                ..AcquisitionConfig::default()
            })
            .unwrap();
        let mut frames = vec![0u8; 2 * shape.bytes()];
        det.start().unwrap();
        for slot in frames.chunks_mut(shape.bytes()) {
            det.read_frame(slot, std::time::Duration::from_secs(5))
                .unwrap();
        }
        frames
    }

    #[test]
    fn equal_seeds_give_equal_frames() {
        let s = SimSettings {
            seed: 3,
            ..SimSettings::default()
        };
        assert_eq!(two_frames(&s), two_frames(&s));
        let other = SimSettings {
            seed: 4,
            ..s.clone()
        };
        assert_ne!(two_frames(&s), two_frames(&other));
    }

    #[cfg(feature = "serde")]
    mod serde_form {
        use super::*;

        #[test]
        fn toml_keys_are_the_field_names_and_missing_ones_default() {
            let s: SimSettings =
                toml::from_str("mode = \"sine\"\nseed = 42\nfifo_depth = 4\nfault_drop = 0.25\n")
                    .unwrap();
            assert_eq!(
                s,
                SimSettings {
                    mode: SimMode::Sine,
                    seed: 42,
                    fifo_depth: 4,
                    fault_drop: 0.25,
                    ..SimSettings::default()
                }
            );
            assert_eq!(
                toml::from_str::<SimSettings>("").unwrap(),
                SimSettings::default()
            );
            let back: SimSettings = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }

        #[test]
        fn unknown_keys_and_modes_are_refused() {
            let e = toml::from_str::<SimSettings>("fifo = 4").unwrap_err();
            assert!(e.to_string().contains("unknown field `fifo`"), "{e}");
            let e = toml::from_str::<SimSettings>("mode = \"Peak\"").unwrap_err();
            assert!(
                e.to_string()
                    .contains("unknown simulation mode \"Peak\": expected one of peaks"),
                "{e}"
            );
        }

        /// The shape the engine's configuration uses: `backend = "sim"` beside the fields.
        #[test]
        fn embeds_in_an_internally_tagged_backend_enum() {
            #[derive(Debug, PartialEq, serde::Deserialize)]
            #[serde(tag = "backend", rename_all = "lowercase")]
            enum Backend {
                Sim(SimSettings),
                Other { path: String },
            }
            let b: Backend =
                toml::from_str("backend = \"sim\"\nmode = \"noise\"\nfault_nack = 0.5\n").unwrap();
            assert_eq!(
                b,
                Backend::Sim(SimSettings {
                    mode: SimMode::OffsetNoise,
                    fault_nack: 0.5,
                    ..SimSettings::default()
                })
            );
            let e = toml::from_str::<Backend>("backend = \"sim\"\npath = \"x\"").unwrap_err();
            assert!(e.to_string().contains("unknown field `path`"), "{e}");
            let b: Backend = toml::from_str("backend = \"other\"\npath = \"x\"").unwrap();
            assert_eq!(b, Backend::Other { path: "x".into() });
        }
    }
}
