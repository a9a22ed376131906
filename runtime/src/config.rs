//! The one configuration struct, with defaults, loaded from TOML and overridden by flags and
//! `NIMIFY_*` environment variables (the CLI applies those on top of [`Config::load`]).
//!
//! File lookup: the path given (`--config`), else `NIMIFY_CONFIG`, else `/etc/nimify/config.toml`
//! when it exists, else defaults. Unknown keys are errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default largest request body (64 MiB: real tensor payloads reach several MB).
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Where the service looks for a config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nimify/config.toml";

/// Everything the service can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub host: String,
    /// Listen port (HTTP).
    pub port: u16,
    /// Serve the Open Inference Protocol over gRPC too, on `grpc_port`.
    pub grpc: bool,
    /// gRPC listen port (0: a free one, logged).
    pub grpc_port: u16,
    /// Largest gRPC request message in bytes (0: the same as `max_body_bytes`; gRPC's usual 4 MiB
    /// is too small for real tensors).
    pub grpc_max_message_bytes: usize,
    /// HTTP/2 keep-alive pings on gRPC connections every this many milliseconds of silence, so
    /// load balancers keep long-lived channels open and dead peers are noticed (0: none).
    pub grpc_keepalive_interval_ms: u64,
    /// How long a keep-alive ping may go unanswered before the connection is closed, in
    /// milliseconds.
    pub grpc_keepalive_timeout_ms: u64,
    /// TLS certificate chain (PEM) for both ports; with `tls_key`, the server speaks only TLS.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: mutual TLS, clients without
    /// a valid certificate are refused during the handshake.
    pub tls_client_ca: Option<PathBuf>,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most bytes of output tensors one request may get (binary size; JSON text is not counted);
    /// more is a 422, decided before the outputs are copied out of ONNX Runtime (0: no limit).
    pub max_output_bytes: usize,
    /// Longest time a request may take, queueing included, in milliseconds (0: no limit).
    pub request_timeout_ms: u64,
    /// Most requests handled at once; more get 503 with Retry-After (0: no limit).
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    pub drain_timeout_ms: u64,
    /// After SIGTERM, how long the server keeps accepting and serving while readiness reads
    /// 503, so that Kubernetes can take the pod out of its endpoints first, in milliseconds. A
    /// second SIGTERM or Ctrl-C skips the rest of it.
    pub shutdown_delay_ms: u64,
    /// Longest a client may take to send a request's header section, in milliseconds, counted
    /// from the connection's start or from the first byte of a later request.
    pub header_read_timeout_ms: u64,
    /// Longest a kept-alive connection may sit idle between requests, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; past it new ones wait in the listen backlog. 0:
    /// the process's open-file limit less 64.
    pub max_connections: usize,
    /// Accepted API keys (prefer `api_keys_file` or `NIMIFY_API_KEYS`); empty with no file: no auth.
    pub api_keys: Vec<String>,
    /// File with one API key per line (e.g. a mounted Secret), each optionally `name:key`: the
    /// name (letters, digits, `_`, `-`, `.`) is what the audit log records.
    pub api_keys_file: Option<PathBuf>,
    /// Audit log: one JSON line per inference request (time, request and trace ids, API key
    /// name, client, model, outcome, status, duration) appended to this file, or `-` for stderr.
    /// Off when unset. Rotating the file is the operator's job (logrotate's `copytruncate`).
    pub audit_log: Option<PathBuf>,
    /// ONNX Runtime session options.
    pub session: SessionConfig,
    /// Dynamic batching.
    pub batching: BatchingConfig,
    /// Warm-up before ready.
    pub warmup: WarmupConfig,
    /// Directory holding the `#[nimify]` models by file name, instead of the paths compiled in
    /// (images set it through `NIMIFY_MODEL_DIR`).
    pub model_dir: Option<PathBuf>,
    /// Expected sha256 of the model file(s): one hex digest when the service has one model, or
    /// `name=digest` pairs separated by commas. The service refuses to start on a mismatch
    /// (images set it through `NIMIFY_MODEL_SHA256`).
    pub model_sha256: Option<String>,
    /// Payload logging: sampled request and response bodies sent as CloudEvents to a sink.
    pub payload_log: PayloadLogConfig,
    /// Drift and data-quality monitoring against reference profiles (`cargo nimify profile`).
    pub drift: DriftConfig,
    /// OpenTelemetry traces, when the standard `OTEL_*` variables do not say (they win).
    pub tracing: TracingConfig,
    /// A Triton-style model repository served beside (or instead of) the model files.
    pub repository: RepositoryConfig,
}

