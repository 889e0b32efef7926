//! CPU time per pipeline thread during one `detflow bench` run, read from
//! `/proc/self/task/*/schedstat` by a sampler thread every [`INTERVAL`] and at the run's first
//! and last frame, so that threads which end before the run does (compressors, writer,
//! detector) are still counted: each keeps the last value read, and the CPU the process spent
//! that no live thread accounts for (the tail of a thread that ended within an interval) goes
//! to the threads that ended in it, in proportion to how busy each last was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};
use detflow_engine::Observer;
use detflow_hal::FrameMeta;
use serde::Serialize;

/// How often the sampler reads the threads' counters.
pub(crate) const INTERVAL: Duration = Duration::from_millis(10);

/// The kernel keeps 15 bytes of a thread's name (`comm`).
const COMM_LEN: usize = 15;

/// Which part of the pipeline a thread is, by the name the engine gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Detector,
    Compressor,
    Writer,
    Other,
}

impl Role {
    fn of(comm: &str) -> Role {
        // The engine names its threads `detflow-detector`, `detflow-compress-N` and
        // `detflow-writer`; `comm` holds the first 15 bytes of each.
        let is = |name: &str| comm == &name[..name.len().min(COMM_LEN)];
        if is("detflow-detector") {
            Role::Detector
        } else if is("detflow-compress-") {
            Role::Compressor
        } else if is("detflow-writer") {
            Role::Writer
        } else {
            Role::Other
        }
    }
}

/// One thread as the sampler last saw it.
#[derive(Debug, Clone)]
struct Seen {
    role: Role,
    /// Its CPU time when first seen during this run (0 for threads started after that).
    start_ns: u64,
    /// Its CPU time when last seen, plus its share of the unaccounted tail once it ended.
    last_ns: u64,
    /// CPU time gained between the last two samples it was seen in (weights the tail).
    recent_ns: u64,
    /// Seen in the latest sample.
    alive: bool,
    /// Gone, and given its share of the tail: never counted again.
    ended: bool,
}

/// CPU time of one run's threads, per frame and as a share of the wall time.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CpuBreakdown {
    /// Detector thread (the backend's copy into the ring slot), ms of CPU per frame.
    pub detector_ms: f64,
    /// Every compression worker together, ms of CPU per frame (0 with `none`: the writer
    /// writes the slots themselves).
    pub compressors_ms: f64,
    /// Writer thread (HDF5 calls, reordering), ms of CPU per frame.
    pub writer_ms: f64,
    /// Every other thread of the process (starting the run: ring allocation, file creation;
    /// the sampler itself), ms of CPU per frame.
    pub other_ms: f64,
    /// Detector thread's CPU time / wall time, 0..1.
    pub detector_busy: f64,
    /// Each compression worker's CPU time / wall time, in the order they started.
    pub compressors_busy: Vec<f64>,
    /// Writer thread's CPU time / wall time.
    pub writer_busy: f64,
}

impl CpuBreakdown {
    /// The median of each figure over `runs` (busy shares per worker position).
    pub(crate) fn median(runs: &[CpuBreakdown]) -> CpuBreakdown {
        let m = |f: &dyn Fn(&CpuBreakdown) -> f64| super::median(runs.iter().map(f).collect());
        let workers = runs.iter().map(|r| r.compressors_busy.len()).max();
        CpuBreakdown {
            detector_ms: m(&|r| r.detector_ms),
            compressors_ms: m(&|r| r.compressors_ms),
            writer_ms: m(&|r| r.writer_ms),
            other_ms: m(&|r| r.other_ms),
            detector_busy: m(&|r| r.detector_busy),
            compressors_busy: (0..workers.unwrap_or(0))
                .map(|i| m(&|r| r.compressors_busy.get(i).copied().unwrap_or(0.0)))
                .collect(),
            writer_busy: m(&|r| r.writer_busy),
        }
    }
}

/// What the sampler thread is told.
enum Ask {
    /// Sample now and answer when done.
    Sample(Sender<()>),
    /// Stop and hand the tally back.
    Stop,
}

/// A running sampler; [`CpuSampler::finish`] stops it and adds up.
#[derive(Debug)]
pub(crate) struct CpuSampler {
    ask: Sender<Ask>,
    handle: JoinHandle<Tally>,
}

