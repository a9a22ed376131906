//! Payload logging, as KServe's logger does: the bodies of sampled inference requests (V2 and
//! typed routes over HTTP, `ModelInfer` and each `ModelStreamInfer` message over gRPC) and of
//! their answers, each sent as a CloudEvent in HTTP binary content mode (`ce-*` headers, the
//! body as it was, its own `Content-Type`) to a sink URL. gRPC messages go as their protobuf
//! encoding, `application/x-protobuf; messageType="inference.ModelInferRequest"` (or
//! `ModelInferResponse`); a gRPC request that fails has no response event.
//!
//! Events go through a bounded queue to one sending task: a request never waits for the sink.
//! A full queue drops the event (`nimify_payload_log_dropped_total{reason="queue_full"}`), a
//! sink that fails or does not answer within 5 s drops it too (`reason="sink_error"`), and so
//! do the events that arrive in the pause after a failure to reach it (an error, a timeout, a
//! 5xx or 429: 250 ms, doubling to 10 s; a 4xx refuses only its own event); sent
//! events are counted in `nimify_payload_log_sent_total`. Bodies above `max_bytes` are cut, and
//! the event says so (`ce-nimifytruncated: true`, `ce-nimifysize`: the full size). At exit the
//! queued events are sent for at most 5 s after the requests drained; the rest are counted
//! (`reason="shutdown"`).
//!
//! Both events of a request carry its request id as `ce-id` (`<id>/<n>` for the n-th message of
//! a gRPC stream) and differ in `ce-type`
//! (`io.nimify.inference.request` / `.response`), as KServe pairs them; `ce-source` is
//! `/models/<model>`, and with tracing on `ce-traceparent` (the CloudEvents distributed-tracing
//! extension) names the request's span.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt as _;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::mpsc;

use crate::config::{PayloadLogConfig, PayloadLogMode};

/// One event to send.
struct Event {
    kind: &'static str,
    id: String,
    model: String,
    content_type: Option<HeaderValue>,
    traceparent: Option<String>,
    body: Bytes,
    size: usize,
}