/// A model repository: `path/<name>/<version>/model.onnx`, each model with an optional
/// `config.toml` or `config.pbtxt`, and how it changes while serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoryConfig {
    /// The repository directory; none: only the model files given are served.
    pub path: Option<PathBuf>,
    /// `none`: loaded once at start; `poll`: new, changed and removed versions are picked up
    /// every `poll_interval_ms`; `explicit`: loaded and unloaded through the repository API.
    pub control_mode: ControlMode,
    /// How often `poll` mode reads the repository, in milliseconds.
    pub poll_interval_ms: u64,
    /// The models `explicit` mode loads at start (`*`: all; none by default, as Triton).
    pub load_models: Vec<String>,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        Self { path: None, control_mode: ControlMode::None, poll_interval_ms: 15_000, load_models: Vec::new() }
    }
}

/// How a model repository changes while serving (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ControlMode {
    /// Loaded once at start.
    #[default]
    None,
    /// Watched: changes are loaded and switched to, removed versions unloaded.
    Poll,
    /// Loaded and unloaded on request: `POST /v2/repository/models/{m}/load` and `/unload`
    /// (gRPC `RepositoryModelLoad` / `RepositoryModelUnload`).
    Explicit,
}

/// OpenTelemetry traces from the configuration file: each key stands for the standard variable
/// named beside it, which wins when set. Unset (and no variable): tracing is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector (`http://...` or `https://...`).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the default) or `grpc`.
    pub protocol: Option<String>,
    /// `OTEL_SERVICE_NAME`: the service's name in traces (default: the binary's).
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER`: e.g. `parentbased_traceidratio` (default `parentbased_always_on`).
    pub sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the `*traceidratio` samplers, 0 to 1.
    pub sampler_arg: Option<f64>,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: the PEM CA file an https collector is checked against.
    pub certificate: Option<String>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`: the client's certificate chain (mutual TLS).
    pub client_certificate: Option<String>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_KEY`: the client's key (mutual TLS).
    pub client_key: Option<String>,
}

impl TracingConfig {
    /// The value standing for the standard variable `name`, with the key that holds it.
    pub(crate) fn value_for(&self, name: &str) -> Option<(&'static str, String)> {
        match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => self.endpoint.clone().map(|v| ("tracing.endpoint", v)),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => self.protocol.clone().map(|v| ("tracing.protocol", v)),
            "OTEL_SERVICE_NAME" => self.service_name.clone().map(|v| ("tracing.service_name", v)),
            "OTEL_TRACES_SAMPLER" => self.sampler.clone().map(|v| ("tracing.sampler", v)),
            "OTEL_TRACES_SAMPLER_ARG" => self.sampler_arg.map(|v| ("tracing.sampler_arg", v.to_string())),
            "OTEL_EXPORTER_OTLP_CERTIFICATE" => self.certificate.clone().map(|v| ("tracing.certificate", v)),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" => {
                self.client_certificate.clone().map(|v| ("tracing.client_certificate", v))
            }
            "OTEL_EXPORTER_OTLP_CLIENT_KEY" => self.client_key.clone().map(|v| ("tracing.client_key", v)),
            _ => None,
        }
    }
}

/// Payload logging, as KServe's logger does: inference request and response bodies, sampled and
/// size-capped, sent as CloudEvents (HTTP binary mode) to `url` from a queue, never on the
/// request's path: a full queue or a failing sink drops events and counts them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayloadLogConfig {
    /// Where events are POSTed (`http://...`); unset: off.
    pub url: Option<String>,
    /// `all`, `request` or `response`: which bodies are sent.
    pub mode: PayloadLogMode,
    /// Share of inference requests logged, 0 to 1.
    pub sample_ratio: f64,
    /// Bodies above this many bytes are cut (the event says so, with the full size).
    pub max_bytes: usize,
    /// Events waiting to be sent; past it new ones are dropped (counted).
    pub queue_capacity: usize,
}

