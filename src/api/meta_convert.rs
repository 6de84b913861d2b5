//! Typed metadata, filters and page tokens between the wire and the core.
//!
//! The wire keeps the string map every earlier client sends (`metadata`, `filter`) beside the
//! typed forms (`typed_metadata`, `where`, `where_text`); here they become one
//! [`crate::meta::Metadata`] and one [`crate::filter::Filter`].

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::pb;
use crate::error::{quote, Error, Result};
use crate::filter::{self, Condition, Filter, Range, Test};
use crate::meta::{self, Metadata, Schema, Value, ValueType};

/// Longest `where_text`, in bytes.
pub const MAX_WHERE_TEXT_BYTES: usize = 64 * 1024;

pub fn value_from_pb(key: &str, v: pb::MetadataValue) -> Result<Value> {
    use pb::metadata_value::Kind;
    Ok(match v.kind {
        Some(Kind::StringValue(s)) => Value::Str(s),
        Some(Kind::IntValue(i)) => Value::Int(i),
        Some(Kind::FloatValue(f)) if f.is_finite() => Value::Float(f),
        Some(Kind::FloatValue(f)) => {
            return Err(Error::invalid(format!(
                "metadata {} is {f}; floats must be finite",
                quote(key)
            )))
        }
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::TimestampValue(s)) => Value::Time(meta::parse_time(&s)?),
        Some(Kind::StringList(l)) => Value::List(l.values),
        None => {
            return Err(Error::invalid(format!(
                "metadata {} has no value (set one field of MetadataValue)",
                quote(key)
            )))
        }
    })
}

pub fn value_to_pb(v: Value) -> pb::MetadataValue {
    use pb::metadata_value::Kind;
    pb::MetadataValue {
        kind: Some(match v {
            Value::Str(s) => Kind::StringValue(s),
            Value::Int(i) => Kind::IntValue(i),
            Value::Float(f) => Kind::FloatValue(f),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Time(us) => Kind::TimestampValue(meta::format_time(us)),
            Value::List(l) => Kind::StringList(pb::StringList { values: l }),
        }),
    }
}

/// One metadata map from the string map and the typed map; a key in both is an error.
pub fn metadata_from_pb(
    strings: HashMap<String, String>,
    typed: HashMap<String, pb::MetadataValue>,
) -> Result<Metadata> {
    let mut out: Metadata = meta::from_strings(strings.into_iter().collect());
    for (k, v) in typed {
        let v = value_from_pb(&k, v)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(Error::invalid(format!(
                "metadata key {} is in both metadata and typed_metadata",
                quote(&k)
            )));
        }
    }
    Ok(out)
}

/// The string entries, and every entry typed.
pub fn metadata_to_pb(
    m: Metadata,
) -> (HashMap<String, String>, HashMap<String, pb::MetadataValue>) {
    let strings = m
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Str(s) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    let typed = m.into_iter().map(|(k, v)| (k, value_to_pb(v))).collect();
    (strings, typed)
}

pub fn type_from_pb(key: &str, t: i32) -> Result<ValueType> {
    Ok(match pb::MetadataType::try_from(t) {
        Ok(pb::MetadataType::String) => ValueType::String,
        Ok(pb::MetadataType::Integer) => ValueType::Integer,
        Ok(pb::MetadataType::Float) => ValueType::Float,
        Ok(pb::MetadataType::Boolean) => ValueType::Boolean,
        Ok(pb::MetadataType::Timestamp) => ValueType::Timestamp,
        Ok(pb::MetadataType::StringList) => ValueType::StringList,
        _ => {
            return Err(Error::invalid(format!(
                "metadata_schema: key {} needs a type",
                quote(key)
            )))
        }
    })
}

pub fn type_to_pb(t: ValueType) -> pb::MetadataType {
    match t {
        ValueType::String => pb::MetadataType::String,
        ValueType::Integer => pb::MetadataType::Integer,
        ValueType::Float => pb::MetadataType::Float,
        ValueType::Boolean => pb::MetadataType::Boolean,
        ValueType::Timestamp => pb::MetadataType::Timestamp,
        ValueType::StringList => pb::MetadataType::StringList,
    }
}

pub fn schema_from_pb(m: HashMap<String, i32>) -> Result<Schema> {
    m.into_iter()
        .map(|(k, t)| Ok((k.clone(), type_from_pb(&k, t)?)))
        .collect()
}

pub fn schema_to_pb(s: Schema) -> HashMap<String, i32> {
    s.into_iter()
        .map(|(k, t)| (k, type_to_pb(t) as i32))
        .collect()
}

