//! Grounded answers against an in-process fake router that injects faults: timeouts, refused
//! connections, 500 then success, 429 with Retry-After, malformed JSON, schema violations and
//! repairs, invented citations, a reply cut midway, and a router that rejects `json_schema`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::fake_router::{chat, status, Behaviour, FakeRouter};
use common::{test_config, TestServer};
use quarry::answer::router::{Endpoint, RetryPolicy, StructuredMode};
use quarry::grpc::pb;
use tonic::Code;

const GOOD: &str = r#"{"answer": "Mitochondria make ATP.", "citations": [1]}"#;

async fn server_with(
    routers: Vec<Endpoint>,
    policy: RetryPolicy,
) -> (TestServer, tempfile::TempDir) {
    server_configured(routers, policy, |_| {}).await
}

async fn server_configured(
    routers: Vec<Endpoint>,
    policy: RetryPolicy,
    adjust: impl FnOnce(&mut quarry::answer::AnswerSettings),
) -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.answer.routers = routers;
    config.answer.retry = policy;
    adjust(&mut config.answer);
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    common::create_fixture_collection(&channel, "mini").await;
    (server, data)
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        request_timeout_ms: 2_000,
        deadline_ms: 20_000,
        max_retries: 2,
        backoff_base_ms: 10,
        backoff_cap_ms: 2_000,
    }
}

fn question(q: &str) -> pb::AnswerRequest {
    pb::AnswerRequest {
        collection: "mini".into(),
        question: q.into(),
        top_k: 4,
        ..Default::default()
    }
}

