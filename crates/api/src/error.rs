//! The one small error enum that crosses service boundaries (and, in the
//! cluster, maps to gRPC status codes).

use starling_xmpp::{StanzaError, StanzaErrorCondition, StanzaErrorType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The thing asked for does not exist (account, roster item, session).
    #[error("not found: {0}")]
    NotFound(String),
    /// It exists already (account creation, ...).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is malformed or breaks a rule of the protocol.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A quota or limit was reached (offline queue full, roster too large).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// A dependency (database, Redis, another service) cannot be reached now; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The stanza error a client sees when a request fails with this error.
    pub fn to_stanza_error(&self) -> StanzaError {
        match self {
            ApiError::NotFound(_) => StanzaError::new(StanzaErrorCondition::ItemNotFound),
            ApiError::AlreadyExists(_) => StanzaError::new(StanzaErrorCondition::Conflict),
            ApiError::Invalid(text) => {
                StanzaError::new(StanzaErrorCondition::BadRequest).with_text(text.clone())
            }
            ApiError::LimitReached(text) => {
                StanzaError::new(StanzaErrorCondition::ResourceConstraint).with_text(text.clone())
            }
            ApiError::Unavailable(_) => StanzaError::new(StanzaErrorCondition::InternalServerError)
                .with_type(StanzaErrorType::Wait),
            ApiError::Internal(_) => StanzaError::new(StanzaErrorCondition::InternalServerError),
        }
    }
}
