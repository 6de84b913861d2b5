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

/// A canonical code as tonic's (the same numbering).
pub fn grpc_code(c: error::Code) -> Code {
    Code::from_i32(c as i32)
}

/// tonic's code as the canonical one.
pub fn core_code(c: Code) -> error::Code {
    error::Code::ALL
        .get(c as usize)
        .copied()
        .unwrap_or(error::Code::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_codes_number_and_name_as_grpc_does() {
        for (i, c) in crate::error::Code::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(grpc_code(*c) as usize, i);
            assert_eq!(core_code(grpc_code(*c)), *c);
        }
        assert_eq!(crate::grpc::observe::code_name(Code::DataLoss), "DATA_LOSS");
        assert_eq!(crate::error::Code::Unauthenticated.http_status(), 401);
    }

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
