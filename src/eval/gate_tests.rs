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

/// Document `i`: two words of its own, so a query of those words finds it.
fn text(i: usize) -> String {
    format!(
        "{} {} sample{i} from the field",
        WORDS[i % WORDS.len()],
        WORDS[(i / WORDS.len() + i + 1) % WORDS.len()]
    )
}

fn docs(n: usize, shift: usize) -> Vec<DocumentInput> {
    (0..n)
        .map(|i| DocumentInput {
            id: format!("d{i}"),
            text: text((i + shift) % n),
            ..Default::default()
        })
        .collect()
}

fn split(n: usize) -> Vec<EvalQuery> {
    (0..n)
        .map(|i| EvalQuery {
            id: format!("q{i}"),
            text: format!("sample{i} {}", WORDS[i % WORDS.len()]),
            judgments: HashMap::from([(format!("d{i}"), 1)]),
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
        // g1 serves; g_bad has every text on the wrong document; g_same is g1 again.
        for (name, shift) in [("g1", 0), ("g_bad", 1), ("g_same", 0)] {
            engine.create_collection(name, Default::default()).unwrap();
            engine.upsert(name, docs(N, shift)).await.unwrap();
        }
        engine.set_alias("docs", "g1", Some("")).unwrap();
        engine.put_eval_split("docs", "test", split(N)).unwrap();
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
        let back = engine.rollback("docs", "g_same", "g1").unwrap();
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
        // A switch in between: the rollback is refused and nothing moves.
        engine.set_alias("docs", "g_same", Some("g1")).unwrap();
        assert!(matches!(
            engine.rollback("docs", "g1", "g_bad"),
            Err(Error::Aborted(_))
        ));

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
