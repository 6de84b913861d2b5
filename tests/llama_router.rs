//! Grounded answers against a real OpenAI-compatible server: llama.cpp (llama-cpp-python's
//! server) running SmolLM2-135M-Instruct, provisioned by `scripts/provision-llama.sh` (cached).
//! A 135M model writes poor prose; the contract must hold anyway: every answer validates
//! against its schema and cites only supplied sources.

mod common;

use std::time::Instant;

use common::llama::{provision, start_llama};
use common::{fixture_dir, test_config, TestServer};
use quarry::answer::router::{Endpoint, RetryPolicy};
use quarry::grpc::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_a_real_llama_cpp_server_hold_the_contract() {
    let (python, gguf) = provision();
    let (_llama, url) = start_llama(&python, &gguf).await;

    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.answer.routers = vec![Endpoint::from_url(&url)];
    config.answer.retry = RetryPolicy {
        request_timeout_ms: 120_000,
        deadline_ms: 300_000,
        ..RetryPolicy::default()
    };
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "mini").await;

    let validator = jsonschema::validator_for(&quarry::answer::schema::default_schema()).unwrap();
    let queries = std::fs::read_to_string(fixture_dir().join("queries.jsonl")).unwrap();
    let mut client = pb::answers_client::AnswersClient::new(channel);
    let (mut asked, mut schema_valid, mut citation_valid, mut repaired) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    let mut models = std::collections::BTreeSet::new();
    for line in queries.lines() {
        let q: serde_json::Value = serde_json::from_str(line).unwrap();
        let started = Instant::now();
        let r = client
            .answer(pb::AnswerRequest {
                collection: "mini".into(),
                question: q["text"].as_str().unwrap().to_string(),
                top_k: 3,
                max_tokens: 400,
                ..Default::default()
            })
            .await;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        asked += 1;
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(e) => {
                eprintln!("{}: {} {}", q["_id"], e.code(), e.message());
                continue;
            }
        };
        assert!(r.grounded, "{}: {}", q["_id"], r.no_answer_reason);
        let answer: serde_json::Value = serde_json::from_str(&r.answer_json).unwrap();
        if validator.is_valid(&answer) {
            schema_valid += 1;
        }
        if r.invalid_citations.is_empty()
            && r.citations
                .iter()
                .all(|c| (1..=r.sources.len() as u32).contains(&c.source))
        {
            citation_valid += 1;
        }
        if r.attempts > 1 {
            repaired += 1;
        }
        models.insert(r.model.clone());
        eprintln!("{} [{} attempt(s)] {}", q["_id"], r.attempts, r.answer_json);
    }
    latencies.sort_by(f64::total_cmp);
    let p = |x: f64| latencies[((latencies.len() - 1) as f64 * x).round() as usize];
    println!(
        "llama.cpp (SmolLM2-135M-Instruct Q4_1, {models:?}): {asked} questions, schema-valid {schema_valid}/{asked}, \
         citation-valid {citation_valid}/{asked}, repaired {repaired}, latency p50 {:.0} ms p95 {:.0} ms max {:.0} ms",
        p(0.5),
        p(0.95),
        p(1.0)
    );
    assert_eq!(
        schema_valid, asked,
        "every answer must validate against its schema"
    );
    assert_eq!(
        citation_valid, asked,
        "every answer must cite only supplied sources"
    );
    drop(client);
    server.stop().await;
}
