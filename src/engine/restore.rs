//! Restoring a snapshot archive: hostile input until every byte is checked.
//!
//! An archive comes from outside (an upload, a file a user names), so nothing in it is
//! trusted:
//! - **Only what the format defines.** Regular-file entries only (no sparse, link, device or
//!   directory entries: a 130 KiB sparse entry must not become 192 MiB on disk), under the
//!   names the format uses (`manifest.json` first, then `collections/<i>/records.bin` and
//!   `collections/<i>/{lexical,dense}/<file>`), each at most once, each no larger than the
//!   archive itself. The free disk is checked against the archive's size before anything is
//!   written.
//! - **Checksums and meaning.** Format 2 carries a CRC-32 per record and the SHA-256 of every
//!   file; both are verified. Checksums catch damage, not forgery, so every record is also
//!   decoded and checked as the store will read it (documents, texts, chunks with their
//!   documents, vectors of the collection's dimension and finite, key types), and the
//!   collection's settings are validated like `CreateCollection`'s. A record that would make
//!   later reads fail is refused now.
//! - **All or nothing.** Targets are planned and checked (names valid, free, distinct, and
//!   allowed for the caller) before anything is written; trees and files are written under
//!   fresh ids that no collection record names, so nothing is visible until the end, and a
//!   failure removes them at once (a crash leaves orphans, removed at the next start). The
//!   collection records are written last, together.
//! - **Clean errors.** Anything wrong with the archive is INVALID_ARGUMENT ("not a valid
//!   Quarry snapshot: ...") with the offending text quoted and cut; only a failure of this
//!   server's own disk is an internal fault.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use super::restore_check::{HashingReader, RecordCheck, MAX_ARCHIVE_ID};
use super::snapshot::{
    corrupt, record_crc, tree, Hashing, SnapshotManifest, SERVER_RECORDS, TREES,
};
use super::{now_ms, valid_collection_name, CollectionInfo, Engine};
use crate::chunk::ChunkSettings;
use crate::error::{quote, Error, Result};
use crate::store::{CollectionRecord, OwnedRecord};

/// The largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// The largest key or value of one record.
const MAX_FIELD_BYTES: usize = 256 << 20;

/// Formats this version reads.
const READABLE: [u32; 3] = [1, 2, 3];

/// The most bytes of server records (eval sets, settings, gate decisions) one archive may
/// carry, over all its collections: they are held in memory until checked. Far above what the
/// eval limits let a collection hold (16 splits of an Evaluate request's size).
const MAX_SERVER_RECORD_BYTES: usize = 256 << 20;

/// Checks a collection's server records from an archive as their readers will read them, and
/// returns those to keep (see `eval::restored`, which knows what they mean).
pub type RecordsCheck<'a> = &'a dyn Fn(Vec<OwnedRecord>) -> Result<Vec<OwnedRecord>>;

/// Whatever restore wrote, removed on drop unless disarmed.
struct Undo<'a> {
    engine: &'a Engine,
    records: Vec<CollectionRecord>,
    created: Vec<CollectionRecord>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for r in &self.created {
            let _ = self.engine.store.delete_collection(r);
        }
        for r in &self.records {
            let _ = self.engine.store.delete_collection(r);
            let _ = self.engine.store.record_forget(&r.name);
            let _ = std::fs::remove_dir_all(self.engine.collections_dir().join(r.id.to_string()));
        }
    }
}

/// One collection of the plan.
struct Target {
    /// Its index in the archive.
    index: usize,
    from: super::snapshot::SnapshotCollection,
    record: CollectionRecord,
    records_seen: bool,
    files_seen: HashSet<String>,
    max_id: u64,
    /// Its server records, unchecked until every entry is read.
    server: Vec<OwnedRecord>,
}

/// Errors of reading the archive (as opposed to writing the restore) are the archive's fault.
fn bad(e: std::io::Error) -> Error {
    corrupt(quote(&e.to_string()))
}

