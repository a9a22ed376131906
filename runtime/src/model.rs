//! A served model: its signature (read by `nimify-model`, checked against what ONNX Runtime
//! loaded) and its session. Inference runs on the blocking thread pool, never on the async
//! runtime's workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nimify_model::{Dim, ElementType, ModelInfo, ValueType};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use tokio::sync::oneshot;

use crate::batcher::{Core, Inline, Job, Outputs, Submitted, Worker, run_session};
use crate::config::{BatchingConfig, Optimization, SessionConfig, WarmupConfig};
use crate::error::ApiError;
use crate::metrics::{Metrics, ModelMetrics};
use crate::model_cache::{Cache, EXTERNAL_FROM_BYTES, Saving};
use crate::tensor::Tensor;

/// The version every model is served under.
pub const DEFAULT_VERSION: &str = "1";

/// How to load one model. Session, batching and warm-up settings left `None` come from the
/// server's [`crate::config::Config`].
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Path to the `.onnx` file.
    pub path: PathBuf,
    /// Served name; the file stem when `None`.
    pub name: Option<String>,
    /// Served version; "1" when `None` (a repository's version directory).
    pub version: Option<u64>,
    /// Session options for this model.
    pub session: Option<SessionConfig>,
    /// Batching for this model.
    pub batching: Option<BatchingConfig>,
    /// Warm-up for this model.
    pub warmup: Option<WarmupConfig>,
    /// Dims that replace what the file declares for some tensors (a `#[nimify]` service's
    /// `dims(...)`): for models that declare shapes they do not produce.
    pub dims: Vec<(String, Vec<Dim>)>,
    /// The reference profile drift is measured against; none: no drift monitoring.
    pub reference: Option<crate::drift::Reference>,
}

impl ModelOptions {
    /// Options for the model at `path` with defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    /// Serves the model under `name` instead of the file stem.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name the model is served under.
    pub fn served_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        })
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The signature could not be read (missing, truncated or not ONNX).
    #[error("model {path}: {source}")]
    Signature {
        /// Model path.
        path: PathBuf,
        /// Reader error.
        source: nimify_model::ModelError,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// ONNX Runtime itself is missing or unusable.
    #[error(transparent)]
    Runtime(#[from] crate::ortlib::OrtLibError),
    /// ONNX Runtime refused the model.
    #[error("model {path}: ONNX Runtime cannot load it: {reason}")]
    Session {
        /// Model path.
        path: PathBuf,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model file's signature is not the one the service was compiled against.
    #[error(
        "model {path}: its signature differs from the one compiled into this service (rebuild the service against this model file, or restore the model it was built with)\n  compiled in: {compiled}\n  in the file: {found}"
    )]
    SignatureMismatch {
        /// Model path.
        path: PathBuf,
        /// What the code expects.
        compiled: String,
        /// What the file declares.
        found: String,
    },
    /// The model file is not the one the image was built with (`NIMIFY_MODEL_SHA256`).
    #[error(
        "model {name} at {path} has sha256 {found}, but NIMIFY_MODEL_SHA256 expects {expected}; the model file was changed after the image was built: rebuild the image with `cargo nimify image` or restore the model"
    )]
    DigestMismatch {
        /// Served name.
        name: String,
        /// Model path.
        path: PathBuf,
        /// The configured digest.
        expected: String,
        /// The file's digest.
        found: String,
    },
    /// A dims override names a tensor the model does not have, or one that is not a tensor.
    #[error("model {path}: cannot override the dims of {tensor:?}: {reason}")]
    DimsOverride {
        /// Model path.
        path: PathBuf,
        /// The tensor named.
        tensor: String,
        /// Why not.
        reason: String,
    },
    /// The reference profile cannot be read, or was made for another model.
    #[error(
        "model {model}: reference profile {origin}: {reason}; make one for this model with `cargo nimify profile --model <model.onnx> --data <sample>`"
    )]
    Reference {
        /// Served name.
        model: String,
        /// Where the profile was read from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// Warm-up produced outputs whose fixed dims differ from the compiled-in signature.
    #[error("model {path}: {detail}")]
    ShapeMismatch {
        /// Model path.
        path: PathBuf,
        /// Declared and produced shapes, and the fix.
        detail: String,
    },
    /// The warm-up request (`warmup.request`) cannot be read or does not fit the model.
    #[error("model {model}: warm-up request {path}: {reason}")]
    WarmupRequest {
        /// Served name.
        model: String,
        /// The request file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The model repository, or a model directory in it, cannot be read.
    #[error(transparent)]
    Layout(#[from] crate::repository::layout::LayoutError),
    /// Models of the model repository failed to load (one line each).
    #[error("{0}")]
    Repository(String),
    /// The model takes an input type the protocol cannot carry.
    #[error(
        "model {path}: input {input:?} has type {ty}, which nimify cannot accept over the inference protocol; export the model with tensor inputs of a supported element type"
    )]
    UnsupportedInput {
        /// Model path.
        path: PathBuf,
        /// Input name.
        input: String,
        /// ONNX type spelling.
        ty: String,
    },
}

