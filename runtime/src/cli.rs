//! The flags, `NIMIFY_*` environment variables and config file every nimify service accepts,
//! whether it is `cargo nimify serve x.onnx` or a typed service's own binary ([`run`]).
//!
//! Settings layer as flags > `NIMIFY_*` env > config file > defaults: every flag is optional and,
//! when given (or its env twin is set), overrides the file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Optimization};
use crate::server::ServerBuilder;

/// Service settings as flags with `NIMIFY_*` environment twins.
#[derive(Debug, Clone, Default, Args)]
pub struct ServiceArgs {
    /// TOML config file (default: $NIMIFY_CONFIG, else /etc/nimify/config.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, global = true, env = "NIMIFY_HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one and logs it [default: 8000].
    #[arg(long, global = true, env = "NIMIFY_PORT")]
    pub port: Option<u16>,
    /// gRPC port (Triton's and KServe's gRPC clients); 0 picks a free one and logs it [default: 8001].
    #[arg(long, global = true, env = "NIMIFY_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Do not serve gRPC (HTTP only).
    #[arg(long, global = true, env = "NIMIFY_NO_GRPC", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_grpc: bool,
    /// Largest gRPC request message in bytes; 0: the same as --max-body-bytes [default: 0].
    #[arg(long, global = true, env = "NIMIFY_GRPC_MAX_MESSAGE_BYTES")]
    pub grpc_max_message_bytes: Option<usize>,
    /// HTTP/2 keep-alive ping interval on gRPC connections in milliseconds; 0 disables [default: 60000].
    #[arg(long, global = true, env = "NIMIFY_GRPC_KEEPALIVE_INTERVAL_MS")]
    pub grpc_keepalive_interval_ms: Option<u64>,
    /// TLS certificate chain (PEM) for both ports; needs --tls-key.
    #[arg(long, global = true, env = "NIMIFY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, global = true, env = "NIMIFY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS, clients without one are refused.
    #[arg(long, global = true, env = "NIMIFY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest request body in bytes; larger gets 413 [default: 67108864].
    #[arg(long, global = true, env = "NIMIFY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most bytes of output tensors per request; more gets 422; 0 disables [default: 268435456].
    #[arg(long, global = true, env = "NIMIFY_MAX_OUTPUT_BYTES")]
    pub max_output_bytes: Option<usize>,
    /// Request time limit in milliseconds, queueing included; 0 disables [default: 60000].
    #[arg(long, global = true, env = "NIMIFY_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Most requests in flight; more get 503 with Retry-After; 0 disables [default: 4096].
    #[arg(long, global = true, env = "NIMIFY_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// How long shutdown waits for in-flight requests, in milliseconds [default: 30000].
    #[arg(long, global = true, env = "NIMIFY_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// After SIGTERM, keep serving this long (readiness 503) so endpoints can be removed; a second signal skips it [default: 5000].
    #[arg(long, global = true, env = "NIMIFY_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// Close connections that do not send a request's headers within this many milliseconds [default: 10000].
    #[arg(long, global = true, env = "NIMIFY_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Close kept-alive connections idle for this many milliseconds [default: 75000].
    #[arg(long, global = true, env = "NIMIFY_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Most open client connections; 0: the open-file limit less 64 [default: 0].
    #[arg(long, global = true, env = "NIMIFY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// File with one API key per line; requests then need `Authorization: Bearer` or `x-api-key`.
    #[arg(long, global = true, env = "NIMIFY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Payload logging: POST sampled inference request/response bodies as CloudEvents here.
    #[arg(long, global = true, env = "NIMIFY_PAYLOAD_LOG_URL", value_name = "URL")]
    pub payload_log_url: Option<String>,
    /// Which bodies payload logging sends [default: all].
    #[arg(long, global = true, env = "NIMIFY_PAYLOAD_LOG_MODE", value_enum)]
    pub payload_log_mode: Option<crate::config::PayloadLogMode>,
    /// Share of inference requests payload logging sends, 0 to 1 [default: 1].
    #[arg(long, global = true, env = "NIMIFY_PAYLOAD_LOG_SAMPLE_RATIO")]
    pub payload_log_sample_ratio: Option<f64>,
    /// Audit log: one JSON line per inference request appended to this file (`-`: stderr).
    #[arg(long, global = true, env = "NIMIFY_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Comma-separated API keys (environment only, so they stay out of `ps`).
    #[arg(
        long = "api-keys-from-env-only",
        global = true,
        env = "NIMIFY_API_KEYS",
        hide = true,
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub api_keys: Option<Vec<String>>,
    /// ONNX Runtime intra-op threads; 0: one per CPU this process may use [default: 0].
    #[arg(long, global = true, env = "NIMIFY_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Idle intra-op threads spin-wait for work instead of sleeping [default: false].
    #[arg(long, global = true, env = "NIMIFY_SPINNING")]
    pub spinning: Option<bool>,
    /// ONNX Runtime inter-op threads; 0 lets ONNX Runtime choose [default: 0].
    #[arg(long, global = true, env = "NIMIFY_INTER_THREADS")]
    pub inter_threads: Option<usize>,
    /// Graph optimization: disable, basic, extended or all [default: all].
    #[arg(long, global = true, env = "NIMIFY_OPTIMIZATION")]
    pub optimization: Option<Optimization>,
    /// Use ONNX Runtime's CPU memory arena (one set of buffers reused; memory grows with shapes)
    /// [default: on for models whose inputs have fixed dims past the batch dim].
    #[arg(long, global = true, env = "NIMIFY_MEMORY_ARENA")]
    pub memory_arena: Option<bool>,
    /// Cache each model's optimized graph (keyed on ONNX Runtime, this CPU and the model files)
    /// under $NIMIFY_CACHE_DIR/models, so later starts skip optimization [default: true].
    #[arg(long, global = true, env = "NIMIFY_MODEL_CACHE")]
    pub model_cache: Option<bool>,
    /// Session instances per model, each running one batch at a time [default: 1].
    #[arg(long, global = true, env = "NIMIFY_INSTANCES")]
    pub instances: Option<usize>,
    /// Merge concurrent requests along dim 0 when the model allows it [default: true].
    #[arg(long, global = true, env = "NIMIFY_BATCHING")]
    pub batching: Option<bool>,
    /// Most items per execution [default: 32].
    #[arg(long, global = true, env = "NIMIFY_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Longest the first request of a batch waits for others, in microseconds; 0 batches only what is already queued [default: 0].
    #[arg(long, global = true, env = "NIMIFY_MAX_QUEUE_DELAY_US")]
    pub max_queue_delay_us: Option<u64>,
    /// When to merge requests: learned (only while the measured cost per item falls) or fixed (whatever is queued) [default: learned].
    #[arg(long, global = true, env = "NIMIFY_BATCH_POLICY")]
    pub batch_policy: Option<crate::config::BatchPolicy>,
    /// Batch sizes to aim for, comma-separated (Triton's preferred_batch_size) [default: none].
    #[arg(long, global = true, env = "NIMIFY_PREFERRED_BATCH_SIZE", value_delimiter = ',')]
    pub preferred_batch_size: Option<Vec<usize>>,
    /// Requests waiting per model before 503 [default: 1024].
    #[arg(long, global = true, env = "NIMIFY_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Run one inference per session before reporting ready [default: true].
    #[arg(long, global = true, env = "NIMIFY_WARMUP")]
    pub warmup: Option<bool>,
    /// Warm up with the inputs of this V2 JSON inference request instead of zeros.
    #[arg(long, global = true, env = "NIMIFY_WARMUP_REQUEST")]
    pub warmup_request: Option<PathBuf>,
    /// Load the service's models from this directory (by file name) instead of the compiled-in paths.
    #[arg(long, global = true, env = "NIMIFY_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Refuse to start unless the model file has this sha256 (`name=digest,...` for several models).
    #[arg(long, global = true, env = "NIMIFY_MODEL_SHA256")]
    pub model_sha256: Option<String>,
    /// Reference profile for drift monitoring (`cargo nimify profile`): a path, or `name=path`
    /// pairs separated by commas when the service has several models.
    #[arg(long, global = true, env = "NIMIFY_REFERENCE", value_name = "PROFILE")]
    pub reference: Option<String>,
    /// Share of requests sampled for drift, 0 to 1.
    #[arg(long, global = true, env = "NIMIFY_DRIFT_SAMPLE_RATE")]
    pub drift_sample_rate: Option<f64>,
    /// Most rows in each drift window.
    #[arg(long, global = true, env = "NIMIFY_DRIFT_WINDOW_ROWS")]
    pub drift_window_rows: Option<usize>,
    /// Oldest a row in a drift window may be, in seconds (0: no age limit).
    #[arg(long, global = true, env = "NIMIFY_DRIFT_WINDOW_SECONDS")]
    pub drift_window_seconds: Option<u64>,
    /// A Triton-style model repository to serve: DIR/NAME/VERSION/model.onnx, each model with
    /// an optional config.toml or config.pbtxt.
    #[arg(long, global = true, env = "NIMIFY_MODEL_REPOSITORY", value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// How the model repository changes while serving: none (loaded once), poll (watched) or
    /// explicit (POST /v2/repository/models/{m}/load and /unload) [default: none].
    #[arg(long, global = true, env = "NIMIFY_MODEL_CONTROL_MODE", value_enum)]
    pub model_control_mode: Option<crate::config::ControlMode>,
    /// How often poll mode reads the model repository, in milliseconds [default: 15000].
    #[arg(long, global = true, env = "NIMIFY_REPOSITORY_POLL_INTERVAL_MS")]
    pub repository_poll_interval_ms: Option<u64>,
    /// A model explicit mode loads at start (repeat, or separate with commas; `*`: all).
    #[arg(long, global = true, env = "NIMIFY_LOAD_MODEL", value_name = "NAME", value_delimiter = ',')]
    pub load_model: Option<Vec<String>>,
    /// Log lines as text or json [default: text on a terminal, json otherwise].
    #[arg(long, global = true, env = "NIMIFY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines, for people at a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

macro_rules! layer {
    ($($target:expr => $flag:expr),* $(,)?) => {
        $(if let Some(v) = $flag { $target = v; })*
    };
}

impl ServiceArgs {
    /// The file (or defaults) with every given flag and env var applied.
    pub fn config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        layer! {
            c.host => self.host.clone(),
            c.port => self.port,
            c.grpc_port => self.grpc_port,
            c.grpc_max_message_bytes => self.grpc_max_message_bytes,
            c.grpc_keepalive_interval_ms => self.grpc_keepalive_interval_ms,
            c.tls_cert => self.tls_cert.clone().map(Some),
            c.tls_key => self.tls_key.clone().map(Some),
            c.tls_client_ca => self.tls_client_ca.clone().map(Some),
            c.max_body_bytes => self.max_body_bytes,
            c.max_output_bytes => self.max_output_bytes,
            c.request_timeout_ms => self.request_timeout_ms,
            c.max_in_flight => self.max_in_flight,
            c.drain_timeout_ms => self.drain_timeout_ms,
            c.shutdown_delay_ms => self.shutdown_delay_ms,
            c.header_read_timeout_ms => self.header_read_timeout_ms,
            c.idle_timeout_ms => self.idle_timeout_ms,
            c.max_connections => self.max_connections,
            c.api_keys => self.api_keys.clone(),
            c.session.intra_threads => self.intra_threads,
            c.session.inter_threads => self.inter_threads,
            c.session.optimization => self.optimization,
            c.session.memory_arena => self.memory_arena.map(Some),
            c.session.instances => self.instances,
            c.session.spinning => self.spinning,
            c.session.model_cache => self.model_cache,
            c.batching.enabled => self.batching,
            c.batching.max_batch_size => self.max_batch_size,
            c.batching.max_queue_delay_us => self.max_queue_delay_us,
            c.batching.queue_capacity => self.queue_capacity,
            c.batching.policy => self.batch_policy,
            c.batching.preferred_batch_size => self.preferred_batch_size.clone(),
            c.warmup.enabled => self.warmup,
        }
        if self.no_grpc {
            c.grpc = false;
        }
        if self.api_keys_file.is_some() {
            c.api_keys_file.clone_from(&self.api_keys_file);
        }
        if self.audit_log.is_some() {
            c.audit_log.clone_from(&self.audit_log);
        }
        if self.payload_log_url.is_some() {
            c.payload_log.url.clone_from(&self.payload_log_url);
        }
        layer! {
            c.payload_log.mode => self.payload_log_mode,
            c.payload_log.sample_ratio => self.payload_log_sample_ratio,
        }
        if self.reference.is_some() {
            c.drift.reference.clone_from(&self.reference);
        }
        layer! {
            c.drift.sample_rate => self.drift_sample_rate,
            c.drift.window_rows => self.drift_window_rows,
            c.drift.window_seconds => self.drift_window_seconds,
        }
        if self.warmup_request.is_some() {
            c.warmup.request.clone_from(&self.warmup_request);
        }
        if self.model_dir.is_some() {
            c.model_dir.clone_from(&self.model_dir);
        }
        if self.model_sha256.is_some() {
            c.model_sha256.clone_from(&self.model_sha256);
        }
        if self.model_repository.is_some() {
            c.repository.path.clone_from(&self.model_repository);
        }
        layer! {
            c.repository.control_mode => self.model_control_mode,
            c.repository.poll_interval_ms => self.repository_poll_interval_ms,
            c.repository.load_models => self.load_model.clone(),
        }
        Ok(c)
    }
}

