//! API keys on the wire: who is calling ([`Authenticator`], applied by the request layer in
//! `observe` before admission), and whether they may ([`authorize`], which each handler calls
//! with the collections its call touches).
//!
//! Clients send `authorization: Bearer KEY` (or `x-api-key: KEY`). No or an unknown key is
//! UNAUTHENTICATED; a key without the right its operation needs is PERMISSION_DENIED naming
//! the missing right, both before the call takes an admission slot. The [`Principal`] rides in
//! the request's extensions to the handler: the handler knows which collections a call
//! touches (named, in an archive, owning a job), the layer does not. The rules themselves
//! (which right, which collections) are the operations table's ([`crate::service`]); this
//! module only reads keys off the wire and maps the decision to a status.

use std::sync::Arc;

use tonic::{Request, Status};

use super::status::to_status;
use crate::auth::{Keys, Principal};
use crate::service::{Operation, Touches};

/// Authenticates requests against the configured keys; with none, every request is the
/// anonymous admin.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Keys>,
}

impl Authenticator {
    pub fn new(keys: Keys) -> Authenticator {
        Authenticator {
            keys: Arc::new(keys),
        }
    }

    fn presented(headers: &http::HeaderMap) -> Option<&str> {
        if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
            let (scheme, key) = v.trim().split_once(' ')?;
            return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
        }
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// The caller of a call to `op` with these headers, once its key is known to be valid
    /// and to carry the right `op` needs; `None` for operations that need no key (health).
    pub fn check(
        &self,
        headers: &http::HeaderMap,
        op: &Operation,
    ) -> Result<Option<Principal>, Status> {
        if op.right.is_none() {
            return Ok(None);
        }
        let principal = if self.keys.is_empty() {
            Principal::anonymous_admin()
        } else {
            let Some(key) = Self::presented(headers) else {
                return Err(Status::unauthenticated(
                    "this server requires an API key: send `authorization: Bearer KEY` (or `x-api-key: KEY`)",
                ));
            };
            self.keys
                .authenticate(key)
                .ok_or_else(|| Status::unauthenticated("unknown API key"))?
        };
        crate::service::authorize_right(&principal, op).map_err(to_status)?;
        Ok(Some(principal))
    }
}

/// The caller of `request` (set by the request layer).
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// The handler's half of the one decision: `Ok` when the caller may run `service`/`method`
/// on what it `touches` (see [`crate::service::authorize`]).
pub fn authorize<T>(
    request: &Request<T>,
    service: &str,
    method: &str,
    touches: Touches<'_>,
) -> Result<(), Status> {
    let op = crate::service::row(service, method).map_err(to_status)?;
    crate::service::authorize(principal(request)?, op, touches).map_err(to_status)
}
