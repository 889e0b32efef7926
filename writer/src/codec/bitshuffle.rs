//! The bitshuffle transform of kiyo-masui/bitshuffle (`bshuf_trans_bit_elem` and its blocked
//! wrapper), written here because no maintained Rust crate has it.
//!
//! For a block of `n` elements (`n` a multiple of 8) of `elem_size` bytes, the output holds
//! `8 * elem_size` bit-rows of `n / 8` bytes: row `8 * b + k` holds bit `k` of byte `b` of every
//! element, element `j` at bit `j % 8` of byte `j / 8`. The [`Kernel`] picks AVX-512 with GFNI,
//! AVX2 or SSE2 code at run time on x86-64 and falls back to portable scalar code elsewhere; all
//! kernels give the same bytes. [`bitshuffle`] applies the transform block by block exactly as the HDF5 filter
//! 32008 does, which is what the `bslz4`/`bszstd` chunks compress.

/// Elements per block are a multiple of this (`BSHUF_BLOCKED_MULT`).
pub const BLOCKED_MULT: usize = 8;

/// The filter's default block size in elements (`bshuf_default_block_size`): about 8 KiB of
/// data, a multiple of 8, at least 128 elements. 4096 for 2-byte and 2048 for 4-byte elements.
///
/// # Panics
///
/// If `elem_size` is 0.
pub fn default_block_size(elem_size: usize) -> usize {
    assert!(elem_size > 0, "bitshuffle element size must be at least 1");
    ((8192 / elem_size) / BLOCKED_MULT * BLOCKED_MULT).max(128)
}

/// The blocks [`bitshuffle`] cuts `n_elems` elements into, as `(first element, elements)`:
/// every full block of `block_size`, then the rest rounded down to a multiple of 8 if that is
/// not zero. The last `n_elems % 8` elements belong to no block and are stored raw.
///
/// # Panics
///
/// If `block_size` is zero or not a multiple of 8.
pub fn blocks(n_elems: usize, block_size: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    assert!(
        block_size > 0 && block_size.is_multiple_of(BLOCKED_MULT),
        "bitshuffle block size {block_size} is not a positive multiple of 8"
    );
    let full = n_elems / block_size;
    let last = (n_elems % block_size) / BLOCKED_MULT * BLOCKED_MULT;
    (0..full)
        .map(move |i| (i * block_size, block_size))
        .chain((last > 0).then_some((full * block_size, last)))
}

/// Which implementation of the transform runs. Only constructible for code this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(all(target_arch = "x86_64", rustc_1_89))]
    Avx512Gfni,
}

impl Kernel {
    /// The fastest kernel this CPU runs (AVX-512 with GFNI, AVX2, SSE2, then scalar).
    pub fn best() -> Kernel {
        if let Some(k) = Kernel::avx512_gfni() {
            return k;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = Kernel::avx2() {
            return k;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = Kernel::sse2() {
            return k;
        }
        Kernel::scalar()
    }

    /// The portable reference implementation (one 8x8 bit transpose per byte of 8 elements).
    pub fn scalar() -> Kernel {
        Kernel(Isa::Scalar)
    }

    /// SSE2 (16 elements per step), if this CPU has it: always on x86-64.
    pub fn sse2() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse2") {
            return Some(Kernel(Isa::Sse2));
        }
        None
    }

