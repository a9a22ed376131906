//! One error type for every handler, mapped to a status code and a JSON `{"error": "..."}` body.
//!
//! | variant | HTTP status | gRPC code |
//! |---|---|---|
//! | `BadRequest` (malformed JSON, binary framing or message) | 400 | INVALID_ARGUMENT |
//! | `NotFound` (unknown model or version) | 404 | NOT_FOUND |
//! | `MethodNotAllowed` (with `Allow`) | 405 | UNIMPLEMENTED |
//! | `TooLarge` | 413 | RESOURCE_EXHAUSTED |
//! | `UnsupportedEncoding` (a `Content-Encoding` other than gzip, deflate, zstd) | 415 | UNIMPLEMENTED |
//! | `InvalidTensor` (well-formed, but wrong for the model) | 422 | INVALID_ARGUMENT |
//! | `OutputTooLarge` (outputs above `max_output_bytes`) | 422 | RESOURCE_EXHAUSTED |
//! | `Unauthorized` | 401 | UNAUTHENTICATED |
//! | `NotReady`, `Overloaded` (with `Retry-After`; on gRPC retry info) | 503 | UNAVAILABLE |
//! | `Timeout` | 504 | DEADLINE_EXCEEDED |
//! | `Inference`, `Internal` | 500 | INTERNAL |

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
    /// A known route asked with another method (the response lists the right ones in `Allow`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body exceeds the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The body is compressed in a way the server does not decode.
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// A well-formed request whose tensors do not fit the model.
    #[error("{0}")]
    InvalidTensor(String),
    /// The outputs asked for exceed the configured cap.
    #[error("{0}")]
    OutputTooLarge(String),
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
    /// ONNX Runtime failed while running the model. Clients get the message without ONNX
    /// Runtime's source locations and C++ signatures; the log keeps all of it.
    #[error("inference failed: {}", client_message(.0))]
    Inference(String),
    /// A bug or resource failure in the server.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The whole message for logs: unlike `Display`, ONNX Runtime's internals included.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Inference(detail) => format!("inference failed: {detail}"),
            ApiError::Internal(detail) => format!("internal error: {detail}"),
            other => other.to_string(),
        }
    }

    /// The gRPC status code for this error (the table above).
    pub(crate) fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidTensor(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::MethodNotAllowed(_) | ApiError::UnsupportedEncoding(_) => Code::Unimplemented,
            ApiError::TooLarge(_) | ApiError::OutputTooLarge(_) => Code::ResourceExhausted,
            ApiError::NotReady(_) | ApiError::Overloaded(_) => Code::Unavailable,
            ApiError::Unauthorized(_) => Code::Unauthenticated,
            ApiError::Timeout(_) => Code::DeadlineExceeded,
            ApiError::Inference(_) | ApiError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidTensor(_) | ApiError::OutputTooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Inference(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `detail` without the internal parts ONNX Runtime puts in its messages: a source location
/// (`/onnxruntime_src/.../reshape_helper.h:47`) and the C++ signature after it
/// (`onnxruntime::ReshapeHelper::ReshapeHelper(const ...&, bool)`). What the model's author
/// needs stays: the failing node and the sentence saying why.
pub(crate) fn client_message(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(at) = rest.find('/') {
        let end = rest[at..].find(char::is_whitespace).map_or(rest.len(), |e| at + e);
        if !is_source_location(&rest[at..end]) {
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push_str(&rest[..at]);
        rest = skip_signature(rest[end..].trim_start());
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `path/file.h:47`, `file.cc:120`, ...
fn is_source_location(token: &str) -> bool {
    token.rsplit_once(':').is_some_and(|(file, line)| {
        !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && [".h", ".hpp", ".cc", ".cpp", ".cu"].iter().any(|x| file.ends_with(x))
    })
}

/// Skips a leading C++ signature, if there is one: `[return type] ns::Function(args)` (a word
/// with `::` among the few before the first parenthesis), then ` const` and GCC's
/// `[with T = float]`.
fn skip_signature(text: &str) -> &str {
    let Some(open) = text.find('(') else { return text };
    let words: Vec<&str> = text[..open].split_whitespace().collect();
    if words.is_empty() || words.len() > 4 || !words.last().is_some_and(|w| w.contains("::")) {
        return text;
    }
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let mut after = text[open + i + 1..].trim_start();
                    after = after
                        .strip_prefix("const")
                        .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace))
                        .unwrap_or(after)
                        .trim_start();
                    if after.starts_with("[with ")
                        && let Some(close) = after.find(']')
                    {
                        after = &after[close + 1..];
                    }
                    return after;
                }
            }
            _ => {}
        }
    }
    text
}

/// The JSON body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the item and how to fix it.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The full detail goes to the log, inside the request's span (so with its request id).
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
            ApiError::UnsupportedEncoding(_) => {
                headers.insert(
                    axum::http::header::ACCEPT_ENCODING,
                    axum::http::HeaderValue::from_static(crate::request_body::ACCEPTED_ENCODINGS),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_internals_stay_out_of_client_messages() {
        let ort = "Non-zero status code returned while running Reshape node. Name:'' Status Message: \
            /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:47 \
            onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, bool) \
            input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape. Input shape:{3}, requested shape:{2,-1}\n";
        let shown = ApiError::Inference(ort.into()).to_string();
        assert_eq!(
            shown,
            "inference failed: Non-zero status code returned while running Reshape node. Name:'' Status Message: \
             input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape. Input shape:{3}, requested shape:{2,-1}"
        );
        // Slashes that are not source locations stay, and a path without a signature goes alone.
        assert_eq!(client_message("model a/b failed: x.cc:12 boom"), "model a/b failed: x.cc:12 boom");
        assert_eq!(client_message("at /src/x/y.cc:12 the run failed"), "at the run failed");
        assert_eq!(client_message("/src/y.cpp:3 ns::f() const done"), "done");
        assert_eq!(client_message("/src/y.cpp:3 ns::f(unclosed"), "ns::f(unclosed");
        // Return types, `const` and GCC's template note go with the signature.
        let broadcast = "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/math/element_wise_ops.h:540 \
            void onnxruntime::BroadcastIterator::Append(ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. \
            Attempting to broadcast an axis by a dimension other than 1. 2 by 3";
        assert_eq!(
            client_message(broadcast),
            "Status Message: axis == 1 || axis == largest was false. Attempting to broadcast an axis by a dimension other than 1. 2 by 3"
        );
        let templated = "/s/a.h:9 const T& onnxruntime::Tensor::Data() const [with T = float] wrong type";
        assert_eq!(client_message(templated), "wrong type");
        // Not a signature: a sentence with a parenthesis further on stays.
        assert_eq!(client_message("/s/a.h:9 the model failed (see the input)"), "the model failed (see the input)");
    }
}
