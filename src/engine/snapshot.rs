//! Snapshots: a collection backed up without re-embedding, and restored under any name.
//!
//! A snapshot is one tar archive: `manifest.json` first (format, Quarry version, and per
//! collection its settings, model name and fingerprint, operation sequence, counts), then per
//! collection `records.bin` (sled's documents, texts, chunks, vectors and key types as framed
//! key/value pairs) and the index checkpoints (`lexical/`, `dense/`) at that same sequence.
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
//! - **All or nothing.** The collection's record is written last: a restore that fails or
//!   crashes half-way leaves orphan trees and files, removed at the next start.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{now_ms, valid_collection_name, Collection, CollectionInfo, Engine};
use crate::error::{quote, Error, Result};
use crate::store::{doc_key, CollectionRecord};

/// The archive format this version writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

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
}

/// Trees of a collection in `records.bin`, by tag.
const TREES: [(u8, &str); 5] = [
    (1, "docs"),
    (2, "texts"),
    (3, "chunks"),
    (4, "vectors"),
    (5, "schema"),
];

fn tree(t: &crate::store::CollectionTrees, tag: u8) -> Option<&sled::Tree> {
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

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not a valid Quarry snapshot: {what}"))
}

impl Collection {
    /// Under the write lock: brings both indexes to the last sequence and fixes their files,
    /// dumps the records to `records`, and lists the index files (path in the archive, path
    /// on disk).
    fn dump(&self, records: &Path) -> Result<(SnapshotCollection, Vec<(String, PathBuf)>)> {
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
        let mut out = BufWriter::new(std::fs::File::create(records)?);
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
                out.write_all(&[tag])?;
                out.write_all(&(k.len() as u32).to_le_bytes())?;
                out.write_all(&k)?;
                out.write_all(&(v.len() as u32).to_le_bytes())?;
                out.write_all(&v)?;
            }
        }
        out.flush()?;
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
        let info = self.info();
        Ok((
            SnapshotCollection {
                record: self.record.clone(),
                model_fingerprint: self.embedder.fingerprint()?,
                seq,
                max_id,
                documents: info.document_count,
                chunks: info.chunk_count,
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
                let (entry, files) = c.dump(&records)?;
                std::fs::create_dir_all(copies.join("lexical"))?;
                std::fs::create_dir_all(copies.join("dense"))?;
                let mut copied = Vec::new();
                for (name, path) in files {
                    let to = copies.join(&name);
                    std::fs::copy(&path, &to)?;
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

    /// Restores the collections of the snapshot at `archive` (only `only`, when given, under
    /// the name `rename`, when given). Blocking. Each restored collection opens at once.
    pub fn restore_snapshot(
        &self,
        archive: &Path,
        only: Option<&str>,
        rename: Option<&str>,
    ) -> Result<Vec<CollectionInfo>> {
        let open = || -> Result<tar::Archive<BufReader<std::fs::File>>> {
            Ok(tar::Archive::new(BufReader::new(
                std::fs::File::open(archive).map_err(|e| {
                    Error::NotFound(format!(
                        "cannot open snapshot {}: {e}",
                        quote(&archive.to_string_lossy())
                    ))
                })?,
            )))
        };
        let mut tar = open()?;
        let mut entries = tar.entries()?;
        let manifest: SnapshotManifest = {
            let mut first = entries
                .next()
                .ok_or_else(|| corrupt("the archive is empty"))??;
            if first.path()?.to_string_lossy() != "manifest.json" {
                return Err(corrupt("manifest.json is not its first entry"));
            }
            let mut json = Vec::new();
            first.read_to_end(&mut json)?;
            serde_json::from_slice(&json).map_err(|e| corrupt(format!("manifest.json: {e}")))?
        };
        self.check_free_disk()?;
        let _naming = self
            .naming
            .lock()
            .map_err(|_| Error::internal("naming lock poisoned"))?;
        if manifest.format != SNAPSHOT_FORMAT {
            return Err(Error::FailedPrecondition(format!(
                "snapshot format {} (Quarry {}); this server reads format {SNAPSHOT_FORMAT}",
                manifest.format, manifest.quarry_version
            )));
        }
        // What to restore, as what: index in the archive -> (entry, new record).
        let mut plan = Vec::new();
        for (i, c) in manifest.collections.iter().enumerate() {
            if only.is_some_and(|o| o != c.record.name) {
                continue;
            }
            let name = rename.unwrap_or(&c.record.name).to_string();
            valid_collection_name(&name)?;
            if self.collection(&name).is_ok() || self.unavailable(&name)?.is_some() {
                return Err(Error::CollectionExists(name));
            }
            let embedder = self.embedder(&c.record.model)?;
            let here = embedder.fingerprint()?;
            if here != c.model_fingerprint || embedder.dimension() != c.record.dimension {
                return Err(Error::FailedPrecondition(format!(
                    "collection {} was embedded with model {} (fingerprint {}); this server's {} has fingerprint {}: its vectors would not match queries. Provision the same model, or re-ingest instead",
                    quote(&c.record.name),
                    quote(&c.record.model),
                    c.model_fingerprint,
                    quote(&c.record.model),
                    here
                )));
            }
            let record = CollectionRecord {
                name,
                id: self.store.next_id()?,
                created_unix_ms: now_ms(),
                ..c.record.clone()
            };
            plan.push((i, c.clone(), record));
        }
        if rename.is_some() && plan.len() > 1 {
            return Err(Error::invalid(
                "the snapshot holds several collections: name the one to restore under a new name",
            ));
        }
        if let Some(o) = only {
            if plan.is_empty() {
                return Err(Error::NotFound(format!(
                    "the snapshot holds no collection {}",
                    quote(o)
                )));
            }
        }
        for entry in entries {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().to_string();
            let mut parts = path.splitn(3, '/');
            let (Some("collections"), Some(i), Some(rest)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(corrupt(format!("unexpected entry {}", quote(&path))));
            };
            let i: usize = i.parse().map_err(|_| corrupt(quote(&path)))?;
            let Some((_, _, record)) = plan.iter().find(|(j, _, _)| *j == i) else {
                continue;
            };
            let dir = self.collections_dir().join(record.id.to_string());
            match rest {
                "records.bin" => self.load_records(record, &mut entry)?,
                file if file.starts_with("lexical/") || file.starts_with("dense/") => {
                    if file.contains("..") || file.matches('/').count() != 1 {
                        return Err(corrupt(format!("unexpected entry {}", quote(&path))));
                    }
                    let to = dir.join(file);
                    std::fs::create_dir_all(to.parent().unwrap_or(&dir))?;
                    let mut out = std::fs::File::create(&to)?;
                    std::io::copy(&mut entry, &mut out)?;
                    out.sync_all()?;
                }
                _ => return Err(corrupt(format!("unexpected entry {}", quote(&path)))),
            }
        }
        let mut restored = Vec::new();
        for (_, c, record) in plan {
            self.store.raise_ids_above(c.max_id)?;
            self.store.create_collection(&record)?;
            self.store.flush_blocking()?;
            let name = record.name.clone();
            let collection = Arc::new(self.open_collection(record)?);
            let info = collection.info();
            tracing::info!(collection = %quote(&name), from = %quote(&c.record.name), documents = info.document_count, "restored from a snapshot");
            self.open_map_mut()?.insert(name, collection);
            restored.push(info);
        }
        Ok(restored)
    }

    /// Writes a collection's records from a snapshot into its (new) trees.
    fn load_records(&self, record: &CollectionRecord, from: &mut impl Read) -> Result<()> {
        let trees = self.store.trees(record)?;
        let mut batches: Vec<sled::Batch> =
            (0..TREES.len()).map(|_| sled::Batch::default()).collect();
        let mut pending = 0usize;
        let mut read = BufReader::with_capacity(1 << 20, from);
        let mut tag = [0u8; 1];
        loop {
            match read.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            let mut field = || -> Result<Vec<u8>> {
                let mut len = [0u8; 4];
                read.read_exact(&mut len)?;
                let len = u32::from_le_bytes(len) as usize;
                if len > 1 << 30 {
                    return Err(corrupt("a record over 1 GiB"));
                }
                let mut v = vec![0u8; len];
                read.read_exact(&mut v)?;
                Ok(v)
            };
            let k = field()?;
            let v = field()?;
            let slot = TREES
                .iter()
                .position(|(t, _)| *t == tag[0])
                .ok_or_else(|| corrupt(format!("record tag {}", tag[0])))?;
            batches[slot].insert(k, v);
            pending += 1;
            if pending >= 10_000 {
                self.apply_batches(&trees, &mut batches)?;
                pending = 0;
            }
        }
        self.apply_batches(&trees, &mut batches)?;
        trees.forget_counts()
    }

    fn apply_batches(
        &self,
        trees: &crate::store::CollectionTrees,
        batches: &mut [sled::Batch],
    ) -> Result<()> {
        for ((tag, _), batch) in TREES.iter().zip(batches.iter_mut()) {
            if let Some(t) = tree(trees, *tag) {
                t.apply_batch(std::mem::take(batch))?;
            }
        }
        Ok(())
    }
}