/// The protocol-level view of one input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Exact tensor name.
    pub name: String,
    /// Element type as carried on the wire (`String` for BYTES, also for non-tensor outputs).
    pub elem: ElementType,
    /// Declared dims; `None` when the rank is unknown.
    pub shape: Option<Vec<Dim>>,
}

impl TensorSpec {
    /// Rank at least 1 with a dim 0 that is not fixed (what batching along dim 0 needs).
    pub fn dynamic_dim0(&self) -> bool {
        self.shape.as_ref().and_then(|d| d.first()).is_some_and(Dim::is_dynamic)
    }

    /// KServe V2 datatype name.
    pub fn datatype(&self) -> &'static str {
        self.elem.kserve_name().unwrap_or("BYTES")
    }

    /// Shape as metadata shows it (`-1` for anything not fixed).
    pub fn metadata_shape(&self) -> Vec<i64> {
        match &self.shape {
            Some(dims) => dims.iter().map(Dim::as_i64).collect(),
            None => vec![-1],
        }
    }
}

/// A loaded model ready to serve.
pub struct Model {
    name: String,
    version: String,
    path: PathBuf,
    info: ModelInfo,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Every input and output has a dynamic dim 0: a request holds dim-0 items.
    batchable: bool,
    /// Whether requests are merged along dim 0 (the model allows it and batching is on).
    batching: Option<BatchingConfig>,
    queue: SyncSender<Job>,
    /// Short requests' way, past the queue.
    inline: Arc<Inline>,
    /// Whether the sessions use ONNX Runtime's memory arena (configured, or chosen by the inputs).
    memory_arena: bool,
    metrics: ModelMetrics,
    max_output_bytes: Option<usize>,
    /// Outputs whose declared fixed dims warm-up contradicted, described.
    shape_lie: Option<String>,
    /// Session instances, each with its worker thread.
    instances: usize,
    /// Drift monitoring, when the model has a reference profile.
    drift: Option<Arc<crate::drift::Drift>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

/// Resolved settings for loading one model.
pub(crate) struct LoadSettings<'a> {
    pub session: &'a SessionConfig,
    pub batching: &'a BatchingConfig,
    pub warmup: &'a WarmupConfig,
    pub metrics: &'a Metrics,
    pub max_output_bytes: Option<usize>,
    pub drift: &'a crate::config::DriftConfig,
}

