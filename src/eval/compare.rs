//! Comparing two runs of one eval set, query by query, with the noise measured.
//!
//! A change to the model, the chunking or the fusion settings moves some queries up and
//! others down; a mean that moved by 0.004 on 300 queries may be nothing but which queries
//! happened to be judged. So every comparison is **paired** (each query against itself) and
//! reports, per metric: both means, the mean difference, a 95% interval for it from a paired
//! bootstrap, a two-sided p-value from a paired randomization (sign-flip) test, and the
//! queries won, lost and tied. The gate built on it ([`Gate`]) refuses a candidate when a
//! primary metric is worse *beyond its noise* (significantly lower at the gate's level), and
//! accepts one that is equal within noise or better.
//!
//! Both resamplings use a fixed seed: the same two runs always give the same figures, so a
//! recorded gate decision can be reproduced.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use super::metrics::QueryMetrics;
use super::run::RunOutcome;

/// Resamples of the bootstrap and of the randomization test.
pub const RESAMPLES: usize = 10_000;

/// The seed of both resamplings (reproducible decisions).
const SEED: u64 = 0x5eed_e7a1;

/// How to read one metric from a query's metrics.
pub type Reader = fn(&QueryMetrics) -> f64;

/// The metrics compared, by name, with how to read each from a query's metrics.
pub const METRICS: [(&str, Reader); 5] = [
    ("ndcg@10", |m| m.ndcg_10),
    ("recall@10", |m| m.recall_10),
    ("recall@100", |m| m.recall_100),
    ("mrr@10", |m| m.mrr_10),
    ("map@100", |m| m.map_100),
];

/// One metric of a paired comparison (`b` against the baseline `a`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricDelta {
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
    /// Mean of b - a over the paired queries.
    pub delta: f64,
    /// 95% paired-bootstrap interval of `delta`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided p-value of the paired randomization test (1 when nothing differs).
    pub p_value: f64,
    /// Queries where b is higher, lower, equal.
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
}

/// One query's difference, for the lists of biggest wins and losses.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryDelta {
    pub query_id: String,
    pub a: f64,
    pub b: f64,
}

/// [`MetricDelta`] as read back from a record: the metric's name is checked against
/// [`METRICS`].
mod stored {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct MetricDelta {
        metric: String,
        a: f64,
        b: f64,
        delta: f64,
        ci_low: f64,
        ci_high: f64,
        p_value: f64,
        wins: usize,
        losses: usize,
        ties: usize,
    }

    impl<'de> serde::Deserialize<'de> for super::MetricDelta {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let m = MetricDelta::deserialize(d)?;
            let metric = super::metric_named(&m.metric).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown metric {:?}", m.metric))
            })?;
            Ok(super::MetricDelta {
                metric,
                a: m.a,
                b: m.b,
                delta: m.delta,
                ci_low: m.ci_low,
                ci_high: m.ci_high,
                p_value: m.p_value,
                wins: m.wins,
                losses: m.losses,
                ties: m.ties,
            })
        }
    }
}

/// The name of [`METRICS`] equal to `name`.
pub fn metric_named(name: &str) -> Option<&'static str> {
    METRICS.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

/// A paired comparison of run `b` against the baseline run `a`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// Queries both runs scored (the pairs).
    pub queries: usize,
    pub metrics: Vec<MetricDelta>,
    /// nDCG@10 per query where the runs differ, biggest win first, biggest loss last.
    pub changed: Vec<QueryDelta>,
}

impl Comparison {
    pub fn metric(&self, name: &str) -> Option<&MetricDelta> {
        self.metrics.iter().find(|m| m.metric == name)
    }
}

/// Compares `b` with the baseline `a` on the queries both scored.
pub fn compare(a: &RunOutcome, b: &RunOutcome) -> Comparison {
    let by_id: HashMap<&str, &QueryMetrics> = a
        .queries
        .iter()
        .map(|q| (q.query_id.as_str(), &q.metrics))
        .collect();
    let pairs: Vec<(&str, &QueryMetrics, &QueryMetrics)> = b
        .queries
        .iter()
        .filter_map(|q| {
            let m = by_id.get(q.query_id.as_str())?;
            Some((q.query_id.as_str(), *m, &q.metrics))
        })
        .collect();
    let metrics = METRICS
        .iter()
        .map(|&(name, get)| {
            let xs: Vec<(f64, f64)> = pairs.iter().map(|(_, a, b)| (get(a), get(b))).collect();
            paired(name, &xs)
        })
        .collect();
    let mut changed: Vec<QueryDelta> = pairs
        .iter()
        .filter(|(_, a, b)| a.ndcg_10 != b.ndcg_10)
        .map(|(id, a, b)| QueryDelta {
            query_id: id.to_string(),
            a: a.ndcg_10,
            b: b.ndcg_10,
        })
        .collect();
    changed.sort_by(|x, y| {
        (y.b - y.a)
            .total_cmp(&(x.b - x.a))
            .then_with(|| x.query_id.cmp(&y.query_id))
    });
    Comparison {
        a: a.spec.name.clone(),
        b: b.spec.name.clone(),
        queries: pairs.len(),
        metrics,
        changed,
    }
}

