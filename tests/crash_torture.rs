//! Crash torture: the real binary (real model, sled, tantivy, HNSW) is killed with SIGKILL at
//! seeded random moments while clients upsert (unary and streaming), delete and delete by
//! filter, a server-side job runs, and checkpoints run every second. After each kill the server
//! is restarted and checked against a journal of what was acknowledged:
//!
//! - every acknowledged write is there, with its text, and found in all three modes (lexical by
//!   its version's unique token, dense and hybrid by its text);
//! - every acknowledged delete is gone from reads and from every index;
//! - a write cut off by the kill is all there or not at all: a document shows exactly one of
//!   the versions it may have (acknowledged or in flight), and no index still answers for the
//!   version it no longer has;
//! - jobs resume after the restart and end with exact counts (each document counted once);
//! - the server starts cleanly (no ERROR in its start-up log).
//!
//! The same journal check runs on the Qdrant backend, on a three-node cluster on loopback (3
//! shards, replication factor 2): there a Qdrant node is also killed with SIGKILL in half the
//! cycles, at a random moment (as late as the instant Quarry dies), and sometimes stays down
//! while Quarry restarts and is checked. While a node is down a write may be refused with
//! UNAVAILABLE, a deadline or RESOURCE_EXHAUSTED (the client backs off): it stays uncertain (applied whole or not at all) until the next check. A
//! Qdrant batch is not one transaction with the job's journal, so a job that resumes after a
//! kill finds the documents its cut-off batch wrote unchanged: still each counted once.
//!
//! `QUARRY_CRASH_CYCLES` (default 20 embedded, 10 on Qdrant) and `QUARRY_CRASH_SEED`
//! (default: from the clock, printed) choose the run: `QUARRY_CRASH_CYCLES=200 cargo test
//! --test crash_torture -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry::grpc::pb;
use quarry::qdrant::node::QdrantCluster;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const COLLECTION: &str = "torture";
/// Documents the journal tracks (ids d0..).
const POOL: usize = 240;
/// Metadata groups (delete by filter removes one group).
const GROUPS: usize = 12;
/// Documents in each job's source.
const JOB_DOCS: usize = 1200;

const WORDS: &[&str] = &[
    "granite", "basalt", "quarry", "slab", "marble", "chisel", "mortar", "lintel", "column",
    "arch", "vault", "gravel", "sand", "clay", "shale", "flint", "obsidian", "pumice", "tuff",
    "gneiss", "schist", "slate", "quartz", "feldspar", "mica", "garnet", "jade", "onyx", "agate",
    "opal", "cliff", "ridge", "valley", "river", "delta", "glacier", "moraine", "dune", "mesa",
    "butte", "canyon", "cavern", "spring", "geyser", "crater", "lava", "magma", "ember", "ash",
];

/// The text of document `n` at `version`: words drawn from a generator seeded by both, and a
/// token no other version of any document has.
fn text(n: usize, version: u32) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64((n as u64) << 20 | version as u64);
    let words: Vec<&str> = (0..24)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    format!("{} {}", token(n, version), words.join(" "))
}

fn token(n: usize, version: u32) -> String {
    format!("zq{n}x{version}")
}

fn group(n: usize) -> String {
    format!("g{}", n % GROUPS)
}

fn id(n: usize) -> String {
    format!("d{n}")
}

/// What the journal knows of a document: its acknowledged state (Some(version) or None for
/// absent), and the state an unacknowledged operation may have left.
#[derive(Debug, Clone, Default)]
struct Doc {
    acked: Option<u32>,
    pending: Option<Option<u32>>,
    /// The highest version ever sent (so every version's token stays unique).
    last: u32,
}

#[derive(Default)]
struct Journal {
    docs: Vec<Doc>,
    /// Documents an in-flight operation holds (one operation per document at a time).
    busy: HashSet<usize>,
    jobs: Vec<String>,
    /// Operations acknowledged, and operations a kill cut off that turned out applied or not.
    acked: u64,
    /// Calls refused (UNAVAILABLE, a deadline, RESOURCE_EXHAUSTED) while a Qdrant node was down.
    refused: u64,
    cut_applied: u64,
    cut_lost: u64,
}

type Shared = Arc<Mutex<Journal>>;

struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, config: &Path, root: &Path) -> Server {
    let models = common::provision();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--http-listen",
            "",
        ])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--models-dir")
        .arg(&models)
        .arg("--import-root")
        .arg(root)
        .env("QUARRY_EMBED_WORKERS", "2")
        .env_remove("QUARRY_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start quarry serve");
    let stderr = child.stderr.take().expect("piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the server did not start: {:?}", log.lock().unwrap()));
    Server {
        child,
        url: format!("http://{addr}"),
        log,
    }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect")
}

