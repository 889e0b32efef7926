//! Where the writer thread puts encoded frames: a [`FrameSink`]. Two sinks exist: the
//! [`OwnedCapture`] of `detflow acquire`, which ends with the run (and ends the run when its
//! capture is complete), and the daemon's file plugin, a [`SharedCapture`] whose captures
//! open and close while frames flow and outlive the run.
//!
//! A daemon that receives detector series (Stream V2) arms its plugin instead
//! ([`SharedCapture::arm`]): the file opens at the first image of a series that reaches the
//! writer, with the channels and metadata the series gives, and closes when the series ends.
//!
//! The writer thread is the only one that calls a sink, and the only one that talks to HDF5
//! during a run. A [`SharedCapture`]'s lock is held only to take its session out or put it
//! back: the writer writes with the session checked out, and a close or flush that a Channel
//! Access thread asks for meanwhile is done by the writer right after its frame.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use detflow_hal::FrameMeta;
use detflow_writer::{
    CaptureSession, CaptureSettings, Codec, FileStatus, FrameGeometry, ImageLayout, ImageWrite,
    Pushed, WriterError,
};

use crate::compress::{CodecCell, Encoding};
use crate::config::CodecSetting;
use crate::error::RunError;
use crate::event::Observer;
use crate::status::Run;

/// What a sink did with a frame.
#[derive(Debug)]
pub enum Push {
    /// Written (or buffered for writing).
    Written,
    /// Written, and the sink takes no more: the run stops acquiring and drains.
    Last,
    /// Passed by on purpose (no capture open, the plugin disabled, or encoded for another
    /// codec): counted as not captured.
    Passed,
    /// Not written: counted as dropped. With an error, the run fails with it; without, the
    /// sink reported what happened itself (a shared capture ended) and the run goes on.
    Dropped(Option<RunError>),
}

/// A destination of encoded frames, driven by the writer thread in ring order.
pub trait FrameSink: Send {
    /// How frames are to be encoded for this sink.
    fn encoding(&self) -> Encoding;
    /// The files' readbacks before the first frame.
    fn readbacks(&self) -> FileStatus;
    /// Take one frame, encoded with `codec` into `chunk`.
    fn push(&mut self, frame: &FrameMeta, chunk: &[u8], codec: Codec, report: &SinkReport) -> Push;
    /// Between frames: flush now if `asked` (areaDetector FlushNow), else if `idle` and the
    /// flush interval passed. An error fails the run.
    fn flush_if_due(
        &mut self,
        asked: bool,
        idle: bool,
        report: &SinkReport,
    ) -> Result<(), RunError>;
    /// The ring is drained: close or flush what is open. An error fails the run.
    fn finish(self: Box<Self>, report: &SinkReport) -> Result<(), RunError>;
}

/// What a sink tells the run: its files' readbacks, and what the observer hears.
pub struct SinkReport<'a> {
    pub(crate) run: &'a Run,
    pub(crate) observer: Option<&'a dyn Observer>,
}

impl std::fmt::Debug for SinkReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkReport").finish_non_exhaustive()
    }
}

impl SinkReport<'_> {
    /// The files' readbacks changed (a file opened or closed, a message).
    pub fn files(&self, status: &FileStatus) {
        self.run.publish(status);
    }

    /// The sink's last readbacks, with every value reference: they replace the others.
    pub fn last_files(&self, status: FileStatus) {
        self.run.publish_final(status);
    }

    /// A frame went into a shared capture.
    pub fn frame_captured(&self, status: &FileStatus) {
        self.run.publish(status);
        if let Some(o) = self.observer {
            o.frame_captured(status);
        }
    }

    /// A shared capture ended and its files are closed.
    pub fn capture_ended(&self, status: &FileStatus, error: Option<&str>) {
        self.run.publish(status);
        if let Some(o) = self.observer {
            o.capture_ended(status, error);
        }
    }
}

/// The run's own capture (the CLI): it opens with the run, ends with it, and a complete
/// capture stops the detector.
#[derive(Debug)]
pub struct OwnedCapture {
    session: Box<CaptureSession>,
    /// Chunks are image records ([`crate::record`]), for a session with an image layout.
    images: bool,
}

