//! The one request error both transports map: a TF status code plus TF Serving's message.

use axum::http::StatusCode;

/// Why a request failed, as the TensorFlow status code clients see (gRPC code, HTTP status by TF's
/// `ToHTTPStatusCode`) and a message; TF Serving's wording is kept where clients may match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request is malformed or names an input, signature or label that does not exist (HTTP 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The model or version is not being served (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot run in the server's current state, e.g. an unknown gRPC signature (HTTP 400).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The model's queue is full: the server sheds load instead of queueing without bound (HTTP 429).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request body is larger than the configured limit (HTTP 413; RESOURCE_EXHAUSTED on gRPC).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request did not finish within its deadline (HTTP 504).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The API exists in TF Serving but kiln does not implement it (HTTP 501).
    #[error("{0}")]
    Unimplemented(String),
    /// The server is shutting down or the model version was unloaded mid-request (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// The engine failed on valid input (HTTP 500).
    #[error("{0}")]
    Internal(String),
    /// The request has no valid bearer token (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this on this server, e.g. model management when it is off (HTTP 403).
    #[error("{0}")]
    PermissionDenied(String),
}

impl ServeError {
    /// The `tensorflow.error.Code` number, equal to the gRPC status code.
    pub fn code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ServeError::NotFound(_) => tonic::Code::NotFound,
            ServeError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ServeError::ResourceExhausted(_) | ServeError::PayloadTooLarge(_) => {
                tonic::Code::ResourceExhausted
            }
            ServeError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ServeError::Unimplemented(_) => tonic::Code::Unimplemented,
            ServeError::Unavailable(_) => tonic::Code::Unavailable,
            ServeError::Internal(_) => tonic::Code::Internal,
            ServeError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServeError::PermissionDenied(_) => tonic::Code::PermissionDenied,
        }
    }

    /// The HTTP status TF Serving's REST server returns for this code.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ServeError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            other => http_status(other.code()),
        }
    }

    /// The message alone.
    pub fn message(&self) -> &str {
        match self {
            ServeError::InvalidArgument(m)
            | ServeError::NotFound(m)
            | ServeError::FailedPrecondition(m)
            | ServeError::ResourceExhausted(m)
            | ServeError::PayloadTooLarge(m)
            | ServeError::DeadlineExceeded(m)
            | ServeError::Unimplemented(m)
            | ServeError::Unavailable(m)
            | ServeError::Internal(m)
            | ServeError::Unauthenticated(m)
            | ServeError::PermissionDenied(m) => m,
        }
    }

    /// The message with `context: ` in front, same code.
    pub(crate) fn context(self, context: impl std::fmt::Display) -> Self {
        let prefix = |m: String| format!("{context}: {m}");
        match self {
            ServeError::InvalidArgument(m) => ServeError::InvalidArgument(prefix(m)),
            ServeError::NotFound(m) => ServeError::NotFound(prefix(m)),
            ServeError::FailedPrecondition(m) => ServeError::FailedPrecondition(prefix(m)),
            ServeError::ResourceExhausted(m) => ServeError::ResourceExhausted(prefix(m)),
            ServeError::PayloadTooLarge(m) => ServeError::PayloadTooLarge(prefix(m)),
            ServeError::DeadlineExceeded(m) => ServeError::DeadlineExceeded(prefix(m)),
            ServeError::Unimplemented(m) => ServeError::Unimplemented(prefix(m)),
            ServeError::Unavailable(m) => ServeError::Unavailable(prefix(m)),
            ServeError::Internal(m) => ServeError::Internal(prefix(m)),
            ServeError::Unauthenticated(m) => ServeError::Unauthenticated(prefix(m)),
            ServeError::PermissionDenied(m) => ServeError::PermissionDenied(prefix(m)),
        }
    }
}

/// TF Serving's `ToHTTPStatusCode` (http_server.cc).
pub(crate) fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    let status = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> Self {
        tonic::Status::new(error.code(), error.message())
    }
}

/// TF's `error.Code` enum name, as status JSON prints it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_mapping_follows_tf_serving() {
        let cases = [
            (tonic::Code::Ok, 200),
            (tonic::Code::Cancelled, 499),
            (tonic::Code::Unknown, 500),
            (tonic::Code::InvalidArgument, 400),
            (tonic::Code::DeadlineExceeded, 504),
            (tonic::Code::NotFound, 404),
            (tonic::Code::AlreadyExists, 409),
            (tonic::Code::PermissionDenied, 403),
            (tonic::Code::ResourceExhausted, 429),
            (tonic::Code::FailedPrecondition, 400),
            (tonic::Code::Aborted, 409),
            (tonic::Code::OutOfRange, 400),
            (tonic::Code::Unimplemented, 501),
            (tonic::Code::Internal, 500),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::DataLoss, 500),
            (tonic::Code::Unauthenticated, 401),
        ];
        for (code, status) in cases {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        assert_eq!(ServeError::PayloadTooLarge("big".into()).http_status().as_u16(), 413);
        assert_eq!(ServeError::PayloadTooLarge("big".into()).code(), tonic::Code::ResourceExhausted);
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