/// The paired statistics of one metric over `(a, b)` pairs.
pub fn paired(metric: &'static str, pairs: &[(f64, f64)]) -> MetricDelta {
    let n = pairs.len();
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        if n == 0 {
            0.0
        } else {
            v.sum::<f64>() / n as f64
        }
    };
    let diffs: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
    let delta = mean(&mut diffs.iter().copied());
    let (ci_low, ci_high) = bootstrap_interval(&diffs);
    MetricDelta {
        metric,
        a: mean(&mut pairs.iter().map(|p| p.0)),
        b: mean(&mut pairs.iter().map(|p| p.1)),
        delta,
        ci_low,
        ci_high,
        p_value: randomization_p(&diffs),
        wins: diffs.iter().filter(|d| **d > 0.0).count(),
        losses: diffs.iter().filter(|d| **d < 0.0).count(),
        ties: diffs.iter().filter(|d| **d == 0.0).count(),
    }
}

/// Two-sided p-value of the paired randomization test: how often flipping the sign of each
/// query's difference at random gives a mean at least as far from zero as the one observed.
pub fn randomization_p(diffs: &[f64]) -> f64 {
    let n = diffs.len();
    if n == 0 || diffs.iter().all(|d| *d == 0.0) {
        return 1.0;
    }
    let observed = diffs.iter().sum::<f64>().abs();
    // Sums equal up to rounding count as equal.
    let tolerance = 1e-9 * diffs.iter().map(|d| d.abs()).sum::<f64>().max(1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut extreme = 0usize;
    for _ in 0..RESAMPLES {
        let s: f64 = diffs
            .iter()
            .map(|d| if rng.random_bool(0.5) { *d } else { -*d })
            .sum();
        if s.abs() >= observed - tolerance {
            extreme += 1;
        }
    }
    (extreme + 1) as f64 / (RESAMPLES + 1) as f64
}

/// The 95% percentile interval of the mean difference over bootstrap resamples of queries.
pub fn bootstrap_interval(diffs: &[f64]) -> (f64, f64) {
    let n = diffs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0xb007);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    (at(0.025), at(0.975))
}

/// When a candidate may replace the baseline: no primary metric significantly worse.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The metrics that must not get worse (names of [`METRICS`]).
    pub primary: Vec<&'static str>,
    /// The significance level: a drop with a p-value below it is beyond the noise.
    pub alpha: f64,
}

impl Default for Gate {
    /// nDCG@10 and recall@10 at the 5% level.
    fn default() -> Self {
        Gate {
            primary: vec!["ndcg@10", "recall@10"],
            alpha: 0.05,
        }
    }
}

/// A gate's decision on a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    /// The primary metrics worse beyond their noise (empty when the gate holds).
    pub worse: Vec<&'static str>,
}

