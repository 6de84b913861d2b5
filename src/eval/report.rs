//! Writing an evaluation's results: `summary.json`, one TREC run file per run, `per_query.jsonl`,
//! `report.md` and `report.html` (inline SVG: metric bars per run, per-query scatter of the
//! first hybrid run against lexical). Every run after the first is compared with the first,
//! query by query ([`super::compare`]), in summary.json, report.md and on the console.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::compare::{self, Comparison, Gate};
use super::metrics::QueryMetrics;
use super::run::{EvalOutcome, RunOutcome};
use crate::error::Result;

/// What is being evaluated, for the report headers.
#[derive(Debug, Clone)]
pub struct Context {
    pub dataset: String,
    pub split: String,
    pub collection: String,
    pub model: String,
    /// Query id -> text.
    pub queries: HashMap<String, String>,
}

fn metrics_json(m: &QueryMetrics) -> serde_json::Value {
    json!({
        "ndcg@10": m.ndcg_10,
        "recall@10": m.recall_10,
        "recall@100": m.recall_100,
        "mrr@10": m.mrr_10,
        "map@100": m.map_100,
    })
}

fn run_file_name(run: &RunOutcome) -> String {
    format!("{}.run", file_stem(&run.spec.name))
}

/// A run's name (which may come from a remote server) as a file stem: `[A-Za-z0-9._-]` only,
/// no leading dots, at most 100 characters, so it always names a file inside the output
/// directory.
fn file_stem(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        "run".to_string()
    } else {
        safe.to_string()
    }
}

/// Writes every output file into `out`.
/// The summary table's columns: report.md and the console (`quarry eval`) both print them.
pub const SUMMARY_COLUMNS: [&str; 9] = [
    "run",
    "nDCG@10",
    "recall@10",
    "recall@100",
    "MRR@10",
    "MAP@100",
    "p50 ms",
    "p95 ms",
    "p99 ms",
];

/// One formatted row of [`SUMMARY_COLUMNS`] per run.
pub fn summary_rows(outcome: &EvalOutcome) -> Vec<[String; 9]> {
    outcome
        .runs
        .iter()
        .map(|r| {
            let m = &r.mean;
            [
                r.spec.name.clone(),
                format!("{:.4}", m.ndcg_10),
                format!("{:.4}", m.recall_10),
                format!("{:.4}", m.recall_100),
                format!("{:.4}", m.mrr_10),
                format!("{:.4}", m.map_100),
                format!("{:.2}", r.latency_ms[0]),
                format!("{:.2}", r.latency_ms[1]),
                format!("{:.2}", r.latency_ms[2]),
            ]
        })
        .collect()
}

/// Every run after the first against the first: the server's (Eval RPC), else computed here.
pub fn comparisons(outcome: &EvalOutcome) -> Vec<Comparison> {
    match outcome.runs.split_first() {
        _ if !outcome.comparisons.is_empty() => outcome.comparisons.clone(),
        Some((base, rest)) => rest.iter().map(|r| compare::compare(base, r)).collect(),
        None => Vec::new(),
    }
}

/// One line per metric of a comparison: `metric  a -> b  delta [low, high]  p  W/L/T`.
pub fn comparison_lines(c: &Comparison) -> Vec<String> {
    c.metrics
        .iter()
        .map(|m| {
            format!(
                "{:<10}  {:.4} -> {:.4}  {:+.4} [{:+.4}, {:+.4}]  p={:.4}  {}/{}/{}",
                m.metric,
                m.a,
                m.b,
                m.delta,
                m.ci_low,
                m.ci_high,
                m.p_value,
                m.wins,
                m.losses,
                m.ties
            )
        })
        .collect()
}

fn comparison_json(c: &Comparison) -> serde_json::Value {
    let verdict = Gate::default().judge(c);
    let metrics: serde_json::Map<String, serde_json::Value> = c
        .metrics
        .iter()
        .map(|m| {
            (
                m.metric.to_string(),
                json!({
                    "a": m.a, "b": m.b, "delta": m.delta, "ci95": [m.ci_low, m.ci_high],
                    "p_value": m.p_value, "wins": m.wins, "losses": m.losses, "ties": m.ties,
                }),
            )
        })
        .collect();
    json!({
        "baseline": c.a,
        "run": c.b,
        "queries": c.queries,
        "metrics": metrics,
        "gate": {"holds": verdict.holds, "worse": verdict.worse},
    })
}

