//! The streaming upsert: documents one message at a time (a gRPC client stream, an NDJSON
//! body), checked one by one and written in batches by the engine's batching rule
//! ([`crate::engine::Batch`]), the same one server-side jobs use. A bad document is rejected
//! alone in the reply; a batch is acknowledged once written, so a stream cut off midway keeps
//! every batch written before the cut (sending it again is cheap: unchanged documents are
//! skipped).

use futures::{Stream, StreamExt};

use crate::api::{convert, pb};
use crate::auth::Principal;
use crate::engine::{Batch, Engine, Resolved};
use crate::error::{clip, quote, Error, Result};

use super::{authorize, row, Service, Touches, DOCUMENTS};

/// Longest error message in a per-document result (so the reply stays within
/// `max_message_bytes` whatever the documents said).
pub const MAX_RESULT_ERROR_BYTES: usize = 256;

/// The reply being built: one result per document, in stream order; `None` until its batch
/// is written.
type Results = Vec<Option<pb::DocumentResult>>;

async fn flush(
    engine: &Engine,
    to: &Resolved,
    batch: &mut Batch<usize>,
    results: &mut Results,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let (positions, docs): (Vec<usize>, Vec<_>) = batch.take().into_iter().unzip();
    let outcomes = engine.upsert_resolved(to, docs, None).await?;
    for (pos, o) in positions.into_iter().zip(outcomes) {
        results[pos] = Some(convert::outcome(o));
    }
    Ok(())
}

/// The collection a stream writes to: named by its first message, and only that one after.
fn collection_of(current: &Option<String>, named: &str) -> Result<Option<String>> {
    match (current, named) {
        (None, "") => Err(Error::invalid(
            "the first message of the stream must name the collection",
        )),
        (None, name) => Ok(Some(name.to_string())),
        (Some(_), "") => Ok(None),
        (Some(c), name) if c == name => Ok(None),
        (Some(c), name) => Err(Error::invalid(format!(
            "a stream writes to one collection: got {} after {}",
            quote(name),
            quote(c)
        ))),
    }
}

impl Service {
    /// Runs a stream of upsert messages to its end. `messages` yields the transport's decode
    /// errors as [`Error`]s; a stream that sends nothing for `limits.stream_idle_secs` ends
    /// with DEADLINE_EXCEEDED (batches already written stay written).
    pub async fn upsert_stream<S>(
        &self,
        who: &Principal,
        messages: S,
    ) -> Result<pb::UpsertDocumentsResponse>
    where
        S: Stream<Item = Result<pb::StreamUpsertRequest>> + Send,
    {
        let op = row(DOCUMENTS, "StreamUpsertDocuments")?;
        let mut messages = std::pin::pin!(messages);
        let mut collection: Option<String> = None;
        // The collection it names, resolved once (an alias switched mid-stream does not split
        // the stream's batches between two collections: the batches after the switch are
        // refused ABORTED, see `Engine::write_via`).
        let mut target: Option<Resolved> = None;
        let mut results: Results = Vec::new();
        let mut batch: Batch<usize> = Batch::default();
        let idle = std::time::Duration::from_secs(self.engine()?.config().limits.stream_idle_secs);
        loop {
            let next = tokio::time::timeout(idle, messages.next()).await.map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "the stream sent nothing for {} s (limits.stream_idle_secs); batches already written are stored",
                    idle.as_secs()
                ))
            })?;
            let Some(message) = next.transpose()? else {
                break;
            };
            if let Some(name) = collection_of(&collection, &message.collection)? {
                // The right was checked before admission; the collection when it is named.
                authorize(who, op, Touches::Named(&[&name]))?;
                target = Some(self.engine()?.resolve(&name)?);
                collection = Some(name);
            }
            let Some(to) = target.clone() else {
                continue;
            };
            let name = to.collection.clone();
            let Some(doc) = message.document else {
                continue;
            };
            // Taken per message, not held for the stream (the storage may be reopened).
            let engine = self.engine()?;
            let limits = &engine.config().limits;
            let pos = results.len();
            if pos >= limits.max_stream_documents {
                return Err(Error::invalid(format!(
                    "the stream has more than max_stream_documents = {} documents; batches \
                     already written are stored (sending them again is cheap: unchanged \
                     documents are skipped)",
                    limits.max_stream_documents
                )));
            }
            let id = doc.id.clone();
            let checked = convert::document(doc)
                .and_then(|doc| batch.check(&engine, &name, &doc).map(|()| doc));
            match checked {
                Err(e) => results.push(Some(pb::DocumentResult {
                    id: clip(&id, limits.max_id_bytes).to_string(),
                    status: pb::UpsertStatus::Rejected as i32,
                    chunk_count: 0,
                    error: clip(&e.to_string(), MAX_RESULT_ERROR_BYTES).to_string(),
                })),
                Ok(doc) => {
                    if batch.holds(&doc.id).is_some() {
                        flush(&engine, &to, &mut batch, &mut results).await?;
                    }
                    results.push(None);
                    batch.push(pos, doc);
                    if batch.is_full(&engine) {
                        flush(&engine, &to, &mut batch, &mut results).await?;
                    }
                }
            }
        }
        if let Some(to) = &target {
            flush(&*self.engine()?, to, &mut batch, &mut results).await?;
        }
        Ok(pb::UpsertDocumentsResponse {
            results: results.into_iter().flatten().collect(),
        })
    }
}
