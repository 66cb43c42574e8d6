//! The error every layer returns to the one above it.

/// What went wrong, as far as the client is concerned: it decides the HTTP status and gRPC
/// code. Frontends map kinds to statuses in one place; nothing below them knows about HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model (HTTP 400, gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The model or version does not exist (HTTP 404, gRPC NOT_FOUND).
    NotFound,
    /// The model exists but cannot serve now, or the server lacks what loading it takes (a
    /// device, room in the memory budget): HTTP 503, gRPC UNAVAILABLE.
    Unavailable,
    /// The model's queue is full; the client should retry shortly (HTTP 503 with `Retry-After`,
    /// gRPC UNAVAILABLE).
    Overloaded,
    /// The request's timeout passed before it ran (HTTP 504, gRPC DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The request exceeds a configured size limit (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    TooLarge,
    /// What the request would create exists already, e.g. a model of that name (HTTP 409, gRPC
    /// ALREADY_EXISTS).
    AlreadyExists,
    /// The server's policy forbids it, e.g. a path outside the allowed ones (HTTP 403, gRPC
    /// PERMISSION_DENIED).
    PermissionDenied,
    /// The request needs a token it did not carry, or carried a wrong one (HTTP 401 with
    /// `WWW-Authenticate: Bearer`, gRPC UNAUTHENTICATED).
    Unauthenticated,
    /// The backend or the server failed (HTTP 500, gRPC INTERNAL).
    Internal,
}

/// An error: its [`ErrorKind`] and a message for the client.
///
/// Context is added in front of the message without touching the kind, so a layer that knows
/// more (which model, which deployment) says so without re-deciding what kind of failure it is:
///
/// ```
/// use ferroserve_core::{Error, ErrorKind};
///
/// let e = Error::not_found("unknown version '7'").context("deployment 'encoder'");
/// assert_eq!(e.kind(), ErrorKind::NotFound);
/// assert_eq!(e.to_string(), "deployment 'encoder': unknown version '7'");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message, taken.
    pub fn into_message(self) -> String {
        self.message
    }

    /// Puts `context` in front of the message (`context: message`), keeping the kind.
    #[must_use]
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The same message with another kind.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// [`ErrorKind::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, msg)
    }

    /// [`ErrorKind::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, msg)
    }

    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, msg)
    }

    /// [`ErrorKind::Overloaded`].
    pub fn overloaded(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, msg)
    }

    /// [`ErrorKind::DeadlineExceeded`].
    pub fn deadline_exceeded(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::DeadlineExceeded, msg)
    }

    /// [`ErrorKind::TooLarge`].
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, msg)
    }

    /// [`ErrorKind::AlreadyExists`].
    pub fn already_exists(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, msg)
    }

    /// [`ErrorKind::PermissionDenied`].
    pub fn permission_denied(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, msg)
    }

    /// [`ErrorKind::Unauthenticated`].
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, msg)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, msg)
    }
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
