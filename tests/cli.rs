//! Drives the real `quarry` binary: `serve`, `ingest`, `search --json`, and shutdown on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quarry");

/// Starts `quarry serve` on a free loopback port; returns the child and its URL.
fn start_server(data: &Path) -> (Child, String) {
    start_server_with(data, &[])
}

fn start_server_with(data: &Path, extra: &[&str]) -> (Child, String) {
    common::start_binary(data, extra)
}

fn ingest_fixture(url: &str) -> String {
    ingest_file(url, &common::fixture_dir().join("corpus.jsonl"))
}

fn ingest_file(url: &str, corpus: &Path) -> String {
    let out = Command::new(BIN)
        .args(["ingest", "--quiet", "--server", url, "--collection", "mini"])
        .arg(corpus)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ingest failed: {log}");
    log
}

fn stop_gracefully(mut server: Child) {
    terminate_within(&mut server, Duration::from_secs(120));
}

/// Sends SIGTERM and asserts the server exits 0 within `limit`.
fn terminate_within(server: &mut Child, limit: Duration) {
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            return;
        }
        assert!(
            started.elapsed() < limit,
            "server did not stop within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn search_json(url: &str, query: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "search",
            "--json",
            "--server",
            url,
            "--collection",
            "mini",
            "--top-k",
            "3",
        ])
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Hits without timing fields, for comparing runs.
fn hits(json: &serde_json::Value) -> serde_json::Value {
    json["hits"].clone()
}

#[test]
fn serve_ingest_search_and_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(data.path());
    let log = ingest_fixture(&url);
    assert!(log.contains("created collection \"mini\""), "{log}");
    assert!(log.contains("27 created"), "{log}");
    assert!(log.contains("docs/s"), "{log}");

    let json = search_json(&url, "which organelle produces ATP");
    assert_eq!(json["hits"][0]["document_id"], "bio-mitochondria", "{json}");
    assert!(
        json["hits"][0]["explanation"]["dense"]["rank"].is_u64(),
        "{json}"
    );
    assert_eq!(json["hits"].as_array().unwrap().len(), 3);

    // Bad input from the CLI is reported, with a non-zero exit.
    let out = Command::new(BIN)
        .args([
            "search",
            "--server",
            &url,
            "--collection",
            "nope",
            "anything",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    // SIGTERM: finish, flush, exit 0.
    terminate_within(&mut server, Duration::from_secs(60));
    assert!(data.path().join("sled").exists());
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(data.path());
    ingest_fixture(&url);
    let queries = [
        "which organelle produces ATP",
        "Gutenberg printing",
        "spring tides",
    ];
    let before: Vec<_> = queries
        .iter()
        .map(|q| hits(&search_json(&url, q)))
        .collect();
    // No graceful shutdown: no checkpoint, no final flush beyond what each ack required.
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut server, url) = start_server(data.path());
    let after: Vec<_> = queries
        .iter()
        .map(|q| hits(&search_json(&url, q)))
        .collect();
    assert_eq!(before, after, "results changed after a crash");
    let log = ingest_fixture(&url);
    assert!(log.contains("27 unchanged"), "{log}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A checkpoint, then more acknowledged writes (creates, an update), then a crash: on restart the
/// HNSW graph loads from its checkpoint and the operations logged after it are replayed.
#[test]
fn writes_after_a_checkpoint_are_replayed_after_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let corpus = std::fs::read_to_string(common::fixture_dir().join("corpus.jsonl")).unwrap();
    let lines: Vec<&str> = corpus.lines().collect();
    let first = files.path().join("first.jsonl");
    std::fs::write(&first, lines[..20].join("\n")).unwrap();
    let (server, url) = start_server(data.path());
    assert!(ingest_file(&url, &first).contains("20 created"));
    stop_gracefully(server); // checkpoints the graph

    let (mut server, url) = start_server(data.path());
    let mut rest: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let bread = rest
        .iter()
        .position(|l| l.contains("\"cook-bread\""))
        .unwrap();
    rest[bread] = serde_json::json!({
        "_id": "cook-bread", "title": "Rye bread",
        "text": "Rye flour has little gluten, so rye loaves are dense and rely on sourdough acidity."
    })
    .to_string();
    let all = files.path().join("all.jsonl");
    std::fs::write(&all, rest.join("\n")).unwrap();
    let log = ingest_file(&url, &all);
    assert!(
        log.contains("7 created") && log.contains("1 updated"),
        "{log}"
    );
    let queries = ["rye flour gluten", "spring tides moon", "organelle ATP"];
    let before: Vec<_> = queries
        .iter()
        .map(|q| hits(&search_json(&url, q)))
        .collect();
    assert_eq!(before[0][0]["document_id"], "cook-bread");
    server.kill().unwrap();
    server.wait().unwrap();

    let (server, url) = start_server(data.path());
    let after: Vec<_> = queries
        .iter()
        .map(|q| hits(&search_json(&url, q)))
        .collect();
    assert_eq!(before, after, "results changed after replay");
    stop_gracefully(server);
}

/// `quarry serve --router URL` and `quarry ask --json`: the validated answer exactly as the
/// schema describes it, and citations resolved to source number, document, chunk and text.
#[test]
fn ask_prints_the_validated_answer_and_resolved_citations() {
    use common::fake_router::{chat, FakeRouter};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeRouter::start(
        vec![],
        chat(r#"{"answer": "Mitochondria make ATP.", "citations": [1]}"#),
    ));
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start_server_with(data.path(), &["--router", &fake.url]);
    ingest_fixture(&url);
    let out = Command::new(BIN)
        .args(["ask", "--json", "--server", &url, "--collection", "mini"])
        .arg("Which organelle makes ATP?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["answer"],
        serde_json::json!({"answer": "Mitochondria make ATP.", "citations": [1]})
    );
    let c = &json["citations"][0];
    assert_eq!(
        (c["source"].as_u64(), c["document_id"].as_str()),
        (Some(1), Some("bio-mitochondria"))
    );
    assert!(c["text"]
        .as_str()
        .unwrap()
        .contains("adenosine triphosphate"));
    assert!(c["chunk_id"].is_u64());
    assert_eq!(json["model"], "fake-model");
    assert!(json["latency_ms"]["retrieve"].as_f64().unwrap() > 0.0);

    // A custom schema file.
    let schema = data.path().join("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["answer"]}"#).unwrap();
    let out = Command::new(BIN)
        .args(["ask", "--server", &url, "--collection", "mini", "--schema"])
        .arg(&schema)
        .arg("Which organelle makes ATP?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Mitochondria make ATP."));
    stop_gracefully(server);
}

/// The arguments of every `cargo run --release -- ...` command in README.md's `sh` blocks
/// (continuation lines joined, shell quoting undone).
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.starts_with('#') {
            continue;
        }
        pending.push_str(trimmed.trim_end_matches('\\'));
        pending.push(' ');
        if trimmed.ends_with('\\') {
            continue;
        }
        let command = std::mem::take(&mut pending);
        if let Some(rest) = command.trim().strip_prefix("cargo run --release -- ") {
            commands.push(shell_words(rest));
        }
    }
    commands
}