/// A wire filter tree as a core filter. Depth is bounded by prost's decoder (100 levels) and
/// then by the engine's `max_filter_depth`.
pub fn filter_from_pb(f: pb::Filter) -> Result<Filter> {
    use pb::filter::Kind;
    let list = |l: pb::FilterList| -> Result<Vec<Filter>> {
        l.filters.into_iter().map(filter_from_pb).collect()
    };
    Ok(match f.kind {
        Some(Kind::And(l)) => Filter::And(list(l)?),
        Some(Kind::Or(l)) => Filter::Or(list(l)?),
        Some(Kind::Not(inner)) => Filter::Not(Box::new(filter_from_pb(*inner)?)),
        Some(Kind::Condition(c)) => Filter::Cond(condition_from_pb(c)?),
        None => {
            return Err(Error::invalid(
                "a filter node has no kind (and, or, not or condition)",
            ))
        }
    })
}

fn condition_from_pb(c: pb::Condition) -> Result<Condition> {
    use pb::condition::Test as T;
    let key = c.key;
    if key.is_empty() {
        return Err(Error::invalid("a filter condition needs a key"));
    }
    let value = |v: pb::MetadataValue| value_from_pb(&key, v);
    let test = match c.test {
        Some(T::Eq(v)) => Test::Eq(value(v)?),
        Some(T::In(l)) => Test::In(l.values.into_iter().map(value).collect::<Result<_>>()?),
        Some(T::Range(r)) => {
            let bound = |b: Option<pb::MetadataValue>| b.map(value).transpose();
            Test::Range(Range {
                gt: bound(r.gt)?,
                gte: bound(r.gte)?,
                lt: bound(r.lt)?,
                lte: bound(r.lte)?,
            })
        }
        Some(T::Exists(true)) => Test::Exists,
        Some(T::Exists(false)) => {
            return Err(Error::invalid(format!(
                "filter on {}: exists must be true (wrap it in not for absence)",
                quote(&key)
            )))
        }
        Some(T::Contains(s)) => Test::Contains(s),
        Some(T::ContainsAny(l)) => Test::ContainsAny(l.values),
        None => {
            return Err(Error::invalid(format!(
                "filter condition on {} has no test",
                quote(&key)
            )))
        }
    };
    Ok(Condition { key, test })
}

/// The request's string map, `where` tree and `where_text`, ANDed.
pub fn request_filter(
    strings: HashMap<String, String>,
    tree: Option<pb::Filter>,
    text: &str,
) -> Result<Filter> {
    let mut f = Filter::all();
    let mut strings: Vec<(String, String)> = strings.into_iter().collect();
    strings.sort();
    for (k, v) in strings {
        f = f.and(Filter::cond(k, Test::Eq(Value::Str(v))));
    }
    if let Some(tree) = tree {
        f = f.and(filter_from_pb(tree)?);
    }
    if !text.trim().is_empty() {
        if text.len() > MAX_WHERE_TEXT_BYTES {
            return Err(Error::invalid(format!(
                "where_text is {} bytes, over the limit of {MAX_WHERE_TEXT_BYTES}",
                text.len()
            )));
        }
        f = f.and(filter::parse(text)?);
    }
    Ok(f)
}

/// What identifies a query for paging: the request without its paging fields.
fn fingerprint(r: &pb::SearchRequest) -> String {
    let mut r = r.clone();
    r.offset = 0;
    r.page_token.clear();
    r.explain = false;
    // A map's encoding follows its iteration order, which differs between two equal maps:
    // its pairs are hashed sorted instead.
    let mut pairs: Vec<(String, String)> = std::mem::take(&mut r.filter).into_iter().collect();
    pairs.sort();
    let mut hasher = Sha256::new();
    hasher.update(prost::Message::encode_to_vec(&r));
    for (k, v) in &pairs {
        for part in [k, v] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The offset a request asks for: its page token's, else its `offset`.
pub fn page_offset(r: &pb::SearchRequest) -> Result<usize> {
    if r.page_token.is_empty() {
        return Ok(r.offset as usize);
    }
    let bad = || Error::invalid("page_token is not one this server issued for this query");
    let (offset, print) = r.page_token.split_once('.').ok_or_else(bad)?;
    if print != fingerprint(r) {
        return Err(bad());
    }
    offset.parse().map_err(|_| bad())
}

/// The token for the page after one that ended at `next_offset`.
pub fn page_token(r: &pb::SearchRequest, next_offset: usize) -> String {
    format!("{next_offset}.{}", fingerprint(r))
}

/// A ListDocuments page token: the last id returned, hex-encoded behind a version letter.
pub fn list_token(last_id: &str) -> String {
    let hex: String = last_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("d{hex}")
}

/// The id a ListDocuments page token continues after.
pub fn list_after(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token is not one ListDocuments issued");
    let hex = token.strip_prefix('d').ok_or_else(bad)?;
    if hex.len() % 2 != 0 || hex.len() > 4096 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}
