//! Reading BEIR-format collections: `corpus.jsonl[.gz]`, `queries.jsonl`, `qrels/<split>.tsv`.

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

    /// Query id -> text.
    pub fn queries(&self) -> Result<HashMap<String, String>> {
        let path = self.dir.join("queries.jsonl");
        let file = std::fs::File::open(&path)
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

    /// Judgments of one split (`qrels/<split>.tsv`, header optional).
    pub fn qrels(&self, split: &str) -> Result<Qrels> {
        let path = self.dir.join("qrels").join(format!("{split}.tsv"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
        let mut out: Qrels = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
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
}
