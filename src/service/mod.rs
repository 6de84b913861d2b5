//! The transport-neutral service layer: what each operation is, who may call it, and on what.
//!
//! - [`operations`]: the one table of operations (service, method, admission class, the right
//!   it needs, and how the collections it touches are found). The gRPC layer derives its
//!   admission classes, its metrics labels and its authentication rule from this table;
//!   handlers look up their own row and ask [`authorize`] before they touch anything.
//! - [`admission`]: how many calls of each class run and wait at once (`[admission]`).
//! - [`authorize`]: the one authorization decision. Every call that reads or writes
//!   collection data passes its [`Touches`] (the collections named in the request, found in
//!   an archive, owning a job, or "all") through it, so a scoped key is checked the same way
//!   whatever the call, and a refusal never names a collection the key cannot see.
//!
//! Why a table: a rule spelled beside each handler (a string match on method names for
//! admission, a role in each handler) drifts as RPCs are added; a row per operation, with a
//! test that every RPC of the proto has one, cannot.

pub mod admission;
pub mod operations;

pub use operations::{
    authorize, authorize_right, operation, row, Class, Operation, Scope, Touches, ADMIN, ANSWERS,
    COLLECTIONS, DOCUMENTS, EVAL, JOBS, OPERATIONS, SEARCH,
};
