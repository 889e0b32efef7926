//! `fan --master`: at a series' end, the master file over the ranks' files, when the fan's
//! node sees them (a shared filesystem). The ranks' files `NAME_r{k}_*.h5` of the series
//! (by its `series_unique_id`) are looked for in the master's directory until each is found
//! and closed, or `--master-wait` passes; the master is then built on a thread of its own, so
//! the fan goes on taking the detector's messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use detflow_engine::ConfigError;
use detflow_hal::{Deal, PixelType};
use detflow_stream2::{Image, Start};
use detflow_writer::{RankFileInfo, RankMasterReport, RankMasterSpec, RankSeries};

/// How often the directory is looked at while rank files are awaited.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Where the master goes and where the rank files are: `--master DIR/NAME_master.h5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MasterPath {
    /// The master file.
    pub(crate) path: PathBuf,
    /// Its directory, where the rank files are looked for.
    pub(crate) dir: PathBuf,
    /// NAME: the rank files are `NAME_r{k}_*.h5`.
    pub(crate) name: String,
}

impl MasterPath {
    /// `--master PATH`: its file name must be `NAME_master.h5`.
    pub(crate) fn parse(path: &Path) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::new("master", path.display(), reason);
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| bad("expected DIR/NAME_master.h5"))?;
        let name = file
            .strip_suffix("_master.h5")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad("expected a file named NAME_master.h5, beside the ranks' NAME_r{k}_0001.h5")
            })?;
        let path = std::path::absolute(path).map_err(|e| bad(&e.to_string()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(MasterPath {
            dir,
            name: name.to_owned(),
            path,
        })
    }

    /// Rank `k` and the rest of the name (`_0001.h5`) when `file` is `NAME_r{k}_*.h5`.
    fn rank_of(&self, file: &str) -> Option<(u64, String)> {
        let rest = file.strip_prefix(&self.name)?.strip_prefix("_r")?;
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (k, suffix) = rest.split_at(digits);
        let k = k.parse().ok()?;
        (suffix.starts_with('_') && suffix.ends_with(".h5") && !suffix.ends_with("_master.h5"))
            .then(|| (k, suffix.to_owned()))
    }

    /// The ranks' files of series `unique_id` in the directory now, by rank; the suffix the
    /// first one found has (`_0001.h5`).
    fn look(&self, deal: Deal, unique_id: &str) -> (Vec<Option<RankFileInfo>>, Option<String>) {
        let mut found: Vec<Option<RankFileInfo>> = vec![None; deal.ranks() as usize];
        let mut suffix = None;
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (found, suffix);
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for file in names {
            let Some((k, rest)) = self.rank_of(&file) else {
                continue;
            };
            if k >= deal.ranks() || found[k as usize].is_some() {
                continue;
            }
            // Unreadable now (another writer holds it, not HDF5 yet): looked at again later.
            let Ok(info) = detflow_writer::read_rank_file(&self.dir.join(&file)) else {
                continue;
            };
            if info.series_unique_id.as_deref() == Some(unique_id) && info.rank == k {
                suffix.get_or_insert(rest);
                found[k as usize] = Some(info);
            }
        }
        (found, suffix)
    }
}

/// What the fan knows of a series for its master: from the `start` and the first image.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SeriesShape {
    pub(crate) number_of_images: Option<u64>,
    pub(crate) dtype: Option<PixelType>,
    pub(crate) frame_shape: Option<[u64; 2]>,
    pub(crate) channels: Vec<String>,
    /// One past the highest image_id seen: the image count when the start gives none.
    pub(crate) images_seen: u64,
}

impl SeriesShape {
    pub(crate) fn from_start(start: &Start<'_>) -> Self {
        SeriesShape {
            number_of_images: start.number_of_images.filter(|&n| n > 0),
            dtype: start.image_dtype,
            frame_shape: start
                .image_size_x
                .zip(start.image_size_y)
                .map(|(w, h)| [u64::from(h), u64::from(w)]),
            channels: start.channels.iter().map(|c| (*c).to_owned()).collect(),
            images_seen: 0,
        }
    }

    /// True while the channels or the dtype are still to be learnt from an image.
    pub(crate) fn wants_image(&self) -> bool {
        self.channels.is_empty() || self.dtype.is_none()
    }

    /// Learn the channels and the dtype from an image, as the rank writers do when the
    /// start does not say.
    pub(crate) fn learn(&mut self, image: &Image<'_>) {
        if self.channels.is_empty() {
            self.channels = image.data.iter().map(|(n, _)| (*n).to_owned()).collect();
        }
        if self.dtype.is_none() {
            self.dtype = image.data.first().and_then(|(_, a)| a.array.pixel_type());
        }
    }
}

/// One master to build at the end of a series.
#[derive(Debug, Clone)]
pub(crate) struct MasterJob {
    pub(crate) at: MasterPath,
    pub(crate) deal: Deal,
    pub(crate) unique_id: String,
    pub(crate) shape: SeriesShape,
    pub(crate) wait: Duration,
    pub(crate) overwrite: bool,
}

