//! The detector thread: it is granted a ring slot, has the backend write a frame straight into
//! it and commits it, until the backend finishes its sequence, the run is stopped, or the
//! writer fails. Dropping the producer at the end closes the ring, which ends the writer.
//!
//! Fault policy: a frame the detector reports lost (`Overrun`, `Corrupted`, `Incomplete`,
//! `FrameLost`: one error per frame) is counted by cause and the run goes on; nothing was
//! committed for it. A `Bus` error is counted and retried after a short pause growing with
//! each error in a row (1 ms, 2 ms, … 10 ms); [`MAX_BUS_ERRORS_IN_A_ROW`] in a row fail the
//! run. Any other error fails the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use detflow_hal::{ErrorKind, FrameMeta};
use detflow_ring::{Policy, Producer, SlotMeta};

use crate::POLL;
use crate::backend::{Backend, BackendError};
use crate::error::RunError;
use crate::event::{Observer, State};
use crate::record;
use crate::status::{Counters, Run};

/// Bus errors in a row after which the detector thread gives up and the run fails.
pub const MAX_BUS_ERRORS_IN_A_ROW: u32 = 10;

/// The ring metadata of a frame of `len` bytes.
pub(crate) fn slot_meta(meta: &FrameMeta, len: usize) -> SlotMeta {
    SlotMeta {
        frame_id: meta.unique_id,
        epics_sec: meta.timestamp.sec,
        epics_nsec: meta.timestamp.nsec,
        unix_time_s: meta.unix_time_s,
        width: meta.shape.width,
        height: meta.shape.height,
        pixel_type: meta.shape.pixel_type.nd_data_type() as u32,
        color_mode: meta.shape.color_mode.code() as u32,
        len: len as u64,
    }
}

/// The detector thread of one run.
pub(crate) struct DetectorThread<'a> {
    pub(crate) backend: Box<dyn Backend>,
    /// The backend delivers images (encoded, in channels): each slot holds a record
    /// ([`crate::record`]) rather than a frame.
    pub(crate) images: bool,
    pub(crate) producer: Producer,
    pub(crate) run: &'a Run,
    pub(crate) observer: Option<&'a dyn Observer>,
}

/// What became of one read.
enum Read {
    /// A frame was delivered (into a slot, or dropped by the ring's policy).
    Frame,
    /// Nothing yet, or a frame lost and counted: read again.
    Again,
    /// The run ends here.
    End,
}

