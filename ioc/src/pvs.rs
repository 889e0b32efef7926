//! The areaDetector PV set the daemon serves: every PV that ophyd's ADSimDetector device
//! (apstools `ad_creator` with cam1:, HDF1:, image1:) and ophyd-async's `SimDetector` with its
//! HDF writer declare, with areaDetector's record types, enum strings and precision.
//!
//! The names come from the two lists kept beside this file (made from the clients' own
//! classes, see `specs/bluesky-clients.md`); the type of each comes from [`kind`], by the
//! name without its plugin and `_RBV`, as the ADCore / ADSimDetector templates define it.

use std::collections::BTreeSet;

use detflow_ca::{Access, NativeType, PvSpec, Value};

/// PVs of ophyd's device: `suffix<TAB>dotted name<TAB>...`, `#` comments.
const OPHYD_PVS: &str = include_str!("ophyd_pvs.txt");
/// PVs of ophyd-async's device: `read_pv<TAB>write_pv<TAB>...`.
const OPHYD_ASYNC_PVS: &str = include_str!("ophyd_async_pvs.txt");

/// PVs of ours, beside areaDetector's.
pub const DETFLOW_PVS: &[&str] = &[
    // Any detflow codec (`bszstd:3`, `zstd:5`, ...), for codecs the Compression enum cannot
    // name; empty: Compression decides.
    "HDF1:Codec",
    "HDF1:Codec_RBV",
    // Every frame lost anywhere (detector FIFO, link, ring, writer), since start-up.
    "cam1:DroppedFrames_RBV",
];

/// Every PV suffix served (after the prefix), sorted; field channels such as
/// `cam1:DataType_RBV.DISA` are served by the CA server on their record.
pub fn suffixes() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let lines = OPHYD_PVS.lines().chain(OPHYD_ASYNC_PVS.lines());
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let mut fields = line.split('\t');
        let read = fields.next().unwrap_or_default();
        // ophyd-async's list gives the write PV second when it differs.
        let write = if line.contains("\tSignal") {
            fields.next().unwrap_or_default()
        } else {
            ""
        };
        for name in [read, write] {
            let name = name.split('.').next().unwrap_or_default();
            if name.contains(':') {
                all.insert(name.to_owned());
            }
        }
    }
    all.extend(DETFLOW_PVS.iter().map(|s| (*s).to_owned()));
    all
}

/// The plugin (`cam1`, `HDF1`, `image1`) and the base name (no `_RBV`) of a suffix.
pub fn split(suffix: &str) -> (&str, &str) {
    let (plugin, name) = suffix.split_once(':').unwrap_or(("", suffix));
    (plugin, name.strip_suffix("_RBV").unwrap_or(name))
}

/// What a PV is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// DBR_ENUM with these states.
    Enum(&'static [&'static str]),
    /// DBR_LONG.
    Long,
    /// DBR_DOUBLE with this precision and units.
    Double(i16, &'static str),
    /// DBR_STRING (stringin/stringout, 40 characters).
    Str,
    /// A long string: CHAR waveform, NELM 256.
    Text,
    /// A waveform of LONGs (NDArray dimensions).
    LongArray(usize),
    /// image1:ArrayData: the image, its element type chosen at start-up.
    Image,
}

/// No/Yes (bo).
pub const NO_YES: &[&str] = &["No", "Yes"];
/// Disable/Enable (bo).
pub const DISABLE_ENABLE: &[&str] = &["Disable", "Enable"];
/// NDDataType, in areaDetector's order.
pub const DATA_TYPES: &[&str] = &[
    "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float32", "Float64",
];
/// NDColorMode, in areaDetector's order.
pub const COLOR_MODES: &[&str] = &[
    "Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421",
];
/// ADStatus: DetectorState_RBV's 11 states.
pub const DETECTOR_STATES: &[&str] = &[
    "Idle",
    "Acquire",
    "Readout",
    "Correct",
    "Saving",
    "Aborting",
    "Error",
    "Waiting",
    "Initializing",
    "Disconnected",
    "Aborted",
];
/// ADImageMode.
pub const IMAGE_MODES: &[&str] = &["Single", "Multiple", "Continuous"];
/// NDFileWriteMode.
pub const WRITE_MODES: &[&str] = &["Single", "Capture", "Stream"];
/// NDFileHDF5 Compression, exactly (ophyd-async checks the set).
pub const COMPRESSIONS: &[&str] = &[
    "None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG",
];
/// NDFileHDF5 BloscCompressor.
pub const BLOSC_COMPRESSORS: &[&str] = &["blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd"];
/// NDFileHDF5 BloscShuffle.
pub const BLOSC_SHUFFLES: &[&str] = &["None", "ByteShuffle", "BitShuffle"];
/// simDetector SimMode.
pub const SIM_MODES: &[&str] = &["LinearRamp", "Peaks", "Sine", "Offset&Noise"];

