//! Query embedding that uses the machine: sessions for concurrent queries, all cores for a lone
//! one, and a cache of query vectors.
//!
//! A search embeds one short text, and on a small machine that is most of its latency. One
//! session behind a mutex (what Quarry had) leaves every core but one idle however many
//! searches wait. [`QueryPool`] instead holds:
//!
//! - a *wide* session whose ONNX Runtime thread pool spans every core, used when a query is
//!   alone (no other search running, the wide session free): a lone query gets the whole
//!   machine, the latency a single client sees;
//! - one single-threaded *narrow* session per core, reserved for queries: concurrent queries
//!   run side by side, one per core, so throughput grows with clients up to the core count
//!   while ingestion keeps its own sessions (it cannot starve search);
//! - the ingestion sessions, borrowed when idle (`try_lock`: a running ingest holds them).
//!
//! Micro-batching (collect the queries that arrive together, run one batch) was measured and
//! rejected for the default models: they are dynamically quantized (`DynamicQuantizeLinear`
//! picks its int8 range from the whole batch tensor), so a query's vector would depend on which
//! other queries, and how much padding, shared its batch; the same search could rank
//! differently under load, and a cached vector would depend on its neighbours. One text per
//! call keeps every vector a function of its text alone. `benches/query.rs` prints the
//! batched throughput and the drift it causes.
//!
//! [`QueryCache`] keeps recent query vectors (LRU, keyed by the model and the query with its
//! whitespace normalized), for the repeated questions RAG backends send.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use fastembed::TextEmbedding;

use super::Embedder;
use crate::error::{Error, Result};

/// Query sessions of one model (see the module docs).
pub struct QueryPool {
    wide: Mutex<TextEmbedding>,
    narrow: Vec<Mutex<TextEmbedding>>,
    /// Queries between entering [`QueryPool::embed`] and leaving it.
    active: AtomicUsize,
    /// Signalled when a narrow session is released, for queries waiting for one.
    released: (Mutex<()>, Condvar),
}

/// Which session served a query (tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Wide,
    Narrow,
    Borrowed,
}

impl Served {
    pub fn as_str(&self) -> &'static str {
        match self {
            Served::Wide => "wide",
            Served::Narrow => "narrow",
            Served::Borrowed => "borrowed",
        }
    }
}

impl QueryPool {
    pub fn new(wide: TextEmbedding, narrow: Vec<TextEmbedding>) -> QueryPool {
        QueryPool {
            wide: Mutex::new(wide),
            narrow: narrow.into_iter().map(Mutex::new).collect(),
            active: AtomicUsize::new(0),
            released: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Runs `f` on a session: the wide one when this query is alone, else a free narrow one,
    /// else an idle ingestion session from `borrow`, else the first narrow one released.
    pub fn with_session<T>(
        &self,
        borrow: &[Mutex<TextEmbedding>],
        f: impl FnOnce(&mut TextEmbedding) -> Result<T>,
    ) -> Result<(T, Served)> {
        let _active = Active::enter(&self.active);
        // Alone: no other query embedding, no other search running, and none overlapping
        // lately. A search past its embedding (BM25, HNSW) needs a core too, and the wide
        // session's threads spin between operators (they stop at the end of a run, so the
        // lone search's own BM25 and HNSW get both cores): under concurrent load they would
        // burn the core another search needs (measured: benches/query.rs), so the wide
        // session is for searches that come one at a time.
        let alone = self.active.load(Ordering::Acquire) == 1 && super::lone_search();
        if alone {
            if let Ok(mut s) = self.wide.try_lock() {
                return Ok((f(&mut s)?, Served::Wide));
            }
        }
        let m = crate::metrics::global();
        let mut waiting = false;
        loop {
            for s in &self.narrow {
                if let Ok(mut s) = s.try_lock() {
                    if waiting {
                        m.embed_waiting.add(&[], -1.0);
                    }
                    let out = f(&mut s);
                    self.release(s);
                    return Ok((out?, Served::Narrow));
                }
            }
            for s in borrow {
                if let Ok(mut s) = s.try_lock() {
                    if waiting {
                        m.embed_waiting.add(&[], -1.0);
                    }
                    return Ok((f(&mut s)?, Served::Borrowed));
                }
            }
            if !waiting {
                waiting = true;
                m.embed_waiting.add(&[], 1.0);
            }
            // Woken by a release; the timeout covers a release between the scan and the wait.
            let guard = self
                .released
                .0
                .lock()
                .map_err(|_| Error::internal("query pool poisoned"))?;
            let _ = self
                .released
                .1
                .wait_timeout(guard, std::time::Duration::from_millis(2));
        }
    }

    fn release(&self, session: MutexGuard<'_, TextEmbedding>) {
        drop(session);
        self.released.1.notify_one();
    }
}

/// Counts a query as active while alive.
struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn enter(n: &'a AtomicUsize) -> Active<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A query as the cache keys it: runs of whitespace become one space, and the ends are
/// trimmed. Word-piece and sentence-piece tokenizers split on whitespace, so this never
/// changes a query's tokens; case and accents are left alone (cased models see them).
pub fn normalize_query(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Longest query the cache keeps, in bytes: the cache's memory is bounded by
/// `entries x (MAX_CACHED_QUERY_BYTES + 4 x dimension)` plus bookkeeping.
pub const MAX_CACHED_QUERY_BYTES: usize = 1024;

/// A least-recently-used cache of query vectors.
pub struct QueryCache {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// Query -> (vector, last use).
    map: HashMap<String, (Arc<[f32]>, u64)>,
    /// Last use -> query, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
}

impl QueryCache {
    /// A cache of at most `capacity` vectors (0: caches nothing).
    pub fn new(capacity: usize) -> QueryCache {
        QueryCache {
            capacity,
            inner: Mutex::new(Lru::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |l| l.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vector of a normalized query, marking it used.
    pub fn get(&self, key: &str) -> Option<Arc<[f32]>> {
        let mut lru = self.inner.lock().ok()?;
        lru.tick += 1;
        let tick = lru.tick;
        let (v, last) = lru.map.get_mut(key)?;
        let v = v.clone();
        let old = std::mem::replace(last, tick);
        let key = lru.order.remove(&old)?;
        lru.order.insert(tick, key);
        Some(v)
    }

    /// Keeps a normalized query's vector, evicting the least recently used past capacity.
    /// Queries over [`MAX_CACHED_QUERY_BYTES`] are not kept.
    pub fn put(&self, key: String, vector: Arc<[f32]>) {
        if self.capacity == 0 || key.len() > MAX_CACHED_QUERY_BYTES {
            return;
        }
        let Ok(mut lru) = self.inner.lock() else {
            return;
        };
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, old)) = lru.map.insert(key.clone(), (vector, tick)) {
            lru.order.remove(&old);
        }
        lru.order.insert(tick, key);
        while lru.map.len() > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.map.remove(&oldest);
        }
    }
}

/// An [`Embedder`] with a [`QueryCache`] in front of its query embedding.
pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    cache: QueryCache,
}

impl CachedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, capacity: usize) -> CachedEmbedder {
        CachedEmbedder {
            inner,
            cache: QueryCache::new(capacity),
        }
    }

    /// Vectors cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

impl Embedder for CachedEmbedder {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.inner.tokenizer()
    }

    /// The cached vector of the normalized query, or the model's (embedding the normalized
    /// text, so a vector never depends on which spelling of the query came first).
    fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let key = normalize_query(text);
        let m = &crate::metrics::global().query_cache;
        if let Some(v) = self.cache.get(&key) {
            m.inc(&["hit"]);
            return Ok(v.to_vec());
        }
        m.inc(&["miss"]);
        let v = self.inner.embed_query(&key)?;
        self.cache.put(key, Arc::from(v.as_slice()));
        Ok(v)
    }

    fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.inner.embed_documents(texts)
    }

    fn documents_embedded(&self) -> u64 {
        self.inner.documents_embedded()
    }

    fn queries_embedded(&self) -> u64 {
        self.inner.queries_embedded()
    }

    fn fingerprint(&self) -> Result<String> {
        self.inner.fingerprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_normalized_and_nothing_else() {
        assert_eq!(normalize_query("  What  is\tRAG?\n"), "What is RAG?");
        assert_eq!(normalize_query("Café"), "Café");
        assert_ne!(normalize_query("rag"), normalize_query("RAG"));
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let cache = QueryCache::new(2);
        let v = |x: f32| -> Arc<[f32]> { Arc::from(vec![x]) };
        cache.put("a".into(), v(1.0));
        cache.put("b".into(), v(2.0));
        assert_eq!(cache.get("a").unwrap()[0], 1.0); // a is now newer than b
        cache.put("c".into(), v(3.0));
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("a").unwrap()[0], 1.0);
        assert_eq!(cache.get("c").unwrap()[0], 3.0);
        assert_eq!(cache.len(), 2);
        // Re-putting a key replaces it without growing.
        cache.put("c".into(), v(4.0));
        assert_eq!(cache.get("c").unwrap()[0], 4.0);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn zero_capacity_and_long_queries_are_not_kept() {
        let off = QueryCache::new(0);
        off.put("a".into(), Arc::from(vec![1.0]));
        assert!(off.is_empty());
        let cache = QueryCache::new(10);
        cache.put("x".repeat(MAX_CACHED_QUERY_BYTES + 1), Arc::from(vec![1.0]));
        assert!(cache.is_empty());
    }

    #[test]
    fn many_threads_keep_the_bound() {
        let cache = Arc::new(QueryCache::new(50));
        std::thread::scope(|s| {
            for t in 0..4 {
                let cache = cache.clone();
                s.spawn(move || {
                    for i in 0..1000 {
                        let key = format!("q{}", (i * 7 + t) % 120);
                        if cache.get(&key).is_none() {
                            cache.put(key, Arc::from(vec![i as f32]));
                        }
                    }
                });
            }
        });
        assert_eq!(cache.len(), 50);
        let lru = cache.inner.lock().unwrap();
        assert_eq!(lru.order.len(), lru.map.len());
    }
}