/// Which bodies payload logging sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadLogMode {
    /// Requests and responses.
    All,
    /// Requests only.
    Request,
    /// Responses only.
    Response,
}

impl Default for PayloadLogConfig {
    fn default() -> Self {
        Self { url: None, mode: PayloadLogMode::All, sample_ratio: 1.0, max_bytes: 64 * 1024, queue_capacity: 1024 }
    }
}

/// Drift monitoring: a sample of each model's requests compared with its reference profile, on
/// `/metrics` and `GET /v2/models/{model}/drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// The reference profile: a path when the service has one model, or `name=path` pairs
    /// separated by commas. It replaces a profile compiled in with `#[nimify(reference = ...)]`.
    pub reference: Option<String>,
    /// Share of requests sampled into the window, 0 to 1.
    pub sample_rate: f64,
    /// Most rows in the window: the newest are kept.
    pub window_rows: usize,
    /// Oldest a row in the window may be, in seconds (0: no age limit).
    pub window_seconds: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self { reference: None, sample_rate: DEFAULT_DRIFT_SAMPLE_RATE, window_rows: 10_000, window_seconds: 0 }
    }
}

/// The default share of requests sampled for drift (see the drift benchmark in the README).
pub const DEFAULT_DRIFT_SAMPLE_RATE: f64 = 0.1;

impl DriftConfig {
    /// The reference for `model` among `models` (all the service serves), when one is configured:
    /// `name=path` pairs (a name has no `/`), else one path for the service's one model.
    pub fn reference_for(&self, model: &str, models: &[&str]) -> Result<Option<PathBuf>, ConfigError> {
        let Some(spec) = self.reference.as_deref().map(str::trim).filter(|s| !s.is_empty()) else { return Ok(None) };
        let named = spec.split_once('=').is_some_and(|(name, _)| !name.contains('/'));
        if !named {
            if models.len() > 1 {
                return Err(ConfigError::Invalid(format!(
                    "drift.reference {spec:?} names one file but the service serves {} models ({}): give `name=path` pairs, separated by commas",
                    models.len(),
                    models.join(", ")
                )));
            }
            return Ok(Some(PathBuf::from(spec)));
        }
        let mut found = None;
        let mut seen = Vec::new();
        for entry in spec.split(',') {
            let Some((name, path)) = entry.split_once('=').map(|(n, p)| (n.trim(), p.trim())) else {
                return Err(ConfigError::Invalid(format!(
                    "drift.reference entry {entry:?} is not `name=path` (entries are separated by commas)"
                )));
            };
            if !models.contains(&name) {
                return Err(ConfigError::Invalid(format!(
                    "drift.reference names model {name:?}, which the service does not serve (it serves {})",
                    models.join(", ")
                )));
            }
            if seen.contains(&name) {
                return Err(ConfigError::Invalid(format!("drift.reference names model {name:?} twice")));
            }
            seen.push(name);
            if name == model {
                found = Some(PathBuf::from(path));
            }
        }
        Ok(found)
    }
}

/// An accepted API key, with the name the audit log records for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The name before the first `:` of a `name:key` entry.
    pub name: Option<String>,
    /// The key itself (never logged).
    pub key: String,
}

