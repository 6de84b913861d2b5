//! A collection's search settings ([`SearchSettings`]: fusion, candidate depth and how a
//! document's chunks score it): what a
//! search, an answer's retrieval or an eval run uses when it does not name its own. They
//! change only through the eval gate (`eval/tune.rs`): a proposal is stored beside the
//! adopted settings, measured against them on an attached split, and adopted only if no
//! primary metric gets worse beyond its noise.
//!
//! Both are records of the collection (`records.rs`: group `search`, items `adopted` and
//! `proposed`), so they live where the collection lives and go with it. Searches read them
//! through a cache kept for [`RECHECK_AFTER`] (the bound within which front ends sharing a
//! Qdrant cluster see each other's changes, as for aliases); this server's own changes
//! replace its cache entry at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Collection, Engine};
use crate::error::{quote, Error, Result};
use crate::retrieve::{Fusion, SearchParams, SearchSettings};

/// How long a front end uses the settings it read before reading them again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// Largest RRF constant a setting may have (as a request's).
pub const MAX_RRF_K: f32 = 1_000_000.0;

/// The group of a collection's settings records.
pub const GROUP: &str = "search";
const ADOPTED: &str = "adopted";
const PROPOSED: &str = "proposed";

/// Settings by (collection name, collection id), with when they were read.
#[derive(Default)]
pub(super) struct Cache(Mutex<HashMap<(String, u64), (Instant, SearchSettings)>>);

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt search settings record: {e}"))
}

impl Engine {
    /// INVALID_ARGUMENT unless `s` is a setting a search could run with.
    pub fn check_settings(&self, s: &SearchSettings) -> Result<()> {
        let weights_ok = |l: f32, d: f32| l.is_finite() && d.is_finite() && l >= 0.0 && d >= 0.0;
        let ok = match s.fusion {
            Fusion::Weighted {
                lexical_weight,
                dense_weight,
            } => weights_ok(lexical_weight, dense_weight),
            Fusion::Rrf {
                k,
                lexical_weight,
                dense_weight,
            } => weights_ok(lexical_weight, dense_weight) && (0.0..=MAX_RRF_K).contains(&k),
        };
        if !ok {
            return Err(Error::invalid(
                "fusion weights must be finite and >= 0, and RRF k within 0..=1000000",
            ));
        }
        s.aggregation.check()?;
        if s.candidates > self.config.limits.max_top_k {
            return Err(Error::invalid(format!(
                "candidates {} is over the limit max_top_k = {}",
                s.candidates, self.config.limits.max_top_k
            )));
        }
        Ok(())
    }

    /// INVALID_ARGUMENT unless (`item`, `value`) is a settings record this server would
    /// search with (a restored archive's: `eval::restored`).
    pub fn check_settings_record(&self, item: &str, value: &str) -> Result<()> {
        if item != ADOPTED && item != PROPOSED {
            return Err(Error::invalid(format!(
                "unknown search settings record {}",
                quote(item)
            )));
        }
        let s: SearchSettings = serde_json::from_str(value).map_err(|e| {
            Error::invalid(format!(
                "search settings {}: {}",
                quote(item),
                quote(&e.to_string())
            ))
        })?;
        self.check_settings(&s)
    }

    /// The settings collection (or alias) `name` searches with. Blocking on a cache miss.
    pub fn search_settings(&self, name: &str) -> Result<SearchSettings> {
        let c = self.collection(name)?;
        self.settings_of(&c)
    }

    fn settings_of(&self, c: &Collection) -> Result<SearchSettings> {
        let key = (c.record.name.clone(), c.record.id);
        if let Ok(cache) = self.settings_cache.0.lock() {
            if let Some((read, s)) = cache.get(&key) {
                if read.elapsed() < RECHECK_AFTER {
                    return Ok(*s);
                }
            }
        }
        let s = self
            .record_get(&key.0, GROUP, ADOPTED)?
            .map(|v| serde_json::from_str(&v).map_err(corrupt))
            .transpose()?
            .unwrap_or_default();
        if let Ok(mut cache) = self.settings_cache.0.lock() {
            cache.insert(key, (Instant::now(), s));
        }
        Ok(s)
    }

    /// `p` with what it leaves open taken from the collection's settings.
    pub(super) fn with_settings(
        &self,
        c: &Collection,
        mut p: SearchParams,
    ) -> Result<SearchParams> {
        if p.fusion.is_none() || p.candidates == 0 || p.aggregation.is_none() {
            let s = self.settings_of(c)?;
            p.fusion.get_or_insert(s.fusion);
            p.aggregation.get_or_insert(s.aggregation);
            if p.candidates == 0 {
                p.candidates = s.candidates;
            }
        }
        Ok(p)
    }

    /// The settings proposed for collection (or alias) `name`, if any. Blocking.
    pub fn proposed_settings(&self, name: &str) -> Result<Option<SearchSettings>> {
        let c = self.collection(name)?;
        self.record_get(&c.record.name, GROUP, PROPOSED)?
            .map(|v| serde_json::from_str(&v).map_err(corrupt))
            .transpose()
    }

    /// Stores `s` as the proposal for collection (or alias) `name`, replacing any. Blocking.
    pub fn propose_settings(&self, name: &str, s: SearchSettings) -> Result<()> {
        self.check_settings(&s)?;
        let c = self.collection(name)?;
        let value = serde_json::to_string(&s).map_err(corrupt)?;
        self.record_put(&c.record.name, GROUP, PROPOSED, &value)
    }

    /// Makes `s` the settings of collection `collection` and drops the proposal. Only the
    /// gate calls this (`eval/tune.rs`). Blocking.
    pub fn adopt_settings_now(&self, collection: &str, s: SearchSettings) -> Result<()> {
        self.check_settings(&s)?;
        let c = self.collection(collection)?;
        if c.record.name != collection {
            return Err(Error::internal(format!(
                "settings are adopted by a collection, not through alias {}",
                quote(collection)
            )));
        }
        let value = serde_json::to_string(&s).map_err(corrupt)?;
        self.record_put(collection, GROUP, ADOPTED, &value)?;
        self.record_delete(collection, GROUP, &[PROPOSED.to_string()])?;
        if let Ok(mut cache) = self.settings_cache.0.lock() {
            cache.insert((c.record.name.clone(), c.record.id), (Instant::now(), s));
        }
        Ok(())
    }
}
