//! The HTTP door's streaming and long-running routes against a real server (real model, real
//! indexes, a real OpenAI-compatible router over HTTP): grounded answers whole and as
//! server-sent events, evaluation events, ingestion jobs submitted, read and watched, and a
//! snapshot downloaded as a tar archive and restored from it; each checked against the same
//! call over gRPC.

mod common;

use common::fake_router::{chat, FakeRouter};
use common::{test_config, TestServer};
use quarry::answer::router::Endpoint;
use quarry::api::json;
use quarry::grpc::pb;
use serde_json::{json, Value};

const GOOD: &str = r#"{"answer": "Mitochondria make ATP.", "citations": [1]}"#;

/// The `data:` payloads and error events of a server-sent event stream.
fn sse_events(body: &str) -> (Vec<Value>, Vec<Value>) {
    let (mut data, mut errors) = (Vec::new(), Vec::new());
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let is_error = frame.lines().any(|l| l == "event: error");
        let payload = frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("every frame has data");
        let v: Value = serde_json::from_str(payload).expect("JSON data");
        if is_error {
            errors.push(v);
        } else {
            data.push(v);
        }
    }
    (data, errors)
}

fn to_json<T: prost::Message + prost::Name>(m: &T) -> Value {
    serde_json::from_slice(&json::encode(m).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_eval_jobs_and_snapshots_over_http_match_grpc() {
    quarry::tls::install_crypto_provider();
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let data = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.answer.routers = vec![Endpoint::from_url(&fake.url)];
    config.import_roots = vec![sources.path().to_path_buf()];
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "mini").await;
    let base = server.http_url.clone();
    let http = reqwest::Client::new();

    // Answers: the same reply through both doors (the fake router answers alike).
    let question = json!({"question": "Which organelle makes ATP?", "top_k": 4});
    let mut grpc_answer = pb::answers_client::AnswersClient::new(channel.clone())
        .answer(pb::AnswerRequest {
            collection: "mini".into(),
            question: "Which organelle makes ATP?".into(),
            top_k: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = http
        .post(format!("{base}/v1/collections/mini/answer"))
        .json(&question)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut http_answer: Value = r.json().await.unwrap();
    // Timings differ between two calls; everything else is the same.
    grpc_answer.retrieve_ms = 0.0;
    grpc_answer.generate_ms = 0.0;
    http_answer["retrieve_ms"] = json!(0.0);
    http_answer["generate_ms"] = json!(0.0);
    assert_eq!(to_json(&grpc_answer), http_answer);
    assert_eq!(http_answer["grounded"], true);

    // The streamed answer: stages, then the result last.
    let r = http
        .post(format!("{base}/v1/collections/mini/answer:stream"))
        .json(&question)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (events, errors) = sse_events(&r.text().await.unwrap());
    assert!(errors.is_empty(), "{errors:?}");
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["stage"]["stage"].as_str())
        .collect();
    assert_eq!(stages[..2], ["retrieved", "packed"], "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last["result"]["answer_json"], http_answer["answer_json"]);

    // Evaluation: progress events, then the result, equal to gRPC's.
    let eval = pb::EvalRequest {
        collection: "mini".into(),
        queries: vec![pb::EvalQuery {
            id: "q1".into(),
            text: "Which organelle makes ATP?".into(),
            judgments: [("bio-mitochondria".to_string(), 2)].into_iter().collect(),
        }],
        runs: vec![],
        depth: 10,
        compare: vec![],
        split: String::new(),
    };
    let mut grpc_stream = pb::eval_client::EvalClient::new(channel.clone())
        .evaluate(eval.clone())
        .await
        .unwrap()
        .into_inner();
    let mut grpc_result = None;
    while let Some(p) = grpc_stream.message().await.unwrap() {
        if p.result.is_some() {
            grpc_result = p.result;
        }
    }
    let mut body = to_json(&eval);
    body.as_object_mut().unwrap().remove("collection");
    let r = http
        .post(format!("{base}/v1/collections/mini/eval"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (events, errors) = sse_events(&r.text().await.unwrap());
    assert!(errors.is_empty(), "{errors:?}");
    let result = events.last().unwrap()["result"].clone();
    // Latencies differ between two runs; the metrics, rankings and misses are the same.
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.retain(|k, _| !k.contains("latency"));
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let (mut g, mut h) = (to_json(&grpc_result.unwrap()), result);
    strip(&mut g);
    strip(&mut h);
    assert_eq!(g, h);

    // A job over HTTP: submitted, read, watched to its end, and the same through gRPC.
    std::fs::write(
        sources.path().join("a.md"),
        "# Granite\nGranite is an igneous rock.",
    )
    .unwrap();
    let submitted: Value = http
        .post(format!("{base}/v1/collections/mini/jobs"))
        .json(&json!({"source": {"path": sources.path().join("a.md")}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().expect("a job id").to_string();
    let r = http
        .get(format!("{base}/v1/jobs/{id}/watch"))
        .send()
        .await
        .unwrap();
    let (events, errors) = sse_events(&r.text().await.unwrap());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        events.last().unwrap()["state"],
        "JOB_STATE_SUCCEEDED",
        "{events:?}"
    );
    let job: Value = http
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grpc_job = pb::jobs_client::JobsClient::new(channel.clone())
        .get_job(pb::GetJobRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_json(&grpc_job), job);
    assert_eq!(job["counts"]["created"], 1);
    let listed: Value = http
        .get(format!(
            "{base}/v1/jobs?collection=mini&state=JOB_STATE_SUCCEEDED"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());

    // A snapshot downloaded as a tar archive, restored under a new name, searches alike.
    let r = http
        .post(format!("{base}/v1/snapshots"))
        .json(&json!({"collections": ["mini"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let archive = r.bytes().await.unwrap();
    assert!(archive.len() > 1024);
    let restored: Value = http
        .post(format!(
            "{base}/v1/snapshots:restore?collection=mini&new_name=mini2"
        ))
        .body(archive.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restored["collections"][0]["name"], "mini2", "{restored}");
    let search = |c: &str| {
        http.post(format!("{base}/v1/collections/{c}/search"))
            .json(&json!({"query": "granite rock", "top_k": 3}))
            .send()
    };
    let hits = |v: Value| v["hits"].clone();
    let a = hits(search("mini").await.unwrap().json().await.unwrap());
    let b = hits(search("mini2").await.unwrap().json().await.unwrap());
    assert_eq!(a, b);
    // A second restore under the same name: ALREADY_EXISTS, 409.
    let again = http
        .post(format!(
            "{base}/v1/snapshots:restore?collection=mini&new_name=mini2"
        ))
        .body(archive)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // Garbage is refused as the archive it is not: 400.
    let junk = http
        .post(format!("{base}/v1/snapshots:restore"))
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);
    server.stop().await;
}
