//! The gRPC front end: `inference.GRPCInferenceService` (Triton's and KServe's clients),
//! `grpc.health.v1.Health` reflecting readiness, and server reflection, on their own port.
//!
//! It is a router like the HTTP one, served by the same listener code (connection cap, timeouts,
//! TLS, draining), with the same admission (API keys from `authorization: Bearer` or `x-api-key`
//! metadata, the in-flight cap), request ids and access log. Health, reflection and the
//! liveness/readiness RPCs stay open, as the HTTP probes do.

mod codec;
pub(crate) mod generated;
mod service;
pub(crate) mod stats;
mod status;
mod tensors;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::FutureExt;
use tonic::codec::CompressionEncoding;
use tonic_health::ServingStatus;

use crate::server::AppState;
use generated::grpc_inference_service_server::{GrpcInferenceServiceServer, SERVICE_NAME};

/// The encoded descriptors of `inference.proto`, for server reflection.
const DESCRIPTOR: &[u8] = include_bytes!("inference.bin");

/// The gRPC router over `state`. Must be called inside the runtime: it starts the task that
/// keeps the health service in step with readiness.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let config = state.config();
    let inference = GrpcInferenceServiceServer::new(service::Inference { state: Arc::clone(&state) })
        .max_decoding_message_size(config.grpc_max_message_bytes())
        .max_encoding_message_size(usize::MAX)
        // Compressed requests, as tritonclient's `compression_algorithm` sends them (the limit
        // counts decompressed bytes); answers go out uncompressed.
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .accept_compressed(CompressionEncoding::Zstd);
    let (reporter, health) = tonic_health::server::health_reporter();
    // The statuses are set before the first call can come: a new reporter says SERVING for ""
    // until told otherwise, which a loading server is not. Nothing else holds a new reporter's
    // lock, and outside tokio's task budget (`unconstrained`) each update completes on its
    // first poll.
    let readiness = state.readiness();
    let status = serving_status(*readiness.borrow());
    for name in ["", SERVICE_NAME] {
        let set = tokio::task::unconstrained(reporter.set_service_status(name, status)).now_or_never();
        debug_assert!(set.is_some(), "a new health reporter's lock is free");
    }
    tokio::spawn(follow_readiness(reporter, readiness));
    let mut routes = tonic::service::Routes::new(inference).add_service(health);
    // The descriptors are generated with the code (a freshness test checks both), so they decode.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    if let Ok(v1) = reflection().build_v1() {
        routes = routes.add_service(v1);
    }
    if let Ok(v1alpha) = reflection().build_v1alpha() {
        routes = routes.add_service(v1alpha);
    }
    routes
        .prepare()
        .into_axum_router()
        .fallback(unknown_service)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), front))
}

/// Reports SERVING for the server ("") and the inference service while the server is ready,
/// NOT_SERVING otherwise (warm-up, shutdown), as readiness changes.
async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    mut ready: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let status = serving_status(*ready.borrow_and_update());
        reporter.set_service_status("", status).await;
        reporter.set_service_status(SERVICE_NAME, status).await;
        if ready.changed().await.is_err() {
            return;
        }
    }
}

fn serving_status(ready: bool) -> ServingStatus {
    if ready { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// A call to a service or method this server does not have.
async fn unknown_service(uri: axum::http::Uri) -> Response {
    tonic::Status::unimplemented(format!("this server has no gRPC method {}", uri.path())).into_http()
}

/// RPCs that stay open without an API key and outside the in-flight cap: health, reflection,
/// liveness and readiness.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || matches!(
            path.strip_prefix("/inference.GRPCInferenceService/"),
            Some("ServerLive" | "ServerReady" | "ModelReady")
        )
}

/// The RPCs whose calls are streams: they live as long as the client keeps them, so the
/// request deadline bounds each message, not the call, and each message takes its own
/// in-flight place.
fn is_stream(path: &str) -> bool {
    path == "/inference.GRPCInferenceService/ModelStreamInfer"
        || path == "/grpc.health.v1.Health/Watch"
        || path.starts_with("/grpc.reflection.")
}

/// The deadline of a call, counted from its start: for a unary call the earlier of
/// `request_timeout_ms` and the client's `grpc-timeout`, for a stream the client's alone (each
/// message also gets `request_timeout_ms` from its own start). Handlers read it from the
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(pub Option<crate::inference::Deadline>);