pub fn write_all(out: &Path, ctx: &Context, outcome: &EvalOutcome) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary(ctx, outcome))?,
    )?;
    for run in &outcome.runs {
        std::fs::write(out.join(run_file_name(run)), trec_run(run))?;
    }
    std::fs::write(out.join("per_query.jsonl"), per_query(ctx, outcome)?)?;
    std::fs::write(out.join("report.md"), markdown(ctx, outcome))?;
    std::fs::write(out.join("report.html"), html(ctx, outcome))?;
    Ok(())
}

pub fn summary(ctx: &Context, outcome: &EvalOutcome) -> serde_json::Value {
    let mut modes = serde_json::Map::new();
    for run in &outcome.runs {
        let mut m = metrics_json(&run.mean);
        m["latency_ms"] = json!({
            "p50": run.latency_ms[0], "p95": run.latency_ms[1], "p99": run.latency_ms[2]
        });
        m["queries"] = json!(run.queries.len());
        m["run_file"] = json!(run_file_name(run));
        modes.insert(run.spec.name.clone(), m);
    }
    json!({
        "dataset": ctx.dataset,
        "split": ctx.split,
        "collection": ctx.collection,
        "model": ctx.model,
        "skipped_queries": outcome.skipped_queries,
        "tie_breaking": "score descending, then document id descending (trec_eval); run files write tied scores strictly decreasing in that order, so every tool reads the same ranking",
        "modes": modes,
        "comparisons": comparisons(outcome).iter().map(comparison_json).collect::<Vec<_>>(),
        "comparison_method": format!(
            "paired over queries: mean difference, 95% paired-bootstrap interval and two-sided randomization p-value ({} resamples each, fixed seed); the gate refuses a run whose nDCG@10 or recall@10 is lower with p < 0.05",
            compare::RESAMPLES
        ),
    })
}

/// TREC run format: `qid Q0 docid rank score run`, ranks in metric order.
pub fn trec_run(run: &RunOutcome) -> String {
    let mut s = String::new();
    for q in &run.queries {
        trec_lines(&mut s, &q.query_id, &q.ranking, &run.spec.name);
    }
    s
}

/// One query's lines of a TREC run, `ranking` in metric order (score descending, ties by
/// document id descending, as trec_eval orders them).
///
/// Tools that read run files break tied scores differently (trec_eval by document id
/// descending; ir_measures' RR@k, through its msmarco provider, by file order), so a file with
/// ties means different rankings to different tools. The scores are therefore written
/// strictly decreasing: a score equal to the one above it is written as the next smaller
/// double, which no f32 score (what searches return) can fall between, and every score in
/// full (shortest round-trip) precision. Every tool then reads exactly the ranking the
/// metrics were computed on.
pub fn trec_lines(out: &mut String, query_id: &str, ranking: &[(String, f64)], run_name: &str) {
    let mut previous = f64::INFINITY;
    for (i, (doc, score)) in ranking.iter().enumerate() {
        let written = if *score < previous {
            *score
        } else {
            previous.next_down()
        };
        previous = written;
        let _ = writeln!(out, "{query_id} Q0 {doc} {} {written:?} {run_name}", i + 1);
    }
}

fn rank(r: Option<u32>) -> serde_json::Value {
    r.map_or(serde_json::Value::Null, |r| json!(r))
}

