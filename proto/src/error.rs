//! The one mapping between Starling's service errors and gRPC statuses
//! (google.rpc.Code), used by every server adapter and every client.
//!
//! | `ApiError`      | gRPC code            |
//! |-----------------|----------------------|
//! | `NotFound`      | `NOT_FOUND`          |
//! | `AlreadyExists` | `ALREADY_EXISTS`     |
//! | `Invalid`       | `INVALID_ARGUMENT`   |
//! | `LimitReached`  | `RESOURCE_EXHAUSTED` |
//! | `Unavailable`   | `UNAVAILABLE`        |
//! | `Internal`      | `INTERNAL`           |
//!
//! On the way back every other code maps to the nearest: `DEADLINE_EXCEEDED`,
//! `CANCELLED` and `ABORTED` to `Unavailable` (retry later), `OUT_OF_RANGE`
//! and `FAILED_PRECONDITION` to `Invalid`, anything else to `Internal`. A
//! transport failure (no connection, broken stream, timeout) is `Unavailable`.
//!
//! `BindError`'s protocol rejections (RFC 6120 section 7.6.2) are not statuses:
//! they are answers, carried in `BindResponse.rejected` (see [`bind_rejection_to_proto`]);
//! `BindError::Api` travels as a status like any `ApiError`.

use starling_api::{ApiError, BindError};
use tonic::{Code, Status};

use crate::router::v1::BindRejection;

/// The errors of this crate's own operations (building clients, serving).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("no endpoint given for the {service} client")]
    NoEndpoints { service: &'static str },
    #[error("invalid endpoint {endpoint:?} for the {service} client: {reason}")]
    InvalidEndpoint {
        service: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("cannot listen for grpc on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// `ApiError` -> gRPC status (the table above).
pub fn api_error_to_status(error: ApiError) -> Status {
    match error {
        ApiError::NotFound(message) => Status::not_found(message),
        ApiError::AlreadyExists(message) => Status::already_exists(message),
        ApiError::Invalid(message) => Status::invalid_argument(message),
        ApiError::LimitReached(message) => Status::resource_exhausted(message),
        ApiError::Unavailable(message) => Status::unavailable(message),
        ApiError::Internal(message) => Status::internal(message),
    }
}

/// gRPC code and message -> `ApiError` (the table above).
pub fn code_to_api_error(code: Code, message: &str) -> ApiError {
    let message = message.to_string();
    match code {
        Code::NotFound => ApiError::NotFound(message),
        Code::AlreadyExists => ApiError::AlreadyExists(message),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ApiError::Invalid(message)
        }
        Code::ResourceExhausted => ApiError::LimitReached(message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            ApiError::Unavailable(message)
        }
        Code::Ok
        | Code::Unknown
        | Code::PermissionDenied
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => ApiError::Internal(message),
    }
}

/// gRPC status -> `ApiError`.
pub fn status_to_api_error(status: &Status) -> ApiError {
    code_to_api_error(status.code(), status.message())
}

/// A protocol rejection of `bind` -> its wire value; `None` for `BindError::Api`,
/// which travels as a status.
pub fn bind_rejection_to_proto(error: &BindError) -> Option<BindRejection> {
    match error {
        BindError::BadRequest => Some(BindRejection::BadRequest),
        BindError::ResourceConstraint => Some(BindRejection::ResourceConstraint),
        BindError::NotAllowed => Some(BindRejection::NotAllowed),
        BindError::Api(_) => None,
    }
}

/// The wire value of a bind rejection -> `BindError`; an unknown value is an
/// internal error (a newer peer), never a panic.
pub fn bind_rejection_from_proto(value: i32) -> BindError {
    match BindRejection::try_from(value) {
        Ok(BindRejection::BadRequest) => BindError::BadRequest,
        Ok(BindRejection::ResourceConstraint) => BindError::ResourceConstraint,
        Ok(BindRejection::NotAllowed) => BindError::NotAllowed,
        Ok(BindRejection::Unspecified) | Err(_) => BindError::Api(ApiError::Internal(format!(
            "unknown bind rejection {value}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_error_round_trips_through_its_status() {
        let errors = [
            ApiError::NotFound("account a@example.org".into()),
            ApiError::AlreadyExists("account a@example.org".into()),
            ApiError::Invalid("bad jid".into()),
            ApiError::LimitReached("offline queue full".into()),
            ApiError::Unavailable("database down".into()),
            ApiError::Internal("bug".into()),
        ];
        let codes = [
            Code::NotFound,
            Code::AlreadyExists,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::Internal,
        ];
        for (error, code) in errors.into_iter().zip(codes) {
            let status = api_error_to_status(error.clone());
            assert_eq!(status.code(), code);
            assert_eq!(status_to_api_error(&status), error);
        }
    }

    #[test]
    fn transport_like_codes_become_unavailable() {
        for code in [Code::DeadlineExceeded, Code::Cancelled, Code::Aborted] {
            assert!(matches!(
                code_to_api_error(code, "x"),
                ApiError::Unavailable(_)
            ));
        }
        assert!(matches!(
            code_to_api_error(Code::Unimplemented, "x"),
            ApiError::Internal(_)
        ));
    }

    #[test]
    fn bind_rejections_round_trip_and_unknown_values_do_not_panic() {
        for error in [
            BindError::BadRequest,
            BindError::ResourceConstraint,
            BindError::NotAllowed,
        ] {
            let wire = bind_rejection_to_proto(&error).expect("a protocol rejection");
            assert_eq!(bind_rejection_from_proto(wire as i32), error);
        }
        assert_eq!(
            bind_rejection_to_proto(&BindError::Api(ApiError::Internal("x".into()))),
            None
        );
        assert!(matches!(
            bind_rejection_from_proto(0),
            BindError::Api(ApiError::Internal(_))
        ));
        assert!(matches!(
            bind_rejection_from_proto(99),
            BindError::Api(ApiError::Internal(_))
        ));
    }
}
