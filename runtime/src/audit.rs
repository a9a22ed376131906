//! The audit log: one JSON line per inference request or call (health, readiness and metrics
//! are left out), with when, who (the API key's *name*, never the key; the client's address),
//! what (protocol, operation, model, version), how it ended (outcome, status) and how long it
//! took, joined to the access log by the request id and to traces by the trace id. Lines go to
//! a file opened for appending, or to stderr (`-`); rotation is the operator's job (logrotate
//! with `copytruncate`, or a log collector reading stderr).
//!
//! A line is written whole, under a lock, before the answer is finished: a write that fails (a
//! full disk) is counted in `nimify_audit_write_errors_total` and logged, and the request is
//! answered as if nothing happened.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Where audit lines go.
pub struct Audit {
    sink: Mutex<Box<dyn std::io::Write + Send>>,
    errors: prometheus::IntCounter,
}

/// One request's line.
#[derive(Serialize)]
pub(crate) struct Entry<'a> {
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub client: Option<&'a str>,
    pub protocol: &'static str,
    pub operation: &'a str,
    /// A `ModelStreamInfer` message's place in its stream (from 1): each message has a line of
    /// its own, besides the stream's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    pub model: Option<&'a str>,
    pub version: Option<&'a str>,
    pub outcome: &'static str,
    pub status: i64,
    pub micros: u64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("write_errors", &self.errors.get()).finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens `path` for appending (created 0600 when missing), or stderr for `-`.
    pub fn open(path: &Path) -> Result<Self, String> {
        let sink: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stderr())
        } else {
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            Box::new(options.open(path).map_err(|e| {
                format!("cannot open the audit log {} for appending: {e}; fix the path or its permissions, or unset audit_log", path.display())
            })?)
        };
        let errors = prometheus::IntCounter::new(
            "nimify_audit_write_errors_total",
            "Audit log lines that could not be written (the requests were answered)",
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { sink: Mutex::new(sink), errors })
    }

    /// The counter of failed writes, for the metrics registry.
    pub(crate) fn errors(&self) -> &prometheus::IntCounter {
        &self.errors
    }

    /// Writes one line (with the time, RFC 3339 UTC).
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        #[derive(Serialize)]
        struct Line<'a> {
            /// Tells audit lines from the service log's when both go to stderr.
            log: &'static str,
            time: String,
            #[serde(flatten)]
            entry: &'a Entry<'a>,
        }
        let Ok(mut line) = serde_json::to_vec(&Line { log: "audit", time: now_rfc3339(), entry }) else { return };
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            self.errors.inc();
            // Once per hundred failures: a full disk should not flood the log too.
            if self.errors.get() % 100 == 1 {
                tracing::error!(error = %e, failed = self.errors.get(), "cannot write the audit log");
            }
        }
    }
}

/// The outcome of an HTTP status, in words a report can group by.
pub(crate) fn outcome_of_http(status: u16) -> &'static str {
    match status {
        ..400 => "success",
        401 | 403 => "denied",
        429 | 503 => "rejected",
        400..500 => "client_error",
        _ => "server_error",
    }
}

/// The outcome of a gRPC status code.
pub(crate) fn outcome_of_grpc(code: i64) -> &'static str {
    match code {
        0 => "success",
        7 | 16 => "denied",
        8 | 14 => "rejected",
        1 | 3 | 5 | 6 | 9 | 10 | 11 => "client_error",
        _ => "server_error",
    }
}

/// The client's address (`ip:port`), as the connection gave it.
pub(crate) fn client_of(extensions: &axum::http::Extensions) -> Option<String> {
    crate::connections::peer(extensions).map(|p| p.to_string())
}

/// The model and version a V2 or typed path names.
pub(crate) fn model_and_version(path: &str) -> (Option<&str>, Option<&str>) {
    let Some(rest) = path.strip_prefix("/v2/models/").or_else(|| path.strip_prefix("/v1/models/")) else {
        return (None, None);
    };
    let mut parts = rest.split('/');
    let model = parts.next().filter(|m| !m.is_empty());
    let version = match (parts.next(), parts.next()) {
        (Some("versions"), Some(v)) if !v.is_empty() => Some(v),
        _ => None,
    };
    (model, version)
}

/// Now, RFC 3339 UTC with microseconds.
pub(crate) fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let whole = rfc3339(now.as_secs());
    format!("{}.{:06}Z", whole.trim_end_matches('Z'), now.subsec_micros())
}

/// RFC 3339 UTC time for seconds since the epoch (`1970-01-01T00:00:00Z`).
pub fn rfc3339(epoch: u64) -> String {
    let days = i64::try_from(epoch / 86_400).unwrap_or(0);
    let secs = epoch % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_model_and_version() {
        assert_eq!(model_and_version("/v2/models/mlp/infer"), (Some("mlp"), None));
        assert_eq!(model_and_version("/v2/models/mlp/versions/3/infer"), (Some("mlp"), Some("3")));
        assert_eq!(model_and_version("/v1/models/iris/predict"), (Some("iris"), None));
        assert_eq!(model_and_version("/v2/health/ready"), (None, None));
    }

    #[test]
    fn outcomes_group_statuses() {
        let http: Vec<&str> = [200, 401, 403, 404, 422, 429, 500, 503, 504].map(outcome_of_http).into();
        assert_eq!(
            http,
            [
                "success",
                "denied",
                "denied",
                "client_error",
                "client_error",
                "rejected",
                "server_error",
                "rejected",
                "server_error"
            ]
        );
        let grpc: Vec<&str> = [0, 3, 4, 13, 14, 16].map(outcome_of_grpc).into();
        assert_eq!(grpc, ["success", "client_error", "server_error", "server_error", "rejected", "denied"]);
    }

    #[test]
    fn a_line_is_one_json_object_with_the_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let audit = Audit::open(&path).expect("open");
        let entry = Entry {
            request_id: "r1",
            trace_id: None,
            api_key: Some("ci"),
            client: Some("127.0.0.1:5000"),
            protocol: "http",
            operation: "POST /v2/models/m/infer",
            message: None,
            model: Some("m"),
            version: None,
            outcome: "success",
            status: 200,
            micros: 12,
        };
        audit.record(&entry);
        audit.record(&entry);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["api_key"], "ci");
        assert!(lines[0]["time"].as_str().is_some_and(|t| t.len() == 27 && t.ends_with('Z')), "{}", lines[0]);
        assert!(lines[0].get("trace_id").is_none());
        assert!(
            Audit::open(&dir.path().join("missing/audit.log")).is_err_and(|e| e.contains("cannot open the audit log"))
        );
    }
}
