//! The service: shared state, the router with its middleware, and a server that drains on
//! shutdown.
//!
//! [`ServerBuilder`] is the one way models get registered, whether from a file at run time (what
//! `cargo nimify serve` does) or from typed code: every model shares one router, one inference
//! path (queue, batcher, workers), one metrics registry and one readiness flag.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::error::ApiError;
use crate::inference::admission::Admission;
use crate::metrics::Metrics;
use crate::model::{LoadError, LoadSettings, Model, ModelOptions};

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// The models served now (they change while serving with a model repository).
    catalog: Arc<crate::repository::Catalog>,
    /// The model repository, when one is served.
    repository: Option<crate::repository::Repository>,
    /// Readiness, watched by the gRPC health service.
    ready: tokio::sync::watch::Sender<bool>,
    config: Config,
    admission: Admission,
    metrics: Metrics,
    /// TLS for both listeners, when configured.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The audit log, when configured.
    audit: Option<Arc<crate::audit::Audit>>,
    /// Payload logging, when configured (not while the models load).
    payload_log: Option<Arc<crate::payload_log::PayloadLog>>,
    /// A stand-in served while the models load: every model lookup is "starting".
    starting: bool,
    /// Set when the listeners stop accepting.
    draining: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Looks a model up by name and, when given, version; without one, the newest ready
    /// version. The request keeps that version until it is answered, whatever is loaded or
    /// unloaded meanwhile.
    pub(crate) fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, ApiError> {
        if self.starting {
            return Err(starting());
        }
        self.catalog.lookup(name, version)
    }

    /// The models served now.
    pub(crate) fn catalog(&self) -> &crate::repository::Catalog {
        &self.catalog
    }

    /// The model repository, when one is served.
    pub(crate) fn repository(&self) -> Option<&crate::repository::Repository> {
        self.repository.as_ref()
    }

    /// Loads one model version with the server's settings (those `options` leave unset).
    pub(crate) fn load_model(&self, options: &ModelOptions) -> Result<Model, LoadError> {
        let config = &self.config;
        let settings = LoadSettings {
            session: options.session.as_ref().unwrap_or(&config.session),
            batching: options.batching.as_ref().unwrap_or(&config.batching),
            warmup: options.warmup.as_ref().unwrap_or(&config.warmup),
            metrics: &self.metrics,
            max_output_bytes: (config.max_output_bytes > 0).then_some(config.max_output_bytes),
            drift: &config.drift,
        };
        let model = Model::load(options, &settings)?;
        tracing::info!(
            model = model.name(),
            version = model.version(),
            path = %model.path().display(),
            batching = model.batching().is_some(),
            instances = settings.session.instances,
            intra_threads = settings.session.intra_threads(),
            spinning = settings.session.spinning,
            memory_arena = model.memory_arena(),
            "model loaded"
        );
        Ok(model)
    }

    /// What a handler added with [`ServerBuilder::routes`] runs models through: the same queue,
    /// batcher, limits and metrics as every other route.
    ///
    /// ```no_run
    /// # #[nimify::nimify(model = "../examples/iris/iris.onnx")]
    /// # pub struct Iris;
    /// use std::sync::Arc;
    /// use axum::extract::State;
    ///
    /// async fn first_label(State(state): State<Arc<nimify::AppState>>) -> Result<String, nimify::ApiError> {
    ///     let out = state.context().infer::<Iris>(IrisInput { x: vec![[5.1, 3.5, 1.4, 0.2]] }).await?;
    ///     Ok(out.output_label.first().map(ToString::to_string).unwrap_or_default())
    /// }
    /// ```
    pub fn context(self: &Arc<Self>) -> crate::typed::Context {
        crate::typed::Context::new(Arc::clone(self))
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// TLS for the listeners, when configured.
    pub(crate) fn tls(&self) -> Option<Arc<tokio_rustls::rustls::ServerConfig>> {
        self.tls.clone()
    }

    /// Whether this is the stand-in served while the models load.
    pub(crate) fn is_starting(&self) -> bool {
        self.starting
    }

    /// The metrics registry.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the readiness probe passes: every model loaded and no shutdown begun. Inference
    /// is served while shutting down (see [`serve`](crate::serve)), only the probe fails.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Readiness as it changes.
    pub(crate) fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Every ready version of every model.
    pub(crate) fn models(&self) -> Vec<Arc<Model>> {
        self.catalog.all()
    }

    /// The loading phase's stand-in, once the built server took over: health watches still
    /// open on its connections see the server as it is now, serving.
    pub(crate) fn handed_over(&self) {
        self.ready.send_replace(true);
    }

    /// Fails the readiness probe from now on: a shutdown has begun.
    pub(crate) fn begin_shutdown(&self) {
        self.ready.send_replace(false);
    }

    /// API keys only, for a gRPC stream whose messages each take an in-flight place (see
    /// [`admit_slot`](Self::admit_slot)).
    pub(crate) fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<crate::inference::admission::KeyName>, ApiError> {
        self.admission.authorize(headers)
    }

    /// The audit log, when one is configured.
    pub(crate) fn audit(&self) -> Option<&crate::audit::Audit> {
        self.audit.as_deref()
    }

    /// The payload logger, when one is configured.
    pub(crate) fn payload_log(&self) -> Option<&crate::payload_log::PayloadLog> {
        self.payload_log.as_deref()
    }

    /// An in-flight place for one message of a stream, counted as refused for `model` when full.
    pub(crate) fn admit_slot(&self, model: &str) -> Result<crate::inference::admission::Admitted, ApiError> {
        self.admit_slot_for(Some(model))
    }

    /// An in-flight place (the API key checked before), counted as refused for `model` when it
    /// is a served one, else without a model.
    pub(crate) fn admit_slot_for(
        &self,
        model: Option<&str>,
    ) -> Result<crate::inference::admission::Admitted, ApiError> {
        self.admission.slot().inspect_err(|_| match model.and_then(|name| self.catalog.lookup(name, None).ok()) {
            Some(m) => m.metrics().rejected_in_flight.inc(),
            None => self.metrics.rejected_in_flight_without_model(),
        })
    }

    /// Whether the listeners are closing: streams end after the messages they have.
    pub(crate) fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// The listeners stop: open streams take no new messages.
    pub(crate) fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    /// Reads a request body up to the configured limit; larger is 413.
    pub(crate) async fn read_body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::TooLarge(format!("request body exceeds the {limit} byte limit (counted after Content-Encoding is decoded); raise max_body_bytes (--max-body-bytes) or send a smaller batch"))
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })
    }
}

