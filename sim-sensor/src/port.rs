//! The data port: how frames leave the detector, apart from the control bus. Like a DMA
//! engine, it copies the frame at the head of the detector's FIFO straight into a buffer the
//! caller owns. [`DataPort`] is what [`SensorDriver`](crate::SensorDriver) needs from it; a
//! port for real hardware (a frame grabber, a PCIe DMA ring) implements the same two calls.
//!
//! # Frame format
//!
//! Each frame is a [`FrameHeader`] (available before the transfer, as a descriptor), the
//! pixel bytes, and a [`FrameFooter`] carrying the detector's [`frame_checksum`] of those
//! bytes. The driver recomputes the checksum, block by block as the frame lands
//! ([`DataPort::transfer_blocks`]); a mismatch means the frame was damaged on its way.

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

    /// [`transfer`](DataPort::transfer), handing the frame to `on_block` as it lands: in
    /// consecutive pieces of `buf`, in order, each once it holds its final bytes. A driver
    /// checks each piece while it is in cache instead of reading the frame again. The
    /// default calls `on_block` once with the whole buffer after the transfer.
    fn transfer_blocks(
        &mut self,
        buf: &mut [u8],
        on_block: &mut dyn FnMut(&[u8]),
    ) -> Result<FrameFooter, Self::Error> {
        let footer = self.transfer(buf)?;
        on_block(buf);
        Ok(footer)
    }
}

impl<T: DataPort + ?Sized> DataPort for &mut T {
    type Error = T::Error;
    fn wait_frame(&mut self, timeout: Duration) -> Result<FrameHeader, Self::Error> {
        T::wait_frame(self, timeout)
    }
    fn transfer(&mut self, buf: &mut [u8]) -> Result<FrameFooter, Self::Error> {
        T::transfer(self, buf)
    }
    fn transfer_blocks(
        &mut self,
        buf: &mut [u8],
        on_block: &mut dyn FnMut(&[u8]),
    ) -> Result<FrameFooter, Self::Error> {
        T::transfer_blocks(self, buf, on_block)
    }
}

/// The frame checksum: Fletcher-style sums in sixteen 32-bit lanes, mixed into 32 bits with
/// the length. The bytes are read as little-endian 4-byte words in 64-byte blocks (the last
/// one zero-padded); word `i` of a block goes to lane `i`, whose `a` sums its words and whose
/// `b` sums `a` after each block. Any single changed bit changes its lane's `a`, and the
/// mixing keeps every change of any lane; the lanes vectorise, so the checksum costs a
/// fraction of a memory pass. [`FrameChecksum`] computes the same value piece by piece.
pub fn frame_checksum(bytes: &[u8]) -> u32 {
    let mut c = FrameChecksum::new();
    c.update(bytes);
    c.finish()
}

/// Lanes of [`FrameChecksum`]: 4-byte words per block, four SSE2 registers.
const LANES: usize = 16;
/// Bytes per block.
const BLOCK: usize = 4 * LANES;

/// [`frame_checksum`] of bytes that arrive in pieces: `update` with each piece in order, then
/// `finish`. A piece is summed while it is still in cache, so a frame rendered or received
/// a band at a time is checked without a second pass over memory.
#[derive(Debug, Clone, Copy)]
pub struct FrameChecksum {
    a: [u32; LANES],
    b: [u32; LANES],
    /// Bytes given so far.
    len: u64,
    /// The start of a block not yet complete (`pending` bytes of it).
    partial: [u8; BLOCK],
    pending: usize,
}

impl Default for FrameChecksum {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameChecksum {
    /// The checksum of no bytes so far.
    pub fn new() -> Self {
        FrameChecksum {
            a: [0; LANES],
            b: [0; LANES],
            len: 0,
            partial: [0; BLOCK],
            pending: 0,
        }
    }

    /// Adds the next `bytes` of the frame.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending > 0 {
            let take = bytes.len().min(BLOCK - self.pending);
            self.partial[self.pending..self.pending + take].copy_from_slice(&bytes[..take]);
            self.pending += take;
            bytes = &bytes[take..];
            if self.pending < BLOCK {
                return;
            }
            let block = self.partial;
            self.blocks(&block);
            self.pending = 0;
        }
        let whole = bytes.len() / BLOCK * BLOCK;
        let (blocks, rest) = bytes.split_at(whole);
        self.blocks(blocks);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.pending = rest.len();
    }

    /// The checksum of all the bytes given.
    pub fn finish(mut self) -> u32 {
        if self.pending > 0 {
            let mut block = [0u8; BLOCK];
            block[..self.pending].copy_from_slice(&self.partial[..self.pending]);
            self.blocks(&block);
        }
        // A chain of bijections: a change in any lane changes the 64-bit result.
        let mut h = crate::rng::mix(self.len);
        for (a, b) in self.a.iter().zip(&self.b) {
            h = crate::rng::mix(h ^ (u64::from(*a) | u64::from(*b) << 32));
        }
        (h ^ (h >> 32)) as u32
    }

    /// Whole blocks (`bytes.len()` a multiple of [`BLOCK`]).
    #[inline]
    fn blocks(&mut self, bytes: &[u8]) {
        let (mut lane_a, mut lane_b) = (self.a, self.b);
        for block in bytes.chunks_exact(BLOCK) {
            // Lane by lane over arrays: the shape the compiler packs into paddd.
            let words: [u32; LANES] = bytemuck::pod_read_unaligned(block);
            for (a, w) in lane_a.iter_mut().zip(words) {
                *a = a.wrapping_add(u32::from_le(w));
            }
            for (b, a) in lane_b.iter_mut().zip(lane_a) {
                *b = b.wrapping_add(a);
            }
        }
        (self.a, self.b) = (lane_a, lane_b);
    }
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
    fn pieces_of_any_size_give_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut seen = std::collections::HashSet::new();
        for len in (0..300).chain([1023, 1024, 1025, 4096, 4099]) {
            let want = frame_checksum(&data[..len]);
            seen.insert(want);
            for piece in [1, 7, 64, 100, 2048] {
                let mut c = FrameChecksum::new();
                data[..len].chunks(piece).for_each(|p| c.update(p));
                assert_eq!(c.finish(), want, "{len} bytes in pieces of {piece}");
            }
        }
        assert_eq!(seen.len(), 305, "every length its own checksum");
    }

    #[test]
    fn the_checksum_sees_swapped_blocks_and_flips_in_a_frame() {
        let frame: Vec<u8> = (0..2 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 17) as u8)
            .collect();
        let c = frame_checksum(&frame);
        let mut swapped = frame.clone();
        swapped[..64].copy_from_slice(&frame[64..128]);
        swapped[64..128].copy_from_slice(&frame[..64]);
        assert_ne!(frame_checksum(&swapped), c);
        // What the fault injection does: bit 4 of one byte.
        for k in 0..200usize {
            let mut d = frame.clone();
            d[k.wrapping_mul(2_654_435_761) % frame.len()] ^= 0x10;
            assert_ne!(frame_checksum(&d), c, "frame {k}");
        }
    }
}