impl ApiKey {
    /// `name:key` (a name of letters, digits, `_`, `-` and `.`), else the whole entry is the key.
    /// A key that itself looks like `word:rest` is written with an empty name, `:word:rest`.
    pub fn parse(entry: &str) -> Self {
        let entry = entry.trim();
        if let Some(key) = entry.strip_prefix(':') {
            return Self { name: None, key: key.to_string() };
        }
        match entry.split_once(':') {
            Some((name, key))
                if !name.is_empty()
                    && !key.trim().is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
            {
                Self { name: Some(name.to_string()), key: key.trim().to_string() }
            }
            _ => Self { name: None, key: entry.to_string() },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: crate::DEFAULT_HOST.into(),
            port: crate::DEFAULT_PORT,
            grpc: true,
            grpc_port: crate::DEFAULT_GRPC_PORT,
            grpc_max_message_bytes: 0,
            grpc_keepalive_interval_ms: 60_000,
            grpc_keepalive_timeout_ms: 20_000,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_output_bytes: 256 * 1024 * 1024,
            request_timeout_ms: 60_000,
            max_in_flight: 4096,
            drain_timeout_ms: 30_000,
            shutdown_delay_ms: 5_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: 0,
            api_keys: Vec::new(),
            api_keys_file: None,
            audit_log: None,
            session: SessionConfig::default(),
            batching: BatchingConfig::default(),
            warmup: WarmupConfig::default(),
            model_dir: None,
            model_sha256: None,
            payload_log: PayloadLogConfig::default(),
            drift: DriftConfig::default(),
            tracing: TracingConfig::default(),
            repository: RepositoryConfig::default(),
        }
    }
}

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    /// No graph rewrites.
    Disable,
    /// Constant folding, redundant node removal.
    Basic,
    /// Plus node fusions.
    Extended,
    /// Everything, including layout optimisations.
    All,
}

impl std::str::FromStr for Optimization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s, "optimization level", "disable, basic, extended or all")
    }
}

/// A value of a lowercase enum from its name as the TOML file spells it (serde's `rename_all`),
/// so flags and environment variables take the same words; `what` and `choices` name them in
/// the error.
fn by_name<T: serde::de::DeserializeOwned>(s: &str, what: &str, choices: &str) -> Result<T, String> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(s)).map_err(|_| format!("unknown {what} {s:?}; use {choices}"))
}

/// Session options, applied to every session instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Threads inside one operator (0: one per CPU this process may use, i.e. its affinity mask
    /// and cgroup CPU quota as `std::thread::available_parallelism` sees them; ONNX Runtime's
    /// own default counts every core of the machine and pins its threads to them).
    pub intra_threads: usize,
    /// Threads across operators (0: ONNX Runtime's default).
    pub inter_threads: usize,
    /// Graph optimisation level.
    pub optimization: Optimization,
    /// ONNX Runtime's CPU memory arena. Unset: on for a model whose inputs have fixed dims past
    /// dim 0, whose runs then reuse one set of buffers (at most the largest batch's; malloc
    /// instead kept growing its heap: 10 MB more resident for the bench CNN); off for others,
    /// where the arena would keep every size it ever saw and resident memory would creep.
    pub memory_arena: Option<bool>,
    /// Sessions per model, each able to run one batch at a time.
    pub instances: usize,
    /// Let idle intra-op threads spin-wait for the next operator instead of sleeping: lower
    /// latency with several intra-op threads, at the price of CPU burnt between requests.
    pub spinning: bool,
    /// Keep each model's optimized graph (weights in a file ONNX Runtime maps) under
    /// `$NIMIFY_CACHE_DIR/models`, keyed on the ONNX Runtime build, this CPU and the model files,
    /// so later starts skip graph optimization and share the weights through the page cache.
    pub model_cache: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            intra_threads: 0,
            inter_threads: 0,
            optimization: Optimization::All,
            memory_arena: None,
            instances: 1,
            spinning: false,
            model_cache: true,
        }
    }
}

impl SessionConfig {
    /// The intra-op thread count sessions get: the configured one, or one per CPU this process
    /// may use.
    pub fn intra_threads(&self) -> usize {
        match self.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

/// Dynamic batching along dim 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Merge concurrent requests (only for models whose every input and output has a dynamic dim 0).
    pub enabled: bool,
    /// Most items (summed dim 0) in one execution.
    pub max_batch_size: usize,
    /// Longest the first request of a batch waits for others, in microseconds. 0 (Triton's
    /// default) batches only what is already queued: no added latency at low load, and under
    /// load requests pile up while the session runs, so batches still form.
    pub max_queue_delay_us: u64,
    /// Requests waiting per model; a full queue answers 503 with Retry-After.
    pub queue_capacity: usize,
    /// Batch sizes to aim for (Triton's `preferred_batch_size`): a batch that holds one of them
    /// runs without waiting out `max_queue_delay_us` when nothing more is queued, and a batch
    /// that reaches the largest stops collecting. Empty: only `max_batch_size` bounds a batch.
    pub preferred_batch_size: Vec<usize>,
    /// When to merge: `learned` (measure each batch size's cost per item while serving, and
    /// merge only while it falls) or `fixed` (merge whatever is queued, up to the bounds).
    pub policy: BatchPolicy,
    /// Executions up to this long (smoothed, in microseconds) run on the HTTP/gRPC threads,
    /// merged by the same rules, instead of a worker thread (whose hand-off costs two thread
    /// wake-ups per request); only with `max_queue_delay_us` 0. 0: always the workers.
    pub inline_below_us: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_batch_size: 32,
            max_queue_delay_us: 0,
            queue_capacity: 1024,
            preferred_batch_size: Vec::new(),
            policy: BatchPolicy::Learned,
            inline_below_us: 100,
        }
    }
}

