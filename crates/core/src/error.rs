//! The error every layer returns to the one above it.

/// An error with the kind that decides its HTTP status and gRPC code.
///
/// Frontends map kinds to statuses in one place; nothing below them knows about HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the model (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// The model or version does not exist (HTTP 404, gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot serve now (HTTP 503, gRPC UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The model's queue is full; the client should retry shortly (HTTP 503 with `Retry-After`,
    /// gRPC UNAVAILABLE).
    #[error("{0}")]
    Overloaded(String),
    /// The request's timeout passed before it ran (HTTP 504, gRPC DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The request exceeds a configured size limit (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(String),
    /// What the request would create exists already, e.g. a model of that name (HTTP 409, gRPC
    /// ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// The server's policy forbids it, e.g. a path outside the allowed ones (HTTP 403, gRPC
    /// PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The backend failed while computing (HTTP 500, gRPC INTERNAL).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
