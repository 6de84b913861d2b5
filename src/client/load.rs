//! The caller's files as wire documents, through the same reader server-side jobs use
//! ([`crate::source`]), so a file means the same document whichever side reads it.
//!
//! - [`read_paths`]: streams documents from files, directories and JSONL corpora on a
//!   blocking thread into a bounded channel (memory stays bounded; the reader waits while the
//!   server is busy), with per-document failures alongside.
//! - [`load_jsonl`]: a whole BEIR corpus in memory (eval, benchmarks), strict: any bad line is
//!   an error.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use tokio::sync::mpsc;

use crate::grpc::pb;
use crate::source::{any_path, Cursor, ReadLimits, Reader, SourceSpec};

/// Documents read ahead of the server at most.
const READ_AHEAD: usize = 256;

/// One thing read from the caller's files.
pub enum Read {
    Document(pb::Document),
    /// A document that could not be read: location, reason.
    Failed(String, String),
    /// Source bytes read and in all, for progress.
    Progress(u64, u64),
}

/// Which files of the given directories to read (`--include`, `--exclude`; also what
/// `quarry jobs submit` sends the server).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selection {
    /// For directories: globs their files must match (repeatable; `*` crosses `/`; default
    /// *.txt, *.md, *.markdown).
    #[arg(long)]
    pub include: Vec<String>,
    /// For directories: globs of files to leave out (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
}

/// The reader's own limits on the client: generous (the server enforces its own).
fn limits() -> ReadLimits {
    ReadLimits::for_documents(64 * 1024 * 1024)
}

/// Opens every path (so a missing one fails before anything is sent), then reads them on a
/// blocking thread into a bounded channel. An error ends the channel with `Err`.
pub fn read_paths(
    paths: &[PathBuf],
    selection: &Selection,
) -> anyhow::Result<mpsc::Receiver<anyhow::Result<Read>>> {
    let mut readers = Vec::new();
    for path in paths {
        let spec = SourceSpec {
            path: path.clone(),
            include: selection.include.clone(),
            exclude: selection.exclude.clone(),
            ..Default::default()
        };
        let reader = Reader::open(&spec, &Cursor::default(), limits(), any_path())
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        readers.push(reader);
    }
    check_distinct_ids(&readers)?;
    let total: u64 = readers.iter().map(|r| r.progress().1).sum();
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    std::thread::spawn(move || {
        let mut before = 0;
        for mut reader in readers {
            while let Some(item) = reader.next() {
                let read = match item {
                    Err(e) => Err(anyhow!("{e}")),
                    Ok(item) => Ok(match item.doc {
                        Ok(doc) => Read::Document(crate::grpc::document_for_upsert(doc)),
                        Err(reason) => Read::Failed(item.location, reason),
                    }),
                };
                let failed = read.is_err();
                if tx.blocking_send(read).is_err() || failed {
                    return;
                }
                let progress = Read::Progress(before + reader.progress().0, total);
                if tx.blocking_send(Ok(progress)).is_err() {
                    return;
                }
            }
            before += reader.progress().1;
        }
    });
    Ok(rx)
}

/// Two files of one call that would be one document (the same id) are an error before
/// anything is sent, naming both: the second would silently replace the first.
fn check_distinct_ids(readers: &[Reader]) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    for ids in readers.iter().filter_map(Reader::file_ids) {
        for (id, path) in ids {
            if let Some(first) = seen.get(&id) {
                bail!(
                    "{} and {} would both be document {}: name them so their ids differ (a \
                     file's id is its path as given; a directory's files are relative to it)",
                    first.display(),
                    path.display(),
                    crate::error::quote(&id)
                );
            }
            seen.insert(id, path);
        }
    }
    Ok(())
}

/// Reads a BEIR corpus file (optionally gzipped) whole; any line that is not a valid document
/// is an error naming it.
pub fn load_jsonl(path: &Path) -> anyhow::Result<Vec<pb::Document>> {
    let spec = SourceSpec {
        path: path.to_path_buf(),
        format: crate::source::Format::Jsonl,
        ..Default::default()
    };
    let reader = Reader::open(&spec, &Cursor::default(), limits(), any_path())
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for item in reader {
        let item = item.map_err(|e| anyhow!("{e}"))?;
        match item.doc {
            Ok(doc) => out.push(crate::grpc::document_for_upsert(doc)),
            Err(reason) => bail!("{}: {reason}", item.location),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(paths: &[PathBuf]) -> (Vec<pb::Document>, Vec<(String, String)>) {
        let mut rx = read_paths(paths, &Selection::default()).unwrap();
        let (mut docs, mut failed) = (Vec::new(), Vec::new());
        while let Some(r) = rx.recv().await {
            match r.unwrap() {
                Read::Document(d) => docs.push(d),
                Read::Failed(l, r) => failed.push((l, r)),
                Read::Progress(done, total) => assert!(done <= total),
            }
        }
        (docs, failed)
    }

    #[tokio::test]
    async fn files_of_one_call_keep_their_paths_and_must_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("eval")).unwrap();
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("README.md"), "# Top\n\ntop").unwrap();
        std::fs::write(dir.path().join("eval/README.md"), "# Eval\n\neval").unwrap();
        std::fs::write(dir.path().join("docs/README.md"), "# Docs\n\ndocs").unwrap();
        let at = |p: &str| dir.path().join(p);
        let (docs, failed) = all(&[at("README.md"), at("eval/README.md")]).await;
        assert!(failed.is_empty());
        assert_eq!(docs.len(), 2);
        assert_ne!(docs[0].id, docs[1].id);
        assert!(docs[1].id.ends_with("eval/README.md"), "{}", docs[1].id);
        // A directory's files are relative to it: docs/README.md is "README.md", like the
        // file named as "README.md" relative to the current directory would be. One call
        // naming both is refused before anything is read, naming both.
        let e = read_paths(
            &[at("docs"), at("docs/../docs/README.md")],
            &Selection::default(),
        );
        assert!(
            e.is_ok(),
            "different ids: docs' README.md is README.md, the file its path"
        );
        let Err(e) = read_paths(&[at("README.md"), at("./README.md")], &Selection::default())
        else {
            panic!("the same file twice is one id");
        };
        let msg = e.to_string();
        assert!(msg.contains("README.md") && msg.contains("both"), "{msg}");
    }

    #[tokio::test]
    async fn reads_directories_and_jsonl_as_wire_documents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "plain").unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "# Title B\n\nbody").unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), b"\0binary").unwrap();
        let jsonl = dir.path().join("corpus.jsonl");
        std::fs::write(
            &jsonl,
            "{\"_id\": \"d1\", \"text\": \"x\", \"metadata\": {\"n\": 3}}\n\n{\"_id\": 7, \"text\": \"y\"}\n",
        )
        .unwrap();
        let (docs, failed) = all(&[dir.path().to_path_buf(), jsonl.clone()]).await;
        let ids: Vec<_> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a.txt", "sub/b.md", "d1", "7"]);
        assert_eq!(docs[1].title, "Title B");
        assert_eq!(docs[1].format, pb::DocumentFormat::Markdown as i32);
        use pb::metadata_value::Kind;
        assert_eq!(
            docs[2].typed_metadata.get("n").and_then(|v| v.kind.clone()),
            Some(Kind::IntValue(3))
        );
        assert_eq!(failed.len(), 1);
        assert!(failed[0].1.contains("binary"));
        assert_eq!(load_jsonl(&jsonl).unwrap().len(), 2);
        assert!(read_paths(&[dir.path().join("missing")], &Selection::default()).is_err());
    }
}
