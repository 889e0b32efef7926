//! Rank files of one small Stream V2 series as a rank of `detflow fan` writes them (image
//! `id` at position `deal.index_in_rank(id)` of rank `deal.rank_of(id)`'s file, with its
//! image_id), and the single-writer file of the same series, for the master-file tests of
//! the writer and (by `#[path]`) of the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use detflow_hal::{ColorMode, Deal, EpicsTimestamp, FrameMeta, FrameShape, PixelType};
use detflow_writer::{
    CaptureSession, CaptureSettings, Codec, DetectorMetadata, FileNaming, FrameGeometry,
    ImageLayout, ImageWrite, RankShare,
};

/// Columns of an image.
pub const W: u32 = 16;
/// Rows of an image.
pub const H: u32 = 12;

/// One series: its images, deal, codec and channels.
#[derive(Debug, Clone)]
pub struct TestSeries {
    /// Images of the series.
    pub images: u64,
    /// How they are dealt.
    pub deal: Deal,
    /// Codec of every file.
    pub codec: Codec,
    /// Channel names, the first is `/entry/data/data`.
    pub channels: Vec<String>,
    /// `series_unique_id`.
    pub unique_id: String,
    /// Pixel type.
    pub dtype: PixelType,
    /// The number in the file names (`NAME_r{k}_0001.h5` for 1).
    pub file_number: i32,
}

impl TestSeries {
    /// 50 images of 16x12 u16 dealt to 3 ranks in blocks of 4, two channels.
    pub fn new(codec: Codec) -> Self {
        TestSeries {
            images: 50,
            deal: Deal::new(3, 4).unwrap(),
            codec,
            channels: vec!["threshold_1".into(), "threshold_2".into()],
            unique_id: "series-a".into(),
            dtype: PixelType::U16,
            file_number: 1,
        }
    }

    fn shape(&self) -> FrameShape {
        FrameShape {
            width: W,
            height: H,
            pixel_type: self.dtype,
            color_mode: ColorMode::Mono,
        }
    }
}

/// Pixels of channel `c` of image `id`, little-endian: distinct per image and channel, never
/// the fill value.
pub fn pixels(dtype: PixelType, id: u64, c: usize) -> Vec<u8> {
    (0..u64::from(W * H))
        .flat_map(|i| {
            let v = (i % 97) + id * 100 + c as u64 * 7000;
            match dtype {
                PixelType::U32 => (v as u32).to_le_bytes().to_vec(),
                _ => (v as u16).to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn settings(dir: &Path, name: &str, series: &TestSeries, num_capture: u64) -> CaptureSettings {
    CaptureSettings {
        num_capture,
        codec: series.codec,
        naming: FileNaming {
            path: dir.to_str().unwrap().into(),
            name: name.into(),
            number: series.file_number,
            auto_increment: true,
            template: "%s%s_%4.4d.h5".parse().unwrap(),
        },
        ..CaptureSettings::default()
    }
}

fn metadata(series: &TestSeries, rank: Option<RankShare>) -> DetectorMetadata {
    DetectorMetadata {
        series_id: Some(7),
        series_unique_id: Some(series.unique_id.clone()),
        description: Some("EIGER2 test".into()),
        count_time_s: Some(0.01),
        threshold_energy_ev: series
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), 6000.0 + i as f64))
            .collect(),
        goniometer: vec![("omega".into(), 10.0, 0.25)],
        rank,
        ..DetectorMetadata::default()
    }
}

/// Write the images of `ids` (each at its `number`) to a session and close it.
fn write(
    dir: &Path,
    name: &str,
    series: &TestSeries,
    num_capture: u64,
    rank: Option<RankShare>,
    ids: impl Iterator<Item = (u64, u64)>,
) -> PathBuf {
    let layout = ImageLayout {
        channels: series.channels.clone(),
        image_fields: true,
        metadata: Some(metadata(series, rank)),
    };
    let geometry = FrameGeometry {
        shape: series.shape(),
        dim_offset: [0, 0],
        dim_binning: [1, 1],
    };
    let mut session =
        CaptureSession::start_images(settings(dir, name, series, num_capture), geometry, layout)
            .unwrap();
    let mut compressor = series.codec.compressor(series.dtype);
    for (number, id) in ids {
        let chunks: Vec<Vec<u8>> = (0..series.channels.len())
            .map(|c| {
                let mut out = Vec::new();
                compressor.compress(&pixels(series.dtype, id, c), &mut out);
                out
            })
            .collect();
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let meta = FrameMeta {
            unique_id: id + 1,
            timestamp: EpicsTimestamp { sec: 1, nsec: 0 },
            unix_time_s: 0.0,
            shape: series.shape(),
        };
        session
            .push_image(
                &meta,
                &ImageWrite {
                    number,
                    channels: &refs,
                    image_id: id,
                    real_time: None,
                    start_time: None,
                    stop_time: None,
                    user_data_cbor: None,
                    user_data_json: None,
                },
            )
            .unwrap();
    }
    let (status, result) = session.finish();
    result.unwrap();
    status.files.last().unwrap().path.clone()
}

/// Rank `rank`'s file `dir/NAME_r{rank}_0001.h5` (with the series' file number), holding the
/// rank's images for which `keep(id)` is true, each at its position in the rank.
pub fn write_rank(
    dir: &Path,
    name: &str,
    series: &TestSeries,
    rank: u64,
    keep: impl Fn(u64) -> bool,
) -> PathBuf {
    write_share(dir, name, series, rank, keep, true)
}

/// As [`write_rank`], but the file is made without an image count (num_capture 0), as a
/// writer that does not know it does: its datasets grow with the images written.
pub fn write_growing_rank(
    dir: &Path,
    name: &str,
    series: &TestSeries,
    rank: u64,
    keep: impl Fn(u64) -> bool,
) -> PathBuf {
    write_share(dir, name, series, rank, keep, false)
}

/// Rank `rank`'s kept images, in a file sized for its share (`sized`) or growing.
fn write_share(
    dir: &Path,
    name: &str,
    series: &TestSeries,
    rank: u64,
    keep: impl Fn(u64) -> bool,
    sized: bool,
) -> PathBuf {
    let deal = series.deal;
    let expected = deal.images_of_rank(rank, series.images);
    let share = RankShare {
        rank,
        deal,
        number_of_images: Some(series.images),
    };
    let ids = (0..expected)
        .map(|i| (i, deal.image_id(rank, i).unwrap()))
        .filter(|&(_, id)| keep(id));
    let num_capture = if sized { expected } else { 0 };
    write(dir, name, series, num_capture, Some(share), ids)
}

/// Every rank's file, every image in it.
pub fn write_ranks(dir: &Path, name: &str, series: &TestSeries) -> Vec<PathBuf> {
    (0..series.deal.ranks())
        .map(|r| write_rank(dir, name, series, r, |_| true))
        .collect()
}

/// The single-writer file `dir/NAME_0001.h5` of the whole series.
pub fn write_single(dir: &Path, name: &str, series: &TestSeries) -> PathBuf {
    write(
        dir,
        name,
        series,
        series.images,
        None,
        (0..series.images).map(|id| (id, id)),
    )
}
