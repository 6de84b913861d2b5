//! Filtered search against a brute-force oracle: random typed metadata, random expressions,
//! every retriever. The oracle is [`Filter::matches`] over each document's metadata in plain
//! Rust, and the unfiltered ranking restricted to the documents it allows; the filtered
//! lexical and dense top-k must equal that ranking (scores position by position, so ties may
//! swap), and hybrid may return only allowed documents. Dense runs twice: with exact scoring
//! of the allowed set and with HNSW's filtered search (planner threshold 0).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;
use crate::filter::{Filter, Range, Test};
use crate::meta::{format_time, Metadata, Value};
use crate::model::hashed::{HashEmbedder, HashModels};
use crate::retrieve::{Mode, SearchParams};

const DOCS: usize = 48;
const DAY_US: i64 = 86_400_000_000;
const BASE_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const LANGS: [&str; 4] = ["en", "de", "fr", "es"];
const TAGS: [&str; 4] = ["a", "b", "c", "d"];
const WORDS: [&str; 8] = [
    "granite", "marble", "basalt", "slate", "quarry", "chisel", "column", "stone",
];

struct Fixture {
    _dir: tempfile::TempDir,
    engines: Vec<Engine>,
    metadata: HashMap<String, Metadata>,
    rt: tokio::runtime::Runtime,
}

fn random_doc(i: usize, rng: &mut rand::rngs::StdRng) -> DocumentInput {
    let mut m = Metadata::new();
    if rng.random_bool(0.85) {
        m.insert("year".into(), Value::Int(rng.random_range(1990..2030)));
    }
    if rng.random_bool(0.8) {
        m.insert(
            "score".into(),
            Value::Float(rng.random_range(-10..10) as f64 / 4.0),
        );
    }
    if rng.random_bool(0.8) {
        m.insert(
            "lang".into(),
            Value::Str(LANGS[rng.random_range(0..4)].into()),
        );
    }
    if rng.random_bool(0.6) {
        m.insert("draft".into(), Value::Bool(rng.random_bool(0.5)));
    }
    if rng.random_bool(0.8) {
        let at = BASE_US + rng.random_range(0..30) * DAY_US + rng.random_range(0..3) * 1000;
        m.insert("at".into(), Value::Time(at));
    }
    if rng.random_bool(0.7) {
        let tags = TAGS
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .map(|t| t.to_string())
            .collect();
        m.insert("tags".into(), Value::List(tags));
    }
    // Every document mentions "stone" (so a lexical query matches them all) with a different
    // length and term frequency (so their scores differ).
    let mut words = vec!["stone"; 1 + i % 3];
    for _ in 0..rng.random_range(2..12) {
        words.push(WORDS[rng.random_range(0..WORDS.len())]);
    }
    DocumentInput {
        id: format!("d{i:02}"),
        text: words.join(" "),
        metadata: m,
        ..Default::default()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let docs: Vec<DocumentInput> = (0..DOCS).map(|i| random_doc(i, &mut rng)).collect();
        let embedder = Arc::new(HashEmbedder::new(64).unwrap());
        // The embedded backend with both dense plans, and Qdrant when it can run here.
        let mut configs: Vec<EngineConfig> = [4096, 0]
            .into_iter()
            .map(|exact_limit| {
                let mut config =
                    EngineConfig::new(dir.path().join(exact_limit.to_string()), "hash");
                config.index.exact_filter_limit = exact_limit;
                config
            })
            .collect();
        configs.extend(
            super::backends_tests::configs(dir.path())
                .into_iter()
                .filter(|(name, _)| *name != "embedded")
                .map(|(_, c)| c),
        );
        let engines = configs
            .into_iter()
            .map(|config| {
                let engine = Engine::open(config, Arc::new(HashModels(embedder.clone()))).unwrap();
                engine.create_collection("c", Default::default()).unwrap();
                rt.block_on(engine.upsert("c", docs.clone())).unwrap();
                engine
            })
            .collect();
        let metadata = docs.into_iter().map(|d| (d.id, d.metadata)).collect();
        Fixture {
            _dir: dir,
            engines,
            metadata,
            rt,
        }
    })
}

fn int() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        (1985i64..2035).prop_map(Value::Int),
        (1985i64..2035).prop_map(|y| Value::Float(y as f64 + 0.5)),
    ]
}

