//! `quarry snapshot create|restore`: backups without re-embedding.
//!
//! `create` asks a running server for a consistent online snapshot and writes the streamed
//! archive to `--out` (through a `.partial` file renamed at the end, so a cut-off download
//! never looks complete). `restore` either opens a stopped server's data directory itself
//! (`--data-dir`, offline) or streams the archive to a running server (`--server`, into a name
//! that must be free).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot collections of a running server into a file.
    Create(CreateArgs),
    /// Restore a snapshot file: offline into a data directory, or online through a server.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: super::commands::ServerArg,
    /// A collection to include (repeatable).
    #[arg(long = "collection", required_unless_present = "all")]
    pub collections: Vec<String>,
    /// Every collection.
    #[arg(long, conflicts_with = "collections")]
    pub all: bool,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Restore offline into this data directory (no server may be running on it).
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Restore through this running server instead.
    #[arg(long, env = "QUARRY_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub access: super::Access,
    /// Only this collection of the snapshot.
    #[arg(long)]
    pub collection: Option<String>,
    /// Restore it under this name.
    #[arg(long = "as")]
    pub new_name: Option<String>,
    /// TOML config (models directory, limits) for an offline restore.
    #[arg(long, env = "QUARRY_CONFIG")]
    pub config: Option<PathBuf>,
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create(a) => create(a).await,
        SnapshotCommand::Restore(a) => restore(a).await,
    }
}

async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let channel = super::connect(&a.server.server, &a.server.access).await?;
    let mut client =
        pb::admin_client::AdminClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = client
        .create_snapshot(pb::CreateSnapshotRequest {
            collections: if a.all { Vec::new() } else { a.collections },
        })
        .await
        .map_err(status)?
        .into_inner();
    let partial = a.out.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut manifest = String::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(status)? {
        if !chunk.manifest_json.is_empty() {
            manifest = chunk.manifest_json;
        }
        bytes += chunk.data.len() as u64;
        file.write_all(&chunk.data).await?;
    }
    file.sync_all().await?;
    drop(file);
    if manifest.is_empty() {
        bail!("the server ended the snapshot without a manifest");
    }
    tokio::fs::rename(&partial, &a.out).await?;
    let m: crate::engine::SnapshotManifest = serde_json::from_str(&manifest)?;
    for c in &m.collections {
        eprintln!(
            "{}: {} documents, {} chunks at sequence {} (model {}, {})",
            c.record.name, c.documents, c.chunks, c.seq, c.record.model, c.model_fingerprint
        );
    }
    println!("wrote {} ({bytes} bytes)", a.out.display());
    Ok(())
}

async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let restored: Vec<(String, u64)> = match (&a.data_dir, &a.server) {
        (Some(dir), _) => {
            let mut config = crate::config::Config::load(a.config.as_deref())?;
            config.data_dir = dir.clone();
            let (file, only, rename) = (a.file.clone(), a.collection.clone(), a.new_name.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, u64)>> {
                let engine = config.open_engine().with_context(|| {
                    format!(
                        "cannot open {} (is a server running on it?)",
                        config.data_dir.display()
                    )
                })?;
                // Offline, the operator owns the data directory: no key applies.
                let infos = crate::eval::restored::restore(
                    &engine,
                    &file,
                    only.as_deref(),
                    rename.as_deref(),
                    &|_| Ok(()),
                )?;
                Ok(infos
                    .into_iter()
                    .map(|i| (i.record.name, i.document_count))
                    .collect())
            })
            .await??
        }
        (None, Some(server)) => {
            let channel = super::connect(server, &a.access).await?;
            let mut file = tokio::fs::File::open(&a.file)
                .await
                .with_context(|| format!("cannot open {}", a.file.display()))?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (only, rename) = (
                a.collection.clone().unwrap_or_default(),
                a.new_name.clone().unwrap_or_default(),
            );
            let reader = tokio::spawn(async move {
                let mut first = true;
                loop {
                    let mut buf = vec![0u8; 1 << 20];
                    let n = file.read(&mut buf).await?;
                    if n == 0 && !first {
                        return Ok::<_, std::io::Error>(());
                    }
                    buf.truncate(n);
                    let m = pb::RestoreSnapshotRequest {
                        collection: if first { only.clone() } else { String::new() },
                        new_name: if first { rename.clone() } else { String::new() },
                        data: buf,
                    };
                    first = false;
                    if tx.send(m).await.is_err() || n == 0 {
                        return Ok(());
                    }
                }
            });
            let reply = pb::admin_client::AdminClient::new(channel)
                .max_encoding_message_size(usize::MAX)
                .restore_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(status)?
                .into_inner();
            reader.await??;
            reply
                .collections
                .into_iter()
                .map(|c| (c.name, c.document_count))
                .collect()
        }
        (None, None) => bail!("say where to restore: --data-dir DIR (offline) or --server URL"),
    };
    for (name, docs) in restored {
        println!("restored {name}: {docs} documents");
    }
    Ok(())
}
