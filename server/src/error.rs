//! The service layer's error: what a caller is told when a command fails.
//!
//! Every failure maps to one protocol [`ErrorCode`]. Messages name ids, limits and rules,
//! never the content of an event, so an error can be shown to whoever caused it. Store
//! and internal failures are logged in full and reported in general terms.

use backchannel_protocol::http::HistoryEntry;
use backchannel_protocol::ErrorCode;

use crate::hub::HubError;
use crate::store::writer::WriteError;
use crate::store::{StoreError, WriteRefusal};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// The reply guard refused a send; `missed` is what the sender had not seen, in
    /// their own stream.
    #[error("{message}")]
    Conflict {
        message: String,
        missed: Vec<HistoryEntry>,
    },
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal,
}

impl ServiceError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::BadRequest(_) => ErrorCode::BadRequest,
            ServiceError::Unauthorized(_) => ErrorCode::Unauthorized,
            ServiceError::Forbidden(_) => ErrorCode::Forbidden,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::TooLarge(_) => ErrorCode::TooLarge,
            ServiceError::Conflict { .. } => ErrorCode::Conflict,
            ServiceError::RateLimited(_) => ErrorCode::RateLimited,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Internal => ErrorCode::Internal,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ServiceError::BadRequest(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ServiceError::Forbidden(message.into())
    }

    pub fn conversation_not_found() -> Self {
        ServiceError::NotFound("conversation".into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store: {e}");
        ServiceError::Unavailable("the store is unavailable; retry later".into())
    }
}

impl From<WriteError> for ServiceError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(WriteRefusal::ConversationNotFound) => {
                ServiceError::conversation_not_found()
            }
            WriteError::Refused(WriteRefusal::InboxNotFound) => {
                ServiceError::NotFound("inbox".into())
            }
            WriteError::Refused(
                refusal @ (WriteRefusal::TooManyTags | WriteRefusal::RequiredFieldsMissing(_)),
            ) => ServiceError::BadRequest(refusal.to_string()),
            // The service turns this one into `Conflict` with the events in the sender's
            // stream; reaching here means a caller forgot to.
            WriteError::Refused(WriteRefusal::Unseen(_)) => ServiceError::Conflict {
                message: "new messages or notes arrived since the seq you replied to".into(),
                missed: Vec::new(),
            },
            WriteError::Store(detail) => {
                tracing::error!("append failed: {detail}");
                ServiceError::Unavailable("the store is unavailable; retry later".into())
            }
            WriteError::Closed => ServiceError::Unavailable("the server is shutting down".into()),
        }
    }
}

impl From<HubError> for ServiceError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Store(e) => e.into(),
            HubError::NotFound => ServiceError::conversation_not_found(),
            HubError::SocketClosed => ServiceError::Unavailable("socket closed".into()),
        }
    }
}
