//! `GET /metrics`: Prometheus text exposition of the server's registry.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::server::AppState;

/// The metrics route.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Triton-compatible `nv_inference_*` metrics and `nimify_*` histograms (no auth needed).
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Sampled requests still pending are bucketed first: the drift counters then include every
    // request answered before the scrape.
    for model in state.models() {
        if let Some(drift) = model.drift() {
            drift.drain();
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
}
