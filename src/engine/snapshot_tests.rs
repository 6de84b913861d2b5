//! Snapshots on the hash embedder: restored collections answer exactly as the original, load
//! their indexes without re-embedding, take new writes without id collisions, and refuse a
//! different model.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::meta::Value;
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

fn open(dir: &Path, embedder: &Arc<HashEmbedder>) -> Engine {
    Engine::open(
        EngineConfig::new(dir, "hash"),
        Arc::new(HashModels(embedder.clone())),
    )
    .unwrap()
}

const WORDS: &[&str] = &[
    "granite", "basalt", "marble", "slate", "quartz", "shale", "flint", "chalk", "clay", "sand",
];

fn doc(i: usize) -> DocumentInput {
    let text: Vec<&str> = (0..12)
        .map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()])
        .collect();
    DocumentInput {
        id: format!("d{i}"),
        title: format!("Title {i}"),
        text: format!("{} number{i}", text.join(" ")),
        metadata: [("n".to_string(), Value::Int(i as i64))].into(),
        ..Default::default()
    }
}

/// Every mode's ranking (ids and scores) for a few queries.
async fn answers(engine: &Engine, collection: &str) -> Vec<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for mode in [Mode::Lexical, Mode::Dense, Mode::Hybrid] {
        for q in ["granite marble", "number7 slate", "chalk clay sand"] {
            let r = engine
                .search(
                    collection,
                    SearchParams {
                        query: q.into(),
                        mode,
                        top_k: 10,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            out.push(r.hits.into_iter().map(|h| (h.doc_id, h.score)).collect());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_answers_as_the_original_and_takes_new_writes() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = open(&dir.path().join("a"), &embedder);
    engine.create_collection("c", Default::default()).unwrap();
    engine
        .upsert("c", (0..60).map(doc).collect())
        .await
        .unwrap();
    engine
        .delete_documents("c", vec!["d3".into(), "d4".into()])
        .await
        .unwrap();
    let before = answers(&engine, "c").await;
    let archive = dir.path().join("c.snapshot");
    let manifest = engine
        .create_snapshot(&["c".into()], &archive)
        .await
        .unwrap();
    assert_eq!(manifest.collections[0].documents, 58);
    assert_eq!(
        manifest.collections[0].model_fingerprint,
        "hash-embedder-32"
    );
    assert!(!dir.path().join("c.partial").exists());

    // Into the same engine, under another name, where a crash left a deleted collection's
    // record: the restored collection does not inherit it.
    let stale = r#"{"fusion":{"method":"rrf","k":1.0,"lexical_weight":1.0,"dense_weight":1.0}}"#;
    engine.record_put("c2", "search", "adopted", stale).unwrap();
    let restored = engine
        .restore_snapshot(&archive, None, Some("c2"), &|_| Ok(()), &Ok)
        .unwrap();
    assert_eq!(engine.search_settings("c2").unwrap(), Default::default());
    assert_eq!(restored[0].document_count, 58);
    assert_eq!(answers(&engine, "c2").await, before);
    let e = engine
        .restore_snapshot(&archive, None, Some("c2"), &|_| Ok(()), &Ok)
        .unwrap_err();
    assert!(matches!(e, Error::CollectionExists(_)), "{e}");
    // Nor under the name of an alias (one name, one thing).
    engine.set_alias("latest", "c", Some("")).unwrap();
    let e = engine
        .restore_snapshot(&archive, None, Some("latest"), &|_| Ok(()), &Ok)
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    assert_eq!(engine.collection("latest").unwrap().record().name, "c");
    engine.delete_alias("latest", None).unwrap();

    // Into another data directory: loaded, not re-embedded; then new writes, and a reopen.
    let fresh = Arc::new(HashEmbedder::new(32).unwrap());
    {
        let other = open(&dir.path().join("b"), &fresh);
        other
            .restore_snapshot(&archive, Some("c"), None, &|_| Ok(()), &Ok)
            .unwrap();
        assert_eq!(answers(&other, "c").await, before);
        assert_eq!(fresh.documents_embedded(), 0, "nothing re-embedded");
        other
            .upsert("c", (60..70).map(doc).collect())
            .await
            .unwrap();
        other
            .delete_documents("c", vec!["d5".into()])
            .await
            .unwrap();
        let c = other.collection("c").unwrap();
        assert_eq!(c.info().document_count, 67);
        // New chunks got ids no restored chunk has: every document still has all its chunks.
        let (found, missing) = other
            .get_documents(
                "c",
                &(0..70).map(|i| format!("d{i}")).collect::<Vec<_>>(),
                true,
            )
            .unwrap();
        assert_eq!(missing.len(), 3);
        assert!(found.iter().all(|d| d.chunks.len() == d.chunk_ids.len()));
    }
    let other = open(&dir.path().join("b"), &fresh);
    let hits = other
        .search(
            "c",
            SearchParams {
                query: "number65".into(),
                mode: Mode::Lexical,
                top_k: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(hits.hits[0].doc_id, "d65");
    assert_eq!(other.collection("c").unwrap().info().document_count, 67);

    // Another model: refused, nothing left behind.
    let wrong = open(
        &dir.path().join("w"),
        &Arc::new(HashEmbedder::new(16).unwrap()),
    );
    let e = wrong
        .restore_snapshot(&archive, None, None, &|_| Ok(()), &Ok)
        .unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    assert!(e.to_string().contains("fingerprint"), "{e}");
    assert!(wrong.list_collections().unwrap().is_empty());
    // Not a snapshot at all.
    std::fs::write(dir.path().join("junk"), b"not a tar").unwrap();
    assert!(engine
        .restore_snapshot(&dir.path().join("junk"), None, Some("j"), &|_| Ok(()), &Ok)
        .is_err());
}

/// A snapshot of several collections is one instant across them: a writer that writes
/// document i to `a` and then to `z`, throughout the snapshot, never leaves `z` ahead of `a`
/// in the archive. (Copied one at a time, in name order, `z` would hold the writes made while
/// the large `m` between them was being copied, and `a` would not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_several_collections_is_one_instant() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    let engine = Arc::new(open(&dir.path().join("a"), &embedder));
    for name in ["a", "m", "z"] {
        engine.create_collection(name, Default::default()).unwrap();
    }
    // A large `m`, so its copy takes long enough for the writer to move on meanwhile.
    for batch in 0..20 {
        engine
            .upsert(
                "m",
                (10_000 + batch * 100..10_000 + (batch + 1) * 100)
                    .map(doc)
                    .collect(),
            )
            .await
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                engine.upsert("a", vec![doc(i)]).await.unwrap();
                engine.upsert("z", vec![doc(i)]).await.unwrap();
                i += 1;
            }
            i
        })
    };
    let mut checked = 0;
    for round in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let archive = dir.path().join(format!("all-{round}.snapshot"));
        let manifest = engine.create_snapshot(&[], &archive).await.unwrap();
        assert!(manifest.seq > 0);
        let mut names: Vec<&str> = manifest
            .collections
            .iter()
            .map(|c| c.record.name.as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "m", "z"]);
        // Restored elsewhere: the ids the writer put in `z` are all in `a`, and `a` is at most
        // one write ahead.
        let other = open(&dir.path().join(format!("restored-{round}")), &embedder);
        other
            .restore_snapshot(&archive, None, None, &|_| Ok(()), &Ok)
            .unwrap();
        let written = |name: &str| {
            let mut n = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = other
                    .list_documents(
                        name,
                        &crate::filter::Filter::default(),
                        after.as_deref(),
                        MAX_PAGE,
                        false,
                    )
                    .unwrap();
                n.extend(
                    page.documents
                        .iter()
                        .filter_map(|d| d.id[1..].parse::<usize>().ok())
                        .filter(|i| *i < 10_000),
                );
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            n.sort_unstable();
            n
        };
        let (a, b) = (written("a"), written("z"));
        assert_eq!(b, (0..b.len()).collect::<Vec<_>>());
        assert!(
            a.len() == b.len() || a.len() == b.len() + 1,
            "round {round}: a holds {} writes, z {}",
            a.len(),
            b.len()
        );
        checked += b.len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = writer.await.unwrap();
    assert!(
        checked > 0 && total > 0,
        "the writer made progress during the snapshots"
    );
}
