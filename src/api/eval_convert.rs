//! Conversions of the eval's messages: results and their comparisons, eval splits, gate
//! records, search settings and tunings (the rest of the API's are in `convert.rs`).

use super::convert::{fusion, fusion_to_pb, mode, mode_to_pb};
use super::pb;
use crate::error::Result;
use crate::eval::compare::Comparison;
use crate::eval::metrics::QueryMetrics;
use crate::eval::run::{EvalOutcome, Missed, QueryOutcome, RunOutcome, RunSpec};
use crate::retrieve::Aggregation;

fn metrics_pb(m: &QueryMetrics) -> pb::Metrics {
    pb::Metrics {
        ndcg_at_10: m.ndcg_10,
        recall_at_10: m.recall_10,
        recall_at_100: m.recall_100,
        mrr_at_10: m.mrr_10,
        map_at_100: m.map_100,
    }
}

fn metrics_core(m: Option<pb::Metrics>) -> QueryMetrics {
    let m = m.unwrap_or_default();
    QueryMetrics {
        ndcg_10: m.ndcg_at_10,
        recall_10: m.recall_at_10,
        recall_100: m.recall_at_100,
        mrr_10: m.mrr_at_10,
        map_100: m.map_at_100,
    }
}

/// A paired comparison on the wire.
fn comparison_pb(c: Comparison) -> pb::EvalComparison {
    pb::EvalComparison {
        baseline: c.a,
        candidate: c.b,
        queries: c.queries as u32,
        metrics: c.metrics.into_iter().map(metric_delta_pb).collect(),
        changed: c.changed.into_iter().map(query_delta_pb).collect(),
    }
}

fn metric_delta_pb(m: crate::eval::compare::MetricDelta) -> pb::MetricDelta {
    pb::MetricDelta {
        metric: m.metric.to_string(),
        baseline: m.a,
        candidate: m.b,
        delta: m.delta,
        ci_low: m.ci_low,
        ci_high: m.ci_high,
        p_value: m.p_value,
        wins: m.wins as u32,
        losses: m.losses as u32,
        ties: m.ties as u32,
    }
}

fn query_delta_pb(q: crate::eval::compare::QueryDelta) -> pb::QueryDelta {
    pb::QueryDelta {
        query_id: q.query_id,
        baseline: q.a,
        candidate: q.b,
    }
}

/// A gate decision on the wire.
pub fn gate_record(r: crate::eval::gate::GateRecord) -> pb::GateRecord {
    pb::GateRecord {
        action: r.action.as_str().into(),
        alias: r.alias,
        baseline: r.baseline,
        candidate: r.candidate,
        switched: r.switched,
        caught_up: r.caught_up,
        split: r.split,
        split_owner: r.split_owner,
        run: r.run,
        queries: r.queries as u32,
        primary: r.primary,
        alpha: r.alpha,
        holds: r.holds,
        worse: r.worse,
        metrics: r.metrics.into_iter().map(metric_delta_pb).collect(),
        wins: r.wins.into_iter().map(query_delta_pb).collect(),
        losses: r.losses.into_iter().map(query_delta_pb).collect(),
        decided_unix_ms: r.decided_unix_ms,
    }
}

/// The comparison a gate record holds (its listed wins and losses as the changed queries),
/// for printing as `quarry eval` prints one.
pub fn gate_comparison(r: &pb::GateRecord) -> Comparison {
    comparison_core(pb::EvalComparison {
        baseline: r.baseline.clone(),
        candidate: r.candidate.clone(),
        queries: r.queries,
        metrics: r.metrics.clone(),
        changed: r
            .wins
            .iter()
            .chain(r.losses.iter().rev())
            .cloned()
            .collect(),
    })
}

/// Search settings on the wire.
pub fn search_settings_pb(s: crate::retrieve::SearchSettings) -> pb::SearchSettings {
    pb::SearchSettings {
        fusion: Some(fusion_to_pb(s.fusion)),
        candidates: s.candidates as u32,
        sum_decay: s.aggregation.sum_decay(),
    }
}

/// Search settings from the wire (fusion unset: the default).
pub fn search_settings(s: pb::SearchSettings) -> Result<crate::retrieve::SearchSettings> {
    Ok(crate::retrieve::SearchSettings {
        fusion: fusion(s.fusion)?.unwrap_or_default(),
        candidates: s.candidates as usize,
        aggregation: Aggregation::from_sum_decay(s.sum_decay),
    })
}

/// A tuning's outcome on the wire.
pub fn tune_outcome(o: crate::eval::tune::TuneOutcome) -> pb::TuneResponse {
    let tuned = |(s, ndcg): (crate::retrieve::SearchSettings, f64)| pb::TunedSetting {
        settings: Some(search_settings_pb(s)),
        ndcg_at_10: ndcg,
    };
    let best_score = o.grid.first().map_or(0.0, |b| b.1);
    pb::TuneResponse {
        adopted: Some(tuned((o.adopted, o.adopted_score))),
        best: Some(tuned((o.best, best_score))),
        grid: o.grid.into_iter().map(tuned).collect(),
        check: Some(gate_record(o.check)),
        proposed: o.proposed,
    }
}