/// With the audit log on: where a handler leaves the model (and version) its message named, for
/// the call's audit line (a gRPC path names no model). Handlers find it in the request's
/// extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallModel(Arc<std::sync::OnceLock<(String, String)>>);

impl CallModel {
    /// The model named, and its version when one was.
    fn get(&self) -> (Option<&str>, Option<&str>) {
        match self.0.get() {
            Some((model, version)) => (Some(model.as_str()), Some(version.as_str()).filter(|v| !v.is_empty())),
            None => (None, None),
        }
    }
}

/// Everything a call passes on its way to the services and back, in one layer (as HTTP's: each
/// axum `from_fn` layer costs a boxed copy of the stack inside it and a boxed future per call),
/// outermost first: its `x-request-id`, kept or made ([`crate::request_id`]), and sent back; the
/// access log and audit line, and the call's span ([`access_log`]); admission and the deadline
/// ([`admit`]); a too-large message's status ([`message_limit`]).
async fn front(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let id = crate::request_id::ensure(request.headers_mut());
    let mut response = access_log(&state, request, |request| admit(&state, request, next)).await;
    if !response.headers().contains_key(crate::request_id::HEADER) {
        response.headers_mut().insert(crate::request_id::HEADER, id);
    }
    response
}

/// The services, then a too-large message's status.
async fn services(state: &AppState, request: Request, next: Next) -> Response {
    message_limit(state, next.run(request).await)
}

/// Admission, as HTTP's, and the call's deadline: a refused call ends with UNAUTHENTICATED or
/// UNAVAILABLE before its message is read; a unary call (message upload included) is cut off
/// with DEADLINE_EXCEEDED at the earlier of `request_timeout_ms` and `grpc-timeout`, and holds
/// its in-flight place until its response is written. A stream is checked for its API key here
/// and takes a place per message (see the service).
async fn admit(state: &AppState, mut request: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let path = request.uri().path().to_string();
    let client = match request.headers().get("grpc-timeout").map(|v| v.to_str().unwrap_or("?")) {
        None => None,
        Some(text) => match status::parse_timeout(text) {
            Ok(t) => Some(crate::inference::Deadline::client(start + t)),
            Err(e) => return status::to_status(&e).into_http(),
        },
    };
    let configured = state.config().request_timeout().map(|t| crate::inference::Deadline::configured(start, t));
    let unary = !is_stream(&path);
    let deadline = match (unary.then_some(configured).flatten(), client) {
        (Some(a), Some(b)) => Some(if a.at <= b.at { a } else { b }),
        (a, b) => a.or(b),
    };
    request.extensions_mut().insert(CallDeadline(deadline));
    // While the models load, calls that would stay open (streams, health watches) are refused:
    // the loading phase's connections must close when the real server takes over.
    if state.is_starting() && is_stream(&path) && !path.starts_with("/grpc.reflection.") {
        let e = crate::error::ApiError::NotReady(
            "the server is starting: its models are loading and warming up; retry shortly".into(),
        );
        return status::to_status(&e).into_http();
    }
    if is_open(&path) {
        return services(state, request, next).await;
    }
    if is_stream(&path) {
        return match state.authorize(request.headers()) {
            Ok(key) => {
                // Each message's audit line names the key too.
                if let Some(key) = &key {
                    request.extensions_mut().insert(key.clone());
                }
                with_key_name(services(state, request, next).await, key)
            }
            Err(e) => status::to_status(&e).into_http(),
        };
    }
    let key = match state.authorize(request.headers()) {
        Ok(key) => key,
        Err(e) => return status::to_status(&e).into_http(),
    };
    let admitted = match state.admit_slot_for(None) {
        Ok(admitted) => admitted,
        Err(e) => return with_key_name(status::to_status(&e).into_http(), key),
    };
    let call = services(state, request, next);
    let response = match deadline {
        // The handler's deadline is this one (same instant, polled first), so a request the
        // inference path was running ends (and is counted) there; this one ends the rest, a
        // message still being uploaded included.
        Some(d) => match tokio::time::timeout_at(d.at.into(), call).await {
            Ok(response) => response,
            Err(_) => {
                let e = crate::error::ApiError::Timeout(
                    "the call took longer than its deadline (request_timeout_ms or grpc-timeout)".into(),
                );
                return status::to_status(&e).into_http();
            }
        },
        None => call.await,
    };
    with_key_name(response.map(|body| axum::body::Body::new(crate::connections::Held::new(body, admitted))), key)
}

