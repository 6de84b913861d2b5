//! Collections whose vectors are made elsewhere ("bring your own vectors").
//!
//! Teams that already embed with a hosted or bigger model want Quarry's indexes, fusion,
//! filters and answers without a second model. Such a collection is created with a dimension
//! instead of a model; its model name is `external:<dimension>` (a name no local model can
//! have: `:` is not allowed in model names). Documents then arrive pre-chunked, one vector per
//! chunk, and dense and hybrid searches take the caller's `query_vector`.
//!
//! [`ExternalVectors`] stands in for the model so that everything downstream (the engine's
//! collection, snapshots, recovery) treats these collections like any other: it knows the
//! dimension, offers a word-level tokenizer (prompt packing for answers counts in it) and
//! refuses to embed, with an INVALID_ARGUMENT that says what to send instead.

use super::Embedder;
use crate::error::{Error, Result};

/// Prefix of the model name of a collection with external vectors.
pub const EXTERNAL_PREFIX: &str = "external:";

/// Largest dimension an external collection may have.
pub const MAX_EXTERNAL_DIMENSION: usize = 4096;

/// The model name of an external collection of `dimension`.
pub fn external_model_name(dimension: usize) -> String {
    format!("{EXTERNAL_PREFIX}{dimension}")
}

/// The dimension an `external:<dimension>` model name stands for; `None` for other names,
/// INVALID_ARGUMENT for a malformed or out-of-range one.
pub fn parse_external(name: &str) -> Result<Option<usize>> {
    let Some(rest) = name.strip_prefix(EXTERNAL_PREFIX) else {
        return Ok(None);
    };
    match rest.parse::<usize>() {
        Ok(d) if (1..=MAX_EXTERNAL_DIMENSION).contains(&d) => Ok(Some(d)),
        _ => Err(Error::invalid(format!(
            "an external vector dimension must be an integer in 1..={MAX_EXTERNAL_DIMENSION}, not {}",
            crate::error::quote(rest)
        ))),
    }
}

/// The stand-in model of an external collection (see the module docs).
pub struct ExternalVectors {
    dimension: usize,
    tokenizer: tokenizers::Tokenizer,
}

impl ExternalVectors {
    pub fn new(dimension: usize) -> Result<ExternalVectors> {
        Ok(ExternalVectors {
            dimension,
            tokenizer: super::hashed::word_tokenizer()?,
        })
    }
}

impl Embedder for ExternalVectors {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn embed_query(&self, _text: &str) -> Result<Vec<f32>> {
        Err(Error::invalid(format!(
            "this collection uses external {}-d vectors: dense and hybrid searches need query_vector (or search in lexical mode)",
            self.dimension
        )))
    }

    fn embed_documents(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Err(Error::invalid(format!(
            "this collection uses external {}-d vectors: send each document as chunks with one vector each, not as text",
            self.dimension
        )))
    }

    fn documents_embedded(&self) -> u64 {
        0
    }

    fn queries_embedded(&self) -> u64 {
        0
    }

    fn fingerprint(&self) -> Result<String> {
        Ok(external_model_name(self.dimension))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            parse_external(&external_model_name(384)).unwrap(),
            Some(384)
        );
        assert_eq!(parse_external("all-minilm-l6-v2").unwrap(), None);
        for bad in [
            "external:",
            "external:0",
            "external:-3",
            "external:4097",
            "external:x",
        ] {
            assert!(
                matches!(parse_external(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        let e = ExternalVectors::new(8).unwrap();
        assert!(matches!(e.embed_query("q"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            e.embed_documents(&["t".into()]),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(e.tokenizer().encode("two words", false).unwrap().len(), 2);
    }
}
