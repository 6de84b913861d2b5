//! Re-index jobs on both backends, on the hash embedder (real sled, tantivy and HNSW, or a
//! real Qdrant): a new generation with another chunking is built from the stored texts while
//! a client keeps writing through the alias, and the alias is switched at the end. What the
//! client was acknowledged is exactly what the alias serves afterwards. `tests/reindex.rs`
//! runs the same through the real server and model.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::tests::{finished, stop as stop_jobs};
use super::*;
use crate::engine::{CollectionSettings, DocumentInput};
use crate::meta::{Metadata, Value};
use crate::model::hashed::{HashEmbedder, HashModels};

const DOCS: usize = 300;

fn doc(i: usize, version: u32) -> DocumentInput {
    let words = ["granite", "basalt", "slate", "marble", "quarry", "chisel"];
    let text: Vec<String> = (0..40)
        .map(|k| format!("{}{}", words[(i + k) % words.len()], (i * 7 + k) % 13))
        .collect();
    DocumentInput {
        id: format!("d{i:03}"),
        title: format!("doc {i}"),
        text: format!("v{version} {}", text.join(" ")),
        metadata: Metadata::from([("n".to_string(), Value::Int(i as i64))]),
        source: i.is_multiple_of(2).then(|| "/data/even".to_string()),
        ..Default::default()
    }
}

/// The text each document has now, read through `collection`.
fn contents(engine: &Engine, collection: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let (page, next) = engine
            .document_hashes(collection, after.as_deref(), 100)
            .unwrap();
        let ids: Vec<String> = page.into_iter().map(|(id, _)| id).collect();
        let (docs, _) = engine.get_documents(collection, &ids, false).unwrap();
        out.extend(docs.into_iter().map(|d| (d.input.id, d.input.text)));
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_catches_up_with_writes_and_switches_the_alias() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, config) in crate::engine::backends_tests::configs(data.path()) {
        eprintln!("a re-index on the {backend} backend");
        let engine =
            Arc::new(Engine::open(config, Arc::new(HashModels(embedder.clone()))).unwrap());
        reindex_on(backend, engine, root.path()).await;
    }
}

