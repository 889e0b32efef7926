//! A DECTRIS Stream V2 detector (EIGER2, PILATUS4, a Jungfraujoch, DLS's tickit simulator):
//! CBOR messages over a ZeroMQ PULL socket, one series from its `start` to its `end`.
//!
//! [`Stream2Source::connect`] connects, waits for a series' `start` and its first image (which
//! say the frame size, pixel type, channels, image count and compression) and is then an
//! [`ImageSource`]: each `image` message is copied once, channel by channel and still
//! compressed, into the caller's buffer (a ring slot). Images are placed by their `image_id`.
//! Faults are counted, never fatal: a malformed message, an image of another series, a
//! repeated or out-of-range image, or a second `start` is one `Corrupted` error with a log
//! line naming the series and image; images of the series that never came (whole or
//! damaged) are `FrameLost` errors, one each, once the series ends (its `end`, or the
//! timeout without a message). So `written + corrupted images of the series + lost =
//! number_of_images`; a malformed message with no readable image id, or one of another
//! series, is corrupted and no image of this one.
//!
//! Behind `detflow fan`, whose `start` carries the rank keys ([`RankKeys`]), the receiver is
//! one rank of N: it takes only its rank's images, places image `id` at
//! `deal.index_in_rank(id)` of its file (its id is kept in the file's `image_id`), and counts
//! an image of another rank as corrupted; the count above is then the rank's share.
//!
//! A [`Stream2Link`] is the socket itself, kept across series: the daemon takes series after
//! series from one link ([`Stream2Link::next_series`]), so nothing the detector sends between
//! two series is lost to a reconnect, and a `start` that closes a series is kept as the start
//! of the next.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use detflow_hal::{
    AcquisitionConfig, ChannelNames, ChannelPart, ColorMode, Detector, EpicsTimestamp, ErrorKind,
    ErrorType, FrameEncoding, FrameMeta, FrameShape, ImageMeta, ImageSource, ImageTimes, PixelType,
    SensorInfo, Ticks,
};
use detflow_stream2::fan::RankKeys;
use detflow_stream2::{Compression, Image, Message, Payload, Rational, Start};

use detflow_writer::{Codec, DetectorMetadata, RankShare, Table};

use super::BackendError;

/// The most bytes of `user_data` an image may carry into the file.
pub const MAX_USER_DATA: usize = 64 << 10;

/// What the user said of the series before it arrived (the flags given): a series that
/// contradicts it is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesExpect {
    /// Frame width and height.
    pub size: Option<(u32, u32)>,
    /// Pixel type.
    pub dtype: Option<PixelType>,
    /// Images in the series.
    pub frames: Option<u64>,
}

/// What a series is, from its `start` and first image.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// `series_id`.
    pub id: u64,
    /// `series_unique_id`.
    pub unique_id: String,
    /// Every channel's frame shape.
    pub shape: FrameShape,
    /// Channel names, in order.
    pub channels: Vec<String>,
    /// The compression of the first image's channels.
    pub encoding: FrameEncoding,
    /// `number_of_images`, when given.
    pub number_of_images: Option<u64>,
    /// `detector_description`.
    pub description: Option<String>,
    /// `count_time` in seconds.
    pub count_time: Option<f64>,
    /// `frame_time` in seconds.
    pub frame_time: Option<f64>,
    /// This writer's share when `detflow fan` deals the series over several ranks: the rank
    /// and the deal its `start` carried.
    pub rank: Option<RankKeys>,
}

impl SeriesInfo {
    /// The images this writer gets: the series' `number_of_images`, or a rank's share of it.
    pub fn images_here(&self) -> Option<u64> {
        let n = self.number_of_images?;
        Some(self.rank.map_or(n, |r| r.deal.images_of_rank(r.rank, n)))
    }

    /// Where image `id` goes in this writer's file: its id, or its position among a rank's
    /// images; `Err` says why it is not this writer's.
    fn position(&self, id: u64) -> Result<u64, String> {
        let Some(RankKeys { rank, deal }) = self.rank else {
            return Ok(id);
        };
        match deal.rank_of(id) {
            r if r == rank => Ok(deal.index_in_rank(id)),
            r => Err(format!(
                "image_id {id} is rank {r}'s of {}, and this writer is rank {rank}",
                deal.ranks()
            )),
        }
    }