impl Model {
    /// Reads the signature, opens the session instances, warms them up and starts one worker
    /// thread per instance.
    pub(crate) fn load(options: &ModelOptions, settings: &LoadSettings<'_>) -> Result<Self, LoadError> {
        let path = options.path.clone();
        let mut info =
            nimify_model::read_model(&path).map_err(|source| LoadError::Signature { path: path.clone(), source })?;
        override_dims(&mut info, &options.dims).map_err(|(tensor, reason)| LoadError::DimsOverride {
            path: path.clone(),
            tensor,
            reason,
        })?;
        let (inputs, outputs) = specs(&path, &info)?;
        let env = crate::ortlib::environment()?;
        let name = options.served_name();
        let version = options.version.map_or_else(|| DEFAULT_VERSION.to_string(), |v| v.to_string());
        let metrics = settings.metrics.model(&name, &version);
        let drift = match &options.reference {
            Some(reference) => {
                let profile = crate::drift::load_reference(reference, &name, &info)?;
                crate::drift::compare_digest(&profile, &name, &path);
                Some(
                    crate::drift::Drift::new(
                        &name,
                        &version,
                        reference.origin(),
                        &profile,
                        settings.drift,
                        settings.metrics.drift_counters(),
                    )
                    .start(),
                )
            }
            None => None,
        };
        let batchable = !inputs.is_empty() && inputs.iter().chain(&outputs).all(TensorSpec::dynamic_dim0);
        let batching = (batchable && settings.batching.enabled).then(|| settings.batching.clone());
        let input_names = Arc::new(inputs.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
        let (queue, rx) = std::sync::mpsc::sync_channel(settings.batching.queue_capacity);
        let shared = Arc::new(Mutex::new((rx, None)));
        let mut shape_lie = None;
        let warmup = match settings.warmup.enabled {
            true => Some(warmup_inputs(&name, &inputs, &outputs, settings.warmup)?),
            false => None,
        };
        let mut cache = Cache::new(&path, &external_files(&path, &info), settings.session).map(|cache| CacheUse {
            graph: cache.load(),
            cache,
            refused: false,
        });
        let mut cores = Vec::new();
        let inline_limit = Arc::new(AtomicU64::new(0));
        let mut session_config = settings.session.clone();
        session_config.memory_arena = Some(session_config.memory_arena.unwrap_or_else(|| fixed_past_dim0(&inputs)));
        for instance in 0..settings.session.instances.max(1) {
            // Opened, warmed up and run on its worker thread: ONNX Runtime's buffers then come
            // from that thread's malloc arena, where the warm-up run's freed activations are
            // reused by every later run (opened elsewhere, the first request allocated them
            // afresh in the worker's arena: 33 MB more resident for the bench CNN).
            let (opened, reply) = std::sync::mpsc::channel();
            let setup = Setup {
                path: path.clone(),
                session: session_config.clone(),
                cache: cache.take(),
                warmup: warmup.clone(),
                name: name.clone(),
                input_names: Arc::clone(&input_names),
                batching: batching.clone(),
                inline_below_us: settings.batching.inline_below_us,
                metrics: metrics.clone(),
                max_output_bytes: settings.max_output_bytes,
                inline_limit: Arc::clone(&inline_limit),
                queue: Arc::clone(&shared),
            };
            std::thread::Builder::new()
                .name(format!("nimify-{name}-{instance}"))
                .spawn(move || setup.open_and_serve(env, &opened))
                .map_err(|e| LoadError::Session {
                    path: path.clone(),
                    reason: format!("cannot start a worker thread: {e}"),
                })?;
            let Opened { core, produced, cache: back } = reply
                .recv()
                .unwrap_or_else(|_| Err("the worker thread stopped while loading".to_string()))
                .map_err(|reason| LoadError::Session { path: path.clone(), reason })?;
            cache = back;
            if let Some(produced) = produced
                && instance == 0
            {
                shape_lie = declared_vs_produced(&outputs, &produced);
            }
            cores.push(core);
        }
        let max_output_bytes = settings.max_output_bytes;
        if let Some(lie) = &shape_lie {
            tracing::warn!(model = %name, "{lie}; V2 answers carry the shapes really produced");
        }
        let inline = Arc::new(Inline::new(
            name.clone(),
            cores,
            inline_limit,
            queue.clone(),
            settings.batching.queue_capacity,
            metrics.clone(),
        ));
        Ok(Self {
            name,
            version,
            path,
            info,
            inputs,
            outputs,
            batchable,
            batching,
            inline,
            memory_arena: session_config.memory_arena.unwrap_or(false),
            queue,
            metrics,
            max_output_bytes,
            shape_lie,
            instances: settings.session.instances.max(1),
            drift,
        })
    }

    /// Drift monitoring, when the model has a reference profile.
    pub(crate) fn drift(&self) -> Option<&Arc<crate::drift::Drift>> {
        self.drift.as_ref()
    }

    /// Whether the sessions use ONNX Runtime's memory arena.
    pub fn memory_arena(&self) -> bool {
        self.memory_arena
    }

    /// Session instances serving the model.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// Served name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Served version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// File the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signature read from the file.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Inputs as the protocol sees them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Outputs as the protocol sees them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The batching really in use; `None` when requests run one by one.
    pub fn batching(&self) -> Option<&BatchingConfig> {
        self.batching.as_ref()
    }

    /// Most output bytes one request may get; `None`: no limit.
    pub(crate) fn max_output_bytes(&self) -> Option<usize> {
        self.max_output_bytes
    }

    /// Outputs whose declared fixed dims warm-up contradicted (declared and produced shapes),
    /// when any did.
    pub fn shape_lie(&self) -> Option<&str> {
        self.shape_lie.as_deref()
    }

    /// This model's metric handles.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// Requests gathered for its next round on the runtime's threads, and the tasks serving
    /// rounds.
    #[cfg(test)]
    pub(crate) fn gathered(&self) -> (usize, usize) {
        self.inline.gathered()
    }

    /// Its session instances.
    #[cfg(test)]
    pub(crate) fn cores(&self) -> &[Arc<Mutex<crate::batcher::Core>>] {
        self.inline.instances()
    }

    /// Queues validated inputs (in model input order) and waits for the requested outputs, in
    /// the order asked for. A full queue is [`ApiError::Overloaded`]; dropping the returned
    /// future before the request runs keeps it from running.
    pub async fn infer(&self, inputs: Vec<(String, Tensor)>, wanted: Vec<String>) -> Result<Outputs, ApiError> {
        // Items count dim 0 whenever the model has a batch dim, batched or not (Triton's
        // nv_inference_count); a model without one counts one item per request.
        let items = match (self.batchable, inputs.first()) {
            (true, Some((_, t))) => t.shape.first().copied().unwrap_or(1),
            _ => 1,
        };
        let (reply, rx) = oneshot::channel();
        let (waiting, link) = crate::cancel::link();
        let inputs: Vec<Tensor> = inputs.into_iter().map(|(_, t)| t).collect();
        let job = Job {
            bytes: inputs.iter().map(|t| t.data.byte_len()).fold(0usize, usize::saturating_add),
            inputs,
            wanted,
            items,
            enqueued: Instant::now(),
            reply,
            link,
            trace: crate::telemetry::queued(&self.name),
        };
        // Short requests are served on this runtime's threads (crate::batcher::Inline).
        let job = match self.inline.submit(job) {
            Submitted::Taken => return Self::answer(&self.name, rx, waiting).await,
            Submitted::Full => {
                self.metrics.rejected_queue_full.inc();
                return Err(crate::batcher::queue_full(&self.name));
            }
            Submitted::Back(job) => job,
        };
        self.metrics.pending.inc();
        if let Err(e) = self.queue.try_send(job) {
            self.metrics.pending.dec();
            return Err(match e {
                TrySendError::Full(_) => {
                    self.metrics.rejected_queue_full.inc();
                    crate::batcher::queue_full(&self.name)
                }
                TrySendError::Disconnected(_) => crate::batcher::no_worker(&self.name),
            });
        }
        Self::answer(&self.name, rx, waiting).await
    }

    /// The answer to a queued request.
    async fn answer(
        name: &str,
        rx: oneshot::Receiver<Result<Outputs, ApiError>>,
        waiting: crate::cancel::Waiting,
    ) -> Result<Outputs, ApiError> {
        // Dropping this future (deadline, client gone) drops `waiting`: the request is then
        // skipped, or its run stopped (crate::cancel).
        let answer = rx.await;
        waiting.answered();
        answer.map_err(|_| ApiError::Internal(format!("the worker of model {name} stopped")))?
    }
}

/// Opens one ONNX Runtime session with the given options.
pub fn open_session(
    env: &ort::environment::Environment,
    path: &Path,
    config: &SessionConfig,
) -> Result<Session, String> {
    builder(env, config)?.commit_from_file(path).map_err(|e| e.to_string())
}

/// Whether every input's dims past dim 0 are fixed: the model's buffers are then the same for
/// every run of a batch size, and ONNX Runtime's arena holds one set of them.
fn fixed_past_dim0(inputs: &[TensorSpec]) -> bool {
    inputs.iter().all(|spec| spec.shape.as_ref().is_some_and(|dims| dims.iter().skip(1).all(|d| !d.is_dynamic())))
}

/// What a worker thread needs to open its instance and serve it.
struct Setup {
    path: PathBuf,
    session: SessionConfig,
    cache: Option<CacheUse>,
    warmup: Option<Vec<Tensor>>,
    name: String,
    input_names: Arc<Vec<String>>,
    batching: Option<BatchingConfig>,
    /// From the model's batching settings even when it does not batch.
    inline_below_us: u64,
    metrics: ModelMetrics,
    max_output_bytes: Option<usize>,
    inline_limit: Arc<AtomicU64>,
    queue: Arc<Mutex<(std::sync::mpsc::Receiver<Job>, Option<Job>)>>,
}

/// An instance opened and warmed up on its worker thread, for the loading thread.
struct Opened {
    core: Arc<Mutex<Core>>,
    /// The warm-up run's output shapes, when it ran.
    produced: Option<Vec<(String, Vec<usize>)>>,
    /// The cache, for the next instance.
    cache: Option<CacheUse>,
}

impl Setup {
    /// Opens and warms up the instance, tells the loading thread (which then opens the next),
    /// and serves the queue until the model goes.
    fn open_and_serve(
        mut self,
        env: &ort::environment::Environment,
        opened: &std::sync::mpsc::Sender<Result<Opened, String>>,
    ) {
        let mut session = match open_instance(env, &self.path, &self.session, &mut self.cache) {
            Ok(session) => session,
            Err(reason) => {
                let _ = opened.send(Err(reason));
                return;
            }
        };
        let warm_up = self.warmup.take().map(|tensors| {
            let bytes = tensors.iter().map(|t| t.data.byte_len()).sum::<usize>();
            let began = Instant::now();
            (warm_up(&mut session, &self.name, &self.input_names, tensors), began.elapsed(), bytes)
        });
        let mut core = Core::new(
            session,
            self.input_names,
            self.batching.as_ref(),
            self.inline_below_us,
            self.metrics,
            self.max_output_bytes,
            self.inline_limit,
        );
        // The warm-up run is the first measured: the model's requests may run inline from the
        // first (a slow first run keeps them with the workers until real runs are measured).
        let produced = match warm_up {
            Some((Some(produced), took, bytes)) => {
                core.note_run(took, bytes);
                Some(produced)
            }
            _ => None,
        };
        let core = Arc::new(Mutex::new(core));
        let worker = Worker { queue: self.queue, core: Arc::clone(&core) };
        if opened.send(Ok(Opened { core, produced, cache: self.cache })).is_ok() {
            worker.run();
        }
    }
}

/// The instances' way to the optimized-model cache while a model loads: the entry, and its
/// graph once found or made (every later instance opens it, sharing the mapped weights).
struct CacheUse {
    cache: Cache,
    graph: Option<PathBuf>,
    /// ONNX Runtime refused an entry during this load.
    refused: bool,
}

/// Opens one session instance: from the cached optimized graph when there is a usable one, else
/// from the ONNX file, saving the optimized graph to the cache. A cache failure is logged and
/// ends the cache's use for this load; the ONNX file serves.
fn open_instance(
    env: &ort::environment::Environment,
    path: &Path,
    config: &SessionConfig,
    cache: &mut Option<CacheUse>,
) -> Result<Session, String> {
    let Some(using) = cache.as_mut() else {
        return open_session(env, path, config);
    };
    if let Some(graph) = &using.graph {
        let start = Instant::now();
        match builder(env, config)?.commit_from_file(graph) {
            Ok(session) => {
                let took_ms = start.elapsed().as_millis() as u64;
                tracing::info!(entry = %using.cache.path().display(), took_ms, "session opened from the optimized-model cache");
                return Ok(session);
            }
            Err(e) => {
                // Another start may have just replaced the entry: its graph, when there is one.
                match using.cache.load().filter(|g| g != graph) {
                    Some(newer) => {
                        using.graph = Some(newer);
                        return open_instance(env, path, config, cache);
                    }
                    // Made again once; refused again, the cache is left alone for this load.
                    None if !using.refused => {
                        tracing::warn!(entry = %using.cache.path().display(), error = %e, "ONNX Runtime refused the cached optimized model; making a new one");
                        using.graph = None;
                        using.refused = true;
                    }
                    None => {
                        tracing::warn!(entry = %using.cache.path().display(), error = %e, "ONNX Runtime refused the cached optimized model again; loading the ONNX file");
                        *cache = None;
                        return open_session(env, path, config);
                    }
                }
            }
        }
    }
    let (session, saved) = open_and_save(env, path, config, &using.cache)?;
    match saved.and_then(|saving| using.cache.store(&saving).map_err(|e| e.to_string())) {
        Ok(graph) => {
            tracing::info!(entry = %using.cache.path().display(), "optimized model cached for this CPU and ONNX Runtime build");
            using.graph = Some(graph);
        }
        Err(e) => {
            tracing::warn!(entry = %using.cache.path().display(), error = %e, "cannot save the optimized model to the cache; later starts optimize again");
            *cache = None;
        }
    }
    Ok(session)
}

/// A session from the ONNX file that also saves its optimized graph for the cache (weights in a
/// file of their own), with where it was saved (or why not). When the save fails the session
/// comes from a plain open, so a model ONNX Runtime refuses reports its own error.
fn open_and_save(
    env: &ort::environment::Environment,
    path: &Path,
    config: &SessionConfig,
    cache: &Cache,
) -> Result<(Session, Result<Saving, String>), String> {
    let saving = cache.saving().map_err(|e| e.to_string()).and_then(|saving| {
        let opened = builder(env, config).and_then(|b| {
            b.with_optimized_model_path(&saving.graph)
                .map_err(builder_error)?
                .with_config_entry("session.optimized_model_external_initializers_file_name", &saving.data)
                .map_err(builder_error)?
                .with_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes",
                    EXTERNAL_FROM_BYTES,
                )
                .map_err(builder_error)?
                .commit_from_file(path)
                .map_err(|e| e.to_string())
        });
        match opened {
            Ok(session) => Ok((session, saving)),
            Err(e) => {
                cache.abandon(&saving);
                Err(e)
            }
        }
    });
    match saving {
        Ok((session, saving)) => Ok((session, Ok(saving))),
        Err(why) => Ok((open_session(env, path, config)?, Err(why))),
    }
}

