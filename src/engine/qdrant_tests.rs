//! The Qdrant backend's own guarantees, against a real Qdrant node (skipped loudly without
//! one): the mapping as Qdrant sees it, no half documents and no two versions after writes
//! interrupted at each step, the sweep, and two front ends on one Qdrant.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::backends_tests;
use super::*;
use crate::meta::{Value, ValueType};
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::qdrant::Step;
use crate::retrieve::{Mode, SearchParams};
use crate::store::{chunk_id, ChunkRecord, DocRecord, NewDocument};

const MODES: [Mode; 3] = [Mode::Lexical, Mode::Dense, Mode::Hybrid];

/// The Qdrant engine config over `dir`, if Qdrant runs here.
fn qdrant_config(dir: &Path) -> Option<EngineConfig> {
    backends_tests::configs(dir)
        .into_iter()
        .find(|(name, _)| *name == "qdrant")
        .map(|(_, c)| c)
}

fn open(config: &EngineConfig, embedder: &Arc<HashEmbedder>) -> Engine {
    Engine::open(config.clone(), Arc::new(HashModels(embedder.clone()))).unwrap()
}

fn doc(id: &str, text: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// A one-chunk version of document `id` as a write would prepare it.
fn version(c: &Collection, embedder: &HashEmbedder, id: &str, text: &str) -> NewDocument {
    let key = c.store().version_keys(1).unwrap()[0];
    let vector = embedder.embed_documents(&[text.to_string()]).unwrap()[0].clone();
    let input = doc(id, text);
    NewDocument {
        record: DocRecord {
            id: id.into(),
            title: String::new(),
            metadata: BTreeMap::new(),
            markdown: false,
            content_hash: content_hash(&input),
            chunk_ids: vec![chunk_id(key, 0)],
            source: None,
        },
        text: text.into(),
        chunks: vec![(
            chunk_id(key, 0),
            ChunkRecord {
                doc_id: id.into(),
                ordinal: 0,
                start: 0,
                end: text.len(),
                text: text.into(),
            },
            vector,
        )],
    }
}

/// Every hit's text for `query`, in every mode.
async fn texts(engine: &Engine, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mode in MODES {
        let params = SearchParams {
            query: query.into(),
            mode,
            top_k: 10,
            ..Default::default()
        };
        let found = engine.search("c", params).await.unwrap();
        out.extend(found.hits.into_iter().map(|h| h.text));
    }
    out
}

#[tokio::test]
async fn the_mapping_is_what_qdrant_holds() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = qdrant_config(dir.path()) else {
        return;
    };
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = open(&config, &embedder);
    let declared = CollectionSettings {
        metadata_schema: crate::meta::Schema::from([("year".to_string(), ValueType::Integer)]),
        ..Default::default()
    };
    engine.create_collection("c", declared).unwrap();
    let mut d = doc("a", "granite quarry");
    d.metadata.insert("lang".into(), Value::Str("en".into()));
    engine.upsert("c", vec![d]).await.unwrap();
    let node = backends_tests::node().unwrap();
    let name = format!("{}c", config.backend.collection_prefix);
    let (status, body) = node.http_get(&format!("/collections/{name}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = &info["result"];
    assert_eq!(r["config"]["params"]["vectors"]["dense"]["size"], 32, "{r}");
    assert_eq!(
        r["config"]["params"]["vectors"]["dense"]["distance"],
        "Cosine"
    );
    assert_eq!(
        r["config"]["params"]["sparse_vectors"]["bm25"]["modifier"], "idf",
        "{r}"
    );
    assert!(r["config"]["metadata"]["quarry_record"].is_string(), "{r}");
    let schema = &r["payload_schema"];
    // The declared key and the key the document introduced, each indexed by its type.
    assert_eq!(
        schema[crate::qdrant::filter::field("year")]["data_type"],
        "integer",
        "{schema}"
    );
    assert_eq!(
        schema[crate::qdrant::filter::field("lang")]["data_type"],
        "keyword",
        "{schema}"
    );
    // One document point and one chunk point.
    assert_eq!(r["points_count"], 2, "{r}");
}

#[tokio::test]
async fn interrupted_writes_never_show_half_a_document_and_the_sweep_clears_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = qdrant_config(dir.path()) else {
        return;
    };
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = open(&config, &embedder);
    engine.create_collection("c", Default::default()).unwrap();
    engine
        .upsert("c", vec![doc("a", "granite quarry")])
        .await
        .unwrap();
    let c = engine.collection("c").unwrap();
    let Backing::Qdrant(q) = &c.backing else {
        panic!("a Qdrant collection")
    };
    // A crash after the new version's chunks: nothing of it is visible.
    let v2 = version(&c, &embedder, "a", "basalt column");
    q.write_interrupted(&[v2], &[], Step::Chunks).unwrap();
    let seen = texts(&engine, "basalt column granite").await;
    assert!(seen.iter().all(|t| t == "granite quarry"), "{seen:?}");
    assert!(!seen.is_empty());
    let (docs, _) = engine.get_documents("c", &["a".into()], true).unwrap();
    assert_eq!(docs[0].input.text, "granite quarry");
    assert_eq!(docs[0].chunks.len(), 1);
    assert_eq!(c.info().chunk_count, 2, "the orphan is still stored");
    // The sweep leaves young chunks alone, and removes old orphans.
    assert_eq!(engine.sweep("c", Duration::from_secs(600)).unwrap(), 0);
    assert_eq!(engine.sweep("c", Duration::ZERO).unwrap(), 1);
    assert_eq!(c.info().chunk_count, 1);
    // A crash after the document point switched: the new version only.
    let v3 = version(&c, &embedder, "a", "slate roof");
    q.write_interrupted(&[v3], &[], Step::Documents).unwrap();
    let seen = texts(&engine, "slate roof granite quarry").await;
    assert!(seen.iter().all(|t| t == "slate roof"), "{seen:?}");
    assert_eq!(seen.len(), MODES.len());
    assert_eq!(engine.sweep("c", Duration::ZERO).unwrap(), 1);
    assert_eq!((c.info().document_count, c.info().chunk_count), (1, 1));
    // A delete interrupted after the document point went: the document is gone at once.
    q.write_interrupted(&[], &["a".into()], Step::Documents)
        .unwrap();
    assert!(texts(&engine, "slate roof").await.is_empty());
    assert_eq!(engine.sweep("c", Duration::ZERO).unwrap(), 1);
    assert_eq!((c.info().document_count, c.info().chunk_count), (0, 0));
}

#[tokio::test]
async fn two_front_ends_on_one_qdrant_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = qdrant_config(dir.path()) else {
        return;
    };
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let a = open(&config, &embedder);
    let mut other = config.clone();
    other.data_dir = dir.path().join("second");
    let b = open(&other, &embedder);
    a.create_collection("c", Default::default()).unwrap();
    assert!(b
        .create_collection("c", Default::default())
        .unwrap_err()
        .to_string()
        .contains("exists"));
    let mut d = doc("x", "granite quarry");
    d.metadata.insert("lang".into(), Value::Str("en".into()));
    a.upsert("c", vec![d]).await.unwrap();
    // B learns the key A introduced, and finds A's document at once.
    let params = SearchParams {
        query: "granite".into(),
        filter: crate::filter::parse("lang = \"en\"").unwrap(),
        ..Default::default()
    };
    let hits = b.search("c", params).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].doc_id, "x");
    b.upsert("c", vec![doc("y", "granite chisel")])
        .await
        .unwrap();
    assert_eq!(a.collection("c").unwrap().info().document_count, 2);
    let names: Vec<String> = b
        .list_collections()
        .unwrap()
        .into_iter()
        .map(|i| i.record.name)
        .collect();
    assert_eq!(names, vec!["c".to_string()]);
    // A deletes it: B answers NOT_FOUND (at once for a call that reaches Qdrant).
    Arc::new(a).delete_collection("c").await.unwrap();
    let e = b
        .search(
            "c",
            SearchParams {
                query: "granite".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::CollectionNotFound(_)), "{e}");
    // And B may create it again.
    b.create_collection("c", Default::default()).unwrap();
    assert_eq!(b.collection("c").unwrap().info().document_count, 0);
}

