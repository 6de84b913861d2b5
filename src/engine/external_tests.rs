//! Collections with external vectors ("bring your own vectors"): pre-chunked documents with the
//! caller's vectors, indexed like the model's, searched in all three modes with a query
//! vector; bad shapes refused before any work; restarts keep everything.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

fn open(dir: &Path) -> Engine {
    Engine::open(
        EngineConfig::new(dir, "hash"),
        Arc::new(HashModels(Arc::new(HashEmbedder::new(8).unwrap()))),
    )
    .expect("engine opens")
}

fn external(dimension: usize) -> CollectionSettings {
    CollectionSettings {
        vector_dimension: Some(dimension),
        ..Default::default()
    }
}

fn chunked(id: &str, chunks: &[(&str, [f32; 4])]) -> DocumentInput {
    DocumentInput {
        id: id.into(),
        chunks: chunks
            .iter()
            .map(|(text, v)| ChunkInput {
                text: text.to_string(),
                vector: v.to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

fn corpus() -> Vec<DocumentInput> {
    vec![
        chunked(
            "fruit",
            &[
                ("apples and pears", [1.0, 0.0, 0.0, 0.0]),
                ("ripe plums in autumn", [0.8, 0.6, 0.0, 0.0]),
            ],
        ),
        chunked("machines", &[("engines and gears", [0.0, 0.0, 3.0, 0.0])]),
        chunked("weather", &[("rain over the hills", [0.0, 0.0, 0.0, -2.0])]),
    ]
}

fn query(mode: Mode, text: &str, vector: Option<[f32; 4]>) -> SearchParams {
    SearchParams {
        query: text.into(),
        query_vector: vector.map(|v| v.to_vec()),
        mode,
        top_k: 10,
        ..Default::default()
    }
}

async fn top(engine: &Engine, p: SearchParams) -> (String, u32, f32) {
    let out = engine.search("x", p).await.unwrap();
    let h = &out.hits[0];
    (h.doc_id.clone(), h.ordinal, h.score)
}

#[tokio::test]
async fn pre_chunked_documents_are_searched_in_every_mode_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let info = engine.create_collection("x", external(4)).unwrap();
    assert_eq!(info.record.model, "external:4");
    assert_eq!(info.record.dimension, 4);
    let out = engine.upsert("x", corpus()).await.unwrap();
    assert!(out.iter().all(|o| o.status == UpsertStatus::Created));
    assert_eq!(out[0].chunk_count, 2);

    // Dense: the nearest chunk by the caller's vectors (normalized on the way in: score 1).
    let (doc, ordinal, score) =
        top(&engine, query(Mode::Dense, "", Some([0.0, 0.0, 1.0, 0.0]))).await;
    assert_eq!((doc.as_str(), ordinal), ("machines", 0));
    assert!((score - 1.0).abs() < 1e-5, "{score}");
    let (doc, ordinal, _) = top(&engine, query(Mode::Dense, "", Some([0.8, 0.6, 0.0, 0.0]))).await;
    assert_eq!((doc.as_str(), ordinal), ("fruit", 1));
    // Lexical over the chunk texts; hybrid fuses both.
    assert_eq!(
        top(&engine, query(Mode::Lexical, "gears", None)).await.0,
        "machines"
    );
    let hybrid = query(Mode::Hybrid, "rain hills", Some([0.0, 0.0, 0.0, -1.0]));
    assert_eq!(top(&engine, hybrid.clone()).await.0, "weather");
    let before = engine.search("x", hybrid.clone()).await.unwrap();
    assert!(before.hits[0].lexical.is_some() && before.hits[0].dense.is_some());

    // Without a query vector, dense and hybrid say what to send; nothing is degraded.
    for mode in [Mode::Dense, Mode::Hybrid] {
        let e = engine
            .search("x", query(mode, "gears", None))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("query_vector"), "{e}");
    }

    // Stored text is the chunks joined; each chunk's offsets point at its text.
    let (docs, _) = engine.get_documents("x", &["fruit".into()], true).unwrap();
    let d = &docs[0];
    assert_eq!(d.input.text, "apples and pears\n\nripe plums in autumn");
    for (_, c) in &d.chunks {
        assert_eq!(&d.input.text[c.start..c.end], c.text);
    }

    // The same chunks and vectors: unchanged. A new vector: updated, and searched by it.
    let again = engine.upsert("x", corpus()).await.unwrap();
    assert!(again.iter().all(|o| o.status == UpsertStatus::Unchanged));
    let moved = chunked("machines", &[("engines and gears", [0.0, 1.0, 0.0, 0.0])]);
    let out = engine.upsert("x", vec![moved]).await.unwrap();
    assert_eq!(out[0].status, UpsertStatus::Updated);
    let (doc, _, _) = top(&engine, query(Mode::Dense, "", Some([0.0, 1.0, 0.0, 0.0]))).await;
    assert_eq!(doc, "machines");

    // A restart answers the same.
    let before = engine.search("x", hybrid.clone()).await.unwrap();
    drop(engine);
    let engine = open(dir.path());
    let after = engine.search("x", hybrid).await.unwrap();
    let ids = |o: &crate::retrieve::SearchOutcome| {
        o.hits
            .iter()
            .map(|h| (h.chunk_id, (h.score * 1e5).round() as i64))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after));
    assert_eq!(
        engine.collection("x").unwrap().info().record.model,
        "external:4"
    );

    // Deletes reach the dense side too.
    engine
        .delete_documents("x", vec!["machines".into()])
        .await
        .unwrap();
    let out = engine
        .search("x", query(Mode::Dense, "", Some([0.0, 1.0, 0.0, 0.0])))
        .await
        .unwrap();
    assert!(out.hits.iter().all(|h| h.doc_id != "machines"));
}

#[tokio::test]
async fn bad_shapes_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine.create_collection("x", external(4)).unwrap();
    engine
        .create_collection("m", CollectionSettings::default())
        .unwrap();

    // Creation: a dimension out of range, or a model and a dimension both.
    for bad in [external(0), external(5000)] {
        let e = engine.create_collection("y", bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    let both = CollectionSettings {
        model: Some("hash".into()),
        vector_dimension: Some(4),
        ..Default::default()
    };
    assert!(matches!(
        engine.create_collection("y", both),
        Err(Error::InvalidArgument(_))
    ));

    let mut text_and_chunks = chunked("a", &[("t", [1.0, 0.0, 0.0, 0.0])]);
    text_and_chunks.text = "also text".into();
    let cases: Vec<(&str, DocumentInput, &str)> = vec![
        ("x", text_and_chunks, "both text and chunks"),
        (
            "x",
            chunked("a", &[("t", [f32::NAN, 0.0, 0.0, 0.0])]),
            "finite",
        ),
        ("x", chunked("a", &[("t", [0.0; 4])]), "all-zero"),
        (
            "x",
            chunked("a", &[("  ", [1.0, 0.0, 0.0, 0.0])]),
            "empty text",
        ),
        (
            "x",
            DocumentInput {
                id: "a".into(),
                text: "plain text".into(),
                ..Default::default()
            },
            "external vectors",
        ),
        (
            "x",
            DocumentInput {
                id: "a".into(),
                chunks: vec![ChunkInput {
                    text: "t".into(),
                    vector: vec![1.0; 3],
                }],
                ..Default::default()
            },
            "3-d vector",
        ),
        (
            "m",
            chunked("a", &[("t", [1.0, 0.0, 0.0, 0.0])]),
            "send text",
        ),
    ];
    for (collection, doc, says) in cases {
        // Alone and beside a good document: the batch fails whole, naming the problem.
        let good = chunked("good", &[("fine", [1.0, 0.0, 0.0, 0.0])]);
        let batch = if collection == "x" {
            vec![good, doc]
        } else {
            vec![doc]
        };
        let e = engine.upsert(collection, batch).await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{says}: {e}");
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    assert_eq!(engine.collection("x").unwrap().info().document_count, 0);
    assert_eq!(engine.collection("m").unwrap().info().document_count, 0);

    // A query vector of the wrong dimension.
    let mut wrong = query(Mode::Dense, "", None);
    wrong.query_vector = Some(vec![1.0; 5]);
    let e = engine.search("x", wrong).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}