fn builder_error(e: ort::Error<SessionBuilder>) -> String {
    e.to_string()
}

/// A session builder with the configured options.
fn builder(env: &ort::environment::Environment, config: &SessionConfig) -> Result<SessionBuilder, String> {
    let e = builder_error;
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(match config.optimization {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        })
        .map_err(e)?
        .with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(config.memory_arena.unwrap_or(false))
            .build()])
        .map_err(e)?;
    // Always an explicit count: left to itself ONNX Runtime sizes its pool by the machine's cores
    // and pins each thread to one, outside a `taskset` or container CPU set.
    builder = builder
        .with_intra_threads(config.intra_threads())
        .map_err(e)?
        .with_intra_op_spinning(config.spinning)
        .map_err(e)?;
    if config.inter_threads > 0 {
        builder = builder.with_inter_threads(config.inter_threads).map_err(e)?;
    }
    Ok(builder)
}

/// The external-data files a model's initializers live in, each once.
fn external_files(path: &Path, info: &ModelInfo) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = info.external_data.iter().map(|x| dir.join(&x.location)).collect();
    files.sort();
    files.dedup();
    files
}

/// Replaces the declared dims of each named tensor (inputs and outputs); `(tensor, why)` when
/// one is not a tensor of the model.
pub(crate) fn override_dims(info: &mut ModelInfo, dims: &[(String, Vec<Dim>)]) -> Result<(), (String, String)> {
    for (tensor, new) in dims {
        let value = info
            .inputs
            .iter_mut()
            .chain(info.outputs.iter_mut())
            .find(|v| &v.name == tensor)
            .ok_or_else(|| (tensor.clone(), "the model has no such input or output".to_string()))?;
        match &mut value.ty {
            ValueType::Tensor { shape, .. } => *shape = Some(new.clone()),
            other => return Err((tensor.clone(), format!("it is a {}, not a tensor", other.onnx_type()))),
        }
    }
    Ok(())
}

