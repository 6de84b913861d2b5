//! Snapshots. Archives are spooled through a scratch directory in the data directory
//! (`snapshots-tmp/`), never held in memory: a snapshot is written there and streamed out in
//! 1 MiB pieces; an upload is written there (up to `limits.max_snapshot_upload_bytes`) and
//! restored from it. The scratch files go when the call ends, however it ends.

use std::path::PathBuf;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{authorize, row, Events, Service, Touches, ADMIN};
use crate::api::{convert, pb};
use crate::auth::Principal;
use crate::error::{Error, Result};

/// Bytes per SnapshotChunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Service {
    fn scratch(&self, what: &str) -> Result<Scratch> {
        let dir = self.engine()?.config().data_dir.join("snapshots-tmp");
        std::fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Scratch(dir.join(format!("{what}-{nanos}.tar"))))
    }

    /// A consistent snapshot of the named collections (none: all), as the bytes of one tar
    /// archive; the first piece carries the manifest too.
    pub async fn create_snapshot(
        &self,
        who: &Principal,
        r: pb::CreateSnapshotRequest,
    ) -> Result<Events<pb::SnapshotChunk>> {
        let named: Vec<&str> = r.collections.iter().map(String::as_str).collect();
        let touches = match named.is_empty() {
            true => Touches::All,
            false => Touches::Named(&named),
        };
        authorize(who, row(ADMIN, "CreateSnapshot")?, touches)?;
        let scratch = self.scratch("create")?;
        let manifest = self
            .engine()?
            .create_snapshot(&r.collections, &scratch.0)
            .await?;
        let manifest_json = serde_json::to_string(&manifest)?;
        let mut file = tokio::fs::File::open(&scratch.0).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _scratch = scratch;
            let mut first = Some(manifest_json);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
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
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Restores an uploaded archive: the first message names what to restore and as what.
    /// The collections it restores are authorized once its manifest is read, before anything
    /// is written; restores run one at a time.
    pub async fn restore_snapshot<S>(
        &self,
        who: &Principal,
        messages: S,
    ) -> Result<pb::RestoreSnapshotResponse>
    where
        S: Stream<Item = Result<pb::RestoreSnapshotRequest>> + Send,
    {
        let op = row(ADMIN, "RestoreSnapshot")?;
        let engine = self.engine()?;
        // Refused at the watermark before a byte is spooled, and again as the upload grows.
        engine.check_free_disk()?;
        let limits = engine.config().limits.clone();
        drop(engine);
        let max = limits.max_snapshot_upload_bytes;
        let idle = std::time::Duration::from_secs(limits.stream_idle_secs);
        let mut messages = std::pin::pin!(messages);
        let scratch = self.scratch("restore")?;
        let mut file = tokio::fs::File::create(&scratch.0).await?;
        let mut target: Option<(String, String)> = None;
        let mut size = 0u64;
        loop {
            let next = tokio::time::timeout(idle, messages.next())
                .await
                .map_err(|_| Error::DeadlineExceeded("the upload stalled".into()))?;
            let Some(m) = next.transpose()? else { break };
            if target.is_none() {
                target = Some((m.collection, m.new_name));
            }
            let before = size;
            size += m.data.len() as u64;
            if before >> 26 != size >> 26 {
                // Every 64 MiB.
                self.engine()?.check_free_disk()?;
            }
            if size > max {
                return Err(Error::invalid(format!(
                    "the snapshot is over the limit max_snapshot_upload_bytes = {max}"
                )));
            }
            file.write_all(&m.data).await?;
        }
        file.sync_all().await?;
        drop(file);
        let (only, new_name) = target.unwrap_or_default();
        let _one_at_a_time = self.restoring.lock().await;
        let engine = self.engine()?;
        let path = scratch.0.clone();
        let who = who.clone();
        let restored = super::blocking(move || {
            let only = (!only.is_empty()).then_some(only.as_str());
            let rename = (!new_name.is_empty()).then_some(new_name.as_str());
            let allow = |names: &[&str]| authorize(&who, op, Touches::Named(names));
            crate::eval::restored::restore(&engine, &path, only, rename, &allow)
        })
        .await?;
        drop(scratch);
        Ok(pb::RestoreSnapshotResponse {
            collections: restored.into_iter().map(convert::collection).collect(),
        })
    }
}
