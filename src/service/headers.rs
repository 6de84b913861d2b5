//! What both front doors read off a request's headers (both are HTTP underneath, so one
//! reading serves both): who is calling ([`Authenticator`]: `authorization: Bearer KEY` or
//! `x-api-key: KEY`, checked against the configured keys and the right the operation needs)
//! and the call's request id ([`request_id`]).
//!
//! No or an unknown key is UNAUTHENTICATED; a key without the right its operation needs is
//! PERMISSION_DENIED naming the missing right. Both request layers run this before admission,
//! so a call that will be refused never takes a queue slot.

use std::sync::Arc;

use crate::auth::{Keys, Principal};
use crate::error::{Error, Result};
use crate::service::Operation;

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

    /// True when no keys are configured (every caller may do everything).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
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
    pub fn check(&self, headers: &http::HeaderMap, op: &Operation) -> Result<Option<Principal>> {
        if op.right.is_none() {
            return Ok(None);
        }
        let principal = if self.keys.is_empty() {
            Principal::anonymous_admin()
        } else {
            let Some(key) = Self::presented(headers) else {
                return Err(Error::Unauthenticated(
                    "this server requires an API key: send `authorization: Bearer KEY` (or `x-api-key: KEY`)".into(),
                ));
            };
            self.keys
                .authenticate(key)
                .ok_or_else(|| Error::Unauthenticated("unknown API key".into()))?
        };
        crate::service::authorize_right(&principal, op)?;
        Ok(Some(principal))
    }
}

/// The request id of a call: the request's `x-request-id` if it is a short token (so a
/// client can follow its call through the server's log), else a random one. Returned in the
/// response's `x-request-id`.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}
