//! Quarry's filter tree as a Qdrant filter, and typed metadata as Qdrant payload.
//!
//! Each metadata key is a payload field of its own, named `m_` + the key's bytes in hex (keys
//! may hold any character, Qdrant field names are paths), with a payload index of the key's
//! type: keyword for strings and string lists, integer for integers and timestamps (as
//! microseconds, exact), float, bool. The field `mk` lists the keys a point has (for `exists`,
//! which Qdrant's `is_empty` would get wrong for an empty list). The semantics are those of
//! [`Filter::matches`], the oracle: a condition on a key a document lacks is false (so `not`
//! of it is true); `eq` on a string list means "contains"; an empty `or` matches nothing; an
//! empty `and` everything. The engine's filter property test runs against this translation.
//!
//! Integer bounds travel as Qdrant's f64 ranges: exact up to 2^53 (timestamps until the year
//! 2255); beyond that a bound may round.

use std::collections::HashMap;

use qdrant_client::qdrant::{self, Condition, FieldType, Range as QRange};

use crate::filter::{Filter, Test};
use crate::meta::{Metadata, Value, ValueType};

/// The field listing which metadata keys a point has.
pub const KEYS_FIELD: &str = "mk";

/// The payload field of metadata key `key`.
pub fn field(key: &str) -> String {
    let mut out = String::with_capacity(2 + key.len() * 2);
    out.push_str("m_");
    for b in key.as_bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The payload index a key of type `t` gets.
pub fn index_type(t: ValueType) -> FieldType {
    match t {
        ValueType::String | ValueType::StringList => FieldType::Keyword,
        ValueType::Integer | ValueType::Timestamp => FieldType::Integer,
        ValueType::Float => FieldType::Float,
        ValueType::Boolean => FieldType::Bool,
    }
}

fn value(v: &Value) -> qdrant::Value {
    match v {
        Value::Str(s) => s.clone().into(),
        Value::Int(i) | Value::Time(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Bool(b) => (*b).into(),
        Value::List(items) => qdrant::Value {
            kind: Some(qdrant::value::Kind::ListValue(qdrant::ListValue {
                values: items.iter().map(|s| s.clone().into()).collect(),
            })),
        },
    }
}

/// The payload fields of `metadata` (the typed fields and the key list).
pub fn payload(metadata: &Metadata) -> HashMap<String, qdrant::Value> {
    let mut out = HashMap::with_capacity(metadata.len() + 1);
    for (k, v) in metadata {
        out.insert(field(k), value(v));
    }
    out.insert(
        KEYS_FIELD.to_string(),
        value(&Value::List(metadata.keys().map(|k| field(k)).collect())),
    );
    out
}

/// A condition no point meets (Qdrant has no literal "false").
fn nothing() -> Condition {
    Condition::has_id(Vec::<qdrant::PointId>::new())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) | Value::Time(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn equals(f: &str, v: &Value) -> Condition {
    match v {
        Value::Str(s) => Condition::matches(f, s.clone()),
        Value::Int(i) | Value::Time(i) => Condition::matches(f, *i),
        Value::Bool(b) => Condition::matches(f, *b),
        Value::Float(x) => Condition::range(
            f,
            QRange {
                gte: Some(*x),
                lte: Some(*x),
                ..Default::default()
            },
        ),
        // A resolved filter never compares with a list; every item must be there.
        Value::List(items) => qdrant::Filter::must(
            items
                .iter()
                .map(|s| Condition::matches(f, s.clone()))
                .collect::<Vec<_>>(),
        )
        .into(),
    }
}

/// A resolved filter as one Qdrant condition.
pub fn condition(filter: &Filter) -> Condition {
    match filter {
        Filter::And(v) => qdrant::Filter::must(v.iter().map(condition).collect::<Vec<_>>()).into(),
        Filter::Or(v) if v.is_empty() => nothing(),
        Filter::Or(v) => qdrant::Filter::should(v.iter().map(condition).collect::<Vec<_>>()).into(),
        Filter::Not(f) => qdrant::Filter::must_not([condition(f)]).into(),
        Filter::Cond(c) => {
            let f = field(&c.key);
            match &c.test {
                Test::Exists => Condition::matches(KEYS_FIELD, f),
                Test::Eq(v) => equals(&f, v),
                Test::In(vs) if vs.is_empty() => nothing(),
                Test::In(vs) => {
                    qdrant::Filter::should(vs.iter().map(|v| equals(&f, v)).collect::<Vec<_>>())
                        .into()
                }
                Test::Contains(s) => Condition::matches(f, s.clone()),
                Test::ContainsAny(ss) if ss.is_empty() => nothing(),
                Test::ContainsAny(ss) => Condition::matches(f, ss.clone()),
                Test::Range(r) => Condition::range(
                    f,
                    QRange {
                        gt: r.gt.as_ref().and_then(number),
                        gte: r.gte.as_ref().and_then(number),
                        lt: r.lt.as_ref().and_then(number),
                        lte: r.lte.as_ref().and_then(number),
                    },
                ),
            }
        }
    }
}

/// A resolved filter, with `extra` conditions that must hold too, as a Qdrant filter (`None`
/// when nothing restricts).
pub fn translate(filter: &Filter, extra: Vec<Condition>) -> Option<qdrant::Filter> {
    let mut must = extra;
    if !filter.is_all() {
        must.push(condition(filter));
    }
    (!must.is_empty()).then(|| qdrant::Filter::must(must))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_safe_paths() {
        assert_eq!(field("a.b"), "m_612e62");
        assert_eq!(field("é"), "m_c3a9");
    }

    #[test]
    fn everything_has_no_filter_and_empty_or_matches_nothing() {
        assert!(translate(&Filter::all(), Vec::new()).is_none());
        let none = condition(&Filter::Or(Vec::new()));
        assert_eq!(none, nothing());
    }
}
