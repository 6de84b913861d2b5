//! The retrieval core's error type.
//!
//! Every fallible core operation returns [`Result`]. Variants are split into *user errors*
//! (the caller sent something we will not accept, or asked for something that does not exist)
//! and *internal faults* (storage, index or model failures). The core knows nothing of gRPC:
//! the single mapping to `tonic::Code` lives in `grpc::status`.

use thiserror::Error;

/// How user input appears in messages and logs: escaped (`{:?}`: quotes, no raw control
/// characters or newlines, so it cannot forge log lines) and cut to 200 characters, so an
/// oversized name cannot blow up a status message past clients' metadata limits.
pub fn quote(input: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}... ({} bytes in all)", input.len())
    }
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary.
pub fn clip(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    // ---- user errors -------------------------------------------------------------------
    /// Input that violates the contract or a documented limit. The message names the limit.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("collection {} not found", quote(.0))]
    CollectionNotFound(String),
    #[error("collection {} already exists", quote(.0))]
    CollectionExists(String),
    /// Something else the caller wants to create is taken (a name that is an alias).
    #[error("{0}")]
    AlreadyExists(String),
    /// Something else the caller named does not exist (a job, a source path).
    #[error("{0}")]
    NotFound(String),
    /// A server-wide limit is reached (too many queued jobs); retrying later may succeed.
    #[error("{0}")]
    Exhausted(String),
    /// The caller may not reach what it named (a source path outside the import roots).
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid API key came with a call that needs one.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is well-formed but the server cannot serve it in its current state, for
    /// example because the embedding model is not provisioned.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A change that named what it expected to find (an alias's current collection) found
    /// something else: another caller changed it first. Nothing changed; read and retry.
    #[error("{0}")]
    Aborted(String),

    // ---- the inference router and its model --------------------------------------------
    /// The router could not be reached or failed, after retries and failover.
    #[error("{0}")]
    Upstream(String),
    /// The overall deadline for a router call passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model's reply broke the structured-output contract (after repair attempts), or cited
    /// sources that were not supplied in strict mode. `raw` is the last reply: it goes to the
    /// debug log (quoted, cut), never into the caller's status message, which a model's reply
    /// could otherwise blow past clients' metadata limits or fill with forged lines.
    #[error("{message}")]
    ContractViolation { message: String, raw: String },

    /// The server cannot serve for a moment (it is reopening its storage after a failure,
    /// or shutting down); retrying shortly succeeds.
    #[error("{0}")]
    Unavailable(String),

    /// The caller went away (cancelled, deadline passed, connection closed) and the work
    /// stopped before it committed anything.
    #[error("the request was cancelled")]
    Cancelled,

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

    /// True when the server's disk is full (ENOSPC) under sled, tantivy or a plain file.
    pub fn is_storage_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
        };
        match self {
            Error::Storage(sled::Error::Io(e)) | Error::Io(e) => full(e),
            Error::Lexical(tantivy::TantivyError::IoError(e)) => full(e),
            _ => false,
        }
    }

    /// True for a failure of the storage itself (sled or the file system), as opposed to
    /// bad input or a fault in one request.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Io(_))
    }

    /// True when the caller caused the error (as opposed to a fault inside the server).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::CollectionNotFound(_)
                | Error::CollectionExists(_)
                | Error::AlreadyExists(_)
                | Error::NotFound(_)
                | Error::PermissionDenied(_)
                | Error::Unauthenticated(_)
                | Error::Exhausted(_)
                | Error::FailedPrecondition(_)
                | Error::Aborted(_)
                | Error::Cancelled
        )
    }
}

/// The canonical status codes (gRPC's), which both front doors report: gRPC as its status,
/// HTTP as the `code` of its JSON error body beside the matching HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// Every code, in gRPC's numbering order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The upper-case name (as grpc-go and grpcurl print it).
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status of this code (the mapping of Google's API design guide; a call whose
    /// client went away is 499, nginx's "client closed request").
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown | Code::DataLoss => 500,
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 412,
            Code::Aborted => 409,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

impl Error {
    /// What the caller is told: the code and the message. User errors keep their message
    /// verbatim (it names the limit or the missing thing); internal faults are logged here
    /// and reported as INTERNAL; a full disk is RESOURCE_EXHAUSTED whatever failed on it.
    pub fn public(&self) -> (Code, String) {
        if self.is_storage_full() {
            tracing::error!(error = %self, "request failed: the disk is full");
            return (
                Code::ResourceExhausted,
                format!(
                    "the server's disk is full; nothing of this request was acknowledged ({self})"
                ),
            );
        }
        let code = match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::CollectionNotFound(_) | Error::NotFound(_) => Code::NotFound,
            Error::CollectionExists(_) | Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Embedding(_) | Error::Unavailable(_) => Code::Unavailable,
            Error::Upstream(_) | Error::ContractViolation { .. } => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled => Code::Cancelled,
            Error::Storage(_) | Error::Lexical(_) | Error::Io(_) | Error::Internal(_) => {
                Code::Internal
            }
        };
        // A call refused while the storage reopens is expected, not a fault (the reopen logs).
        if !self.is_user_error() && !matches!(self, Error::Unavailable(_)) {
            tracing::error!(error = %self, "request failed");
        }
        (code, self.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(20_000);
        let q = quote(&long);
        assert!(q.len() < 250 && q.ends_with("(20000 bytes in all)"), "{q}");
        let e = Error::CollectionNotFound(long);
        assert!(e.to_string().len() < 300);
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }
}
