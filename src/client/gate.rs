//! `quarry evalset`, `quarry promote` and `quarry rollback`: attach judgments to a collection
//! or alias, switch an alias to a new generation only when the eval gate holds, and switch it
//! back.
//!
//! `evalset upload` reads a BEIR directory (`queries.jsonl`, `qrels/<split>.tsv`: every split
//! found, or those named) or a pair of files (`--queries` as BEIR JSONL or TREC `qid<TAB>text`,
//! `--qrels` as BEIR TSV or TREC qrels) and sends each split in one PutEvalSplit call.
//! `promote` prints the gate's table either way and exits with 3 when the gate refused, so a
//! deployment script stops there.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};

use super::commands::ServerArg;
use crate::eval::beir;
use crate::eval::run::RunSpec;
use crate::grpc::{self, pb};

/// `quarry promote` ended with the gate refusing (exit code 3).
#[derive(Debug)]
pub struct GateRefused;

impl std::fmt::Display for GateRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gate refused the promotion; the alias was not switched"
        )
    }
}

impl std::error::Error for GateRefused {}

#[derive(Subcommand, Debug)]
pub enum EvalsetCommand {
    /// Attach splits of queries with judgments to a collection or alias (each replaces the
    /// split of its name).
    Upload(UploadArgs),
    /// The splits attached to a collection or alias.
    List(ListArgs),
    /// Remove a split.
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The collection or alias to attach to.
    #[arg(long)]
    pub collection: String,
    /// A BEIR directory: queries.jsonl and qrels/<split>.tsv.
    #[arg(long, conflicts_with_all = ["queries", "qrels"])]
    pub beir: Option<PathBuf>,
    /// Queries: BEIR JSONL (*.jsonl) or TREC topics as `qid<TAB>text`.
    #[arg(long, requires = "qrels")]
    pub queries: Option<PathBuf>,
    /// Judgments: BEIR TSV (`qid<TAB>docid<TAB>grade`) or TREC qrels (`qid 0 docid grade`).
    #[arg(long, requires = "queries")]
    pub qrels: Option<PathBuf>,
    /// The splits to upload (with --beir: default every qrels/*.tsv; with --queries: one).
    #[arg(long = "split", value_delimiter = ',')]
    pub splits: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    #[arg(long)]
    pub split: String,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The alias to switch.
    #[arg(long)]
    pub alias: String,
    /// The collection (generation) to switch it to.
    #[arg(long)]
    pub candidate: String,
    /// The split of the attached eval set to measure on.
    #[arg(long, default_value = crate::service::gates::DEFAULT_PROMOTE_SPLIT)]
    pub split: String,
    /// How both generations are searched (as `quarry eval --modes`: hybrid, hybrid-rrf:K, ...).
    #[arg(long, default_value = "hybrid")]
    pub run: String,
    #[command(flatten)]
    pub gate: GateArgs,
}

