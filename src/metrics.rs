//! Process-wide metrics in the Prometheus text format, without a metrics library.
//!
//! A handful of families (counters, gauges and histograms keyed by label values) recorded where
//! the work happens (the gRPC layer, ingestion, embedding, search, the router client,
//! checkpoints) and rendered by [`render`] for `/metrics`. State that already lives elsewhere
//! (collection sizes, HNSW tombstones, storage health) is not mirrored here: the HTTP endpoint
//! reads it from the engine at scrape time. The registry is global because the recording
//! sites are spread over layers that should not pass a handle around for it; label sets are
//! small (service and method names, collection names, router URLs), so a mutex per family is
//! cheap next to the work being measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Series one family holds at most. Label values come from closed sets (operations from the
/// operations table, codes, classes) or from collections that exist (a deleted collection's
/// series are dropped: [`forget_collection`]); this cap is the backstop behind both.
pub const MAX_SERIES: usize = 4096;
/// The label value of the series that takes everything past [`MAX_SERIES`].
pub const OVERFLOW: &str = "_overflow";

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// One metric family: a name, help, label names, and a value per label set.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    kind: Kind,
    values: Mutex<BTreeMap<Vec<String>, f64>>,
    histograms: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl Family {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        kind: Kind,
    ) -> Family {
        Family {
            name,
            help,
            labels,
            kind,
            values: Mutex::new(BTreeMap::new()),
            histograms: Mutex::new(BTreeMap::new()),
        }
    }

    fn key(&self, labels: &[&str]) -> Vec<String> {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        labels.iter().map(|l| l.to_string()).collect()
    }

    /// The key a new series is stored under: its own, or, once the family holds
    /// [`MAX_SERIES`], the overflow series (every label [`OVERFLOW`]), so no caller can grow a
    /// family without bound.
    fn bounded<V>(&self, map: &BTreeMap<Vec<String>, V>, labels: &[&str]) -> Vec<String> {
        let key = self.key(labels);
        if map.len() < MAX_SERIES || map.contains_key(&key) {
            key
        } else {
            vec![OVERFLOW.to_string(); self.labels.len()]
        }
    }

    /// Adds `by` (counters and gauges).
    pub fn add(&self, labels: &[&str], by: f64) {
        if let Ok(mut v) = self.values.lock() {
            let key = self.bounded(&v, labels);
            *v.entry(key).or_insert(0.0) += by;
        }
    }

    /// Sets a gauge.
    pub fn set(&self, labels: &[&str], value: f64) {
        if let Ok(mut v) = self.values.lock() {
            let key = self.bounded(&v, labels);
            v.insert(key, value);
        }
    }

    /// Drops every series whose label `name` is `value` (a deleted collection's).
    pub fn forget(&self, name: &str, value: &str) {
        let Some(i) = self.labels.iter().position(|l| *l == name) else {
            return;
        };
        if let Ok(mut v) = self.values.lock() {
            v.retain(|k, _| k[i] != value);
        }
        if let Ok(mut h) = self.histograms.lock() {
            h.retain(|k, _| k[i] != value);
        }
    }

    /// Series held (for tests).
    pub fn series(&self) -> usize {
        self.values.lock().map_or(0, |v| v.len()) + self.histograms.lock().map_or(0, |h| h.len())
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Records one observation (histograms).
    pub fn observe(&self, labels: &[&str], value: f64) {
        if let Ok(mut h) = self.histograms.lock() {
            let key = self.bounded(&h, labels);
            let h = h.entry(key).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if value <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        }
    }

    pub fn observe_duration(&self, labels: &[&str], d: Duration) {
        self.observe(labels, d.as_secs_f64());
    }

    /// The current value (counters and gauges; 0 when never set), for tests.
    pub fn get(&self, labels: &[&str]) -> f64 {
        self.values
            .lock()
            .ok()
            .and_then(|v| v.get(&self.key(labels)).copied())
            .unwrap_or(0.0)
    }

    /// Observations so far (histograms), for tests.
    pub fn count(&self, labels: &[&str]) -> u64 {
        self.histograms
            .lock()
            .ok()
            .and_then(|h| h.get(&self.key(labels)).map(|h| h.count))
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        match self.kind {
            Kind::Counter | Kind::Gauge => {
                if let Ok(values) = self.values.lock() {
                    for (key, v) in values.iter() {
                        let _ =
                            writeln!(out, "{}{} {v}", self.name, labels(self.labels, key, None));
                    }
                }
            }
            Kind::Histogram => {
                if let Ok(hs) = self.histograms.lock() {
                    for (key, h) in hs.iter() {
                        for (i, bound) in BUCKETS.iter().enumerate() {
                            let le = bound.to_string();
                            let _ = writeln!(
                                out,
                                "{}_bucket{} {}",
                                self.name,
                                labels(self.labels, key, Some(&le)),
                                h.buckets[i]
                            );
                        }
                        let inf = labels(self.labels, key, Some("+Inf"));
                        let plain = labels(self.labels, key, None);
                        let _ = writeln!(out, "{}_bucket{inf} {}", self.name, h.count);
                        let _ = writeln!(out, "{}_sum{plain} {}", self.name, h.sum);
                        let _ = writeln!(out, "{}_count{plain} {}", self.name, h.count);
                    }
                }
            }
        }
    }
}

