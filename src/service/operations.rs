//! The table of operations and the one authorization decision (see the module docs of
//! [`crate::service`]).

use crate::auth::{Principal, Role};
use crate::error::{quote, Error, Result};

/// The admission class of an operation: each class has its own slots and queue, so that
/// long evaluations or answers never hold the slots that searches need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Search, Get and List calls.
    Read,
    /// Document writes, collection changes, job submission and cancellation, snapshots.
    Write,
    Eval,
    Answer,
    /// Never queued: health, reflection, and job watches (which last as long as their job
    /// and are bounded by the Jobs service itself).
    Free,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Eval => "eval",
            Class::Answer => "answer",
            Class::Free => "free",
        }
    }
}

/// How an operation finds the collections it touches, which [`authorize`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No collection data (health, reflection).
    None,
    /// The one collection the request names (for a stream: its first message).
    Named,
    /// A listing: the result holds only what the key may see; a collection the request
    /// names as a filter is checked like [`Scope::Named`].
    Listed,
    /// The collection of the job the request names by id. A job of a collection the key
    /// may not see is reported as not found, exactly like a job that does not exist.
    JobOwner,
    /// The collections the request names, or every collection when it names none
    /// (snapshots). A scoped key must name its collections.
    NamedOrAll,
    /// The collections an uploaded archive restores, under the names they are restored as;
    /// checked after the manifest is read and before anything is written.
    Archive,
    /// An alias change: the alias, the collection the caller points it at, and the collection
    /// it points to now (server state, so a refusal for it does not name it).
    Alias,
    /// Nothing but the caller's own key (what it may do): no collection data.
    Caller,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The gRPC service (`quarry.v1.Search`) and method (`Search`).
    pub service: &'static str,
    pub method: &'static str,
    pub class: Class,
    /// The right the call needs; `None`: no key at all (health probes).
    pub right: Option<Role>,
    pub scope: Scope,
}

const fn op(
    service: &'static str,
    method: &'static str,
    class: Class,
    right: Option<Role>,
    scope: Scope,
) -> Operation {
    Operation {
        service,
        method,
        class,
        right,
        scope,
    }
}

pub const COLLECTIONS: &str = "quarry.v1.Collections";
pub const ACCESS: &str = "quarry.v1.Access";
pub const DOCUMENTS: &str = "quarry.v1.Documents";
pub const JOBS: &str = "quarry.v1.Jobs";
pub const ADMIN: &str = "quarry.v1.Admin";
pub const SEARCH: &str = "quarry.v1.Search";
pub const EVAL: &str = "quarry.v1.Eval";
pub const ANSWERS: &str = "quarry.v1.Answers";
pub const HEALTH: &str = "grpc.health.v1.Health";
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

use Class as C;
use Role as R;
use Scope as S;