    /// Is image `id` one this writer should get?
    fn is_mine(&self, id: u64) -> bool {
        self.position(id).is_ok()
    }
}

/// The PULL socket connected to a detector, and the message to be handled first.
struct Socketry {
    socket: zmq::Socket,
    _context: zmq::Context,
    /// A message received but not handled yet (a series' first image, or the `start` that
    /// closed the last series): the next one delivered.
    pending: Option<zmq::Message>,
    /// Messages of no series being received, skipped: the series they belong to and how
    /// many (one log line for the first, one with the count when it changes).
    skipped: Option<(String, u64)>,
}

impl Socketry {
    /// Skip a message that came outside a series (of a series refused, stopped or ended),
    /// logging the first of each series and the count at the end.
    fn skip(&mut self, endpoint: &str, header: Option<detflow_stream2::Header<'_>>) {
        let series = header.map_or_else(
            || "malformed".to_owned(),
            |h| format!("{} ({})", h.series.id, h.series.unique_id),
        );
        match &mut self.skipped {
            Some((s, n)) if *s == series => *n += 1,
            _ => {
                self.log_skipped(endpoint);
                tracing::warn!(
                    "stream2 {endpoint}: skipping messages of series {series} outside a series \
                     being received (before its start, or after it was refused or stopped)"
                );
                self.skipped = Some((series, 1));
            }
        }
    }

    /// Say how many messages were skipped since the last count.
    fn log_skipped(&mut self, endpoint: &str) {
        if let Some((series, n)) = self.skipped.take() {
            tracing::warn!("stream2 {endpoint}: skipped {n} messages of series {series}");
        }
    }
}

impl Socketry {
    /// The pending message, or one from the socket within `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Option<zmq::Message>, zmq::Error> {
        match self.pending.take() {
            Some(m) => Ok(Some(m)),
            None => recv(&self.socket, timeout),
        }
    }
}

/// A Stream V2 detector's endpoint, connected once and read series after series. Cloning it
/// shares the socket; one series ([`Stream2Source`]) reads it at a time.
#[derive(Clone)]
pub struct Stream2Link {
    inner: Arc<Mutex<Socketry>>,
    endpoint: String,
}

impl fmt::Debug for Stream2Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream2Link")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Stream2Link {
    /// Connect a PULL socket to `endpoint`, queueing up to `rcvhwm` messages. ZeroMQ
    /// connects in the background: no detector needs to be there yet.
    pub fn connect(endpoint: &str, rcvhwm: i32) -> Result<Self, Stream2Error> {
        let context = zmq::Context::new();
        let err = socket_error(endpoint);
        let socket = context.socket(zmq::PULL).map_err(&err)?;
        socket.set_rcvhwm(rcvhwm).map_err(&err)?;
        socket.set_linger(0).map_err(&err)?;
        socket.connect(endpoint).map_err(&err)?;
        Ok(Stream2Link {
            inner: Arc::new(Mutex::new(Socketry {
                socket,
                _context: context,
                pending: None,
                skipped: None,
            })),
            endpoint: endpoint.to_owned(),
        })
    }

    /// The endpoint connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn lock(&self) -> MutexGuard<'_, Socketry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next series: wait up to `wait` for its `start` (`None` if none came; messages of
    /// no series are skipped with a log line), then up to `silence` for its next message,
    /// and check it against `expect`. The series then closes after `silence` without a
    /// message.
    pub fn next_series(
        &self,
        wait: Duration,
        silence: Duration,
        expect: SeriesExpect,
    ) -> Result<Option<Stream2Source>, Stream2Error> {
        let endpoint = &self.endpoint;
        let err = socket_error(endpoint);
        let (start, first) = {
            let mut link = self.lock();
            let Some(start) = wait_for_start(&mut link, wait, endpoint)? else {
                return Ok(None);
            };
            let first =
                link.next(silence)
                    .map_err(&err)?
                    .ok_or_else(|| Stream2Error::NoSeries {
                        endpoint: endpoint.clone(),
                        what: "image",
                        timeout_s: silence.as_secs_f64(),
                    })?;
            // The first image is delivered first, by the source.
            (start, first)
        };
        let series = series_info(&start, &first)?;
        check_expect(&series, expect)?;
        if let Some(RankKeys { rank, deal }) = series.rank {
            tracing::info!(
                "series {} ({}) from {endpoint}: rank {rank} of {}, blocks of {}: {} of its \
                 images are this writer's",
                series.id,
                series.unique_id,
                deal.ranks(),
                deal.frames_per_block(),
                series.images_here().map_or("?".into(), |n| n.to_string()),
            );
        }
        tracing::info!(
            "series {} ({}) from {endpoint}: {} images of {}x{} {}, channels {:?}, {}",
            series.id,
            series.unique_id,
            series
                .number_of_images
                .map_or("?".into(), |n| n.to_string()),
            series.shape.width,
            series.shape.height,
            series.shape.pixel_type,
            series.channels,
            series.encoding
        );
        self.lock().pending = Some(first);
        Ok(Some(Stream2Source {
            link: self.clone(),
            silence,
            series,
            start: start.to_vec(),
            received: BTreeSet::new(),
            damaged: BTreeSet::new(),
            delivered: 0,
            last_message: Instant::now(),
            started: false,
            ended: false,
            lost_to_report: 0,
        }))
    }
}

