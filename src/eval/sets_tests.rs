//! Eval sets on both backends: a split round-trips in pieces, a replacement leaves no old
//! pieces, an alias's lookup falls back to its collection, bad splits are refused, and a
//! deleted name's records go with it (a new collection of the same name inherits nothing).

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::engine::Engine;
use crate::model::hashed::{HashEmbedder, HashModels};

fn queries(n: usize, text_bytes: usize) -> Vec<EvalQuery> {
    (0..n)
        .map(|i| EvalQuery {
            id: format!("q{i:04}"),
            text: format!("query {i} ") + &"x".repeat(text_bytes),
            judgments: HashMap::from([(format!("d{i}"), 1), (format!("d{}", i + 1), 0)]),
        })
        .collect()
}

/// A query as (id, text, sorted judgments), comparable.
pub(crate) type Flat = (String, String, Vec<(String, i32)>);

pub(crate) fn sorted(mut q: Vec<EvalQuery>) -> Vec<Flat> {
    q.sort_by(|a, b| a.id.cmp(&b.id));
    q.into_iter()
        .map(|q| {
            let mut j: Vec<(String, i32)> = q.judgments.into_iter().collect();
            j.sort();
            (q.id, q.text, j)
        })
        .collect()
}

fn invalid(r: Result<SplitInfo>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_sets_round_trip_replace_and_go_with_their_name_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    for (backend, config) in crate::engine::backends_tests::configs(dir.path()) {
        let engine = Arc::new(
            Engine::open(config, Arc::new(HashModels(embedder.clone()))).expect("engine opens"),
        );
        engine.create_collection("c1", Default::default()).unwrap();
        engine.set_alias("docs", "c1", Some("")).unwrap();

        // 300 queries of about 2 KiB: more than one piece.
        let big = queries(300, 2000);
        let info = engine.put_eval_split("docs", "test", big.clone()).unwrap();
        assert_eq!((info.queries, info.judgments), (300, 600), "{backend}");
        let m = manifest(&engine, "docs", "test").unwrap().unwrap();
        assert!(m.pieces >= 2, "{backend}: {} pieces", m.pieces);
        let (got_info, got) = engine.eval_split("docs", "test").unwrap();
        assert_eq!(got_info.owner, "docs");
        assert_eq!(sorted(got), sorted(big), "{backend}");

        // Attached to the alias, not to its collection; the alias falls back to the collection.
        assert!(matches!(
            engine.eval_split("c1", "test"),
            Err(Error::NotFound(_))
        ));
        engine
            .put_eval_split("c1", "train", queries(5, 10))
            .unwrap();
        let (train, _) = engine.eval_split("docs", "train").unwrap();
        assert_eq!(train.owner, "c1", "{backend}");
        let missing = engine.eval_split("docs", "dev").unwrap_err().to_string();
        assert!(
            missing.contains("test") && missing.contains("train"),
            "{missing}"
        );

        // A replacement is whole, and the replaced pieces are gone.
        let small = queries(3, 5);
        engine
            .put_eval_split("docs", "test", small.clone())
            .unwrap();
        assert_eq!(
            sorted(engine.eval_split("docs", "test").unwrap().1),
            sorted(small)
        );
        let old = pieces_group("test", m.upload);
        assert!(
            engine.record_list("docs", &old).unwrap().is_empty(),
            "{backend}"
        );
        let listed: Vec<(String, usize)> = engine
            .eval_splits("docs")
            .unwrap()
            .into_iter()
            .map(|s| (s.split, s.queries))
            .collect();
        assert_eq!(listed, [("test".to_string(), 3)], "{backend}");

        // Refused, and nothing changed.
        invalid(engine.put_eval_split("docs", "test", Vec::new()));
        let mut twice = queries(2, 5);
        twice[1].id = twice[0].id.clone();
        assert!(invalid(engine.put_eval_split("docs", "test", twice)).contains("twice"));
        let mut none_relevant = queries(2, 5);
        none_relevant.iter_mut().for_each(|q| {
            q.judgments.values_mut().for_each(|g| *g = 0);
        });
        assert!(invalid(engine.put_eval_split("docs", "test", none_relevant)).contains("relevant"));
        invalid(engine.put_eval_split("docs", "a/b", queries(1, 5)));
        invalid(engine.put_eval_split("docs", "test", queries(2001, 1)));
        let mut long = queries(1, 5);
        long[0].text = "y".repeat(9000);
        invalid(engine.put_eval_split("docs", "test", long));
        assert!(matches!(
            engine.put_eval_split("nope", "test", queries(1, 5)),
            Err(Error::CollectionNotFound(_))
        ));
        assert_eq!(engine.eval_split("docs", "test").unwrap().1.len(), 3);

        engine.delete_eval_split("docs", "test").unwrap();
        assert!(matches!(
            engine.delete_eval_split("docs", "test"),
            Err(Error::NotFound(_))
        ));

        // Records go with their name, and a new name of the same spelling starts empty.
        engine.put_eval_split("docs", "dev", queries(2, 5)).unwrap();
        engine.delete_alias("docs", None).unwrap();
        assert!(engine.record_list("docs", MANIFESTS).unwrap().is_empty());
        engine.delete_collection("c1").await.unwrap();
        assert!(engine.record_list("c1", MANIFESTS).unwrap().is_empty());
        // What a crash between a delete and its clean-up would leave behind.
        let stale = r#"{"queries":1,"judgments":1,"pieces":1,"upload":7,"uploaded_unix_ms":1}"#;
        engine.record_put("c1", MANIFESTS, "test", stale).unwrap();
        engine.create_collection("c1", Default::default()).unwrap();
        assert!(engine.eval_splits("c1").unwrap().is_empty(), "{backend}");
        engine.delete_collection("c1").await.unwrap();
    }
}