impl OwnedCapture {
    /// A sink writing frames to `session`.
    pub fn new(session: CaptureSession) -> Self {
        OwnedCapture {
            session: Box::new(session),
            images: false,
        }
    }

    /// A sink writing images (records of an image source) to `session`, started with an
    /// image layout.
    pub(crate) fn images(session: CaptureSession) -> Self {
        OwnedCapture {
            session: Box::new(session),
            images: true,
        }
    }
}

/// Write the image record `chunk` into `session`, at its number, every channel.
pub(crate) fn push_record(
    session: &mut CaptureSession,
    frame: &FrameMeta,
    chunk: &[u8],
) -> Result<Pushed, WriterError> {
    let Some(record) = crate::record::read(chunk) else {
        return Err(WriterError::Setting {
            setting: "image record",
            value: format!("frame {}", frame.unique_id),
            reason: "the ring slot holds no image record".into(),
        });
    };
    let channels: heapless::Vec<&[u8], { detflow_hal::MAX_CHANNELS }> =
        record.channels.iter().map(|(_, c)| *c).collect();
    let json = record.user_data.and_then(detflow_stream2::user_data_json);
    let pair = |t: Option<detflow_hal::Ticks>| t.map(|t| (t.ticks, t.per_s));
    let image = ImageWrite {
        number: record.number,
        channels: &channels,
        image_id: record.image_id,
        real_time: pair(record.times.real),
        start_time: pair(record.times.start),
        stop_time: pair(record.times.stop),
        user_data_cbor: record.user_data,
        user_data_json: json.as_deref(),
    };
    session.push_image(frame, &image)
}

impl FrameSink for OwnedCapture {
    fn encoding(&self) -> Encoding {
        Encoding::Fixed(self.session.settings().codec)
    }

    fn readbacks(&self) -> FileStatus {
        self.session.status().clone()
    }

    fn push(&mut self, frame: &FrameMeta, chunk: &[u8], codec: Codec, report: &SinkReport) -> Push {
        debug_assert_eq!(codec, self.session.settings().codec);
        let pushed = if self.images {
            push_record(&mut self.session, frame, chunk)
        } else {
            self.session.push(frame, chunk)
        };
        report.files(self.session.status());
        match pushed {
            Ok(Pushed::Accepted) => Push::Written,
            // NumCapture reached: the files are closed; the detector stops.
            Ok(Pushed::Complete) => Push::Last,
            // An image the file refuses (its number again, past the end) is dropped; the
            // capture goes on.
            Err(e @ WriterError::Image { .. }) => {
                tracing::error!("{e}: the image is dropped");
                Push::Dropped(None)
            }
            Err(e) => Push::Dropped(Some(e.into())),
        }
    }

    fn flush_if_due(
        &mut self,
        asked: bool,
        idle: bool,
        report: &SinkReport,
    ) -> Result<(), RunError> {
        let flushed = if asked {
            self.session.flush()
        } else if idle {
            self.session.flush_if_due()
        } else {
            Ok(())
        };
        // A failed flush closed the file (or the file was deleted): the run fails as on a
        // write error.
        flushed.map_err(|e| {
            report.files(self.session.status());
            e.into()
        })
    }

    fn finish(self: Box<Self>, report: &SinkReport) -> Result<(), RunError> {
        let (status, finished) = self.session.finish();
        report.last_files(status);
        finished.map_err(RunError::from)
    }
}

/// Where the session of a [`SharedCapture`] is.
#[derive(Debug, Default)]
enum Held {
    /// No capture open.
    #[default]
    Empty,
    /// Open, and here.
    Here(Box<CaptureSession>),
    /// Capture = 1 with no file yet: the writer opens it at the next series' first image.
    Armed(Box<ArmedCapture>),
    /// Open (or armed), and taken out by a thread that writes or flushes it.
    Out,
}

/// A capture armed for the next series: the settings its file opens with, and the codec as
/// set (`auto`: the series' own compression, passed through).
#[derive(Debug, Clone)]
struct ArmedCapture {
    settings: CaptureSettings,
    codec: CodecSetting,
}

