//! The setting PVs: each edits one field of the daemon's [`Config`], through the field's own
//! type and check (`Seconds::new`, `Region::check_values`, `Binning::new`,
//! `FileTemplate::from_str`, the simulator's picture check, ...), so a rule holds alike for
//! `detflow acquire`'s flags, the TOML file and Channel Access. [`SETTINGS`] is the table:
//! PV, how a written value lands in the config, how the config's value reads back.

use detflow_ca::Value;
use detflow_engine::config::{Binning, Config, Region, Seconds, SimPicture};
use detflow_hal::PixelType;
use detflow_sim::SimMode;
use detflow_writer::{FileTemplate, WriteMode};

use crate::pvs::{self, Kind, Pv};

/// A config field's value, as its PV shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field {
    /// A whole number (DBR_LONG, an enum's index, a bo).
    Int(i64),
    /// A float (DBR_DOUBLE).
    Num(f64),
    /// A text (string or char waveform).
    Text(String),
}

impl Field {
    /// The value to post to `pv`.
    pub(crate) fn value(&self, pv: Pv) -> Value {
        match self {
            Field::Int(n) => Value::from(*n as i32),
            Field::Num(x) => Value::from(*x),
            Field::Text(t) => pvs::text_value(&pv.kind(), t),
        }
    }
}

/// One setting PV: the config field it edits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    /// The setpoint (its `_RBV` is echoed).
    pub pv: Pv,
    /// Check the written value with the field's own rules and store it; the reason when
    /// refused (the caller adds the PV and the value).
    pub write: fn(&mut Config, &Value) -> Result<(), String>,
    /// The field's value.
    pub read: fn(&Config) -> Field,
}

/// The setting for `pv`, if it edits the config.
pub(crate) fn setting(pv: Pv) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.pv == pv)
}

/// `value` as the written value is shown in a refusal: an enum's state name, a quoted text,
/// a number.
pub(crate) fn shown(pv: Pv, value: &Value) -> String {
    let num = value.get_f64(0).unwrap_or(0.0);
    match pv.kind() {
        Kind::Enum(states) => states
            .get(num as usize)
            .map_or(num.to_string(), |s| (*s).into()),
        Kind::Str | Kind::Text => format!("{:?}", value.as_text().unwrap_or_default()),
        _ => num.to_string(),
    }
}

/// A whole number from `min` to `max`.
pub(crate) fn whole(value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let num = value.get_f64(0).unwrap_or(0.0);
    if num.fract() != 0.0 || num < min as f64 || num > max as f64 {
        return Err(format!("expected a whole number from {min} to {max}"));
    }
    Ok(num as i64)
}

fn num(value: &Value) -> f64 {
    value.get_f64(0).unwrap_or(0.0)
}

fn text(value: &Value) -> String {
    value.as_text().unwrap_or_default()
}

fn flag(value: &Value) -> bool {
    num(value) != 0.0
}

/// Edit one value of the region; each value alone must fit the sensor (the whole region is
/// checked when a run starts: MinX and SizeX are written one after the other).
fn region(c: &mut Config, value: &Value, edit: fn(&mut Region, u32)) -> Result<(), String> {
    let mut r = c.detector.region();
    edit(&mut r, whole(value, 0, u32::MAX.into())? as u32);
    r.check_values(c.detector.size).map_err(|e| e.to_string())?;
    c.detector.roi = Some(r);
    Ok(())
}

fn binning(c: &mut Config, value: &Value, x: bool) -> Result<(), String> {
    let n = whole(value, 0, u32::MAX.into())? as u32;
    let b = c.detector.binning;
    let (bx, by) = if x { (n, b.y()) } else { (b.x(), n) };
    c.detector.binning = Binning::new(bx, by).map_err(|e| e.to_string())?;
    Ok(())
}

/// Edit the simulated picture, checked by the simulator's own rules.
fn picture(c: &mut Config, edit: impl FnOnce(&mut SimPicture)) -> Result<(), String> {
    let mut p = c.detector.picture();
    edit(&mut p);
    c.detector.set_picture(p);
    c.detector.params().validate().map_err(|e| e.to_string())
}

