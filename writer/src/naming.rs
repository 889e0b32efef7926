//! areaDetector file naming: FilePath + FileName + FileNumber through a C-printf FileTemplate.
//!
//! NDPluginFile passes exactly three arguments to `snprintf(template, ...)`, in this order: the
//! file path (normalised to end with a separator), the file name, and the file number (an
//! `int`). [`FileTemplate`] parses the template once, refuses conversions that do not fit
//! those arguments, and formats names without calling C. [`FileNaming`] adds AutoIncrement: the
//! number is incremented right after each name is built, so the name uses the old number.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// areaDetector's usual HDF5 template: `/data/` + `scan` + 7 gives `/data/scan_0007.h5`.
pub const DEFAULT_TEMPLATE: &str = "%s%s_%4.4d.h5";

/// Maximum length of a built name: NDPluginFile formats into a buffer of 2 x 256 characters.
pub const MAX_FULL_NAME: usize = 511;

/// What is wrong with a file template; the message quotes the template.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// A `%` conversion this writer does not know (`%q`, `%n`, `%*d`, …).
    #[error("invalid file template {template:?}: unknown conversion {conversion:?}")]
    UnknownConversion {
        /// The whole template.
        template: String,
        /// The offending conversion as written.
        conversion: String,
    },
    /// The template ends inside a conversion.
    #[error("invalid file template {template:?}: it ends inside a conversion")]
    Truncated {
        /// The whole template.
        template: String,
    },
    /// A conversion does not fit the argument it receives (path, name, number in that order).
    #[error(
        "invalid file template {template:?}: conversion {conversion:?} receives the {argument}, which needs {needs}"
    )]
    WrongArgument {
        /// The whole template.
        template: String,
        /// The offending conversion.
        conversion: String,
        /// "file path", "file name" or "file number".
        argument: &'static str,
        /// What the argument needs ("%s", "an integer conversion such as %d").
        needs: &'static str,
    },
    /// More conversions than the three arguments.
    #[error(
        "invalid file template {template:?}: {count} conversions, but only three arguments (path, name, number) are passed"
    )]
    TooManyConversions {
        /// The whole template.
        template: String,
        /// How many conversions it has.
        count: usize,
    },
    /// The template is empty.
    #[error("invalid file template \"\": it is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Conversion(Spec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Spec {
    left: bool,
    plus: bool,
    space: bool,
    alt: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
    conv: u8,
}

/// A parsed, validated C-printf file template.
///
/// ```
/// use detflow_writer::naming::FileTemplate;
/// let t: FileTemplate = "%s%s_%4.4d.h5".parse().unwrap();
/// assert_eq!(t.format("/data/run1/", "scan", 7), "/data/run1/scan_0007.h5");
/// assert!("%s%s_%q.h5".parse::<FileTemplate>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTemplate {
    source: String,
    pieces: Vec<Piece>,
}

const ARGUMENTS: [(&str, bool); 3] = [
    ("file path", false),
    ("file name", false),
    ("file number", true),
];

