//! The transport-neutral service layer: every operation, whatever door it came through.
//!
//! [`Service`] has one method per operation, taking the caller ([`Principal`](crate::auth::Principal)) and the
//! request message of the API's schema ([`crate::api::pb`]) and returning the reply message.
//! Each method owns its operation's semantics: its defaults, validation, paging tokens,
//! batching ([`stream`]) and the authorization decision. The front doors (`grpc`, `http`)
//! only decode a request into the message, call the method and encode the reply or the error;
//! so the same request gets the same answer through either.
//!
//! - [`collections`], [`access`], [`documents`], [`stream`], [`search`], [`jobs`], [`snapshots`],
//!   [`eval`], [`gates`], [`answers`]: the operations (streaming replies as [`Events`]).
//! - [`live`]: the engine the operations call, reopened in place after a storage failure.
//! - [`headers`]: API keys and request ids, read off the headers both doors share.
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

pub mod access;
pub mod admission;
pub mod answers;
pub mod collections;
pub mod documents;
pub mod eval;
pub mod gates;
pub mod headers;
pub mod jobs;
pub mod live;
pub mod operations;
pub mod search;
pub mod snapshots;
pub mod stream;

use std::sync::Arc;

pub use admission::{Admission, AdmissionSettings};
pub use headers::{request_id, Authenticator};
pub use live::Live;

pub use operations::{
    authorize, authorize_right, operation, row, Class, Operation, Scope, Touches, ACCESS, ADMIN,
    ANSWERS, COLLECTIONS, DOCUMENTS, EVAL, JOBS, OPERATIONS, SEARCH,
};

use crate::engine::{blocking, Engine};
use crate::error::Result;

/// Limits on one client connection, the same at both doors: concurrent HTTP/2 streams
/// (calls; one connection cannot hold more, whatever admission would let through), the
/// request header block (all metadata of one call), and HTTP/2 keepalive (a peer that
/// vanished without closing is noticed within interval + timeout, and its calls end).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long shutdown waits for open calls (each door), then for the final checkpoint.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A server-streaming operation's replies; an error ends the stream.
pub type Events<T> = futures::stream::BoxStream<'static, Result<T>>;

/// Every operation of the server (see the module docs). Cheap to clone; one per process,
/// shared by both doors.
#[derive(Clone)]
pub struct Service {
    live: Arc<Live>,
    /// Grounded answers; `None` when no router is configured.
    answerer: Option<Arc<crate::answer::Answerer>>,
    /// Open job watches (bounded: [`jobs::MAX_WATCHERS`]).
    watchers: Arc<tokio::sync::Semaphore>,
    /// Restores run one at a time (each checks its target name is free, then takes it).
    restoring: Arc<tokio::sync::Mutex<()>>,
}

impl Service {
    pub fn new(live: Arc<Live>, answerer: Option<Arc<crate::answer::Answerer>>) -> Service {
        Service {
            live,
            answerer,
            watchers: Arc::new(tokio::sync::Semaphore::new(jobs::MAX_WATCHERS)),
            restoring: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The engine and jobs being served.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The engine being served now, or UNAVAILABLE while the storage is reopened.
    fn engine(&self) -> Result<Arc<Engine>> {
        self.live.engine()
    }
}
