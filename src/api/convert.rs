//! Conversions between the wire types (`pb`) and the core's types. Validation of shapes that
//! only exist on the wire (enums, oneofs) happens here; limits are checked by the engine.

use super::meta_convert as mc;
use super::pb;
use crate::engine::{
    ChunkInput, CollectionInfo, DocumentInput, StoredDocument, UpsertOutcome, UpsertStatus,
};
use crate::error::{Error, Result};
use crate::eval::compare::Comparison;
use crate::eval::metrics::QueryMetrics;
use crate::eval::run::{EvalOutcome, Missed, QueryOutcome, RunOutcome, RunSpec};
use crate::retrieve::{Fusion, Hit, Mode, RetrieverHit, SearchOutcome, SearchParams};

pub fn collection(info: CollectionInfo) -> pb::Collection {
    let r = info.record;
    let external = crate::model::external::parse_external(&r.model)
        .ok()
        .flatten()
        .unwrap_or(0);
    pb::Collection {
        name: r.name,
        config: Some(pb::CollectionConfig {
            embedding_model: r.model,
            chunk_tokens: r.chunk_tokens as u32,
            chunk_overlap: Some(r.chunk_overlap as u32),
            metadata_schema: mc::schema_to_pb(info.schema),
            vector_dimension: external as u32,
        }),
        dimension: r.dimension as u32,
        document_count: info.document_count,
        chunk_count: info.chunk_count,
        created_unix_ms: r.created_unix_ms,
        aliases: Vec::new(),
        requested_alias: String::new(),
        gates: Vec::new(),
        search_settings: None,
        proposed_settings: None,
    }
}

/// A wire document; fails on malformed typed metadata (a key in both maps, a bad timestamp).
pub fn document(d: pb::Document) -> Result<DocumentInput> {
    let markdown = d.format() == pb::DocumentFormat::Markdown;
    let metadata = mc::metadata_from_pb(d.metadata, d.typed_metadata)
        .map_err(|e| Error::invalid(format!("document {}: {e}", crate::error::quote(&d.id))))?;
    Ok(DocumentInput {
        markdown,
        id: d.id,
        text: d.text,
        title: d.title,
        metadata,
        // Only server-side ingestion jobs record a source.
        source: None,
        chunks: d
            .chunks
            .into_iter()
            .map(|c| ChunkInput {
                text: c.text,
                vector: c.vector,
            })
            .collect(),
    })
}

/// A document to send in an upsert: every metadata entry typed (a key may not be in both
/// maps of a request).
pub fn document_for_upsert(d: DocumentInput) -> pb::Document {
    let mut doc = document_to_pb(d);
    doc.metadata.clear();
    doc
}

/// A stored document as returned: string entries in both maps, for older clients.
pub fn document_to_pb(d: DocumentInput) -> pb::Document {
    let (metadata, typed_metadata) = mc::metadata_to_pb(d.metadata);
    pb::Document {
        format: if d.markdown {
            pb::DocumentFormat::Markdown as i32
        } else {
            pb::DocumentFormat::Text as i32
        },
        id: d.id,
        text: d.text,
        title: d.title,
        metadata,
        typed_metadata,
        chunks: d
            .chunks
            .into_iter()
            .map(|c| pb::DocumentChunk {
                text: c.text,
                vector: c.vector,
            })
            .collect(),
    }
}

pub fn stored_document(d: StoredDocument) -> pb::StoredDocument {
    pb::StoredDocument {
        source: d.input.source.clone().unwrap_or_default(),
        chunk_count: d.chunk_ids.len() as u32,
        content_hash: d.content_hash,
        chunks: d
            .chunks
            .into_iter()
            .map(|(id, c)| pb::Chunk {
                chunk_id: id,
                ordinal: c.ordinal,
                start_byte: c.start as u64,
                end_byte: c.end as u64,
                text: c.text,
            })
            .collect(),
        document: Some(document_to_pb(d.input)),
    }
}

