//! The retrieval core's error type.
//!
//! Every fallible core operation returns [`Result`]. Variants are split into *user errors*
//! (the caller sent something we will not accept, or asked for something that does not exist)
//! and *internal faults* (storage, index or model failures). The core knows nothing of gRPC:
//! the single mapping to `tonic::Code` lives in `grpc::status`.

use thiserror::Error;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    // ---- user errors -------------------------------------------------------------------
    /// Input that violates the contract or a documented limit. The message names the limit.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("collection {0:?} not found")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// The request is well-formed but the server cannot serve it in its current state, for
    /// example because the embedding model is not provisioned.
    #[error("{0}")]
    FailedPrecondition(String),

    // ---- the inference router and its model --------------------------------------------
    /// The router could not be reached or failed, after retries and failover.
    #[error("{0}")]
    Upstream(String),
    /// The overall deadline for a router call passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model's reply broke the structured-output contract (after repair attempts), or cited
    /// sources that were not supplied in strict mode. `raw` is the last reply.
    #[error("{message}; the model's last reply was: {raw}")]
    ContractViolation { message: String, raw: String },

    // ---- internal faults ---------------------------------------------------------------
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("lexical index error: {0}")]
    Lexical(#[from] tantivy::TantivyError),
    #[error("embedding error: {0}")]
    Embedding(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// True when the caller caused the error (as opposed to a fault inside the server).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::CollectionNotFound(_)
                | Error::CollectionExists(_)
                | Error::FailedPrecondition(_)
        )
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("serialization: {e}"))
    }
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(e: sled::transaction::TransactionError<Error>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => Error::Storage(e),
        }
    }
}
