//! Typed metadata, filter expressions and pagination through the real server and model: the
//! wire forms (typed_metadata, where, where_text, page tokens), their errors and codes, and
//! that every retriever honours the filter.

mod common;

use std::collections::HashMap;

use common::{doc, test_config, TestServer};
use quarry::grpc::pb;
use tonic::Code;

use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::metadata_value::Kind;

fn v(kind: Kind) -> pb::MetadataValue {
    pb::MetadataValue { kind: Some(kind) }
}

fn typed(id: &str, text: &str, year: i64, lang: &str, at: &str, tags: &[&str]) -> pb::Document {
    let mut d = doc(id, text);
    d.metadata.insert("lang".into(), lang.into());
    d.typed_metadata = HashMap::from([
        ("year".into(), v(Kind::IntValue(year))),
        ("at".into(), v(Kind::TimestampValue(at.into()))),
        (
            "tags".into(),
            v(Kind::StringList(pb::StringList {
                values: tags.iter().map(|t| t.to_string()).collect(),
            })),
        ),
    ]);
    d
}

async fn server() -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(data.path())).await;
    let channel = server.channel().await;
    CollectionsClient::new(channel.clone())
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            config: Some(pb::CollectionConfig {
                metadata_schema: HashMap::from([
                    ("draft".into(), pb::MetadataType::Boolean as i32),
                    ("score".into(), pb::MetadataType::Float as i32),
                ]),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let docs = vec![
        typed(
            "v1",
            "volcanoes erupt lava and ash",
            2019,
            "en",
            "2025-03-01T00:00:00Z",
            &["geo"],
        ),
        typed(
            "v2",
            "lava flows from volcanic vents",
            2021,
            "de",
            "2026-02-01T10:00:00+02:00",
            &["geo", "fire"],
        ),
        typed(
            "v3",
            "volcanic ash clouds ground aircraft",
            2023,
            "fr",
            "2026-06-01T00:00:00Z",
            &["air"],
        ),
        typed(
            "k1",
            "kangaroos are marsupials of australia",
            2022,
            "en",
            "2026-01-15T00:00:00Z",
            &["bio"],
        ),
    ];
    DocumentsClient::new(channel)
        .upsert_documents(pb::UpsertDocumentsRequest {
            collection: "c".into(),
            documents: docs,
        })
        .await
        .unwrap();
    (server, data)
}

fn request(mode: pb::SearchMode, where_text: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: "c".into(),
        query: "volcanic lava ash kangaroos".into(),
        top_k: 10,
        mode: mode as i32,
        where_text: where_text.into(),
        ..Default::default()
    }
}

fn ids(r: &pb::SearchResponse) -> Vec<String> {
    let mut ids: Vec<String> = r.hits.iter().map(|h| h.document_id.clone()).collect();
    ids.sort();
    ids
}

const MODES: [pb::SearchMode; 3] = [
    pb::SearchMode::Lexical,
    pb::SearchMode::Dense,
    pb::SearchMode::Hybrid,
];

