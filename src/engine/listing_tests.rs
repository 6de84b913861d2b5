//! Listing and deleting by filter on both backends: pages that never repeat or skip while
//! documents change between them, deletions of exactly the matching documents, and the bound
//! on distinct metadata keys.

use std::sync::Arc;

use super::*;
use crate::filter::Filter;
use crate::meta::{Metadata, Value};
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

fn numbered(i: usize) -> DocumentInput {
    DocumentInput {
        id: format!("d{i:02}"),
        text: format!("stone number {i}"),
        metadata: Metadata::from([("n".to_string(), Value::Int(i as i64))]),
        ..Default::default()
    }
}

#[tokio::test]
async fn listing_pages_and_concurrent_writes_never_repeat_or_skip() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, engine) in super::backends_tests::engines(dir.path(), &embedder) {
        listing_on(backend, engine).await;
    }
}

/// Pages of a filtered listing while one document is added and one deleted between pages:
/// every document that existed throughout is listed exactly once; the embedded backend lists
/// in id order, so there the added one (ahead of the cursor) is listed and the deleted one
/// (behind it) was listed before it went.
async fn listing_on(backend: &str, engine: Engine) {
    engine.create_collection("c", Default::default()).unwrap();
    engine
        .upsert("c", (0..30).map(numbered).collect())
        .await
        .unwrap();
    let f = crate::filter::parse("n >= 10").unwrap();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    let mut round = 0;
    loop {
        let page = engine
            .list_documents("c", &f, after.as_deref(), 7, true)
            .unwrap();
        assert!(page.documents.len() <= 7);
        assert!(page.documents.iter().all(|d| d.metadata.contains_key("n")));
        listed.extend(page.documents.into_iter().map(|d| d.id));
        if round == 0 {
            engine.upsert("c", vec![numbered(95)]).await.unwrap();
            engine
                .delete_documents("c", vec!["d12".into()])
                .await
                .unwrap();
        }
        round += 1;
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        listed.len(),
        "{backend}: a document listed twice"
    );
    let throughout: Vec<String> = (10..30)
        .filter(|i| *i != 12)
        .map(|i| format!("d{i:02}"))
        .collect();
    let mut stable: Vec<String> = listed
        .iter()
        .filter(|id| *id != "d12" && *id != "d95")
        .cloned()
        .collect();
    stable.sort();
    assert_eq!(stable, throughout, "{backend}");
    if backend == "embedded" {
        let mut expected: Vec<String> = (10..30).map(|i| format!("d{i:02}")).collect();
        expected.push("d95".into());
        assert_eq!(listed, expected);
    }
    assert!(engine.list_documents("c", &f, None, 0, false).is_err());
    // A position that is not one of the backend's: a user error where positions are point ids.
    let bogus = engine.list_documents("c", &f, Some("not a position"), 7, false);
    if backend == "qdrant" {
        assert!(bogus.unwrap_err().is_user_error());
    }
}

#[tokio::test]
async fn delete_by_filter_removes_exactly_the_matching_documents() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, config) in super::backends_tests::configs(dir.path()) {
        delete_by_filter_on(backend, config, &embedder).await;
    }
}