/// The payload logger of one server.
pub struct PayloadLog {
    config: PayloadLogConfig,
    queue: mpsc::Sender<Event>,
    seen: AtomicU64,
    dropped: IntCounterVec,
    sent: IntCounter,
    /// Tells the sender to take no more events and finish the queued ones ([`Self::flush`]).
    closing: Arc<tokio::sync::Notify>,
    sender: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for PayloadLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadLog").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl PayloadLog {
    /// Starts the sending task (on the current Tokio runtime) when `config` names a sink.
    /// `tls` serves an `https://` sink.
    pub(crate) fn start(config: &PayloadLogConfig, tls: tokio_rustls::rustls::ClientConfig) -> Option<Arc<Self>> {
        let url: axum::http::Uri = config.url.as_deref()?.parse().ok()?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("payload logging is off: the server was built outside a Tokio runtime");
            return None;
        };
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let dropped = IntCounterVec::new(
            Opts::new(
                "nimify_payload_log_dropped_total",
                "Payload log events dropped, by reason (queue_full, sink_error, shutdown)",
            ),
            &["reason"],
        )
        .ok()?;
        let sent = IntCounter::new("nimify_payload_log_sent_total", "Payload log events the sink accepted").ok()?;
        let closing = Arc::new(tokio::sync::Notify::new());
        let sender = runtime.spawn(send_all(rx, url, tls, Arc::clone(&closing), dropped.clone(), sent.clone()));
        Some(Arc::new(Self {
            config: config.clone(),
            queue,
            seen: AtomicU64::new(0),
            dropped,
            sent,
            closing,
            sender: std::sync::Mutex::new(Some(sender)),
        }))
    }

    /// At exit, once requests are drained: sends what is queued, waiting at most `limit`; the
    /// events still queued then are counted dropped (`reason="shutdown"`) and logged.
    pub(crate) async fn flush(&self, limit: Duration) {
        self.closing.notify_one();
        let sender = self.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(sender) = sender else { return };
        if tokio::time::timeout(limit, sender).await.is_err() {
            let left = (self.queue.max_capacity() - self.queue.capacity()) as u64;
            self.dropped.with_label_values(&["shutdown"]).inc_by(left);
            tracing::warn!(
                left,
                "payload log events not sent at exit: the sink did not take them within {} s",
                limit.as_secs()
            );
        }
    }

    /// The counters, for the metrics registry.
    pub(crate) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.dropped.clone()), Box::new(self.sent.clone())]
    }

    /// Whether the next inference request is logged: exactly `sample_ratio` of them, spread
    /// evenly (no random numbers needed).
    pub(crate) fn sampled(&self) -> bool {
        every(&self.seen, self.config.sample_ratio)
    }

    /// Whether the queue is full (a sink that is down or slow): then `events` are dropped and
    /// counted before anything is read or encoded for them.
    fn full(&self, events: u64) -> bool {
        let full = self.queue.capacity() == 0;
        if full {
            self.dropped.with_label_values(&["queue_full"]).inc_by(events);
        }
        full
    }

    fn queue(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.dropped.with_label_values(&["queue_full"]).inc();
        }
    }

    /// Whether this logger's mode sends `kind` (`request` or `response`) events.
    pub(crate) fn wants(&self, kind: &str) -> bool {
        match self.config.mode {
            PayloadLogMode::All => true,
            PayloadLogMode::Request => kind == "request",
            PayloadLogMode::Response => kind == "response",
        }
    }

    /// Queues the protobuf encoding of a gRPC message (`message_type`, e.g.
    /// `inference.ModelInferRequest`, named in the content type as
    /// `application/x-protobuf; messageType="..."`), when the mode sends `kind`.
    pub(crate) fn message(
        &self,
        kind: &'static str,
        id: &str,
        model: &str,
        message_type: &str,
        encode: impl FnOnce() -> Vec<u8>,
    ) {
        if !self.wants(kind) {
            return;
        }
        if self.full(1) {
            return;
        }
        let content_type =
            HeaderValue::from_str(&format!("application/x-protobuf; messageType=\"{message_type}\"")).ok();
        let traceparent = traceparent();
        self.queue(Event { traceparent, ..self.event(kind, id, model, content_type, &Bytes::from(encode())) });
    }

    fn event(
        &self,
        kind: &'static str,
        id: &str,
        model: &str,
        content_type: Option<HeaderValue>,
        body: &Bytes,
    ) -> Event {
        let size = body.len();
        Event {
            kind,
            id: id.to_string(),
            model: model.to_string(),
            content_type,
            traceparent: None,
            // A copy of the part kept: a slice would keep the whole body alive in the queue.
            body: if size > self.config.max_bytes {
                Bytes::copy_from_slice(&body[..self.config.max_bytes])
            } else {
                body.clone()
            },
            size,
        }
    }
}

/// Sends queued events one after another until the logger is dropped.
async fn send_all(
    mut rx: mpsc::Receiver<Event>,
    url: axum::http::Uri,
    tls: tokio_rustls::rustls::ClientConfig,
    closing: Arc<tokio::sync::Notify>,
    dropped: IntCounterVec,
    sent: IntCounter,
) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(crate::tls::https_connector(tls));
    let mut warned = false;
    // After a failure the sink is left alone for a while (250 ms, doubling to 10 s, back to
    // none after a success): events that arrive meanwhile are dropped at once and counted, so a
    // dead sink costs one attempt per pause, not a connection per event.
    let mut pause = Duration::ZERO;
    let mut paused_until = tokio::time::Instant::now();
    let mut closed = false;
    loop {
        // Closing: no new events are taken (they count as queue_full), the queued ones still go.
        let event = tokio::select! {
            event = rx.recv() => event,
            () = closing.notified(), if !closed => {
                rx.close();
                closed = true;
                continue;
            }
        };
        let Some(event) = event else { break };
        if tokio::time::Instant::now() < paused_until {
            dropped.with_label_values(&["sink_error"]).inc();
            continue;
        }
        let mut request = axum::http::Request::post(url.clone())
            .header("ce-specversion", "1.0")
            .header("ce-id", &event.id)
            .header("ce-type", format!("io.nimify.inference.{}", event.kind))
            .header("ce-source", format!("/models/{}", event.model))
            .header("ce-time", crate::audit::now_rfc3339())
            .header("ce-nimifymodel", &event.model)
            .header("ce-nimifysize", event.size.to_string());
        if event.body.len() < event.size {
            request = request.header("ce-nimifytruncated", "true");
        }
        if let Some(tp) = &event.traceparent {
            request = request.header("ce-traceparent", tp);
        }
        if let Some(ct) = event.content_type {
            request = request.header(axum::http::header::CONTENT_TYPE, ct);
        }
        let Ok(request) = request.body(http_body_util::Full::new(event.body)) else { continue };
        let outcome = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await;
        match outcome {
            Ok(Ok(response)) if response.status().is_success() => {
                sent.inc();
                pause = Duration::ZERO;
            }
            // The sink refused this event (too large, malformed to it): the next may be fine.
            Ok(Ok(response)) if response.status().is_client_error() && response.status() != 429 => {
                dropped.with_label_values(&["sink_error"]).inc();
                if !warned {
                    tracing::warn!(url = %url, status = %response.status(), "the payload log sink refused an event; dropping it (nimify_payload_log_dropped_total)");
                    warned = true;
                }
            }
            other => {
                dropped.with_label_values(&["sink_error"]).inc();
                pause = (pause * 2).clamp(Duration::from_millis(250), Duration::from_secs(10));
                paused_until = tokio::time::Instant::now() + pause;
                if !warned {
                    let why = match other {
                        Ok(Ok(r)) => format!("it answered {}", r.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer within 5 s".into(),
                    };
                    tracing::warn!(url = %url, error = %why, "the payload log sink refused an event; dropping events it does not take (nimify_payload_log_dropped_total)");
                    warned = true;
                }
            }
        }
    }
}

