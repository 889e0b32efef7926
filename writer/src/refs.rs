//! Value references (Sardana SEP2): a URI saying where a frame was stored, instead of the
//! frame itself.
//!
//! The capture reports one [`ValueRef`] per frame written ([`RefLog`], and as JSON lines
//! through [`RefSink`]); [`crate::vds`] stitches references back into one virtual dataset.
//! Two schemes are understood:
//!
//! - `h5file:///abs/file.h5::/entry/data/data[3]`: Sardana's `h5file://path::dataset`, with a
//!   leading `/` allowed in the dataset path, and an optional frame index `[i]` or slice
//!   `[a:b]` (half-open, as in Python) selecting along the first axis. Without `::dataset`
//!   the reader decides the dataset (Sardana uses `dataset`; `detflow vds` uses `--dataset`).
//!   The selection may follow the file directly: `h5file:///abs/file.h5[3]`.
//! - `file:///abs/file.tif`: a whole file in a format other than HDF5.
//!
//! Paths are absolute and local: `h5file:///p`, `h5file:/p` and `h5file://localhost/p` are
//! accepted, a remote host is refused (Sardana silently read `h5file://tmp/a.h5` as
//! `/a.h5` on host `tmp`). Formatting percent-encodes space, `+`, `%`, `:`, `[`, `]`, `#`,
//! `?`, braces, control and non-ASCII bytes; parsing decodes any `%XX`, so
//! `parse(format(r)) == r` for every reference.
//!
//! [`RefPattern`] is a reference with Python `str.format` placeholders, as Sardana's
//! `ValueRefPattern`: only `{index}` is known, with an optional spec `0`, width and `d`
//! (`{index}`, `{index:4}`, `{index:04d}`); `{{` and `}}` are literal braces. An unknown
//! placeholder is an error, not a verbatim pattern as in Sardana's dummy.
//!
//! ```
//! use detflow_writer::refs::{FrameSelection, RefPattern, ValueRef};
//! let r: ValueRef = "h5file:///data/my%20scan.h5::/entry/data/data[7]".parse().unwrap();
//! assert_eq!(r.path().to_str(), Some("/data/my scan.h5"));
//! assert_eq!(r.dataset(), Some("/entry/data/data"));
//! assert_eq!(r.selection(), FrameSelection::Index(7));
//! assert_eq!(r.to_string(), "h5file:///data/my%20scan.h5::/entry/data/data[7]");
//!
//! let p: RefPattern = "h5file:///data/scan_{index:04d}.h5".parse().unwrap();
//! assert_eq!(p.format(12), "h5file:///data/scan_0012.h5");
//! ```

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use detflow_hal::PixelType;
use serde::Serialize;
use thiserror::Error;

/// The most references the `value_refs` list of a summary holds; the full list is in the
/// `--refs` JSON lines file (and [`RefLog::iter`] always yields all of them).
pub const SUMMARY_CAP: usize = 10_000;

/// What is wrong with a reference or a pattern; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct RefError {
    /// `value reference` or `ref-pattern`.
    pub what: &'static str,
    /// The text as given.
    pub text: String,
    /// Why it cannot be used.
    pub reason: String,
}

fn bad(text: &str, reason: impl Into<String>) -> RefError {
    RefError {
        what: "value reference",
        text: text.to_owned(),
        reason: reason.into(),
    }
}

/// Which frames of a dataset a reference points to, along its first axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameSelection {
    /// The whole dataset.
    All,
    /// One frame: `[i]`; the first axis is dropped.
    Index(u64),
    /// Frames `start..end` (`[a:b]`, half-open, `start < end`).
    Slice {
        /// First frame.
        start: u64,
        /// One past the last frame.
        end: u64,
    },
}

impl FrameSelection {
    /// The shape this selection takes from a dataset of shape `source`, or why it cannot.
    pub fn apply(&self, source: &[u64]) -> Result<Vec<u64>, String> {
        match *self {
            FrameSelection::All => Ok(source.to_vec()),
            FrameSelection::Index(i) => match source.split_first() {
                Some((&n, rest)) if i < n => Ok(rest.to_vec()),
                Some((&n, _)) => Err(format!("frame {i} is past the dataset's {n} frames")),
                None => Err("a scalar dataset has no frames to index".into()),
            },
            FrameSelection::Slice { start, end } => match source.split_first() {
                Some((&n, rest)) if end <= n => Ok(std::iter::once(end - start)
                    .chain(rest.iter().copied())
                    .collect()),
                Some((&n, _)) => Err(format!(
                    "frames {start}:{end} go past the dataset's {n} frames"
                )),
                None => Err("a scalar dataset has no frames to slice".into()),
            },
        }
    }
}