pub fn per_query(ctx: &Context, outcome: &EvalOutcome) -> Result<String> {
    let mut ids: Vec<&String> = outcome
        .runs
        .first()
        .map(|r| r.queries.iter().map(|q| &q.query_id).collect())
        .unwrap_or_default();
    ids.sort();
    let index: Vec<HashMap<&str, usize>> = outcome
        .runs
        .iter()
        .map(|r| {
            r.queries
                .iter()
                .enumerate()
                .map(|(i, q)| (q.query_id.as_str(), i))
                .collect()
        })
        .collect();
    let mut s = String::new();
    for id in ids {
        let mut modes = serde_json::Map::new();
        for (run, idx) in outcome.runs.iter().zip(&index) {
            let Some(&i) = idx.get(id.as_str()) else {
                continue;
            };
            let q = &run.queries[i];
            let mut m = metrics_json(&q.metrics);
            m["latency_ms"] = json!(q.latency_ms);
            m["missed"] = json!(q
                .missed
                .iter()
                .map(|x| json!({
                    "document_id": x.doc_id,
                    "grade": x.grade,
                    "rank": rank(x.run_rank),
                    "lexical_rank": rank(x.lexical_rank),
                    "dense_rank": rank(x.dense_rank),
                }))
                .collect::<Vec<_>>());
            modes.insert(run.spec.name.clone(), m);
        }
        let line = json!({
            "query_id": id,
            "query": ctx.queries.get(id.as_str()).cloned().unwrap_or_default(),
            "modes": modes,
        });
        s.push_str(&serde_json::to_string(&line)?);
        s.push('\n');
    }
    Ok(s)
}

pub fn markdown(ctx: &Context, outcome: &EvalOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Retrieval evaluation: {} ({})\n",
        ctx.dataset, ctx.split
    );
    let _ = writeln!(
        s,
        "Collection `{}`, model `{}`, {} queries ({} skipped without relevant judgments).\n",
        ctx.collection,
        ctx.model,
        outcome.runs.first().map_or(0, |r| r.queries.len()),
        outcome.skipped_queries
    );
    let _ = writeln!(s, "| {} |", SUMMARY_COLUMNS.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(SUMMARY_COLUMNS.len()));
    for row in summary_rows(outcome) {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    // Where relevant documents were lost, by retriever.
    let _ = writeln!(s, "\n## Missed relevant documents (not in the top 10)\n");
    let _ = writeln!(s, "| run | missed | found by lexical only | by dense only | by both (fusion lost it) | by neither |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in &outcome.runs {
        let (mut total, mut lex, mut den, mut both, mut none) = (0, 0, 0, 0, 0);
        for q in &r.queries {
            for m in &q.missed {
                total += 1;
                let l = m.lexical_rank.is_some_and(|x| x <= 10);
                let d = m.dense_rank.is_some_and(|x| x <= 10);
                match (l, d) {
                    (true, false) => lex += 1,
                    (false, true) => den += 1,
                    (true, true) => both += 1,
                    (false, false) => none += 1,
                }
            }
        }
        let _ = writeln!(
            s,
            "| {} | {total} | {lex} | {den} | {both} | {none} |",
            r.spec.name
        );
    }
    for c in comparisons(outcome) {
        markdown_comparison(&mut s, ctx, &c);
    }
    if let Some(r) = outcome
        .runs
        .iter()
        .find(|r| r.spec.name.starts_with("hybrid"))
        .or(outcome.runs.first())
    {
        let mut worst: Vec<_> = r.queries.iter().collect();
        worst.sort_by(|a, b| {
            a.metrics
                .ndcg_10
                .total_cmp(&b.metrics.ndcg_10)
                .then(a.query_id.cmp(&b.query_id))
        });
        let _ = writeln!(s, "\n## Hardest queries for `{}`\n", r.spec.name);
        let _ = writeln!(
            s,
            "| query | nDCG@10 | text | missed (lexical rank / dense rank) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for q in worst.iter().take(10) {
            let missed: Vec<String> = q
                .missed
                .iter()
                .take(3)
                .map(|m| {
                    let f = |x: Option<u32>| x.map_or("-".to_string(), |x| x.to_string());
                    format!("{} ({} / {})", m.doc_id, f(m.lexical_rank), f(m.dense_rank))
                })
                .collect();
            let text: String = ctx
                .queries
                .get(&q.query_id)
                .map(|t| t.chars().take(80).collect())
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {:.3} | {} | {} |",
                q.query_id,
                q.metrics.ndcg_10,
                text.replace('|', "/"),
                missed.join(", ")
            );
        }
    }
    s
}