/// When the batcher merges queued requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchPolicy {
    /// Merge only while the measured cost per item falls with the batch size (sizes not yet
    /// measured, or not measured lately, are tried).
    Learned,
    /// Merge whatever is queued, up to `max_batch_size` (and the largest preferred size).
    Fixed,
}

impl std::str::FromStr for BatchPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s, "batch policy", "learned or fixed")
    }
}

/// Warm-up run before the service reports ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupConfig {
    /// Run one inference per session instance before ready.
    pub enabled: bool,
    /// Sizes for named symbolic dims (others are 1).
    pub dims: BTreeMap<String, usize>,
    /// A V2 JSON inference request (the body of `POST /v2/models/{m}/infer`) whose inputs the
    /// warm-up runs instead of zeros, as Triton's `model_warmup` with an input data file: real
    /// values reach the code paths zeros skip. It must fit every model it warms up.
    pub request: Option<PathBuf>,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        Self { enabled: true, dims: BTreeMap::new(), request: None }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`] (unknown key, wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and its line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file named by `path`, `NIMIFY_CONFIG` or the default location; defaults when none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os("NIMIFY_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from);
        let chosen = match (path, from_env) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
        };
        match chosen {
            Some(p) => Self::from_file(&p),
            None => Ok(Self::default()),
        }
    }

    /// Parses one TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// Checks ranges and reads the API key file; returns every accepted key.
    pub fn validate(&self) -> Result<Vec<ApiKey>, ConfigError> {
        if self.session.instances == 0 {
            return Err(ConfigError::Invalid("session.instances must be at least 1, got 0".into()));
        }
        if self.batching.max_batch_size == 0 {
            return Err(ConfigError::Invalid("batching.max_batch_size must be at least 1, got 0".into()));
        }
        if let Some(n) =
            self.batching.preferred_batch_size.iter().find(|&&n| n == 0 || n > self.batching.max_batch_size)
        {
            return Err(ConfigError::Invalid(format!(
                "batching.preferred_batch_size {n} must be between 1 and max_batch_size ({})",
                self.batching.max_batch_size
            )));
        }
        let repository = &self.repository;
        if repository.path.is_none()
            && (repository.control_mode != ControlMode::None || !repository.load_models.is_empty())
        {
            return Err(ConfigError::Invalid(
                "repository.control_mode and repository.load_models need a model repository (--model-repository DIR)"
                    .into(),
            ));
        }
        if !repository.load_models.is_empty() && repository.control_mode != ControlMode::Explicit {
            return Err(ConfigError::Invalid(
                "repository.load_models (--load-model) is for explicit model control (--model-control-mode explicit); the other modes load every model".into(),
            ));
        }
        if repository.control_mode == ControlMode::Poll && repository.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid("repository.poll_interval_ms must be at least 1, got 0".into()));
        }
        if self.header_read_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "header_read_timeout_ms and idle_timeout_ms must be at least 1, got {} and {}: a connection that never times out lets idle clients use up the server's file descriptors",
                self.header_read_timeout_ms, self.idle_timeout_ms
            )));
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key go together: give both (--tls-cert and --tls-key) or neither".into(),
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS with client certificates".into(),
                ));
            }
            _ => {}
        }
        if self.grpc && self.grpc_port != 0 && self.grpc_port == self.port {
            return Err(ConfigError::Invalid(format!(
                "port and grpc_port are both {}: give gRPC its own port (--grpc-port) or turn it off (--no-grpc)",
                self.port
            )));
        }
        let log = &self.payload_log;
        if let Some(url) = &log.url
            && (!(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<axum::http::Uri>().map_or(true, |u| u.host().is_none()))
        {
            return Err(ConfigError::Invalid(format!(
                "payload_log.url {url:?} is not an http:// or https:// URL, e.g. http://127.0.0.1:8080/events"
            )));
        }
        if !(0.0..=1.0).contains(&log.sample_ratio) {
            return Err(ConfigError::Invalid(format!(
                "payload_log.sample_ratio must be between 0 and 1, got {}",
                log.sample_ratio
            )));
        }
        if !(0.0..=1.0).contains(&self.drift.sample_rate) {
            return Err(ConfigError::Invalid(format!(
                "drift.sample_rate must be between 0 and 1, got {}",
                self.drift.sample_rate
            )));
        }
        if self.drift.window_rows == 0 {
            return Err(ConfigError::Invalid("drift.window_rows must be at least 1, got 0".into()));
        }
        if log.queue_capacity == 0 {
            return Err(ConfigError::Invalid("payload_log.queue_capacity must be at least 1, got 0".into()));
        }
        if self.batching.queue_capacity == 0 {
            return Err(ConfigError::Invalid("batching.queue_capacity must be at least 1, got 0".into()));
        }
        let mut keys: Vec<ApiKey> =
            self.api_keys.iter().map(|k| ApiKey::parse(k)).filter(|k| !k.key.is_empty()).collect();
        if let Some(file) = &self.api_keys_file {
            let text =
                std::fs::read_to_string(file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            keys.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(ApiKey::parse),
            );
            if keys.is_empty() {
                return Err(ConfigError::Invalid(format!("api key file {} holds no key", file.display())));
            }
        }
        Ok(keys)
    }

    /// The largest gRPC message accepted.
    pub fn grpc_max_message_bytes(&self) -> usize {
        match self.grpc_max_message_bytes {
            0 => self.max_body_bytes,
            n => n,
        }
    }

    /// Request timeout, `None` when disabled.
    pub fn request_timeout(&self) -> Option<Duration> {
        (self.request_timeout_ms > 0).then(|| Duration::from_millis(self.request_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn choices_parse_by_their_toml_names_and_name_the_others_when_wrong() {
        use std::str::FromStr;
        for (name, level) in [
            ("disable", Optimization::Disable),
            ("basic", Optimization::Basic),
            ("extended", Optimization::Extended),
            ("all", Optimization::All),
        ] {
            assert_eq!(Optimization::from_str(name), Ok(level));
        }
        assert_eq!(BatchPolicy::from_str("learned"), Ok(BatchPolicy::Learned));
        assert_eq!(BatchPolicy::from_str("fixed"), Ok(BatchPolicy::Fixed));
        assert_eq!(
            Optimization::from_str("All"),
            Err("unknown optimization level \"All\"; use disable, basic, extended or all".to_string())
        );
        assert_eq!(BatchPolicy::from_str(""), Err("unknown batch policy \"\"; use learned or fixed".to_string()));
    }

    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("port = 1\nbogus = 2\n").expect_err("unknown key");
        assert!(err.contains("bogus"), "{err}");
        let err = Config::from_toml("[batching]\nmax_batch = 2\n").expect_err("unknown nested key");
        assert!(err.contains("max_batch"), "{err}");
        let err = Config::from_toml("port = \"eighty\"\n").expect_err("wrong type");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn partial_files_keep_defaults() {
        let c =
            Config::from_toml("[batching]\nmax_batch_size = 8\n[session]\ninstances = 2\noptimization = \"basic\"\n")
                .expect("valid");
        assert_eq!(c.batching.max_batch_size, 8);
        assert_eq!(c.batching.queue_capacity, BatchingConfig::default().queue_capacity);
        assert_eq!(c.session.instances, 2);
        assert_eq!(c.session.optimization, Optimization::Basic);
        assert_eq!(c.port, crate::DEFAULT_PORT);
    }

    #[test]
    fn the_default_config_round_trips() {
        let text = toml::to_string(&Config::default()).expect("serialize");
        assert_eq!(Config::from_toml(&text).expect("parse"), Config::default());
    }
}
