//! BM25 over chunks (a document's title with its first chunk), with tantivy.
//!
//! One tantivy index per collection. Each tantivy document is one chunk: `chunk_id` (the join
//! key back to sled), `body` (the chunk text, after the title for a document's first chunk:
//! "flat", as Anserini's best BM25 setting on BEIR) and `title` (for optional title boosts),
//! analysed with tantivy's English stemming
//! analyzer (`en_stem`), and `meta` holding typed metadata terms for filters
//! (`index::filter_query`). Every commit carries the last applied operation sequence as its payload, so on
//! start-up the engine knows which logged operations to replay.

use std::path::Path;

use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use super::filter_query;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::meta::Metadata;

const ANALYZER: &str = "en_stem";

/// What the lexical index stores of one chunk.
#[derive(Debug, Clone)]
pub struct LexicalDoc<'a> {
    pub chunk_id: u64,
    /// The document's title for its first chunk; empty for the others.
    pub title: &'a str,
    pub body: &'a str,
    pub metadata: &'a Metadata,
}

/// Reads chunk ids from the fast field, opening each segment's column once (opening it per
/// hit costs more than the BM25 search itself).
struct ChunkIds<'a> {
    searcher: &'a tantivy::Searcher,
    columns: Vec<Option<tantivy::columnar::Column<u64>>>,
}

impl<'a> ChunkIds<'a> {
    fn new(searcher: &'a tantivy::Searcher) -> Self {
        ChunkIds {
            searcher,
            columns: vec![None; searcher.segment_readers().len()],
        }
    }

    fn get(&mut self, addr: tantivy::DocAddress) -> Result<Option<u64>> {
        let slot = &mut self.columns[addr.segment_ord as usize];
        if slot.is_none() {
            *slot = Some(
                self.searcher
                    .segment_reader(addr.segment_ord)
                    .fast_fields()
                    .u64("chunk_id")?,
            );
        }
        Ok(slot.as_ref().and_then(|c| c.first(addr.doc_id)))
    }
}

pub struct LexicalIndex {
    index: Index,
    reader: IndexReader,
    /// Open only while the collection is being written: an index writer keeps threads (an
    /// indexing worker, a segment updater, a merger), so idle collections close theirs
    /// ([`LexicalIndex::close_idle_writer`]) and a server can hold thousands of collections.
    writer: std::sync::Mutex<Option<(IndexWriter, std::time::Instant)>>,
    chunk_id: Field,
    title: Field,
    body: Field,
    meta: Field,
    /// Tests only: the next applies fail after staging their documents, as a full disk would.
    #[cfg(test)]
    pub(crate) fail_applies: std::sync::atomic::AtomicUsize,
}

fn schema() -> Schema {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    builder.add_u64_field("chunk_id", INDEXED | FAST | STORED);
    builder.add_text_field("title", text.clone());
    builder.add_text_field("body", text);
    builder.add_text_field("meta", STRING);
    builder.build()
}

/// What this version writes into an index. An index written under another format is derived
/// data: [`LexicalIndex::open`] empties it, and the engine rebuilds it from sled at recovery
/// (an index that applied nothing while sled has chunks is rebuilt).
/// 2: a document's title is indexed with its first chunk only.
/// 3: typed metadata terms (`index::filter_query`).
const FORMAT: &str = "3";
const FORMAT_FILE: &str = "quarry-format";