pub fn listed(d: crate::engine::ListedDocument) -> pb::ListedDocument {
    let (metadata, typed_metadata) = mc::metadata_to_pb(d.metadata);
    pb::ListedDocument {
        id: d.id,
        title: d.title,
        chunk_count: d.chunk_count as u32,
        metadata,
        typed_metadata,
    }
}

pub fn outcome(o: UpsertOutcome) -> pb::DocumentResult {
    let status = match o.status {
        UpsertStatus::Created => pb::UpsertStatus::Created,
        UpsertStatus::Updated => pb::UpsertStatus::Updated,
        UpsertStatus::Unchanged => pb::UpsertStatus::Unchanged,
    };
    pb::DocumentResult {
        id: o.id,
        status: status as i32,
        chunk_count: o.chunk_count as u32,
        error: String::new(),
    }
}

pub fn mode(m: i32) -> Result<Mode> {
    match pb::SearchMode::try_from(m) {
        Ok(pb::SearchMode::Lexical) => Ok(Mode::Lexical),
        Ok(pb::SearchMode::Dense) => Ok(Mode::Dense),
        Ok(pb::SearchMode::Hybrid | pb::SearchMode::Unspecified) => Ok(Mode::Hybrid),
        Err(_) => Err(Error::invalid(format!("unknown search mode {m}"))),
    }
}

pub fn mode_to_pb(m: Mode) -> pb::SearchMode {
    match m {
        Mode::Lexical => pb::SearchMode::Lexical,
        Mode::Dense => pb::SearchMode::Dense,
        Mode::Hybrid => pb::SearchMode::Hybrid,
    }
}

/// Largest fusion weight, title boost and RRF k a request may set: far beyond any useful
/// value, small enough that every fused score stays finite.
pub const MAX_WEIGHT: f32 = 1000.0;
pub use crate::engine::search_settings::MAX_RRF_K;

fn bounded(w: Option<f32>, default: f32, max: f32, name: &str) -> Result<f32> {
    let w = w.unwrap_or(default);
    if !(w.is_finite() && (0.0..=max).contains(&w)) {
        return Err(Error::invalid(format!(
            "{name} must be a finite number in 0..={max}, got {w}"
        )));
    }
    Ok(w)
}

fn weight(w: Option<f32>, default: f32, name: &str) -> Result<f32> {
    bounded(w, default, MAX_WEIGHT, name)
}

/// A request's fusion; `None` when it names none (the collection's setting applies).
pub fn fusion(f: Option<pb::Fusion>) -> Result<Option<Fusion>> {
    let Some(method) = f.and_then(|f| f.method) else {
        return Ok(None);
    };
    Ok(Some(match method {
        pb::fusion::Method::Rrf(r) => Fusion::Rrf {
            k: bounded(r.k, 60.0, MAX_RRF_K, "rrf.k")?,
            lexical_weight: weight(r.lexical_weight, 1.0, "rrf.lexical_weight")?,
            dense_weight: weight(r.dense_weight, 1.0, "rrf.dense_weight")?,
        },
        pb::fusion::Method::Weighted(w) => Fusion::Weighted {
            lexical_weight: weight(w.lexical_weight, 0.6, "weighted.lexical_weight")?,
            dense_weight: weight(w.dense_weight, 0.4, "weighted.dense_weight")?,
        },
    }))
}

pub fn fusion_to_pb(f: Fusion) -> pb::Fusion {
    pb::Fusion {
        method: Some(match f {
            Fusion::Rrf {
                k,
                lexical_weight,
                dense_weight,
            } => pb::fusion::Method::Rrf(pb::RrfFusion {
                k: Some(k),
                lexical_weight: Some(lexical_weight),
                dense_weight: Some(dense_weight),
            }),
            Fusion::Weighted {
                lexical_weight,
                dense_weight,
            } => pb::fusion::Method::Weighted(pb::WeightedFusion {
                lexical_weight: Some(lexical_weight),
                dense_weight: Some(dense_weight),
            }),
        }),
    }
}

