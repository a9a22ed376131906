//! `/openapi.json` and the interactive docs page at `/docs`, served from assets compiled into the
//! binary (no CDN), so they work on an air-gapped cluster.

use std::sync::Arc;

use axum::Router;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::server::AppState;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the docs page is served.
pub const DOCS_PATH: &str = "/docs";

/// Routes for the document and the docs page.
pub fn router(doc: OpenApi) -> Router<Arc<AppState>> {
    let config = Config::new([OPENAPI_PATH]).validator_url("none").try_it_out_enabled(true);
    Router::new().merge(SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, doc).config(config))
}
