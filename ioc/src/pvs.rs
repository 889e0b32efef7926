//! The areaDetector PV set the daemon serves: every PV that ophyd's ADSimDetector device
//! (apstools `ad_creator` with cam1:, HDF1:, image1:) and ophyd-async's `SimDetector` with its
//! HDF writer declare, with areaDetector's record types, enum strings and precision.
//!
//! Each PV is a variant of [`Pv`], generated from one table ([`table`]): its name,
//! its [`Kind`] (as the ADCore / ADSimDetector templates define it), whether clients may write
//! it, and the `_RBV` a setpoint echoes to. A misspelt PV does not compile; a test checks the
//! table against the clients' own lists kept beside this file (see `specs/bluesky-clients.md`).

use std::fmt;

use detflow_ca::{Access, NativeType, PvSpec, Value};

/// Defines [`Pv`] from the table's rows: `Variant "suffix" R|W Kind [=> Readback];`.
macro_rules! pv_table {
    (@access R) => { Access::ReadOnly };
    (@access W) => { Access::ReadWrite };
    (@readback) => { None };
    (@readback $rbv:ident) => { Some(Pv::$rbv) };
    ($($variant:ident $name:literal $access:ident $kind:expr $(=> $rbv:ident)?;)*) => {
        /// A PV the daemon serves, by its suffix (the name after the prefix).
        ///
        /// ```
        /// use detflow_ioc::pvs::Pv;
        /// assert_eq!(Pv::CamAcquireRbv.name(), "cam1:Acquire_RBV");
        /// assert_eq!(Pv::CamAcquire.readback(), Some(Pv::CamAcquireRbv));
        /// ```
        ///
        /// A name that is not in the table does not compile:
        ///
        /// ```compile_fail
        /// let _ = detflow_ioc::pvs::Pv::CamAquireRbv;
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Pv {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl Pv {
            /// Every PV, in the table's order: `Pv::ALL[pv as usize] == pv`.
            pub const ALL: &'static [Pv] = &[$(Pv::$variant,)*];

            /// The suffix, e.g. `cam1:Acquire_RBV`.
            pub const fn name(self) -> &'static str {
                match self { $(Pv::$variant => $name,)* }
            }

            /// What the PV holds.
            pub fn kind(self) -> Kind {
                use Kind::*;
                match self { $(Pv::$variant => $kind,)* }
            }

            /// What clients may do with it.
            pub const fn access(self) -> Access {
                match self { $(Pv::$variant => pv_table!(@access $access),)* }
            }

            /// The readback (`X_RBV`) a write to this setpoint is echoed to, if served.
            pub const fn readback(self) -> Option<Pv> {
                match self { $(Pv::$variant => pv_table!(@readback $($rbv)?),)* }
            }

            /// The variant's name, to check it against the PV's.
            #[cfg(test)]
            pub(super) fn variant(self) -> &'static str {
                match self { $(Pv::$variant => stringify!($variant),)* }
            }
        }
    };
}

pub mod table;
pub use table::Pv;

/// A plugin of the daemon's, as the first part of a PV's suffix names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `cam1:`, the driver (ADBase + simDetector).
    Cam,
    /// `HDF1:`, the file plugin (NDFileHDF5).
    Hdf,
    /// `image1:`, the preview (NDStdArrays).
    Image,
}

impl Pv {
    /// The plugin the PV belongs to.
    pub fn plugin(self) -> Plugin {
        match self.name().split_once(':') {
            Some(("cam1", _)) => Plugin::Cam,
            Some(("HDF1", _)) => Plugin::Hdf,
            _ => Plugin::Image,
        }
    }

    /// Whether this is a readback (`_RBV`).
    pub fn is_readback(self) -> bool {
        self.name().ends_with("_RBV")
    }
}

impl fmt::Display for Pv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// PVs of ours, beside areaDetector's: `HDF1:Codec` takes any detflow codec (`bszstd:3`,
/// `zstd:5`, ...), for codecs the Compression enum cannot name (empty: Compression decides);
/// `cam1:DroppedFrames_RBV` counts every frame lost anywhere (detector FIFO, link, ring,
/// writer) since start-up.
pub const DETFLOW_PVS: &[Pv] = &[Pv::HdfCodec, Pv::HdfCodecRbv, Pv::CamDroppedFramesRbv];

/// The description of its input that a plugin (HDF1, image1) shows, as NDPluginBase does:
/// posted, with each readback, whenever the cam's output changes. Fields are named as the PVs.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct ArrayInfo {
    pub array_size0: Pv,
    pub array_size1: Pv,
    pub array_size2: Pv,
    pub array_size_x: Pv,
    pub array_size_y: Pv,
    pub array_size_z: Pv,
    pub ndimensions: Pv,
    pub data_type: Pv,
    pub color_mode: Pv,
    pub array_size: Pv,
    pub dimensions: Pv,
}

