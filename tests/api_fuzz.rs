//! A schema-driven fuzzer against the real binary: schemathesis (from PyPI, pinned, in a
//! cached virtualenv) reads only the served OpenAPI document and sends generated requests,
//! valid and invalid, to every route with an admin key, for a bounded time
//! (`QUARRY_API_FUZZ_SECS`, default 120). It must find no 5xx and no response that does not
//! match its documented schema.

mod common;

use std::process::Command;

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const KEY: &str = "fuzz-admin-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_find_no_server_error_and_no_undocumented_reply() {
    quarry::tls::install_crypto_provider();
    let tool = common::python_venv("schemathesis-venv", &[SCHEMATHESIS]).join("bin/schemathesis");
    let data = tempfile::tempdir().unwrap();
    let reports = tempfile::tempdir().unwrap();
    let (server, _url, base) = common::start_binary_doors(data.path(), &["--api-key", KEY]);
    let _server = common::cli::Server(server);
    // Something to find: the collection the document's examples name, with documents, so
    // generated calls reach the engine and not only "not found".
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/v1/collections", r#"{"name": "docs"}"#),
        (
            "/v1/collections/docs/documents",
            r#"{"documents": [{"id": "a", "text": "Basalt is a volcanic rock."}, {"id": "b", "text": "Granite is igneous."}]}"#,
        ),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let secs: u64 = std::env::var("QUARRY_API_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    // NDJSON (the streaming upsert's body) has no serializer in schemathesis: one message
    // per line is JSON and a newline.
    let hooks = reports.path().join("ndjson_hooks.py");
    std::fs::write(
        &hooks,
        "import json\nimport schemathesis\n\n\n@schemathesis.serializer(\"application/x-ndjson\")\ndef ndjson(ctx, value):\n    return (json.dumps(value) + \"\\n\").encode()\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&tool)
            .arg("run")
            .arg(format!("{base}/v1/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {KEY}")])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-time", &secs.to_string()])
            .args(["--workers", "1", "--seed", "7", "--no-color"])
            .args(["--generation-database", "none", "--request-timeout", "30"])
            .arg("--report-dir")
            .arg(reports.path())
            .env("SCHEMATHESIS_HOOKS", &hooks)
            // Its cache goes with the reports, not into the repository.
            .current_dir(reports.path())
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures (above)");
}
