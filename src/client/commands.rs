//! The client commands of the `quarry` binary (`ingest`, `search`, `ask`, `eval`): their
//! arguments and what they do. `main.rs` only parses and dispatches.
//!
//! Argument groups shared by several commands ([`ServerArg`], [`NewCollection`]) are flattened
//! into each, and search modes are the core [`Mode`] enum itself, so a mode's name is written
//! in one place.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::{eval, NewCollection, DEFAULT_SERVER};
use crate::grpc::{mode_to_pb, pb};
use crate::retrieve::Mode;

/// `--server URL`: the Quarry server a client command talks to.
#[derive(Args, Debug, Clone)]
pub struct ServerArg {
    /// Quarry server URL.
    #[arg(long, env = "QUARRY_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    #[command(flatten)]
    pub access: super::Access,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    #[command(flatten)]
    pub new_collection: NewCollection,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub selection: super::load::Selection,
    /// Files, directories or JSONL corpora (*.jsonl, *.ndjson, optionally .gz; BEIR's
    /// corpus.jsonl reads as is).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Some documents were not ingested (the exit code is 2, not 1).
#[derive(Debug)]
pub struct DocumentsFailed(pub u64);

impl std::fmt::Display for DocumentsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} documents were not ingested", self.0)
    }
}

impl std::error::Error for DocumentsFailed {}

/// How hybrid search fuses its two lists (the core `Fusion` without its parameters).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusionMethod {
    /// Min-max normalized scores mixed with weights.
    Weighted,
    /// Reciprocal rank fusion.
    Rrf,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    #[arg(long, default_value_t = 10)]
    pub top_k: u32,
    /// Fusion method (default: the server's, weighted 0.6/0.4).
    #[arg(long, value_enum)]
    pub fusion: Option<FusionMethod>,
    /// RRF constant k.
    #[arg(long)]
    pub rrf_k: Option<f32>,
    /// Weight of the lexical retriever (both fusions).
    #[arg(long)]
    pub lexical_weight: Option<f32>,
    /// Weight of the dense retriever (both fusions).
    #[arg(long)]
    pub dense_weight: Option<f32>,
    /// Extra BM25 weight for title matches (default none: titles are indexed with each chunk).
    #[arg(long)]
    pub title_boost: Option<f32>,
    /// Metadata filter KEY=VALUE on string keys (repeatable; all must match).
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    /// Filter expression, e.g. 'year >= 2020 AND lang IN ["en","de"] AND NOT draft = true'
    /// (see README, "Filters").
    #[arg(long = "where")]
    pub where_text: Option<String>,
    /// Hits to skip (pagination).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// List matching chunks, several per document if they match; by default each document
    /// appears once, with its best chunk.
    #[arg(long)]
    pub chunks: bool,
    /// Show each retriever's rank and score.
    #[arg(long)]
    pub explain: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    pub query: String,
}

#[derive(Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    /// JSON Schema file for the answer (default: answer text plus cited source numbers).
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Retrieval mode.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Chunks retrieved (before packing).
    #[arg(long, default_value_t = 8)]
    pub top_k: u32,
    /// Model name for the router (default: the router's).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Reject answers that cite sources that were not supplied.
    #[arg(long)]
    pub strict: bool,
    /// Filter expression, e.g. 'year >= 2020 AND lang IN ["en","de"] AND NOT draft = true'
    /// (see README, "Filters").
    #[arg(long = "where")]
    pub where_text: Option<String>,

    /// Print one JSON object: answer, citations, sources, timings.
    #[arg(long)]
    pub json: bool,
    pub question: String,
}

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// BEIR dataset directory: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv.
    #[arg(long, required_unless_present = "compare")]
    pub dataset: Option<PathBuf>,
    /// Compare two generations (collections) on the eval set attached to --collection (or to
    /// the collection it is an alias of): each run on both, B against A, query by query.
    #[arg(long, num_args = 2, value_names = ["GEN_A", "GEN_B"], conflicts_with = "dataset")]
    pub compare: Option<Vec<String>>,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Comma-separated runs: lexical, dense, hybrid (default fusion), hybrid-rrf:K,
    /// hybrid-weighted:LEXICAL_WEIGHT:DENSE_WEIGHT; append @title=W for a BM25 title boost.
    #[arg(long, value_delimiter = ',', default_value = crate::eval::run::DEFAULT_RUNS)]
    pub modes: Vec<String>,
    /// Output directory for summary.json, <run>.run, per_query.jsonl, report.md, report.html.
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Evaluate through a running server; default: an in-process server over --data-dir.
    #[arg(long, env = "QUARRY_SERVER")]
    pub server: Option<String>,
    /// Data directory of the in-process server (collections are reused across runs).
    #[arg(long, default_value = "quarry-eval-data")]
    pub data_dir: PathBuf,
    /// Collection to use (default: derived from the dataset and settings).
    #[arg(long)]
    pub collection: Option<String>,
    #[command(flatten)]
    pub new_collection: NewCollection,
    /// Documents ranked per query.
    #[arg(long, default_value_t = 100)]
    pub depth: u32,
    #[command(flatten)]
    pub access: super::Access,
    #[arg(long)]
    pub quiet: bool,
    /// Rank only documents passing this filter expression, e.g. 'year >= 2020 AND lang IN ["en","de"] AND NOT draft = true'
    /// (see README, "Filters").
    #[arg(long = "where")]
    pub where_text: Option<String>,
}

