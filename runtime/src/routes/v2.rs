//! KServe V2 / Open Inference Protocol routes, plus Triton's model configuration endpoint.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::model::Model;
use crate::server::AppState;
use crate::v2::codec::{self, HEADER_LENGTH};
use crate::v2::types::{
    ConfigTensor, DynamicBatching, InferRequest, InferResponse, InstanceGroup, LiveResponse, MetadataTensor,
    ModelConfig, ModelMetadata, ReadyResponse, ServerMetadata,
};

/// The V2 routes.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(server_metadata))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(model_metadata))
        .routes(routes!(model_version_metadata))
        .routes(routes!(model_ready))
        .routes(routes!(model_version_ready))
        .routes(routes!(model_config))
        .routes(routes!(model_version_config))
        .routes(routes!(all_stats))
        .routes(routes!(model_stats))
        .routes(routes!(model_version_stats))
        .routes(routes!(model_drift))
        .routes(routes!(model_version_drift))
        .routes(routes!(infer))
        .routes(routes!(infer_version))
}

/// Server name, version and supported protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "v2", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(server_metadata_body())
}

/// The server's name, version and protocol extensions, the same over HTTP and gRPC.
pub(crate) fn server_metadata_body() -> ServerMetadata {
    ServerMetadata {
        name: "nimify".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec![
            "binary_tensor_data".into(),
            "model_configuration".into(),
            "model_repository".into(),
            "model_repository(unload_dependents)".into(),
            "statistics".into(),
        ],
    }
}

/// Liveness: 200 while the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, body = LiveResponse)))]
async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { live: true })
}

/// Readiness: 200 when every model is loaded and the server is not shutting down, else 503.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    ready_response(state.is_ready())
}

fn ready_response(ready: bool) -> Response {
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(ReadyResponse { ready })).into_response()
}

/// Model metadata: inputs and outputs with KServe datatypes; dims that are not fixed are -1.
#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(metadata(&state, state.model(&model, None)?.as_ref())))
}

/// Metadata of one version of a model.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "v2",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_version_metadata(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(metadata(&state, state.model(&model, Some(&version))?.as_ref())))
}

/// Metadata of `model` (one version), listing every ready version of it.
pub(crate) fn metadata(state: &AppState, model: &Model) -> ModelMetadata {
    let tensors = |specs: &[crate::model::TensorSpec]| {
        specs
            .iter()
            .map(|s| MetadataTensor { name: s.name.clone(), datatype: s.datatype().into(), shape: s.metadata_shape() })
            .collect()
    };
    ModelMetadata {
        name: model.name().into(),
        versions: state.catalog().versions(model.name()),
        platform: "onnxruntime_onnx".into(),
        inputs: tensors(model.inputs()),
        outputs: tensors(model.outputs()),
    }
}

/// Drift of the model's inputs and outputs against its reference profile: per feature, the
/// population stability index of the sampled window, the buckets that moved most, and the
/// out-of-range and missing counts. 404 when the model has no reference profile.
#[utoipa::path(get, path = "/v2/models/{model}/drift", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = crate::drift::DriftReport), (status = 404, body = ErrorBody)))]
async fn model_drift(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<crate::drift::DriftReport>, ApiError> {
    drift_report(state.model(&model, None)?.as_ref())
}

/// Drift of one version of a model.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/drift", tag = "v2",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")),
    responses((status = 200, body = crate::drift::DriftReport), (status = 404, body = ErrorBody)))]
async fn model_version_drift(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<crate::drift::DriftReport>, ApiError> {
    drift_report(state.model(&model, Some(&version))?.as_ref())
}

fn drift_report(model: &Model) -> Result<Json<crate::drift::DriftReport>, ApiError> {
    match model.drift() {
        Some(drift) => Ok(Json(drift.report())),
        None => Err(ApiError::NotFound(format!(
            "model {} has no reference profile, so no drift is measured; serve it with --reference <profile.json> (made by `cargo nimify profile`)",
            model.name()
        ))),
    }
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "health",
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = ReadyResponse), (status = 404, body = ErrorBody), (status = 503, body = ReadyResponse)))]
async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, ApiError> {
    state.model(&model, None)?;
    Ok(ready_response(state.is_ready()))
}

/// Readiness of one version of a model.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "health",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")),
    responses((status = 200, body = ReadyResponse), (status = 404, body = ErrorBody), (status = 503, body = ReadyResponse)))]
async fn model_version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.model(&model, Some(&version))?;
    Ok(ready_response(state.is_ready()))
}

/// Triton's model configuration (what `perf_analyzer` and `tritonclient` read).
#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, body = ModelConfig), (status = 404, body = ErrorBody)))]
async fn model_config(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelConfig>, ApiError> {
    Ok(Json(config(state.model(&model, None)?.as_ref())))
}

/// Triton's configuration of one version of a model.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "v2",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")),
    responses((status = 200, body = ModelConfig), (status = 404, body = ErrorBody)))]