/// Hands the admitted key's name to the audit log (through the answer's extensions).
fn with_key_name(mut response: Response, key: Option<crate::inference::admission::KeyName>) -> Response {
    if let Some(key) = key {
        response.extensions_mut().insert(key);
    }
    response
}

/// A request message over `grpc_max_message_bytes` ends with RESOURCE_EXHAUSTED naming the
/// setting, as gRPC's other implementations answer, instead of tonic's OUT_OF_RANGE.
fn message_limit(state: &AppState, response: Response) -> Response {
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    let too_large = header("grpc-status") == Some("11")
        && header("grpc-message").is_some_and(|m| m.contains("message%20length%20too%20large"));
    if !too_large {
        return response;
    }
    let limit = state.config().grpc_max_message_bytes();
    let error = crate::error::ApiError::TooLarge(format!(
        "request message exceeds the {limit} byte limit; raise grpc_max_message_bytes (--grpc-max-message-bytes) or send a smaller batch"
    ));
    status::to_status(&error).into_http()
}

/// One log line per call, as HTTP's access log: failures (a `grpc-status` other than 0 in the
/// response headers, which is how a call that fails before answering ends) at info, the rest at
/// debug, with the request id; everything logged during the call carries it.
async fn access_log<F: std::future::Future<Output = Response>>(
    state: &AppState,
    mut request: Request,
    call: impl FnOnce(Request) -> F,
) -> Response {
    let start = std::time::Instant::now();
    let path = request.uri().path().to_string();
    let client = state.audit().and_then(|_| crate::audit::client_of(request.extensions()));
    let model = state.audit().map(|_| {
        let slot = CallModel::default();
        request.extensions_mut().insert(slot.clone());
        slot
    });
    let id = crate::server::request_id(request.headers());
    let span = if crate::telemetry::enabled() {
        crate::telemetry::grpc_span(&request, &id)
    } else {
        tracing::error_span!("request", request_id = %id)
    };
    let mut response = tracing::Instrument::instrument(call(request), span.clone()).await;
    let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string();
    let micros = start.elapsed().as_micros() as u64;
    // A call that answers has its status in the trailers, sent after this middleware is done:
    // the span records the status known now (0 until the body says otherwise).
    let ids = crate::telemetry::ids(&span);
    if ids.is_some() {
        crate::telemetry::end_grpc_span(&span, code.parse().unwrap_or(2), response.headers_mut());
    }
    let (trace_id, span_id) = (ids.as_ref().map(|i| i.0.as_str()), ids.as_ref().map(|i| i.1.as_str()));
    if code != "0" {
        tracing::info!(request_id = %id, protocol = "grpc", %path, grpc_status = %code, micros, trace_id, span_id, "request failed");
    } else {
        tracing::debug!(request_id = %id, protocol = "grpc", %path, grpc_status = %code, micros, trace_id, span_id, "request");
    }
    // Calls that answer carry their status in the trailers, after this: the audit line has the
    // status known when the headers go out (0 for a call that went on to answer).
    if let Some(audit) = state.audit().filter(|_| !is_open(&path)) {
        let code: i64 = code.parse().unwrap_or(2);
        let (model, version) = model.as_ref().map(CallModel::get).unwrap_or_default();
        audit.record(&crate::audit::Entry {
            request_id: &id,
            trace_id,
            api_key: response.extensions().get::<crate::inference::admission::KeyName>().map(|k| &*k.0),
            client: client.as_deref(),
            protocol: "grpc",
            operation: path.trim_start_matches('/'),
            message: None,
            model,
            version,
            outcome: crate::audit::outcome_of_grpc(code),
            status: code,
            micros,
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::is_open;

    #[test]
    fn probes_and_reflection_are_open_and_the_rest_is_not() {
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/inference.GRPCInferenceService/ServerLive",
            "/inference.GRPCInferenceService/ServerReady",
            "/inference.GRPCInferenceService/ModelReady",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelStreamInfer",
            "/inference.GRPCInferenceService/ModelMetadata",
            "/inference.GRPCInferenceService/ServerReadyX",
            "/other.Service/ServerLive",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