impl DetectorThread<'_> {
    /// Read frames until the run ends, then stop the backend and close the ring.
    pub(crate) fn run(mut self) {
        // Drop-newest: a frame that finds every slot taken is still taken out of the
        // detector (into this buffer) so the detector moves on, and counted as dropped.
        let mut scratch = if self.producer.policy() == Policy::DropNewest {
            vec![0u8; self.producer.slot_bytes()]
        } else {
            Vec::new()
        };
        let mut bus_in_a_row = 0u32;
        // Acquire (in stopping()) pairs with the Release stores of stop() and the writer:
        // once seen, the reason for stopping is visible too.
        while !self.run.stopping() && self.backend.is_acquiring() {
            let read = self.read_one(&mut scratch);
            match self.judge(read, &mut bus_in_a_row) {
                Read::Frame | Read::Again => {}
                Read::End => break,
            }
        }
        if let Err(e) = self.backend.stop() {
            self.run.record(RunError::DetectorStop(e));
        }
        // Only move to Draining from Acquiring; a failed writer already said Failed.
        self.run.advance(State::Acquiring, State::Draining);
        let cpu_ns = crate::status::thread_cpu_ns();
        self.run
            .counters
            .cpu_ns_detector
            .fetch_add(cpu_ns, Ordering::Release);
        // Dropping the producer (with self) closes the ring: the writer drains what is left.
    }

    /// Read one frame into a granted slot (or the scratch buffer when drop-newest finds the
    /// ring full). `Ok(false)`: no slot was free in time (block policy).
    fn read_one(&mut self, scratch: &mut [u8]) -> Result<bool, BackendError> {
        let (run, observer, images) = (self.run, self.observer, self.images);
        let tell = |meta: &FrameMeta, bytes: &[u8]| {
            if let Some(o) = observer {
                let count = run.counters.acquired.load(Ordering::Relaxed) + 1;
                o.frame_acquired(count, meta, &bytes[..meta.shape.bytes().min(bytes.len())]);
            }
        };
        let slot = match self.producer.policy() {
            // Block: wait for the writer to free a slot (the detector holds its frames
            // meanwhile, and counts what its own buffer cannot hold as overruns).
            Policy::Block => match self.producer.grant_timeout(POLL) {
                Some(slot) => Some(slot),
                None => return Ok(false),
            },
            Policy::DropNewest => self.producer.try_grant(),
        };
        match slot {
            // A slot is published only once the detector filled it; on an error it goes
            // back unpublished.
            Some(mut slot) => {
                let (meta, len) = read_into(self.backend.as_mut(), images, slot.bytes_mut())?;
                tell(&meta, pixels(images, slot.bytes_mut()));
                slot.commit(slot_meta(&meta, len));
            }
            // Drop-newest with every slot taken: the frame still leaves the detector (into
            // the scratch buffer) so that it moves on, and is counted as dropped.
            None => {
                let (meta, _) = read_into(self.backend.as_mut(), images, scratch)?;
                tell(&meta, pixels(images, scratch));
                self.producer.record_dropped(1);
            }
        }
        Ok(true)
    }

    /// Count a read by its outcome, by the fault policy.
    fn judge(&self, read: Result<bool, BackendError>, bus_in_a_row: &mut u32) -> Read {
        let c = &self.run.counters;
        let e = match read {
            Ok(true) => {
                c.acquired.fetch_add(1, Ordering::Relaxed);
                *bus_in_a_row = 0;
                return Read::Frame;
            }
            Ok(false) => return Read::Again,
            Err(e) => e,
        };
        match e.kind {
            // Not due yet: look at the flags again.
            ErrorKind::Timeout => Read::Again,
            ErrorKind::NotAcquiring => Read::End,
            // A frame lost by the detector: counted, nothing committed, the run goes on.
            ErrorKind::Overrun
            | ErrorKind::Corrupted
            | ErrorKind::Incomplete
            | ErrorKind::FrameLost => {
                lost_counter(c, e.kind).fetch_add(1, Ordering::Relaxed);
                Read::Again
            }
            ErrorKind::Bus => {
                c.bus_errors.fetch_add(1, Ordering::Relaxed);
                *bus_in_a_row += 1;
                if *bus_in_a_row >= MAX_BUS_ERRORS_IN_A_ROW {
                    self.fail(RunError::BusErrors {
                        count: *bus_in_a_row,
                        last: e,
                    });
                    return Read::End;
                }
                // The bus recovers by itself: a short pause, growing with each error.
                std::thread::sleep(Duration::from_millis((*bus_in_a_row).into()));
                Read::Again
            }
            _ => {
                self.fail(RunError::Detector(e));
                Read::End
            }
        }
    }

    fn fail(&self, e: RunError) {
        self.run.record(e);
        self.run.stop();
    }
}

/// Have `backend` write one frame, or one image record (`images`), into `buf`; its metadata
/// and the bytes it takes.
fn read_into(
    backend: &mut dyn Backend,
    images: bool,
    buf: &mut [u8],
) -> Result<(FrameMeta, usize), BackendError> {
    if !images {
        let meta = backend.read_frame(buf, POLL)?;
        return Ok((meta, meta.shape.bytes()));
    }
    let Some(body) = buf.get_mut(record::HEADER_BYTES..) else {
        return Err(BackendError::new(
            ErrorKind::InvalidConfig,
            "a ring slot smaller than an image record's header",
        ));
    };
    let image = backend.read_image(body, POLL)?;
    let len = record::seal(buf, &image);
    Ok((image.frame, len))
}

/// The pixels an observer is shown: a frame's bytes; none of an encoded image.
fn pixels(images: bool, bytes: &[u8]) -> &[u8] {
    if images { &[] } else { bytes }
}

/// The counter of frames lost by `kind`.
fn lost_counter(c: &Counters, kind: ErrorKind) -> &AtomicU64 {
    match kind {
        ErrorKind::Overrun => &c.overruns,
        ErrorKind::Corrupted => &c.corrupted,
        ErrorKind::Incomplete => &c.incomplete,
        _ => &c.lost,
    }
}
