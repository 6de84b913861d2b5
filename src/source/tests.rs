use std::io::Write;

use super::*;

fn limits() -> ReadLimits {
    ReadLimits {
        max_document_bytes: 1000,
        max_line_bytes: 3000,
        max_files: 100,
    }
}

fn read(spec: &SourceSpec, cursor: &Cursor) -> Vec<Item> {
    Reader::open(spec, cursor, limits(), any_path())
        .unwrap()
        .collect::<Result<Vec<_>>>()
        .unwrap()
}

fn spec(path: &Path) -> SourceSpec {
    SourceSpec {
        path: path.to_path_buf(),
        ..Default::default()
    }
}

fn summary(items: &[Item]) -> Vec<(String, std::result::Result<String, String>)> {
    items
        .iter()
        .map(|i| {
            (
                i.location.clone(),
                i.doc.as_ref().map(|d| d.id.clone()).map_err(|e| e.clone()),
            )
        })
        .collect()
}

#[test]
fn a_directory_reads_in_sorted_order_with_globs_and_hidden_entries_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::create_dir_all(p.join("drafts")).unwrap();
    std::fs::write(p.join("b.txt"), "bee").unwrap();
    std::fs::write(p.join("a.md"), "# Title A\n\nbody").unwrap();
    std::fs::write(p.join("sub/deeper/c.txt"), "sea").unwrap();
    std::fs::write(p.join("sub/skip.bin"), "x").unwrap();
    std::fs::write(p.join(".git/config.txt"), "hidden").unwrap();
    std::fs::write(p.join(".hidden.txt"), "hidden").unwrap();
    std::fs::write(p.join("drafts/d.txt"), "draft").unwrap();
    let items = read(&spec(p), &Cursor::default());
    let ids: Vec<_> = items.iter().map(|i| i.location.as_str()).collect();
    assert_eq!(ids, ["a.md", "b.txt", "drafts/d.txt", "sub/deeper/c.txt"]);
    let a = items[0].doc.as_ref().unwrap();
    assert!(a.markdown);
    assert_eq!(a.title, "Title A");
    assert!(!items[1].doc.as_ref().unwrap().markdown);

    let mut s = spec(p);
    s.include = vec!["*.txt".into(), "sub/*".into()];
    s.exclude = vec!["drafts".into()];
    let ids: Vec<_> = read(&s, &Cursor::default())
        .into_iter()
        .map(|i| i.location)
        .collect();
    assert_eq!(ids, ["b.txt", "sub/deeper/c.txt", "sub/skip.bin"]);

    s.include = vec!["[".into()];
    let err = Reader::open(&s, &Cursor::default(), limits(), any_path())
        .err()
        .unwrap();
    assert!(err.to_string().contains("include glob"), "{err}");
}

#[test]
fn a_cursor_resumes_after_the_last_file_done() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        std::fs::write(dir.path().join(name), name).unwrap();
    }
    let all = read(&spec(dir.path()), &Cursor::default());
    let rest = read(&spec(dir.path()), &all[1].cursor);
    let ids: Vec<_> = rest.iter().map(|i| i.location.as_str()).collect();
    assert_eq!(ids, ["c.txt", "d.txt"]);
    // A file added before the cursor since does not shift what is left.
    std::fs::write(dir.path().join("a0.txt"), "new").unwrap();
    let rest = read(&spec(dir.path()), &all[1].cursor);
    assert_eq!(rest.len(), 2);
}

#[test]
fn bad_files_fail_one_document_each() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("binary.txt"), b"abc\0def").unwrap();
    std::fs::write(p.join("empty.txt"), b"").unwrap();
    std::fs::write(p.join("latin1.txt"), b"caf\xe9").unwrap();
    std::fs::write(p.join("big.txt"), vec![b'x'; 1001]).unwrap();
    std::fs::write(p.join("ok.txt"), "fine").unwrap();
    let got = summary(&read(&spec(p), &Cursor::default()));
    let reason = |loc: &str| {
        got.iter()
            .find(|(l, _)| l == loc)
            .unwrap()
            .1
            .clone()
            .unwrap_err()
    };
    assert!(reason("binary.txt").contains("binary"));
    assert!(reason("empty.txt").contains("empty"));
    assert!(reason("latin1.txt").contains("UTF-8"));
    assert!(reason("latin1.txt").contains("offset 3"));
    assert!(reason("big.txt").contains("max_document_bytes"));
    assert_eq!(got.last().unwrap().1, Ok("ok.txt".to_string()));
}