/// Collects the configuration and models, then loads everything.
#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    options: Vec<ModelOptions>,
    extra: Option<OpenApiRouter<Arc<AppState>>>,
    signatures: Vec<(String, crate::typed::generated::Signature)>,
}

impl ServerBuilder {
    /// A builder with this configuration.
    pub fn new(config: Config) -> Self {
        Self { config, ..Self::default() }
    }

    /// Adds a model loaded from a file.
    #[must_use]
    pub fn model(mut self, options: ModelOptions) -> Self {
        self.options.push(options);
        self
    }

    /// Adds a `#[nimify]` model: served over V2 and on `POST /v1/models/{name}/predict`, and
    /// refused at start when the file's signature differs from the one compiled in.
    #[must_use]
    pub fn typed<M: crate::typed::generated::TypedModel>(mut self) -> Self {
        let mut options = ModelOptions::new(M::MODEL_PATH);
        options.name = Some(M::NAME.to_string());
        let signature = M::signature();
        signature.apply_to(&mut options);
        self.signatures.push((M::NAME.to_string(), signature));
        self.model(options).routes(crate::routes::typed::router::<M>())
    }

    /// Adds a `#[nimify]` model with custom processing: `instance` (holding your state) answers
    /// `POST /v1/models/{name}/predict` with its own request and response types.
    #[must_use]
    pub fn service<M: crate::typed::generated::TypedModel + crate::typed::Process>(mut self, instance: M) -> Self {
        let mut options = ModelOptions::new(M::MODEL_PATH);
        options.name = Some(M::NAME.to_string());
        let signature = M::signature();
        signature.apply_to(&mut options);
        self.signatures.push((M::NAME.to_string(), signature));
        self.model(options).routes(crate::routes::typed::process_router(M::NAME, instance))
    }

