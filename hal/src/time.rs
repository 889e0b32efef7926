//! EPICS timestamps: seconds and nanoseconds since 1990-01-01 00:00:00 UTC.

/// Seconds from the Unix epoch (1970-01-01) to the EPICS epoch (1990-01-01).
pub const EPICS_EPOCH_UNIX_S: u64 = 631_152_000;

/// An EPICS timestamp (`epicsTimeStamp`): seconds past 1990-01-01 UTC and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EpicsTimestamp {
    /// Seconds past the EPICS epoch (areaDetector's `NDArrayEpicsTSSec`).
    pub sec: u32,
    /// Nanoseconds within the second, `0..1_000_000_000` (`NDArrayEpicsTSnSec`).
    pub nsec: u32,
}

impl EpicsTimestamp {
    /// From Unix seconds and nanoseconds. Instants before 1990 saturate to the EPICS epoch.
    pub const fn from_unix(secs: u64, nanos: u32) -> Self {
        if secs < EPICS_EPOCH_UNIX_S {
            return EpicsTimestamp { sec: 0, nsec: 0 };
        }
        EpicsTimestamp {
            sec: (secs - EPICS_EPOCH_UNIX_S) as u32,
            nsec: nanos,
        }
    }

    /// From Unix seconds as f64 (rounded to the nanosecond).
    pub fn from_unix_seconds(unix_s: f64) -> Self {
        // NaN and instants before 1990 both land here.
        if unix_s.is_nan() || unix_s < EPICS_EPOCH_UNIX_S as f64 {
            return EpicsTimestamp::default();
        }
        let whole = unix_s as u64;
        let nanos = ((unix_s - whole as f64) * 1e9) as u32;
        Self::from_unix(whole, nanos.min(999_999_999))
    }

    /// The wall clock now.
    #[cfg(feature = "std")]
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }

    /// Seconds past the EPICS epoch as f64: areaDetector's `NDArrayTimeStamp`.
    pub fn epics_seconds(self) -> f64 {
        self.sec as f64 + self.nsec as f64 * 1e-9
    }

    /// Unix seconds as f64.
    pub fn unix_seconds(self) -> f64 {
        (self.sec as u64 + EPICS_EPOCH_UNIX_S) as f64 + self.nsec as f64 * 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_offset_matches_areadetector() {
        // 2026-01-01T00:00:00Z is Unix 1767225600.
        let t = EpicsTimestamp::from_unix(1_767_225_600, 250_000_000);
        assert_eq!(t.sec, 1_767_225_600 - 631_152_000);
        assert_eq!(t.unix_seconds(), 1_767_225_600.25);
        assert_eq!(
            t.epics_seconds(),
            (1_767_225_600 - 631_152_000) as f64 + 0.25
        );
        assert_eq!(EpicsTimestamp::from_unix(10, 5), EpicsTimestamp::default());
        let back = EpicsTimestamp::from_unix_seconds(t.unix_seconds());
        assert_eq!(back.sec, t.sec);
        assert!(back.nsec.abs_diff(t.nsec) < 1000);
    }
}
