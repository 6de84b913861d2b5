//! The server's boundaries, tried as a hostile tenant, a hostile peer and a hostile archive
//! would, through the real server and model over gRPC:
//! - a scoped key reaches only its collections in every call (snapshots of "all", restores
//!   under other names, other collections' jobs, whose errors must not name them);
//! - unauthenticated traffic costs O(1) and leaves no state (no metrics series per path, no
//!   admission slots);
//! - an archive is checked entry by entry, record by record, all or nothing, with clean
//!   INVALID_ARGUMENT errors, and the upload is refused at the free-disk watermark before a
//!   byte is spooled;
//! - DeleteByFilter refuses a tree that restricts nothing.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{doc, keyed, test_config, TestServer};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;
use tonic::{Code, Status};

use pb::admin_client::AdminClient;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::jobs_client::JobsClient;
use pb::search_client::SearchClient;

const ADMIN: &str = "admin-0123456789abcdef";
const TENANT: &str = "tenant-0123456789abcdef";

struct Setup {
    server: TestServer,
    data: tempfile::TempDir,
    root: tempfile::TempDir,
}

/// A server with an admin key and a scoped admin key for `ca`, collections `ca` and `cb`
/// with a document each, and an import root.
async fn setup(admission: Option<quarry::grpc::observe::AdmissionSettings>) -> Setup {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.import_roots = vec![root.path().to_path_buf()];
    if let Some(a) = admission {
        config.admission = a;
    }
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: None,
        keys: vec![ScopedKey {
            key: TENANT.into(),
            role: Role::Admin,
            collections: vec!["ca".into()],
            name: "tenant".into(),
        }],
    };
    let server = TestServer::start(config).await;
    let channel = server.channel().await;
    for (name, text) in [
        ("ca", "granite quarry slabs"),
        ("cb", "secret basalt ledger"),
    ] {
        CollectionsClient::new(channel.clone())
            .create_collection(keyed(
                pb::CreateCollectionRequest {
                    name: name.into(),
                    config: None,
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
        DocumentsClient::new(channel.clone())
            .upsert_documents(keyed(
                pb::UpsertDocumentsRequest {
                    collection: name.into(),
                    documents: vec![doc(&format!("{name}-1"), text)],
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }
    Setup { server, data, root }
}

async fn snapshot(
    channel: tonic::transport::Channel,
    names: &[&str],
    key: &str,
) -> Result<Vec<u8>, Status> {
    let mut stream = AdminClient::new(channel)
        .create_snapshot(keyed(
            pb::CreateSnapshotRequest {
                collections: names.iter().map(|n| n.to_string()).collect(),
            },
            Some(key),
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend(chunk.data);
    }
    Ok(out)
}

async fn restore(
    channel: tonic::transport::Channel,
    archive: Vec<u8>,
    new_name: &str,
    key: &str,
) -> Result<Vec<String>, Status> {
    let mut messages = vec![pb::RestoreSnapshotRequest {
        collection: String::new(),
        new_name: new_name.into(),
        data: Vec::new(),
    }];
    for chunk in archive.chunks(1 << 20) {
        messages.push(pb::RestoreSnapshotRequest {
            data: chunk.to_vec(),
            ..Default::default()
        });
    }
    let reply = AdminClient::new(channel)
        .restore_snapshot(keyed(tokio_stream::iter(messages), Some(key)))
        .await?
        .into_inner();
    Ok(reply.collections.into_iter().map(|c| c.name).collect())
}

async fn collection_names(channel: tonic::transport::Channel) -> Vec<String> {
    let mut names: Vec<String> = CollectionsClient::new(channel)
        .list_collections(keyed(pb::ListCollectionsRequest {}, Some(ADMIN)))
        .await
        .unwrap()
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    names
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, what: &str) -> Status {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {}", e.message());
    e
}

#[tokio::test]
async fn a_scoped_key_reaches_only_its_collections_in_every_call() {
    let s = setup(None).await;
    let channel = s.server.channel().await;

    // Snapshots: "every collection" is refused to a scoped key, and so is naming another.
    let e = expect_code(
        snapshot(channel.clone(), &[], TENANT).await,
        Code::PermissionDenied,
        "snapshot of all",
    );
    assert!(
        e.message().contains("name the collections"),
        "{}",
        e.message()
    );
    expect_code(
        snapshot(channel.clone(), &["ca", "cb"], TENANT).await,
        Code::PermissionDenied,
        "snapshot naming cb",
    );
    let own = snapshot(channel.clone(), &["ca"], TENANT).await.unwrap();
    assert!(!own.is_empty());

    // Restores: not under a name outside the scope, and nothing is left behind.
    let before = collection_names(channel.clone()).await;
    expect_code(
        restore(channel.clone(), own.clone(), "elsewhere", TENANT).await,
        Code::PermissionDenied,
        "restore under another name",
    );
    // An archive of every collection restores cb too: refused as a whole.
    let all = snapshot(channel.clone(), &[], ADMIN).await.unwrap();
    CollectionsClient::new(channel.clone())
        .delete_collection(keyed(
            pb::DeleteCollectionRequest { name: "ca".into() },
            Some(TENANT),
        ))
        .await
        .unwrap();
    CollectionsClient::new(channel.clone())
        .delete_collection(keyed(
            pb::DeleteCollectionRequest { name: "cb".into() },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    expect_code(
        restore(channel.clone(), all.clone(), "", TENANT).await,
        Code::PermissionDenied,
        "restore of an archive holding cb",
    );
    assert!(collection_names(channel.clone()).await.is_empty());
    // Its own collection, under its own name, is fine.
    let restored = restore(channel.clone(), own, "", TENANT).await.unwrap();
    assert_eq!(restored, vec!["ca".to_string()]);
    restore(channel.clone(), all, "", ADMIN)
        .await
        .expect_err("ca exists now");
    let mut b = before.clone();
    b.retain(|n| n == "ca");
    assert_eq!(collection_names(channel.clone()).await, b);
}

#[tokio::test]
async fn jobs_of_other_collections_are_not_found_word_for_word() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    let corpus = s.root.path().join("cb.jsonl");
    std::fs::write(&corpus, "{\"_id\": \"x\", \"text\": \"basalt\"}\n").unwrap();
    let job = JobsClient::new(channel.clone())
        .submit_ingest(keyed(
            pb::SubmitIngestRequest {
                collection: "cb".into(),
                source: Some(pb::IngestSource {
                    path: corpus.to_string_lossy().into(),
                    ..Default::default()
                }),
                sync: false,
                switch_alias: String::new(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    let missing = "987654321";
    let mut jobs = JobsClient::new(channel.clone());
    let absent = expect_code(
        jobs.get_job(keyed(
            pb::GetJobRequest { id: missing.into() },
            Some(TENANT),
        ))
        .await,
        Code::NotFound,
        "absent job",
    );
    for id in [job.id.clone()] {
        let get = expect_code(
            jobs.get_job(keyed(pb::GetJobRequest { id: id.clone() }, Some(TENANT)))
                .await,
            Code::NotFound,
            "GetJob",
        );
        // The same words as for a job that does not exist, and no collection name.
        assert_eq!(
            get.message().replace(&id, "N"),
            absent.message().replace(missing, "N")
        );
        assert!(!get.message().contains("cb"), "{}", get.message());
        let cancel = expect_code(
            jobs.cancel_job(keyed(pb::CancelJobRequest { id: id.clone() }, Some(TENANT)))
                .await,
            Code::NotFound,
            "CancelJob",
        );
        assert!(!cancel.message().contains("cb"));
        let watch = expect_code(
            jobs.watch_job(keyed(pb::WatchJobRequest { id: id.clone() }, Some(TENANT)))
                .await,
            Code::NotFound,
            "WatchJob",
        );
        assert!(!watch.message().contains("cb"));
    }
    let listed = jobs
        .list_jobs(keyed(pb::ListJobsRequest::default(), Some(TENANT)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
    // The owner still sees it.
    jobs.get_job(keyed(pb::GetJobRequest { id: job.id }, Some(ADMIN)))
        .await
        .unwrap();
}

/// A unary call to any path, as a hostile client would make it.
async fn call_path(
    channel: tonic::transport::Channel,
    path: &str,
    key: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<pb::SearchRequest, pb::SearchResponse>::default();
    let path: http::uri::PathAndQuery = path.parse().unwrap();
    grpc.unary(
        keyed(
            pb::SearchRequest {
                collection: "ca".into(),
                query: "granite".into(),
                ..Default::default()
            },
            key,
        ),
        path,
        codec,
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn unauthenticated_traffic_leaves_no_trace() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    let series = || quarry::metrics::global().grpc_requests.series();
    // Warm up the known labels first.
    call_path(channel.clone(), "/quarry.v1.Search/Search", None)
        .await
        .unwrap_err();
    let before = series();
    for i in 0..2000 {
        let e = call_path(
            channel.clone(),
            &format!("/evil.Service{i}/Method{i}"),
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e.code(), Code::Unimplemented | Code::Unauthenticated),
            "{e:?}"
        );
        let e = call_path(channel.clone(), "/quarry.v1.Search/Search", None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let after = series();
    // Two new series at most (unknown/UNIMPLEMENTED, Search/UNAUTHENTICATED); other tests of
    // this binary share the registry, so allow a few of theirs.
    assert!(after <= before + 40, "series grew from {before} to {after}");
    let text = quarry::metrics::render();
    assert!(
        !text.contains("evil.Service"),
        "unknown paths became labels"
    );
}

#[tokio::test]
async fn callers_without_a_key_never_take_admission_slots() {
    let mut admission = quarry::grpc::observe::AdmissionSettings::default();
    admission.read.in_flight = 1;
    admission.read.queue = 0;
    let s = setup(Some(admission)).await;
    let channel = s.server.channel().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..16 {
        let (channel, stop) = (channel.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let e = call_path(channel.clone(), "/quarry.v1.Search/Search", None)
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
                n += 1;
            }
            n
        }));
    }
    let mut search = SearchClient::new(channel.clone());
    for _ in 0..40 {
        search
            .search(keyed(
                pb::SearchRequest {
                    collection: "ca".into(),
                    query: "granite".into(),
                    mode: pb::SearchMode::Lexical as i32,
                    ..Default::default()
                },
                Some(TENANT),
            ))
            .await
            .expect("a keyed search is never refused for the flood's sake");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for f in flood {
        refused += f.await.unwrap();
    }
    assert!(refused > 0);
}

#[tokio::test]
async fn delete_by_filter_refuses_a_tree_that_restricts_nothing() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    let everything = pb::Filter {
        kind: Some(pb::filter::Kind::And(pb::FilterList {
            filters: vec![pb::Filter {
                kind: Some(pb::filter::Kind::And(pb::FilterList { filters: vec![] })),
            }],
        })),
    };
    let mut docs = DocumentsClient::new(channel.clone());
    let e = expect_code(
        docs.delete_by_filter(keyed(
            pb::DeleteByFilterRequest {
                collection: "ca".into(),
                r#where: Some(everything.clone()),
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await,
        Code::InvalidArgument,
        "and: [and: []]",
    );
    assert!(e.message().contains("restricts"), "{}", e.message());
    let listed = docs
        .list_documents(keyed(
            pb::ListDocumentsRequest {
                collection: "ca".into(),
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.documents.len(), 1);
    // Asked for explicitly, it deletes everything.
    let done = docs
        .delete_by_filter(keyed(
            pb::DeleteByFilterRequest {
                collection: "ca".into(),
                r#where: Some(everything),
                all: true,
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.deleted, 1);
}

// ---- archives -------------------------------------------------------------------------

/// The entries of a tar archive, in order.
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(archive);
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        // The name written raw, as a hostile packer would (the builder refuses `..`).
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `records.bin` as (tag, key, value) triples (format 2: each with a CRC-32 after it).
fn records(data: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
    while at < data.len() {
        let tag = data[at];
        let kl = u32_at(at + 1);
        let k = data[at + 5..at + 5 + kl].to_vec();
        let vl = u32_at(at + 5 + kl);
        let v = data[at + 9 + kl..at + 9 + kl + vl].to_vec();
        at += 9 + kl + vl + 4;
        out.push((tag, k, v));
    }
    out
}

fn unrecords(records: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, k, v) in records {
        out.push(*tag);
        out.extend((k.len() as u32).to_le_bytes());
        out.extend(k);
        out.extend((v.len() as u32).to_le_bytes());
        out.extend(v);
        let mut h = crc32fast::Hasher::new();
        h.update(&[*tag]);
        h.update(&(k.len() as u32).to_le_bytes());
        h.update(k);
        h.update(v);
        out.extend(h.finalize().to_le_bytes());
    }
    out
}

/// Replaces `collections/0/records.bin` and fixes the manifest's checksum of it, so only the
/// record checks can catch what changed.
fn with_records(
    base: &[(String, Vec<u8>)],
    edit: impl Fn(&mut Vec<(u8, Vec<u8>, Vec<u8>)>),
) -> Vec<u8> {
    let mut e = base.to_vec();
    let i = e
        .iter()
        .position(|(p, _)| p == "collections/0/records.bin")
        .unwrap();
    let mut recs = records(&e[i].1);
    edit(&mut recs);
    e[i].1 = unrecords(&recs);
    let mut manifest: serde_json::Value = serde_json::from_slice(&e[0].1).unwrap();
    manifest["collections"][0]["files"]["records.bin"] = sha256_hex(&e[i].1).into();
    e[0].1 = serde_json::to_vec(&manifest).unwrap();
    pack(&e)
}

fn with_manifest(base: &[(String, Vec<u8>)], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut e = base.to_vec();
    let mut manifest: serde_json::Value = serde_json::from_slice(&e[0].1).unwrap();
    edit(&mut manifest);
    e[0].1 = serde_json::to_vec(&manifest).unwrap();
    pack(&e)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                n += dir_bytes(&p);
            } else {
                use std::os::unix::fs::MetadataExt;
                n += m.blocks() * 512;
            }
        }
    }
    n
}

#[tokio::test]
async fn hostile_archives_are_refused_cleanly_and_leave_nothing() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    // Server records travel with the collection (format 3): an eval split and a proposal.
    let mut eval = pb::eval_client::EvalClient::new(channel.clone());
    eval.put_eval_split(keyed(
        pb::PutEvalSplitRequest {
            collection: "ca".into(),
            split: "test".into(),
            queries: vec![pb::EvalQuery {
                id: "q1".into(),
                text: "granite".into(),
                judgments: [("ca-1".to_string(), 1)].into(),
            }],
        },
        Some(ADMIN),
    ))
    .await
    .unwrap();
    let proposal = pb::SearchSettings {
        candidates: 42,
        ..Default::default()
    };
    eval.propose_settings(keyed(
        pb::ProposeSettingsRequest {
            collection: "ca".into(),
            settings: Some(proposal),
        },
        Some(ADMIN),
    ))
    .await
    .unwrap();
    let real = snapshot(channel.clone(), &["ca"], ADMIN).await.unwrap();
    let base = entries(&real);
    assert_eq!(base[0].0, "manifest.json");
    let collections_dir = s.data.path().join("collections");
    let dirs_before = std::fs::read_dir(&collections_dir).unwrap().count();
    let bytes_before = dir_bytes(s.data.path());

    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };

    // A header whose name holds a newline and a forged log line.
    let forged = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(base[0].1.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "manifest.json", base[0].1.as_slice())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        let name = b"collections/0/x\n2026-12-03T00:00:00Z ERROR forged line";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(4);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"abcd"[..]).unwrap();
        b.into_inner().unwrap()
    };
    // A GNU sparse entry claiming 192 MiB.
    let sparse = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(base[0].1.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "manifest.json", base[0].1.as_slice())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_path("collections/0/dense/graph.hnsw").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(512);
        if let Some(g) = h.as_gnu_mut() {
            g.set_real_size(192 << 20);
            g.sparse[0].set_offset((192 << 20) - 512);
            g.sparse[0].set_length(512);
        }
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &[7u8; 512][..]).unwrap();
        b.into_inner().unwrap()
    };
    let bad_checksum = {
        let mut a = real.clone();
        // The second header (after the manifest's header and its padded data).
        let at = 512 + base[0].1.len().div_ceil(512) * 512;
        a[at + 148] ^= 0x55;
        a
    };
    let flipped_record = {
        let mut e = base.clone();
        let i = e
            .iter()
            .position(|(p, _)| p.ends_with("records.bin"))
            .unwrap();
        let mid = e[i].1.len() / 2;
        e[i].1[mid] ^= 0x20;
        pack(&e)
    };

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random(130 * 1024)),
        ("a cut archive", real[..real.len() / 2].to_vec()),
        ("a bad header checksum", bad_checksum),
        ("a forged header name", forged),
        ("a GNU sparse entry", sparse),
        ("a flipped byte in the records", flipped_record),
        (
            "one collection named twice",
            with_manifest(&base, |m| {
                let c = m["collections"][0].clone();
                m["collections"].as_array_mut().unwrap().push(c);
            }),
        ),
        (
            "chunk_tokens = 0",
            with_manifest(&base, |m| {
                m["collections"][0]["record"]["chunk_tokens"] = 0.into();
            }),
        ),
        (
            "an impossible id",
            with_manifest(&base, |m| {
                m["collections"][0]["max_id"] = u64::MAX.into();
            }),
        ),
        (
            "a corrupted document record (checksums fixed)",
            with_records(&base, |r| {
                let d = r.iter_mut().find(|(t, _, _)| *t == 1).unwrap();
                d.2 = b"{\"id\": 7".to_vec();
            }),
        ),
        (
            "a vector of the wrong dimension (checksums fixed)",
            with_records(&base, |r| {
                let v = r.iter_mut().find(|(t, _, _)| *t == 4).unwrap();
                v.2.truncate(8);
            }),
        ),
        (
            "a chunk no document lists (checksums fixed)",
            with_records(&base, |r| {
                let c = r.iter().find(|(t, _, _)| *t == 3).unwrap().clone();
                let mut k = c.1.clone();
                k[7] ^= 0x7f;
                r.push((3, k, c.2));
                r.sort_by_key(|(t, _, _)| *t);
            }),
        ),
        (
            "a metadata key over the key limit (checksums fixed)",
            with_records(&base, |r| {
                r.push((5, vec![b'k'; 1000], b"\"string\"".to_vec()));
            }),
        ),
        (
            "search settings that do not decode (checksums fixed)",
            with_records(&base, |r| {
                let p = r
                    .iter_mut()
                    .find(|(t, k, _)| *t == 6 && k.starts_with(b"search\0"))
                    .unwrap();
                p.2 = b"{\"fusion\": 7".to_vec();
            }),
        ),
        (
            "search settings over max_top_k (checksums fixed)",
            with_records(&base, |r| {
                let p = r
                    .iter_mut()
                    .find(|(t, k, _)| *t == 6 && k.starts_with(b"search\0"))
                    .unwrap();
                let mut v: serde_json::Value = serde_json::from_slice(&p.2).unwrap();
                v["candidates"] = 1_000_000_000u64.into();
                p.2 = serde_json::to_vec(&v).unwrap();
            }),
        ),
        (
            "an eval split whose manifest counts lie (checksums fixed)",
            with_records(&base, |r| {
                let p = r
                    .iter_mut()
                    .find(|(t, k, _)| *t == 6 && k.starts_with(b"evalset\0"))
                    .unwrap();
                let mut v: serde_json::Value = serde_json::from_slice(&p.2).unwrap();
                v["queries"] = 5.into();
                p.2 = serde_json::to_vec(&v).unwrap();
            }),
        ),
        (
            "an eval split without its pieces (checksums fixed)",
            with_records(&base, |r| {
                r.retain(|(t, k, _)| !(*t == 6 && k.starts_with(b"evalpiece/")));
            }),
        ),
        (
            "a server record of an unknown kind (checksums fixed)",
            with_records(&base, |r| {
                r.push((6, b"keys\0admin".to_vec(), b"secret".to_vec()));
            }),
        ),
        (
            "a server record key without its separator (checksums fixed)",
            with_records(&base, |r| {
                r.push((6, b"search".to_vec(), b"{}".to_vec()));
            }),
        ),
        (
            "a server record before the documents (checksums fixed)",
            with_records(&base, |r| {
                let p = r.iter().position(|(t, _, _)| *t == 6).unwrap();
                let rec = r.remove(p);
                r.insert(0, rec);
            }),
        ),
        ("an entry outside the format", {
            let mut e = base.clone();
            e.push(("collections/0/../../escape".into(), b"x".to_vec()));
            pack(&e)
        }),
    ];
    for (what, archive) in cases {
        let e = expect_code(
            restore(channel.clone(), archive, "restored", ADMIN).await,
            Code::InvalidArgument,
            what,
        );
        assert!(
            !e.message().contains('\n') && e.message().len() < 600,
            "{what}: {:?}",
            e.message()
        );
        assert!(!e.message().contains("forged line\n"), "{what}");
        assert_eq!(
            collection_names(channel.clone()).await,
            vec!["ca".to_string(), "cb".to_string()],
            "{what}: a failed restore left a collection"
        );
        assert_eq!(
            std::fs::read_dir(&collections_dir).unwrap().count(),
            dirs_before,
            "{what}: a failed restore left files"
        );
    }
    let grown = dir_bytes(s.data.path()).saturating_sub(bytes_before);
    assert!(grown < 64 << 20, "the data directory grew by {grown} bytes");
    let tmp = s.data.path().join("snapshots-tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "spooled uploads left behind"
    );

    // The untouched archive still restores, and answers like the original.
    let restored = restore(channel.clone(), real, "restored", ADMIN)
        .await
        .unwrap();
    assert_eq!(restored, vec!["restored".to_string()]);
    let hits = SearchClient::new(channel.clone())
        .search(keyed(
            pb::SearchRequest {
                collection: "restored".into(),
                query: "granite".into(),
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].document_id, "ca-1");
    // With its server records: the split and the proposal came along.
    let splits = eval
        .list_eval_splits(keyed(
            pb::ListEvalSplitsRequest {
                collection: "restored".into(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner()
        .splits;
    assert_eq!(splits.len(), 1);
    assert_eq!((splits[0].split.as_str(), splits[0].queries), ("test", 1));
    let got = CollectionsClient::new(channel.clone())
        .get_collection(keyed(
            pb::GetCollectionRequest {
                name: "restored".into(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.proposed_settings.map(|p| p.candidates), Some(42));
}

#[tokio::test]
async fn uploads_are_refused_at_the_watermark_before_spooling() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.limits.min_free_disk_bytes = u64::MAX / 4;
    let server = TestServer::start(config).await;
    // The upload stays open: a server that spooled first would wait for its end (or its idle
    // limit, minutes) before saying anything.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::RestoreSnapshotRequest::default())
        .await
        .unwrap();
    tx.send(pb::RestoreSnapshotRequest {
        data: vec![0u8; 1 << 20],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut admin = AdminClient::new(server.channel().await);
    let call = admin.restore_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
    let e = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("no answer while the upload was still open: it was being spooled")
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    drop(tx);
    let tmp = data.path().join("snapshots-tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "something was spooled"
    );
}

// ---- sources --------------------------------------------------------------------------

async fn submit(
    channel: tonic::transport::Channel,
    collection: &str,
    path: &std::path::Path,
) -> Result<pb::Job, Status> {
    JobsClient::new(channel)
        .submit_ingest(keyed(
            pb::SubmitIngestRequest {
                collection: collection.into(),
                source: Some(pb::IngestSource {
                    path: path.to_string_lossy().into(),
                    format: pb::SourceFormat::Jsonl as i32,
                    ..Default::default()
                }),
                sync: false,
                switch_alias: String::new(),
            },
            Some(ADMIN),
        ))
        .await
        .map(|r| r.into_inner())
}

/// Polls the job until it ends or `limit` passes; returns it as it last was.
async fn wait_job(channel: tonic::transport::Channel, id: &str, limit: Duration) -> pb::Job {
    let started = Instant::now();
    loop {
        let job = JobsClient::new(channel.clone())
            .get_job(keyed(pb::GetJobRequest { id: id.into() }, Some(ADMIN)))
            .await
            .unwrap()
            .into_inner();
        let state = job.state();
        let finished = matches!(
            state,
            pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
        );
        if finished || started.elapsed() > limit {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn corpus(path: &std::path::Path, n: usize, word: &str) {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "{{\"_id\": \"{word}{i}\", \"text\": \"{word} note number {i}, about slabs and ledges of stone number {}.\"}}\n",
            i * 13
        ));
    }
    std::fs::write(path, out).unwrap();
}

#[tokio::test]
async fn a_queued_source_swapped_for_a_symlink_out_of_the_root_is_refused_when_it_runs() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.jsonl");
    corpus(&secret, 3, "outsider");
    // A long job first, so the second waits in the queue (one job per collection at a time).
    let long = s.root.path().join("long.jsonl");
    corpus(&long, 400, "granite");
    let swapped = s.root.path().join("swapped.jsonl");
    corpus(&swapped, 2, "inside");
    let first = submit(channel.clone(), "ca", &long).await.unwrap();
    let second = submit(channel.clone(), "ca", &swapped).await.unwrap();
    assert_eq!(second.state(), pb::JobState::Queued, "{second:?}");
    std::fs::remove_file(&swapped).unwrap();
    std::os::unix::fs::symlink(&secret, &swapped).unwrap();
    let done = wait_job(channel.clone(), &first.id, Duration::from_secs(600)).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let second = wait_job(channel.clone(), &second.id, Duration::from_secs(60)).await;
    assert_eq!(second.state(), pb::JobState::Failed, "{second:?}");
    assert!(
        second.error.contains("outside the import roots"),
        "{second:?}"
    );
    let got = DocumentsClient::new(channel.clone())
        .get_documents(keyed(
            pb::GetDocumentsRequest {
                collection: "ca".into(),
                ids: vec!["outsider0".into()],
                include_chunks: false,
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.documents.is_empty(), "the outside file was ingested");
}

#[tokio::test]
async fn fifos_devices_and_endless_lines_never_hold_a_job() {
    let s = setup(None).await;
    let channel = s.server.channel().await;
    // A FIFO with no writer, and a device reached through a symlink under the root.
    let fifo = s.root.path().join("pipe.jsonl");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let device = s.root.path().join("zero.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &device).unwrap();
    // A character device made under the root itself (like /dev/zero), where allowed (root).
    let node = s.root.path().join("node.jsonl");
    let c = std::ffi::CString::new(node.to_string_lossy().as_bytes()).unwrap();
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) } == 0;
    let mut sources = vec![&fifo, &device];
    if made {
        sources.push(&node);
    } else {
        eprintln!("mknod is not allowed here: the device-under-the-root case is skipped");
    }
    for source in sources {
        match submit(channel.clone(), "ca", source).await {
            // Refused at submission (a device is outside the roots), or failing when it runs.
            Err(e) => assert!(
                matches!(e.code(), Code::PermissionDenied | Code::InvalidArgument),
                "{e:?}"
            ),
            Ok(job) => {
                let job = wait_job(channel.clone(), &job.id, Duration::from_secs(20)).await;
                assert_eq!(job.state(), pb::JobState::Failed, "{source:?}: {job:?}");
                assert!(job.error.contains("regular file"), "{job:?}");
            }
        }
    }
    // A regular file of 64 GiB of zeros (sparse) without a newline: the job reads on, and a
    // cancel stops it within a second or two.
    let endless = s.root.path().join("endless.jsonl");
    std::fs::File::create(&endless)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let job = submit(channel.clone(), "ca", &endless).await.unwrap();
    let started = Instant::now();
    loop {
        let j = wait_job(channel.clone(), &job.id, Duration::ZERO).await;
        if j.state() == pb::JobState::Running {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    JobsClient::new(channel.clone())
        .cancel_job(keyed(
            pb::CancelJobRequest { id: job.id.clone() },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let j = wait_job(channel.clone(), &job.id, Duration::from_secs(10)).await;
    assert_eq!(j.state(), pb::JobState::Cancelled, "{j:?}");
    let took = cancelled_at.elapsed();
    eprintln!("cancel of a job scanning an endless line took {took:?}");
    assert!(took < Duration::from_secs(5), "the cancel took {took:?}");

    // And a stop while such a job runs ends promptly too (it resumes at the next start).
    let job = submit(channel.clone(), "ca", &endless).await.unwrap();
    let started = Instant::now();
    while wait_job(channel.clone(), &job.id, Duration::ZERO)
        .await
        .state()
        != pb::JobState::Running
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    s.server.stop().await;
    let took = stopping.elapsed();
    eprintln!("shutdown with a job scanning an endless line took {took:?}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
}

/// A gRPC peer that sends part of a message and then nothing, its connection alive, does not
/// hold its call (and admission slot) forever: after `limits.stream_idle_secs` the call ends
/// with DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_stalled_midway_ends_after_the_idle_limit() {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::test_config(data.path());
    config.limits.stream_idle_secs = 2;
    let server = common::TestServer::start(config).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/quarry.v1.Search/Search"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // A gRPC frame announcing 100 bytes, of which 10 are sent; the stream stays open.
    let mut frame = vec![0u8, 0, 0, 0, 100];
    frame.extend_from_slice(&[0u8; 10]);
    send.send_data(bytes::Bytes::from(frame), false).unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(60), response)
        .await
        .expect("a stalled request held its call for a minute")
        .unwrap();
    let status = match response.headers().get("grpc-status") {
        Some(s) => s.to_str().unwrap().to_string(),
        None => {
            let mut body = response.into_body();
            let trailers =
                tokio::time::timeout(std::time::Duration::from_secs(60), body.trailers())
                    .await
                    .expect("trailers")
                    .unwrap()
                    .expect("trailers present");
            trailers["grpc-status"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    drop(send);
    server.stop().await;
}
