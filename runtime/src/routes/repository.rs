//! Triton's model repository extension over HTTP: `POST /v2/repository/index`, and in explicit
//! model control mode `POST /v2/repository/models/{m}/load` and `/unload`. Not open paths: the
//! API keys protect them like inference.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::repository::{IndexEntry, api};
use crate::server::AppState;

/// The repository routes.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(index)).routes(routes!(load)).routes(routes!(unload))
}

/// Body of `POST /v2/repository/index` (optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    /// Only the ready versions.
    #[serde(default)]
    pub ready: bool,
}

/// Body of a load or unload request (optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// Triton's parameters: `unload_dependents` (unload) is accepted; nimify has no model
    /// dependencies. Others are refused.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

fn body<T: Default + serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("request body is not valid: {e}")))
}

/// The repository index: every model directory and version with its state (READY, LOADING,
/// UNAVAILABLE) and why it is not ready, plus the models served from files.
#[utoipa::path(post, path = "/v2/repository/index", tag = "v2",
    request_body(content = Option<IndexRequest>, content_type = "application/json"),
    responses((status = 200, body = Vec<IndexEntry>), (status = 400, body = ErrorBody)))]
async fn index(State(state): State<Arc<AppState>>, bytes: Bytes) -> Result<Json<Vec<IndexEntry>>, ApiError> {
    let request: IndexRequest = body(&bytes)?;
    Ok(Json(api::index(state, request.ready).await?))
}

/// Loads or reloads a model's versions from the repository, switching to them in one step once
/// they are warm; on failure the serving versions stay (explicit model control mode).
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    request_body(content = Option<ControlRequest>, content_type = "application/json"),
    responses((status = 200, description = "loaded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    bytes: Bytes,
) -> Result<Json<()>, ApiError> {
    let request: ControlRequest = body(&bytes)?;
    api::check_parameters(request.parameters.keys().map(String::as_str), &[])?;
    api::load(state, model).await.map(Json)
}

/// Stops serving a model; requests already running finish on it (explicit model control mode).
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    request_body(content = Option<ControlRequest>, content_type = "application/json"),
    responses((status = 200, description = "unloaded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    bytes: Bytes,
) -> Result<Json<()>, ApiError> {
    let request: ControlRequest = body(&bytes)?;
    api::check_parameters(request.parameters.keys().map(String::as_str), &["unload_dependents"])?;
    api::unload(state, model).await.map(Json)
}
