//! SplitMix64, the seeded random source of the simulation. It is used counter based: the value
//! at any position of a stream is computed directly, so a pixel's noise or a frame's draws are
//! a pure function of the seed and never depend on what was generated before.

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (Steele, Lea, Flood 2014).
pub(crate) const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `index`-th output of the stream whose key is `key`.
pub(crate) const fn at(key: u64, index: u64) -> u64 {
    mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// A key for a sub-stream, derived from a parent key and a label.
pub(crate) const fn derive(key: u64, label: u64) -> u64 {
    mix(key ^ mix(label.wrapping_add(GOLDEN_GAMMA)))
}

/// A 64-bit draw as a uniform f64 in `[0, 1)` (53 random bits).
pub(crate) fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `0..n` (`n > 0`) from a 64-bit draw, by the multiply-high method.
pub(crate) fn below(bits: u64, n: u64) -> u64 {
    ((u128::from(bits) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_sequence() {
        // First outputs of SplitMix64 seeded with 0 (the reference C implementation).
        assert_eq!(at(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(at(0, 1), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        for i in 0..10_000 {
            assert!((0.0..1.0).contains(&unit(at(42, i))));
            assert!(below(at(42, i), 7) < 7);
        }
        assert_eq!(unit(u64::MAX), 1.0 - 1.0 / (1u64 << 53) as f64);
        assert_eq!(below(u64::MAX, 7), 6);
    }
}
