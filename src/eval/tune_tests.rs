//! Search settings through the gate, on both backends: a tuning proposes the better setting
//! only when it holds on another split, adoption is gated and recorded, searches that name no
//! setting use the adopted one, and it outlives a restart.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::engine::DocumentInput;
use crate::model::hashed::{HashEmbedder, HashModels};

const N: usize = 80;

/// Document `i` holds three words no other document has, and common filler. A 16-dimension
/// hashed embedding confuses the rare words (many share a dimension), BM25 does not: a
/// lexical-heavy fusion is better here than a dense-heavy one.
fn docs() -> Vec<DocumentInput> {
    (0..N)
        .map(|i| DocumentInput {
            id: format!("d{i}"),
            text: format!("alpha{i} beta{i} gamma{i} with the usual notes on the sample"),
            ..Default::default()
        })
        .collect()
}

fn queries(range: std::ops::Range<usize>) -> Vec<EvalQuery> {
    range
        .map(|i| EvalQuery {
            id: format!("q{i}"),
            text: format!("alpha{i} gamma{i} notes"),
            judgments: HashMap::from([(format!("d{i}"), 1)]),
        })
        .collect()
}

pub(crate) fn weighted(lexical: f32, candidates: usize) -> SearchSettings {
    SearchSettings {
        fusion: Fusion::Weighted {
            lexical_weight: lexical,
            dense_weight: 1.0 - lexical,
        },
        candidates,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_proposes_adoption_is_gated_and_searches_use_the_adopted_setting() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = Arc::new(HashEmbedder::new(16).unwrap());
    for (backend, config) in crate::engine::backends_tests::configs(dir.path()) {
        let open = || {
            Arc::new(
                Engine::open(config.clone(), Arc::new(HashModels(embedder.clone())))
                    .expect("engine opens"),
            )
        };
        let engine = open();
        engine.create_collection("c", Default::default()).unwrap();
        engine.upsert("c", docs()).await.unwrap();
        engine.put_eval_split("c", "train", queries(0..40)).unwrap();
        engine.put_eval_split("c", "test", queries(40..N)).unwrap();
        let (gate, cancel) = (Gate::default(), Cancel::new());
        // A poor setting is adopted to begin with (directly: only the gate does this outside
        // tests).
        let poor = weighted(0.05, 0);
        engine.adopt_settings_now("c", poor).unwrap();

        let same = engine
            .tune("c", ("train", "train"), vec![poor], &gate, &cancel)
            .await;
        assert!(matches!(same, Err(Error::InvalidArgument(_))), "{same:?}");
        assert!(matches!(
            engine.adopt_settings("c", "test", &gate, &cancel).await,
            Err(Error::FailedPrecondition(_))
        ));

        let good = weighted(0.9, 200);
        let grid = vec![poor, good];
        let tuned = engine
            .tune("c", ("train", "test"), grid, &gate, &cancel)
            .await
            .unwrap();
        assert_eq!(tuned.best, good, "{backend}: {:?}", tuned.grid);
        assert!(
            tuned.grid[0].1 > tuned.adopted_score,
            "{backend}: {:?}",
            tuned.grid
        );
        assert!(
            tuned.proposed && tuned.check.holds,
            "{backend}: {:?}",
            tuned.check
        );
        assert_eq!(tuned.check.split, "test");
        assert_eq!(engine.proposed_settings("c").unwrap(), Some(good));
        // Proposed is not adopted.
        assert_eq!(engine.search_settings("c").unwrap(), poor);

        let adopted = engine
            .adopt_settings("c", "test", &gate, &cancel)
            .await
            .unwrap();
        assert!(adopted.switched && adopted.holds, "{backend}: {adopted:?}");
        assert_eq!(adopted.action, super::super::gate::Action::Adopt);
        assert_eq!(engine.search_settings("c").unwrap(), good);
        assert_eq!(engine.proposed_settings("c").unwrap(), None);
        let records = engine.gate_records("c").unwrap();
        assert_eq!(
            records.len(),
            2,
            "{backend}: the tuning's check and the adoption"
        );

        // A search or run that names no setting uses the adopted one.
        let test = queries(40..N);
        let runs = [
            RunSpec::parse("hybrid").unwrap(),
            RunSpec {
                name: "explicit".into(),
                fusion: Some(good.fusion),
                candidates: Some(good.candidates),
                aggregation: Some(good.aggregation),
                ..RunSpec::parse("hybrid").unwrap()
            },
        ];
        let o = engine
            .evaluate("c", &test, &runs, 0, &[], &mut |_, _| {}, &cancel)
            .await
            .unwrap();
        assert_eq!(o.runs[0].mean, o.runs[1].mean, "{backend}");

        // Worse beyond the noise: refused, recorded, nothing adopted.
        engine.propose_settings("c", poor).unwrap();
        let refused = engine
            .adopt_settings("c", "test", &gate, &cancel)
            .await
            .unwrap();
        assert!(
            !refused.holds && !refused.switched,
            "{backend}: {refused:?}"
        );
        assert_eq!(engine.search_settings("c").unwrap(), good);
        assert_eq!(engine.proposed_settings("c").unwrap(), Some(poor));
        let bad = SearchSettings {
            candidates: 1_000_000,
            ..good
        };
        assert!(matches!(
            engine.propose_settings("c", bad),
            Err(Error::InvalidArgument(_))
        ));
        let no_decay = SearchSettings {
            aggregation: crate::retrieve::Aggregation::Sum { decay: 0.0 },
            ..good
        };
        assert!(matches!(
            engine.propose_settings("c", no_decay),
            Err(Error::InvalidArgument(_))
        ));

        // Durable: a restarted server (or another front end) searches with it.
        drop(engine);
        let engine = open();
        assert_eq!(engine.search_settings("c").unwrap(), good, "{backend}");
        engine.delete_collection("c").await.unwrap();
    }
}

#[test]
fn a_setting_of_zero_candidates_is_measured_as_itself() {
    // The run of a setting names its candidates, 0 included ...
    let zero = SearchSettings {
        candidates: 0,
        ..weighted(0.5, 0)
    };
    assert_eq!(run("p".into(), Some(zero)).candidates, Some(0));
    assert_eq!(run("a".into(), None).candidates, None);
    // ... and 0 is the evaluation's depth, whatever the collection has adopted.
    use crate::eval::run::run_candidates;
    assert_eq!(run_candidates(Some(0), 400, 100), 100);
    assert_eq!(run_candidates(None, 400, 100), 400);
    assert_eq!(run_candidates(None, 0, 100), 100);
    assert_eq!(run_candidates(Some(50), 400, 100), 100);
    assert_eq!(run_candidates(Some(300), 0, 100), 300);
}