/// A comparison's section of report.md: the paired statistics per metric, the gate's
/// verdict, and the queries that moved most either way.
fn markdown_comparison(s: &mut String, ctx: &Context, c: &Comparison) {
    let verdict = Gate::default().judge(c);
    let _ = writeln!(
        s,
        "\n## `{}` against `{}` ({} paired queries)\n",
        c.b, c.a, c.queries
    );
    let _ = writeln!(
        s,
        "| metric | `{}` | `{}` | difference | 95% interval | p | wins / losses / ties |",
        c.a, c.b
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for m in &c.metrics {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {:+.4} | [{:+.4}, {:+.4}] | {:.4} | {} / {} / {} |",
            m.metric, m.a, m.b, m.delta, m.ci_low, m.ci_high, m.p_value, m.wins, m.losses, m.ties
        );
    }
    let _ = writeln!(
        s,
        "\nGate (nDCG@10 and recall@10 not lower with p < 0.05): {}.",
        if verdict.holds {
            "holds".to_string()
        } else {
            format!(
                "refused, worse beyond the noise: {}",
                verdict.worse.join(", ")
            )
        }
    );
    let text = |id: &str| -> String {
        ctx.queries
            .get(id)
            .map(|t| t.chars().take(80).collect::<String>().replace('|', "/"))
            .unwrap_or_default()
    };
    let wins = c.changed.iter().take_while(|q| q.b > q.a).take(5);
    let losses = c.changed.iter().rev().take_while(|q| q.b < q.a).take(5);
    let _ = writeln!(s, "\n| query | nDCG@10 `{}` -> `{}` | text |", c.a, c.b);
    let _ = writeln!(s, "|---|---|---|");
    for q in wins.chain(losses) {
        let _ = writeln!(
            s,
            "| {} | {:.3} -> {:.3} | {} |",
            q.query_id,
            q.a,
            q.b,
            text(&q.query_id)
        );
    }
}

/// Markdown `code` spans as HTML.
fn code_spans(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Reads one metric out of a [`QueryMetrics`].
type MetricFn = fn(&QueryMetrics) -> f64;

fn bars_svg(outcome: &EvalOutcome) -> String {
    let metrics: [(&str, MetricFn); 5] = [
        ("nDCG@10", |m| m.ndcg_10),
        ("recall@10", |m| m.recall_10),
        ("recall@100", |m| m.recall_100),
        ("MRR@10", |m| m.mrr_10),
        ("MAP@100", |m| m.map_100),
    ];
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    ];
    let runs = outcome.runs.len().max(1);
    let group = 40 + runs * 26;
    let width = 60 + metrics.len() * group;
    let height = 300;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">", height + 60);
    for t in 0..=4 {
        let y = 20 + (height - 40) * (4 - t) / 4;
        let _ = write!(s, "<line x1=\"40\" x2=\"{width}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"5\" y=\"{}\">{:.2}</text>", y + 4, t as f64 / 4.0);
    }
    for (mi, (name, get)) in metrics.iter().enumerate() {
        let x0 = 50 + mi * group;
        for (ri, r) in outcome.runs.iter().enumerate() {
            let v = get(&r.mean).clamp(0.0, 1.0);
            let h = ((height - 40) as f64 * v) as usize;
            let x = x0 + ri * 26;
            let y = 20 + (height - 40) - h;
            let _ = write!(s, "<rect x=\"{x}\" y=\"{y}\" width=\"22\" height=\"{h}\" fill=\"{}\"><title>{} {}: {:.4}</title></rect><text x=\"{x}\" y=\"{}\" font-size=\"9\">{:.3}</text>", colors[ri % colors.len()], escape(&r.spec.name), name, v, y.saturating_sub(3), v);
        }
        let _ = write!(s, "<text x=\"{x0}\" y=\"{}\">{name}</text>", height);
    }
    for (ri, r) in outcome.runs.iter().enumerate() {
        let x = 50 + ri * 170;
        let _ = write!(s, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>", height + 25, colors[ri % colors.len()], x + 16, height + 35, escape(&r.spec.name));
    }
    s.push_str("</svg>");
    s
}