/// The type of a PV by plugin and base name (ADBase, simDetector, NDPluginBase, NDFile,
/// NDFileHDF5, NDStdArrays templates). Names not listed are LONGs.
pub fn kind(plugin: &str, base: &str) -> Kind {
    use Kind::*;
    match base {
        "Acquire" => Enum(&["Done", "Acquire"]),
        "AcquireBusy" => Enum(&["Done", "Acquiring"]),
        "Capture" => Enum(&["Done", "Capture"]),
        "ReadFile" | "ReadStatus" => Enum(&["Done", "Read"]),
        "WriteFile" => Enum(&["Done", "Write"]),
        "FlushNow" => Enum(&["Done", "Flush"]),
        "ImageMode" => Enum(IMAGE_MODES),
        "TriggerMode" => Enum(&["Internal", "External"]),
        "ArrayCallbacks" | "EnableCallbacks" => Enum(DISABLE_ENABLE),
        "BlockingCallbacks" | "WaitForPlugins" | "AutoIncrement" | "AutoSave" | "LazyOpen"
        | "DeleteDriverFile" | "FilePathExists" | "ReverseX" | "ReverseY" | "StoreAttr"
        | "StorePerform" | "DimAttDatasets" | "ChunkSizeAuto" | "XMLValid" => Enum(NO_YES),
        "FileWriteMode" => Enum(WRITE_MODES),
        "Compression" => Enum(COMPRESSIONS),
        "BloscCompressor" => Enum(BLOSC_COMPRESSORS),
        "BloscShuffle" => Enum(BLOSC_SHUFFLES),
        "DataType" => Enum(DATA_TYPES),
        "ColorMode" => Enum(COLOR_MODES),
        "BayerPattern" => Enum(&["RGGB", "GBRG", "GRBG", "BGGR"]),
        "DetectorState" => Enum(DETECTOR_STATES),
        "FrameType" => Enum(&["Normal", "Background", "FlatField"]),
        "ShutterMode" => Enum(&["None", "EPICS PV", "Detector output"]),
        "ShutterControl" | "ShutterControlEPICS" => Enum(&["Close", "Open"]),
        "ShutterStatus" | "ShutterStatusEPICS" => Enum(&["Closed", "Open"]),
        "SimMode" => Enum(SIM_MODES),
        "FileFormat" => Enum(&["HDF5", "Invalid"]),
        "WriteStatus" => Enum(&["Write OK", "Write error"]),
        "PositionMode" | "SWMRMode" => Enum(&["Off", "On"]),
        "SWMRActive" => Enum(&["Off", "Active"]),
        "SWMRSupported" => Enum(&["Not Supported", "Supported"]),
        "SortMode" => Enum(&["Unsorted", "Sorted"]),
        "NDAttributesStatus" => Enum(&[
            "Attributes file OK",
            "File not found",
            "XML syntax error",
            "Macro substitution error",
        ]),
        "EmptyFreeList" | "ProcessPlugin" => Enum(&["Done", "Process"]),
        "AcquireTime" | "AcquirePeriod" | "ShutterOpenDelay" | "ShutterCloseDelay" => Double(3, ""),
        "Gain" | "GainX" | "GainY" | "GainRed" | "GainGreen" | "GainBlue" | "Offset" | "Noise"
        | "PeakVariation" | "FillValue" => Double(3, ""),
        "Temperature" | "TemperatureActual" | "TimeRemaining" => Double(1, ""),
        "ArrayRate" | "MaxArrayRate" | "MaxArrayRate_COUT" => Double(1, ""),
        "MaxByteRate" | "IOSpeed" => Double(1, "MB/s"),
        "PoolMaxMem" | "PoolUsedMem" => Double(1, "MB"),
        "ExecutionTime" | "SortTime" | "RunTime" => Double(3, "ms"),
        "MinCallbackTime" => Double(3, "s"),
        "TimeStamp" => Double(3, "s"),
        "ShutterOpenEPICS" | "ShutterCloseEPICS" => Double(3, ""),
        "FilePath" | "FileName" | "FileTemplate" | "FullFileName" | "NDAttributesFile"
        | "NDAttributesMacros" | "XMLFileName" | "XMLErrorMsg" | "StatusMessage"
        | "StringToServer" | "StringFromServer" | "WriteMessage" | "TempSuffix" | "Codec" => Text,
        "PortName" | "NDArrayPort" | "PluginType" | "Manufacturer" | "Model" | "SerialNumber"
        | "FirmwareVersion" | "SDKVersion" | "DriverVersion" | "ADCoreVersion"
        | "HDF5VersionInfo" => Str,
        b if b.starts_with("ExtraDimName") || b.starts_with("PosNameDim") => Str,
        b if b.starts_with("PosIndexDim") => Str,
        b if b.starts_with("Dim") && b.ends_with("SA") => LongArray(10),
        "Dimensions" => LongArray(10),
        "ArrayData" if plugin == "image1" => Image,
        _ => Long,
    }
}