/// A file name inside `lexical/` or `dense/`: plain, short, no path tricks.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Engine {
    /// Restores the collections of the snapshot at `archive` (only `only`, when given, under
    /// the name `rename`, when given), all or nothing. `allow` is asked, with every name the
    /// restore would create, before anything is written (the caller's authorization);
    /// `check` judges each collection's server records. Blocking. Each restored collection
    /// opens at once.
    pub fn restore_snapshot(
        &self,
        archive: &Path,
        only: Option<&str>,
        rename: Option<&str>,
        allow: &dyn Fn(&[&str]) -> Result<()>,
        check: RecordsCheck,
    ) -> Result<Vec<CollectionInfo>> {
        if self.remote.is_some() {
            return Err(Error::FailedPrecondition(
                "Quarry snapshot archives restore on the embedded backend; this server keeps its collections on Qdrant (use Qdrant's snapshots, or `quarry export` and `quarry ingest`)".into(),
            ));
        }
        let file = std::fs::File::open(archive).map_err(|e| {
            Error::NotFound(format!(
                "cannot open snapshot {}: {e}",
                quote(&archive.to_string_lossy())
            ))
        })?;
        let archive_len = file.metadata()?.len();
        let mut tar = tar::Archive::new(BufReader::new(file));
        let mut entries = tar.entries().map_err(bad)?;
        let manifest: SnapshotManifest = {
            let mut first = entries
                .next()
                .ok_or_else(|| corrupt("the archive is empty"))?
                .map_err(bad)?;
            let path = String::from_utf8_lossy(&first.path_bytes()).into_owned();
            if first.header().entry_type() != tar::EntryType::Regular || path != "manifest.json" {
                return Err(corrupt("manifest.json is not its first entry"));
            }
            if first.size() > MAX_MANIFEST_BYTES {
                return Err(corrupt("manifest.json is over 16 MiB"));
            }
            let mut json = Vec::new();
            first.read_to_end(&mut json).map_err(bad)?;
            serde_json::from_slice(&json)
                .map_err(|e| corrupt(format!("manifest.json: {}", quote(&e.to_string()))))?
        };
        if !READABLE.contains(&manifest.format) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot format {} (Quarry {}); this server reads formats {READABLE:?}",
                manifest.format,
                quote(&manifest.quarry_version)
            )));
        }
        // Room for the archive's contents (and sled's overhead on them) above the watermark,
        // before anything is written.
        self.check_free_disk()?;
        let free = super::validate::free_disk_bytes(&self.config.data_dir).unwrap_or(u64::MAX);
        let needed = archive_len
            .saturating_mul(2)
            .saturating_add(self.config.limits.min_free_disk_bytes);
        if free < needed {
            return Err(Error::Exhausted(format!(
                "restoring this {archive_len}-byte snapshot needs about {needed} bytes free (twice its size plus limits.min_free_disk_bytes); the disk has {free}"
            )));
        }
        let _naming = self
            .naming
            .lock()
            .map_err(|_| Error::internal("naming lock poisoned"))?;
        let mut plan = self.plan_restore(&manifest, only, rename)?;
        let names: Vec<&str> = plan.iter().map(|t| t.record.name.as_str()).collect();
        allow(&names)?;

        let mut undo = Undo {
            engine: self,
            records: plan.iter().map(|t| t.record.clone()).collect(),
            created: Vec::new(),
            armed: true,
        };
        let mut seen_paths = HashSet::new();
        let mut server_budget = MAX_SERVER_RECORD_BYTES;
        for entry in entries {
            let mut entry = entry.map_err(bad)?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(corrupt(format!(
                    "entry {} is not a regular file (type {:?})",
                    quote(&path),
                    entry.header().entry_type()
                )));
            }
            if entry.size() > archive_len {
                return Err(corrupt(format!(
                    "entry {} claims more bytes than the archive holds",
                    quote(&path)
                )));
            }
            if !seen_paths.insert(path.clone()) {
                return Err(corrupt(format!("entry {} appears twice", quote(&path))));
            }
            let unexpected = || corrupt(format!("unexpected entry {}", quote(&path)));
            let mut parts = path.splitn(3, '/');
            let (Some("collections"), Some(i), Some(rest)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(unexpected());
            };
            let i: usize = i.parse().map_err(|_| unexpected())?;
            if i >= manifest.collections.len() {
                return Err(unexpected());
            }
            let well_formed = rest == "records.bin"
                || rest.split_once('/').is_some_and(|(dir, name)| {
                    (dir == "lexical" || dir == "dense") && plain_file_name(name)
                });
            if !well_formed {
                return Err(unexpected());
            }
            let Some(target) = plan.iter_mut().find(|t| t.index == i) else {
                continue; // A collection this restore leaves out.
            };
            let expected = target.from.files.get(rest).cloned();
            if manifest.format >= 2 && expected.is_none() {
                return Err(corrupt(format!(
                    "entry {} is not in the manifest",
                    quote(&path)
                )));
            }
            let sha = if rest == "records.bin" {
                let mut hashed = HashingReader::new(&mut entry);
                (target.max_id, target.server) = self.load_records(
                    &target.record,
                    &mut hashed,
                    manifest.format,
                    &mut server_budget,
                )?;
                // Whatever the loader left unread still counts for the checksum.
                std::io::copy(&mut hashed, &mut std::io::sink()).map_err(bad)?;
                target.records_seen = true;
                hashed.finish()
            } else {
                let to = self
                    .collections_dir()
                    .join(target.record.id.to_string())
                    .join(rest);
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut out = Hashing::new(std::fs::File::create(&to)?);
                copy_from_archive(&mut entry, &mut out)?;
                let (file, sha) = out.finish();
                file.sync_all()?;
                target.files_seen.insert(rest.to_string());
                sha
            };
            if let Some(expected) = expected {
                if expected != sha {
                    return Err(corrupt(format!(
                        "entry {} does not match its checksum",
                        quote(&path)
                    )));
                }
            }
        }
        for t in &plan {
            if !t.records_seen {
                return Err(corrupt(format!(
                    "collection {} has no records.bin",
                    quote(&t.from.record.name)
                )));
            }
            if let Some(missing) = t
                .from
                .files
                .keys()
                .find(|f| f.as_str() != "records.bin" && !t.files_seen.contains(f.as_str()))
            {
                return Err(corrupt(format!(
                    "collection {}: file {} is in the manifest but not in the archive",
                    quote(&t.from.record.name),
                    quote(missing)
                )));
            }
        }

        // Server records are checked as their readers will read them, and written under
        // the name they return as (still invisible: no collection has it yet).
        for t in &mut plan {
            let kept = check(std::mem::take(&mut t.server))
                .map_err(|e| archive_fault(e, &t.from.record.name, ""))?;
            self.store.record_put_all(&t.record.name, &kept)?;
        }

        // Everything is written and checked: open each collection on it (its indexes must
        // load), then make them visible together.
        let mut opened = Vec::new();
        for t in &plan {
            let collection = self
                .open_collection(t.record.clone())
                .map_err(|e| archive_fault(e, &t.from.record.name, "its indexes do not open: "))?;
            let local = collection.require_local("restoring a Quarry snapshot")?;
            let applied = local.lexical.applied_seq()?.max(local.dense.applied_seq()?);
            if applied >= MAX_ARCHIVE_ID || t.from.seq >= MAX_ARCHIVE_ID {
                return Err(corrupt("an index claims an impossible sequence"));
            }
            self.store
                .raise_ids_above(t.max_id.max(applied).max(t.from.seq))?;
            opened.push(Arc::new(collection));
        }
        for t in &plan {
            self.store.create_collection(&t.record)?;
            undo.created.push(t.record.clone());
        }
        self.store.flush_blocking()?;
        undo.armed = false;
        let mut restored = Vec::new();
        let mut map = self.open_map_mut()?;
        for (t, collection) in plan.iter().zip(opened) {
            let info = collection.info();
            tracing::info!(collection = %quote(&t.record.name), from = %quote(&t.from.record.name), documents = info.document_count, "restored from a snapshot");
            map.insert(t.record.name.clone(), collection);
            restored.push(info);
        }
        Ok(restored)
    }

    /// What to restore, as what: every target checked before anything is written.
    fn plan_restore(
        &self,
        manifest: &SnapshotManifest,
        only: Option<&str>,
        rename: Option<&str>,
    ) -> Result<Vec<Target>> {
        let mut sources = HashSet::new();
        for c in &manifest.collections {
            if !sources.insert(c.record.name.as_str()) {
                return Err(corrupt(format!(
                    "the manifest names collection {} twice",
                    quote(&c.record.name)
                )));
            }
        }
        let mut plan: Vec<Target> = Vec::new();
        for (i, c) in manifest.collections.iter().enumerate() {
            if only.is_some_and(|o| o != c.record.name) {
                continue;
            }
            valid_collection_name(&c.record.name).map_err(|e| corrupt(e.to_string()))?;
            ChunkSettings {
                max_tokens: c.record.chunk_tokens,
                overlap: c.record.chunk_overlap,
            }
            .validate()
            .map_err(|e| corrupt(format!("collection {}: {e}", quote(&c.record.name))))?;
            if c.max_id >= MAX_ARCHIVE_ID || c.seq >= MAX_ARCHIVE_ID {
                return Err(corrupt("the manifest claims an impossible id"));
            }
            let name = rename.unwrap_or(&c.record.name).to_string();
            valid_collection_name(&name)?;
            // One name, one thing: never under the name of an alias either.
            self.refuse_alias_name(&name)?;
            if self.physical(&name).is_ok() || self.unavailable(&name)?.is_some() {
                return Err(Error::CollectionExists(name));
            }
            // Neither a collection nor an alias: records under the name are a deleted one's.
            self.forget_records_blocking(&name)?;
            let embedder = self.embedder(&c.record.model)?;
            let here = embedder.fingerprint()?;
            if here != c.model_fingerprint || embedder.dimension() != c.record.dimension {
                return Err(Error::FailedPrecondition(format!(
                    "collection {} was embedded with model {} (fingerprint {}); this server's {} has fingerprint {}: its vectors would not match queries. Provision the same model, or re-ingest instead",
                    quote(&c.record.name),
                    quote(&c.record.model),
                    quote(&c.model_fingerprint),
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
            plan.push(Target {
                index: i,
                from: c.clone(),
                record,
                records_seen: false,
                files_seen: HashSet::new(),
                max_id: 0,
                server: Vec::new(),
            });
        }
        if rename.is_some() && plan.len() > 1 {
            return Err(Error::invalid(
                "the snapshot holds several collections: name the one to restore under a new name",
            ));
        }
        match only {
            Some(o) if plan.is_empty() => Err(Error::NotFound(format!(
                "the snapshot holds no collection {}",
                quote(o)
            ))),
            None if plan.is_empty() => Err(corrupt("the manifest lists no collection")),
            _ => Ok(plan),
        }
    }

    /// Writes a collection's records from a snapshot into its (new, invisible) trees, each
    /// checked as the store will read it; returns the largest id they use, and the server
    /// records (format 3: decoded, not yet judged, taken from the archive's `budget` of bytes).
    fn load_records(
        &self,
        record: &CollectionRecord,
        from: &mut impl Read,
        format: u32,
        budget: &mut usize,
    ) -> Result<(u64, Vec<OwnedRecord>)> {
        let trees = self.store.trees(record)?;
        let mut check = RecordCheck::new(record.dimension);
        let mut batches: Vec<sled::Batch> =
            (0..TREES.len()).map(|_| sled::Batch::default()).collect();
        let mut pending = 0usize;
        let mut server = Vec::new();
        let mut read = BufReader::with_capacity(1 << 20, from);
        let mut tag = [0u8; 1];
        loop {
            match read.read_exact(&mut tag) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(bad(e)),
            }
            let mut field = || -> Result<Vec<u8>> {
                let mut len = [0u8; 4];
                read.read_exact(&mut len)
                    .map_err(|_| corrupt("a record is cut short"))?;
                let len = u32::from_le_bytes(len) as usize;
                if len > MAX_FIELD_BYTES {
                    return Err(corrupt("a record field over 256 MiB"));
                }
                // Read through `take`, never allocating what the length merely claims.
                let mut v = Vec::new();
                (&mut read)
                    .take(len as u64)
                    .read_to_end(&mut v)
                    .map_err(bad)?;
                if v.len() != len {
                    return Err(corrupt("a record is cut short"));
                }
                Ok(v)
            };
            let k = field()?;
            let v = field()?;
            if format >= 2 {
                let mut crc = [0u8; 4];
                read.read_exact(&mut crc)
                    .map_err(|_| corrupt("a record is cut short"))?;
                if u32::from_le_bytes(crc) != record_crc(tag[0], &k, &v) {
                    return Err(corrupt("a record does not match its checksum"));
                }
            }
            if tag[0] == SERVER_RECORDS && format >= 3 {
                check.order(tag[0])?;
                *budget = budget
                    .checked_sub(k.len() + v.len())
                    .ok_or_else(|| corrupt("over 256 MiB of server records"))?;
                server.push(server_record(&k, v)?);
                continue;
            }
            let slot = TREES
                .iter()
                .position(|(t, _)| *t == tag[0])
                .ok_or_else(|| corrupt(format!("record tag {}", tag[0])))?;
            if !check.record(tag[0], &k, &v)? {
                continue;
            }
            batches[slot].insert(k, v);
            pending += 1;
            if pending >= 10_000 {
                apply_batches(&trees, &mut batches)?;
                pending = 0;
            }
        }
        check.finish()?;
        // Key types as CreateCollection would accept them: each key valid, not too many.
        let max_keys = self.config.limits.max_metadata_keys;
        if check.metadata_keys.len() > max_keys {
            return Err(corrupt(format!(
                "{} metadata keys, over the limit max_metadata_keys = {max_keys}",
                check.metadata_keys.len()
            )));
        }
        for key in &check.metadata_keys {
            self.check_metadata_key(key)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        apply_batches(&trees, &mut batches)?;
        trees.forget_counts()?;
        Ok((check.max_id, server))
    }
}

/// An error met while taking in collection `name` of an archive: this server's own disk
/// failing stays what it is; anything else is the archive's fault.
fn archive_fault(e: Error, name: &str, what: &str) -> Error {
    if matches!(e, Error::Storage(_)) || e.is_storage_full() {
        e
    } else {
        corrupt(format!(
            "collection {}: {what}{}",
            quote(name),
            quote(&e.to_string())
        ))
    }
}

/// A server record as the archive frames it: key `group \0 item`, both non-empty, UTF-8
/// without further NULs (the store's key layout), value UTF-8.
fn server_record(k: &[u8], v: Vec<u8>) -> Result<OwnedRecord> {
    let bad = || corrupt("a server record's key is not `group NUL item`, or not UTF-8");
    let key = std::str::from_utf8(k).map_err(|_| bad())?;
    let (group, item) = key.split_once('\0').ok_or_else(bad)?;
    if group.is_empty() || item.is_empty() || item.contains('\0') {
        return Err(bad());
    }
    let value = String::from_utf8(v).map_err(|_| corrupt("a server record is not UTF-8"))?;
    Ok(OwnedRecord {
        group: group.to_string(),
        item: item.to_string(),
        value,
    })
}

fn apply_batches(trees: &crate::store::CollectionTrees, batches: &mut [sled::Batch]) -> Result<()> {
    for ((tag, _), batch) in TREES.iter().zip(batches.iter_mut()) {
        if let Some(t) = tree(trees, *tag) {
            t.apply_batch(std::mem::take(batch))?;
        }
    }
    Ok(())
}

/// Copies an entry's bytes: read errors are the archive's, write errors the disk's.
fn copy_from_archive(from: &mut impl Read, to: &mut impl std::io::Write) -> Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from.read(&mut buf).map_err(bad)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}