fn picture_num(
    c: &mut Config,
    v: &Value,
    field: fn(&mut SimPicture) -> &mut f64,
) -> Result<(), String> {
    let x = num(v);
    if !x.is_finite() {
        return Err("expected a finite number".into());
    }
    picture(c, |p| *field(p) = x)
}

fn picture_int(
    c: &mut Config,
    v: &Value,
    field: fn(&mut SimPicture) -> &mut i32,
) -> Result<(), String> {
    let n = whole(v, i32::MIN.into(), i32::MAX.into())? as i32;
    picture(c, |p| *field(p) = n)
}

fn picture_count(
    c: &mut Config,
    v: &Value,
    field: fn(&mut SimPicture) -> &mut u32,
) -> Result<(), String> {
    let n = whole(v, 0, i32::MAX.into())? as u32;
    picture(c, |p| *field(p) = n)
}

fn seconds(v: &Value) -> Result<Seconds, String> {
    Seconds::new(num(v)).map_err(|e| e.to_string())
}

/// NDFileWriteMode's index.
pub(crate) fn write_mode_index(mode: WriteMode) -> i64 {
    match mode {
        WriteMode::Single => 0,
        WriteMode::Capture => 1,
        WriteMode::Stream => 2,
    }
}

macro_rules! settings {
    ($($pv:ident: $write:expr, $read:expr;)*) => {
        /// Every setting PV, with the config field it edits.
        pub(crate) const SETTINGS: &[Setting] = &[$(Setting {
            pv: Pv::$pv,
            write: $write,
            read: $read,
        },)*];
    };
}

use Field::{Int, Num, Text};

