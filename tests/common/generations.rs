//! Helpers for tests of generations behind an alias: what a collection serves, and an
//! application that keeps writing through the alias while a re-index or a promotion runs,
//! remembering what it was acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quarry::grpc::pb;
use tonic::transport::Channel;
use tonic::Code;

use super::{doc, keyed};
use pb::documents_client::DocumentsClient;

/// Every document the collection (or alias) serves: id -> text.
pub async fn served(channel: Channel, name: &str, key: &str) -> BTreeMap<String, String> {
    let mut docs = DocumentsClient::new(channel);
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = docs
            .list_documents(keyed(
                pb::ListDocumentsRequest {
                    collection: name.into(),
                    page_size: 40,
                    page_token: token,
                    ..Default::default()
                },
                Some(key),
            ))
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<String> = page.documents.iter().map(|d| d.id.clone()).collect();
        let got = docs
            .get_documents(keyed(
                pb::GetDocumentsRequest {
                    collection: name.into(),
                    ids,
                    include_chunks: false,
                },
                Some(key),
            ))
            .await
            .unwrap()
            .into_inner();
        for d in got.documents {
            let d = d.document.unwrap();
            out.insert(d.id, d.text);
        }
        token = page.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

/// What a [`Writer`] did: the last acknowledged state of each id it touched (None: deleted),
/// its attempts, and how many were refused ABORTED at a switch (nothing written; the next
/// write goes on).
pub struct Written {
    pub acknowledged: BTreeMap<String, Option<String>>,
    pub steps: usize,
    pub aborted: usize,
}

impl Written {
    /// `initial` with every acknowledged write applied.
    pub fn applied_to(&self, initial: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = initial.clone();
        for (id, now) in &self.acknowledged {
            match now {
                Some(t) => out.insert(id.clone(), t.clone()),
                None => out.remove(id),
            };
        }
        out
    }
}

/// An application writing through an alias until stopped: upserts of `{prefix}{i:03}` for i
/// in `0..range` with `text(i, version)`, and every fourth step a delete.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Written>,
}

impl Writer {
    pub fn start(
        channel: Channel,
        alias: &str,
        key: &str,
        (prefix, range): (&str, usize),
        text: fn(usize, u32) -> String,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (alias, key, prefix) = (alias.to_string(), key.to_string(), prefix.to_string());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut docs = DocumentsClient::new(channel);
            let mut acknowledged = BTreeMap::new();
            let (mut steps, mut aborted) = (0usize, 0usize);
            while !stopped.load(Ordering::Acquire) {
                steps += 1;
                let i = (steps * 29) % range;
                let id = format!("{prefix}{i:03}");
                let body = text(i, 1 + steps as u32);
                let done = if steps % 4 == 0 {
                    docs.delete_documents(keyed(
                        pb::DeleteDocumentsRequest {
                            collection: alias.clone(),
                            ids: vec![id.clone()],
                        },
                        Some(&key),
                    ))
                    .await
                    .map(|_| None)
                } else {
                    docs.upsert_documents(keyed(
                        pb::UpsertDocumentsRequest {
                            collection: alias.clone(),
                            documents: vec![doc(&id, &body)],
                        },
                        Some(&key),
                    ))
                    .await
                    .map(|_| Some(body))
                };
                match done {
                    Ok(now) => {
                        acknowledged.insert(id, now);
                    }
                    Err(s) if s.code() == Code::Aborted => aborted += 1,
                    Err(s) => panic!("a write through the alias failed: {s:?}"),
                }
            }
            Written {
                acknowledged,
                steps,
                aborted,
            }
        });
        Writer { stop, task }
    }

    pub async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap()
    }
}