impl std::str::FromStr for FileTemplate {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, Self::Err> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        let bytes = template.as_bytes();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut conversions = 0usize;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                // Copy the whole UTF-8 character.
                let ch = template[i..]
                    .chars()
                    .next()
                    .expect("index is a char boundary");
                literal.push(ch);
                i += ch.len_utf8();
                continue;
            }
            let start = i;
            i += 1;
            let truncated = || TemplateError::Truncated {
                template: template.to_owned(),
            };
            if i >= bytes.len() {
                return Err(truncated());
            }
            if bytes[i] == b'%' {
                literal.push('%');
                i += 1;
                continue;
            }
            let mut spec = Spec::default();
            while i < bytes.len() {
                match bytes[i] {
                    b'-' => spec.left = true,
                    b'+' => spec.plus = true,
                    b' ' => spec.space = true,
                    b'#' => spec.alt = true,
                    b'0' => spec.zero = true,
                    _ => break,
                }
                i += 1;
            }
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                spec.width = spec.width * 10 + usize::from(bytes[i] - b'0');
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'.' {
                i += 1;
                let mut p = 0usize;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    p = p * 10 + usize::from(bytes[i] - b'0');
                    i += 1;
                }
                spec.precision = Some(p);
            }
            // Length modifiers are accepted for integers (the argument is an int either way).
            let mut length = 0;
            while i < bytes.len() && matches!(bytes[i], b'h' | b'l') {
                length += 1;
                i += 1;
            }
            if i >= bytes.len() {
                return Err(truncated());
            }
            let conv = bytes[i];
            let end = template[i..]
                .chars()
                .next()
                .map_or(i + 1, |c| i + c.len_utf8());
            let written = &template[start..end];
            i = end;
            let unknown = || TemplateError::UnknownConversion {
                template: template.to_owned(),
                conversion: written.to_owned(),
            };
            let is_int = matches!(conv, b'd' | b'i' | b'u' | b'x' | b'X' | b'o');
            if !(is_int || conv == b's') || (conv == b's' && length > 0) || length > 2 {
                return Err(unknown());
            }
            if spec.width > 4096 || spec.precision.is_some_and(|p| p > 4096) {
                return Err(unknown());
            }
            let Some(&(argument, wants_int)) = ARGUMENTS.get(conversions) else {
                return Err(TemplateError::TooManyConversions {
                    template: template.to_owned(),
                    count: count_conversions(template),
                });
            };
            if wants_int != is_int {
                return Err(TemplateError::WrongArgument {
                    template: template.to_owned(),
                    conversion: written.to_owned(),
                    argument,
                    needs: if wants_int {
                        "an integer conversion such as %d"
                    } else {
                        "%s"
                    },
                });
            }
            spec.conv = conv;
            conversions += 1;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Conversion(spec));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(FileTemplate {
            source: template.to_owned(),
            pieces,
        })
    }
}

fn count_conversions(template: &str) -> usize {
    let b = template.as_bytes();
    let (mut n, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'%' {
            if b.get(i + 1) == Some(&b'%') {
                i += 2;
                continue;
            }
            n += 1;
        }
        i += 1;
    }
    n
}

impl Default for FileTemplate {
    fn default() -> Self {
        DEFAULT_TEMPLATE
            .parse()
            .expect("the default template is valid")
    }
}

impl std::fmt::Display for FileTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl FileTemplate {
    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Build a name as C `snprintf(buf, 512, template, path, name, number)` would, truncated
    /// to [`MAX_FULL_NAME`] bytes.
    pub fn format(&self, path: &str, name: &str, number: i32) -> String {
        let mut out = String::new();
        let mut arg = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Conversion(spec) => {
                    match arg {
                        0 => pad_str(&mut out, spec, path),
                        1 => pad_str(&mut out, spec, name),
                        _ => format_int(&mut out, spec, number),
                    }
                    arg += 1;
                }
            }
        }
        if out.len() > MAX_FULL_NAME {
            let mut cut = MAX_FULL_NAME;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        out
    }
}

fn pad_str(out: &mut String, spec: &Spec, s: &str) {
    let s = match spec.precision {
        Some(p) if p < s.len() => {
            let mut cut = p;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            &s[..cut]
        }
        _ => s,
    };
    pad(out, spec.width, spec.left, s);
}

fn pad(out: &mut String, width: usize, left: bool, body: &str) {
    let fill = width.saturating_sub(body.len());
    if !left {
        out.extend(std::iter::repeat_n(' ', fill));
    }
    out.push_str(body);
    if left {
        out.extend(std::iter::repeat_n(' ', fill));
    }
}

