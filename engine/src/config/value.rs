//! The value types of settings that are more than a plain number or string: a duration in
//! seconds, a frame size, a region of interest and binning. Each checks its range in its constructor, parses from the text a
//! flag or a TOML value gives (`FromStr`) and prints back to it (`Display`), so a value of the
//! type is always usable. [`text`] (de)serializes the writer's and the HAL's string-valued types
//! (`Codec`, `PixelType`, ...) the same way, through their own `FromStr` and `Display`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a value cannot be used. The caller adds the setting and the value: clap writes
/// `invalid value '-2' for '--exposure <S>': {reason}`, the TOML reader shows the key's line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ValueError(String);

/// A duration given in seconds, 0 to [`Seconds::MAX`] (one day): exposure, period, flush
/// interval. A float of seconds in TOML and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Seconds(Duration);

impl Seconds {
    /// No time at all.
    pub const ZERO: Seconds = Seconds(Duration::ZERO);
    /// The longest duration a setting takes, in seconds: one day.
    pub const MAX: f64 = 86_400.0;

    /// `seconds`, refused outside 0 to [`Seconds::MAX`] (NaN and infinities included).
    pub fn new(seconds: f64) -> Result<Self, ValueError> {
        if !(0.0..=Self::MAX).contains(&seconds) {
            return Err(ValueError(format!(
                "expected seconds between 0 and {}",
                Self::MAX
            )));
        }
        Ok(Seconds(Duration::from_secs_f64(seconds)))
    }

    /// The duration.
    pub const fn duration(self) -> Duration {
        self.0
    }

    /// The duration in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    /// True for 0 s (for a flush interval: "not by time").
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl TryFrom<f64> for Seconds {
    type Error = ValueError;
    fn try_from(seconds: f64) -> Result<Self, ValueError> {
        Seconds::new(seconds)
    }
}

impl From<Seconds> for f64 {
    fn from(s: Seconds) -> f64 {
        s.as_secs_f64()
    }
}

impl From<Seconds> for Duration {
    fn from(s: Seconds) -> Duration {
        s.0
    }
}

impl FromStr for Seconds {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let seconds: f64 = s
            .trim()
            .parse()
            .map_err(|_| ValueError("expected seconds, for example 0.5".into()))?;
        Seconds::new(seconds)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_secs_f64())
    }
}

/// A frame size `WIDTHxHEIGHT` in pixels, each side 1 to [`FrameSize::MAX_SIDE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FrameSize {
    width: u32,
    height: u32,
}

impl FrameSize {
    /// The largest side: the largest sensor the simulated detector models.
    pub const MAX_SIDE: u32 = 8192;

    /// `width` x `height`, refused when a side is 0 or over [`FrameSize::MAX_SIDE`].
    pub fn new(width: u32, height: u32) -> Result<Self, ValueError> {
        if width == 0 || height == 0 {
            return Err(ValueError("width and height must be at least 1".into()));
        }
        if width > Self::MAX_SIDE || height > Self::MAX_SIDE {
            return Err(ValueError(format!(
                "width and height must be at most {}",
                Self::MAX_SIDE
            )));
        }
        Ok(FrameSize { width, height })
    }

    /// Pixels per row.
    pub const fn width(self) -> u32 {
        self.width
    }

    /// Rows.
    pub const fn height(self) -> u32 {
        self.height
    }

    /// `(width, height)`.
    pub const fn pair(self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Pixels in a frame.
    pub const fn pixels(self) -> usize {
        self.width as usize * self.height as usize
    }
}

impl FromStr for FrameSize {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| ValueError("expected WIDTHxHEIGHT, for example 1024x1024".into()))?;
        let side = |v: &str| {
            v.trim().parse::<u32>().map_err(|_| {
                ValueError("expected WIDTHxHEIGHT with whole numbers, for example 1024x1024".into())
            })
        };
        FrameSize::new(side(w)?, side(h)?)
    }
}