/// Every operation the server serves. `tests::every_rpc_has_a_row` fails when the proto
/// gains an RPC without a row here.
pub const OPERATIONS: &[Operation] = &[
    op(
        COLLECTIONS,
        "CreateCollection",
        C::Write,
        Some(R::Admin),
        S::Named,
    ),
    op(
        COLLECTIONS,
        "GetCollection",
        C::Read,
        Some(R::Read),
        S::Named,
    ),
    op(
        COLLECTIONS,
        "ListCollections",
        C::Read,
        Some(R::Read),
        S::Listed,
    ),
    op(
        COLLECTIONS,
        "DeleteCollection",
        C::Write,
        Some(R::Admin),
        S::Named,
    ),
    op(COLLECTIONS, "SetAlias", C::Write, Some(R::Admin), S::Alias),
    op(
        COLLECTIONS,
        "DeleteAlias",
        C::Write,
        Some(R::Admin),
        S::Alias,
    ),
    op(
        DOCUMENTS,
        "UpsertDocuments",
        C::Write,
        Some(R::Write),
        S::Named,
    ),
    op(
        DOCUMENTS,
        "StreamUpsertDocuments",
        C::Write,
        Some(R::Write),
        S::Named,
    ),
    op(DOCUMENTS, "GetDocuments", C::Read, Some(R::Read), S::Named),
    op(
        DOCUMENTS,
        "DeleteDocuments",
        C::Write,
        Some(R::Write),
        S::Named,
    ),
    op(DOCUMENTS, "ListDocuments", C::Read, Some(R::Read), S::Named),
    op(
        DOCUMENTS,
        "DeleteByFilter",
        C::Write,
        Some(R::Write),
        S::Named,
    ),
    op(JOBS, "SubmitIngest", C::Write, Some(R::Write), S::Named),
    op(JOBS, "GetJob", C::Read, Some(R::Read), S::JobOwner),
    op(JOBS, "ListJobs", C::Read, Some(R::Read), S::Listed),
    op(JOBS, "CancelJob", C::Write, Some(R::Write), S::JobOwner),
    op(JOBS, "WatchJob", C::Free, Some(R::Read), S::JobOwner),
    op(
        ADMIN,
        "CreateSnapshot",
        C::Write,
        Some(R::Admin),
        S::NamedOrAll,
    ),
    op(
        ADMIN,
        "RestoreSnapshot",
        C::Write,
        Some(R::Admin),
        S::Archive,
    ),
    // Any valid key may ask what it may do; the answer is about the key, no collection.
    op(ACCESS, "WhoAmI", C::Read, Some(R::Read), S::Caller),
    op(SEARCH, "Search", C::Read, Some(R::Read), S::Named),
    op(EVAL, "Evaluate", C::Eval, Some(R::Read), S::Named),
    // Judgments decide promotions: changing them is an admin right, like switching an alias.
    op(EVAL, "PutEvalSplit", C::Write, Some(R::Admin), S::Named),
    op(EVAL, "ListEvalSplits", C::Read, Some(R::Read), S::Named),
    op(EVAL, "DeleteEvalSplit", C::Write, Some(R::Admin), S::Named),
    // A promotion evaluates (the eval class) and may switch the alias (its admin rule).
    op(EVAL, "Promote", C::Eval, Some(R::Admin), S::Alias),
    op(EVAL, "Rollback", C::Write, Some(R::Admin), S::Alias),
    // Search settings change what every search of a collection returns: admin, like aliases.
    op(EVAL, "ProposeSettings", C::Write, Some(R::Admin), S::Named),
    op(EVAL, "AdoptSettings", C::Eval, Some(R::Admin), S::Named),
    op(EVAL, "Tune", C::Eval, Some(R::Admin), S::Named),
    op(ANSWERS, "Answer", C::Answer, Some(R::Read), S::Named),
    op(ANSWERS, "AnswerStream", C::Answer, Some(R::Read), S::Named),
    op(HEALTH, "Check", C::Free, None, S::None),
    op(HEALTH, "Watch", C::Free, None, S::None),
    // Reflection lists every method: it needs a key when keys are configured.
    op(
        REFLECTION_V1,
        "ServerReflectionInfo",
        C::Free,
        Some(R::Read),
        S::None,
    ),
    op(
        REFLECTION_V1ALPHA,
        "ServerReflectionInfo",
        C::Free,
        Some(R::Read),
        S::None,
    ),
];

/// The row of `service`/`method`, if the server serves it.
pub fn operation(service: &str, method: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.service == service && o.method == method)
}

/// The row of a handler's own operation (a missing row is a programming error, reported as
/// an internal fault rather than a panic).
pub fn row(service: &str, method: &str) -> Result<&'static Operation> {
    operation(service, method).ok_or_else(|| {
        Error::internal(format!(
            "no row in the operations table for {service}/{method}"
        ))
    })
}

/// The collections a call touches, as its handler found them.
#[derive(Debug, Clone, Copy)]
pub enum Touches<'a> {
    /// No collection (reflection; a listing whose result is filtered afterwards).
    Nothing,
    /// Collections named by the caller (in the request, or in an archive it uploaded).
    Named(&'a [&'a str]),
    /// Every collection on the server.
    All,
    /// A collection found from the server's state (a job's), which the caller did not
    /// name: refused as `not_found`, so the refusal says nothing the key may not see.
    Owner {
        collection: &'a str,
        not_found: &'a str,
    },
    /// An alias change: `alias` and `to` (named by the caller; `to` absent for a removal),
    /// `from` (the collection the alias points to now, if it exists: server state).
    Alias {
        alias: &'a str,
        to: Option<&'a str>,
        from: Option<&'a str>,
    },
}