impl ArmedCapture {
    /// The readbacks of an armed capture that ends before its file opens.
    fn status(&self, error: Option<&str>) -> FileStatus {
        let naming = &self.settings.naming;
        FileStatus {
            file_path: naming.path.clone(),
            file_number: naming.number,
            write_ok: error.is_none(),
            write_message: error.unwrap_or_default().to_owned(),
            ..FileStatus::default()
        }
    }
}

/// What [`SharedCapture::take`] took out.
#[derive(Debug)]
enum Taken {
    /// An open capture.
    Session(Box<CaptureSession>),
    /// An armed capture, for the writer to open (only taken for a frame).
    Armed(Box<ArmedCapture>),
}

/// What was asked of a capture while it was taken out.
#[derive(Debug, Default)]
struct Asked {
    flush: bool,
    /// Close it, with this failure (if any).
    close: Option<Option<String>>,
}

/// The inside of a [`SharedCapture`], behind its lock.
#[derive(Debug)]
struct Slot {
    session: Held,
    /// The open capture's codec (also while it is taken out).
    codec: Option<Codec>,
    asked: Asked,
    /// EnableCallbacks: a disabled plugin takes no frames.
    enabled: bool,
    /// The readbacks of the last capture that ended, with the reason when it failed.
    last: Option<(FileStatus, Option<String>)>,
}

/// A file plugin shared by the daemon and the writer thread of each run (areaDetector's
/// NDFileHDF5): its capture starts and stops while frames flow and lives across
/// acquisitions. While no capture is open (or the plugin is disabled) frames pass it by
/// without being written, and are counted as `frames_not_captured`, not as dropped.
///
/// Codec switches: a capture opened with another codec than the run's sets the plugin's
/// [`CodecCell`], which the compressors read per frame. The frames already encoded with the
/// old codec when it opens (at most the pool's `2 x workers + 2` chunks in flight) are not
/// written; they are counted as not captured, as frames that arrive before `Capture = 1` are.
#[derive(Debug)]
pub struct SharedCapture {
    slot: Mutex<Slot>,
    /// Signalled whenever a taken-out session comes back (or ends).
    returned: Condvar,
    codec: Arc<CodecCell>,
}

/// A capture that ended: its final readbacks, and its failure if it failed.
#[derive(Debug, Clone)]
pub struct CaptureEnd {
    /// The readbacks after its files were closed.
    pub status: FileStatus,
    /// Why it ended, if it failed.
    pub error: Option<String>,
}

/// What [`SharedCapture::close`] did.
#[derive(Debug)]
pub enum Closed {
    /// No capture was open.
    NotOpen,
    /// The capture was armed and no file had opened: disarmed.
    Disarmed,
    /// Closed on the calling thread.
    Now(Box<CaptureEnd>),
    /// The writer thread holds it: it closes it after its frame and tells the run's
    /// [`Observer::capture_ended`].
    Later,
}

/// What [`SharedCapture::flush`] did.
#[derive(Debug)]
pub enum Flushed {
    /// No capture was open.
    NotOpen,
    /// Flushed on the calling thread.
    Done,
    /// The writer thread holds it: it flushes it after its frame.
    Later,
    /// The capture ended on the calling thread (the flush failed, or a close was asked for
    /// meanwhile).
    Ended(Box<CaptureEnd>),
}