/// `{a="x",b="y"}` (with `le` last for histogram buckets), values escaped.
fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every family Quarry records.
pub struct Registry {
    pub grpc_requests: Family,
    pub grpc_duration: Family,
    pub grpc_in_flight: Family,
    pub grpc_rejected: Family,
    pub http_requests: Family,
    pub http_duration: Family,
    pub ingest_documents: Family,
    pub ingest_chunks: Family,
    pub embed_batch_duration: Family,
    pub embed_waiting: Family,
    pub query_cache: Family,
    pub query_sessions: Family,
    pub search_candidates: Family,
    pub router_requests: Family,
    pub answer_repairs: Family,
    pub checkpoint_duration: Family,
    pub hnsw_repaired: Family,
    pub jobs: Family,
    pub job_documents: Family,
    pub gate_decisions: Family,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process's metrics.
pub fn global() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        grpc_requests: Family::new(
            "quarry_grpc_requests_total",
            "gRPC requests finished, by service, method and status code.",
            &["service", "method", "code"],
            Kind::Counter,
        ),
        grpc_duration: Family::new(
            "quarry_grpc_request_duration_seconds",
            "gRPC request latency (until the response body ends), by service and method.",
            &["service", "method"],
            Kind::Histogram,
        ),
        grpc_in_flight: Family::new(
            "quarry_grpc_requests_in_flight",
            "gRPC requests being served, by admission class.",
            &["class"],
            Kind::Gauge,
        ),
        grpc_rejected: Family::new(
            "quarry_grpc_requests_rejected_total",
            "Requests refused with RESOURCE_EXHAUSTED by admission control (either door), by class.",
            &["class"],
            Kind::Counter,
        ),
        http_requests: Family::new(
            "quarry_http_requests_total",
            "HTTP/JSON API requests finished, by service, method (the operation's gRPC names) and status code name.",
            &["service", "method", "code"],
            Kind::Counter,
        ),
        http_duration: Family::new(
            "quarry_http_request_duration_seconds",
            "HTTP/JSON API request latency (until the reply is built), by service and method.",
            &["service", "method"],
            Kind::Histogram,
        ),
        ingest_documents: Family::new(
            "quarry_ingest_documents_total",
            "Documents written, by collection and outcome (created, updated, unchanged, deleted).",
            &["collection", "outcome"],
            Kind::Counter,
        ),
        ingest_chunks: Family::new(
            "quarry_ingest_chunks_total",
            "Chunks embedded and written, by collection.",
            &["collection"],
            Kind::Counter,
        ),
        embed_batch_duration: Family::new(
            "quarry_embed_batch_duration_seconds",
            "Embedding model calls, by kind (documents, query).",
            &["kind"],
            Kind::Histogram,
        ),
        embed_waiting: Family::new(
            "quarry_embed_queue_depth",
            "Embedding calls waiting for a model session.",
            &[],
            Kind::Gauge,
        ),
        query_cache: Family::new(
            "quarry_query_cache_requests_total",
            "Query embeddings asked of the query-vector cache, by result (hit, miss).",
            &["result"],
            Kind::Counter,
        ),
        query_sessions: Family::new(
            "quarry_query_embeddings_total",
            "Queries embedded by the model, by the session that ran them (wide: all cores for a lone query; narrow: a reserved one-core session; borrowed: an idle ingestion session).",
            &["session"],
            Kind::Counter,
        ),
        search_candidates: Family::new(
            "quarry_search_candidates_total",
            "Candidates returned by each retriever to searches.",
            &["retriever"],
            Kind::Counter,
        ),
        router_requests: Family::new(
            "quarry_router_requests_total",
            "HTTP requests to inference routers, by router and outcome (ok, retry, rejected, error).",
            &["router", "outcome"],
            Kind::Counter,
        ),
        answer_repairs: Family::new(
            "quarry_answer_repairs_total",
            "Repair attempts after a model reply broke the answer contract.",
            &[],
            Kind::Counter,
        ),
        checkpoint_duration: Family::new(
            "quarry_checkpoint_duration_seconds",
            "Checkpoints of every collection's indexes.",
            &[],
            Kind::Histogram,
        ),
        hnsw_repaired: Family::new(
            "quarry_hnsw_repaired_total",
            "HNSW points a walk from the entry point could not reach, relinked (at checkpoints and after large batches).",
            &[],
            Kind::Counter,
        ),
        jobs: Family::new(
            "quarry_jobs",
            "Ingestion jobs known to the server, by state (queued, running, succeeded, failed, cancelled).",
            &["state"],
            Kind::Gauge,
        ),
        job_documents: Family::new(
            "quarry_job_documents_total",
            "Documents ingestion jobs read, by outcome (created, updated, unchanged, failed, deleted).",
            &["outcome"],
            Kind::Counter,
        ),
        gate_decisions: Family::new(
            "quarry_gate_decisions_total",
            "Decisions of the eval gate, by outcome: promotions of an alias (promoted, refused), rollbacks (rolled_back), search settings (adopted, refused) and tunings' checks (tune_held, tune_refused).",
            &["outcome"],
            Kind::Counter,
        ),
    })
}

