//! The service: shared state, the router, and a server with graceful shutdown.
//!
//! [`ServerBuilder`] is the one way models get registered, whether from a file at run time (what
//! `cargo nimify serve` does) or from typed code: every model shares one router, one inference
//! path and one readiness flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::model::{LoadError, Model, ModelOptions};

/// Default maximum request body (64 MiB: real tensor payloads reach several MB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    models: BTreeMap<String, Arc<Model>>,
    ready: AtomicBool,
    max_body: usize,
}

impl AppState {
    /// Looks a model up by name and, when given, version.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>, ApiError> {
        let model = self.models.get(name).ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown model {name:?}; this server has {}",
                self.models.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
            ))
        })?;
        if let Some(v) = version {
            if v != model.version() {
                return Err(ApiError::NotFound(format!("unknown version {v:?} of model {name:?}; available: {:?}", model.version())));
            }
        }
        Ok(model)
    }

    /// All models, by name.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    /// Whether the server accepts inference requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the server ready or not (not ready first on shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Reads a request body up to the configured limit; larger is 413.
    pub async fn read_body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        axum::body::to_bytes(body, self.max_body).await.map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::TooLarge(format!("request body exceeds the {} byte limit; raise --max-body-bytes or send a smaller batch", self.max_body))
            } else {
                ApiError::BadRequest(format!("cannot read request body: {e}"))
            }
        })
    }
}

/// Collects models and options, then loads everything.
#[derive(Default)]
pub struct ServerBuilder {
    options: Vec<ModelOptions>,
    extra: Option<OpenApiRouter<Arc<AppState>>>,
    max_body: Option<usize>,
}

impl ServerBuilder {
    /// Adds a model loaded from a file.
    #[must_use]
    pub fn model(mut self, options: ModelOptions) -> Self {
        self.options.push(options);
        self
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
        self.max_body = Some(bytes);
        self
    }

    /// Loads every model and returns the state and the router serving it.
    pub fn build(self) -> Result<(Arc<AppState>, Router), LoadError> {
        let mut models = BTreeMap::new();
        for options in &self.options {
            let model = Model::load(options)?;
            tracing::info!(model = model.name(), path = %model.path().display(), inputs = model.inputs().len(), outputs = model.outputs().len(), "model loaded");
            models.insert(model.name().to_string(), Arc::new(model));
        }
        let state = Arc::new(AppState { models, ready: AtomicBool::new(false), max_body: self.max_body.unwrap_or(DEFAULT_MAX_BODY) });
        let router = app(Arc::clone(&state), self.extra);
        state.set_ready(true);
        Ok((state, router))
    }
}

/// The OpenAPI document's fixed parts.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "nimify", description = "ONNX model inference over KServe V2 / Open Inference Protocol"),
    tags((name = "v2", description = "KServe V2 / Open Inference Protocol"), (name = "health", description = "liveness and readiness"))
)]
struct ApiDoc;

/// Builds the full router: V2 routes, extra routes, `/openapi.json`, `/docs`, JSON 404 fallback.
pub fn app(state: Arc<AppState>, extra: Option<OpenApiRouter<Arc<AppState>>>) -> Router {
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(crate::routes::v2::router());
    if let Some(extra) = extra {
        api = api.merge(extra);
    }
    let (router, mut doc) = api.split_for_parts();
    crate::openapi::add_docs_paths(&mut doc);
    router
        .merge(crate::routes::docs::router(doc))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Serves until `shutdown` resolves: readiness turns false first, then in-flight requests finish.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>, router: Router, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %local, models = state.models.len(), "serving");
    let drain_state = Arc::clone(&state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.set_ready(false);
            tracing::info!("shutting down: not ready, draining in-flight requests");
        })
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
