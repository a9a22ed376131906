//! OpenTelemetry traces, configured from the standard `OTEL_*` environment as every OpenTelemetry
//! SDK is: on when an OTLP endpoint is named (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), off otherwise or with `OTEL_SDK_DISABLED=true` /
//! `OTEL_TRACES_EXPORTER=none`. `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` picks `http/protobuf`
//! (the default, as the specification says) or `grpc`; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG` and `OTEL_BSP_*` are read by the SDK
//! itself (the default sampler, `parentbased_always_on`, follows a caller's sampling decision).
//!
//! Each HTTP request and gRPC call is a server span (the `request` span of the access log, see
//! [`request_span`]): its parent is the W3C `traceparent` / `tracestate` the client sent, and the
//! answer carries the span's own `traceparent`. Spans are exported in batches from a task on the
//! server's runtime, never on the request's path; an exporter that cannot reach its collector
//! drops spans and costs requests nothing. At exit what is queued is sent for at most 5 s. With
//! tracing off, nothing is extracted, recorded or exported, and `RUST_LOG` decides only what is
//! logged, not what is traced.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`).
    Grpc,
}

/// Tracing as the environment (or the configuration file) asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The endpoint, as given (the exporter reads it from the environment itself).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// For an `https://` endpoint: the PEM file of the CA the collector's certificate must chain
    /// to (`OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`); the system's roots without one.
    pub certificate: Option<String>,
    /// For mutual TLS: the client's certificate chain and key, PEM files
    /// (`OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` / `_CLIENT_KEY`).
    pub client_identity: Option<(String, String)>,
    /// `OTEL_SERVICE_NAME`; the binary's name without one.
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER` / `_ARG`; `parentbased_always_on` without one.
    pub sampler: Option<SamplerChoice>,
    /// The URL the exporter sends to.
    pub url: String,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, 10 s by default).
    pub timeout: Duration,
}

/// Whether tracing is on, set once at start-up: with it off the request path skips every step.
static TRACING: OnceLock<bool> = OnceLock::new();

/// Whether spans are exported.
pub fn enabled() -> bool {
    TRACING.get().copied().unwrap_or(false)
}

/// Reads the standard variables through `var`, and then the configuration file's `[tracing]` (a
/// variable that is set wins over its key); `Ok(None)` when tracing is off, an error naming the
/// variable (or key) for a value nimify cannot honour.
pub fn settings_with_file(
    var: impl Fn(&str) -> Option<String>,
    file: &crate::config::TracingConfig,
) -> Result<Option<Settings>, String> {
    settings_from(|name| {
        var(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_string(), v))
            .or_else(|| file.value_for(name).map(|(key, v)| (key.to_string(), v)))
    })
}

/// The settings from `lookup`, which gives a variable's value with the name to report it by (the
/// variable's, or the configuration key's).
fn settings_from(lookup: impl Fn(&str) -> Option<(String, String)>) -> Result<Option<Settings>, String> {
    let get_named =
        |name: &str| lookup(name).map(|(label, v)| (label, v.trim().to_string())).filter(|(_, v)| !v.is_empty());
    let get = |name: &str| get_named(name).map(|(_, v)| v);
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match get("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported: nimify exports traces over OTLP (`otlp`, or `none` for no traces)"
            ));
        }
    }
    // The signal-specific variable wins over the general one.
    let either = |name: &str| {
        get_named(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
            .or_else(|| get_named(&format!("OTEL_EXPORTER_OTLP_{name}")))
    };
    let Some((endpoint_var, endpoint)) = either("ENDPOINT") else {
        return Ok(None);
    };
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(format!(
            "{endpoint_var}={endpoint} is not a URL; e.g. http://127.0.0.1:4318 (http/protobuf) or http://127.0.0.1:4317 (grpc)"
        ));
    }
    let certificate = either("CERTIFICATE").map(|(_, v)| v);
    let client_identity = match (either("CLIENT_CERTIFICATE"), either("CLIENT_KEY")) {
        (Some((_, cert)), Some((_, key))) => Some((cert, key)),
        (None, None) => None,
        (Some((var, _)), None) | (None, Some((var, _))) => {
            return Err(format!(
                "{var} is set without its pair: mutual TLS needs both OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE \
                 and OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY"
            ));
        }
    };
    let (protocol_var, protocol) = either("PROTOCOL").unwrap_or_default();
    let protocol = match protocol.as_str() {
        "" | "http/protobuf" => Protocol::HttpProtobuf,
        "grpc" => Protocol::Grpc,
        other => {
            return Err(format!("{protocol_var}={other} is not supported; use http/protobuf (the default) or grpc"));
        }
    };
    let sampler = match get_named("OTEL_TRACES_SAMPLER") {
        None => None,
        Some((var, name)) => {
            let ratio = match get_named("OTEL_TRACES_SAMPLER_ARG") {
                None => 1.0,
                Some((arg_var, arg)) => arg
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("{arg_var}={arg} is not a ratio between 0 and 1"))?,
            };
            Some(match name.as_str() {
                "always_on" => SamplerChoice::AlwaysOn,
                "always_off" => SamplerChoice::AlwaysOff,
                "traceidratio" => SamplerChoice::Ratio(ratio),
                "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
                "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
                "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(ratio),
                other => {
                    return Err(format!(
                        "{var}={other} is not supported; use always_on, always_off, traceidratio, parentbased_always_on \
                         (the default), parentbased_always_off or parentbased_traceidratio"
                    ));
                }
            })
        }
    };
    let service_name = get("OTEL_SERVICE_NAME");
    // The URL the exporter is given (it would otherwise read the variables again, untrimmed): the
    // signal-specific variable as it is, the general one (or the file's key) with the path of
    // traces over HTTP.
    let url = match protocol {
        Protocol::HttpProtobuf if !endpoint_var.starts_with("OTEL_EXPORTER_OTLP_TRACES_") => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.clone(),
    };
    // TLS files for a plain-text endpoint would be ignored: say so rather than send in clear.
    if !endpoint.starts_with("https://")
        && let Some((var, _)) = either("CERTIFICATE").or_else(|| either("CLIENT_CERTIFICATE"))
    {
        return Err(format!(
            "{var} is set but {endpoint_var}={endpoint} is not an https:// URL: spans would go unencrypted; use \
             https:// or unset it"
        ));
    }
    let timeout = match either("TIMEOUT") {
        None => Duration::from_secs(10),
        Some((var, ms)) => {
            Duration::from_millis(ms.parse().map_err(|_| format!("{var}={ms} is not a number of milliseconds"))?)
        }
    };
    Ok(Some(Settings { endpoint, protocol, certificate, client_identity, service_name, sampler, url, timeout }))
}

/// The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of traces, whatever the caller decided.
    Ratio(f64),
    /// `parentbased_always_on`: the caller's decision, else on.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: the caller's decision, else off.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: the caller's decision, else this share.
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }
}

/// The tracer provider while tracing is on; shut down (flushing what is queued) at exit.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and the batch processor; must run inside the server's Tokio runtime
    /// (the batches are sent from a task on it). `service` names the service when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn start(settings: &Settings, service: &str) -> Result<Self, String> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        // The HTTP client ends a request at the export timeout: the exporter's own only bounds
        // its retries.
        let backstop = settings.timeout;
        let https = settings.endpoint.starts_with("https://");
        let fail =
            |e: &dyn std::fmt::Display| format!("cannot set up the OTLP exporter for {}: {e}", settings.endpoint);
        let exporter = match settings.protocol {
            Protocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig as _;
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&settings.url)
                    .with_timeout(settings.timeout);
                if https {
                    builder = builder.with_tls_config(grpc_tls(settings).map_err(|e| fail(&e))?);
                }
                builder.build()
            }
            Protocol::HttpProtobuf => {
                let tls = if https {
                    let identity = settings.client_identity.as_ref().map(|(c, k)| (Path::new(c), Path::new(k)));
                    crate::tls::client_config(settings.certificate.as_deref().map(Path::new), identity)
                } else {
                    crate::tls::plain_only()
                }
                .map_err(|e| fail(&e))?;
                let client =
                    opentelemetry_http::hyper::HyperClient::new(crate::tls::https_connector(tls), backstop, None);
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(client)
                    .with_endpoint(&settings.url)
                    .with_timeout(settings.timeout)
                    .build()
            }
        }
        .map_err(|e| fail(&e))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            Counted { inner: exporter, spans: spans().cloned() },
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone().unwrap_or_else(|| service.to_string()))
            .build();
        let mut provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource);
        if let Some(sampler) = settings.sampler {
            provider = provider.with_sampler(sampler.sampler());
        }
        let provider = provider.build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans, and marks tracing on.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let _ = TRACING.set(true);
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("nimify")).with_tracked_inactivity(false)
    }

    /// Exports what is queued and stops the exporter, waiting at most 5 s: a collector that
    /// accepts connections and never answers must not hold the process past its grace period.
    pub fn shutdown(self) {
        let (done, wait) = std::sync::mpsc::channel();
        let provider = self.provider;
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match wait.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("traces not all exported at shutdown: {e}"),
            Err(_) => tracing::warn!("traces not all exported at shutdown: the collector did not answer within 5 s"),
        }
    }
}

/// TLS to a gRPC collector, as the settings say: its CA (or the system's roots) and, for mutual
/// TLS, the client's identity.
fn grpc_tls(settings: &Settings) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, String> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"));
    let tls = match &settings.certificate {
        Some(ca) => {
            // A file with no certificate in it would leave tonic with no roots at all.
            crate::tls::certificates(Path::new(ca)).map_err(|e| e.to_string())?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    Ok(match &settings.client_identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        None => tls,
    })
}

/// Spans the exporter handed to the collector (`outcome="exported"`) or lost in an export that
/// failed (`outcome="failed"`: the collector is down, refused them or did not answer in time).
fn spans() -> Option<&'static prometheus::IntCounterVec> {
    static SPANS: OnceLock<Option<prometheus::IntCounterVec>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "nimify_trace_spans_total",
                    "Spans sent to the OTLP collector, by outcome (exported, failed: lost with an export that failed)",
                ),
                &["outcome"],
            )
            .ok()
        })
        .as_ref()
}

/// The span counter, for the metrics registry, while tracing is on.
pub(crate) fn collectors() -> Option<Box<dyn prometheus::core::Collector>> {
    let spans = spans().filter(|_| enabled())?;
    Some(Box::new(spans.clone()))
}

/// Counts one export's spans under `outcome` when dropped (finished or abandoned).
struct Outcome {
    spans: Option<prometheus::IntCounterVec>,
    count: u64,
    outcome: &'static str,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some(spans) = &self.spans {
            spans.with_label_values(&[self.outcome]).inc_by(self.count);
        }
    }
}

/// An exporter that counts what it sends, and what it loses.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    spans: Option<prometheus::IntCounterVec>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let count = batch.len() as u64;
        let export = self.inner.export(batch);
        let spans = self.spans.clone();
        async move {
            // An export the batch processor gives up on (OTEL_BSP_EXPORT_TIMEOUT) is dropped
            // mid-way: the guard counts it failed.
            let mut guard = Outcome { spans, count, outcome: "failed" };
            let result = export.await;
            if result.is_ok() {
                guard.outcome = "exported";
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The server span of an HTTP request, named and attributed as the OpenTelemetry semantic
/// conventions for HTTP servers say (`POST /v2/models/{model}/infer`), its parent the
/// caller's `traceparent`. Call only with tracing on ([`enabled`]); otherwise the access log's
/// plain span is cheaper.
pub fn http_span(request: &axum::extract::Request, request_id: &str, tls: bool) -> tracing::Span {
    use tracing::field::Empty;
    let method = request.method().as_str();
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let (model, version) = crate::audit::model_and_version(request.uri().path());
    // client.address / client.port: the connection's peer (forwarding headers, which any
    // client could set, are not read).
    let peer = crate::connections::peer(request.extensions());
    let span = tracing::error_span!(
        "request",
        request_id = %request_id,
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        url.scheme = if tls { "https" } else { "http" },
        network.protocol.name = "http",
        network.protocol.version = version_of(request.version()),
        user_agent.original = header(request.headers(), "user-agent"),
        client.address = peer.map(|p| p.ip().to_string()),
        client.port = peer.map(|p| i64::from(p.port())),
        http.request.body.size = header(request.headers(), "content-length").and_then(|v| v.parse::<i64>().ok()),
        http.response.status_code = Empty,
        http.response.body.size = Empty,
        error.type = Empty,
        nimify.model.name = model,
        nimify.model.version = version,
    );
    adopt_parent(&span, request.headers());
    span
}

/// Records the answer on an HTTP server span and adds its `traceparent` to the answer.
pub fn end_http_span(span: &tracing::Span, response: &mut axum::response::Response) {
    // Integers as i64: the OpenTelemetry layer has no u64 attribute and would write text.
    let status = i64::from(response.status().as_u16());
    span.record("http.response.status_code", status);
    if let Some(size) = header(response.headers(), "content-length").and_then(|v| v.parse::<i64>().ok()) {
        span.record("http.response.body.size", size);
    }
    // Server spans: 5xx is an error, 4xx is the client's.
    if status >= 500 {
        span.record("otel.status_code", "error");
        span.record("error.type", status.to_string());
    }
    answer_with(span, response.headers_mut());
}

/// The server span of a gRPC call (`inference.GRPCInferenceService/ModelInfer`), as the
/// semantic conventions for RPC say, its parent the caller's `traceparent` metadata.
pub fn grpc_span(request: &axum::extract::Request, request_id: &str) -> tracing::Span {
    use tracing::field::Empty;
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    // client.address / client.port: the connection's peer (forwarding headers, which any
    // client could set, are not read).
    let peer = crate::connections::peer(request.extensions());
    let span = tracing::error_span!(
        "request",
        request_id = %request_id,
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        network.protocol.name = "http",
        network.protocol.version = "2",
        user_agent.original = header(request.headers(), "user-agent"),
        client.address = peer.map(|p| p.ip().to_string()),
        client.port = peer.map(|p| i64::from(p.port())),
        error.type = Empty,
    );
    adopt_parent(&span, request.headers());
    span
}

/// Records a call's gRPC status on its span (codes the RPC conventions count as server errors
/// mark it failed) and adds its `traceparent` to the answer's headers.
pub fn end_grpc_span(span: &tracing::Span, code: i64, headers: &mut HeaderMap) {
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
        span.record("error.type", code.to_string());
    }
    answer_with(span, headers);
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn version_of(v: axum::http::Version) -> &'static str {
    match v {
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A span inside a request (`decode`, `encode`, a typed service's `process`): a child of the
/// current span with tracing on, else [`tracing::Span::none`], which costs nothing to enter.
/// Error level, as the request span, so that `RUST_LOG` does not decide what is traced.
#[macro_export]
#[doc(hidden)]
macro_rules! __trace_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::__private::telemetry_enabled() {
            ::tracing::error_span!($name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// What a queued request carries for its spans (tracing on only): the OpenTelemetry context of
/// the span that queued it (the parent of the run that serves it, and linked from that run) and
/// its `queue` span, which ends when a worker takes the request. Only OpenTelemetry contexts
/// are kept, not `tracing` spans: a request given up while queued must not stay open (and
/// keep its request span open) until a worker gets to it.
pub(crate) struct JobTrace {
    parent: opentelemetry::Context,
    queue: tracing::Span,
}

/// The trace of a request being queued for `model`, a child of the current span.
pub(crate) fn queued(model: &str) -> Option<JobTrace> {
    if !enabled() {
        return None;
    }
    let parent = tracing::Span::current().context();
    let queue = tracing::error_span!(parent: None, "queue", nimify.model.name = %model);
    let _ = queue.set_parent(parent.clone());
    Some(JobTrace { parent, queue })
}

impl JobTrace {
    /// A worker took the request: its `queue` span ends.
    pub(crate) fn dequeued(&mut self) {
        self.queue = tracing::Span::none();
    }
}

/// The span of one ONNX Runtime run serving `requests` (`items` along dim 0): a child of the
/// first sampled request's span (so that each sampled trace that can show it does), linked to
/// every request's, with the batch size.
pub(crate) fn run_span<'a>(requests: impl IntoIterator<Item = &'a JobTrace>, items: usize) -> tracing::Span {
    let requests: Vec<&JobTrace> = requests.into_iter().collect();
    let first_sampled = requests.iter().find(|r| r.parent.span().span_context().is_sampled());
    let Some(parent) = first_sampled.or(requests.first()) else { return tracing::Span::none() };
    let span = tracing::error_span!(
        parent: None,
        "execute",
        nimify.batch.size = items as i64,
        nimify.batch.requests = requests.len() as i64,
    );
    let _ = span.set_parent(parent.parent.clone());
    for r in &requests {
        span.add_link(r.parent.span().span_context().clone());
    }
    span
}

struct Headers<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the caller's `traceparent` (and `tracestate`) in `headers` the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// The trace and span ids of `span` (hex), when tracing is on.
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Adds `span`'s own `traceparent` (and the caller's `tracestate`) to an answer's headers.
pub fn answer_with(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    let flags = if sc.is_sampled() { "01" } else { "00" };
    if let Ok(v) = HeaderValue::from_str(&format!("00-{}-{}-{flags}", sc.trace_id(), sc.span_id())) {
        headers.insert("traceparent", v);
    }
    let state = sc.trace_state().header();
    if let Some(v) = Some(state).filter(|s| !s.is_empty()).and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert("tracestate", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
        settings_with_file(var, &crate::config::TracingConfig::default())
    }

    #[test]
    fn the_config_file_stands_in_for_unset_variables() {
        let file = crate::config::TracingConfig {
            endpoint: Some("http://file:4318".into()),
            protocol: Some("grpc".into()),
            service_name: Some("from-file".into()),
            sampler: Some("parentbased_traceidratio".into()),
            sampler_arg: Some(0.25),
            ..Default::default()
        };
        let s = settings_with_file(env(&[]), &file).expect("valid").expect("on");
        assert_eq!((s.endpoint.as_str(), s.protocol), ("http://file:4318", Protocol::Grpc));
        assert_eq!(s.service_name.as_deref(), Some("from-file"));
        assert_eq!(s.sampler, Some(SamplerChoice::ParentBasedRatio(0.25)));
        assert_eq!(s.url, "http://file:4318");
        let http = crate::config::TracingConfig { protocol: None, ..file.clone() };
        let s = settings_with_file(env(&[]), &http).expect("valid").expect("on");
        assert_eq!(s.url, "http://file:4318/v1/traces");
        let s = settings_with_file(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/x")]), &http)
            .expect("valid")
            .expect("on");
        assert_eq!(s.url, "http://env:4318/x");
        let err = settings_with_file(env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")]), &http).expect_err("clear");
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE is set but tracing.endpoint="), "{err}");
        // A variable wins over its key; the signal-specific one over both.
        let s = settings_with_file(
            env(&[("OTEL_TRACES_SAMPLER", "always_off"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318")]),
            &file,
        )
        .expect("valid")
        .expect("on");
        assert_eq!((s.endpoint.as_str(), s.sampler), ("http://env:4318", Some(SamplerChoice::AlwaysOff)));
        // Errors name the key the bad value came from.
        let bad = crate::config::TracingConfig { sampler_arg: Some(2.0), ..file.clone() };
        let err = settings_with_file(env(&[]), &bad).expect_err("ratio");
        assert!(err.starts_with("tracing.sampler_arg=2 is not a ratio"), "{err}");
        let bad = crate::config::TracingConfig { sampler: Some("sometimes".into()), ..file };
        let err = settings_with_file(env(&[]), &bad).expect_err("sampler");
        assert!(err.starts_with("tracing.sampler=sometimes is not supported"), "{err}");
        // OTEL_SDK_DISABLED still turns it off.
        let off = crate::config::TracingConfig { endpoint: Some("http://file:4318".into()), ..Default::default() };
        assert_eq!(settings_with_file(env(&[("OTEL_SDK_DISABLED", "true")]), &off), Ok(None));
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_named() {
        assert_eq!(settings(env(&[])), Ok(None));
        assert_eq!(settings(env(&[("OTEL_SERVICE_NAME", "svc"), ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert_eq!(
            settings(env(&on)),
            Ok(Some(Settings {
                endpoint: "http://127.0.0.1:4318".into(),
                protocol: Protocol::HttpProtobuf,
                certificate: None,
                client_identity: None,
                service_name: None,
                sampler: None,
                url: "http://127.0.0.1:4318/v1/traces".into(),
                timeout: Duration::from_secs(10),
            }))
        );
        for off in [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(settings(env(&[on[0], off])), Ok(None), "{off:?}");
        }
        assert_eq!(settings(env(&[on[0], ("OTEL_SDK_DISABLED", "false")])).map(|s| s.is_some()), Ok(true));
    }

    #[test]
    fn the_signal_specific_variables_win_and_bad_values_are_named() {
        let s = settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!((s.endpoint.as_str(), s.protocol), ("http://b:4317", Protocol::Grpc));
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        let err = settings(env(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).expect_err("json");
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported"), "{err}");
        let err = settings(env(&[base, ("OTEL_TRACES_EXPORTER", "zipkin")])).expect_err("zipkin");
        assert!(err.contains("OTEL_TRACES_EXPORTER=zipkin is not supported"), "{err}");
        let tls = settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/all.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/client.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/client.key"),
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!(tls.certificate.as_deref(), Some("/traces.pem"));
        assert_eq!(tls.client_identity, Some(("/client.pem".into(), "/client.key".into())));
        let err = settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/client.key"),
        ]))
        .expect_err("half a pair");
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY is set without its pair"), "{err}");
        let err = settings(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")])).expect_err("no scheme");
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector:4317 is not a URL"), "{err}");
    }
}