/// Receives one Stream V2 series.
pub struct Stream2Source {
    link: Stream2Link,
    /// A series silent this long is closed.
    silence: Duration,
    series: SeriesInfo,
    /// The `start` message as it came (its metadata is read from it for the file).
    start: Vec<u8>,
    /// Image ids received so far.
    received: BTreeSet<u64>,
    /// Image ids of this series that arrived damaged (counted corrupted, not lost).
    damaged: BTreeSet<u64>,
    delivered: u64,
    last_message: Instant,
    started: bool,
    ended: bool,
    /// `FrameLost` errors still to report once the series ended.
    lost_to_report: u64,
}

impl fmt::Debug for Stream2Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream2Source")
            .field("endpoint", &self.link.endpoint)
            .field("series", &self.series)
            .field("received", &self.received.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Why a Stream V2 series could not be received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Stream2Error {
    /// The socket could not be made or connected.
    #[error("stream2-connect {endpoint}: {source}")]
    Socket {
        /// The endpoint.
        endpoint: String,
        /// ZeroMQ's error.
        source: zmq::Error,
    },
    /// No `start` (or no message after it) within the timeout.
    #[error("stream2-connect {endpoint}: no {what} within stream2-timeout {timeout_s} s")]
    NoSeries {
        /// The endpoint.
        endpoint: String,
        /// What was waited for.
        what: &'static str,
        /// The timeout.
        timeout_s: f64,
    },
    /// The series cannot be written (no size, an unknown pixel type, too many channels).
    #[error("series {series}: {reason}")]
    Unusable {
        /// The series id.
        series: u64,
        /// Why.
        reason: String,
    },
    /// A flag given contradicts the series.
    #[error("{setting} {given} contradicts series {series}, which has {series_value}")]
    Contradicts {
        /// The flag.
        setting: &'static str,
        /// Its value.
        given: String,
        /// The series id.
        series: u64,
        /// The series' value.
        series_value: String,
    },
}

impl From<Stream2Error> for BackendError {
    fn from(e: Stream2Error) -> Self {
        let kind = match e {
            Stream2Error::Contradicts { .. } | Stream2Error::Unusable { .. } => {
                ErrorKind::InvalidConfig
            }
            _ => ErrorKind::Other,
        };
        BackendError::new(kind, e.to_string())
    }
}

fn socket_error(endpoint: &str) -> impl Fn(zmq::Error) -> Stream2Error + '_ {
    move |source| Stream2Error::Socket {
        endpoint: endpoint.to_owned(),
        source,
    }
}

impl Stream2Source {
    /// Connect a PULL socket to `endpoint` (queueing up to `rcvhwm` messages), wait up to
    /// `silence` for a series' `start` and then for its next message, and check the series
    /// against `expect`.
    pub fn connect(
        endpoint: &str,
        rcvhwm: i32,
        silence: Duration,
        expect: SeriesExpect,
    ) -> Result<Self, Stream2Error> {
        Stream2Link::connect(endpoint, rcvhwm)?
            .next_series(silence, silence, expect)?
            .ok_or_else(|| Stream2Error::NoSeries {
                endpoint: endpoint.to_owned(),
                what: "start",
                timeout_s: silence.as_secs_f64(),
            })
    }

    /// The series being received.
    pub fn series(&self) -> &SeriesInfo {
        &self.series
    }

    /// The series' `start` message, as it came.
    pub fn start_message(&self) -> &[u8] {
        &self.start
    }