/// The first half of [`authorize`]: whether `who` has the right `op` needs, whatever it
/// touches. The request layer checks it before admission (a key without the right never
/// takes a slot), and streams before their first message names the collection.
pub fn authorize_right(who: &Principal, op: &Operation) -> Result<()> {
    match op.right {
        Some(needed) if who.role < needed => Err(Error::PermissionDenied(format!(
            "key {} has the {} role; this call needs the {} right",
            quote(&who.name),
            who.role.as_str(),
            needed.as_str()
        ))),
        _ => Ok(()),
    }
}

/// The one authorization decision: `Ok` when `who` may run `op` on what it `touches`.
///
/// Refusals: PERMISSION_DENIED naming the missing right, or a collection the caller itself
/// named; NOT_FOUND for a collection found from server state. `touches` must fit the
/// operation's [`Scope`]: a handler that passes the wrong kind (and so could skip a check)
/// gets an internal error, caught by the tests, never a silent pass.
pub fn authorize(who: &Principal, op: &Operation, touches: Touches<'_>) -> Result<()> {
    let fits = matches!(
        (op.scope, touches),
        (Scope::None | Scope::Caller, Touches::Nothing)
            | (Scope::Named, Touches::Named(_))
            | (Scope::Listed, Touches::Nothing | Touches::Named(_))
            | (Scope::JobOwner, Touches::Owner { .. })
            | (Scope::NamedOrAll, Touches::Named(_) | Touches::All)
            | (Scope::Archive, Touches::Named(_))
            | (Scope::Alias, Touches::Alias { .. })
    );
    if !fits {
        return Err(Error::internal(format!(
            "{}/{}: a {:?} check cannot cover scope {:?}",
            op.service, op.method, touches, op.scope
        )));
    }
    if op.right.is_none() {
        return Ok(());
    }
    authorize_right(who, op)?;
    match touches {
        Touches::Nothing => Ok(()),
        Touches::Named(names) => may_use_all(who, names),
        Touches::All if who.collections.is_some() => Err(Error::PermissionDenied(format!(
            "key {} is limited to some collections and this call would touch every one: name the collections",
            quote(&who.name)
        ))),
        Touches::All => Ok(()),
        Touches::Owner {
            collection,
            not_found,
        } => match who.may_use(collection) {
            true => Ok(()),
            false => Err(Error::NotFound(not_found.to_string())),
        },
        Touches::Alias { alias, to, from } => {
            let named: Vec<&str> = std::iter::once(alias).chain(to).collect();
            may_use_all(who, &named)?;
            match from {
                Some(from) if !who.may_use(from) => Err(Error::PermissionDenied(format!(
                    "key {} may not change alias {}: it may not use the collection the alias points to now (or, for a rollback, returns to)",
                    quote(&who.name),
                    quote(alias)
                ))),
                _ => Ok(()),
            }
        }
    }
}

