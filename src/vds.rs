//! `detflow vds`: a master file whose virtual dataset stitches value references together,
//! or (`--rank-files`) the master of a series dealt to N rank writers by `detflow fan`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use detflow_engine::config::FrameSize;

#[derive(Debug, Args)]
pub(crate) struct VdsArgs {
    /// The master file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Path of the virtual dataset in the master; also the source dataset of references
    /// without `::dataset` unless --source-dataset is given.
    #[arg(long, value_name = "PATH", default_value = "/entry/data/data")]
    dataset: String,
    /// Source dataset for references without `::dataset`. [default: --dataset]
    #[arg(long, value_name = "PATH")]
    source_dataset: Option<String>,
    /// Pixel type of the frames (u16 or uint16, ...), used when no source exists yet.
    #[arg(long, value_name = "TYPE", requires = "size")]
    dtype: Option<String>,
    /// Frame size, used when no source exists yet.
    #[arg(long, value_name = "WxH", requires = "dtype")]
    size: Option<FrameSize>,
    /// Fill value for points without data. [default: NaN for floats, the maximum for
    /// integers]
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    fill: Option<f64>,
    /// Also read references from a JSON-lines file written by `acquire --refs` (their dtype
    /// and shape serve when no source exists yet).
    #[arg(long, value_name = "FILE")]
    from_refs: Option<PathBuf>,
    /// Replace an existing master file.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON object with the outcome instead of text.
    #[arg(long)]
    json: bool,
    /// Value references, one per point: h5file:///abs/file.h5[::dataset][[i] or [a:b]].
    #[arg(value_name = "REF")]
    refs: Vec<String>,
    /// Build the master of a series `detflow fan` dealt to N ranks from their files
    /// (NAME_r{k}_0001.h5, in any order; a rank may be missing): every channel in image_id
    /// order, image_present and image_id, the series metadata. Files of different series
    /// are refused.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["refs", "from_refs", "dtype", "size", "source_dataset"])]
    rank_files: Vec<PathBuf>,
    /// With --rank-files: the series' number of images, for rank files that do not record
    /// it (detflow_number_of_images).
    #[arg(long, value_name = "N", requires = "rank_files")]
    number_of_images: Option<u64>,
}

pub(crate) fn print_master(m: &detflow_writer::MasterReport) {
    if m.virtual_dataset {
        println!(
            "master          {} {} {:?} {} ({} of {} sources present, {} paths)",
            m.out.display(),
            m.dataset,
            m.shape,
            m.dtype.as_deref().unwrap_or("?"),
            m.sources_present,
            m.points,
            m.source_paths
        );
    } else {
        println!(
            "master          {} holds the {} references as strings at {}",
            m.out.display(),
            m.points,
            m.refs_dataset
        );
    }
    for note in &m.notes {
        eprintln!("detflow: note: {note}");
    }
    if let Some(why) = &m.reason {
        eprintln!("detflow: warning: no virtual dataset: {why}");
    }
}

/// The master over rank files as text: the master, one line per rank, the totals.
pub(crate) fn print_rank_master(m: &detflow_writer::RankMasterReport) {
    println!(
        "master          {} {:?} {}, {} ranks x {} images per block, channels {}",
        m.out.display(),
        m.shape,
        m.dtype,
        m.ranks,
        m.frames_per_block,
        m.channels.join(", ")
    );
    for r in &m.rank_files {
        let file = r
            .file
            .as_ref()
            .map_or_else(|| "(no file)".into(), |f| f.display().to_string());
        println!(
            "  rank {:<4} {:>8}/{:<8} present  {file}",
            r.rank, r.images_present, r.images_expected
        );
    }
    println!(
        "present         {} of {} images ({} missing, {} paths)",
        m.images_present, m.number_of_images, m.images_missing, m.source_paths
    );
    for note in &m.notes {
        eprintln!("detflow: note: {note}");
    }
}

fn rank_master(args: &VdsArgs) -> anyhow::Result<ExitCode> {
    if args.dataset != detflow_writer::layout::LINK_PATH {
        anyhow::bail!(
            "--dataset {:?}: a master over rank files puts the first channel at {}",
            args.dataset,
            detflow_writer::layout::LINK_PATH
        );
    }
    let spec = detflow_writer::RankMasterSpec {
        series: detflow_writer::RankSeries {
            number_of_images: args.number_of_images,
            ..Default::default()
        },
        fill: args.fill,
        overwrite: args.overwrite,
        ..detflow_writer::RankMasterSpec::new(&args.out)
    };
    let report = detflow_writer::build_rank_master(&args.rank_files, &spec)
        .with_context(|| format!("cannot build the master file {}", args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_rank_master(&report);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn vds(args: &VdsArgs) -> anyhow::Result<ExitCode> {
    if !args.rank_files.is_empty() {
        return rank_master(args);
    }
    let mut refs = Vec::new();
    let mut described = None;
    if let Some(path) = &args.from_refs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
            let uri = v["uri"]
                .as_str()
                .with_context(|| format!("{}:{}: no \"uri\" string", path.display(), n + 1))?;
            refs.push(uri.to_owned());
            if described.is_none() {
                let dtype = v["dtype"]
                    .as_str()
                    .and_then(detflow_writer::refs::pixel_type_from_name);
                let shape: Option<Vec<u64>> = v["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
                if let (Some(dtype), Some(shape)) = (dtype, shape)
                    && shape.len() >= 2
                {
                    let frame = [shape[shape.len() - 2], shape[shape.len() - 1]];
                    described = Some(detflow_writer::PointDescription {
                        dtype,
                        frame_shape: frame,
                    });
                }
            }
        }
    }
    refs.extend(args.refs.iter().cloned());
    if refs.is_empty() {
        anyhow::bail!(
            "no references given: list them after the options, use --from-refs, or give \
             --rank-files"
        );
    }
    if let (Some(dtype), Some(size)) = (&args.dtype, &args.size) {
        let dtype = detflow_writer::refs::pixel_type_from_name(dtype).with_context(|| {
            format!("invalid dtype {dtype:?}: expected u8 u16 u32 i8 i16 i32 f32 f64")
        })?;
        described = Some(detflow_writer::PointDescription {
            dtype,
            frame_shape: [u64::from(size.height()), u64::from(size.width())],
        });
    }
    let spec = detflow_writer::VdsSpec {
        dataset: args.dataset.clone(),
        source_dataset: args
            .source_dataset
            .clone()
            .unwrap_or_else(|| args.dataset.clone()),
        description: described,
        fill: args.fill,
        overwrite: args.overwrite,
        ..detflow_writer::VdsSpec::new(&args.out)
    };
    let report = detflow_writer::build_master(&refs, &spec)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        if let Some(why) = &report.reason {
            eprintln!("detflow: warning: no virtual dataset: {why}");
        }
    } else {
        print_master(&report);
    }
    Ok(ExitCode::SUCCESS)
}
