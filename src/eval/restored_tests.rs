//! A snapshot carries a collection's eval sets, search settings and gate decisions, and a
//! restore under another name serves them; crafted server records are refused with a user
//! error before anything is written, and leftovers of the source (orphan pieces, more than
//! the kept decisions) are dropped.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::engine::DocumentInput;
use crate::eval::gate::Action;
use crate::eval::run::EvalQuery;
use crate::eval::sets::tests::sorted;
use crate::eval::tune::tests::weighted as settings;
use crate::model::hashed::{HashEmbedder, HashModels};

fn engine(dir: &Path) -> Arc<Engine> {
    let embedder = Arc::new(HashEmbedder::new(64).unwrap());
    let config = crate::engine::EngineConfig::new(dir, "hash");
    Arc::new(Engine::open(config, Arc::new(HashModels(embedder))).unwrap())
}

fn queries(n: usize, text_bytes: usize) -> Vec<EvalQuery> {
    (0..n)
        .map(|i| EvalQuery {
            id: format!("q{i:04}"),
            text: format!("granite {i} ") + &"x".repeat(text_bytes),
            judgments: HashMap::from([(format!("d{}", i % 5), 1)]),
        })
        .collect()
}

fn gate(decided_unix_ms: u64) -> GateRecord {
    GateRecord {
        action: Action::Adopt,
        alias: String::new(),
        baseline: "c".into(),
        candidate: "c".into(),
        switched: true,
        caught_up: 0,
        split: "test".into(),
        split_owner: "c".into(),
        run: "hybrid".into(),
        queries: 3,
        primary: vec!["ndcg@10".into()],
        alpha: 0.05,
        holds: true,
        worse: vec![],
        metrics: vec![],
        wins: vec![],
        losses: vec![],
        decided_unix_ms,
    }
}

/// A collection with two splits (one in several pieces), adopted and proposed settings, a
/// gate decision and a piece no manifest points to.
async fn source(engine: &Arc<Engine>) {
    engine.create_collection("c", Default::default()).unwrap();
    let docs = (0..5)
        .map(|i| DocumentInput {
            id: format!("d{i}"),
            text: format!("granite basalt number{i}"),
            ..Default::default()
        })
        .collect();
    engine.upsert("c", docs).await.unwrap();
    engine
        .put_eval_split("c", "test", queries(300, 2000))
        .unwrap();
    engine.put_eval_split("c", "train", queries(7, 10)).unwrap();
    engine.adopt_settings_now("c", settings(0.3, 50)).unwrap();
    engine.propose_settings("c", settings(0.7, 80)).unwrap();
    engine.record_gate("c", &gate(1)).unwrap();
    // A promotion of `c` through alias `docs`, replacing `c0`.
    let promoted = GateRecord {
        action: Action::Promote,
        alias: "docs".into(),
        baseline: "c0".into(),
        ..gate(0)
    };
    engine.record_gate("c", &promoted).unwrap();
    engine
        .record_put("c", &pieces_group("test", 0xff), "00000", "[]")
        .unwrap();
}