impl TryFrom<String> for FrameSize {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<FrameSize> for String {
    fn from(s: FrameSize) -> String {
        s.to_string()
    }
}

impl fmt::Display for FrameSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// A region of interest `X,Y,WxH`: its first column and row and its size, in unbinned sensor
/// pixels. A region is at least one pixel; whether it lies inside the sensor is checked
/// against the sensor's size ([`Region::check_values`] value by value, as the daemon's MinX,
/// SizeX, ... PVs are written one at a time; [`Region::check_within`] as a whole, before a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region {
    /// First column (0-based).
    pub min_x: u32,
    /// First row (0-based).
    pub min_y: u32,
    /// Columns, at least 1.
    pub size_x: u32,
    /// Rows, at least 1.
    pub size_y: u32,
}

impl Region {
    /// The whole of a sensor of `size`.
    pub const fn full(size: FrameSize) -> Region {
        Region {
            min_x: 0,
            min_y: 0,
            size_x: size.width,
            size_y: size.height,
        }
    }

    /// Each value alone fits a sensor of `sensor`: a start inside it, a size from 1 to its side.
    pub fn check_values(&self, sensor: FrameSize) -> Result<(), ValueError> {
        let (w, h) = sensor.pair();
        for (name, value, min, max) in [
            ("x", self.min_x, 0, w - 1),
            ("y", self.min_y, 0, h - 1),
            ("width", self.size_x, 1, w),
            ("height", self.size_y, 1, h),
        ] {
            if !(min..=max).contains(&value) {
                return Err(ValueError(format!(
                    "{name} {value}: expected a whole number from {min} to {max} (the sensor \
                     is {sensor})"
                )));
            }
        }
        Ok(())
    }

    /// The region lies inside a sensor of `sensor`.
    pub fn check_within(&self, sensor: FrameSize) -> Result<(), ValueError> {
        self.check_values(sensor)?;
        let (w, h) = sensor.pair();
        if self.min_x + self.size_x > w || self.min_y + self.size_y > h {
            return Err(ValueError(format!(
                "it reaches past the sensor of {sensor} (x + width at most {w}, y + height at \
                 most {h})"
            )));
        }
        Ok(())
    }
}

impl FromStr for Region {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let form = || ValueError("expected X,Y,WxH, for example 0,0,512x512".into());
        let mut parts = s.split(',');
        let (Some(x), Some(y), Some(size), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(form());
        };
        let (x, y) = (
            x.trim().parse().map_err(|_| form())?,
            y.trim().parse().map_err(|_| form())?,
        );
        let size: FrameSize = size.trim().parse().map_err(|_| form())?;
        Ok(Region {
            min_x: x,
            min_y: y,
            size_x: size.width,
            size_y: size.height,
        })
    }
}

impl TryFrom<String> for Region {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<Region> for String {
    fn from(r: Region) -> String {
        r.to_string()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}x{}",
            self.min_x, self.min_y, self.size_x, self.size_y
        )
    }
}

/// Binning `XxY`: x by y sensor pixels summed into one output pixel, each 1 to
/// [`Binning::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Binning {
    x: u32,
    y: u32,
}

impl Default for Binning {
    fn default() -> Self {
        Binning { x: 1, y: 1 }
    }
}

impl Binning {
    /// The largest factor.
    pub const MAX: u32 = 64;

    /// `x` by `y`, refused when a factor is 0 or over [`Binning::MAX`].
    pub fn new(x: u32, y: u32) -> Result<Self, ValueError> {
        for (name, v) in [("x", x), ("y", y)] {
            if !(1..=Self::MAX).contains(&v) {
                return Err(ValueError(format!(
                    "{name} {v}: expected a whole number from 1 to {}",
                    Self::MAX
                )));
            }
        }
        Ok(Binning { x, y })
    }

    /// Horizontal factor.
    pub const fn x(self) -> u32 {
        self.x
    }

    /// Vertical factor.
    pub const fn y(self) -> u32 {
        self.y
    }

    /// The frame a `region` binned so gives, refused when a factor is larger than the
    /// region's side (nothing would be left).
    pub fn output(self, region: Region) -> Result<(u32, u32), ValueError> {
        if self.x > region.size_x || self.y > region.size_y {
            return Err(ValueError(format!(
                "binning {self} leaves nothing of a {}x{} region",
                region.size_x, region.size_y
            )));
        }
        Ok((region.size_x / self.x, region.size_y / self.y))
    }
}