/// Where one value was stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueRef {
    /// A dataset, or some frames of it, in an HDF5 file (`h5file://`).
    H5 {
        /// Absolute path of the file.
        path: PathBuf,
        /// Dataset path in the file; `None`: the reader's default.
        dataset: Option<String>,
        /// Which frames.
        selection: FrameSelection,
    },
    /// A whole file in another format (`file://`).
    File {
        /// Absolute path of the file.
        path: PathBuf,
    },
}

impl ValueRef {
    /// An `h5file://` reference.
    pub fn h5(
        path: impl Into<PathBuf>,
        dataset: Option<&str>,
        selection: FrameSelection,
    ) -> ValueRef {
        ValueRef::H5 {
            path: path.into(),
            dataset: dataset.map(str::to_owned),
            selection,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            ValueRef::H5 { path, .. } | ValueRef::File { path } => path,
        }
    }

    /// The dataset, if the reference names one.
    pub fn dataset(&self) -> Option<&str> {
        match self {
            ValueRef::H5 { dataset, .. } => dataset.as_deref(),
            ValueRef::File { .. } => None,
        }
    }

    /// The frame selection ([`FrameSelection::All`] for `file://`).
    pub fn selection(&self) -> FrameSelection {
        match self {
            ValueRef::H5 { selection, .. } => *selection,
            ValueRef::File { .. } => FrameSelection::All,
        }
    }
}

/// Bytes written as they are; everything else is `%XX`.
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'_' | b'~' | b'/' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
        )
        || matches!(b, b',' | b';' | b'=' | b'@')
}

fn encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode(text: &str, part: &str, uri: &str) -> Result<Vec<u8>, RefError> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    bad(
                        uri,
                        format!("{part}: '%' must be followed by two hex digits"),
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Split a trailing `[i]` or `[a:b]` off `text`.
fn split_selection<'a>(text: &'a str, uri: &str) -> Result<(&'a str, FrameSelection), RefError> {
    let Some(body) = text.strip_suffix(']') else {
        return Ok((text, FrameSelection::All));
    };
    let open = body
        .rfind('[')
        .ok_or_else(|| bad(uri, "a ']' without '[' (write %5D for a literal ']')"))?;
    let (rest, inside) = (&body[..open], &body[open + 1..]);
    let selection = match inside.split_once(':') {
        None => FrameSelection::Index(parse_u64(inside).ok_or_else(|| {
            bad(
                uri,
                format!("selection [{inside}]: expected [i] or [a:b] with whole numbers"),
            )
        })?),
        Some((a, b)) => {
            let (Some(start), Some(end)) = (parse_u64(a), parse_u64(b)) else {
                return Err(bad(
                    uri,
                    format!("selection [{inside}]: expected [i] or [a:b] with whole numbers"),
                ));
            };
            if start >= end {
                return Err(bad(
                    uri,
                    format!("selection [{inside}]: empty; [a:b] needs a < b"),
                ));
            }
            FrameSelection::Slice { start, end }
        }
    };
    Ok((rest, selection))
}

