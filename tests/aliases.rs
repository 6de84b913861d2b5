//! Aliases through the real server and the real model: every call through an alias reaches
//! its collection, a switch is atomic and conditional, a rollback gives back the old answers
//! exactly, keys are checked on the alias and on both collections, gRPC and HTTP agree, and the
//! CLI drives the same calls through the real binary.

mod common;

use common::{doc, keyed, test_config, TestServer};
use quarry::auth::{AuthSettings, Role, ScopedKey};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;

const ADMIN: &str = "admin-0123456789abcdef";
/// Admin of the two generations and the alias, nothing else.
const TENANT: &str = "tenant-0123456789abcdef";
/// The application: writes and searches through the alias, knows no generation.
const APP: &str = "app-0123456789abcdef";

async fn server() -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.auth = AuthSettings {
        api_key: Some(ADMIN.into()),
        read_only_api_key: None,
        keys: vec![
            ScopedKey {
                key: TENANT.into(),
                role: Role::Admin,
                collections: vec!["docs".into(), "docs_g1".into(), "docs_g2".into()],
                name: "tenant".into(),
            },
            ScopedKey {
                key: APP.into(),
                role: Role::Write,
                collections: vec!["docs".into()],
                name: "app".into(),
            },
        ],
    };
    (TestServer::start(config).await, data)
}

async fn hits(
    search: &mut SearchClient<tonic::transport::Channel>,
    key: &str,
    query: &str,
) -> Vec<(String, u32)> {
    search
        .search(keyed(
            pb::SearchRequest {
                collection: "docs".into(),
                query: query.into(),
                top_k: 5,
                ..Default::default()
            },
            Some(key),
        ))
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|h| (h.document_id, h.score.to_bits()))
        .collect()
}

