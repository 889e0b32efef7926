//! An image record: how an image of an [`ImageSource`](detflow_hal::ImageSource) (several
//! channels, each a chunk, plus its number, timing and user data) sits in one ring slot, so
//! that it travels the ring like any frame, with the ring's counters and policies.
//!
//! The slot starts with a fixed [`Header`] (plain data, read back with bytemuck) that says
//! where each channel's bytes and the user data are; the bytes follow, as the backend wrote
//! them. A compressor that re-encodes an image writes a record of the same layout into its
//! chunk buffer.

use bytemuck::{Pod, Zeroable};
use detflow_hal::{FrameEncoding, ImageMeta, ImageTimes, MAX_CHANNELS, Ticks};

/// Bytes reserved at the start of a slot for the header; the backend writes the image after.
pub(crate) const HEADER_BYTES: usize = 320;

const MAGIC: u32 = u32::from_le_bytes(*b"DFIR");

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Part {
    encoding: u32,
    _pad: u32,
    /// Byte range in the record (from its first byte, the header's).
    start: u64,
    end: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Header {
    magic: u32,
    channels: u32,
    number: u64,
    image_id: u64,
    /// Byte range of the user data in the record; empty when there is none.
    user_start: u64,
    user_end: u64,
    /// real, start, stop: ticks and ticks per second each (0 Hz: not given).
    times: [u64; 6],
    parts: [Part; MAX_CHANNELS],
}

const _: () = assert!(size_of::<Header>() <= HEADER_BYTES);

/// One image, read from a record.
#[derive(Debug, Clone)]
pub(crate) struct Record<'a> {
    pub(crate) number: u64,
    pub(crate) image_id: u64,
    pub(crate) times: ImageTimes,
    /// One chunk per channel, with the encoding the backend said (a re-encoded record
    /// carries the pool's codec instead: see [`crate::compress`]).
    pub(crate) channels: heapless::Vec<(FrameEncoding, &'a [u8]), MAX_CHANNELS>,
    pub(crate) user_data: Option<&'a [u8]>,
}

fn encoding_code(e: FrameEncoding) -> u32 {
    match e {
        FrameEncoding::BitshuffleLz4 => 1,
        FrameEncoding::Lz4 => 2,
        _ => 0,
    }
}

fn encoding_of(code: u32) -> FrameEncoding {
    match code {
        1 => FrameEncoding::BitshuffleLz4,
        2 => FrameEncoding::Lz4,
        _ => FrameEncoding::Raw,
    }
}

fn ticks(t: Option<Ticks>) -> [u64; 2] {
    t.map_or([0, 0], |t| [t.ticks, t.per_s])
}

fn from_ticks(pair: &[u64]) -> Option<Ticks> {
    (pair[1] != 0).then(|| Ticks {
        ticks: pair[0],
        per_s: pair[1],
    })
}

fn header(number: u64, image_id: u64, times: &ImageTimes, channels: usize) -> Header {
    let [r0, r1] = ticks(times.real);
    let [s0, s1] = ticks(times.start);
    let [e0, e1] = ticks(times.stop);
    Header {
        magic: MAGIC,
        channels: channels as u32,
        number,
        image_id,
        times: [r0, r1, s0, s1, e0, e1],
        ..Header::zeroed()
    }
}

/// Write the header of the image `meta` describes, whose bytes the backend wrote into
/// `slot[HEADER_BYTES..]` (its ranges are relative to that), and return the record's length.
pub(crate) fn seal(slot: &mut [u8], meta: &ImageMeta) -> usize {
    let mut h = header(meta.number, meta.image_id, &meta.times, meta.channels.len());
    let mut end = HEADER_BYTES;
    for (p, part) in h.parts.iter_mut().zip(&meta.channels) {
        p.encoding = encoding_code(part.encoding);
        p.start = (HEADER_BYTES + part.bytes.start) as u64;
        p.end = (HEADER_BYTES + part.bytes.end) as u64;
        end = end.max(p.end as usize);
    }
    if let Some(u) = &meta.user_data {
        h.user_start = (HEADER_BYTES + u.start) as u64;
        h.user_end = (HEADER_BYTES + u.end) as u64;
        end = end.max(h.user_end as usize);
    }
    slot[..size_of::<Header>()].copy_from_slice(bytemuck::bytes_of(&h));
    end
}

/// Append to `out` (empty) a record of `record`'s number, timing and user data whose channels
/// are `encode(channel index, chunk, out)` appended in turn.
pub(crate) fn rebuild<E>(
    record: &Record<'_>,
    out: &mut Vec<u8>,
    mut encode: impl FnMut(usize, &[u8], &mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let mut h = header(
        record.number,
        record.image_id,
        &record.times,
        record.channels.len(),
    );
    out.clear();
    out.resize(HEADER_BYTES, 0);
    for (i, (p, (_, chunk))) in h.parts.iter_mut().zip(&record.channels).enumerate() {
        p.start = out.len() as u64;
        encode(i, chunk, out)?;
        p.end = out.len() as u64;
    }
    if let Some(user) = record.user_data {
        h.user_start = out.len() as u64;
        out.extend_from_slice(user);
        h.user_end = out.len() as u64;
    }
    out[..size_of::<Header>()].copy_from_slice(bytemuck::bytes_of(&h));
    Ok(())
}

/// The image in `bytes` (a slot's or a re-encoded record's), or `None` if they are not a
/// record this module wrote.
pub(crate) fn read(bytes: &[u8]) -> Option<Record<'_>> {
    let h: Header = bytemuck::pod_read_unaligned(bytes.get(..size_of::<Header>())?);
    if h.magic != MAGIC || h.channels as usize > MAX_CHANNELS {
        return None;
    }
    let range = |start: u64, end: u64| bytes.get(start as usize..end as usize);
    let mut channels = heapless::Vec::new();
    for p in &h.parts[..h.channels as usize] {
        let chunk = range(p.start, p.end)?;
        channels.push((encoding_of(p.encoding), chunk)).ok()?;
    }
    let user_data = match h.user_end {
        0 => None,
        _ => Some(range(h.user_start, h.user_end)?),
    };
    Some(Record {
        number: h.number,
        image_id: h.image_id,
        times: ImageTimes {
            real: from_ticks(&h.times[0..2]),
            start: from_ticks(&h.times[2..4]),
            stop: from_ticks(&h.times[4..6]),
        },
        channels,
        user_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_hal::{ChannelPart, ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};

    #[test]
    fn a_sealed_slot_reads_back_and_rebuilds() {
        let mut slot = vec![0u8; HEADER_BYTES + 64];
        slot[HEADER_BYTES..HEADER_BYTES + 10].copy_from_slice(b"0123456789");
        let mut channels = heapless::Vec::new();
        for (enc, r) in [
            (FrameEncoding::BitshuffleLz4, 0..4),
            (FrameEncoding::Lz4, 4..8),
        ] {
            channels
                .push(ChannelPart {
                    encoding: enc,
                    bytes: r,
                })
                .unwrap();
        }
        let times = ImageTimes {
            real: Some(Ticks {
                ticks: 999_995,
                per_s: 50_000_000,
            }),
            start: None,
            stop: Some(Ticks {
                ticks: 7,
                per_s: 50_000_000,
            }),
        };
        let meta = ImageMeta {
            frame: FrameMeta {
                unique_id: 1,
                timestamp: EpicsTimestamp::default(),
                unix_time_s: 0.0,
                shape: FrameShape {
                    width: 1,
                    height: 2,
                    pixel_type: PixelType::U16,
                    color_mode: ColorMode::Mono,
                },
            },
            number: 41,
            image_id: 125,
            channels,
            times,
            user_data: Some(8..10),
        };
        let len = seal(&mut slot, &meta);
        assert_eq!(len, HEADER_BYTES + 10);
        let r = read(&slot[..len]).unwrap();
        assert_eq!((r.number, r.image_id, r.times), (41, 125, times));
        assert_eq!(r.channels[0], (FrameEncoding::BitshuffleLz4, &b"0123"[..]));
        assert_eq!(r.channels[1], (FrameEncoding::Lz4, &b"4567"[..]));
        assert_eq!(r.user_data, Some(&b"89"[..]));
        // Re-encoded: each chunk doubled.
        let mut out = Vec::new();
        rebuild::<()>(&r, &mut out, |_, c, out| {
            out.extend_from_slice(c);
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        let again = read(&out).unwrap();
        assert_eq!(again.channels[1].1, b"45674567");
        assert_eq!(
            (again.number, again.image_id, again.user_data),
            (41, 125, Some(&b"89"[..]))
        );
        assert!(read(&slot[..HEADER_BYTES + 5]).is_none(), "a cut record");
        assert!(read(b"not a record").is_none());
    }
}