/// An eval split as listed.
pub fn eval_split(s: crate::eval::sets::SplitInfo) -> pb::EvalSplit {
    pb::EvalSplit {
        collection: s.owner,
        split: s.split,
        queries: s.queries as u32,
        judgments: s.judgments as u32,
        uploaded_unix_ms: s.uploaded_unix_ms,
    }
}

/// The reverse of [`comparison_pb`]; metrics this build does not know are left out.
fn comparison_core(c: pb::EvalComparison) -> Comparison {
    use crate::eval::compare::{metric_named, MetricDelta, QueryDelta};
    Comparison {
        a: c.baseline,
        b: c.candidate,
        queries: c.queries as usize,
        metrics: c
            .metrics
            .into_iter()
            .filter_map(|m| {
                let metric = metric_named(&m.metric)?;
                Some(MetricDelta {
                    metric,
                    a: m.baseline,
                    b: m.candidate,
                    delta: m.delta,
                    ci_low: m.ci_low,
                    ci_high: m.ci_high,
                    p_value: m.p_value,
                    wins: m.wins as usize,
                    losses: m.losses as usize,
                    ties: m.ties as usize,
                })
            })
            .collect(),
        changed: c
            .changed
            .into_iter()
            .map(|q| QueryDelta {
                query_id: q.query_id,
                a: q.baseline,
                b: q.candidate,
            })
            .collect(),
    }
}

pub fn eval_result(o: EvalOutcome) -> pb::EvalResult {
    pb::EvalResult {
        skipped_queries: o.skipped_queries as u32,
        comparisons: o.comparisons.into_iter().map(comparison_pb).collect(),
        runs: o
            .runs
            .into_iter()
            .map(|r| pb::RunEval {
                mode: mode_to_pb(r.spec.mode) as i32,
                metrics: Some(metrics_pb(&r.mean)),
                latency: Some(pb::Latency {
                    p50_ms: r.latency_ms[0],
                    p95_ms: r.latency_ms[1],
                    p99_ms: r.latency_ms[2],
                }),
                name: r.spec.name,
                queries: r
                    .queries
                    .into_iter()
                    .map(|q| pb::QueryEval {
                        metrics: Some(metrics_pb(&q.metrics)),
                        missed: q
                            .missed
                            .into_iter()
                            .map(|m| pb::MissedDocument {
                                document_id: m.doc_id,
                                grade: m.grade,
                                lexical_rank: m.lexical_rank.unwrap_or(0),
                                dense_rank: m.dense_rank.unwrap_or(0),
                                run_rank: m.run_rank.unwrap_or(0),
                            })
                            .collect(),
                        ranking: q
                            .ranking
                            .into_iter()
                            .map(|(d, s)| pb::RankedDocument {
                                document_id: d,
                                score: s,
                            })
                            .collect(),
                        latency_ms: q.latency_ms,
                        query_id: q.query_id,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The reverse of [`eval_result`], for clients that write reports.
pub fn eval_outcome(r: pb::EvalResult) -> Result<EvalOutcome> {
    let nz = |x: u32| (x > 0).then_some(x);
    Ok(EvalOutcome {
        skipped_queries: r.skipped_queries as usize,
        comparisons: r.comparisons.into_iter().map(comparison_core).collect(),
        runs: r
            .runs
            .into_iter()
            .map(|run| {
                let latency = run.latency.unwrap_or_default();
                Ok(RunOutcome {
                    spec: RunSpec {
                        mode: mode(run.mode)?,
                        fusion: None,
                        candidates: None,
                        aggregation: None,
                        title_boost: 0.0,
                        filter: crate::filter::Filter::all(),
                        collection: None,
                        name: run.name,
                    },
                    mean: metrics_core(run.metrics),
                    latency_ms: [latency.p50_ms, latency.p95_ms, latency.p99_ms],
                    queries: run
                        .queries
                        .into_iter()
                        .map(|q| QueryOutcome {
                            metrics: metrics_core(q.metrics),
                            missed: q
                                .missed
                                .into_iter()
                                .map(|m| Missed {
                                    doc_id: m.document_id,
                                    grade: m.grade,
                                    lexical_rank: nz(m.lexical_rank),
                                    dense_rank: nz(m.dense_rank),
                                    run_rank: nz(m.run_rank),
                                })
                                .collect(),
                            ranking: q
                                .ranking
                                .into_iter()
                                .map(|d| (d.document_id, d.score))
                                .collect(),
                            latency_ms: q.latency_ms,
                            query_id: q.query_id,
                        })
                        .collect(),
                })
            })
            .collect::<Result<_>>()?,
    })
}
