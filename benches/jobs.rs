//! Ingestion jobs against client-side ingestion, and start-up time, on SciFact through the real
//! (release) binary. Prints figures; asserts nothing about time (the machine is shared).
//!
//! 1. `quarry ingest` of SciFact's corpus into one collection, then a server-side job
//!    (`quarry jobs submit --wait`) of the same file into another, in the same run: docs/s of
//!    each and their ratio (the job should be within 10% of the client).
//! 2. Time from spawning the server to `/readyz` answering 200 with both collections loaded:
//!    after a clean stop (SIGTERM) and after `kill -9`; the log must not show an index rebuilt
//!    (they are loaded from their checkpoints, the log replayed).
//!
//! `cargo bench --bench jobs` (SciFact from `QUARRY_SCIFACT` or `../shared/datasets/scifact`).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quarry");

use support::Server;

fn start(data: &Path, root: &Path) -> Server {
    support::start_server(data, &["--import-root", &root.to_string_lossy()])
}

/// True once `/readyz` answers 200.
fn ready(ops: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(ops) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

/// Seconds from spawn to ready, and whether the log shows an index rebuilt.
fn time_to_ready(data: &Path, root: &Path) -> (Server, f64, bool) {
    let started = Instant::now();
    let server = start(data, root);
    while !ready(&server.ops) {
        assert!(started.elapsed() < Duration::from_secs(600), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let rebuilt = server
        .log
        .lock()
        .map(|l| l.iter().any(|x| x.contains("rebuilt indexes")))
        .unwrap_or(true);
    (server, secs, rebuilt)
}

fn run(args: &[&str]) -> (f64, String) {
    let started = Instant::now();
    let out = Command::new(BIN).args(args).output().expect("run quarry");
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, text)
}

fn main() {
    let scifact = support::scifact_or_exit()
        .canonicalize()
        .expect("SciFact directory");
    let corpus = scifact.join("corpus.jsonl.gz");
    let corpus = corpus.to_string_lossy().to_string();
    let cpu = support::cpu_name();
    let data = tempfile::tempdir().expect("temp dir");
    let server = start(data.path(), &scifact);
    let url = server.url.clone();

    eprintln!("quarry ingest of {corpus} ...");
    let (client_secs, summary) = run(&[
        "ingest",
        "--quiet",
        "--server",
        &url,
        "--collection",
        "client",
        &corpus,
    ]);
    eprintln!("{}", summary.trim());
    eprintln!("server-side job of the same file ...");
    let (job_secs, job) = run(&[
        "jobs",
        "submit",
        "--server",
        &url,
        "--collection",
        "job",
        "--wait",
        "--json",
        &corpus,
    ]);
    let job: serde_json::Value = serde_json::from_str(&job).expect("job JSON");
    let docs = job["counts"]["created"].as_u64().unwrap_or(0) as f64;
    assert!(docs > 5000.0, "{job}");
    let run_secs = (job["finished_unix_ms"].as_u64().unwrap_or(0)
        - job["started_unix_ms"].as_u64().unwrap_or(0)) as f64
        / 1000.0;
    println!("CPU: {cpu}; SciFact corpus, {docs} documents, all-minilm-l6-v2");
    println!(
        "quarry ingest (client streaming):  {:.1} s  {:.1} docs/s",
        client_secs,
        docs / client_secs
    );
    println!(
        "server-side job (submit to done):  {:.1} s  {:.1} docs/s  (the job's own run: {:.1} s, {:.1} docs/s)",
        job_secs,
        docs / job_secs,
        run_secs,
        docs / run_secs
    );
    println!(
        "job / ingest throughput: {:.3}",
        (docs / job_secs) / (docs / client_secs)
    );

    // Start-up with both collections (2 x SciFact) loaded.
    let mut server = server;
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    let _ = server.child.wait();
    drop(server);
    let (server, clean, rebuilt_clean) = time_to_ready(data.path(), &scifact);
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    drop(server);
    let (server, killed, rebuilt_killed) = time_to_ready(data.path(), &scifact);
    println!(
        "start to ready, 2 x SciFact loaded: after a clean stop {clean:.2} s (indexes rebuilt: {rebuilt_clean}); after kill -9 {killed:.2} s (indexes rebuilt: {rebuilt_killed})"
    );
    drop(server);
}