fn float() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        (-12i64..12).prop_map(|x| Value::Float(x as f64 / 4.0)),
        (-3i64..3).prop_map(Value::Int),
    ]
}

fn time() -> impl Strategy<Value = Value> + Clone {
    (-2i64..32, 0i64..2)
        .prop_map(|(d, ms)| Value::Str(format_time(BASE_US + d * DAY_US + ms * 1000)))
}

fn range(v: impl Strategy<Value = Value> + Clone) -> impl Strategy<Value = Test> {
    (
        proptest::option::of(v.clone()),
        proptest::option::of(v.clone()),
        proptest::option::of(v.clone()),
        proptest::option::of(v),
    )
        .prop_filter("a range needs a bound", |(a, b, c, d)| {
            a.is_some() || b.is_some() || c.is_some() || d.is_some()
        })
        .prop_map(|(gt, gte, lt, lte)| Test::Range(Range { gt, gte, lt, lte }))
}

fn string(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    (0..options.len()).prop_map(move |i| options[i].to_string())
}

fn condition() -> impl Strategy<Value = Filter> {
    let c = |k: &'static str| move |t: Test| Filter::cond(k, t);
    prop_oneof![
        int().prop_map(Test::Eq).prop_map(c("year")),
        proptest::collection::vec((1988i64..2032).prop_map(Value::Int), 0..4)
            .prop_map(Test::In)
            .prop_map(c("year")),
        range(int()).prop_map(c("year")),
        range(float()).prop_map(c("score")),
        float().prop_map(Test::Eq).prop_map(c("score")),
        string(&LANGS)
            .prop_map(|s| Test::Eq(Value::Str(s)))
            .prop_map(c("lang")),
        proptest::collection::vec(string(&LANGS).prop_map(Value::Str), 0..3)
            .prop_map(Test::In)
            .prop_map(c("lang")),
        any::<bool>()
            .prop_map(|b| Test::Eq(Value::Bool(b)))
            .prop_map(c("draft")),
        range(time()).prop_map(c("at")),
        time().prop_map(Test::Eq).prop_map(c("at")),
        string(&TAGS).prop_map(Test::Contains).prop_map(c("tags")),
        proptest::collection::vec(string(&TAGS), 0..3)
            .prop_map(Test::ContainsAny)
            .prop_map(c("tags")),
        string(&TAGS)
            .prop_map(|s| Test::Eq(Value::Str(s)))
            .prop_map(c("tags")),
        string(&["year", "score", "lang", "draft", "at", "tags", "nokey"])
            .prop_map(|k| Filter::cond(k, Test::Exists)),
        Just(Filter::cond("nokey", Test::Eq(Value::Str("x".into())))),
    ]
}

fn expression() -> impl Strategy<Value = Filter> {
    condition().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

fn run(
    engine: &Engine,
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    filter: Filter,
    top_k: usize,
) -> Vec<(String, f32)> {
    let params = SearchParams {
        query: "stone quarry".into(),
        mode,
        top_k,
        filter,
        group_by_document: true,
        ..Default::default()
    };
    let out = rt.block_on(engine.search("c", params)).unwrap();
    out.hits.into_iter().map(|h| (h.doc_id, h.score)).collect()
}

/// `filtered` equals `oracle` restricted to `allowed`, top `k`: same scores in order, every id
/// allowed, no id twice.
fn assert_matches_oracle(
    what: &str,
    filtered: &[(String, f32)],
    oracle: &[(String, f32)],
    allowed: &dyn Fn(&str) -> bool,
    k: usize,
) {
    let expected: Vec<&(String, f32)> = oracle
        .iter()
        .filter(|(id, _)| allowed(id))
        .take(k)
        .collect();
    assert_eq!(
        filtered.len(),
        expected.len(),
        "{what}: {filtered:?} vs {expected:?}"
    );
    for (got, want) in filtered.iter().zip(&expected) {
        assert!(allowed(&got.0), "{what}: {} is not allowed", got.0);
        assert!(
            (got.1 - want.1).abs() < 1e-4,
            "{what}: {filtered:?} vs {expected:?}"
        );
    }
    let mut ids: Vec<&str> = filtered.iter().map(|h| h.0.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), filtered.len(), "{what}: repeated ids");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn filtered_search_equals_the_oracle(f in expression()) {
        let fx = fixture();
        let k = 10;
        for engine in &fx.engines {
            let schema = engine.collection("c").unwrap().schema();
            let resolved = match f.resolve(&schema) {
                Ok(r) => r,
                // A fractional value for an integer's equality, say: rejected, never run.
                Err(e) => {
                    prop_assert!(e.is_user_error());
                    let params = SearchParams { query: "stone".into(), filter: f.clone(), ..Default::default() };
                    prop_assert!(fx.rt.block_on(engine.search("c", params)).is_err());
                    continue;
                }
            };
            let allowed = |id: &str| resolved.matches(&fx.metadata[id]);
            for mode in [Mode::Lexical, Mode::Dense] {
                let oracle = run(engine, &fx.rt, mode, Filter::all(), DOCS);
                prop_assert_eq!(oracle.len(), DOCS);
                let filtered = run(engine, &fx.rt, mode, f.clone(), k);
                assert_matches_oracle(&format!("{mode:?} {f:?}"), &filtered, &oracle, &allowed, k);
            }
            let hybrid = run(engine, &fx.rt, Mode::Hybrid, f.clone(), k);
            let n_allowed = fx.metadata.keys().filter(|id| allowed(id)).count();
            prop_assert_eq!(hybrid.len(), n_allowed.min(k));
            prop_assert!(hybrid.iter().all(|(id, _)| allowed(id)));
        }
    }
}