fn set(alias: &str, collection: &str, expect: Option<&str>) -> pb::SetAliasRequest {
    pb::SetAliasRequest {
        alias: alias.into(),
        collection: collection.into(),
        expect_collection: expect.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_switches_atomically_and_rolls_back_to_the_same_answers() {
    let (server, _data) = server().await;
    let channel = server.channel().await;
    let mut collections = CollectionsClient::new(channel.clone());
    let mut documents = DocumentsClient::new(channel.clone());
    let mut search = SearchClient::new(channel.clone());
    for name in ["docs_g1", "docs_g2", "other"] {
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
    let g1 = vec![
        doc(
            "basalt",
            "Basalt columns form as thick lava flows cool and contract.",
        ),
        doc(
            "granite",
            "Granite is a coarse-grained intrusive igneous rock.",
        ),
    ];
    let g2 = vec![
        doc(
            "basalt",
            "Columnar jointing in basalt: hexagonal pillars from cooling lava.",
        ),
        doc("quartz", "Quartz is a hard mineral of silicon and oxygen."),
    ];
    for (name, docs) in [("docs_g1", g1), ("docs_g2", g2)] {
        documents
            .upsert_documents(keyed(
                pb::UpsertDocumentsRequest {
                    collection: name.into(),
                    documents: docs,
                },
                Some(ADMIN),
            ))
            .await
            .unwrap();
    }

    // The tenant creates the alias; the application uses it and nothing else.
    let made = collections
        .set_alias(keyed(set("docs", "docs_g1", Some("")), Some(TENANT)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (made.collection.as_str(), made.previous.as_str()),
        ("docs_g1", "")
    );
    let before = hits(&mut search, APP, "how do basalt columns form").await;
    assert_eq!(before[0].0, "basalt", "{before:?}");
    documents
        .upsert_documents(keyed(
            pb::UpsertDocumentsRequest {
                collection: "docs".into(),
                documents: vec![doc("obsidian", "Obsidian is volcanic glass.")],
            },
            Some(APP),
        ))
        .await
        .unwrap();
    let got = collections
        .get_collection(keyed(
            pb::GetCollectionRequest {
                name: "docs".into(),
            },
            Some(APP),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "docs_g1");
    assert_eq!(got.requested_alias, "docs");
    assert_eq!(got.aliases, ["docs"]);
    assert_eq!(got.document_count, 3);
    let before = hits(&mut search, APP, "how do basalt columns form").await;
    // The key of the alias reaches no generation by its own name, and switches nothing.
    let refused = search
        .search(keyed(
            pb::SearchRequest {
                collection: "docs_g1".into(),
                query: "basalt".into(),
                ..Default::default()
            },
            Some(APP),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = collections
        .set_alias(keyed(set("docs", "docs_g2", None), Some(APP)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // An admin of the generations may not point the alias at a collection of someone else's.
    let refused = collections
        .set_alias(keyed(set("docs", "other", None), Some(TENANT)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("\"other\""), "{refused:?}");
    // Nor move an alias away from a collection it may not use (not named in the refusal).
    collections
        .set_alias(keyed(set("theirs", "other", None), Some(ADMIN)))
        .await
        .unwrap();
    let listed = collections
        .list_collections(keyed(pb::ListCollectionsRequest {}, Some(TENANT)))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.aliases.iter().map(|a| a.alias.as_str()).collect();
    assert_eq!(names, ["docs"], "a scoped key sees only its own aliases");
    let all = collections
        .list_collections(keyed(pb::ListCollectionsRequest {}, Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    let pairs: Vec<_> = all
        .aliases
        .iter()
        .map(|a| (a.alias.as_str(), a.collection.as_str()))
        .collect();
    assert_eq!(pairs, [("docs", "docs_g1"), ("theirs", "other")]);

    // Conditional switch: a stale expectation changes nothing.
    let stale = collections
        .set_alias(keyed(set("docs", "docs_g2", Some("docs_g0")), Some(TENANT)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(
        hits(&mut search, APP, "how do basalt columns form").await,
        before
    );
    let switched = collections
        .set_alias(keyed(set("docs", "docs_g2", Some("docs_g1")), Some(TENANT)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(switched.previous, "docs_g1");
    let after = hits(&mut search, APP, "what is quartz").await;
    assert_eq!(after[0].0, "quartz", "{after:?}");

    // Names: one namespace, and deletes only by a collection's own name, with no alias on it.
    let taken = collections
        .create_collection(keyed(
            pb::CreateCollectionRequest {
                name: "docs".into(),
                config: None,
            },
            Some(ADMIN),
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    for name in ["docs", "docs_g2"] {
        let refused = collections
            .delete_collection(keyed(
                pb::DeleteCollectionRequest { name: name.into() },
                Some(ADMIN),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{name}: {refused:?}"
        );
    }

    // Over HTTP: the rollback, then the same answers as before the switch, bit for bit.
    quarry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let rolled: serde_json::Value = http
        .put(format!("{}/v1/aliases/docs", server.http_url))
        .bearer_auth(TENANT)
        .json(&serde_json::json!({"collection": "docs_g1", "expect_collection": "docs_g2"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rolled["previous"], "docs_g2", "{rolled}");
    assert_eq!(
        hits(&mut search, APP, "how do basalt columns form").await,
        before
    );
    let got: serde_json::Value = http
        .get(format!("{}/v1/collections/docs", server.http_url))
        .bearer_auth(APP)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "docs_g1", "{got}");
    assert_eq!(got["requested_alias"], "docs", "{got}");
    let stale = http
        .delete(format!(
            "{}/v1/aliases/docs?expect_collection=docs_g2",
            server.http_url
        ))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 409);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["code"], "ABORTED", "{body}");
    let gone: serde_json::Value = http
        .delete(format!("{}/v1/aliases/docs", server.http_url))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gone["collection"], "docs_g1", "{gone}");
    let missing = search
        .search(keyed(
            pb::SearchRequest {
                collection: "docs".into(),
                query: "basalt".into(),
                ..Default::default()
            },
            Some(APP),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    collections
        .delete_collection(keyed(
            pb::DeleteCollectionRequest {
                name: "docs_g2".into(),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();
    server.stop().await;
}

#[test]
fn the_cli_sets_lists_and_deletes_aliases() {
    use common::cli::{json, quarry, start, text};
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start(data.path(), &[]);
    let corpus = data.path().join("notes.md");
    std::fs::write(&corpus, "Basalt columns form as lava cools.").unwrap();
    for name in ["notes_a", "notes_b"] {
        let out = quarry(
            &url,
            &["ingest", "--collection", name, corpus.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = quarry(&url, &["alias", "set", "notes", "notes_a", "--expect", ""]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("notes -> notes_a (new)"),
        "{}",
        text(&out)
    );
    let out = quarry(
        &url,
        &["alias", "set", "notes", "notes_b", "--expect", "notes_x"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("Aborted"), "{}", text(&out));
    let out = quarry(&url, &["alias", "set", "notes", "notes_b", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out)["previous"], "notes_a");
    let out = quarry(&url, &["alias", "list", "--json"]);
    assert_eq!(
        json(&out),
        serde_json::json!([{"alias": "notes", "collection": "notes_b", "previous": ""}])
    );
    let out = quarry(&url, &["search", "--collection", "notes", "basalt"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = quarry(&url, &["alias", "delete", "notes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("it pointed to notes_b"),
        "{}",
        text(&out)
    );
    drop(server);
}
