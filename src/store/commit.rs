//! One write batch as one sled transaction: documents, texts, chunks, vectors, the schema's
//! new keys, the collection's counts and the operation log entry commit together or not at
//! all, so an acknowledged write is whole and the indexes can be caught up from the log.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{be, decode, vector_to_bytes, CollectionTrees, DocRecord, NewDocument, Op, SideWrites};
use crate::error::{Error, Result};
use crate::meta::Schema;

/// Key of a collection's document and chunk counts in its schema tree (U+001F cannot start a
/// metadata key: see `engine::validate`).
pub(super) const COUNTS: &[u8] = b"\x1fcounts";

pub(super) fn encode_counts((docs, chunks): (u64, u64)) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&docs.to_le_bytes());
    b[8..].copy_from_slice(&chunks.to_le_bytes());
    b
}

pub(super) fn decode_counts(b: &[u8]) -> Option<(u64, u64)> {
    let docs = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let chunks = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((docs, chunks))
}

impl CollectionTrees {
    /// Commits one operation: `upserts` replace their documents, `deletes` remove theirs,
    /// `new_keys` (keys first used by `upserts`) join the schema, and the counts follow, all in
    /// one transaction, logged under `seq`. Returns the logged operation. Not durable until the
    /// store is flushed.
    pub fn commit(
        &self,
        seq: u64,
        upserts: &[NewDocument],
        deletes: &[String],
        new_keys: &Schema,
        side: Option<&SideWrites>,
    ) -> Result<Op> {
        // Without side writes the side tree is the schema tree, written with nothing extra.
        let side_tree = side.map_or(&self.schema, |s| &s.tree);
        let trees = (
            &self.docs,
            &self.texts,
            &self.chunks,
            &self.vectors,
            &self.oplog,
            &self.schema,
            side_tree,
        );
        let op = trees.transaction(|(docs, texts, chunks, vectors, oplog, schema, extra)| {
            for (k, v) in side.map(|s| s.writes.as_slice()).unwrap_or_default() {
                match v {
                    Some(v) => extra.insert(k.as_slice(), v.as_slice())?,
                    None => extra.remove(k.as_slice())?,
                };
            }
            for (k, t) in new_keys {
                let value = serde_json::to_vec(t)
                    .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                schema.insert(k.as_bytes(), value)?;
            }
            let mut op = Op::default();
            let mut new_docs = 0i64;
            let remove_old =
                |id: &str,
                 docs: &TransactionalTree,
                 chunks: &TransactionalTree,
                 vectors: &TransactionalTree,
                 op: &mut Op|
                 -> std::result::Result<bool, ConflictableTransactionError<Error>> {
                    let Some(old) = docs.get(id.as_bytes())? else {
                        return Ok(false);
                    };
                    let old: DocRecord = decode(&old, "document record")
                        .map_err(ConflictableTransactionError::Abort)?;
                    for cid in old.chunk_ids {
                        chunks.remove(&be(cid))?;
                        vectors.remove(&be(cid))?;
                        op.remove.push(cid);
                    }
                    Ok(true)
                };
            for doc in upserts {
                if !remove_old(&doc.record.id, docs, chunks, vectors, &mut op)? {
                    new_docs += 1;
                }
                let value = serde_json::to_vec(&doc.record)
                    .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                docs.insert(doc.record.id.as_bytes(), value)?;
                texts.insert(doc.record.id.as_bytes(), doc.text.as_bytes())?;
                for (cid, chunk, vector) in &doc.chunks {
                    let value = serde_json::to_vec(chunk)
                        .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                    chunks.insert(&be(*cid), value)?;
                    vectors.insert(&be(*cid), vector_to_bytes(vector))?;
                    op.add.push(*cid);
                }
            }
            for id in deletes {
                if remove_old(id, docs, chunks, vectors, &mut op)? {
                    docs.remove(id.as_bytes())?;
                    texts.remove(id.as_bytes())?;
                    new_docs -= 1;
                }
            }
            // Without a record (never counted yet) the next `counts` call counts the trees.
            if let Some((d, c)) = schema.get(COUNTS)?.and_then(|v| decode_counts(&v)) {
                let d = d.saturating_add_signed(new_docs);
                let c = (c + op.add.len() as u64).saturating_sub(op.remove.len() as u64);
                schema.insert(COUNTS, encode_counts((d, c)).to_vec())?;
            }
            let value = serde_json::to_vec(&op)
                .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
            oplog.insert(&be(seq), value)?;
            Ok(op)
        })?;
        Ok(op)
    }
}
