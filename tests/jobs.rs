//! Server-side ingestion jobs through the real binary and CLI, with the real model: submit,
//! watch, status, list, cancel, sync, bad input, import roots, a job killed with SIGKILL and
//! resumed, and `quarry ingest` printing the same summary.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cli::{json, kill, quarry, start, terminate, text};

fn write_corpus(path: &Path, n: usize) {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "{{\"_id\": \"d{i}\", \"title\": \"Note {i}\", \"text\": \"Granite note number {i} about quarry slab {} and basalt.\", \"metadata\": {{\"n\": {i}}}}}\n",
            i * 7
        ));
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn jobs_through_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let docs = root.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(
        docs.join("mitochondria.md"),
        "# Mitochondria\n\nMitochondria produce ATP for the cell.",
    )
    .unwrap();
    std::fs::write(docs.join("sub/granite.txt"), "Granite is an igneous rock.").unwrap();
    std::fs::write(docs.join("binary.txt"), b"\0\x01\x02").unwrap();
    std::fs::write(docs.join("empty.txt"), b"").unwrap();
    std::fs::write(docs.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let root_arg = root.path().to_string_lossy().to_string();
    let (server, url) = start(data.path(), &["--import-root", &root_arg]);
    let docs_arg = docs.to_string_lossy().to_string();

    // Submit and wait: documents that fail are listed, and the exit code is 2.
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "notes",
            "--wait",
            "--json",
            &docs_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let job = json(&out);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counts"]["created"], 2, "{job}");
    assert_eq!(job["counts"]["failed"], 3, "{job}");
    let failures = job["failures"].as_array().unwrap();
    let reason = |loc: &str| {
        failures
            .iter()
            .find(|f| f["location"] == loc)
            .unwrap_or_else(|| panic!("{loc}: {job}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("binary.txt").contains("binary"));
    assert!(reason("empty.txt").contains("empty"));
    assert!(reason("latin1.txt").contains("UTF-8"));
    let id = job["id"].as_str().unwrap().to_string();

    // The documents are searchable in every mode.
    for mode in ["lexical", "dense", "hybrid"] {
        let out = quarry(
            &url,
            &[
                "search",
                "--json",
                "--collection",
                "notes",
                "--mode",
                mode,
                "which organelle makes ATP",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(json(&out)["hits"][0]["document_id"], "mitochondria.md");
    }

    // Status and list, as text and JSON.
    let out = quarry(&url, &["jobs", "status", &id, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["id"], id.as_str());
    let out = quarry(&url, &["jobs", "status", &id]);
    assert!(text(&out).contains("succeeded"), "{}", text(&out));
    assert!(text(&out).contains("failed binary.txt"), "{}", text(&out));
    let out = quarry(&url, &["jobs", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out)[0]["id"], id.as_str());
    let out = quarry(&url, &["jobs", "status", "424242"]);
    assert!(text(&out).contains("NotFound"), "{}", text(&out));

    // Sync: a removed file is deleted; the bad files stay failures, nothing else changes.
    std::fs::remove_file(docs.join("sub/granite.txt")).unwrap();
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "notes",
            "--sync",
            "--wait",
            "--json",
            "--exclude",
            "binary.txt",
            "--exclude",
            "empty.txt",
            "--exclude",
            "latin1.txt",
            &docs_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let synced = json(&out);
    assert_eq!(synced["counts"]["deleted"], 1, "{synced}");
    assert_eq!(synced["counts"]["unchanged"], 1, "{synced}");

    // Outside the import roots, `..`, a missing collection's source: refused clearly.
    let outside = tempfile::tempdir().unwrap();
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "notes",
            &outside.path().to_string_lossy(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("PermissionDenied"), "{}", text(&out));
    let dotdot = format!("{docs_arg}/../docs");
    let out = quarry(&url, &["jobs", "submit", "--collection", "notes", &dotdot]);
    assert!(text(&out).contains("PermissionDenied"), "{}", text(&out));

    // `quarry ingest` (client-side) prints the same summary, exit code 2 on failures.
    let out = quarry(
        &url,
        &["ingest", "--quiet", "--collection", "local", &docs_arg],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("4 documents: 1 created, 0 updated, 0 unchanged, 0 deleted, 3 failed"),
        "{}",
        text(&out)
    );
    terminate(server);

    // A server without import roots refuses server-side sources.
    let (server, url) = start(data.path(), &[]);
    let out = quarry(
        &url,
        &["jobs", "submit", "--collection", "notes", &docs_arg],
    );
    assert!(text(&out).contains("FailedPrecondition"), "{}", text(&out));
    assert!(text(&out).contains("import roots"), "{}", text(&out));
    // Finished jobs are still there after the restart.
    let out = quarry(&url, &["jobs", "list", "--json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 2);
    terminate(server);
}

#[test]
fn a_job_killed_mid_run_resumes_and_counts_every_document_once() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus.jsonl");
    let n = 1500;
    write_corpus(&corpus, n);
    let root_arg = root.path().to_string_lossy().to_string();
    let (server, url) = start(data.path(), &["--import-root", &root_arg]);
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "big",
            "--json",
            &corpus.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let id = json(&out)["id"].as_str().unwrap().to_string();
    // Kill the server once part of the corpus is in.
    let started = Instant::now();
    loop {
        let job = json(&quarry(&url, &["jobs", "status", &id, "--json"]));
        let created = job["counts"]["created"].as_u64().unwrap();
        assert!(created < n as u64, "finished before the kill: raise n");
        if created >= 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(server);

    let (server, url) = start(data.path(), &["--import-root", &root_arg]);
    let out = quarry(&url, &["jobs", "watch", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = json(&out);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["resumed"], 1, "{job}");
    // Every document exactly once: a batch redone would count as unchanged.
    assert_eq!(job["counts"]["seen"], n, "{job}");
    assert_eq!(job["counts"]["created"], n, "{job}");
    assert_eq!(job["counts"]["unchanged"], 0, "{job}");
    let out = quarry(
        &url,
        &[
            "search",
            "--json",
            "--collection",
            "big",
            "--mode",
            "lexical",
            "note number 1499",
        ],
    );
    assert_eq!(
        json(&out)["hits"][0]["document_id"],
        "d1499",
        "{}",
        text(&out)
    );

    // Cancel: a running job stops.
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "big2",
            "--json",
            &corpus.to_string_lossy(),
        ],
    );
    let id2 = json(&out)["id"].as_str().unwrap().to_string();
    let out = quarry(&url, &["jobs", "cancel", &id2, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = quarry(&url, &["jobs", "watch", &id2, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let job = json(&out);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["counts"]["seen"].as_u64().unwrap() < n as u64, "{job}");
    terminate(server);
}

#[test]
fn export_reads_back_unchanged_through_ingest_and_jobs() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let notes = root.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(
        notes.join("guide.md"),
        "# Guide\n\n## Part one\n\nGranite and basalt.\n\n## Part two\n\n- a list\n- of things\n",
    )
    .unwrap();
    let typed = root.path().join("typed.jsonl");
    std::fs::write(
        &typed,
        "{\"_id\": \"t1\", \"title\": \"Typed\", \"text\": \"café ünïcode \\\"quoted\\\"\\nnew line\", \"metadata\": {\"year\": 2021, \"score\": 0.25, \"ok\": true, \"tags\": [\"a\", \"b\"], \"lang\": \"fr\"}}\n",
    )
    .unwrap();
    let root_arg = root.path().to_string_lossy().to_string();
    let (server, url) = start(data.path(), &["--import-root", &root_arg]);
    let fixture = common::fixture_dir().join("corpus.jsonl");
    for path in [fixture.as_path(), notes.as_path(), typed.as_path()] {
        let out = quarry(
            &url,
            &[
                "ingest",
                "--quiet",
                "--collection",
                "orig",
                &path.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let export = |collection: &str, file: &str| -> Vec<u8> {
        let path = root.path().join(file);
        let out = quarry(
            &url,
            &[
                "export",
                "--collection",
                collection,
                "--out",
                &path.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let bytes = std::fs::read(&path).unwrap();
        if file.ends_with(".gz") {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
                .unwrap();
            plain
        } else {
            bytes
        }
    };
    let first = export("orig", "orig.jsonl.gz");
    assert_eq!(
        String::from_utf8_lossy(&first).lines().count(),
        common::fixture_docs().len() + 2
    );
    let exported = root
        .path()
        .join("orig.jsonl.gz")
        .to_string_lossy()
        .to_string();
    let out = quarry(
        &url,
        &["ingest", "--quiet", "--collection", "copy", &exported],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "copy2",
            "--wait",
            &exported,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The same documents, byte for byte: text, title, typed metadata and markdown format.
    assert_eq!(export("copy", "copy.jsonl"), first);
    assert_eq!(export("copy2", "copy2.jsonl"), first);
    // And the same content hashes: ingesting the export into the original changes nothing.
    let out = quarry(
        &url,
        &["ingest", "--quiet", "--collection", "orig", &exported],
    );
    assert!(
        text(&out).contains(&format!("{} unchanged", common::fixture_docs().len() + 2)),
        "{}",
        text(&out)
    );
    terminate(server);
}