#[cfg(unix)]
#[test]
fn symlinks_loop_alias_or_escape_without_harm() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/a.txt"), "plain").unwrap();
    std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/a.txt"), root.join("alias.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("outdir")).unwrap();
    let inside = root.clone();
    let access: Access = Arc::new(move |p: &Path| p.starts_with(&inside));
    let items: Vec<Item> = Reader::open(&spec(&root), &Cursor::default(), limits(), access)
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    let got = summary(&items);
    let ok: Vec<_> = got.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(ok.len(), 1, "{got:?}");
    let refused: Vec<_> = got.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(refused.len(), 2, "{got:?}");
    for (_, r) in refused {
        assert!(r.as_ref().unwrap_err().contains("outside the import roots"));
    }
    assert!(items.iter().all(|i| i
        .doc
        .as_ref()
        .map(|d| !d.text.contains("secret"))
        .unwrap_or(true)));
}

fn jsonl(dir: &Path, name: &str, lines: &[&[u8]]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    if name.ends_with(".gz") {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        bytes = gz.finish().unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn jsonl_bad_lines_fail_one_document_each() {
    let dir = tempfile::tempdir().unwrap();
    let huge = format!(r#"{{"_id": "huge", "text": "{}"}}"#, "y".repeat(5000));
    let lines: Vec<&[u8]> = vec![
        br#"{"_id": "d1", "title": "T", "text": "x", "metadata": {"k": "v", "n": 3, "f": 0.5, "b": true, "l": ["p", "q"], "o": {"z": 1}, "nil": null}}"#,
        b"",
        b"   ",
        b"not json",
        br#"{"text": "no id"}"#,
        b"[1, 2]",
        huge.as_bytes(),
        b"{\"_id\": \"bad\", \"text\": \"caf\xe9\"}",
        br#"{"_id": 7, "text": "numeric id"}"#,
        br#"{"_id": "t", "text": 5}"#,
    ];
    for name in ["corpus.jsonl", "corpus.jsonl.gz"] {
        let path = jsonl(dir.path(), name, &lines);
        let items = read(&spec(&path), &Cursor::default());
        let got = summary(&items);
        let locations: Vec<_> = got.iter().map(|(l, _)| l.as_str()).collect();
        let at = |n: usize| format!("{name}:{n}");
        assert_eq!(
            locations,
            [at(1), at(4), at(5), at(6), at(7), at(8), at(9), at(10)]
        );
        let d1 = items[0].doc.as_ref().unwrap();
        assert_eq!(d1.title, "T");
        assert_eq!(d1.metadata.get("n"), Some(&Value::Int(3)));
        assert_eq!(d1.metadata.get("f"), Some(&Value::Float(0.5)));
        assert_eq!(d1.metadata.get("b"), Some(&Value::Bool(true)));
        assert_eq!(
            d1.metadata.get("l"),
            Some(&Value::List(vec!["p".into(), "q".into()]))
        );
        assert_eq!(d1.metadata.get("o"), Some(&Value::Str(r#"{"z":1}"#.into())));
        assert!(!d1.metadata.contains_key("nil"));
        let err = |i: usize| got[i].1.clone().unwrap_err();
        assert!(err(1).contains("not JSON"));
        assert!(err(2).contains("\"_id\""));
        assert!(err(3).contains("not a JSON object"));
        assert!(err(4).contains("over the limit"), "{}", err(4));
        assert!(err(5).contains("UTF-8"));
        assert_eq!(got[6].1, Ok("7".to_string()));
        assert!(err(7).contains("not a string"));
        // Resuming after line 5 starts at line 6.
        let rest = read(&spec(&path), &items[2].cursor);
        assert_eq!(rest[0].location, at(6));
        assert_eq!(rest.len(), 5);
    }
}

use crate::meta::Value;

#[test]
fn jsonl_field_mapping_and_a_corrupt_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl(
        dir.path(),
        "docs.ndjson",
        &[br#"{"key": "a", "body": "hello", "name": "Hi", "attrs": {"lang": "en"}}"#],
    );
    let mut s = spec(&path);
    s.fields = FieldMapping::with("key", "name", "body", "attrs");
    let items = read(&s, &Cursor::default());
    let d = items[0].doc.as_ref().unwrap();
    assert_eq!((d.id.as_str(), d.title.as_str()), ("a", "Hi"));
    assert_eq!(d.text, "hello");
    assert_eq!(d.metadata.get("lang"), Some(&Value::Str("en".into())));

    // A gzip stream cut short: the lines before the damage are read, then the read fails.
    let lines: Vec<String> = (0..2000u64)
        .map(|i| {
            format!(
                r#"{{"_id": "{i}", "text": "{}"}}"#,
                i.wrapping_mul(2654435761)
            )
        })
        .collect();
    let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let good = jsonl(dir.path(), "cut.jsonl.gz", &lines);
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&good, &bytes[..bytes.len() / 2]).unwrap();
    let results: Vec<_> = Reader::open(&spec(&good), &Cursor::default(), limits(), any_path())
        .unwrap()
        .collect();
    assert!(results.last().unwrap().is_err());
    assert!(results.len() > 1);
}

#[test]
fn a_file_named_directly_is_identified_by_its_path_as_given() {
    use std::path::Path;
    for (given, id) in [
        ("README.md", "README.md"),
        ("eval/README.md", "eval/README.md"),
        ("./eval/./README.md", "eval/README.md"),
        ("eval/../README.md", "README.md"),
        ("../x/a.md", "../x/a.md"),
        ("a/../../b.md", "../b.md"),
        ("/srv/docs/../notes/a.md", "/srv/notes/a.md"),
        ("/../a.md", "/a.md"),
    ] {
        assert_eq!(super::files::path_id(Path::new(given)), id, "{given}");
    }
    // Through the reader: the id of a single file is its path, not its bare name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("eval")).unwrap();
    std::fs::write(dir.path().join("eval/README.md"), "# Eval\n\nbody").unwrap();
    let items = read(
        &spec(&dir.path().join("eval/README.md")),
        &Cursor::default(),
    );
    let id = &items[0].doc.as_ref().unwrap().id;
    assert!(id.ends_with("/eval/README.md"), "{id}");
}

#[test]
fn sources_are_checked_at_every_open() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("secret.jsonl"),
        "{\"_id\": \"s\", \"text\": \"x\"}\n",
    )
    .unwrap();
    let inside = root.path().join("c.jsonl");
    std::fs::write(&inside, "{\"_id\": \"a\", \"text\": \"x\"}\n").unwrap();
    let canonical_root = root.path().canonicalize().unwrap();
    let access: Access =
        std::sync::Arc::new(move |p: &std::path::Path| p.starts_with(&canonical_root));
    // Fine as it is; then swapped for a symlink out of the root: refused at the open.
    assert!(Reader::open(&spec(&inside), &Cursor::default(), limits(), access.clone()).is_ok());
    std::fs::remove_file(&inside).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.jsonl"), &inside).unwrap();
    let e = Reader::open(&spec(&inside), &Cursor::default(), limits(), access.clone())
        .err()
        .expect("a symlink out of the root is refused");
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    // A FIFO opens without blocking and is refused as not a regular file.
    let fifo = root.path().join("p.jsonl");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = Reader::open(&spec(&fifo), &Cursor::default(), limits(), access)
        .err()
        .expect("a FIFO is refused");
    assert!(e.to_string().contains("regular file"), "{e}");
}