impl FromStr for ValueRef {
    type Err = RefError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| bad(uri, "expected h5file:///path or file:///path"))?;
        let h5 = if scheme.eq_ignore_ascii_case("h5file") {
            true
        } else if scheme.eq_ignore_ascii_case("file") {
            false
        } else {
            return Err(bad(
                uri,
                format!("unknown scheme {scheme:?}: expected h5file or file"),
            ));
        };
        let rest = match rest.strip_prefix("//") {
            Some(after) => {
                let slash = after.find('/').unwrap_or(after.len());
                let host = &after[..slash];
                if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                    return Err(bad(
                        uri,
                        format!(
                            "host {host:?}: only local files can be referenced; an absolute \
                             path needs three slashes ({scheme}:///path)"
                        ),
                    ));
                }
                &after[slash..]
            }
            None => rest,
        };
        if !rest.starts_with('/') {
            return Err(bad(uri, "the path must be absolute"));
        }
        if !h5 {
            let path = decode(rest, "path", uri)?;
            if path.ends_with(b"/") {
                return Err(bad(uri, "the path names a directory, not a file"));
            }
            return Ok(ValueRef::File {
                path: PathBuf::from(std::ffi::OsString::from_vec(path)),
            });
        }
        let (rest, selection) = split_selection(rest, uri)?;
        let (path, dataset) = match rest.split_once("::") {
            Some((p, d)) => (p, Some(d)),
            None => (rest, None),
        };
        let path = decode(path, "path", uri)?;
        if path.ends_with(b"/") {
            return Err(bad(uri, "the path names a directory, not a file"));
        }
        let dataset = match dataset {
            None => None,
            Some(d) => {
                let d = String::from_utf8(decode(d, "dataset", uri)?)
                    .map_err(|_| bad(uri, "the dataset path is not UTF-8"))?;
                if d.is_empty() || d == "/" {
                    return Err(bad(uri, "the dataset path after '::' is empty"));
                }
                if d.contains('\0') {
                    return Err(bad(uri, "the dataset path contains NUL"));
                }
                Some(d)
            }
        };
        Ok(ValueRef::H5 {
            path: PathBuf::from(std::ffi::OsString::from_vec(path)),
            dataset,
            selection,
        })
    }
}

impl fmt::Display for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        match self {
            ValueRef::File { path } => {
                s.push_str("file://");
                encode(&mut s, path.as_os_str().as_bytes());
            }
            ValueRef::H5 {
                path,
                dataset,
                selection,
            } => {
                s.push_str("h5file://");
                encode(&mut s, path.as_os_str().as_bytes());
                if let Some(d) = dataset {
                    s.push_str("::");
                    encode(&mut s, d.as_bytes());
                }
                match selection {
                    FrameSelection::All => {}
                    FrameSelection::Index(i) => {
                        let _ = write!(s, "[{i}]");
                    }
                    FrameSelection::Slice { start, end } => {
                        let _ = write!(s, "[{start}:{end}]");
                    }
                }
            }
        }
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `{index}` with a zero flag and a minimum width.
    Index {
        zero: bool,
        width: usize,
    },
}

/// A reference pattern with `{index}` placeholders (Sardana's `ValueRefPattern`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefPattern {
    source: String,
    pieces: Vec<Piece>,
}

impl RefPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has an `{index}` placeholder (so each point gets its own name).
    pub fn has_index(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Index { .. }))
    }

    /// The URI for point `index`.
    pub fn format(&self, index: u64) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Index { zero: true, width } => {
                    let _ = write!(out, "{index:0width$}");
                }
                Piece::Index { zero: false, width } => {
                    let _ = write!(out, "{index:>width$}");
                }
            }
        }
        out
    }

    /// The reference for point `index`.
    ///
    /// # Panics
    ///
    /// Never for a parsed pattern: parsing checks that formatted patterns are references
    /// (digits and spaces, which is all `{index}` adds, keep them so).
    pub fn value_ref(&self, index: u64) -> ValueRef {
        let uri = self.format(index);
        uri.parse()
            .unwrap_or_else(|e| panic!("pattern {:?} formatted badly: {e}", self.source))
    }
}

impl FromStr for RefPattern {
    type Err = RefError;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| RefError {
            what: "ref-pattern",
            text: pattern.to_owned(),
            reason,
        };
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = pattern.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(err("a single '}' (write '}}' for a literal brace)".into())),
                '{' => {
                    let close = pattern[i..]
                        .find('}')
                        .ok_or_else(|| err("a '{' that is never closed".into()))?;
                    let field = &pattern[i + 1..i + close];
                    while chars.peek().is_some_and(|&(j, _)| j <= i + close) {
                        chars.next();
                    }
                    let (name, spec) = field.split_once(':').unwrap_or((field, ""));
                    if name != "index" {
                        return Err(err(format!(
                            "unknown placeholder {{{name}}}: only {{index}} is known"
                        )));
                    }
                    let digits = spec.strip_suffix('d').unwrap_or(spec);
                    let zero = digits.starts_with('0');
                    let width = if digits.is_empty() {
                        0
                    } else {
                        parse_u64(digits).filter(|&w| w <= 64).ok_or_else(|| {
                            err(format!(
                                "format spec {spec:?}: expected an optional 0, a width up \
                                     to 64 and an optional d, as in {{index:04d}}"
                            ))
                        })? as usize
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Index { zero, width });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let parsed = RefPattern {
            source: pattern.to_owned(),
            pieces,
        };
        // The index must only change the file name: the rest is the same for every point.
        let (a, b) = (parsed.format(0), parsed.format(1));
        let (ra, rb) = (
            a.parse::<ValueRef>().map_err(|e| err(e.reason))?,
            b.parse::<ValueRef>().map_err(|e| err(e.reason))?,
        );
        if ra.dataset() != rb.dataset() || ra.selection() != rb.selection() {
            return Err(err(
                "{index} may only appear in the file path, not in the dataset or selection".into(),
            ));
        }
        Ok(parsed)
    }
}

