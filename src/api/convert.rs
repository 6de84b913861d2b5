//! Conversions between the wire types (`pb`) and the core's types. Validation of shapes that
//! only exist on the wire (enums, oneofs) happens here; limits are checked by the engine.

use super::meta_convert as mc;
use super::pb;
use crate::engine::{
    ChunkInput, CollectionInfo, DocumentInput, StoredDocument, UpsertOutcome, UpsertStatus,
};
use crate::error::{Error, Result};
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

pub use super::eval_convert::{
    eval_outcome, eval_result, eval_split, gate_comparison, gate_record, search_settings,
    search_settings_pb, tune_outcome,
};

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
        // The collection's setting: a document's score is not chosen per request.
        aggregation: None,
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
