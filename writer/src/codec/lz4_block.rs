//! LZ4 block compression of small blocks (below 64 KiB) in Rust, byte for byte what liblz4's
//! `LZ4_compress_default` writes for them, so that `bslz4` chunks stay identical to those of
//! the C bitshuffle filter (the interop tests compare them with hdf5plugin's).
//!
//! It is liblz4 1.10's `LZ4_compress_generic` for one case: a fresh 16-bit hash table, no
//! dictionary, acceleration 1, an output of `LZ4_compressBound` bytes. Owning the loop lets
//! the bitshuffle encoder hand it the next block, which it prefetches a cache line at a time
//! while it compresses this one: the frame is mostly in L3 or memory, and a burst of 128
//! prefetches stalls on the CPU's few line-fill buffers.

/// A match is at least this long.
const MINMATCH: usize = 4;
/// No match starts within this many bytes of the end (the format's parsing restriction).
const MFLIMIT: usize = 12;
/// The last this many bytes are always literals.
const LASTLITERALS: usize = 5;
/// A shorter block is all literals.
const MIN_LENGTH: usize = MFLIMIT + 1;
/// Token nibble saturation (literal run and match length).
const RUN_MASK: usize = 15;
/// After `1 << SKIP_TRIGGER` failed searches the search step grows by one.
const SKIP_TRIGGER: u32 = 6;
/// liblz4's 16-bit table for small inputs: `LZ4_HASHLOG + 1` bits at the default
/// `LZ4_MEMORY_USAGE` of 14.
const HASH_LOG: u32 = 13;
/// Entries of the hash table.
const TABLE: usize = 1 << HASH_LOG;

/// The largest block compressed here: liblz4 uses the 16-bit table below `LZ4_64Klimit`
/// (64 KiB + 11 bytes).
pub const MAX_BLOCK: usize = 65536 + MFLIMIT - 2;

/// `LZ4_compressBound`: the most bytes a block of `len` bytes compresses to.
pub fn bound(len: usize) -> usize {
    len + len / 255 + 16
}

/// Bytes past the compressed end that [`encode`] may write: the end of a literal run is
/// copied 8 bytes at a time, like liblz4's wild copy.
const SLACK: usize = 16;

/// A compressor of small blocks with its reused 16 KiB hash table (zeroed for each block,
/// as liblz4 does).
#[derive(Clone)]
pub struct SmallBlockEncoder {
    table: Box<[u16; TABLE]>,
}

impl std::fmt::Debug for SmallBlockEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallBlockEncoder").finish_non_exhaustive()
    }
}

impl Default for SmallBlockEncoder {
    fn default() -> Self {
        SmallBlockEncoder {
            table: Box::new([0; TABLE]),
        }
    }
}

impl SmallBlockEncoder {
    /// Append the LZ4 block of `block` to `out` and return its length. While it runs it asks
    /// the CPU to fetch `ahead` (the next block to compress; may be empty) into cache.
    ///
    /// # Panics
    ///
    /// If `block` is longer than [`MAX_BLOCK`].
    pub fn append(&mut self, block: &[u8], out: &mut Vec<u8>, ahead: &[u8]) -> usize {
        assert!(
            block.len() <= MAX_BLOCK,
            "a small LZ4 block is at most {MAX_BLOCK} bytes, got {}",
            block.len()
        );
        out.reserve(bound(block.len()) + SLACK);
        self.table.fill(0);
        let mut prefetch = Prefetch::new(ahead);
        let dst = out.spare_capacity_mut();
        let n = encode(block, dst, &mut self.table, &mut prefetch);
        prefetch.finish();
        // SAFETY: encode initialised the first n bytes of the spare capacity.
        unsafe { out.set_len(out.len() + n) };
        n
    }
}

/// Issues prefetches for the next block one line at a time, spread over the work.
struct Prefetch<'a> {
    rest: &'a [u8],
}

impl<'a> Prefetch<'a> {
    fn new(ahead: &'a [u8]) -> Self {
        Prefetch { rest: ahead }
    }

    /// One more line.
    #[inline(always)]
    fn tick(&mut self) {
        if let Some((line, rest)) = self.rest.split_at_checked(64) {
            super::prefetch(line);
            self.rest = rest;
        }
    }

