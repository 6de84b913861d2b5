//! `quarry jobs`: server-side ingestion jobs from the command line.
//!
//! Exit codes follow `quarry ingest`: for a finished job, 0 when every document went in, 2 when
//! some failed (they are listed), 1 when the job failed or was cancelled. `--json` prints the
//! job (or jobs) as JSON: `id`, `state`, `counts`, `failures`, and the rest of the record.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::commands::{DocumentsFailed, ServerArg};
use super::{counts_summary, NewCollection};
use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Submit an ingestion of PATH (read by the server, under its import roots).
    Submit(SubmitArgs),
    /// Re-index: build a new generation (--collection, created with the settings given) from
    /// the documents of --from, catch up with its writes, and optionally switch an alias.
    Reindex(ReindexArgs),
    /// Show one job.
    Status(IdArgs),
    /// List jobs, newest first.
    List(ListArgs),
    /// Cancel a job (a running one stops after the batch it is writing).
    Cancel(IdArgs),
    /// Follow a job with a progress bar until it ends.
    Watch(IdArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum FormatArg {
    Auto,
    Files,
    Jsonl,
}

/// What a submission does once the job is accepted.
#[derive(Args, Debug)]
pub struct FollowArgs {
    /// Follow the job until it ends (as `jobs watch`).
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bar of --wait.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    #[command(flatten)]
    pub new_collection: NewCollection,
    /// Also delete the collection's documents from this source that it no longer holds.
    #[arg(long)]
    pub sync: bool,
    #[command(flatten)]
    pub selection: super::load::Selection,
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// JSONL field holding the id (default _id).
    #[arg(long)]
    pub id_field: Option<String>,
    #[arg(long)]
    pub title_field: Option<String>,
    #[arg(long)]
    pub text_field: Option<String>,
    /// JSONL field holding a metadata object.
    #[arg(long)]
    pub metadata_field: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
    /// A path on the server; a relative one is made absolute against this directory.
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The collection (or alias) whose stored documents are indexed again.
    #[arg(long)]
    pub from: String,
    /// The new generation; created with the settings below when it does not exist.
    #[arg(long)]
    pub collection: String,
    #[command(flatten)]
    pub new_collection: NewCollection,
    /// Switch this alias (which points to --from) to the new generation at the end.
    #[arg(long)]
    pub switch_alias: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: Option<String>,
    /// queued, running, succeeded, failed or cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// Jobs to show at most.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

fn state_name(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// What a job reads: its path, or `collection:NAME` for a re-index.
fn source_name(j: &pb::Job) -> String {
    match &j.source {
        Some(s) if !s.collection.is_empty() => format!("collection:{}", s.collection),
        Some(s) => s.path.clone(),
        None => String::new(),
    }
}

/// A job as JSON.
pub fn job_json(j: &pb::Job) -> serde_json::Value {
    let c = j.counts.unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "collection": j.collection,
        "state": state_name(j.state),
        "source": source_name(j),
        "sync": j.sync,
        "switch_alias": j.switch_alias,
        "counts": {
            "seen": c.seen, "created": c.created, "updated": c.updated,
            "unchanged": c.unchanged, "deleted": c.deleted, "failed": c.failed,
            "chunks": c.chunks,
        },
        "failures": j.failures.iter().map(|f| serde_json::json!({
            "location": f.location, "document_id": f.document_id, "reason": f.reason,
        })).collect::<Vec<_>>(),
        "failures_omitted": j.failures_omitted,
        "error": j.error,
        "submitted_unix_ms": j.submitted_unix_ms,
        "started_unix_ms": j.started_unix_ms,
        "finished_unix_ms": j.finished_unix_ms,
        "bytes_done": j.bytes_done,
        "bytes_total": j.bytes_total,
        "resumed": j.resumed,
    })
}

fn seconds(j: &pb::Job) -> f64 {
    let end = if j.finished_unix_ms > 0 {
        j.finished_unix_ms
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    end.saturating_sub(j.started_unix_ms) as f64 / 1000.0
}

fn print_job(j: &pb::Job) {
    let source = source_name(j);
    println!(
        "job {} {}: collection {:?}, source {source}{}",
        j.id,
        state_name(j.state),
        j.collection,
        if j.sync { " (sync)" } else { "" }
    );
    if let Some(c) = &j.counts {
        println!("  {}", counts_summary(c, seconds(j)));
    }
    if !j.error.is_empty() {
        println!("  error: {}", j.error);
    }
    for f in &j.failures {
        let id = if f.document_id.is_empty() {
            String::new()
        } else {
            format!(" ({:?})", f.document_id)
        };
        println!("  failed {}{id}: {}", f.location, f.reason);
    }
    if j.failures_omitted > 0 {
        println!("  ... and {} more failures", j.failures_omitted);
    }
}

/// The exit a finished job calls for.
fn outcome(j: &pb::Job) -> anyhow::Result<()> {
    match pb::JobState::try_from(j.state) {
        Ok(pb::JobState::Failed) => bail!("job {} failed: {}", j.id, j.error),
        Ok(pb::JobState::Cancelled) => bail!("job {} was cancelled", j.id),
        Ok(pb::JobState::Succeeded) => {
            let failed = j.counts.as_ref().map_or(0, |c| c.failed);
            if failed > 0 {
                return Err(DocumentsFailed(failed).into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

type Client = pb::jobs_client::JobsClient<super::Conn>;

async fn client(server: &ServerArg) -> anyhow::Result<Client> {
    Ok(pb::jobs_client::JobsClient::new(
        super::connect(&server.server, &server.access).await?,
    ))
}

/// Runs a `quarry jobs` command.
pub async fn run(command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Submit(a) => submit(a).await,
        JobsCommand::Reindex(a) => reindex(a).await,
        JobsCommand::Status(a) => {
            let job = client(&a.server)
                .await?
                .get_job(pb::GetJobRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            show(&job, a.json)?;
            outcome(&job)
        }
        JobsCommand::List(a) => list(a).await,
        JobsCommand::Cancel(a) => {
            let job = client(&a.server)
                .await?
                .cancel_job(pb::CancelJobRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            show(&job, a.json)
        }
        JobsCommand::Watch(a) => {
            let mut c = client(&a.server).await?;
            let job = watch(&mut c, &a.id, !a.quiet && !a.json).await?;
            show(&job, a.json)?;
            outcome(&job)
        }
    }
}

fn show(job: &pb::Job, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&job_json(job))?);
    } else {
        print_job(job);
    }
    Ok(())
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let path = std::path::absolute(&a.path)?;
    let channel = super::connect(&a.server.server, &a.server.access).await?;
    super::ensure_collection(channel.clone(), &a.collection, &a.new_collection).await?;
    let mut c = pb::jobs_client::JobsClient::new(channel);
    let field = |f: Option<String>| f.unwrap_or_default();
    let job = c
        .submit_ingest(pb::SubmitIngestRequest {
            collection: a.collection.clone(),
            source: Some(pb::IngestSource {
                path: path.to_string_lossy().to_string(),
                format: match a.format {
                    FormatArg::Auto => pb::SourceFormat::Auto,
                    FormatArg::Files => pb::SourceFormat::Files,
                    FormatArg::Jsonl => pb::SourceFormat::Jsonl,
                } as i32,
                include: a.selection.include,
                exclude: a.selection.exclude,
                fields: Some(pb::FieldMapping {
                    id: field(a.id_field),
                    title: field(a.title_field),
                    text: field(a.text_field),
                    metadata: field(a.metadata_field),
                }),
                collection: String::new(),
            }),
            sync: a.sync,
            switch_alias: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    follow(&mut c, job, &a.follow).await
}

async fn reindex(a: ReindexArgs) -> anyhow::Result<()> {
    let channel = super::connect(&a.server.server, &a.server.access).await?;
    super::ensure_collection(channel.clone(), &a.collection, &a.new_collection).await?;
    let mut c = pb::jobs_client::JobsClient::new(channel);
    let job = c
        .submit_ingest(pb::SubmitIngestRequest {
            collection: a.collection.clone(),
            source: Some(pb::IngestSource {
                collection: a.from.clone(),
                ..Default::default()
            }),
            sync: true,
            switch_alias: a.switch_alias.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    follow(&mut c, job, &a.follow).await
}

/// After a submission: print the job, or follow it to its end with `wait`.
async fn follow(c: &mut Client, job: pb::Job, f: &FollowArgs) -> anyhow::Result<()> {
    let FollowArgs { wait, json, quiet } = *f;
    if !wait {
        if json {
            return show(&job, true);
        }
        println!("submitted job {} ({})", job.id, state_name(job.state));
        return Ok(());
    }
    if !json {
        eprintln!("submitted job {}", job.id);
    }
    let job = watch(c, &job.id, !quiet && !json).await?;
    show(&job, json)?;
    outcome(&job)
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let state = match a.state.as_deref() {
        None => pb::JobState::Unspecified,
        Some(s) => pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .ok_or_else(|| {
                anyhow!("unknown state {s:?}: queued, running, succeeded, failed or cancelled")
            })?,
    };
    let mut c = client(&a.server).await?;
    let mut jobs = Vec::new();
    let mut token = String::new();
    while jobs.len() < a.limit {
        let page = c
            .list_jobs(pb::ListJobsRequest {
                collection: a.collection.clone().unwrap_or_default(),
                state: state as i32,
                page_size: (a.limit - jobs.len()).min(1000) as u32,
                page_token: token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        jobs.extend(page.jobs);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if a.json {
        let all: Vec<_> = jobs.iter().map(job_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<10} {:<20} {:>9} {:>7}  SOURCE",
        "ID", "STATE", "COLLECTION", "SEEN", "FAILED"
    );
    for j in &jobs {
        let c = j.counts.unwrap_or_default();
        println!(
            "{:>8}  {:<10} {:<20} {:>9} {:>7}  {}",
            j.id,
            state_name(j.state),
            j.collection,
            c.seen,
            c.failed,
            source_name(j)
        );
    }
    Ok(())
}

/// Follows job `id` until it has finished; returns its last state.
async fn watch(c: &mut Client, id: &str, progress: bool) -> anyhow::Result<pb::Job> {
    let bar = if progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} job [{bar:40}] {percent}% {msg} eta {eta}")
                .map_err(|e| anyhow!("progress template: {e}"))?
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut stream = c
        .watch_job(pb::WatchJobRequest { id: id.to_string() })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = None;
    while let Some(job) = stream.message().await.map_err(status_error)? {
        let counts = job.counts.unwrap_or_default();
        bar.set_length(job.bytes_total.max(1));
        bar.set_position(job.bytes_done);
        let secs = seconds(&job).max(1e-9);
        bar.set_message(format!(
            "{} {} docs, {} chunks, {:.1} docs/s, {} failed",
            state_name(job.state),
            counts.seen,
            counts.chunks,
            counts.seen as f64 / secs,
            counts.failed
        ));
        last = Some(job);
    }
    bar.finish_and_clear();
    let job = last.ok_or_else(|| anyhow!("the server ended the watch without a job"))?;
    let finished = matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    );
    if !finished {
        bail!(
            "the server ended the watch before job {id} finished (a job resumes when its server restarts); see `quarry jobs status {id}`"
        );
    }
    Ok(job)
}
