//! Many clients upserting, deleting, searching and cancelling on one collection, through the
//! real server with the real model, then a restart. Checked against a journal of what was
//! acknowledged: every acknowledged write is visible in sled and in all three retrieval modes,
//! nothing unacknowledged is half-visible (a document is either wholly there, in every index,
//! or not at all), and no call fails with INTERNAL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{test_config, TestServer};
use quarry::grpc::pb;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::Code;

use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;

const TASKS: usize = 4;
const IDS_PER_TASK: usize = 4;
const OPS_PER_TASK: usize = 14;

/// One attempted change of a document: its text (with a nonce word unique to this version), or
/// `None` for a delete.
type Version = Option<String>;

/// What a task saw happen to one of its ids.
#[derive(Default, Debug)]
struct IdJournal {
    /// The state after the last acknowledged change (`None`: absent).
    acknowledged: Version,
    /// Changes attempted after it whose calls were cancelled: each may or may not have run.
    maybe: Vec<Version>,
}

impl IdJournal {
    fn allowed(&self) -> Vec<&Version> {
        std::iter::once(&self.acknowledged)
            .chain(self.maybe.iter())
            .collect()
    }
}

fn fixture_texts() -> Vec<String> {
    common::fixture_docs().into_iter().map(|d| d.text).collect()
}

/// Fails the test on INTERNAL (or any code a well-behaved server should not produce here).
fn check_code(s: &tonic::Status, what: &str) {
    assert!(
        matches!(
            s.code(),
            Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable
        ) || refused_as_busy(s),
        "{what}: unexpected {:?}: {}",
        s.code(),
        s.message()
    );
}

/// Admission control refused the call before it ran: writes whose callers gave up still run to
/// completion and hold their slots, so four impatient clients can fill the write queue. Such a
/// write was definitely not applied, so the journal does not list it as "maybe".
fn refused_as_busy(s: &tonic::Status) -> bool {
    s.code() == Code::ResourceExhausted && s.message().starts_with("server busy")
}

/// Runs one client's operations; returns its journal and how many writes were refused as busy.
async fn run_task(channel: Channel, task: usize, seed: u64) -> (HashMap<String, IdJournal>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let texts = fixture_texts();
    let mut docs = DocumentsClient::new(channel.clone());
    let mut search = SearchClient::new(channel);
    let mut journal: HashMap<String, IdJournal> = HashMap::new();
    let mut busy = 0u64;
    for op in 0..OPS_PER_TASK {
        let id = format!("t{task}-d{}", rng.random_range(0..IDS_PER_TASK));
        // Some calls get a deadline short enough to cancel them mid-way.
        let deadline = if rng.random_bool(0.35) {
            Duration::from_millis(rng.random_range(1..40))
        } else {
            Duration::from_secs(60)
        };
        let roll = rng.random_range(0..10);
        if roll < 6 {
            let text = format!(
                "{} Marker zq{task}x{op}y.",
                texts[rng.random_range(0..texts.len())]
            );
            let mut metadata = HashMap::new();
            metadata.insert("doc".to_string(), id.clone());
            let request = pb::UpsertDocumentsRequest {
                collection: "c".into(),
                documents: vec![pb::Document {
                    id: id.clone(),
                    text: text.clone(),
                    metadata,
                    ..Default::default()
                }],
            };
            let entry = journal.entry(id.clone()).or_default();
            match tokio::time::timeout(deadline, docs.upsert_documents(request)).await {
                Ok(Ok(_)) => {
                    entry.acknowledged = Some(text);
                    entry.maybe.clear();
                }
                Ok(Err(s)) => {
                    check_code(&s, "upsert");
                    if refused_as_busy(&s) {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(20 * busy.min(10))).await;
                    } else {
                        entry.maybe.push(Some(text));
                    }
                }
                Err(_) => entry.maybe.push(Some(text)),
            }
        } else if roll < 8 {
            let request = pb::DeleteDocumentsRequest {
                collection: "c".into(),
                ids: vec![id.clone()],
            };
            let entry = journal.entry(id.clone()).or_default();
            match tokio::time::timeout(deadline, docs.delete_documents(request)).await {
                Ok(Ok(_)) => {
                    entry.acknowledged = None;
                    entry.maybe.clear();
                }
                Ok(Err(s)) => {
                    check_code(&s, "delete");
                    if refused_as_busy(&s) {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(20 * busy.min(10))).await;
                    } else {
                        entry.maybe.push(None);
                    }
                }
                Err(_) => entry.maybe.push(None),
            }
        } else {
            let request = pb::SearchRequest {
                collection: "c".into(),
                query: "cells and energy".into(),
                top_k: 5,
                mode: pb::SearchMode::Hybrid as i32,
                ..Default::default()
            };
            if let Ok(Err(s)) = tokio::time::timeout(deadline, search.search(request)).await {
                check_code(&s, "search");
            }
        }
    }
    (journal, busy)
}

