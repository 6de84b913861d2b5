//! Reading documents out of files: one text or markdown file, a directory of them (recursive,
//! with include and exclude globs), or a JSONL corpus, optionally gzipped, with a field mapping
//! (BEIR's `corpus.jsonl` reads with the default one).
//!
//! Both ingestion paths read through here: server-side jobs (`jobs`) and the CLI's client-side
//! `quarry ingest`. So a file means the same document whichever side reads it.
//!
//! Why it is built this way:
//! - **Lazily, in a fixed order.** A [`Reader`] yields one [`Item`] at a time (memory stays
//!   bounded whatever the source's size) in an order that does not depend on the file
//!   system's listing order, so a [`Cursor`] (the last file done, or the lines consumed) is
//!   enough to resume an interrupted job without redoing finished work.
//! - **Bad input fails one document, not the source.** Invalid UTF-8, binary files, empty
//!   files, a JSONL line that is not JSON or has no id, a line or file over the size limit:
//!   each becomes an item whose `doc` is the reason, with its location (path, or path and
//!   line). Only a source that cannot be read at all (missing, a corrupt gzip stream) is an
//!   error of the whole read.
//! - **Bounded reads.** A file over the document size limit is refused from its length, a
//!   JSONL line over [`ReadLimits::max_line_bytes`] is skipped without being held in memory,
//!   and a directory listing stops at [`ReadLimits::max_files`].
//! - **Access is the caller's, at every open.** Every file and directory is checked, by
//!   canonical path, with the caller's [`Access`] (import roots for jobs), so a symlink cannot
//!   lead a server-side read out of the roots; and every file is opened through [`open_file`],
//!   which checks what was actually opened (a regular file, under the roots) and cannot block,
//!   so a source swapped after it was checked is refused too.

mod files;
mod jsonl;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::DocumentInput;
use crate::error::{quote, Error, Result};

