//! Typed metadata as tantivy terms, and resolved filters ([`crate::filter`]) as tantivy queries.
//!
//! Every metadata entry becomes terms in one raw (untokenized) field: `key US` marks that the
//! key is present (for `exists`), and `key US tag encoded` holds the value, where the tag names
//! the type and the encoding sorts in value order: integers and timestamps as 16 hex digits of
//! the value with its sign bit flipped, floats as 16 hex digits of their IEEE bits mapped to a
//! total order, strings as they are (a string list gives one term per item). So equality and
//! `in` are term lookups and a range is one term-dictionary range, all native to tantivy, and
//! exact: the property tests compare them with the plain-Rust oracle.

use std::ops::Bound;

use tantivy::query::{
    AllQuery, BooleanQuery, ConstScoreQuery, EmptyQuery, Occur, Query, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::Term;

use crate::filter::{Filter, Range, Test};
use crate::meta::Value;

/// Separates a key from its value in a term (keys may not contain it).
pub const SEP: char = '\u{1f}';

fn tag(v: &Value) -> char {
    match v {
        Value::Str(_) | Value::List(_) => 's',
        Value::Int(_) => 'i',
        Value::Float(_) => 'f',
        Value::Bool(_) => 'b',
        Value::Time(_) => 't',
    }
}

fn ordered_i64(i: i64) -> String {
    format!("{:016x}", (i as u64) ^ (1 << 63))
}

fn ordered_f64(f: f64) -> String {
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let key = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    format!("{key:016x}")
}

/// The term saying `key` is present.
pub fn present_term(key: &str) -> String {
    format!("{key}{SEP}")
}

/// The value terms of one entry (one per item for a list).
pub fn value_terms(key: &str, v: &Value) -> Vec<String> {
    let t = tag(v);
    let one = |enc: String| format!("{key}{SEP}{t}{enc}");
    match v {
        Value::Str(s) => vec![one(s.clone())],
        Value::List(items) => items.iter().map(|s| one(s.clone())).collect(),
        Value::Int(i) | Value::Time(i) => vec![one(ordered_i64(*i))],
        Value::Float(f) => vec![one(ordered_f64(*f))],
        Value::Bool(b) => vec![one(if *b { "1" } else { "0" }.into())],
    }
}

/// Every term of a document's metadata.
pub fn document_terms(metadata: &crate::meta::Metadata) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in metadata {
        out.push(present_term(k));
        out.extend(value_terms(k, v));
    }
    out
}

/// A resolved filter as a query over `field` (scores are meaningless; wrap it in a
/// zero-score clause when combining with a scored query).
pub fn compile(field: Field, f: &Filter) -> Box<dyn Query> {
    let term = |s: String| Term::from_field_text(field, &s);
    let term_query = |s: String| -> Box<dyn Query> {
        Box::new(TermQuery::new(term(s), IndexRecordOption::Basic))
    };
    match f {
        Filter::And(parts) if parts.is_empty() => Box::new(AllQuery),
        Filter::Or(parts) if parts.is_empty() => Box::new(EmptyQuery),
        Filter::And(parts) => Box::new(BooleanQuery::new(
            parts
                .iter()
                .map(|p| (Occur::Must, compile(field, p)))
                .collect(),
        )),
        Filter::Or(parts) => Box::new(BooleanQuery::new(
            parts
                .iter()
                .map(|p| (Occur::Should, compile(field, p)))
                .collect(),
        )),
        Filter::Not(inner) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
            (Occur::MustNot, compile(field, inner)),
        ])),
        Filter::Cond(c) => {
            let k = c.key.as_str();
            let values = |vs: &mut dyn Iterator<Item = Vec<String>>| -> Box<dyn Query> {
                Box::new(TermSetQuery::new(
                    vs.flatten().map(term).collect::<Vec<_>>(),
                ))
            };
            match &c.test {
                Test::Exists => term_query(present_term(k)),
                Test::Eq(v) => match value_terms(k, v).pop() {
                    Some(t) => term_query(t),
                    None => Box::new(EmptyQuery),
                },
                Test::In(vs) => values(&mut vs.iter().map(|v| value_terms(k, v))),
                Test::Contains(s) => term_query(value_terms(k, &Value::Str(s.clone())).remove(0)),
                Test::ContainsAny(ss) => {
                    values(&mut ss.iter().map(|s| value_terms(k, &Value::Str(s.clone()))))
                }
                Test::Range(r) => range(field, k, r),
            }
        }
    }
}

/// One term range. A resolved range has at most one bound per side (`Filter::resolve` keeps
/// the tighter), so a strict bound is simply used when present.
fn range(field: Field, key: &str, r: &Range) -> Box<dyn Query> {
    let Some(t) = [&r.gt, &r.gte, &r.lt, &r.lte]
        .into_iter()
        .flatten()
        .map(tag)
        .next()
    else {
        return Box::new(EmptyQuery);
    };
    let enc = |v: &Value| value_terms(key, v).remove(0);
    let pick = |strict: &Option<Value>, inclusive: &Option<Value>| {
        let s = strict.as_ref().map(|v| Bound::Excluded(enc(v)));
        s.or_else(|| inclusive.as_ref().map(|v| Bound::Included(enc(v))))
    };
    let lower = pick(&r.gt, &r.gte).unwrap_or_else(|| Bound::Included(format!("{key}{SEP}{t}")));
    let next_tag = char::from_u32(t as u32 + 1).unwrap_or(t);
    let upper =
        pick(&r.lt, &r.lte).unwrap_or_else(|| Bound::Excluded(format!("{key}{SEP}{next_tag}")));
    let to_term = |b: Bound<String>| match b {
        Bound::Included(s) => Bound::Included(Term::from_field_text(field, &s)),
        Bound::Excluded(s) => Bound::Excluded(Term::from_field_text(field, &s)),
        Bound::Unbounded => Bound::Unbounded,
    };
    Box::new(RangeQuery::new(to_term(lower), to_term(upper)))
}

/// `query` restricted to documents passing `filter` (which adds nothing to the score).
pub fn restrict(field: Field, query: Box<dyn Query>, filter: &Filter) -> Box<dyn Query> {
    if filter.is_all() {
        return query;
    }
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, query),
        (
            Occur::Must,
            Box::new(ConstScoreQuery::new(compile(field, filter), 0.0)),
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_sort_in_value_order() {
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let enc: Vec<String> = ints.iter().map(|i| ordered_i64(*i)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]), "{enc:?}");
        let floats = [
            f64::MIN,
            -2.5,
            -1e-300,
            -0.0,
            0.0,
            1e-300,
            0.5,
            3.0,
            f64::MAX,
        ];
        let enc: Vec<String> = floats.iter().map(|f| ordered_f64(*f)).collect();
        assert!(enc.windows(2).all(|w| w[0] <= w[1]), "{enc:?}");
        assert_eq!(ordered_f64(-0.0), ordered_f64(0.0));
    }
}
