//! Engine behaviour with the deterministic hash embedder: no model, no provisioning, real sled,
//! tantivy and HNSW. (The integration tests in `tests/` run the same paths with the real model
//! through gRPC.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

fn open(dir: &Path, embedder: &Arc<HashEmbedder>) -> Engine {
    Engine::open(
        EngineConfig::new(dir, "hash"),
        Arc::new(HashModels(embedder.clone())),
    )
    .expect("engine opens")
}

fn open_with(config: &EngineConfig, embedder: &Arc<HashEmbedder>) -> Engine {
    Engine::open(config.clone(), Arc::new(HashModels(embedder.clone()))).expect("engine opens")
}

fn doc(id: &str, text: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        ..Default::default()
    }
}

fn search(mode: Mode, query: &str) -> SearchParams {
    SearchParams {
        query: query.into(),
        mode,
        top_k: 10,
        ..Default::default()
    }
}

/// The document ids `query` finds in `mode`.
async fn found(engine: &Engine, mode: Mode, query: &str) -> Vec<String> {
    let out = engine.search("c", search(mode, query)).await.unwrap();
    out.hits.into_iter().map(|h| h.doc_id).collect()
}

const MODES: [Mode; 3] = [Mode::Lexical, Mode::Dense, Mode::Hybrid];

fn small_chunks() -> CollectionSettings {
    CollectionSettings {
        chunk_tokens: Some(8),
        chunk_overlap: Some(0),
        ..Default::default()
    }
}

#[tokio::test]
async fn recovers_a_write_committed_but_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    {
        let engine = open(dir.path(), &embedder);
        engine.create_collection("c", Default::default()).unwrap();
        engine
            .upsert("c", vec![doc("a", "granite quarry blasting")])
            .await
            .unwrap();
        // Persist the HNSW graph so that both indexes must *replay* (not rebuild) below.
        engine.checkpoint().await.unwrap();
        // Simulate a crash between the durable commit and the index updates: commit and
        // flush "b" exactly as the write path does, never apply it, drop the engine.
        let c = engine.collection("c").unwrap();
        let vectors = embedder
            .embed_documents(&["marble sculpture workshop".into()])
            .unwrap();
        let key = engine.store.next_id().unwrap();
        let chunk = crate::store::ChunkRecord {
            doc_id: "b".into(),
            ordinal: 0,
            start: 0,
            end: 25,
            text: "marble sculpture workshop".into(),
        };
        let new = crate::store::NewDocument {
            record: crate::store::DocRecord {
                id: "b".into(),
                title: String::new(),
                metadata: BTreeMap::new(),
                markdown: false,
                content_hash: content_hash(&doc("b", "marble sculpture workshop")),
                chunk_ids: vec![crate::store::chunk_id(key, 0)],
                source: None,
            },
            text: "marble sculpture workshop".into(),
            chunks: vec![(crate::store::chunk_id(key, 0), chunk, vectors[0].clone())],
        };
        let seq = engine.store.next_id().unwrap();
        c.local()
            .unwrap()
            .trees
            .commit(seq, &[new], &[], &Default::default(), None)
            .unwrap();
        engine.store.flush_blocking().unwrap();
        for mode in MODES {
            assert!(!found(&engine, mode, "marble sculpture")
                .await
                .contains(&"b".into()));
        }
    }
    let embedded = embedder.documents_embedded();
    let engine = open(dir.path(), &embedder);
    for mode in MODES {
        assert_eq!(
            found(&engine, mode, "marble sculpture").await.first(),
            Some(&"b".to_string()),
            "{mode:?} finds the replayed write"
        );
        assert!(found(&engine, mode, "granite quarry")
            .await
            .contains(&"a".into()));
    }
    assert_eq!(
        embedder.documents_embedded(),
        embedded,
        "replay re-embeds nothing"
    );
    let info = engine.collection("c").unwrap().info();
    assert_eq!((info.document_count, info.chunk_count), (2, 2));
}

#[tokio::test]
async fn rebuilds_a_lost_dense_index_from_sled() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    {
        let engine = open(dir.path(), &embedder);
        engine.create_collection("c", Default::default()).unwrap();
        engine
            .upsert(
                "c",
                vec![doc("a", "granite quarry"), doc("b", "marble statue")],
            )
            .await
            .unwrap();
        // No checkpoint: the HNSW graph only ever lived in memory.
    }
    let engine = open(dir.path(), &embedder);
    assert_eq!(found(&engine, Mode::Dense, "marble statue").await[0], "b");
}