    /// Adds an endpoint that is not one model's, e.g. a pipeline calling several models:
    /// `POST /v1/models/{name}/predict` answered by `instance`.
    #[must_use]
    pub fn endpoint<P: crate::typed::Process>(self, name: &str, instance: P) -> Self {
        self.routes(crate::routes::typed::process_router(name, instance))
    }

    /// Adds routes (with their OpenAPI paths) next to the V2 ones, e.g. typed endpoints.
    #[must_use]
    pub fn routes(mut self, routes: OpenApiRouter<Arc<AppState>>) -> Self {
        self.extra = Some(match self.extra.take() {
            Some(r) => r.merge(routes),
            None => routes,
        });
        self
    }

    /// Maximum request body in bytes.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// The models [`build`](Self::build) would load, as (served name, file path), with
    /// `model_dir` applied. `cargo nimify image` asks a service binary for this list.
    pub(crate) fn planned_models(&self) -> Vec<(String, std::path::PathBuf)> {
        self.options.iter().map(|o| (o.served_name(), o.path.clone())).collect()
    }

    /// With `model_dir` set, the `#[nimify]` models are read from it by file name instead of
    /// from the paths compiled in (an image keeps its models in one directory).
    fn relocate_models(&mut self) {
        let Some(dir) = self.config.model_dir.clone() else { return };
        for options in &mut self.options {
            let typed = self.signatures.iter().any(|(name, _)| Some(name) == options.name.as_ref());
            if let (true, Some(file)) = (typed, options.path.file_name()) {
                options.path = dir.join(file);
            }
        }
    }