impl ArrayInfo {
    /// HDF1's.
    pub const HDF: ArrayInfo = ArrayInfo {
        array_size0: Pv::HdfArraySize0,
        array_size1: Pv::HdfArraySize1,
        array_size2: Pv::HdfArraySize2,
        array_size_x: Pv::HdfArraySizeXRbv,
        array_size_y: Pv::HdfArraySizeYRbv,
        array_size_z: Pv::HdfArraySizeZRbv,
        ndimensions: Pv::HdfNDimensions,
        data_type: Pv::HdfDataType,
        color_mode: Pv::HdfColorMode,
        array_size: Pv::HdfArraySizeRbv,
        dimensions: Pv::HdfDimensions,
    };
    /// image1's.
    pub const IMAGE: ArrayInfo = ArrayInfo {
        array_size0: Pv::ImageArraySize0,
        array_size1: Pv::ImageArraySize1,
        array_size2: Pv::ImageArraySize2,
        array_size_x: Pv::ImageArraySizeXRbv,
        array_size_y: Pv::ImageArraySizeYRbv,
        array_size_z: Pv::ImageArraySizeZRbv,
        ndimensions: Pv::ImageNDimensions,
        data_type: Pv::ImageDataType,
        color_mode: Pv::ImageColorMode,
        array_size: Pv::ImageArraySizeRbv,
        dimensions: Pv::ImageDimensions,
    };
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
pub const SIM_MODES: &[&str] = &detflow_sim::SimMode::AD_LABELS;

/// Done/Acquire (Acquire).
pub const DONE_ACQUIRE: &[&str] = &["Done", "Acquire"];
/// Done/Acquiring (AcquireBusy).
pub const DONE_ACQUIRING: &[&str] = &["Done", "Acquiring"];
/// Done/Capture (Capture).
pub const DONE_CAPTURE: &[&str] = &["Done", "Capture"];
/// Done/Read (ReadFile, ReadStatus).
pub const DONE_READ: &[&str] = &["Done", "Read"];
/// Done/Write (WriteFile).
pub const DONE_WRITE: &[&str] = &["Done", "Write"];
/// Done/Flush (FlushNow).
pub const DONE_FLUSH: &[&str] = &["Done", "Flush"];
/// Done/Process (EmptyFreeList, ProcessPlugin).
pub const DONE_PROCESS: &[&str] = &["Done", "Process"];
/// ADTriggerMode as simDetector has it.
pub const TRIGGER_MODES: &[&str] = &["Internal", "External"];
/// NDBayerPattern.
pub const BAYER_PATTERNS: &[&str] = &["RGGB", "GBRG", "GRBG", "BGGR"];
/// ADFrameType.
pub const FRAME_TYPES: &[&str] = &["Normal", "Background", "FlatField"];
/// ADShutterMode.
pub const SHUTTER_MODES: &[&str] = &["None", "EPICS PV", "Detector output"];
/// ShutterControl, ShutterControlEPICS.
pub const CLOSE_OPEN: &[&str] = &["Close", "Open"];
/// ShutterStatus, ShutterStatusEPICS.
pub const CLOSED_OPEN: &[&str] = &["Closed", "Open"];
/// NDFileFormat of NDFileHDF5.
pub const FILE_FORMATS: &[&str] = &["HDF5", "Invalid"];
/// NDWriteStatus.
pub const WRITE_STATUSES: &[&str] = &["Write OK", "Write error"];
/// Off/On (PositionMode, SWMRMode).
pub const OFF_ON: &[&str] = &["Off", "On"];
/// SWMRActive.
pub const OFF_ACTIVE: &[&str] = &["Off", "Active"];
/// SWMRSupported.
pub const SWMR_SUPPORT: &[&str] = &["Not Supported", "Supported"];
/// SortMode.
pub const SORT_MODES: &[&str] = &["Unsorted", "Sorted"];
/// NDAttributesStatus.
pub const ATTRIBUTES_STATUSES: &[&str] = &[
    "Attributes file OK",
    "File not found",
    "XML syntax error",
    "Macro substitution error",
];

/// The PV definition for `pv` (served under `prefix`); `image` is the element type and count
/// of `image1:ArrayData`.
pub fn spec(prefix: &str, pv: Pv, image: (NativeType, usize)) -> PvSpec {
    let name = format!("{prefix}{pv}");
    let spec = match pv.kind() {
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
    spec.access(pv.access())
}

/// A text value for a PV of any kind (Text: char string; Str: DBR_STRING).
pub fn text_value(kind: &Kind, text: &str) -> Value {
    match kind {
        Kind::Str => Value::String(vec![text.chars().take(39).collect::<String>()].into()),
        _ => Value::char_string(text),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The PVs the clients' own lists name: ophyd's (`suffix<TAB>dotted name<TAB>...`) and
    /// ophyd-async's (`read_pv<TAB>write_pv<TAB>...`, the write PV given when it differs);
    /// field channels such as `cam1:DataType_RBV.DISA` are served on their record.
    fn listed() -> BTreeSet<&'static str> {
        let mut all = BTreeSet::new();
        let lists = [
            include_str!("ophyd_pvs.txt"),
            include_str!("ophyd_async_pvs.txt"),
        ];
        let lines = lists.iter().flat_map(|list| list.lines());
        for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let mut fields = line.split('\t');
            let read = fields.next().unwrap_or_default();
            let write = if line.contains("\tSignal") {
                fields.next().unwrap_or_default()
            } else {
                ""
            };
            for name in [read, write] {
                let name = name.split('.').next().unwrap_or_default();
                if name.contains(':') {
                    all.insert(name);
                }
            }
        }
        all
    }

    #[test]
    fn the_table_serves_exactly_what_the_clients_name_and_ours() {
        let listed = listed();
        let ours: BTreeSet<&str> = DETFLOW_PVS.iter().map(|pv| pv.name()).collect();
        let served: BTreeSet<&str> = Pv::ALL.iter().map(|pv| pv.name()).collect();
        assert_eq!(served.len(), Pv::ALL.len(), "a name is in the table twice");
        assert!(listed.is_disjoint(&ours), "ours are areaDetector's");
        let missing: Vec<_> = listed.difference(&served).collect();
        assert!(missing.is_empty(), "listed but not served: {missing:?}");
        let extra: Vec<_> = served
            .difference(&listed)
            .filter(|n| !ours.contains(*n))
            .collect();
        assert!(extra.is_empty(), "served but not listed: {extra:?}");
        // 539 of ophyd's (less the DISA field) and ophyd-async's extras, plus ours.
        assert_eq!(served.len(), 553);
    }

    #[test]
    fn variants_access_and_readbacks_follow_the_names() {
        let served: BTreeSet<&str> = Pv::ALL.iter().map(|pv| pv.name()).collect();
        let mut read_only_setpoints = Vec::new();
        for (i, &pv) in Pv::ALL.iter().enumerate() {
            assert_eq!(pv as usize, i);
            let (plugin, rest) = pv.name().split_once(':').unwrap();
            let mut variant = match plugin {
                "cam1" => "Cam",
                "HDF1" => "Hdf",
                "image1" => "Image",
                other => panic!("{pv}: unknown plugin {other}"),
            }
            .to_owned();
            for (j, part) in rest.split('_').enumerate() {
                if j == 0 {
                    variant += part;
                } else {
                    variant += &part[..1];
                    variant += &part[1..].to_lowercase();
                }
            }
            assert_eq!(pv.variant(), variant);
            let rbv = format!("{pv}_RBV");
            let expected = (!pv.is_readback() && served.contains(rbv.as_str())).then_some(rbv);
            assert_eq!(pv.readback().map(|r| r.name().to_owned()), expected);
            if pv.is_readback() {
                assert_eq!(pv.access(), Access::ReadOnly, "{pv}");
            } else if pv.access() == Access::ReadOnly {
                read_only_setpoints.push(pv);
            }
        }
        assert_eq!(
            read_only_setpoints,
            [
                Pv::HdfArraySize0,
                Pv::HdfArraySize1,
                Pv::CamAcquireBusy,
                Pv::ImageArrayData
            ]
        );
        assert_eq!(Pv::CamAcquire.plugin(), Plugin::Cam);
        assert_eq!(Pv::HdfCodecRbv.plugin(), Plugin::Hdf);
        assert_eq!(Pv::ImageArrayData.plugin(), Plugin::Image);
    }

    #[test]
    fn types_follow_areadetector() {
        assert_eq!(Pv::HdfCompression.kind(), Kind::Enum(COMPRESSIONS));
        assert_eq!(Pv::CamAcquireTime.kind(), Kind::Double(3, ""));
        assert_eq!(Pv::HdfFilePath.kind(), Kind::Text);
        assert_eq!(Pv::CamPortNameRbv.kind(), Kind::Str);
        assert_eq!(Pv::HdfNumCapturedRbv.kind(), Kind::Long);
        assert_eq!(Pv::ImageArrayData.kind(), Kind::Image);
        let s = spec("ad:", Pv::CamDetectorStateRbv, (NativeType::Short, 4));
        assert_eq!(s.name, "ad:cam1:DetectorState_RBV");
        assert_eq!(s.meta.enum_states.len(), 11);
        assert_eq!(s.access, Access::ReadOnly);
        assert_eq!(Pv::HdfFileNumber.readback(), Some(Pv::HdfFileNumberRbv));
        assert_eq!(Pv::HdfFileNumberRbv.readback(), None);
    }
}
