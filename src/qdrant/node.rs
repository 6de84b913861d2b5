//! Local Qdrant processes for tests and benchmarks: one node, or a cluster on loopback, each
//! node on free ports with its own storage directory, killed by pid (`kill -9` for crash
//! tests) and restarted on the same storage. Not used by the server itself.
//!
//! The binary comes from `scripts/provision-qdrant.sh` (built once per machine from the
//! vendored sources); callers find it and skip loudly where it cannot be had.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Runs the project's provisioning script (`scripts/provision-qdrant.sh` of `project`): the
/// Qdrant binary's path, or `None` when it cannot be had on this machine (the script exits 3
/// and says why; this says loudly that the caller skips).
pub fn provisioned_binary(project: &Path) -> Result<Option<PathBuf>> {
    let script = project.join("scripts/provision-qdrant.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()?;
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            eprintln!("!!! SKIPPED: no Qdrant binary on this machine (see above) !!!");
            return Ok(None);
        }
        _ => {
            return Err(Error::internal(format!(
                "{} failed ({})",
                script.display(),
                out.status
            )))
        }
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One Qdrant process (killed when dropped).
pub struct QdrantNode {
    bin: PathBuf,
    dir: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    pub p2p_port: u16,
    /// The first node's p2p port, for the others to join (`None`: a single node).
    bootstrap: Option<u16>,
    clustered: bool,
    child: Option<Child>,
}

impl QdrantNode {
    /// Starts a single node storing under `dir`, and waits until it is ready.
    pub fn single(bin: &Path, dir: &Path) -> Result<QdrantNode> {
        let mut n = QdrantNode::new(bin, dir, false, None)?;
        n.start()?;
        n.wait_ready(Duration::from_secs(120))?;
        Ok(n)
    }

    fn new(bin: &Path, dir: &Path, clustered: bool, bootstrap: Option<u16>) -> Result<QdrantNode> {
        std::fs::create_dir_all(dir)?;
        Ok(QdrantNode {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            http_port: free_port()?,
            grpc_port: free_port()?,
            p2p_port: free_port()?,
            bootstrap,
            clustered,
            child: None,
        })
    }

    /// The gRPC URL Quarry's `[backend] url` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Starts the process (again, after [`QdrantNode::kill`], on the same storage and ports).
    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.dir)
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", self.dir.join("storage"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("qdrant.log"))?);
        if self.clustered {
            cmd.env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", self.p2p_port.to_string())
                .arg("--uri")
                .arg(format!("http://127.0.0.1:{}", self.p2p_port));
            // A node that already joined keeps its peers in its storage.
            if let Some(first) = self
                .bootstrap
                .filter(|_| !self.dir.join("storage/raft_state.json").exists())
            {
                cmd.arg("--bootstrap")
                    .arg(format!("http://127.0.0.1:{first}"));
            }
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, within: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if self
                .http_get("/readyz")
                .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if started.elapsed() > within {
                let log = std::fs::read_to_string(self.dir.join("qdrant.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(Error::Unavailable(format!(
                    "Qdrant on port {} not ready after {within:?}; its log ends:\n{tail}",
                    self.http_port
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A GET on the node's REST port: status and body.
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for QdrantNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes forming one cluster on loopback.
pub struct QdrantCluster {
    pub nodes: Vec<QdrantNode>,
}

impl QdrantCluster {
    /// Starts `n` nodes under `dir` (the first, then the others joining it) and waits until
    /// every node is ready and the cluster has all of them as peers.
    pub fn start(bin: &Path, dir: &Path, n: usize) -> Result<QdrantCluster> {
        let mut first = QdrantNode::new(bin, &dir.join("node0"), true, None)?;
        first.start()?;
        first.wait_ready(Duration::from_secs(120))?;
        let p2p = first.p2p_port;
        let mut nodes = vec![first];
        for i in 1..n {
            let mut node = QdrantNode::new(bin, &dir.join(format!("node{i}")), true, Some(p2p))?;
            node.start()?;
            node.wait_ready(Duration::from_secs(120))?;
            nodes.push(node);
        }
        let cluster = QdrantCluster { nodes };
        cluster.wait_peers(n, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Waits until the first running node counts `n` peers.
    pub fn wait_peers(&self, n: usize, within: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let node = self.nodes.iter().find(|n| n.running());
            if let Some(Ok((200, body))) = node.map(|n| n.http_get("/cluster")) {
                let peers = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["result"]["peers"].as_object().map(|p| p.len()))
                    .unwrap_or(0);
                if peers >= n {
                    return Ok(());
                }
            }
            if started.elapsed() > within {
                return Err(Error::Unavailable(format!(
                    "the Qdrant cluster did not reach {n} peers in {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until, as every running node sees it, each replica of `collection` is Active and
    /// no shard transfer runs (a collection not created yet counts as healthy). A node that
    /// comes back recovers its replicas by shard transfers after it is ready: until then a
    /// replication factor of 2 does not survive losing another node.
    pub fn wait_replicas_active(&self, collection: &str, within: Duration) -> Result<()> {
        let started = Instant::now();
        let path = format!("/collections/{collection}/cluster");
        loop {
            let mut pending = Vec::new();
            for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.running()) {
                match node.http_get(&path) {
                    Ok((404, _)) => {}
                    Ok((200, body)) => {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                        let r = &v["result"];
                        let replicas = [&r["local_shards"], &r["remote_shards"]];
                        let all_active = replicas.iter().all(|list| {
                            list.as_array().is_some_and(|l| {
                                l.iter().all(|s| s["state"].as_str() == Some("Active"))
                            })
                        });
                        let moving = r["shard_transfers"]
                            .as_array()
                            .is_none_or(|t| !t.is_empty());
                        if !all_active || moving {
                            pending.push(format!("node {i}: {body}"));
                        }
                    }
                    other => pending.push(format!("node {i}: {other:?}")),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(Error::Unavailable(format!(
                    "replicas of {collection} not all active after {within:?}: {}",
                    pending.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The gRPC URL of each node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(QdrantNode::url).collect()
    }
}
