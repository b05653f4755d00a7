//! The HTTP error type: every failure becomes a status and `{"error": {"code", "message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use trackline_core::auth::TokenError;
use trackline_core::history::StoreError;
use trackline_core::order::IllegalTransition;
use trackline_rest::ErrorAnswer;

use crate::cluster::protocol::CallError;
use crate::orders::errors::OrderError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// Broker mode: the node that owns the order (or homes the courier) cannot be reached.
    #[error("{0}")]
    OwnerUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(code, _) | ApiError::Conflict(code, _) => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OwnerUnavailable(_) => "owner_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn order_not_found(order: &str) -> Self {
        ApiError::NotFound(format!("order {order} does not exist"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::OwnerUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(message) = self {
            tracing::error!(message, "request failed");
        }
        HttpResponse::build(self.status_code())
            .json(ErrorAnswer::new(self.code(), self.to_string()))
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<IllegalTransition> for ApiError {
    fn from(e: IllegalTransition) -> Self {
        ApiError::Conflict("illegal_transition", e.to_string())
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(format!("order actor unavailable: {e}"))
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unavailable(..) => ApiError::OwnerUnavailable(e.to_string()),
            CallError::BadAnswer(..) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The HTTP answer to each way an order request fails; the bodies are what clients have always
/// seen.
impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Exists(_) => ApiError::Conflict("order_exists", e.to_string()),
            OrderError::Closed { .. } => ApiError::Conflict("order_closed", e.to_string()),
            OrderError::NotFound(_) => ApiError::NotFound(e.to_string()),
            OrderError::NotAssigned { .. } => ApiError::Forbidden(e.to_string()),
            OrderError::IllegalTransition(e) => e.into(),
            OrderError::Node(e) => e.into(),
            OrderError::Remote(_) => ApiError::Internal(e.to_string()),
            OrderError::Internal(message) => ApiError::Internal(message),
        }
    }
}
