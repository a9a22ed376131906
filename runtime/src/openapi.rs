//! Adds what `utoipa-axum` cannot see to the OpenAPI document: the document itself and the docs
//! page with its assets.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{Content, OpenApi, Ref, Required};

use crate::routes::docs::{DOCS_PATH, OPENAPI_PATH};

fn get(
    summary: &str,
    status: &str,
    content_type: Option<&str>,
    params: Vec<utoipa::openapi::path::Parameter>,
) -> PathItem {
    let mut response = ResponseBuilder::new().description(summary);
    if let Some(ct) = content_type {
        response = response.content(ct, Content::new(None::<Ref>));
    }
    let op = OperationBuilder::new()
        .summary(Some(summary))
        .tag("docs")
        .parameters(Some(params))
        .response(status, response.build());
    PathItem::new(HttpMethod::Get, op.build())
}

/// Registers `GET /openapi.json`, `GET /docs` (redirect), `GET /docs/` and `GET /docs/{asset}`.
pub fn add_docs_paths(doc: &mut OpenApi) {
    let paths = &mut doc.paths.paths;
    paths.insert(OPENAPI_PATH.into(), get("This OpenAPI 3.1 document", "200", Some("application/json"), vec![]));
    paths.insert(DOCS_PATH.into(), get("Redirects to the docs page", "303", None, vec![]));
    paths.insert(
        format!("{DOCS_PATH}/"),
        get("Interactive API docs (every asset served by this service, no CDN)", "200", Some("text/html"), vec![]),
    );
    let asset = ParameterBuilder::new()
        .name("asset")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("asset file name"))
        .schema(Some(utoipa::openapi::Object::with_type(utoipa::openapi::schema::Type::String)))
        .build();
    paths.insert(
        format!("{DOCS_PATH}/{{asset}}"),
        get("A docs page asset (script, stylesheet, icon)", "200", None, vec![asset]),
    );
}
