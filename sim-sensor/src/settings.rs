//! The rules for the simulated hardware's options (FIFO depth, fault rates), in one place:
//! the engine's configuration checks its `[backend]` sim keys here, so a rule written once
//! holds for the CLI's flags, a TOML file and the daemon.

use crate::detector::SimOptions;
use crate::firmware::MAX_FIFO_DEPTH;

/// A [`SimOptions`] value that cannot be used, named as the CLI flag names it:
/// `invalid fault-drop "1.5": expected a probability from 0 to 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} {value:?}: {reason}")]
pub struct SimOptionsError {
    /// The setting as the CLI flag names it (`fifo-depth`, `fault-drop`).
    pub setting: &'static str,
    /// The value given, as written by `Display`.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl SimOptions {
    /// Checks every value; the first bad one is refused with its name and value. The fault
    /// rates are checked first, then the FIFO depth (`1..=`[`MAX_FIFO_DEPTH`]).
    pub fn validate(&self) -> Result<(), SimOptionsError> {
        let f = &self.faults;
        for (setting, p) in [
            ("fault-nack", f.nack),
            ("fault-bus-timeout", f.bus_timeout),
            ("fault-drop", f.drop),
            ("fault-corrupt", f.corrupt),
            ("fault-overrun", f.overrun),
        ] {
            // NaN is outside every range, so it is refused here too.
            if !(0.0..=1.0).contains(&p) {
                return Err(SimOptionsError {
                    setting,
                    value: p.to_string(),
                    reason: "expected a probability from 0 to 1".into(),
                });
            }
        }
        if !(1..=MAX_FIFO_DEPTH).contains(&self.fifo_depth) {
            return Err(SimOptionsError {
                setting: "fifo-depth",
                value: self.fifo_depth.to_string(),
                reason: format!("expected 1 to {MAX_FIFO_DEPTH} frames"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::FaultRates;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SimOptions::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named_as_the_flags_are() {
        type Case = (fn(&mut SimOptions), &'static str);
        let cases: [Case; 8] = [
            (|s| s.faults.nack = -0.1, "invalid fault-nack \"-0.1\""),
            (
                |s| s.faults.bus_timeout = 2.0,
                "invalid fault-bus-timeout \"2\"",
            ),
            (|s| s.faults.drop = 1.5, "invalid fault-drop \"1.5\""),
            (
                |s| s.faults.corrupt = f64::NAN,
                "invalid fault-corrupt \"NaN\"",
            ),
            (
                |s| s.faults.overrun = f64::INFINITY,
                "invalid fault-overrun \"inf\"",
            ),
            (|s| s.fifo_depth = 0, "invalid fifo-depth \"0\""),
            (|s| s.fifo_depth = 65, "invalid fifo-depth \"65\""),
            // The fault rates are checked before the FIFO depth.
            (
                |s| {
                    s.fifo_depth = 0;
                    s.faults.drop = 7.0;
                },
                "invalid fault-drop \"7\"",
            ),
        ];
        for (edit, start) in cases {
            let mut s = SimOptions::default();
            edit(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.starts_with(start), "{e}");
        }
        let mut s = SimOptions::default();
        s.faults.drop = 1.5;
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid fault-drop \"1.5\": expected a probability from 0 to 1"
        );
        assert_eq!((e.setting, e.value.as_str()), ("fault-drop", "1.5"));
    }

    #[test]
    fn bounds_are_inclusive() {
        let s = SimOptions {
            fifo_depth: MAX_FIFO_DEPTH,
            faults: FaultRates {
                nack: 1.0,
                bus_timeout: 0.0,
                drop: 1.0,
                corrupt: 0.5,
                overrun: 1.0,
            },
        };
        assert_eq!(s.validate(), Ok(()));
        let s = SimOptions {
            fifo_depth: 1,
            ..SimOptions::default()
        };
        assert_eq!(s.validate(), Ok(()));
    }
}
