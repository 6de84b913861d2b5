//! The one place core errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::Error;

/// Maps a core error to a status. User errors keep their message verbatim (it names the limit
/// or the missing thing); internal faults are logged and reported as INTERNAL.
pub fn to_status(e: Error) -> Status {
    if e.is_storage_full() {
        tracing::error!(error = %e, "request failed: the disk is full");
        return Status::resource_exhausted(format!(
            "the server's disk is full; nothing of this request was acknowledged ({e})"
        ));
    }
    let code = match &e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::CollectionNotFound(_) => Code::NotFound,
        Error::CollectionExists(_) => Code::AlreadyExists,
        Error::NotFound(_) => Code::NotFound,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Exhausted(_) => Code::ResourceExhausted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Embedding(_) | Error::Unavailable(_) => Code::Unavailable,
        Error::Upstream(_) | Error::ContractViolation { .. } => Code::Unavailable,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Cancelled => Code::Cancelled,
        Error::Storage(_) | Error::Lexical(_) | Error::Io(_) | Error::Internal(_) => Code::Internal,
    };
    // A call refused while the storage reopens is expected, not a fault (the reopen logs).
    if !e.is_user_error() && !matches!(e, Error::Unavailable(_)) {
        tracing::error!(error = %e, "request failed");
    }
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(to_status(Error::invalid("x")).code(), Code::InvalidArgument);
        assert_eq!(
            to_status(Error::CollectionNotFound("c".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            to_status(Error::CollectionExists("c".into())).code(),
            Code::AlreadyExists
        );
        assert_eq!(to_status(Error::internal("boom")).code(), Code::Internal);
        assert_eq!(
            to_status(Error::NotFound("job 7 not found".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            to_status(Error::PermissionDenied("outside".into())).code(),
            Code::PermissionDenied
        );
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(
            to_status(Error::Storage(sled::Error::Io(full))).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            to_status(Error::Embedding("e".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            to_status(Error::Unavailable("reopening".into())).code(),
            Code::Unavailable
        );
    }
}
