//! Typed document metadata: strings, integers, floats, booleans, timestamps and string lists.
//!
//! Types are per key per collection ([`Schema`]): the first value stored under a key fixes its
//! type (or the collection declares it up front), and a conflicting value is rejected. That lets
//! filters compare numbers as numbers and timestamps as instants, and lets the lexical index
//! encode each type so that its byte order is its value order (range filters are term ranges).
//!
//! In sled a string is stored as a bare JSON string (what every earlier version stored), the
//! other types as one-key objects (`{"int": 5}`), so old records read unchanged.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{quote, Error, Result};

/// A document's metadata: key to typed value.
pub type Metadata = BTreeMap<String, Value>;

/// The type of a metadata key in a collection.
pub type Schema = BTreeMap<String, ValueType>;

/// One metadata value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub enum Value {
    Str(String),
    Int(i64),
    /// Always finite (checked at the edge).
    Float(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    String,
    Integer,
    Float,
    Boolean,
    Timestamp,
    StringList,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Float => "float",
            ValueType::Boolean => "boolean",
            ValueType::Timestamp => "timestamp",
            ValueType::StringList => "string list",
        }
    }

    /// "a string", "an integer", ...
    pub fn with_article(self) -> String {
        match self {
            ValueType::Integer => "an integer".into(),
            other => format!("a {other}"),
        }
    }

    /// Integers, floats and timestamps: the types range conditions apply to.
    pub fn is_ordered(self) -> bool {
        matches!(
            self,
            ValueType::Integer | ValueType::Float | ValueType::Timestamp
        )
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Str(String),
    Tagged(Tagged),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tagged {
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(i64),
    List(Vec<String>),
}

impl From<Stored> for Value {
    fn from(s: Stored) -> Value {
        match s {
            Stored::Str(s) => Value::Str(s),
            Stored::Tagged(Tagged::Int(v)) => Value::Int(v),
            Stored::Tagged(Tagged::Float(v)) => Value::Float(v),
            Stored::Tagged(Tagged::Bool(v)) => Value::Bool(v),
            Stored::Tagged(Tagged::Time(v)) => Value::Time(v),
            Stored::Tagged(Tagged::List(v)) => Value::List(v),
        }
    }
}

impl From<Value> for Stored {
    fn from(v: Value) -> Stored {
        match v {
            Value::Str(s) => Stored::Str(s),
            Value::Int(v) => Stored::Tagged(Tagged::Int(v)),
            Value::Float(v) => Stored::Tagged(Tagged::Float(v)),
            Value::Bool(v) => Stored::Tagged(Tagged::Bool(v)),
            Value::Time(v) => Stored::Tagged(Tagged::Time(v)),
            Value::List(v) => Stored::Tagged(Tagged::List(v)),
        }
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Str(_) => ValueType::String,
            Value::Int(_) => ValueType::Integer,
            Value::Float(_) => ValueType::Float,
            Value::Bool(_) => ValueType::Boolean,
            Value::Time(_) => ValueType::Timestamp,
            Value::List(_) => ValueType::StringList,
        }
    }

    /// Bytes this value costs (counted against the document size limit).
    pub fn size(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::List(l) => l.iter().map(|s| s.len() + 1).sum(),
            _ => 8,
        }
    }

    /// The value as text: strings as they are, timestamps in RFC 3339, lists as a JSON array.
    pub fn render(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Time(us) => format_time(*us),
            Value::List(l) => serde_json::to_string(l).unwrap_or_default(),
        }
    }

    /// The value as a number, for numeric comparison (integers, floats, timestamps).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) | Value::Time(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// Parses an RFC 3339 timestamp ("2024-05-01T12:00:00Z", any offset) to microseconds.
pub fn parse_time(s: &str) -> Result<i64> {
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e| Error::invalid(format!("{} is not an RFC 3339 timestamp: {e}", quote(s))))?;
    Ok(ts.as_microsecond())
}

/// Microseconds since the epoch in RFC 3339 (UTC).
pub fn format_time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| us.to_string())
}

