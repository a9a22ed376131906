//! One error type for every handler, mapped to a status code and a JSON `{"error": "..."}` body.
//!
//! | variant | status |
//! |---|---|
//! | `BadRequest` (malformed JSON or binary framing) | 400 |
//! | `NotFound` (unknown model or version) | 404 |
//! | `TooLarge` | 413 |
//! | `InvalidTensor` (well-formed, but wrong for the model) | 422 |
//! | `Unauthorized` | 401 |
//! | `NotReady`, `Overloaded` (with `Retry-After`) | 503 |
//! | `Timeout` | 504 |
//! | `Inference`, `Internal` | 500 |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error a handler returns to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request body or headers could not be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// Unknown model, version or route.
    #[error("{0}")]
    NotFound(String),
    /// The body exceeds the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A well-formed request whose tensors do not fit the model.
    #[error("{0}")]
    InvalidTensor(String),
    /// The service is starting or shutting down.
    #[error("{0}")]
    NotReady(String),
    /// A queue or the in-flight cap is full; the client should retry.
    #[error("{0}")]
    Overloaded(String),
    /// Missing or wrong API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The request took longer than the configured timeout.
    #[error("{0}")]
    Timeout(String),
    /// ONNX Runtime failed while running the model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// A bug or resource failure in the server.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidTensor(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Inference(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the item and how to fix it.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) | ApiError::Inference(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let status = self.status();
        let mut response = (status, axum::Json(ErrorBody { error: self.to_string() })).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Overloaded(_) => {
                headers.insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
