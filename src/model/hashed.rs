//! A small deterministic [`Embedder`] for tests: no model files, no ONNX Runtime.
//!
//! Each lowercased word is hashed (FNV-1a) to one of `dimension` buckets with a sign, and the
//! counts are normalized: texts that share words get a high cosine similarity, texts that share
//! none score near zero. That is enough to test what the engine does with vectors (recovery,
//! grouping, fusion, deletes, degradation) in milliseconds. It knows nothing of meaning, so
//! retrieval *quality* is only ever measured with a real model (the eval suite).
//!
//! Its tokenizer is a real `tokenizers` pipeline (whitespace and punctuation pre-tokenizer, a
//! word-level model), so the chunker sizes chunks in words exactly as it would in model tokens.
//!
//! Fault injection for tests: [`HashEmbedder::fail_queries`] makes query embedding fail, as a
//! broken model would; [`HashEmbedder::with_delay`] makes each document take time, as a real
//! model does, and [`HashEmbedder::max_concurrent_batches`] tells whether two writes ever
//! embedded at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{normalize, Embedder, ModelSource};
use crate::error::{Error, Result};

/// A word-level tokenizer: every word and every run of punctuation is one token.
const TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}
}"#;

/// The word-level tokenizer: every word and every run of punctuation is one token.
pub(crate) fn word_tokenizer() -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_bytes(TOKENIZER_JSON.as_bytes())
        .map_err(|e| Error::internal(format!("word tokenizer: {e}")))
}

/// Hashed word features, normalized. See the module docs.
pub struct HashEmbedder {
    dimension: usize,
    tokenizer: tokenizers::Tokenizer,
    documents_embedded: AtomicU64,
    queries_embedded: AtomicU64,
    fail_queries: AtomicBool,
    delay_per_document: Duration,
    delay_per_query: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl std::fmt::Debug for HashEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashEmbedder")
            .field("dimension", &self.dimension)
            .finish()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl HashEmbedder {
    /// An embedder producing `dimension`-d vectors (at least 2).
    pub fn new(dimension: usize) -> Result<HashEmbedder> {
        if dimension < 2 {
            return Err(Error::invalid(
                "a hash embedder needs at least 2 dimensions",
            ));
        }
        let tokenizer = word_tokenizer()?;
        Ok(HashEmbedder {
            dimension,
            tokenizer,
            documents_embedded: AtomicU64::new(0),
            queries_embedded: AtomicU64::new(0),
            fail_queries: AtomicBool::new(false),
            delay_per_document: Duration::ZERO,
            delay_per_query: Duration::ZERO,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    /// Each document text takes `delay` to embed.
    pub fn with_delay(mut self, delay: Duration) -> HashEmbedder {
        self.delay_per_document = delay;
        self
    }

    /// Each query takes `delay` to embed (a slow model, for load tests).
    pub fn with_query_delay(mut self, delay: Duration) -> HashEmbedder {
        self.delay_per_query = delay;
        self
    }

    /// The most `embed_documents` calls that ever ran at the same time.
    pub fn max_concurrent_batches(&self) -> usize {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// While `fail` is set, [`Embedder::embed_query`] fails as a broken model would.
    pub fn fail_queries(&self, fail: bool) {
        self.fail_queries.store(fail, Ordering::Relaxed);
    }

    fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimension];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = fnv1a(word.to_lowercase().as_bytes());
            let bucket = (h % self.dimension as u64) as usize;
            v[bucket] += if h >> 63 == 0 { 1.0 } else { -1.0 };
        }
        if v.iter().all(|x| *x == 0.0) {
            // No words at all: a fixed direction, so the vector is still unit length.
            v[0] = 1.0;
        }
        normalize(&mut v);
        v
    }
}

impl Embedder for HashEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(format!("hash-embedder-{}", self.dimension))
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        if self.fail_queries.load(Ordering::Relaxed) {
            return Err(Error::Embedding("injected query embedding failure".into()));
        }
        std::thread::sleep(self.delay_per_query);
        self.queries_embedded.fetch_add(1, Ordering::Relaxed);
        Ok(self.embed(text))
    }

    fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay_per_document * texts.len() as u32);
        self.documents_embedded
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        let out = texts.iter().map(|t| self.embed(t)).collect();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(out)
    }

    fn documents_embedded(&self) -> u64 {
        self.documents_embedded.load(Ordering::Relaxed)
    }

    fn queries_embedded(&self) -> u64 {
        self.queries_embedded.load(Ordering::Relaxed)
    }
}

/// A [`ModelSource`] that answers every model name with the same [`HashEmbedder`], so a test
/// keeps a handle on the embedder the engine uses.
pub struct HashModels(pub std::sync::Arc<HashEmbedder>);

impl ModelSource for HashModels {
    fn load(&self, _name: &str) -> Result<std::sync::Arc<dyn Embedder>> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn shared_words_score_higher_than_unrelated_text() {
        let e = HashEmbedder::new(64).unwrap();
        let a = e.embed_query("statins lower cholesterol").unwrap();
        let b = e
            .embed_documents(&["Statins lower LDL cholesterol.".into()])
            .unwrap();
        let c = e.embed_query("volcanic ash in the stratosphere").unwrap();
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cos(&a, &b[0]) > 0.6, "{}", cos(&a, &b[0]));
        assert!(cos(&a, &c) < cos(&a, &b[0]));
        assert_eq!(e.documents_embedded(), 1);
        assert_eq!(e.embed_query("").unwrap().len(), 64);
    }

    #[test]
    fn tokenizer_counts_words_and_failures_are_injectable() {
        let e = HashEmbedder::new(8).unwrap();
        let enc = e.tokenizer().encode("one two, three", false).unwrap();
        assert_eq!(enc.get_ids().len(), 4);
        e.fail_queries(true);
        assert!(matches!(e.embed_query("x"), Err(Error::Embedding(_))));
        e.fail_queries(false);
        assert!(e.embed_query("x").is_ok());
    }
}
