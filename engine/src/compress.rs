//! The compressor pool between the ring and the writer thread: each worker claims the next
//! frame, encodes it in place from its slot into a chunk buffer, releases the slot and hands
//! the chunk on; the writer puts the chunks back in ring order.
//!
//! Every frame a sink writes is encoded here, never on the writer thread. The codec is read
//! per frame from the sink's [`Encoding`]: fixed for the run, or a [`CodecCell`] that a shared
//! file plugin sets when a capture with another codec opens. Each chunk carries the codec it
//! was encoded with, so a sink can tell a frame encoded before the switch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use detflow_hal::PixelType;
use detflow_ring::{Claim, Claimer, NextError, SlotMeta};
use detflow_writer::{Codec, Compressor};

use crate::POLL;
use crate::backend::codec_of;
use crate::record;

/// The codec frames are encoded with, changeable while a run goes on.
#[derive(Debug)]
pub struct CodecCell {
    /// Bumped on every change, so a worker reads the codec only when it changed.
    version: AtomicU64,
    codec: Mutex<Codec>,
}

impl CodecCell {
    /// A cell holding `codec`.
    pub fn new(codec: Codec) -> Self {
        CodecCell {
            version: AtomicU64::new(0),
            codec: Mutex::new(codec),
        }
    }

    /// The codec now.
    pub fn get(&self) -> Codec {
        *self.codec.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encode with `codec` from the next frame a worker takes on.
    pub fn set(&self, codec: Codec) {
        let mut held = self.codec.lock().unwrap_or_else(|e| e.into_inner());
        if *held != codec {
            *held = codec;
            // Release: a worker that sees the new version (Acquire) reads the new codec.
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// How a sink wants its frames encoded.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// One codec for the whole run. With [`Codec::None`] the writer writes the ring slots
    /// themselves (zero copy) and no pool runs.
    Fixed(Codec),
    /// Whatever the cell holds when a worker takes the frame on.
    Follows(Arc<CodecCell>),
}

impl Encoding {
    /// The codec now.
    pub fn codec(&self) -> Codec {
        match self {
            Encoding::Fixed(c) => *c,
            Encoding::Follows(cell) => cell.get(),
        }
    }
}

/// What a compression worker hands the writer for one frame.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) meta: SlotMeta,
    /// The frame as the writer writes it, or `None` when it was not encoded because nothing
    /// more is being written (the writer counts it as dropped).
    pub(crate) chunk: Option<Chunk>,
    /// The codec of `chunk`.
    pub(crate) codec: Codec,
    /// A chunk buffer to hand back to the pool's free list (empty when `chunk` holds it).
    pub(crate) spare: Option<Vec<u8>>,
}

/// An encoded frame: a chunk buffer, or, for [`Codec::None`], the ring slot itself, held
/// until the writer has written it (no copy).
#[derive(Debug)]
pub(crate) enum Chunk {
    Encoded(Vec<u8>),
    Slot(Claim),
}

impl Chunk {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Encoded(buf) => buf,
            Chunk::Slot(claim) => claim.bytes(),
        }
    }

    /// The chunk buffer, for the free list (a slot is released instead).
    pub(crate) fn into_buffer(self) -> Option<Vec<u8>> {
        match self {
            Chunk::Encoded(buf) => Some(buf),
            Chunk::Slot(_) => None,
        }
    }
}

/// The codec and compressor one worker encodes with, renewed when the encoding changes.
struct WorkerCodec {
    encoding: Encoding,
    pixel_type: PixelType,
    seen: u64,
    compressor: Compressor,
}

impl WorkerCodec {
    fn new(encoding: Encoding, pixel_type: PixelType) -> Self {
        let (seen, codec) = match &encoding {
            Encoding::Fixed(c) => (0, *c),
            Encoding::Follows(cell) => (cell.version(), cell.get()),
        };
        WorkerCodec {
            compressor: codec.compressor(pixel_type),
            encoding,
            pixel_type,
            seen,
        }
    }

    /// The compressor for the next frame.
    fn current(&mut self) -> &mut Compressor {
        if let Encoding::Follows(cell) = &self.encoding {
            let version = cell.version();
            if version != self.seen {
                self.seen = version;
                self.compressor = cell.get().compressor(self.pixel_type);
            }
        }
        &mut self.compressor
    }
}

