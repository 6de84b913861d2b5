//! The checks every record of a restored archive passes (see `restore.rs`): each decodes as
//! the store will read it, and the records agree with each other. Checksums catch damage, not
//! forgery; these checks are what stops a crafted record from making later reads fail.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use super::snapshot::corrupt;
use crate::error::{quote, Result};
use crate::store::{doc_key, ChunkRecord, DocRecord};

/// Ids (sequences and document-version keys) an archive may use: far above any real store,
/// far below where raising the id generator to them could exhaust it.
pub(super) const MAX_ARCHIVE_ID: u64 = 1 << 44;

/// A reader that hashes what is read through it (SHA-256).
pub(super) struct HashingReader<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        use sha2::Digest;
        HashingReader {
            inner,
            hash: sha2::Sha256::new(),
        }
    }

    pub(super) fn finish(self) -> String {
        use sha2::Digest;
        self.hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The checks every restored record passes: each decodes as the store reads it, and the
/// records agree with each other (a chunk belongs to a document that lists it, a vector to a
/// chunk, every listed chunk is present with its vector). Records come in tree order
/// (documents, texts, chunks, vectors, key types), as snapshots write them.
pub(super) struct RecordCheck {
    dimension: usize,
    last_tag: u8,
    /// Hashes of document ids (64-bit: memory stays 8 bytes a document).
    docs: HashSet<u64>,
    /// Chunk ids the documents list, and whether each was seen / has a vector.
    listed: BTreeMap<u64, (bool, bool)>,
    pub(super) max_id: u64,
    /// The metadata keys the collection declares or uses, checked by the restore against
    /// the same limits as a `CreateCollection`'s schema.
    pub(super) metadata_keys: Vec<String>,
}

fn id_hash(id: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl RecordCheck {
    pub(super) fn new(dimension: usize) -> Self {
        RecordCheck {
            dimension,
            last_tag: 0,
            docs: HashSet::new(),
            listed: BTreeMap::new(),
            max_id: 0,
            metadata_keys: Vec::new(),
        }
    }

    /// Checks one record; `false`: valid but not to be stored (kept counts, which the
    /// restore recomputes).
    pub(super) fn record(&mut self, tag: u8, k: &[u8], v: &[u8]) -> Result<bool> {
        self.order(tag)?;
        let chunk_key = |k: &[u8]| -> Result<u64> {
            let id = u64::from_be_bytes(
                k.try_into()
                    .map_err(|_| corrupt("a chunk key is not 8 bytes"))?,
            );
            if doc_key(id) >= MAX_ARCHIVE_ID {
                return Err(corrupt("a chunk id is out of range"));
            }
            Ok(id)
        };
        match tag {
            1 => {
                let d: DocRecord = serde_json::from_slice(v).map_err(|e| {
                    corrupt(format!("a document record: {}", quote(&e.to_string())))
                })?;
                if d.id.as_bytes() != k || d.id.is_empty() {
                    return Err(corrupt(format!(
                        "document record {} is stored under another id",
                        quote(&d.id)
                    )));
                }
                self.docs.insert(id_hash(k));
                for &c in &d.chunk_ids {
                    if doc_key(c) >= MAX_ARCHIVE_ID
                        || self.listed.insert(c, (false, false)).is_some()
                    {
                        return Err(corrupt(format!(
                            "document {} lists a chunk id out of range or twice",
                            quote(&d.id)
                        )));
                    }
                    self.max_id = self.max_id.max(doc_key(c));
                }
            }
            2 => {
                if !self.docs.contains(&id_hash(k)) || std::str::from_utf8(v).is_err() {
                    return Err(corrupt("a text without its document, or not UTF-8"));
                }
            }
            3 => {
                let id = chunk_key(k)?;
                let c: ChunkRecord = serde_json::from_slice(v)
                    .map_err(|e| corrupt(format!("a chunk record: {}", quote(&e.to_string()))))?;
                let Some(entry) = self.listed.get_mut(&id) else {
                    return Err(corrupt("a chunk that no document lists"));
                };
                if !self.docs.contains(&id_hash(c.doc_id.as_bytes())) || c.start > c.end {
                    return Err(corrupt(
                        "a chunk of an unknown document, or with bad offsets",
                    ));
                }
                entry.0 = true;
            }
            4 => {
                let id = chunk_key(k)?;
                let Some(entry) = self.listed.get_mut(&id).filter(|e| e.0) else {
                    return Err(corrupt("a vector without its chunk"));
                };
                if v.len() != self.dimension * 4
                    || v.chunks_exact(4)
                        .any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                {
                    return Err(corrupt(format!(
                        "a vector is not {} finite numbers",
                        self.dimension
                    )));
                }
                entry.1 = true;
            }
            5 => {
                if k.starts_with(b"\x1f") {
                    return Ok(false); // Maintained counts: recounted after the restore.
                }
                if k.first() != Some(&0) {
                    let key = std::str::from_utf8(k).ok().filter(|s| !s.is_empty());
                    let type_ok = serde_json::from_slice::<crate::meta::ValueType>(v).is_ok();
                    let (Some(key), true) = (key, type_ok) else {
                        return Err(corrupt("a metadata key type record"));
                    };
                    self.metadata_keys.push(key.to_string());
                }
            }
            _ => return Err(corrupt(format!("record tag {tag}"))),
        }
        Ok(true)
    }

    /// Records come in tag order.
    pub(super) fn order(&mut self, tag: u8) -> Result<()> {
        if tag < self.last_tag {
            return Err(corrupt("records are out of order"));
        }
        self.last_tag = tag;
        Ok(())
    }

    pub(super) fn finish(&self) -> Result<()> {
        if let Some((id, _)) = self
            .listed
            .iter()
            .find(|(_, (chunk, vector))| !chunk || !vector)
        {
            return Err(corrupt(format!(
                "chunk {id} is listed by its document but missing, or has no vector"
            )));
        }
        Ok(())
    }
}
