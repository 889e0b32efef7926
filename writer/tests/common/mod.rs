//! Fixtures shared by the capture-session tests: a small frame geometry and the settings of a
//! capture into a temp directory.

use std::path::Path;

use detflow_hal::{ColorMode, FrameShape, PixelType};
use detflow_writer::{CaptureSettings, FileNaming, FrameGeometry, WriteMode};

/// 4 x 3 u16 mono frames.
pub const SHAPE: FrameShape = FrameShape {
    width: 4,
    height: 3,
    pixel_type: PixelType::U16,
    color_mode: ColorMode::Mono,
};

/// Frames of [`SHAPE`], no ROI offset, no binning.
pub fn geometry() -> FrameGeometry {
    FrameGeometry {
        shape: SHAPE,
        dim_offset: [0, 0],
        dim_binning: [1, 1],
    }
}

/// A capture into `dir`, files named `t_001.h5`, `t_002.h5`, … with AutoIncrement.
pub fn settings(dir: &Path, mode: WriteMode, num_capture: u64) -> CaptureSettings {
    CaptureSettings {
        mode,
        num_capture,
        naming: FileNaming {
            path: dir.to_str().unwrap().into(),
            name: "t".into(),
            number: 1,
            auto_increment: true,
            template: "%s%s_%3.3d.h5".parse().unwrap(),
        },
        ..CaptureSettings::default()
    }
}