impl Gate {
    pub fn judge(&self, c: &Comparison) -> Verdict {
        let worse: Vec<&'static str> = c
            .metrics
            .iter()
            .filter(|m| self.primary.contains(&m.metric))
            .filter(|m| m.delta < 0.0 && m.p_value < self.alpha)
            .map(|m| m.metric)
            .collect();
        Verdict {
            holds: worse.is_empty(),
            worse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::run::{QueryOutcome, RunSpec};

    fn run(name: &str, ndcg: &[f64]) -> RunOutcome {
        RunOutcome {
            spec: RunSpec::parse("hybrid")
                .map(|mut s| {
                    s.name = name.into();
                    s
                })
                .unwrap(),
            mean: QueryMetrics::default(),
            latency_ms: [0.0; 3],
            queries: ndcg
                .iter()
                .enumerate()
                .map(|(i, &v)| QueryOutcome {
                    query_id: format!("q{i}"),
                    metrics: QueryMetrics {
                        ndcg_10: v,
                        recall_10: v,
                        ..Default::default()
                    },
                    missed: Vec::new(),
                    ranking: Vec::new(),
                    latency_ms: 0.0,
                })
                .collect(),
        }
    }

    /// Scores spread like real per-query nDCG: a fixed pseudo-random sequence in [0, 1].
    fn scores(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(0.0..1.0)).collect()
    }

    #[test]
    fn identical_runs_differ_by_nothing_and_pass() {
        let s = scores(300, 1);
        let c = compare(&run("a", &s), &run("b", &s));
        let m = c.metric("ndcg@10").unwrap();
        assert_eq!(
            (m.delta, m.ci_low, m.ci_high, m.p_value),
            (0.0, 0.0, 0.0, 1.0)
        );
        assert_eq!((m.wins, m.losses, m.ties), (0, 0, 300));
        assert!(c.changed.is_empty());
        assert!(Gate::default().judge(&c).holds);
    }

    #[test]
    fn a_run_worse_on_most_queries_is_refused_with_the_metric_named() {
        let a = scores(300, 2);
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 4 == 0 { *v } else { (v - 0.05).max(0.0) })
            .collect();
        let c = compare(&run("a", &a), &run("b", &b));
        let m = c.metric("ndcg@10").unwrap();
        assert!(
            m.delta < -0.02 && m.ci_high < 0.0 && m.p_value < 0.001,
            "{m:?}"
        );
        assert!(m.losses > 200 && m.wins == 0, "{m:?}");
        let v = Gate::default().judge(&c);
        assert!(!v.holds);
        assert_eq!(v.worse, vec!["ndcg@10", "recall@10"]);
        // Biggest loss last.
        let last = c.changed.last().unwrap();
        assert!(last.b < last.a);
    }

    #[test]
    fn noise_alone_is_not_beyond_the_noise() {
        // The same scores, each query nudged up or down at random by up to 0.1.
        let a = scores(300, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let b: Vec<f64> = a
            .iter()
            .map(|v| (v + rng.random_range(-0.1..0.1)).clamp(0.0, 1.0))
            .collect();
        let c = compare(&run("a", &a), &run("b", &b));
        let m = c.metric("ndcg@10").unwrap();
        assert!(m.ci_low < 0.0 && m.ci_high > 0.0, "{m:?}");
        assert!(m.p_value > 0.05, "{m:?}");
        assert!(Gate::default().judge(&c).holds);
    }

    #[test]
    fn a_better_run_passes_and_its_interval_is_above_zero() {
        let a = scores(300, 5);
        let b: Vec<f64> = a.iter().map(|v| (v + 0.03).min(1.0)).collect();
        let c = compare(&run("a", &a), &run("b", &b));
        let m = c.metric("ndcg@10").unwrap();
        assert!(
            m.delta > 0.0 && m.ci_low > 0.0 && m.p_value < 0.001,
            "{m:?}"
        );
        assert!(Gate::default().judge(&c).holds);
    }

    #[test]
    fn the_randomization_p_value_matches_exact_enumeration() {
        // 10 differences: all 1024 sign patterns enumerated give the exact p-value.
        let diffs = [0.3, -0.1, 0.2, 0.25, 0.05, -0.05, 0.15, 0.1, 0.0, 0.2];
        let observed: f64 = diffs.iter().sum::<f64>().abs();
        let mut extreme = 0;
        for mask in 0..1u32 << diffs.len() {
            let s: f64 = diffs
                .iter()
                .enumerate()
                .map(|(i, d)| if mask >> i & 1 == 1 { -d } else { *d })
                .sum();
            if s.abs() >= observed - 1e-9 {
                extreme += 1;
            }
        }
        let exact = extreme as f64 / 1024.0;
        let p = randomization_p(&diffs);
        assert!(
            (p - exact).abs() < 0.01,
            "randomization {p} vs exact {exact}"
        );
    }

    #[test]
    fn only_queries_both_runs_scored_are_paired() {
        let a = run("a", &[0.5, 0.6, 0.7]);
        let mut b = run("b", &[0.5, 0.6, 0.9, 1.0]);
        b.queries[0].query_id = "other".into();
        let c = compare(&a, &b);
        assert_eq!(c.queries, 2);
        let m = c.metric("ndcg@10").unwrap();
        assert!((m.delta - 0.1).abs() < 1e-12, "{m:?}");
        assert_eq!(c.changed[0].query_id, "q2");
    }
}