/// Outputs whose declared fixed dims (or rank) differ from what warm-up produced, described
/// with the override that would declare them right; `None` when every output kept its word.
fn declared_vs_produced(outputs: &[TensorSpec], produced: &[(String, Vec<usize>)]) -> Option<String> {
    let lies: Vec<String> = outputs
        .iter()
        .filter_map(|spec| {
            let dims = spec.shape.as_ref()?;
            let (_, real) = produced.iter().find(|(n, _)| n == &spec.name)?;
            let keeps = dims.len() == real.len()
                && dims
                    .iter()
                    .zip(real)
                    .all(|(d, &r)| !matches!(d, Dim::Fixed(n) if usize::try_from(*n).ok() != Some(r)));
            if keeps {
                return None;
            }
            let declared = dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let fix = real
                .iter()
                .enumerate()
                .map(|(i, &r)| match dims.get(i) {
                    Some(Dim::Fixed(_)) | None => r.to_string(),
                    Some(d) => format!("{:?}", d.to_string()),
                })
                .collect::<Vec<_>>()
                .join(", ");
            Some(format!(
                "output {:?} is declared [{declared}] but warm-up produced {real:?} (override: dims({:?} = [{fix}]))",
                spec.name, spec.name
            ))
        })
        .collect();
    (!lies.is_empty()).then(|| format!("the model declares output shapes it does not produce: {}", lies.join("; ")))
}