/// A strict and an inclusive bound on one side (CI found Qdrant using the strict one only):
/// every backend and retriever must honour both.
#[test]
fn two_bounds_on_one_side_equal_the_oracle() {
    let fx = fixture();
    let (f, i) = (Value::Float, Value::Int);
    let ranges = [
        Range {
            gt: Some(f(-2.5)),
            gte: Some(i(-1)),
            lte: Some(i(-2)),
            ..Default::default()
        },
        Range {
            gt: Some(f(-2.5)),
            gte: Some(f(-1.0)),
            ..Default::default()
        },
        Range {
            gt: Some(f(0.5)),
            gte: Some(f(-1.0)),
            lt: Some(f(1.5)),
            lte: Some(f(1.0)),
        },
        Range {
            lt: Some(f(-1.0)),
            lte: Some(f(1.0)),
            ..Default::default()
        },
    ];
    for r in ranges {
        let filter = Filter::cond("score", Test::Range(r));
        for engine in &fx.engines {
            let resolved = filter
                .resolve(&engine.collection("c").unwrap().schema())
                .unwrap();
            let allowed = |id: &str| resolved.matches(&fx.metadata[id]);
            for mode in [Mode::Lexical, Mode::Dense] {
                let oracle = run(engine, &fx.rt, mode, Filter::all(), DOCS);
                let filtered = run(engine, &fx.rt, mode, filter.clone(), DOCS);
                let what = format!("{:?} {mode:?} {filter:?}", engine.backend_kind());
                assert_matches_oracle(&what, &filtered, &oracle, &allowed, DOCS);
            }
        }
    }
}

#[test]
fn pages_concatenate_to_the_full_ranking() {
    let fx = fixture();
    let f = crate::filter::parse("year >= 2000 OR lang = \"en\"").unwrap();
    for (engine, mode) in fx
        .engines
        .iter()
        .flat_map(|e| [Mode::Lexical, Mode::Dense, Mode::Hybrid].map(|m| (e, m)))
    {
        let all = run(engine, &fx.rt, mode, f.clone(), 30);
        let mut paged = Vec::new();
        let mut offset = 0;
        loop {
            let params = SearchParams {
                query: "stone quarry".into(),
                mode,
                top_k: 7,
                offset,
                filter: f.clone(),
                group_by_document: true,
                ..Default::default()
            };
            let out = fx.rt.block_on(engine.search("c", params)).unwrap();
            assert!(out.total_candidates >= out.hits.len());
            paged.extend(out.hits.into_iter().map(|h| (h.doc_id, h.score)));
            let Some(next) = out.next_offset else { break };
            offset = next;
            if offset >= 30 {
                break;
            }
        }
        paged.truncate(30);
        assert_eq!(paged, all, "{:?} {mode:?}", engine.backend_kind());
    }
}
