//! `quarry settings show|propose|adopt` and `quarry tune`: a collection's search settings
//! (fusion and candidate depth), changed only through the eval gate (`eval/tune.rs`).
//! `adopt` exits with 3 when the gate refuses, like `promote`.

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::commands::ServerArg;
use super::gate::{client, json, print_record, show_decision, status_error, GateArgs};
use crate::grpc::{self, pb};
use crate::retrieve::Fusion;

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// The adopted search settings of a collection (or alias), and the proposal if any.
    Show(ShowArgs),
    /// Propose search settings (adopted only by `adopt`, through the gate).
    Propose(ProposeArgs),
    /// Measure the proposal against the adopted settings and adopt it if the gate holds.
    Adopt(AdoptArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
}

#[derive(Args, Debug)]
pub struct ProposeArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    /// weighted:LEXICAL:DENSE, rrf:K or rrf:K:LEXICAL:DENSE.
    #[arg(long)]
    pub fusion: String,
    /// Candidates per retriever (0: max(100, 2 * top_k)).
    #[arg(long, default_value_t = 0)]
    pub candidates: u32,
    /// Score a document by the sum of its chunks' scores, the i-th best weighted by DECAY^i
    /// (0: by its best chunk).
    #[arg(long, default_value_t = 0.0)]
    pub sum_decay: f32,
}

#[derive(Args, Debug)]
pub struct AdoptArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    /// The split of the attached eval set to measure on.
    #[arg(long, default_value = crate::service::gates::DEFAULT_PROMOTE_SPLIT)]
    pub split: String,
    #[command(flatten)]
    pub gate: GateArgs,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub collection: String,
    /// The split the grid is evaluated on.
    #[arg(long, default_value = crate::service::gates::DEFAULT_TUNE_SPLIT)]
    pub tune_split: String,
    /// The split the best setting is checked on (never the tuning split).
    #[arg(long, default_value = crate::service::gates::DEFAULT_PROMOTE_SPLIT)]
    pub check_split: String,
    #[command(flatten)]
    pub gate: GateArgs,
}

fn label(s: &Option<pb::SearchSettings>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let fusion = grpc::fusion_from_pb(s.fusion)
        .ok()
        .flatten()
        .unwrap_or_default();
    grpc::search_settings(*s)
        .map(|s| s.label())
        .unwrap_or_else(|_| format!("{fusion:?}"))
}

/// Runs a `quarry settings` command.
pub async fn settings(command: SettingsCommand) -> anyhow::Result<()> {
    match command {
        SettingsCommand::Show(a) => {
            let channel = super::connect(&a.server.server, &a.server.access).await?;
            let c = pb::collections_client::CollectionsClient::new(channel)
                .get_collection(pb::GetCollectionRequest { name: a.collection })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}: adopted {}", c.name, label(&c.search_settings));
            if c.proposed_settings.is_some() {
                println!("{}: proposed {}", c.name, label(&c.proposed_settings));
            }
            Ok(())
        }
        SettingsCommand::Propose(a) => {
            let fusion = Fusion::parse_label(&a.fusion).ok_or_else(|| {
                anyhow!(
                    "--fusion {:?}: use weighted:L:D, rrf:K or rrf:K:L:D",
                    a.fusion
                )
            })?;
            let c = client(&a.server)
                .await?
                .propose_settings(pb::ProposeSettingsRequest {
                    collection: a.collection,
                    settings: Some(pb::SearchSettings {
                        fusion: Some(grpc::fusion_to_pb(fusion)),
                        candidates: a.candidates,
                        sum_decay: a.sum_decay,
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}: proposed {} (adopted: {})",
                c.name,
                label(&c.proposed_settings),
                label(&c.search_settings)
            );
            Ok(())
        }
        SettingsCommand::Adopt(a) => {
            let reply = client(&a.server)
                .await?
                .adopt_settings(pb::AdoptSettingsRequest {
                    collection: a.collection,
                    split: a.split,
                    primary: a.gate.primary,
                    alpha: a.gate.alpha,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            show_decision(reply, a.gate.json)
        }
    }
}

/// `quarry tune`.
pub async fn tune(a: TuneArgs) -> anyhow::Result<()> {
    let reply = client(&a.server)
        .await?
        .tune(pb::TuneRequest {
            collection: a.collection,
            tune_split: a.tune_split.clone(),
            check_split: a.check_split,
            grid: Vec::new(),
            primary: a.gate.primary,
            alpha: a.gate.alpha,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.gate.json {
        println!("{}", json(&reply)?);
        return Ok(());
    }
    let score = |t: &Option<pb::TunedSetting>| t.as_ref().map_or(0.0, |t| t.ndcg_at_10);
    let adopted = reply.adopted.as_ref().and_then(|t| t.settings);
    println!(
        "on {}: adopted {} nDCG@10 {:.4}; best of {} settings:",
        a.tune_split,
        label(&adopted),
        score(&reply.adopted),
        reply.grid.len()
    );
    for t in reply.grid.iter().take(10) {
        println!("  {:.4}  {}", t.ndcg_at_10, label(&t.settings));
    }
    print_record(&reply.check.unwrap_or_default());
    match reply.proposed {
        true => println!("proposed: adopt it with `quarry settings adopt`"),
        false => println!("not proposed (it is the adopted setting, not better, or did not hold)"),
    }
    Ok(())
}