    /// The lines not yet asked for (a short block, or little work).
    fn finish(self) {
        super::prefetch(self.rest);
    }
}

/// liblz4's `LZ4_hash4` for the 16-bit table.
#[inline(always)]
fn hash(sequence: u32) -> usize {
    (sequence.wrapping_mul(2_654_435_761) >> (32 - HASH_LOG)) as usize
}

/// The block being compressed, read without bounds checks at positions the compressor's
/// invariants keep in range (each read asserts it in debug builds).
#[derive(Clone, Copy)]
struct Src<'a>(&'a [u8]);

impl Src<'_> {
    /// The byte at `i`.
    #[inline(always)]
    fn at(self, i: usize) -> u8 {
        debug_assert!(i < self.0.len());
        // SAFETY: callers read below a position that is itself in the block.
        unsafe { *self.0.get_unchecked(i) }
    }

    /// Native-endian 4 bytes at `i`, as liblz4 hashes and compares them.
    #[inline(always)]
    fn r32(self, i: usize) -> u32 {
        debug_assert!(i + 4 <= self.0.len());
        // SAFETY: every caller reads at a position below `mflimit_plus_one` = len - 11, or
        // at a match position before such a one, so i + 4 <= len; read_unaligned has no
        // alignment requirement.
        unsafe { self.0.as_ptr().add(i).cast::<u32>().read_unaligned() }
    }

    /// Little-endian 8 bytes at `i`.
    #[inline(always)]
    fn r64(self, i: usize) -> u64 {
        debug_assert!(i + 8 <= self.0.len());
        // SAFETY: callers read below the match limit (len - 5) minus 8, or at match positions
        // before such a one, so i + 8 <= len.
        u64::from_le(unsafe { self.0.as_ptr().add(i).cast::<u64>().read_unaligned() })
    }
}

/// The output, written without bounds checks: it holds [`bound`] + [`SLACK`] bytes, and LZ4
/// never writes more than [`bound`] (each write asserts it in debug builds).
struct Dst {
    ptr: *mut u8,
    cap: usize,
}

impl Dst {
    #[inline(always)]
    fn put(&mut self, at: usize, byte: u8) {
        debug_assert!(at < self.cap);
        // SAFETY: at < bound + SLACK <= the capacity behind ptr (see the type).
        unsafe { self.ptr.add(at).write(byte) };
    }

    /// Add `byte` to the token at `at`, already written.
    #[inline(always)]
    fn add(&mut self, at: usize, byte: u8) {
        debug_assert!(at < self.cap);
        // SAFETY: as for put; the byte at was written (a token) before.
        unsafe { *self.ptr.add(at) += byte };
    }

    /// A length continuation after a saturated token nibble: 255s, then the rest.
    #[inline(always)]
    fn put_len(&mut self, mut op: usize, mut n: usize) -> usize {
        while n >= 255 {
            self.put(op, 255);
            op += 1;
            n -= 255;
        }
        self.put(op, n as u8);
        op + 1
    }

    /// Copy `src[from..to]` to `at`: 32 bytes at a time within the run, then 8 at a time
    /// like liblz4's `LZ4_wildCopy8`, which may write up to 7 bytes past `at + to - from` and
    /// read up to 7 past `to`, which must be at least 8 bytes before the block's end.
    #[inline(always)]
    fn wild_copy(&mut self, at: usize, src: Src, from: usize, to: usize) {
        debug_assert!(at + (to - from) + SLACK <= self.cap);
        debug_assert!(to + 8 <= src.0.len());
        let mut k = 0;
        // Long literal runs (noise bit-planes) 32 bytes at a time, within the run.
        while from + k + 32 <= to {
            // SAFETY: reads end at or before to; writes end at or before at + (to - from),
            // within the bound.
            unsafe {
                let v = src
                    .0
                    .as_ptr()
                    .add(from + k)
                    .cast::<[u64; 4]>()
                    .read_unaligned();
                self.ptr.add(at + k).cast::<[u64; 4]>().write_unaligned(v);
            }
            k += 32;
        }
        while from + k < to {
            // SAFETY: reads end before to + 8 <= len (the caller's literals end before
            // mflimit_plus_one = len - 11); writes end before at + (to - from) + 8, within
            // bound + SLACK since the literals themselves fit in the bound.
            unsafe {
                let v = src.0.as_ptr().add(from + k).cast::<u64>().read_unaligned();
                self.ptr.add(at + k).cast::<u64>().write_unaligned(v);
            }
            k += 8;
        }
    }
}