/// The inputs warm-up runs: the configured request's (decoded and checked as a client's would
/// be), or zeros (declared fixed dims, configured or 1 for the others).
fn warmup_inputs(
    model: &str,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    config: &WarmupConfig,
) -> Result<Vec<Tensor>, LoadError> {
    if let Some(path) = &config.request {
        let fail = |reason: String| LoadError::WarmupRequest { model: model.into(), path: path.clone(), reason };
        let body = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let decoded = crate::v2::codec::decode_for(model, inputs, outputs, None, &bytes::Bytes::from(body))
            .map_err(|e| fail(e.to_string()))?;
        let checked = crate::inference::checks::check_named(inputs, decoded.inputs).map_err(|e| fail(e.to_string()))?;
        return Ok(checked.into_iter().map(|(_, t)| t).collect());
    }
    inputs
        .iter()
        .map(|spec| {
            let shape = match &spec.shape {
                Some(dims) => dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => usize::try_from(*n).unwrap_or(1),
                        Dim::Symbolic(s) => config.dims.get(s).copied().unwrap_or(1),
                        Dim::Unknown => 1,
                    })
                    .collect(),
                None => vec![1],
            };
            Tensor::zeros(spec.elem, shape.clone()).ok_or_else(|| LoadError::WarmupRequest {
                model: model.into(),
                path: PathBuf::from("(zeros)"),
                reason: format!("input {:?}: warm-up shape {shape:?} is too large (warmup.dims)", spec.name),
            })
        })
        .collect()
}

