//! API keys on the wire: who is calling ([`Authenticator`], an interceptor on every Quarry
//! service and on reflection), and whether they may ([`authorize`], called by each handler
//! with the right the call needs and the collection it names).
//!
//! Clients send `authorization: Bearer KEY` (or `x-api-key: KEY`). No or an unknown key is
//! UNAUTHENTICATED; a key without the right is PERMISSION_DENIED naming the missing right. The
//! interceptor only authenticates, and leaves the [`Principal`] in the request's extensions:
//! the handler knows which collection a call names (for scoped keys), the interceptor does not.
//! `grpc.health.v1` is never intercepted, so probes need no key.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::{Keys, Principal, Role};

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

    fn presented(request: &Request<()>) -> Option<String> {
        let md = request.metadata();
        if let Some(v) = md.get("authorization").and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            let (scheme, key) = v.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim().to_string());
        }
        md.get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = if self.keys.is_empty() {
            Principal::anonymous_admin()
        } else {
            let Some(key) = Self::presented(&request) else {
                return Err(Status::unauthenticated(
                    "this server requires an API key: send `authorization: Bearer KEY` (or `x-api-key: KEY`)",
                ));
            };
            self.keys
                .authenticate(&key)
                .ok_or_else(|| Status::unauthenticated("unknown API key"))?
        };
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller of `request` (set by the [`Authenticator`]).
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// PERMISSION_DENIED unless the caller has `needed` (on `collection`, when given).
pub fn authorize<T>(
    request: &Request<T>,
    needed: Role,
    collection: Option<&str>,
) -> Result<(), Status> {
    principal(request)?
        .allows(needed, collection)
        .map_err(Status::permission_denied)
}
