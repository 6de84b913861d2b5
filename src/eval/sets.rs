//! Eval sets attached to a collection or an alias: queries with their judgments, in named
//! splits (`train`, `dev`, `test`, ...), stored with the collection (`engine/records.rs`), so
//! an evaluation, a comparison of two generations and a promotion need no files on the
//! caller's side, and every front end on a shared backend uses the same judgments.
//!
//! An upload replaces one split as a whole and never leaves half of one: the queries are
//! written in pieces (at most [`PIECE_BYTES`] each, so no single record is large) under a fresh
//! upload id, then the split's manifest is pointed at them in one record write, then the
//! previous upload's pieces are removed. A reader follows the manifest, so it sees the old
//! split or the new one. A crash between steps leaves only unreferenced pieces.
//!
//! Limits: a split holds at most `max_eval_queries` queries and `max_eval_judgments`
//! judgments (the limits of one Evaluate request, which is what a split is run as), query
//! texts at most `max_query_bytes`, ids at most `max_id_bytes`; split names are 1-32
//! characters of `[A-Za-z0-9_-]`.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::run::EvalQuery;
use crate::engine::Engine;
use crate::error::{quote, Error, Result};

/// Largest piece of a split, serialized.
pub const PIECE_BYTES: usize = 512 * 1024;

/// Most splits one collection or alias may hold.
pub const MAX_SPLITS: usize = 16;

/// One split, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// The collection or alias the split is attached to.
    pub owner: String,
    pub split: String,
    pub queries: usize,
    pub judgments: usize,
    pub uploaded_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) queries: usize,
    pub(super) judgments: usize,
    pub(super) pieces: usize,
    pub(super) upload: u64,
    pub(super) uploaded_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) id: String,
    pub(super) text: String,
    pub(super) judgments: BTreeMap<String, i32>,
}

impl From<Stored> for EvalQuery {
    fn from(s: Stored) -> Self {
        EvalQuery {
            id: s.id,
            text: s.text,
            judgments: s.judgments.into_iter().collect(),
        }
    }
}

/// Uploads to one process's eval sets happen one at a time (a replaced split's pieces are
/// removed by the upload that replaced them, and by no other).
static UPLOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The group of a split's manifests (item: the split's name).
pub(super) const MANIFESTS: &str = "evalset";

/// The group of one upload's pieces (items: `00000`, `00001`, ...).
pub(super) fn pieces_group(split: &str, upload: u64) -> String {
    format!("evalpiece/{split}/{upload:016x}")
}

pub(super) fn piece_items(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:05}")).collect()
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt eval set record: {e}"))
}

/// INVALID_ARGUMENT unless `split` is 1-32 characters of `[A-Za-z0-9_-]`.
pub fn valid_split_name(split: &str) -> Result<()> {
    if split.is_empty()
        || split.len() > 32
        || !split
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid(format!(
            "invalid split name {}: use 1-32 characters of [A-Za-z0-9_-]",
            quote(split)
        )));
    }
    Ok(())
}

/// INVALID_ARGUMENT unless `queries` may be a split (the upload's checks, and a restore's);
/// returns the number of judgments.
pub(super) fn check(engine: &Engine, queries: &[EvalQuery]) -> Result<usize> {
    let limits = &engine.config().limits;
    if queries.is_empty() {
        return Err(Error::invalid("the split has no queries"));
    }
    let judgments = super::run::check_size(limits, queries)?;
    let mut seen = HashSet::new();
    for q in queries {
        if q.id.is_empty() || q.id.len() > limits.max_id_bytes {
            return Err(Error::invalid(format!(
                "query id {} must be 1-{} bytes",
                quote(&q.id),
                limits.max_id_bytes
            )));
        }
        if !seen.insert(q.id.as_str()) {
            return Err(Error::invalid(format!(
                "query {} appears twice",
                quote(&q.id)
            )));
        }
        if q.text.trim().is_empty() || q.text.len() > limits.max_query_bytes {
            return Err(Error::invalid(format!(
                "query {}: the text must be 1-{} bytes (max_query_bytes)",
                quote(&q.id),
                limits.max_query_bytes
            )));
        }
        if let Some(d) = q
            .judgments
            .keys()
            .find(|d| d.is_empty() || d.len() > limits.max_id_bytes)
        {
            return Err(Error::invalid(format!(
                "query {}: judged document id {} must be 1-{} bytes",
                quote(&q.id),
                quote(d),
                limits.max_id_bytes
            )));
        }
    }
    if !queries.iter().any(|q| q.judgments.values().any(|&g| g > 0)) {
        return Err(Error::invalid(
            "no query has a relevant judgment (grade > 0): nothing could be measured",
        ));
    }
    Ok(judgments)
}

fn manifest(engine: &Engine, name: &str, split: &str) -> Result<Option<Manifest>> {
    engine
        .record_get(name, MANIFESTS, split)?
        .map(|v| serde_json::from_str(&v).map_err(corrupt))
        .transpose()
}

