//! `quarry export`: a collection's documents out as a corpus.jsonl (`_id`, `title`, `text`,
//! `metadata`, and `format` for markdown documents), which `quarry ingest` and `quarry jobs
//! submit` read back unchanged.
//!
//! It pages through ListDocuments (id order, so concurrent writes never make it repeat or skip
//! a document that existed throughout) and reads texts with GetDocuments in small batches;
//! memory stays bounded whatever the collection's size. Metadata keeps its JSON types;
//! timestamps are written as RFC 3339 strings (a collection that declares the key a timestamp
//! reads them back as timestamps). `.gz` output is gzipped.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;

use super::commands::ServerArg;
use crate::grpc::pb;

/// Documents per GetDocuments call: ten of the largest (4 MiB by default) stay under the
/// server's default 64 MiB reply limit.
const READ_BATCH: usize = 10;

/// Where the lines go.
enum Out {
    Plain(Box<dyn Write>),
    Gz(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Gz(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Gz(w) => w.flush(),
        }
    }
}

impl Out {
    /// Flushes everything (and ends a gzip stream), reporting any error.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Out::Plain(mut w) => w.flush(),
            Out::Gz(w) => w.finish()?.flush(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    /// Output file (`.gz`: gzipped); default standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only documents passing this filter expression.
    #[arg(long = "where")]
    pub where_text: Option<String>,
}

/// A metadata value as JSON.
fn value_json(v: &pb::MetadataValue) -> serde_json::Value {
    use pb::metadata_value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) | Some(Kind::TimestampValue(s)) => s.clone().into(),
        Some(Kind::IntValue(i)) => (*i).into(),
        Some(Kind::FloatValue(f)) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StringList(l)) => l.values.clone().into(),
        None => serde_json::Value::Null,
    }
}

/// One exported line.
pub fn document_json(d: &pb::Document) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    let mut keys: Vec<_> = d.typed_metadata.keys().collect();
    keys.sort();
    for k in keys {
        metadata.insert(k.clone(), value_json(&d.typed_metadata[k]));
    }
    for (k, v) in &d.metadata {
        metadata
            .entry(k.clone())
            .or_insert_with(|| v.clone().into());
    }
    let mut line = serde_json::json!({
        "_id": d.id,
        "title": d.title,
        "text": d.text,
        "metadata": metadata,
    });
    if d.format == pb::DocumentFormat::Markdown as i32 {
        line["format"] = "markdown".into();
    }
    line
}

/// Runs `quarry export`; returns the documents written.
pub async fn export(args: ExportArgs) -> anyhow::Result<u64> {
    let channel = super::connect(&args.server.server, &args.server.access).await?;
    let mut documents =
        pb::documents_client::DocumentsClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut out = match &args.out {
        None => Out::Plain(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let file = std::io::BufWriter::new(file);
            if path.to_string_lossy().ends_with(".gz") {
                Out::Gz(flate2::write::GzEncoder::new(
                    file,
                    flate2::Compression::default(),
                ))
            } else {
                Out::Plain(Box::new(file))
            }
        }
    };
    let status = |s: tonic::Status| anyhow!("{:?}: {}", s.code(), s.message());
    let mut token = String::new();
    let mut written = 0u64;
    loop {
        let page = documents
            .list_documents(pb::ListDocumentsRequest {
                collection: args.collection.clone(),
                page_size: 1000,
                page_token: token,
                include_metadata: false,
                r#where: None,
                where_text: args.where_text.clone().unwrap_or_default(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let ids: Vec<String> = page.documents.into_iter().map(|d| d.id).collect();
        for batch in ids.chunks(READ_BATCH) {
            let got = documents
                .get_documents(pb::GetDocumentsRequest {
                    collection: args.collection.clone(),
                    ids: batch.to_vec(),
                    include_chunks: false,
                })
                .await
                .map_err(status)?
                .into_inner();
            // A document deleted between the listing and the read is simply not exported.
            for stored in got.documents {
                let Some(doc) = stored.document else { continue };
                serde_json::to_writer(&mut out, &document_json(&doc))?;
                out.write_all(b"\n")?;
                written += 1;
            }
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    out.finish()?;
    Ok(written)
}
