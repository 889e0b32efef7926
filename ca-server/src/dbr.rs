//! DBR types 0–38: their byte layouts, the read path (a PV's native value encoded as any
//! type a client asks for) and the write path (any plain or decorated type a client sends,
//! converted to the PV's native type). The rules follow rsrv (spec §4).

use std::sync::Arc;

use crate::proto::Eca;
use crate::value::{
    Alarm, EpicsTime, MAX_ENUM_STATES, MAX_ENUM_STRING, MAX_STRING, MAX_UNITS, Metadata,
    NativeType, Value,
};

/// The decoration of a DBR type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbrClass {
    /// Value only (0–6).
    Plain,
    /// Status and severity (7–13).
    Sts,
    /// Status, severity and timestamp (14–20).
    Time,
    /// Graphic: units, precision, display and alarm limits, enum strings (21–27).
    Gr,
    /// Control: GR plus control limits (28–34).
    Ctrl,
}

/// A DBR type 0–34: a class and an element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DbrType {
    /// Decoration.
    pub class: DbrClass,
    /// Element type.
    pub elem: NativeType,
}

/// Any DBR type a request may name (0–38).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbrRequest {
    /// Types 0–34.
    Dbr(DbrType),
    /// 35: acknowledge-transient flag (write only).
    PutAckT,
    /// 36: acknowledge severity (write only).
    PutAckS,
    /// 37: status, severity, ackt, acks and a string value (read only).
    StsAckString,
    /// 38: the record type name (read only).
    ClassName,
}

impl DbrRequest {
    /// Decode a DBR type id; `None` for ids above 38.
    pub fn from_id(id: u16) -> Option<DbrRequest> {
        Some(match id {
            0..=34 => {
                let class = match id / 7 {
                    0 => DbrClass::Plain,
                    1 => DbrClass::Sts,
                    2 => DbrClass::Time,
                    3 => DbrClass::Gr,
                    _ => DbrClass::Ctrl,
                };
                DbrRequest::Dbr(DbrType {
                    class,
                    elem: NativeType::from_id(id % 7)?,
                })
            }
            35 => DbrRequest::PutAckT,
            36 => DbrRequest::PutAckS,
            37 => DbrRequest::StsAckString,
            38 => DbrRequest::ClassName,
            _ => return None,
        })
    }

    /// Element type and value offset for readable types.
    fn layout(self) -> Option<(NativeType, usize)> {
        match self {
            DbrRequest::Dbr(t) => Some((t.elem, value_offset(t))),
            DbrRequest::StsAckString => Some((NativeType::String, 8)),
            DbrRequest::ClassName => Some((NativeType::String, 0)),
            DbrRequest::PutAckT | DbrRequest::PutAckS => None,
        }
    }

    /// Unpadded payload size for `n` elements, `None` for write-only types.
    pub fn payload_len(self, n: usize) -> Option<usize> {
        let (elem, o) = self.layout()?;
        Some(o + n * elem.element_size())
    }
}

/// Offset of the value in a DBR structure (spec §4.3).
pub fn value_offset(t: DbrType) -> usize {
    use NativeType as N;
    match (t.class, t.elem) {
        (DbrClass::Plain, _) => 0,
        (DbrClass::Sts, N::Char) => 5,
        (DbrClass::Sts, N::Double) => 8,
        (DbrClass::Sts, _) => 4,
        (DbrClass::Time, N::String | N::Float | N::Long) => 12,
        (DbrClass::Time, N::Short | N::Enum) => 14,
        (DbrClass::Time, N::Char) => 15,
        (DbrClass::Time, N::Double) => 16,
        (DbrClass::Gr | DbrClass::Ctrl, N::String) => 4,
        (DbrClass::Gr | DbrClass::Ctrl, N::Enum) => 422,
        (DbrClass::Gr, N::Short) => 24,
        (DbrClass::Gr, N::Float) => 40,
        (DbrClass::Gr, N::Char) => 19,
        (DbrClass::Gr, N::Long) => 36,
        (DbrClass::Gr, N::Double) => 64,
        (DbrClass::Ctrl, N::Short) => 28,
        (DbrClass::Ctrl, N::Float) => 48,
        (DbrClass::Ctrl, N::Char) => 21,
        (DbrClass::Ctrl, N::Long) => 44,
        (DbrClass::Ctrl, N::Double) => 80,
    }
}

/// What a read encodes from: a PV's value and everything a DBR structure can carry.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The value (native type).
    pub value: &'a Value,
    /// Alarm state.
    pub alarm: Alarm,
    /// Time of the last change.
    pub stamp: EpicsTime,
    /// Display metadata.
    pub meta: &'a Metadata,
}