fn format_int(out: &mut String, spec: &Spec, value: i32) {
    let signed = matches!(spec.conv, b'd' | b'i');
    // C passes the int; unsigned conversions reinterpret its bits.
    let (negative, magnitude) = if signed {
        (value < 0, i64::from(value).unsigned_abs())
    } else {
        (false, u64::from(value as u32))
    };
    let mut digits = match spec.conv {
        b'x' => format!("{magnitude:x}"),
        b'X' => format!("{magnitude:X}"),
        b'o' => format!("{magnitude:o}"),
        _ => magnitude.to_string(),
    };
    match spec.precision {
        // "%.0d" of zero prints no digits.
        Some(0) if magnitude == 0 => digits.clear(),
        Some(p) if p > digits.len() => {
            digits.insert_str(0, &"0".repeat(p - digits.len()));
        }
        _ => {}
    }
    let mut prefix = String::new();
    if negative {
        prefix.push('-');
    } else if signed && spec.plus {
        prefix.push('+');
    } else if signed && spec.space {
        prefix.push(' ');
    }
    if spec.alt {
        match spec.conv {
            b'x' if magnitude != 0 => prefix.push_str("0x"),
            b'X' if magnitude != 0 => prefix.push_str("0X"),
            // "%#o" guarantees a leading zero, even for "%#.0o" of zero.
            b'o' if !digits.starts_with('0') => prefix.push('0'),
            _ => {}
        }
    }
    let len = prefix.len() + digits.len();
    if spec.zero && !spec.left && spec.precision.is_none() && spec.width > len {
        let _ = write!(out, "{prefix}{}{digits}", "0".repeat(spec.width - len));
    } else {
        pad(out, spec.width, spec.left, &format!("{prefix}{digits}"));
    }
}

/// Normalise a FilePath as NDPluginFile does: one trailing `/` removed, then a separator always
/// appended. An empty path stays empty (the template then yields a relative name).
pub fn normalise_path(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    format!("{trimmed}/")
}

/// Expand strftime codes (`%Y/%m/%d`, `%H%M%S`, …) in a FilePath with the local time `when`,
/// as C `strftime` does; a path without `%` is returned unchanged.
///
/// ```
/// use detflow_writer::naming::expand_path_time;
/// let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 365);
/// let p = expand_path_time("/data/%Y/", t).unwrap();
/// assert!(p == "/data/1971/" || p == "/data/1970/"); // local time zone
/// assert_eq!(expand_path_time("/plain/dir", t).unwrap(), "/plain/dir");
/// ```
pub fn expand_path_time(path: &str, when: std::time::SystemTime) -> Result<String, PathTimeError> {
    if !path.contains('%') {
        return Ok(path.to_owned());
    }
    let err = |reason: &str| PathTimeError {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let secs = match when.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as libc::time_t,
        Err(_) => 0,
    };
    let format = std::ffi::CString::new(path).map_err(|_| err("contains a NUL byte"))?;
    // SAFETY: tm is plain old data that localtime_r fully initialises on success; secs is a
    // valid time_t that lives for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return Err(err("the local time cannot be computed"));
        }
        tm
    };
    let mut buf = vec![0u8; 4 * path.len() + 256];
    // SAFETY: buf is writable for buf.len() bytes; format is NUL-terminated; tm is initialised.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), format.as_ptr(), &tm) };
    if n == 0 {
        return Err(err("strftime produced nothing (unknown code or too long)"));
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| err("the expanded path is not UTF-8"))
}