#[tokio::test]
async fn typed_filters_hold_in_every_mode() {
    let (server, _data) = server().await;
    let cases: [(&str, &[&str]); 6] = [
        ("year >= 2021 AND lang IN [\"de\", \"fr\"]", &["v2", "v3"]),
        ("NOT lang = \"de\" AND year < 2022.5", &["k1", "v1"]),
        (
            "at >= \"2026-01-01T00:00:00Z\" AND at < \"2026-02-01T09:00:00Z\"",
            &["k1", "v2"],
        ),
        ("tags CONTAINS \"geo\"", &["v1", "v2"]),
        (
            "tags CONTAINS ANY [\"air\", \"bio\"] OR year = 2019",
            &["k1", "v1", "v3"],
        ),
        ("draft EXISTS OR missing = 1", &[]),
    ];
    for mode in MODES {
        for (text, want) in cases {
            let got = server.search(request(mode, text)).await.unwrap();
            assert_eq!(ids(&got), want.to_vec(), "{mode:?} {text}");
        }
    }
    // The tree form, ANDed with the legacy string map.
    let mut r = request(pb::SearchMode::Hybrid, "");
    r.filter.insert("lang".into(), "en".into());
    r.r#where = Some(pb::Filter {
        kind: Some(pb::filter::Kind::Condition(pb::Condition {
            key: "year".into(),
            test: Some(pb::condition::Test::Range(pb::RangeCondition {
                gt: Some(v(Kind::IntValue(2020))),
                ..Default::default()
            })),
        })),
    });
    assert_eq!(ids(&server.search(r).await.unwrap()), ["k1"]);
    // Hits carry the typed values; string entries also in the old map.
    let hit = server
        .search(request(pb::SearchMode::Lexical, "year = 2021"))
        .await
        .unwrap()
        .hits
        .remove(0);
    assert_eq!(hit.metadata.get("lang").map(String::as_str), Some("de"));
    assert_eq!(hit.typed_metadata["year"], v(Kind::IntValue(2021)));
    assert_eq!(
        hit.typed_metadata["at"],
        v(Kind::TimestampValue("2026-02-01T08:00:00Z".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_filters_and_conflicting_types_are_invalid_argument() {
    let (server, _data) = server().await;
    let bad = [
        ("year >= ", "column 9"),
        ("year = \"2020\"", "\"year\" is an integer"),
        ("lang > 3", "ranges apply"),
        ("at > \"last week\"", "RFC 3339"),
        ("tags CONTAINS 3", "CONTAINS takes a string"),
    ];
    for (text, want) in bad {
        let e = server
            .search(request(pb::SearchMode::Hybrid, text))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{text}: {e:?}");
        assert!(e.message().contains(want), "{text}: {}", e.message());
    }
    let deep = format!("{}a = 1", "NOT ".repeat(40));
    let e = server
        .search(request(pb::SearchMode::Lexical, &deep))
        .await
        .unwrap_err();
    assert!(e.message().contains("max_filter_depth"), "{}", e.message());

    let mut docs = DocumentsClient::new(server.channel().await);
    // A value whose type conflicts with the key's (fixed by the first value or declared).
    for (key, value, want) in [
        (
            "year",
            Kind::StringValue("2020".into()),
            "\"year\" is an integer in this collection, got a string",
        ),
        (
            "draft",
            Kind::IntValue(1),
            "\"draft\" is a boolean in this collection, got an integer",
        ),
    ] {
        let mut d = doc("x", "text");
        d.typed_metadata.insert(key.into(), v(value));
        let e = docs
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: "c".into(),
                documents: vec![d],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(want), "{}", e.message());
    }
    // An integer under a float key is a float; a non-finite float, a key in both maps and an
    // empty value are refused.
    let mut d = doc("s", "scored text");
    d.typed_metadata
        .insert("score".into(), v(Kind::IntValue(2)));
    docs.upsert_documents(pb::UpsertDocumentsRequest {
        collection: "c".into(),
        documents: vec![d],
    })
    .await
    .unwrap();
    let mut nan = doc("n", "text");
    nan.typed_metadata
        .insert("score".into(), v(Kind::FloatValue(f64::NAN)));
    let mut both = doc("b", "text");
    both.metadata.insert("lang".into(), "en".into());
    both.typed_metadata
        .insert("lang".into(), v(Kind::StringValue("en".into())));
    let mut empty = doc("e", "text");
    empty
        .typed_metadata
        .insert("k".into(), pb::MetadataValue { kind: None });
    for d in [nan, both, empty] {
        let e = docs
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: "c".into(),
                documents: vec![d],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // GetCollection reports every key's type.
    let info = CollectionsClient::new(server.channel().await)
        .get_collection(pb::GetCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    let schema = info.config.unwrap().metadata_schema;
    assert_eq!(schema["year"], pb::MetadataType::Integer as i32);
    assert_eq!(schema["at"], pb::MetadataType::Timestamp as i32);
    assert_eq!(schema["tags"], pb::MetadataType::StringList as i32);
    assert_eq!(schema["draft"], pb::MetadataType::Boolean as i32);
    server.stop().await;
}

#[tokio::test]
async fn page_tokens_walk_one_ranking() {
    let (server, _data) = server().await;
    for mode in MODES {
        let full = server.search(request(mode, "")).await.unwrap();
        assert_eq!(
            full.total_candidates as usize,
            full.hits.len().max(full.total_candidates as usize)
        );
        let mut r = request(mode, "");
        r.top_k = 1;
        let mut walked = Vec::new();
        loop {
            let page = server.search(r.clone()).await.unwrap();
            walked.extend(page.hits.iter().map(|h| h.document_id.clone()));
            if page.next_page_token.is_empty() {
                break;
            }
            r.page_token = page.next_page_token;
        }
        let all: Vec<String> = full.hits.iter().map(|h| h.document_id.clone()).collect();
        assert_eq!(walked, all, "{mode:?}");
        // A token is bound to its query.
        let mut other = request(mode, "year > 2000");
        other.page_token = r.page_token.clone();
        if !other.page_token.is_empty() {
            let e = server.search(other).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
    }
    let mut forged = request(pb::SearchMode::Lexical, "");
    forged.page_token = "5.0000000000000000".into();
    assert_eq!(
        server.search(forged).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut deep = request(pb::SearchMode::Lexical, "");
    deep.offset = 200;
    let e = server.search(deep).await.unwrap_err();
    assert!(e.message().contains("set candidates"), "{}", e.message());
    server.stop().await;
}

#[tokio::test]
async fn a_stream_rejects_only_the_document_whose_type_conflicts() {
    let (server, _data) = server().await;
    let mut bad = doc("bad", "text of a bad document");
    bad.typed_metadata
        .insert("year".into(), v(Kind::BoolValue(true)));
    let mut fine = doc("fine", "text of a fine document");
    fine.typed_metadata
        .insert("year".into(), v(Kind::IntValue(2000)));
    let messages = [bad, fine].into_iter().map(|d| pb::StreamUpsertRequest {
        collection: "c".into(),
        document: Some(d),
    });
    let reply = DocumentsClient::new(server.channel().await)
        .stream_upsert_documents(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<(String, i32)> = reply
        .results
        .iter()
        .map(|r| (r.id.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("bad".to_string(), pb::UpsertStatus::Rejected as i32),
            ("fine".to_string(), pb::UpsertStatus::Created as i32)
        ]
    );
    assert!(
        reply.results[0].error.contains("is an integer"),
        "{}",
        reply.results[0].error
    );
    server.stop().await;
}

#[tokio::test]
async fn list_documents_and_delete_by_filter_over_the_wire() {
    let (server, _data) = server().await;
    let mut docs = DocumentsClient::new(server.channel().await);
    let list = |token: String, size: u32| pb::ListDocumentsRequest {
        collection: "c".into(),
        page_size: size,
        page_token: token,
        include_metadata: true,
        where_text: "year >= 2020".into(),
        ..Default::default()
    };
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = docs
            .list_documents(list(token, 1))
            .await
            .unwrap()
            .into_inner();
        for d in &page.documents {
            assert!(d.typed_metadata.contains_key("year"), "{d:?}");
            assert_eq!(d.chunk_count, 1);
        }
        listed.extend(page.documents.into_iter().map(|d| d.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ["k1", "v2", "v3"]);
    for (token, size) in [("garbage".to_string(), 10), (String::new(), 5000)] {
        let e = docs.list_documents(list(token, size)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }

    let delete = |text: &str, dry_run: bool| pb::DeleteByFilterRequest {
        collection: "c".into(),
        where_text: text.into(),
        dry_run,
        ..Default::default()
    };
    let dry = docs
        .delete_by_filter(delete("tags CONTAINS \"geo\"", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.matched, dry.deleted), (2, 0));
    let done = docs
        .delete_by_filter(delete("tags CONTAINS \"geo\"", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.matched, done.deleted), (2, 2));
    for mode in MODES {
        let got = server.search(request(mode, "")).await.unwrap();
        assert_eq!(ids(&got), ["k1", "v3"], "{mode:?}");
    }
    let e = docs.delete_by_filter(delete("", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    server.stop().await;
}
