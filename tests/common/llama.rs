//! A real OpenAI-compatible server for the tests that need one: llama.cpp (llama-cpp-python's
//! server) running SmolLM2-135M-Instruct, provisioned by `scripts/provision-llama.sh` (built
//! once, cached; CI builds it in the background before the tests run).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the llama.cpp server when the test ends, however it ends.
pub struct Llama(Child);

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn provision() -> (String, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision-llama.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "provision-llama.sh failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    )
}

pub async fn start_llama(python: &str, gguf: &str) -> (Llama, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .args([
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--host",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &port.to_string(),
            "--n_ctx",
            "4096",
            "--n_threads",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama_cpp.server");
    let llama = Llama(child);
    let url = format!("http://127.0.0.1:{port}/v1");
    quarry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/models")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "llama.cpp server did not start"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (llama, url)
}
