//! The two derived indexes, rebuilt from sled if lost: BM25 ([`lexical`], tantivy) and
//! approximate nearest neighbours ([`dense`], over our own HNSW graph, `crates/hnsw`), plus an
//! exact-search oracle.

pub mod dense;
pub mod filter_query;
pub mod lexical;

pub use dense::{exact_search, DenseIndex, HnswParams, Rescore};
pub use lexical::{LexicalDoc, LexicalIndex};
