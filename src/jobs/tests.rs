//! Jobs on the hash embedder: real sled, tantivy and HNSW, no model. The same paths run with
//! the real model over gRPC and the real binary in `tests/jobs.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::{DocumentInput, EngineConfig, Limits};
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::source::{Format, SourceSpec};

pub(super) fn engine(dir: &Path, embedder: HashEmbedder, limits: Limits) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir, "hash");
    config.limits = limits;
    let engine = Engine::open(config, Arc::new(HashModels(Arc::new(embedder)))).unwrap();
    if engine.collection("c").is_err() {
        engine.create_collection("c", Default::default()).unwrap();
    }
    Arc::new(engine)
}

pub(super) fn jobs(engine: &Arc<Engine>, root: &Path) -> Jobs {
    Jobs::start(
        engine.clone(),
        JobSettings {
            roots: ImportRoots::new(&[root.to_path_buf()]).unwrap(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn source(path: PathBuf) -> SourceSpec {
    SourceSpec {
        path,
        ..Default::default()
    }
}

/// Waits until job `id` has finished.
pub(super) async fn finished(jobs: &Jobs, id: u64) -> Job {
    let mut changes = jobs.subscribe();
    for _ in 0..600 {
        let job = jobs.get(id).unwrap();
        if job.state.is_finished() {
            return job;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    panic!("job {id} did not finish: {:?}", jobs.get(id).unwrap());
}

pub(super) async fn stop(jobs: Jobs) {
    tokio::task::spawn_blocking(move || jobs.stop())
        .await
        .unwrap();
}

/// On both backends: the job's state stays in the front end's sled, the documents go where
/// the collection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_job_ingests_then_reruns_cheaply_and_syncs() {
    let data = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(32).unwrap());
    for (backend, config) in crate::engine::backends_tests::configs(data.path()) {
        let engine = Engine::open(config, Arc::new(HashModels(embedder.clone()))).unwrap();
        engine.create_collection("c", Default::default()).unwrap();
        eprintln!("a directory job on the {backend} backend");
        directory_job_on(Arc::new(engine)).await;
    }
}

async fn directory_job_on(engine: Arc<Engine>) {
    let root = tempfile::tempdir().unwrap();
    let docs = root.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    for i in 0..10 {
        std::fs::write(docs.join(format!("d{i}.txt")), format!("granite slab {i}")).unwrap();
    }
    std::fs::write(docs.join("sub/note.md"), "# Note\n\nmarble").unwrap();
    let jobs = jobs(&engine, root.path());

    let job = jobs.submit("c", source(docs.clone()), false).unwrap();
    assert_eq!(job.state, JobState::Queued);
    let job = finished(&jobs, job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!((job.counts.seen, job.counts.created), (11, 11));
    assert_eq!(job.items_total, 11);
    assert_eq!(job.bytes_done, job.bytes_total);
    assert!(job.counts.chunks >= 11);
    let (found, _) = engine
        .get_documents("c", &["sub/note.md".into()], false)
        .unwrap();
    assert_eq!(found[0].input.title, "Note");
    assert_eq!(
        found[0].input.source.as_deref(),
        Some(docs.canonicalize().unwrap().to_string_lossy().as_ref())
    );

    // Again: nothing to embed. Then change one, remove one, add one, and sync.
    let again = finished(
        &jobs,
        jobs.submit("c", source(docs.clone()), false).unwrap().id,
    )
    .await;
    assert_eq!(again.counts.unchanged, 11);
    std::fs::write(docs.join("d0.txt"), "granite slab changed").unwrap();
    std::fs::remove_file(docs.join("d1.txt")).unwrap();
    std::fs::write(docs.join("new.txt"), "basalt").unwrap();
    // A document written by a client, not from this source, is not the sync's to delete.
    engine
        .upsert(
            "c",
            vec![DocumentInput {
                id: "client".into(),
                text: "mine".into(),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    let synced = finished(
        &jobs,
        jobs.submit("c", source(docs.clone()), true).unwrap().id,
    )
    .await;
    let c = synced.counts;
    assert_eq!(
        (c.created, c.updated, c.unchanged, c.deleted, c.failed),
        (1, 1, 9, 1, 0),
        "{synced:?}"
    );
    let (_, missing) = engine
        .get_documents("c", &["d1.txt".into(), "client".into()], false)
        .unwrap();
    assert_eq!(missing, vec!["d1.txt".to_string()]);
    // The jobs-by-state gauge is exported (its values are process-wide: tests share them).
    assert!(crate::metrics::render().contains("quarry_jobs{state=\"succeeded\"}"));
    let (listed, more) = jobs.list(None, 2, |_| true).unwrap();
    assert_eq!(listed[0].id, synced.id, "newest first");
    assert!(more);
    stop(jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_only_its_document() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.jsonl");
    let mut lines: Vec<Vec<u8>> = vec![
        br#"{"_id": "ok1", "text": "granite", "metadata": {"year": 2020}}"#.to_vec(),
        b"not json".to_vec(),
        br#"{"text": "no id"}"#.to_vec(),
        br#"{"_id": "ok1", "text": "again"}"#.to_vec(),
        br#"{"_id": "typed", "text": "marble", "metadata": {"year": "twenty"}}"#.to_vec(),
        br#"{"_id": "empty", "text": "  "}"#.to_vec(),
        b"{\"_id\": \"latin\", \"text\": \"caf\xe9\"}".to_vec(),
        format!(r#"{{"_id": "big", "text": "{}"}}"#, "x".repeat(3000)).into_bytes(),
        format!(r#"{{"_id": "huge", "text": "{}"}}"#, "y".repeat(70_000)).into_bytes(),
        br#"{"_id": "ok2", "text": "basalt"}"#.to_vec(),
    ];
    let mut bytes = Vec::new();
    for l in lines.iter_mut() {
        bytes.append(l);
        bytes.push(b'\n');
    }
    std::fs::write(&corpus, bytes).unwrap();
    let limits = Limits {
        max_document_bytes: 2000,
        ..Default::default()
    };
    let engine = engine(data.path(), HashEmbedder::new(32).unwrap(), limits);
    let jobs = jobs(&engine, root.path());
    let job = finished(&jobs, jobs.submit("c", source(corpus), false).unwrap().id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.counts.created, 2, "{job:?}");
    assert_eq!(job.counts.failed, 8, "{job:?}");
    let reason = |loc: &str| {
        job.failures
            .iter()
            .find(|f| f.location == loc)
            .unwrap_or_else(|| panic!("no failure at {loc}: {:?}", job.failures))
            .reason
            .clone()
    };
    assert!(reason("corpus.jsonl:2").contains("not JSON"));
    assert!(reason("corpus.jsonl:3").contains("_id"));
    assert!(reason("corpus.jsonl:4").contains("duplicate id"));
    assert!(reason("corpus.jsonl:4").contains("corpus.jsonl:1"));
    assert!(reason("corpus.jsonl:5").contains("year"));
    assert!(reason("corpus.jsonl:6").contains("empty"));
    assert!(reason("corpus.jsonl:7").contains("UTF-8"));
    assert!(reason("corpus.jsonl:8").contains("max_document_bytes"));
    assert!(reason("corpus.jsonl:9").contains("over the limit"));
    stop(jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_resumes_without_redoing_finished_work() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.jsonl.gz");
    let n = 1000;
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..n {
            writeln!(gz, r#"{{"_id": "d{i}", "text": "word{i} granite"}}"#).unwrap();
        }
        std::fs::write(&corpus, gz.finish().unwrap()).unwrap();
    }
    let slow = || {
        HashEmbedder::new(32)
            .unwrap()
            .with_delay(Duration::from_millis(2))
    };
    let id = {
        let engine = engine(data.path(), slow(), Limits::default());
        let jobs = jobs(&engine, root.path());
        let id = jobs.submit("c", source(corpus.clone()), false).unwrap().id;
        let mut changes = jobs.subscribe();
        while jobs.get(id).unwrap().counts.created < 200 {
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
        stop(jobs).await;
        let job = engine
            .named_tree("jobs")
            .map(|tree| JobStore { tree })
            .unwrap();
        let job = job.get(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Running, "a stopped job stays running");
        assert!(job.counts.created < n, "stopped before the end: {job:?}");
        id
    };
    let engine = engine(data.path(), slow(), Limits::default());
    let jobs = jobs(&engine, root.path());
    let job = finished(&jobs, id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.resumed, 1);
    // Every document exactly once: none was read again (it would count as unchanged).
    assert_eq!(
        (job.counts.seen, job.counts.created, job.counts.unchanged),
        (n, n, 0),
        "{job:?}"
    );
    assert_eq!(engine.collection("c").unwrap().info().document_count, n);
    stop(jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_collection_run_one_at_a_time_in_order_and_cancel() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("d");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..300 {
        std::fs::write(dir.join(format!("{i:04}.txt")), format!("text {i}")).unwrap();
    }
    let slow = HashEmbedder::new(32)
        .unwrap()
        .with_delay(Duration::from_millis(2));
    let engine = engine(data.path(), slow, Limits::default());
    let jobs = jobs(&engine, root.path());
    let first = jobs.submit("c", source(dir.clone()), false).unwrap();
    let second = jobs.submit("c", source(dir.clone()), false).unwrap();
    let third = jobs.submit("c", source(dir.clone()), false).unwrap();
    assert_eq!(jobs.get(second.id).unwrap().state, JobState::Queued);
    // A queued job is cancelled at once.
    assert_eq!(jobs.cancel(third.id).unwrap().state, JobState::Cancelled);
    let a = finished(&jobs, first.id).await;
    let b = finished(&jobs, second.id).await;
    assert_eq!(a.state, JobState::Succeeded);
    assert!(b.started_unix_ms >= a.finished_unix_ms, "{a:?} {b:?}");
    assert_eq!(b.counts.unchanged, 300);
    assert_eq!(jobs.get(third.id).unwrap().state, JobState::Cancelled);

    // A running job stops after its batch.
    std::fs::write(dir.join("0000.txt"), "changed").unwrap();
    let mut spec = source(dir.clone());
    spec.format = Format::Files;
    let running = jobs.submit("c", spec, false).unwrap();
    let mut changes = jobs.subscribe();
    while jobs.get(running.id).unwrap().state != JobState::Running {
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
    }
    jobs.cancel(running.id).unwrap();
    let c = finished(&jobs, running.id).await;
    assert_eq!(c.state, JobState::Cancelled);
    assert!(c.counts.seen < 300, "{c:?}");
    stop(jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_checked_before_they_queue() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.txt"), "x").unwrap();
    let engine = engine(
        data.path(),
        HashEmbedder::new(32).unwrap(),
        Limits::default(),
    );
    let off = Jobs::start(engine.clone(), JobSettings::default()).unwrap();
    let e = off
        .submit("c", source(root.path().into()), false)
        .unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    stop(off).await;
    let jobs = jobs(&engine, root.path());
    let e = jobs
        .submit("c", source(outside.path().join("x.txt")), false)
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    let e = jobs
        .submit("nope", source(root.path().into()), false)
        .unwrap_err();
    assert!(matches!(e, Error::CollectionNotFound(_)), "{e}");
    let mut bad_glob = source(root.path().into());
    bad_glob.include = vec!["[".into()];
    let e = jobs.submit("c", bad_glob, false).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = jobs.get(12345).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert!(jobs.list(None, 10, |_| true).unwrap().0.is_empty());
    stop(jobs).await;
}

/// A job outlives an outage of its backend: the Qdrant node dies while the job runs, the job
/// waits (still running, not failed), and once the node is back it finishes with every
/// document there and each counted once (a batch cut off by the outage finds the documents it
/// wrote unchanged when written again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_out_an_outage_of_its_backend() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(bin) = crate::qdrant::node::provisioned_binary(project).expect("provisioning runs")
    else {
        eprintln!("!!! SKIPPED: no Qdrant binary on this machine: a job's backend outage was NOT tested !!!");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let qdrant = dir.path().join("qdrant");
    let mut node =
        tokio::task::block_in_place(|| crate::qdrant::node::QdrantNode::single(&bin, &qdrant))
            .expect("Qdrant starts");
    let mut config = EngineConfig::new(dir.path().join("data"), "hash");
    config.backend.kind = crate::qdrant::BackendKind::Qdrant;
    config.backend.url = node.url();
    config.backend.timeout_secs = 5;
    let embedder = HashEmbedder::new(32)
        .unwrap()
        .with_delay(Duration::from_millis(2));
    let engine = Engine::open(config, Arc::new(HashModels(Arc::new(embedder)))).unwrap();
    engine.create_collection("c", Default::default()).unwrap();
    let engine = Arc::new(engine);
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.jsonl");
    let n = 2000u64;
    let lines: String = (0..n)
        .map(|i| format!("{{\"_id\": \"d{i}\", \"text\": \"word{i} granite\"}}\n"))
        .collect();
    std::fs::write(&corpus, lines).unwrap();
    let jobs = jobs(&engine, root.path());
    let id = jobs.submit("c", source(corpus), false).unwrap().id;
    let mut changes = jobs.subscribe();
    while jobs.get(id).unwrap().counts.created < 200 {
        let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
    }
    node.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = jobs.get(id).unwrap();
    assert_eq!(waiting.state, JobState::Running, "{waiting:?}");
    assert!(
        waiting.counts.seen < n,
        "the outage came too late: {waiting:?}"
    );
    tokio::task::block_in_place(|| {
        node.start()?;
        node.wait_ready(Duration::from_secs(120))
    })
    .expect("Qdrant restarts");
    let started = std::time::Instant::now();
    let job = loop {
        let job = jobs.get(id).unwrap();
        if job.state.is_finished() {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "{job:?}");
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    };
    let c = &job.counts;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(
        (c.seen, c.created + c.unchanged, c.updated, c.failed),
        (n, n, 0, 0),
        "{job:?}"
    );
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    for some in ids.chunks(500) {
        let (_, missing) = engine.get_documents("c", some, false).unwrap();
        assert!(missing.is_empty(), "lost {} documents", missing.len());
    }
    stop(jobs).await;
}
