//! Reading BEIR-format collections: `corpus.jsonl[.gz]`, `queries.jsonl`, `qrels/<split>.tsv`;
//! and judgments in TREC's formats (`qid<TAB>text` topics, `qid 0 docid grade` qrels), for
//! eval sets uploaded without a BEIR directory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::eval::metrics::Qrels;

/// A BEIR collection on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset> {
        let d = Dataset {
            dir: dir.to_path_buf(),
        };
        d.corpus_path()?;
        Ok(d)
    }

    /// `corpus.jsonl`, else `corpus.jsonl.gz`.
    pub fn corpus_path(&self) -> Result<PathBuf> {
        ["corpus.jsonl", "corpus.jsonl.gz"]
            .iter()
            .map(|n| self.dir.join(n))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{} has no corpus.jsonl or corpus.jsonl.gz",
                    self.dir.display()
                ))
            })
    }

    /// A directory of judgments only (`queries.jsonl`, `qrels/`), without a corpus.
    pub fn judgments_only(dir: &Path) -> Dataset {
        Dataset {
            dir: dir.to_path_buf(),
        }
    }

    /// The splits `qrels/` holds (`<split>.tsv`), sorted.
    pub fn splits(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("qrels");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", dir.display())))?;
        let mut out = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(split) = name.strip_suffix(".tsv") {
                out.push(split.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Query id -> text.
    pub fn queries(&self) -> Result<HashMap<String, String>> {
        queries_jsonl(&self.dir.join("queries.jsonl"))
    }

    /// Judgments of one split (`qrels/<split>.tsv`, header optional).
    pub fn qrels(&self, split: &str) -> Result<Qrels> {
        qrels_file(&self.dir.join("qrels").join(format!("{split}.tsv")))
    }
}

/// BEIR queries (`{"_id": ..., "text": ...}` per line): query id -> text.
pub fn queries_jsonl(path: &Path) -> Result<HashMap<String, String>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::invalid(format!("cannot open {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::invalid(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        let id = match &v["_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(Error::invalid(format!(
                    "{}: line {} has no _id",
                    path.display(),
                    i + 1
                )))
            }
        };
        out.insert(id, v["text"].as_str().unwrap_or_default().to_string());
    }
    Ok(out)
}

/// TREC topics as `qid<TAB>text` lines: query id -> text.
pub fn queries_tsv(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (id, q) = line.split_once('\t').ok_or_else(|| {
            Error::invalid(format!(
                "{}: line {}: expected qid<TAB>text",
                path.display(),
                i + 1
            ))
        })?;
        out.insert(id.trim().to_string(), q.trim().to_string());
    }
    Ok(out)
}

/// Judgments: BEIR's `qid<TAB>docid<TAB>grade` (header optional) or TREC's
/// `qid iteration docid grade` (whitespace-separated), told apart by the column count.
pub fn qrels_file(path: &Path) -> Result<Qrels> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut out: Qrels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = match line.split('\t').count() {
            3 => line.split('\t').collect(),
            _ => {
                let c: Vec<&str> = line.split_whitespace().collect();
                match c.len() {
                    4 => vec![c[0], c[2], c[3]],
                    _ => c,
                }
            }
        };
        if cols.len() < 3 || (i == 0 && cols[2].trim().parse::<i32>().is_err()) {
            continue;
        }
        let grade: i32 = cols[2].trim().parse().map_err(|_| {
            Error::invalid(format!("{}: line {}: bad grade", path.display(), i + 1))
        })?;
        out.entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), grade);
    }
    Ok(out)
}

/// The judged queries with their texts, sorted by id; INVALID_ARGUMENT for a judged query
/// without a text.
pub fn join(
    queries: &HashMap<String, String>,
    qrels: &Qrels,
) -> Result<Vec<crate::eval::run::EvalQuery>> {
    let mut ids: Vec<&String> = qrels.keys().collect();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let text = queries
                .get(id)
                .ok_or_else(|| Error::invalid(format!("query {id:?} is judged but has no text")))?;
            Ok(crate::eval::run::EvalQuery {
                id: id.clone(),
                text: text.clone(),
                judgments: qrels[id].clone(),
            })
        })
        .collect()
}
