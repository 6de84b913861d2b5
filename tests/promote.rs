//! Promotion gated by the eval, through the real server, the real models and SciFact.
//!
//! A part of SciFact (every document the test split judges, and others up to [`SUBSET`]) is
//! served through an alias; the test split is attached to the alias by `quarry evalset
//! upload` (the real binary), and a small split in TREC's formats too. Two generations are
//! re-indexed from the texts the server stores: one made worse on purpose (chunks of
//! [`TINY_CHUNK`] tokens) and one with another model (`all-minilm-l6-v2-w8`) and another
//! chunking, built while an application keeps writing through the alias. `quarry promote`
//! refuses the worse one (exit 3, the alias stays, the refusal recorded with the
//! collection); a promotion of the other over HTTP switches, catching up what the alias took
//! since, so every acknowledged write is served; `quarry rollback` restores the old answers
//! exactly. Keys: a write key may neither change judgments nor promote.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use common::generations::{served, Writer};
use common::{cli, keyed, test_config, TestServer};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::eval_client::EvalClient;
use pb::search_client::SearchClient;

const ADMIN: &str = "admin-0123456789abcdef";
const WRITER: &str = "writer-0123456789abcdef";
/// Documents served: every judged one of the test split, then others.
const SUBSET: usize = 1000;
/// The worse generation's chunk size, in tokens.
const TINY_CHUNK: &str = "24";
const OTHER_MODEL: &str = "all-minilm-l6-v2-w8";

fn live_text(i: usize, version: u32) -> String {
    format!("Field note {i}, revision {version}: the sample of weathered basalt was logged.")
}

/// The first SciFact documents (judged by the test split first), as the corpus has them.
fn subset(dir: &Path) -> Vec<pb::Document> {
    let set = quarry::eval::beir::Dataset::open(dir).unwrap();
    let judged: HashSet<String> = set
        .qrels("test")
        .unwrap()
        .into_values()
        .flat_map(|j| j.into_keys())
        .collect();
    let corpus = quarry::client::load::load_jsonl(&set.corpus_path().unwrap()).unwrap();
    let (mut first, rest): (Vec<_>, Vec<_>) =
        corpus.into_iter().partition(|d| judged.contains(&d.id));
    first.extend(rest.into_iter().take(SUBSET.saturating_sub(judged.len())));
    first
}

/// The top 10 (id, score) of the first test queries through `name`.
async fn answers(server: &TestServer, dir: &Path, name: &str) -> Vec<Vec<(String, f32)>> {
    let set = quarry::eval::beir::Dataset::open(dir).unwrap();
    let texts = set.queries().unwrap();
    let mut ids: Vec<String> = set.qrels("test").unwrap().into_keys().collect();
    ids.sort();
    let mut search = SearchClient::new(server.channel().await);
    let mut out = Vec::new();
    for id in ids.iter().take(40) {
        let hits = search
            .search(keyed(
                pb::SearchRequest {
                    collection: name.into(),
                    query: texts[id].clone(),
                    top_k: 10,
                    mode: pb::SearchMode::Hybrid as i32,
                    ..Default::default()
                },
                Some(ADMIN),
            ))
            .await
            .unwrap()
            .into_inner()
            .hits;
        out.push(hits.into_iter().map(|h| (h.document_id, h.score)).collect());
    }
    out
}

async fn collection(server: &TestServer, name: &str) -> pb::Collection {
    CollectionsClient::new(server.channel().await)
        .get_collection(keyed(
            pb::GetCollectionRequest { name: name.into() },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner()
}

/// `quarry ARGS --api-key ADMIN` against the server, off the async runtime.
async fn quarry(server: &TestServer, args: &[&str]) -> std::process::Output {
    let url = server.url.clone();
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--api-key".to_string(), ADMIN.to_string()]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli::quarry(&url, &args)
    })
    .await
    .unwrap()
}

