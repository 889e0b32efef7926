//! The conformance checks of an [`ImageSource`]: a detector whose images arrive encoded and in
//! channels (a network detector). Its series is set up by whatever feeds it (the detector's
//! own control, a test sender), so the check is given the source idle and told what the
//! series holds; it starts it, reads every image and checks each against the HAL's promises.
//!
//! | requirement |
//! |---|
//! | `read_image` before `start` fails with [`ErrorKind::NotAcquiring`] |
//! | at least one channel, no more than [`MAX_CHANNELS`](crate::MAX_CHANNELS); the encoding is one the HAL names |
//! | a buffer shorter than [`ImageSource::max_image_bytes`] is refused with [`ErrorKind::InvalidConfig`], and no image is lost by it |
//! | every image: one part per channel; parts and user data inside the buffer's first `max_image_bytes`, not overlapping; each part a whole chunk of the frame shape in its encoding ([`FrameEncoding::check_chunk`]); `decode` (when given) turns it into exactly `shape.bytes()` bytes |
//! | image numbers are unique; unique ids strictly increase; the series ends with `NotAcquiring` and `is_acquiring() == false` |
//! | the images and the losses the source reports add up to what the series holds |

use core::time::Duration;
use std::format;
use std::string::String;
use std::time::Instant;
use std::vec;
use std::vec::Vec;

use super::{ConformanceFailure, failure};
use crate::{Error, ErrorKind, FrameEncoding, FrameShape, ImageMeta, ImageSource};

/// Decodes a channel's chunk of a frame of the given shape into raw pixels, or `None`.
pub type Decode<'a> = &'a dyn Fn(FrameEncoding, &[u8], FrameShape) -> Option<Vec<u8>>;

/// What the series fed to the source holds, and how to look inside its chunks.
pub struct ImageSeries<'a> {
    /// Images sent (delivered plus lost on the way).
    pub images: u64,
    /// Longest wait for one image. Default in [`ImageSeries::new`]: 10 s.
    pub timeout: Duration,
    /// Decodes a channel's chunk into raw pixels, or `None` if it cannot; when given, every
    /// chunk must decode into exactly the frame's bytes.
    pub decode: Option<Decode<'a>>,
}

impl core::fmt::Debug for ImageSeries<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImageSeries")
            .field("images", &self.images)
            .field("timeout", &self.timeout)
            .field("decode", &self.decode.is_some())
            .finish()
    }
}

impl ImageSeries<'_> {
    /// A series of `images` images, no decoder.
    pub fn new(images: u64) -> Self {
        ImageSeries {
            images,
            timeout: Duration::from_secs(10),
            decode: None,
        }
    }
}

/// What a conforming source delivered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImagesSeen {
    /// Every image delivered, in delivery order.
    pub images: Vec<ImageMeta>,
    /// Images reported lost or damaged (`FrameLost`, `Corrupted`, `Incomplete`, `Overrun`).
    pub lost: u64,
}

/// Start the idle `det`, read the whole `series` and check every image. The source is left
/// stopped.
pub fn check_image_source<T: ImageSource>(
    det: &mut T,
    series: &ImageSeries<'_>,
) -> Result<ImagesSeen, ConformanceFailure> {
    let fail = failure("image_source");
    let mut buf = vec![0u8; det.max_image_bytes()];
    match det.read_image(&mut buf, Duration::from_millis(1)) {
        Err(e) if e.kind() == ErrorKind::NotAcquiring => {}
        other => {
            return Err(fail(format!(
                "read_image before start() must fail with NotAcquiring, got {:?}",
                other.map(|m| m.number).map_err(|e| e.kind())
            )));
        }
    }
    let names = det.channel_names();
    if names.is_empty() {
        return Err(fail("no channel names".into()));
    }
    det.start()
        .map_err(|e| fail(format!("start() failed: {e:?}")))?;
    let seen = read_series(det, series, &mut buf, names.len(), &fail);
    det.stop()
        .map_err(|e| fail(format!("stop() failed: {e:?}")))?;
    let seen = seen?;
    if det.is_acquiring() {
        return Err(fail("is_acquiring() is true after the series ended".into()));
    }
    let total = seen.images.len() as u64 + seen.lost;
    if total != series.images {
        return Err(fail(format!(
            "{} images delivered and {} lost, the series held {}",
            seen.images.len(),
            seen.lost,
            series.images
        )));
    }
    Ok(seen)
}