fn document(n: usize, version: u32) -> pb::Document {
    pb::Document {
        id: id(n),
        text: text(n, version),
        metadata: [("group".to_string(), group(n))].into(),
        ..Default::default()
    }
}

/// Picks up to `k` documents no operation holds, outside `except_group`, and marks them busy.
fn pick(j: &Shared, rng: &mut rand::rngs::StdRng, k: usize, except_group: usize) -> Vec<usize> {
    let mut j = j.lock().unwrap();
    let mut out = Vec::new();
    for _ in 0..k * 4 {
        let n = rng.random_range(0..POOL);
        if n % GROUPS != except_group && !j.busy.contains(&n) && !out.contains(&n) {
            out.push(n);
            if out.len() == k {
                break;
            }
        }
    }
    for n in &out {
        j.busy.insert(*n);
    }
    out
}

/// Marks `ns` as possibly in `state`, returning the versions to send.
fn intend(j: &Shared, ns: &[usize], delete: bool) -> Vec<u32> {
    let mut j = j.lock().unwrap();
    ns.iter()
        .map(|&n| {
            let d = &mut j.docs[n];
            if delete {
                d.pending = Some(None);
                0
            } else {
                d.last += 1;
                d.pending = Some(Some(d.last));
                d.last
            }
        })
        .collect()
}

/// The operation on `ns` was acknowledged (or refused: then nothing changed).
fn settle(j: &Shared, ns: &[usize], acked: bool) {
    let mut j = j.lock().unwrap();
    j.acked += acked as u64;
    for &n in ns {
        let d = &mut j.docs[n];
        if let Some(state) = d.pending.take() {
            if acked {
                d.acked = state;
            }
        }
        j.busy.remove(&n);
    }
}

/// How a cycle's clients learn the server was killed, and what they may meet before that.
#[derive(Clone)]
struct Cycle {
    /// Set just before the kill: a call failing after it was cut off by the kill.
    killed: Arc<AtomicBool>,
    /// Qdrant nodes die too: while the server lives, UNAVAILABLE, a deadline, or
    /// RESOURCE_EXHAUSTED (writes stalled behind the outage hold their slots until Qdrant's
    /// timeout, so the queue's wait runs out) is allowed, and the client backs off.
    outages: bool,
    journal: Shared,
}

impl Cycle {
    /// Whether the client stops (the server was killed), or goes on after a failed call
    /// whose documents stay uncertain; panics on a failure the run does not allow.
    async fn failed(&self, s: &tonic::Status, what: &str) -> bool {
        if self.killed.load(Ordering::Acquire) {
            return true;
        }
        if self.outages
            && matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
            )
        {
            self.journal.lock().unwrap().refused += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            return false;
        }
        panic!("{what} failed while the server lived: {s:?}");
    }
}

/// One client's work until the server dies: unary upserts, streams or deletes.
async fn client(url: String, j: Shared, seed: u64, kind: usize, dbf_group: usize, cy: Cycle) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(ch) = Channel::from_shared(url)
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect()
        .await
    else {
        return;
    };
    let mut docs = pb::documents_client::DocumentsClient::new(ch);
    loop {
        let ns = pick(&j, &mut rng, if kind == 1 { 12 } else { 3 }, dbf_group);
        if ns.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let ok = match kind {
            0 => {
                let versions = intend(&j, &ns, false);
                docs.upsert_documents(pb::UpsertDocumentsRequest {
                    collection: COLLECTION.into(),
                    documents: ns
                        .iter()
                        .zip(versions)
                        .map(|(&n, v)| document(n, v))
                        .collect(),
                })
                .await
                .map(|_| ())
            }
            1 => {
                let versions = intend(&j, &ns, false);
                let requests: Vec<_> = ns
                    .iter()
                    .zip(versions)
                    .map(|(&n, v)| pb::StreamUpsertRequest {
                        collection: COLLECTION.into(),
                        document: Some(document(n, v)),
                    })
                    .collect();
                docs.stream_upsert_documents(futures::stream::iter(requests))
                    .await
                    .map(|_| ())
            }
            _ => {
                intend(&j, &ns, true);
                docs.delete_documents(pb::DeleteDocumentsRequest {
                    collection: COLLECTION.into(),
                    ids: ns.iter().map(|&n| id(n)).collect(),
                })
                .await
                .map(|_| ())
            }
        };
        match ok {
            Ok(()) => settle(&j, &ns, true),
            // The operation stays uncertain (its documents busy) until the next check.
            Err(s) => {
                if cy.failed(&s, "a write").await {
                    return;
                }
            }
        }
    }
}