impl CpuSampler {
    /// Take the first sample now (every thread's CPU time so far is the baseline) and go on
    /// sampling every [`INTERVAL`] on a thread of its own.
    pub(crate) fn start() -> std::io::Result<CpuSampler> {
        let mut tally = Tally::default();
        tally.sample(true);
        let (ask, asked) = bounded::<Ask>(4);
        let handle = std::thread::Builder::new()
            .name("bench-cpu-sampler".into())
            .spawn(move || {
                // Waits on the channel with a bound: wakes to sample, or when asked.
                loop {
                    match asked.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => tally.sample(false),
                        Ok(Ask::Sample(done)) => {
                            tally.sample(false);
                            let _ = done.send(());
                        }
                        Ok(Ask::Stop) | Err(RecvTimeoutError::Disconnected) => return tally,
                    }
                }
            })?;
        Ok(CpuSampler { ask, handle })
    }

    /// A run observer that has the detector thread wait for a sample at the run's first
    /// frame and at its last (`frames`): every pipeline thread is seen alive however short
    /// the run, and again near its end.
    pub(crate) fn observer(&self, frames: u64) -> Arc<dyn Observer> {
        Arc::new(SampleAt {
            ask: self.ask.clone(),
            frames,
        })
    }

    /// Stop sampling, take the last sample (after the run's threads joined) and give each
    /// role's CPU time over a run of `frames` frames lasting `wall_s` seconds.
    pub(crate) fn finish(self, frames: u64, wall_s: f64) -> CpuBreakdown {
        let _ = self.ask.send(Ask::Stop);
        let Ok(mut tally) = self.handle.join() else {
            return CpuBreakdown::default();
        };
        tally.sample(false);
        tally.breakdown(frames, wall_s)
    }
}

/// Has the sampler sample at the first and the last frame of a run.
struct SampleAt {
    ask: Sender<Ask>,
    frames: u64,
}

impl Observer for SampleAt {
    fn frame_acquired(&self, count: u64, _meta: &FrameMeta, _bytes: &[u8]) {
        if count == 1 || count == self.frames {
            let (done, wait) = bounded(1);
            if self.ask.send(Ask::Sample(done)).is_ok() {
                // Bounded: a sampler that is gone must not hold the detector.
                let _ = wait.recv_timeout(Duration::from_secs(1));
            }
        }
    }
}

/// What the sampler has seen so far.
#[derive(Debug, Default)]
struct Tally {
    /// By thread id (ascending: the order threads started in, tids not being reused here).
    threads: BTreeMap<u32, Seen>,
    /// The process's CPU time at the first and the last sample.
    process_start_ns: u64,
    process_last_ns: u64,
}

impl Tally {
    /// Read every thread's CPU time; give the process CPU no live thread accounts for to the
    /// threads that ended since the last sample.
    fn sample(&mut self, first: bool) {
        self.record(process_cpu_ns(), read_threads(), first);
    }

    /// One sample: the process's CPU time and each live thread's (id, name, CPU time), ns.
    fn record(&mut self, process: u64, threads: Vec<(u32, String, u64)>, first: bool) {
        let mut gained: i64 = 0;
        for seen in self.threads.values_mut() {
            seen.alive = false;
        }
        for (tid, comm, cpu_ns) in threads {
            let seen = self.threads.entry(tid).or_insert_with(|| Seen {
                role: Role::of(&comm),
                start_ns: if first { cpu_ns } else { 0 },
                last_ns: if first { cpu_ns } else { 0 },
                recent_ns: 0,
                alive: true,
                ended: false,
            });
            // A new thread carries its parent's name until it sets its own.
            seen.role = Role::of(&comm);
            let delta = cpu_ns.saturating_sub(seen.last_ns);
            gained += delta as i64;
            seen.recent_ns = delta;
            seen.last_ns = cpu_ns;
            seen.alive = true;
        }
        if first {
            self.process_start_ns = process;
            self.process_last_ns = process;
            return;
        }
        let tail = process.saturating_sub(self.process_last_ns) as i64 - gained;
        self.process_last_ns = process;
        // Threads that ended in this interval (seen last time, alive = false, not yet given
        // their tail): recent_ns was their rate; they get the tail in proportion.
        let ended: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, s)| !s.alive && !s.ended)
            .map(|(&t, _)| t)
            .collect();
        // With no thread ended, the gap is the time between reading the process total and the
        // threads: it evens out over the run, and stays in `other`.
        if !ended.is_empty() && tail > 0 {
            let weight: u64 = ended.iter().map(|t| self.threads[t].recent_ns.max(1)).sum();
            for t in &ended {
                let s = self.threads.get_mut(t).expect("listed above");
                s.last_ns +=
                    (tail as u128 * u128::from(s.recent_ns.max(1)) / u128::from(weight)) as u64;
            }
        }
        for t in ended {
            self.threads.get_mut(&t).expect("listed above").ended = true;
        }
    }

    fn breakdown(&self, frames: u64, wall_s: f64) -> CpuBreakdown {
        let per_frame = |ns: u64| ns as f64 * 1e-6 / frames.max(1) as f64;
        let busy = |ns: u64| {
            if wall_s > 0.0 {
                ns as f64 * 1e-9 / wall_s
            } else {
                0.0
            }
        };
        let used = |s: &Seen| s.last_ns.saturating_sub(s.start_ns);
        let of = |role: Role| -> u64 {
            self.threads
                .values()
                .filter(|s| s.role == role)
                .map(used)
                .sum()
        };
        let process = self.process_last_ns.saturating_sub(self.process_start_ns);
        let pipeline = of(Role::Detector) + of(Role::Compressor) + of(Role::Writer);
        CpuBreakdown {
            detector_ms: per_frame(of(Role::Detector)),
            compressors_ms: per_frame(of(Role::Compressor)),
            writer_ms: per_frame(of(Role::Writer)),
            other_ms: per_frame(process.saturating_sub(pipeline)),
            detector_busy: busy(of(Role::Detector)),
            compressors_busy: self
                .threads
                .values()
                .filter(|s| s.role == Role::Compressor)
                .map(|s| busy(used(s)))
                .collect(),
            writer_busy: busy(of(Role::Writer)),
        }
    }
}