/// Read images until `NotAcquiring`, checking each; the first image is asked for with a
/// one-byte buffer first, which must be refused.
fn read_series<T: ImageSource>(
    det: &mut T,
    series: &ImageSeries<'_>,
    buf: &mut [u8],
    channels: usize,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<ImagesSeen, ConformanceFailure> {
    let mut seen = ImagesSeen::default();
    let mut small = [0u8; 1];
    let mut waited = Instant::now();
    let mut tried_small = false;
    loop {
        let target: &mut [u8] = if tried_small { buf } else { &mut small };
        match det.read_image(target, series.timeout) {
            Ok(meta) if !tried_small => {
                return Err(fail(format!(
                    "a 1-byte buffer was accepted for image {}",
                    meta.number
                )));
            }
            Ok(meta) => {
                check_image(&meta, buf, channels, series, fail)?;
                check_order(&seen.images, &meta, fail)?;
                seen.images.push(meta);
                waited = Instant::now();
            }
            Err(e) => match e.kind() {
                ErrorKind::InvalidConfig if !tried_small => tried_small = true,
                ErrorKind::Timeout if waited.elapsed() < series.timeout => {}
                ErrorKind::NotAcquiring => return Ok(seen),
                ErrorKind::FrameLost
                | ErrorKind::Corrupted
                | ErrorKind::Incomplete
                | ErrorKind::Overrun => seen.lost += 1,
                k => {
                    return Err(fail(format!(
                        "read_image failed with kind {k:?} after {} images: {e:?}",
                        seen.images.len()
                    )));
                }
            },
        }
    }
}

/// One image's parts against the buffer, the shape and each other.
fn check_image(
    meta: &ImageMeta,
    buf: &[u8],
    channels: usize,
    series: &ImageSeries<'_>,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<(), ConformanceFailure> {
    let n = meta.number;
    if meta.channels.len() != channels {
        return Err(fail(format!(
            "image {n}: {} parts for {channels} channels",
            meta.channels.len()
        )));
    }
    let shape = meta.frame.shape;
    let mut ranges: Vec<_> = meta.channels.iter().map(|p| p.bytes.clone()).collect();
    ranges.extend(meta.user_data.clone());
    ranges.sort_by_key(|r| r.start);
    for pair in ranges.windows(2) {
        if pair[0].end > pair[1].start {
            return Err(fail(format!("image {n}: parts overlap: {ranges:?}")));
        }
    }
    if let Some(last) = ranges
        .last()
        .filter(|r| r.end > buf.len() || r.start > r.end)
    {
        return Err(fail(format!(
            "image {n}: a part {last:?} lies outside the {}-byte buffer",
            buf.len()
        )));
    }
    for (c, part) in meta.channels.iter().enumerate() {
        let chunk = &buf[part.bytes.clone()];
        let elem = shape.pixel_type.size();
        if let Err(e) = part.encoding.check_chunk(chunk, shape.bytes(), elem) {
            return Err(fail(format!(
                "image {n} channel {c} ({}): {e}",
                part.encoding
            )));
        }
        let decoded = series.decode.map(|d| d(part.encoding, chunk, shape));
        if let Some(pixels) = decoded {
            let len = pixels.as_ref().map(|p| p.len());
            if len != Some(shape.bytes()) {
                return Err(fail(format!(
                    "image {n} channel {c}: decodes into {len:?} bytes, the frame has {}",
                    shape.bytes()
                )));
            }
        }
    }
    Ok(())
}

fn check_order(
    before: &[ImageMeta],
    meta: &ImageMeta,
    fail: &impl Fn(String) -> ConformanceFailure,
) -> Result<(), ConformanceFailure> {
    if before.iter().any(|m| m.number == meta.number) {
        return Err(fail(format!("image {} delivered twice", meta.number)));
    }
    match before.last() {
        Some(last) if last.frame.unique_id >= meta.frame.unique_id => Err(fail(format!(
            "unique id {} after {}",
            meta.frame.unique_id, last.frame.unique_id
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AcquisitionConfig, ChannelNames, ChannelPart, ColorMode, Detector, EpicsTimestamp,
        ErrorType, FrameMeta, ImageTimes, PixelType, SensorInfo,
    };

    const SHAPE: FrameShape = FrameShape {
        width: 2,
        height: 2,
        pixel_type: PixelType::U16,
        color_mode: ColorMode::Mono,
    };

    /// A source replaying canned images: each an image number and its channels' chunks, or
    /// `None` for an image lost on the way.
    struct Canned {
        images: Vec<Option<(u64, Vec<Vec<u8>>)>>,
        at: usize,
        started: bool,
        /// Shift the second channel onto the first (a broken source).
        overlap: bool,
    }

    impl ErrorType for Canned {
        type Error = ErrorKind;
    }

    impl Detector for Canned {
        fn info(&self) -> SensorInfo {
            SensorInfo {
                manufacturer: heapless::String::new(),
                model: heapless::String::new(),
                max_width: 2,
                max_height: 2,
                pixel_types: heapless::Vec::from_slice(&[PixelType::U16]).unwrap(),
            }
        }
        fn configure(&mut self, _: &AcquisitionConfig) -> Result<FrameShape, ErrorKind> {
            Ok(SHAPE)
        }
        fn start(&mut self) -> Result<(), ErrorKind> {
            self.started = true;
            Ok(())
        }
        fn stop(&mut self) -> Result<(), ErrorKind> {
            self.started = false;
            Ok(())
        }
        fn is_acquiring(&self) -> bool {
            self.started && self.at < self.images.len()
        }
    }

    impl ImageSource for Canned {
        fn channel_names(&self) -> ChannelNames {
            let mut names = ChannelNames::new();
            for n in ["threshold_1", "threshold_2"] {
                names.push(heapless::String::try_from(n).unwrap()).unwrap();
            }
            names
        }
        fn encoding(&self) -> FrameEncoding {
            FrameEncoding::Lz4
        }
        fn max_image_bytes(&self) -> usize {
            64
        }
        fn read_image(&mut self, buf: &mut [u8], _: Duration) -> Result<ImageMeta, ErrorKind> {
            if !self.is_acquiring() {
                return Err(ErrorKind::NotAcquiring);
            }
            if buf.len() < self.max_image_bytes() {
                return Err(ErrorKind::InvalidConfig);
            }
            self.at += 1;
            let Some((number, chunks)) = &self.images[self.at - 1] else {
                return Err(ErrorKind::FrameLost);
            };
            let mut channels = heapless::Vec::new();
            let mut at = 0;
            for chunk in chunks {
                buf[at..at + chunk.len()].copy_from_slice(chunk);
                let start = if self.overlap { 0 } else { at };
                let part = ChannelPart {
                    encoding: FrameEncoding::Lz4,
                    bytes: start..start + chunk.len(),
                };
                channels.push(part).unwrap();
                at += chunk.len();
            }
            Ok(ImageMeta {
                frame: FrameMeta {
                    unique_id: self.at as u64,
                    timestamp: EpicsTimestamp::default(),
                    unix_time_s: 0.0,
                    shape: SHAPE,
                },
                number: *number,
                image_id: *number,
                channels,
                times: ImageTimes::default(),
                user_data: None,
            })
        }
    }

    /// The 2x2 u16 frame `[1, 2, 3, v]` as a 32004 chunk of one stored block.
    fn chunk(v: u8) -> Vec<u8> {
        let mut c = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x20, 0, 0, 0, 0, 8];
        c.extend_from_slice(&[1, 0, 2, 0, 3, 0, v, 0]);
        c
    }

    fn canned(images: Vec<Option<(u64, Vec<Vec<u8>>)>>) -> Canned {
        Canned {
            images,
            at: 0,
            started: false,
            overlap: false,
        }
    }

    #[test]
    fn a_conforming_source_passes_with_its_losses_counted() {
        let two = |n, v| Some((n, vec![chunk(v), chunk(v + 1)]));
        let mut det = canned(vec![two(0, 1), None, two(2, 3), two(1, 5)]);
        let seen = check_image_source(&mut det, &ImageSeries::new(4)).unwrap();
        let numbers: Vec<_> = seen.images.iter().map(|m| m.number).collect();
        assert_eq!((numbers, seen.lost), (vec![0, 2, 1], 1));
        // The same series said to hold five images does not add up.
        let mut det = canned(vec![two(0, 1), None, two(2, 3), two(1, 5)]);
        let e = check_image_source(&mut det, &ImageSeries::new(5)).unwrap_err();
        assert!(e.message.contains("held 5"), "{e}");
    }

    #[test]
    fn truncated_chunks_overlapping_parts_and_repeated_numbers_fail() {
        let mut short = chunk(1);
        short.pop();
        let mut det = canned(vec![Some((0, vec![chunk(1), short]))]);
        let e = check_image_source(&mut det, &ImageSeries::new(1)).unwrap_err();
        assert!(e.message.contains("channel 1"), "{e}");

        let mut det = canned(vec![Some((0, vec![chunk(1), chunk(2)]))]);
        det.overlap = true;
        let e = check_image_source(&mut det, &ImageSeries::new(1)).unwrap_err();
        assert!(e.message.contains("overlap"), "{e}");

        let two = |n| Some((n, vec![chunk(1), chunk(2)]));
        let mut det = canned(vec![two(0), two(0)]);
        let e = check_image_source(&mut det, &ImageSeries::new(2)).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn a_decoder_that_disagrees_with_the_shape_fails() {
        let decode = |_: FrameEncoding, _: &[u8], _: FrameShape| Some(vec![0u8; 3]);
        let series = ImageSeries {
            decode: Some(&decode),
            ..ImageSeries::new(1)
        };
        let mut det = canned(vec![Some((0, vec![chunk(1), chunk(2)]))]);
        let e = check_image_source(&mut det, &series).unwrap_err();
        assert!(e.message.contains("decodes into Some(3)"), "{e}");
    }
}
