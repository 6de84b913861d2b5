//! Snapshots: a collection backed up without re-embedding, and restored under any name.
//!
//! A snapshot is one tar archive: `manifest.json` first (format, Quarry version, and per
//! collection its settings, model name and fingerprint, operation sequence, counts), then per
//! collection `records.bin` (sled's documents, texts, chunks, vectors and key types as framed
//! key/value pairs, then the server records kept with the collection: its eval sets, adopted
//! and proposed search settings, and gate decisions, `engine/records.rs`) and the index
//! checkpoints (`lexical/`, `dense/`) at that same sequence.
//!
//! Why it is built this way:
//! - **Consistent at one sequence, online.** The collections are copied under their write
//!   locks, all taken together, so the archive is one instant across collections: writes to
//!   them wait for the copy (searches and collections outside the snapshot go on), the lexical writer
//!   is closed (its merges finished, so its files stop changing) and the HNSW graph is
//!   checkpointed, so records and both indexes describe the same operation sequence. Records
//!   go to a temporary file first, so the archive can start with the complete manifest.
//! - **Restores load, not rebuild.** The index files are placed as they were; their applied
//!   sequence is the snapshot's, and the restored collection's log is empty, so nothing is
//!   replayed or re-embedded. The store's id generator is raised above the snapshot's ids
//!   ([`crate::store::Store::raise_ids_above`]), so new chunks and sequences never collide
//!   with restored ones.
//! - **Vectors need their model.** Restoring checks the model's fingerprint (weights,
//!   tokenizer, pooling) against the manifest and refuses a mismatch: vectors of another model
//!   would silently answer queries wrongly.
//! - **Restores trust nothing.** An archive is hostile input: `restore.rs` checks every entry,
//!   record and checksum, validates the settings, and restores all or nothing.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::embedded::Embedded;
use super::{now_ms, Collection, Engine};
use crate::backend::CollectionStore;
use crate::error::{quote, Error, Result};
use crate::store::{doc_key, CollectionRecord, OwnedRecord};

/// The archive format this version writes. Format 2 adds a CRC-32 to every record and the
/// SHA-256 of every file to the manifest; format 3 adds the collection's server records
/// ([`SERVER_RECORDS`]). Older archives are still read, and their records are validated like
/// any others; a server that reads only older formats refuses format 3 by its number rather
/// than restoring a tuned collection without its settings.
pub const SNAPSHOT_FORMAT: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub quarry_version: String,
    pub created_unix_ms: u64,
    /// The instant every collection was copied at: each holds exactly the operations numbered
    /// below it (absent in archives of older versions, which copied one collection at a time).
    #[serde(default)]
    pub seq: u64,
    pub collections: Vec<SnapshotCollection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotCollection {
    pub record: CollectionRecord,
    pub model_fingerprint: String,
    /// The operation sequence records and indexes are at.
    pub seq: u64,
    /// The largest id (sequence or chunk key) the collection uses.
    pub max_id: u64,
    pub documents: u64,
    pub chunks: u64,
    /// SHA-256 (hex) of each of the collection's files, by its path under
    /// `collections/<i>/` (format 2).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// Trees of a collection in `records.bin`, by tag.
pub(super) const TREES: [(u8, &str); 5] = [
    (1, "docs"),
    (2, "texts"),
    (3, "chunks"),
    (4, "vectors"),
    (5, "schema"),
];

/// The tag of a server record in `records.bin` (format 3), after every tree's records: key
/// `group \0 item`, value UTF-8; the owner is the collection, whatever name it returns under.
pub(super) const SERVER_RECORDS: u8 = 6;

pub(super) fn tree(t: &crate::store::CollectionTrees, tag: u8) -> Option<&sled::Tree> {
    Some(match tag {
        1 => &t.docs,
        2 => &t.texts,
        3 => &t.chunks,
        4 => &t.vectors,
        5 => &t.schema,
        _ => return None,
    })
}

/// A scratch directory beside the snapshot, removed however the snapshot ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CRC-32 over a record's tag, key and value (format 2).
pub(super) fn record_crc(tag: u8, k: &[u8], v: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[tag]);
    h.update(&(k.len() as u32).to_le_bytes());
    h.update(k);
    h.update(v);
    h.finalize()
}