    /// Applies `drift.reference` (`--reference`, `NIMIFY_REFERENCE`): it replaces a profile
    /// compiled in.
    fn configured_references(&mut self) -> Result<(), LoadError> {
        let names: Vec<String> = self.options.iter().map(ModelOptions::served_name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for options in &mut self.options {
            if let Some(path) = self.config.drift.reference_for(&options.served_name(), &names)? {
                options.reference = Some(crate::drift::Reference::File(path));
            }
        }
        Ok(())
    }

    /// What `cli::serve` does before the ports open: the checks that take no time (the
    /// configuration and the files it names, the ONNX Runtime library, each model's signature,
    /// the model repository's layout and configuration files), so the common mistakes are one
    /// error and no listening, then the stand-in state and router served while
    /// [`build`](Self::build) loads the models (same configuration, TLS and probes, no models,
    /// not ready; every model lookup answers "starting").
    pub(crate) fn prepare_loading(&mut self) -> Result<(Arc<AppState>, Router), LoadError> {
        let settings = Settings::read(&self.config)?;
        self.relocate_models();
        self.configured_references()?;
        crate::ortlib::environment()?;
        let from_repository = self.repository_names()?;
        for options in self.options.iter().filter(|o| !from_repository.contains(&o.served_name())) {
            let mut info = nimify_model::read_model(&options.path)
                .map_err(|source| LoadError::Signature { path: options.path.clone(), source })?;
            if let Some(reference) = &options.reference
                && crate::model::override_dims(&mut info, &options.dims).is_ok()
            {
                crate::drift::load_reference(reference, &options.served_name(), &info)?;
            }
        }
        if let Some(root) = &self.config.repository.path {
            // The models loaded at start (in explicit mode, only those asked for: a broken
            // one nobody loads can be fixed while serving).
            for name in crate::repository::Repository::initial(&self.config, root)? {
                crate::repository::layout::read_model_dir(root, &name, &self.config)?;
            }
        }
        let state = Arc::new(AppState::new(self.config.clone(), settings, Metrics::new(), None, true));
        let router = app(Arc::clone(&state), None);
        Ok((state, router))
    }

    /// The names the model repository serves (its model directories), checked against the
    /// models given as files: a `#[nimify]` model found there is served from there, any other
    /// name in both is an error.
    fn repository_names(&self) -> Result<Vec<String>, LoadError> {
        let Some(root) = &self.config.repository.path else { return Ok(Vec::new()) };
        let names = crate::repository::layout::model_names(root)?;
        for options in &self.options {
            let name = options.served_name();
            let typed = self.signatures.iter().any(|(n, _)| n == &name);
            if names.contains(&name) && !typed {
                return Err(LoadError::Repository(format!(
                    "model {name:?} is given as the file {} and is also a directory of the model repository {}; serve it from one place",
                    options.path.display(),
                    root.display()
                )));
            }
        }
        Ok(names)
    }

    /// Validates the configuration, loads and warms every model (the model repository's too),
    /// and returns the ready state and the router serving it.
    pub fn build(mut self) -> Result<(Arc<AppState>, Router), LoadError> {
        let settings = Settings::read(&self.config)?;
        self.relocate_models();
        self.configured_references()?;
        let from_repository = self.repository_names()?;
        // `#[nimify]` models the repository has are served from it, version by version.
        self.options.retain(|o| !from_repository.contains(&o.served_name()));
        if let Some(spec) = &self.config.model_sha256 {
            let planned = self.planned_models();
            let names: Vec<&str> = planned.iter().map(|(n, _)| n.as_str()).collect();
            let expected = crate::digest::parse_expected(spec, &names)?;
            crate::digest::verify(&expected, &planned)?;
        }
        let repository = self.config.repository.path.clone().map(|root| {
            let fixed = self.options.iter().map(ModelOptions::served_name).collect();
            crate::repository::Repository::new(root, self.config.clone(), self.signatures.clone(), fixed)
        });
        let state = Arc::new(AppState::new(self.config, settings, Metrics::new(), repository, false));
        let mut models = BTreeMap::new();
        for options in &self.options {
            let model = state.load_model(options)?;
            if let Some((_, compiled)) = self.signatures.iter().find(|(n, _)| n == model.name()) {
                crate::typed::check_loaded(&model, compiled)?;
            }
            let version = options.version.unwrap_or(1);
            models.insert(model.name().to_string(), BTreeMap::from([(version, Arc::new(model))]));
        }
        state.catalog.serve_all(models);
        if let Some(repository) = state.repository() {
            repository.load_initial(&state).map_err(LoadError::Repository)?;
        }
        let router = app(Arc::clone(&state), self.extra);
        Ok((state, router))
    }
}

/// What the configuration names beyond itself, read once: the API keys (from the key file too)
/// and the TLS certificates.
struct Settings {
    api_keys: Vec<crate::config::ApiKey>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    audit: Option<Arc<crate::audit::Audit>>,
    /// TLS to the payload-log sink, checked against the system's roots (none: an error now, not
    /// at the first event); plain text for an `http://` sink.
    payload_tls: Option<tokio_rustls::rustls::ClientConfig>,
}

impl Settings {
    /// Validates `config` and reads the files it names.
    fn read(config: &Config) -> Result<Self, LoadError> {
        let api_keys = config.validate()?;
        let tls = crate::tls::server_config(config).map_err(|e| crate::config::ConfigError::Invalid(e.to_string()))?;
        let audit = match &config.audit_log {
            Some(path) => Some(Arc::new(crate::audit::Audit::open(path).map_err(crate::config::ConfigError::Invalid)?)),
            None => None,
        };
        let payload_tls = match &config.payload_log.url {
            Some(url) => Some(
                if url.starts_with("https://") {
                    crate::tls::client_config(None, None)
                } else {
                    crate::tls::plain_only()
                }
                .map_err(|e| crate::config::ConfigError::Invalid(format!("payload_log.url {url:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Self { api_keys, tls, audit, payload_tls })
    }
}

impl AppState {
    /// The state, ready, with no models yet and the model repository when there is one; or,
    /// `starting`, the stand-in served while the models load (not ready, every lookup
    /// "starting").
    fn new(
        config: Config,
        settings: Settings,
        metrics: Metrics,
        repository: Option<crate::repository::Repository>,
        starting: bool,
    ) -> Self {
        if let Some(audit) = &settings.audit {
            metrics.register_extra(Box::new(audit.errors().clone()));
        }
        if let Some(spans) = crate::telemetry::collectors() {
            metrics.register_extra(spans);
        }
        let catalog = Arc::new(crate::repository::Catalog::default());
        metrics.register_extra(Box::new(crate::drift::Gauges::new(Arc::clone(&catalog))));
        let payload_log = match settings.payload_tls {
            Some(tls) if !starting => crate::payload_log::PayloadLog::start(&config.payload_log, tls),
            _ => None,
        };
        for collector in payload_log.iter().flat_map(|p| p.collectors()) {
            metrics.register_extra(collector);
        }
        Self {
            catalog,
            repository,
            ready: tokio::sync::watch::Sender::new(!starting),
            admission: Admission::new(settings.api_keys, config.max_in_flight),
            config,
            metrics,
            tls: settings.tls,
            audit: settings.audit,
            payload_log,
            starting,
            draining: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// What a starting server answers to anything but its probes.
pub(crate) fn starting() -> ApiError {
    ApiError::NotReady("the server is starting: its models are loading and warming up; retry shortly".into())
}

/// The OpenAPI document's fixed parts.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "nimify", description = "ONNX model inference over KServe V2 / Open Inference Protocol"),
    tags((name = "v2", description = "KServe V2 / Open Inference Protocol"), (name = "health", description = "liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"), (name = "docs", description = "this document and the docs page")),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;

/// Declares the API-key schemes (used only when keys are configured).
struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

/// Builds the full router: V2 and extra routes, `/metrics`, `/openapi.json`, `/docs`, a JSON 404
/// fallback, and the middleware (request ids, access log, API keys, in-flight cap).
pub fn app(state: Arc<AppState>, extra: Option<OpenApiRouter<Arc<AppState>>>) -> Router {
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::routes::v2::router())
        .merge(crate::routes::metrics::router())
        .merge(crate::routes::repository::router());
    if let Some(extra) = extra {
        api = api.merge(extra);
    }
    let (router, mut doc) = api.split_for_parts();
    crate::openapi::add_docs_paths(&mut doc);
    let router = router
        .merge(crate::routes::docs::router(doc))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    // Only when configured: otherwise requests skip the layer altogether.
    let router = if state.payload_log().is_some() {
        router.layer(axum::middleware::from_fn_with_state(Arc::clone(&state), crate::payload_log::capture))
    } else {
        router
    };
    router
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), front))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Every error answer is `{"error": ...}` JSON, also those of layers and extractors that answer
/// on their own (with an empty or plain-text body). `connections` relies on it: an error answer
/// with an empty body and no content type can only be one hyper wrote for an unparsable request.
async fn json_errors(response: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    // application/json, or a JSON-based type such as application/problem+json.
    let json = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let essence = v.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    });
    if response.status().as_u16() < 400 || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message =
        if text.is_empty() { parts.status.canonical_reason().unwrap_or("error").to_ascii_lowercase() } else { text };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(serde_json::json!({ "error": message }).to_string()))
}

async fn not_found(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> ApiError {
    if state.is_starting() {
        return starting();
    }
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// axum keeps its `Allow` header on this answer; the body says the same in JSON.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; the Allow header lists the methods that are",
        uri.path()
    ))
}

/// Health, readiness and metrics stay open and uncapped so probes and scrapes work under load
/// and without credentials.
fn is_open_path(path: &str) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready" | "/metrics")
        || (path.starts_with("/v2/models/") && path.ends_with("/ready") && !path.contains("/infer"))
}

/// Everything a request passes on its way to the router and back, in one layer (each axum
/// `from_fn` layer costs a boxed copy of the stack inside it and a boxed future per request),
/// outermost first:
///
/// 1. its `x-request-id`, kept or made ([`crate::request_id`]), and sent back;
/// 2. the access log and audit line, and the request's span;
/// 3. what the handlers leave of the body, read before the answer goes out
///    ([`crate::request_body`]);
/// 4. every error answer as `{"error": ...}` JSON ([`json_errors`]);
/// 5. admission ([`admit`]), then the `Content-Encoding` check and the body's decoder, for a body
///    that has a coding ([`crate::request_body::decoded`]).
async fn front(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let id = crate::request_id::ensure(request.headers_mut());
    let log = AccessLog::begin(&state, &request, &id);
    let span = log.span.clone();
    let inner = async {
        let (request, rest) = crate::request_body::Rest::keep(request);
        let response = json_errors(admit(&state, request, next).await).await;
        rest.read(&state).await;
        response
    };
    let mut response = tracing::Instrument::instrument(inner, span).await;
    if !response.headers().contains_key(crate::request_id::HEADER) {
        response.headers_mut().insert(crate::request_id::HEADER, id);
    }
    log.end(&state, &mut response);
    response
}

/// Admission (API keys, then the in-flight cap) for every route but the open ones, then the
/// `Content-Encoding` check and the body's decoder; the slot is held until the handlers have
/// answered.
async fn admit(state: &AppState, request: Request, next: Next) -> Response {
    if is_open_path(request.uri().path()) {
        return decode(request, next).await;
    }
    let key = match state.authorize(request.headers()) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let mut response = match state.admit_slot_for(model_of_path(request.uri().path())) {
        Ok(_admitted) => decode(request, next).await,
        Err(e) => e.into_response(),
    };
    // For the audit log, also of a request the in-flight cap refused.
    if let Some(key) = key {
        response.extensions_mut().insert(key);
    }
    response
}

/// An accepted `Content-Encoding` decoded as the body streams in; any other refused.
async fn decode(mut request: Request, next: Next) -> Response {
    match crate::request_body::check_encoding(request.headers_mut()) {
        Ok(()) => crate::request_body::decoded(request, next).await,
        Err(e) => e.into_response(),
    }
}

/// The model a V2 or typed path names (`/v2/models/{m}/...`, `/v1/models/{m}/predict`).
fn model_of_path(path: &str) -> Option<&str> {
    crate::audit::model_and_version(path).0
}

/// A request's id (`x-request-id`, set or kept by the request-id layer), empty without one.
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// One log line per request (failures at info level, successes at debug, with the request id)
/// and its audit line; its span carries the id to everything logged while it is handled.
struct AccessLog {
    start: std::time::Instant,
    method: axum::http::Method,
    /// The request's target (a clone shares its bytes).
    uri: axum::http::Uri,
    client: Option<String>,
    id: axum::http::HeaderValue,
    span: tracing::Span,
}

impl AccessLog {
    fn begin(state: &AppState, request: &Request, id: &axum::http::HeaderValue) -> Self {
        let text = id.to_str().unwrap_or("");
        // An error-level span, so that it exists whatever level RUST_LOG lets through; with
        // tracing on, it is the request's OpenTelemetry server span too.
        let span = if crate::telemetry::enabled() {
            crate::telemetry::http_span(request, text, state.tls.is_some())
        } else {
            tracing::error_span!("request", request_id = %text)
        };
        Self {
            start: std::time::Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            client: state.audit().and_then(|_| crate::audit::client_of(request.extensions())),
            id: id.clone(),
            span,
        }
    }

