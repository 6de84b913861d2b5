//! Context packing and the prompt layout.
//!
//! Packing fills a token budget with retrieved chunks in rank order, dropping exact duplicates
//! and chunks that overlap an already packed neighbour from the same document, and reports what
//! was left out and why. The layout puts what never changes first (instructions and schema, in
//! the system message), then the numbered sources, then the question, so routers that cache
//! prompt prefixes reuse the longest possible prefix across requests.

use serde_json::Value;

use super::router::Message;
use crate::retrieve::Hit;

/// Default instructions; `{schema}` is replaced by the JSON Schema.
pub const DEFAULT_INSTRUCTIONS: &str =
    "You answer questions using only the numbered sources you are given. \
If the sources do not contain the answer, say so. Cite the numbers of the sources you use. \
Reply with one JSON object and nothing else; it must match this JSON Schema:\n{schema}";

/// Default rendering of one source: `{number}`, `{document_id}`, `{title}` and `{text}` are
/// replaced; trailing spaces on each line are removed (so an empty title leaves none).
pub const DEFAULT_SOURCE_TEMPLATE: &str = "[{number}] ({document_id}) {title}\n{text}\n";

/// Default rendering of the question; `{question}` is replaced.
pub const DEFAULT_QUESTION_TEMPLATE: &str = "Question: {question}";

/// How the prompt is written (configurable in `[answer]`).
#[derive(Debug, Clone)]
pub struct Templates<'a> {
    /// System message; `{schema}` is replaced by the JSON Schema.
    pub instructions: &'a str,
    pub source: &'a str,
    pub question: &'a str,
}

impl Default for Templates<'static> {
    fn default() -> Self {
        Templates {
            instructions: DEFAULT_INSTRUCTIONS,
            source: DEFAULT_SOURCE_TEMPLATE,
            question: DEFAULT_QUESTION_TEMPLATE,
        }
    }
}

/// A chunk given to the model as source number `number`.
#[derive(Debug, Clone)]
pub struct Source {
    pub number: usize,
    pub hit: Hit,
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub chunk_id: u64,
    pub doc_id: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Packed {
    pub sources: Vec<Source>,
    pub left_out: Vec<LeftOut>,
    pub tokens: usize,
}

fn normalized(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Packs `hits` (best first) into `budget` tokens as counted by `count`.
pub fn pack(
    hits: Vec<Hit>,
    budget: usize,
    template: &str,
    count: impl Fn(&str) -> usize,
) -> Packed {
    let mut sources: Vec<Source> = Vec::new();
    let mut left_out = Vec::new();
    let mut used = 0;
    for hit in hits {
        let key = normalized(&hit.text);
        if let Some(s) = sources.iter().find(|s| normalized(&s.hit.text) == key) {
            left_out.push(LeftOut {
                chunk_id: hit.chunk_id,
                doc_id: hit.doc_id.clone(),
                reason: format!("duplicate of source {}", s.number),
            });
            continue;
        }
        if let Some(s) = sources
            .iter()
            .find(|s| s.hit.doc_id == hit.doc_id && s.hit.start < hit.end && hit.start < s.hit.end)
        {
            left_out.push(LeftOut {
                chunk_id: hit.chunk_id,
                doc_id: hit.doc_id.clone(),
                reason: format!("overlaps source {} (same document)", s.number),
            });
            continue;
        }
        let tokens = count(&source_block(template, sources.len() + 1, &hit));
        if used + tokens > budget {
            left_out.push(LeftOut {
                chunk_id: hit.chunk_id,
                doc_id: hit.doc_id.clone(),
                reason: format!(
                    "over the token budget ({tokens} tokens, {} left of {budget})",
                    budget - used
                ),
            });
            continue;
        }
        used += tokens;
        sources.push(Source {
            number: sources.len() + 1,
            hit,
            tokens,
        });
    }
    Packed {
        sources,
        left_out,
        tokens: used,
    }
}

fn source_block(template: &str, number: usize, hit: &Hit) -> String {
    let rendered = template
        .replace("{number}", &number.to_string())
        .replace("{document_id}", &hit.doc_id)
        .replace("{title}", &hit.title)
        .replace("{text}", &hit.text);
    let mut out: Vec<&str> = rendered.split('\n').map(str::trim_end).collect();
    if out.last() == Some(&"") {
        out.pop();
        return out.join("\n") + "\n";
    }
    out.join("\n")
}

/// The chat messages: stable system prefix, then sources, then the question.
pub fn messages(
    templates: &Templates<'_>,
    schema: &Value,
    packed: &Packed,
    question: &str,
) -> Vec<Message> {
    let schema_text = serde_json::to_string_pretty(schema).unwrap_or_else(|_| schema.to_string());
    let system = templates.instructions.replace("{schema}", &schema_text);
    let mut user = String::from("Sources:\n\n");
    for s in &packed.sources {
        user.push_str(&source_block(templates.source, s.number, &s.hit));
        user.push('\n');
    }
    user.push_str(&templates.question.replace("{question}", question));
    vec![Message::new("system", system), Message::new("user", user)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: u64, doc: &str, start: usize, end: usize, text: &str) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk_id: id,
            ordinal: 0,
            text: text.into(),
            start,
            end,
            score: 1.0,
            title: String::new(),
            metadata: Default::default(),
            lexical: None,
            dense: None,
        }
    }