/// A writer that hashes what passes through it (SHA-256).
pub(super) struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W: Write> Hashing<W> {
    pub(super) fn new(inner: W) -> Self {
        use sha2::Digest;
        Hashing {
            inner,
            hash: sha2::Sha256::new(),
        }
    }

    /// The writer back, and the hex digest of everything written.
    pub(super) fn finish(self) -> (W, String) {
        use sha2::Digest;
        let digest = self.hash.finalize();
        (
            self.inner,
            digest.iter().map(|b| format!("{b:02x}")).collect(),
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not a valid Quarry snapshot: {what}"))
}

impl Collection {
    /// Under the write lock: brings both indexes to the last sequence and fixes their files,
    /// dumps the records to `records` (the trees', then `server`, the collection's server
    /// records), and lists the index files (path in the archive, path on disk).
    fn dump(
        &self,
        records: &Path,
        server: &[OwnedRecord],
    ) -> Result<(SnapshotCollection, Vec<(String, PathBuf)>)> {
        let local = self.require_local("a Quarry snapshot")?;
        local.dump(records, self.embedder.fingerprint()?, server)
    }
}

/// Writes one framed record (format 2 and later: with its CRC-32).
fn frame(out: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(k.len() as u32).to_le_bytes())?;
    out.write_all(k)?;
    out.write_all(&(v.len() as u32).to_le_bytes())?;
    out.write_all(v)?;
    out.write_all(&record_crc(tag, k, v).to_le_bytes())
}

impl Embedded {
    fn dump(
        &self,
        records: &Path,
        model_fingerprint: String,
        server: &[OwnedRecord],
    ) -> Result<(SnapshotCollection, Vec<(String, PathBuf)>)> {
        self.catch_up_if_stale();
        if self.stale.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::FailedPrecondition(format!(
                "collection {}: its indexes are behind the log; retry after the next checkpoint",
                quote(&self.record.name)
            )));
        }
        self.lexical.close_idle_writer(std::time::Duration::ZERO)?;
        if self.dense.is_dirty()? {
            self.dense.checkpoint()?;
        }
        let seq = self.lexical.applied_seq()?;
        let mut max_id = seq.max(self.dense.applied_seq()?);
        let mut out = Hashing::new(BufWriter::new(std::fs::File::create(records)?));
        for (tag, _) in TREES {
            let Some(t) = tree(&self.trees, tag) else {
                continue;
            };
            for kv in t.iter() {
                let (k, v) = kv?;
                if tag == 3 {
                    if let Ok(k8) = <[u8; 8]>::try_from(k.as_ref()) {
                        max_id = max_id.max(doc_key(u64::from_be_bytes(k8)));
                    }
                }
                frame(&mut out, tag, &k, &v)?;
            }
        }
        for r in server {
            let key = format!("{}\0{}", r.group, r.item);
            frame(&mut out, SERVER_RECORDS, key.as_bytes(), r.value.as_bytes())?;
        }
        let (mut inner, records_sha) = out.finish();
        inner.flush()?;
        let mut hashes = std::collections::BTreeMap::new();
        hashes.insert("records.bin".to_string(), records_sha);
        let mut files = Vec::new();
        for sub in ["lexical", "dense"] {
            let dir = self.dir.join(sub);
            if !dir.exists() {
                continue;
            }
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                // tantivy's lock files are the live writer's, not the index's.
                if path.is_file() && !name.ends_with(".lock") {
                    files.push((format!("{sub}/{name}"), path));
                }
            }
        }
        let (documents, chunks) = self.counts()?;
        Ok((
            SnapshotCollection {
                record: self.record.clone(),
                model_fingerprint,
                seq,
                max_id,
                documents,
                chunks,
                files: hashes,
            },
            files,
        ))
    }
}

