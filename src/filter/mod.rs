//! Filter expressions over typed metadata: `and`, `or`, `not` and conditions (`eq`, `in`,
//! `range`, `exists`, `contains`, `contains_any`).
//!
//! A filter arrives as a tree (the wire form) or as text ([`parse`], for humans and the CLI's
//! `--where`). Before it runs it is *resolved* against the collection's key types
//! ([`Filter::resolve`]): values are coerced to the key's type (an integer bound on a float key,
//! an RFC 3339 string on a timestamp key), a condition that can never hold for the key's type
//! is an error naming the key and both types, and a condition on a key the collection has never
//! seen matches nothing. Resolved filters run in the lexical index (compiled to tantivy
//! queries, see `index::filter_query`), which also gives the dense side its allowed set, and in
//! plain Rust ([`Filter::matches`]), the oracle the property tests check the indexes against.

pub mod parse;

use std::cmp::Ordering;

use crate::error::{quote, Error, Result};
use crate::meta::{parse_time, Metadata, Schema, Value, ValueType};

pub use parse::parse;

/// A filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// All must hold (an empty `And` matches everything).
    And(Vec<Filter>),
    /// At least one must hold (an empty `Or` matches nothing).
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Condition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub key: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The value equals (for a string list: contains) this one.
    Eq(Value),
    /// The value equals any of these.
    In(Vec<Value>),
    Range(Range),
    /// The document has the key.
    Exists,
    /// The string list contains this string.
    Contains(String),
    /// The string list contains any of these strings.
    ContainsAny(Vec<String>),
}

/// Bounds on an integer, float or timestamp key; at least one is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Range {
    pub gt: Option<Value>,
    pub gte: Option<Value>,
    pub lt: Option<Value>,
    pub lte: Option<Value>,
}

/// Limits on a filter's shape, from the server's limits.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Deepest nesting of `and` / `or` / `not`.
    pub max_depth: usize,
    /// Conditions plus values in `in` / `contains_any` lists.
    pub max_terms: usize,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter::all()
    }
}

