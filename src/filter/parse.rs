//! The text form of filters, for humans (`--where`) and clients that prefer a string:
//!
//! ```text
//! year >= 2020 AND lang IN ["en", "de"] AND NOT draft = true
//! (tags CONTAINS "rust" OR tags CONTAINS ANY ["go", "zig"]) AND updated > "2026-01-01T00:00:00Z"
//! author EXISTS AND `odd key` != 'x'
//! ```
//!
//! Operators: `=` (or `==`), `!=`, `>`, `>=`, `<`, `<=`, `IN [...]`, `NOT IN [...]`, `EXISTS`,
//! `CONTAINS v`, `CONTAINS ANY [...]`; combined with `AND`, `OR`, `NOT` and parentheses (`NOT`
//! binds tightest, then `AND`, then `OR`). Keywords are case-insensitive. Values are strings in
//! double or single quotes (JSON escapes), integers, decimals, `true` and `false`; timestamps
//! are RFC 3339 strings compared against timestamp keys. Keys are identifiers
//! (`[A-Za-z_][A-Za-z0-9_.:/-]*`) or any text in backquotes. Errors name the column.

use super::{Filter, Range, Test};
use crate::error::{quote, Error, Result};
use crate::meta::Value;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Key(String),
    Num(Value),
    Op(&'static str),
}

struct Lexer<'a> {
    chars: Vec<char>,
    text: &'a str,
}

/// Tokens with their 1-based column.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>> {
    let lx = Lexer {
        chars: text.chars().collect(),
        text,
    };
    lx.run()
}

fn err(col: usize, what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("filter syntax error at column {col}: {what}"))
}

impl Lexer<'_> {
    fn run(&self) -> Result<Vec<(Tok, usize)>> {
        let c = &self.chars;
        let mut out = Vec::new();
        let mut i = 0;
        while i < c.len() {
            let col = i + 1;
            let ch = c[i];
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if let Some(op) = ["==", "!=", ">=", "<="].into_iter().find(|o| *o == two) {
                out.push((Tok::Op(if op == "==" { "=" } else { op }), col));
                i += 2;
                continue;
            }
            if let Some(op) = ["=", ">", "<", "(", ")", "[", "]", ","]
                .into_iter()
                .find(|o| o.starts_with(ch))
            {
                out.push((Tok::Op(op), col));
                i += 1;
                continue;
            }
            if ch == '"' || ch == '\'' {
                let (s, next) = self.string(i)?;
                out.push((Tok::Quoted(s), col));
                i = next;
                continue;
            }
            if ch == '`' {
                let end = c[i + 1..]
                    .iter()
                    .position(|x| *x == '`')
                    .ok_or_else(|| err(col, "unterminated `key`"))?;
                out.push((Tok::Key(c[i + 1..i + 1 + end].iter().collect()), col));
                i += end + 2;
                continue;
            }
            if ch.is_ascii_digit() || ch == '-' || ch == '+' || ch == '.' {
                let end = (i + 1..c.len())
                    .find(|&j| !(c[j].is_ascii_alphanumeric() || matches!(c[j], '.' | '+' | '-')))
                    .unwrap_or(c.len());
                let s: String = c[i..end].iter().collect();
                out.push((
                    Tok::Num(
                        number(&s)
                            .ok_or_else(|| err(col, format!("{} is not a number", quote(&s))))?,
                    ),
                    col,
                ));
                i = end;
                continue;
            }
            if ch.is_alphabetic() || ch == '_' {
                let end = (i + 1..c.len())
                    .find(|&j| {
                        !(c[j].is_alphanumeric() || matches!(c[j], '_' | '.' | ':' | '/' | '-'))
                    })
                    .unwrap_or(c.len());
                out.push((Tok::Word(c[i..end].iter().collect()), col));
                i = end;
                continue;
            }
            return Err(err(
                col,
                format!("unexpected character {}", quote(&ch.to_string())),
            ));
        }
        let _ = self.text;
        Ok(out)
    }

    /// A quoted string starting at `start`; returns it and the index after the closing quote.
    fn string(&self, start: usize) -> Result<(String, usize)> {
        let c = &self.chars;
        let q = c[start];
        let mut s = String::new();
        let mut i = start + 1;
        while i < c.len() {
            match c[i] {
                x if x == q => return Ok((s, i + 1)),
                '\\' => {
                    let e = *c
                        .get(i + 1)
                        .ok_or_else(|| err(i + 1, "unterminated escape"))?;
                    i += 2;
                    match e {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        'r' => s.push('\r'),
                        '0' => s.push('\0'),
                        'u' => {
                            let hex: String = c
                                .get(i..i + 4)
                                .map(|h| h.iter().collect())
                                .unwrap_or_default();
                            let ch = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    err(i - 1, "\\u needs four hex digits of a character")
                                })?;
                            s.push(ch);
                            i += 4;
                        }
                        other => s.push(other),
                    }
                }
                x => {
                    s.push(x);
                    i += 1;
                }
            }
        }
        Err(err(start + 1, "unterminated string"))
    }
}

