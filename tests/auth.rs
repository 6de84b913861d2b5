//! API keys through the real server: each role against each kind of call, scoped keys against
//! collections, the two headers, health open to probes, reflection (v1 and v1alpha) behind a
//! key, and the binary refusing to expose itself without keys.

mod common;

use common::{doc, keyed, test_config, TestServer};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;
use tonic::{Code, Request, Status};

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;

const ADMIN: &str = "admin-0123456789abcdef";
const READER: &str = "reader-0123456789abcdef";
const INGESTER: &str = "ingester-0123456789abcdef";
const VIEWER: &str = "viewer-0123456789abcdef";

async fn server() -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    // The ingester's key is configured by its hash, as a config file may hold it.
    let hashed = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(INGESTER.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: Some(READER.into()),
        keys: vec![
            ScopedKey {
                key: format!("sha256:{hashed}"),
                role: Role::Write,
                collections: vec!["docs".into()],
                name: "ingester".into(),
            },
            ScopedKey {
                key: VIEWER.into(),
                role: Role::Read,
                collections: vec!["docs".into()],
                name: "viewer".into(),
            },
        ],
    };
    let server = TestServer::start(config).await;
    let mut collections = CollectionsClient::new(server.channel().await);
    for name in ["docs", "other"] {
        collections
            .create_collection(keyed(
                pb::CreateCollectionRequest {
                    name: name.into(),
                    config: None,
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }
    (server, data)
}

fn expect(r: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {}", e.message());
    assert!(
        e.message().contains(needle),
        "{what}: {:?} lacks {needle:?}",
        e.message()
    );
    for secret in [ADMIN, READER, INGESTER, VIEWER] {
        assert!(!e.message().contains(secret), "{what}: a key leaked");
    }
}

fn upsert(collection: &str, key: Option<&str>) -> Request<pb::UpsertDocumentsRequest> {
    keyed(
        pb::UpsertDocumentsRequest {
            collection: collection.into(),
            documents: vec![doc("a", "volcanoes erupt lava")],
        },
        key,
    )
}

fn search(collection: &str, key: Option<&str>) -> Request<pb::SearchRequest> {
    keyed(
        pb::SearchRequest {
            collection: collection.into(),
            query: "lava".into(),
            ..Default::default()
        },
        key,
    )
}

#[tokio::test]
async fn each_key_can_do_what_its_role_allows_and_no_more() {
    let (server, _data) = server().await;
    let channel = server.channel().await;
    let mut docs = DocumentsClient::new(channel.clone());
    let mut find = SearchClient::new(channel.clone());
    let mut collections = CollectionsClient::new(channel.clone());

    // No key, an unknown key, a malformed header.
    expect(
        find.search(search("docs", None)).await,
        Code::Unauthenticated,
        "requires an API key",
        "no key",
    );
    expect(
        find.search(search("docs", Some("wrong-key-0123456789")))
            .await,
        Code::Unauthenticated,
        "unknown API key",
        "wrong key",
    );
    let mut basic = search("docs", None);
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    expect(
        find.search(basic).await,
        Code::Unauthenticated,
        "API key",
        "basic auth",
    );

    // Admin: everything. `x-api-key` works as well as the bearer header.
    let mut by_header = upsert("docs", None);
    by_header
        .metadata_mut()
        .insert("x-api-key", ADMIN.parse().unwrap());
    docs.upsert_documents(by_header).await.unwrap();
    docs.upsert_documents(upsert("other", Some(ADMIN)))
        .await
        .unwrap();

    // Read-only: reads anywhere, no writes.
    find.search(search("other", Some(READER))).await.unwrap();
    expect(
        docs.upsert_documents(upsert("docs", Some(READER))).await,
        Code::PermissionDenied,
        "needs the write right",
        "reader upsert",
    );
    expect(
        collections
            .create_collection(keyed(
                pb::CreateCollectionRequest {
                    name: "x".into(),
                    config: None,
                },
                Some(READER),
            ))
            .await,
        Code::PermissionDenied,
        "needs the admin right",
        "reader create",
    );
    expect(
        collections
            .delete_collection(keyed(
                pb::DeleteCollectionRequest {
                    name: "docs".into(),
                },
                Some(READER),
            ))
            .await,
        Code::PermissionDenied,
        "admin",
        "reader delete collection",
    );
    let all = collections
        .list_collections(keyed(pb::ListCollectionsRequest {}, Some(READER)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.collections.len(), 2);

    // Scoped write key: its collection only, documents only.
    docs.upsert_documents(upsert("docs", Some(INGESTER)))
        .await
        .unwrap();
    expect(
        docs.upsert_documents(upsert("other", Some(INGESTER))).await,
        Code::PermissionDenied,
        "may not use collection \"other\"",
        "ingester elsewhere",
    );
    expect(
        find.search(search("other", Some(INGESTER))).await,
        Code::PermissionDenied,
        "may not use",
        "ingester search elsewhere",
    );
    expect(
        collections
            .delete_collection(keyed(
                pb::DeleteCollectionRequest {
                    name: "docs".into(),
                },
                Some(INGESTER),
            ))
            .await,
        Code::PermissionDenied,
        "admin",
        "ingester delete collection",
    );
    let mine = collections
        .list_collections(keyed(pb::ListCollectionsRequest {}, Some(INGESTER)))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = mine.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["docs"]);
    // A stream names its collection in the first message: checked there.
    let messages = vec![pb::StreamUpsertRequest {
        collection: "other".into(),
        document: Some(doc("s", "streamed text")),
    }];
    expect(
        docs.stream_upsert_documents(keyed(futures::stream::iter(messages), Some(INGESTER)))
            .await,
        Code::PermissionDenied,
        "may not use",
        "ingester stream elsewhere",
    );

    // Scoped read key.
    find.search(search("docs", Some(VIEWER))).await.unwrap();
    expect(
        find.search(search("other", Some(VIEWER))).await,
        Code::PermissionDenied,
        "may not use",
        "viewer elsewhere",
    );
    expect(
        docs.upsert_documents(upsert("docs", Some(VIEWER))).await,
        Code::PermissionDenied,
        "write",
        "viewer upsert",
    );
    expect(
        docs.delete_by_filter(keyed(
            pb::DeleteByFilterRequest {
                collection: "docs".into(),
                where_text: "a = 1".into(),
                ..Default::default()
            },
            Some(VIEWER),
        ))
        .await,
        Code::PermissionDenied,
        "write",
        "viewer delete by filter",
    );
    docs.list_documents(keyed(
        pb::ListDocumentsRequest {
            collection: "docs".into(),
            ..Default::default()
        },
        Some(VIEWER),
    ))
    .await
    .unwrap();
    docs.get_documents(keyed(
        pb::GetDocumentsRequest {
            collection: "docs".into(),
            ids: vec!["a".into()],
            include_chunks: false,
        },
        Some(VIEWER),
    ))
    .await
    .unwrap();
    expect(
        docs.delete_documents(keyed(
            pb::DeleteDocumentsRequest {
                collection: "docs".into(),
                ids: vec!["a".into()],
            },
            Some(VIEWER),
        ))
        .await,
        Code::PermissionDenied,
        "write",
        "viewer delete",
    );
    let mut eval = pb::eval_client::EvalClient::new(channel.clone());
    expect(
        eval.evaluate(keyed(
            pb::EvalRequest {
                collection: "other".into(),
                ..Default::default()
            },
            Some(VIEWER),
        ))
        .await,
        Code::PermissionDenied,
        "may not use",
        "viewer eval elsewhere",
    );
    let mut answers = pb::answers_client::AnswersClient::new(channel);
    expect(
        answers
            .answer(keyed(
                pb::AnswerRequest {
                    collection: "docs".into(),
                    question: "q".into(),
                    ..Default::default()
                },
                None,
            ))
            .await,
        Code::Unauthenticated,
        "API key",
        "answer without key",
    );
    server.stop().await;
}

#[tokio::test]
async fn health_is_open_and_reflection_needs_a_key_in_both_versions() {
    let (server, _data) = server().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::{
            server_reflection_request::MessageRequest, ServerReflectionRequest,
        };
        let request = || ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let e = client
            .server_reflection_info(keyed(futures::stream::iter(vec![request()]), None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let mut stream = client
            .server_reflection_info(keyed(futures::stream::iter(vec![request()]), Some(READER)))
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::{
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel);
        let mut stream = client
            .server_reflection_info(keyed(futures::stream::iter(vec![request]), Some(VIEWER)))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response");
        };
        assert!(list.service.iter().any(|s| s.name == "quarry.v1.Search"));
    }
    server.stop().await;
}

/// The binary: no keys on a non-loopback address is refused with a message that says how to
/// configure them; keys (or --insecure-no-auth) let it start; the CLI sends --api-key.
#[test]
fn the_binary_refuses_to_expose_itself_without_keys() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env_remove("QUARRY_API_KEY")
        .env_remove("QUARRY_READ_ONLY_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without API keys") && err.contains("--api-key"),
        "{err}"
    );
    assert!(err.contains("--insecure-no-auth"), "{err}");
}

