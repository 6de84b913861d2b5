//! `quarry alias`: point a name at a collection, switch it, remove it, list them.
//!
//! `set` creates an alias or switches it in one atomic step and prints what it pointed to
//! before (what a rollback switches back to); `--expect` makes the change conditional on what
//! the alias points to now, so two operators cannot undo each other's switch unseen.

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::commands::ServerArg;
use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Point ALIAS at COLLECTION: creates the alias, or switches it in one atomic step.
    Set(SetArgs),
    /// Remove ALIAS (never the collection it points to).
    Delete(DeleteArgs),
    /// List the aliases and the collections they point to.
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub alias: String,
    pub collection: String,
    /// Change it only if the alias points to this collection now ("" : only if it is new).
    #[arg(long)]
    pub expect: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub alias: String,
    /// Remove it only if it points to this collection now.
    #[arg(long)]
    pub expect: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArg,
    #[arg(long)]
    pub json: bool,
}

type Client = pb::collections_client::CollectionsClient<super::Conn>;

async fn client(server: &ServerArg) -> anyhow::Result<Client> {
    Ok(pb::collections_client::CollectionsClient::new(
        super::connect(&server.server, &server.access).await?,
    ))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

fn alias_json(a: &pb::Alias) -> serde_json::Value {
    serde_json::json!({"alias": a.alias, "collection": a.collection, "previous": a.previous})
}

/// Runs a `quarry alias` command.
pub async fn run(command: AliasCommand) -> anyhow::Result<()> {
    match command {
        AliasCommand::Set(a) => {
            let set = client(&a.server)
                .await?
                .set_alias(pb::SetAliasRequest {
                    alias: a.alias,
                    collection: a.collection,
                    expect_collection: a.expect,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&alias_json(&set))?);
            } else if set.previous.is_empty() {
                println!("alias {} -> {} (new)", set.alias, set.collection);
            } else {
                println!(
                    "alias {} -> {} (was {})",
                    set.alias, set.collection, set.previous
                );
            }
            Ok(())
        }
        AliasCommand::Delete(a) => {
            let gone = client(&a.server)
                .await?
                .delete_alias(pb::DeleteAliasRequest {
                    alias: a.alias.clone(),
                    expect_collection: a.expect,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "alias {} removed (it pointed to {})",
                a.alias, gone.collection
            );
            Ok(())
        }
        AliasCommand::List(a) => {
            let listed = client(&a.server)
                .await?
                .list_collections(pb::ListCollectionsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if a.json {
                let all: Vec<_> = listed.aliases.iter().map(alias_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for alias in &listed.aliases {
                    println!("{} -> {}", alias.alias, alias.collection);
                }
            }
            Ok(())
        }
    }
}
