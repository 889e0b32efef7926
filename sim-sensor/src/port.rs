//! The data port: how frames leave the detector, apart from the control bus. Like a DMA
//! engine, it copies the frame at the head of the detector's FIFO straight into a buffer the
//! caller owns. [`DataPort`] is what [`SensorDriver`](crate::SensorDriver) needs from it; a
//! port for real hardware (a frame grabber, a PCIe DMA ring) implements the same two calls.
//!
//! # Frame format
//!
//! Each frame is a [`FrameHeader`] (available before the transfer, as a descriptor), the
//! pixel bytes, and a [`FrameFooter`] carrying the detector's [`frame_checksum`] of those
//! bytes. The driver recomputes the checksum; a mismatch means the frame was damaged on its
//! way.

use core::time::Duration;

/// Header of a frame waiting in the FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The detector's frame number: `FRAME_COUNT` when this frame was exposed (1 for the first
    /// frame of a run). A gap means frames were lost before the FIFO.
    pub frame_number: u32,
    /// `OVERRUN_COUNT` when this frame was exposed: of the frames missing before it, this many
    /// (less those already accounted for) were lost to a full FIFO, the others elsewhere.
    pub overruns_before: u32,
    /// Output columns.
    pub width: u16,
    /// Output rows.
    pub height: u16,
    /// NDDataType code of the pixels.
    pub pixel_format: u8,
    /// Bytes of pixel data that the transfer writes.
    pub bytes: u32,
    /// When the frame was read out, nanoseconds since the Unix epoch (the detector's clock).
    pub timestamp_ns: u64,
}

/// Footer of a transferred frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFooter {
    /// [`frame_checksum`] of the pixel bytes, as the detector computed it.
    pub checksum: u32,
}

/// A frame data port: FIFO descriptors and DMA into the caller's buffer.
///
/// Errors use the HAL's kinds: [`detflow_hal::ErrorKind::Timeout`] when no frame arrived in
/// time, [`detflow_hal::ErrorKind::NotAcquiring`] when the FIFO is empty and the detector is
/// in standby (nothing more will come), anything else for a failed port.
pub trait DataPort {
    /// The port's error type.
    type Error: detflow_hal::Error;

    /// Waits up to `timeout` for a frame at the head of the FIFO and returns its header,
    /// leaving the frame in the FIFO.
    fn wait_frame(&mut self, timeout: Duration) -> Result<FrameHeader, Self::Error>;

    /// Copies the frame at the head of the FIFO into the first `header.bytes` bytes of `buf`
    /// and removes it from the FIFO. `buf` must be at least that long.
    fn transfer(&mut self, buf: &mut [u8]) -> Result<FrameFooter, Self::Error>;
}

impl<T: DataPort + ?Sized> DataPort for &mut T {
    type Error = T::Error;
    fn wait_frame(&mut self, timeout: Duration) -> Result<FrameHeader, Self::Error> {
        T::wait_frame(self, timeout)
    }
    fn transfer(&mut self, buf: &mut [u8]) -> Result<FrameFooter, Self::Error> {
        T::transfer(self, buf)
    }
}

/// The frame checksum: a Fletcher-style pair of 64-bit sums over little-endian 8-byte words
/// (the tail zero-padded), folded to 32 bits. Any single changed bit changes it, and it runs
/// at memory speed.
pub fn frame_checksum(bytes: &[u8]) -> u32 {
    let (a, b) = fletcher(bytes);
    let x = a ^ b.rotate_left(29) ^ (bytes.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x ^ (x >> 32)) as u32
}

/// The pair of sums: `a` of the words, `b` of `a` after each word. Four quarters of the words
/// run as independent chains, side by side (one chain adds one word a cycle at best), and
/// are joined as if run one after the other: running `m` more words after a state `(a, b)`
/// adds `m * a` to `b`.
fn fletcher(bytes: &[u8]) -> (u64, u64) {
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
    let quarter = bytes.len() / 32 * 8;
    let (q0, rest) = bytes.split_at(quarter);
    let (q1, rest) = rest.split_at(quarter);
    let (q2, rest) = rest.split_at(quarter);
    let (q3, rest) = rest.split_at(quarter);
    let mut sums = [(0u64, 0u64); 4];
    let quarters = q0.chunks_exact(8).zip(q1.chunks_exact(8));
    for ((w0, w1), (w2, w3)) in quarters.zip(q2.chunks_exact(8).zip(q3.chunks_exact(8))) {
        for (s, w) in sums.iter_mut().zip([w0, w1, w2, w3]) {
            s.0 = s.0.wrapping_add(word(w));
            s.1 = s.1.wrapping_add(s.0);
        }
    }
    let m = (quarter / 8) as u64;
    let (mut a, mut b) = (0u64, 0u64);
    for (qa, qb) in sums {
        b = b.wrapping_add(m.wrapping_mul(a)).wrapping_add(qb);
        a = a.wrapping_add(qa);
    }
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        a = a.wrapping_add(word(w));
        b = b.wrapping_add(a);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        a = a.wrapping_add(u64::from_le_bytes(w));
        b = b.wrapping_add(a);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_sees_every_single_bit_flip() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
        let c = frame_checksum(&data);
        for i in [0, 7, 8, 500, 1000] {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(frame_checksum(&d), c, "byte {i} bit {bit}");
            }
        }
        assert_ne!(frame_checksum(&[0; 8]), frame_checksum(&[0; 16]));
    }

    #[test]
    fn the_quarters_give_the_sums_of_one_chain_at_every_length() {
        let one_chain = |bytes: &[u8]| {
            let (mut a, mut b) = (0u64, 0u64);
            for w in bytes.chunks(8) {
                let mut word = [0u8; 8];
                word[..w.len()].copy_from_slice(w);
                a = a.wrapping_add(u64::from_le_bytes(word));
                b = b.wrapping_add(a);
            }
            (a, b)
        };
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..300).chain([1023, 1024, 1025, 4096, 4099]) {
            assert_eq!(
                fletcher(&data[..len]),
                one_chain(&data[..len]),
                "{len} bytes"
            );
        }
    }
}