impl Engine {
    /// Attaches `queries` as `split` of the collection or alias `name`, replacing the split
    /// if it exists (see the module docs). Blocking.
    pub fn put_eval_split(
        &self,
        name: &str,
        split: &str,
        queries: Vec<EvalQuery>,
    ) -> Result<SplitInfo> {
        valid_split_name(split)?;
        self.collection(name)?;
        let judgments = check(self, &queries)?;
        let _one = UPLOADS
            .lock()
            .map_err(|_| Error::internal("eval set lock poisoned"))?;
        let previous = manifest(self, name, split)?;
        if previous.is_none() && self.record_list(name, MANIFESTS)?.len() >= MAX_SPLITS {
            return Err(Error::invalid(format!(
                "{} has {MAX_SPLITS} splits already, the most it may hold: delete one first",
                quote(name)
            )));
        }
        let upload = rand::random::<u64>();
        let pieces_at = pieces_group(split, upload);
        let mut pieces = 0;
        let mut piece: Vec<Stored> = Vec::new();
        let mut bytes = 0;
        let count = queries.len();
        for q in queries {
            let stored = Stored {
                id: q.id,
                text: q.text,
                judgments: q.judgments.into_iter().collect(),
            };
            let size = serde_json::to_string(&stored).map_err(corrupt)?.len();
            if !piece.is_empty() && bytes + size > PIECE_BYTES {
                let value = serde_json::to_string(&piece).map_err(corrupt)?;
                self.record_put(name, &pieces_at, &piece_items(pieces + 1)[pieces], &value)?;
                pieces += 1;
                piece.clear();
                bytes = 0;
            }
            bytes += size;
            piece.push(stored);
        }
        let value = serde_json::to_string(&piece).map_err(corrupt)?;
        self.record_put(name, &pieces_at, &piece_items(pieces + 1)[pieces], &value)?;
        pieces += 1;
        let m = Manifest {
            queries: count,
            judgments,
            pieces,
            upload,
            uploaded_unix_ms: crate::engine::now_ms(),
        };
        let value = serde_json::to_string(&m).map_err(corrupt)?;
        self.record_put(name, MANIFESTS, split, &value)?;
        if let Some(old) = previous {
            let at = pieces_group(split, old.upload);
            if let Err(e) = self.record_delete(name, &at, &piece_items(old.pieces)) {
                tracing::warn!(error = %e, "could not remove a replaced eval split's pieces");
            }
        }
        Ok(SplitInfo {
            owner: name.to_string(),
            split: split.to_string(),
            queries: m.queries,
            judgments: m.judgments,
            uploaded_unix_ms: m.uploaded_unix_ms,
        })
    }

    /// The splits attached to `name` itself (not to the collection an alias points to).
    /// Blocking.
    pub fn eval_splits(&self, name: &str) -> Result<Vec<SplitInfo>> {
        self.collection(name)?;
        self.record_list(name, MANIFESTS)?
            .into_iter()
            .map(|(split, v)| {
                let m: Manifest = serde_json::from_str(&v).map_err(corrupt)?;
                Ok(SplitInfo {
                    owner: name.to_string(),
                    split,
                    queries: m.queries,
                    judgments: m.judgments,
                    uploaded_unix_ms: m.uploaded_unix_ms,
                })
            })
            .collect()
    }

    /// The queries of `split` attached to `name`, or else to the collection `name` is an
    /// alias of; NOT_FOUND naming the splits there are. Blocking.
    pub fn eval_split(&self, name: &str, split: &str) -> Result<(SplitInfo, Vec<EvalQuery>)> {
        valid_split_name(split)?;
        let mut owners = vec![name.to_string()];
        if let Some(target) = self.alias_target(name)? {
            owners.push(target);
        }
        for owner in &owners {
            // A concurrent upload may replace the split between the manifest and its pieces.
            for _ in 0..3 {
                let Some(m) = manifest(self, owner, split)? else {
                    break;
                };
                if let Some(queries) = self.read_pieces(owner, split, &m)? {
                    let info = SplitInfo {
                        owner: owner.clone(),
                        split: split.to_string(),
                        queries: m.queries,
                        judgments: m.judgments,
                        uploaded_unix_ms: m.uploaded_unix_ms,
                    };
                    return Ok((info, queries));
                }
            }
        }
        let mut known: Vec<String> = Vec::new();
        for owner in &owners {
            known.extend(self.eval_splits(owner)?.into_iter().map(|s| s.split));
        }
        Err(Error::NotFound(format!(
            "no eval split {} is attached to {}{}",
            quote(split),
            quote(name),
            if known.is_empty() {
                ": upload one first (quarry evalset upload)".to_string()
            } else {
                format!("; it has: {}", known.join(", "))
            }
        )))
    }

    fn read_pieces(
        &self,
        owner: &str,
        split: &str,
        m: &Manifest,
    ) -> Result<Option<Vec<EvalQuery>>> {
        let at = pieces_group(split, m.upload);
        let mut out = Vec::with_capacity(m.queries);
        for item in piece_items(m.pieces) {
            let Some(v) = self.record_get(owner, &at, &item)? else {
                return Ok(None);
            };
            let piece: Vec<Stored> = serde_json::from_str(&v).map_err(corrupt)?;
            out.extend(piece.into_iter().map(EvalQuery::from));
        }
        Ok(Some(out))
    }

    /// Removes `split` from `name`; NOT_FOUND when there is none. Blocking.
    pub fn delete_eval_split(&self, name: &str, split: &str) -> Result<()> {
        valid_split_name(split)?;
        self.collection(name)?;
        let _one = UPLOADS
            .lock()
            .map_err(|_| Error::internal("eval set lock poisoned"))?;
        if manifest(self, name, split)?.is_none() {
            return Err(Error::NotFound(format!(
                "no eval split {} is attached to {}",
                quote(split),
                quote(name)
            )));
        }
        drop_split(self, name, split)
    }
}

/// Removes a split's manifest, then its pieces. Blocking.
fn drop_split(engine: &Engine, name: &str, split: &str) -> Result<()> {
    let Some(m) = manifest(engine, name, split)? else {
        return Ok(());
    };
    engine.record_delete(name, MANIFESTS, &[split.to_string()])?;
    engine.record_delete(name, &pieces_group(split, m.upload), &piece_items(m.pieces))
}

#[cfg(test)]
#[path = "sets_tests.rs"]
pub(super) mod tests;