/// Delete by filter of one group, once, while the others write.
async fn delete_group(url: String, j: Shared, g: usize, delay: Duration, cy: Cycle) {
    tokio::time::sleep(delay).await;
    let ns: Vec<usize> = (0..POOL).filter(|n| n % GROUPS == g).collect();
    intend(&j, &ns, true);
    let Ok(ch) = Channel::from_shared(url).unwrap().connect().await else {
        return;
    };
    let r = pb::documents_client::DocumentsClient::new(ch)
        .delete_by_filter(pb::DeleteByFilterRequest {
            collection: COLLECTION.into(),
            where_text: format!("group = \"{}\"", group(g)),
            ..Default::default()
        })
        .await;
    match r {
        Ok(_) => settle(&j, &ns, true),
        Err(s) => {
            cy.failed(&s, "a delete by filter").await;
        }
    }
}

/// The server's pid, for stall diagnostics.
static SERVER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Every thread's stack of the server (gdb, when installed) written beside the test's temp
/// files, so a stall found after hours of cycles can be read, not just reported.
fn dump_server_stacks(what: &str) -> String {
    let pid = SERVER_PID.load(std::sync::atomic::Ordering::Relaxed);
    let out = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output();
    let path = std::env::temp_dir().join(format!("crash-torture-stall-{pid}.txt"));
    match out {
        Ok(o) => {
            let _ = std::fs::write(&path, &o.stdout);
            format!("{what}; server stacks in {}", path.display())
        }
        Err(e) => format!("{what}; no stacks (gdb: {e})"),
    }
}