/// Empties `dir` when it holds an index of another format (or of no recorded format).
fn discard_other_format(dir: &Path) -> Result<()> {
    let marker = dir.join(FORMAT_FILE);
    let found = std::fs::read_to_string(&marker).ok();
    if found.as_deref().map(str::trim) == Some(FORMAT) {
        return Ok(());
    }
    if dir.join("meta.json").exists() {
        tracing::info!(dir = %dir.display(), found = ?found, "lexical index of another format: rebuilding it");
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    std::fs::write(&marker, FORMAT)?;
    Ok(())
}

impl LexicalIndex {
    pub fn open(dir: &Path) -> Result<LexicalIndex> {
        std::fs::create_dir_all(dir)?;
        discard_other_format(dir)?;
        let directory = MmapDirectory::open(dir)
            .map_err(|e| Error::internal(format!("cannot open {}: {e}", dir.display())))?;
        let index = Index::open_or_create(directory, schema())?;
        let schema = index.schema();
        let field = |name: &str| schema.get_field(name);
        let (chunk_id, title, body, meta) = (
            field("chunk_id")?,
            field("title")?,
            field("body")?,
            field("meta")?,
        );
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(LexicalIndex {
            index,
            reader,
            writer: std::sync::Mutex::new(None),
            chunk_id,
            title,
            body,
            meta,
            #[cfg(test)]
            fail_applies: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sequence of the last operation committed into this index (0: none).
    pub fn applied_seq(&self) -> Result<u64> {
        Ok(self
            .index
            .load_metas()?
            .payload
            .and_then(|p| p.parse().ok())
            .unwrap_or(0))
    }

    /// Removes `remove`, adds `add` (idempotent: an added chunk id replaces any copy), and
    /// commits with `seq` as payload. New documents are searchable when this returns.
    pub fn apply(&self, seq: u64, add: &[LexicalDoc<'_>], remove: &[u64]) -> Result<()> {
        let mut slot = self
            .writer
            .lock()
            .map_err(|_| Error::internal("lexical writer poisoned"))?;
        if slot.is_none() {
            *slot = Some((self.new_writer()?, std::time::Instant::now()));
        }
        let Some((writer, last_used)) = slot.as_mut() else {
            return Err(Error::internal("lexical writer missing"));
        };
        *last_used = std::time::Instant::now();
        if let Err(e) = self.stage_and_commit(writer, seq, add, remove) {
            // Drop what was staged, so a later commit cannot publish half of this operation
            // under another sequence; the operation stays in sled's log for replay.
            let _ = writer.rollback();
            // A writer whose commit failed is not reused.
            *slot = None;
            return Err(e);
        }
        drop(slot);
        self.reader.reload()?;
        Ok(())
    }

    /// One indexing thread and one merge thread: a collection is written by one batch at a
    /// time, and tantivy's default of four mergers per writer adds up over many collections.
    fn new_writer(&self) -> Result<IndexWriter> {
        let options = tantivy::indexer::IndexWriterOptions::builder()
            .num_worker_threads(1)
            .num_merge_threads(1)
            .memory_budget_per_thread(50_000_000)
            .build();
        Ok(self.index.writer_with_options(options)?)
    }

    /// Closes the writer (and its threads) if nothing was written for `idle`, after letting
    /// its merges finish. Returns whether it closed one.
    pub fn close_idle_writer(&self, idle: std::time::Duration) -> Result<bool> {
        let mut slot = self
            .writer
            .lock()
            .map_err(|_| Error::internal("lexical writer poisoned"))?;
        match slot.as_ref() {
            Some((_, last_used)) if last_used.elapsed() >= idle => {}
            _ => return Ok(false),
        }
        if let Some((writer, _)) = slot.take() {
            writer.wait_merging_threads()?;
        }
        Ok(true)
    }

    fn stage_and_commit(
        &self,
        writer: &mut IndexWriter,
        seq: u64,
        add: &[LexicalDoc<'_>],
        remove: &[u64],
    ) -> Result<()> {
        for id in remove.iter().chain(add.iter().map(|d| &d.chunk_id)) {
            writer.delete_term(Term::from_field_u64(self.chunk_id, *id));
        }
        for d in add {
            // The title is part of the text ("flat" indexing, Anserini's best BM25 setting on
            // BEIR); the title field alone serves optional title boosts. Callers give a
            // document's title with its first chunk only.
            let body = crate::chunk::titled(d.title, d.body);
            let mut document = doc!(
                self.chunk_id => d.chunk_id,
                self.title => d.title,
                self.body => body,
            );
            for term in filter_query::document_terms(d.metadata) {
                document.add_text(self.meta, term);
            }
            writer.add_document(document)?;
        }
        #[cfg(test)]
        if self
            .fail_applies
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(Error::Io(std::io::Error::other("injected: no space left")));
        }
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&seq.to_string());
        prepared.commit()?;
        Ok(())
    }

    /// Analyses `text` with the index's analyzer (lower-cased, stemmed terms).
    pub fn analyze(&self, text: &str) -> Result<Vec<String>> {
        let mut analyzer = self
            .index
            .tokenizers()
            .get(ANALYZER)
            .ok_or_else(|| Error::internal("en_stem analyzer missing"))?;
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        Ok(out)
    }

    /// BM25 top `limit` chunks for `query`, restricted to chunks whose metadata passes the
    /// (resolved) `filter`. `title_boost` > 0 adds title-field matches with that weight on top of
    /// the flat text (where the title already counts once).
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        filter: &Filter,
        title_boost: f32,
    ) -> Result<Vec<(u64, f32)>> {
        let terms = self.analyze(query)?;
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            should.push((
                Occur::Should,
                Box::new(TermQuery::new(
                    Term::from_field_text(self.body, t),
                    IndexRecordOption::WithFreqs,
                )),
            ));
            if title_boost > 0.0 {
                should.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(
                        Box::new(TermQuery::new(
                            Term::from_field_text(self.title, t),
                            IndexRecordOption::WithFreqs,
                        )),
                        title_boost,
                    )),
                ));
            }
        }
        let text_query: Box<dyn Query> = Box::new(BooleanQuery::new(should));
        let query = filter_query::restrict(self.meta, text_query, filter);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut ids = ChunkIds::new(&searcher);
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            if let Some(id) = ids.get(addr)? {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// Every chunk id whose metadata passes the (resolved) `filter` (for filtered dense search).
    pub fn matching_chunks(&self, filter: &Filter) -> Result<Vec<u64>> {
        let query = filter_query::compile(self.meta, filter);
        let searcher = self.reader.searcher();
        let docs = searcher.search(&query, &DocSetCollector)?;
        let mut ids = ChunkIds::new(&searcher);
        let mut out = Vec::with_capacity(docs.len());
        for addr in docs {
            if let Some(id) = ids.get(addr)? {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Number of chunks in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored chunk id of a document (used by tests).
    #[cfg(test)]
    fn stored_ids(&self) -> Vec<u64> {
        let searcher = self.reader.searcher();
        let mut ids: Vec<u64> = searcher
            .search(&tantivy::query::AllQuery, &DocSetCollector)
            .unwrap()
            .into_iter()
            .map(|a| {
                use tantivy::schema::Value;
                let d: tantivy::TantivyDocument = searcher.doc(a).unwrap();
                d.get_first(self.chunk_id).and_then(|v| v.as_u64()).unwrap()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bm25_stemming_filters_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let empty = Metadata::new();
        let lang = crate::meta::from_strings([("lang".to_string(), "en".to_string())].into());
        let all = Filter::all();
        let en = Filter::cond(
            "lang",
            crate::filter::Test::Eq(crate::meta::Value::Str("en".into())),
        );
        {
            let index = LexicalIndex::open(dir.path()).unwrap();
            assert_eq!(index.applied_seq().unwrap(), 0);
            index
                .apply(
                    3,
                    &[
                        LexicalDoc {
                            chunk_id: 1,
                            title: "Running",
                            body: "runners were running fast",
                            metadata: &lang,
                        },
                        LexicalDoc {
                            chunk_id: 2,
                            title: "",
                            body: "slow walking",
                            metadata: &empty,
                        },
                    ],
                    &[],
                )
                .unwrap();
        }
        let index = LexicalIndex::open(dir.path()).unwrap();
        assert_eq!(index.applied_seq().unwrap(), 3);
        let hits = index.search("runs", 10, &all, 1.0).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1]);
        assert!(index.search("walk", 10, &en, 1.0).unwrap().is_empty());
        assert_eq!(index.matching_chunks(&en).unwrap(), vec![1]);
        // Re-adding an id replaces it; removing deletes it.
        index
            .apply(
                4,
                &[LexicalDoc {
                    chunk_id: 2,
                    title: "",
                    body: "slow walking again",
                    metadata: &empty,
                }],
                &[1],
            )
            .unwrap();
        assert_eq!(index.stored_ids(), vec![2]);
        assert_eq!(index.applied_seq().unwrap(), 4);
        assert!(index.search("", 10, &all, 1.0).unwrap().is_empty());
    }
}
