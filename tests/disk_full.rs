//! A full disk, for real: the real binary on a small tmpfs. Filling the file system past the
//! free-space watermark makes writes fail with RESOURCE_EXHAUSTED and a clear message while
//! searches go on and nothing acknowledged is lost; a job waits rather than failing; freeing
//! the space lets writes through again, without a restart.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); without it the test says so loudly and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{json, quarry, start, terminate, text};
use quarry::grpc::pb;

/// A tmpfs mounted for the test, unmounted when it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).ok()?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| Mount(at.to_path_buf()))
}

fn free(path: &Path) -> u64 {
    quarry::engine::free_disk_bytes(path).unwrap()
}

async fn upsert(url: &str, id: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::documents_client::DocumentsClient::new(channel)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "mini".into(),
            documents: vec![pb::Document {
                id: id.into(),
                text: format!("basalt columns {id}"),
                ..Default::default()
            }],
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_when_space_is_freed() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    let Some(_mount) = mount_tmpfs(&mnt, "48m") else {
        eprintln!(
            "!!! SKIPPED: cannot mount a tmpfs here (needs root): the full-disk test did not run"
        );
        return;
    };
    let data = mnt.join("data");
    let root = mnt.join("import");
    std::fs::create_dir_all(&root).unwrap();
    let config = base.path().join("quarry.toml");
    std::fs::write(&config, "[limits]\nmin_free_disk_bytes = 8388608\n").unwrap();
    let (server, url) = start(
        &data,
        &[
            "--config",
            &config.to_string_lossy(),
            "--import-root",
            &root.to_string_lossy(),
        ],
    );
    let fixture = common::fixture_dir().join("corpus.jsonl");
    let out = quarry(
        &url,
        &[
            "ingest",
            "--quiet",
            "--collection",
            "mini",
            &fixture.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    upsert(&url, "before").await.unwrap();

    // Fill the file system to 6 MiB free: under the 8 MiB watermark.
    let filler = mnt.join("filler");
    let fill = free(&mnt).saturating_sub(6 * 1024 * 1024);
    std::fs::write(&filler, vec![7u8; fill as usize]).unwrap();
    let e = upsert(&url, "during").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("min_free_disk_bytes"), "{e:?}");
    // Reads go on, and everything acknowledged is there.
    let out = quarry(
        &url,
        &[
            "search",
            "--json",
            "--collection",
            "mini",
            "--mode",
            "lexical",
            "basalt columns before",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out)["hits"][0]["document_id"], "before");
    // A job waits for space instead of failing.
    std::fs::write(root.join("late.txt"), "obsidian arrives late").unwrap();
    let out = quarry(
        &url,
        &[
            "jobs",
            "submit",
            "--collection",
            "mini",
            "--json",
            &root.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let job = json(&out)["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = json(&quarry(&url, &["jobs", "status", &job, "--json"]));
    assert_eq!(state["state"], "running", "{state}");

    // Free the space: writes go through again, no restart.
    std::fs::remove_file(&filler).unwrap();
    upsert(&url, "after").await.unwrap();
    let started = Instant::now();
    loop {
        let state = json(&quarry(&url, &["jobs", "status", &job, "--json"]));
        if state["state"] == "succeeded" {
            assert_eq!(state["counts"]["created"], 1, "{state}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = quarry(
        &url,
        &[
            "search",
            "--json",
            "--collection",
            "mini",
            "--mode",
            "lexical",
            "obsidian arrives late",
        ],
    );
    assert_eq!(json(&out)["hits"][0]["document_id"], "late.txt");
    terminate(server);
}