#[tokio::test]
async fn grouping_returns_one_hit_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    for (backend, engine) in super::backends_tests::engines(dir.path(), &embedder) {
        grouping_on(backend, engine).await;
    }
}

async fn grouping_on(backend: &str, engine: Engine) {
    engine.create_collection("c", small_chunks()).unwrap();
    let long = "basalt columns form as lava cools. basalt columns are hexagonal. \
                basalt columns appear on coasts. basalt quarries cut columns.";
    engine
        .upsert(
            "c",
            vec![doc("long", long), doc("other", "basalt columns in iceland")],
        )
        .await
        .unwrap();
    let chunks = engine.collection("c").unwrap().info().chunk_count;
    assert!(
        chunks >= 4,
        "the long document splits into several chunks: {chunks}"
    );
    for mode in MODES {
        let mut p = search(mode, "basalt columns");
        let all = engine.search("c", p.clone()).await.unwrap();
        let long_hits = all.hits.iter().filter(|h| h.doc_id == "long").count();
        assert!(
            long_hits > 1,
            "{backend} {mode:?} without grouping: {long_hits} chunks of one document"
        );
        p.group_by_document = true;
        let grouped = engine.search("c", p).await.unwrap();
        let ids: Vec<&str> = grouped.hits.iter().map(|h| h.doc_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{backend} {mode:?} grouped: {ids:?}");
        assert!(ids.contains(&"long") && ids.contains(&"other"));
    }
}

#[tokio::test]
async fn a_title_is_indexed_once_per_document_not_per_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    let titled = |id: &str, title: &str, text: &str| DocumentInput {
        title: title.into(),
        ..doc(id, text)
    };
    let long = "lava cools slowly. columns form hexagons. coasts show them well. \
                quarries cut the stone. builders value it highly. tourists visit often.";
    {
        let engine = open(dir.path(), &embedder);
        engine.create_collection("c", small_chunks()).unwrap();
        engine
            .upsert(
                "c",
                vec![
                    titled("long", "Obsidian", long),
                    titled("short", "", "obsidian glass is volcanic"),
                ],
            )
            .await
            .unwrap();
        let chunks = engine.collection("c").unwrap().info().chunk_count;
        assert!(chunks >= 5, "several chunks: {chunks}");
        let lexical = |engine: Engine| async move {
            let out = engine
                .search("c", search(Mode::Lexical, "obsidian"))
                .await
                .unwrap();
            let long: Vec<u32> = out
                .hits
                .iter()
                .filter(|h| h.doc_id == "long")
                .map(|h| h.ordinal)
                .collect();
            (engine, long, out.hits.len())
        };
        // The title matches the document once, with its first chunk; the other chunks are
        // found by their own text.
        let (engine, long, hits) = lexical(engine).await;
        assert_eq!((long, hits), (vec![0], 2));
        assert_eq!(found(&engine, Mode::Lexical, "tourists").await, ["long"]);
        // An index written by an older version (no format marker) is rebuilt from sled.
        let c = engine.collection("c").unwrap();
        let marker = c.local().unwrap().dir.join("lexical").join("quarry-format");
        drop((c, engine));
        std::fs::remove_file(marker).unwrap();
    }
    let engine = open(dir.path(), &embedder);
    assert_eq!(found(&engine, Mode::Lexical, "tourists").await, ["long"]);
    assert_eq!(found(&engine, Mode::Lexical, "obsidian").await.len(), 2);
}

#[tokio::test]
async fn replay_never_inserts_a_vector_twice() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    {
        let engine = open(dir.path(), &embedder);
        engine.create_collection("c", Default::default()).unwrap();
        engine.upsert("c", vec![doc("a", "granite")]).await.unwrap();
        // The dense index applies "b" and is checkpointed with it; the lexical index fails
        // both the write and the checkpoint's repair, so it stays one operation behind.
        let c = engine.collection("c").unwrap();
        c.local()
            .unwrap()
            .lexical
            .fail_applies
            .store(2, Ordering::Relaxed);
        engine.upsert("c", vec![doc("b", "marble")]).await.unwrap();
        engine.checkpoint().await.unwrap();
        assert!(
            c.local().unwrap().lexical.applied_seq().unwrap()
                < c.local().unwrap().dense.applied_seq().unwrap()
        );
        assert_eq!(c.local().unwrap().dense.graph_points().unwrap(), 2);
    }
    // Recovery replays "b" into the lexical index only.
    let engine = open(dir.path(), &embedder);
    let c = engine.collection("c").unwrap();
    assert_eq!(
        c.local().unwrap().lexical.applied_seq().unwrap(),
        c.local().unwrap().dense.applied_seq().unwrap()
    );
    assert_eq!(
        c.local().unwrap().dense.graph_points().unwrap(),
        2,
        "no vector inserted twice"
    );
    for mode in MODES {
        assert_eq!(found(&engine, mode, "marble").await[0], "b", "{mode:?}");
    }
}

