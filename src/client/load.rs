//! Turning paths into documents: a text or markdown file, a directory of them (recursively), or
//! a BEIR-style `corpus.jsonl` / `corpus.jsonl.gz` (`_id`, `title`, `text`, optional `metadata`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::grpc::pb;

fn is_jsonl(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// Loads every document under `paths`, in a stable order.
pub fn load_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<pb::Document>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_files(path, &mut files, &mut Seen::default())?;
            files.sort();
            for f in files {
                out.push(load_text_file(&f, path)?);
            }
        } else if is_jsonl(path) {
            out.extend(load_jsonl(path)?);
        } else if path.is_file() {
            let base = path.parent().unwrap_or(Path::new(""));
            out.push(load_text_file(path, base)?);
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    Ok(out)
}

/// Directories and files already collected, by canonical path: symlinks that loop back, or
/// that reach the same file twice, add nothing.
#[derive(Default)]
struct Seen {
    dirs: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut Seen) -> anyhow::Result<()> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if !seen.dirs.insert(canonical) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out, seen)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "md" | "markdown")
        ) {
            // A dangling symlink has no canonical path: it is skipped like any unreadable entry.
            if let Ok(file) = path.canonicalize() {
                if seen.files.insert(file) {
                    out.push(path);
                }
            }
        }
    }
    Ok(())
}

fn load_text_file(path: &Path, base: &Path) -> anyhow::Result<pb::Document> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    let markdown = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("md" | "markdown")
    );
    let id = path
        .strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .to_string();
    let title = if markdown {
        text.lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .trim()
            .to_string()
    } else {
        String::new()
    };
    Ok(pb::Document {
        id,
        text,
        title,
        metadata: [("source".to_string(), path.to_string_lossy().to_string())]
            .into_iter()
            .collect(),
        typed_metadata: Default::default(),
        format: if markdown {
            pb::DocumentFormat::Markdown as i32
        } else {
            pb::DocumentFormat::Text as i32
        },
    })
}

/// A JSON metadata value, typed: strings, integers, floats, booleans and arrays of strings
/// keep their type; other arrays and objects become their JSON text; null is left out.
/// (A string under a key the collection types as a timestamp is parsed as RFC 3339 there.)
pub fn json_value(v: &serde_json::Value) -> Option<pb::MetadataValue> {
    use pb::metadata_value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => return None,
        J::String(s) => Kind::StringValue(s.clone()),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntValue(i),
            None => Kind::FloatValue(n.as_f64()?),
        },
        J::Array(items) if items.iter().all(|x| x.is_string()) => {
            Kind::StringList(pb::StringList {
                values: items
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            })
        }
        other => Kind::StringValue(other.to_string()),
    };
    Some(pb::MetadataValue { kind: Some(kind) })
}

/// Reads a BEIR corpus file (optionally gzipped).
pub fn load_jsonl(path: &Path) -> anyhow::Result<Vec<pb::Document>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn Read> = if path.to_string_lossy().ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let id = field("_id")
            .or_else(|| v.get("_id").and_then(|x| x.as_i64()).map(|n| n.to_string()))
            .ok_or_else(|| anyhow!("{}: line {} has no _id", path.display(), i + 1))?;
        let typed_metadata = v
            .get("metadata")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| json_value(v).map(|v| (k.clone(), v)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(pb::Document {
            id,
            text: field("text").unwrap_or_default(),
            title: field("title").unwrap_or_default(),
            metadata: Default::default(),
            typed_metadata,
            format: pb::DocumentFormat::Text as i32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_directories_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "plain").unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "# Title B\n\nbody").unwrap();
        std::fs::write(dir.path().join("skip.bin"), "x").unwrap();
        let docs = load_paths(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "a.txt");
        assert_eq!(docs[1].id, "sub/b.md");
        assert_eq!(docs[1].title, "Title B");
        assert_eq!(docs[1].format, pb::DocumentFormat::Markdown as i32);

        let jsonl = dir.path().join("corpus.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"_id": "d1", "title": "T", "text": "x", "metadata": {"k": "v", "n": 3, "f": 0.5, "b": true, "l": ["p", "q"], "o": {"z": 1}, "nil": null}}"#,
                "\n\n",
                r#"{"_id": 7, "text": "y"}"#,
                "\n"
            ),
        )
        .unwrap();
        let docs = load_paths(&[jsonl]).unwrap();
        assert_eq!(docs.len(), 2);
        // JSON types are kept: strings, integers, floats, booleans, string arrays; other
        // values as their JSON text; null left out.
        use pb::metadata_value::Kind;
        let kind = |k: &str| docs[0].typed_metadata.get(k).and_then(|v| v.kind.clone());
        assert_eq!(kind("k"), Some(Kind::StringValue("v".into())));
        assert_eq!(kind("n"), Some(Kind::IntValue(3)));
        assert_eq!(kind("f"), Some(Kind::FloatValue(0.5)));
        assert_eq!(kind("b"), Some(Kind::BoolValue(true)));
        assert_eq!(
            kind("l"),
            Some(Kind::StringList(pb::StringList {
                values: vec!["p".into(), "q".into()]
            }))
        );
        assert_eq!(kind("o"), Some(Kind::StringValue(r#"{"z":1}"#.into())));
        assert_eq!(kind("nil"), None);
        assert_eq!(docs[1].id, "7");
        assert!(load_paths(&[dir.path().join("missing")]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_and_aliases_add_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "plain").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub/a.txt"), dir.path().join("alias.txt"))
            .unwrap();
        let docs = load_paths(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(
            docs.len(),
            1,
            "{:?}",
            docs.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
    }
}
