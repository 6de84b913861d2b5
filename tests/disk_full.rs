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
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
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

/// The disk running out under sled itself (the watermark off: say, another process filled it
/// faster than the check). Writes fail with RESOURCE_EXHAUSTED (never INTERNAL), health turns
/// NOT_SERVING, and what was acknowledged stays readable. sled keeps such an error until it is
/// reopened: once space is freed, the server reopens its data directory in place and serves
/// writes again, with everything acknowledged before, during and after the failure there,
/// also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sled_is_reopened_in_place_once_space_is_freed() {
    use std::io::Write;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let Some(_mount) = mount_tmpfs(&mnt, "12m") else {
        eprintln!("!!! SKIPPED: cannot mount a tmpfs here (needs root): the sled full-disk test did not run");
        return;
    };
    let mut config = common::test_config(&mnt.join("data"));
    config.limits.min_free_disk_bytes = 0;
    let server = common::TestServer::start(config.clone()).await;
    server.create_collection("c").await;
    let docs = || async { pb::documents_client::DocumentsClient::new(server.channel().await) };
    let mut acknowledged = vec!["kept".to_string()];
    docs()
        .await
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: vec![common::doc("kept", "kangaroos are marsupials")],
        })
        .await
        .unwrap();
    let health = || async {
        HealthClient::new(server.channel().await)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let wait_for = |want: ServingStatus| async move {
        let started = Instant::now();
        loop {
            let now = health().await;
            if now == want as i32 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "health still {now}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(health().await, ServingStatus::Serving as i32);

    // Fill the file system.
    let filler_path = mnt.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let block = vec![0u8; 256 * 1024];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
    drop(filler);

    let mut refused = None;
    for i in 0..40 {
        let id = format!("big{i}");
        let r = docs()
            .await
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: "c".into(),
                documents: vec![common::doc(&id, &"storage filler text. ".repeat(800))],
            })
            .await;
        match r {
            Ok(_) => acknowledged.push(id),
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let s = refused.expect("a write on a full disk was refused");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{}", s.message());
    assert!(s.message().contains("disk is full"), "{}", s.message());
    wait_for(ServingStatus::NotServing).await;
    // What was acknowledged is still readable and searchable.
    let got = docs()
        .await
        .get_documents(pb::GetDocumentsRequest {
            collection: "c".into(),
            ids: vec!["kept".into()],
            include_chunks: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.documents.len(), 1);
    let hits = pb::search_client::SearchClient::new(server.channel().await)
        .search(pb::SearchRequest {
            collection: "c".into(),
            query: "kangaroo".into(),
            top_k: 10,
            mode: pb::SearchMode::Lexical as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.hits[0].document_id, "kept");
    // Still failing while the disk stays full: nothing is reopened yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(health().await, ServingStatus::NotServing as i32);
    assert_eq!(server.reopens(), 0);

    // Free the space: the server reopens its data directory by itself and serves writes.
    std::fs::remove_file(&filler_path).unwrap();
    let freed = Instant::now();
    wait_for(ServingStatus::Serving).await;
    eprintln!(
        "SERVING again {} ms after the space was freed",
        freed.elapsed().as_millis()
    );
    assert_eq!(
        server.reopens(),
        1,
        "the data directory was reopened in place"
    );
    docs()
        .await
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: vec![common::doc("after", "wombats dig burrows")],
        })
        .await
        .unwrap();
    acknowledged.push("after".into());
    let check = |server: common::TestServer, acknowledged: Vec<String>| async move {
        for mode in [
            pb::SearchMode::Lexical,
            pb::SearchMode::Dense,
            pb::SearchMode::Hybrid,
        ] {
            let hits = pb::search_client::SearchClient::new(server.channel().await)
                .search(pb::SearchRequest {
                    collection: "c".into(),
                    query: "wombats dig burrows".into(),
                    top_k: 10,
                    mode: mode as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(hits.hits[0].document_id, "after", "{mode:?}");
        }
        let got = pb::documents_client::DocumentsClient::new(server.channel().await)
            .get_documents(pb::GetDocumentsRequest {
                collection: "c".into(),
                ids: acknowledged.clone(),
                include_chunks: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.missing.is_empty(), "lost: {:?}", got.missing);
        assert_eq!(got.documents.len(), acknowledged.len());
        server
    };
    let server = check(server, acknowledged.clone()).await;
    server.stop().await;
    // And after a restart.
    let server = common::TestServer::start(config).await;
    let server = check(server, acknowledged).await;
    server.stop().await;
}