/// Append the DBR structure of type `req` with `n` elements (unpadded) to `out`.
///
/// Elements past the value's length are zero. On error nothing is left appended.
pub fn encode(out: &mut Vec<u8>, req: DbrRequest, n: usize, src: &Source<'_>) -> Result<(), Eca> {
    let start = out.len();
    let result = encode_inner(out, req, n, src);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_inner(out: &mut Vec<u8>, req: DbrRequest, n: usize, src: &Source<'_>) -> Result<(), Eca> {
    let Some(total) = req.payload_len(n) else {
        return Err(Eca::BadType);
    };
    out.reserve(total + 8);
    let t = match req {
        DbrRequest::Dbr(t) => t,
        DbrRequest::StsAckString => {
            put_alarm(out, src.alarm);
            out.extend_from_slice(&[0; 4]); // ackt, acks
            return write_elements(out, NativeType::String, src.value, n, src.meta);
        }
        DbrRequest::ClassName => {
            // One record type name; any further elements are empty strings.
            if n > 0 {
                put_fixed_str(out, &src.meta.record_type, 40);
                out.resize(out.len() + (n - 1) * 40, 0);
            }
            return Ok(());
        }
        DbrRequest::PutAckT | DbrRequest::PutAckS => return Err(Eca::BadType),
    };
    use NativeType as N;
    match t.class {
        DbrClass::Plain => {}
        DbrClass::Sts => {
            put_alarm(out, src.alarm);
            match t.elem {
                N::Char => out.push(0),
                N::Double => out.extend_from_slice(&[0; 4]),
                _ => {}
            }
        }
        DbrClass::Time => {
            put_alarm(out, src.alarm);
            out.extend_from_slice(&src.stamp.secs.to_be_bytes());
            out.extend_from_slice(&src.stamp.nanos.to_be_bytes());
            match t.elem {
                N::Short | N::Enum => out.extend_from_slice(&[0; 2]),
                N::Char => out.extend_from_slice(&[0; 3]),
                N::Double => out.extend_from_slice(&[0; 4]),
                N::String | N::Float | N::Long => {}
            }
        }
        DbrClass::Gr | DbrClass::Ctrl => {
            put_alarm(out, src.alarm);
            put_graphic(out, t, src.meta);
        }
    }
    write_elements(out, t.elem, src.value, n, src.meta)
}

fn put_alarm(out: &mut Vec<u8>, alarm: Alarm) {
    out.extend_from_slice(&alarm.status.to_be_bytes());
    out.extend_from_slice(&(alarm.severity as u16).to_be_bytes());
}

/// Text cut to `width - 1` bytes (on a char boundary), NUL-terminated and zero-filled to
/// `width`.
fn put_fixed_str(out: &mut Vec<u8>, text: &str, width: usize) {
    let bytes = truncate_str(text, width - 1).as_bytes();
    out.extend_from_slice(bytes);
    out.resize(out.len() + (width - bytes.len()), 0);
}

fn truncate_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Units, precision, limits and enum strings of a GR/CTRL structure (after status and
/// severity).
fn put_graphic(out: &mut Vec<u8>, t: DbrType, meta: &Metadata) {
    use NativeType as N;
    let (lolo, low, high, hihi) = meta.alarm;
    let mut limits = vec![meta.display.1, meta.display.0, hihi, high, low, lolo];
    if t.class == DbrClass::Ctrl {
        limits.push(meta.control.1);
        limits.push(meta.control.0);
    }
    match t.elem {
        N::String => {}
        N::Enum => {
            let states = &meta.enum_states[..meta.enum_states.len().min(MAX_ENUM_STATES)];
            out.extend_from_slice(&(states.len() as i16).to_be_bytes());
            for i in 0..MAX_ENUM_STATES {
                put_fixed_str(
                    out,
                    states.get(i).map_or("", String::as_str),
                    MAX_ENUM_STRING + 1,
                );
            }
        }
        N::Short => {
            put_fixed_str(out, &meta.units, MAX_UNITS + 1);
            for l in limits {
                out.extend_from_slice(&(l as i16).to_be_bytes());
            }
        }
        N::Char => {
            put_fixed_str(out, &meta.units, MAX_UNITS + 1);
            for l in limits {
                out.push(l as u8);
            }
            out.push(0);
        }
        N::Long => {
            put_fixed_str(out, &meta.units, MAX_UNITS + 1);
            for l in limits {
                out.extend_from_slice(&(l as i32).to_be_bytes());
            }
        }
        N::Float => {
            out.extend_from_slice(&meta.precision.to_be_bytes());
            out.extend_from_slice(&[0; 2]);
            put_fixed_str(out, &meta.units, MAX_UNITS + 1);
            for l in limits {
                out.extend_from_slice(&(l as f32).to_be_bytes());
            }
        }
        N::Double => {
            out.extend_from_slice(&meta.precision.to_be_bytes());
            out.extend_from_slice(&[0; 2]);
            put_fixed_str(out, &meta.units, MAX_UNITS + 1);
            for l in limits {
                out.extend_from_slice(&l.to_be_bytes());
            }
        }
    }
}

/// Append `n` elements of type `elem` converted from `value`, zero past its length.
fn write_elements(
    out: &mut Vec<u8>,
    elem: NativeType,
    value: &Value,
    n: usize,
    meta: &Metadata,
) -> Result<(), Eca> {
    let have = value.len().min(n);
    macro_rules! same {
        ($v:expr) => {{
            for x in &$v[..have] {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }};
    }
    use NativeType as N;
    match (elem, value) {
        // Same-type fast paths (a 1M-element frame goes through one of these).
        (N::Short, Value::Short(v)) => same!(v),
        (N::Float, Value::Float(v)) => same!(v),
        (N::Enum, Value::Enum(v)) => same!(v),
        (N::Char, Value::Char(v)) => out.extend_from_slice(&v[..have]),
        (N::Long, Value::Long(v)) => same!(v),
        (N::Double, Value::Double(v)) => same!(v),
        (N::String, _) => {
            for i in 0..have {
                let text = element_to_string(value, i, meta);
                put_fixed_str(out, &text, MAX_STRING + 1);
            }
        }
        (_, Value::String(v)) => {
            for s in &v[..have] {
                let x = parse_number(s).ok_or(Eca::NoConvert)?;
                put_number(out, elem, x);
            }
        }
        _ => {
            for i in 0..have {
                let x = value.get_f64(i).unwrap_or(0.0);
                put_number(out, elem, x);
            }
        }
    }
    out.resize(out.len() + (n - have) * elem.element_size(), 0);
    Ok(())
}

/// One numeric element as `elem`: a C-style cast that saturates (a float truncates toward
/// zero; NaN becomes 0 for integers).
fn put_number(out: &mut Vec<u8>, elem: NativeType, x: f64) {
    match elem {
        NativeType::Short => out.extend_from_slice(&(x as i16).to_be_bytes()),
        NativeType::Float => out.extend_from_slice(&(x as f32).to_be_bytes()),
        NativeType::Enum => out.extend_from_slice(&(x as u16).to_be_bytes()),
        NativeType::Char => out.push(x as u8),
        NativeType::Long => out.extend_from_slice(&(x as i32).to_be_bytes()),
        NativeType::Double => out.extend_from_slice(&x.to_be_bytes()),
        NativeType::String => put_fixed_str(out, &format_g(x), MAX_STRING + 1),
    }
}

/// Element `i` of `value` as DBR_STRING text (spec §4.5 "numeric → STRING").
fn element_to_string(value: &Value, i: usize, meta: &Metadata) -> String {
    match value {
        Value::String(v) => v[i].clone(),
        Value::Double(v) => format_precision(v[i], meta.precision),
        Value::Float(v) => format_precision(f64::from(v[i]), meta.precision),
        Value::Short(v) => v[i].to_string(),
        Value::Long(v) => v[i].to_string(),
        Value::Char(v) => v[i].to_string(),
        Value::Enum(v) => {
            let idx = usize::from(v[i]);
            match meta.enum_states.get(idx) {
                Some(s) if !s.is_empty() => s.clone(),
                _ => v[i].to_string(),
            }
        }
    }
}

/// `%.{prec}f`, switching to `%.{prec}e` when that is longer than 39 characters or the
/// magnitude is 1e16 or more (rsrv `cvtDoubleToString`).
pub fn format_precision(x: f64, prec: i16) -> String {
    let prec = prec.clamp(0, 17) as usize;
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x.abs() < 1e16 {
        let s = format!("{x:.prec$}");
        if s.len() <= MAX_STRING {
            return s;
        }
    }
    c_exponent(&format!("{x:.prec$e}"))
}

/// Rust's `1.5e16` as C's `1.5e+16`.
fn c_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => s.to_owned(),
    }
}

/// Shortest text for a number written to a STRING PV.
fn format_g(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Parse a number as rsrv does for strings: surrounding blanks allowed; decimal or `0x`
/// hex integers, else a float.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if t.is_empty() {
        return None;
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        let v = i64::from_str_radix(hex, 16).ok()? as f64;
        return Some(if neg { -v } else { v });
    }
    let lower = t.to_ascii_lowercase();
    // Rust accepts "inf"/"nan" spellings that C's strtod also takes; keep them.
    lower.parse::<f64>().ok()
}