#[tokio::test]
async fn hybrid_degrades_to_lexical_when_the_query_cannot_be_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = open(dir.path(), &embedder);
    engine.create_collection("c", Default::default()).unwrap();
    engine
        .upsert("c", vec![doc("a", "slate roof tiles")])
        .await
        .unwrap();
    embedder.fail_queries(true);
    let out = engine
        .search("c", search(Mode::Hybrid, "slate roof"))
        .await
        .unwrap();
    assert_eq!(out.mode, Mode::Lexical);
    assert!(out.warning.unwrap().contains("could not be embedded"));
    assert_eq!(out.hits[0].doc_id, "a");
    assert!(out.hits[0].dense.is_none());
    let dense = engine.search("c", search(Mode::Dense, "slate roof")).await;
    assert!(matches!(dense, Err(Error::Embedding(_))));
    embedder.fail_queries(false);
    let out = engine
        .search("c", search(Mode::Hybrid, "slate roof"))
        .await
        .unwrap();
    assert_eq!((out.mode, out.warning), (Mode::Hybrid, None));
}

#[tokio::test]
async fn deletes_are_immediate_counted_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, config) in super::backends_tests::configs(dir.path()) {
        deletes_on(backend, &config, &embedder).await;
    }
}

async fn deletes_on(backend: &str, config: &EngineConfig, embedder: &Arc<HashEmbedder>) {
    {
        let engine = open_with(config, embedder);
        engine.create_collection("c", small_chunks()).unwrap();
        engine
            .upsert(
                "c",
                vec![
                    doc("keep", "limestone kiln firing"),
                    doc(
                        "gone",
                        "limestone caves and limestone pavements and more limestone",
                    ),
                ],
            )
            .await
            .unwrap();
        let (deleted, missing) = engine
            .delete_documents("c", vec!["gone".into(), "never".into()])
            .await
            .unwrap();
        assert_eq!((deleted, missing), (1, vec!["never".to_string()]));
        for mode in MODES {
            assert_eq!(
                found(&engine, mode, "limestone").await,
                vec!["keep"],
                "{backend} {mode:?}"
            );
        }
        let info = engine.collection("c").unwrap().info();
        let c = engine.collection("c").unwrap();
        if let Some(local) = c.local() {
            assert_eq!(info.document_count, local.trees.doc_count() as u64);
            assert_eq!(info.chunk_count, local.trees.chunk_count() as u64);
        }
        assert_eq!(info.document_count, 1, "{backend}");
        assert_eq!(info.chunk_count, 1, "{backend}");
        let (docs, missing) = engine.get_documents("c", &["gone".into()], false).unwrap();
        assert!(docs.is_empty() && missing == ["gone"]);
    }
    let engine = open_with(config, embedder);
    for mode in MODES {
        assert_eq!(
            found(&engine, mode, "limestone").await,
            vec!["keep"],
            "{backend} {mode:?}"
        );
    }
    assert_eq!(engine.collection("c").unwrap().info().document_count, 1);
}

#[tokio::test]
async fn updates_replace_chunks_and_unchanged_documents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, engine) in super::backends_tests::engines(dir.path(), &embedder) {
        updates_on(backend, engine, &embedder).await;
    }
}

async fn updates_on(backend: &str, engine: Engine, embedder: &Arc<HashEmbedder>) {
    engine.create_collection("c", Default::default()).unwrap();
    let first = engine
        .upsert("c", vec![doc("a", "sandstone arches")])
        .await
        .unwrap();
    assert_eq!(first[0].status, UpsertStatus::Created);
    let embedded = embedder.documents_embedded();
    let again = engine
        .upsert("c", vec![doc("a", "sandstone arches")])
        .await
        .unwrap();
    assert_eq!(again[0].status, UpsertStatus::Unchanged);
    assert_eq!(
        embedder.documents_embedded(),
        embedded,
        "unchanged: not re-embedded"
    );
    let changed = engine
        .upsert("c", vec![doc("a", "gneiss outcrops")])
        .await
        .unwrap();
    assert_eq!(changed[0].status, UpsertStatus::Updated);
    for mode in MODES {
        let out = engine
            .search("c", search(mode, "sandstone gneiss"))
            .await
            .unwrap();
        let texts: Vec<&str> = out.hits.iter().map(|h| h.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["gneiss outcrops"],
            "{backend} {mode:?}: the old chunk is gone"
        );
    }
    let info = engine.collection("c").unwrap().info();
    assert_eq!((info.document_count, info.chunk_count), (1, 1), "{backend}");
}

