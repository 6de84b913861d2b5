//! A re-index: a job whose source is another collection of this server (a generation), read
//! from what Quarry stores (each document's text, title, metadata and source), never from
//! the files it came from. The job's collection is the new generation, created beforehand
//! with the settings to try (another model, chunking, index parameters); the job embeds and
//! indexes every document again there.
//!
//! Why it runs in three phases:
//! 1. **Copy**, page by page in the source's listing order, each page written as one batch
//!    with the job's progress (the position of the next page) in the same transaction, so a
//!    resumed job goes on after the last page written, like an ingestion job.
//! 2. **Catch up**: the source keeps taking writes while the copy runs, and a copy in listing
//!    order misses what changed behind its position. A pass compares both generations by
//!    `(id, content hash)` (`engine/generations.rs`, which a promotion's last step uses too):
//!    it writes what differs and deletes from the new generation what the source no longer
//!    has. Passes repeat while they find differences (at most
//!    [`MAX_PASSES`]); each finds only what changed during the one before. Comparing states,
//!    not replaying a log, works on every backend (Qdrant keeps no operation log) and is
//!    idempotent, so a resumed job simply runs its passes again.
//! 3. **Fence and switch**: a last pass runs while the job holds the source's write lock, so
//!    nothing is written to the source meanwhile; then, if asked, the alias switches to the
//!    new generation before the lock is released. A write that resolved the alias to the old
//!    generation and waited for that lock is refused ABORTED (`Engine::write_via`); its retry
//!    goes to the new one. So no write acknowledged by the old generation is missing from the
//!    new one. The lock is this server's: another front end sharing a Qdrant cluster keeps
//!    writing to the old generation until it sees the switch (within 5 s), so there the
//!    switch is for a quiet moment (README, "Aliases").
//!
//! Counts: `seen` is the documents the copy read; `created`, `updated` and `unchanged` are
//! what the writes did (the catch-up's too); `deleted` is what the catch-up removed.

use std::collections::BTreeMap;

use super::{Batch, End, Run};
use crate::engine::batch_documents;
use crate::engine::generations::{generation_diff, GenerationDiff, HASH_PAGE};
use crate::error::{quote, Result};
use crate::jobs::Job;

/// Catch-up passes before the fenced one, at most.
pub const MAX_PASSES: usize = 8;

impl Run<'_> {
    /// Runs a re-index from `from` into the job's collection.
    pub(super) fn reindex(&mut self, job: &mut Job, from: &str) -> Result<End> {
        if let Some(end) = self.copy(job, from)? {
            return Ok(end);
        }
        for _ in 0..MAX_PASSES {
            match self.pass(job, from)? {
                None => return Ok(self.interrupted().unwrap_or(End::Stopped)),
                Some(0) => break,
                Some(_) => {}
            }
        }
        let engine = self.shared.engine.clone();
        let fence = self.shared.runtime.block_on(engine.write_fence(from))?;
        if self.pass(job, from)?.is_none() {
            return Ok(self.interrupted().unwrap_or(End::Stopped));
        }
        if let Some(alias) = &job.spec.switch_alias {
            let target = job.spec.collection.as_str();
            // Resumed after a switch whose end was not recorded: already done.
            if engine.alias_target(alias)?.as_deref() != Some(target) {
                engine.set_alias(alias, target, Some(from))?;
                tracing::info!(job = job.id, alias = %quote(alias), from = %quote(from), to = %quote(target), "re-index switched the alias");
            }
        }
        drop(fence);
        Ok(End::Done)
    }

    /// Phase 1: every document of `from`, a page per batch. `Some` when interrupted.
    fn copy(&mut self, job: &mut Job, from: &str) -> Result<Option<End>> {
        let engine = self.shared.engine.clone();
        let page = batch_documents(&engine);
        if job.items_total == 0 {
            job.items_total = engine.collection(from)?.info().document_count;
        }
        while !job.read_done {
            if let Some(end) = self.interrupted() {
                return Ok(Some(end));
            }
            let after = job.cursor.after_document.clone();
            let Some((listed, more)) =
                self.patiently(|| engine.document_hashes(from, after.as_deref(), page))?
            else {
                return Ok(Some(self.interrupted().unwrap_or(End::Stopped)));
            };
            let ids: Vec<String> = listed.into_iter().map(|(id, _)| id).collect();
            let mut next = job.clone();
            next.counts.seen += ids.len() as u64;
            next.cursor.after_document = more.clone();
            next.read_done = more.is_none();
            if !self.copy_documents(job, &mut next, from, &ids)? {
                return Ok(Some(self.interrupted().unwrap_or(End::Stopped)));
            }
        }
        Ok(None)
    }

    /// Writes the documents `ids` of `from` (those that still exist) to the job's collection
    /// as one batch, with `next` (the job once written). False when interrupted.
    fn copy_documents(
        &mut self,
        job: &mut Job,
        next: &mut Job,
        from: &str,
        ids: &[String],
    ) -> Result<bool> {
        let engine = self.shared.engine.clone();
        let target = job.spec.collection.clone();
        let Some((docs, _gone)) = self.patiently(|| engine.get_documents(from, ids, false))? else {
            return Ok(false);
        };
        let mut batch = Batch::default();
        for stored in docs {
            let doc = stored.input;
            let location = format!("{from}/{}", doc.id);
            match batch.docs.check(&engine, &target, &doc) {
                Ok(()) => batch.docs.push(location, doc),
                Err(e) => next.fail(&location, &doc.id, &e.to_string()),
            }
        }
        // Written (or its documents failed): `job` is `next` now. Otherwise interrupted.
        self.write(job, next, &mut batch, &target)?;
        Ok(*job == *next)
    }

    /// Phase 2: one comparison of both generations, writing what differs. The number of
    /// documents it wrote or deleted; None when interrupted.
    fn pass(&mut self, job: &mut Job, from: &str) -> Result<Option<u64>> {
        let target = job.spec.collection.clone();
        let (Some(source), Some(copy)) = (self.hashes(from)?, self.hashes(&target)?) else {
            return Ok(None);
        };
        let GenerationDiff { differ, gone } = generation_diff(&source, &copy);
        let page = batch_documents(&self.shared.engine);
        for ids in differ.chunks(page) {
            let mut next = job.clone();
            if self.interrupted().is_some() || !self.copy_documents(job, &mut next, from, ids)? {
                return Ok(None);
            }
        }
        for ids in gone.chunks(page) {
            if self.interrupted().is_some() || !self.delete(job, &target, ids)? {
                return Ok(None);
            }
        }
        if !differ.is_empty() || !gone.is_empty() {
            tracing::info!(
                job = job.id,
                written = differ.len(),
                deleted = gone.len(),
                "re-index caught up"
            );
        }
        Ok(Some((differ.len() + gone.len()) as u64))
    }

    /// Every document of `collection` as id -> content hash; None when interrupted.
    fn hashes(&self, collection: &str) -> Result<Option<BTreeMap<String, String>>> {
        let engine = &self.shared.engine;
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            if self.interrupted().is_some() {
                return Ok(None);
            }
            let Some((page, more)) =
                self.patiently(|| engine.document_hashes(collection, after.as_deref(), HASH_PAGE))?
            else {
                return Ok(None);
            };
            out.extend(page);
            match more {
                Some(m) => after = Some(m),
                None => return Ok(Some(out)),
            }
        }
    }
}