/// Where a write goes: the PV's native type and limits.
#[derive(Debug, Clone, Copy)]
pub struct PutTarget<'a> {
    /// Native type.
    pub native: NativeType,
    /// Native element count (NELM).
    pub max_count: usize,
    /// For CHAR arrays: whether they hold text (stop at the first NUL, keep a terminator).
    pub text: bool,
    /// Enum states and control limits.
    pub meta: &'a Metadata,
}

/// What a write request decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum PutValue {
    /// A new value in the PV's native type.
    Value(Value),
    /// A PUT_ACKT/PUT_ACKS write: accepted and ignored (no alarm acknowledgement here).
    Ignored,
}

/// Decode a WRITE / WRITE_NOTIFY payload of type `data_type` and `count` elements, and
/// convert it to the target's native type (spec §4.5 "Writes").
pub fn decode_put(
    data_type: u16,
    count: u32,
    payload: &[u8],
    target: &PutTarget<'_>,
) -> Result<PutValue, Eca> {
    let req = DbrRequest::from_id(data_type).ok_or(Eca::BadType)?;
    let t = match req {
        DbrRequest::Dbr(t) => t,
        DbrRequest::PutAckT | DbrRequest::PutAckS => return Ok(PutValue::Ignored),
        DbrRequest::StsAckString | DbrRequest::ClassName => return Err(Eca::BadType),
    };
    let m = count as usize;
    if m == 0 {
        return Err(Eca::BadCount);
    }
    let offset = value_offset(t);
    let need = m
        .checked_mul(t.elem.element_size())
        .and_then(|b| b.checked_add(offset))
        .ok_or(Eca::BadCount)?;
    // libca sends a DBR_STRING put cut to strlen + 1 (padded to 8), not 40 bytes per
    // element: the missing tail is zeros.
    let padded;
    // Only the last element may be cut (a larger shortfall is a bad count, not padding).
    let payload = if payload.len() < need
        && t.elem == NativeType::String
        && payload.len() > offset
        && need - payload.len() < 40
    {
        let mut v = payload.to_vec();
        v.resize(need, 0);
        padded = v;
        &padded[..]
    } else {
        payload
    };
    if payload.len() < need {
        return Err(Eca::BadCount);
    }
    let data = &payload[offset..need];
    let incoming = decode_elements(t.elem, data, m);
    convert_put(incoming, target).map(PutValue::Value)
}