/// The PV definition for `suffix` (served under `prefix`); `image` is the element type and
/// count of `image1:ArrayData`.
pub fn spec(prefix: &str, suffix: &str, image: (NativeType, usize)) -> PvSpec {
    let (plugin, base) = split(suffix);
    let name = format!("{prefix}{suffix}");
    let read_only = suffix.ends_with("_RBV") || READ_ONLY.contains(&suffix);
    let spec = match kind(plugin, base) {
        Kind::Enum(states) => {
            let mut s = PvSpec::enumeration(&name, states, 0);
            s.meta.record_type = if states.len() == 2 { "bo" } else { "mbbo" }.into();
            s
        }
        Kind::Long => PvSpec::long(&name, 0),
        Kind::Double(prec, units) => PvSpec::double(&name, 0.0).precision(prec).units(units),
        Kind::Str => PvSpec::string(&name, ""),
        Kind::Text => PvSpec::char_string(&name, 256, ""),
        Kind::LongArray(n) => PvSpec::waveform(&name, NativeType::Long, n),
        Kind::Image => PvSpec::waveform(&name, image.0, image.1),
    };
    if read_only {
        spec.access(Access::ReadOnly)
    } else {
        spec
    }
}

/// PVs without `_RBV` that clients only read (the driver sets them).
const READ_ONLY: &[&str] = &[
    "cam1:AcquireBusy",
    "HDF1:ArraySize0",
    "HDF1:ArraySize1",
    "image1:ArrayData",
];

/// A text value for a PV of any kind (Text: char string; Str: DBR_STRING).
pub fn text_value(kind: &Kind, text: &str) -> Value {
    match kind {
        Kind::Str => Value::String(vec![text.chars().take(39).collect::<String>()].into()),
        _ => Value::char_string(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_pv_is_served_once_with_its_record() {
        let all = suffixes();
        // 539 of ophyd's (less the DISA field) and ophyd-async's extras, plus ours.
        assert!(all.len() > 550, "{}", all.len());
        for needed in [
            "cam1:Acquire",
            "cam1:AcquireBusy",
            "cam1:DataType_RBV",
            "HDF1:NDArrayPort_RBV",
            "HDF1:SWMRMode_RBV",
            "HDF1:FlushNow",
            "HDF1:ArraySize0",
            "image1:ArrayData",
            "cam1:DetectorState_RBV",
        ] {
            assert!(all.contains(needed), "{needed} missing");
        }
        assert!(!all.iter().any(|s| s.contains('.')));
    }

    #[test]
    fn types_follow_areadetector() {
        assert_eq!(kind("HDF1", "Compression"), Kind::Enum(COMPRESSIONS));
        assert_eq!(kind("cam1", "AcquireTime"), Kind::Double(3, ""));
        assert_eq!(kind("HDF1", "FilePath"), Kind::Text);
        assert_eq!(kind("cam1", "PortName"), Kind::Str);
        assert_eq!(kind("HDF1", "NumCaptured"), Kind::Long);
        assert_eq!(kind("image1", "ArrayData"), Kind::Image);
        let s = spec("ad:", "cam1:DetectorState_RBV", (NativeType::Short, 4));
        assert_eq!(s.meta.enum_states.len(), 11);
        assert_eq!(s.access, Access::ReadOnly);
        assert_eq!(split("HDF1:FileNumber_RBV"), ("HDF1", "FileNumber"));
    }
}
