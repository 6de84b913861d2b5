//! The web console in real browsers: headless Chromium (Debian's) and Firefox (Debian's ESR,
//! with geckodriver built from its crate), through Selenium from PyPI
//! (`scripts/provision-browser.sh`), each drive the real console against the real server, its
//! real model and a real router (llama.cpp): every page loads, a search's hits and an
//! explanation chart, a filter's error pointing at its column, a document's chunks, a grounded
//! answer with its citations linked to sources and its sources to their chunks, a job
//! followed live and another cancelled, an eval comparison between two generations and one
//! between settings as charts, the recorded gate decisions charted, a read-only key with no
//! write controls (and the API refusing its write), keyboard and labels, a phone's width, and
//! no request to any host but the server. Screenshots go to `target/console-screenshots`
//! (Firefox's to its `firefox/`). Where no browser can be had the test says SKIPPED loudly,
//! and so does the Firefox run where Firefox cannot be had.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{fixture_dir, keyed, test_config, TestServer};
use quarry::answer::router::{Endpoint, RetryPolicy};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;

const ADMIN: &str = "console-admin-0123456789";
const READER: &str = "console-reader-0123456789";

/// A browser to drive: its name, binary and WebDriver.
struct Browser {
    name: &'static str,
    binary: String,
    driver: String,
}

/// The browsers' python and the browsers there are (Chromium always; Firefox where it can be
/// had, else said loudly), or `None` (said loudly).
fn browsers() -> Option<(String, Vec<Browser>)> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision-browser.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run provision-browser.sh");
    if out.status.code() == Some(3) {
        eprintln!(
            "!!! SKIPPED: the console's browser test: no browser on this machine (see above) !!!"
        );
        return None;
    }
    assert!(out.status.success(), "provision-browser.sh failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let line = |i: usize| lines.get(i).cloned().unwrap_or_default();
    let mut found = vec![Browser {
        name: "chromium",
        binary: line(1),
        driver: line(2),
    }];
    if line(3).is_empty() || line(4).is_empty() {
        eprintln!(
            "!!! SKIPPED: the console's Firefox run: no Firefox or geckodriver (see above) !!!"
        );
    } else {
        found.push(Browser {
            name: "firefox",
            binary: line(3),
            driver: line(4),
        });
    }
    Some((line(0), found))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let Some((python, browsers)) = browsers() else {
        return;
    };
    // A real router behind the Ask page: llama.cpp with a small model.
    let (llama_python, gguf) = common::llama::provision();
    let (_llama, router) = common::llama::start_llama(&llama_python, &gguf).await;
    let data = tempfile::tempdir().unwrap();
    let imports = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.import_roots = vec![imports.path().to_path_buf()];
    config.answer.routers = vec![Endpoint::from_url(&router)];
    config.answer.retry = RetryPolicy {
        request_timeout_ms: 120_000,
        deadline_ms: 300_000,
        ..RetryPolicy::default()
    };
    // SciFact, where ../shared has it, for the page load times on a real collection.
    // (Canonical: a job's source path may not contain `..`.)
    let scifact = common::scifact().map(|d| d.canonicalize().expect("SciFact's directory"));
    if let Some(dir) = &scifact {
        config.import_roots.push(dir.clone());
    }
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: None,
        keys: vec![ScopedKey {
            key: READER.into(),
            role: Role::Read,
            collections: vec!["mini".into(), "mini_small".into()],
            name: "reader".into(),
        }],
    };
    let server = TestServer::start(config).await;
    let channel = server.channel().await;

    // Two generations of one corpus: the default chunking, and tiny chunks.
    let mut collections = pb::collections_client::CollectionsClient::new(channel.clone());
    create_fixture_collection_keyed(&channel, "mini", None).await;
    create_fixture_collection_keyed(
        &channel,
        "mini_small",
        Some(pb::CollectionConfig {
            chunk_tokens: 24,
            chunk_overlap: Some(0),
            ..Default::default()
        }),
    )
    .await;
    collections
        .set_alias(keyed(
            pb::SetAliasRequest {
                alias: "docs".into(),
                collection: "mini".into(),
                expect_collection: Some(String::new()),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();

    // The jobs page ingests into a collection of its own.
    collections
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: "notes".into(),
                config: None,
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    if let Some(dir) = &scifact {
        ingest_scifact(&channel, dir).await;
    }
    // Judgments attached to the collection: the eval page runs them without files.
    let set = quarry::eval::beir::Dataset::judgments_only(&fixture_dir());
    let judged = quarry::eval::beir::join(&set.queries().unwrap(), &set.qrels("test").unwrap());
    let queries: Vec<pb::EvalQuery> = judged
        .unwrap()
        .into_iter()
        .map(|q| pb::EvalQuery {
            id: q.id,
            text: q.text,
            judgments: q.judgments,
        })
        .collect();
    let put = pb::PutEvalSplitRequest {
        collection: "mini".into(),
        split: "test".into(),
        queries,
    };
    let mut eval = pb::eval_client::EvalClient::new(channel.clone());
    eval.put_eval_split(keyed(put, Some(ADMIN))).await.unwrap();
    // A settings decision recorded with the collection (the eval page charts it), then a
    // proposal left open (the page compares it with the adopted settings).
    let propose = |lexical: f32, candidates: u32| pb::ProposeSettingsRequest {
        collection: "mini".into(),
        settings: Some(pb::SearchSettings {
            fusion: Some(pb::Fusion {
                method: Some(pb::fusion::Method::Weighted(pb::WeightedFusion {
                    lexical_weight: Some(lexical),
                    dense_weight: Some(1.0 - lexical),
                })),
            }),
            candidates,
            sum_decay: 0.0,
        }),
    };
    eval.propose_settings(keyed(propose(0.5, 50), Some(ADMIN)))
        .await
        .unwrap();
    let adopt = pb::AdoptSettingsRequest {
        collection: "mini".into(),
        split: "test".into(),
        ..Default::default()
    };
    let decided = eval
        .adopt_settings(keyed(adopt, Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    eprintln!("settings decision for the console: {decided:?}");
    eval.propose_settings(keyed(propose(0.8, 40), Some(ADMIN)))
        .await
        .unwrap();

    let shots_root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    for browser in &browsers {
        // A source for the jobs page big enough that a second job waits behind the first (one
        // per browser: a second run of the same texts would skip them and end at once).
        let corpus = imports.path().join(format!("many-{}.jsonl", browser.name));
        let mut f = std::fs::File::create(&corpus).unwrap();
        for i in 0..1500 {
            writeln!(
                f,
                "{{\"_id\": \"{}-{i}\", \"text\": \"Note {i} about basalt, granite and quartz, kept for the jobs page in {}.\"}}",
                browser.name, browser.name
            )
            .unwrap();
        }
        drop(f);
        // Chromium's screenshots at the top (the README shows two), Firefox's beside them.
        let shots = match browser.name {
            "chromium" => shots_root.clone(),
            other => shots_root.join(other),
        };
        let cfg = serde_json::json!({
            "base": server.http_url,
            "admin_key": ADMIN,
            "read_key": READER,
            "collection": "mini",
            "other": "mini_small",
            "query": "which organelle makes ATP",
            // Answered by the real router (llama.cpp): the page links citations to sources
            // and sources to their chunks.
            "ask": "which organelle makes ATP?",
            "bad_filter": "year >= ",
            "queries_file": fixture_dir().join("queries.jsonl"),
            "qrels_file": fixture_dir().join("qrels/test.tsv"),
            "job_path": corpus,
            "jobs_collection": "notes",
            "screenshots": shots,
            "browser": browser.name,
            "binary": browser.binary,
            "driver": browser.driver,
            // The SciFact page load times are measured once, in Chromium.
            "scifact": scifact.is_some() && browser.name == "chromium",
        });
        let printed = drive(&python, &cfg).await;
        if scifact.is_some() && browser.name == "chromium" {
            assert!(printed.contains("SciFact page load times"), "{printed}");
        }
        for page in [
            "collections",
            "documents",
            "search",
            "ask",
            "jobs",
            "eval",
            "eval-settings",
            "collections-phone",
        ] {
            assert!(
                shots.join(format!("{page}.png")).is_file(),
                "{}: no screenshot of {page}",
                browser.name
            );
        }
    }
    // The job the browser cancelled really is cancelled on the server.
    let jobs = pb::jobs_client::JobsClient::new(channel.clone())
        .list_jobs(keyed(pb::ListJobsRequest::default(), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        jobs.iter()
            .any(|j| j.state == pb::JobState::Cancelled as i32),
        "{jobs:?}"
    );
    server.stop().await;
}

/// Runs the browser driver with `cfg`; returns what it printed (each line echoed), after
/// checking it succeeded.
async fn drive(python: &str, cfg: &serde_json::Value) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/drive.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the browser driver");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.to_string().as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in printed.lines() {
        eprintln!("[{}] {line}", cfg["browser"].as_str().unwrap_or("browser"));
    }
    assert!(
        out.status.success(),
        "the {} run failed:\n{printed}",
        cfg["browser"]
    );
    printed
}

/// The fixture corpus in a new collection, created and filled with the admin key.
async fn create_fixture_collection_keyed(
    channel: &tonic::transport::Channel,
    name: &str,
    config: Option<pb::CollectionConfig>,
) {
    pb::collections_client::CollectionsClient::new(channel.clone())
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: name.into(),
                config,
            },
            Some(ADMIN),
        ))
        .await
        .expect("create a collection");
    pb::documents_client::DocumentsClient::new(channel.clone())
        .upsert_documents(keyed(
            pb::UpsertDocumentsRequest {
                collection: name.into(),
                documents: common::fixture_docs(),
            },
            Some(ADMIN),
        ))
        .await
        .expect("fill a collection");
}