/// Raw incoming elements, before conversion.
enum Incoming {
    Strings(Vec<String>),
    Bytes(Vec<u8>),
    Numbers(Vec<f64>),
}

fn decode_elements(elem: NativeType, data: &[u8], m: usize) -> Incoming {
    let be2 = |c: &[u8]| [c[0], c[1]];
    let be4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    match elem {
        NativeType::String => Incoming::Strings(
            data.chunks_exact(40)
                .take(m)
                .map(|c| {
                    let end = c.iter().position(|&b| b == 0).unwrap_or(40);
                    String::from_utf8_lossy(&c[..end]).into_owned()
                })
                .collect(),
        ),
        NativeType::Char => Incoming::Bytes(data[..m].to_vec()),
        NativeType::Short => Incoming::Numbers(
            data.chunks_exact(2)
                .map(|c| f64::from(i16::from_be_bytes(be2(c))))
                .collect(),
        ),
        NativeType::Enum => Incoming::Numbers(
            data.chunks_exact(2)
                .map(|c| f64::from(u16::from_be_bytes(be2(c))))
                .collect(),
        ),
        NativeType::Float => Incoming::Numbers(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_be_bytes(be4(c))))
                .collect(),
        ),
        NativeType::Long => Incoming::Numbers(
            data.chunks_exact(4)
                .map(|c| f64::from(i32::from_be_bytes(be4(c))))
                .collect(),
        ),
        NativeType::Double => Incoming::Numbers(
            data.chunks_exact(8)
                .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    }
}

/// An incoming number as an integer in `lo..=hi`, truncating toward zero; `None` when it
/// does not fit (so the write fails rather than wrapping).
fn int_in(x: f64, lo: f64, hi: f64) -> Option<f64> {
    let t = x.trunc();
    (t >= lo && t <= hi).then_some(t)
}

/// Convert a value posted by the daemon to the target's native type, with the same rules as
/// a client write.
pub fn convert_value(value: &Value, target: &PutTarget<'_>) -> Result<Value, Eca> {
    let incoming = match value {
        Value::String(s) => Incoming::Strings(s.to_vec()),
        Value::Char(b) => Incoming::Bytes(b.to_vec()),
        other => Incoming::Numbers((0..other.len()).filter_map(|i| other.get_f64(i)).collect()),
    };
    convert_put(incoming, target)
}