/// The stored text of `id`, if any.
async fn stored(channel: &Channel, id: &str) -> Option<String> {
    let r = DocumentsClient::new(channel.clone())
        .get_documents(pb::GetDocumentsRequest {
            collection: "c".into(),
            ids: vec![id.into()],
            include_chunks: false,
        })
        .await
        .expect("get documents")
        .into_inner();
    r.documents
        .into_iter()
        .next()
        .and_then(|d| d.document)
        .map(|d| d.text)
}

async fn hits(channel: &Channel, query: &str, mode: pb::SearchMode) -> Vec<pb::Hit> {
    SearchClient::new(channel.clone())
        .search(pb::SearchRequest {
            collection: "c".into(),
            query: query.into(),
            top_k: 10,
            mode: mode as i32,
            group_by_document: true,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .hits
}

/// Every id's stored state is one the journal allows, and each stored document is found by
/// its own marker (lexical) and its own text (dense, hybrid); no index returns a version that
/// is not the stored one.
async fn verify(channel: &Channel, journals: &[HashMap<String, IdJournal>]) {
    let mut current: HashMap<String, Option<String>> = HashMap::new();
    for journal in journals {
        for (id, j) in journal {
            let now = stored(channel, id).await;
            assert!(
                j.allowed().contains(&&now),
                "{id}: stored {now:?}, journal allows {:?}",
                j.allowed()
            );
            current.insert(id.clone(), now);
        }
    }
    for (id, now) in &current {
        let Some(text) = now else { continue };
        let marker = text.rsplit(' ').next().unwrap().trim_end_matches('.');
        let lexical = hits(channel, marker, pb::SearchMode::Lexical).await;
        assert_eq!(
            lexical.first().map(|h| h.document_id.as_str()),
            Some(id.as_str()),
            "lexical finds {id} by {marker}"
        );
        for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
            let found = hits(channel, text, mode).await;
            assert!(
                found.iter().take(3).any(|h| h.document_id == *id),
                "{mode:?} finds {id} by its text: {:?}",
                found.iter().map(|h| &h.document_id).collect::<Vec<_>>()
            );
        }
    }
    // Versions that are not stored (deleted, replaced, or never run) are found by no index.
    for journal in journals {
        for (id, j) in journal {
            for version in j.allowed().into_iter().flatten() {
                if current.get(id) == Some(&Some(version.clone())) {
                    continue;
                }
                let marker = version.rsplit(' ').next().unwrap().trim_end_matches('.');
                for h in hits(channel, marker, pb::SearchMode::Lexical).await {
                    let stored_here = current
                        .get(&h.document_id)
                        .and_then(|t| t.as_ref())
                        .is_some_and(|t| t.contains(marker));
                    assert!(
                        !h.text.contains(marker) || stored_here,
                        "{id}: version {marker} is not stored but still indexed"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_searches_and_cancellations_then_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    pb::collections_client::CollectionsClient::new(server.channel().await)
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            config: None,
        })
        .await
        .unwrap();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let channel = server.channel().await;
        handles.push(tokio::spawn(run_task(channel, task, 7 + task as u64)));
    }
    let mut journals = Vec::new();
    let mut busy = 0;
    for h in handles {
        let (journal, refused) = h.await.unwrap();
        journals.push(journal);
        busy += refused;
    }
    // Let cancelled work that was already running finish (it holds the write lock until then).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = journals
        .iter()
        .flat_map(|j| j.values())
        .filter(|j| j.acknowledged.is_some())
        .count();
    let cancelled: usize = journals
        .iter()
        .flat_map(|j| j.values())
        .map(|j| j.maybe.len())
        .sum();
    eprintln!(
        "{acked} ids acknowledged present, {cancelled} cancelled changes pending, \
         {busy} writes refused as busy"
    );
    verify(&server.channel().await, &journals).await;

    server.stop().await;
    let server = TestServer::start(test_config(data.path())).await;
    verify(&server.channel().await, &journals).await;
    server.stop().await;
}
