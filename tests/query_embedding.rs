//! The query path under concurrency, with the real model through the real server: concurrent
//! searches run on several query sessions at once (wide, narrow, borrowed) and still rank
//! exactly as the same searches run one at a time; the query-vector cache answers repeated
//! questions without the model and never changes a result.

mod common;

use std::collections::BTreeMap;

use common::{create_fixture_collection, test_config, TestServer};
use quarry::grpc::pb;

fn queries() -> Vec<String> {
    quarry::eval::beir::Dataset::open(&common::fixture_dir())
        .unwrap()
        .queries()
        .unwrap()
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect()
}

fn request(query: &str, mode: pb::SearchMode) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: "q".into(),
        query: query.into(),
        top_k: 10,
        mode: mode as i32,
        ..Default::default()
    }
}

/// (chunk id, score) of each hit.
fn ranking(r: &pb::SearchResponse) -> Vec<(u64, f32)> {
    r.hits.iter().map(|h| (h.chunk_id, h.score)).collect()
}

fn assert_same(a: &[(u64, f32)], b: &[(u64, f32)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "{what}: {a:?} vs {b:?}");
        assert!((x.1 - y.1).abs() < 1e-5, "{what}: {a:?} vs {b:?}");
    }
}

/// The tests here take turns: which session serves a query depends on whether other searches
/// run in the process at the same time.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    TURN.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn sessions(kind: &str) -> f64 {
    quarry::metrics::global().query_sessions.get(&[kind])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_use_every_session_and_rank_as_serial_ones() {
    let _turn = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    // No cache here: every search below must reach the model.
    config.query_cache_entries = 0;
    let server = TestServer::start(config).await;
    create_fixture_collection(&server.channel().await, "q").await;
    let queries = queries();
    assert!(queries.len() >= 16);

    // One at a time, once no two searches have overlapped for a while: each query alone, on
    // the wide session.
    tokio::time::sleep(quarry::model::LONE_WINDOW + std::time::Duration::from_millis(100)).await;
    let wide_before = sessions("wide");
    let mut serial = Vec::new();
    for q in &queries {
        for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
            serial.push(ranking(&server.search(request(q, mode)).await.unwrap()));
        }
    }
    assert!(sessions("wide") - wide_before >= queries.len() as f64);

    // Sixteen clients at once, several rounds: the same rankings, from narrow and borrowed
    // sessions as well as the wide one.
    let others_before = sessions("narrow") + sessions("borrowed");
    let embedded_before = server
        .engine()
        .embedder("all-minilm-l6-v2")
        .unwrap()
        .queries_embedded();
    let mut tasks = Vec::new();
    for client in 0..16 {
        let channel = server.channel().await;
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            let mut search = pb::search_client::SearchClient::new(channel);
            let mut out = Vec::new();
            for round in 0..3 {
                for (i, q) in queries.iter().enumerate() {
                    if (i + round) % 16 != client {
                        continue;
                    }
                    for (m, mode) in [pb::SearchMode::Dense, pb::SearchMode::Hybrid]
                        .into_iter()
                        .enumerate()
                    {
                        // Sixteen at once is over the default read queue (3 per core).
                        let r = backing_off(&mut search, request(q, mode)).await;
                        out.push((2 * i + m, ranking(&r)));
                    }
                }
            }
            out
        }));
    }
    let mut checked = 0;
    for t in tasks {
        for (slot, r) in t.await.unwrap() {
            assert_same(&r, &serial[slot], &format!("query {}", queries[slot / 2]));
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 2 * queries.len());
    let embedded = server
        .engine()
        .embedder("all-minilm-l6-v2")
        .unwrap()
        .queries_embedded();
    assert_eq!(embedded - embedded_before, checked as u64);
    assert!(
        sessions("narrow") + sessions("borrowed") > others_before,
        "concurrent queries never ran beside each other"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_queries_come_from_the_cache_with_identical_results() {
    let _turn = one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.query_cache_entries = 8;
    let server = TestServer::start(config).await;
    create_fixture_collection(&server.channel().await, "q").await;
    let model = server.engine().embedder("all-minilm-l6-v2").unwrap();
    let cache = &quarry::metrics::global().query_cache;

    let q = "organelle that makes ATP";
    let before = model.queries_embedded();
    let (hits, misses) = (cache.get(&["hit"]), cache.get(&["miss"]));
    let first = ranking(
        &server
            .search(request(q, pb::SearchMode::Dense))
            .await
            .unwrap(),
    );
    assert_eq!(model.queries_embedded() - before, 1);
    // Other spellings of the same query (whitespace only) and other modes hit the cache.
    for variant in ["  organelle that makes ATP", "organelle\tthat  makes\nATP "] {
        for mode in [pb::SearchMode::Dense, pb::SearchMode::Hybrid] {
            let r = server.search(request(variant, mode)).await.unwrap();
            if mode == pb::SearchMode::Dense {
                assert_same(&ranking(&r), &first, variant);
            }
        }
    }
    assert_eq!(
        model.queries_embedded() - before,
        1,
        "a cached query reached the model"
    );
    assert!(cache.get(&["hit"]) - hits >= 4.0);
    assert!(cache.get(&["miss"]) - misses >= 1.0);
    // Case is not normalized away: another query, another embedding.
    server
        .search(request("ORGANELLE that makes ATP", pb::SearchMode::Dense))
        .await
        .unwrap();
    assert_eq!(model.queries_embedded() - before, 2);

    // Concurrent clients repeating a handful of questions: bounded by the cache size, and
    // every answer equals the uncached one.
    let queries = queries();
    let mut expected = Vec::new();
    for q in &queries[..6] {
        expected.push(ranking(
            &server
                .search(request(q, pb::SearchMode::Dense))
                .await
                .unwrap(),
        ));
    }
    let embedded = model.queries_embedded();
    let mut tasks = Vec::new();
    for client in 0..8 {
        let channel = server.channel().await;
        let queries = queries[..6].to_vec();
        tasks.push(tokio::spawn(async move {
            let mut search = pb::search_client::SearchClient::new(channel);
            let mut out = Vec::new();
            for round in 0..10 {
                let i = (client + round) % queries.len();
                // Eight at once fill the default read queue (3 per core), and a reply can
                // reach a client before its slot is free again.
                let r = backing_off(&mut search, request(&queries[i], pb::SearchMode::Dense)).await;
                out.push((i, ranking(&r)));
            }
            out
        }));
    }
    for t in tasks {
        for (i, r) in t.await.unwrap() {
            assert_same(&r, &expected[i], &queries[i]);
        }
    }
    // The six questions (and the two above) fit in the cache: none was embedded again.
    assert_eq!(model.queries_embedded(), embedded);
    server.stop().await;
}

/// A search as a well-behaved client makes it: on RESOURCE_EXHAUSTED it backs off and
/// retries, as the refusal says.
async fn backing_off(
    search: &mut pb::search_client::SearchClient<tonic::transport::Channel>,
    r: pb::SearchRequest,
) -> pb::SearchResponse {
    loop {
        match search.search(r.clone()).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(s) => panic!("search failed: {s}"),
        }
    }
}
