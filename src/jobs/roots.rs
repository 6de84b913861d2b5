//! Import roots: the directories server-side sources may be read from.
//!
//! A job reads files with the server's permissions, so a caller must not be able to name
//! `/etc/shadow` or the server's own data directory. The operator lists the directories jobs
//! may read (`import_roots`, `--import-root`); with none, server-side sources are off.
//!
//! A submitted path is checked twice: lexically first (absolute, no `..`, under a root as
//! configured or canonical), so a path outside the roots is refused without touching the file
//! system (its existence is not revealed); then canonically (symlinks resolved), so a symlink
//! under a root that leads out of it is refused. While reading a directory, every entry is
//! checked the same way ([`ImportRoots::allows`]).

use std::path::{Component, Path, PathBuf};

use crate::error::{quote, Error, Result};

#[derive(Debug, Clone, Default)]
pub struct ImportRoots {
    /// (as configured, canonical) pairs.
    roots: Vec<(PathBuf, PathBuf)>,
}

impl ImportRoots {
    /// Checks every root exists and is a directory.
    pub fn new(paths: &[PathBuf]) -> Result<ImportRoots> {
        let mut roots = Vec::new();
        for p in paths {
            let canonical = p.canonicalize().map_err(|e| {
                Error::invalid(format!(
                    "import root {} cannot be resolved: {e}",
                    quote(&p.to_string_lossy())
                ))
            })?;
            if !canonical.is_dir() {
                return Err(Error::invalid(format!(
                    "import root {} is not a directory",
                    quote(&p.to_string_lossy())
                )));
            }
            let configured = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            roots.push((configured, canonical));
        }
        Ok(ImportRoots { roots })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The canonical roots.
    pub fn canonical(&self) -> Vec<PathBuf> {
        self.roots.iter().map(|(_, c)| c.clone()).collect()
    }

    /// True when `canonical` (a canonical path) lies under a root.
    pub fn allows(&self, canonical: &Path) -> bool {
        self.roots.iter().any(|(_, c)| canonical.starts_with(c))
    }

    /// The canonical form of a submitted source path, or why it is refused.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        if self.roots.is_empty() {
            return Err(Error::FailedPrecondition(
                "server-side sources are disabled: the server has no import roots (set import_roots in its config, or start it with --import-root DIR)".into(),
            ));
        }
        let shown = quote(&path.to_string_lossy());
        if !path.is_absolute() {
            return Err(Error::invalid(format!(
                "source path {shown} must be absolute (it is read on the server)"
            )));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Error::PermissionDenied(format!(
                "source path {shown} contains `..`; name it without"
            )));
        }
        if !self.roots.iter().any(|(configured, canonical)| {
            path.starts_with(configured) || path.starts_with(canonical)
        }) {
            return Err(Error::PermissionDenied(format!(
                "source path {shown} is outside the server's import roots"
            )));
        }
        let canonical = path.canonicalize().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("source path {shown} does not exist"))
            } else {
                Error::invalid(format!("source path {shown} cannot be resolved: {e}"))
            }
        })?;
        if !self.allows(&canonical) {
            return Err(Error::PermissionDenied(format!(
                "source path {shown} leads outside the server's import roots (through a symlink)"
            )));
        }
        Ok(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_roots_are_refused_with_the_right_error() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("docs")).unwrap();
        std::fs::write(outside.path().join("x.txt"), "x").unwrap();
        let none = ImportRoots::default();
        assert!(matches!(
            none.resolve(root.path()),
            Err(Error::FailedPrecondition(_))
        ));
        let roots = ImportRoots::new(&[root.path().to_path_buf()]).unwrap();
        assert!(roots.resolve(&root.path().join("docs")).is_ok());
        assert!(matches!(
            roots.resolve(Path::new("docs")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            roots.resolve(&root.path().join("docs/../docs")),
            Err(Error::PermissionDenied(_))
        ));
        // Outside: refused before the file system is asked (a missing path says the same).
        assert!(matches!(
            roots.resolve(&outside.path().join("x.txt")),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            roots.resolve(&outside.path().join("missing")),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            roots.resolve(&root.path().join("missing")),
            Err(Error::NotFound(_))
        ));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
            let e = roots
                .resolve(&root.path().join("escape/x.txt"))
                .unwrap_err();
            assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        }
        assert!(ImportRoots::new(&[root.path().join("missing")]).is_err());
    }
}