#[tokio::test]
async fn an_index_failure_after_commit_is_repaired_never_skipped() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    {
        let engine = open(dir.path(), &embedder);
        engine.create_collection("c", Default::default()).unwrap();
        engine
            .upsert("c", vec![doc("a", "granite quarry")])
            .await
            .unwrap();
        let c = engine.collection("c").unwrap();
        // The lexical commit fails after sled committed "b": the write is still acknowledged.
        c.local()
            .unwrap()
            .lexical
            .fail_applies
            .store(1, Ordering::Relaxed);
        let out = engine
            .upsert("c", vec![doc("b", "marble sculpture")])
            .await
            .unwrap();
        assert_eq!(out[0].status, UpsertStatus::Created);
        assert!(c.local().unwrap().stale.load(Ordering::Relaxed));
        assert!(found(&engine, Mode::Lexical, "marble").await.is_empty());
        // The next write first replays "b" from the log, then applies itself.
        engine
            .upsert("c", vec![doc("d", "slate roof")])
            .await
            .unwrap();
        assert!(!c.local().unwrap().stale.load(Ordering::Relaxed));
        for mode in MODES {
            assert_eq!(
                found(&engine, mode, "marble sculpture").await[0],
                "b",
                "{mode:?}"
            );
            assert_eq!(found(&engine, mode, "slate roof").await[0], "d", "{mode:?}");
        }
        // A retry finds it stored and searchable.
        let again = engine
            .upsert("c", vec![doc("b", "marble sculpture")])
            .await
            .unwrap();
        assert_eq!(again[0].status, UpsertStatus::Unchanged);
        // Fail both the write's apply and the checkpoint's repair: the checkpoint must not
        // trim the unapplied operation from the log, so a restart still applies it.
        c.local()
            .unwrap()
            .lexical
            .fail_applies
            .store(2, Ordering::Relaxed);
        engine
            .upsert("c", vec![doc("e", "basalt columns")])
            .await
            .unwrap();
        engine.checkpoint().await.unwrap();
        assert!(c.local().unwrap().stale.load(Ordering::Relaxed));
        assert!(found(&engine, Mode::Lexical, "basalt").await.is_empty());
    }
    let engine = open(dir.path(), &embedder);
    for mode in MODES {
        assert_eq!(
            found(&engine, mode, "basalt columns").await[0],
            "e",
            "{mode:?}"
        );
    }
    assert_eq!(engine.collection("c").unwrap().info().document_count, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_keeps_the_lock_until_its_work_stops_and_never_commits() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(
        HashEmbedder::new(32)
            .unwrap()
            .with_delay(std::time::Duration::from_millis(5)),
    );
    let engine = Arc::new(open(dir.path(), &embedder));
    engine.create_collection("c", small_chunks()).unwrap();
    // About 100 chunks: half a second of embedding.
    let long = (0..100)
        .map(|i| format!("sentence number {i} about granite."))
        .collect::<Vec<_>>()
        .join(" ");
    let slow = engine.upsert("c", vec![doc("slow", &long)]);
    // The caller gives up while the write is embedding.
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(100), slow).await;
    assert!(abandoned.is_err());
    // The next write waits until the abandoned one's work has stopped: two writes never
    // embed (or commit) at the same time.
    engine
        .upsert("c", vec![doc("next", "basalt columns")])
        .await
        .unwrap();
    assert_eq!(embedder.max_concurrent_batches(), 1);
    // The abandoned write stopped before committing: nothing of it is stored or indexed.
    let (docs, _) = engine.get_documents("c", &["slow".into()], false).unwrap();
    assert!(docs.is_empty());
    assert_eq!(engine.collection("c").unwrap().info().document_count, 1);
    assert!(
        embedder.documents_embedded() < 100,
        "embedding stopped early: {} texts",
        embedder.documents_embedded()
    );
    for mode in MODES {
        assert_eq!(
            found(&engine, mode, "granite")
                .await
                .first()
                .map(String::as_str),
            if mode == Mode::Lexical {
                None
            } else {
                Some("next")
            }
        );
    }
}

#[test]
fn concurrent_creations_of_one_name_make_one_collection() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = Arc::new(open(dir.path(), &embedder));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let e = engine.clone();
            std::thread::spawn(move || e.create_collection("same", Default::default()).is_ok())
        })
        .collect();
    let created = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(created, 1);
    assert_eq!(engine.list_collections().unwrap().len(), 1);
}
