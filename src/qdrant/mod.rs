//! The Qdrant backend: Quarry's collections on a Qdrant node or cluster, for deployments that
//! outgrow one machine. Quarry keeps everything that gives a request its meaning (chunking,
//! embedding, typed metadata and filters, fusion with explanations, eval, answers, jobs, keys,
//! admission: the engine above `backend`); Qdrant keeps the data, durably, sharded and
//! replicated.
//!
//! The mapping (docs/SCALING.md, "Past one machine"):
//! - one Qdrant collection per Quarry collection, named `<collection_prefix><name>`; the Quarry
//!   record, the metadata key types and the BM25 length statistics live in the collection's
//!   own metadata, so every front end on the cluster sees the same collections;
//! - per chunk a point (its Quarry chunk id as point id) with a named dense vector (`dense`,
//!   cosine) and a named sparse vector (`bm25`, with Qdrant's IDF modifier; weights computed by
//!   Quarry with the embedded index's analysis: `bm25.rs`), the chunk's text, offsets, document
//!   id and version, and the document's typed metadata (`filter.rs`);
//! - per document a point without vectors (a UUID derived from the document id) holding its
//!   record, its text and its current version: making that point name a new version is the
//!   one step that switches a document to it (`collection.rs`, `write.rs`);
//! - Quarry's aliases are Qdrant's aliases (`alias.rs`);
//! - both candidate lists come from Qdrant, each filtered by the translated filter tree, and
//!   Quarry fuses them itself, so explanations, weighted fusion and eval are the same in kind.
//!
//! The client is async (tonic); the engine's backend calls are blocking. Calls run on a small
//! runtime of their own ([`block`]), so a blocking engine thread (or a test's single-threaded
//! runtime) never has to drive Qdrant's I/O itself.

mod alias;
mod bm25;
mod collection;
pub mod filter;
mod meta;
pub mod node;
mod query;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use qdrant_client::qdrant::{
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType, Modifier,
    SparseVectorParamsBuilder, SparseVectorsConfigBuilder, VectorParamsBuilder,
};
use qdrant_client::QdrantError;
use serde::{Deserialize, Serialize};

pub use collection::{QdrantCollection, RECHECK_AFTER};
pub use write::Step;

use crate::error::{quote, Error, Result};
use crate::meta::{Schema, ValueType};
use crate::store::CollectionRecord;

/// Which backend a server keeps its collections on (`[backend] kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// sled + tantivy + HNSW in the data directory (the default).
    #[default]
    Embedded,
    /// A Qdrant node or cluster at `url`.
    Qdrant,
}

/// `[backend]`: where collections live. Only `kind` matters for the embedded backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSettings {
    pub kind: BackendKind,
    /// Qdrant's gRPC address (`http://` or `https://`; HTTPS checks the server against the
    /// system's roots, and `SSL_CERT_FILE` names a private CA); several nodes of one cluster,
    /// comma-separated, and calls move to the next when one cannot be reached.
    pub url: String,
    /// Qdrant's API key (env `QUARRY_QDRANT_API_KEY` keeps it out of files).
    pub api_key: Option<String>,
    /// Shards of each new collection (0: Qdrant's default, one per node).
    pub shard_number: u32,
    /// Copies of each shard.
    pub replication_factor: u32,
    /// Copies a write must reach before it is acknowledged.
    pub write_consistency_factor: u32,
    /// Replicas a read consults: `one`, `majority`, `quorum` or `all`. Writes are acknowledged
    /// once every active replica applied them, so `one` reads them; the others fail while a
    /// shard has fewer active replicas than they need (with a replication factor of 2,
    /// `majority` fails whenever one node is down).
    pub read_consistency: ReadConsistency,
    /// Prefix of the Qdrant collection names, so several deployments can share a cluster.
    pub collection_prefix: String,
    /// Seconds one Qdrant call may take.
    pub timeout_secs: u64,
}

/// How many replicas a read consults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    #[default]
    One,
    Majority,
    Quorum,
    All,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            kind: BackendKind::Embedded,
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            shard_number: 0,
            replication_factor: 1,
            write_consistency_factor: 1,
            read_consistency: ReadConsistency::One,
            collection_prefix: "quarry-".into(),
            timeout_secs: 30,
        }
    }
}

impl BackendSettings {
    /// The nodes `url` names (comma-separated).
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.kind == BackendKind::Embedded {
            return Ok(());
        }
        let bad = |m: String| Err(Error::invalid(format!("[backend] {m}")));
        let urls = self.urls();
        if urls.is_empty() || urls.len() > 64 {
            return bad("url must name 1 to 64 Qdrant nodes (comma-separated)".into());
        }
        for url in urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!(
                    "url {} must start with http:// or https://",
                    quote(url)
                ));
            }
        }
        if self.replication_factor == 0 || self.write_consistency_factor == 0 {
            return bad(
                "replication_factor and write_consistency_factor must be at least 1".into(),
            );
        }
        if self.write_consistency_factor > self.replication_factor {
            return bad("write_consistency_factor must not exceed replication_factor".into());
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs must be at least 1".into());
        }
        let prefix_ok = self.collection_prefix.len() <= 64
            && self
                .collection_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return bad("collection_prefix must be at most 64 characters of [A-Za-z0-9_-]".into());
        }
        Ok(())
    }
}