async fn ask(
    server: &TestServer,
    r: pb::AnswerRequest,
) -> Result<pb::AnswerResponse, tonic::Status> {
    pb::answers_client::AnswersClient::new(server.channel().await)
        .answer(r)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_answer_with_resolved_citations_and_a_cache_friendly_prompt() {
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(r.grounded);
    let answer: serde_json::Value = serde_json::from_str(&r.answer_json).unwrap();
    assert_eq!(answer["answer"], "Mitochondria make ATP.");
    assert_eq!(r.citations.len(), 1);
    let c = &r.citations[0];
    assert_eq!(c.source, 1);
    let first = r.sources[0].hit.as_ref().unwrap();
    assert_eq!(
        (c.document_id.as_str(), c.chunk_id),
        (first.document_id.as_str(), first.chunk_id)
    );
    assert_eq!(first.document_id, "bio-mitochondria");
    assert!(
        first.explanation.is_some(),
        "sources carry the retrieval explanation"
    );
    assert_eq!(
        (r.attempts, r.requests, r.model.as_str()),
        (1, 1, "fake-model")
    );
    assert_eq!((r.prompt_tokens, r.completion_tokens), (100, 10));
    assert!(r.invalid_citations.is_empty());

    // What the router saw: json_schema structured output, temperature 0, stable prefix first.
    let body = fake.request(0);
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert!(
        body["response_format"]["json_schema"]["schema"]["properties"]["citations"].is_object()
    );
    assert_eq!(body["temperature"], 0.0);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .contains("\"citations\""));
    let user = messages[1]["content"].as_str().unwrap();
    assert!(
        user.starts_with("Sources:\n\n[1] (bio-mitochondria)"),
        "{user}"
    );
    assert!(user.ends_with("Question: Which organelle makes ATP?"));

    // The system message is identical across questions (prefix caching).
    ask(&server, question("What causes spring tides?"))
        .await
        .unwrap();
    assert_eq!(
        fake.request(1)["messages"][0],
        fake.request(0)["messages"][0]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_limits_the_sources_the_router_sees() {
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    // Unfiltered, the tides question's sources are earth-science documents; filtered, none is.
    let plain = ask(&server, question("What causes spring tides?"))
        .await
        .unwrap();
    let first = plain.sources[0].hit.as_ref().unwrap();
    assert_eq!(first.metadata["topic"], "earth", "{}", first.document_id);
    let mut r = question("What causes spring tides?");
    r.top_k = 8;
    r.where_text = "topic IN [\"earth\", \"history\"] AND NOT topic = \"history\"".into();
    let answer = ask(&server, r.clone()).await.unwrap();
    assert!(!answer.sources.is_empty());
    for s in &answer.sources {
        let hit = s.hit.as_ref().unwrap();
        assert_eq!(hit.metadata["topic"], "earth", "{}", hit.document_id);
    }
    let user = fake.request(1)["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !user.contains("(bio-") && !user.contains("(hist-"),
        "{user}"
    );
    // Filtered to documents that cannot answer: no source is relevant enough, and the router
    // is not called.
    r.where_text = "topic = \"cooking\"".into();
    let answer = ask(&server, r).await.unwrap();
    assert!(!answer.grounded && answer.sources.is_empty());
    assert_eq!(fake.request_count(), 2);
    let mut bad = question("Which organelle makes ATP?");
    bad.where_text = "topic = ".into();
    let e = ask(&server, bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("column 9"), "{}", e.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_endpoints_fail_over() {
    // 500, then a reply cut midway, then a non-JSON body, then success.
    let fake = FakeRouter::start(
        vec![
            status(500, "boom"),
            Behaviour::Cut,
            status(200, "<html>oops</html>"),
        ],
        chat(GOOD),
    )
    .await;
    let mut policy = fast_policy();
    policy.max_retries = 3;
    // The first endpoint refuses connections (nothing listens there).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let (server, _data) = server_with(
        vec![Endpoint::from_url(&dead), Endpoint::from_url(&fake.url)],
        policy,
    )
    .await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(r.grounded);
    assert_eq!(fake.request_count(), 4);
    assert_eq!(
        r.requests,
        4 + 4,
        "4 refused attempts on the dead endpoint, then 4 on the fake"
    );
    assert_eq!(r.attempts, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_honour_retry_after_and_other_4xx_are_not_retried() {
    let limited = Behaviour::Reply(
        429,
        vec![("retry-after".into(), "1".into())],
        "slow down".into(),
    );
    let fake = FakeRouter::start(vec![limited, status(401, "bad key")], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let started = Instant::now();
    let err = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("401") && err.message().contains("bad key"),
        "{}",
        err.message()
    );
    assert_eq!(fake.request_count(), 2, "a 401 must not be retried");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_never_answers_hits_the_deadline() {
    let fake = FakeRouter::start(
        vec![],
        Behaviour::Delay(Duration::from_secs(30), Box::new(chat(GOOD))),
    )
    .await;
    let policy = RetryPolicy {
        request_timeout_ms: 300,
        deadline_ms: 1_000,
        max_retries: 10,
        backoff_base_ms: 10,
        backoff_cap_ms: 50,
    };
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], policy).await;
    let err = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(fake.request_count() >= 2, "timeouts are retried");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_violations_are_repaired_or_reported_without_the_raw_output() {
    // Not JSON, then a schema violation, then valid.
    let fake = FakeRouter::start(
        vec![
            chat("Sure! The answer is mitochondria."),
            chat(r#"{"answer": 42, "citations": [1]}"#),
        ],
        chat(GOOD),
    )
    .await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(r.grounded);
    assert_eq!(r.attempts, 3);
    // Each repair request carries the model's reply and the validation error.
    let repair = fake.request(2);
    let messages = repair["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[4]["content"],
        r#"{"answer": 42, "citations": [1]}"#
    );
    let feedback = messages[5]["content"].as_str().unwrap();
    assert!(feedback.contains("/answer"), "{feedback}");
    server.stop().await;

    // A model that never complies: a clear error after 1 + max_repairs calls, naming what was
    // wrong; the raw reply goes to the debug log, not into the status message.
    let fake = FakeRouter::start(vec![], chat(r#"{"answer": "no citations field"}"#)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let err = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("after 3 attempts"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("citations"),
        "the violation is named: {}",
        err.message()
    );
    assert!(
        !err.message().contains("no citations field"),
        "the raw reply leaked into the status: {}",
        err.message()
    );
    assert_eq!(fake.request_count(), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_citations_are_reported_and_rejected_in_strict_mode() {
    let fake = FakeRouter::start(vec![], chat(r#"{"answer": "x", "citations": [1, 9]}"#)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert_eq!(r.invalid_citations, vec![9]);
    assert_eq!(
        r.citations.iter().map(|c| c.source).collect::<Vec<_>>(),
        vec![1]
    );
    let mut strict = question("Which organelle makes ATP?");
    strict.strict_citations = Some(true);
    let err = ask(&server, strict).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("strict citations") && err.message().contains("[9]"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_rejection_falls_back_to_json_object_and_is_remembered() {
    let rejected = status(
        400,
        r#"{"error": "response_format type json_schema is not supported"}"#,
    );
    let fake = FakeRouter::start(vec![rejected], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(r.grounded);
    assert_eq!(fake.request(0)["response_format"]["type"], "json_schema");
    let second = fake.request(1);
    assert_eq!(second["response_format"]["type"], "json_object");
    assert!(second["response_format"]["schema"]["properties"]["answer"].is_object());
    // The next question goes straight to the mode that worked.
    ask(&server, question("What causes spring tides?"))
        .await
        .unwrap();
    assert_eq!(fake.request(2)["response_format"]["type"], "json_object");
    assert_eq!(fake.request_count(), 3);
    server.stop().await;

    // llama-cpp-python 0.3.36 rejects json_schema with a 500 carrying a validation error.
    let rejected = status(
        500,
        r#"{"error": {"message": "1 validation error: ('body', 'response_format', 'type') Input should be 'text' or 'json_object'"}}"#,
    );
    let fake = FakeRouter::start(vec![rejected], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    assert!(
        ask(&server, question("Which organelle makes ATP?"))
            .await
            .unwrap()
            .grounded
    );
    assert_eq!(
        fake.request_count(),
        2,
        "a format rejection is not retried as a 5xx"
    );
    assert_eq!(fake.request(1)["response_format"]["type"], "json_object");
    server.stop().await;

    // An endpoint configured for instructions only gets no response_format at all.
    let fake = FakeRouter::start(vec![], chat(&format!("```json\n{GOOD}\n```"))).await;
    let mut endpoint = Endpoint::from_url(&fake.url);
    endpoint.structured_output = StructuredMode::Instructions;
    let (server, _data) = server_with(vec![endpoint], fast_policy()).await;
    let r = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(r.grounded);
    assert!(fake.request(0).get("response_format").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_schemas_no_grounded_answer_and_bad_requests() {
    let fake = FakeRouter::start(
        vec![],
        chat(r#"{"verdict": "yes", "citations": [{"source": 1}]}"#),
    )
    .await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "verdict": {"enum": ["yes", "no"]},
            "citations": {"type": "array", "items": {"type": "object", "properties": {"source": {"type": "integer"}}, "required": ["source"]}}
        },
        "required": ["verdict", "citations"]
    });
    let mut r = question("Do mitochondria make ATP?");
    r.schema_json = schema.to_string();
    let a = ask(&server, r).await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&a.answer_json).unwrap();
    assert_eq!(answer["verdict"], "yes");
    assert_eq!(a.citations[0].source, 1);

    // Nothing retrieved: no grounded answer, and the model is not called.
    let before = fake.request_count();
    let mut r = question("Which organelle makes ATP?");
    r.filter = HashMap::from([("topic".to_string(), "no-such-topic".to_string())]);
    let a = ask(&server, r).await.unwrap();
    assert!(!a.grounded);
    assert!(
        a.no_answer_reason.contains("nothing"),
        "{}",
        a.no_answer_reason
    );
    assert_eq!(fake.request_count(), before);

    // Bad input.
    let mut r = question("Which organelle makes ATP?");
    r.schema_json = "{not json".into();
    assert_eq!(
        ask(&server, r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = question("Which organelle makes ATP?");
    r.schema_json = r#"{"type": 7}"#.into();
    assert_eq!(
        ask(&server, r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        ask(&server, question("  ")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = question("q");
    r.collection = "nope".into();
    assert_eq!(ask(&server, r).await.unwrap_err().code(), Code::NotFound);
    server.stop().await;

    // Retrieved, but nothing relevant enough: no grounded answer, no model call.
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let (server, _data) =
        server_configured(vec![Endpoint::from_url(&fake.url)], fast_policy(), |a| {
            a.min_relevance = 0.99
        })
        .await;
    let a = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    assert!(!a.grounded);
    assert!(
        a.no_answer_reason.contains("min_relevance"),
        "{}",
        a.no_answer_reason
    );
    assert_eq!(fake.request_count(), 0);
    server.stop().await;

    // Configured templates shape the prompt.
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let (server, _data) =
        server_configured(vec![Endpoint::from_url(&fake.url)], fast_policy(), |a| {
            a.source_template = "<doc n={number} id={document_id}>{text}</doc>".into();
            a.question_template = "Q: {question}".into();
        })
        .await;
    ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap();
    let user = fake.request(0)["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(user.contains("<doc n=1 id=bio-mitochondria>"), "{user}");
    assert!(user.ends_with("Q: Which organelle makes ATP?"));
    server.stop().await;

    // No router configured.
    let (server, _data) = server_with(vec![], fast_policy()).await;
    let err = ask(&server, question("Which organelle makes ATP?"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("--router"));
    server.stop().await;
}

async fn stream(server: &TestServer, r: pb::AnswerRequest) -> Vec<pb::answer_event::Event> {
    let mut s = pb::answers_client::AnswersClient::new(server.channel().await)
        .answer_stream(r)
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        events.push(e.event.unwrap());
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_report_progress_tokens_and_survive_a_stream_cut_midway() {
    use pb::answer_event::Event;
    // A stream cut midway (two pieces, no [DONE]), then a complete stream.
    let fake = FakeRouter::start(vec![Behaviour::Cut], chat(GOOD)).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let events = stream(&server, question("Which organelle makes ATP?")).await;
    let stages: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stage(s) => Some(s.stage.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stages, vec!["retrieved", "packed", "generating"]);
    assert!(fake.request(0)["stream"] == true);
    let discard = events
        .iter()
        .position(|e| matches!(e, Event::Discard(_)))
        .expect("the cut stream is discarded");
    assert!(
        events[..discard]
            .iter()
            .any(|e| matches!(e, Event::Token(_))),
        "partial tokens came first"
    );
    let after: String = events[discard..]
        .iter()
        .filter_map(|e| match e {
            Event::Token(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(after, GOOD, "the retried stream carries the whole reply");
    let Some(Event::Result(r)) = events.last() else {
        panic!("no result")
    };
    assert!(r.grounded);
    assert_eq!((r.attempts, r.requests), (1, 2));
    assert_eq!(r.citations[0].source, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_raise_max_tokens_pick_models_or_send_huge_schemas() {
    let fake = FakeRouter::start(vec![], chat(GOOD)).await;
    let (server, _data) =
        server_configured(vec![Endpoint::from_url(&fake.url)], fast_policy(), |a| {
            a.allowed_models = vec!["small".into()]
        })
        .await;
    let invalid = |r: Result<pb::AnswerResponse, tonic::Status>, needle: &str| {
        let s = r.expect_err("must be rejected");
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().contains(needle), "{}", s.message());
    };
    let mut r = question("Which organelle makes ATP?");
    r.max_tokens = u32::MAX;
    invalid(ask(&server, r).await, "answer.max_tokens");
    let mut r = question("Which organelle makes ATP?");
    r.model = "gpt-expensive".into();
    invalid(ask(&server, r).await, "allowed_models");
    let mut r = question("Which organelle makes ATP?");
    r.schema_json = format!("{{\"description\": \"{}\"}}", "x".repeat(2 << 20));
    invalid(ask(&server, r).await, "schema_json");
    assert_eq!(fake.request_count(), 0, "nothing reached the router");
    // Within the limits the request goes through, with the chosen model.
    let mut r = question("Which organelle makes ATP?");
    r.model = "small".into();
    r.max_tokens = 100;
    ask(&server, r).await.unwrap();
    assert_eq!(fake.request(0)["model"], "small");
    assert_eq!(fake.request(0)["max_tokens"], 100);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_answer_stream_stops_calling_the_router() {
    // Every call is slow and fails, so the answerer would retry for seconds.
    let slow_failure = Behaviour::Delay(
        Duration::from_millis(1500),
        Box::new(status(500, "overloaded")),
    );
    let fake = FakeRouter::start(vec![], slow_failure).await;
    let (server, _data) = server_with(vec![Endpoint::from_url(&fake.url)], fast_policy()).await;
    let mut stream = pb::answers_client::AnswersClient::new(server.channel().await)
        .answer_stream(question("Which organelle makes ATP?"))
        .await
        .unwrap()
        .into_inner();
    // Wait until generation has started, then walk away.
    loop {
        let event = stream.message().await.unwrap().unwrap();
        if let Some(pb::answer_event::Event::Stage(s)) = event.event {
            if s.stage == "generating" {
                break;
            }
        }
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert!(
        fake.request_count() <= 1,
        "{} router calls after the client left",
        fake.request_count()
    );
    server.stop().await;
}