/// PERMISSION_DENIED naming the first of `names` (all named by the caller) `who` may not use.
fn may_use_all(who: &Principal, names: &[&str]) -> Result<()> {
    match names.iter().find(|n| !who.may_use(n)) {
        None => Ok(()),
        Some(n) => Err(Error::PermissionDenied(format!(
            "key {} may not use collection {}",
            quote(&who.name),
            quote(n)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proto's services and their RPCs, read from the contract itself.
    fn proto_rpcs() -> Vec<(String, String)> {
        let text = include_str!("../../proto/quarry/v1/quarry.proto");
        let mut service = None;
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest
                    .split_whitespace()
                    .next()
                    .map(|s| format!("quarry.v1.{s}"));
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                out.push((service.clone().expect("rpc outside a service"), method));
            }
        }
        out
    }

    #[test]
    fn every_rpc_has_a_row() {
        let rpcs = proto_rpcs();
        assert!(rpcs.len() >= 21, "{rpcs:?}");
        for (service, method) in &rpcs {
            assert!(
                operation(service, method).is_some(),
                "{service}/{method} has no row in service::OPERATIONS"
            );
        }
        // And no row names an RPC that is gone.
        for o in OPERATIONS
            .iter()
            .filter(|o| o.service.starts_with("quarry."))
        {
            assert!(
                rpcs.iter().any(|(s, m)| s == o.service && m == o.method),
                "row {}/{} names no RPC of the proto",
                o.service,
                o.method
            );
        }
        // Every Quarry RPC needs a key, and every one that is not a listing touches data.
        for o in OPERATIONS
            .iter()
            .filter(|o| o.service.starts_with("quarry."))
        {
            assert!(o.right.is_some(), "{}/{}", o.service, o.method);
            assert_ne!(o.scope, Scope::None, "{}/{}", o.service, o.method);
        }
    }

    fn scoped(role: Role) -> Principal {
        Principal {
            name: "tenant".into(),
            role,
            collections: Some(["ca".to_string()].into()),
        }
    }

    #[test]
    fn decisions() {
        let snap = operation(ADMIN, "CreateSnapshot").unwrap();
        let admin = scoped(Role::Admin);
        assert!(authorize(&admin, snap, Touches::Named(&["ca"])).is_ok());
        let e = authorize(&admin, snap, Touches::All).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(authorize(&admin, snap, Touches::Named(&["ca", "cb"])).is_err());
        assert!(authorize(&Principal::anonymous_admin(), snap, Touches::All).is_ok());

        let get_job = operation(JOBS, "GetJob").unwrap();
        let e = authorize(
            &scoped(Role::Read),
            get_job,
            Touches::Owner {
                collection: "secret",
                not_found: "job 7 not found",
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if !m.contains("secret")),
            "{e}"
        );

        let search = operation(SEARCH, "Search").unwrap();
        let e = authorize(&scoped(Role::Read), search, Touches::Named(&["cb"])).unwrap_err();
        assert!(
            e.to_string().contains("may not use collection \"cb\""),
            "{e}"
        );
        let upsert = operation(DOCUMENTS, "UpsertDocuments").unwrap();
        let e = authorize(&scoped(Role::Read), upsert, Touches::Named(&["ca"])).unwrap_err();
        assert!(e.to_string().contains("needs the write right"), "{e}");

        // A check of the wrong kind is a fault, never a pass.
        assert!(matches!(
            authorize(&admin, snap, Touches::Nothing),
            Err(Error::Internal(_))
        ));
        assert!(matches!(
            authorize(&admin, get_job, Touches::Named(&["ca"])),
            Err(Error::Internal(_))
        ));
        // Health needs no key at all.
        let health = operation(HEALTH, "Check").unwrap();
        let nobody = Principal {
            name: "x".into(),
            role: Role::Read,
            collections: Some(Default::default()),
        };
        assert!(authorize(&nobody, health, Touches::Nothing).is_ok());
    }

    #[test]
    fn alias_changes_need_admin_on_the_alias_and_both_collections() {
        let set = operation(COLLECTIONS, "SetAlias").unwrap();
        let tenant = Principal {
            name: "tenant".into(),
            role: Role::Admin,
            collections: Some(["docs".to_string(), "g1".to_string(), "g2".to_string()].into()),
        };
        let change = |to, from| Touches::Alias {
            alias: "docs",
            to: Some(to),
            from,
        };
        assert!(authorize(&tenant, set, change("g2", Some("g1"))).is_ok());
        assert!(authorize(&tenant, set, change("g2", None)).is_ok());
        // The collection it points at, named by the caller: named in the refusal.
        let e = authorize(&tenant, set, change("other", Some("g1"))).unwrap_err();
        assert!(e.to_string().contains("\"other\""), "{e}");
        // The collection it points to now is server state: refused without its name.
        let e = authorize(&tenant, set, change("g2", Some("secret"))).unwrap_err();
        assert!(
            matches!(&e, Error::PermissionDenied(m) if !m.contains("secret")),
            "{e}"
        );
        let outsider = Touches::Alias {
            alias: "theirs",
            to: Some("g1"),
            from: None,
        };
        assert!(authorize(&tenant, set, outsider).is_err());
        // A write key may not switch an alias, even on its own collections.
        let writer = Principal {
            role: Role::Write,
            ..tenant.clone()
        };
        let e = authorize(&writer, set, change("g2", Some("g1"))).unwrap_err();
        assert!(e.to_string().contains("needs the admin right"), "{e}");
        let delete = operation(COLLECTIONS, "DeleteAlias").unwrap();
        let removal = |from| Touches::Alias {
            alias: "docs",
            to: None,
            from,
        };
        assert!(authorize(&tenant, delete, removal(Some("g1"))).is_ok());
        assert!(authorize(&tenant, delete, removal(Some("secret"))).is_err());
        assert!(matches!(
            authorize(&tenant, delete, Touches::Named(&["docs"])),
            Err(Error::Internal(_))
        ));
    }
}
