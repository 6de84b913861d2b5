//! Retrieval evaluation: `quarry eval` on the project's fixture collection (a regression gate
//! against recorded metrics), its output files, and the Eval RPC on a live collection.

mod common;

use std::process::Command;

use common::{test_config, TestServer};
use quarry::grpc::pb;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_quarry");

/// Metrics recorded for fixtures/mini with the default model and settings. A change that makes
/// any of them fall is a regression; one that raises them should update this file.
fn baseline() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/baselines/fixtures-mini.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn quarry_eval_on_fixtures_meets_recorded_metrics_and_writes_reports() {
    let models = common::provision();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(BIN)
            .args([
                "eval",
                "--quiet",
                "--modes",
                "lexical,dense,hybrid,hybrid-weighted:0.6:0.4",
            ])
            .arg("--dataset")
            .arg(common::fixture_dir())
            .arg("--data-dir")
            .arg(data.path())
            .arg("--out")
            .arg(out.path())
            .env("QUARRY_MODELS_DIR", &models)
            .env("QUARRY_EMBED_WORKERS", "2")
            .output()
            .unwrap()
    };
    let first = run();
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "quarry eval failed: {log}");
    let table = String::from_utf8_lossy(&first.stdout);
    assert!(
        table.contains("nDCG@10") && table.contains("hybrid-weighted-0.6-0.4"),
        "{table}"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["split"], "test");
    let base = baseline();
    for mode in ["lexical", "dense", "hybrid", "hybrid-weighted-0.6-0.4"] {
        let m = &summary["modes"][mode];
        for key in ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"] {
            let got = m[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{mode} {key} missing"));
            let min = base[mode][key].as_f64().unwrap();
            assert!(
                got >= min - 1e-9,
                "{mode} {key} fell: {got} < recorded {min}"
            );
        }
        for p in ["p50", "p95", "p99"] {
            assert!(m["latency_ms"][p].as_f64().unwrap() > 0.0);
        }
        // TREC run file: qid Q0 doc rank score run.
        let run_file = std::fs::read_to_string(out.path().join(format!("{mode}.run"))).unwrap();
        let first_line: Vec<&str> = run_file.lines().next().unwrap().split(' ').collect();
        assert_eq!(first_line.len(), 6);
        assert_eq!(
            (first_line[1], first_line[3], first_line[5]),
            ("Q0", "1", mode)
        );
    }
    let per_query = std::fs::read_to_string(out.path().join("per_query.jsonl")).unwrap();
    assert_eq!(per_query.lines().count(), 20);
    let line: serde_json::Value = serde_json::from_str(per_query.lines().next().unwrap()).unwrap();
    assert!(line["modes"]["hybrid"]["missed"].is_array());
    assert!(line["query"].is_string());
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("<circle"),
        "charts missing"
    );
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("| hybrid |"));

    // Every run after the first against the first, paired over the 20 queries.
    let comparisons = summary["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 3, "{summary}");
    for c in comparisons {
        assert_eq!(c["baseline"], "lexical");
        let run = c["run"].as_str().unwrap();
        assert_eq!(c["queries"], 20);
        let m = &c["metrics"]["ndcg@10"];
        let delta = m["delta"].as_f64().unwrap();
        let means = |mode: &str| summary["modes"][mode]["ndcg@10"].as_f64().unwrap();
        assert!(
            (delta - (means(run) - means("lexical"))).abs() < 1e-9,
            "{c}"
        );
        let (low, high) = (
            m["ci95"][0].as_f64().unwrap(),
            m["ci95"][1].as_f64().unwrap(),
        );
        assert!(low <= delta && delta <= high, "{c}");
        let p = m["p_value"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{c}");
        let count = |k: &str| m[k].as_u64().unwrap();
        assert_eq!(count("wins") + count("losses") + count("ties"), 20, "{c}");
        assert!(c["gate"]["holds"].is_boolean(), "{c}");
        assert!(
            report.contains(&format!("## `{run}` against `lexical` (20 paired queries)")),
            "{report}"
        );
        assert!(table.contains(&format!("{run} against lexical")), "{table}");
    }

    // A second run reuses the ingested collection: nothing is re-indexed.
    let second = run();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{log}");
    assert!(log.contains("(0 re-indexed)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_rpc_evaluates_a_live_collection() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "live").await;
    let query = |id: &str, text: &str, rel: &[(&str, i32)]| pb::EvalQuery {
        id: id.into(),
        text: text.into(),
        judgments: rel.iter().map(|(d, g)| (d.to_string(), *g)).collect(),
    };
    let request = pb::EvalRequest {
        collection: "live".into(),
        queries: vec![
            query("a", "organelle that makes ATP", &[("bio-mitochondria", 2)]),
            query(
                "b",
                "Gutenberg movable type",
                &[("hist-printing-press", 1), ("hist-silk-road", 0)],
            ),
            query("c", "a query nobody judged relevant", &[("cook-bread", 0)]),
            // A relevant document that no retriever ranks in the top 10 for this query.
            query("d", "bread baking", &[("cook-bread", 2), ("cs-raft", 1)]),
        ],
        runs: vec![],
        depth: 20,
        compare: vec![],
        split: String::new(),
    };
    let mut client = pb::eval_client::EvalClient::new(channel.clone());
    let mut stream = client.evaluate(request.clone()).await.unwrap().into_inner();
    let mut progress = 0;
    let mut result = None;
    while let Some(m) = stream.message().await.unwrap() {
        match m.result {
            Some(r) => result = Some(r),
            None => {
                assert!(m.done <= m.total);
                progress += 1;
            }
        }
    }
    assert!(progress > 0, "no progress messages");
    let result = result.expect("a final result");
    assert_eq!(result.skipped_queries, 1);
    let names: Vec<&str> = result.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["lexical", "dense", "hybrid"]);
    for run in &result.runs {
        assert_eq!(run.queries.len(), 3);
        let a = run.queries.iter().find(|q| q.query_id == "a").unwrap();
        assert!(!a.ranking.is_empty() && a.ranking.len() <= 20);
    }
    // "bread baking" shares no term with the Raft document: lexical cannot find it, and the
    // diagnostics say so (rank 0 = not retrieved within depth).
    let lexical = &result.runs[0];
    let d = lexical.queries.iter().find(|q| q.query_id == "d").unwrap();
    let raft = d
        .missed
        .iter()
        .find(|m| m.document_id == "cs-raft")
        .expect("cs-raft reported as missed");
    assert_eq!((raft.grade, raft.lexical_rank, raft.run_rank), (1, 0, 0));
    assert!(
        d.missed.iter().all(|m| m.document_id != "cook-bread"),
        "cook-bread is lexical's top hit"
    );
    let hybrid = &result.runs[2];
    let a = hybrid.queries.iter().find(|q| q.query_id == "a").unwrap();
    assert_eq!(a.metrics.as_ref().unwrap().ndcg_at_10, 1.0);
    // Every run after the first is compared with the first, query by query, on the server.
    let pairs: Vec<(&str, &str)> = result
        .comparisons
        .iter()
        .map(|c| (c.baseline.as_str(), c.candidate.as_str()))
        .collect();
    assert_eq!(pairs, vec![("lexical", "dense"), ("lexical", "hybrid")]);
    for c in &result.comparisons {
        assert_eq!(c.queries, 3);
        let ndcg = c.metrics.iter().find(|m| m.metric == "ndcg@10").unwrap();
        let mean = |name: &str| {
            let run = result.runs.iter().find(|r| r.name == name).unwrap();
            run.metrics.as_ref().unwrap().ndcg_at_10
        };
        assert!((ndcg.delta - (mean(&c.candidate) - mean(&c.baseline))).abs() < 1e-9);
        assert!(
            ndcg.ci_low <= ndcg.delta && ndcg.delta <= ndcg.ci_high,
            "{ndcg:?}"
        );
        assert_eq!(ndcg.wins + ndcg.losses + ndcg.ties, 3);
    }

    // Two generations in one call: the same run on each collection, compared by name.
    common::create_fixture_collection(&channel, "live_g2").await;
    let mut generations = request.clone();
    generations.runs = vec![
        pb::EvalRunSpec {
            name: "g1".into(),
            mode: pb::SearchMode::Hybrid as i32,
            ..Default::default()
        },
        pb::EvalRunSpec {
            name: "g2".into(),
            mode: pb::SearchMode::Hybrid as i32,
            collection: "live_g2".into(),
            ..Default::default()
        },
    ];
    generations.compare = vec![pb::EvalComparePair {
        baseline: "g1".into(),
        candidate: "g2".into(),
    }];
    let mut s = client
        .evaluate(generations.clone())
        .await
        .unwrap()
        .into_inner();
    let mut result = None;
    while let Some(m) = s.message().await.unwrap() {
        result = m.result.or(result);
    }
    let result = result.expect("a final result");
    let c = &result.comparisons[0];
    // The same corpus and settings in both: identical rankings, nothing moves.
    assert_eq!((c.baseline.as_str(), c.candidate.as_str()), ("g1", "g2"));
    assert!(c.changed.is_empty(), "{c:?}");
    assert!(c
        .metrics
        .iter()
        .all(|m| m.delta == 0.0 && m.p_value == 1.0 && m.ties == 3));
    // A comparison must name runs the request has, each once.
    let mut bad = generations.clone();
    bad.compare[0].candidate = "g3".into();
    let err = first_error(client.evaluate(bad).await.unwrap().into_inner()).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"g3\""), "{}", err.message());
    let mut bad = generations;
    bad.runs[1].collection = "nope".into();
    let err = first_error(client.evaluate(bad).await.unwrap().into_inner()).await;
    assert_eq!(err.code(), Code::NotFound);

    // A run with a filter ranks only the documents that pass it.
    let mut filtered = request.clone();
    filtered.runs = vec![pb::EvalRunSpec {
        name: "hybrid-history".into(),
        mode: pb::SearchMode::Hybrid as i32,
        where_text: "topic = \"history\"".into(),
        ..Default::default()
    }];
    let mut s = client.evaluate(filtered).await.unwrap().into_inner();
    let mut result = None;
    while let Some(m) = s.message().await.unwrap() {
        result = m.result.or(result);
    }
    let run = &result.expect("a final result").runs[0];
    for q in &run.queries {
        assert!(
            q.ranking.iter().all(|r| r.document_id.starts_with("hist-")),
            "{:?}",
            q.ranking
        );
    }
    let b = run.queries.iter().find(|q| q.query_id == "b").unwrap();
    assert_eq!(b.ranking[0].document_id, "hist-printing-press");

    // A run may name its document score aggregation (a decayed sum over chunks); a decay
    // outside [0, 1] is refused.
    let mut summed = request.clone();
    summed.runs = vec![pb::EvalRunSpec {
        name: "hybrid-sum".into(),
        mode: pb::SearchMode::Hybrid as i32,
        sum_decay: Some(0.5),
        ..Default::default()
    }];
    let mut s = client.evaluate(summed.clone()).await.unwrap().into_inner();
    let mut result = None;
    while let Some(m) = s.message().await.unwrap() {
        result = m.result.or(result);
    }
    let run = &result.expect("a final result").runs[0];
    assert_eq!(run.name, "hybrid-sum");
    assert!(run.queries.iter().all(|q| !q.ranking.is_empty()));
    summed.runs[0].sum_decay = Some(1.5);
    let err = match client.evaluate(summed).await {
        Err(e) => e,
        Ok(s) => first_error(s.into_inner()).await,
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sum_decay"), "{}", err.message());

    // Bad requests.
    let mut bad = request.clone();
    bad.collection = "nope".into();
    assert_eq!(
        client.evaluate(bad).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut bad = request.clone();
    bad.queries.clear();
    assert_eq!(
        client.evaluate(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut bad = request;
    bad.depth = 1_000_000;
    let mut s = client.evaluate(bad).await.unwrap().into_inner();
    let err = loop {
        match s.message().await {
            Err(e) => break e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("an oversized depth was accepted"),
        }
    };
    assert_eq!(err.code(), Code::InvalidArgument);
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_requests_are_bounded_and_stop_when_the_client_leaves() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "live").await;
    let query = |i: usize, judgments: usize| pb::EvalQuery {
        id: format!("q{i}"),
        text: format!("organelle that makes ATP, variant {i}"),
        judgments: (0..judgments)
            .map(|j| (format!("d{j}"), 1))
            .chain([("bio-mitochondria".to_string(), 2)])
            .collect(),
    };
    let mut client = pb::eval_client::EvalClient::new(channel.clone());
    // Over max_eval_queries (2000).
    let many = pb::EvalRequest {
        collection: "live".into(),
        queries: (0..2001).map(|i| query(i, 0)).collect(),
        runs: vec![],
        depth: 10,
        compare: vec![],
        split: String::new(),
    };
    let err = first_error(client.evaluate(many).await.unwrap().into_inner()).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_eval_queries"),
        "{}",
        err.message()
    );
    // Over max_eval_judgments (200000), in a single query.
    let heavy = pb::EvalRequest {
        collection: "live".into(),
        queries: vec![query(0, 200_000)],
        runs: vec![],
        depth: 10,
        compare: vec![],
        split: String::new(),
    };
    let err = first_error(client.evaluate(heavy).await.unwrap().into_inner()).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_eval_judgments"),
        "{}",
        err.message()
    );

    // A long evaluation whose client leaves after the first progress report stops.
    let long = pb::EvalRequest {
        collection: "live".into(),
        queries: (0..1500).map(|i| query(i, 0)).collect(),
        runs: vec![],
        depth: 10,
        compare: vec![],
        split: String::new(),
    };
    let mut stream = client.evaluate(long).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.result.is_none() && first.total > 0);
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after_leaving = server.engine().searches();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        server.engine().searches(),
        after_leaving,
        "the evaluation kept searching after its client left"
    );
    assert!(
        after_leaving < 1500 * 5,
        "it stopped early: {after_leaving} searches"
    );
    drop(client);
    server.stop().await;
}

/// The error that ends an evaluation's stream (panics if it ends without one).
async fn first_error(mut s: tonic::Streaming<pb::EvalProgress>) -> tonic::Status {
    loop {
        match s.message().await {
            Err(e) => break e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the request was accepted"),
        }
    }
}
