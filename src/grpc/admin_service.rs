//! The Admin service: snapshots over the wire. Archives are spooled through a scratch
//! directory in the data directory (`snapshots-tmp/`), never held in memory: a snapshot is
//! written there and streamed out in 1 MiB messages; an upload is written there (up to
//! `limits.max_snapshot_upload_bytes`) and restored from it. The scratch files go when the
//! call ends, however it ends.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{authorize, principal};
use super::convert;
use super::pb;
use super::status::to_status;
use crate::engine::Engine;
use crate::service::{Touches, ADMIN};

/// Bytes per SnapshotChunk.
const CHUNK: usize = 1 << 20;

pub struct AdminService {
    live: Arc<super::Live>,
    /// Restores run one at a time (each checks its target name is free, then takes it).
    restoring: tokio::sync::Mutex<()>,
}

impl AdminService {
    pub fn new(live: Arc<super::Live>) -> Self {
        AdminService {
            live,
            restoring: tokio::sync::Mutex::new(()),
        }
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.live.engine().map_err(to_status)
    }

    fn scratch(&self, what: &str) -> Result<Scratch, Status> {
        let dir = self.engine()?.config().data_dir.join("snapshots-tmp");
        std::fs::create_dir_all(&dir).map_err(|e| to_status(e.into()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Scratch(dir.join(format!("{what}-{nanos}.tar"))))
    }
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    type CreateSnapshotStream = ChunkStream;

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<Self::CreateSnapshotStream>, Status> {
        let names = request.get_ref().collections.clone();
        let named: Vec<&str> = names.iter().map(String::as_str).collect();
        let touches = match named.is_empty() {
            true => Touches::All,
            false => Touches::Named(&named),
        };
        authorize(&request, ADMIN, "CreateSnapshot", touches)?;
        let scratch = self.scratch("create")?;
        let manifest = self
            .engine()?
            .create_snapshot(&names, &scratch.0)
            .await
            .map_err(to_status)?;
        let manifest_json =
            serde_json::to_string(&manifest).map_err(|e| Status::internal(e.to_string()))?;
        let mut file = tokio::fs::File::open(&scratch.0)
            .await
            .map_err(|e| to_status(e.into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _scratch = scratch;
            let mut first = Some(manifest_json);
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e.into()))).await;
                        return;
                    }
                };
                if n == 0 && first.is_none() {
                    return;
                }
                buf.truncate(n);
                let chunk = pb::SnapshotChunk {
                    data: buf,
                    manifest_json: first.take().unwrap_or_default(),
                };
                // The caller went away: stop reading (the scratch file goes with this task).
                if tx.send(Ok(chunk)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn restore_snapshot(
        &self,
        request: Request<Streaming<pb::RestoreSnapshotRequest>>,
    ) -> Result<Response<pb::RestoreSnapshotResponse>, Status> {
        // The right was checked before admission; the collections the archive restores are
        // checked once its manifest is read, before anything is written.
        let who = principal(&request)?.clone();
        let op = crate::service::row(ADMIN, "RestoreSnapshot").map_err(to_status)?;
        let engine = self.engine()?;
        // Refused at the watermark before a byte is spooled, and again as the upload grows.
        engine.check_free_disk().map_err(to_status)?;
        let max = engine.config().limits.max_snapshot_upload_bytes;
        drop(engine);
        let mut stream = request.into_inner();
        let scratch = self.scratch("restore")?;
        let mut file = tokio::fs::File::create(&scratch.0)
            .await
            .map_err(|e| to_status(e.into()))?;
        let mut target: Option<(String, String)> = None;
        let mut size = 0u64;
        let idle = std::time::Duration::from_secs(self.engine()?.config().limits.stream_idle_secs);
        loop {
            let next = tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded("the upload stalled"))?;
            let Some(m) = next? else { break };
            if target.is_none() {
                target = Some((m.collection, m.new_name));
            }
            let before = size;
            size += m.data.len() as u64;
            if before >> 26 != size >> 26 {
                // Every 64 MiB.
                self.engine()?.check_free_disk().map_err(to_status)?;
            }
            if size > max {
                return Err(Status::invalid_argument(format!(
                    "the snapshot is over the limit max_snapshot_upload_bytes = {max}"
                )));
            }
            file.write_all(&m.data)
                .await
                .map_err(|e| to_status(e.into()))?;
        }
        file.sync_all().await.map_err(|e| to_status(e.into()))?;
        drop(file);
        let (only, new_name) = target.unwrap_or_default();
        let _one_at_a_time = self.restoring.lock().await;
        let engine = self.engine()?;
        let path = scratch.0.clone();
        let restored = tokio::task::spawn_blocking(move || {
            let only = (!only.is_empty()).then_some(only.as_str());
            let rename = (!new_name.is_empty()).then_some(new_name.as_str());
            let allow = |names: &[&str]| crate::service::authorize(&who, op, Touches::Named(names));
            engine.restore_snapshot(&path, only, rename, &allow)
        })
        .await
        .map_err(|e| Status::internal(format!("restore task failed: {e}")))?
        .map_err(to_status)?;
        drop(scratch);
        Ok(Response::new(pb::RestoreSnapshotResponse {
            collections: restored.into_iter().map(convert::collection).collect(),
        }))
    }
}