/// The runtime every Qdrant call runs on: two threads, alive for the whole process.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quarry-qdrant")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::internal(format!("cannot start the Qdrant runtime: {e}")))
}

/// Runs `fut` on the Qdrant runtime and waits for it (from any thread, async or not).
pub(crate) fn block<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::internal("a Qdrant call was dropped"))
}

/// Qdrant's status text, cut to a readable length.
/// Qdrant's text may echo what was sent to it: escaped (control characters, quotes) and cut.
fn cut(s: &str) -> String {
    let s = s.trim();
    let head = match s.char_indices().nth(300) {
        Some((i, _)) => &s[..i],
        None => s,
    };
    let escaped: String = head.chars().flat_map(char::escape_debug).collect();
    if head.len() < s.len() {
        format!("{escaped}...")
    } else {
        escaped
    }
}

/// A Qdrant failure as an engine error: what Qdrant cannot serve now (a node or shard down,
/// a timeout, overload) is UNAVAILABLE or RESOURCE_EXHAUSTED, so clients retry; the rest is an
/// internal fault.
pub(crate) fn error(e: QdrantError) -> Error {
    use tonic::Code;
    if unreachable(&e) {
        let msg = match &e {
            QdrantError::ResponseError { status } => cut(status.message()),
            other => cut(&other.to_string()),
        };
        return Error::Unavailable(format!("no Qdrant node in `url` can be reached: {msg}"));
    }
    match e {
        QdrantError::ResponseError { status } => {
            let msg = cut(status.message());
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                    Error::Unavailable(format!("Qdrant is unavailable: {msg}"))
                }
                Code::ResourceExhausted => Error::Exhausted(format!("Qdrant is overloaded: {msg}")),
                Code::NotFound => Error::NotFound(format!("Qdrant: {msg}")),
                // Qdrant reports a shard with no active replica as an internal or
                // service error naming it: that is a temporary loss, not a fault of ours.
                _ if is_replica_loss(&msg) => {
                    Error::Unavailable(format!("Qdrant cannot serve every shard now: {msg}"))
                }
                _ => Error::internal(format!("Qdrant: {} {msg}", status.code())),
            }
        }
        QdrantError::ResourceExhaustedError { status, .. } => {
            Error::Exhausted(format!("Qdrant is overloaded: {}", cut(status.message())))
        }
        other => Error::internal(format!("Qdrant: {}", cut(&other.to_string()))),
    }
}

