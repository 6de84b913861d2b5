//! Aliases on both backends, from one body: resolution in every call, the shared namespace,
//! switches with and without an expectation, deletes refused while an alias points, and
//! aliases that outlive a restart.

use std::sync::Arc;

use super::*;
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

fn doc(id: &str, text: &str) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        text: text.into(),
        ..Default::default()
    }
}

async fn top(engine: &Engine, collection: &str, query: &str) -> Vec<String> {
    let params = SearchParams {
        query: query.into(),
        mode: Mode::Hybrid,
        top_k: 10,
        ..Default::default()
    };
    let outcome = engine.search(collection, params).await.unwrap();
    outcome.hits.into_iter().map(|h| h.doc_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_resolve_switch_and_persist_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    for (backend, config) in super::backends_tests::configs(dir.path()) {
        let open = || {
            Arc::new(
                Engine::open(config.clone(), Arc::new(HashModels(embedder.clone())))
                    .expect("engine opens"),
            )
        };
        let engine = open();
        aliases_on(backend, &engine).await;
        drop(engine);
        // Durable: a restarted server (or another front end on Qdrant) resolves the same.
        let engine = open();
        assert_eq!(
            engine.aliases().unwrap(),
            vec![("docs".to_string(), "g2".to_string())],
            "{backend}"
        );
        assert_eq!(top(&engine, "docs", "granite").await, ["b"], "{backend}");
        assert_eq!(engine.delete_alias("docs", Some("g2")).unwrap(), "g2");
        let gone = engine.collection("docs").err().unwrap();
        assert!(
            matches!(gone, Error::CollectionNotFound(_)),
            "{backend}: {gone}"
        );
        // With no alias pointing at it, a generation can be deleted.
        engine.delete_collection("g1").await.unwrap();
        engine.delete_collection("g2").await.unwrap();
    }
}

async fn aliases_on(backend: &str, engine: &Arc<Engine>) {
    for g in ["g1", "g2"] {
        engine.create_collection(g, Default::default()).unwrap();
    }
    engine
        .upsert("g1", vec![doc("a", "basalt columns cool from lava")])
        .await
        .unwrap();
    engine
        .upsert("g2", vec![doc("b", "granite domes weather slowly")])
        .await
        .unwrap();

    // Created only if absent, then every call through the alias reaches its collection.
    assert_eq!(engine.set_alias("docs", "g1", Some("")).unwrap(), None);
    assert_eq!(engine.collection("docs").unwrap().record().name, "g1");
    assert_eq!(top(engine, "docs", "basalt").await, ["a"], "{backend}");
    engine
        .upsert("docs", vec![doc("a2", "basalt sea stacks")])
        .await
        .unwrap();
    assert_eq!(engine.collection("g1").unwrap().info().document_count, 2);

    // One namespace: a name is a collection or an alias.
    let e = engine
        .create_collection("docs", Default::default())
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{backend}: {e}");
    assert!(e.to_string().contains("alias of collection \"g1\""), "{e}");
    let e = engine.set_alias("g2", "g1", None).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{backend}: {e}");
    let e = engine.set_alias("chain", "docs", None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{backend}: {e}");
    let e = engine.set_alias("x", "missing", None).unwrap_err();
    assert!(matches!(e, Error::CollectionNotFound(_)), "{backend}: {e}");
    let e = engine.set_alias("bad name", "g1", None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{backend}: {e}");

    // Deletes: never through the alias, never of a collection an alias points to.
    let e = engine.delete_collection("docs").await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{backend}: {e}");
    let e = engine.delete_collection("g1").await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{backend}: {e}");
    assert!(e.to_string().contains("\"docs\""), "{e}");
    assert_eq!(top(engine, "g1", "basalt").await.len(), 2, "{backend}");

    // A switch that expects another collection changes nothing.
    let e = engine.set_alias("docs", "g2", Some("g0")).unwrap_err();
    assert!(matches!(e, Error::Aborted(_)), "{backend}: {e}");
    let e = engine.set_alias("docs", "g2", Some("")).unwrap_err();
    assert!(matches!(e, Error::Aborted(_)), "{backend}: {e}");
    assert_eq!(engine.collection("docs").unwrap().record().name, "g1");
    // The switch itself, then a rollback and the switch again.
    assert_eq!(
        engine
            .set_alias("docs", "g2", Some("g1"))
            .unwrap()
            .as_deref(),
        Some("g1")
    );
    assert_eq!(top(engine, "docs", "granite").await, ["b"], "{backend}");
    assert_eq!(
        engine.set_alias("docs", "g1", None).unwrap().as_deref(),
        Some("g2")
    );
    let mut back = top(engine, "docs", "basalt").await;
    back.sort();
    assert_eq!(back, ["a", "a2"], "{backend}");
    engine.set_alias("docs", "g2", Some("g1")).unwrap();
    let e = engine.delete_alias("docs", Some("g1")).unwrap_err();
    assert!(matches!(e, Error::Aborted(_)), "{backend}: {e}");
    let e = engine.delete_alias("nope", None).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{backend}: {e}");
}

/// A write that resolved an alias and waits for the write lock while the alias is switched
/// (as a re-index does, holding the old generation's lock) is refused ABORTED, never written
/// to the old generation; retried, it reaches the new one. A write to the old generation by
/// its own name still goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_switched_alias_is_refused_not_misplaced() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    for (backend, config) in super::backends_tests::configs(dir.path()) {
        let engine =
            Arc::new(Engine::open(config, Arc::new(HashModels(embedder.clone()))).unwrap());
        engine.create_collection("old", Default::default()).unwrap();
        engine.create_collection("new", Default::default()).unwrap();
        engine.set_alias("live", "old", Some("")).unwrap();
        let fence = engine.write_fence("old").await.unwrap();
        let e = engine.clone();
        let waiting =
            tokio::spawn(async move { e.upsert("live", vec![doc("w", "waited granite")]).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "{backend}: the write waits for the lock"
        );
        engine.set_alias("live", "new", Some("old")).unwrap();
        drop(fence);
        let refused = waiting.await.unwrap().unwrap_err();
        assert!(matches!(refused, Error::Aborted(_)), "{backend}: {refused}");
        assert!(refused.to_string().contains("retry"), "{refused}");
        let (found, _) = engine.get_documents("old", &["w".into()], false).unwrap();
        assert!(found.is_empty(), "{backend}: written to the old generation");
        engine
            .upsert("live", vec![doc("w", "waited granite")])
            .await
            .unwrap();
        let (found, _) = engine.get_documents("new", &["w".into()], false).unwrap();
        assert_eq!(found.len(), 1, "{backend}");
        engine
            .upsert("old", vec![doc("o", "by its own name")])
            .await
            .unwrap();
        let (found, _) = engine.get_documents("old", &["o".into()], false).unwrap();
        assert_eq!(found.len(), 1, "{backend}");
    }
}