impl Filter {
    /// A filter that matches everything.
    pub fn all() -> Filter {
        Filter::And(Vec::new())
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Filter::And(v) if v.is_empty())
    }

    /// False when the filter matches every document whatever its metadata: empty, or a tree
    /// that folds to "true" (`and: [and: []]`, `not: {or: []}`, `or: [f, not f]`, ...). Guards
    /// that need "a filter that restricts" ask this, not [`Filter::is_all`], which only knows
    /// the empty form.
    pub fn restricts(&self) -> bool {
        self.constant() != Some(true)
    }

    /// The filter's value when it does not depend on the document, found by folding.
    fn constant(&self) -> Option<bool> {
        match self {
            Filter::And(v) => {
                let parts: Vec<Option<bool>> = v.iter().map(Filter::constant).collect();
                if parts.contains(&Some(false)) {
                    Some(false)
                } else if parts.iter().all(|p| *p == Some(true)) {
                    Some(true)
                } else {
                    None
                }
            }
            Filter::Or(v) => {
                let parts: Vec<Option<bool>> = v.iter().map(Filter::constant).collect();
                let complementary = v.iter().any(|f| match f {
                    Filter::Not(inner) => v.contains(inner),
                    _ => false,
                });
                if parts.contains(&Some(true)) || complementary {
                    Some(true)
                } else if parts.iter().all(|p| *p == Some(false)) {
                    Some(false)
                } else {
                    None
                }
            }
            Filter::Not(f) => f.constant().map(|b| !b),
            Filter::Cond(c) => match &c.test {
                Test::In(v) if v.is_empty() => Some(false),
                Test::ContainsAny(v) if v.is_empty() => Some(false),
                _ => None,
            },
        }
    }

    /// `self AND other`, flattening nested `And`s.
    pub fn and(self, other: Filter) -> Filter {
        match (self, other) {
            (a, b) if a.is_all() => b,
            (a, b) if b.is_all() => a,
            (Filter::And(mut a), Filter::And(b)) => {
                a.extend(b);
                Filter::And(a)
            }
            (Filter::And(mut a), b) | (b, Filter::And(mut a)) => {
                a.push(b);
                Filter::And(a)
            }
            (a, b) => Filter::And(vec![a, b]),
        }
    }

    pub fn cond(key: impl Into<String>, test: Test) -> Filter {
        Filter::Cond(Condition {
            key: key.into(),
            test,
        })
    }

    /// Every key the filter names.
    pub fn keys(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_keys(&mut out);
        out
    }

    fn collect_keys<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|f| f.collect_keys(out)),
            Filter::Not(f) => f.collect_keys(out),
            Filter::Cond(c) => out.push(&c.key),
        }
    }

    /// Checks depth and size against `limits`.
    pub fn check_limits(&self, limits: FilterLimits) -> Result<()> {
        let mut terms = 0usize;
        let depth = self.walk(1, &mut terms);
        if depth > limits.max_depth {
            return Err(Error::invalid(format!(
                "the filter nests {depth} levels deep, over the limit max_filter_depth = {}",
                limits.max_depth
            )));
        }
        if terms > limits.max_terms {
            return Err(Error::invalid(format!(
                "the filter has {terms} conditions and values, over the limit max_filter_terms = {}",
                limits.max_terms
            )));
        }
        Ok(())
    }

    /// Depth of the tree; adds conditions and list values to `terms`.
    fn walk(&self, depth: usize, terms: &mut usize) -> usize {
        match self {
            Filter::And(v) | Filter::Or(v) => v
                .iter()
                .map(|f| f.walk(depth + 1, terms))
                .max()
                .unwrap_or(depth),
            Filter::Not(f) => f.walk(depth + 1, terms),
            Filter::Cond(c) => {
                *terms += match &c.test {
                    Test::In(v) => v.len().max(1),
                    Test::ContainsAny(v) => v.len().max(1),
                    _ => 1,
                };
                depth
            }
        }
    }

    /// The filter with every value coerced to its key's type in `schema` (see the module docs).
    pub fn resolve(&self, schema: &Schema) -> Result<Filter> {
        Ok(match self {
            Filter::And(v) => {
                Filter::And(v.iter().map(|f| f.resolve(schema)).collect::<Result<_>>()?)
            }
            Filter::Or(v) => {
                Filter::Or(v.iter().map(|f| f.resolve(schema)).collect::<Result<_>>()?)
            }
            Filter::Not(f) => Filter::Not(Box::new(f.resolve(schema)?)),
            Filter::Cond(c) => match schema.get(&c.key) {
                None => Filter::Or(Vec::new()),
                Some(&t) => Filter::Cond(resolve_condition(c, t)?),
            },
        })
    }

    /// Whether a document with `metadata` passes (the oracle; the filter must be resolved).
    pub fn matches(&self, metadata: &Metadata) -> bool {
        match self {
            Filter::And(v) => v.iter().all(|f| f.matches(metadata)),
            Filter::Or(v) => v.iter().any(|f| f.matches(metadata)),
            Filter::Not(f) => !f.matches(metadata),
            Filter::Cond(c) => {
                let Some(value) = metadata.get(&c.key) else {
                    return false;
                };
                match &c.test {
                    Test::Exists => true,
                    Test::Eq(v) => equal(value, v),
                    Test::In(vs) => vs.iter().any(|v| equal(value, v)),
                    Test::Contains(s) => list_has(value, s),
                    Test::ContainsAny(ss) => ss.iter().any(|s| list_has(value, s)),
                    Test::Range(r) => {
                        let ok = |b: &Option<Value>, want: &[Ordering]| {
                            b.as_ref().is_none_or(|b| {
                                compare(value, b).is_some_and(|o| want.contains(&o))
                            })
                        };
                        ok(&r.gt, &[Ordering::Greater])
                            && ok(&r.gte, &[Ordering::Greater, Ordering::Equal])
                            && ok(&r.lt, &[Ordering::Less])
                            && ok(&r.lte, &[Ordering::Less, Ordering::Equal])
                    }
                }
            }
        }
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(l), Value::Str(s)) => l.contains(s),
        _ => a == b,
    }
}

fn list_has(value: &Value, s: &str) -> bool {
    match value {
        Value::List(l) => l.iter().any(|x| x == s),
        Value::Str(x) => x == s,
        _ => false,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(a), Value::Int(b)) | (Value::Time(a), Value::Time(b)) => Some(a.cmp(b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
        _ => None,
    }
}

fn mismatch(key: &str, t: ValueType, what: &str) -> Error {
    Error::invalid(format!(
        "filter: metadata key {} is {} in this collection; {what}",
        quote(key),
        t.with_article()
    ))
}

/// `v` as a value of type `t`, if it can be one.
fn coerce(key: &str, v: &Value, t: ValueType) -> Result<Value> {
    let got = v.value_type();
    let fail = || {
        mismatch(
            key,
            t,
            &format!("the condition gives {}", got.with_article()),
        )
    };
    Ok(match (t, v) {
        (ValueType::String | ValueType::StringList, Value::Str(s)) => Value::Str(s.clone()),
        (ValueType::Integer, Value::Int(i)) => Value::Int(*i),
        (ValueType::Integer, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
            Value::Int(*f as i64)
        }
        (ValueType::Float, Value::Float(f)) => Value::Float(*f),
        (ValueType::Float, Value::Int(i)) => Value::Float(*i as f64),
        (ValueType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (ValueType::Timestamp, Value::Time(us)) => Value::Time(*us),
        (ValueType::Timestamp, Value::Str(s)) => Value::Time(parse_time(s)?),
        _ => return Err(fail()),
    })
}

fn check_finite(key: &str, v: &Value) -> Result<()> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(Error::invalid(format!(
            "filter: the value for {} is {f}; numbers must be finite",
            quote(key)
        ))),
        _ => Ok(()),
    }
}

