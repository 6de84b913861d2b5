//! The gate on both backends: a generation made worse is refused (the alias stays, the
//! refusal is recorded with the candidate), an equal one is promoted, a rollback restores the
//! old answers exactly, and each collection keeps its last records only.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::engine::DocumentInput;
use crate::eval::run::EvalQuery;
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

const WORDS: [&str; 12] = [
    "basalt", "granite", "quartz", "feldspar", "obsidian", "pumice", "gneiss", "schist", "marble",
    "slate", "shale", "chalk",
];

/// Document `i`'s two words: each word is in many documents, each pair in one, far apart in
/// the text, so a query of the pair finds the document only where one chunk holds both.
fn pair(i: usize) -> (&'static str, &'static str) {
    (
        WORDS[i % WORDS.len()],
        WORDS[(i + 1 + i / WORDS.len()) % WORDS.len()],
    )
}

fn docs(n: usize) -> Vec<DocumentInput> {
    let filler = "notes about the outcrop and its layers ".repeat(3);
    (0..n)
        .map(|i| {
            let (a, b) = pair(i);
            DocumentInput {
                id: format!("d{i}"),
                text: format!("{a} {filler} {b}"),
                ..Default::default()
            }
        })
        .collect()
}

fn split(n: usize) -> Vec<EvalQuery> {
    (0..n)
        .map(|i| {
            let (a, b) = pair(i);
            EvalQuery {
                id: format!("q{i}"),
                text: format!("{a} {b}"),
                judgments: HashMap::from([(format!("d{i}"), 1)]),
            }
        })
        .collect()
}

async fn answers(engine: &Engine, collection: &str, n: usize) -> Vec<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for q in split(n) {
        let params = SearchParams {
            query: q.text,
            mode: Mode::Hybrid,
            top_k: 10,
            ..Default::default()
        };
        let hits = engine.search(collection, params).await.unwrap().hits;
        out.push(
            hits.into_iter()
                .map(|h| (h.doc_id, (h.score * 1e6) as u32))
                .collect(),
        );
    }
    out
}