/// Checks the values of one document: finite floats, bounded lists. Key checks (empty, U+001F,
/// count) are the engine's, with the other limits.
pub fn check_values(doc: &str, metadata: &Metadata, max_list: usize) -> Result<()> {
    for (k, v) in metadata {
        match v {
            Value::Float(f) if !f.is_finite() => {
                return Err(Error::invalid(format!(
                    "document {}: metadata {} is {f}; floats must be finite",
                    quote(doc),
                    quote(k)
                )))
            }
            Value::List(l) if l.len() > max_list => {
                return Err(Error::invalid(format!(
                    "document {}: metadata {} has {} items, over the limit max_metadata_list_items = {max_list}",
                    quote(doc),
                    quote(k),
                    l.len()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Converts values to their key's type where the conversion is exact and expected: a string
/// under a timestamp key is parsed as RFC 3339, an integer under a float key becomes a float
/// (JSON sources do not say which numbers are floats or timestamps).
pub fn coerce_to_schema(doc: &str, metadata: &mut Metadata, schema: &Schema) -> Result<()> {
    for (k, v) in metadata.iter_mut() {
        match (schema.get(k), &*v) {
            (Some(ValueType::Timestamp), Value::Str(s)) => {
                *v = Value::Time(parse_time(s).map_err(|e| {
                    Error::invalid(format!(
                        "document {}: metadata {}: {e}",
                        quote(doc),
                        quote(k)
                    ))
                })?)
            }
            (Some(ValueType::Float), Value::Int(i)) => *v = Value::Float(*i as f64),
            _ => {}
        }
    }
    Ok(())
}

/// Checks `metadata` against the collection's key types and `pending` (types fixed by earlier
/// documents of the same write), then records the new keys in `pending`.
pub fn check_types(
    doc: &str,
    metadata: &Metadata,
    schema: &Schema,
    pending: &mut Schema,
) -> Result<()> {
    for (k, v) in metadata {
        let got = v.value_type();
        match schema.get(k).or_else(|| pending.get(k)) {
            Some(&want) if want != got => {
                return Err(Error::invalid(format!(
                    "document {}: metadata key {} is {} in this collection, got {}",
                    quote(doc),
                    quote(k),
                    want.with_article(),
                    got.with_article()
                )))
            }
            Some(_) => {}
            None => {
                pending.insert(k.clone(), got);
            }
        }
    }
    Ok(())
}

/// String metadata (as earlier versions took it) as typed metadata.
pub fn from_strings(m: BTreeMap<String, String>) -> Metadata {
    m.into_iter().map(|(k, v)| (k, Value::Str(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_stored_as_before_and_other_types_tagged() {
        let m: Metadata = BTreeMap::from([
            ("a".into(), Value::Str("x".into())),
            ("b".into(), Value::Int(-3)),
            ("c".into(), Value::Float(2.0)),
            ("d".into(), Value::Bool(true)),
            ("e".into(), Value::Time(1_700_000_000_000_000)),
            ("f".into(), Value::List(vec!["p".into(), "q".into()])),
        ]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"a":"x","b":{"int":-3},"c":{"float":2.0},"d":{"bool":true},"e":{"time":1700000000000000},"f":{"list":["p","q"]}}"#
        );
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
        // A record written by an earlier version.
        let old: Metadata = serde_json::from_str(r#"{"lang":"en"}"#).unwrap();
        assert_eq!(old["lang"], Value::Str("en".into()));
    }

    #[test]
    fn timestamps_parse_any_offset_and_render_utc() {
        let us = parse_time("2024-05-01T14:00:00+02:00").unwrap();
        assert_eq!(format_time(us), "2024-05-01T12:00:00Z");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn the_first_type_of_a_key_wins() {
        let schema = Schema::from([("year".into(), ValueType::Integer)]);
        let mut pending = Schema::new();
        let ok = Metadata::from([
            ("year".into(), Value::Int(2020)),
            ("lang".into(), Value::Str("en".into())),
        ]);
        check_types("d", &ok, &schema, &mut pending).unwrap();
        assert_eq!(pending["lang"], ValueType::String);
        let bad = Metadata::from([("lang".into(), Value::Bool(true))]);
        let e = check_types("e", &bad, &schema, &mut pending)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"lang\" is a string") && e.contains("got a boolean"),
            "{e}"
        );
        let mut m = Metadata::from([
            ("at".into(), Value::Str("2026-01-01T00:00:00Z".into())),
            ("x".into(), Value::Int(2)),
        ]);
        let schema = Schema::from([
            ("at".into(), ValueType::Timestamp),
            ("x".into(), ValueType::Float),
        ]);
        coerce_to_schema("d", &mut m, &schema).unwrap();
        assert_eq!(
            (m["at"].value_type(), m["x"].clone()),
            (ValueType::Timestamp, Value::Float(2.0))
        );
    }
}
