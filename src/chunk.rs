//! Token-aware chunking with text-splitter.
//!
//! Chunks are sized in tokens of the collection's embedding tokenizer, so a chunk never exceeds
//! what the model reads. Markdown documents are split along markdown structure. Each chunk keeps
//! byte offsets into the original text (`text[start..end]` is the chunk), which is what lets
//! search results point back into the source. The chunker is a pure function of its inputs and is
//! property-tested: offsets map back to the text, and no non-whitespace text is lost.

use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use crate::error::{Error, Result};

/// A chunk's position in its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub ordinal: u32,
    pub start: usize,
    pub end: usize,
}

/// Chunking settings for one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Maximum tokens per chunk (special tokens excluded).
    pub max_tokens: usize,
    /// Tokens of overlap between neighbouring chunks (upper bound; text-splitter overlaps at
    /// sentence or word boundaries, often less).
    pub overlap: usize,
}

impl ChunkSettings {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens < 8 || self.max_tokens > 8192 {
            return Err(Error::invalid(format!(
                "chunk_tokens must be in 8..=8192, got {}",
                self.max_tokens
            )));
        }
        if self.overlap >= self.max_tokens {
            return Err(Error::invalid(format!(
                "chunk_overlap ({}) must be smaller than chunk_tokens ({})",
                self.overlap, self.max_tokens
            )));
        }
        Ok(())
    }
}

/// A chunk's text as both retrievers see it: the document title, when there is one, on its
/// own line before the chunk ("flat" indexing: the title gives short chunks context). The one
/// place this rule lives: the embedder input and the BM25 body are both built with it.
pub fn titled(title: &str, chunk: &str) -> String {
    if title.is_empty() {
        chunk.to_string()
    } else {
        format!("{title}\n{chunk}")
    }
}

/// Splits `text` into token-bounded chunks. `markdown` selects the markdown-aware splitter.
pub fn chunk(
    text: &str,
    markdown: bool,
    settings: ChunkSettings,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<Vec<Span>> {
    settings.validate()?;
    let config = ChunkConfig::new(settings.max_tokens)
        .with_sizer(tokenizer)
        .with_overlap(settings.overlap)
        .map_err(|e| Error::invalid(format!("chunk settings: {e}")))?;
    let spans: Vec<(usize, &str)> = if markdown {
        MarkdownSplitter::new(config).chunk_indices(text).collect()
    } else {
        TextSplitter::new(config).chunk_indices(text).collect()
    };
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(i, (start, s))| Span {
            ordinal: i as u32,
            start,
            end: start + s.len(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real WordPiece tokenizer built in memory (a small vocabulary; unknown words become
    /// `[UNK]`, which still counts as one token), so chunking is tested without model files.
    fn tokenizer() -> tokenizers::Tokenizer {
        let vocab: Vec<String> = [
            "[UNK]", "[CLS]", "[SEP]", "the", "a", "cell", "protein", "gene", "is", "of", "and",
            "in", ".", ",", "#", "##s", "##ing", "-", "*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100,
                      "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect::<serde_json::Map<_, _>>()}
        });
        tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap()
    }

    fn check(text: &str, markdown: bool, settings: ChunkSettings) {
        let tok = tokenizer();
        let spans = chunk(text, markdown, settings, &tok).unwrap();
        let mut covered = vec![false; text.len()];
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(s.ordinal as usize, i);
            assert!(s.start < s.end && s.end <= text.len());
            assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
            let piece = &text[s.start..s.end];
            let tokens = tok.encode(piece, false).unwrap().len();
            assert!(
                tokens <= settings.max_tokens,
                "chunk of {tokens} tokens over {}",
                settings.max_tokens
            );
            covered[s.start..s.end].iter_mut().for_each(|c| *c = true);
        }
        for (i, ch) in text.char_indices() {
            if !ch.is_whitespace() {
                assert!(covered[i], "character {ch:?} at byte {i} is in no chunk");
            }
        }
    }

    #[test]
    fn long_text_is_split_and_offsets_map_back() {
        let text = "The cell is a protein. ".repeat(200);
        let tok = tokenizer();
        let settings = ChunkSettings {
            max_tokens: 32,
            overlap: 8,
        };
        let spans = chunk(&text, false, settings, &tok).unwrap();
        assert!(spans.len() > 10);
        check(&text, false, settings);
    }

    #[test]
    fn markdown_splits_at_headings() {
        let text =
            "# Genes\n\nThe gene is a protein of the cell.\n\n# Cells\n\nA cell and a cell.\n";
        let tok = tokenizer();
        let spans = chunk(
            text,
            true,
            ChunkSettings {
                max_tokens: 12,
                overlap: 0,
            },
            &tok,
        )
        .unwrap();
        assert!(spans.iter().any(|s| text[s.start..].starts_with("# Cells")));
    }

    #[test]
    fn rejects_bad_settings() {
        let tok = tokenizer();
        let err = chunk(
            "text",
            false,
            ChunkSettings {
                max_tokens: 16,
                overlap: 16,
            },
            &tok,
        )
        .unwrap_err();
        assert!(err.to_string().contains("chunk_overlap"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn offsets_map_back_and_nothing_is_lost(
            words in prop::collection::vec(
                prop_oneof![
                    Just("the".to_string()), Just("cell".to_string()), Just("Protein.".to_string()),
                    Just("\n\n".to_string()), Just("# ".to_string()), Just("- ".to_string()),
                    Just("genes,".to_string()), Just("élan".to_string()), Just("日本語".to_string()),
                    "[a-z]{1,12}".prop_map(|s| s),
                ], 0..400),
            max_tokens in 8usize..64,
            overlap_frac in 0usize..4,
            markdown in any::<bool>(),
        ) {
            let text = words.join(" ");
            let overlap = max_tokens * overlap_frac / 8;
            check(&text, markdown, ChunkSettings { max_tokens, overlap });
        }
    }
}