/// Drops the series of a deleted collection, so collection labels name only collections that
/// exist.
pub fn forget_collection(name: &str) {
    let r = global();
    for f in [&r.ingest_documents, &r.ingest_chunks] {
        f.forget("collection", name);
    }
}

/// Every family in the text format.
pub fn render() -> String {
    let r = global();
    let mut out = String::new();
    for f in [
        &r.grpc_requests,
        &r.grpc_duration,
        &r.grpc_in_flight,
        &r.grpc_rejected,
        &r.http_requests,
        &r.http_duration,
        &r.ingest_documents,
        &r.ingest_chunks,
        &r.embed_batch_duration,
        &r.embed_waiting,
        &r.query_cache,
        &r.query_sessions,
        &r.search_candidates,
        &r.router_requests,
        &r.answer_repairs,
        &r.checkpoint_duration,
        &r.hnsw_repaired,
        &r.jobs,
        &r.job_documents,
        &r.gate_decisions,
    ] {
        f.render(&mut out);
    }
    out
}

/// A gauge sample rendered by the caller (scrape-time state), in the same format.
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let l = if l.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", l.join(","))
        };
        let _ = writeln!(out, "{name}{l} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let f = Family::new("t_total", "Test.", &["a"], Kind::Counter);
        f.inc(&["x\"y"]);
        f.add(&["x\"y"], 2.0);
        let h = Family::new("t_seconds", "Test.", &["m"], Kind::Histogram);
        h.observe(&["s"], 0.003);
        h.observe(&["s"], 100.0);
        let mut out = String::new();
        f.render(&mut out);
        h.render(&mut out);
        assert!(
            out.contains("# TYPE t_total counter\nt_total{a=\"x\\\"y\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{m=\"s\",le=\"0.0025\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{m=\"s\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{m=\"s\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{m=\"s\"} 2\n"), "{out}");
        assert_eq!(f.get(&["x\"y"]), 3.0);
    }
}
