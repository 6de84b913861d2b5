//! The answer contract: the default JSON Schema, validation of replies, and citations.

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The default answer: text plus the numbers of the sources it relies on.
pub fn default_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            // No maxLength: llama.cpp expands length bounds into grammar repetitions, and a
            // bound of a few thousand characters makes it reject the grammar.
            "answer": {"type": "string", "description": "The answer, using only the sources."},
            "citations": {
                "type": "array",
                "description": "Numbers of the sources the answer relies on.",
                "items": {"type": "integer", "minimum": 1}
            }
        },
        "required": ["answer", "citations"],
        "additionalProperties": false
    })
}

/// The default schema with citations restricted to the supplied source numbers `1..=sources`
/// and, when `max_chars > 0`, the answer text to `max_chars` characters. It is sent as the
/// router's response format only: routers with constrained decoding then cannot cite a source
/// that does not exist, and a small model that starts repeating itself still closes its JSON
/// before `max_tokens` (llama.cpp accepts a bound of 600; it rejects the grammar for 2,000).
/// The prompt shows the general schema, so the prompt prefix stays the same across requests.
pub fn default_schema_for(sources: usize, max_chars: usize) -> Value {
    let mut s = default_schema();
    s["properties"]["citations"]["items"]["maximum"] = json!(sources.max(1));
    if max_chars > 0 {
        s["properties"]["answer"]["maxLength"] = json!(max_chars);
    }
    s
}

/// A compiled schema.
pub struct Contract {
    schema: Value,
    validator: jsonschema::Validator,
}

impl Contract {
    /// Compiles a caller's schema (INVALID_ARGUMENT when it is not a valid JSON Schema).
    pub fn new(schema: Value) -> Result<Contract> {
        if !schema.is_object() {
            return Err(Error::invalid("the answer schema must be a JSON object"));
        }
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            Error::invalid(format!("the answer schema is not a valid JSON Schema: {e}"))
        })?;
        Ok(Contract { schema, validator })
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Parses and validates a reply. The error says what is wrong, for the repair prompt.
    pub fn check(&self, reply: &str) -> std::result::Result<Value, String> {
        let text = escape_control_chars(strip_fences(reply));
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("the reply is not valid JSON ({e})"))?;
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!(
                    "{}{e}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!("at {at}: ")
                    }
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(format!(
                "the reply does not match the schema: {}",
                errors.join("; ")
            ))
        }
    }
}

/// Escapes raw control characters inside JSON strings. llama.cpp's JSON grammar lets a model
/// put a literal newline inside a string, which strict JSON forbids; the meaning is
/// unambiguous, so it is repaired here rather than rejected.
fn escape_control_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in s.chars() {
        if in_string {
            if escaped {
                escaped = false;
                // A backslash followed by a raw control character: escape the character.
                if (c as u32) < 0x20 {
                    match c {
                        '\n' => out.push('n'),
                        '\r' => out.push('r'),
                        '\t' => out.push('t'),
                        c => out.push_str(&format!("u{:04x}", c as u32)),
                    }
                    continue;
                }
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if (c as u32) < 0x20 {
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push_str(&format!("\\u{:04x}", c as u32)),
                }
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

/// Models under instructions-only mode often wrap JSON in a markdown code fence.
fn strip_fences(s: &str) -> &str {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches("json").trim_start();
        if let Some(inner) = rest.strip_suffix("```") {
            return inner.trim();
        }
    }
    t
}

/// Source numbers cited by an answer: a top-level `citations` array of integers (or of objects
/// with an integer `source`). Schemas without one have no checkable citations.
pub fn citations(answer: &Value) -> Vec<i64> {
    let Some(list) = answer.get("citations").and_then(|c| c.as_array()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in list {
        let n = item
            .as_i64()
            .or_else(|| item.get("source").and_then(|s| s.as_i64()));
        if let Some(n) = n {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_explains() {
        let c = Contract::new(default_schema()).unwrap();
        assert!(c.check(r#"{"answer": "x", "citations": [1, 2]}"#).is_ok());
        assert!(c
            .check("```json\n{\"answer\": \"x\", \"citations\": []}\n```")
            .is_ok());
        let err = c.check(r#"{"answer": 3, "citations": [1]}"#).unwrap_err();
        assert!(err.contains("/answer"), "{err}");
        let err = c.check("not json").unwrap_err();
        assert!(err.contains("not valid JSON"));
        assert!(Contract::new(json!({"type": 12})).is_err());
        assert!(Contract::new(json!([1])).is_err());
    }

    #[test]
    fn extracts_citations() {
        assert_eq!(citations(&json!({"citations": [2, 1, 2]})), vec![2, 1]);
        assert_eq!(citations(&json!({"citations": [{"source": 3}]})), vec![3]);
        assert!(citations(&json!({"answer": "x"})).is_empty());
    }
}