/// Dense search within one group, with scores (the exact plan: few chunks are allowed).
async fn filtered_dense(ch: &Channel, query: &str, group: &str) -> Vec<(String, f32)> {
    let r = pb::search_client::SearchClient::new(ch.clone())
        .search(pb::SearchRequest {
            collection: COLLECTION.into(),
            query: query.into(),
            top_k: 5,
            mode: pb::SearchMode::Dense as i32,
            group_by_document: true,
            filter: [("group".to_string(), group.to_string())].into(),
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => r
            .into_inner()
            .hits
            .into_iter()
            .map(|h| (h.document_id, h.score))
            .collect(),
        Err(e) => vec![(format!("error {e:?}"), 0.0)],
    }
}

async fn search(ch: &Channel, mode: pb::SearchMode, query: &str) -> Vec<String> {
    let started = Instant::now();
    let r = pb::search_client::SearchClient::new(ch.clone())
        .search(pb::SearchRequest {
            collection: COLLECTION.into(),
            query: query.into(),
            top_k: 5,
            mode: mode as i32,
            group_by_document: true,
            ..Default::default()
        })
        .await;
    let r = r.unwrap_or_else(|e| {
        panic!(
            "{}",
            dump_server_stacks(&format!(
                "{mode:?} search for {query:?} failed after {:.1} s: {e:?}",
                started.elapsed().as_secs_f64()
            ))
        )
    });
    r.into_inner()
        .hits
        .into_iter()
        .map(|h| h.document_id)
        .collect()
}

/// Checks the restarted server against the journal; resolves what the kill left uncertain.
/// What a failed lexical check saw, so a failure explains itself: whether the document shows
/// up again within 30 s (a replica behind, not a loss), its chunks as stored, and each Qdrant
/// node's view of the collection's replicas.
async fn explain_miss(
    ch: &Channel,
    cluster: Option<&QdrantCluster>,
    me: &str,
    query: &str,
) -> String {
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(30) {
        if search(ch, pb::SearchMode::Lexical, query).await.first() == Some(&me.to_string()) {
            seen = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stored = pb::documents_client::DocumentsClient::new(ch.clone())
        .get_documents(pb::GetDocumentsRequest {
            collection: COLLECTION.into(),
            ids: vec![me.to_string()],
            include_chunks: true,
        })
        .await
        .map(|r| {
            r.into_inner()
                .documents
                .into_iter()
                .map(|d| (d.content_hash, d.chunk_count, d.chunks.len()))
                .collect::<Vec<_>>()
        });
    let mut replicas = String::new();
    for (i, node) in cluster
        .map(|c| &c.nodes[..])
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let state = match node.running() {
            true => node
                .http_get(&format!("/collections/quarry-{COLLECTION}/cluster"))
                .map(|(code, body)| format!("{code} {body}"))
                .unwrap_or_else(|e| format!("error {e}")),
            false => "down".into(),
        };
        replicas.push_str(&format!("\nnode {i}: {state}"));
    }
    format!(
        "found again after {seen:?} (None: not within 30 s); stored (hash, chunk_count, chunks):          {stored:?}; replicas:{replicas}"
    )
}

async fn verify(
    ch: &Channel,
    j: &Shared,
    rng: &mut rand::rngs::StdRng,
    cycle: usize,
    cluster: Option<&QdrantCluster>,
) {
    let ids: Vec<String> = (0..POOL).map(id).collect();
    let got = pb::documents_client::DocumentsClient::new(ch.clone())
        .get_documents(pb::GetDocumentsRequest {
            collection: COLLECTION.into(),
            ids,
            include_chunks: false,
        })
        .await
        .expect("get documents")
        .into_inner();
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    for d in got.documents {
        let d = d.document.unwrap();
        stored.insert(d.id, d.text);
    }
    let mut check = Vec::new();
    {
        let mut jl = j.lock().unwrap();
        jl.busy.clear();
        for n in 0..POOL {
            let d = &mut jl.docs[n];
            let now = stored.get(&id(n)).map(|t| {
                let version: u32 = t
                    .split_whitespace()
                    .next()
                    .and_then(|tok| tok.rsplit('x').next())
                    .and_then(|v| v.parse().ok())
                    .expect("a version token");
                assert_eq!(t, &text(n, version), "cycle {cycle}: d{n} has a torn text");
                version
            });
            let pending = d.pending.take();
            let allowed = match pending {
                Some(p) => vec![d.acked, p],
                None => vec![d.acked],
            };
            assert!(
                allowed.contains(&now),
                "cycle {cycle}: d{n} is {now:?}; acknowledged {:?}, in flight {:?}",
                d.acked,
                &allowed[1..]
            );
            if allowed.len() > 1 || rng.random_bool(0.08) {
                check.push((n, now, d.last));
            }
            let cut = pending.filter(|p| *p != d.acked).map(|p| p == now);
            d.acked = now;
            match cut {
                Some(true) => jl.cut_applied += 1,
                Some(false) => jl.cut_lost += 1,
                None => {}
            }
        }
    }
    // The indexes agree with the documents, in every mode.
    for (n, now, last) in check {
        let me = id(n);
        match now {
            Some(v) => {
                let lex = search(ch, pb::SearchMode::Lexical, &token(n, v)).await;
                if lex.first() != Some(&me) {
                    let why = explain_miss(ch, cluster, &me, &token(n, v)).await;
                    panic!("cycle {cycle}: lexical misses d{n} v{v}: {lex:?}; {why}");
                }
                for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
                    let hits = search(ch, mode, &text(n, v)).await;
                    if !hits.contains(&me) {
                        // Tell a graph that lost its way from a vector that is wrong: with
                        // its group as filter, the allowed chunks are few and scored exactly.
                        let exact = filtered_dense(ch, &text(n, v), &group(n)).await;
                        panic!(
                            "cycle {cycle}: {mode:?} misses d{n} v{v}: {hits:?}; exact scoring \
                             within its group finds {exact:?}"
                        );
                    }
                }
                // No index answers for another version of it.
                for old in (last.saturating_sub(3).max(1)..=last).filter(|&o| o != v) {
                    let lex = search(ch, pb::SearchMode::Lexical, &token(n, old)).await;
                    assert!(
                        !lex.contains(&me),
                        "cycle {cycle}: d{n} v{v} still found by v{old}'s token"
                    );
                }
            }
            None if last > 0 => {
                let lex = search(ch, pb::SearchMode::Lexical, &token(n, last)).await;
                assert!(
                    !lex.contains(&me),
                    "cycle {cycle}: deleted d{n} found (lexical)"
                );
                for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
                    let hits = search(ch, mode, &text(n, last)).await;
                    assert!(
                        !hits.contains(&me),
                        "cycle {cycle}: deleted d{n} found ({mode:?})"
                    );
                }
            }
            None => {}
        }
    }
}

