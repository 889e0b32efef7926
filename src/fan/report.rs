//! What one series went through the fan: per rank the images sent, dropped and their bytes,
//! printed as one line per rank, or with `--json` as one JSON object per series on stdout.

use std::path::{Path, PathBuf};

use detflow_writer::RankMasterReport;
use serde::Serialize;

use super::ranks::Rank;

/// How a series' summary came to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EndedBy {
    /// Its `end` message.
    End,
    /// The next series' `start` came without an `end` of this one.
    NextStart,
    /// SIGINT or SIGTERM (the fan sent each rank an `end` of its own).
    Stopped,
}

/// One rank's share of a series.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RankReport {
    rank: u64,
    endpoint: String,
    /// Image messages queued for the rank.
    sent: u64,
    /// Image messages it could not take (policy drop), or that a stop interrupted.
    pub(crate) dropped: u64,
    /// Bytes of the image messages sent.
    bytes: u64,
    start_sent: bool,
    end_sent: bool,
}

/// One series through the fan: `--json` prints it as one line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SeriesReport {
    pub(crate) series_id: u64,
    pub(crate) series_unique_id: String,
    pub(crate) ended_by: EndedBy,
    /// Image messages received from the detector.
    pub(crate) images_in: u64,
    /// Messages received that are not Stream V2 (not forwarded).
    pub(crate) bad_messages: u64,
    /// From `start` received to `end` received.
    pub(crate) elapsed_s: f64,
    /// CPU time of the whole fan process (its thread and libzmq's) over the series.
    pub(crate) cpu_s: f64,
    pub(crate) ranks: Vec<RankReport>,
    /// `--master`: the master's report, or why it was not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) master: Option<MasterOutcome>,
}

/// The master of a series: its report, or why it was not written.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum MasterOutcome {
    /// Written.
    Written(Box<RankMasterReport>),
    /// Not written.
    Failed {
        /// The master file.
        out: PathBuf,
        /// Why.
        error: String,
    },
}

impl MasterOutcome {
    pub(crate) fn of(out: &Path, outcome: Result<RankMasterReport, String>) -> Self {
        match outcome {
            Ok(r) => MasterOutcome::Written(Box::new(r)),
            Err(error) => MasterOutcome::Failed {
                out: out.to_path_buf(),
                error,
            },
        }
    }
}

impl SeriesReport {
    /// Each rank's counts, as they are now.
    pub(crate) fn ranks_of(ranks: &[Rank]) -> Vec<RankReport> {
        ranks
            .iter()
            .map(|r| RankReport {
                rank: r.number,
                endpoint: r.endpoint.clone(),
                sent: r.counts.sent,
                dropped: r.counts.dropped,
                bytes: r.counts.bytes,
                start_sent: r.counts.start_sent,
                end_sent: r.counts.end_sent,
            })
            .collect()
    }

    /// Print the master's outcome: with `json`, the whole series' object (the summary
    /// waited for it); else the master's lines (the summary is out already).
    pub(crate) fn print_master(&self, json: bool) -> anyhow::Result<()> {
        if json {
            return self.print(true);
        }
        match &self.master {
            Some(MasterOutcome::Written(m)) => crate::vds::print_rank_master(m),
            Some(MasterOutcome::Failed { out, error }) => {
                println!("master          {} NOT written: {error}", out.display());
            }
            None => {}
        }
        Ok(())
    }

    /// Print on stdout: one JSON object, or a line for the series and one per rank.
    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        println!(
            "series {} ({}): {} images in, {} bad messages, {:.3} s, {:.3} s CPU, ended by {}",
            self.series_id,
            self.series_unique_id,
            self.images_in,
            self.bad_messages,
            self.elapsed_s,
            self.cpu_s,
            serde_json::to_value(self.ended_by)?.as_str().unwrap_or("?"),
        );
        for r in &self.ranks {
            let said = |sent: bool| if sent { "sent" } else { "NOT sent" };
            println!(
                "  rank {} {}: {} images sent, {} dropped, {} bytes; start {}, end {}",
                r.rank,
                r.endpoint,
                r.sent,
                r.dropped,
                r.bytes,
                said(r.start_sent),
                said(r.end_sent)
            );
        }
        Ok(())
    }
}
