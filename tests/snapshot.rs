//! Snapshots through the real binary and CLI with the real model: create online, restore
//! online under a new name and offline into a fresh data directory; the restored collections
//! answer every mode exactly as the original (same hits, same scores), without re-embedding.

mod common;

use std::process::Command;

use common::cli::{json, quarry, start, terminate, text};

const QUERIES: &[&str] = &[
    "which organelle produces ATP",
    "how do volcanoes form",
    "photosynthesis light energy",
];

/// Every mode's hits (ids and scores) for the queries.
fn answers(url: &str, collection: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for mode in ["lexical", "dense", "hybrid"] {
        for q in QUERIES {
            let r = quarry(
                url,
                &[
                    "search",
                    "--json",
                    "--collection",
                    collection,
                    "--mode",
                    mode,
                    q,
                ],
            );
            assert!(r.status.success(), "{}", text(&r));
            let hits: Vec<serde_json::Value> = json(&r)["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| serde_json::json!([h["document_id"], h["score"]]))
                .collect();
            assert!(!hits.is_empty());
            out.push(serde_json::Value::Array(hits));
        }
    }
    out
}

#[test]
fn snapshots_restore_online_and_offline_with_identical_answers() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (server, url) = start(data.path(), &[]);
    let fixture = common::fixture_dir().join("corpus.jsonl");
    let r = quarry(
        &url,
        &[
            "ingest",
            "--quiet",
            "--collection",
            "mini",
            &fixture.to_string_lossy(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    let before = answers(&url, "mini");
    let file = work.path().join("mini.snapshot");
    let r = quarry(
        &url,
        &[
            "snapshot",
            "create",
            "--collection",
            "mini",
            "--out",
            &file.to_string_lossy(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("27 documents"), "{}", text(&r));

    // Online, under a new name; the old name is taken.
    let r = quarry(
        &url,
        &[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            "--as",
            "mini2",
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("restored mini2: 27 documents"),
        "{}",
        text(&r)
    );
    assert_eq!(answers(&url, "mini2"), before);
    let r = quarry(&url, &["snapshot", "restore", &file.to_string_lossy()]);
    assert!(text(&r).contains("AlreadyExists"), "{}", text(&r));
    // The restored collection takes writes; the original is untouched.
    let r = quarry(
        &url,
        &[
            "ingest",
            "--quiet",
            "--collection",
            "mini2",
            &fixture.to_string_lossy(),
        ],
    );
    assert!(text(&r).contains("27 unchanged"), "{}", text(&r));
    terminate(server);

    // Offline, into a fresh data directory, then served.
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(fresh.path())
        .env("QUARRY_MODELS_DIR", common::provision())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (server, url) = start(fresh.path(), &[]);
    assert_eq!(answers(&url, "mini"), before);
    terminate(server);
}