pub fn search_params(r: pb::SearchRequest) -> Result<SearchParams> {
    let offset = mc::page_offset(&r)?;
    Ok(SearchParams {
        mode: mode(r.mode)?,
        fusion: fusion(r.fusion)?,
        offset,
        filter: mc::request_filter(r.filter, r.r#where, &r.where_text)?,
        query: r.query,
        top_k: r.top_k as usize,
        group_by_document: r.group_by_document,
        query_vector: if r.query_vector.is_empty() {
            None
        } else {
            Some(r.query_vector)
        },
        candidates: r.candidates as usize,
        title_boost: weight(r.title_boost, 0.0, "title_boost")?,
        dense_plan: Default::default(),
    })
}

fn retriever_hit(h: RetrieverHit) -> pb::RetrieverHit {
    pb::RetrieverHit {
        rank: h.rank,
        score: h.score,
    }
}

pub fn hit(h: Hit, explain: bool) -> pb::Hit {
    let (metadata, typed_metadata) = mc::metadata_to_pb(h.metadata);
    pb::Hit {
        explanation: explain.then(|| pb::Explanation {
            lexical: h.lexical.map(retriever_hit),
            dense: h.dense.map(retriever_hit),
        }),
        document_id: h.doc_id,
        chunk_id: h.chunk_id,
        ordinal: h.ordinal,
        text: h.text,
        start_byte: h.start as u64,
        end_byte: h.end as u64,
        score: h.score,
        title: h.title,
        metadata,
        typed_metadata,
    }
}

/// `next_page_token` is the caller's (it depends on the request).
pub fn search_response(
    o: SearchOutcome,
    explain: bool,
    next_page_token: String,
) -> pb::SearchResponse {
    pb::SearchResponse {
        total_candidates: o.total_candidates as u64,
        next_page_token,
        mode: mode_to_pb(o.mode) as i32,
        degraded: o.warning.is_some(),
        warning: o.warning.unwrap_or_default(),
        took_micros: o.took.as_micros() as u64,
        hits: o.hits.into_iter().map(|h| hit(h, explain)).collect(),
    }
}

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
    }
}

/// Search settings from the wire (fusion unset: the default).
pub fn search_settings(s: pb::SearchSettings) -> Result<crate::retrieve::SearchSettings> {
    Ok(crate::retrieve::SearchSettings {
        fusion: fusion(s.fusion)?.unwrap_or_default(),
        candidates: s.candidates as usize,
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
                        candidates: 0,
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

pub fn answer_response(o: crate::answer::AnswerOutcome) -> pb::AnswerResponse {
    pb::AnswerResponse {
        answer_json: o.answer.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        grounded: o.answer.is_some(),
        no_answer_reason: o.no_answer_reason.unwrap_or_default(),
        citations: o
            .citations
            .into_iter()
            .map(|c| pb::Citation {
                source: c.number as u32,
                document_id: c.hit.doc_id,
                chunk_id: c.hit.chunk_id,
                start_byte: c.hit.start as u64,
                end_byte: c.hit.end as u64,
                text: c.hit.text,
            })
            .collect(),
        invalid_citations: o.invalid_citations,
        sources: o
            .sources
            .into_iter()
            .map(|s| pb::AnswerSource {
                number: s.number as u32,
                tokens: s.tokens as u32,
                hit: Some(hit(s.hit, true)),
            })
            .collect(),
        left_out: o
            .left_out
            .into_iter()
            .map(|l| pb::LeftOutChunk {
                chunk_id: l.chunk_id,
                document_id: l.doc_id,
                reason: l.reason,
            })
            .collect(),
        prompt_tokens: o.usage.prompt_tokens,
        completion_tokens: o.usage.completion_tokens,
        retrieve_ms: o.retrieve_ms,
        generate_ms: o.generate_ms,
        attempts: o.attempts,
        requests: o.requests,
        model: o.model,
        retrieval_mode: mode_to_pb(o.retrieval.mode) as i32,
        retrieval_warning: o.retrieval.warning.unwrap_or_default(),
    }
}
