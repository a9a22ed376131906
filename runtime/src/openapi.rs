//! Adds what `utoipa-axum` cannot see to the OpenAPI document: the document itself and the docs page.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{Content, OpenApi, Ref};

use crate::routes::docs::{DOCS_PATH, OPENAPI_PATH};

/// Registers `GET /openapi.json` and `GET /docs`.
pub fn add_docs_paths(doc: &mut OpenApi) {
    let get = |summary: &str, content_type: &str, schema: Option<Ref>| {
        let mut response = ResponseBuilder::new().description(summary);
        response = match schema {
            Some(schema) => response.content(content_type, Content::new(Some(schema))),
            None => response.content(content_type, Content::new(None::<Ref>)),
        };
        PathItem::new(HttpMethod::Get, OperationBuilder::new().summary(Some(summary)).tag("docs").response("200", response.build()).build())
    };
    doc.paths.paths.insert(OPENAPI_PATH.into(), get("This OpenAPI 3.1 document", "application/json", None));
    doc.paths.paths.insert(DOCS_PATH.into(), get("Interactive API docs (assets served by this service, no CDN)", "text/html", None));
}
