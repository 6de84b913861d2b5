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

/// How a document's title shares a chunk's token budget when it is embedded with the chunk
/// (see [`titled`]): the chunk's own text comes first, and the title gets only the tokens the
/// chunk leaves free, and at most a quarter of the budget. A short chunk carries its whole
/// (short) title; a chunk that fills the budget carries less of it, or none. Without this a long title filled the model's window and the
/// chunk's own text was never embedded; chunk boundaries do not depend on the title.
pub struct TitleFit<'t> {
    title: &'t str,
    /// Byte offset where each of the title's tokens ends.
    token_ends: Vec<usize>,
}

impl<'t> TitleFit<'t> {
    pub fn new(title: &'t str, tokenizer: &tokenizers::Tokenizer) -> Result<TitleFit<'t>> {
        let token_ends = if title.is_empty() {
            Vec::new()
        } else {
            tokenizer
                .encode(title, false)
                .map_err(|e| Error::internal(format!("tokenizer: {e}")))?
                .get_offsets()
                .iter()
                .map(|&(_, end)| end.min(title.len()))
                .collect()
        };
        Ok(TitleFit { title, token_ends })
    }

    /// The part of the title that fits beside `chunk` in `max_tokens`.
    pub fn for_chunk(
        &self,
        chunk: &str,
        max_tokens: usize,
        tokenizer: &tokenizers::Tokenizer,
    ) -> Result<&'t str> {
        if self.token_ends.is_empty() {
            return Ok("");
        }
        let used = tokenizer
            .encode(chunk, false)
            .map_err(|e| Error::internal(format!("tokenizer: {e}")))?
            .len();
        // At most a quarter of the budget, so a long title cannot dominate the chunk's vector
        // either (mean pooling weighs every token alike).
        let room = max_tokens.saturating_sub(used).min(max_tokens / 4);
        if room >= self.token_ends.len() {
            return Ok(self.title);
        }
        if room == 0 {
            return Ok("");
        }
        let mut end = self.token_ends[room - 1];
        while !self.title.is_char_boundary(end) {
            end -= 1;
        }
        Ok(&self.title[..end])
    }
}

/// Text-splitter's cost grows faster than linearly with the length of text that has few good
/// boundaries: measured with the MiniLM tokenizer, runs of punctuation took 0.9 s for 64 KiB
/// and 8 s for 256 KiB, CJK without spaces 0.4 s and 4.4 s, nested markdown quotes 0.6 s for
/// 32 KiB and 8 s for 128 KiB. Documents are therefore chunked in windows of at most this many
/// bytes, each cut at the best boundary near its end (blank line, line, sentence, space), so
/// chunking costs time linear in a document's length. A window edge is also a chunk edge.
const WINDOW_BYTES: usize = 16 * 1024;

/// A chunk may be at most this many bytes per token of the budget: a "word" the tokenizer
/// reads as one unknown token (a 256 KiB run of letters) would otherwise be a single chunk.
const MAX_BYTES_PER_TOKEN: usize = 16;

/// Byte ranges of the chunks of one window.
type SplitFn<'a> = dyn Fn(&str) -> Vec<(usize, usize)> + 'a;

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
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let splitter: Box<SplitFn<'_>> = if markdown {
        let s = MarkdownSplitter::new(config);
        Box::new(move |w: &str| {
            s.chunk_indices(w)
                .map(|(start, c)| (start, start + c.len()))
                .collect()
        })
    } else {
        let s = TextSplitter::new(config);
        Box::new(move |w: &str| {
            s.chunk_indices(w)
                .map(|(start, c)| (start, start + c.len()))
                .collect()
        })
    };
    for (offset, window) in windows(text, WINDOW_BYTES) {
        ranges.extend(
            splitter(window)
                .into_iter()
                .map(|(s, e)| (offset + s, offset + e)),
        );
    }
    let max_bytes = settings.max_tokens * MAX_BYTES_PER_TOKEN;
    let mut spans = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        let mut s = start;
        while s < end {
            let e = if end - s <= max_bytes {
                end
            } else {
                floor_boundary(text, s + max_bytes).max(next_boundary(text, s))
            };
            spans.push(Span {
                ordinal: spans.len() as u32,
                start: s,
                end: e,
            });
            s = e;
        }
    }
    Ok(spans)
}

/// The largest character boundary at or before `i`.
fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The character boundary just after the character starting at `i`.
fn next_boundary(text: &str, i: usize) -> usize {
    text[i..].chars().next().map_or(i, |c| i + c.len_utf8())
}

