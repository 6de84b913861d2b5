//! Grounded answers: retrieve, pack the sources into a prompt, ask the team's inference router
//! under a JSON Schema contract, enforce the contract, and check the citations.
//!
//! - [`router`]: the OpenAI-compatible client (failover, retries, structured-output modes).
//! - [`prompt`]: context packing within a token budget and the cache-friendly prompt layout.
//! - [`schema`]: the default answer schema, validation, citation extraction.
//!
//! The contract is enforced whatever the router and model do: a reply that is not valid JSON or
//! does not match the schema gets a bounded number of repair attempts (the validation error is
//! fed back), then a clear error carrying the raw reply. Citations must name sources that were
//! supplied; others are reported, and strict mode rejects the answer. When retrieval finds
//! nothing relevant enough, the model is not called at all.

pub mod prompt;
pub mod retry;
pub mod router;
pub mod schema;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::Engine;
use crate::error::{quote, Error, Result};
use crate::retrieve::{Hit, SearchOutcome, SearchParams};
use prompt::{LeftOut, Source};
use router::{Endpoint, Generation, Message, RetryPolicy, Router, StreamEvent, Usage};
use schema::Contract;

/// Largest `schema_json` a request may send.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// `[answer]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerSettings {
    /// Routers in failover order.
    pub routers: Vec<Endpoint>,
    pub retry: RetryPolicy,
    /// Tokens of sources packed into a prompt (counted with the collection's tokenizer).
    pub token_budget: usize,
    /// Repair attempts after a reply that breaks the contract.
    pub max_repairs: u32,
    /// Answer "no grounded answer" without calling the model when the best retrieved chunk's
    /// cosine similarity to the question is below this (dense or hybrid retrieval), or when
    /// nothing is retrieved.
    pub min_relevance: f32,
    /// Reject answers that cite sources that were not supplied.
    pub strict_citations: bool,
    /// System instructions; `{schema}` is replaced by the answer's JSON Schema.
    pub instructions: String,
    /// One source in the prompt; `{number}`, `{document_id}`, `{title}`, `{text}` are replaced.
    pub source_template: String,
    /// The question; `{question}` is replaced.
    pub question_template: String,
    /// Tokens the model may generate per call: the default, and the most a request may ask for.
    pub max_tokens: u32,
    /// Model names a request may choose (sent to the router under the server's key). Empty:
    /// requests cannot choose; each router's configured model is used.
    pub allowed_models: Vec<String>,
    /// With the default schema, the longest answer text the response format allows (0: no
    /// bound). Grammar-constrained routers then always close the JSON.
    pub max_answer_chars: usize,
}

impl Default for AnswerSettings {
    fn default() -> Self {
        AnswerSettings {
            routers: Vec::new(),
            retry: RetryPolicy::default(),
            token_budget: 2048,
            max_repairs: 2,
            min_relevance: 0.2,
            strict_citations: false,
            instructions: prompt::DEFAULT_INSTRUCTIONS.to_string(),
            source_template: prompt::DEFAULT_SOURCE_TEMPLATE.to_string(),
            question_template: prompt::DEFAULT_QUESTION_TEMPLATE.to_string(),
            max_tokens: 512,
            allowed_models: Vec::new(),
            max_answer_chars: 600,
        }
    }
}

/// One question.
#[derive(Debug, Clone)]
pub struct AnswerRequest {
    pub collection: String,
    pub question: String,
    /// Retrieval settings; `query` is replaced by the question.
    pub search: SearchParams,
    /// The answer's JSON Schema; `None`: [`schema::default_schema`].
    pub schema: Option<Value>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: f32,
    pub strict_citations: Option<bool>,
}

/// A cited source, resolved.
#[derive(Debug, Clone)]
pub struct Citation {
    pub number: usize,
    pub hit: Hit,
}

#[derive(Debug, Clone)]
pub struct AnswerOutcome {
    /// The validated answer; `None` when there is no grounded answer.
    pub answer: Option<Value>,
    /// Why there is no grounded answer.
    pub no_answer_reason: Option<String>,
    pub citations: Vec<Citation>,
    /// Cited numbers that name no supplied source.
    pub invalid_citations: Vec<i64>,
    pub sources: Vec<Source>,
    pub left_out: Vec<LeftOut>,
    pub retrieval: SearchOutcome,
    pub usage: Usage,
    pub retrieve_ms: f64,
    pub generate_ms: f64,
    /// Model calls (1 + repairs).
    pub attempts: u32,
    /// HTTP requests to routers (retries and failover included).
    pub requests: u32,
    pub model: String,
}