/// Runs the session once on `tensors` and returns the shapes produced. A failure is logged and
/// does not block readiness.
fn warm_up(
    session: &mut Session,
    model: &str,
    names: &[String],
    tensors: Vec<Tensor>,
) -> Option<Vec<(String, Vec<usize>)>> {
    let start = Instant::now();
    match run_session(session, names, tensors, None, None) {
        Ok(outputs) => {
            tracing::info!(model, took_ms = start.elapsed().as_millis() as u64, "warm-up done");
            Some(outputs.into_iter().map(|(name, t)| (name, t.shape)).collect())
        }
        Err(e) => {
            tracing::warn!(model, error = %e.detail(), "warm-up failed; serving anyway");
            None
        }
    }
}

/// The protocol view of a signature's inputs and outputs; an input the protocol cannot carry is
/// an error.
pub(crate) fn specs(path: &Path, info: &ModelInfo) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), LoadError> {
    let inputs = info.inputs.iter().map(|i| input_spec(path, i)).collect::<Result<Vec<_>, _>>()?;
    Ok((inputs, info.outputs.iter().map(output_spec).collect()))
}

fn input_spec(path: &Path, vi: &nimify_model::ValueInfo) -> Result<TensorSpec, LoadError> {
    match &vi.ty {
        ValueType::Tensor { elem: Some(elem), shape } if elem.kserve_name().is_some() => {
            Ok(TensorSpec { name: vi.name.clone(), elem: *elem, shape: shape.clone() })
        }
        other => {
            Err(LoadError::UnsupportedInput { path: path.to_path_buf(), input: vi.name.clone(), ty: other.onnx_type() })
        }
    }
}