/// A typed service's command line: serve (the default) or probe a running instance.
#[derive(Debug, Parser)]
#[command(version, about = "An ONNX model service built with nimify")]
pub(crate) struct ServiceCli {
    /// Serve (default) or run a health check.
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
    /// Settings.
    #[command(flatten)]
    pub args: ServiceArgs,
}

/// Subcommands of a service binary.
#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Serve the models (what runs without a subcommand).
    Serve,
    /// Exit 0 when the service on the configured port answers ready, 1 otherwise (images have no curl).
    Healthcheck,
    /// Print the models this binary serves as JSON (name and compiled-in path), for `cargo nimify image`.
    #[command(hide = true)]
    Manifest,
}

/// The `main` of a service: parses the command line, sets up logging, builds the server with
/// `register` and serves until SIGTERM or Ctrl-C. Errors are one line on stderr and exit code 1.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     nimify::cli::run(|server| server)
/// }
/// ```
pub fn run(register: impl FnOnce(ServerBuilder) -> ServerBuilder) -> ExitCode {
    let cli = ServiceCli::parse();
    let result = match cli.command {
        Some(ServiceCommand::Healthcheck) => healthcheck(&cli.args),
        Some(ServiceCommand::Manifest) => manifest(register),
        Some(ServiceCommand::Serve) | None => serve(&cli.args, register),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime: one thread when the process may use one CPU (its affinity mask and cgroup
/// CPU quota, as `std::thread::available_parallelism` sees them) or `TOKIO_WORKER_THREADS` is 1,
/// tokio's multi-thread runtime with one worker per CPU (or that many) otherwise. On one CPU the
/// multi-thread scheduler's single worker costs its cross-thread queues and wake-ups for nothing:
/// the MLP over V2 binary at concurrency 32 on one core took 19.5 µs of server CPU per request on
/// it and 16.4 on the one-thread runtime.
fn async_runtime() -> Result<tokio::runtime::Runtime, String> {
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("TOKIO_WORKER_THREADS={v:?} is not a thread count; use a whole number from 1")),
        },
        Err(_) => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build().map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Builds and serves with the given settings.
pub fn serve(args: &ServiceArgs, register: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Result<(), String> {
    let config = args.config().map_err(|e| e.to_string())?;
    let tracing_settings = crate::telemetry::settings_with_file(|k| std::env::var(k).ok(), &config.tracing)?;
    let runtime = async_runtime()?;
    // The exporter sends its batches from a task on the server's runtime.
    let tracing = match &tracing_settings {
        Some(settings) => {
            let _runtime = runtime.enter();
            Some(crate::telemetry::Tracing::start(settings, &service_name())?)
        }
        None => None,
    };
    crate::logging::init(args.log_format, tracing.as_ref());
    if let Some(s) = &tracing_settings {
        tracing::info!(endpoint = %s.endpoint, protocol = ?s.protocol, "exporting traces over OTLP");
    }
    let address = format!("{}:{}", config.host, config.port);
    let grpc_address = config.grpc.then(|| format!("{}:{}", config.host, config.grpc_port));
    let mut builder = register(ServerBuilder::new(config));
    let loading = builder.prepare_loading().map_err(|e| e.to_string())?;
    let result = runtime.block_on(async move {
        // The ports open first: while the models load and warm up, probes get "not ready"
        // (HTTP 503, gRPC health NOT_SERVING) instead of a refused connection.
        let http = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}; pick another --port or stop what uses it"))?;
        let grpc = match grpc_address {
            None => None,
            Some(a) => Some(tokio::net::TcpListener::bind(&a).await.map_err(|e| {
                format!("cannot listen for gRPC on {a}: {e}; pick another --grpc-port, or --no-grpc to serve HTTP only")
            })?),
        };
        let load = move || builder.build().map_err(|e| e.to_string());
        crate::serving::serve_after_loading(crate::Listeners { http, grpc }, loading, load, crate::shutdown_signal())
            .await?
            .map_err(|e| format!("server failed: {e}"))
    });
    // The spans still queued go out before the runtime that sends them stops: the exporter's
    // task runs on it, so it is driven while a blocking thread waits for the export (a
    // one-thread runtime runs nothing outside `block_on`).
    if let Some(tracing) = tracing {
        let _ = runtime.block_on(async move { tokio::task::spawn_blocking(move || tracing.shutdown()).await });
    }
    // A load still running after a shutdown signal is abandoned, not waited for.
    runtime.shutdown_background();
    result
}

/// The service's name in traces when `OTEL_SERVICE_NAME` gives none: the binary's name
/// (`nimify` for the generic server, `cargo nimify serve`).
fn service_name() -> String {
    let exe = std::env::current_exe().ok().and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    match exe.as_deref() {
        None | Some("cargo-nimify") => "nimify".into(),
        Some(name) => name.to_string(),
    }
}

/// Prints the [`ServiceManifest`](nimify_model::contract::ServiceManifest) (the models and their
/// files) without loading anything.
fn manifest(register: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Result<(), String> {
    use nimify_model::contract::{PlannedModel, ServiceManifest};
    let models = register(ServerBuilder::default())
        .planned_models()
        .into_iter()
        .map(|(name, path)| PlannedModel { name, path })
        .collect();
    let json = ServiceManifest::new(models).to_json().map_err(|e| format!("cannot list the models: {e}"))?;
    println!("{json}");
    Ok(())
}

fn healthcheck(args: &ServiceArgs) -> Result<(), String> {
    use std::io::{Read, Write};
    let config = args.config().map_err(|e| e.to_string())?;
    let host = if config.host == "0.0.0.0" { "127.0.0.1".to_string() } else { config.host.clone() };
    let address = format!("{host}:{}", config.port);
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{address} is not answering: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    if response.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("{address} is not ready: {}", response.lines().next().unwrap_or("no answer")))
    }
}
