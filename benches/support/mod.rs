//! What the benchmarks share: where SciFact is, the CPU to name beside every figure, and the
//! real release binary started on loopback ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SciFact's directory (`QUARRY_SCIFACT`, else `../shared/datasets/scifact`), if it is there;
/// when it is not, says so loudly.
#[allow(dead_code)]
pub fn scifact() -> Option<PathBuf> {
    let dir = std::env::var_os("QUARRY_SCIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact")
        });
    if !dir.join("corpus.jsonl.gz").exists() {
        eprintln!("!!! SKIPPED: SciFact not found (set QUARRY_SCIFACT or provide ../shared/datasets/scifact)");
        return None;
    }
    Some(dir)
}

/// SciFact's directory, or exit loudly (see [`scifact`]).
#[allow(dead_code)]
pub fn scifact_or_exit() -> PathBuf {
    scifact().unwrap_or_else(|| std::process::exit(2))
}

/// SciFact's test queries (those with judgments in the test split), in id order, once each.
#[allow(dead_code)]
pub fn scifact_test_queries(dataset: &quarry::eval::beir::Dataset) -> quarry::Result<Vec<String>> {
    let qrels = dataset.qrels("test")?;
    let all = dataset.queries()?;
    let mut ids: Vec<&String> = qrels.keys().collect();
    ids.sort();
    let mut queries: Vec<String> = ids
        .into_iter()
        .filter_map(|id| all.get(id).cloned())
        .collect();
    queries.dedup();
    Ok(queries)
}

/// The CPU's model name from /proc/cpuinfo.
#[allow(dead_code)]
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// GET `path` on `addr` (HOST:PORT) over plain HTTP/1.0: (status code, body). The benchmarks
/// read `/metrics` and `/readyz` with it, so they need no HTTP client tool on the machine.
#[allow(dead_code)]
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let code = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// `quarry serve` (the release binary) on loopback ports; SIGTERM and wait on drop.
#[allow(dead_code)]
pub struct Server {
    pub child: Child,
    /// The gRPC URL.
    pub url: String,
    /// The operations listener's HOST:PORT.
    pub ops: String,
    /// The HTTP/JSON API's URL.
    pub http: String,
    /// Every line the server logged.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the server on `data` with `extra` arguments; returns once both listeners are up.
/// Warnings and errors it logs are echoed.
#[allow(dead_code)]
pub fn start_server(data: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start quarry serve");
    let stderr = child.stderr.take().expect("piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[server] {line}");
            }
            for key in [" metrics_addr=", " addr=", " http_addr="] {
                if let Some(rest) = line.split(key).nth(1) {
                    let v = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send((key, v));
                }
            }
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });
    let (mut url, mut ops, mut http) = (String::new(), String::new(), String::new());
    while url.is_empty() || ops.is_empty() || http.is_empty() {
        let (key, v) = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("the server announced its addresses");
        match key {
            " addr=" => url = format!("http://{v}"),
            " http_addr=" => http = format!("http://{v}"),
            _ => ops = v,
        }
    }
    Server {
        child,
        url,
        ops,
        http,
        log,
    }
}