/// SciFact's corpus in collection `scifact`, through a server-side job (as an operator would).
async fn ingest_scifact(channel: &tonic::transport::Channel, dir: &std::path::Path) {
    pb::collections_client::CollectionsClient::new(channel.clone())
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: "scifact".into(),
                config: None,
            },
            Some(ADMIN),
        ))
        .await
        .expect("create scifact");
    let mut jobs = pb::jobs_client::JobsClient::new(channel.clone());
    let job = jobs
        .submit_ingest(keyed(
            pb::SubmitIngestRequest {
                collection: "scifact".into(),
                source: Some(pb::IngestSource {
                    path: dir.join("corpus.jsonl.gz").display().to_string(),
                    ..Default::default()
                }),
                sync: false,
                switch_alias: String::new(),
            },
            Some(ADMIN),
        ))
        .await
        .expect("submit the SciFact job")
        .into_inner();
    let started = std::time::Instant::now();
    loop {
        let now = jobs
            .get_job(keyed(pb::GetJobRequest { id: job.id.clone() }, Some(ADMIN)))
            .await
            .unwrap()
            .into_inner();
        if now.state == pb::JobState::Succeeded as i32 {
            let c = now.counts.unwrap_or_default();
            eprintln!(
                "SciFact ingested: {} documents, {} chunks in {:.0} s",
                c.created,
                c.chunks,
                started.elapsed().as_secs_f64()
            );
            assert_eq!(c.failed, 0);
            return;
        }
        assert!(
            now.state == pb::JobState::Queued as i32 || now.state == pb::JobState::Running as i32,
            "{now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
