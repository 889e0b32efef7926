//! The writer thread: frames in ring order into the run's [`FrameSink`], and the counts.
//!
//! With a fixed `none` codec it claims each frame itself and writes the slot as the chunk
//! (zero copy). Otherwise a pool of compression threads ([`crate::compress`]) encodes frames
//! in parallel and the writer puts their chunks back in order ([`Reorder`]) before writing
//! them. The only HDF5 calls of a run are made here. Every queue is bounded: `2 x workers + 2`
//! chunk buffers circulate, so a slow disk holds the compressors, which hold the ring, which
//! holds the detector (or drops, by the ring's policy). After a write error, or once the
//! capture is complete, frames keep being taken from the ring and counted as dropped, so the
//! detector is never left blocked and the counts stay exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use detflow_hal::{ColorMode, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_ring::{Claimer, NextError, Reorder, SlotMeta};
use detflow_writer::Codec;

use crate::POLL;
use crate::compress::{Chunk, Encoded, Encoding, Worker};
use crate::error::RunError;
use crate::event::{Observer, PROGRESS_PER_S, Progress, RunEvent};
use crate::sink::{FrameSink, Push, SinkReport};
use crate::status::Run;

/// How frames go from the ring to the writer thread.
pub(crate) struct Pipeline {
    /// The writer's place in the ring: a pool of claims, one per committed frame.
    pub(crate) claimer: Claimer,
    pub(crate) pixel_type: PixelType,
    /// Compression threads; 0 when the writer writes the slots themselves.
    pub(crate) workers: usize,
    /// The codec of the slots' bytes: [`Codec::None`] for frames, the detector's for images.
    pub(crate) slot_codec: Codec,
    /// The slots hold image records ([`crate::record`]).
    pub(crate) images: bool,
}

/// The writer thread of one run.
pub(crate) struct Writer<'a> {
    sink: Box<dyn FrameSink>,
    run: &'a Run,
    observer: Option<&'a dyn Observer>,
    /// False once the sink takes no more frames (failed, or complete); read by the
    /// compressors too, which then stop encoding.
    accepting: Arc<AtomicBool>,
    /// The last progress told, and when.
    progress: (Instant, Progress),
}

impl<'a> Writer<'a> {
    pub(crate) fn new(
        sink: Box<dyn FrameSink>,
        run: &'a Run,
        observer: Option<&'a dyn Observer>,
    ) -> Self {
        Writer {
            sink,
            run,
            observer,
            accepting: Arc::new(AtomicBool::new(true)),
            progress: (Instant::now(), Progress::default()),
        }
    }

    /// Write every frame of the run, then finish the sink.
    pub(crate) fn run(mut self, pipeline: Pipeline) {
        if pipeline.workers == 0 {
            self.write_slots(&pipeline.claimer, pipeline.slot_codec);
        } else {
            self.write_encoded(&pipeline);
        }
        self.finish();
    }