impl SharedCapture {
    /// A plugin with no capture open.
    pub fn new(enabled: bool) -> Self {
        SharedCapture {
            slot: Mutex::new(Slot {
                session: Held::Empty,
                codec: None,
                asked: Asked::default(),
                enabled,
                last: None,
            }),
            returned: Condvar::new(),
            codec: Arc::new(CodecCell::new(Codec::None)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// EnableCallbacks.
    pub fn set_enabled(&self, on: bool) {
        self.lock().enabled = on;
    }

    /// True while a capture is open.
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().session, Held::Empty)
    }

    /// The open capture's codec.
    pub fn codec(&self) -> Option<Codec> {
        self.lock().codec
    }

    /// The readbacks of the last capture that ended, and its failure.
    pub fn last(&self) -> Option<(FileStatus, Option<String>)> {
        self.lock().last.clone()
    }

    /// Open `session` as the plugin's capture; frames are encoded with its codec from the
    /// next one a compressor takes on. A capture already open refuses it (given back).
    pub fn open(&self, session: CaptureSession) -> Result<(), Box<CaptureSession>> {
        let mut slot = self.lock();
        if !matches!(slot.session, Held::Empty) {
            return Err(Box::new(session));
        }
        let codec = session.settings().codec;
        slot.session = Held::Here(Box::new(session));
        slot.codec = Some(codec);
        slot.asked = Asked::default();
        self.codec.set(codec);
        Ok(())
    }

    /// Arm the plugin for the next series (Capture = 1 in a daemon that receives series):
    /// its file opens with `settings` at the first image of a series that reaches the writer
    /// (with that series' channels, metadata and, when 0, NumCapture its image count), and
    /// closes when the series ends. `codec` `auto` writes the images as they arrive. False
    /// (and nothing armed) while a capture is open or armed already.
    #[must_use]
    pub fn arm(&self, settings: CaptureSettings, codec: CodecSetting) -> bool {
        let mut slot = self.lock();
        if !matches!(slot.session, Held::Empty) {
            return false;
        }
        slot.session = Held::Armed(Box::new(ArmedCapture { settings, codec }));
        slot.asked = Asked::default();
        slot.codec = match codec {
            CodecSetting::Is(c) => {
                self.codec.set(c);
                Some(c)
            }
            // The run's codec stays: the series' compression, when the config says auto.
            CodecSetting::Auto => None,
        };
        true
    }

    /// Close the capture (Capture = 0, or shutting down), with `failure` as its error if
    /// given. No lock is held while its files are closed.
    pub fn close(&self, failure: Option<String>) -> Closed {
        let mut slot = self.lock();
        match std::mem::take(&mut slot.session) {
            Held::Empty => Closed::NotOpen,
            Held::Armed(_) => {
                slot.codec = None;
                slot.asked = Asked::default();
                Closed::Disarmed
            }
            Held::Out => {
                slot.session = Held::Out;
                slot.asked.close = Some(failure);
                Closed::Later
            }
            Held::Here(session) => {
                slot.codec = None;
                slot.asked = Asked::default();
                drop(slot);
                Closed::Now(Box::new(self.end(*session, failure)))
            }
        }
    }

    /// Make every frame written so far visible to readers now (areaDetector FlushNow). No
    /// lock is held while it flushes.
    pub fn flush(&self) -> Flushed {
        let mut slot = self.lock();
        let session = match std::mem::replace(&mut slot.session, Held::Out) {
            Held::Here(session) => session,
            Held::Out => {
                slot.asked.flush = true;
                return Flushed::Later;
            }
            Held::Empty => {
                slot.session = Held::Empty;
                return Flushed::NotOpen;
            }
            Held::Armed(armed) => {
                slot.session = Held::Armed(armed);
                return Flushed::NotOpen;
            }
        };
        drop(slot);
        let mut session = session;
        if let Err(e) = session.flush() {
            // The failed flush closed the capture's file: the capture ends with it.
            let end = self.end(*session, Some(format!("FlushNow: {e}")));
            return Flushed::Ended(Box::new(end));
        }
        match self.give_back(session) {
            None => Flushed::Done,
            Some((session, failure)) => Flushed::Ended(Box::new(self.end(*session, failure))),
        }
    }

    /// Finish `session` (no lock held), keep its readbacks as the last, let waiters on.
    fn end(&self, session: CaptureSession, failure: Option<String>) -> CaptureEnd {
        let (mut status, finished) = session.finish();
        let failure = failure.or_else(|| finished.err().map(|e| e.to_string()));
        if let Some(message) = &failure {
            status.write_ok = false;
            status.write_message.clone_from(message);
        }
        self.ended(status, failure)
    }

    /// A capture the caller took out has ended with `status`: the slot is empty again, the
    /// readbacks are kept as the last, waiters go on.
    fn ended(&self, status: FileStatus, failure: Option<String>) -> CaptureEnd {
        let mut slot = self.lock();
        if matches!(slot.session, Held::Out) {
            // Ours: the caller took it out.
            slot.session = Held::Empty;
            slot.codec = None;
            slot.asked = Asked::default();
        }
        slot.last = Some((status.clone(), failure.clone()));
        drop(slot);
        self.returned.notify_all();
        CaptureEnd {
            status,
            error: failure,
        }
    }

    /// Take the session out. For a frame (`for_frame`), a disabled plugin gives none, an
    /// armed capture is given to be opened, and a session a Channel Access thread holds is
    /// waited for; otherwise such a session is left to that thread.
    fn take(&self, for_frame: bool) -> Option<Taken> {
        self.take_waiting(for_frame, for_frame)
    }

    /// [`take`](Self::take) the session to close it when a series ended: a session a
    /// Channel Access thread holds is waited for, whether the plugin is enabled or not; an
    /// armed capture stays armed.
    fn take_to_close(&self) -> Option<Box<CaptureSession>> {
        match self.take_waiting(false, true)? {
            Taken::Session(session) => Some(session),
            Taken::Armed(_) => unreachable!("an armed capture is taken for frames only"),
        }
    }

    fn take_waiting(&self, for_frame: bool, wait: bool) -> Option<Taken> {
        let mut slot = self.lock();
        loop {
            if for_frame && !slot.enabled {
                return None;
            }
            match std::mem::replace(&mut slot.session, Held::Out) {
                Held::Here(session) => return Some(Taken::Session(session)),
                Held::Armed(armed) if for_frame => return Some(Taken::Armed(armed)),
                Held::Armed(armed) => {
                    slot.session = Held::Armed(armed);
                    return None;
                }
                Held::Empty => {
                    slot.session = Held::Empty;
                    return None;
                }
                Held::Out if !wait => return None,
                // A Channel Access thread is flushing it: the frame waits for it (the flush
                // holds HDF5's own lock anyway). Bounded waits, each rechecked.
                Held::Out => {
                    slot = self
                        .returned
                        .wait_timeout(slot, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Put back an armed capture the writer took and did not open, unless a close was asked
    /// for meanwhile: then it ends, and its readbacks and failure are returned.
    fn rearm(&self, armed: Box<ArmedCapture>) -> Option<CaptureEnd> {
        let mut slot = self.lock();
        if let Some(failure) = slot.asked.close.take() {
            drop(slot);
            return Some(self.end_unopened(&armed, failure));
        }
        slot.session = Held::Armed(armed);
        drop(slot);
        self.returned.notify_all();
        None
    }

    /// An armed capture the writer took ends without a file (its open failed, or a close was
    /// asked for): keep its readbacks as the last, let waiters on.
    fn end_unopened(&self, armed: &ArmedCapture, failure: Option<String>) -> CaptureEnd {
        self.ended(armed.status(failure.as_deref()), failure)
    }

    /// Put a taken session back, unless a close was asked for meanwhile: then it is given
    /// back to the caller with the failure to close it with. A flush asked for meanwhile is
    /// done here first.
    #[allow(clippy::type_complexity)]
    fn give_back(
        &self,
        mut session: Box<CaptureSession>,
    ) -> Option<(Box<CaptureSession>, Option<String>)> {
        loop {
            let mut slot = self.lock();
            if let Some(failure) = slot.asked.close.take() {
                return Some((session, failure));
            }
            if !std::mem::take(&mut slot.asked.flush) {
                slot.session = Held::Here(session);
                drop(slot);
                self.returned.notify_all();
                return None;
            }
            drop(slot);
            if let Err(e) = session.flush() {
                return Some((session, Some(format!("FlushNow: {e}"))));
            }
        }
    }

    /// Before a run: frames are encoded with the open capture's codec, or with `codec`
    /// while none is open.
    fn prefer(&self, codec: Codec) {
        let slot = self.lock();
        self.codec.set(slot.codec.unwrap_or(codec));
    }
}

/// What the writer needs to open an armed capture's file for a series of images: where its
/// frames sit, its channels and metadata, its image count.
#[derive(Debug, Clone)]
pub(crate) struct SeriesFiles {
    pub(crate) geometry: FrameGeometry,
    pub(crate) layout: ImageLayout,
    pub(crate) number_of_images: Option<u64>,
}

/// The writer's side of a [`SharedCapture`].
#[derive(Debug)]
pub(crate) struct SharedSink {
    plugin: Arc<SharedCapture>,
    /// The run is one series of images (slots hold image records): an armed capture opens
    /// its file for it, and the file closes when the run ends.
    series: Option<SeriesFiles>,
    /// An image of this series passed the plugin by: the series is written whole or not at
    /// all, so a capture armed since waits for the next series.
    passed_by: bool,
}

/// What became of an armed capture the writer took for a frame.
enum Opening {
    /// Its file is open.
    Open(Box<CaptureSession>),
    /// Not opened for this frame (encoded for another codec, or not a series); put back.
    Passed,
    /// It ended (the open failed, or a close was asked for meanwhile).
    Ended,
}

impl SharedSink {
    /// A sink for a run whose frames are encoded with `codec` while no capture is open;
    /// `series` for a run of one detector series.
    pub(crate) fn new(
        plugin: Arc<SharedCapture>,
        codec: Codec,
        series: Option<SeriesFiles>,
    ) -> Self {
        plugin.prefer(codec);
        SharedSink {
            plugin,
            series,
            passed_by: false,
        }
    }

    /// The writer ends the capture (no lock held) and tells the observer.
    fn end(&self, session: Box<CaptureSession>, failure: Option<String>, report: &SinkReport) {
        let end = self.plugin.end(*session, failure);
        report.capture_ended(&end.status, end.error.as_deref());
    }

    /// Put the session back, doing what was asked for meanwhile.
    fn give_back(&self, session: Box<CaptureSession>, report: &SinkReport) {
        if let Some((session, failure)) = self.plugin.give_back(session) {
            self.end(session, failure, report);
        }
    }

    /// Put an armed capture back; tell the observer if it ended meanwhile.
    fn rearm(&self, armed: Box<ArmedCapture>, report: &SinkReport) -> Opening {
        match self.plugin.rearm(armed) {
            None => Opening::Passed,
            Some(end) => {
                report.capture_ended(&end.status, end.error.as_deref());
                Opening::Ended
            }
        }
    }

    /// Open the file of an armed capture for this series, at a frame encoded with `codec`:
    /// the codec as set (`auto`: as the images arrive), NumCapture 0 taken as the series'
    /// image count, the series' channels and metadata.
    fn open_armed(&self, armed: Box<ArmedCapture>, codec: Codec, report: &SinkReport) -> Opening {
        let Some(series) = &self.series else {
            return self.rearm(armed, report);
        };
        // Encoded before the capture's codec reached the compressors, or armed after this
        // series began to pass by: the capture waits for the next series.
        if self.passed_by || armed.codec.resolve(codec) != codec {
            return self.rearm(armed, report);
        }
        let mut settings = armed.settings.clone();
        settings.codec = codec;
        if settings.num_capture == 0 {
            settings.num_capture = series.number_of_images.unwrap_or(0);
        }
        let layout = series.layout.clone();
        match CaptureSession::start_images(settings, series.geometry, layout) {
            Ok(session) => {
                tracing::info!(
                    file = %session.status().full_file_name.display(),
                    "capture file opened for the series"
                );
                report.files(session.status());
                Opening::Open(Box::new(session))
            }
            Err(e) => {
                let end = self.plugin.end_unopened(&armed, Some(e.to_string()));
                report.capture_ended(&end.status, end.error.as_deref());
                Opening::Ended
            }
        }
    }

    /// Write one frame into the open capture, opening an armed one for this series.
    fn push_one(
        &mut self,
        frame: &FrameMeta,
        chunk: &[u8],
        codec: Codec,
        report: &SinkReport,
    ) -> Push {
        let mut session = match self.plugin.take(true) {
            None => return Push::Passed,
            Some(Taken::Session(session)) => session,
            Some(Taken::Armed(armed)) => match self.open_armed(armed, codec, report) {
                Opening::Open(session) => session,
                Opening::Passed => return Push::Passed,
                Opening::Ended => return Push::Dropped(None),
            },
        };
        if session.settings().codec != codec {
            // Encoded before a capture with another codec opened.
            self.give_back(session, report);
            return Push::Passed;
        }
        let pushed = match self.series {
            Some(_) => push_record(&mut session, frame, chunk),
            None => session.push(frame, chunk),
        };
        match pushed {
            Ok(Pushed::Accepted) => {
                report.frame_captured(session.status());
                self.give_back(session, report);
                Push::Written
            }
            Ok(Pushed::Complete) => {
                self.end(session, None, report);
                Push::Written
            }
            // An image the file refuses (its number again, past NumCapture) is dropped; the
            // capture goes on.
            Err(e @ WriterError::Image { .. }) => {
                tracing::error!("{e}: the image is dropped");
                self.give_back(session, report);
                Push::Dropped(None)
            }
            Err(e) => {
                // The capture ends with the error; acquisition goes on.
                self.end(session, Some(e.to_string()), report);
                Push::Dropped(None)
            }
        }
    }
}

impl FrameSink for SharedSink {
    fn encoding(&self) -> Encoding {
        Encoding::Follows(self.plugin.codec.clone())
    }

    fn readbacks(&self) -> FileStatus {
        let slot = self.plugin.lock();
        match (&slot.session, &slot.last) {
            (Held::Here(session), _) => session.status().clone(),
            (_, Some((status, _))) => status.clone(),
            _ => FileStatus::default(),
        }
    }

    fn push(&mut self, frame: &FrameMeta, chunk: &[u8], codec: Codec, report: &SinkReport) -> Push {
        let push = self.push_one(frame, chunk, codec, report);
        if matches!(push, Push::Passed) {
            self.passed_by = true;
        }
        push
    }

    fn flush_if_due(
        &mut self,
        asked: bool,
        idle: bool,
        report: &SinkReport,
    ) -> Result<(), RunError> {
        if !asked && !idle {
            return Ok(());
        }
        let Some(Taken::Session(mut session)) = self.plugin.take(false) else {
            return Ok(());
        };
        let flushed = if asked {
            session.flush()
        } else {
            session.flush_if_due()
        };
        match flushed {
            // The capture ends with the error (Write Error); acquisition goes on.
            Err(e) => self.end(session, Some(e.to_string()), report),
            Ok(()) => self.give_back(session, report),
        }
        Ok(())
    }

    fn finish(self: Box<Self>, report: &SinkReport) -> Result<(), RunError> {
        if self.series.is_some() {
            // One file per series: the series is over, so is its file (a capture still
            // armed waits for the next series).
            if let Some(session) = self.plugin.take_to_close() {
                self.end(session, None, report);
            }
            return Ok(());
        }
        // The capture outlives the run: make what was written visible to readers now.
        // (A capture a Channel Access thread is flushing is left to it.)
        let Some(Taken::Session(mut session)) = self.plugin.take(false) else {
            return Ok(());
        };
        match session.flush() {
            Ok(()) => {
                self.give_back(session, report);
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.end(session, Some(message), report);
                Err(e.into())
            }
        }
    }
}

/// Where the frames of `acquisition` sit in the sensor, for the file's NDArrayDim attributes.
pub fn geometry(
    acquisition: &detflow_hal::AcquisitionConfig,
    shape: detflow_hal::FrameShape,
) -> detflow_writer::FrameGeometry {
    detflow_writer::FrameGeometry {
        shape,
        dim_offset: [acquisition.roi.min_x as i32, acquisition.roi.min_y as i32],
        dim_binning: [acquisition.binning.x as i32, acquisition.binning.y as i32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn session(dir: &std::path::Path) -> CaptureSession {
        let mut c = Config::default();
        c.detector.size = "4x2".parse().unwrap();
        c.writer.path = dir.to_str().unwrap().into();
        let v = c.validate().unwrap();
        let shape = detflow_hal::FrameShape {
            width: 4,
            height: 2,
            pixel_type: v.acquisition.pixel_type,
            color_mode: detflow_hal::ColorMode::Mono,
        };
        CaptureSession::start(v.capture, crate::sink::geometry(&v.acquisition, shape)).unwrap()
    }

    #[test]
    fn a_close_asked_while_the_writer_holds_the_capture_is_done_as_it_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = SharedCapture::new(true);
        plugin.open(session(dir.path())).unwrap();
        let other = tempfile::tempdir().unwrap();
        assert!(
            plugin.open(session(other.path())).is_err(),
            "one capture at a time"
        );
        let Some(Taken::Session(held)) = plugin.take(true) else {
            panic!("the writer takes it for a frame")
        };
        assert!(matches!(plugin.close(Some("told".into())), Closed::Later));
        assert!(plugin.is_open(), "open until the writer closes it");
        let (back, failure) = plugin.give_back(held).expect("to be closed by the writer");
        assert_eq!(failure.as_deref(), Some("told"));
        let end = plugin.end(*back, failure);
        assert_eq!(end.error.as_deref(), Some("told"));
        assert!(!plugin.is_open());
        assert!(matches!(plugin.close(None), Closed::NotOpen));
        assert_eq!(plugin.last().unwrap().1.as_deref(), Some("told"));
    }

    #[test]
    fn a_flush_asked_while_held_is_done_as_the_session_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = SharedCapture::new(true);
        plugin.open(session(dir.path())).unwrap();
        let Some(Taken::Session(held)) = plugin.take(true) else {
            panic!("taken")
        };
        assert!(matches!(plugin.flush(), Flushed::Later));
        assert!(plugin.give_back(held).is_none(), "flushed and kept");
        assert!(matches!(plugin.flush(), Flushed::Done));
        assert!(matches!(plugin.close(None), Closed::Now(_)));
    }

    #[test]
    fn an_armed_capture_is_opened_by_a_frame_only_and_a_close_disarms_it() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = SharedCapture::new(true);
        let settings = session(dir.path()).settings().clone();
        assert!(plugin.arm(settings.clone(), CodecSetting::Auto));
        assert!(plugin.is_open(), "Capture = 1 holds while armed");
        assert!(
            !plugin.arm(settings.clone(), CodecSetting::Auto),
            "one at a time"
        );
        assert_eq!(plugin.codec(), None, "auto: the run's codec stays");
        assert!(matches!(plugin.flush(), Flushed::NotOpen));
        assert!(
            plugin.take(false).is_none(),
            "a flush or a close opens nothing"
        );
        assert!(plugin.take_to_close().is_none());
        let Some(Taken::Armed(armed)) = plugin.take(true) else {
            panic!("a frame takes it to open it")
        };
        // Capture = 0 while the writer holds it: it ends as the writer puts it back.
        assert!(matches!(plugin.close(None), Closed::Later));
        let end = plugin.rearm(armed).expect("ended");
        assert_eq!(end.status.file_number, settings.naming.number);
        assert!(end.status.full_file_name.as_os_str().is_empty(), "no file");
        assert!(!plugin.is_open());
        // Armed again, then closed before any frame: disarmed.
        assert!(plugin.arm(settings, CodecSetting::Is(Codec::Lz4)));
        assert_eq!(plugin.codec(), Some(Codec::Lz4));
        assert!(matches!(plugin.close(None), Closed::Disarmed));
        assert!(!plugin.is_open());
    }

    #[test]
    fn a_disabled_plugin_takes_no_frames_but_is_still_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = SharedCapture::new(false);
        plugin.open(session(dir.path())).unwrap();
        assert!(plugin.take(true).is_none());
        let Some(Taken::Session(held)) = plugin.take(false) else {
            panic!("for a flush")
        };
        assert!(plugin.give_back(held).is_none());
        plugin.set_enabled(true);
        assert!(plugin.take(true).is_some());
    }
}