#[test]
fn the_cli_sends_its_api_key() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_quarry");
    let data = tempfile::tempdir().unwrap();
    let (mut server, url) = common::start_binary(data.path(), &["--api-key", ADMIN]);
    let corpus = common::fixture_dir().join("corpus.jsonl");
    let ingest = |key: Option<&str>| {
        let mut c = Command::new(bin);
        c.args([
            "ingest",
            "--quiet",
            "--server",
            &url,
            "--collection",
            "mini",
        ])
        .arg(&corpus)
        .env_remove("QUARRY_API_KEY");
        if let Some(k) = key {
            c.env("QUARRY_API_KEY", k);
        }
        c.output().unwrap()
    };
    let denied = ingest(None);
    assert!(!denied.status.success());
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(why.contains("API key"), "{why}");
    assert!(ingest(Some(ADMIN)).status.success());
    let search = Command::new(bin)
        .args([
            "search",
            "--json",
            "--server",
            &url,
            "--collection",
            "mini",
            "--api-key",
            ADMIN,
        ])
        .arg("which organelle produces ATP")
        .env_remove("QUARRY_API_KEY")
        .output()
        .unwrap();
    assert!(
        search.status.success(),
        "{}",
        String::from_utf8_lossy(&search.stderr)
    );
    let _ = server.kill();
    let _ = server.wait();
}
