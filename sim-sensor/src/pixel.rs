//! Arithmetic on the eight pixel types with areaDetector's semantics: integer sums wrap
//! modulo 2^bits, a real value becomes an integer pixel by truncation toward zero and then
//! wrapping. Pixels are stored in the caller's buffer as native-endian bytes (`bytemuck::Pod`:
//! a frame buffer is viewed as pixels when it is aligned for them).

/// One pixel type of the simulation.
pub(crate) trait Pixel:
    Copy + Default + PartialEq + core::fmt::Debug + Send + Sync + bytemuck::Pod + 'static
{
    /// Bytes per pixel.
    const SIZE: usize;

    /// True for the integer types: adding `T(0.0)` (or zero) changes no pixel, so the frame
    /// generator may skip it. (For floats `-0.0 + 0.0` is `+0.0`: nothing is skipped.)
    const ZERO_ADDS_NOTHING: bool;

    /// An integer as this pixel type: integers keep the low bits (wrapping), floats round.
    fn from_i64(v: i64) -> Self;

    /// A real value as this pixel type.
    ///
    /// Integer types truncate toward zero, then wrap modulo
    /// 2^bits (NaN gives 0, magnitudes beyond 2^63 saturate first); floats round.
    fn from_f64(v: f64) -> Self;

    /// The pixel as a real value.
    fn to_f64(self) -> f64;

    /// Sum, wrapping for integers.
    fn wadd(self, rhs: Self) -> Self;

    /// Product with a count, wrapping for integers.
    fn wmul(self, n: u64) -> Self;
}

macro_rules! int_pixel {
    ($($t:ty),*) => {$(
        impl Pixel for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            const ZERO_ADDS_NOTHING: bool = true;

            #[inline]
            fn from_f64(v: f64) -> Self {
                // `as i64` truncates (saturating, NaN -> 0); the second cast keeps the low bits.
                v as i64 as $t
            }

            #[inline]
            fn from_i64(v: i64) -> Self {
                v as $t
            }

            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }

            #[inline]
            fn wadd(self, rhs: Self) -> Self {
                self.wrapping_add(rhs)
            }

            #[inline]
            fn wmul(self, n: u64) -> Self {
                // Products modulo 2^64 reduce to the same value modulo 2^bits.
                (self as i64).wrapping_mul(n as i64) as $t
            }
        }
    )*};
}

macro_rules! float_pixel {
    ($($t:ty),*) => {$(
        impl Pixel for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            const ZERO_ADDS_NOTHING: bool = false;

            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }

            #[inline]
            fn from_i64(v: i64) -> Self {
                v as $t
            }

            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }

            #[inline]
            fn wadd(self, rhs: Self) -> Self {
                self + rhs
            }

            #[inline]
            fn wmul(self, n: u64) -> Self {
                self * n as $t
            }
        }
    )*};
}

int_pixel!(u8, i8, u16, i16, u32, i32);
float_pixel!(f32, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_conversion_truncates_then_wraps() {
        assert_eq!(u16::from_f64(65_537.9), 1);
        assert_eq!(u8::from_f64(-1.5), 255);
        assert_eq!(i8::from_f64(130.0), -126);
        assert_eq!(u32::from_f64(3e9), 3_000_000_000);
        assert_eq!(u16::from_f64(f64::NAN), 0);
        assert_eq!(u16::MAX.wadd(2), 1);
        assert_eq!(7u8.wmul(40), (280 % 256) as u8);
        assert_eq!((-3i16).wmul(3), -9);
        assert_eq!(f32::from_f64(0.5).wmul(3), 1.5);
    }

    #[test]
    fn integers_keep_their_low_bits() {
        assert_eq!(u16::from_i64(65_537), 1);
        assert_eq!(u8::from_i64(-1), 255);
        assert_eq!(i8::from_i64(130), -126);
        assert_eq!(f32::from_i64(-3), -3.0);
    }

    #[test]
    fn pixels_are_native_endian_bytes() {
        assert_eq!(
            bytemuck::bytes_of(&0x0102_0304u32),
            0x0102_0304u32.to_ne_bytes()
        );
        assert_eq!(bytemuck::bytes_of(&-2.5f64), (-2.5f64).to_ne_bytes());
    }
}