    #[test]
    fn drops_duplicates_overlaps_and_what_does_not_fit() {
        let words = |s: &str| s.split_whitespace().count();
        let hits = vec![
            hit(1, "a", 0, 100, "alpha beta gamma"),
            hit(2, "b", 0, 50, "Alpha  beta gamma"),
            hit(3, "a", 80, 200, "gamma delta"),
            hit(4, "c", 0, 10, &"long ".repeat(50)),
            hit(5, "d", 0, 10, "short one"),
        ];
        let packed = pack(hits, 20, DEFAULT_SOURCE_TEMPLATE, words);
        let numbers: Vec<(usize, u64)> = packed
            .sources
            .iter()
            .map(|s| (s.number, s.hit.chunk_id))
            .collect();
        assert_eq!(numbers, vec![(1, 1), (2, 5)]);
        let reasons: Vec<&str> = packed.left_out.iter().map(|l| l.reason.as_str()).collect();
        assert!(reasons[0].starts_with("duplicate of source 1"));
        assert!(reasons[1].starts_with("overlaps source 1"));
        assert!(reasons[2].starts_with("over the token budget"));
    }

    #[test]
    fn layout_is_prefix_stable() {
        let schema = serde_json::json!({"type": "object"});
        let t = DEFAULT_SOURCE_TEMPLATE;
        let p1 = pack(vec![hit(1, "a", 0, 1, "one")], 100, t, |s| s.len());
        let p2 = pack(vec![hit(2, "b", 0, 1, "two")], 100, t, |s| s.len());
        let m1 = messages(&Templates::default(), &schema, &p1, "q1");
        let m2 = messages(&Templates::default(), &schema, &p2, "q2");
        assert_eq!(
            m1[0], m2[0],
            "the system prefix does not depend on the request"
        );
        assert!(m1[0].content.contains("\"type\": \"object\""));
        assert!(m1[1].content.starts_with("Sources:") && m1[1].content.ends_with("Question: q1"));
        assert!(m1[1].content.contains("[1] (a)\none"));
        // Custom templates.
        let custom = Templates {
            instructions: "Answer. {schema}",
            source: "<source id={number} doc={document_id}>{text}</source>",
            question: "Q: {question}",
        };
        let m = messages(&custom, &schema, &p1, "why?");
        assert!(m[0].content.starts_with("Answer. {"));
        assert!(m[1].content.contains("<source id=1 doc=a>one</source>"));
        assert!(m[1].content.ends_with("Q: why?"));
    }
}