pub use jsonl::json_value;

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// Globs a directory's files must match (relative to the directory; `*` also crosses
    /// `/`). Empty: [`DEFAULT_INCLUDE`].
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of files to leave out, applied after `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub fields: FieldMapping,
}

/// The files a directory source takes when no include glob is given.
pub const DEFAULT_INCLUDE: &[&str] = &["*.txt", "*.md", "*.markdown"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A directory is read as files; `*.jsonl`, `*.jsonl.gz`, `*.ndjson` (and `.gz`) as
    /// JSONL; any other file as one text document.
    #[default]
    Auto,
    Files,
    Jsonl,
}

/// Which JSON fields of a JSONL record hold the document's parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMapping {
    pub id: String,
    pub title: String,
    pub text: String,
    /// An object whose entries become metadata (JSON types kept); empty: no metadata.
    pub metadata: String,
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping {
            id: "_id".into(),
            title: "title".into(),
            text: "text".into(),
            metadata: "metadata".into(),
        }
    }
}

impl FieldMapping {
    /// The default mapping with each non-empty override applied.
    pub fn with(id: &str, title: &str, text: &str, metadata: &str) -> FieldMapping {
        let d = FieldMapping::default();
        let pick = |v: &str, d: String| if v.is_empty() { d } else { v.to_string() };
        FieldMapping {
            id: pick(id, d.id),
            title: pick(title, d.title),
            text: pick(text, d.text),
            metadata: pick(metadata, d.metadata),
        }
    }
}

/// Where a read stands: the files are read in sorted order, so the last one finished says
/// where to go on; a JSONL source counts the lines it consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_file: Option<String>,
    #[serde(default)]
    pub lines: u64,
    /// A collection source (a re-index): where the next page of its documents starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_document: Option<String>,
}

/// One document read, or the reason it could not be.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where it came from: a relative path, or `file:line`.
    pub location: String,
    pub doc: std::result::Result<DocumentInput, String>,
    /// The cursor once this item is done.
    pub cursor: Cursor,
}

#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// A file (or a JSONL record's text, title and metadata) over this is refused.
    pub max_document_bytes: usize,
    /// A JSONL line over this is skipped, unread.
    pub max_line_bytes: usize,
    /// A directory listing stops with an error past this many files.
    pub max_files: usize,
}

impl ReadLimits {
    /// Limits that follow the engine's document size: a JSONL line may hold a document of
    /// `max_document_bytes` escaped (newlines and quotes double), plus its other fields.
    pub fn for_documents(max_document_bytes: usize) -> ReadLimits {
        ReadLimits {
            max_document_bytes,
            max_line_bytes: max_document_bytes.saturating_mul(2) + 64 * 1024,
            max_files: 1_000_000,
        }
    }
}

/// Decides whether a file or directory (by canonical path) may be read.
pub type Access = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// Checks what can be checked before reading: the globs compile.
pub fn check(spec: &SourceSpec) -> Result<()> {
    files::globs(&spec.include, "include")?;
    files::globs(&spec.exclude, "exclude")?;
    Ok(())
}

/// Opens a source file for reading, checked at the moment of opening, whatever was checked
/// before: a source can change between a job's submission, its run and its resumption (a
/// file replaced by a symlink out of the import roots, a FIFO or a device put in its place).
///
/// - The open itself cannot block: `O_NONBLOCK` (a FIFO with no writer, a device) and
///   `O_NOCTTY`.
/// - What was opened must be a regular file (`fstat` on the open descriptor): reads of a
///   regular file end, so a cancel or a shutdown is noticed between reads.
/// - [`Access`] is asked about the canonical path of the *opened* descriptor
///   (`/proc/self/fd`), so no rename or symlink swap between the check and the open can
///   lead outside the roots.
pub fn open_file(path: &Path, access: &Access) -> Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = || quote(&path.to_string_lossy());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("{} does not exist", shown())),
            _ => Error::invalid(format!("cannot read {}: {e}", shown())),
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file (a FIFO, socket or device cannot be a source)",
            shown()
        )));
    }
    let opened = opened_path(&file).or_else(|_| path.canonicalize())?;
    if !access(&opened) {
        return Err(Error::PermissionDenied(format!(
            "{} leads outside the import roots",
            shown()
        )));
    }
    Ok((file, meta))
}

/// The canonical path of an open file, as the kernel knows it.
fn opened_path(file: &std::fs::File) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Asked between reads of a long line: true when the read should stop (its job was
/// cancelled, or the server is stopping).
pub type Interrupt = Arc<dyn Fn() -> bool + Send + Sync>;

/// Access to everything (the CLI reading the caller's own files).
pub fn any_path() -> Access {
    Arc::new(|_| true)
}

/// A source being read.
pub struct Reader {
    inner: Inner,
}

enum Inner {
    Files(files::Files),
    Jsonl(jsonl::Jsonl),
}

impl Reader {
    /// Opens `spec` and skips what `cursor` says is done.
    pub fn open(
        spec: &SourceSpec,
        cursor: &Cursor,
        limits: ReadLimits,
        access: Access,
    ) -> Result<Reader> {
        let path = &spec.path;
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("{} does not exist", quote(&path.to_string_lossy())))
            } else {
                Error::invalid(format!(
                    "cannot read {}: {e}",
                    quote(&path.to_string_lossy())
                ))
            }
        })?;
        let jsonl = match spec.format {
            Format::Jsonl => true,
            Format::Files => false,
            Format::Auto => !meta.is_dir() && is_jsonl(path),
        };
        if jsonl && meta.is_dir() {
            return Err(Error::invalid(format!(
                "{} is a directory, not a JSONL file",
                quote(&path.to_string_lossy())
            )));
        }
        let inner = if jsonl {
            Inner::Jsonl(jsonl::Jsonl::open(
                path,
                spec.fields.clone(),
                cursor,
                limits,
                &access,
            )?)
        } else {
            Inner::Files(files::Files::open(spec, cursor, limits, access)?)
        };
        Ok(Reader { inner })
    }

    /// Lets a long read stop early: `interrupt` is asked between reads (every MiB of a line
    /// being scanned), and a read it stops ends with [`Error::Cancelled`].
    pub fn set_interrupt(&mut self, interrupt: Interrupt) {
        if let Inner::Jsonl(j) = &mut self.inner {
            j.set_interrupt(interrupt);
        }
    }

    /// Source bytes consumed and in all (compressed bytes for a gzipped file): for progress.
    pub fn progress(&self) -> (u64, u64) {
        match &self.inner {
            Inner::Files(f) => f.progress(),
            Inner::Jsonl(j) => j.progress(),
        }
    }

    /// The document ids of a file or directory source, known before reading, with the path
    /// each comes from (`None` for JSONL, whose ids are inside the records).
    pub fn file_ids(&self) -> Option<Vec<(String, PathBuf)>> {
        match &self.inner {
            Inner::Files(f) => Some(f.ids()),
            Inner::Jsonl(_) => None,
        }
    }

    /// How many items the source holds, when known before reading (a directory's files).
    pub fn total_items(&self) -> Option<u64> {
        match &self.inner {
            Inner::Files(f) => Some(f.total()),
            Inner::Jsonl(_) => None,
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Result<Item>> {
        match &mut self.inner {
            Inner::Files(f) => f.next().map(Ok),
            Inner::Jsonl(j) => j.next(),
        }
    }
}

pub fn is_jsonl(path: &Path) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.ends_with(".jsonl") || name.ends_with(".ndjson")
}

#[cfg(test)]
mod tests;