/// Checks every job: a finished one has each of its documents exactly once (on Qdrant, the
/// documents of a batch cut off by a kill count as unchanged when the job writes them again).
async fn check_jobs(ch: &Channel, j: &Shared, cycle: usize, qdrant: bool) -> usize {
    let ids = j.lock().unwrap().jobs.clone();
    let mut unfinished = 0;
    for jid in ids {
        let job = pb::jobs_client::JobsClient::new(ch.clone())
            .get_job(pb::GetJobRequest { id: jid.clone() })
            .await
            .expect("get job")
            .into_inner();
        let c = job.counts.unwrap_or_default();
        match pb::JobState::try_from(job.state) {
            Ok(pb::JobState::Succeeded) => {
                let rewritten = if qdrant { c.unchanged } else { 0 };
                assert_eq!(
                    (
                        c.seen,
                        c.created + rewritten,
                        c.updated,
                        c.unchanged,
                        c.failed
                    ),
                    (JOB_DOCS as u64, JOB_DOCS as u64, 0, rewritten, 0),
                    "cycle {cycle}: job {jid} counted a document twice or lost one: {job:?}"
                );
            }
            Ok(pb::JobState::Queued | pb::JobState::Running) => unfinished += 1,
            other => panic!("cycle {cycle}: job {jid} ended {other:?}: {}", job.error),
        }
    }
    unfinished
}

