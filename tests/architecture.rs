//! Keeps the layout ARCHITECTURE.md describes: top-level modules depend on each other without
//! cycles, the retrieval core never names the wire types, and no source file grows past what a
//! newcomer reads in one sitting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules of the library and the binary.
fn modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for lib.rs and main.rs).
fn owner(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Code without comment lines (doc links may name any module).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// module -> the other top-level modules its code names as `crate::<module>`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(from) = owner(&file) else { continue };
        let text = code(&file);
        for (i, _) in text.match_indices("crate::") {
            let named: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if named != from && modules.contains(&named) {
                deps.entry(from.clone()).or_default().insert(named);
            }
        }
    }
    deps
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let deps = dependencies();
    assert!(deps.len() >= 8, "parsed too little: {deps:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[i..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for next in deps.get(m).into_iter().flatten() {
            visit(next, deps, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        visit(m, &deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_retrieval_core_knows_nothing_of_any_transport() {
    let deps = dependencies();
    let transports = ["grpc", "http", "server", "client", "config"];
    for core in [
        "chunk", "store", "index", "model", "retrieve", "engine", "answer", "eval", "source",
        "jobs", "filter", "meta", "api", "service",
    ] {
        let d = deps.get(core).cloned().unwrap_or_default();
        assert!(
            transports.iter().all(|t| !d.contains(*t)),
            "{core} depends on {d:?}"
        );
    }
    // config holds every setting, the transports' included, but imports none of them.
    let d = deps.get("config").cloned().unwrap_or_default();
    assert!(
        !d.contains("grpc") && !d.contains("http") && !d.contains("server"),
        "config depends on {d:?}"
    );
    // The service layer names no wire: no tonic, no axum.
    let mut files = Vec::new();
    rust_files(&src().join("service"), &mut files);
    for f in files {
        let text = code(&f);
        assert!(
            !text.contains("tonic::") && !text.contains("axum::"),
            "{} names a transport",
            f.display()
        );
    }
}

/// The length in lines of every `fn` in `path` (from its signature to its closing brace at
/// the same indentation).
fn function_lengths(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_fn = [
            "fn ",
            "async fn ",
            "pub fn ",
            "pub async fn ",
            "pub(super) fn ",
        ]
        .iter()
        .any(|p| trimmed.starts_with(p));
        if !is_fn || trimmed.ends_with(';') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let close = " ".repeat(indent) + "}";
        let end = lines[i..]
            .iter()
            .position(|l| *l == close)
            .unwrap_or(lines.len() - i);
        let name: String = trimmed
            .split("fn ")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        out.push((name, end + 1));
    }
    out
}

/// The front doors decode, call the service layer and encode: none of their handlers (nor
/// the one generic HTTP call) grows past about 40 lines, which request semantics would need.
#[test]
fn no_handler_in_a_front_door_is_over_40_lines() {
    let src = src();
    let handlers = [
        "grpc/services.rs",
        "grpc/streaming.rs",
        "http/call.rs",
        "http/routes.rs",
    ];
    let mut checked = 0;
    for file in handlers {
        for (name, len) in function_lengths(&src.join(file)) {
            // The route table is data, one entry per route.
            if file == "http/routes.rs" && name == "routes" {
                continue;
            }
            checked += 1;
            assert!(len <= 40, "{file}: fn {name} has {len} lines");
        }
    }
    assert!(checked >= 20, "parsed too few handlers: {checked}");
}

/// ARCHITECTURE.md names files; every one it names exists (a path as written, or a bare file
/// name somewhere in the repository).
#[test]
fn every_file_architecture_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let whole = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    // The data directory's layout names files Quarry writes, not files of the repository.
    let doc = whole.split("## Data directory").next().unwrap_or("");
    let mut all = Vec::new();
    for dir in [
        "src", "tests", "benches", "crates", "eval", "scripts", "proto", "fixtures",
    ] {
        collect(&root.join(dir), &mut all);
    }
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, out);
            }
            out.push(p);
        }
    }
    let exts = [
        ".rs", ".md", ".toml", ".proto", ".sh", ".py", ".json", ".jsonl",
    ];
    let mut named = 0;
    for token in doc.split('`').skip(1).step_by(2) {
        let token = token.trim_end_matches('/');
        let looks_like_file = exts.iter().any(|e| token.ends_with(e))
            && token
                .chars()
                .all(|c| c.is_alphanumeric() || "_-./".contains(c));
        let looks_like_dir = token.starts_with("src/") || token.starts_with("crates/");
        // URL paths (`/v1/openapi.json`) are routes, and bare JSON names (`meta.json`,
        // `summary.json`) files Quarry writes at run time, not files of the repository.
        let runtime =
            !token.contains('/') && (token.ends_with(".json") || token.ends_with(".jsonl"));
        if (!looks_like_file && !looks_like_dir) || token.starts_with('/') || runtime {
            continue;
        }
        named += 1;
        let exists = if token.contains('/') {
            root.join(token).exists() || root.join("src").join(token).exists()
        } else {
            root.join(token).exists()
                || all
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == token))
        };
        assert!(
            exists,
            "ARCHITECTURE.md names `{token}`, which does not exist"
        );
    }
    assert!(named >= 40, "parsed too few file names: {named}");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("crates"),
        &mut files,
    );
    for f in files {
        let lines = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(lines <= 600, "{} has {lines} lines", f.display());
    }
}
