//! Arithmetic on the eight pixel types with areaDetector's semantics: integer sums wrap
//! modulo 2^bits, a real value becomes an integer pixel by truncation toward zero and then
//! wrapping. Pixels are stored in the caller's buffer as native-endian bytes.

/// One pixel type of the simulation.
pub(crate) trait Pixel:
    Copy + Default + PartialEq + core::fmt::Debug + Send + Sync + 'static
{
    /// Bytes per pixel.
    const SIZE: usize;

    /// A real value as this pixel type. Integer types truncate toward zero, then wrap modulo
    /// 2^bits (NaN gives 0, magnitudes beyond 2^63 saturate first); floats round.
    fn from_f64(v: f64) -> Self;

    /// The pixel as a real value.
    fn to_f64(self) -> f64;

    /// Sum, wrapping for integers.
    fn wadd(self, rhs: Self) -> Self;

    /// Product with a count, wrapping for integers.
    fn wmul(self, n: u64) -> Self;

    /// Writes the native-endian bytes into `dst` (`dst.len() == SIZE`).
    fn store(self, dst: &mut [u8]);

    /// Reads native-endian bytes (`src.len() == SIZE`).
    fn load(src: &[u8]) -> Self;
}

macro_rules! int_pixel {
    ($($t:ty),*) => {$(
        impl Pixel for $t {
            const SIZE: usize = core::mem::size_of::<$t>();

            #[inline]
            fn from_f64(v: f64) -> Self {
                // `as i64` truncates (saturating, NaN -> 0); the second cast keeps the low bits.
                v as i64 as $t
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

            #[inline]
            fn store(self, dst: &mut [u8]) {
                dst.copy_from_slice(&self.to_ne_bytes());
            }

            #[inline]
            fn load(src: &[u8]) -> Self {
                let mut b = [0; core::mem::size_of::<$t>()];
                b.copy_from_slice(src);
                <$t>::from_ne_bytes(b)
            }
        }
    )*};
}

macro_rules! float_pixel {
    ($($t:ty),*) => {$(
        impl Pixel for $t {
            const SIZE: usize = core::mem::size_of::<$t>();

            #[inline]
            fn from_f64(v: f64) -> Self {
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

            #[inline]
            fn store(self, dst: &mut [u8]) {
                dst.copy_from_slice(&self.to_ne_bytes());
            }

            #[inline]
            fn load(src: &[u8]) -> Self {
                let mut b = [0; core::mem::size_of::<$t>()];
                b.copy_from_slice(src);
                <$t>::from_ne_bytes(b)
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
    fn store_and_load_are_native_endian() {
        let mut b = [0u8; 4];
        0x0102_0304u32.store(&mut b);
        assert_eq!(b, 0x0102_0304u32.to_ne_bytes());
        assert_eq!(u32::load(&b), 0x0102_0304);
        let mut b = [0u8; 8];
        (-2.5f64).store(&mut b);
        assert_eq!(f64::load(&b), -2.5);
    }
}