async fn model_version_config(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelConfig>, ApiError> {
    Ok(Json(config(state.model(&model, Some(&version))?.as_ref())))
}

/// Triton's statistics extension for every model: request, queue and compute counts and times.
#[utoipa::path(get, path = "/v2/models/stats", tag = "v2",
    responses((status = 200, description = "`{\"model_stats\": [...]}` as Triton's statistics extension", body = Object)))]
async fn all_stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let stats: Vec<_> = state.models().iter().map(|m| crate::grpc::stats::model_statistics(m)).collect();
    Json(crate::grpc::stats::statistics_json(&stats))
}

/// Triton's statistics extension for one model (the same counters as `/metrics`).
#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "v2",
    params(("model" = String, Path, description = "model name")),
    responses((status = 200, description = "`{\"model_stats\": [...]}` as Triton's statistics extension", body = Object), (status = 404, body = ErrorBody)))]
async fn model_stats(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = crate::grpc::stats::model_statistics(state.model(&model, None)?.as_ref());
    Ok(Json(crate::grpc::stats::statistics_json(&[stats])))
}

/// Statistics of one version of a model.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/stats", tag = "v2",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")),
    responses((status = 200, description = "`{\"model_stats\": [...]}` as Triton's statistics extension", body = Object), (status = 404, body = ErrorBody)))]
async fn model_version_stats(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = crate::grpc::stats::model_statistics(state.model(&model, Some(&version))?.as_ref());
    Ok(Json(crate::grpc::stats::statistics_json(&[stats])))
}

/// With batching on, `max_batch_size` is what the batcher uses and dims leave out the batch dim
/// (Triton's convention); otherwise `max_batch_size` is 0 and dims are the full shape.
pub(crate) fn config(model: &Model) -> ModelConfig {
    let batching = model.batching();
    let skip = usize::from(batching.is_some());
    let tensors = |specs: &[crate::model::TensorSpec]| {
        specs
            .iter()
            .map(|s| ConfigTensor {
                name: s.name.clone(),
                data_type: format!("TYPE_{}", triton_name(s.datatype())),
                dims: s.metadata_shape().into_iter().skip(skip).collect(),
            })
            .collect()
    };
    ModelConfig {
        name: model.name().into(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: batching.map_or(0, |b| u32::try_from(b.max_batch_size).unwrap_or(u32::MAX)),
        dynamic_batching: batching.map(|b| DynamicBatching {
            max_queue_delay_microseconds: b.max_queue_delay_us,
            preferred_batch_size: b.preferred_batch_size.clone(),
        }),
        instance_group: vec![InstanceGroup {
            name: model.name().to_string(),
            kind: "KIND_CPU".into(),
            count: model.instances(),
        }],
        input: tensors(model.inputs()),
        output: tensors(model.outputs()),
    }
}

/// Triton spells BYTES as `TYPE_STRING` in model configurations.
fn triton_name(datatype: &str) -> &str {
    if datatype == "BYTES" { "STRING" } else { datatype }
}

/// Runs inference. JSON body, or a JSON header of `Inference-Header-Content-Length` bytes
/// followed by binary tensor data. Content-Type is not required.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2",
    params(("model" = String, Path, description = "model name"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "length of the JSON header when binary tensor data follows")),
    request_body(content = InferRequest, description = "JSON inference request; with the binary extension, the JSON header followed by tensor bytes"),
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    run_infer(&state, &model, None, request).await
}

/// Runs inference on one version of a model.
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "v2",
    params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "length of the JSON header when binary tensor data follows")),
    request_body(content = InferRequest, description = "JSON inference request; with the binary extension, the JSON header followed by tensor bytes"),
    responses((status = 200, body = InferResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    run_infer(&state, &model, Some(&version), request).await
}

/// The handlers take the request whole, not its headers as an extractor: that would copy them.
async fn run_infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    request: Request,
) -> Result<Response, ApiError> {
    let model = state.model(model, version)?;
    let (parts, body) = request.into_parts();
    crate::inference::run(state, &model, infer_body(state, &model, &parts.headers, body)).await
}

async fn infer_body(state: &AppState, model: &Model, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = state.read_body(body).await?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str().map_err(|_| ApiError::BadRequest("Inference-Header-Content-Length is not valid text".into()))?,
        ),
    };
    let decoded = crate::__trace_span!("decode", nimify.body.binary = header_len.is_some())
        .in_scope(|| codec::decode(model, header_len, &body))?;
    let wanted = decoded.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = crate::inference::infer(model, decoded.inputs, wanted).await?;
    let encoded =
        crate::__trace_span!("encode").in_scope(|| codec::encode(model, decoded.id, outputs, &decoded.outputs))?;
    let mut response = Response::new(Body::new(encoded.body));
    let h = response.headers_mut();
    match encoded.header_len {
        Some(n) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}