/// `quarry ingest`: streams local files to the server with a progress bar (reading ahead a
/// bounded amount), then prints the summary a job prints; exit code 2 if any document failed.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let reads = super::load::read_paths(&args.paths, &args.selection)?;
    let channel = super::connect(&args.server.server, &args.server.access).await?;
    super::ensure_collection(channel.clone(), &args.collection, &args.new_collection).await?;
    let report = super::ingest_reads(channel, &args.collection, reads, !args.quiet).await?;
    if report.documents == 0 {
        bail!(
            "no documents found under the given paths (directories: *.txt, *.md, *.markdown unless --include says otherwise)"
        );
    }
    println!("{}", report.summary());
    for (id, error) in report.rejected.iter().take(20) {
        eprintln!("failed {id:?}: {error}");
    }
    if report.rejected.len() > 20 {
        eprintln!("... and {} more", report.rejected.len() - 20);
    }
    if !report.rejected.is_empty() {
        return Err(DocumentsFailed(report.rejected.len() as u64).into());
    }
    Ok(())
}

/// The fusion a search asks for, from the CLI's flags (`None`: the server's default; unset
/// parameters also take the server's defaults).
fn fusion(args: &SearchArgs) -> anyhow::Result<Option<pb::Fusion>> {
    let method = match args.fusion {
        None if args.rrf_k.is_some() => bail!("--rrf-k needs --fusion rrf"),
        None if args.lexical_weight.is_some() || args.dense_weight.is_some() => {
            bail!("--lexical-weight/--dense-weight need --fusion rrf or --fusion weighted")
        }
        None => return Ok(None),
        Some(FusionMethod::Rrf) => pb::fusion::Method::Rrf(pb::RrfFusion {
            k: args.rrf_k,
            lexical_weight: args.lexical_weight,
            dense_weight: args.dense_weight,
        }),
        Some(FusionMethod::Weighted) if args.rrf_k.is_some() => {
            bail!("--rrf-k needs --fusion rrf")
        }
        Some(FusionMethod::Weighted) => pb::fusion::Method::Weighted(pb::WeightedFusion {
            lexical_weight: args.lexical_weight,
            dense_weight: args.dense_weight,
        }),
    };
    Ok(Some(pb::Fusion {
        method: Some(method),
    }))
}

/// `quarry search`.
pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let fusion = fusion(&args)?;
    let mut filter = std::collections::HashMap::new();
    for f in &args.filters {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("filter {f:?} is not KEY=VALUE"))?;
        filter.insert(k.to_string(), v.to_string());
    }
    let channel = super::connect(&args.server.server, &args.server.access).await?;
    let request = pb::SearchRequest {
        collection: args.collection,
        query: args.query,
        top_k: args.top_k,
        mode: mode_to_pb(args.mode) as i32,
        fusion,
        filter,
        explain: args.explain || args.json,
        group_by_document: !args.chunks,
        query_vector: Vec::new(),
        candidates: 0,
        title_boost: args.title_boost,
        r#where: None,
        where_text: args.where_text.unwrap_or_default(),
        offset: args.offset,
        page_token: String::new(),
    };
    let response = super::search(channel, request).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&super::response_json(&response))?
        );
    } else {
        super::print_response(&response, args.explain);
    }
    Ok(())
}

/// `quarry ask`.
pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let schema_json = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            text
        }
        None => String::new(),
    };
    let channel = super::connect(&args.server.server, &args.server.access).await?;
    let request = pb::AnswerRequest {
        collection: args.collection,
        question: args.question,
        top_k: args.top_k,
        mode: mode_to_pb(args.mode) as i32,
        fusion: None,
        filter: Default::default(),
        schema_json,
        model: args.model.unwrap_or_default(),
        max_tokens: args.max_tokens.unwrap_or(0),
        temperature: args.temperature,
        strict_citations: args.strict.then_some(true),
        r#where: None,
        where_text: args.where_text.unwrap_or_default(),
    };
    let response = super::ask(channel, request).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&super::answer_json(&response)?)?
        );
    } else {
        super::print_answer(&response);
    }
    Ok(())
}

/// `quarry eval`.
pub async fn evaluate(args: EvalCmd) -> anyhow::Result<()> {
    let out = args.out.clone();
    let compare = match args.compare {
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([a, b]) => Some((a, b)),
            Err(_) => bail!("--compare takes two collections"),
        },
        None => None,
    };
    let outcome = eval::run(eval::EvalArgs {
        dataset: args.dataset,
        compare,
        split: args.split,
        modes: args.modes,
        out: args.out,
        server: args.server,
        data_dir: args.data_dir,
        collection: args.collection,
        settings: args.new_collection,
        depth: args.depth,
        progress: !args.quiet,
        where_text: args.where_text.unwrap_or_default(),
        access: args.access,
    })
    .await?;
    eval::print_table(&outcome);
    eprintln!("reports written to {}", out.display());
    Ok(())
}