settings! {
    // cam1: ADBase
    CamMinX: |c, v| region(c, v, |r, n| r.min_x = n), |c| Int(c.detector.region().min_x.into());
    CamMinY: |c, v| region(c, v, |r, n| r.min_y = n), |c| Int(c.detector.region().min_y.into());
    CamSizeX: |c, v| region(c, v, |r, n| r.size_x = n), |c| Int(c.detector.region().size_x.into());
    CamSizeY: |c, v| region(c, v, |r, n| r.size_y = n), |c| Int(c.detector.region().size_y.into());
    CamBinX: |c, v| binning(c, v, true), |c| Int(c.detector.binning.x().into());
    CamBinY: |c, v| binning(c, v, false), |c| Int(c.detector.binning.y().into());
    CamDataType: |c, v| {
        c.detector.dtype = PixelType::from_nd_data_type(num(v) as i32).ok_or(
            "the simulated detector makes Int8, UInt8, Int16, UInt16, Int32, UInt32, Float32 \
             and Float64",
        )?;
        Ok(())
    }, |c| Int(c.detector.dtype.nd_data_type().into());
    CamAcquireTime: |c, v| {
        c.detector.exposure = seconds(v)?;
        Ok(())
    }, |c| Num(c.detector.exposure.as_secs_f64());
    CamAcquirePeriod: |c, v| {
        c.detector.period = seconds(v)?;
        Ok(())
    }, |c| Num(c.detector.period.as_secs_f64());
    // cam1: simDetector
    CamSimMode: |c, v| {
        let index = whole(v, 0, u16::MAX.into())? as u16;
        c.detector.mode = SimMode::from_index(index).ok_or("not a simulation mode")?;
        Ok(())
    }, |c| Int(c.detector.mode.index().into());
    CamGain: |c, v| picture_num(c, v, |p| &mut p.gain), |c| Num(c.detector.picture().gain);
    CamGainX: |c, v| picture_num(c, v, |p| &mut p.gain_x), |c| Num(c.detector.picture().gain_x);
    CamGainY: |c, v| picture_num(c, v, |p| &mut p.gain_y), |c| Num(c.detector.picture().gain_y);
    CamOffset: |c, v| picture_num(c, v, |p| &mut p.offset), |c| Num(c.detector.picture().offset);
    CamNoise: |c, v| picture_num(c, v, |p| &mut p.noise), |c| Num(c.detector.picture().noise);
    CamPeakVariation: |c, v| picture_num(c, v, |p| &mut p.peak_variation),
        |c| Num(c.detector.picture().peak_variation);
    CamPeakStartX: |c, v| picture_int(c, v, |p| &mut p.peak_start_x),
        |c| Int(c.detector.picture().peak_start_x.into());
    CamPeakStartY: |c, v| picture_int(c, v, |p| &mut p.peak_start_y),
        |c| Int(c.detector.picture().peak_start_y.into());
    CamPeakWidthX: |c, v| picture_count(c, v, |p| &mut p.peak_width_x),
        |c| Int(c.detector.picture().peak_width_x.into());
    CamPeakWidthY: |c, v| picture_count(c, v, |p| &mut p.peak_width_y),
        |c| Int(c.detector.picture().peak_width_y.into());
    CamPeakNumX: |c, v| picture_count(c, v, |p| &mut p.peak_num_x),
        |c| Int(c.detector.picture().peak_num_x.into());
    CamPeakNumY: |c, v| picture_count(c, v, |p| &mut p.peak_num_y),
        |c| Int(c.detector.picture().peak_num_y.into());
    CamPeakStepX: |c, v| picture_int(c, v, |p| &mut p.peak_step_x),
        |c| Int(c.detector.picture().peak_step_x.into());
    CamPeakStepY: |c, v| picture_int(c, v, |p| &mut p.peak_step_y),
        |c| Int(c.detector.picture().peak_step_y.into());
    // HDF1: NDFile + NDFileHDF5 (FilePath is the plugin's: it resolves under the data roots;
    // the codec's PVs are `plugin::codec_setting`'s)
    HdfFileName: |c, v| {
        c.writer.name = text(v);
        Ok(())
    }, |c| Text(c.writer.name.clone());
    HdfFileNumber: |c, v| {
        c.writer.number = whole(v, i32::MIN.into(), i32::MAX.into())? as i32;
        c.writer.check_number().map_err(|e| e.reason)
    }, |c| Int(c.writer.number.into());
    HdfAutoIncrement: |c, v| {
        c.writer.auto_increment = flag(v);
        Ok(())
    }, |c| Int(c.writer.auto_increment.into());
    HdfFileTemplate: |c, v| {
        c.writer.template = text(v).parse::<FileTemplate>().map_err(|e| e.to_string())?;
        Ok(())
    }, |c| Text(c.writer.template.as_str().into());
    HdfFileWriteMode: |c, v| {
        c.writer.write_mode = match whole(v, 0, 2)? {
            0 => WriteMode::Single,
            1 => WriteMode::Capture,
            _ => WriteMode::Stream,
        };
        Ok(())
    }, |c| Int(write_mode_index(c.writer.write_mode));
    HdfNumCapture: |c, v| {
        c.writer.capture = Some(whole(v, 0, i32::MAX.into())? as u64);
        Ok(())
    },
        |c| Int(c.writer.capture.unwrap_or(0).min(i32::MAX as u64) as i64);
    HdfCreateDirectory: |c, v| {
        c.writer.create_dirs = whole(v, i32::MIN.into(), i32::MAX.into())? as i32;
        Ok(())
    },
        |c| Int(c.writer.create_dirs.into());
    HdfTempSuffix: |c, v| {
        c.writer.temp_suffix = text(v);
        Ok(())
    }, |c| Text(c.writer.temp_suffix.clone());
    HdfLazyOpen: |c, v| {
        c.writer.lazy_open = flag(v);
        Ok(())
    }, |c| Int(c.writer.lazy_open.into());
    HdfSWMRMode: |c, v| {
        c.writer.swmr = flag(v);
        Ok(())
    }, |c| Int(c.writer.swmr.into());
    HdfNumFramesFlush: |c, v| {
        c.writer.flush = whole(v, 0, i32::MAX.into())? as u64;
        c.writer.check_flushing().map_err(|e| e.reason)
    }, |c| Int(c.writer.flush.min(i32::MAX as u64) as i64);
    HdfStoreAttr: |c, v| {
        c.writer.attributes = flag(v);
        Ok(())
    }, |c| Int(c.writer.attributes.into());
    HdfStorePerform: |c, v| {
        c.writer.performance = flag(v);
        Ok(())
    }, |c| Int(c.writer.performance.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write `value` to `pv` in `config` as the IOC does: refused naming the PV and the value.
    fn put(config: &mut Config, pv: Pv, value: Value) -> Result<Field, String> {
        let s = setting(pv).expect("a setting PV");
        let mut next = config.clone();
        (s.write)(&mut next, &value).map_err(|why| format!("{pv} {}: {why}", shown(pv, &value)))?;
        *config = next;
        Ok((s.read)(config))
    }

    fn small() -> Config {
        let mut c = Config::default();
        c.detector.size = "64x48".parse().unwrap();
        c
    }

    #[test]
    fn a_good_value_lands_in_the_config_and_reads_back() {
        let mut c = small();
        assert_eq!(put(&mut c, Pv::CamSizeX, Value::from(32.0)), Ok(Int(32)));
        assert_eq!(put(&mut c, Pv::CamMinY, Value::from(8)), Ok(Int(8)));
        assert_eq!(c.detector.roi, Some("0,8,32x48".parse().unwrap()));
        assert_eq!(put(&mut c, Pv::CamBinY, Value::from(4)), Ok(Int(4)));
        assert_eq!(c.detector.binning, "1x4".parse().unwrap());
        assert_eq!(
            put(&mut c, Pv::CamAcquireTime, Value::from(0.25)),
            Ok(Num(0.25))
        );
        assert_eq!(c.detector.exposure, Seconds::new(0.25).unwrap());
        assert_eq!(put(&mut c, Pv::CamGain, Value::from(3.5)), Ok(Num(3.5)));
        assert_eq!(c.detector.params().gain, 3.5);
        assert_eq!(put(&mut c, Pv::CamDataType, Value::from(1)), Ok(Int(1)));
        assert_eq!(c.detector.dtype, PixelType::U8);
        let t = "%s%s_%3.3d.h5";
        assert_eq!(
            put(&mut c, Pv::HdfFileTemplate, Value::char_string(t)),
            Ok(Text(t.into()))
        );
        assert_eq!(c.writer.template.as_str(), t);
        assert_eq!(
            put(&mut c, Pv::HdfFileWriteMode, Value::from(1)),
            Ok(Int(1))
        );
        assert_eq!(c.writer.write_mode, WriteMode::Capture);
        assert_eq!(put(&mut c, Pv::HdfNumCapture, Value::from(7)), Ok(Int(7)));
        assert_eq!(c.writer.capture, Some(7));
        // Every row reads back what it wrote.
        for s in SETTINGS {
            let now = (s.read)(&c);
            let value = now.value(s.pv);
            assert_eq!(put(&mut c, s.pv, value), Ok(now), "{}", s.pv);
        }
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_pv_and_the_value() {
        let mut c = small();
        let before = c.clone();
        for (pv, value, says) in [
            (
                Pv::CamSizeX,
                Value::from(100_000),
                "cam1:SizeX 100000: width 100000: expected",
            ),
            (Pv::CamMinX, Value::from(64), "cam1:MinX 64: x 64"),
            (
                Pv::CamBinX,
                Value::from(0),
                "cam1:BinX 0: x 0: expected a whole number from 1",
            ),
            (
                Pv::CamAcquireTime,
                Value::from(-1.0),
                "cam1:AcquireTime -1: expected seconds",
            ),
            (
                Pv::CamDataType,
                Value::from(6),
                "cam1:DataType Int64: the simulated detector",
            ),
            (
                Pv::CamPeakWidthX,
                Value::from(0),
                "cam1:PeakWidthX 0: peak_width_x=0",
            ),
            (
                Pv::CamGain,
                Value::from(f64::NAN),
                "cam1:Gain NaN: expected a finite",
            ),
            (
                Pv::HdfNumCapture,
                Value::from(-5),
                "HDF1:NumCapture -5: expected a whole",
            ),
            (
                Pv::HdfFileNumber,
                Value::from(-1),
                "HDF1:FileNumber -1: file numbers start at 0",
            ),
            (
                Pv::HdfFileTemplate,
                Value::char_string("%s%q"),
                "HDF1:FileTemplate \"%s%q\": ",
            ),
        ] {
            let e = put(&mut c, pv, value).unwrap_err();
            assert!(e.starts_with(says), "{e}");
        }
        assert_eq!(c, before, "nothing refused reaches the config");
    }
}