    fn end(self, state: &AppState, response: &mut Response) {
        let Self { start, method, uri, client, id, span } = self;
        let (path, id) = (uri.path(), id.to_str().unwrap_or(""));
        let status = response.status().as_u16();
        let micros = start.elapsed().as_micros() as u64;
        let ids = crate::telemetry::ids(&span);
        if ids.is_some() {
            crate::telemetry::end_http_span(&span, response);
        }
        let (trace_id, span_id) = (ids.as_ref().map(|i| i.0.as_str()), ids.as_ref().map(|i| i.1.as_str()));
        if status >= 400 {
            tracing::info!(request_id = %id, %method, %path, status, micros, trace_id, span_id, "request failed");
        } else {
            tracing::debug!(request_id = %id, %method, %path, status, micros, trace_id, span_id, "request");
        }
        if let Some(audit) = state.audit().filter(|_| !is_open_path(path)) {
            let (model, version) = crate::audit::model_and_version(path);
            audit.record(&crate::audit::Entry {
                request_id: id,
                trace_id,
                api_key: response.extensions().get::<crate::inference::admission::KeyName>().map(|k| &*k.0),
                client: client.as_deref(),
                protocol: "http",
                operation: &format!("{method} {path}"),
                message: None,
                model,
                version,
                status: i64::from(status),
                outcome: crate::audit::outcome_of_http(status),
                micros,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model_of_path;

    #[test]
    fn the_model_a_path_names() {
        assert_eq!(model_of_path("/v2/models/mlp/infer"), Some("mlp"));
        assert_eq!(model_of_path("/v2/models/mlp/versions/1/infer"), Some("mlp"));
        assert_eq!(model_of_path("/v1/models/iris/predict"), Some("iris"));
        assert_eq!(model_of_path("/v2/models/mlp"), Some("mlp"));
        for none in ["/v2", "/v2/models/", "/v2/models//infer", "/metrics", "/v3/models/x"] {
            assert_eq!(model_of_path(none), None, "{none}");
        }
    }
}