fn scatter_svg(outcome: &EvalOutcome) -> Option<String> {
    let lexical = outcome.runs.iter().find(|r| r.spec.name == "lexical")?;
    let hybrid = outcome
        .runs
        .iter()
        .find(|r| r.spec.name.starts_with("hybrid"))?;
    let lex: HashMap<&str, f64> = lexical
        .queries
        .iter()
        .map(|q| (q.query_id.as_str(), q.metrics.ndcg_10))
        .collect();
    let size = 360.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">", size + 60.0, size + 60.0);
    let _ = write!(s, "<rect x=\"40\" y=\"10\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#999\"/><line x1=\"40\" y1=\"{}\" x2=\"{}\" y2=\"10\" stroke=\"#ccc\" stroke-dasharray=\"4\"/>", 10.0 + size, 40.0 + size);
    let (mut better, mut worse) = (0, 0);
    for q in &hybrid.queries {
        let Some(&l) = lex.get(q.query_id.as_str()) else {
            continue;
        };
        let h = q.metrics.ndcg_10;
        if h > l + 1e-9 {
            better += 1
        } else if h + 1e-9 < l {
            worse += 1
        }
        let color = if h > l + 1e-9 {
            "#59a14f"
        } else if h + 1e-9 < l {
            "#e15759"
        } else {
            "#777"
        };
        let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\" fill-opacity=\"0.6\"><title>{}: lexical {:.3}, {} {:.3}</title></circle>", 40.0 + l * size, 10.0 + (1.0 - h) * size, escape(&q.query_id), l, escape(&hybrid.spec.name), h);
    }
    let _ = write!(s, "<text x=\"40\" y=\"{}\">lexical nDCG@10 →</text><text x=\"12\" y=\"200\" transform=\"rotate(-90 12 200)\">{} nDCG@10 →</text><text x=\"{}\" y=\"{}\">{better} better, {worse} worse</text></svg>", size + 30.0, escape(&hybrid.spec.name), 50, size + 50.0);
    Some(s)
}

pub fn html(ctx: &Context, outcome: &EvalOutcome) -> String {
    let md = markdown(ctx, outcome);
    let mut s = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>Quarry eval</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>");
    let _ = write!(
        s,
        "<h1>Retrieval evaluation: {} ({})</h1>",
        escape(&ctx.dataset),
        escape(&ctx.split)
    );
    let _ = write!(s, "<h2>Metrics per run</h2>{}", bars_svg(outcome));
    if let Some(sc) = scatter_svg(outcome) {
        let _ = write!(s, "<h2>Per query: hybrid vs lexical nDCG@10</h2>{sc}");
    }
    // The markdown tables, rendered simply.
    s.push_str("<h2>Tables</h2>");
    let mut in_table = false;
    for line in md.lines() {
        if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                s.push_str("<table>");
                in_table = true;
            }
            s.push_str("<tr>");
            for cell in line.trim_matches('|').split('|') {
                let _ = write!(s, "<td>{}</td>", escape(cell.trim()));
            }
            s.push_str("</tr>");
        } else {
            if in_table {
                s.push_str("</table>");
                in_table = false;
            }
            if let Some(h) = line.strip_prefix("## ") {
                let _ = write!(s, "<h3>{}</h3>", escape(h));
            } else if !line.starts_with("# ") && !line.is_empty() {
                let _ = write!(s, "<p>{}</p>", code_spans(&escape(line)));
            }
        }
    }
    if in_table {
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::file_stem;

    #[test]
    fn run_names_cannot_leave_the_output_directory() {
        assert_eq!(file_stem("hybrid-rrf-60"), "hybrid-rrf-60");
        assert_eq!(file_stem("../../etc/cron.d/x"), "_.._etc_cron.d_x");
        assert_eq!(file_stem("..."), "run");
        assert_eq!(file_stem("/abs"), "_abs");
        assert!(file_stem(&"a".repeat(1000)).len() <= 100);
    }
}
