//! `quarry eval`: evaluate retrieval on a BEIR-format collection, or compare two generations
//! of a collection on the eval set attached to it (`--compare A B`).
//!
//! With a dataset it ingests the corpus into a collection (unchanged documents are skipped by content hash, so an
//! already-ingested collection is reused as it is), sends the split's queries and judgments to
//! the Eval RPC, and writes the reports (`eval::report`). Without `--server` it runs an
//! in-process server on a loopback port over `--data-dir`, so no separate `quarry serve` is
//! needed. With `--compare` nothing is ingested: each run goes to both generations and the
//! report compares them query by query (`eval::compare`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{self, NewCollection};
use crate::eval::beir::Dataset;
use crate::eval::report::{self, Context};
use crate::eval::run::{EvalOutcome, RunSpec};
use crate::grpc::{self, pb};

#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// The BEIR directory to ingest and evaluate; `None` with `compare`.
    pub dataset: Option<PathBuf>,
    /// Two generations to compare on the eval set attached to `collection`.
    pub compare: Option<(String, String)>,
    pub split: String,
    /// Run specs (see `RunSpec::parse`).
    pub modes: Vec<String>,
    pub out: PathBuf,
    /// Evaluate through this server; `None`: an in-process server over `data_dir`.
    pub server: Option<String>,
    pub data_dir: PathBuf,
    pub collection: Option<String>,
    pub settings: NewCollection,
    pub depth: u32,
    pub progress: bool,
    /// Filter expression applied to every run ("" for none).
    pub where_text: String,
    /// The API key for `server`.
    pub access: client::Access,
}

fn bar(total: u64, what: &str, show: bool) -> anyhow::Result<ProgressBar> {
    if !show {
        return Ok(ProgressBar::hidden());
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .map_err(|e| anyhow!("progress template: {e}"))?
        .progress_chars("=> "),
    );
    Ok(b)
}