    /// What the series' `start` says of it, for the file: NXmx fields, and with
    /// `header_detail = all` the pixel masks, flatfields and count-rate table (decoded).
    pub fn metadata(&self) -> DetectorMetadata {
        match detflow_stream2::decode(&self.start) {
            Ok(Message::Start(start)) => metadata_of(&start),
            _ => DetectorMetadata::default(),
        }
    }

    /// The next message: the pending one, or one from the socket within `timeout`.
    fn next_message(&mut self, timeout: Duration) -> Result<Option<zmq::Message>, ErrorKind> {
        self.link.lock().next(timeout).map_err(|e| {
            tracing::error!("stream2 {}: receive failed: {e}", self.link.endpoint);
            ErrorKind::Other
        })
    }

    /// The series is over: the images that never came are reported lost, one by one.
    fn finish(&mut self, why: &str) {
        self.ended = true;
        let expected = self.series.images_here().unwrap_or(0);
        let all = self.series.number_of_images.unwrap_or(0);
        let got = self.received.range(..all).count() as u64;
        let damaged = self.damaged.range(..all).count() as u64;
        self.lost_to_report = expected.saturating_sub(got + damaged);
        let s = &self.series;
        let level_lost = self.lost_to_report;
        if level_lost > 0 {
            tracing::warn!(
                "series {} ({}): {why} with {got} of {expected} images; {level_lost} lost",
                s.id,
                s.unique_id
            );
        } else {
            tracing::info!("series {} ({}): {why} with {got} images", s.id, s.unique_id);
        }
    }

    /// Count a bad message: a log line naming the series and image, then `Corrupted`.
    fn corrupted(&self, image: Option<u64>, why: impl fmt::Display) -> ErrorKind {
        let s = &self.series;
        let image = image.map_or("a message".into(), |i| format!("image {i}"));
        tracing::error!(
            "series {} ({}): {image} is corrupted and counted: {why}",
            s.id,
            s.unique_id
        );
        ErrorKind::Corrupted
    }

    /// Copy one image message into `buf`, or say why it cannot be written.
    fn take_image(&mut self, image: &Image<'_>, buf: &mut [u8]) -> Result<ImageMeta, ErrorKind> {
        let id = image.image_id;
        let s = &self.series;
        if image.series.unique_id != s.unique_id || image.series.id != s.id {
            let why = format!(
                "it belongs to series {} ({}), not this one",
                image.series.id, image.series.unique_id
            );
            return Err(self.corrupted(Some(id), why));
        }
        if s.number_of_images.is_some_and(|n| id >= n) {
            return Err(self.corrupted(Some(id), "image_id past number_of_images"));
        }
        if self.received.contains(&id) {
            return Err(self.corrupted(Some(id), "this image_id arrived before"));
        }
        let number = match s.position(id) {
            Ok(number) => number,
            Err(why) => return Err(self.corrupted(Some(id), why)),
        };
        let (channels, end) = match copy_channels(&self.series, image, buf) {
            Ok(copied) => copied,
            Err(why) => {
                self.damaged.insert(id);
                return Err(self.corrupted(Some(id), why));
            }
        };
        let user_data = match image.user_data {
            Some(u) if u.len() > MAX_USER_DATA || end + u.len() > buf.len() => {
                self.damaged.insert(id);
                return Err(self.corrupted(Some(id), "user_data larger than 64 KiB"));
            }
            Some(u) => {
                buf[end..end + u.len()].copy_from_slice(u);
                Some(end..end + u.len())
            }
            None => None,
        };
        self.received.insert(id);
        self.delivered += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(ImageMeta {
            frame: FrameMeta {
                unique_id: self.delivered,
                timestamp: EpicsTimestamp::from_unix(now.as_secs(), now.subsec_nanos()),
                unix_time_s: now.as_secs_f64(),
                shape: self.series.shape,
            },
            number,
            image_id: id,
            channels,
            times: ImageTimes {
                real: image.real_time.map(ticks),
                start: image.start_time.map(ticks),
                stop: image.stop_time.map(ticks),
            },
            user_data,
        })
    }

