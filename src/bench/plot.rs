//! `detflow bench --plot FILE.png`: the table as one bar chart. Per codec, our frame rate
//! stands beside the compression bound (workers x the codec's single-thread rate), the raw
//! sequential write and the plain h5py writer, so a reader sees at a glance how close each
//! codec comes to what limits it. Drawn with plotters into a PNG, with a font carried in the
//! binary: no system font library is needed.

use std::error::Error;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{BenchPlan, BenchRow};

/// DejaVu Sans cut down to ASCII (see `font/LICENSE`).
const FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");
/// The name plotters finds the font by.
const FAMILY: &str = "sans-serif";

/// The bars of one codec, in drawing order: label and colour.
const SERIES: [(&str, RGBColor); 4] = [
    ("detflow fps", RGBColor(31, 119, 180)),
    ("bound: workers x codec fps/thread", RGBColor(174, 199, 232)),
    ("raw sequential write fps", RGBColor(127, 127, 127)),
    ("h5py + hdf5plugin fps", RGBColor(255, 127, 14)),
];

/// A PNG file that can be written, and its size in pixels.
#[derive(Debug)]
pub(crate) struct Target {
    path: PathBuf,
    size: (u32, u32),
}

impl Target {
    /// Check before any run that `path` names a PNG that can be created and `size` (`WxH`)
    /// a sensible image; the errors name `--plot` or `--plot-size` and the value.
    pub(crate) fn check(path: &Path, size: &str) -> anyhow::Result<Target> {
        let size = parse_size(size).ok_or_else(|| {
            anyhow::anyhow!("invalid --plot-size {size:?}: give WxH, each 200 to 8000 pixels")
        })?;
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            anyhow::bail!(
                "invalid --plot {}: the plot is a PNG file, its name must end in .png",
                path.display()
            );
        }
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("invalid --plot {}: cannot write it", path.display()))?;
        if !existed {
            // Made only to prove it can be: a bench that fails leaves no empty PNG behind.
            let _ = std::fs::remove_file(path);
        }
        Ok(Target {
            path: path.to_owned(),
            size,
        })
    }

    /// Where the PNG goes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Draw `rows` of `plan` into the PNG.
    pub(crate) fn draw(&self, plan: &BenchPlan, rows: &[BenchRow]) -> anyhow::Result<()> {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow::anyhow!("the plot's built-in font does not load"))?;
        draw_chart(&self.path, self.size, &title(plan, rows), rows)
            .map_err(|e| anyhow::anyhow!("cannot draw --plot {}: {e}", self.path.display()))
    }
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    let ok = |v: u32| (200..=8000).contains(&v);
    (ok(w) && ok(h)).then_some((w, h))
}

/// The chart's title: what was measured, with how many workers, on which day.
fn title(plan: &BenchPlan, rows: &[BenchRow]) -> String {
    let dtypes: Vec<&str> = plan.dtypes.iter().map(|d| d.name()).collect();
    let mut workers: Vec<usize> = rows
        .iter()
        .filter(|r| r.codec != "none")
        .map(|r| r.workers)
        .collect();
    workers.sort_unstable();
    workers.dedup();
    let workers = match workers.as_slice() {
        [] => "no compressors".to_string(),
        [w] => format!("{w} workers"),
        many => format!(
            "{} workers",
            many.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("/")
        ),
    };
    format!(
        "detflow bench: {}x{} {}, {} frames per run, {workers}, {}",
        plan.size.0,
        plan.size.1,
        dtypes.join(","),
        plan.frames,
        today()
    )
}

/// Today's date (UTC), as YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The four bars of a row (absent ones `None`): ours, the bound (not for `none`, whose limit
/// is the raw write), the raw write, h5py.
fn bars(r: &BenchRow) -> [Option<f64>; 4] {
    [
        Some(r.fps),
        (r.codec != "none").then_some(r.workers as f64 * r.codec_fps_1thread),
        Some(r.raw_write_fps),
        r.h5py_fps,
    ]
}

fn draw_chart(
    path: &Path,
    size: (u32, u32),
    title: &str,
    rows: &[BenchRow],
) -> Result<(), Box<dyn Error>> {
    let several_dtypes = rows.iter().any(|r| r.dtype != rows[0].dtype);
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            if several_dtypes {
                format!("{} {}", r.codec, r.dtype)
            } else {
                r.codec.clone()
            }
        })
        .collect();
    let top = rows
        .iter()
        .flat_map(|r| bars(r).into_iter().flatten())
        .fold(1.0f64, f64::max)
        // Room above the tallest bar for its value and the legend.
        * 1.35;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // The codec names go under their groups (below), not at the axis' round numbers.
        .x_labels(0)
        .y_desc("frames per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()?;
    let width = 0.8 / SERIES.len() as f64;
    for (k, (name, color)) in SERIES.iter().enumerate() {
        let offset = -0.4 + width * k as f64;
        let bars: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| bars(r)[k].map(|v| (i as f64 + offset, v)))
            .collect();
        if bars.is_empty() {
            continue;
        }
        let color = *color;
        chart
            .draw_series(bars.iter().map(|&(x0, v)| {
                Rectangle::new([(x0 + 0.01, 0.0), (x0 + width - 0.01, v)], color.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart.draw_series(bars.iter().map(|&(x0, v)| {
            Text::new(
                format!("{v:.0}"),
                (x0 + width / 2.0, v),
                (FAMILY, 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    let centred = (FAMILY, 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, label) in labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64, 0.0));
        root.draw(&Text::new(label.as_str(), (px, py + 8), centred.clone()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_since_the_epoch_are_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_429), (2025, 12, 7));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn plot_sizes_are_width_x_height_within_bounds() {
        assert_eq!(parse_size("1200x700"), Some((1200, 700)));
        assert_eq!(parse_size("800X600"), Some((800, 600)));
        assert_eq!(parse_size("10x700"), None);
        assert_eq!(parse_size("1200"), None);
        assert_eq!(parse_size("axb"), None);
    }
}