impl MasterJob {
    /// Wait for the rank files, build the master, log each rank's present/expected.
    pub(crate) fn run(&self) -> Result<RankMasterReport, String> {
        let deadline = Instant::now() + self.wait;
        let (found, suffix) = loop {
            let (found, suffix) = self.at.look(self.deal, &self.unique_id);
            let done = found.iter().all(|f| f.as_ref().is_some_and(|i| i.closed));
            let left = deadline.saturating_duration_since(Instant::now());
            if done || left.is_zero() {
                break (found, suffix);
            }
            std::thread::sleep(LOOK_EVERY.min(left));
        };
        for (k, f) in found.iter().enumerate() {
            match f {
                None => tracing::warn!(
                    rank = k,
                    "master: no file of rank {k} for series {} in {} after {:.1} s (--master-wait)",
                    self.unique_id,
                    self.at.dir.display(),
                    self.wait.as_secs_f64()
                ),
                Some(i) if !i.closed => {
                    tracing::warn!(rank = k, file = %i.path.display(), "master: rank {k}'s file is still open (or its writer was killed)")
                }
                Some(_) => {}
            }
        }
        let suffix = suffix.unwrap_or_else(|| "_0001.h5".into());
        let spec = RankMasterSpec {
            series: RankSeries {
                deal: Some(self.deal),
                number_of_images: self
                    .shape
                    .number_of_images
                    .or((self.shape.images_seen > 0).then_some(self.shape.images_seen)),
                dtype: self.shape.dtype,
                frame_shape: self.shape.frame_shape,
                channels: self.shape.channels.clone(),
                series_unique_id: Some(self.unique_id.clone()),
            },
            expected_files: (0..self.deal.ranks())
                .map(|k| self.at.dir.join(format!("{}_r{k}{suffix}", self.at.name)))
                .collect(),
            overwrite: self.overwrite,
            ..RankMasterSpec::new(&self.at.path)
        };
        let files: Vec<PathBuf> = found.into_iter().flatten().map(|i| i.path).collect();
        let report = detflow_writer::build_rank_master(&files, &spec).map_err(|e| e.to_string())?;
        for r in &report.rank_files {
            tracing::info!(
                rank = r.rank,
                present = r.images_present,
                expected = r.images_expected,
                "master: rank {} {}/{} images present",
                r.rank,
                r.images_present,
                r.images_expected
            );
        }
        for note in &report.notes {
            tracing::warn!("master: {note}");
        }
        tracing::info!(master = %report.out.display(), present = report.images_present, missing = report.images_missing, "master {} written: {} of {} images present", report.out.display(), report.images_present, report.number_of_images);
        Ok(report)
    }
}

#[cfg(test)]
#[path = "../../writer/tests/common/rank_files.rs"]
mod rank_files;

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_writer::Codec;

    #[test]
    fn the_master_path_names_the_rank_files() {
        let m = MasterPath::parse(Path::new("/data/scan_master.h5")).unwrap();
        assert_eq!(
            (m.dir.as_path(), m.name.as_str()),
            (Path::new("/data"), "scan")
        );
        for bad in [
            "/data/scan.h5",
            "/data/_master.h5",
            "/data/",
            "scan_master.h5x",
        ] {
            let e = MasterPath::parse(Path::new(bad)).unwrap_err();
            assert_eq!(e.setting, "master", "{bad}");
        }
        let relative = MasterPath::parse(Path::new("scan_master.h5")).unwrap();
        assert!(relative.path.is_absolute());
    }

    #[test]
    fn rank_files_are_recognised_by_name() {
        let m = MasterPath::parse(Path::new("/d/scan_master.h5")).unwrap();
        assert_eq!(m.rank_of("scan_r0_0001.h5"), Some((0, "_0001.h5".into())));
        assert_eq!(m.rank_of("scan_r12_0002.h5"), Some((12, "_0002.h5".into())));
        for not in [
            "scan_r_0001.h5",
            "scan_r1x_0001.h5",
            "scan_r1.h5",
            "scan_r1_0001.h5.tmp",
            "scanx_r1_0001.h5",
            "scan_0001.h5",
            "scan_r1_master.h5",
            "other_r1_0001.h5",
        ] {
            assert_eq!(m.rank_of(not), None, "{not}");
        }
    }

    #[test]
    fn the_files_of_the_series_are_found_among_others() {
        let dir = tempfile::tempdir().unwrap();
        let series = rank_files::TestSeries {
            file_number: 2,
            ..rank_files::TestSeries::new(Codec::None)
        };
        let older = rank_files::TestSeries {
            unique_id: "older".into(),
            file_number: 1,
            ..series.clone()
        };
        // An older series' files in the same directory, under lower numbers; rank 1's file
        // of this series is not there.
        rank_files::write_ranks(dir.path(), "scan", &older);
        let r0 = rank_files::write_rank(dir.path(), "scan", &series, 0, |_| true);
        let r2 = rank_files::write_rank(dir.path(), "scan", &series, 2, |_| true);
        let m = MasterPath::parse(&dir.path().join("scan_master.h5")).unwrap();
        let (found, suffix) = m.look(series.deal, "series-a");
        let paths: Vec<Option<PathBuf>> = found.into_iter().map(|f| f.map(|i| i.path)).collect();
        assert_eq!(paths, [Some(r0), None, Some(r2)]);
        assert_eq!(suffix.as_deref(), Some("_0002.h5"));
        let job = MasterJob {
            at: m,
            deal: series.deal,
            unique_id: "series-a".into(),
            shape: SeriesShape {
                number_of_images: Some(50),
                ..SeriesShape::default()
            },
            wait: Duration::ZERO,
            overwrite: false,
        };
        let report = job.run().unwrap();
        assert_eq!(report.images_present, 34);
        assert_eq!(
            report.rank_files[1].file.as_deref(),
            Some(dir.path().join("scan_r1_0002.h5").as_path()),
            "an absent rank is mapped by the name the others have"
        );
        // The next series' master must not replace it.
        let e = job.run().unwrap_err();
        assert!(e.contains("exists"), "{e}");
    }
}
