//! Values and metadata of a process variable: the seven native CA types, arrays shared by
//! `Arc` (so a posted frame is never copied per subscriber), alarm state, timestamps, and the
//! display metadata (units, precision, limits, enum states) that GR/CTRL reads carry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest DBR_STRING text: 40 bytes including the NUL.
pub const MAX_STRING: usize = 39;
/// Longest enum state string: 26 bytes including the NUL.
pub const MAX_ENUM_STRING: usize = 25;
/// Most enum states CA can carry.
pub const MAX_ENUM_STATES: usize = 16;
/// Longest units string: 8 bytes including the NUL.
pub const MAX_UNITS: usize = 7;

/// A native field type (DBF); its id is also the plain DBR type (0–6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NativeType {
    /// `char[40]` text.
    String = 0,
    /// `i16`.
    Short = 1,
    /// `f32`.
    Float = 2,
    /// `u16` state index.
    Enum = 3,
    /// `u8`.
    Char = 4,
    /// `i32`.
    Long = 5,
    /// `f64`.
    Double = 6,
}

impl NativeType {
    /// The type for a DBF id 0–6.
    pub fn from_id(id: u16) -> Option<NativeType> {
        Some(match id {
            0 => NativeType::String,
            1 => NativeType::Short,
            2 => NativeType::Float,
            3 => NativeType::Enum,
            4 => NativeType::Char,
            5 => NativeType::Long,
            6 => NativeType::Double,
            _ => return None,
        })
    }

    /// The DBF id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Bytes one element takes on the wire.
    pub fn element_size(self) -> usize {
        match self {
            NativeType::String => 40,
            NativeType::Short | NativeType::Enum => 2,
            NativeType::Float | NativeType::Long => 4,
            NativeType::Char => 1,
            NativeType::Double => 8,
        }
    }

    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            NativeType::String => "string",
            NativeType::Short => "short",
            NativeType::Float => "float",
            NativeType::Enum => "enum",
            NativeType::Char => "char",
            NativeType::Long => "long",
            NativeType::Double => "double",
        }
    }
}

/// The value of a PV: an array of its native type (a scalar is an array of one).
///
/// Arrays are `Arc`-shared: posting a frame stores it once, and every subscriber's encoder
/// reads the same memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// DBR_STRING elements, each at most 39 bytes (longer text is cut on the wire).
    String(Arc<[String]>),
    /// DBR_SHORT elements.
    Short(Arc<[i16]>),
    /// DBR_FLOAT elements.
    Float(Arc<[f32]>),
    /// DBR_ENUM state indices.
    Enum(Arc<[u16]>),
    /// DBR_CHAR elements (bytes; a long string is text plus a NUL).
    Char(Arc<[u8]>),
    /// DBR_LONG elements.
    Long(Arc<[i32]>),
    /// DBR_DOUBLE elements.
    Double(Arc<[f64]>),
}

impl Value {
    /// The native type of this value.
    pub fn native_type(&self) -> NativeType {
        match self {
            Value::String(_) => NativeType::String,
            Value::Short(_) => NativeType::Short,
            Value::Float(_) => NativeType::Float,
            Value::Enum(_) => NativeType::Enum,
            Value::Char(_) => NativeType::Char,
            Value::Long(_) => NativeType::Long,
            Value::Double(_) => NativeType::Double,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Value::String(v) => v.len(),
            Value::Short(v) => v.len(),
            Value::Float(v) => v.len(),
            Value::Enum(v) => v.len(),
            Value::Char(v) => v.len(),
            Value::Long(v) => v.len(),
            Value::Double(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An enum value (state index).
    pub fn enum_index(index: u16) -> Value {
        Value::Enum(Arc::new([index]))
    }

    /// A long string for a CHAR array PV: the text's bytes followed by a NUL.
    pub fn char_string(text: &str) -> Value {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        Value::Char(bytes.into())
    }

    /// An empty value of type `ty`.
    pub fn empty(ty: NativeType) -> Value {
        match ty {
            NativeType::String => Value::String(Arc::new([])),
            NativeType::Short => Value::Short(Arc::new([])),
            NativeType::Float => Value::Float(Arc::new([])),
            NativeType::Enum => Value::Enum(Arc::new([])),
            NativeType::Char => Value::Char(Arc::new([])),
            NativeType::Long => Value::Long(Arc::new([])),
            NativeType::Double => Value::Double(Arc::new([])),
        }
    }

    /// Element `i` as f64, for numeric values (`None` for strings or out of range).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        Some(match self {
            Value::String(_) => return None,
            Value::Short(v) => f64::from(*v.get(i)?),
            Value::Float(v) => f64::from(*v.get(i)?),
            Value::Enum(v) => f64::from(*v.get(i)?),
            Value::Char(v) => f64::from(*v.get(i)?),
            Value::Long(v) => f64::from(*v.get(i)?),
            Value::Double(v) => *v.get(i)?,
        })
    }

    /// For a CHAR array holding text: the bytes up to the first NUL, as UTF-8 (lossy).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Char(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                Some(String::from_utf8_lossy(&b[..end]).into_owned())
            }
            Value::String(s) => s.first().cloned(),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($t:ty, $variant:ident) => {
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(Arc::new([v]))
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Value {
                Value::$variant(v.into())
            }
        }
        impl From<&[$t]> for Value {
            fn from(v: &[$t]) -> Value {
                Value::$variant(v.into())
            }
        }
        impl From<Arc<[$t]>> for Value {
            fn from(v: Arc<[$t]>) -> Value {
                Value::$variant(v)
            }
        }
    };
}
value_from!(i16, Short);
value_from!(f32, Float);
value_from!(u8, Char);
value_from!(i32, Long);
value_from!(f64, Double);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(Arc::new([v.to_owned()]))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(Arc::new([v]))
    }
}