fn promotion(candidate: &str, baseline: &str) -> Promotion {
    Promotion {
        alias: "docs".into(),
        baseline: baseline.into(),
        candidate: candidate.into(),
        split: "test".into(),
        run: RunSpec::parse("hybrid").unwrap(),
        gate: Gate::default(),
        depth: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worse_is_refused_equal_is_promoted_and_rollback_restores_on_both_backends() {
    const N: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    for (backend, config) in crate::engine::backends_tests::configs(dir.path()) {
        let engine = Arc::new(
            Engine::open(config, Arc::new(HashModels(embedder.clone()))).expect("engine opens"),
        );
        // g1 serves; g_bad is made worse on purpose (chunks too small to hold a query's two
        // words); g_same has g1's settings.
        for (name, tokens) in [("g1", None), ("g_bad", Some(8)), ("g_same", None)] {
            let settings = crate::engine::CollectionSettings {
                chunk_tokens: tokens,
                chunk_overlap: tokens.map(|_| 0),
                ..Default::default()
            };
            engine.create_collection(name, settings).unwrap();
            engine.upsert(name, docs(N)).await.unwrap();
        }
        engine.set_alias("docs", "g1", Some("")).unwrap();
        engine.put_eval_split("docs", "test", split(N)).unwrap();
        // Writes the generations built earlier do not have: a promotion brings them over.
        let late = DocumentInput {
            id: "late".into(),
            text: "late obsidian arrival".into(),
            ..Default::default()
        };
        engine.upsert("docs", vec![late]).await.unwrap();
        engine
            .delete_documents("docs", vec!["d47".into()])
            .await
            .unwrap();
        let before = answers(&engine, "docs", N).await;

        let cancel = Cancel::new();
        let refused = engine
            .promote(promotion("g_bad", "g1"), &cancel)
            .await
            .unwrap();
        assert!(
            !refused.holds && !refused.switched,
            "{backend}: {refused:?}"
        );
        assert!(refused.worse.contains(&"ndcg@10".to_string()), "{backend}");
        assert_eq!(
            refused.caught_up, 2,
            "{backend}: measured on the same documents"
        );
        assert_eq!((refused.queries, refused.split_owner.as_str()), (N, "docs"));
        assert!(!refused.losses.is_empty() && refused.losses.len() <= CHANGED_LISTED);
        assert_eq!(engine.alias_target("docs").unwrap().as_deref(), Some("g1"));
        assert_eq!(engine.gate_records("g_bad").unwrap(), vec![refused]);

        // Expecting another baseline than the alias's: ABORTED, nothing evaluated or switched.
        let stale = engine.promote(promotion("g_same", "g_bad"), &cancel).await;
        assert!(matches!(stale, Err(Error::Aborted(_))), "{stale:?}");

        let promoted = engine
            .promote(promotion("g_same", "g1"), &cancel)
            .await
            .unwrap();
        assert!(
            promoted.holds && promoted.switched,
            "{backend}: {promoted:?}"
        );
        assert_eq!(promoted.metrics.iter().map(|m| m.delta).sum::<f64>(), 0.0);
        assert_eq!(
            engine.alias_target("docs").unwrap().as_deref(),
            Some("g_same")
        );

        // Rollback: back to what the promotion replaced, with the same answers.
        assert_eq!(
            engine.rollback_target("docs").unwrap(),
            ("g_same".to_string(), "g1".to_string())
        );
        let back = engine.rollback("docs", "g_same", "g1").await.unwrap();
        assert_eq!(
            (back.action, back.candidate.as_str()),
            (Action::Rollback, "g1")
        );
        assert_eq!(engine.alias_target("docs").unwrap().as_deref(), Some("g1"));
        assert_eq!(answers(&engine, "docs", N).await, before, "{backend}");
        assert_eq!(engine.gate_records("g1").unwrap(), vec![back]);
        // No promotion put g1 there: nothing to roll back to.
        assert!(matches!(
            engine.rollback_target("docs"),
            Err(Error::FailedPrecondition(_))
        ));
        // A rollback brings back what the alias took since the promotion.
        let again = engine
            .promote(promotion("g_same", "g1"), &cancel)
            .await
            .unwrap();
        assert!(again.switched, "{backend}");
        let after = DocumentInput {
            id: "after".into(),
            text: "written after the promotion".into(),
            ..Default::default()
        };
        engine.upsert("docs", vec![after]).await.unwrap();
        let back = engine.rollback("docs", "g_same", "g1").await.unwrap();
        assert_eq!(back.caught_up, 1, "{backend}");
        assert_eq!(
            engine
                .get_documents("docs", &["after".into()], false)
                .unwrap()
                .0
                .len(),
            1
        );
        // A switch in between: the rollback is refused and nothing moves.
        engine.set_alias("docs", "g_same", Some("g1")).unwrap();
        let moved = engine.rollback("docs", "g1", "g_bad").await;
        assert!(matches!(moved, Err(Error::Aborted(_))), "{moved:?}");

        // Each collection keeps its last MAX_RECORDS records, newest first.
        let mut last = None;
        for i in 0..MAX_RECORDS + 3 {
            let mut r = engine.gate_records("g_bad").unwrap()[0].clone();
            r.decided_unix_ms += 1 + i as u64;
            engine.record_gate("g_bad", &r).unwrap();
            last = Some(r);
        }
        let kept = engine.gate_records("g_bad").unwrap();
        assert_eq!(kept.len(), MAX_RECORDS, "{backend}");
        assert_eq!(Some(&kept[0]), last.as_ref());

        engine.delete_alias("docs", None).unwrap();
        for name in ["g1", "g_bad", "g_same"] {
            engine.delete_collection(name).await.unwrap();
            assert!(engine.gate_records(name).unwrap().is_empty());
        }
    }
}