    /// AVX2 (32 elements per step), if this CPU has it.
    pub fn avx2() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Kernel(Isa::Avx2));
        }
        None
    }

    /// AVX-512 (F, BW, VBMI) with GFNI (64 elements per step: one `vgf2p8affineqb` does the
    /// 8x8 bit transposes of 64 elements' bytes), if this CPU has them and the crate was
    /// built by Rust 1.89 or later.
    pub fn avx512_gfni() -> Option<Kernel> {
        #[cfg(all(target_arch = "x86_64", rustc_1_89))]
        if avx512::detected() {
            return Some(Kernel(Isa::Avx512Gfni));
        }
        None
    }

    /// Every kernel this CPU runs, the scalar one first.
    pub fn available() -> Vec<Kernel> {
        [
            Some(Kernel::scalar()),
            Kernel::sse2(),
            Kernel::avx2(),
            Kernel::avx512_gfni(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// `"scalar"`, `"sse2"`, `"avx2"` or `"avx512-gfni"`.
    pub fn name(&self) -> &'static str {
        match self.0 {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => "sse2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(all(target_arch = "x86_64", rustc_1_89))]
            Isa::Avx512Gfni => "avx512-gfni",
        }
    }

    /// `bshuf_trans_bit_elem`: bit-transpose one block of `input.len() / elem_size` elements
    /// into `output` (same length).
    ///
    /// # Panics
    ///
    /// If the lengths differ, or the block is not a whole multiple of 8 elements.
    pub fn trans_bit_elem(&self, input: &[u8], output: &mut [u8], elem_size: usize) {
        assert_eq!(
            input.len(),
            output.len(),
            "bitshuffle input and output lengths"
        );
        assert!(
            elem_size > 0 && input.len().is_multiple_of(elem_size * BLOCKED_MULT),
            "bitshuffle block of {} bytes is not a multiple of 8 elements of {elem_size} bytes",
            input.len()
        );
        let groups = input.len() / elem_size / BLOCKED_MULT;
        let done = match self.0 {
            Isa::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with Isa::Sse2 is only made after SSE2 was detected; the
            // lengths were checked above.
            Isa::Sse2 => unsafe { x86::trans_sse2(input, output, elem_size) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with Isa::Avx2 is only made after AVX2 was detected; the
            // lengths were checked above.
            Isa::Avx2 => unsafe { x86::trans_avx2(input, output, elem_size, 0) },
            #[cfg(all(target_arch = "x86_64", rustc_1_89))]
            // SAFETY: a Kernel with Isa::Avx512Gfni is only made after AVX-512 F/BW/VBMI and
            // GFNI were detected, which implies AVX2; the lengths were checked above.
            Isa::Avx512Gfni => unsafe {
                let done = avx512::trans(input, output, elem_size);
                x86::trans_avx2(input, output, elem_size, done)
            },
        };
        trans_scalar(input, output, elem_size, done, groups);
    }
}

/// Swap bits across the diagonal of the 8x8 bit matrix whose row `i` is byte `i` of `x`
/// (`TRANS_BIT_8X8` for little-endian loads). Its own inverse.
#[inline(always)]
fn transpose_8x8(mut x: u64) -> u64 {
    let mut t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// The scalar kernel on groups `first..groups` of 8 elements.
fn trans_scalar(input: &[u8], output: &mut [u8], elem_size: usize, first: usize, groups: usize) {
    let row = groups; // bytes per bit-row: one per group of 8 elements
    for g in first..groups {
        let elems = &input[g * 8 * elem_size..(g + 1) * 8 * elem_size];
        for b in 0..elem_size {
            let mut x = 0u64;
            for j in 0..8 {
                x |= u64::from(elems[j * elem_size + b]) << (8 * j);
            }
            let x = transpose_8x8(x);
            for k in 0..8 {
                output[(8 * b + k) * row + g] = (x >> (8 * k)) as u8;
            }
        }
    }
}

/// The inverse of [`Kernel::trans_bit_elem`] (`bshuf_untrans_bit_elem`), scalar: decoding is
/// for tests and tools, not the acquisition path.
///
/// # Panics
///
/// As [`Kernel::trans_bit_elem`].
pub fn untrans_bit_elem(input: &[u8], output: &mut [u8], elem_size: usize) {
    assert_eq!(
        input.len(),
        output.len(),
        "bitshuffle input and output lengths"
    );
    assert!(
        elem_size > 0 && input.len().is_multiple_of(elem_size * BLOCKED_MULT),
        "bitshuffle block of {} bytes is not a multiple of 8 elements of {elem_size} bytes",
        input.len()
    );
    let row = input.len() / elem_size / BLOCKED_MULT;
    for g in 0..row {
        let elems = &mut output[g * 8 * elem_size..(g + 1) * 8 * elem_size];
        for b in 0..elem_size {
            let mut x = 0u64;
            for k in 0..8 {
                x |= u64::from(input[(8 * b + k) * row + g]) << (8 * k);
            }
            let x = transpose_8x8(x);
            for j in 0..8 {
                elems[j * elem_size + b] = (x >> (8 * j)) as u8;
            }
        }
    }
}

/// `bshuf_bitshuffle`: the blocked transform of a whole buffer, as the HDF5 filter stores it
/// with no compression (filter 32008, compression 0). `block_size` 0 means
/// [`default_block_size`]. The trailing `n % 8` elements are copied unchanged.
///
/// # Panics
///
/// If the lengths differ, `input` is not whole elements, or `block_size` is not a multiple of 8.
pub fn bitshuffle(
    kernel: Kernel,
    input: &[u8],
    output: &mut [u8],
    elem_size: usize,
    block_size: usize,
) {
    blocked(input, output, elem_size, block_size, |i, o| {
        kernel.trans_bit_elem(i, o, elem_size)
    });
}

/// The inverse of [`bitshuffle`].
///
/// # Panics
///
/// As [`bitshuffle`].
pub fn bitunshuffle(input: &[u8], output: &mut [u8], elem_size: usize, block_size: usize) {
    blocked(input, output, elem_size, block_size, |i, o| {
        untrans_bit_elem(i, o, elem_size)
    });
}

fn blocked(
    input: &[u8],
    output: &mut [u8],
    elem_size: usize,
    block_size: usize,
    mut f: impl FnMut(&[u8], &mut [u8]),
) {
    assert_eq!(
        input.len(),
        output.len(),
        "bitshuffle input and output lengths"
    );
    assert!(
        elem_size > 0 && input.len().is_multiple_of(elem_size),
        "{} bytes are not whole elements of {elem_size} bytes",
        input.len()
    );
    let block_size = if block_size == 0 {
        default_block_size(elem_size)
    } else {
        block_size
    };
    let n = input.len() / elem_size;
    for (start, len) in blocks(n, block_size) {
        let r = start * elem_size..(start + len) * elem_size;
        f(&input[r.clone()], &mut output[r]);
    }
    let tail = (n - n % BLOCKED_MULT) * elem_size;
    output[tail..].copy_from_slice(&input[tail..]);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! SIMD kernels. Each step loads `V` consecutive elements, splits their bytes into one
    //! vector per byte position by repeated even/odd byte deinterleaving (pack of the low
    //! and the high byte of each 16-bit lane), then takes bit `k` of every byte with
    //! `movemask` after shifting it into the sign position: `V / 8` bytes of each bit-row.

    use std::arch::x86_64::*;

    /// Run the step for `elem_size` 1, 2, 4 or 8; returns how many 8-element groups were
    /// done (the caller finishes the rest with the scalar kernel).
    ///
    /// # Safety
    ///
    /// The CPU must support SSE2. (Every access is a checked slice; for a correct result
    /// `input.len() == output.len()`, a multiple of `8 * elem_size`.)
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn trans_sse2(input: &[u8], output: &mut [u8], elem_size: usize) -> usize {
        match elem_size {
            1 => sse2::<1>(input, output, 0),
            2 => sse2::<2>(input, output, 0),
            4 => sse2::<4>(input, output, 0),
            8 => sse2::<8>(input, output, 0),
            _ => 0,
        }
    }

    /// As [`trans_sse2`], with AVX2, from group `from` on (the groups before it are done).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 (which implies SSE2). Lengths as for [`trans_sse2`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn trans_avx2(
        input: &[u8],
        output: &mut [u8],
        elem_size: usize,
        from: usize,
    ) -> usize {
        match elem_size {
            // Up to 3 groups remain after the 32-element steps: one SSE2 step may fit.
            1 => {
                let done = avx2::<1>(input, output, from);
                sse2::<1>(input, output, done)
            }
            2 => {
                let done = avx2::<2>(input, output, from);
                sse2::<2>(input, output, done)
            }
            4 => {
                let done = avx2::<4>(input, output, from);
                sse2::<4>(input, output, done)
            }
            8 => {
                let done = avx2::<8>(input, output, from);
                sse2::<8>(input, output, done)
            }
            _ => from,
        }
    }

    /// Reverse the low `bits` bits of `i`: after `log2(ES)` deinterleaving rounds, stream `s`
    /// holds byte `reverse(s)` of each element (the first round splits on the lowest bit).
    #[inline(always)]
    const fn reverse(i: usize, bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            i.reverse_bits() >> (usize::BITS - bits)
        }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn deint_128(a: __m128i, b: __m128i) -> (__m128i, __m128i) {
        let low = _mm_set1_epi16(0x00ff);
        let even = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
        let odd = _mm_packus_epi16(_mm_srli_epi16::<8>(a), _mm_srli_epi16::<8>(b));
        (even, odd)
    }

    /// SSE2 steps from group `from` on; returns the groups done.
    #[target_feature(enable = "sse2")]
    fn sse2<const ES: usize>(input: &[u8], output: &mut [u8], from: usize) -> usize {
        const V: usize = 16;
        let n = input.len() / ES;
        let row = n / 8;
        let steps = (n - 8 * from) / V;
        for step in 0..steps {
            let s_elem = 8 * from + step * V;
            let mut v = [_mm_setzero_si128(); ES];
            for (i, x) in v.iter_mut().enumerate() {
                let src = &input[s_elem * ES + 16 * i..][..16];
                // SAFETY: src is 16 readable bytes; loadu has no alignment requirement.
                *x = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
            }
            let mut width = ES;
            while width > 1 {
                let mut next = [_mm_setzero_si128(); ES];
                for stream in (0..ES).step_by(width) {
                    for i in 0..width / 2 {
                        let (e, o) = deint_128(v[stream + 2 * i], v[stream + 2 * i + 1]);
                        next[stream + i] = e;
                        next[stream + width / 2 + i] = o;
                    }
                }
                v = next;
                width /= 2;
            }
            for (stream, &x) in v.iter().enumerate() {
                let b = reverse(stream, ES.trailing_zeros());
                let mut x = x;
                for k in (0..8).rev() {
                    let bits = _mm_movemask_epi8(x) as u16;
                    let at = (8 * b + k) * row + s_elem / 8;
                    output[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                    x = _mm_slli_epi16::<1>(x);
                }
            }
        }
        from + steps * (V / 8)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn deint_256(a: __m256i, b: __m256i) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi16(0x00ff);
        let even = _mm256_packus_epi16(_mm256_and_si256(a, low), _mm256_and_si256(b, low));
        let odd = _mm256_packus_epi16(_mm256_srli_epi16::<8>(a), _mm256_srli_epi16::<8>(b));
        // packus works per 128-bit lane: quarters come out as a0 b0 a1 b1; put them in order.
        (
            _mm256_permute4x64_epi64::<0b11_01_10_00>(even),
            _mm256_permute4x64_epi64::<0b11_01_10_00>(odd),
        )
    }

    /// AVX2 steps from group `from` on; returns the groups done.
    #[target_feature(enable = "avx2")]
    fn avx2<const ES: usize>(input: &[u8], output: &mut [u8], from: usize) -> usize {
        const V: usize = 32;
        let n = input.len() / ES;
        let row = n / 8;
        let steps = (n - 8 * from) / V;
        for step in 0..steps {
            let s_elem = 8 * from + step * V;
            let mut v = [_mm256_setzero_si256(); ES];
            for (i, x) in v.iter_mut().enumerate() {
                let src = &input[s_elem * ES + 32 * i..][..32];
                // SAFETY: src is 32 readable bytes; loadu has no alignment requirement.
                *x = unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
            }
            let mut width = ES;
            while width > 1 {
                let mut next = [_mm256_setzero_si256(); ES];
                for stream in (0..ES).step_by(width) {
                    for i in 0..width / 2 {
                        let (e, o) = deint_256(v[stream + 2 * i], v[stream + 2 * i + 1]);
                        next[stream + i] = e;
                        next[stream + width / 2 + i] = o;
                    }
                }
                v = next;
                width /= 2;
            }
            for (stream, &x) in v.iter().enumerate() {
                let b = reverse(stream, ES.trailing_zeros());
                let mut x = x;
                for k in (0..8).rev() {
                    let bits = _mm256_movemask_epi8(x) as u32;
                    let at = (8 * b + k) * row + s_elem / 8;
                    output[at..at + 4].copy_from_slice(&bits.to_le_bytes());
                    x = _mm256_slli_epi16::<1>(x);
                }
            }
        }
        from + steps * (V / 8)
    }
}

#[cfg(all(target_arch = "x86_64", rustc_1_89))]
#[allow(
    clippy::incompatible_msrv,
    reason = "compiled only by Rust 1.89 and later (build.rs sets rustc_1_89), where these \
              intrinsics are stable"
)]
mod avx512 {
    //! The AVX-512 + GFNI kernel. A step takes 64 elements (8 groups of 8). Byte permutations
    //! (`vpermb`, `vpermt2b`) gather byte `b` of every element into one vector whose 64-bit
    //! lane `g` holds group `g`, element `j` at byte `7 - j`. With that lane as its matrix,
    //! `vgf2p8affineqb` against the constant whose byte `k` is `1 << k` puts in byte `k` bit
    //! `k` of each of the lane's bytes: the group's byte of bit-row `8 * b + k`. A last `vpermb`
    //! turns the 8x8 bytes around so that lane `k` holds row `k` of the 8 groups, and a
    //! one-lane masked store writes it.

    use std::arch::x86_64::*;

    /// Byte `k` of each lane is `1 << k`: the affine's output byte `k` takes bit `k` of every
    /// byte of the matrix lane (bit `i` from byte `7 - i`).
    const BIT_ROWS: i64 = 0x8040_2010_0804_0201_u64 as i64;

    /// Within one vector: group `g`'s element `j` (byte `8g + j`) to byte `8g + 7 - j`.
    const GATHER_1: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            t[i] = (8 * (i / 8) + 7 - i % 8) as u8;
            i += 1;
        }
        t
    };

    /// From two vectors of 2-byte elements (64 elements), byte `b` of each, as above.
    const GATHER_2: [[u8; 64]; 2] = {
        let mut t = [[0u8; 64]; 2];
        let mut b = 0;
        while b < 2 {
            let mut i = 0;
            while i < 64 {
                t[b][i] = ((8 * (i / 8) + 7 - i % 8) * 2 + b) as u8;
                i += 1;
            }
            b += 1;
        }
        t
    };

    /// From two vectors of 4-byte elements (32 elements): 128-bit lane `l` holds byte
    /// `2q + l / 2` of elements `16 * (l % 2)..` (two groups), for `q` 0 and 1.
    const GATHER_4: [[u8; 64]; 2] = {
        let mut t = [[0u8; 64]; 2];
        let mut q = 0;
        while q < 2 {
            let mut i = 0;
            while i < 64 {
                let (l, r) = (i / 16, i % 16);
                let elem = 16 * (l % 2) + 8 * (r / 8) + 7 - r % 8;
                t[q][i] = (elem * 4 + 2 * q + l / 2) as u8;
                i += 1;
            }
            q += 1;
        }
        t
    };

    /// From two vectors of 8-byte elements (two groups): 128-bit lane `l` holds byte `4q + l`
    /// of both groups, for `q` 0 and 1.
    const GATHER_8: [[u8; 64]; 2] = {
        let mut t = [[0u8; 64]; 2];
        let mut q = 0;
        while q < 2 {
            let mut i = 0;
            while i < 64 {
                let (l, r) = (i / 16, i % 16);
                let elem = 8 * (r / 8) + 7 - r % 8;
                t[q][i] = (elem * 8 + 4 * q + l) as u8;
                i += 1;
            }
            q += 1;
        }
        t
    };

    /// The three levels of a byte transpose of 8 affine outputs (steps `s`, byte `8g + k`
    /// holding row `k` of group `g`) into 8 vectors of rows (byte `8s + g`), two sources at
    /// a time. Level 1 takes steps `2i, 2i + 1` to half `h` of the rows (byte
    /// `16kk + 8ss + g`, row `4h + kk`); level 2 takes two of those to a quarter `q` of a
    /// half (byte `32kq + 8s4 + g`, row `4h + 2q + kq`, step `4j + s4`); level 3 to one row.
    const TREE: [[[u8; 64]; 2]; 3] = {
        let mut t = [[[0u8; 64]; 2]; 3];
        let mut half = 0;
        while half < 2 {
            let mut i = 0;
            while i < 64 {
                let g = i % 8;
                let (kk, ss) = (i / 16, (i / 8) % 2);
                t[0][half][i] = (ss * 64 + 8 * g + 4 * half + kk) as u8;
                let (kq, s4) = (i / 32, (i / 8) % 4);
                t[1][half][i] = ((s4 / 2) * 64 + 16 * (2 * half + kq) + 8 * (s4 % 2) + g) as u8;
                let s = i / 8;
                t[2][half][i] = ((s / 4) * 64 + 32 * half + 8 * (s % 4) + g) as u8;
                i += 1;
            }
            half += 1;
        }
        t
    };

    /// Destination byte `8k + g` from byte `8g + k`: an 8x8 byte transpose.
    const ROWS: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            t[i] = (8 * (i % 8) + i / 8) as u8;
            i += 1;
        }
        t
    };

    /// Whether this CPU runs the kernel.
    pub(super) fn detected() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("gfni")
    }

    /// Run the steps for `elem_size` 1, 2, 4 or 8; returns how many 8-element groups were
    /// done (the caller finishes the rest with another kernel).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512 F, BW, VBMI and GFNI ([`detected`]). (Every access is
    /// within a checked slice; for a correct result `input.len() == output.len()`, a multiple
    /// of `8 * elem_size`.)
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,gfni")]
    pub(super) unsafe fn trans(input: &[u8], output: &mut [u8], elem_size: usize) -> usize {
        match elem_size {
            1 => steps::<1>(input, output, [&GATHER_1, &GATHER_1]),
            2 => steps::<2>(input, output, [&GATHER_2[0], &GATHER_2[1]]),
            4 => steps::<4>(input, output, [&GATHER_4[0], &GATHER_4[1]]),
            8 => steps::<8>(input, output, [&GATHER_8[0], &GATHER_8[1]]),
            _ => 0,
        }
    }

    /// 64 bytes from the start of `bytes`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(bytes: &[u8]) -> __m512i {
        let bytes = &bytes[..64];
        // SAFETY: bytes is 64 readable bytes; loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    }

    /// Byte `b` of the 64 elements at the start of `src`, for each `b`, as lanes of groups.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn gather<const ES: usize>(src: &[u8], idx: [__m512i; 2]) -> [__m512i; ES] {
        let mut x = [_mm512_setzero_si512(); ES];
        match ES {
            1 => x[0] = _mm512_permutexvar_epi8(idx[0], load(src)),
            2 => {
                let (a, b) = (load(src), load(&src[64..]));
                x[0] = _mm512_permutex2var_epi8(a, idx[0], b);
                x[1] = _mm512_permutex2var_epi8(a, idx[1], b);
            }
            4 => {
                let v: [__m512i; 4] = std::array::from_fn(|i| load(&src[64 * i..]));
                for q in 0..2 {
                    let t0 = _mm512_permutex2var_epi8(v[0], idx[q], v[1]);
                    let t1 = _mm512_permutex2var_epi8(v[2], idx[q], v[3]);
                    // Lanes 0-1 of each: byte 2q; lanes 2-3: byte 2q + 1.
                    x[2 * q] = _mm512_shuffle_i64x2::<0x44>(t0, t1);
                    x[2 * q + 1] = _mm512_shuffle_i64x2::<0xEE>(t0, t1);
                }
            }
            8 => {
                let v: [__m512i; 8] = std::array::from_fn(|i| load(&src[64 * i..]));
                for q in 0..2 {
                    let t: [__m512i; 4] = std::array::from_fn(|p| {
                        _mm512_permutex2var_epi8(v[2 * p], idx[q], v[2 * p + 1])
                    });
                    // A 4x4 transpose of 128-bit lanes: lane l of every t[p] into x[4q + l].
                    let u0 = _mm512_shuffle_i64x2::<0x44>(t[0], t[1]);
                    let u1 = _mm512_shuffle_i64x2::<0xEE>(t[0], t[1]);
                    let u2 = _mm512_shuffle_i64x2::<0x44>(t[2], t[3]);
                    let u3 = _mm512_shuffle_i64x2::<0xEE>(t[2], t[3]);
                    x[4 * q] = _mm512_shuffle_i64x2::<0x88>(u0, u2);
                    x[4 * q + 1] = _mm512_shuffle_i64x2::<0xDD>(u0, u2);
                    x[4 * q + 2] = _mm512_shuffle_i64x2::<0x88>(u1, u3);
                    x[4 * q + 3] = _mm512_shuffle_i64x2::<0xDD>(u1, u3);
                }
            }
            _ => unreachable!("the AVX-512 kernel takes elements of 1, 2, 4 or 8 bytes"),
        }
        x
    }

    /// Rows `0..8` (64 bytes each: groups of 8 steps) from the affine outputs of 8 steps.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn rows_of_8_steps(y: &[__m512i; 8], tree: &[[__m512i; 2]; 3]) -> [__m512i; 8] {
        let a: [[__m512i; 2]; 4] = std::array::from_fn(|i| {
            std::array::from_fn(|h| _mm512_permutex2var_epi8(y[2 * i], tree[0][h], y[2 * i + 1]))
        });
        let b: [[[__m512i; 2]; 2]; 2] = std::array::from_fn(|j| {
            std::array::from_fn(|h| {
                std::array::from_fn(|q| {
                    _mm512_permutex2var_epi8(a[2 * j][h], tree[1][q], a[2 * j + 1][h])
                })
            })
        });
        std::array::from_fn(|k| {
            let (h, q, kq) = (k / 4, (k / 2) % 2, k % 2);
            _mm512_permutex2var_epi8(b[0][h][q], tree[2][kq], b[1][h][q])
        })
    }

    /// The 64-element steps, 8 at a time while they last (whole 64-byte rows, plain stores),
    /// then one at a time (8 bytes of each row, one-lane masked stores); returns the groups
    /// done.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,gfni")]
    fn steps<const ES: usize>(input: &[u8], output: &mut [u8], idx: [&[u8; 64]; 2]) -> usize {
        let n = input.len() / ES;
        let row = n / 8;
        let steps = n / 64;
        let idx = [load(idx[0]), load(idx[1])];
        let bit_rows = _mm512_set1_epi64(BIT_ROWS);
        let tree = TREE.map(|level| level.map(|t| load(&t)));
        for o in 0..steps / 8 {
            let mut y = [[_mm512_setzero_si512(); 8]; ES];
            for s in 0..8 {
                let first = (8 * o + s) * 64 * ES;
                let x = gather::<ES>(&input[first..first + 64 * ES], idx);
                for (yb, &xb) in y.iter_mut().zip(&x) {
                    yb[s] = _mm512_gf2p8affine_epi64_epi8::<0>(bit_rows, xb);
                }
            }
            for (b, yb) in y.iter().enumerate() {
                for (k, r) in rows_of_8_steps(yb, &tree).into_iter().enumerate() {
                    let at = (8 * b + k) * row + 64 * o;
                    let dst = &mut output[at..at + 64];
                    // SAFETY: dst is 64 writable bytes; storeu has no alignment requirement.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), r) };
                }
            }
        }
        let rows = load(&ROWS);
        for s in steps / 8 * 8..steps {
            let x = gather::<ES>(&input[s * 64 * ES..(s + 1) * 64 * ES], idx);
            for (b, &xb) in x.iter().enumerate() {
                let y = _mm512_gf2p8affine_epi64_epi8::<0>(bit_rows, xb);
                let z = _mm512_permutexvar_epi8(rows, y);
                for k in 0..8 {
                    let at = (8 * b + k) * row + 8 * s;
                    let dst = &mut output[at..at + 8];
                    // SAFETY: the mask enables lane k only, which the store writes at
                    // base + 8k = dst, 8 writable bytes; no other lane is accessed (masked
                    // lanes do not fault), and base is only computed, with wrapping_sub.
                    unsafe {
                        _mm512_mask_storeu_epi64(
                            dst.as_mut_ptr().wrapping_sub(8 * k).cast(),
                            1 << k,
                            z,
                        )
                    };
                }
            }
        }
        steps * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, bit by bit.
    fn naive(input: &[u8], elem_size: usize) -> Vec<u8> {
        let n = input.len() / elem_size;
        let row = n / 8;
        let mut out = vec![0u8; input.len()];
        for j in 0..n {
            for b in 0..elem_size {
                for k in 0..8 {
                    if input[j * elem_size + b] >> k & 1 == 1 {
                        out[(8 * b + k) * row + j / 8] |= 1 << (j % 8);
                    }
                }
            }
        }
        out
    }

    fn kernels() -> Vec<Kernel> {
        Kernel::available()
    }

    /// The dispatch picks the widest kernel the CPU has, so the tests above ran it.
    #[test]
    fn best_is_the_widest_kernel_this_cpu_runs() {
        let names: Vec<_> = kernels().iter().map(|k| k.name()).collect();
        assert_eq!(Kernel::best().name(), *names.last().unwrap(), "{names:?}");
        #[cfg(all(target_arch = "x86_64", rustc_1_89))]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("gfni")
        {
            assert_eq!(Kernel::best().name(), "avx512-gfni");
        }
    }

    #[test]
    fn default_block_sizes_match_the_c_library() {
        assert_eq!(default_block_size(1), 8192);
        assert_eq!(default_block_size(2), 4096);
        assert_eq!(default_block_size(4), 2048);
        assert_eq!(default_block_size(8), 1024);
        assert_eq!(default_block_size(3), 2728);
        assert_eq!(default_block_size(128), 128);
    }

    #[test]
    fn blocks_round_the_last_one_down_to_eight() {
        let b: Vec<_> = blocks(4096 * 2 + 100, 4096).collect();
        assert_eq!(b, [(0, 4096), (4096, 4096), (8192, 96)]);
        assert_eq!(blocks(7, 4096).count(), 0);
        assert_eq!(blocks(8192, 4096).count(), 2);
    }

    /// `bshuf_bitshuffle(u16 ramp 0..15, size=16, elem_size=2)` from the C library.
    #[test]
    fn matches_the_c_reference_vector() {
        let ramp: Vec<u8> = (0u16..16).flat_map(|v| v.to_le_bytes()).collect();
        let mut expected = [0u8; 32];
        expected[..8].copy_from_slice(&[170, 170, 204, 204, 240, 240, 0, 255]);
        for k in kernels() {
            let mut out = [0u8; 32];
            bitshuffle(k, &ramp, &mut out, 2, 0);
            assert_eq!(out, expected, "{}", k.name());
        }
    }

    #[test]
    fn every_kernel_matches_the_definition_on_a_long_block() {
        for es in [1usize, 2, 3, 4, 8, 16] {
            // 8 * 13 elements: whole SIMD steps plus leftover groups; 4328 = 512 * 8 (the
            // AVX-512 kernel's 8-step rows) + 64 * 3 (its single steps) + 8 * 5.
            for n in [8usize, 16, 24, 32, 40, 64, 104, 512, 4096, 4328] {
                let input: Vec<u8> = (0..n * es)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
                    .collect();
                let want = naive(&input, es);
                for k in kernels() {
                    let mut out = vec![0u8; input.len()];
                    k.trans_bit_elem(&input, &mut out, es);
                    assert_eq!(out, want, "{} es={es} n={n}", k.name());
                    let mut back = vec![0u8; input.len()];
                    untrans_bit_elem(&out, &mut back, es);
                    assert_eq!(back, input);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn simd_equals_scalar_on_random_buffers(
            es in prop::sample::select(vec![1usize, 2, 4, 8]),
            data in prop::collection::vec(any::<u8>(), 0..40_000),
            block in prop::sample::select(vec![0usize, 8, 128, 136, 1024]),
        ) {
            let len = data.len() / es * es;
            let input = &data[..len];
            let mut want = vec![0u8; len];
            bitshuffle(Kernel::scalar(), input, &mut want, es, block);
            for k in kernels() {
                let mut out = vec![0u8; len];
                bitshuffle(k, input, &mut out, es, block);
                prop_assert_eq!(&out, &want, "{}", k.name());
            }
            let mut back = vec![0u8; len];
            bitunshuffle(&want, &mut back, es, block);
            prop_assert_eq!(&back[..], input);
        }
    }
}