/// Splits a command line as a POSIX shell would for plain words and '...' / "..." quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn shell_words_undoes_quoting() {
    assert_eq!(
        shell_words(r#"search --collection x "two words" 'it''s' plain"#),
        vec!["search", "--collection", "x", "two words", "its", "plain"]
    );
}

/// Every README example that needs only a fresh clone runs as written against a real server
/// (`QUARRY_SERVER` points the client commands at it). Not run, by design: `serve` (this test
/// starts the server), `ask` (needs an inference router; covered above with a fake one) and
/// evaluations of `../shared` datasets (CI runs the SciFact evaluation itself).
#[test]
fn readme_examples_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = readme_commands(&readme);
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start_server(data.path());
    let mut ran = Vec::new();
    for args in &commands {
        let needs_more = matches!(args[0].as_str(), "serve" | "ask")
            || args.iter().any(|a| a.starts_with("../shared"));
        if needs_more {
            continue;
        }
        let out = Command::new(BIN)
            .args(args)
            .current_dir(root)
            .env("QUARRY_SERVER", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README example failed: quarry {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        if args[0] == "ingest" {
            // A fresh server: every file of the quickstart is a new document. (A file's id
            // used to be its bare name, so README.md and eval/README.md were one document and
            // the second replaced the first.)
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !said.contains("updated") || said.contains(" 0 updated"),
                "quarry {}: {said}",
                args.join(" ")
            );
        }
        if args[0] == "search" {
            assert!(
                !out.stdout.is_empty(),
                "no results: quarry {}",
                args.join(" ")
            );
        }
        ran.push(args[0].clone());
    }
    assert!(
        ran.iter().filter(|c| *c == "ingest").count() >= 2
            && ran.iter().filter(|c| *c == "search").count() >= 2,
        "the quickstart's ingest and search examples were found and run: {ran:?}"
    );
    stop_gracefully(server);
}

/// A client that opens an upsert stream and then sends nothing does not keep the server from
/// exiting on SIGTERM: after the shutdown grace period its connection is closed, the state is
/// checkpointed, and the process exits 0.
#[test]
fn an_idle_client_stream_does_not_block_shutdown() {
    use futures::StreamExt;
    use quarry::grpc::pb;
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(data.path());
    ingest_fixture(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The stream sends its first message, then waits forever.
    let channel = rt
        .block_on(quarry::client::connect(&url, &Default::default()))
        .unwrap();
    let first = pb::StreamUpsertRequest {
        collection: "mini".into(),
        document: Some(common::doc("idle", "an idle stream")),
    };
    let requests = futures::stream::iter([first]).chain(futures::stream::pending());
    let mut client = pb::documents_client::DocumentsClient::new(channel);
    let _idle = rt.spawn(async move { client.stream_upsert_documents(requests).await });
    std::thread::sleep(Duration::from_millis(500));
    terminate_within(
        &mut server,
        quarry::server::SHUTDOWN_GRACE + Duration::from_secs(20),
    );
}
