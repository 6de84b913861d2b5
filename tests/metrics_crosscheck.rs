//! Our metrics against an established implementation: pytrec_eval (trec_eval's own C code),
//! installed from PyPI into a cached virtualenv by this test. Same run and qrels files, graded
//! judgments and tied scores; every per-query value must agree to 1e-6.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

mod common;

use quarry::eval::metrics;
use rand::{Rng, SeedableRng};

const PYTREC: &str = "pytrec-eval-terrier==0.5.11";
/// A second reader of run files, whose RR@k breaks ties its own way (by file order, through
/// its msmarco provider): the run files Quarry writes must mean the same ranking to it.
const IR_MEASURES: &str = "ir-measures==0.4.3";

/// A virtualenv with pytrec_eval and ir_measures, created once and cached next to the models.
fn python() -> PathBuf {
    common::python_venv("pyeval-venv", &[PYTREC, IR_MEASURES]).join("bin/python")
}

const SCRIPT: &str = r#"
import json, sys, pytrec_eval
qrels, run = {}, {}
for line in open(sys.argv[1]):
    q, _, d, g = line.split()
    qrels.setdefault(q, {})[d] = int(g)
for line in open(sys.argv[2]):
    q, _, d, _, s, _ = line.split()
    run.setdefault(q, {})[d] = float(s)
top10 = {}
for line in open(sys.argv[3]):
    q, _, d, _, s, _ = line.split()
    top10.setdefault(q, {})[d] = float(s)
full = pytrec_eval.RelevanceEvaluator(qrels, {'ndcg_cut.10', 'recall.10', 'recall.100', 'map_cut.100'}).evaluate(run)
rr = pytrec_eval.RelevanceEvaluator(qrels, {'recip_rank'}).evaluate(top10)
out = {q: {'ndcg_10': m['ndcg_cut_10'], 'recall_10': m['recall_10'], 'recall_100': m['recall_100'],
           'map_100': m['map_cut_100'], 'mrr_10': rr.get(q, {}).get('recip_rank', 0.0)}
       for q, m in full.items()}
# Quarry's own run file (tied scores written strictly decreasing), read by ir_measures.
import ir_measures
from ir_measures import nDCG, R, RR, AP
measures = {'ndcg_10': nDCG@10, 'recall_10': R@10, 'recall_100': R@100, 'map_100': AP@100, 'mrr_10': RR@10}
qrels_irm = list(ir_measures.read_trec_qrels(sys.argv[1]))
run_irm = list(ir_measures.read_trec_run(sys.argv[4]))
irm = {}
for m in ir_measures.iter_calc(list(measures.values()), qrels_irm, run_irm):
    name = [k for k, v in measures.items() if v == m.measure][0]
    irm.setdefault(m.query_id, {})[name] = m.value
print(json.dumps({'pytrec_eval': out, 'ir_measures': irm}))
"#;

#[test]
fn metrics_agree_with_pytrec_eval_on_graded_judgments_and_ties() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let dir = tempfile::tempdir().unwrap();
    let mut qrels_txt = String::new();
    let mut run_txt = String::new();
    let mut top10_txt = String::new();
    let mut quarry_run = String::new();
    let mut ours: HashMap<String, metrics::QueryMetrics> = HashMap::new();
    for q in 0..60 {
        let qid = format!("q{q}");
        let mut judgments = HashMap::new();
        for d in 0..40 {
            if rng.random_bool(0.25) {
                // Grades 0..=3; 0 is judged non-relevant.
                judgments.insert(format!("d{d:02}"), rng.random_range(0..=3));
            }
        }
        // Some judged documents are never retrieved; scores have one decimal, so ties abound.
        let n = rng.random_range(5..35);
        let results: Vec<(String, f64)> = (0..n)
            .map(|d| (format!("d{d:02}"), (rng.random_range(0..20) as f64) / 10.0))
            .collect();
        for (d, g) in &judgments {
            qrels_txt.push_str(&format!("{qid} 0 {d} {g}\n"));
        }
        // Write results in a scrambled order: only scores may matter.
        for (i, (d, s)) in results.iter().rev().enumerate() {
            run_txt.push_str(&format!("{qid} Q0 {d} {} {s:.1} test\n", i + 1));
        }
        for (i, d) in metrics::ranked(&results).iter().take(10).enumerate() {
            let s = results.iter().find(|r| r.0 == *d).unwrap().1;
            top10_txt.push_str(&format!("{qid} Q0 {d} {} {s:.1} test\n", i + 1));
        }
        // The run file as Quarry writes it (quarry eval's run files).
        let ranking: Vec<(String, f64)> = metrics::ranked(&results)
            .iter()
            .map(|d| (d.to_string(), results.iter().find(|r| r.0 == *d).unwrap().1))
            .collect();
        quarry::eval::report::trec_lines(&mut quarry_run, &qid, &ranking, "quarry");
        if let Some(m) = metrics::evaluate(&results, &judgments) {
            ours.insert(qid, m);
        }
    }
    let paths = ["qrels.txt", "run.txt", "top10.txt", "quarry.run"].map(|n| dir.path().join(n));
    std::fs::write(&paths[0], qrels_txt).unwrap();
    std::fs::write(&paths[1], run_txt).unwrap();
    std::fs::write(&paths[2], top10_txt).unwrap();
    std::fs::write(&paths[3], quarry_run).unwrap();
    let out = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both: HashMap<String, HashMap<String, HashMap<String, f64>>> =
        serde_json::from_slice(&out.stdout).unwrap();
    let theirs = &both["pytrec_eval"];
    let irm = &both["ir_measures"];
    assert!(ours.len() > 30, "too few scorable queries: {}", ours.len());
    let mut compared = 0;
    for (qid, m) in &ours {
        let t = &theirs[qid];
        for (name, v) in [
            ("ndcg_10", m.ndcg_10),
            ("recall_10", m.recall_10),
            ("recall_100", m.recall_100),
            ("map_100", m.map_100),
            ("mrr_10", m.mrr_10),
        ] {
            assert!(
                (v - t[name]).abs() < 1e-6,
                "{qid} {name}: ours {v}, pytrec_eval {}",
                t[name]
            );
            // ir_measures on Quarry's run file: the same, ties and all.
            let i = irm[qid].get(name).copied().unwrap_or(0.0);
            assert!(
                (v - i).abs() < 1e-6,
                "{qid} {name}: ours {v}, ir_measures on our run file {i}"
            );
            compared += 1;
        }
    }
    println!("{compared} per-query values agree with pytrec_eval and with ir_measures on our run file, to 1e-6");
}
