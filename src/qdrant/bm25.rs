//! BM25 as Qdrant sparse vectors, with the embedded lexical index's own analysis.
//!
//! Qdrant scores a sparse query by a dot product, and with the IDF modifier multiplies each
//! term by `ln(1 + (N - n + 0.5) / (n + 0.5))`, tantivy's IDF. So a chunk's vector carries
//! BM25's term-frequency part, `tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`, and a
//! query's vector the number of times each term occurs in it: the score is the BM25 score the
//! embedded index (tantivy, `index::lexical`) computes, up to the collection statistics:
//! - `avgdl` is fixed when a chunk is written (Qdrant cannot renormalize at query time): the
//!   average length so far, kept with the collection (see `QdrantCollection::avgdl`);
//! - IDF is computed per shard (as Elasticsearch's default), over the chunks Qdrant holds.
//!
//! Terms come from tantivy's `en_stem` analyzer (the embedded index's), hashed to 31 bits
//! (FNV-1a): body terms in the lower half of the index space, title terms (for title boosts)
//! in the upper half, so one sparse vector holds both fields. The body is "flat" as in the
//! embedded index: a document's title with its first chunk (`chunk::titled`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// BM25's term-frequency saturation and length normalization (tantivy's values).
const K1: f32 = 1.2;
const B: f32 = 0.75;
const TITLE_BIT: u32 = 1 << 31;

/// Lengths of a chunk's two fields, in analysed terms (for the collection's averages).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lengths {
    pub body: u64,
    pub title: u64,
}

/// A sparse vector: sorted unique indices and their weights.
pub type Sparse = (Vec<u32>, Vec<f32>);

/// The analysed terms of `text` (lower-cased, stemmed), as the embedded index has them.
pub fn analyze(text: &str) -> Result<Vec<String>> {
    let mut analyzer = tantivy::tokenizer::TokenizerManager::default()
        .get("en_stem")
        .ok_or_else(|| Error::internal("en_stem analyzer missing"))?;
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    Ok(out)
}

fn fnv1a(term: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in term.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn body_index(term: &str) -> u32 {
    fnv1a(term) & !TITLE_BIT
}

fn title_index(term: &str) -> u32 {
    fnv1a(term) | TITLE_BIT
}

fn counts<'a>(
    terms: impl IntoIterator<Item = &'a String>,
    index: fn(&str) -> u32,
) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for t in terms {
        *out.entry(index(t)).or_insert(0) += 1;
    }
    out
}

fn saturate(tf: u32, dl: u64, avgdl: f32) -> f32 {
    let tf = tf as f32;
    let norm = if avgdl > 0.0 {
        1.0 - B + B * dl as f32 / avgdl
    } else {
        1.0
    };
    tf * (K1 + 1.0) / (tf + K1 * norm)
}

/// A chunk's vector: `title` is the document's title for its first chunk and empty for the
/// others; `body` the chunk's text. Returns the vector and the two field lengths.
pub fn chunk_vector(
    title: &str,
    body: &str,
    avgdl: f32,
    title_avgdl: f32,
) -> Result<(Sparse, Lengths)> {
    let body_terms = analyze(&crate::chunk::titled(title, body))?;
    let title_terms = if title.is_empty() {
        Vec::new()
    } else {
        analyze(title)?
    };
    let lengths = Lengths {
        body: body_terms.len() as u64,
        title: title_terms.len() as u64,
    };
    let mut weights: BTreeMap<u32, f32> = BTreeMap::new();
    for (i, tf) in counts(&body_terms, body_index) {
        weights.insert(i, saturate(tf, lengths.body, avgdl));
    }
    for (i, tf) in counts(&title_terms, title_index) {
        weights.insert(i, saturate(tf, lengths.title, title_avgdl));
    }
    Ok((weights.into_iter().unzip(), lengths))
}

/// A query's vector: each analysed term weighted by how often it occurs (as the embedded
/// index's one clause per occurrence), and with `title_boost` > 0 the title field's terms too.
/// Empty when the query has no terms.
pub fn query_vector(query: &str, title_boost: f32) -> Result<Sparse> {
    let terms = analyze(query)?;
    let mut weights: BTreeMap<u32, f32> = BTreeMap::new();
    for (i, n) in counts(&terms, body_index) {
        weights.insert(i, n as f32);
    }
    if title_boost > 0.0 {
        for (i, n) in counts(&terms, title_index) {
            weights.insert(i, n as f32 * title_boost);
        }
    }
    Ok(weights.into_iter().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_is_the_embedded_indexs() {
        assert_eq!(
            analyze("Running DOGS ran").unwrap(),
            vec!["run".to_string(), "dog".to_string(), "ran".to_string()]
        );
    }

    #[test]
    fn query_terms_count_and_titles_live_apart() {
        let (idx, w) = query_vector("dog dog cat", 0.0).unwrap();
        assert_eq!(idx.len(), 2);
        assert!(idx.iter().all(|i| i & TITLE_BIT == 0));
        let dog = idx.iter().position(|i| *i == body_index("dog")).unwrap();
        assert_eq!(w[dog], 2.0);
        let (idx, w) = query_vector("dog", 2.0).unwrap();
        assert_eq!(idx.len(), 2);
        assert!(idx.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(
            w[idx.iter().position(|i| *i == title_index("dog")).unwrap()],
            2.0
        );
        assert!(query_vector("   ", 1.0).unwrap().0.is_empty());
    }

    #[test]
    fn weights_follow_bm25s_term_frequency_part() {
        let ((idx, w), lengths) = chunk_vector("", "cat cat dog", 3.0, 1.0).unwrap();
        assert_eq!(lengths, Lengths { body: 3, title: 0 });
        let cat = w[idx.iter().position(|i| *i == body_index("cat")).unwrap()];
        let dog = w[idx.iter().position(|i| *i == body_index("dog")).unwrap()];
        // dl == avgdl: tf * 2.2 / (tf + 1.2).
        assert!((cat - 2.0 * 2.2 / 3.2).abs() < 1e-6);
        assert!((dog - 2.2 / 2.2).abs() < 1e-6);
        // A longer chunk weighs the same term less.
        let ((idx2, w2), _) = chunk_vector("", "dog a b c d e f g", 3.0, 1.0).unwrap();
        let dog2 = w2[idx2.iter().position(|i| *i == body_index("dog")).unwrap()];
        assert!(dog2 < dog);
        // The title joins the first chunk's body and has its own field.
        let ((idx, _), lengths) = chunk_vector("Cats", "dog", 3.0, 1.0).unwrap();
        assert_eq!(lengths, Lengths { body: 2, title: 1 });
        assert!(idx.contains(&body_index("cat")) && idx.contains(&title_index("cat")));
    }
}
