//! Prometheus metrics on `/metrics`: Triton's names and labels (`model`, `version`), so existing
//! dashboards and autoscalers work, plus `nimify_*` histograms Triton does not have.
//!
//! One registry per server (not the global one), so several servers in one process stay apart.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metric families of one server.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    success: IntCounterVec,
    failure: IntCounterVec,
    count: IntCounterVec,
    exec_count: IntCounterVec,
    request_us: IntCounterVec,
    queue_us: IntCounterVec,
    compute_us: IntCounterVec,
    pending: IntGaugeVec,
    rejected: IntCounterVec,
    cancelled: IntCounterVec,
    terminated: IntCounterVec,
    loads: IntCounterVec,
    request_seconds: HistogramVec,
    queue_seconds: HistogramVec,
    batch_size: HistogramVec,
    connections: ConnectionMetrics,
    drift: crate::drift::Counters,
}

/// The listener's metrics, cheap to clone into every connection's task.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionMetrics {
    open: IntGauge,
    closed: IntCounterVec,
    accept_errors: IntCounter,
}

const LABELS: &[&str] = &["model", "version"];
const LABELS_WITH_REASON: &[&str] = &["model", "version", "reason"];

/// Registers a metric built from constants (so an error is a bug the first test run shows).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.unwrap_or_else(|e| unreachable_metric(name, &e));
    registry.register(Box::new(metric.clone())).unwrap_or_else(|e| unreachable_metric(name, &e));
    metric
}

fn counter_by(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    counter_by(registry, name, help, LABELS)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    register(registry, name, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), LABELS))
}

/// Metric definitions are constants: a failure here is a bug caught by the first test run.
fn unreachable_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("metric {name} is mis-defined: {e}")
}