    /// Handle one decoded message.
    fn handle(&mut self, msg: Message<'_>, buf: &mut [u8]) -> Result<ImageMeta, ErrorKind> {
        let s = &self.series;
        match msg {
            Message::Image(image) => self.take_image(&image, buf),
            Message::End(end) if end.series.unique_id == s.unique_id => {
                self.finish("ended");
                Err(self.next_loss())
            }
            Message::End(end) => {
                let why = format!(
                    "an end of series {} ({})",
                    end.series.id, end.series.unique_id
                );
                Err(self.corrupted(None, why))
            }
            Message::Start(start) => {
                let why = format!(
                    "a start of series {} ({}) before this one's end: this series closes",
                    start.series.id, start.series.unique_id
                );
                let e = self.corrupted(None, why);
                self.finish("closed by the next series' start");
                Err(e)
            }
        }
    }

    /// After the end: the next lost image, or the end itself.
    fn next_loss(&mut self) -> ErrorKind {
        if self.lost_to_report > 0 {
            self.lost_to_report -= 1;
            ErrorKind::FrameLost
        } else {
            ErrorKind::NotAcquiring
        }
    }
}

impl ErrorType for Stream2Source {
    type Error = ErrorKind;
}

impl Detector for Stream2Source {
    fn info(&self) -> SensorInfo {
        let s = &self.series;
        let mut model = heapless::String::new();
        let description = s.description.as_deref().unwrap_or("Stream V2 detector");
        for c in description.chars() {
            if model.push(c).is_err() {
                break;
            }
        }
        SensorInfo {
            manufacturer: heapless::String::try_from("DECTRIS Stream V2").unwrap_or_default(),
            model,
            max_width: s.shape.width,
            max_height: s.shape.height,
            pixel_types: heapless::Vec::from_slice(&[s.shape.pixel_type]).unwrap_or_default(),
        }
    }

    /// The series decides the frames: a configuration of another size or pixel type is
    /// refused.
    fn configure(&mut self, config: &AcquisitionConfig) -> Result<FrameShape, ErrorKind> {
        let shape = self.series.shape;
        let size = config.output_shape()?;
        if size != (shape.width, shape.height) || config.pixel_type != shape.pixel_type {
            return Err(ErrorKind::InvalidConfig);
        }
        Ok(shape)
    }

    fn start(&mut self) -> Result<(), ErrorKind> {
        self.started = true;
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ErrorKind> {
        if self.started && !self.ended {
            self.finish("stopped");
            self.lost_to_report = 0;
        }
        self.started = false;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.started && (!self.ended || self.lost_to_report > 0)
    }
}

impl ImageSource for Stream2Source {
    fn channel_names(&self) -> ChannelNames {
        let mut names = ChannelNames::new();
        for c in &self.series.channels {
            let name = heapless::String::try_from(c.as_str()).unwrap_or_default();
            // series_info refused more channels than fit.
            let _ = names.push(name);
        }
        names
    }

    fn encoding(&self) -> FrameEncoding {
        self.series.encoding
    }

    fn max_image_bytes(&self) -> usize {
        let s = &self.series;
        max_chunk_bytes(s.shape.bytes(), s.encoding) * s.channels.len() + MAX_USER_DATA
    }

    fn series_images(&self) -> Option<u64> {
        self.series.images_here()
    }