fn convert_put(incoming: Incoming, target: &PutTarget<'_>) -> Result<Value, Eca> {
    use NativeType as N;
    let max = target.max_count.max(1);
    let meta = target.meta;
    // Incoming values as numbers, for the numeric natives.
    let numbers = |incoming: Incoming| -> Result<Vec<f64>, Eca> {
        Ok(match incoming {
            Incoming::Numbers(v) => v,
            Incoming::Bytes(b) => b.into_iter().map(f64::from).collect(),
            Incoming::Strings(s) => s
                .iter()
                .map(|s| parse_number(s).ok_or(Eca::PutFail))
                .collect::<Result<_, _>>()?,
        })
    };
    let check_control = |v: &[f64]| -> Result<(), Eca> {
        let (lo, hi) = meta.control;
        if lo < hi && v.iter().any(|&x| !(lo..=hi).contains(&x)) {
            return Err(Eca::PutFail);
        }
        Ok(())
    };
    let value = match target.native {
        N::String => {
            let strings: Vec<String> = match incoming {
                Incoming::Strings(s) => s,
                // A char array written to a string PV: its text (friendlier than rsrv's
                // per-element numbers).
                Incoming::Bytes(b) => {
                    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                    vec![String::from_utf8_lossy(&b[..end]).into_owned()]
                }
                Incoming::Numbers(v) => v.into_iter().map(format_g).collect(),
            };
            let strings: Vec<String> = strings
                .into_iter()
                .take(max)
                .map(|s| truncate_str(&s, MAX_STRING).to_owned())
                .collect();
            Value::String(strings.into())
        }
        N::Enum => {
            let states = &meta.enum_states;
            let limit = if states.is_empty() {
                f64::from(u16::MAX)
            } else {
                (states.len() - 1) as f64
            };
            let idx: Vec<u16> = match incoming {
                Incoming::Strings(s) => s
                    .iter()
                    .take(max)
                    .map(|text| {
                        if let Some(i) = states.iter().position(|st| st == text) {
                            return Ok(i as u16);
                        }
                        let t = text.trim();
                        let n: u64 = t.parse().map_err(|_| Eca::PutFail)?;
                        int_in(n as f64, 0.0, limit)
                            .map(|x| x as u16)
                            .ok_or(Eca::PutFail)
                    })
                    .collect::<Result<_, _>>()?,
                other => numbers(other)?
                    .into_iter()
                    .take(max)
                    .map(|x| int_in(x, 0.0, limit).map(|x| x as u16).ok_or(Eca::PutFail))
                    .collect::<Result<_, _>>()?,
            };
            Value::Enum(idx.into())
        }
        N::Char if target.text => {
            let mut bytes = match incoming {
                Incoming::Bytes(b) => b,
                Incoming::Strings(s) => {
                    s.first().map(|s| s.as_bytes().to_vec()).unwrap_or_default()
                }
                Incoming::Numbers(v) => v
                    .into_iter()
                    .map(|x| int_in(x, 0.0, 255.0).map(|x| x as u8).ok_or(Eca::PutFail))
                    .collect::<Result<_, _>>()?,
            };
            if let Some(end) = bytes.iter().position(|&c| c == 0) {
                bytes.truncate(end);
            }
            bytes.truncate(max - 1);
            bytes.push(0);
            Value::Char(bytes.into())
        }
        N::Char | N::Short | N::Long | N::Float | N::Double => {
            let mut v = numbers(incoming)?;
            v.truncate(max);
            check_control(&v)?;
            let ints = |lo: f64, hi: f64| -> Result<Vec<f64>, Eca> {
                v.iter()
                    .map(|&x| int_in(x, lo, hi).ok_or(Eca::PutFail))
                    .collect()
            };
            match target.native {
                N::Char => Value::Char(ints(0.0, 255.0)?.into_iter().map(|x| x as u8).collect()),
                N::Short => Value::Short(
                    ints(f64::from(i16::MIN), f64::from(i16::MAX))?
                        .into_iter()
                        .map(|x| x as i16)
                        .collect(),
                ),
                N::Long => Value::Long(
                    ints(f64::from(i32::MIN), f64::from(i32::MAX))?
                        .into_iter()
                        .map(|x| x as i32)
                        .collect(),
                ),
                N::Float => Value::Float(v.iter().map(|&x| x as f32).collect()),
                _ => Value::Double(Arc::from(v)),
            }
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tests::hex;
    use crate::value::Severity;

    fn acquire_time_meta() -> Metadata {
        Metadata {
            units: "s".into(),
            precision: 3,
            display: (0.0, 10.0),
            control: (0.0, 10.0),
            ..Metadata::default()
        }
    }

    const STAMP: EpicsTime = EpicsTime {
        secs: 1_037_000_000,
        nanos: 500_000_000,
    };

    fn enc(req: u16, n: usize, value: &Value, meta: &Metadata) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            DbrRequest::from_id(req).unwrap(),
            n,
            &Source {
                value,
                alarm: Alarm::NONE,
                stamp: STAMP,
                meta,
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn offsets_and_sizes_match_spec_4_3() {
        let sizes = [
            (20, 1, 24),
            (34, 1, 88),
            (31, 1, 424),
            (18, 256, 272),
            (15, 1_048_576, 2_097_168),
        ];
        for (ty, n, padded) in sizes {
            let len = DbrRequest::from_id(ty).unwrap().payload_len(n).unwrap();
            assert_eq!(crate::proto::align8(len), padded, "type {ty}");
        }
        let offsets: [(u16, usize); 35] = [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 0),
            (4, 0),
            (5, 0),
            (6, 0),
            (7, 4),
            (8, 4),
            (9, 4),
            (10, 4),
            (11, 5),
            (12, 4),
            (13, 8),
            (14, 12),
            (15, 14),
            (16, 12),
            (17, 14),
            (18, 15),
            (19, 12),
            (20, 16),
            (21, 4),
            (22, 24),
            (23, 40),
            (24, 422),
            (25, 19),
            (26, 36),
            (27, 64),
            (28, 4),
            (29, 28),
            (30, 48),
            (31, 422),
            (32, 21),
            (33, 44),
            (34, 80),
        ];
        for (ty, o) in offsets {
            let DbrRequest::Dbr(t) = DbrRequest::from_id(ty).unwrap() else {
                panic!()
            };
            assert_eq!(value_offset(t), o, "type {ty}");
        }
        // The metadata written must end exactly at the value offset, for every type and
        // every native value.
        let meta = acquire_time_meta();
        for ty in 0..=34u16 {
            for v in [
                Value::from(1.5f64),
                Value::from("7"),
                Value::enum_index(1),
                Value::from(7u8),
            ] {
                let out = enc(ty, 1, &v, &meta);
                let req = DbrRequest::from_id(ty).unwrap();
                assert_eq!(
                    out.len(),
                    req.payload_len(1).unwrap(),
                    "type {ty} from {v:?}"
                );
            }
        }
    }

    #[test]
    fn time_double_matches_spec_3_4() {
        let out = enc(20, 1, &Value::from(0.1), &acquire_time_meta());
        assert_eq!(
            out,
            hex("00000000 3dcf5d40 1dcd6500 00000000\n3fb99999 9999999a")
        );
    }

    #[test]
    fn ctrl_double_matches_spec_3_4() {
        let out = enc(34, 1, &Value::from(0.1), &acquire_time_meta());
        assert_eq!(
            out,
            hex("0010: 00000000 00030000 73000000 00000000\n\
                 0020: 40240000 00000000 00000000 00000000\n\
                 0030: 00000000 00000000 00000000 00000000\n\
                 0040: 00000000 00000000 00000000 00000000\n\
                 0050: 40240000 00000000 00000000 00000000\n\
                 0060: 3fb99999 9999999a")
        );
    }

    #[test]
    fn double_as_string_uses_precision() {
        let out = enc(0, 1, &Value::from(0.1), &acquire_time_meta());
        let mut want = b"0.100".to_vec();
        want.resize(40, 0);
        assert_eq!(out, want);
        assert_eq!(format_precision(1e20, 3), "1.000e+20");
        assert_eq!(format_precision(-2.5, 0), "-2");
        assert_eq!(format_precision(12.0, 2), "12.00");
    }

    #[test]
    fn ctrl_enum_matches_spec_4_3() {
        let meta = Metadata {
            enum_states: vec!["Done".into(), "Acquire".into()],
            ..Metadata::default()
        };
        let out = enc(31, 1, &Value::enum_index(1), &meta);
        assert_eq!(out.len(), 424);
        assert_eq!(&out[..4], &[0, 0, 0, 0]);
        assert_eq!(&out[4..6], &[0, 2]);
        assert_eq!(&out[6..11], b"Done\0");
        assert_eq!(&out[32..40], b"Acquire\0");
        assert!(out[40..422].iter().all(|&b| b == 0));
        assert_eq!(&out[422..], &[0, 1]);
        // Enum read as string: the state name.
        let s = enc(0, 1, &Value::enum_index(1), &meta);
        assert_eq!(&s[..8], b"Acquire\0");
        // Out-of-range index: the number.
        let s = enc(0, 1, &Value::enum_index(9), &meta);
        assert_eq!(&s[..2], b"9\0");
    }

    #[test]
    fn time_char_matches_spec_4_3() {
        let out = enc(18, 6, &Value::char_string("/data"), &Metadata::default());
        assert_eq!(out, hex("00000000 3dcf5d40 1dcd6500 0000002f\n64617461 00"));
        // A char array read as strings: decimal per element, as rsrv does.
        let s = enc(0, 2, &Value::char_string("/data"), &Metadata::default());
        assert_eq!(&s[..3], b"47\0");
        assert_eq!(&s[40..44], b"100\0");
    }

    #[test]
    fn conversions_every_pair_gives_a_reply() {
        // pcaspy #26: every (native, requested) pair must encode without panicking.
        let meta = acquire_time_meta();
        let values = [
            Value::from("12.5"),
            Value::from("not a number"),
            Value::from(vec![1i16, -2]),
            Value::from(vec![1.5f32, 2.5]),
            Value::Enum(vec![0u16, 1].into()),
            Value::char_string("/data/scan1/"),
            Value::from(vec![i32::MAX, i32::MIN]),
            Value::from(vec![f64::NAN, 1e300]),
            Value::empty(NativeType::Double),
        ];
        for v in &values {
            for ty in 0..=38u16 {
                for n in [0usize, 1, 3] {
                    let req = DbrRequest::from_id(ty).unwrap();
                    let mut out = Vec::new();
                    let r = encode(
                        &mut out,
                        req,
                        n,
                        &Source {
                            value: v,
                            alarm: Alarm::NONE,
                            stamp: STAMP,
                            meta: &meta,
                        },
                    );
                    match r {
                        Ok(()) => assert_eq!(out.len(), req.payload_len(n).unwrap()),
                        Err(e) => {
                            assert!(out.is_empty());
                            assert!(matches!(e, Eca::NoConvert | Eca::BadType), "{e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn numeric_casts_saturate() {
        let meta = Metadata::default();
        let out = enc(1, 2, &Value::from(vec![1e9f64, -3.7]), &meta);
        assert_eq!(out, [0x7f, 0xff, 0xff, 0xfd]);
        let out = enc(5, 1, &Value::from("0x10"), &meta);
        assert_eq!(out, [0, 0, 0, 16]);
    }

    #[test]
    fn alarm_is_encoded() {
        let v = Value::from(1i32);
        let meta = Metadata::default();
        let mut out = Vec::new();
        let alarm = Alarm {
            status: 17,
            severity: Severity::Invalid,
        };
        encode(
            &mut out,
            DbrRequest::from_id(12).unwrap(),
            1,
            &Source {
                value: &v,
                alarm,
                stamp: STAMP,
                meta: &meta,
            },
        )
        .unwrap();
        assert_eq!(out, [0, 17, 0, 3, 0, 0, 0, 1]);
    }

    fn put(
        ty: u16,
        count: u32,
        payload: &[u8],
        native: NativeType,
        meta: &Metadata,
        text: bool,
    ) -> Result<Value, Eca> {
        let target = PutTarget {
            native,
            max_count: 256,
            text,
            meta,
        };
        match decode_put(ty, count, payload, &target)? {
            PutValue::Value(v) => Ok(v),
            PutValue::Ignored => panic!("ignored"),
        }
    }

    fn string40(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(40, 0);
        v
    }

    #[test]
    fn write_double_matches_spec_3_5() {
        let v = put(
            6,
            1,
            &hex("3fe00000 00000000"),
            NativeType::Double,
            &acquire_time_meta(),
            false,
        )
        .unwrap();
        assert_eq!(v, Value::from(0.5));
        // Outside the control limits 0..10: refused.
        let bad = 11.0f64.to_be_bytes();
        assert_eq!(
            put(6, 1, &bad, NativeType::Double, &acquire_time_meta(), false),
            Err(Eca::PutFail)
        );
        // caput sends numbers as strings.
        let v = put(
            0,
            1,
            &string40(" 2.5 "),
            NativeType::Double,
            &acquire_time_meta(),
            false,
        )
        .unwrap();
        assert_eq!(v, Value::from(2.5));
        // libca cuts a one-element DBR_STRING put to strlen + 1, padded to 8.
        let v = put(
            0,
            1,
            b"hello\0\0\0",
            NativeType::String,
            &acquire_time_meta(),
            false,
        )
        .unwrap();
        assert_eq!(v, Value::from("hello"));
        assert_eq!(
            put(
                0,
                1,
                &string40("abc"),
                NativeType::Double,
                &acquire_time_meta(),
                false
            ),
            Err(Eca::PutFail)
        );
        // A TIME_DOUBLE write: metadata skipped.
        let mut p = vec![0u8; 16];
        p.extend_from_slice(&3.0f64.to_be_bytes());
        assert_eq!(
            put(20, 1, &p, NativeType::Double, &acquire_time_meta(), false),
            Ok(Value::from(3.0))
        );
    }

    #[test]
    fn write_string_to_enum_by_name_then_index() {
        let meta = Metadata {
            enum_states: vec!["Single".into(), "Multiple".into(), "Continuous".into()],
            ..Metadata::default()
        };
        let by_name = put(0, 1, &string40("Multiple"), NativeType::Enum, &meta, false).unwrap();
        assert_eq!(by_name, Value::enum_index(1));
        let by_index = put(0, 1, &string40("2"), NativeType::Enum, &meta, false).unwrap();
        assert_eq!(by_index, Value::enum_index(2));
        assert_eq!(
            put(0, 1, &string40("3"), NativeType::Enum, &meta, false),
            Err(Eca::PutFail)
        );
        assert_eq!(
            put(0, 1, &string40("Bogus"), NativeType::Enum, &meta, false),
            Err(Eca::PutFail)
        );
        assert_eq!(
            put(3, 1, &[0, 2], NativeType::Enum, &meta, false),
            Ok(Value::enum_index(2))
        );
        assert_eq!(
            put(3, 1, &[0, 3], NativeType::Enum, &meta, false),
            Err(Eca::PutFail)
        );
        assert_eq!(
            put(6, 1, &1.0f64.to_be_bytes(), NativeType::Enum, &meta, false),
            Ok(Value::enum_index(1))
        );
    }

    #[test]
    fn write_char_string() {
        let meta = Metadata::default();
        // pyepics: text + NUL.
        let v = put(
            4,
            13,
            b"/data/scan1/\0\0\0\0",
            NativeType::Char,
            &meta,
            true,
        )
        .unwrap();
        assert_eq!(v, Value::char_string("/data/scan1/"));
        // caproto: exact bytes, no NUL; a terminator is stored.
        let v = put(4, 3, b"abc\0\0\0\0\0", NativeType::Char, &meta, true).unwrap();
        assert_eq!(v, Value::char_string("abc"));
        // caput without -S: a DBR_STRING copied as text.
        let v = put(0, 1, &string40("/tmp/x"), NativeType::Char, &meta, true).unwrap();
        assert_eq!(v, Value::char_string("/tmp/x"));
        // Longer than NELM: cut, still terminated.
        let long = vec![b'a'; 300];
        let v = put(4, 300, &long, NativeType::Char, &meta, true).unwrap();
        assert_eq!(v.len(), 256);
        assert_eq!(v.as_text().unwrap().len(), 255);
    }

    #[test]
    fn write_ranges_and_counts() {
        let meta = Metadata::default();
        assert_eq!(
            put(
                5,
                1,
                &70000i32.to_be_bytes(),
                NativeType::Short,
                &meta,
                false
            ),
            Err(Eca::PutFail)
        );
        assert_eq!(
            put(
                6,
                1,
                &(-1.9f64).to_be_bytes(),
                NativeType::Long,
                &meta,
                false
            ),
            Ok(Value::from(-1i32))
        );
        assert_eq!(
            put(0, 1, &string40("0x1F"), NativeType::Long, &meta, false),
            Ok(Value::from(31i32))
        );
        assert_eq!(
            put(5, 2, &[0; 4], NativeType::Long, &meta, false),
            Err(Eca::BadCount)
        );
        assert_eq!(
            put(5, 0, &[], NativeType::Long, &meta, false),
            Err(Eca::BadCount)
        );
        assert_eq!(
            put(99, 1, &[0; 8], NativeType::Long, &meta, false),
            Err(Eca::BadType)
        );
        let target = PutTarget {
            native: NativeType::Long,
            max_count: 1,
            text: false,
            meta: &meta,
        };
        assert_eq!(decode_put(35, 1, &[0, 1], &target), Ok(PutValue::Ignored));
        assert_eq!(
            put(
                6,
                1,
                &2.5f64.to_be_bytes(),
                NativeType::String,
                &meta,
                false
            ),
            Ok(Value::from("2.5"))
        );
        assert_eq!(
            put(
                2,
                1,
                &1.25f32.to_be_bytes(),
                NativeType::Float,
                &meta,
                false
            ),
            Ok(Value::from(1.25f32))
        );
    }
}