fn resolve_condition(c: &Condition, t: ValueType) -> Result<Condition> {
    let key = c.key.as_str();
    let one = |v: &Value| -> Result<Value> {
        check_finite(key, v)?;
        coerce(key, v, t)
    };
    let test = match &c.test {
        Test::Exists => Test::Exists,
        Test::Eq(v) => Test::Eq(one(v)?),
        Test::In(vs) => Test::In(vs.iter().map(one).collect::<Result<_>>()?),
        Test::Contains(_) | Test::ContainsAny(_)
            if !matches!(t, ValueType::StringList | ValueType::String) =>
        {
            return Err(mismatch(key, t, "contains applies to string lists"));
        }
        Test::Contains(s) => Test::Contains(s.clone()),
        Test::ContainsAny(ss) => Test::ContainsAny(ss.clone()),
        Test::Range(r) => {
            if !t.is_ordered() {
                return Err(mismatch(
                    key,
                    t,
                    "ranges apply to integers, floats and timestamps",
                ));
            }
            Test::Range(resolve_range(key, r, t)?)
        }
    };
    Ok(Condition {
        key: c.key.clone(),
        test,
    })
}

/// Coerces range bounds; a fractional bound on an integer key becomes the equivalent integer
/// bound (`> 2.5` is `>= 3`).
fn resolve_range(key: &str, r: &Range, t: ValueType) -> Result<Range> {
    if r.gt.is_none() && r.gte.is_none() && r.lt.is_none() && r.lte.is_none() {
        return Err(Error::invalid(format!(
            "filter: the range on {} has no bound",
            quote(key)
        )));
    }
    let mut out = Range::default();
    let bounds = [
        (&r.gt, true, false),
        (&r.gte, true, true),
        (&r.lt, false, false),
        (&r.lte, false, true),
    ];
    for (bound, lower, inclusive) in bounds {
        let Some(v) = bound else { continue };
        check_finite(key, v)?;
        let (v, inclusive) = match (t, v) {
            (ValueType::Integer, Value::Float(f)) if f.fract() != 0.0 => {
                // Strictly between two integers: the nearer one inward, inclusive.
                let edge = if lower { f.ceil() } else { f.floor() };
                (Value::Int(edge.clamp(-9.0e18, 9.0e18) as i64), true)
            }
            _ => (coerce(key, v, t)?, inclusive),
        };
        let slot = match (lower, inclusive) {
            (true, false) => &mut out.gt,
            (true, true) => &mut out.gte,
            (false, false) => &mut out.lt,
            (false, true) => &mut out.lte,
        };
        // Two bounds on one side (from coercion): keep the tighter.
        let tighter = match slot.as_ref() {
            None => true,
            Some(old) => {
                let o = compare(&v, old);
                if lower {
                    o == Some(Ordering::Greater)
                } else {
                    o == Some(Ordering::Less)
                }
            }
        };
        if tighter {
            *slot = Some(v);
        }
    }
    Ok(one_bound_per_side(out))
}

/// Keeps the tighter of a strict and an inclusive bound on the same side (at equal values,
/// the strict one), so every backend gets at most one bound per side. Backends do not agree
/// on both: Qdrant's numeric index, for one, uses `gt` and ignores a `gte` beside it.
fn one_bound_per_side(mut r: Range) -> Range {
    if let (Some(gt), Some(gte)) = (&r.gt, &r.gte) {
        if compare(gt, gte) == Some(Ordering::Less) {
            r.gt = None;
        } else {
            r.gte = None;
        }
    }
    if let (Some(lt), Some(lte)) = (&r.lt, &r.lte) {
        if compare(lt, lte) == Some(Ordering::Greater) {
            r.lt = None;
        } else {
            r.lte = None;
        }
    }
    r
}

#[cfg(test)]
mod tests;