/// The gate's options, shared by `quarry promote`, `settings adopt` and `tune`.
#[derive(Args, Debug)]
pub struct GateArgs {
    /// Metrics that must not get worse beyond their noise (default: ndcg@10,recall@10).
    #[arg(long, value_delimiter = ',')]
    pub primary: Vec<String>,
    /// Significance level of "worse beyond its noise" (default 0.05).
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub alias: String,
    /// Roll back only if the alias points to this collection now.
    #[arg(long)]
    pub expect: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub(super) type Client = pb::eval_client::EvalClient<super::Conn>;

pub(super) async fn client(server: &ServerArg) -> anyhow::Result<Client> {
    Ok(
        pb::eval_client::EvalClient::new(super::connect(&server.server, &server.access).await?)
            .max_encoding_message_size(usize::MAX),
    )
}

pub(super) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

pub(super) fn json<T: prost::Message + prost::Name>(m: &T) -> anyhow::Result<String> {
    Ok(String::from_utf8(crate::api::json::encode(m)?)?)
}

/// The splits an upload sends: (split name, queries).
fn read_splits(a: &UploadArgs) -> anyhow::Result<Vec<(String, Vec<pb::EvalQuery>)>> {
    let to_pb = |qs: Vec<crate::eval::run::EvalQuery>| -> Vec<pb::EvalQuery> {
        qs.into_iter()
            .map(|q| pb::EvalQuery {
                id: q.id,
                text: q.text,
                judgments: q.judgments,
            })
            .collect()
    };
    match (&a.beir, &a.queries, &a.qrels) {
        (Some(dir), _, _) => {
            let d = beir::Dataset::judgments_only(dir);
            let queries = d.queries()?;
            let splits = match a.splits.is_empty() {
                true => d.splits()?,
                false => a.splits.clone(),
            };
            if splits.is_empty() {
                bail!("{} has no qrels/<split>.tsv", dir.display());
            }
            splits
                .into_iter()
                .map(|s| Ok((s.clone(), to_pb(beir::join(&queries, &d.qrels(&s)?)?))))
                .collect()
        }
        (None, Some(q), Some(r)) => {
            let [split] = a.splits.as_slice() else {
                bail!("with --queries and --qrels, name the one split they are with --split");
            };
            let queries = match q.extension().and_then(|e| e.to_str()) {
                Some("jsonl") => beir::queries_jsonl(q)?,
                _ => beir::queries_tsv(q)?,
            };
            let qrels = beir::qrels_file(r)?;
            Ok(vec![(split.clone(), to_pb(beir::join(&queries, &qrels)?))])
        }
        _ => bail!("give --beir DIR, or --queries FILE --qrels FILE --split NAME"),
    }
}

fn split_line(s: &pb::EvalSplit) -> String {
    format!(
        "{}/{}: {} queries, {} judgments",
        s.collection, s.split, s.queries, s.judgments
    )
}

/// The table of a gate record, as `quarry eval` prints a comparison.
pub fn print_record(r: &pb::GateRecord) {
    if r.action == "rollback" {
        println!(
            "alias {} rolled back to {} (from {})",
            r.alias, r.candidate, r.baseline
        );
        return;
    }
    let verdict = match (r.switched, r.holds) {
        (true, _) if r.action == "adopt" => "ADOPTED".to_string(),
        (true, _) => "PROMOTED: the alias now points to it".to_string(),
        (false, true) if r.action == "tune" => "holds on the check split".to_string(),
        (false, true) => "not switched".to_string(),
        (false, false) => format!(
            "REFUSED: {} worse beyond the noise (p < {})",
            r.worse.join(", "),
            r.alpha
        ),
    };
    match r.action.as_str() {
        "adopt" | "tune" => println!("search settings of {}: {}: {verdict}", r.candidate, r.run),
        _ => println!(
            "{} against {} behind alias {}: {verdict}",
            r.candidate, r.baseline, r.alias
        ),
    }
    println!(
        "split {} of {} ({} paired queries), run {}, primary {}; caught up: {}",
        r.split,
        r.split_owner,
        r.queries,
        r.run,
        r.primary.join(", "),
        r.caught_up
    );
    let c = grpc::gate_comparison(r);
    println!("difference [95% interval], p, wins/losses/ties:");
    for l in crate::eval::report::comparison_lines(&c) {
        println!("  {l}");
    }
    let show = |what: &str, list: &[pb::QueryDelta]| {
        if !list.is_empty() {
            let items: Vec<String> = list
                .iter()
                .map(|q| format!("{} {:.3}->{:.3}", q.query_id, q.baseline, q.candidate))
                .collect();
            println!("biggest {what} (nDCG@10): {}", items.join(", "));
        }
    };
    show("wins", &r.wins);
    show("losses", &r.losses);
}

/// Runs a `quarry evalset` command.
pub async fn evalset(command: EvalsetCommand) -> anyhow::Result<()> {
    match command {
        EvalsetCommand::Upload(a) => {
            let splits = read_splits(&a)?;
            let mut c = client(&a.server).await?;
            for (split, queries) in splits {
                let put = c
                    .put_eval_split(pb::PutEvalSplitRequest {
                        collection: a.collection.clone(),
                        split,
                        queries,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                match a.json {
                    true => println!("{}", json(&put)?),
                    false => println!("{}", split_line(&put)),
                }
            }
            Ok(())
        }
        EvalsetCommand::List(a) => {
            let listed = client(&a.server)
                .await?
                .list_eval_splits(pb::ListEvalSplitsRequest {
                    collection: a.collection,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match a.json {
                true => println!("{}", json(&listed)?),
                false => listed
                    .splits
                    .iter()
                    .for_each(|s| println!("{}", split_line(s))),
            }
            Ok(())
        }
        EvalsetCommand::Delete(a) => {
            client(&a.server)
                .await?
                .delete_eval_split(pb::DeleteEvalSplitRequest {
                    collection: a.collection.clone(),
                    split: a.split.clone(),
                })
                .await
                .map_err(status_error)?;
            println!("{}/{} removed", a.collection, a.split);
            Ok(())
        }
    }
}

/// `quarry promote`.
pub async fn promote(a: PromoteArgs) -> anyhow::Result<()> {
    let spec = RunSpec::parse(&a.run)?;
    let reply = client(&a.server)
        .await?
        .promote(pb::PromoteRequest {
            alias: a.alias,
            candidate: a.candidate,
            split: a.split,
            run: Some(super::eval::run_pb(&spec, "", "")),
            primary: a.gate.primary,
            alpha: a.gate.alpha,
            depth: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    show_decision(reply, a.gate.json)
}

/// Prints a gate's decision (its table, or `--json`); a refusal is [`GateRefused`].
pub(super) fn show_decision(reply: pb::PromoteResponse, as_json: bool) -> anyhow::Result<()> {
    let record = reply.record.unwrap_or_default();
    match as_json {
        true => println!("{}", json(&record)?),
        false => print_record(&record),
    }
    match reply.promoted {
        true => Ok(()),
        false => Err(GateRefused.into()),
    }
}

/// `quarry rollback`.
pub async fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let reply = client(&a.server)
        .await?
        .rollback(pb::RollbackRequest {
            alias: a.alias,
            expect_collection: a.expect,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    show_decision(reply, a.json)
}