impl Engine {
    /// Writes a snapshot of `names` (every collection when empty) to `out`, atomically (a
    /// temporary file renamed into place).
    ///
    /// All the collections are copied at one instant: their write locks are taken together
    /// (in name order, so two snapshots cannot deadlock) and held until every one is copied,
    /// so a client that wrote to A and then to B never finds B's write in the snapshot without
    /// A's. Writes to these collections wait for the copy; searches go on.
    pub async fn create_snapshot(&self, names: &[String], out: &Path) -> Result<SnapshotManifest> {
        self.check_free_disk()?;
        let mut collections: Vec<Arc<Collection>> = if names.is_empty() {
            self.open_map()?.values().cloned().collect()
        } else {
            names
                .iter()
                .map(|n| self.collection(n))
                .collect::<Result<_>>()?
        };
        collections.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        collections.dedup_by(|a, b| a.record.name == b.record.name);
        let work = WorkDir(out.with_extension(format!("parts-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&work.0);
        std::fs::create_dir_all(&work.0)?;
        let mut guards = Vec::with_capacity(collections.len());
        for c in &collections {
            guards.push(c.write_guard().await);
        }
        // From here until the guards drop, no write to any of them runs: this is the instant.
        let locked = std::time::Instant::now();
        let store = self.store.clone();
        let dir = work.0.clone();
        // The index files are copied under the locks too: the next write may change them.
        let (seq, parts) = tokio::task::spawn_blocking(move || -> Result<_> {
            let _guards = guards;
            // Every operation these collections hold is numbered below this one.
            let seq = store.next_id()?;
            let mut parts = Vec::with_capacity(collections.len());
            for (i, c) in collections.iter().enumerate() {
                c.ensure_live()?;
                let records = dir.join(format!("{i}.records"));
                let copies = dir.join(i.to_string());
                // Read at the instant too, beside the trees.
                let server = store.record_all(&c.record.name)?;
                let (mut entry, files) = c.dump(&records, &server)?;
                std::fs::create_dir_all(copies.join("lexical"))?;
                std::fs::create_dir_all(copies.join("dense"))?;
                let mut copied = Vec::new();
                for (name, path) in files {
                    let to = copies.join(&name);
                    let mut out = Hashing::new(std::fs::File::create(&to)?);
                    std::io::copy(&mut std::fs::File::open(&path)?, &mut out)?;
                    entry.files.insert(name.clone(), out.finish().1);
                    copied.push((name, to));
                }
                parts.push((entry, (records, copied)));
            }
            Ok((seq, parts))
        })
        .await
        .map_err(|e| Error::internal(format!("snapshot task failed: {e}")))??;
        tracing::info!(
            collections = parts.len(),
            seq,
            writes_waited_ms = locked.elapsed().as_millis() as u64,
            "snapshot copied at one instant; writing the archive"
        );
        let manifest = SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            quarry_version: env!("CARGO_PKG_VERSION").to_string(),
            created_unix_ms: now_ms(),
            seq,
            collections: parts.iter().map(|(e, _)| e.clone()).collect(),
        };
        let partial = out.with_extension("partial");
        let written = manifest.clone();
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut tar = tar::Builder::new(BufWriter::new(std::fs::File::create(&partial)?));
            let json = serde_json::to_vec_pretty(&written)?;
            let mut header = tar::Header::new_gnu();
            header.set_size(json.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "manifest.json", json.as_slice())?;
            for (i, (_, (records, files))) in parts.iter().enumerate() {
                tar.append_path_with_name(records, format!("collections/{i}/records.bin"))?;
                for (name, path) in files {
                    tar.append_path_with_name(path, format!("collections/{i}/{name}"))?;
                }
            }
            let file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&partial, &out)?;
            drop(work);
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("snapshot task failed: {e}")))??;
        Ok(manifest)
    }
}
