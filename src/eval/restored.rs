//! The server records a snapshot archive carries with a collection (format 3: its eval sets,
//! its adopted and proposed search settings, its gate decisions), judged before a restore
//! writes them. An archive is hostile input, and these records are read later by code that
//! trusts them (every search reads the adopted settings, a promotion reads the eval sets), so
//! a record that would make those reads fail, or hold more than an upload may, is refused
//! now, with the archive, all or nothing (`engine/restore.rs`).
//!
//! What is checked, by group:
//! - `search`: only `adopted` and `proposed`, each settings a search could run with on this
//!   server (`Engine::check_settings`, so a `candidates` above this server's `max_top_k` is
//!   refused rather than failing every search later).
//! - `evalset` and its pieces: at most [`super::sets::MAX_SPLITS`] splits with valid names;
//!   each split's pieces present, each at most twice [`super::sets::PIECE_BYTES`], decoding to
//!   as many queries and judgments as its manifest says, and passing the upload's checks
//!   (`max_eval_queries`, `max_eval_judgments`, ids, texts). Pieces no manifest points to (a
//!   crash mid-upload left them on the source) are dropped, not refused.
//! - `gates`: decisions that decode, with valid collection names and at most
//!   [`super::gate::CHANGED_LISTED`] wins and losses; the newest
//!   [`super::gate::MAX_RECORDS`] are kept.
//! - Any other group: refused (a newer server's record this one cannot read; the archive
//!   format number says which server wrote it).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::gate::{GateRecord, CHANGED_LISTED, GATES, MAX_RECORDS};
use super::sets::{
    check, piece_items, pieces_group, valid_split_name, Manifest, Stored, MANIFESTS, MAX_SPLITS,
    PIECE_BYTES,
};
use crate::engine::{search_settings, valid_collection_name, CollectionInfo, Engine};
use crate::error::{quote, Error, Result};
use crate::store::OwnedRecord;

/// Largest gate decision record (a real one is a few KiB).
const MAX_GATE_BYTES: usize = 64 << 10;

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::invalid(what.to_string())
}

/// Restores a snapshot archive (`Engine::restore_snapshot`) with its server records judged
/// here: the one way every front end (the service, the offline CLI) restores.
pub fn restore(
    engine: &Engine,
    archive: &Path,
    only: Option<&str>,
    rename: Option<&str>,
    allow: &dyn Fn(&[&str]) -> Result<()>,
) -> Result<Vec<CollectionInfo>> {
    engine.restore_snapshot(archive, only, rename, allow, &|records| {
        check_records(engine, records)
    })
}

/// The records to keep of one restored collection, or INVALID_ARGUMENT naming what is wrong.
pub fn check_records(engine: &Engine, records: Vec<OwnedRecord>) -> Result<Vec<OwnedRecord>> {
    let mut by_group: BTreeMap<String, Vec<OwnedRecord>> = BTreeMap::new();
    for r in records {
        by_group.entry(r.group.clone()).or_default().push(r);
    }
    let mut keep = Vec::new();
    let manifests = by_group.remove(MANIFESTS).unwrap_or_default();
    keep.extend(check_splits(engine, manifests, &mut by_group)?);
    if let Some(settings) = by_group.remove(search_settings::GROUP) {
        for r in &settings {
            engine.check_settings_record(&r.item, &r.value)?;
        }
        keep.extend(settings);
    }
    if let Some(gates) = by_group.remove(GATES) {
        keep.extend(check_gates(gates)?);
    }
    // What is left: pieces no manifest points to (dropped), or a group this server does not
    // know (refused).
    if let Some(unknown) = by_group.keys().find(|g| !g.starts_with("evalpiece/")) {
        return Err(invalid(format!(
            "a server record of unknown kind {}",
            quote(unknown)
        )));
    }
    Ok(keep)
}

