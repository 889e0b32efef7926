//! `detflow acquire`: the flags into the engine's `Config`, one run through `Acquisition::builder`,
//! its events followed to the end, the summary printed.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use detflow_engine::backend::stream2::SeriesExpect;
use detflow_engine::config::{
    BackendConfig, BackendKeys, DetectorSettings, RingSettings, Seconds, WriterSettings,
};
use detflow_engine::{Acquisition, Config, RunEvent, RunHandle, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::Flags;
use crate::signals::{ABORT_EXIT, Signal, signal_exit, signals};
use crate::vds::print_master;

/// Flags override the `--config` file, which overrides the defaults (`Config::default()`). A
/// flag given twice takes its last value.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub(crate) struct AcquireArgs {
    /// TOML file with [detector], [backend], [ring] and [writer] tables; its keys are the flags'
    /// names (`--ring-slots` is [ring] slots).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one JSON object with the outcome instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = "Detector")]
    detector: Flags<DetectorSettings>,
    #[command(flatten, next_help_heading = "Backend")]
    backend: Flags<BackendKeys>,
    #[command(flatten, next_help_heading = "Ring")]
    ring: Flags<RingSettings>,
    #[command(flatten, next_help_heading = "Files")]
    writer: Flags<WriterSettings>,
    /// Increment the file number after each file (AutoIncrement). [default]
    #[arg(long, overrides_with = "no_auto_increment", help_heading = "Files")]
    auto_increment: bool,
    /// SWMR: readers see frames while the file is written (h5py swmr=True), and a killed
    /// writer leaves a file readable up to the last flush. [default]
    #[arg(long, overrides_with = "no_swmr", help_heading = "Files")]
    swmr: bool,
}

impl AcquireArgs {
    /// The settings: the defaults, the `--config` file over them, the flags given over that.
    pub(crate) fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        self.detector.apply(&mut c.detector)?;
        c.backend.apply(self.backend.get()?)?;
        self.ring.apply(&mut c.ring)?;
        self.writer.apply(&mut c.writer)?;
        // A Stream V2 series says its own size, dtype and image count: the ones given here
        // are what it must have.
        if let BackendConfig::Stream2 { expect, .. } = &mut c.backend {
            let d = &c.detector;
            let given = |id| self.detector.given(id);
            *expect = SeriesExpect {
                size: given("size").then(|| d.size.pair()),
                dtype: given("dtype").then_some(d.dtype),
                frames: given("frames").then_some(d.frames),
            };
        }
        let w = &mut c.writer;
        w.auto_increment |= self.auto_increment;
        w.swmr |= self.swmr;
        // --no-flush flushes only at close: the file's flush settings give way to it, unless
        // given beside it on the command line (then it is refused, naming them).
        if self.writer.given("no_flush") {
            if !self.writer.given("flush_interval") {
                w.flush_interval = Seconds::ZERO;
            }
            if !self.writer.given("flush") {
                w.flush = 0;
            }
        }
        Ok(c)
    }
}

