//! A JSONL corpus (optionally gzipped), one document per non-blank line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Cursor, FieldMapping, Item, ReadLimits};
use crate::engine::DocumentInput;
use crate::error::{quote, Error, Result};
use crate::meta::{Metadata, Value};

/// Counts the bytes read from the file (before decompression), for progress.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub(super) struct Jsonl {
    reader: BufReader<Box<dyn Read + Send>>,
    name: String,
    fields: FieldMapping,
    limits: ReadLimits,
    /// Lines consumed so far (blank ones included).
    lines: u64,
    read: Arc<AtomicU64>,
    size: u64,
    failed: bool,
    interrupt: Option<super::Interrupt>,
}

/// One line: its bytes, or its length when over the limit (the bytes were dropped).
enum Line {
    Text(Vec<u8>),
    TooLong(u64),
}

impl Jsonl {
    pub(super) fn open(
        path: &Path,
        fields: FieldMapping,
        cursor: &Cursor,
        limits: ReadLimits,
        access: &super::Access,
    ) -> Result<Jsonl> {
        let (file, meta) = super::open_file(path, access)?;
        let size = meta.len();
        let read = Arc::new(AtomicU64::new(0));
        let counted = Counting {
            inner: file,
            read: read.clone(),
        };
        let gz = path.to_string_lossy().to_lowercase().ends_with(".gz");
        let inner: Box<dyn Read + Send> = if gz {
            Box::new(flate2::read::GzDecoder::new(counted))
        } else {
            Box::new(counted)
        };
        let mut j = Jsonl {
            reader: BufReader::with_capacity(256 * 1024, inner),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            fields,
            limits,
            lines: 0,
            read,
            size,
            failed: false,
            interrupt: None,
        };
        while j.lines < cursor.lines {
            if j.line().map_err(|e| j.read_error(e))?.is_none() {
                break;
            }
        }
        Ok(j)
    }

    pub(super) fn set_interrupt(&mut self, interrupt: super::Interrupt) {
        self.interrupt = Some(interrupt);
    }

    pub(super) fn progress(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed).min(self.size), self.size)
    }

    fn read_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Error::Cancelled;
        }
        Error::invalid(format!(
            "reading {} failed after line {}: {e}",
            quote(&self.name),
            self.lines
        ))
    }

    /// The next line, holding at most `max_line_bytes` of it in memory.
    fn line(&mut self) -> std::io::Result<Option<Line>> {
        let max = self.limits.max_line_bytes;
        let mut buf = Vec::new();
        let mut len = 0u64;
        let mut started = false;
        let mut checked = 0u64;
        loop {
            if len >= checked + (1 << 20) {
                checked = len;
                if self.interrupt.as_ref().is_some_and(|stop| stop()) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "the read was interrupted",
                    ));
                }
            }
            let avail = self.reader.fill_buf()?;
            if avail.is_empty() {
                if !started {
                    return Ok(None);
                }
                break;
            }
            started = true;
            let (take, end) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            len += take as u64;
            if len <= max as u64 {
                buf.extend_from_slice(&avail[..take]);
            } else if !buf.is_empty() {
                buf = Vec::new();
            }
            self.reader.consume(take + end as usize);
            if end {
                break;
            }
        }
        self.lines += 1;
        Ok(Some(if len > max as u64 {
            Line::TooLong(len)
        } else {
            Line::Text(buf)
        }))
    }

    pub(super) fn next(&mut self) -> Option<Result<Item>> {
        if self.failed {
            return None;
        }
        loop {
            let line = match self.line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(self.read_error(e)));
                }
            };
            let doc = match line {
                Line::TooLong(n) => Err(format!(
                    "the line is {n} bytes, over the limit of {} bytes",
                    self.limits.max_line_bytes
                )),
                Line::Text(bytes) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.record(&bytes)
                }
            };
            return Some(Ok(Item {
                location: format!("{}:{}", self.name, self.lines),
                doc,
                cursor: Cursor {
                    lines: self.lines,
                    ..Cursor::default()
                },
            }));
        }
    }

    /// One JSON record as a document, through the field mapping.
    fn record(&self, bytes: &[u8]) -> std::result::Result<DocumentInput, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            format!(
                "the line is not valid UTF-8 (the first bad byte is at offset {})",
                e.valid_up_to()
            )
        })?;
        let v: serde_json::Value = serde_json::from_str(text.trim_end_matches('\r'))
            .map_err(|e| format!("the line is not JSON: {e}"))?;
        let serde_json::Value::Object(obj) = v else {
            return Err("the line is not a JSON object".into());
        };
        let f = &self.fields;
        let id = match obj.get(&f.id) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(format!(
                    "field {} is not a string or a number",
                    quote(&f.id)
                ))
            }
            None => return Err(format!("no {} field (the document id)", quote(&f.id))),
        };
        let string = |key: &str| -> std::result::Result<String, String> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!(
                    "document {}: field {} is not a string",
                    quote(&id),
                    quote(key)
                )),
            }
        };
        let text = string(&f.text)?;
        let title = string(&f.title)?;
        let mut metadata = Metadata::new();
        if !f.metadata.is_empty() {
            match obj.get(&f.metadata) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Object(m)) => {
                    for (k, v) in m {
                        if let Some(v) = json_value(v) {
                            metadata.insert(k.clone(), v);
                        }
                    }
                }
                Some(_) => {
                    return Err(format!(
                        "document {}: field {} is not an object",
                        quote(&id),
                        quote(&f.metadata)
                    ))
                }
            }
        }
        // `quarry export` marks markdown documents, so they chunk the same when read back.
        let markdown = obj.get("format").and_then(|v| v.as_str()) == Some("markdown");
        Ok(DocumentInput {
            id,
            text,
            title,
            metadata,
            markdown,
            source: None,
            chunks: Vec::new(),
        })
    }
}

/// A JSON metadata value, typed: strings, integers, floats, booleans and arrays of strings
/// keep their type; other arrays and objects become their JSON text; null is left out. (A
/// string under a key the collection types as a timestamp is parsed as RFC 3339 there.)
pub fn json_value(v: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::String(s) => Value::Str(s.clone()),
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().filter(|f| f.is_finite())?),
        },
        J::Array(items) if items.iter().all(|x| x.is_string()) => Value::List(
            items
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        other => Value::Str(other.to_string()),
    })
}