/// A FilePath whose strftime codes could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid file path {path:?}: {reason}")]
pub struct PathTimeError {
    /// The path as given.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// True when `path` names an existing directory (areaDetector FilePathExists_RBV).
pub fn path_exists(path: &str) -> bool {
    let p = if path.is_empty() { "." } else { path };
    Path::new(p).is_dir()
}

/// Create the missing directories of `path` as NDPluginFile's CreateDirectory does, with
/// depth `depth`.
///
/// The path is split into components with the root (`/`, or the current directory for a
/// relative path) as component 0. `depth` 0 creates nothing. `depth` D > 0 assumes the first D
/// components exist and creates every component from index D on: 1 creates everything below
/// the root. A negative depth -k becomes N - k (at least 1) for a path of N components, so -1
/// creates only the leaf directory and -5 at most the last five. Existing directories are not
/// an error; the first other failure stops the creation and is returned.
///
/// Each directory is checked against `roots` just before it is made, with links resolved,
/// and one outside them is refused (`PermissionDenied`) before it exists.
pub fn create_directories(
    path: &str,
    depth: i32,
    roots: &crate::roots::DataRoots,
) -> std::io::Result<()> {
    if depth == 0 || path.is_empty() {
        return Ok(());
    }
    let (root, rest) = match path.strip_prefix('/') {
        Some(rest) => ("/", rest),
        None => ("", path),
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let n = parts.len() as i64 + 1; // the root is component 0
    let first = if depth > 0 {
        i64::from(depth)
    } else {
        (n + i64::from(depth)).max(1)
    };
    let mut current = PathBuf::from(if root.is_empty() { "." } else { root });
    for (i, part) in parts.iter().enumerate() {
        current.push(part);
        if (i as i64 + 1) < first {
            continue;
        }
        if current.is_dir() {
            continue;
        }
        if let Err(e) = roots.check(&current) {
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
        }
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && current.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// FilePath, FileName, FileNumber, AutoIncrement and FileTemplate together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNaming {
    /// Directory; normalised to end with `/` when names are built.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Number the next name will use.
    pub number: i32,
    /// Increment `number` after each name is built.
    pub auto_increment: bool,
    /// The printf template.
    pub template: FileTemplate,
}

impl FileNaming {
    /// Build the next full file name and, with AutoIncrement, advance the number.
    ///
    /// ```
    /// use detflow_writer::naming::FileNaming;
    /// let mut n = FileNaming {
    ///     path: "/data/run1".into(),
    ///     name: "scan".into(),
    ///     number: 7,
    ///     auto_increment: true,
    ///     template: Default::default(),
    /// };
    /// assert_eq!(n.next_name().to_str(), Some("/data/run1/scan_0007.h5"));
    /// assert_eq!(n.number, 8);
    /// ```
    pub fn next_name(&mut self) -> PathBuf {
        let name = self.peek_name();
        if self.auto_increment {
            self.number = self.number.wrapping_add(1);
        }
        name
    }

    /// The name [`next_name`](Self::next_name) would build, without advancing.
    pub fn peek_name(&self) -> PathBuf {
        PathBuf::from(
            self.template
                .format(&normalise_path(&self.path), &self.name, self.number),
        )
    }

    /// The directory files land in (the current directory when `path` is empty).
    pub fn directory(&self) -> &Path {
        if self.path.is_empty() {
            Path::new(".")
        } else {
            Path::new(&self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> FileTemplate {
        s.parse().unwrap()
    }

    #[test]
    fn areadetector_examples() {
        assert_eq!(
            t("%s%s_%4.4d.h5").format("/data/run1/", "scan", 7),
            "/data/run1/scan_0007.h5"
        );
        assert_eq!(
            t("%s%s_%3.3d.dat").format("/d/", "x", 12345),
            "/d/x_12345.dat"
        );
        assert_eq!(t("%s%s.h5").format("/d/", "x", 3), "/d/x.h5");
        assert_eq!(t("%s%s_%06d.h5").format("", "a", 42), "a_000042.h5");
        assert_eq!(t("%s%s_%d%%.h5").format("p/", "a", -3), "p/a_-3%.h5");
        assert_eq!(t("%s%s_%-5d|").format("", "a", 42), "a_42   |");
        assert_eq!(t("%s%.2s_%5x").format("", "abcdef", 255), "ab_   ff");
    }

    #[test]
    fn table_of_real_templates_against_c_printf() {
        // (template, number): width, zero padding, overflow past the width, negative numbers,
        // left justification, signs, and the templates beamlines use.
        let table: &[(&str, i32)] = &[
            ("%s%s_%4.4d.h5", 7),
            ("%s%s_%4.4d.h5", 123_456),
            ("%s%s_%4.4d.h5", -7),
            ("%s%s_%3.3d.h5", 0),
            ("%s%s_%06d.h5", -42),
            ("%s%s_%6d.h5", 42),
            ("%s%s_%-6d|.h5", 42),
            ("%s%s_%+d.h5", 5),
            ("%s%s_% d.h5", 5),
            ("%s%s_%d.h5", i32::MIN),
            ("%s%s_%.0d.h5", 0),
            ("%s%s%%_%05i.h5", 99),
            ("%s%s_%u.h5", -1),
            ("%s%s_%x.h5", 255),
            ("%s%s.h5", 3),
            ("%s/%s_%2.2d/data.h5", 1),
        ];
        for &(template, number) in table {
            let ours = t(template).format("/data/run1/", "scan", number);
            assert_eq!(
                ours,
                c_format(template, "/data/run1/", "scan", number),
                "{template} with {number}"
            );
        }
        assert_eq!(
            t("%s%s_%4.4d.h5").format("/d/", "s", 123_456),
            "/d/s_123456.h5"
        );
        assert_eq!(t("%s%s_%4.4d.h5").format("/d/", "s", -7), "/d/s_-0007.h5");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let e = "%s%s_%q.h5".parse::<FileTemplate>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid file template "%s%s_%q.h5": unknown conversion "%q""#
        );
        assert!(matches!(
            "%d%s%s".parse::<FileTemplate>(),
            Err(TemplateError::WrongArgument {
                argument: "file path",
                ..
            })
        ));
        assert!(matches!(
            "%s%s%s".parse::<FileTemplate>(),
            Err(TemplateError::WrongArgument {
                argument: "file number",
                ..
            })
        ));
        assert!(matches!(
            "%s%s%d%d".parse::<FileTemplate>(),
            Err(TemplateError::TooManyConversions { count: 4, .. })
        ));
        assert!(matches!(
            "%s%s_%4".parse::<FileTemplate>(),
            Err(TemplateError::Truncated { .. })
        ));
        assert!(matches!(
            "%s%s_%*d".parse::<FileTemplate>(),
            Err(TemplateError::UnknownConversion { .. })
        ));
        assert!(matches!(
            "%s%s_%n".parse::<FileTemplate>(),
            Err(TemplateError::UnknownConversion { .. })
        ));
        assert_eq!("".parse::<FileTemplate>(), Err(TemplateError::Empty));
    }

    #[test]
    fn auto_increment_uses_the_number_before_incrementing() {
        let mut n = FileNaming {
            path: "/tmp/".into(),
            name: "a".into(),
            number: 0,
            auto_increment: true,
            template: FileTemplate::default(),
        };
        assert_eq!(n.next_name(), PathBuf::from("/tmp/a_0000.h5"));
        assert_eq!(n.next_name(), PathBuf::from("/tmp/a_0001.h5"));
        n.auto_increment = false;
        assert_eq!(n.next_name(), PathBuf::from("/tmp/a_0002.h5"));
        assert_eq!(n.number, 2);
    }

    #[test]
    fn create_directory_depth_follows_areadetector() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().to_str().unwrap().to_owned();
        let n_root = root.split('/').filter(|p| !p.is_empty()).count() as i32;
        let path = format!("{root}/a/b/c");
        let anywhere = crate::roots::DataRoots::anywhere();
        // Depth 0 creates nothing.
        create_directories(&path, 0, &anywhere).unwrap();
        assert!(!Path::new(&format!("{root}/a")).exists());
        // -1 creates only the leaf: its parent is missing, so it fails.
        assert!(create_directories(&path, -1, &anywhere).is_err());
        // -3 creates a, b and c.
        create_directories(&path, -3, &anywhere).unwrap();
        assert!(Path::new(&path).is_dir());
        // A positive depth counts from the root: everything from component D on is created,
        // and components before D are assumed to exist.
        let deeper = format!("{root}/x/y");
        // Depth n_root + 2 creates only y, under a missing x: that fails.
        assert!(create_directories(&deeper, n_root + 2, &anywhere).is_err());
        assert!(!Path::new(&deeper).exists());
        create_directories(&deeper, n_root + 1, &anywhere).unwrap(); // creates x and y
        assert!(Path::new(&deeper).is_dir());
        // 1 creates everything below the root; existing parts are fine.
        create_directories(&format!("{root}/x/y/z"), 1, &anywhere).unwrap();
        assert!(path_exists(&format!("{root}/x/y/z/")));
        // A path through a file fails.
        std::fs::write(format!("{root}/file"), b"").unwrap();
        assert!(create_directories(&format!("{root}/file/sub"), 1, &anywhere).is_err());
    }

    #[test]
    fn create_directory_stops_at_the_data_roots() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(base.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(base.path().join("outside"), root.join("link")).unwrap();
        let roots = crate::roots::DataRoots::new(std::slice::from_ref(&root)).unwrap();
        let inside = root.join("a/b");
        create_directories(inside.to_str().unwrap(), 1, &roots).unwrap();
        assert!(inside.is_dir());
        for escape in ["../outside/new", "a/../../escaped", "link/new"] {
            let p = root.join(escape);
            let e = create_directories(p.to_str().unwrap(), 1, &roots).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{escape}");
            assert!(e.to_string().contains("outside the data roots"), "{e}");
        }
        assert!(!base.path().join("outside/new").exists());
        assert!(!base.path().join("escaped").exists());
    }

    #[test]
    fn strftime_codes_expand_and_plain_paths_stay() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let p = expand_path_time("/d/%Y/%m/%d/", t).unwrap();
        assert!(p.starts_with("/d/2023/11/1"), "{p}");
        assert_eq!(expand_path_time("/d/x%%y", t).unwrap(), "/d/x%y");
        assert_eq!(expand_path_time("/d/plain", t).unwrap(), "/d/plain");
    }

    #[test]
    fn path_is_normalised_with_one_trailing_separator() {
        assert_eq!(normalise_path("/data"), "/data/");
        assert_eq!(normalise_path("/data/"), "/data/");
        assert_eq!(normalise_path(""), "");
    }

    /// C's snprintf, the oracle for what NDPluginFile would build.
    fn c_format(template: &str, path: &str, name: &str, number: i32) -> String {
        use std::ffi::CString;
        let (t, p, n) = (
            CString::new(template).unwrap(),
            CString::new(path).unwrap(),
            CString::new(name).unwrap(),
        );
        let mut buf = vec![0u8; 2 * 256];
        // SAFETY: the template was validated by FileTemplate to hold at most two %s
        // conversions followed by one int conversion, matching the arguments passed; buf
        // holds buf.len() bytes and snprintf writes at most that many including the NUL.
        let n = unsafe {
            libc::snprintf(
                buf.as_mut_ptr().cast(),
                buf.len(),
                t.as_ptr(),
                p.as_ptr(),
                n.as_ptr(),
                number as libc::c_int,
            )
        };
        assert!(n >= 0);
        let end = buf.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(buf[..end].to_vec()).unwrap()
    }

    fn spec() -> impl Strategy<Value = String> {
        (
            proptest::sample::subsequence(vec!["-", "+", " ", "#", "0"], 0..3),
            proptest::option::of(0usize..12),
            proptest::option::of(0usize..12),
        )
            .prop_map(|(flags, w, p)| {
                let mut s = String::from("%");
                s.push_str(&flags.concat());
                if let Some(w) = w {
                    s.push_str(&w.to_string());
                }
                if let Some(p) = p {
                    s.push_str(&format!(".{p}"));
                }
                s
            })
    }

    proptest! {
        #[test]
        fn formats_like_c_snprintf(
            lit in proptest::collection::vec("[a-zA-Z0-9_./%-]{0,4}", 4),
            s1 in spec(), s2 in spec(), s3 in spec(),
            conv in proptest::sample::select(vec!["d", "i", "u", "x", "X", "o"]),
            use_number in any::<bool>(),
            path in "[a-z/]{0,12}", name in "[a-zA-Z0-9_]{0,12}", number in any::<i32>(),
        ) {
            // Literal % must be escaped in a template.
            let lit: Vec<String> = lit.iter().map(|l| l.replace('%', "%%")).collect();
            // Flags that C leaves undefined for %s ('0', '#', '+', ' ') are dropped there.
            let s_only = |s: &str| s.chars().filter(|c| !matches!(c, '0' | '#' | '+' | ' ')).collect::<String>();
            let mut template = format!("{}{}s{}{}s{}", lit[0], s_only(&s1), lit[1], s_only(&s2), lit[2]);
            if use_number {
                template.push_str(&format!("{s3}{conv}{}", lit[3]));
            }
            let ours = template.parse::<FileTemplate>().unwrap().format(&path, &name, number);
            prop_assert_eq!(ours, c_format(&template, &path, &name, number), "template {}", template);
        }

        #[test]
        fn parser_never_panics(template in "\\PC{0,24}") {
            let _ = template.parse::<FileTemplate>();
        }
    }
}