/// How many bytes from `a` on equal those from `b` on (`b < a`), not counting past `limit`:
/// what liblz4's `LZ4_count` returns, 32 bytes at a time while they last (bit-planes hold
/// long runs of zeros).
#[inline(always)]
fn count(src: Src, mut a: usize, mut b: usize, limit: usize, prefetch: &mut Prefetch) -> usize {
    let start = a;
    while a + 32 <= limit {
        let diff = (src.r64(a) ^ src.r64(b))
            | (src.r64(a + 8) ^ src.r64(b + 8))
            | (src.r64(a + 16) ^ src.r64(b + 16))
            | (src.r64(a + 24) ^ src.r64(b + 24));
        if diff != 0 {
            break;
        }
        a += 32;
        b += 32;
        if (a - start).is_multiple_of(64) {
            prefetch.tick();
        }
    }
    while a + 8 <= limit {
        let diff = src.r64(a) ^ src.r64(b);
        if diff != 0 {
            return a + (diff.trailing_zeros() / 8) as usize - start;
        }
        a += 8;
        b += 8;
    }
    while a < limit && src.at(a) == src.at(b) {
        a += 1;
        b += 1;
    }
    a - start
}

/// `LZ4_compress_generic` (16-bit table, no dictionary, acceleration 1, unlimited output)
/// of `block` into `dst`, with `table` zeroed. Returns the compressed length.
///
/// # Panics
///
/// If `dst` is shorter than [`bound`] + [`SLACK`] or `block` longer than [`MAX_BLOCK`].
fn encode(
    block: &[u8],
    dst: &mut [std::mem::MaybeUninit<u8>],
    table: &mut [u16; TABLE],
    prefetch: &mut Prefetch,
) -> usize {
    let len = block.len();
    assert!(len <= MAX_BLOCK && dst.len() >= bound(len) + SLACK);
    let src = Src(block);
    let mut d = Dst {
        ptr: dst.as_mut_ptr().cast(),
        cap: dst.len(),
    };
    let mut op = 0;
    let mut anchor = 0;
    'sequences: {
        if len < MIN_LENGTH {
            break 'sequences;
        }
        let mflimit_plus_one = len - MFLIMIT + 1;
        let match_limit = len - LASTLITERALS;
        table[hash(src.r32(0))] = 0;
        let mut ip = 1;
        let mut forward_h = hash(src.r32(ip));
        loop {
            // Find a match; the step grows on incompressible data.
            let mut m;
            let mut forward_ip = ip;
            let mut step = 1;
            let mut searches = 1u32 << SKIP_TRIGGER;
            loop {
                let h = forward_h;
                m = usize::from(table[h]);
                ip = forward_ip;
                forward_ip += step;
                step = (searches >> SKIP_TRIGGER) as usize;
                searches += 1;
                if forward_ip > mflimit_plus_one {
                    break 'sequences;
                }
                forward_h = hash(src.r32(forward_ip));
                table[h] = ip as u16;
                if src.r32(m) == src.r32(ip) {
                    break;
                }
            }
            // Extend the match backwards over the literals.
            while ip > anchor && m > 0 && src.at(ip - 1) == src.at(m - 1) {
                ip -= 1;
                m -= 1;
            }
            let literals = ip - anchor;
            let mut token = op;
            op += 1;
            if literals >= RUN_MASK {
                d.put(token, (RUN_MASK << 4) as u8);
                op = d.put_len(op, literals - RUN_MASK);
            } else {
                d.put(token, (literals << 4) as u8);
            }
            // ip < mflimit_plus_one: the 7 bytes read past ip are in the block.
            d.wild_copy(op, src, anchor, ip);
            op += literals;
            // The match, then as long as the next position matches at once, more matches.
            loop {
                prefetch.tick();
                let offset = ((ip - m) as u16).to_le_bytes();
                d.put(op, offset[0]);
                d.put(op + 1, offset[1]);
                op += 2;
                let more = count(src, ip + MINMATCH, m + MINMATCH, match_limit, prefetch);
                ip += more + MINMATCH;
                if more >= RUN_MASK {
                    d.add(token, RUN_MASK as u8);
                    op = d.put_len(op, more - RUN_MASK);
                } else {
                    d.add(token, more as u8);
                }
                anchor = ip;
                if ip >= mflimit_plus_one {
                    break 'sequences;
                }
                table[hash(src.r32(ip - 2))] = (ip - 2) as u16;
                let h = hash(src.r32(ip));
                m = usize::from(table[h]);
                table[h] = ip as u16;
                if src.r32(m) != src.r32(ip) {
                    break;
                }
                token = op;
                d.put(op, 0);
                op += 1;
            }
            ip += 1;
            forward_h = hash(src.r32(ip));
        }
    }
    last_literals(&mut d, op, &block[anchor..])
}