fn number(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::Int(i));
    }
    let f: f64 = s.parse().ok()?;
    f.is_finite().then_some(Value::Float(f))
}

/// Deepest nesting of `NOT` and parentheses the parser follows. It recurses per level, so the
/// bound comes before any other check: deeper input is refused, never a stack overflow (the
/// engine's `max_filter_depth` then applies to what was parsed).
const MAX_NESTING: usize = 64;

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end_col: usize,
    nesting: usize,
}

/// Parses the text form (see the module docs).
pub fn parse(text: &str) -> Result<Filter> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        end_col: text.chars().count() + 1,
        nesting: 0,
    };
    if p.toks.is_empty() {
        return Err(err(1, "the filter is empty"));
    }
    let f = p.or()?;
    if let Some((t, col)) = p.toks.get(p.pos) {
        return Err(err(
            *col,
            format!("expected AND, OR or the end, found {}", show(t)),
        ));
    }
    Ok(f)
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Word(w) => quote(w),
        Tok::Quoted(s) => format!("the string {}", quote(s)),
        Tok::Key(k) => format!("`{}`", crate::error::clip(k, 40)),
        Tok::Num(v) => v.render(),
        Tok::Op(o) => quote(o),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end_col, |t| t.1)
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn op(&mut self, o: &str) -> bool {
        if self.peek()
            == Some(&Tok::Op(match o {
                "(" => "(",
                ")" => ")",
                "[" => "[",
                "]" => "]",
                "," => ",",
                _ => return false,
            }))
        {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expected(&self, what: &str) -> Error {
        match self.toks.get(self.pos) {
            Some((t, col)) => err(*col, format!("expected {what}, found {}", show(t))),
            None => err(self.end_col, format!("expected {what}, found the end")),
        }
    }

    fn or(&mut self) -> Result<Filter> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Filter> {
        let mut parts = vec![self.unary()?];
        while self.keyword("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Filter> {
        if self.nesting >= MAX_NESTING {
            return Err(err(
                self.col(),
                format!("NOT and parentheses nest more than {MAX_NESTING} deep"),
            ));
        }
        self.nesting += 1;
        let f = self.unary_inner();
        self.nesting -= 1;
        f
    }

    fn unary_inner(&mut self) -> Result<Filter> {
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.op("(") {
            let f = self.or()?;
            if !self.op(")") {
                return Err(self.expected("\")\""));
            }
            return Ok(f);
        }
        self.condition()
    }

    fn condition(&mut self) -> Result<Filter> {
        let key = match self.peek() {
            Some(Tok::Key(k)) => k.clone(),
            Some(Tok::Word(w)) if !is_keyword(w) => w.clone(),
            _ => return Err(self.expected("a metadata key")),
        };
        if key.is_empty() {
            return Err(err(self.col(), "a key must not be empty"));
        }
        self.pos += 1;
        let cond = |t: Test| Filter::cond(key.clone(), t);
        if let Some(Tok::Op(o)) = self.peek().cloned() {
            if matches!(o, "=" | "!=" | ">" | ">=" | "<" | "<=") {
                self.pos += 1;
                let v = self.value()?;
                let range = |r: Range| cond(Test::Range(r));
                return Ok(match o {
                    "=" => cond(Test::Eq(v)),
                    "!=" => Filter::Not(Box::new(cond(Test::Eq(v)))),
                    ">" => range(Range {
                        gt: Some(v),
                        ..Default::default()
                    }),
                    ">=" => range(Range {
                        gte: Some(v),
                        ..Default::default()
                    }),
                    "<" => range(Range {
                        lt: Some(v),
                        ..Default::default()
                    }),
                    _ => range(Range {
                        lte: Some(v),
                        ..Default::default()
                    }),
                });
            }
        }
        if self.keyword("exists") {
            return Ok(cond(Test::Exists));
        }
        if self.keyword("in") {
            return Ok(cond(Test::In(self.list()?)));
        }
        if self.keyword("not") {
            if !self.keyword("in") {
                return Err(self.expected("IN after NOT"));
            }
            return Ok(Filter::Not(Box::new(cond(Test::In(self.list()?)))));
        }
        if self.keyword("contains") {
            if self.keyword("any") {
                let col = self.col();
                let strings = self
                    .list()?
                    .into_iter()
                    .map(|v| match v {
                        Value::Str(s) => Ok(s),
                        _ => Err(err(col, "CONTAINS ANY takes a list of strings")),
                    })
                    .collect::<Result<_>>()?;
                return Ok(cond(Test::ContainsAny(strings)));
            }
            return match self.value()? {
                Value::Str(s) => Ok(cond(Test::Contains(s))),
                _ => Err(err(self.toks[self.pos - 1].1, "CONTAINS takes a string")),
            };
        }
        Err(self.expected("an operator (=, !=, >, >=, <, <=, IN, NOT IN, EXISTS, CONTAINS)"))
    }

    fn value(&mut self) -> Result<Value> {
        let v = match self.peek() {
            Some(Tok::Quoted(s)) => Value::Str(s.clone()),
            Some(Tok::Num(v)) => v.clone(),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(self.expected("a value (a quoted string, a number, true or false)")),
        };
        self.pos += 1;
        Ok(v)
    }

    fn list(&mut self) -> Result<Vec<Value>> {
        if !self.op("[") {
            return Err(self.expected("\"[\""));
        }
        let mut out = Vec::new();
        if self.op("]") {
            return Ok(out);
        }
        loop {
            out.push(self.value()?);
            if self.op("]") {
                return Ok(out);
            }
            if !self.op(",") {
                return Err(self.expected("\",\" or \"]\""));
            }
        }
    }
}

fn is_keyword(w: &str) -> bool {
    [
        "and", "or", "not", "in", "exists", "contains", "any", "true", "false",
    ]
    .iter()
    .any(|k| w.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_forms() {
        let f = parse("a = 1 OR b = 2 AND NOT c = 3").unwrap();
        let Filter::Or(parts) = &f else {
            panic!("{f:?}")
        };
        assert_eq!(parts.len(), 2);
        assert!(matches!(&parts[1], Filter::And(v) if matches!(v[1], Filter::Not(_))));
        let f =
            parse("`my key` != 'x' and tags contains any [\"a\"] AND n not in [1, 2.5]").unwrap();
        let Filter::And(parts) = &f else {
            panic!("{f:?}")
        };
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parse("x == \"a\\\"b\\u00e9\"").unwrap(),
            Filter::cond("x", Test::Eq(Value::Str("a\"bé".into())))
        );
        assert_eq!(
            parse("n >= -1.5e3").unwrap(),
            Filter::cond(
                "n",
                Test::Range(Range {
                    gte: Some(Value::Float(-1500.0)),
                    ..Default::default()
                })
            )
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for text in [
            format!("{}a = 1", "NOT ".repeat(16_000)),
            format!("{}a = 1{}", "(".repeat(30_000), ")".repeat(30_000)),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("nest more than 64 deep"),
                "{}",
                crate::error::clip(&e, 200)
            );
        }
        assert!(parse(&format!("{}a = 1", "NOT ".repeat(60))).is_ok());
    }

    #[test]
    fn errors_point_at_the_column() {
        let cases = [
            ("year >= ", "column 9"),
            ("year >= 2020 AND", "column 17"),
            ("year >= 2020 lang = 1", "column 14"),
            ("(a = 1", "column 7"),
            ("a = \"open", "column 5"),
            ("a ~ 1", "column 3"),
            ("a IN [1, 2", "column 11"),
            ("AND a = 1", "column 1"),
            ("", "empty"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
