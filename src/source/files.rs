//! A file or a directory of files, one document per file, in sorted order of relative path.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{Access, Cursor, Item, ReadLimits, SourceSpec, DEFAULT_INCLUDE};
use crate::engine::DocumentInput;
use crate::error::{quote, Error, Result};
use crate::meta::Value;

/// One listed file: its id (relative path, `/`-separated), where it is, and its size; or why
/// it is refused (a symlink out of the allowed paths).
struct Entry {
    rel: String,
    path: PathBuf,
    size: u64,
    refused: Option<String>,
}

pub(super) struct Files {
    entries: std::vec::IntoIter<Entry>,
    total: u64,
    bytes_done: u64,
    bytes_total: u64,
    max_document_bytes: usize,
    access: Access,
}

pub(super) fn globs(patterns: &[String], what: &str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(
            Glob::new(p).map_err(|e| {
                Error::invalid(format!("{what} glob {} is not valid: {e}", quote(p)))
            })?,
        );
    }
    b.build()
        .map_err(|e| Error::invalid(format!("{what} globs: {e}")))
}

impl Files {
    pub(super) fn open(
        spec: &SourceSpec,
        cursor: &Cursor,
        limits: ReadLimits,
        access: Access,
    ) -> Result<Files> {
        let include = if spec.include.is_empty() {
            DEFAULT_INCLUDE.iter().map(|s| s.to_string()).collect()
        } else {
            spec.include.clone()
        };
        let include = globs(&include, "include")?;
        let exclude = globs(&spec.exclude, "exclude")?;
        let root = &spec.path;
        let canonical = root.canonicalize()?;
        if !access(&canonical) {
            return Err(Error::PermissionDenied(format!(
                "{} is outside the import roots",
                quote(&root.to_string_lossy())
            )));
        }
        let mut entries = Vec::new();
        if canonical.is_dir() {
            let mut walk = Walk {
                include,
                exclude,
                access: access.clone(),
                max_files: limits.max_files,
                seen_dirs: HashSet::new(),
                seen_files: HashSet::new(),
                out: &mut entries,
            };
            walk.dir(root, "")?;
        } else {
            // A single file named by the caller is read whatever its extension, and its id is
            // the path as given (normalized), not its bare name: `README.md` and
            // `eval/README.md` are two documents.
            entries.push(Entry {
                rel: path_id(root),
                path: root.clone(),
                size: std::fs::metadata(&canonical)?.len(),
                refused: None,
            });
        }
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        let total = entries.len() as u64;
        let bytes_total = entries.iter().map(|e| e.size).sum();
        let mut bytes_done = 0;
        if let Some(after) = &cursor.after_file {
            entries.retain(|e| {
                let done = e.rel.as_str() <= after.as_str();
                if done {
                    bytes_done += e.size;
                }
                !done
            });
        }
        Ok(Files {
            entries: entries.into_iter(),
            total,
            bytes_done,
            bytes_total,
            max_document_bytes: limits.max_document_bytes,
            access,
        })
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.bytes_done, self.bytes_total)
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// The ids of the files still to read, with where each is.
    pub(super) fn ids(&self) -> Vec<(String, PathBuf)> {
        self.entries
            .as_slice()
            .iter()
            .map(|e| (e.rel.clone(), e.path.clone()))
            .collect()
    }

    pub(super) fn next(&mut self) -> Option<Item> {
        let e = self.entries.next()?;
        self.bytes_done += e.size;
        let doc = match e.refused {
            Some(reason) => Err(reason),
            None => read_text(&e.path, self.max_document_bytes, &self.access)
                .map(|text| text_document(&e.rel, &e.path, text)),
        };
        Some(Item {
            location: e.rel.clone(),
            doc,
            cursor: Cursor {
                after_file: Some(e.rel),
                ..Cursor::default()
            },
        })
    }
}

struct Walk<'a> {
    include: GlobSet,
    exclude: GlobSet,
    access: Access,
    max_files: usize,
    /// Directories and files already listed, by canonical path: symlinks that loop back, or
    /// that reach the same file twice, add nothing.
    seen_dirs: HashSet<PathBuf>,
    seen_files: HashSet<PathBuf>,
    out: &'a mut Vec<Entry>,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let canonical = dir.canonicalize()?;
        if !self.seen_dirs.insert(canonical) {
            return Ok(());
        }
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let name_str = name.to_string_lossy().to_string();
            // Hidden entries (.git, editor files) are never documents.
            if name_str.starts_with('.') {
                continue;
            }
            let path = dir.join(&name);
            let child = if rel.is_empty() {
                name_str
            } else {
                format!("{rel}/{name_str}")
            };
            // A dangling symlink or an entry gone since the listing: skipped.
            let Ok(canonical) = path.canonicalize() else {
                continue;
            };
            let is_dir = canonical.is_dir();
            if !is_dir && (!self.include.is_match(&child) || self.exclude.is_match(&child)) {
                continue;
            }
            if is_dir && self.exclude.is_match(&child) {
                continue;
            }
            if !(self.access)(&canonical) {
                self.push(Entry {
                    rel: child,
                    path,
                    size: 0,
                    refused: Some("a symlink that leads outside the import roots".into()),
                })?;
                continue;
            }
            if is_dir {
                self.dir(&path, &child)?;
            } else if canonical.is_file() && self.seen_files.insert(canonical.clone()) {
                let size = std::fs::metadata(&canonical).map(|m| m.len()).unwrap_or(0);
                self.push(Entry {
                    rel: child,
                    path,
                    size,
                    refused: None,
                })?;
            }
        }
        Ok(())
    }

    fn push(&mut self, e: Entry) -> Result<()> {
        if self.out.len() >= self.max_files {
            return Err(Error::invalid(format!(
                "the directory holds more than {} matching files; split the source or narrow it with include and exclude globs",
                self.max_files
            )));
        }
        self.out.push(e);
        Ok(())
    }
}

/// The id of a file named directly: its path as given, `/`-separated, with `.` dropped and
/// `dir/..` folded (lexically: no file system access), so `./a/../b.md` is `b.md`. A path that
/// climbs above its start keeps its leading `..`; an absolute path stays absolute.
pub(super) fn path_id(path: &Path) -> String {
    use std::path::Component;
    let mut parts: Vec<String> = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push("..".into()),
            },
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Reads a file as one document's text: refused when empty, over the size limit, binary (a
/// NUL byte) or not UTF-8, each with a reason a person can act on.
fn read_text(path: &Path, max: usize, access: &Access) -> std::result::Result<String, String> {
    let over = |n: u64| format!("the file is {n} bytes, over the limit max_document_bytes = {max}");
    // Opened (and checked) now, not when the directory was listed: it may have changed since.
    let (file, meta) = super::open_file(path, access).map_err(|e| e.to_string())?;
    if meta.len() > max as u64 {
        return Err(over(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() > max {
        return Err(over(bytes.len() as u64));
    }
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!("a binary file (a NUL byte at offset {at})"));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (the first bad byte is at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn text_document(rel: &str, path: &Path, text: String) -> DocumentInput {
    let markdown = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("md" | "markdown")
    );
    let title = if markdown {
        text.lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .trim()
            .to_string()
    } else {
        String::new()
    };
    DocumentInput {
        id: rel.to_string(),
        text,
        title,
        metadata: [(
            "source".to_string(),
            Value::Str(path.to_string_lossy().to_string()),
        )]
        .into(),
        markdown,
        source: None,
        chunks: Vec::new(),
    }
}