    fn report(&self) -> SinkReport<'a> {
        SinkReport {
            run: self.run,
            observer: self.observer,
        }
    }

    /// Zero copy: claims arrive in ring order and the chunk is the slot itself, in the
    /// slots' codec.
    fn write_slots(&mut self, claimer: &Claimer, codec: Codec) {
        loop {
            self.between_frames(false);
            match claimer.claim_timeout(POLL) {
                Ok(claim) => self.write(claim.meta(), Some((claim.bytes(), codec))),
                Err(NextError::Timeout) => self.between_frames(true),
                Err(NextError::Closed) => break,
            }
        }
    }

    /// Chunks from the compressor pool, put back in ring order.
    fn write_encoded(&mut self, pipeline: &Pipeline) {
        let buffers = 2 * pipeline.workers + 2;
        let (free_tx, free_rx) = bounded::<Vec<u8>>(buffers);
        let (done_tx, done_rx) = bounded::<(u64, Encoded)>(buffers);
        for _ in 0..buffers {
            free_tx
                .send(Vec::new())
                .expect("the channel has room for every buffer");
        }
        let encoding = self.sink.encoding();
        std::thread::scope(|scope| {
            for i in 0..pipeline.workers {
                let worker = Worker {
                    claimer: pipeline.claimer.clone(),
                    encoding: encoding.clone(),
                    pixel_type: pipeline.pixel_type,
                    slot_codec: pipeline.slot_codec,
                    images: pipeline.images,
                    free: free_rx.clone(),
                    done: done_tx.clone(),
                    accepting: self.accepting.clone(),
                    cpu_ns: &self.run.counters.cpu_ns_compressors,
                };
                std::thread::Builder::new()
                    .name(format!("detflow-comp-{i}"))
                    .spawn_scoped(scope, move || worker.run())
                    .expect("a compression thread starts");
            }
            drop(done_tx);
            self.reorder(&pipeline.claimer, &done_rx, &free_tx, buffers);
            // Closing the free list ends workers still waiting for a buffer.
            drop(free_tx);
        });
    }

    /// Receive encoded frames, write them in ring order and hand their buffers back, until
    /// every worker ended (the ring is closed and drained).
    fn reorder(
        &mut self,
        claimer: &Claimer,
        done: &Receiver<(u64, Encoded)>,
        free: &Sender<Vec<u8>>,
        buffers: usize,
    ) {
        let mut order: Option<Reorder<Encoded>> = None;
        loop {
            self.between_frames(false);
            match done.recv_timeout(POLL) {
                Ok((seq, item)) => {
                    let order = order.get_or_insert_with(|| {
                        let first = claimer.start_sequence().unwrap_or(seq);
                        Reorder::with_capacity(first, buffers)
                    });
                    order.push(seq, item);
                    while let Some((_, item)) = order.pop() {
                        let chunk = item.chunk.as_ref().map(|c| (c.bytes(), item.codec));
                        self.write(&item.meta, chunk);
                        // A slot is released here; a chunk buffer goes back to the free list.
                        let buffer = item.chunk.and_then(Chunk::into_buffer).or(item.spare);
                        let mut buf = buffer.unwrap_or_default();
                        buf.clear();
                        // The workers may all have ended; then the buffer is not needed.
                        let _ = free.send(buf);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.between_frames(true),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Write one frame (or count it dropped, or not captured).
    fn write(&mut self, meta: &SlotMeta, chunk: Option<(&[u8], Codec)>) {
        let counters = &self.run.counters;
        let (Some((chunk, codec)), true) = (chunk, self.accepting.load(Ordering::Relaxed)) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(frame) = frame_meta(meta) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.fail(RunError::SlotMeta {
                frame_id: meta.frame_id,
            });
            return;
        };
        match self.sink.push(&frame, chunk, codec, &self.report()) {
            Push::Written => self.count_written(chunk.len()),
            Push::Last => {
                self.count_written(chunk.len());
                // The capture is complete: stop the detector; the rest is dropped.
                self.accepting.store(false, Ordering::Relaxed);
                self.run.stop();
            }
            Push::Passed => {
                counters.not_captured.fetch_add(1, Ordering::Relaxed);
            }
            Push::Dropped(error) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = error {
                    self.fail(e);
                }
            }
        }
        self.tell_progress();
    }

    fn count_written(&self, chunk_len: usize) {
        let c = &self.run.counters;
        c.written.fetch_add(1, Ordering::Relaxed);
        c.compressed_bytes
            .fetch_add(chunk_len as u64, Ordering::Relaxed);
    }

    /// The sink failed: the run fails with `e`, the detector stops, the rest is dropped.
    fn fail(&mut self, e: RunError) {
        self.run.record(e);
        self.accepting.store(false, Ordering::Relaxed);
        self.run.writing_failed();
    }

    /// Between frames: flush on request, or when the flush interval passed while `idle`;
    /// tell the counts when they are due.
    fn between_frames(&mut self, idle: bool) {
        let asked = self.run.counters.flush_now.swap(false, Ordering::AcqRel);
        if idle {
            self.tell_progress();
        }
        if !self.accepting.load(Ordering::Relaxed) || !(asked || idle) {
            return;
        }
        if let Err(e) = self.sink.flush_if_due(asked, idle, &self.report()) {
            self.fail(e);
        }
    }

    /// Tell the counts, at most [`PROGRESS_PER_S`] times a second and only when they moved.
    fn tell_progress(&mut self) {
        let due = Duration::from_secs(1) / PROGRESS_PER_S;
        if self.progress.0.elapsed() < due {
            return;
        }
        let now = self.run.progress();
        if now != self.progress.1 {
            self.run.events.send(RunEvent::Progress(now));
            self.progress = (Instant::now(), now);
        }
    }

    /// The ring is drained: finish the sink; the files are closed.
    fn finish(self) {
        let report = SinkReport {
            run: self.run,
            observer: self.observer,
        };
        if let Err(e) = self.sink.finish(&report) {
            self.run.record(e);
        }
        let cpu_ns = crate::status::thread_cpu_ns();
        self.run
            .counters
            .cpu_ns_writer
            .fetch_add(cpu_ns, Ordering::Release);
        self.run.writer_finished();
    }
}

/// The frame metadata a ring slot holds, if its pixel type and colour mode are known.
fn frame_meta(m: &SlotMeta) -> Option<FrameMeta> {
    Some(FrameMeta {
        unique_id: m.frame_id,
        timestamp: EpicsTimestamp {
            sec: m.epics_sec,
            nsec: m.epics_nsec,
        },
        unix_time_s: m.unix_time_s,
        shape: FrameShape {
            width: m.width,
            height: m.height,
            pixel_type: PixelType::from_nd_data_type(m.pixel_type as i32)?,
            color_mode: ColorMode::from_code(m.color_mode as i32)?,
        },
    })
}

/// True when the sink's encoding lets the writer write the slots themselves: it is fixed
/// and the slots' bytes are already in it (raw frames for `none`, or images that arrived in
/// the file's codec).
pub(crate) fn zero_copy(encoding: &Encoding, slot_codec: Codec) -> bool {
    matches!(encoding, Encoding::Fixed(c) if *c == slot_codec)
}
