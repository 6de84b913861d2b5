//! Core errors as gRPC statuses. What a caller is told is decided once, by
//! [`Error::public`]; this only spells the canonical code as tonic's.

use tonic::{Code, Status};

use crate::error::{self, Error};

/// The status of a core error (see [`Error::public`]).
pub fn to_status(e: Error) -> Status {
    let (code, message) = e.public();
    Status::new(grpc_code(code), message)
}

/// An error a client stream yielded (a message that did not decode, a connection that
/// broke) as the core's, so the service layer can end the call with it.
pub fn from_status(s: Status) -> Error {
    match s.code() {
        Code::InvalidArgument => Error::invalid(s.message().to_string()),
        Code::ResourceExhausted => Error::Exhausted(s.message().to_string()),
        Code::DeadlineExceeded => Error::DeadlineExceeded(s.message().to_string()),
        // The client went away or broke its stream: nobody will read the reply.
        _ => Error::Cancelled,
    }
}

/// A canonical code as tonic's.
pub fn grpc_code(c: error::Code) -> Code {
    use error::Code as C;
    match c {
        C::Ok => Code::Ok,
        C::Cancelled => Code::Cancelled,
        C::InvalidArgument => Code::InvalidArgument,
        C::DeadlineExceeded => Code::DeadlineExceeded,
        C::NotFound => Code::NotFound,
        C::AlreadyExists => Code::AlreadyExists,
        C::PermissionDenied => Code::PermissionDenied,
        C::ResourceExhausted => Code::ResourceExhausted,
        C::FailedPrecondition => Code::FailedPrecondition,
        C::Unimplemented => Code::Unimplemented,
        C::Internal => Code::Internal,
        C::Unavailable => Code::Unavailable,
        C::Unauthenticated => Code::Unauthenticated,
    }
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
