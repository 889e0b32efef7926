//! Where a `detflow bench` run's CPU went: the CPU time each pipeline thread measured for itself
//! as it ended (the engine's [`ThreadCpu`], in the run's summary), per frame and as a share of
//! the wall time. The rest of the process's CPU over the run (starting it: the ring's memory,
//! the file's creation; the bench's own thread) is "other".

use detflow_engine::ThreadCpu;
use serde::Serialize;

/// CPU time of one run's threads, per frame and as a share of the wall time.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuBreakdown {
    /// Detector thread (the backend's copy into the ring slot), ms of CPU per frame.
    pub detector_ms: f64,
    /// Every compression worker together, ms of CPU per frame (0 with `none`: the writer
    /// writes the slots themselves).
    pub compressors_ms: f64,
    /// Writer thread (HDF5 calls, the kernel's copy into the page cache, reordering), ms of
    /// CPU per frame.
    pub writer_ms: f64,
    /// The rest of the process over the run (starting it: ring memory, file creation), ms of
    /// CPU per frame.
    pub other_ms: f64,
    /// Detector thread's CPU time / wall time, 0..1.
    pub detector_busy: f64,
    /// A compression worker's CPU time / wall time, on average over the workers, 0..1 (0
    /// without workers).
    pub compressors_busy: f64,
    /// Writer thread's CPU time / wall time, 0..1.
    pub writer_busy: f64,
}

impl CpuBreakdown {
    /// The breakdown of a run that wrote `frames` frames in `wall` seconds, its threads having
    /// used `threads`, and the whole process `process_s` seconds of CPU over the run.
    pub(crate) fn of(threads: &ThreadCpu, process_s: f64, frames: u64, wall: f64) -> Self {
        let per_frame = |s: f64| 1e3 * s / frames.max(1) as f64;
        let busy = |s: f64| if wall > 0.0 { s / wall } else { 0.0 };
        let pipeline = threads.detector_s + threads.compressors_s + threads.writer_s;
        CpuBreakdown {
            detector_ms: per_frame(threads.detector_s),
            compressors_ms: per_frame(threads.compressors_s),
            writer_ms: per_frame(threads.writer_s),
            other_ms: per_frame((process_s - pipeline).max(0.0)),
            detector_busy: busy(threads.detector_s),
            compressors_busy: busy(threads.compressors_s / threads.workers.max(1) as f64),
            writer_busy: busy(threads.writer_s),
        }
    }

    /// The median of each figure over `runs`.
    pub(crate) fn median(runs: &[CpuBreakdown]) -> CpuBreakdown {
        let m = |f: &dyn Fn(&CpuBreakdown) -> f64| super::median(runs.iter().map(f).collect());
        CpuBreakdown {
            detector_ms: m(&|r| r.detector_ms),
            compressors_ms: m(&|r| r.compressors_ms),
            writer_ms: m(&|r| r.writer_ms),
            other_ms: m(&|r| r.other_ms),
            detector_busy: m(&|r| r.detector_busy),
            compressors_busy: m(&|r| r.compressors_busy),
            writer_busy: m(&|r| r.writer_busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_frame_and_busy_shares_of_the_threads_and_the_rest() {
        let threads = ThreadCpu {
            detector_s: 0.1,
            compressors_s: 0.8,
            writer_s: 0.2,
            workers: 2,
        };
        let c = CpuBreakdown::of(&threads, 1.2, 100, 0.5);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(c.detector_ms, 1.0) && close(c.compressors_ms, 8.0),
            "{c:?}"
        );
        assert!(close(c.writer_ms, 2.0) && close(c.other_ms, 1.0), "{c:?}");
        assert!(
            close(c.compressors_busy, 0.8) && close(c.writer_busy, 0.4),
            "{c:?}"
        );
        // No workers (zero copy): no share, and nothing divides by zero.
        let none = ThreadCpu {
            compressors_s: 0.0,
            workers: 0,
            ..threads
        };
        assert_eq!(CpuBreakdown::of(&none, 0.0, 0, 0.0).compressors_busy, 0.0);
    }
}