/// Latency buckets from 100 µs to 30 s.
fn latency_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The drift monitors' data-quality counters.
    pub(crate) fn drift_counters(&self) -> &crate::drift::Counters {
        &self.drift
    }

    /// Adds a family kept elsewhere (the audit log's error counter).
    pub(crate) fn register_extra(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "a metric could not be registered");
        }
    }

    /// Registers every family.
    pub fn new() -> Self {
        let r = Registry::new();
        let pending = register(
            &r,
            "nv_inference_pending_request_count",
            IntGaugeVec::new(
                Opts::new(
                    "nv_inference_pending_request_count",
                    "Instantaneous number of pending requests awaiting execution per-model.",
                ),
                LABELS,
            ),
        );
        let build = register(
            &r,
            "nimify_build_info",
            IntGauge::with_opts(
                Opts::new("nimify_build_info", "Build information; always 1.")
                    .const_label("version", env!("CARGO_PKG_VERSION"))
                    .const_label("onnxruntime", crate::ortlib::ORT_VERSION),
            ),
        );
        build.set(1);
        let connections = ConnectionMetrics {
            open: register(
                &r,
                "nimify_open_connections",
                IntGauge::new("nimify_open_connections", "Client connections open now"),
            ),
            closed: counter_by(
                &r,
                "nimify_connections_closed_total",
                "Connections the server closed on clients without a request in progress, by reason: header_timeout (header section not sent in time), idle_timeout (kept alive without a request), write_stalled (an answer the client has not read for idle_timeout_ms) or shed (the longest waiting, closed at the connection cap or out of file descriptors)",
                &["reason"],
            ),
            accept_errors: register(
                &r,
                "nimify_accept_errors_total",
                IntCounter::new(
                    "nimify_accept_errors_total",
                    "Failed accepts of new connections (e.g. EMFILE: out of file descriptors), each followed by a back-off",
                ),
            ),
        };
        for reason in ["header_timeout", "idle_timeout", "write_stalled", "shed"] {
            connections.closed.with_label_values(&[reason]);
        }
        let by_feature = &["model", "version", "tensor", "feature"];
        let drift = crate::drift::Counters {
            out_of_range: counter_by(
                &r,
                "nimify_input_out_of_range_total",
                "Sampled values outside the reference profile's min/max, per tensor (inputs and outputs) and feature",
                by_feature,
            ),
            missing: counter_by(
                &r,
                "nimify_input_missing_total",
                "Sampled values missing (NaN, empty string), per tensor (inputs and outputs) and feature",
                by_feature,
            ),
            sampled: counter_by(
                &r,
                "nimify_drift_sampled_rows_total",
                "Rows sampled into the drift window, per tensor (inputs and outputs)",
                &["model", "version", "tensor"],
            ),
        };
        let loads = counter_by(
            &r,
            "nimify_model_loads_total",
            "Loads of a model's versions from the model repository (at start, polled or requested), by outcome: success or failure (the serving versions stay)",
            &["model", "outcome"],
        );
        Self {
            connections,
            drift,
            loads,
            success: counter(
                &r,
                "nv_inference_request_success",
                "Number of successful inference requests, all batch sizes",
            ),
            failure: counter(
                &r,
                "nv_inference_request_failure",
                "Number of failed inference requests, all batch sizes",
            ),
            count: counter(
                &r,
                "nv_inference_count",
                "Number of inferences performed (does not include cached requests)",
            ),
            exec_count: counter(
                &r,
                "nv_inference_exec_count",
                "Number of model executions performed (does not include cached requests)",
            ),
            request_us: counter(
                &r,
                "nv_inference_request_duration_us",
                "Cumulative inference request duration in microseconds (includes cached requests)",
            ),
            queue_us: counter(
                &r,
                "nv_inference_queue_duration_us",
                "Cumulative inference queuing duration in microseconds (includes cached requests)",
            ),
            compute_us: counter(
                &r,
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in microseconds (does not include cached requests)",
            ),
            pending,
            rejected: counter_by(
                &r,
                "nimify_requests_rejected_total",
                "Requests refused with 503, by reason: queue_full (the model's queue) or in_flight (the server's in-flight cap)",
                LABELS_WITH_REASON,
            ),
            cancelled: counter_by(
                &r,
                "nimify_requests_cancelled_total",
                "Queued requests not executed because nobody waited for them any more, by reason: deadline (request_timeout_ms passed) or disconnect (the client went away)",
                LABELS_WITH_REASON,
            ),
            terminated: counter_by(
                &r,
                "nimify_runs_terminated_total",
                "ONNX Runtime runs stopped before their end because no request of the batch still waited, by reason: deadline or disconnect (of the last request to go)",
                LABELS_WITH_REASON,
            ),
            request_seconds: register(
                &r,
                "nimify_request_duration_seconds",
                HistogramVec::new(
                    HistogramOpts::new(
                        "nimify_request_duration_seconds",
                        "Inference request latency, queueing included, by protocol (http or grpc)",
                    )
                    .buckets(latency_buckets()),
                    &["model", "version", "protocol"],
                ),
            ),
            queue_seconds: histogram(
                &r,
                "nimify_queue_duration_seconds",
                "Time requests wait in the batching queue",
                latency_buckets(),
            ),
            batch_size: histogram(
                &r,
                "nimify_batch_size",
                "Items per model execution",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            registry: r,
        }
    }

    /// The handles for one model version (label lookups done once).
    pub fn model(&self, model: &str, version: &str) -> ModelMetrics {
        let l = [model, version];
        ModelMetrics {
            success: self.success.with_label_values(&l),
            failure: self.failure.with_label_values(&l),
            count: self.count.with_label_values(&l),
            exec_count: self.exec_count.with_label_values(&l),
            request_us: self.request_us.with_label_values(&l),
            queue_us: self.queue_us.with_label_values(&l),
            compute_us: self.compute_us.with_label_values(&l),
            pending: self.pending.with_label_values(&l),
            rejected_queue_full: self.rejected.with_label_values(&[model, version, "queue_full"]),
            rejected_in_flight: self.rejected.with_label_values(&[model, version, "in_flight"]),
            cancelled_deadline: self.cancelled.with_label_values(&[model, version, "deadline"]),
            cancelled_disconnect: self.cancelled.with_label_values(&[model, version, "disconnect"]),
            terminated_deadline: self.terminated.with_label_values(&[model, version, "deadline"]),
            terminated_disconnect: self.terminated.with_label_values(&[model, version, "disconnect"]),
            request_seconds_http: self.request_seconds.with_label_values(&[model, version, "http"]),
            request_seconds_grpc: self.request_seconds.with_label_values(&[model, version, "grpc"]),
            queue_seconds: self.queue_seconds.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            stats: std::sync::Arc::default(),
        }
    }

    /// Drops every series of one model version (it was unloaded). Requests still running on it
    /// count into handles no longer exported.
    pub(crate) fn forget_model(&self, model: &str, version: &str, drift: Option<&crate::drift::Drift>) {
        if let Some(drift) = drift {
            drift.forget(&self.drift);
        }
        let l = [model, version];
        for vec in [
            &self.success,
            &self.failure,
            &self.count,
            &self.exec_count,
            &self.request_us,
            &self.queue_us,
            &self.compute_us,
        ] {
            let _ = vec.remove_label_values(&l);
        }
        let _ = self.pending.remove_label_values(&l);
        let _ = self.queue_seconds.remove_label_values(&l);
        let _ = self.batch_size.remove_label_values(&l);
        for (vec, reasons) in [
            (&self.rejected, ["queue_full", "in_flight"]),
            (&self.cancelled, ["deadline", "disconnect"]),
            (&self.terminated, ["deadline", "disconnect"]),
        ] {
            for reason in reasons {
                let _ = vec.remove_label_values(&[model, version, reason]);
            }
        }
        for protocol in ["http", "grpc"] {
            let _ = self.request_seconds.remove_label_values(&[model, version, protocol]);
        }
    }

    /// Counts a load of a repository model.
    pub(crate) fn model_loaded(&self, model: &str, success: bool) {
        self.loads.with_label_values(&[model, if success { "success" } else { "failure" }]).inc();
    }

    /// Counts a request refused by the in-flight cap that names no served model (an unknown
    /// one, or a route that is not about a model): empty model and version labels, so the
    /// label values stay bounded whatever clients send.
    pub fn rejected_in_flight_without_model(&self) {
        self.rejected.with_label_values(&["", "", "in_flight"]).inc();
    }

    /// The listener's metrics.
    pub(crate) fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl ConnectionMetrics {
    /// Counts a connection the listener took.
    pub(crate) fn opened(&self) {
        self.open.inc();
    }

    /// Counts a connection that ended.
    pub(crate) fn closed(&self) {
        self.open.dec();
    }

    /// Counts a connection the server closed on a client without a request in progress
    /// (`header_timeout`, `idle_timeout`, `write_stalled`, `shed`).
    pub(crate) fn closed_by_server(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }

    /// Counts a failed accept.
    pub(crate) fn accept_error(&self) {
        self.accept_errors.inc();
    }
}

/// Metric handles for one model version.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ModelMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub count: IntCounter,
    pub exec_count: IntCounter,
    pub request_us: IntCounter,
    pub queue_us: IntCounter,
    pub compute_us: IntCounter,
    pub pending: IntGauge,
    pub rejected_queue_full: IntCounter,
    pub rejected_in_flight: IntCounter,
    pub cancelled_deadline: IntCounter,
    pub cancelled_disconnect: IntCounter,
    pub terminated_deadline: IntCounter,
    pub terminated_disconnect: IntCounter,
    pub request_seconds_http: Histogram,
    pub request_seconds_grpc: Histogram,
    pub queue_seconds: Histogram,
    pub batch_size: Histogram,
    /// What Triton's statistics extension reports beyond the counters above.
    pub stats: std::sync::Arc<ModelStats>,
}

