//! The inference path: the one hallway every request walks, whatever protocol it came in on.
//!
//! Front ends (the V2 routes, the typed routes, user code through [`crate::typed::Context`],
//! later gRPC) only translate their wire format to named tensors and back. Everything else lives
//! here, and no front end calls into another:
//!
//! 1. [`admission`]: API key, then the in-flight cap, decided once per request before its body
//!    is read (for HTTP by the router's middleware; user code calling models through `Context`
//!    runs inside a request that was already admitted);
//! 2. [`run`]: the request deadline and the per-model request metrics around the
//!    front end's read, decode, infer and encode steps (the V2 and typed routes both read and
//!    decode inside it);
//! 3. [`infer`]: the checks of named tensors against the model (datatype, rank, fixed dims, one
//!    size per symbolic dim), then the model's queue, batcher and ONNX Runtime;
//! 4. the error table: every step fails with an [`ApiError`], which each front end maps to its
//!    status codes in one place.

pub mod admission;
pub(crate) mod checks;
pub(crate) mod wire;

use std::future::Future;
use std::time::Instant;

use checks::check_named;

use crate::batcher::Outputs;
use crate::error::ApiError;
use crate::model::Model;
use crate::server::AppState;
use crate::tensor::Tensor;

/// Runs one request for `model`: cut off at the request deadline, and counted in the model's
/// success/failure counters and latency, decoding and encoding included (a 422 is a failed
/// request, as in Triton).
pub(crate) async fn run<T>(
    state: &AppState,
    model: &Model,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    run_until(state, model, Protocol::Http, None, work).await
}

/// The protocol a request came in on, for `nimify_request_duration_seconds{protocol}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Grpc,
}

/// A deadline and what set it, for the message of the error it ends with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    /// `request_timeout_ms` from the call's start (this long), or else the client's.
    configured: Option<std::time::Duration>,
}

impl Deadline {
    /// `request_timeout_ms` counted from `start`.
    pub(crate) fn configured(start: Instant, limit: std::time::Duration) -> Self {
        Self { at: start + limit, configured: Some(limit) }
    }

    /// The client's own (gRPC's `grpc-timeout`).
    pub(crate) fn client(at: Instant) -> Self {
        Self { at, configured: None }
    }

    fn message(&self) -> String {
        match self.configured {
            Some(limit) => configured_message(limit),
            None => "request took longer than the client's deadline (grpc-timeout)".to_string(),
        }
    }
}

/// [`run`] with a deadline set earlier (gRPC's, counted from the call's start): the earlier of it
/// and `request_timeout_ms` from now applies.
pub(crate) async fn run_until<T>(
    state: &AppState,
    model: &Model,
    protocol: Protocol,
    client_deadline: Option<Deadline>,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let start = Instant::now();
    let result = within(state, client_deadline, work).await;
    let m = model.metrics();
    let took = start.elapsed();
    match &result {
        Ok(_) => m.success.inc(),
        Err(_) => m.failure.inc(),
    }
    m.request_us.inc_by(crate::metrics::micros(took));
    m.stats.request(result.is_ok(), took);
    let seconds = match protocol {
        Protocol::Http => &m.request_seconds_http,
        Protocol::Grpc => &m.request_seconds_grpc,
    };
    seconds.observe(took.as_secs_f64());
    result
}

/// The request deadline around `work`, for requests that are not about one model (a custom
/// endpoint calling several): each model it calls is counted through [`run`]. Readiness is not
/// checked: every served model is loaded before the listener opens, and during shutdown's delay
/// requests must still be served while the probe fails.
pub(crate) async fn within_limits<T>(
    state: &AppState,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    within(state, None, work).await
}

/// `work` cut off at the earlier of the configured request deadline and `client_deadline`.
async fn within<T>(
    state: &AppState,
    earlier: Option<Deadline>,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let configured = state.config().request_timeout().map(|limit| Deadline::configured(Instant::now(), limit));
    let deadline = match (configured, earlier) {
        (None, None) => return work.await,
        (Some(a), Some(b)) => {
            if a.at < b.at {
                a
            } else {
                b
            }
        }
        (Some(d), None) | (None, Some(d)) => d,
    };
    let limited = tokio::time::timeout_at(deadline.at.into(), work);
    crate::cancel::with_deadline(deadline.at, limited)
        .await
        .unwrap_or_else(|_| Err(ApiError::Timeout(deadline.message())))
}

fn configured_message(limit: std::time::Duration) -> String {
    format!("request took longer than the {} ms limit (request_timeout_ms)", limit.as_millis())
}

/// Checks named input tensors against `model`, queues them and waits for the `wanted` outputs,
/// in that order. Dropping the future before the request runs keeps it from running.
pub(crate) async fn infer(
    model: &Model,
    inputs: Vec<(String, Tensor)>,
    wanted: Vec<String>,
) -> Result<Outputs, ApiError> {
    if let Some((i, name)) = wanted.iter().enumerate().find(|(i, n)| wanted[..*i].contains(n)) {
        return Err(ApiError::BadRequest(format!(
            "output {name:?} is asked for more than once (at position {i}); name each output once"
        )));
    }
    let inputs = check_named(model.inputs(), inputs)?;
    // A sampled request's inputs enter the drift window before it is queued (what the model was
    // asked, answered or not); its outputs after.
    let drift = model.drift().filter(|d| d.sampled());
    if let Some(d) = drift {
        d.observe_inputs(&inputs);
    }
    let outputs = model.infer(inputs, wanted).await?;
    // A merged run is checked against its requests' summed share; each request against its own.
    if let Some(cap) = model.max_output_bytes() {
        let bytes = outputs.iter().map(|(_, t)| t.data.byte_len()).fold(0usize, usize::saturating_add);
        if bytes > cap {
            return Err(crate::batcher::output_too_large(bytes, cap));
        }
    }
    if let Some(d) = drift {
        d.observe_outputs(&outputs);
    }
    Ok(outputs)
}