impl FromStr for Binning {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let form = || ValueError("expected XxY, for example 2x2".into());
        let (x, y) = s.split_once(['x', 'X']).ok_or_else(form)?;
        Binning::new(
            x.trim().parse().map_err(|_| form())?,
            y.trim().parse().map_err(|_| form())?,
        )
    }
}

impl TryFrom<String> for Binning {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<Binning> for String {
    fn from(b: Binning) -> String {
        b.to_string()
    }
}

impl fmt::Display for Binning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.x, self.y)
    }
}

/// Parse `s` as a `T` for clap, with `T`'s own error text as the reason (for types whose
/// error is not a `std::error::Error`, such as `PixelType`'s).
pub fn parse<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// `#[serde(with = "text")]`: a field (de)serialized as a string, through its type's
/// `Display` and `FromStr`. A value that does not parse is refused with the type's own reason;
/// the TOML reader adds the key and the line.
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// The value's `Display` form.
    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// A string parsed with `FromStr`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }

    /// `#[serde(with = "text::option")]`: the same for an optional field.
    pub mod option {
        use super::*;

        /// The value's `Display` form; nothing for `None`.
        pub fn serialize<T: Display, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }

        /// A string parsed with `FromStr`.
        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
        where
            T: FromStr,
            T::Err: Display,
            D: Deserializer<'de>,
        {
            Option::<String>::deserialize(d)?
                .map(|s| s.parse().map_err(D::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_checked_where_they_are_made() {
        assert_eq!("0.025".parse(), Ok(Seconds(Duration::from_millis(25))));
        assert_eq!(Seconds::new(86_400.0).unwrap().as_secs_f64(), 86_400.0);
        for bad in ["-1", "86401", "nan", "inf", "soon", ""] {
            let e = bad.parse::<Seconds>().unwrap_err();
            assert!(e.to_string().starts_with("expected seconds"), "{bad}: {e}");
        }
        assert_eq!(Seconds::new(0.5).unwrap().to_string(), "0.5");
    }

    #[test]
    fn a_region_and_binning_read_back_and_are_checked_against_the_sensor() {
        let sensor: FrameSize = "64x48".parse().unwrap();
        let r: Region = "4,2,32x16".parse().unwrap();
        assert_eq!((r.min_x, r.min_y, r.size_x, r.size_y), (4, 2, 32, 16));
        assert_eq!(r.to_string(), "4,2,32x16");
        assert!(r.check_within(sensor).is_ok());
        for bad in ["4,2", "a,2,3x3", "1,2,3x3,4", "0,0,0x3"] {
            assert!(bad.parse::<Region>().is_err(), "{bad}");
        }
        let past: Region = "40,0,32x16".parse().unwrap();
        assert!(past.check_values(sensor).is_ok(), "each value alone fits");
        assert!(
            past.check_within(sensor)
                .unwrap_err()
                .to_string()
                .contains("past")
        );
        let off: Region = "64,0,1x1".parse().unwrap();
        assert!(
            off.check_values(sensor)
                .unwrap_err()
                .to_string()
                .contains("x 64")
        );
        let b: Binning = "2x4".parse().unwrap();
        assert_eq!((b.x(), b.y(), b.to_string()), (2, 4, "2x4".to_owned()));
        assert_eq!(b.output(r), Ok((16, 4)));
        assert!(Binning::new(64, 1).unwrap().output(r).is_err());
        for bad in ["0x1", "65x1", "2", "2by2"] {
            assert!(bad.parse::<Binning>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_frame_size_is_width_x_height_within_the_sensor() {
        let s: FrameSize = "64x48".parse().unwrap();
        assert_eq!((s.width(), s.height(), s.pixels()), (64, 48, 3072));
        assert_eq!("8192X1".parse::<FrameSize>().unwrap().to_string(), "8192x1");
        for (bad, why) in [
            ("0x16", "at least 1"),
            ("32", "WIDTHxHEIGHT"),
            ("10by10", "WIDTHxHEIGHT"),
            ("axb", "whole numbers"),
            ("8193x2", "at most 8192"),
        ] {
            let e = bad.parse::<FrameSize>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}