/// Whether the next of a stream of events counted in `seen` is taken, so that exactly `ratio`
/// of them are, spread evenly (no random numbers needed).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn every(seen: &AtomicU64, ratio: f64) -> bool {
    let n = seen.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * ratio).floor() > (n * ratio).floor()
}

/// The middleware: for a sampled inference request, reads the body (already limited by the
/// route's own body limit), queues it, passes it on, and does the same with the answer.
pub(crate) async fn capture(
    axum::extract::State(state): axum::extract::State<Arc<crate::server::AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(log) = state.payload_log() else { return next.run(request).await };
    let path = request.uri().path();
    let inference = path.ends_with("/infer") || path.ends_with("/predict");
    let (model, version) = crate::audit::model_and_version(path);
    // V2 paths name a model (an unknown one is answered 404 without its body being read);
    // typed paths are routes of their own.
    let known = path.starts_with("/v1/") || model.is_some_and(|m| state.model(m, version).is_ok());
    let Some(model) = model.filter(|_| inference && known).map(str::to_string) else {
        return next.run(request).await;
    };
    if !log.sampled() {
        return next.run(request).await;
    }
    if log.full(if log.config.mode == PayloadLogMode::All { 2 } else { 1 }) {
        return next.run(request).await;
    }
    let id = crate::server::request_id(request.headers());
    let traceparent = traceparent();
    let request = if log.config.mode == PayloadLogMode::Response {
        request
    } else {
        let (parts, body) = request.into_parts();
        // The route's own limit and errors (413 past max_body_bytes), unlogged.
        let bytes = match state.read_body(body).await {
            Ok(bytes) => bytes,
            Err(e) => return axum::response::IntoResponse::into_response(e),
        };
        let event = log.event("request", &id, &model, content_type(&parts.headers), &bytes);
        log.queue(Event { traceparent: traceparent.clone(), ..event });
        Request::from_parts(parts, Body::from(bytes))
    };
    let response = next.run(request).await;
    if log.config.mode == PayloadLogMode::Request {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, Body::empty());
    };
    let bytes = collected.to_bytes();
    log.queue(Event { traceparent, ..log.event("response", &id, &model, content_type(&parts.headers), &bytes) });
    Response::from_parts(parts, Body::from(bytes))
}

fn content_type(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(axum::http::header::CONTENT_TYPE).cloned()
}

/// The current span's `traceparent` (the CloudEvents distributed-tracing extension), with
/// tracing on.
fn traceparent() -> Option<String> {
    crate::telemetry::ids(&tracing::Span::current()).map(|(t, s)| format!("00-{t}-{s}-01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sampling_keeps_exactly_the_ratio() {
        for (ratio, kept) in [(1.0, 1000), (0.0, 0), (0.25, 250), (0.1, 100), (0.333, 333)] {
            let config =
                PayloadLogConfig { url: Some("http://127.0.0.1:9/".into()), sample_ratio: ratio, ..Default::default() };
            let log = PayloadLog::start(&config, crate::tls::plain_only().expect("tls")).expect("logger");
            assert_eq!((0..1000).filter(|_| log.sampled()).count(), kept, "{ratio}");
        }
    }
}