async fn reindex_on(backend: &str, engine: Arc<Engine>, root: &std::path::Path) {
    engine
        .create_collection("gen1", Default::default())
        .unwrap();
    for part in (0..DOCS).collect::<Vec<_>>().chunks(100) {
        let docs = part.iter().map(|&i| doc(i, 1)).collect();
        engine.upsert("gen1", docs).await.unwrap();
    }
    engine.set_alias("live", "gen1", Some("")).unwrap();
    let smaller = CollectionSettings {
        chunk_tokens: Some(24),
        chunk_overlap: Some(4),
        ..Default::default()
    };
    engine.create_collection("gen2", smaller).unwrap();
    let jobs = Jobs::start(
        engine.clone(),
        JobSettings {
            roots: ImportRoots::new(&[root.to_path_buf()]).unwrap(),
            ..Default::default()
        },
    )
    .unwrap();

    // Refusals before anything queues.
    let e = jobs.submit_reindex("gen1", "live", None).unwrap_err();
    assert!(e.is_user_error(), "{e}");
    let e = jobs.submit_reindex("live", "gen1", None).unwrap_err();
    assert!(e.is_user_error(), "{e}");
    let e = jobs
        .submit_reindex("gen2", "gen1", Some("nosuch"))
        .unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");

    // One client writes through the alias all along: updates, new documents, deletes. Its
    // model of the collection holds what it was acknowledged (an ABORTED write, refused at
    // the switch, is retried).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
            let (mut step, mut aborted) = (0usize, 0usize);
            while !stop.load(Ordering::Acquire) {
                step += 1;
                let i = (step * 37) % (DOCS + 40);
                let version = 2 + step as u32;
                let delete = step % 5 == 0;
                let id = doc(i, version).id;
                let done = if delete {
                    engine
                        .delete_documents("live", vec![id.clone()])
                        .await
                        .map(|_| ())
                } else {
                    engine
                        .upsert("live", vec![doc(i, version)])
                        .await
                        .map(|_| ())
                };
                match done {
                    Ok(()) => {
                        let text = (!delete).then(|| doc(i, version).text);
                        model.insert(id, text);
                    }
                    Err(Error::Aborted(_)) => aborted += 1,
                    Err(e) => panic!("a write failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (model, step, aborted)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = jobs.submit_reindex("gen2", "live", Some("live")).unwrap();
    assert_eq!(job.spec.from_collection.as_deref(), Some("gen1"));
    let job = finished(&jobs, job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{backend}: {job:?}");
    assert_eq!(
        engine.alias_target("live").unwrap().as_deref(),
        Some("gen2")
    );
    // Some writes after the switch, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    let (model, steps, aborted) = writer.await.unwrap();
    eprintln!("{backend}: {steps} writes during the re-index, {aborted} refused at the switch");

    // What the alias serves is the initial documents with every acknowledged write applied.
    let mut expected: BTreeMap<String, String> =
        (0..DOCS).map(|i| (doc(i, 1).id, doc(i, 1).text)).collect();
    for (id, text) in model {
        match text {
            Some(t) => expected.insert(id, t),
            None => expected.remove(&id),
        };
    }
    let served = contents(&engine, "live");
    assert_eq!(served.len(), expected.len(), "{backend}");
    assert!(served == expected, "{backend}: the new generation differs");
    // The texts were chunked again with the new generation's settings, and equal contents
    // hash equally across generations (the catch-up compares by hash).
    let same = (0..DOCS)
        .map(|i| doc(i, 1).id)
        .find_map(|id| {
            let (old, _) = engine
                .get_documents("gen1", std::slice::from_ref(&id), false)
                .unwrap();
            let (new, _) = engine.get_documents("gen2", &[id], false).unwrap();
            match (old.first(), new.first()) {
                (Some(o), Some(n)) if o.input.text == n.input.text => Some((o.clone(), n.clone())),
                _ => None,
            }
        })
        .expect("a document the writer left alone");
    assert_eq!(same.0.content_hash, same.1.content_hash, "{backend}");
    assert!(
        same.1.chunk_ids.len() > same.0.chunk_ids.len(),
        "{backend}: {} chunks against {}",
        same.1.chunk_ids.len(),
        same.0.chunk_ids.len()
    );
    assert!(job.counts.seen as usize >= DOCS - 60, "{:?}", job.counts);
    stop_jobs(jobs).await;
}

/// A re-index stopped mid-copy (a server stop or crash) resumes after its last committed
/// batch: every document copied exactly once, none read or embedded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reindex_resumes_without_copying_twice() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let n = 600;
    let slow = || {
        HashEmbedder::new(32)
            .unwrap()
            .with_delay(Duration::from_millis(2))
    };
    let id = {
        let engine = super::tests::engine(data.path(), slow(), Default::default());
        for part in (0..n).collect::<Vec<_>>().chunks(100) {
            let docs = part.iter().map(|&i| doc(i, 1)).collect();
            engine.upsert("c", docs).await.unwrap();
        }
        engine.create_collection("g2", Default::default()).unwrap();
        let jobs = super::tests::jobs(&engine, root.path());
        let id = jobs.submit_reindex("g2", "c", None).unwrap().id;
        let mut changes = jobs.subscribe();
        while jobs.get(id).unwrap().counts.created < 128 {
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
        stop_jobs(jobs).await;
        let job = engine
            .named_tree("jobs")
            .map(|tree| JobStore { tree })
            .unwrap()
            .get(id)
            .unwrap()
            .unwrap();
        assert_eq!(job.state, JobState::Running, "a stopped job stays running");
        assert!(
            job.counts.created < n as u64,
            "stopped before the end: {job:?}"
        );
        id
    };
    let engine = super::tests::engine(data.path(), slow(), Default::default());
    let jobs = super::tests::jobs(&engine, root.path());
    let job = finished(&jobs, id).await;
    assert_eq!(
        (job.state, job.resumed),
        (JobState::Succeeded, 1),
        "{job:?}"
    );
    assert_eq!(
        (job.counts.seen, job.counts.created, job.counts.unchanged),
        (n as u64, n as u64, 0),
        "{job:?}"
    );
    assert_eq!(contents(&engine, "g2"), contents(&engine, "c"));
    stop_jobs(jobs).await;
}

/// An ingestion job into an alias that is switched while it runs fails no document: a batch
/// refused at the switch (nothing written) is retried, and goes to the new collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_into_an_alias_switched_midway_fails_nothing() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.jsonl");
    let n = 800;
    let lines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"_id": "d{i}", "text": "word{i} granite"}}"#))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let slow = HashEmbedder::new(32)
        .unwrap()
        .with_delay(Duration::from_millis(2));
    let engine = super::tests::engine(data.path(), slow, Default::default());
    engine.create_collection("c2", Default::default()).unwrap();
    engine.set_alias("live", "c", Some("")).unwrap();
    let jobs = super::tests::jobs(&engine, root.path());
    let source = crate::source::SourceSpec {
        path: corpus,
        ..Default::default()
    };
    let id = jobs.submit("live", source, false).unwrap().id;
    let mut changes = jobs.subscribe();
    while jobs.get(id).unwrap().counts.created < 100 {
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
    }
    // The switch as a re-index makes it: under the old collection's write lock.
    let fence = engine.write_fence("c").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.set_alias("live", "c2", Some("c")).unwrap();
    drop(fence);
    let job = finished(&jobs, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.counts.failed, job.counts.created), (0, n), "{job:?}");
    let old = engine.collection("c").unwrap().info().document_count;
    let new = engine.collection("c2").unwrap().info().document_count;
    assert_eq!(old + new, n, "each document in one collection");
    assert!(old >= 100 && new > 0, "split at the switch: {old} + {new}");
    stop_jobs(jobs).await;
}
