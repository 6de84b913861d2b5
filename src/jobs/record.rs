//! A job as stored in sled, and the job tree's layout.
//!
//! One tree, `jobs`, in the engine's database (so a job's writes can join a collection's
//! commit transaction):
//! - `j` + job id (u64 BE) -> [`Job`] (JSON)
//! - `s` + job id (u64 BE) + document id -> the location that document came from: the ids a
//!   running job has seen, for duplicate detection and for `sync`; removed when it ends.

use serde::{Deserialize, Serialize};

use crate::error::{clip, Error, Result};
use crate::source::{Cursor, SourceSpec};
use crate::store::SideWrites;

/// Failures a job keeps in full; past this it counts them.
pub const MAX_FAILURES: usize = 100;
const MAX_REASON_BYTES: usize = 500;
const MAX_LOCATION_BYTES: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a job did to documents so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Items read from the source (documents and failures).
    pub seen: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Deleted by `sync`.
    pub deleted: u64,
    pub failed: u64,
    /// Chunks embedded and written.
    pub chunks: u64,
}

/// One document that could not be ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Path, or `file:line`.
    pub location: String,
    /// When known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub document_id: String,
    pub reason: String,
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub collection: String,
    /// `path` is canonical (resolved under an import root at submission).
    pub source: SourceSpec,
    pub sync: bool,
    /// A re-index: the job copies this collection (a generation, resolved at submission)
    /// instead of reading `source`, then catches up with the writes it took meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_collection: Option<String>,
    /// A re-index's last step: switch this alias from `from_collection` to `collection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_alias: Option<String>,
}

impl JobSpec {
    /// The collections the job touches: its own, and a re-index's source.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.collection.as_str()).chain(self.from_collection.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub spec: JobSpec,
    pub state: JobState,
    pub counts: JobCounts,
    pub failures: Vec<Failure>,
    /// Failures past [`MAX_FAILURES`], counted only.
    pub failures_omitted: u64,
    /// Why the job failed as a whole (the source could not be read, the storage failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub submitted_unix_ms: u64,
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub finished_unix_ms: u64,
    /// Where reading resumes.
    pub cursor: Cursor,
    /// Reading is done (only `sync` deletions, if any, remain).
    #[serde(default)]
    pub read_done: bool,
    /// Source bytes read and in all (compressed bytes for a gzipped file).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Items in the source when known in advance (a directory's files); 0 when unknown.
    #[serde(default)]
    pub items_total: u64,
    /// Times the job was resumed after the server stopped or crashed while it ran.
    #[serde(default)]
    pub resumed: u32,
}

impl Job {
    pub fn new(id: u64, spec: JobSpec, now_ms: u64) -> Job {
        Job {
            id,
            spec,
            state: JobState::Queued,
            counts: JobCounts::default(),
            failures: Vec::new(),
            failures_omitted: 0,
            error: None,
            submitted_unix_ms: now_ms,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            cursor: Cursor::default(),
            read_done: false,
            bytes_done: 0,
            bytes_total: 0,
            items_total: 0,
            resumed: 0,
        }
    }

    /// Records a document that could not be ingested.
    pub fn fail(&mut self, location: &str, document_id: &str, reason: &str) {
        self.counts.failed += 1;
        crate::metrics::global().job_documents.inc(&["failed"]);
        if self.failures.len() >= MAX_FAILURES {
            self.failures_omitted += 1;
            return;
        }
        self.failures.push(Failure {
            location: clip(location, MAX_LOCATION_BYTES).to_string(),
            document_id: clip(document_id, MAX_LOCATION_BYTES).to_string(),
            reason: clip(reason, MAX_REASON_BYTES).to_string(),
        });
    }
}

pub fn job_key(id: u64) -> Vec<u8> {
    let mut k = vec![b'j'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn seen_prefix(id: u64) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn seen_key(id: u64, doc: &str) -> Vec<u8> {
    let mut k = seen_prefix(id);
    k.extend_from_slice(doc.as_bytes());
    k
}

/// The job tree.
#[derive(Clone)]
pub struct JobStore {
    pub tree: sled::Tree,
}

impl JobStore {
    pub fn get(&self, id: u64) -> Result<Option<Job>> {
        self.tree
            .get(job_key(id))?
            .map(|v| {
                serde_json::from_slice(&v)
                    .map_err(|e| Error::internal(format!("corrupt job record: {e}")))
            })
            .transpose()
    }

    /// Every job, oldest first.
    pub fn all(&self) -> Result<Vec<Job>> {
        self.tree
            .scan_prefix([b'j'])
            .values()
            .map(|v| {
                let v = v?;
                serde_json::from_slice(&v)
                    .map_err(|e| Error::internal(format!("corrupt job record: {e}")))
            })
            .collect()
    }

    /// Jobs older than `before` (all when None), newest first, at most `limit`, that pass
    /// `keep`.
    pub fn page(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<(Vec<Job>, bool)> {
        let end = job_key(before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        let mut more = false;
        for kv in self.tree.range(job_key(0)..end).rev() {
            let (_, v) = kv?;
            let job: Job = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt job record: {e}")))?;
            if !keep(&job) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(job);
        }
        Ok((out, more))
    }

    /// The write of `job`'s record, to join a commit or go alone.
    pub fn record_write(job: &Job) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        Ok((job_key(job.id), Some(serde_json::to_vec(job)?)))
    }

    /// Writes `job` (and `more`) atomically; durable once the engine flushes.
    pub fn put(&self, job: &Job, more: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let mut writes = vec![Self::record_write(job)?];
        writes.extend(more);
        SideWrites {
            tree: self.tree.clone(),
            writes,
        }
        .apply()
    }

    /// Where `doc` was first seen by job `id`, if it was.
    pub fn seen(&self, id: u64, doc: &str) -> Result<Option<String>> {
        Ok(self
            .tree
            .get(seen_key(id, doc))?
            .map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Forgets the ids job `id` saw (it ended).
    pub fn clear_seen(&self, id: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in self.tree.scan_prefix(seen_prefix(id)).keys() {
            batch.remove(k?);
            n += 1;
            if n % 10_000 == 0 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Removes a finished job's record.
    pub fn remove(&self, id: u64) -> Result<()> {
        self.clear_seen(id)?;
        self.tree.remove(job_key(id))?;
        Ok(())
    }
}