/// A collection name derived from the dataset and settings, so different settings never
/// share a collection.
pub fn collection_name(dataset: &Path, settings: &NewCollection) -> String {
    let base = dataset
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "dataset".into());
    let mut name = format!("eval-{base}");
    if let Some(m) = &settings.model {
        name.push('-');
        name.push_str(m.rsplit('/').next().unwrap_or(m));
    }
    if let Some(t) = settings.chunk_tokens {
        name.push_str(&format!("-t{t}"));
    }
    if let Some(o) = settings.chunk_overlap {
        name.push_str(&format!("-o{o}"));
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// A run on the wire (`collection` empty: the request's).
pub(crate) fn run_pb(s: &RunSpec, where_text: &str, collection: &str) -> pb::EvalRunSpec {
    pb::EvalRunSpec {
        name: s.name.clone(),
        mode: grpc::mode_to_pb(s.mode) as i32,
        fusion: s.fusion.map(grpc::fusion_to_pb),
        title_boost: Some(s.title_boost),
        where_text: where_text.to_string(),
        collection: collection.to_string(),
        candidates: s.candidates.map(|n| n as u32),
        sum_decay: s.aggregation.map(|a| a.sum_decay()),
    }
}

/// The request of a dataset evaluation: the corpus ingested into the collection (created if
/// needed), the split's judged queries sent with the request.
async fn dataset_request(
    args: &EvalArgs,
    dataset_dir: &Path,
    channel: client::Conn,
    specs: &[RunSpec],
) -> anyhow::Result<(pb::EvalRequest, Context)> {
    let dataset = Dataset::open(dataset_dir)?;
    let queries = dataset.queries()?;
    let qrels = dataset.qrels(&args.split)?;
    let eval_queries: Vec<pb::EvalQuery> = crate::eval::beir::join(&queries, &qrels)
        .with_context(|| format!("qrels/{}.tsv against queries.jsonl", args.split))?
        .into_iter()
        .map(|q| pb::EvalQuery {
            id: q.id,
            text: q.text,
            judgments: q.judgments,
        })
        .collect();
    if eval_queries.is_empty() {
        bail!("qrels/{}.tsv has no judgments", args.split);
    }
    let collection = args
        .collection
        .clone()
        .unwrap_or_else(|| collection_name(dataset_dir, &args.settings));
    client::ensure_collection(channel.clone(), &collection, &args.settings).await?;
    let docs = client::load::load_jsonl(&dataset.corpus_path()?)?;
    let report = client::ingest(channel.clone(), &collection, docs, args.progress).await?;
    eprintln!(
        "corpus: {} documents ({} re-indexed) in {:.1} s",
        report.documents,
        report.documents - report.by_status.get("unchanged").copied().unwrap_or(0),
        report.seconds
    );
    let request = pb::EvalRequest {
        collection: collection.clone(),
        queries: eval_queries,
        runs: specs
            .iter()
            .map(|s| run_pb(s, &args.where_text, ""))
            .collect(),
        depth: args.depth,
        // Every run after the first against the first, as the report compares them.
        compare: Vec::new(),
        split: String::new(),
    };
    let ctx = Context {
        dataset: dataset_dir.display().to_string(),
        split: args.split.clone(),
        collection,
        model: String::new(),
        queries: queries.into_iter().collect::<HashMap<_, _>>(),
    };
    Ok((request, ctx))
}

/// The request of `--compare A B`: the split of the eval set attached to the collection (or
/// alias), each run on both generations, each pair compared (B against A).
fn compare_request(
    args: &EvalArgs,
    (a, b): &(String, String),
    specs: &[RunSpec],
) -> anyhow::Result<(pb::EvalRequest, Context)> {
    let collection = args.collection.clone().ok_or_else(|| {
        anyhow!("--compare needs --collection (the collection or alias whose eval set is used)")
    })?;
    let mut runs = Vec::new();
    let mut compare = Vec::new();
    for s in specs {
        let name = |generation: &str| format!("{generation}/{}", s.name);
        for generation in [a, b] {
            let mut run = run_pb(s, &args.where_text, generation);
            run.name = name(generation);
            runs.push(run);
        }
        compare.push(pb::EvalComparePair {
            baseline: name(a),
            candidate: name(b),
        });
    }
    let request = pb::EvalRequest {
        collection: collection.clone(),
        queries: Vec::new(),
        runs,
        depth: args.depth,
        compare,
        split: args.split.clone(),
    };
    let ctx = Context {
        dataset: format!("eval set attached to {collection}"),
        split: args.split.clone(),
        collection,
        model: String::new(),
        queries: HashMap::new(),
    };
    Ok((request, ctx))
}

/// Runs the evaluation and writes the reports; returns the outcome.
pub async fn run(args: EvalArgs) -> anyhow::Result<EvalOutcome> {
    let modes = if args.modes.is_empty() {
        crate::eval::run::DEFAULT_RUNS
            .split(',')
            .map(str::to_string)
            .collect()
    } else {
        args.modes.clone()
    };
    let specs: Vec<RunSpec> = modes
        .iter()
        .map(|m| RunSpec::parse(m))
        .collect::<Result<_, _>>()?;

    // A server to talk to: the given one, or our own on a loopback port.
    let local = match &args.server {
        Some(_) => None,
        None => {
            let mut config = crate::config::Config::load(None)?;
            config.data_dir = args.data_dir.clone();
            config.listen = "127.0.0.1:0".into();
            let engine = tokio::task::spawn_blocking(move || config.open_engine()).await??;
            Some(
                crate::server::LocalServer::start(
                    std::sync::Arc::new(engine),
                    Default::default(),
                    Default::default(),
                )
                .await?,
            )
        }
    };
    let url = match (&args.server, &local) {
        (Some(url), _) => url.clone(),
        (None, Some(l)) => l.url.clone(),
        (None, None) => unreachable!("a local server was started"),
    };
    let channel = client::connect(&url, &args.access).await?;
    let (request, mut ctx) = match (&args.compare, &args.dataset) {
        (Some(pair), _) => compare_request(&args, pair, &specs)?,
        (None, Some(dir)) => dataset_request(&args, dir, channel.clone(), &specs).await?,
        (None, None) => bail!("give --dataset DIR, or --collection X --compare A B"),
    };
    let info = pb::collections_client::CollectionsClient::new(channel.clone())
        .get_collection(pb::GetCollectionRequest {
            name: ctx.collection.clone(),
        })
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
    ctx.model = info.config.map(|c| c.embedding_model).unwrap_or_default();
    let mut client = pb::eval_client::EvalClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut stream = client
        .evaluate(request)
        .await
        .map_err(|s| anyhow!("eval failed ({:?}): {}", s.code(), s.message()))?
        .into_inner();
    let progress = bar(0, "querying", args.progress)?;
    let mut result = None;
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| anyhow!("eval failed ({:?}): {}", s.code(), s.message()))?
    {
        if let Some(r) = message.result {
            result = Some(r);
        } else {
            progress.set_length(message.total as u64);
            progress.set_position(message.done as u64);
        }
    }
    progress.finish_and_clear();
    let result = result.ok_or_else(|| anyhow!("the server ended the eval without a result"))?;
    let outcome = grpc::eval_outcome(result)?;
    report::write_all(&args.out, &ctx, &outcome)
        .with_context(|| format!("cannot write reports to {}", args.out.display()))?;
    if let Some(l) = local {
        l.stop().await?;
    }
    Ok(outcome)
}

/// The summary table printed at the end of `quarry eval`.
/// The summary table (the same columns as report.md), aligned for a terminal.
pub fn print_table(outcome: &EvalOutcome) {
    let rows = report::summary_rows(outcome);
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([report::SUMMARY_COLUMNS[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..report::SUMMARY_COLUMNS.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(report::SUMMARY_COLUMNS.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    // Each run against the first, query by query (see `eval::compare`).
    for c in report::comparisons(outcome) {
        let verdict = crate::eval::compare::Gate::default().judge(&c);
        println!(
            "\n{} against {} ({} paired queries; difference [95% interval], p, wins/losses/ties): gate {}",
            c.b,
            c.a,
            c.queries,
            if verdict.holds { "holds" } else { "refuses" }
        );
        for l in report::comparison_lines(&c) {
            println!("  {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_valid_and_distinct() {
        let a = collection_name(Path::new("/x/scifact"), &NewCollection::default());
        assert_eq!(a, "eval-scifact");
        let b = collection_name(
            Path::new("/x/scifact"),
            &NewCollection {
                model: Some("/models/my model".into()),
                chunk_tokens: Some(128),
                chunk_overlap: Some(0),
            },
        );
        assert_eq!(b, "eval-scifact-my_model-t128-o0");
    }
}