/// A three-node cluster (3 shards, 2 replicas) that loses the node Quarry talks to: after a
/// short transition every search and write succeeds; meanwhile each failure is UNAVAILABLE;
/// nothing acknowledged is lost.
#[test]
fn a_cluster_that_loses_a_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    if backends_tests::node().is_none() {
        return;
    }
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = crate::qdrant::node::provisioned_binary(project)
        .unwrap()
        .unwrap();
    let mut cluster =
        crate::qdrant::node::QdrantCluster::start(&bin, &dir.path().join("cluster"), 3).unwrap();
    let mut config = EngineConfig::new(dir.path().join("data"), "hash");
    config.backend.kind = crate::qdrant::BackendKind::Qdrant;
    config.backend.url = cluster.urls().join(",");
    config.backend.shard_number = 3;
    config.backend.replication_factor = 2;
    config.backend.timeout_secs = 5;
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = open(&config, &embedder);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    engine.create_collection("c", Default::default()).unwrap();
    let docs: Vec<DocumentInput> = (0..60)
        .map(|i| doc(&format!("d{i}"), &format!("granite quarry number {i}")))
        .collect();
    rt.block_on(engine.upsert("c", docs)).unwrap();
    cluster.nodes[0].kill();
    let started = std::time::Instant::now();
    let mut acked = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_failure = None;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let id = format!("k{n}");
        n += 1;
        match rt.block_on(engine.upsert("c", vec![doc(&id, "basalt written during the outage")])) {
            Ok(_) => acked.push(id),
            Err(e) => {
                assert!(matches!(e, Error::Unavailable(_)), "{e}");
                *errors
                    .entry(format!(
                        "write: {}",
                        &e.to_string()[..e.to_string().len().min(120)]
                    ))
                    .or_default() += 1;
                last_failure = Some(started.elapsed());
            }
        }
        let params = SearchParams {
            query: "granite".into(),
            ..Default::default()
        };
        match rt.block_on(engine.search("c", params)) {
            Ok(out) => assert!(!out.hits.is_empty()),
            Err(e) => {
                assert!(matches!(e, Error::Unavailable(_)), "{e}");
                *errors
                    .entry(format!(
                        "search: {}",
                        &e.to_string()[..e.to_string().len().min(120)]
                    ))
                    .or_default() += 1;
                last_failure = Some(started.elapsed());
            }
        }
    }
    eprintln!(
        "{} writes acknowledged of {n}; last failure at {last_failure:?}; failures: {errors:#?}",
        acked.len()
    );
    assert!(
        last_failure.is_none_or(|t| t < Duration::from_secs(10)),
        "still failing after 10 s: {errors:#?}"
    );
    let (found, missing) = engine.get_documents("c", &acked, false).unwrap();
    assert!(missing.is_empty(), "lost {missing:?}");
    assert_eq!(found.len(), acked.len());
}
