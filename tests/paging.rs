//! Paging through the real server and model: in every mode and fusion, per chunk and per
//! document, with `top_k` 0 (the default, 10), 1, 7 and the maximum, following
//! `next_page_token` until it ends gives exactly the ranking of one big search of the same
//! depth: no repeats, no gaps, the last page short where the ranking ends.

mod common;

use common::{test_config, TestServer};
use quarry::grpc::pb;

/// Depth of every ranking here (each retriever's candidates), so the pages and the one big
/// search rank the same candidates.
const DEPTH: u32 = 90;

fn corpus() -> Vec<pb::Document> {
    let stones = [
        "granite", "basalt", "marble", "slate", "quartz", "shale", "flint",
    ];
    (0..70)
        .map(|i| pb::Document {
            id: format!("d{i:03}"),
            text: format!(
                "Note {i} on {} and {}. The quarry cut slab number {} from the {} ledge. \
                 Second paragraph: how the stone was carried to the mill at dawn.\n\n\
                 A longer tail so that some documents split into several chunks: {}",
                stones[i % stones.len()],
                stones[(i * 3 + 1) % stones.len()],
                i * 7,
                stones[(i * 5 + 2) % stones.len()],
                "the carters sang while the wheels turned on the cobbles. ".repeat(i % 4 * 12)
            ),
            ..Default::default()
        })
        .collect()
}

type Row = (String, u64, u32);

fn rows(r: &pb::SearchResponse) -> Vec<Row> {
    r.hits
        .iter()
        .map(|h| (h.document_id.clone(), h.chunk_id, h.score.to_bits()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_concatenate_to_one_big_search_in_every_mode() {
    let data = tempfile::tempdir().unwrap();
    let config = test_config(data.path());
    let max = config.limits.max_top_k as u32;
    let server = TestServer::start(config).await;
    server.create_collection("c").await;
    let channel = server.channel().await;
    let docs = corpus();
    for batch in docs.chunks(35) {
        pb::documents_client::DocumentsClient::new(channel.clone())
            .upsert_documents(pb::UpsertDocumentsRequest {
                collection: "c".into(),
                documents: batch.to_vec(),
            })
            .await
            .unwrap();
    }
    let mut search = pb::search_client::SearchClient::new(channel);
    let modes = [
        ("lexical", pb::SearchMode::Lexical, None),
        ("dense", pb::SearchMode::Dense, None),
        ("hybrid weighted", pb::SearchMode::Hybrid, None),
        (
            "hybrid rrf",
            pb::SearchMode::Hybrid,
            Some(pb::Fusion {
                method: Some(pb::fusion::Method::Rrf(pb::RrfFusion::default())),
            }),
        ),
    ];
    for (name, mode, fusion) in modes {
        for group in [false, true] {
            let request = |top_k: u32| pb::SearchRequest {
                collection: "c".into(),
                query: "granite slab carried from the quarry".into(),
                top_k,
                mode: mode as i32,
                fusion,
                group_by_document: group,
                candidates: DEPTH,
                ..Default::default()
            };
            for top_k in [0, 1, 7, max] {
                // One big search of the same depth (the depth is candidates, or top_k when
                // that is larger).
                let all = search
                    .search(request(DEPTH.max(top_k)))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    all.next_page_token.is_empty(),
                    "{name}: the whole ranking in one page"
                );
                let all = rows(&all);
                assert!(
                    all.len() > 20,
                    "{name} group={group}: only {} hits",
                    all.len()
                );
                let page_size = if top_k == 0 { 10 } else { top_k as usize };
                let mut paged: Vec<Row> = Vec::new();
                let mut r = request(top_k);
                let mut pages = 0;
                loop {
                    let page = search.search(r.clone()).await.unwrap().into_inner();
                    pages += 1;
                    assert!(
                        page.hits.len() <= page_size,
                        "{name} group={group} top_k={top_k}: a page of {}",
                        page.hits.len()
                    );
                    paged.extend(rows(&page));
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    assert!(pages <= all.len(), "{name}: the pages never end");
                    r.page_token = page.next_page_token;
                }
                let label = format!("{name} group={group} top_k={top_k} ({pages} pages)");
                assert_eq!(paged.len(), all.len(), "{label}: repeats or gaps");
                assert_eq!(paged, all, "{label}: the pages differ from one big search");
            }
        }
    }
}