    fn read_image(&mut self, buf: &mut [u8], timeout: Duration) -> Result<ImageMeta, ErrorKind> {
        if !self.started {
            return Err(ErrorKind::NotAcquiring);
        }
        if self.ended {
            return Err(self.next_loss());
        }
        if buf.len() < self.max_image_bytes() {
            return Err(ErrorKind::InvalidConfig);
        }
        let Some(msg) = self.next_message(timeout)? else {
            if self.last_message.elapsed() >= self.silence {
                let why = format!(
                    "closed after {} s without a message",
                    self.silence.as_secs_f64()
                );
                self.finish(&why);
                return Err(self.next_loss());
            }
            return Err(ErrorKind::Timeout);
        };
        self.last_message = Instant::now();
        let (result, next_start) = match detflow_stream2::decode(&msg) {
            Ok(m) => {
                let next_start = matches!(m, Message::Start(_));
                (self.handle(m, buf), next_start)
            }
            Err(e) => {
                // An image of this series that arrived damaged is corrupted, not also lost.
                let id = detflow_stream2::peek(&msg)
                    .ok()
                    .filter(|h| h.series.unique_id == self.series.unique_id)
                    .and_then(|h| h.image_id)
                    .filter(|id| !self.received.contains(id) && self.series.is_mine(*id));
                if let Some(id) = id {
                    self.damaged.insert(id);
                }
                let e = self.corrupted(id, format!("malformed message: {e}"));
                (Err(e), false)
            }
        };
        if next_start {
            // The start that closed this series begins the next one on this link.
            self.link.lock().pending = Some(msg);
        }
        result
    }
}

/// The most bytes one channel of `raw` bytes takes in `encoding`: LZ4's worst case plus the
/// block headers of blocks of 512 bytes or more.
pub fn max_chunk_bytes(raw: usize, encoding: FrameEncoding) -> usize {
    match encoding {
        FrameEncoding::Raw => raw,
        _ => raw + raw / 16 + 4096,
    }
}

fn ticks(r: Rational) -> Ticks {
    Ticks {
        ticks: r.numerator,
        per_s: r.denominator,
    }
}

fn encoding_of(payload: &Payload<'_>) -> FrameEncoding {
    match payload {
        Payload::Raw(_) => FrameEncoding::Raw,
        Payload::Compressed {
            compression: Compression::Bslz4,
            ..
        } => FrameEncoding::BitshuffleLz4,
        Payload::Compressed { .. } => FrameEncoding::Lz4,
    }
}

fn payload_bytes<'a>(payload: &Payload<'a>) -> &'a [u8] {
    match payload {
        Payload::Raw(b) => b,
        Payload::Compressed { bytes, .. } => bytes,
    }
}

/// Copy the channels of `image` into `buf` in the series' channel order; their parts and the
/// end of the last.
fn copy_channels(
    series: &SeriesInfo,
    image: &Image<'_>,
    buf: &mut [u8],
) -> Result<
    (
        heapless::Vec<ChannelPart, { detflow_hal::MAX_CHANNELS }>,
        usize,
    ),
    String,
> {
    let shape = series.shape;
    let mut parts = heapless::Vec::new();
    let mut at = 0;
    for name in &series.channels {
        let Some((_, array)) = image.data.iter().find(|(n, _)| n == name) else {
            return Err(format!("channel {name} is missing"));
        };
        let dims = [u64::from(shape.height), u64::from(shape.width)];
        if array.dims != dims {
            return Err(format!(
                "channel {name} has dims {:?}, the series {dims:?}",
                array.dims
            ));
        }
        if array.array.pixel_type() != Some(shape.pixel_type) {
            return Err(format!(
                "channel {name} has typed-array tag {}, the series' pixel type is {}",
                array.array.tag, shape.pixel_type
            ));
        }
        let encoding = encoding_of(&array.array.payload);
        if encoding != series.encoding {
            return Err(format!(
                "channel {name} is {encoding}, the series {}",
                series.encoding
            ));
        }
        let bytes = payload_bytes(&array.array.payload);
        let end = at + bytes.len();
        if bytes.len() > max_chunk_bytes(shape.bytes(), encoding) || end > buf.len() {
            return Err(format!(
                "channel {name}: {} bytes do not fit a ring slot",
                bytes.len()
            ));
        }
        buf[at..end].copy_from_slice(bytes);
        let part = ChannelPart {
            encoding,
            bytes: at..end,
        };
        parts
            .push(part)
            .map_err(|_| "too many channels".to_string())?;
        at = end;
    }
    Ok((parts, at))
}