impl fmt::Display for RefPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The numpy name of a pixel type (`uint16`, `float32`): what h5py users see.
pub fn numpy_dtype(p: PixelType) -> &'static str {
    match p {
        PixelType::U8 => "uint8",
        PixelType::I8 => "int8",
        PixelType::U16 => "uint16",
        PixelType::I16 => "int16",
        PixelType::U32 => "uint32",
        PixelType::I32 => "int32",
        PixelType::F32 => "float32",
        PixelType::F64 => "float64",
    }
}

/// A pixel type from its numpy name (`uint16`) or detflow's (`u16`).
pub fn pixel_type_from_name(name: &str) -> Option<PixelType> {
    PixelType::ALL
        .into_iter()
        .find(|&t| numpy_dtype(t) == name || t.name() == name)
}

/// One reported reference with the dtype and shape of what it points to (SEP2 had only the
/// URI): one line of the `--refs` file, one entry of `value_refs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefRecord {
    /// The URI.
    pub uri: String,
    /// numpy dtype name of the values (`uint16`).
    pub dtype: &'static str,
    /// Shape of what the URI selects (rows, columns for one frame).
    pub shape: Vec<u64>,
}

/// Consecutive frames of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefRun {
    path: PathBuf,
    dataset: String,
    /// `None`: the dataset is one frame with no frame axis (Single mode); else the index of
    /// the run's first frame.
    first: Option<u64>,
    count: u64,
}

/// Every reference a capture reported, kept compactly (one entry per file, not per frame).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefLog {
    dtype: &'static str,
    frame_shape: [u64; 2],
    runs: Vec<RefRun>,
    len: u64,
}

impl RefLog {
    /// An empty log of frames of `pixel_type` with `[rows, columns]`.
    pub fn new(pixel_type: PixelType, frame_shape: [u64; 2]) -> RefLog {
        RefLog {
            dtype: numpy_dtype(pixel_type),
            frame_shape,
            runs: Vec::new(),
            len: 0,
        }
    }

    /// Record a frame: frame `index` of `dataset` in `path`, or (`None`) the whole dataset.
    pub fn push(&mut self, path: &Path, dataset: &str, index: Option<u64>) -> RefRecord {
        let extends = self.runs.last_mut().filter(|r| {
            r.path == path
                && r.dataset == dataset
                && matches!((r.first, index), (Some(f), Some(i)) if f + r.count == i)
        });
        match extends {
            Some(run) => run.count += 1,
            None => self.runs.push(RefRun {
                path: path.to_path_buf(),
                dataset: dataset.to_owned(),
                first: index,
                count: 1,
            }),
        }
        self.len += 1;
        self.record(path, dataset, index)
    }

    fn record(&self, path: &Path, dataset: &str, index: Option<u64>) -> RefRecord {
        let selection = index.map_or(FrameSelection::All, FrameSelection::Index);
        RefRecord {
            uri: ValueRef::h5(path, Some(dataset), selection).to_string(),
            dtype: self.dtype,
            shape: self.frame_shape.to_vec(),
        }
    }

    /// References recorded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The numpy dtype of the frames.
    pub fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// `[rows, columns]` of one frame.
    pub fn frame_shape(&self) -> [u64; 2] {
        self.frame_shape
    }

    /// Every reference, in the order the frames were written.
    pub fn iter(&self) -> impl Iterator<Item = RefRecord> + '_ {
        self.runs.iter().flat_map(move |r| {
            (0..r.count).map(move |k| self.record(&r.path, &r.dataset, r.first.map(|f| f + k)))
        })
    }
}

/// Serialised as a list of at most [`SUMMARY_CAP`] [`RefRecord`]s (the first ones).
impl Serialize for RefLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().take(SUMMARY_CAP))
    }
}

