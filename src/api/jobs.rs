//! Jobs in the API's messages: a job's wire form, and the source of a submission.

use super::pb;
use crate::jobs::{Job, JobState};
use crate::source::{FieldMapping, Format, SourceSpec};

pub fn state_to_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn state_from_pb(s: pb::JobState) -> Option<JobState> {
    Some(match s {
        pb::JobState::Unspecified => return None,
        pb::JobState::Queued => JobState::Queued,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
    })
}

pub fn source_from_pb(s: pb::IngestSource) -> SourceSpec {
    let format = match s.format() {
        pb::SourceFormat::Auto => Format::Auto,
        pb::SourceFormat::Files => Format::Files,
        pb::SourceFormat::Jsonl => Format::Jsonl,
    };
    let fields = s.fields.unwrap_or_default();
    SourceSpec {
        path: s.path.into(),
        format,
        include: s.include,
        exclude: s.exclude,
        fields: FieldMapping::with(&fields.id, &fields.title, &fields.text, &fields.metadata),
    }
}

pub fn job_to_pb(j: Job) -> pb::Job {
    let source = j.spec.source;
    pb::Job {
        id: j.id.to_string(),
        collection: j.spec.collection,
        state: state_to_pb(j.state) as i32,
        source: Some(pb::IngestSource {
            path: source.path.to_string_lossy().to_string(),
            format: match source.format {
                Format::Auto => pb::SourceFormat::Auto,
                Format::Files => pb::SourceFormat::Files,
                Format::Jsonl => pb::SourceFormat::Jsonl,
            } as i32,
            include: source.include,
            exclude: source.exclude,
            fields: Some(pb::FieldMapping {
                id: source.fields.id,
                title: source.fields.title,
                text: source.fields.text,
                metadata: source.fields.metadata,
            }),
            collection: j.spec.from_collection.unwrap_or_default(),
        }),
        switch_alias: j.spec.switch_alias.unwrap_or_default(),
        sync: j.spec.sync,
        counts: Some(pb::JobCounts {
            seen: j.counts.seen,
            created: j.counts.created,
            updated: j.counts.updated,
            unchanged: j.counts.unchanged,
            deleted: j.counts.deleted,
            failed: j.counts.failed,
            chunks: j.counts.chunks,
        }),
        failures: j
            .failures
            .into_iter()
            .map(|f| pb::JobFailure {
                location: f.location,
                document_id: f.document_id,
                reason: f.reason,
            })
            .collect(),
        failures_omitted: j.failures_omitted,
        error: j.error.unwrap_or_default(),
        submitted_unix_ms: j.submitted_unix_ms,
        started_unix_ms: j.started_unix_ms,
        finished_unix_ms: j.finished_unix_ms,
        bytes_done: j.bytes_done,
        bytes_total: j.bytes_total,
        items_total: j.items_total,
        resumed: j.resumed,
    }
}