/// Each split's manifest and pieces, checked as an upload is; the pieces it uses are taken
/// out of `by_group`.
fn check_splits(
    engine: &Engine,
    manifests: Vec<OwnedRecord>,
    by_group: &mut BTreeMap<String, Vec<OwnedRecord>>,
) -> Result<Vec<OwnedRecord>> {
    if manifests.len() > MAX_SPLITS {
        return Err(invalid(format!(
            "{} eval splits, over the most a collection may hold ({MAX_SPLITS})",
            manifests.len()
        )));
    }
    let mut keep = Vec::new();
    for m in manifests {
        valid_split_name(&m.item)?;
        let bad = |what: &str| invalid(format!("eval split {}: {what}", quote(&m.item)));
        let manifest: Manifest =
            serde_json::from_str(&m.value).map_err(|_| bad("its manifest does not decode"))?;
        if manifest.pieces == 0 || manifest.pieces > manifest.queries.max(1) {
            return Err(bad("its manifest names an impossible number of pieces"));
        }
        let mut pieces: HashMap<String, OwnedRecord> = by_group
            .remove(&pieces_group(&m.item, manifest.upload))
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.item.clone(), r))
            .collect();
        let mut queries = Vec::new();
        let mut used = Vec::with_capacity(manifest.pieces);
        for item in piece_items(manifest.pieces) {
            let piece = pieces
                .remove(&item)
                .ok_or_else(|| bad("a piece is missing"))?;
            if piece.value.len() > 2 * PIECE_BYTES {
                return Err(bad("a piece is over the piece size"));
            }
            let stored: Vec<Stored> =
                serde_json::from_str(&piece.value).map_err(|_| bad("a piece does not decode"))?;
            queries.extend(stored.into_iter().map(super::run::EvalQuery::from));
            if queries.len() > engine.config().limits.max_eval_queries {
                return Err(bad("over the limit max_eval_queries"));
            }
            used.push(piece);
        }
        if !pieces.is_empty() {
            return Err(bad("it has pieces its manifest does not list"));
        }
        let judgments = check(engine, &queries)
            .map_err(|e| invalid(format!("eval split {}: {e}", quote(&m.item))))?;
        if queries.len() != manifest.queries || judgments != manifest.judgments {
            return Err(bad("its manifest's counts do not match its queries"));
        }
        keep.push(m);
        keep.extend(used);
    }
    Ok(keep)
}

/// Gate decisions that decode and name valid collections; the newest [`MAX_RECORDS`].
fn check_gates(mut gates: Vec<OwnedRecord>) -> Result<Vec<OwnedRecord>> {
    for g in &gates {
        let item_ok = g.item.len() <= 64
            && g.item
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !item_ok || g.value.len() > MAX_GATE_BYTES {
            return Err(invalid(format!(
                "gate decision {}: a bad key or over 64 KiB",
                quote(&g.item)
            )));
        }
        let r: GateRecord = serde_json::from_str(&g.value).map_err(|e| {
            invalid(format!(
                "gate decision {}: {}",
                quote(&g.item),
                quote(&e.to_string())
            ))
        })?;
        let name_ok = |n: &str| n.is_empty() || valid_collection_name(n).is_ok();
        let names_ok = [&r.alias, &r.baseline, &r.candidate, &r.split_owner]
            .iter()
            .all(|n| name_ok(n))
            && (r.split.is_empty() || valid_split_name(&r.split).is_ok());
        if !names_ok || r.wins.len() > CHANGED_LISTED || r.losses.len() > CHANGED_LISTED {
            return Err(invalid(format!(
                "gate decision {}: invalid names, or too many queries listed",
                quote(&g.item)
            )));
        }
    }
    // Items sort by the time of the decision: the last are the newest.
    gates.sort_by(|a, b| a.item.cmp(&b.item));
    let drop = gates.len().saturating_sub(MAX_RECORDS);
    Ok(gates.split_off(drop))
}

#[cfg(test)]
#[path = "restored_tests.rs"]
mod tests;