fn output_spec(vi: &nimify_model::ValueInfo) -> TensorSpec {
    match &vi.ty {
        ValueType::Tensor { elem: Some(elem), shape } if elem.kserve_name().is_some() => {
            TensorSpec { name: vi.name.clone(), elem: *elem, shape: shape.clone() }
        }
        // Sequences and maps (scikit-learn's ZipMap) are served as BYTES: one JSON document per row.
        _ => TensorSpec { name: vi.name.clone(), elem: ElementType::String, shape: Some(vec![Dim::Unknown]) },
    }
}

#[cfg(test)]
mod tests {
    use nimify_model::{Dim, ElementType};

    use super::{TensorSpec, fixed_past_dim0};

    fn spec(shape: Option<Vec<Dim>>) -> TensorSpec {
        TensorSpec { name: "x".into(), elem: ElementType::Float, shape }
    }

    #[test]
    fn the_arena_is_chosen_for_inputs_fixed_past_dim0() {
        let batch = || Dim::Symbolic("batch".into());
        assert!(fixed_past_dim0(&[spec(Some(vec![batch(), Dim::Fixed(3), Dim::Fixed(224), Dim::Fixed(224)]))]));
        assert!(fixed_past_dim0(&[spec(Some(vec![Dim::Fixed(1), Dim::Fixed(4)]))]), "no batch dim at all");
        assert!(fixed_past_dim0(&[spec(Some(vec![]))]), "a scalar");
        assert!(!fixed_past_dim0(&[spec(Some(vec![batch(), Dim::Symbolic("seq".into())]))]));
        assert!(!fixed_past_dim0(&[spec(Some(vec![batch(), Dim::Fixed(4)])), spec(Some(vec![batch(), Dim::Unknown]))]));
        assert!(!fixed_past_dim0(&[spec(None)]), "rank unknown");
    }
}
