//! The caller of a gRPC request: the request layer (`observe`) authenticates it with
//! [`crate::service::Authenticator`] before admission and puts the [`Principal`] in the
//! request's extensions; handlers take it from there and hand it to the service layer,
//! which decides on the collections a call touches.

use tonic::{Request, Status};

use crate::auth::Principal;

/// The caller of `request` (set by the request layer).
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}