/// Receive one message within `timeout`, or `None`. A signal handled meanwhile (SIGUSR1's
/// flush, SIGTERM's clean stop) interrupts poll(2), which is never restarted: the wait goes
/// on to its deadline.
fn recv(socket: &zmq::Socket, timeout: Duration) -> Result<Option<zmq::Message>, zmq::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        match socket.poll(zmq::POLLIN, ms) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(zmq::Error::EINTR) if !left.is_zero() => {}
            Err(zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    loop {
        match socket.recv_msg(zmq::DONTWAIT) {
            Ok(m) => return Ok(Some(m)),
            Err(zmq::Error::EINTR) => {}
            // Polled readable, then taken by no one else: not expected; wait again later.
            Err(zmq::Error::EAGAIN) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Skip messages until a `start` (logging what is skipped), within `wait` of each other.
fn wait_for_start(
    link: &mut Socketry,
    wait: Duration,
    endpoint: &str,
) -> Result<Option<zmq::Message>, Stream2Error> {
    loop {
        let Some(msg) = link.next(wait).map_err(socket_error(endpoint))? else {
            return Ok(None);
        };
        match detflow_stream2::peek(&msg) {
            Ok(h) if h.kind == detflow_stream2::MessageKind::Start => {
                link.log_skipped(endpoint);
                return Ok(Some(msg));
            }
            Ok(h) => link.skip(endpoint, Some(h)),
            Err(e) => {
                tracing::debug!("stream2 {endpoint}: a malformed message: {e}");
                link.skip(endpoint, None);
            }
        }
    }
}

/// The series `start` and its next message describe.
fn series_info(start: &[u8], first: &[u8]) -> Result<SeriesInfo, Stream2Error> {
    let unusable = |series, reason: String| Stream2Error::Unusable { series, reason };
    let Ok(Message::Start(s)) = detflow_stream2::decode(start) else {
        let e = detflow_stream2::decode(start).err();
        return Err(unusable(
            0,
            format!("its start message does not decode: {e:?}"),
        ));
    };
    let id = s.series.id;
    for r in &s.rejected {
        tracing::warn!(
            "series {id} ({}): start key {} is not used: {}",
            s.series.unique_id,
            r.key,
            r.error
        );
    }
    let (width, height) = match (s.image_size_x, s.image_size_y) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(unusable(
                id,
                "no image_size_x/image_size_y in its start".into(),
            ));
        }
    };
    let first_image = match detflow_stream2::decode(first) {
        Ok(Message::Image(i)) if i.series.unique_id == s.series.unique_id => Some(i),
        _ => None,
    };
    let first_array = first_image.as_ref().and_then(|i| i.data.first());
    let pixel_type = s
        .image_dtype
        .or_else(|| first_array.and_then(|(_, a)| a.array.pixel_type()))
        .ok_or_else(|| unusable(id, "no image_dtype, and no image to tell it".into()))?;
    let encoding = first_array.map_or(FrameEncoding::Raw, |(_, a)| encoding_of(&a.array.payload));
    let channels = channels_of(&s, first_image.as_ref());
    let rank = RankKeys::from_start(&s)
        .map_err(|e| unusable(id, format!("its start's fan-out keys: {e}")))?;
    if channels.is_empty() || channels.len() > detflow_hal::MAX_CHANNELS {
        return Err(unusable(
            id,
            format!(
                "{} channels (1 to {} can be written)",
                channels.len(),
                detflow_hal::MAX_CHANNELS
            ),
        ));
    }
    if let Some(long) = channels
        .iter()
        .find(|c| c.len() > detflow_hal::MAX_CHANNEL_NAME)
    {
        return Err(unusable(id, format!("channel name {long:?} is too long")));
    }
    Ok(SeriesInfo {
        id,
        unique_id: s.series.unique_id.to_owned(),
        shape: FrameShape {
            width,
            height,
            pixel_type,
            color_mode: ColorMode::Mono,
        },
        channels,
        encoding,
        number_of_images: s.number_of_images,
        description: s.detector_description.map(str::to_owned),
        count_time: s.count_time,
        frame_time: s.frame_time,
        rank,
    })
}

/// The channels of a series: its start's `channels`, else the first image's.
fn channels_of(start: &Start<'_>, first: Option<&Image<'_>>) -> Vec<String> {
    if !start.channels.is_empty() {
        return start.channels.iter().map(|c| (*c).to_owned()).collect();
    }
    first.map_or_else(Vec::new, |i| {
        i.data.iter().map(|(n, _)| (*n).to_owned()).collect()
    })
}

fn check_expect(series: &SeriesInfo, expect: SeriesExpect) -> Result<(), Stream2Error> {
    let s = series;
    let contradicts = |setting, given: String, series_value: String| Stream2Error::Contradicts {
        setting,
        given,
        series: s.id,
        series_value,
    };
    let size = (s.shape.width, s.shape.height);
    if let Some(given) = expect.size.filter(|g| *g != size) {
        return Err(contradicts(
            "size",
            format!("{}x{}", given.0, given.1),
            format!("{}x{}", size.0, size.1),
        ));
    }
    if let Some(given) = expect.dtype.filter(|g| *g != s.shape.pixel_type) {
        return Err(contradicts(
            "dtype",
            given.to_string(),
            s.shape.pixel_type.to_string(),
        ));
    }
    match (expect.frames, s.number_of_images) {
        (Some(given), Some(n)) if given != n => Err(contradicts(
            "frames",
            given.to_string(),
            format!("number_of_images {n}"),
        )),
        _ => Ok(()),
    }
}

/// The file's metadata from a `start` message. A table that does not decode is left out,
/// with a log line.
fn metadata_of(s: &Start<'_>) -> DetectorMetadata {
    let owned = |v: Option<&str>| v.map(str::to_owned);
    let tables = |named: &[(&str, detflow_stream2::MultiDimArray<'_>)], what: &str| {
        named
            .iter()
            .filter_map(|(name, array)| {
                let dims = array.dims.iter().map(|&d| d as usize).collect();
                let table = table(&array.array, dims, s, &format!("{what} {name}"))?;
                Some(((*name).to_owned(), table))
            })
            .collect()
    };
    let lut = s.countrate_correction_lookup_table.as_ref().and_then(|t| {
        let elems = t.payload.uncompressed_size()? as usize / t.elem_size().max(1);
        table(t, vec![elems], s, "countrate_correction_lookup_table")
    });
    DetectorMetadata {
        series_id: Some(s.series.id),
        series_unique_id: Some(s.series.unique_id.to_owned()),
        arm_date: owned(s.arm_date),
        description: owned(s.detector_description),
        serial_number: owned(s.detector_serial_number),
        sensor_material: owned(s.sensor_material),
        sensor_thickness_m: s.sensor_thickness,
        beam_center_x_px: s.beam_center_x,
        beam_center_y_px: s.beam_center_y,
        count_time_s: s.count_time,
        frame_time_s: s.frame_time,
        pixel_size_x_m: s.pixel_size_x,
        pixel_size_y_m: s.pixel_size_y,
        incident_wavelength_a: s.incident_wavelength,
        incident_energy_ev: s.incident_energy,
        saturation_value: s.saturation_value,
        threshold_energy_ev: s
            .threshold_energy
            .iter()
            .map(|(n, e)| ((*n).to_owned(), *e))
            .collect(),
        detector_translation_m: s.detector_translation,
        goniometer: s
            .goniometer
            .iter()
            .map(|(n, a)| ((*n).to_owned(), a.start, a.increment))
            .collect(),
        countrate_correction_enabled: s.countrate_correction_enabled,
        flatfield_enabled: s.flatfield_enabled,
        pixel_mask_enabled: s.pixel_mask_enabled,
        virtual_pixel_interpolation_enabled: s.virtual_pixel_interpolation_enabled,
        pixel_mask: tables(&s.pixel_mask, "pixel_mask"),
        flatfield: tables(&s.flatfield, "flatfield"),
        countrate_correction_lookup_table: lut,
        user_data_cbor: s.user_data.map(<[u8]>::to_vec),
        user_data_json: s.user_data.and_then(detflow_stream2::user_data_json),
        rank: RankKeys::from_start(s)
            .ok()
            .flatten()
            .map(|RankKeys { rank, deal }| RankShare {
                rank,
                deal,
                number_of_images: s.number_of_images,
            }),
    }
}

/// A typed array of the start message, decoded, as a table of `dims`.
fn table(
    array: &detflow_stream2::TypedArray<'_>,
    dims: Vec<usize>,
    s: &Start<'_>,
    what: &str,
) -> Option<Table> {
    let skip = |why: String| {
        tracing::warn!(
            "series {} ({}): {what} is not written: {why}",
            s.series.id,
            s.series.unique_id
        );
    };
    let Some(pixel_type) = array.pixel_type() else {
        skip(format!(
            "typed-array tag {} is not one detflow writes",
            array.tag
        ));
        return None;
    };
    let bytes = match &array.payload {
        Payload::Raw(b) => b.to_vec(),
        Payload::Compressed {
            compression, bytes, ..
        } => {
            let codec = match compression {
                Compression::Bslz4 => Codec::BitshuffleLz4,
                Compression::Lz4 => Codec::Lz4,
            };
            match codec.decode(pixel_type, bytes) {
                Ok(raw) => raw,
                Err(e) => {
                    skip(e.to_string());
                    return None;
                }
            }
        }
    };
    if bytes.len() != dims.iter().product::<usize>() * pixel_type.size() {
        skip(format!("{} bytes for dims {dims:?}", bytes.len()));
        return None;
    }
    Some(Table {
        dims,
        pixel_type,
        bytes,
    })
}