/// `text` in consecutive windows of at most `max` bytes (see [`WINDOW_BYTES`]), as (offset,
/// window) pairs covering all of it.
fn windows(text: &str, max: usize) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        if text.len() - start <= max {
            out.push((start, &text[start..]));
            break;
        }
        let limit = floor_boundary(text, start + max);
        let slice = &text[start..limit];
        // The last good boundary in the window's second half, best kind first.
        let half = slice.len() / 2;
        let cut = ["\n\n", "\n", ". ", " "]
            .iter()
            .find_map(|sep| {
                slice
                    .rfind(sep)
                    .filter(|&i| i >= half)
                    .map(|i| i + sep.len())
            })
            .unwrap_or(slice.len());
        let end = if cut == 0 {
            next_boundary(text, start)
        } else {
            start + cut
        };
        out.push((start, &text[start..end]));
        start = end;
    }
    out
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

#[cfg(test)]
mod pathological {
    use super::*;

    /// Times chunking of pathological inputs with the real model tokenizer (run by hand:
    /// `cargo test --lib pathological -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn time_pathological_inputs() {
        let models = std::env::var_os("QUARRY_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/quarry/models")
            });
        let dir = models.join("all-minilm-l6-v2");
        let mut tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tok.with_truncation(None).unwrap();
        tok.with_padding(None);
        let settings = ChunkSettings {
            max_tokens: 254,
            overlap: 32,
        };
        let n: usize = std::env::var("QUARRY_PATHOLOGICAL_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256 * 1024);
        let cases: Vec<(&str, String, bool)> = vec![
            (
                "prose",
                "The cell is a unit of life. ".repeat(n / 28),
                false,
            ),
            ("punctuation runs", "!?.,;:".repeat(n / 6), false),
            (
                "CJK without spaces",
                "细胞是生命的基本单位".repeat(n / 30),
                false,
            ),
            (
                "nested quotes (md)",
                format!("{}x\n", "> ".repeat(n / 4)),
                true,
            ),
            ("one long word", "a".repeat(n), false),
        ];
        for (name, text, md) in cases {
            let t = std::time::Instant::now();
            let spans = chunk(&text, md, settings, &tok).unwrap();
            eprintln!(
                "{name:<22} {:>7} bytes -> {:>5} chunks in {:.2?}",
                text.len(),
                spans.len(),
                t.elapsed()
            );
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_and_cut_at_boundaries() {
        let text = format!("{}\n\n{}", "word ".repeat(5000), "x".repeat(40_000));
        let w = windows(&text, 16 * 1024);
        assert!(w.len() >= 3);
        let mut next = 0;
        for (offset, window) in &w {
            assert_eq!(*offset, next);
            assert!(window.len() <= 16 * 1024 && !window.is_empty());
            next = offset + window.len();
        }
        assert_eq!(next, text.len());
        assert!(w[0].1.ends_with(' '), "cut at a space");
        let cjk = "细胞".repeat(20_000);
        for (_, window) in windows(&cjk, 1000) {
            assert!(window.len() <= 1000);
        }
    }
}

#[cfg(test)]
mod title_tests {
    use super::*;

    fn words() -> tokenizers::Tokenizer {
        use crate::model::Embedder;
        crate::model::hashed::HashEmbedder::new(8)
            .unwrap()
            .tokenizer()
            .clone()
    }

    #[test]
    fn the_chunk_comes_first_and_the_title_gets_what_is_left() {
        let tok = words();
        let fit = TitleFit::new("a three word title", &tok).unwrap();
        assert_eq!(
            fit.for_chunk("short", 40, &tok).unwrap(),
            "a three word title"
        );
        let full = "body ".repeat(38);
        assert_eq!(fit.for_chunk(&full, 40, &tok).unwrap(), "a three");
        let long_title = TitleFit::new(
            "one two three four five six seven eight nine ten eleven twelve",
            &tok,
        )
        .unwrap();
        assert_eq!(
            long_title.for_chunk("short", 40, &tok).unwrap(),
            "one two three four five six seven eight nine ten",
            "a quarter of the budget at most"
        );
        assert_eq!(fit.for_chunk(&"body ".repeat(40), 40, &tok).unwrap(), "");
        let long = (0..500)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let fit = TitleFit::new(&long, &tok).unwrap();
        let text = "body ".repeat(500);
        for span in chunk(
            &text,
            false,
            ChunkSettings {
                max_tokens: 40,
                overlap: 4,
            },
            &tok,
        )
        .unwrap()
        {
            let piece = &text[span.start..span.end];
            let title = fit.for_chunk(piece, 40, &tok).unwrap();
            let n = tok
                .encode(titled(title, piece).as_str(), false)
                .unwrap()
                .len();
            assert!(n <= 40, "{n}");
            let own = tok.encode(piece, false).unwrap().len();
            assert!(own > 0 && n >= own, "the chunk's own text is all there");
        }
        assert_eq!(
            TitleFit::new("", &tok)
                .unwrap()
                .for_chunk("x", 40, &tok)
                .unwrap(),
            ""
        );
    }
}
