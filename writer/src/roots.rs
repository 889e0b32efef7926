//! Data roots: the directories an operator lets a daemon write under.
//!
//! A capture's file names come from several settings at once (FilePath, FileName,
//! FileTemplate, TempSuffix, a reference pattern), and any of them can step outside the
//! directory the operator allowed, with `..`, an absolute template or a symbolic link. So the
//! writer checks the final path of every file and directory it creates, with `..` and links
//! resolved, at the moment it creates it: a link swapped in after the settings were accepted
//! cannot redirect the file. [`DataRoots::anywhere`] (the default, and `detflow acquire`'s)
//! checks nothing.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// The directories files may be created under; none means anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataRoots {
    /// Canonical (absolute, links resolved) directories.
    roots: Vec<PathBuf>,
}

/// A path that resolves outside every data root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} resolves to {resolved:?}, outside the data roots ({roots})")]
pub struct OutsideRoots {
    /// The path as it was built.
    pub path: PathBuf,
    /// Where it leads once `..` and symbolic links are resolved (as far as it exists).
    pub resolved: PathBuf,
    /// The data roots, comma separated.
    pub roots: String,
}

impl DataRoots {
    /// No confinement: every path is accepted.
    pub fn anywhere() -> DataRoots {
        DataRoots::default()
    }

    /// Confine to `roots`, each an existing directory (resolved here, once).
    pub fn new(roots: &[PathBuf]) -> std::io::Result<DataRoots> {
        let roots = roots
            .iter()
            .map(|r| {
                let real = r.canonicalize()?;
                if real.is_dir() {
                    Ok(real)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", r.display()),
                    ))
                }
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(DataRoots { roots })
    }

    /// True when no root is set (every path is accepted).
    pub fn is_anywhere(&self) -> bool {
        self.roots.is_empty()
    }

    /// The canonical roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Accept `path` if, resolved now, it lies inside a root (or there are no roots).
    pub fn check(&self, path: &Path) -> Result<(), OutsideRoots> {
        if self.is_anywhere() {
            return Ok(());
        }
        let resolved = resolve(path);
        match &resolved {
            Some(real) if self.roots.iter().any(|r| real.starts_with(r)) => Ok(()),
            _ => Err(OutsideRoots {
                path: path.to_path_buf(),
                resolved: resolved.unwrap_or_else(|| path.to_path_buf()),
                roots: self.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for DataRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        f.write_str(&names.join(", "))
    }
}

/// Where `path` leads now: its existing part with `..` and symbolic links resolved as the
/// kernel would, then the components that do not exist yet. `None` for a link that leads
/// nowhere (it could be made to point anywhere before the file is created) or a path that
/// cannot be made absolute.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    let path = std::path::absolute(path).ok()?;
    let mut real = PathBuf::from("/");
    // While true, `real` exists and is canonical, so `..` is its parent.
    let mut exists = true;
    let mut pending: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir if exists => {
                real.pop();
            }
            Component::ParentDir => {
                // Popping a component that does not exist: no link to follow there.
                pending.pop();
                real.pop();
                if pending.is_empty() {
                    exists = true;
                }
            }
            Component::Normal(name) => {
                real.push(name);
                if exists {
                    match real.symlink_metadata() {
                        Ok(_) => real = real.canonicalize().ok()?,
                        Err(_) => {
                            exists = false;
                            pending.push(name.to_owned());
                        }
                    }
                } else {
                    pending.push(name.to_owned());
                }
            }
        }
    }
    Some(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> DataRoots {
        DataRoots::new(&[dir.to_path_buf()]).unwrap()
    }

    #[test]
    fn anywhere_accepts_everything() {
        assert!(DataRoots::anywhere().check(Path::new("/etc/x")).is_ok());
    }

    #[test]
    fn dot_dot_and_absolute_paths_leave_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let r = roots(&root);
        assert!(r.check(&root.join("a/b/f.h5")).is_ok());
        assert!(r.check(&root.join("a/../f.h5")).is_ok());
        let e = r.check(&root.join("../outside/f.h5")).unwrap_err();
        assert_eq!(
            e.resolved,
            tmp.path().canonicalize().unwrap().join("outside/f.h5")
        );
        assert!(r.check(&root.join("new/../../f.h5")).is_err());
        assert!(r.check(Path::new("/elsewhere/f.h5")).is_err());
        // A sibling whose name starts with the root's is not inside it.
        assert!(r.check(&tmp.path().join("rootx/f.h5")).is_err());
    }

    #[test]
    fn links_are_followed_where_they_lead() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("inner")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("f.h5"), root.join("file-link.h5")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), root.join("dangling")).unwrap();
        let r = roots(&root);
        assert!(r.check(&root.join("link/f.h5")).is_err());
        assert!(r.check(&root.join("link/new/f.h5")).is_err());
        assert!(r.check(&root.join("inner/f.h5")).is_ok());
        // The file name itself a link out of the root.
        assert!(r.check(&root.join("file-link.h5")).is_err());
        // A link to nowhere could be pointed anywhere later.
        assert!(r.check(&root.join("dangling")).is_err());
        assert!(r.check(&root.join("dangling/f.h5")).is_err());
    }
}