pub(crate) fn acquire(args: &AcquireArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let settings = config.validate()?;
    if config.writer.no_flush {
        eprintln!("detflow: warning: {NO_FLUSH_WARNING}");
    }
    let frames = settings.frames;
    let vds = config
        .writer
        .vds
        .as_ref()
        .map(|out| detflow_writer::VdsSpec {
            description: Some(detflow_writer::PointDescription {
                dtype: settings.acquisition.pixel_type,
                frame_shape: frame_shape(&settings.acquisition),
            }),
            overwrite: config.writer.overwrite,
            ..detflow_writer::VdsSpec::new(out)
        });

    // First Ctrl-C or SIGTERM: stop cleanly (drain, close the file). A second one: exit now.
    // SIGUSR1: flush now, so readers see every frame written so far (areaDetector FlushNow).
    let signals = signals(true)?;

    let udp = match &settings.backend {
        detflow_engine::config::BackendSpec::Udp { listen, .. } => Some(*listen),
        _ => None,
    };
    let mut handle = Acquisition::builder(config.clone()).start()?;
    if let Some(listen) = udp {
        // Senders (and tests) wait for this line: the socket is bound from here on.
        eprintln!("detflow: receiving on udp {listen}");
    }
    let bar = if std::io::stderr().is_terminal() {
        progress_bar(frames, indicatif::ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let stopped_by = follow(&handle, &signals, &bar);
    bar.finish_and_clear();
    handle.wait();
    let summary = handle.summary();
    // The master file is built after the capture, from the references of the frames written.
    let master = vds.map(|spec| {
        let refs: Vec<String> = summary.value_refs.iter().map(|r| r.uri).collect();
        if refs.is_empty() {
            Err(anyhow::anyhow!(
                "no frame was written: no master file {:?}",
                spec.out
            ))
        } else {
            detflow_writer::build_master(&refs, &spec).context("cannot write the master file")
        }
    });
    let master = match master {
        Some(Ok(report)) => Some(report),
        Some(Err(e)) => {
            eprintln!("detflow: {e:#}");
            None
        }
        None => None,
    };
    print_summary(&summary, master.as_ref(), args.json)?;

    Ok(match (&summary.error, stopped_by) {
        (Some(_), _) => ExitCode::FAILURE,
        (None, Some(sig)) => signal_exit(sig),
        (None, None) => ExitCode::SUCCESS,
    })
}

/// Follow a run to its end: the progress bar on its events, a stop or a flush on signals.
/// Returns the stop signal, if one came (also as the run ended by itself).
fn follow(
    handle: &RunHandle,
    signals: &crossbeam_channel::Receiver<Signal>,
    bar: &ProgressBar,
) -> Option<i32> {
    let mut stopped_by = None;
    loop {
        crossbeam_channel::select! {
            recv(handle.events()) -> event => match event {
                Ok(RunEvent::Progress(_)) => {
                    let s = handle.status();
                    bar.set_position(s.frames_written);
                    bar.set_message(progress_message(s.fps, s.mb_per_s, s.frames_dropped));
                }
                Ok(RunEvent::Ended(_)) | Err(_) => break,
                Ok(_) => {}
            },
            recv(signals) -> signal => match signal {
                Ok(Signal::Stop(sig)) => {
                    stopped_by = Some(sig);
                    handle.stop();
                    bar.suspend(|| {
                        eprintln!(
                            "detflow: stopping: writing the frames in the ring, then closing \
                             the file (again to abort: exit {ABORT_EXIT}, the file keeps what \
                             was flushed)"
                        );
                    });
                }
                Ok(Signal::Flush) => handle.flush_now(),
                // The signal thread never ends.
                Err(_) => {}
            },
        }
    }
    stopped_by.or_else(|| {
        signals.try_iter().find_map(|s| match s {
            Signal::Stop(sig) => Some(sig),
            Signal::Flush => None,
        })
    })
}

/// What `--no-flush` costs, said at start.
pub(crate) const NO_FLUSH_WARNING: &str = "--no-flush (no_flush): nothing is flushed before the file is \
    closed; a writer killed mid-run leaves no frame readable";

/// The progress bar of a run of `frames` frames (0: until stopped). Its line fits an
/// 80-column terminal with the longest values a run shows (see the tests).
fn progress_bar(frames: u64, target: indicatif::ProgressDrawTarget) -> ProgressBar {
    let (bar, template) = if frames > 0 {
        (
            ProgressBar::with_draw_target(Some(frames), target),
            "{spinner} {elapsed_precise} {wide_bar} {pos}/{len} {msg}",
        )
    } else {
        (
            ProgressBar::with_draw_target(None, target),
            "{spinner} {elapsed_precise} {pos} frames {msg}",
        )
    };
    bar.set_style(ProgressStyle::with_template(template).expect("progress template is valid"));
    bar
}

/// The rates beside the progress bar; frames dropped only when there are some.
fn progress_message(fps: f64, mb_per_s: f64, dropped: u64) -> String {
    let mut m = format!("{fps:.0} fps {mb_per_s:.0} MB/s");
    if dropped > 0 {
        m.push_str(&format!(" {dropped} dropped"));
    }
    m
}

fn print_summary(
    s: &Summary,
    master: Option<&detflow_writer::MasterReport>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(s).context("summary to JSON")?;
        if let Some(m) = master {
            v["vds"] = serde_json::to_value(m).context("master report to JSON")?;
        }
        println!("{v}");
        return Ok(());
    }
    let st = &s.status;
    for f in &st.files {
        println!("file            {}", f.display());
    }
    for f in &s.files_lost {
        println!("LOST            {} (deleted while written)", f.display());
    }
    println!("next number     {}", st.file_number);
    println!(
        "frames          {} acquired, {} written, {} dropped",
        st.frames_acquired, st.frames_written, st.frames_dropped
    );
    let lost = [
        ("lost", st.frames_lost),
        ("corrupted", st.frames_corrupted),
        ("incomplete", st.frames_incomplete),
        ("overrun", st.frames_overrun),
    ];
    if lost.iter().any(|(_, n)| *n > 0) {
        let parts: Vec<String> = lost.iter().map(|(what, n)| format!("{n} {what}")).collect();
        println!("not acquired    {}", parts.join(", "));
    }
    println!(
        "rate            {:.1} fps, {:.1} MB/s over {:.3} s",
        st.fps, st.mb_per_s, st.elapsed_s
    );
    let ratio = if st.compressed_bytes > 0 {
        st.raw_bytes as f64 / st.compressed_bytes as f64
    } else {
        1.0
    };
    println!(
        "codec           {} ({} bytes, ratio {:.2})",
        s.codec, st.compressed_bytes, ratio
    );
    if let Some(why) = &s.stopped {
        println!("stopped early   {why}");
    }
    if let Some(m) = master {
        print_master(m);
    }
    Ok(())
}

/// `[rows, columns]` of the frames `acquisition` gives.
fn frame_shape(acquisition: &detflow_hal::AcquisitionConfig) -> [u64; 2] {
    let (roi, bin) = (&acquisition.roi, &acquisition.binning);
    [
        u64::from(roi.size_y / bin.y.max(1)),
        u64::from(roi.size_x / bin.x.max(1)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An 80-column terminal that keeps what is drawn on it.
    #[derive(Debug, Default, Clone)]
    struct Term80(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Term80 {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_owned());
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_progress_line_fits_80_columns_with_the_longest_values() {
        // The most frames a run takes (num_images is a u32), a small-frame rate, a fast
        // disk's MB/s, and every frame dropped.
        for frames in [u64::from(u32::MAX), 0] {
            let term = Term80::default();
            let bar = progress_bar(
                frames,
                indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())),
            );
            bar.set_position(u64::from(u32::MAX) - 1);
            bar.set_message(progress_message(999_999.0, 99_999.0, u64::from(u32::MAX)));
            bar.tick();
            let drawn = term.0.lock().unwrap().clone();
            let text: Vec<&str> = drawn
                .iter()
                .flat_map(|s| s.split(['\n', '\r']))
                .filter(|l| !l.trim().is_empty())
                .collect();
            for line in &text {
                assert!(
                    line.chars().count() <= 80,
                    "{} columns: {line:?}",
                    line.chars().count()
                );
            }
            let last = text.last().expect("something was drawn");
            assert!(last.contains("4294967294"), "the count is shown: {last:?}");
            assert!(
                last.contains("999999 fps 99999 MB/s 4294967295 dropped"),
                "the whole message is shown: {last:?}"
            );
        }
    }
}