/// Whether Qdrant's message says a shard or a peer could not be reached (a node down or
/// restarting), however Qdrant's own error wraps it: for example "1 of 1 read operations
/// failed: ... 'The service is currently unavailable', message: \"tcp connect error\"".
fn is_replica_loss(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "no active replica",
        "replica",
        "dead",
        "not available",
        "unavailable",
        "transport error",
        "connection",
        "connect error",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Metadata keys of a Qdrant collection that Quarry writes.
const META_RECORD: &str = "quarry_record";
const META_SCHEMA_PREFIX: &str = "quarry_key:";
const META_STATS: &str = "quarry_bm25";

/// Payload fields every Quarry point may carry, with their index types.
const BASE_INDEXES: &[(&str, FieldType)] = &[
    ("k", FieldType::Keyword),
    ("d", FieldType::Keyword),
    ("v", FieldType::Integer),
    ("src", FieldType::Keyword),
    ("w", FieldType::Integer),
    (filter::KEYS_FIELD, FieldType::Keyword),
];

/// A connection to Qdrant and the registry of Quarry's collections there.
pub struct Qdrant {
    /// One client per node named in `url` (comma-separated): calls go to the current one and
    /// move on to the next when it cannot be reached ([`Qdrant::call`]).
    clients: Vec<Arc<qdrant_client::Qdrant>>,
    current: std::sync::atomic::AtomicUsize,
    settings: BackendSettings,
    /// False while the last call (or health check) reached no node: `/readyz` reports it.
    reachable: std::sync::atomic::AtomicBool,
    /// Quarry's aliases as last read (`alias.rs`).
    alias_cache: alias::Cache,
    /// Whether the records collection is known to exist (`meta.rs`).
    records_ready: std::sync::atomic::AtomicBool,
}

/// Whether a failed call never reached a working node (so another node may serve it): the
/// client could not connect (qdrant-client reports that as INTERNAL "Failed to connect to
/// ..."), or the connection broke under it (UNAVAILABLE from the transport). Errors a node
/// answered with (including its own trouble reaching a peer) are not.
fn unreachable(e: &QdrantError) -> bool {
    match e {
        QdrantError::ResponseError { status } => {
            let m = status.message();
            match status.code() {
                tonic::Code::Internal => m.starts_with("Failed to connect to"),
                tonic::Code::Unavailable | tonic::Code::Unknown => {
                    !m.contains("Service internal error") && !m.contains("replica")
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// A Quarry collection as found in Qdrant: its record and metadata key types.
pub struct Found {
    pub record: CollectionRecord,
    pub schema: Schema,
}

impl Qdrant {
    /// A client for `settings.url` (connected on first use).
    pub fn connect(settings: &BackendSettings) -> Result<Arc<Qdrant>> {
        settings.validate()?;
        let mut clients = Vec::new();
        for url in settings.urls() {
            let mut config = qdrant_client::Qdrant::from_url(url)
                .timeout(Duration::from_secs(settings.timeout_secs))
                .connect_timeout(Duration::from_secs(settings.timeout_secs.min(5)))
                .skip_compatibility_check();
            if let Some(key) = settings.api_key.clone().filter(|k| !k.is_empty()) {
                config = config.api_key(key);
            }
            clients.push(Arc::new(config.build().map_err(error)?));
        }
        Ok(Arc::new(Qdrant {
            clients,
            current: std::sync::atomic::AtomicUsize::new(0),
            settings: settings.clone(),
            reachable: std::sync::atomic::AtomicBool::new(true),
            alias_cache: Default::default(),
            records_ready: Default::default(),
        }))
    }

    /// Runs `f` with the current node's client; when that node cannot be reached, with the
    /// next node's, once round (every Quarry write is idempotent: fixed point ids, whole
    /// payloads). Returns Qdrant's answer for the mapping at the call site.
    pub(crate) fn call<T, Fut>(
        &self,
        f: impl Fn(Arc<qdrant_client::Qdrant>) -> Fut,
    ) -> Result<std::result::Result<T, QdrantError>>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, QdrantError>> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let n = self.clients.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut out = block(f(self.clients[first].clone()))?;
        for i in 1..n {
            match &out {
                Err(e) if unreachable(e) => {}
                _ => break,
            }
            let k = (first + i) % n;
            out = block(f(self.clients[k].clone()))?;
            if !matches!(&out, Err(e) if unreachable(e)) {
                tracing::warn!(
                    node = k,
                    "Qdrant node unreachable; moved to the next one in `url`"
                );
                self.current.store(k, Ordering::Relaxed);
            }
        }
        let reached = !matches!(&out, Err(e) if unreachable(e));
        if self.reachable.swap(reached, Ordering::Relaxed) != reached {
            if reached {
                tracing::info!("Qdrant answers again");
            } else {
                tracing::error!(nodes = n, "no Qdrant node in `url` can be reached");
            }
        }
        Ok(out)
    }

    /// Whether the last call (or health check) reached a node.
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn settings(&self) -> &BackendSettings {
        &self.settings
    }

    /// Whether Qdrant answers its health check (on any node in `url`). Blocking.
    pub fn healthy(&self) -> bool {
        matches!(
            self.call(|c| async move { c.health_check().await }),
            Ok(Ok(_))
        )
    }

    fn qdrant_name(&self, name: &str) -> String {
        format!("{}{name}", self.settings.collection_prefix)
    }

    /// Every Quarry collection in Qdrant (collections without a Quarry record are skipped).
    pub fn list(&self) -> Result<Vec<Found>> {
        let names = self
            .call(|c| async move { c.list_collections().await })?
            .map_err(error)?;
        let mut out = Vec::new();
        for c in names.collections {
            let Some(name) = c.name.strip_prefix(&self.settings.collection_prefix) else {
                continue;
            };
            if let Some(found) = self.find(name)? {
                out.push(found);
            }
        }
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(out)
    }

    /// The collection `name`, if Qdrant has it.
    pub fn find(&self, name: &str) -> Result<Option<Found>> {
        let qname = self.qdrant_name(name);
        let info = match self.call(move |c| {
            let qname = qname.clone();
            async move { c.collection_info(qname).await }
        })? {
            Ok(info) => info,
            Err(e) => {
                return match error(e) {
                    Error::NotFound(_) => Ok(None),
                    e => Err(e),
                }
            }
        };
        let metadata = info
            .result
            .and_then(|r| r.config)
            .map(|c| c.metadata)
            .unwrap_or_default();
        let Some(record) = metadata.get(META_RECORD).and_then(|v| v.as_str().cloned()) else {
            return Ok(None);
        };
        let record: CollectionRecord = serde_json::from_str(&record)
            .map_err(|e| Error::internal(format!("corrupt Quarry record in Qdrant: {e}")))?;
        Ok(Some(Found {
            record,
            schema: schema_of(&metadata),
        }))
    }

    /// Creates the Qdrant collection of `record`, with the declared key types: the name is
    /// claimed by Qdrant itself, so two front ends creating one name cannot both succeed.
    pub fn create(&self, record: &CollectionRecord, declared: &Schema) -> Result<()> {
        let s = &self.settings;
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            "bm25",
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
        );
        let mut dense = qdrant_client::qdrant::VectorsConfigBuilder::default();
        dense.add_named_vector_params(
            "dense",
            VectorParamsBuilder::new(record.dimension as u64, Distance::Cosine),
        );
        let mut metadata: HashMap<String, serde_json::Value> = HashMap::new();
        metadata.insert(
            META_RECORD.into(),
            serde_json::Value::String(
                serde_json::to_string(record).map_err(|e| Error::internal(e.to_string()))?,
            ),
        );
        for (k, t) in declared {
            let t = serde_json::to_value(t).map_err(|e| Error::internal(e.to_string()))?;
            metadata.insert(schema_key(k), t);
        }
        let mut create = CreateCollectionBuilder::new(self.qdrant_name(&record.name))
            .vectors_config(dense)
            .sparse_vectors_config(sparse)
            .replication_factor(s.replication_factor)
            .write_consistency_factor(s.write_consistency_factor)
            .metadata(metadata);
        if s.shard_number > 0 {
            create = create.shard_number(s.shard_number);
        }
        let create = create.build();
        match self.call(move |c| {
            let r = create.clone();
            async move { c.create_collection(r).await }
        })? {
            Ok(_) => {}
            Err(e) => {
                let e = error(e);
                if e.to_string().contains("already exists") {
                    return Err(Error::CollectionExists(record.name.clone()));
                }
                return Err(e);
            }
        }
        let mut fields: Vec<(String, FieldType)> = BASE_INDEXES
            .iter()
            .map(|(f, t)| (f.to_string(), *t))
            .collect();
        fields.extend(
            declared
                .iter()
                .map(|(k, t)| (filter::field(k), filter::index_type(*t))),
        );
        self.index_fields(&record.name, fields)
    }

    /// Creates payload indexes (an existing one is left as it is).
    fn index_fields(&self, name: &str, fields: Vec<(String, FieldType)>) -> Result<()> {
        for (field, t) in fields {
            let req =
                CreateFieldIndexCollectionBuilder::new(self.qdrant_name(name), field, t).wait(true);
            self.call(move |c| {
                let r = req.clone();
                async move { c.create_field_index(r).await }
            })?
            .map_err(error)?;
        }
        Ok(())
    }

    /// Deletes the Qdrant collection of `name` (gone already is fine).
    pub fn delete(&self, name: &str) -> Result<()> {
        let qname = self.qdrant_name(name);
        match self.call(move |c| {
            let qname = qname.clone();
            async move { c.delete_collection(qname).await }
        })? {
            Ok(_) => Ok(()),
            Err(e) => match error(e) {
                Error::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Opens a found collection.
    pub fn open(self: &Arc<Self>, found: Found) -> Result<(QdrantCollection, Schema)> {
        let c = QdrantCollection::new(
            self.clone(),
            self.qdrant_name(&found.record.name),
            found.record,
        )?;
        Ok((c, found.schema))
    }
}

/// The metadata key of a metadata key's type.
fn schema_key(key: &str) -> String {
    format!("{META_SCHEMA_PREFIX}{key}")
}

/// The key types recorded in a collection's metadata.
fn schema_of(metadata: &HashMap<String, qdrant_client::qdrant::Value>) -> Schema {
    let mut out = Schema::new();
    for (k, v) in metadata {
        let Some(key) = k.strip_prefix(META_SCHEMA_PREFIX) else {
            continue;
        };
        let Some(t) = v.as_str() else { continue };
        let parsed: Option<ValueType> =
            serde_json::from_value(serde_json::Value::String(t.clone())).ok();
        if let Some(t) = parsed {
            out.insert(key.to_string(), t);
        }
    }
    out
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_peer_that_cannot_be_reached_is_a_temporary_loss() {
        let peer_down = "Service internal error: 1 of 1 read operations failed:\n  Service internal error: Tonic status error: code: 'The service is currently unavailable', message: \"tcp connect error\"";
        let status = tonic::Status::internal(peer_down);
        let e = error(QdrantError::ResponseError { status });
        assert!(matches!(e, Error::Unavailable(_)), "{e}");
        let status = tonic::Status::internal("Wrong input: vector dimension mismatch");
        let e = error(QdrantError::ResponseError { status });
        assert!(matches!(e, Error::Internal(_)), "{e}");
    }
}