impl From<&[u16]> for Value {
    /// A u16 frame as DBR_SHORT: the same bits, as areaDetector's NDStdArrays serves
    /// unsigned 16-bit images through an `FTVL=SHORT` waveform. Clients reinterpret
    /// (`numpy.view(np.uint16)`).
    fn from(v: &[u16]) -> Value {
        Value::Short(v.iter().map(|&x| x as i16).collect())
    }
}

impl From<bool> for Value {
    /// A boolean as enum index 0 or 1.
    fn from(v: bool) -> Value {
        Value::enum_index(u16::from(v))
    }
}

/// Alarm severity (`sevr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Severity {
    /// No alarm.
    #[default]
    NoAlarm = 0,
    /// Minor alarm.
    Minor = 1,
    /// Major alarm.
    Major = 2,
    /// Invalid value.
    Invalid = 3,
}

/// Alarm state of a PV: EPICS alarm status (0 NO_ALARM ... 21 WRITE_ACCESS) and severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Alarm {
    /// Alarm status code (`menuAlarmStat`: 0 NO_ALARM, 3 HIHI, 9 COMM, 17 UDF, ...).
    pub status: u16,
    /// Severity.
    pub severity: Severity,
}

impl Alarm {
    /// No alarm.
    pub const NONE: Alarm = Alarm {
        status: 0,
        severity: Severity::NoAlarm,
    };

    /// A put to the record failed: STAT WRITE, SEVR INVALID, as asyn's device support sets
    /// on an areaDetector record whose driver refuses a write (until a write succeeds).
    pub const WRITE_FAILED: Alarm = Alarm {
        status: 2,
        severity: Severity::Invalid,
    };
}

/// The names of the alarm status codes, in code order (the first 16 fit in an enum).
pub const ALARM_STATUS_NAMES: [&str; 22] = [
    "NO_ALARM",
    "READ",
    "WRITE",
    "HIHI",
    "HIGH",
    "LOLO",
    "LOW",
    "STATE",
    "COS",
    "COMM",
    "TIMEOUT",
    "HWLIMIT",
    "CALC",
    "SCAN",
    "LINK",
    "SOFT",
    "BAD_SUB",
    "UDF",
    "DISABLE",
    "SIMM",
    "READ_ACCESS",
    "WRITE_ACCESS",
];

/// The names of the severities, in code order.
pub const SEVERITY_NAMES: [&str; 4] = ["NO_ALARM", "MINOR", "MAJOR", "INVALID"];

/// Seconds between the Unix epoch and the EPICS epoch (1990-01-01 UTC).
pub const EPICS_EPOCH_UNIX_S: u64 = 631_152_000;

/// A CA timestamp: seconds since the EPICS epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EpicsTime {
    /// Seconds since 1990-01-01 00:00:00 UTC.
    pub secs: u32,
    /// Nanoseconds, 0..=999_999_999.
    pub nanos: u32,
}

impl EpicsTime {
    /// The current time.
    pub fn now() -> EpicsTime {
        EpicsTime::from_system(SystemTime::now())
    }

    /// Convert a system time (times before 1990 become the epoch itself).
    pub fn from_system(t: SystemTime) -> EpicsTime {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs().saturating_sub(EPICS_EPOCH_UNIX_S);
        EpicsTime {
            secs: secs.min(u64::from(u32::MAX)) as u32,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Display metadata served in GR/CTRL reads. Limits are stored as f64 and converted to the
/// requested element type. All-zero limits mean "unset" to clients.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    /// Engineering units, at most 7 bytes on the wire.
    pub units: String,
    /// Decimal places for display, and for number → string conversion.
    pub precision: i16,
    /// Display range `(low, high)` (LOPR/HOPR).
    pub display: (f64, f64),
    /// Control range `(low, high)` (DRVL/DRVH). When `low < high`, writes outside it are
    /// refused with ECA_PUTFAIL.
    pub control: (f64, f64),
    /// Alarm limits `(lolo, low, high, hihi)` (informational; the server raises no alarms).
    pub alarm: (f64, f64, f64, f64),
    /// Enum state strings, in index order (at most 16, each at most 25 bytes).
    pub enum_states: Vec<String>,
    /// Description (`.DESC`), at most 39 bytes on the wire.
    pub description: String,
    /// Record type reported by `.RTYP` and DBR_CLASS_NAME (e.g. `"ao"`, `"mbbo"`).
    pub record_type: String,
}

/// Which operations clients may do on a PV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Access {
    /// Clients can neither read nor write (the channel still connects).
    None,
    /// Clients can read and monitor.
    ReadOnly,
    /// Clients can read, monitor and write.
    #[default]
    ReadWrite,
}

impl Access {
    /// The ACCESS_RIGHTS bits (1 read, 2 write).
    pub fn bits(self) -> u32 {
        match self {
            Access::None => 0,
            Access::ReadOnly => 1,
            Access::ReadWrite => 3,
        }
    }

    /// Whether reads are allowed.
    pub fn can_read(self) -> bool {
        self != Access::None
    }

    /// Whether writes are allowed.
    pub fn can_write(self) -> bool {
        self == Access::ReadWrite
    }
}