fn user_error(r: Result<Vec<OwnedRecord>>, what: &str) {
    match r {
        Err(e @ Error::InvalidArgument(_)) => {
            let m = e.to_string();
            assert!(m.len() < 600 && !m.contains('\n'), "{what}: {m:?}");
        }
        other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_serves_the_collections_eval_sets_settings_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    source(&engine).await;
    let archive = dir.path().join("c.snapshot");
    engine
        .create_snapshot(&["c".into()], &archive)
        .await
        .unwrap();

    let restored = restore(&engine, &archive, None, Some("c2"), &|_| Ok(())).unwrap();
    assert_eq!(restored[0].record.name, "c2");
    for split in ["test", "train"] {
        let (_, want) = engine.eval_split("c", split).unwrap();
        let (info, got) = engine.eval_split("c2", split).unwrap();
        assert_eq!(info.owner, "c2");
        assert_eq!(sorted(got), sorted(want), "split {split}");
    }
    assert_eq!(engine.search_settings("c2").unwrap(), settings(0.3, 50));
    assert_eq!(
        engine.proposed_settings("c2").unwrap(),
        Some(settings(0.7, 80))
    );
    assert_eq!(
        engine.gate_records("c2").unwrap(),
        engine.gate_records("c").unwrap()
    );
    assert_eq!(engine.gate_records("c2").unwrap().len(), 2);
    // The source's orphan piece stayed behind.
    let kept = engine.local_records("c2").unwrap();
    assert!(
        !kept.iter().any(|r| r.group == pieces_group("test", 0xff)),
        "an orphan piece was restored"
    );
    assert_eq!(kept.len() + 1, engine.local_records("c").unwrap().len());

    // The restored decisions tell of the collection the snapshot was taken of: an alias
    // pointed at the copy has nothing to roll back to through them.
    engine.set_alias("docs", "c2", Some("")).unwrap();
    assert!(matches!(
        engine.rollback_target("docs"),
        Err(Error::FailedPrecondition(_))
    ));

    // A failed restore (the name is taken) writes no records under any name.
    let before = engine.local_records("c2").unwrap();
    assert!(restore(&engine, &archive, None, Some("c2"), &|_| Ok(())).is_err());
    assert_eq!(engine.local_records("c2").unwrap(), before);
    // A refused record leaves nothing under the name it would have had.
    let refuse = |_: Vec<OwnedRecord>| -> Result<Vec<OwnedRecord>> { Err(invalid("no")) };
    let e = engine
        .restore_snapshot(&archive, None, Some("c3"), &|_| Ok(()), &refuse)
        .unwrap_err();
    assert!(e.is_user_error(), "{e:?}");
    assert!(engine.collection("c3").is_err());
    assert!(engine.local_records("c3").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_server_records_are_refused_as_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    source(&engine).await;
    let base = engine.local_records("c").unwrap();
    let check = |edit: &dyn Fn(&mut Vec<OwnedRecord>)| {
        let mut r = base.clone();
        edit(&mut r);
        check_records(&engine, r)
    };
    let find = |r: &mut Vec<OwnedRecord>, group: &str, item: &str| -> usize {
        r.iter()
            .position(|x| x.group == group && x.item == item)
            .unwrap()
    };
    let record = |group: &str, item: &str, value: &str| OwnedRecord {
        group: group.into(),
        item: item.into(),
        value: value.into(),
    };
    assert!(check(&|_| {}).is_ok());

    let max_query_bytes = engine.config().limits.max_query_bytes;
    let test_manifest = |r: &mut Vec<OwnedRecord>| find(r, MANIFESTS, "test");
    type Edit<'a> = Box<dyn Fn(&mut Vec<OwnedRecord>) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "settings that do not decode",
            Box::new(|r| {
                let i = find(r, search_settings::GROUP, "adopted");
                r[i].value = "{\"fusion\":".into();
            }),
        ),
        (
            "candidates over max_top_k",
            Box::new(|r| {
                let i = find(r, search_settings::GROUP, "adopted");
                r[i].value = serde_json::to_string(&settings(0.5, 1 << 30)).unwrap();
            }),
        ),
        (
            "a negative fusion weight",
            Box::new(|r| {
                let i = find(r, search_settings::GROUP, "proposed");
                r[i].value = serde_json::to_string(&settings(-3.0, 10)).unwrap();
            }),
        ),
        (
            "an unknown settings item",
            Box::new(|r| r.push(record(search_settings::GROUP, "shadow", "{}"))),
        ),
        (
            "an unknown group",
            Box::new(|r| r.push(record("keys", "admin", "secret"))),
        ),
        (
            "a manifest that does not decode",
            Box::new(move |r| {
                let i = test_manifest(r);
                r[i].value = "[]".into();
            }),
        ),
        (
            "a manifest whose counts lie",
            Box::new(move |r| {
                let i = test_manifest(r);
                let mut v: serde_json::Value = serde_json::from_str(&r[i].value).unwrap();
                v["judgments"] = 9999.into();
                r[i].value = v.to_string();
            }),
        ),
        (
            "a manifest naming more pieces than there are",
            Box::new(move |r| {
                let i = test_manifest(r);
                let mut v: serde_json::Value = serde_json::from_str(&r[i].value).unwrap();
                v["pieces"] = (v["pieces"].as_u64().unwrap() + 1).into();
                r[i].value = v.to_string();
            }),
        ),
        (
            "a piece that does not decode",
            Box::new(|r| {
                let i = r
                    .iter()
                    .position(|x| x.group.starts_with("evalpiece/train/"))
                    .unwrap();
                r[i].value = "[{\"id\": 1}]".into();
            }),
        ),
        (
            "a query text over max_query_bytes",
            Box::new(move |r| {
                let i = r
                    .iter()
                    .position(|x| x.group.starts_with("evalpiece/train/"))
                    .unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&r[i].value).unwrap();
                v[0]["text"] = "y".repeat(max_query_bytes + 1).into();
                r[i].value = v.to_string();
            }),
        ),
        (
            "a split with an invalid name",
            Box::new(|r| {
                let i = find(r, MANIFESTS, "train");
                r[i].item = "../train".into();
            }),
        ),
        (
            "more splits than a collection may hold",
            Box::new(|r| {
                let i = find(r, MANIFESTS, "train");
                for k in 0..MAX_SPLITS {
                    let mut m = r[i].clone();
                    m.item = format!("s{k}");
                    r.push(m);
                }
            }),
        ),
        (
            "a gate decision that does not decode",
            Box::new(|r| r.push(record(GATES, "0000000000000002-00000000", "{}"))),
        ),
        (
            "a gate decision naming no valid collection",
            Box::new(|r| {
                let mut g = gate(2);
                g.candidate = "../../etc".into();
                let v = serde_json::to_string(&g).unwrap();
                r.push(record(GATES, "0000000000000002-00000000", &v));
            }),
        ),
    ];
    for (what, edit) in &cases {
        user_error(check(edit.as_ref()), what);
    }

    // More decisions than are kept: the newest survive.
    let kept = check(&|r| {
        for t in 2..(MAX_RECORDS as u64 + 7) {
            let v = serde_json::to_string(&gate(t)).unwrap();
            r.push(record(GATES, &format!("{t:016}-00000000"), &v));
        }
    })
    .unwrap();
    let gates: Vec<u64> = kept
        .iter()
        .filter(|r| r.group == GATES)
        .map(|r| {
            serde_json::from_str::<GateRecord>(&r.value)
                .unwrap()
                .decided_unix_ms
        })
        .collect();
    assert_eq!(gates.len(), MAX_RECORDS);
    assert_eq!(gates.first(), Some(&7));
}