/// The block's last sequence at `op`: a token and the literals `tail`, copied exactly since
/// they end the block. Returns the compressed length. Out of line: it runs once per block,
/// and inlined it made the main loop's code about 2% slower here.
#[inline(never)]
fn last_literals(d: &mut Dst, mut op: usize, tail: &[u8]) -> usize {
    let last = tail.len();
    if last >= RUN_MASK {
        d.put(op, (RUN_MASK << 4) as u8);
        op = d.put_len(op + 1, last - RUN_MASK);
    } else {
        d.put(op, (last << 4) as u8);
        op += 1;
    }
    assert!(op + last <= d.cap);
    // SAFETY: op + last <= bound <= the capacity behind d.ptr (checked just above), and the
    // output does not overlap the block (a &mut and a & slice).
    unsafe { std::ptr::copy_nonoverlapping(tail.as_ptr(), d.ptr.add(op), last) };
    op + last
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// liblz4's `LZ4_compress_default`.
    fn c_lz4(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        super::super::lz4::append_block(src, &mut out, false);
        out.split_off(4)
    }

    fn ours(enc: &mut SmallBlockEncoder, src: &[u8]) -> Vec<u8> {
        let mut out = vec![7u8; 3];
        let n = enc.append(src, &mut out, &[]);
        assert_eq!(out.len(), 3 + n);
        out.split_off(3)
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn equals_liblz4_on_edge_sizes() {
        // One encoder for all: its table carries entries of earlier blocks.
        let mut enc = SmallBlockEncoder::default();
        let noise = noise(MAX_BLOCK);
        for len in (0..40).chain([255, 256, 270, 4096, 8192, 65535, MAX_BLOCK]) {
            for src in [vec![0u8; len], noise[..len].to_vec()] {
                assert_eq!(ours(&mut enc, &src), c_lz4(&src), "{len} bytes");
            }
        }
    }

    /// A block whose first 4 bytes recur, after blocks that filled the table: the entries
    /// of earlier blocks must not count.
    #[test]
    fn equals_liblz4_after_earlier_blocks() {
        let mut enc = SmallBlockEncoder::default();
        let mut src = noise(8192);
        for k in 0..40 {
            src[k * 200..k * 200 + 4].copy_from_slice(&[1, 2, 3, 4]);
            assert_eq!(ours(&mut enc, &src), c_lz4(&src), "block {k}");
        }
    }

    proptest! {
        #[test]
        fn equals_liblz4_on_runs_and_noise(
            blocks in prop::collection::vec(
                prop::collection::vec((any::<u8>(), 0usize..600, any::<bool>()), 0..40),
                1..6,
            ),
            seed in any::<u64>(),
        ) {
            // Runs of one byte, or of pseudo-random bytes from a small alphabet: long
            // matches, short matches, literals, and long literal runs; several blocks through
            // one encoder.
            let mut enc = SmallBlockEncoder::default();
            let mut x = seed | 1;
            for parts in blocks {
                let mut src = Vec::new();
                for (byte, n, random) in parts {
                    for _ in 0..n {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        src.push(if random { byte & (x as u8) } else { byte });
                    }
                }
                src.truncate(MAX_BLOCK);
                prop_assert_eq!(ours(&mut enc, &src), c_lz4(&src));
            }
        }
    }
}