/// The process's CPU time (user + system, every thread, ended ones included), ns.
fn process_cpu_ns() -> u64 {
    // SAFETY: rusage is plain old data that getrusage fills; RUSAGE_SELF takes no pointer
    // besides it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Every live thread of the process: id, name and CPU time in ns. A thread that ends while
/// it is read is left out (the next sample gives it its tail).
fn read_threads() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cpu = thread_cpu_ns(&e.path())?;
        Some((tid, comm.trim_end().to_owned(), cpu))
    })
    .collect()
}

/// A thread's CPU time: `schedstat`'s first field (ns on the CPU), or else `stat`'s utime +
/// stime (clock ticks, coarser) when the kernel has no schedstat.
fn thread_cpu_ns(task: &std::path::Path) -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string(task.join("schedstat")) {
        return s.split_whitespace().next()?.parse().ok();
    }
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    // The name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_map_to_pipeline_roles_truncated_as_the_kernel_keeps_them() {
        assert_eq!(Role::of("detflow-detecto"), Role::Detector);
        assert_eq!(Role::of("detflow-compres"), Role::Compressor);
        assert_eq!(Role::of("detflow-writer"), Role::Writer);
        assert_eq!(Role::of("detflow"), Role::Other);
        assert_eq!(Role::of("bench-cpu-sampl"), Role::Other);
    }

    #[test]
    fn a_busy_thread_that_ends_before_the_last_sample_is_still_counted() {
        let sampler = CpuSampler::start().expect("the sampler starts");
        let wall = std::time::Instant::now();
        let worker = std::thread::Builder::new()
            .name("detflow-writer".into())
            .spawn(|| {
                // Busy for 150 ms of its own CPU time: seen alive by many samples, however
                // loaded the machine.
                let t = cpu_time_of_this_thread();
                let mut x = 0u64;
                while cpu_time_of_this_thread() - t < Duration::from_millis(150) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
            .expect("a thread starts");
        worker.join().expect("the thread ends");
        let cpu = sampler.finish(10, wall.elapsed().as_secs_f64());
        // 150 ms over 10 frames, give or take the tail other test threads may share.
        assert!(
            (12.0..25.0).contains(&cpu.writer_ms),
            "writer ms per frame: {cpu:?}"
        );
        assert_eq!(cpu.detector_ms, 0.0);
        assert!(cpu.compressors_busy.is_empty());
    }

    #[test]
    fn the_tail_of_ended_threads_goes_to_them_in_proportion_to_their_last_rate() {
        let mut t = Tally::default();
        let ms = 1_000_000u64;
        let th = |v: &[(u32, &str, u64)]| v.iter().map(|&(i, n, c)| (i, n.into(), c)).collect();
        // Before the run: the main thread has used 100 ms.
        t.record(100 * ms, th(&[(1, "detflow", 100 * ms)]), true);
        // The detector and two workers start.
        t.record(
            130 * ms,
            th(&[
                (1, "detflow", 100 * ms),
                (2, "detflow-detecto", 10 * ms),
                (3, "detflow-compres", 10 * ms),
                (4, "detflow-compres", 10 * ms),
            ]),
            false,
        );
        // Worker 3 busy, worker 4 idle; both end before the next sample, and the process
        // gained 12 ms besides what the detector shows.
        t.record(
            130 * ms + 5 * ms + 12 * ms,
            th(&[(1, "detflow", 100 * ms), (2, "detflow-detecto", 15 * ms)]),
            false,
        );
        let b = t.breakdown(1, 1.0);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(b.detector_ms, 15.0), "{b:?}");
        // Equal recent rates (10 ms each since they started): 6 ms of tail each.
        assert_eq!(b.compressors_busy.len(), 2, "{b:?}");
        assert!(b.compressors_busy.iter().all(|&x| near(x, 0.016)), "{b:?}");
        assert!(near(b.compressors_ms, 32.0), "{b:?}");
        assert!(near(b.other_ms, 0.0), "{b:?}");
        // The same sample again: nothing new to give.
        t.record(147 * ms, th(&[(1, "detflow", 100 * ms)]), false);
        assert_eq!(t.breakdown(1, 1.0), b);
    }

    fn cpu_time_of_this_thread() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the pointer it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}