/// Writes each reference as one JSON line (a [`RefRecord`]) as its frame is written;
/// line-buffered, so a reader tailing the file sees whole lines.
#[derive(Debug)]
pub struct RefSink {
    path: PathBuf,
    out: std::io::LineWriter<std::fs::File>,
}

impl RefSink {
    /// Create (or truncate) `path`.
    pub fn create(path: &Path) -> std::io::Result<RefSink> {
        Ok(RefSink {
            path: path.to_path_buf(),
            out: std::io::LineWriter::new(std::fs::File::create(path)?),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line.
    pub fn write(&mut self, record: &RefRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)
    }

    /// Flush to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> ValueRef {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sardana_forms_parse() {
        assert_eq!(
            r("h5file:///tmp/foo.h5"),
            ValueRef::h5("/tmp/foo.h5", None, FrameSelection::All)
        );
        assert_eq!(r("h5file:///tmp/foo.h5::bar").dataset(), Some("bar"));
        assert_eq!(
            r("h5file:///tmp/foo.h5::entry/data").dataset(),
            Some("entry/data")
        );
        assert_eq!(
            r("h5file:///tmp/foo.h5::/entry/data").dataset(),
            Some("/entry/data")
        );
        assert_eq!(r("h5file:/tmp/foo.h5").path(), Path::new("/tmp/foo.h5"));
        assert_eq!(
            r("h5file://localhost/tmp/foo.h5").path(),
            Path::new("/tmp/foo.h5")
        );
        assert_eq!(
            r("file:///tmp/test.edf"),
            ValueRef::File {
                path: "/tmp/test.edf".into()
            }
        );
    }

    #[test]
    fn selections() {
        assert_eq!(
            r("h5file:///a.h5::/d[3]").selection(),
            FrameSelection::Index(3)
        );
        assert_eq!(
            r("h5file:///a.h5::bar[0:10]").selection(),
            FrameSelection::Slice { start: 0, end: 10 }
        );
        let no_dataset = r("h5file:///a.h5[2]");
        assert_eq!(
            (no_dataset.dataset(), no_dataset.selection()),
            (None, FrameSelection::Index(2))
        );
        assert_eq!(FrameSelection::Index(2).apply(&[5, 3, 4]), Ok(vec![3, 4]));
        assert_eq!(
            FrameSelection::Slice { start: 1, end: 3 }.apply(&[5, 3, 4]),
            Ok(vec![2, 3, 4])
        );
        assert!(FrameSelection::Index(5).apply(&[5, 3, 4]).is_err());
    }

    #[test]
    fn spaces_and_plus_are_encoded() {
        let v = ValueRef::h5("/data/my scan+1.h5", Some("/e/d x"), FrameSelection::All);
        assert_eq!(v.to_string(), "h5file:///data/my%20scan%2B1.h5::/e/d%20x");
        assert_eq!(r(&v.to_string()), v);
        // Lenient input: a raw space or '+' is itself.
        assert_eq!(r("h5file:///data/my scan+1.h5::/e/d x"), v);
    }

    #[test]
    fn bad_references_say_why() {
        for (uri, why) in [
            ("h5file://tmp/foo.h5", "host \"tmp\""),
            ("ftp:///a", "unknown scheme"),
            ("h5file:relative.h5", "absolute"),
            ("h5file:///a.h5::", "empty"),
            ("h5file:///a.h5::d[x]", "selection [x]"),
            ("h5file:///a.h5::d[4:2]", "a < b"),
            ("h5file:///a%2.h5", "two hex digits"),
            ("h5file:///dir/", "directory"),
            ("no scheme", "expected"),
        ] {
            let e = uri.parse::<ValueRef>().unwrap_err();
            assert!(e.to_string().contains(why), "{uri}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid value reference {uri:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn patterns() {
        let p: RefPattern = "h5file:///data/scan_{index:04d}.h5".parse().unwrap();
        assert!(p.has_index());
        assert_eq!(p.format(7), "h5file:///data/scan_0007.h5");
        assert_eq!(
            "h5file:///d/f_{index}.h5"
                .parse::<RefPattern>()
                .unwrap()
                .format(12),
            "h5file:///d/f_12.h5"
        );
        assert_eq!(
            "h5file:///d/f_{index:3}.h5"
                .parse::<RefPattern>()
                .unwrap()
                .format(5),
            "h5file:///d/f_  5.h5"
        );
        assert_eq!(
            "h5file:///d/{{x}}_{index:02d}.h5::bar"
                .parse::<RefPattern>()
                .unwrap()
                .value_ref(3),
            ValueRef::h5("/d/{x}_03.h5", Some("bar"), FrameSelection::All)
        );
        for (p, why) in [
            ("h5file:///d/{scan_id}.h5", "unknown placeholder {scan_id}"),
            ("h5file:///d/{index:x}.h5", "format spec"),
            ("h5file:///d/{index.h5", "never closed"),
            ("h5file:///d/x}.h5", "single '}'"),
            ("h5file:///d/a.h5::d{index}", "only appear in the file path"),
            ("h5file://host/{index}.h5", "host"),
        ] {
            let e = p.parse::<RefPattern>().unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid ref-pattern {p:?}: ")),
                "{e}"
            );
            assert!(e.to_string().contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn the_log_is_compact_and_complete() {
        let mut log = RefLog::new(PixelType::U16, [3, 4]);
        let a = Path::new("/d/a.h5");
        for i in 0..3 {
            log.push(a, "/entry/data/data", Some(i));
        }
        log.push(Path::new("/d/b.h5"), "/entry/data/data", None);
        assert_eq!(log.runs.len(), 2);
        let all: Vec<_> = log.iter().collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].uri, "h5file:///d/a.h5::/entry/data/data[2]");
        assert_eq!(all[3].uri, "h5file:///d/b.h5::/entry/data/data");
        assert_eq!(all[3].dtype, "uint16");
        assert_eq!(all[3].shape, vec![3, 4]);
        let json = serde_json::to_string(&log).unwrap();
        assert!(
            json.starts_with(
                r#"[{"uri":"h5file:///d/a.h5::/entry/data/data[0]","dtype":"uint16","shape":[3,4]}"#
            ),
            "{json}"
        );
    }

    fn any_path() -> impl Strategy<Value = PathBuf> {
        proptest::collection::vec("[a-zA-Z0-9 +%:\\[\\]#?{}é_.-]{1,8}", 1..4)
            .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
    }

    fn any_selection() -> impl Strategy<Value = FrameSelection> {
        prop_oneof![
            Just(FrameSelection::All),
            any::<u64>().prop_map(FrameSelection::Index),
            (0u64..1 << 40, 1u64..1000).prop_map(|(start, n)| FrameSelection::Slice {
                start,
                end: start + n
            }),
        ]
    }

    fn any_ref() -> impl Strategy<Value = ValueRef> {
        prop_oneof![
            (
                any_path(),
                proptest::option::of("/?[a-zA-Z0-9 +:\\[\\]_]{1,6}(/[a-z:]{1,4}){0,2}"),
                any_selection()
            )
                .prop_map(|(path, dataset, selection)| ValueRef::H5 {
                    path,
                    dataset,
                    selection
                }),
            any_path().prop_map(|path| ValueRef::File { path }),
        ]
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(v in any_ref()) {
            let text = v.to_string();
            prop_assert!(!text.contains(' ') && !text[8..].contains('+'), "{}", text);
            prop_assert_eq!(text.parse::<ValueRef>(), Ok(v));
        }

        #[test]
        fn parse_never_panics_and_canonical_forms_are_stable(s in "\\PC{0,40}") {
            if let Ok(v) = s.parse::<ValueRef>() {
                let canonical = v.to_string();
                prop_assert_eq!(canonical.parse::<ValueRef>(), Ok(v));
            }
        }

        #[test]
        fn patterns_format_what_they_parse(
            stem in "[a-z_]{1,6}",
            zero in any::<bool>(),
            width in 0usize..8,
            index in any::<u32>(),
        ) {
            let spec = match (zero, width) {
                (_, 0) => String::new(),
                (true, w) => format!(":0{w}d"),
                (false, w) => format!(":{w}"),
            };
            let p: RefPattern = format!("h5file:///d/{stem}_{{index{spec}}}.h5").parse().unwrap();
            let formatted = p.value_ref(u64::from(index));
            let number = if zero { format!("{index:0width$}") } else { format!("{index:>width$}") };
            let expected = PathBuf::from(format!("/d/{stem}_{number}.h5"));
            prop_assert_eq!(formatted.path(), expected.as_path());
        }
    }
}