/// Progress of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Retrieval finished.
    Retrieved { hits: usize, ms: f64 },
    /// Sources packed into the prompt.
    Packed { sources: usize, left_out: usize },
    /// A model call starts (1 = first, 2.. = repairs).
    Generating { attempt: u32 },
    /// A piece of the model's reply.
    Token(String),
    /// The pieces since the last `Generating` are void: that call failed and is retried, or
    /// its reply broke the contract and a repair follows.
    Discard(String),
}

/// Receives [`Progress`] events.
pub type ProgressSink = dyn Fn(Progress) + Send + Sync;

pub struct Answerer {
    router: Router,
    settings: AnswerSettings,
}

impl Answerer {
    pub fn new(settings: AnswerSettings) -> Result<Answerer> {
        Ok(Answerer {
            router: Router::new(settings.routers.clone(), settings.retry.clone())?,
            settings,
        })
    }

    /// An answerer for `settings`, or `None` when no router is configured.
    pub fn configured(settings: AnswerSettings) -> Result<Option<std::sync::Arc<Answerer>>> {
        if settings.routers.is_empty() {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(Answerer::new(settings)?)))
    }

    pub fn settings(&self) -> &AnswerSettings {
        &self.settings
    }

    pub async fn answer(&self, engine: &Engine, req: AnswerRequest) -> Result<AnswerOutcome> {
        self.answer_with(engine, req, None).await
    }

    /// Like [`Self::answer`], reporting progress and the reply's tokens to `progress` as they
    /// come (the router is asked to stream).
    pub async fn answer_with(
        &self,
        engine: &Engine,
        req: AnswerRequest,
        progress: Option<&ProgressSink>,
    ) -> Result<AnswerOutcome> {
        let emit = |p: Progress| {
            if let Some(f) = progress {
                f(p)
            }
        };
        if req.question.trim().is_empty() {
            return Err(Error::invalid("the question must not be empty"));
        }
        if !(0.0..=2.0).contains(&req.temperature) {
            return Err(Error::invalid("temperature must be in 0..=2"));
        }
        if let Some(n) = req.max_tokens.filter(|n| *n > self.settings.max_tokens) {
            return Err(Error::invalid(format!(
                "max_tokens {n} is over the server's limit answer.max_tokens = {}",
                self.settings.max_tokens
            )));
        }
        if let Some(m) = req
            .model
            .as_ref()
            .filter(|m| !self.settings.allowed_models.contains(m))
        {
            return Err(Error::invalid(format!(
                "model {} is not one the server lets requests choose (answer.allowed_models)",
                quote(m)
            )));
        }
        let contract = Contract::new(req.schema.clone().unwrap_or_else(schema::default_schema))?;
        let collection = engine.collection(&req.collection)?;

        let started = Instant::now();
        let mut params = req.search.clone();
        params.query = req.question.clone();
        if params.top_k == 0 {
            params.top_k = 8;
        }
        // The collection resolved above (an alias is resolved once per call).
        let retrieval = engine.search(&collection.record().name, params).await?;
        let retrieve_ms = started.elapsed().as_secs_f64() * 1000.0;
        emit(Progress::Retrieved {
            hits: retrieval.hits.len(),
            ms: retrieve_ms,
        });

        let best_dense = retrieval
            .hits
            .iter()
            .filter_map(|h| h.dense.map(|d| d.score))
            .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
        let no_answer = if retrieval.hits.is_empty() {
            Some("retrieval found nothing".to_string())
        } else {
            match best_dense {
                Some(s) if s < self.settings.min_relevance => Some(format!(
                    "no retrieved chunk is relevant enough (best similarity {s:.3} < min_relevance {})",
                    self.settings.min_relevance
                )),
                _ => None,
            }
        };
        let empty = |reason: String, retrieval: SearchOutcome| AnswerOutcome {
            answer: None,
            no_answer_reason: Some(reason),
            citations: Vec::new(),
            invalid_citations: Vec::new(),
            sources: Vec::new(),
            left_out: Vec::new(),
            retrieval,
            usage: Usage::default(),
            retrieve_ms,
            generate_ms: 0.0,
            attempts: 0,
            requests: 0,
            model: String::new(),
        };
        if let Some(reason) = no_answer {
            return Ok(empty(reason, retrieval));
        }

        let tokenizer = collection.embedder().tokenizer().clone();
        let templates = prompt::Templates {
            instructions: &self.settings.instructions,
            source: &self.settings.source_template,
            question: &self.settings.question_template,
        };
        let packed = prompt::pack(
            retrieval.hits.clone(),
            self.settings.token_budget,
            templates.source,
            |t| {
                tokenizer
                    .encode(t, false)
                    .map(|e| e.len())
                    .unwrap_or(t.len() / 4)
            },
        );
        if packed.sources.is_empty() {
            let mut out = empty(
                format!(
                    "no retrieved chunk fits the token budget of {}",
                    self.settings.token_budget
                ),
                retrieval,
            );
            out.left_out = packed.left_out;
            return Ok(out);
        }
        emit(Progress::Packed {
            sources: packed.sources.len(),
            left_out: packed.left_out.len(),
        });
        let mut messages: Vec<Message> =
            prompt::messages(&templates, contract.schema(), &packed, &req.question);
        // With the default schema, the response format also bounds citation numbers.
        let wire_schema = match &req.schema {
            None => {
                schema::default_schema_for(packed.sources.len(), self.settings.max_answer_chars)
            }
            Some(s) => s.clone(),
        };
        let gen = Generation {
            model: req.model.clone(),
            max_tokens: req.max_tokens.unwrap_or(self.settings.max_tokens),
            temperature: req.temperature,
        };

        let started = Instant::now();
        let mut usage = Usage::default();
        let mut requests = 0;
        let mut attempts = 0;
        let (answer, model) = loop {
            attempts += 1;
            emit(Progress::Generating { attempt: attempts });
            let forward = |e: StreamEvent<'_>| match e {
                StreamEvent::Token(t) => emit(Progress::Token(t.to_string())),
                StreamEvent::Discard(why) => emit(Progress::Discard(why.to_string())),
            };
            let sink: Option<router::StreamSink<'_>> = progress.map(|_| &forward as _);
            let c = self
                .router
                .complete(&messages, &wire_schema, &gen, sink)
                .await?;
            requests += c.requests;
            usage.prompt_tokens += c.usage.prompt_tokens;
            usage.completion_tokens += c.usage.completion_tokens;
            match contract.check(&c.content) {
                Ok(v) => break (v, c.model),
                Err(why) if attempts <= self.settings.max_repairs => {
                    emit(Progress::Discard(why.clone()));
                    tracing::info!(attempt = attempts, %why, "answer broke the contract; asking for a repair");
                    crate::metrics::global().answer_repairs.inc(&[]);
                    messages.push(Message::new("assistant", c.content));
                    messages.push(Message::new(
                        "user",
                        format!("Your reply was rejected: {why}. Reply again with only one JSON object that matches the schema."),
                    ));
                }
                Err(why) => {
                    tracing::debug!(reply = %quote(&c.content), "the model's last reply");
                    return Err(Error::ContractViolation {
                        message: format!(
                            "the model's reply broke the answer contract after {attempts} attempts: {}",
                            quote(&why)
                        ),
                        raw: c.content,
                    });
                }
            }
        };
        let generate_ms = started.elapsed().as_secs_f64() * 1000.0;

        let mut citations = Vec::new();
        let mut invalid = Vec::new();
        for n in schema::citations(&answer) {
            match packed.sources.iter().find(|s| s.number as i64 == n) {
                Some(s) => citations.push(Citation {
                    number: s.number,
                    hit: s.hit.clone(),
                }),
                None => invalid.push(n),
            }
        }
        if !invalid.is_empty()
            && req
                .strict_citations
                .unwrap_or(self.settings.strict_citations)
        {
            return Err(Error::ContractViolation {
                message: format!(
                    "strict citations: the answer cites sources {invalid:?}, but only 1..={} were supplied",
                    packed.sources.len()
                ),
                raw: answer.to_string(),
            });
        }
        Ok(AnswerOutcome {
            answer: Some(answer),
            no_answer_reason: None,
            citations,
            invalid_citations: invalid,
            sources: packed.sources,
            left_out: packed.left_out,
            retrieval,
            usage,
            retrieve_ms,
            generate_ms,
            attempts,
            requests,
            model,
        })
    }
}