/// Creates `name` and fills it from `from` by a re-index job, followed to its end.
async fn reindex(server: &TestServer, name: &str, config: pb::CollectionConfig, from: &str) {
    CollectionsClient::new(server.channel().await)
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: name.into(),
                config: Some(config),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let args = ["jobs", "reindex", "--from", from, "--collection", name];
    let out = quarry(
        server,
        &[&args[..], &["--wait", "--json", "--quiet"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{}", cli::text(&out));
    let job = cli::json(&out);
    assert_eq!(job["state"], "succeeded", "{job}");
    let c = collection(server, name).await;
    eprintln!(
        "re-index into {name}: {} documents, {} chunks in {:.1} s",
        c.document_count,
        c.chunk_count,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_worse_switches_equal_with_every_write_and_rollback_restores() {
    let Some(dir) = common::scifact() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: None,
        keys: vec![ScopedKey {
            key: WRITER.into(),
            role: Role::Write,
            collections: Vec::new(),
            name: "writer".into(),
        }],
    };
    let models = common::provision();
    let other = quarry::model::catalog::MODELS
        .iter()
        .find(|m| m.name == OTHER_MODEL)
        .expect("the catalog has the other model");
    quarry::model::fetch::ensure(other, &models, &mut |m: &str| eprintln!("[provision] {m}"))
        .expect("provision the other model");
    let server = TestServer::start(config).await;
    let mut collections = CollectionsClient::new(server.channel().await);
    let mut documents = DocumentsClient::new(server.channel().await);
    let mut eval = EvalClient::new(server.channel().await);

    // The first generation, served through the alias.
    collections
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: "gen1".into(),
                config: None,
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let docs = subset(&dir);
    let started = Instant::now();
    for part in docs.chunks(40) {
        documents
            .upsert_documents(keyed(
                pb::UpsertDocumentsRequest {
                    collection: "gen1".into(),
                    documents: part.to_vec(),
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }
    eprintln!(
        "gen1: {} documents in {:.1} s",
        docs.len(),
        started.elapsed().as_secs_f64()
    );
    collections
        .set_alias(keyed(
            pb::SetAliasRequest {
                alias: "sci".into(),
                collection: "gen1".into(),
                expect_collection: Some(String::new()),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();

    // Judgments attached to the alias: SciFact's test split from its BEIR directory, and a
    // small split from files in TREC's formats.
    let beir = dir.to_str().unwrap();
    let args = ["evalset", "upload", "--collection", "sci", "--beir", beir];
    let out = quarry(&server, &args).await;
    assert!(out.status.success(), "{}", cli::text(&out));
    assert!(
        cli::text(&out).contains("sci/test: 300 queries"),
        "{}",
        cli::text(&out)
    );
    let trec = tempfile::tempdir().unwrap();
    let topics = trec.path().join("topics.tsv");
    let qrels = trec.path().join("dev.qrels");
    std::fs::write(&topics, "1\t0-dimensional biomaterials show inductive properties.\n2\tsome text without judgments\n").unwrap();
    std::fs::write(&qrels, "1 0 31715818 1\n").unwrap();
    let (t, q) = (topics.to_str().unwrap(), qrels.to_str().unwrap());
    let args = ["evalset", "upload", "--collection", "sci", "--queries", t];
    let out = quarry(
        &server,
        &[&args[..], &["--qrels", q, "--split", "dev"]].concat(),
    )
    .await;
    assert!(out.status.success(), "{}", cli::text(&out));
    let out = quarry(
        &server,
        &["evalset", "list", "--collection", "sci", "--json"],
    )
    .await;
    let listed = cli::json(&out);
    let splits: Vec<(&str, u64)> = listed["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["split"].as_str().unwrap(), s["queries"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        splits,
        [("dev", 1), ("test", 300), ("train", 809)],
        "{listed}"
    );
    // Judgments decide promotions: a write key may read them, not change them.
    let put = pb::PutEvalSplitRequest {
        collection: "sci".into(),
        split: "test".into(),
        queries: Vec::new(),
    };
    let e = eval
        .put_eval_split(keyed(put, Some(WRITER)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let list = pb::ListEvalSplitsRequest {
        collection: "sci".into(),
    };
    assert!(eval
        .list_eval_splits(keyed(list, Some(WRITER)))
        .await
        .is_ok());

    // A generation made worse on purpose.
    let tiny = pb::CollectionConfig {
        chunk_tokens: TINY_CHUNK.parse().unwrap(),
        chunk_overlap: Some(0),
        ..Default::default()
    };
    reindex(&server, "gen_tiny", tiny, "sci").await;
    // Another model and chunking, while the application writes through the alias.
    let writer = Writer::start(
        server.channel().await,
        "sci",
        ADMIN,
        ("live-", 60),
        live_text,
    );
    let other = pb::CollectionConfig {
        embedding_model: OTHER_MODEL.into(),
        chunk_tokens: 128,
        chunk_overlap: Some(16),
        ..Default::default()
    };
    reindex(&server, "gen2", other, "sci").await;

    // The gate refuses the worse one, through the CLI: exit 3, with its table.
    let out = quarry(
        &server,
        &["promote", "--alias", "sci", "--candidate", "gen_tiny"],
    )
    .await;
    let said = cli::text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("REFUSED") && said.contains("ndcg@10"),
        "{said}"
    );
    eprintln!("{said}");
    assert_eq!(collection(&server, "sci").await.name, "gen1");
    let refused = collection(&server, "gen_tiny").await.gates;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = &refused[0];
    assert!(!r.holds && !r.switched, "{r:?}");
    assert_eq!((r.baseline.as_str(), r.split.as_str()), ("gen1", "test"));
    assert!(r.worse.contains(&"ndcg@10".to_string()), "{r:?}");
    let ndcg = r.metrics.iter().find(|m| m.metric == "ndcg@10").unwrap();
    assert!(ndcg.delta < 0.0 && ndcg.p_value < 0.05, "{ndcg:?}");
    // A write key may not promote.
    let promote = pb::PromoteRequest {
        alias: "sci".into(),
        candidate: "gen2".into(),
        ..Default::default()
    };
    let e = eval
        .promote(keyed(promote, Some(WRITER)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The quiet moment the old answers are taken at; the writes stop here.
    let written = writer.stop().await;
    // Index upkeep after the writes (a checkpoint relinks or rebuilds the graph) moves
    // approximate scores a little whatever the alias does: done now, before the answers are
    // taken, so that what the rollback must give back is well defined.
    server.engine().checkpoint().await.unwrap();
    let before = answers(&server, &dir, "sci").await;

    // The other generation, over HTTP: equal or better, so the alias switches, and the
    // writes the alias took after the re-index are caught up first.
    let reply = common::post_json(
        &format!("{}/v1/aliases/sci/promote", server.http_url),
        ADMIN,
        serde_json::json!({"candidate": "gen2", "split": "test"}),
    )
    .await;
    eprintln!("promotion of gen2: {reply}");
    assert_eq!(reply["promoted"], true, "{reply}");
    let promoted = collection(&server, "sci").await;
    assert_eq!(
        (promoted.name.as_str(), promoted.requested_alias.as_str()),
        ("gen2", "sci")
    );
    assert!(promoted.gates[0].switched && promoted.gates[0].holds);
    let initial: BTreeMap<String, String> = docs
        .iter()
        .map(|d| (d.id.clone(), d.text.clone()))
        .collect();
    let expected = written.applied_to(&initial);
    let now = served(server.channel().await, "sci", ADMIN).await;
    assert_eq!(now.len(), expected.len());
    assert!(
        now == expected,
        "the promoted generation lacks acknowledged writes"
    );
    eprintln!(
        "{} writes through the alias ({} refused at a switch); caught up at the promotion: {}",
        written.steps, written.aborted, promoted.gates[0].caught_up
    );

    // A comparison of two generations on the attached set, through the CLI.
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().to_str().unwrap();
    let args = [
        "eval",
        "--collection",
        "sci",
        "--compare",
        "gen1",
        "gen_tiny",
    ];
    let out = quarry(
        &server,
        &[
            &args[..],
            &["--modes", "hybrid", "--out", out_path, "--quiet"],
        ]
        .concat(),
    )
    .await;
    let said = cli::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("gen_tiny/hybrid against gen1/hybrid") && said.contains("gate refuses"),
        "{said}"
    );
    assert!(out_dir.path().join("summary.json").exists());

    // Rollback: the old generation serves again, with exactly the old answers.
    let out = quarry(&server, &["rollback", "--alias", "sci", "--json"]).await;
    assert!(out.status.success(), "{}", cli::text(&out));
    let back = cli::json(&out);
    assert_eq!(
        (back["action"].as_str(), back["candidate"].as_str()),
        (Some("rollback"), Some("gen1")),
        "{back}"
    );
    assert_eq!(collection(&server, "sci").await.name, "gen1");
    let after = answers(&server, &dir, "sci").await;
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (b, a))| b != a)
        .collect();
    assert!(
        changed.is_empty(),
        "rollback ({back}) changed the answers: {changed:?}"
    );

    // Search settings: a small grid tuned on train and checked on test, over HTTP; then a
    // proposal by hand, adopted or refused by the gate through the CLI.
    let grid = serde_json::json!([
        {"fusion": {"weighted": {"lexical_weight": 0.6, "dense_weight": 0.4}}},
        {"fusion": {"weighted": {"lexical_weight": 0.3, "dense_weight": 0.7}}, "candidates": 200},
        {"fusion": {"rrf": {"k": 60}}},
    ]);
    let tuned = common::post_json(
        &format!("{}/v1/collections/sci/tune", server.http_url),
        ADMIN,
        serde_json::json!({"grid": grid}),
    )
    .await;
    eprintln!("tuning: {tuned}");
    assert_eq!(tuned["grid"].as_array().map(Vec::len), Some(3), "{tuned}");
    assert_eq!(tuned["check"]["split"], "test", "{tuned}");
    assert_eq!(tuned["check"]["action"], "tune", "{tuned}");
    let e = eval
        .tune(keyed(
            pb::TuneRequest {
                collection: "sci".into(),
                tune_split: "test".into(),
                check_split: "test".into(),
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "the split tuned on is never reported"
    );
    let args = [
        "settings",
        "propose",
        "--collection",
        "sci",
        "--fusion",
        "rrf:10",
    ];
    let out = quarry(&server, &args).await;
    assert!(out.status.success(), "{}", cli::text(&out));
    let args = ["settings", "adopt", "--collection", "sci", "--json"];
    let out = quarry(&server, &args).await;
    let record = cli::json(&out);
    let adopted = record["switched"] == true;
    assert_eq!(
        out.status.code(),
        Some(if adopted { 0 } else { 3 }),
        "{record}"
    );
    let settings = collection(&server, "sci").await.search_settings.unwrap();
    let rrf = matches!(
        settings.fusion.and_then(|f| f.method),
        Some(pb::fusion::Method::Rrf(_))
    );
    assert_eq!(rrf, adopted, "{record}");
    eprintln!("rrf:10 against the adopted settings: {record}");
    let decisions = &quarry::metrics::global().gate_decisions;
    assert!(decisions.get(&["refused"]) >= 1.0 && decisions.get(&["rolled_back"]) >= 1.0);
    server.stop().await;
}