fn write_job_source(root: &Path, k: usize) -> String {
    let path = root.join(format!("job{k}.jsonl"));
    let mut out = String::new();
    for i in 0..JOB_DOCS {
        out.push_str(&format!(
            "{{\"_id\": \"j{k}_{i}\", \"text\": \"job {k} document {i} {}\"}}\n",
            WORDS[i % WORDS.len()]
        ));
    }
    std::fs::write(&path, out).unwrap();
    path.to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_random_sigkills() {
    torture(None, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_qdrant_acknowledged_writes_survive_sigkills_of_quarry_and_qdrant_nodes() {
    let Some(bin) = common::qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| QdrantCluster::start(&bin, dir.path(), 3))
        .expect("a three-node cluster starts");
    torture(Some(cluster), 10).await;
}

/// Brings a killed Qdrant node back on its storage and waits until the cluster has it again
/// and its replicas have recovered: replication factor 2 promises to survive one lost node at
/// a time, so the next node is killed only once every shard has two live replicas again.
fn revive(cluster: &mut QdrantCluster, node: usize) {
    tokio::task::block_in_place(|| {
        cluster.nodes[node].start()?;
        cluster.nodes[node].wait_ready(Duration::from_secs(120))?;
        cluster.wait_peers(cluster.nodes.len(), Duration::from_secs(120))?;
        cluster.wait_replicas_active(&format!("quarry-{COLLECTION}"), Duration::from_secs(120))
    })
    .expect("the Qdrant node rejoins");
}

/// Kills and restarts the server `cycles` times, checking it against the journal each time;
/// on a Qdrant cluster (when given) its nodes die too.
async fn torture(mut cluster: Option<QdrantCluster>, default_cycles: usize) {
    let qdrant = cluster.is_some();
    let cycles: usize = std::env::var("QUARRY_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cycles);
    let seed: u64 = std::env::var("QUARRY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let on = if qdrant {
        "Qdrant, 3 nodes"
    } else {
        "embedded"
    };
    eprintln!("crash torture ({on}): {cycles} cycles, QUARRY_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("quarry.toml");
    // Checkpoints every second, so kills land in them too.
    let mut settings = "[index]\ncheckpoint_interval_secs = 1\n".to_string();
    if let Some(c) = &cluster {
        settings += &format!(
            "[backend]\nkind = \"qdrant\"\nurl = \"{}\"\nshard_number = 3\nreplication_factor = 2\ntimeout_secs = 10\n",
            c.urls().join(",")
        );
    }
    std::fs::write(&config, settings).unwrap();
    let journal: Shared = Arc::new(Mutex::new(Journal {
        docs: vec![Doc::default(); POOL],
        ..Default::default()
    }));
    let started = Instant::now();
    let (mut kills_in_jobs, mut node_kills) = (0, 0);
    // A Qdrant node killed in the last cycle and left down through this start and check.
    let mut down: Option<usize> = None;
    for cycle in 0..=cycles {
        let server = start(data.path(), &config, root.path());
        SERVER_PID.store(server.child.id(), std::sync::atomic::Ordering::Relaxed);
        eprintln!("cycle {cycle}");
        let startup_errors: Vec<String> = server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" ERROR "))
            .cloned()
            .collect();
        assert!(
            startup_errors.is_empty(),
            "cycle {cycle}: start-up logged {startup_errors:?}"
        );
        let ch = channel(&server.url).await;
        if cycle == 0 {
            pb::collections_client::CollectionsClient::new(ch.clone())
                .create_collection(pb::CreateCollectionRequest {
                    name: COLLECTION.into(),
                    config: None,
                })
                .await
                .expect("create");
        } else {
            verify(&ch, &journal, &mut rng, cycle, cluster.as_ref()).await;
            let unfinished = check_jobs(&ch, &journal, cycle, qdrant).await;
            kills_in_jobs += unfinished.min(1);
        }
        if let (Some(c), Some(node)) = (cluster.as_mut(), down.take()) {
            revive(c, node);
        }
        if cycle == cycles {
            // The last start: no kill. Every job must finish, exactly.
            let deadline = Instant::now() + Duration::from_secs(300);
            while check_jobs(&ch, &journal, cycle, qdrant).await > 0 {
                assert!(Instant::now() < deadline, "jobs did not finish");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            verify(&ch, &journal, &mut rng, cycle, cluster.as_ref()).await;
            break;
        }
        // A job now and then (each resumes across the kills that follow).
        if rng.random_bool(0.3) {
            let path = write_job_source(root.path(), cycle);
            let job = pb::jobs_client::JobsClient::new(ch.clone())
                .submit_ingest(pb::SubmitIngestRequest {
                    collection: COLLECTION.into(),
                    source: Some(pb::IngestSource {
                        path,
                        ..Default::default()
                    }),
                    sync: false,
                    switch_alias: String::new(),
                })
                .await
                .expect("submit");
            journal.lock().unwrap().jobs.push(job.into_inner().id);
        }
        let dbf_group = rng.random_range(0..GROUPS);
        // Longer on Qdrant, where each write is several round trips.
        let kill_after = Duration::from_millis(if qdrant {
            rng.random_range(500..6000)
        } else {
            rng.random_range(150..2500)
        });
        // On Qdrant, half the cycles also lose a node, at a moment up to Quarry's kill.
        let node_fault = match &cluster {
            Some(c) if rng.random_bool(0.5) => Some((
                rng.random_range(0..c.nodes.len()),
                Duration::from_millis(rng.random_range(0..=kill_after.as_millis() as u64)),
            )),
            _ => None,
        };
        let cy = Cycle {
            killed: Arc::new(AtomicBool::new(false)),
            outages: qdrant,
            journal: journal.clone(),
        };
        let mut tasks = Vec::new();
        for kind in 0..3 {
            tasks.push(tokio::spawn(client(
                server.url.clone(),
                journal.clone(),
                rng.random(),
                kind,
                dbf_group,
                cy.clone(),
            )));
        }
        tasks.push(tokio::spawn(delete_group(
            server.url.clone(),
            journal.clone(),
            dbf_group,
            Duration::from_millis(rng.random_range(0..kill_after.as_millis() as u64 + 1)),
            cy.clone(),
        )));
        let mut slept = Duration::ZERO;
        if let (Some(c), Some((node, at))) = (cluster.as_mut(), node_fault) {
            tokio::time::sleep(at).await;
            slept = at;
            c.nodes[node].kill(); // SIGKILL
            node_kills += 1;
        }
        tokio::time::sleep(kill_after - slept).await;
        cy.killed.store(true, Ordering::Release);
        drop(server); // SIGKILL
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(_) => {}
                Err(_) => panic!("cycle {cycle}: a client hung after the kill"),
            }
        }
        if let (Some(c), Some((node, _))) = (cluster.as_mut(), node_fault) {
            // Sometimes the node stays down while Quarry restarts and is checked.
            if cycle + 1 < cycles && rng.random_bool(0.3) {
                down = Some(node);
            } else {
                revive(c, node);
            }
        }
    }
    let j = journal.lock().unwrap();
    let nodes = if qdrant {
        format!(
            ", {node_kills} Qdrant nodes killed, {} calls refused while a node was down",
            j.refused
        )
    } else {
        String::new()
    };
    eprintln!(
        "crash torture ({on}): {cycles} kills survived in {:.0} s (seed {seed}){nodes}: {} \
         operations acknowledged; {} document writes cut off by a kill or refused were found \
         applied, {} not (each whole); {} jobs, {kills_in_jobs} restarts resumed an unfinished \
         job",
        started.elapsed().as_secs_f64(),
        j.acked,
        j.cut_applied,
        j.cut_lost,
        j.jobs.len(),
    );
}