/// What one worker is given.
pub(crate) struct Worker<'a> {
    pub(crate) claimer: Claimer,
    pub(crate) encoding: Encoding,
    pub(crate) pixel_type: PixelType,
    /// The codec of the slots' bytes: [`Codec::None`] for frames, the detector's for images.
    pub(crate) slot_codec: Codec,
    /// The slots hold image records ([`crate::record`]), each channel encoded on its own.
    pub(crate) images: bool,
    /// Empty chunk buffers.
    pub(crate) free: Receiver<Vec<u8>>,
    /// Encoded frames with their ring sequence, to the writer.
    pub(crate) done: Sender<(u64, Encoded)>,
    /// False once the writer takes no more frames: the rest is not encoded.
    pub(crate) accepting: Arc<AtomicBool>,
    /// The workers' CPU time, which this one adds to when it ends.
    pub(crate) cpu_ns: &'a AtomicU64,
}

impl Worker<'_> {
    /// [`encode_all`](Self::encode_all), then add this thread's CPU time to the workers'.
    pub(crate) fn run(self) {
        let cpu_ns = self.cpu_ns;
        self.encode_all();
        cpu_ns.fetch_add(crate::status::thread_cpu_ns(), Ordering::Release);
    }

    /// Take a free buffer, claim the next frame, encode it in place into the buffer, release
    /// the slot, hand the chunk to the writer; until the ring is closed and drained. The
    /// buffer is taken before the claim, so the frame the writer waits for always has one
    /// (no deadlock with the reordering).
    fn encode_all(self) {
        let mut codec = WorkerCodec::new(self.encoding.clone(), self.pixel_type);
        let mut scratch = Vec::new();
        loop {
            let Ok(mut buf) = self.free.recv() else {
                return;
            };
            let Some(claim) = self.claim() else { return };
            let seq = claim.sequence();
            let meta = *claim.meta();
            let compressor = codec.current();
            let used = compressor.codec();
            // Relaxed: a hint; a frame encoded after the writer stopped accepting is dropped
            // there.
            let (chunk, spare) = if !self.accepting.load(Ordering::Relaxed) {
                (None, Some(buf))
            } else if used == self.slot_codec {
                // The slot is the chunk (raw frames, or images that arrived in the file's
                // codec): the writer releases it once written.
                (Some(Chunk::Slot(claim)), Some(buf))
            } else if !self.images {
                compressor.compress(claim.bytes(), &mut buf);
                // The slot is free as soon as its bytes are encoded.
                drop(claim);
                (Some(Chunk::Encoded(buf)), None)
            } else {
                let done = reencode(
                    claim.bytes(),
                    self.pixel_type,
                    compressor,
                    &mut buf,
                    &mut scratch,
                );
                drop(claim);
                match done {
                    Ok(()) => (Some(Chunk::Encoded(buf)), None),
                    // Counted as dropped by the writer.
                    Err(e) => {
                        tracing::error!("cannot re-encode {e}: the image is dropped");
                        (None, Some(buf))
                    }
                }
            };
            let encoded = Encoded {
                meta,
                chunk,
                codec: used,
                spare,
            };
            if self.done.send((seq, encoded)).is_err() {
                return;
            }
        }
    }

    fn claim(&self) -> Option<detflow_ring::Claim> {
        loop {
            match self.claimer.claim_timeout(POLL) {
                Ok(claim) => return Some(claim),
                Err(NextError::Timeout) => continue,
                Err(NextError::Closed) => return None,
            }
        }
    }
}

/// Decode each channel of the image record `slot` and encode it with `compressor` into a
/// record of the same image in `out`; `scratch` holds one channel's chunk meanwhile.
fn reencode(
    slot: &[u8],
    pixel_type: PixelType,
    compressor: &mut Compressor,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let record = record::read(slot).ok_or("a slot that holds no image record")?;
    record::rebuild(&record, out, |i, chunk, out| {
        let raw;
        let pixels = match codec_of(record.channels[i].0) {
            Codec::None => chunk,
            codec => {
                raw = codec
                    .decode(pixel_type, chunk)
                    .map_err(|e| format!("image {} channel {i}: {e}", record.number))?;
                &raw[..]
            }
        };
        compressor.compress(pixels, scratch);
        out.extend_from_slice(scratch);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_renews_its_compressor_when_the_cell_changes() {
        let cell = Arc::new(CodecCell::new(Codec::None));
        let mut w = WorkerCodec::new(Encoding::Follows(cell.clone()), PixelType::U16);
        assert_eq!(w.current().codec(), Codec::None);
        cell.set(Codec::Lz4);
        assert_eq!(w.current().codec(), Codec::Lz4);
        cell.set(Codec::Lz4);
        assert_eq!(w.seen, 1, "setting the same codec is no change");
    }
}