async fn delete_by_filter_on(backend: &str, config: EngineConfig, embedder: &Arc<HashEmbedder>) {
    let open = || Engine::open(config.clone(), Arc::new(HashModels(embedder.clone()))).unwrap();
    {
        let engine = open();
        engine.create_collection("c", Default::default()).unwrap();
        engine
            .upsert("c", (0..40).map(numbered).collect())
            .await
            .unwrap();
        let f = crate::filter::parse("n < 5 OR n IN [20, 33] OR missing EXISTS").unwrap();
        let dry = engine
            .delete_by_filter("c", f.clone(), opts(true))
            .await
            .unwrap();
        assert_eq!((dry.matched, dry.deleted), (7, 0));
        assert_eq!(engine.collection("c").unwrap().info().document_count, 40);
        let done = engine
            .delete_by_filter("c", f.clone(), opts(false))
            .await
            .unwrap();
        assert_eq!((done.matched, done.deleted), (7, 7));
        // Trees that restrict nothing are refused like the empty filter (nothing deleted).
        for everything in [
            Filter::all(),
            Filter::And(vec![Filter::all()]),
            Filter::Not(Box::new(Filter::Or(vec![]))),
            crate::filter::parse("n < 5 OR NOT n < 5").unwrap(),
        ] {
            let e = engine
                .delete_by_filter("c", everything.clone(), opts(false))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("restricts"), "{everything:?}: {e}");
        }
        assert_eq!(engine.collection("c").unwrap().info().document_count, 33);
        engine.checkpoint().await.unwrap();
    }
    let engine = open();
    {
        // Asked for explicitly, everything goes.
        engine.create_collection("all", Default::default()).unwrap();
        engine
            .upsert("all", (0..3).map(numbered).collect())
            .await
            .unwrap();
        let all = crate::engine::FilterDeleteOptions {
            dry_run: false,
            all: true,
        };
        let done = engine
            .delete_by_filter("all", Filter::all(), all)
            .await
            .unwrap();
        assert_eq!((done.matched, done.deleted), (3, 3));
    }
    let expected: Vec<i64> = (5..40).filter(|n| *n != 20 && *n != 33).collect();
    // Unfiltered, and filtered by a condition every document passes (so dense scores the
    // allowed chunks exactly instead of walking the HNSW graph, which at this size can leave a
    // near-duplicate point unreachable).
    for filter in [Filter::all(), crate::filter::parse("n >= 0").unwrap()] {
        for mode in [Mode::Lexical, Mode::Dense, Mode::Hybrid] {
            let params = SearchParams {
                query: "stone number".into(),
                mode,
                top_k: 100,
                group_by_document: true,
                filter: filter.clone(),
                ..Default::default()
            };
            let out = engine.search("c", params).await.unwrap();
            let mut ns: Vec<i64> = out
                .hits
                .iter()
                .map(|h| match h.metadata["n"] {
                    Value::Int(n) => n,
                    _ => panic!("n is an integer"),
                })
                .collect();
            ns.sort_unstable();
            if mode == Mode::Dense && filter.is_all() {
                assert!(ns.iter().all(|n| expected.contains(n)), "{ns:?}");
            } else {
                assert_eq!(ns, expected, "{backend} {mode:?} {filter:?}");
            }
        }
    }
}

#[tokio::test]
async fn distinct_metadata_keys_per_collection_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let mut config = EngineConfig::new(dir.path(), "hash");
    config.limits.max_metadata_keys = 3;
    let engine = Engine::open(config, Arc::new(HashModels(embedder))).unwrap();
    let declared = crate::engine::CollectionSettings {
        metadata_schema: (0..4)
            .map(|i| (format!("k{i}"), crate::meta::ValueType::Integer))
            .collect(),
        ..Default::default()
    };
    let e = engine.create_collection("big", declared).unwrap_err();
    assert!(e.to_string().contains("max_metadata_keys"), "{e}");
    engine.create_collection("c", Default::default()).unwrap();
    let with_keys = |id: &str, keys: &[&str]| DocumentInput {
        id: id.into(),
        text: "stone".into(),
        metadata: keys
            .iter()
            .map(|k| (k.to_string(), Value::Int(1)))
            .collect(),
        ..Default::default()
    };
    engine
        .upsert("c", vec![with_keys("a", &["x", "y"])])
        .await
        .unwrap();
    engine
        .upsert("c", vec![with_keys("b", &["x", "z"])])
        .await
        .unwrap();
    let e = engine
        .upsert("c", vec![with_keys("d", &["w"])])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("4 distinct metadata keys"), "{e}");
    // Existing keys stay usable.
    engine
        .upsert("c", vec![with_keys("d", &["y", "z"])])
        .await
        .unwrap();
}

fn opts(dry_run: bool) -> crate::engine::FilterDeleteOptions {
    crate::engine::FilterDeleteOptions {
        dry_run,
        all: false,
    }
}
