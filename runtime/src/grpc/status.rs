//! Errors and deadlines on gRPC: an [`ApiError`] becomes the status code of the shared error table
//! (see [`crate::error`]) with the same message, and `grpc-timeout` becomes a request deadline.
//!
//! Overload (UNAVAILABLE) carries the retry advice clients read: `google.rpc.RetryInfo` in
//! `grpc-status-details-bin` (what gRPC's richer error model defines), `grpc-retry-pushback-ms`
//! (what gRPC's built-in retry policy reads) and `retry-after`, as HTTP's header.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::error::ApiError;

/// How long an overloaded server asks clients to wait, as HTTP's `Retry-After: 1`.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `google.rpc.Status` (field numbers are the published ones): what `grpc-status-details-bin`
/// holds.
#[derive(Clone, PartialEq, prost::Message)]
struct RichStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The status a client gets for `error`. Internal details go to the log (inside the call's span,
/// so with its request id), not to the client, as on HTTP.
pub(crate) fn to_status(error: &ApiError) -> Status {
    if let ApiError::Internal(detail) | ApiError::Inference(detail) = error {
        tracing::error!(error = %detail, "request failed");
    }
    let code = error.grpc_code();
    let message = error.to_string();
    let mut status = match error {
        ApiError::Overloaded(_) => {
            use prost::Message as _;
            let retry =
                RetryInfo { retry_delay: Some(ProtoDuration { seconds: RETRY_AFTER.as_secs() as i64, nanos: 0 }) };
            let details = RichStatus {
                code: code as i32,
                message: message.clone(),
                details: vec![Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: retry.encode_to_vec(),
                }],
            };
            Status::with_details(code, message, details.encode_to_vec().into())
        }
        _ => Status::new(code, message),
    };
    if matches!(error, ApiError::Overloaded(_)) {
        let md = status.metadata_mut();
        md.insert("grpc-retry-pushback-ms", MetadataValue::from(RETRY_AFTER.as_millis() as u64));
        md.insert("retry-after", MetadataValue::from(RETRY_AFTER.as_secs()));
    }
    status
}

/// The deadline a `grpc-timeout` value asks for: an ASCII integer of at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`), as gRPC's HTTP/2 mapping defines it. A malformed value is an
/// error (a client that means a deadline should not silently get none).
pub(crate) fn parse_timeout(value: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "grpc-timeout {value:?} is not a timeout: up to 8 digits then one of H, M, S, m, u, n"
        ))
    };
    if value.len() < 2 || value.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_in_every_unit_and_malformed_ones_refused() {
        assert_eq!(parse_timeout("1H").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("2M").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("3S").ok(), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout("250m").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("99999999u").ok(), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_timeout("5n").ok(), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "123456789S", "-1S", "1.5S", "10s", "1 S", "１S"] {
            assert!(matches!(parse_timeout(bad), Err(ApiError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn overload_carries_retry_advice_and_internals_stay_in_the_log() {
        use prost::Message as _;
        let status = to_status(&ApiError::Overloaded("model m has a full queue; retry shortly".into()));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "model m has a full queue; retry shortly");
        assert_eq!(status.metadata().get("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok()), Some("1000"));
        let rich = RichStatus::decode(status.details()).expect("google.rpc.Status");
        assert_eq!(rich.code, tonic::Code::Unavailable as i32);
        assert_eq!(rich.details[0].type_url, "type.googleapis.com/google.rpc.RetryInfo");
        let retry = RetryInfo::decode(rich.details[0].value.as_slice()).expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(ProtoDuration { seconds: 1, nanos: 0 }));

        let status = to_status(&ApiError::Internal("poisoned lock in worker 3".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert_eq!(to_status(&ApiError::Timeout("took too long".into())).code(), tonic::Code::DeadlineExceeded);
        assert_eq!(to_status(&ApiError::Unauthorized("no key".into())).code(), tonic::Code::Unauthenticated);
    }
}