/// Durations for Triton's statistics extension (`ModelStatistics`, `GET /v2/models/{m}/stats`),
/// in nanoseconds, kept beside the Prometheus counters that hold the counts.
#[derive(Debug, Default)]
pub struct ModelStats {
    success_ns: AtomicU64,
    fail_ns: AtomicU64,
    queue_count: AtomicU64,
    queue_ns: AtomicU64,
    compute_count: AtomicU64,
    compute_ns: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Executions by batch size (items): how many and their summed compute time.
    batches: std::sync::Mutex<std::collections::BTreeMap<u64, (u64, u64)>>,
}

/// A snapshot of [`ModelStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub success_ns: u64,
    pub fail_ns: u64,
    pub queue_count: u64,
    pub queue_ns: u64,
    pub compute_count: u64,
    pub compute_ns: u64,
    pub last_inference_ms: u64,
    /// (batch size, executions, compute ns), by batch size.
    pub batches: Vec<(u64, u64, u64)>,
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ModelStats {
    /// A request ended, successfully or not, after `took` (the last inference's time is a
    /// successful one's, as Triton's).
    pub(crate) fn request(&self, ok: bool, took: std::time::Duration) {
        let ns = if ok { &self.success_ns } else { &self.fail_ns };
        ns.fetch_add(nanos(took), Ordering::Relaxed);
        if !ok {
            return;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms.store(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A request left the queue after waiting `waited`.
    pub(crate) fn dequeued(&self, waited: std::time::Duration) {
        self.queue_count.fetch_add(1, Ordering::Relaxed);
        self.queue_ns.fetch_add(nanos(waited), Ordering::Relaxed);
    }

    /// One execution of `items` items for `requests` requests took `took` (each request is
    /// counted with the whole execution's time, as Triton counts compute per request).
    pub(crate) fn executed(&self, items: usize, requests: usize, took: std::time::Duration) {
        let ns = nanos(took);
        self.compute_count.fetch_add(requests as u64, Ordering::Relaxed);
        self.compute_ns.fetch_add(ns.saturating_mul(requests as u64), Ordering::Relaxed);
        let mut batches = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = batches.entry(items as u64).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(ns);
    }

    /// The durations now.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let batches = self.batches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        StatsSnapshot {
            success_ns: self.success_ns.load(Ordering::Relaxed),
            fail_ns: self.fail_ns.load(Ordering::Relaxed),
            queue_count: self.queue_count.load(Ordering::Relaxed),
            queue_ns: self.queue_ns.load(Ordering::Relaxed),
            compute_count: self.compute_count.load(Ordering::Relaxed),
            compute_ns: self.compute_ns.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            batches: batches.iter().map(|(&size, &(count, ns))| (size, count, ns)).collect(),
        }
    }
}

impl ModelMetrics {
    /// Queued requests dropped before running, by why nobody waited.
    pub(crate) fn cancelled(&self, why: crate::cancel::Gone) -> &IntCounter {
        match why {
            crate::cancel::Gone::Deadline => &self.cancelled_deadline,
            crate::cancel::Gone::Disconnect => &self.cancelled_disconnect,
        }
    }

    /// Runs stopped midway, by why the last request went.
    pub(crate) fn terminated(&self, why: crate::cancel::Gone) -> &IntCounter {
        match why {
            crate::cancel::Gone::Deadline => &self.terminated_deadline,
            crate::cancel::Gone::Disconnect => &self.terminated_disconnect,
        }
    }
}

/// Microseconds in a duration, saturating.
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
