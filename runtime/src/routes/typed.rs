//! `POST /v1/models/{name}/predict`: the typed endpoint of a `#[nimify]` model, through the same
//! queue, batcher, limits and metrics as the V2 routes, documented with the generated schemas.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{Content, PathsBuilder, Ref, Required};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ErrorBody};
use crate::server::AppState;
use crate::typed::generated::TypedModel;
use crate::typed::{Context, Process};

/// The typed route of `M`, with its OpenAPI path and schemas.
pub fn router<M: TypedModel>() -> OpenApiRouter<Arc<AppState>> {
    documented::<M::Input, M::Output>(
        M::NAME,
        &format!("Run model `{}` on typed inputs", M::NAME),
        axum::routing::post(predict::<M>),
    )
}

/// The route of a [`Process`] implementation, with its own request and response schemas.
pub fn process_router<P: Process>(name: &str, service: P) -> OpenApiRouter<Arc<AppState>> {
    let service = Arc::new(service);
    let endpoint: Arc<str> = name.into();
    let handler = move |State(state): State<Arc<AppState>>, body: Body| {
        let service = Arc::clone(&service);
        let endpoint = Arc::clone(&endpoint);
        async move {
            crate::inference::within_limits(&state, async {
                let bytes = state.read_body(body).await?;
                let request: P::Request = parse_json(&bytes)?;
                let ctx = Context::new(Arc::clone(&state));
                // The user's code, and each model it calls, show in the request's trace.
                let span = crate::__trace_span!("process", nimify.endpoint = %endpoint);
                tracing::Instrument::instrument(service.process(&ctx, request), span).await.map(Json)
            })
            .await
        }
    };
    documented::<P::Request, P::Response>(name, &format!("Run `{name}`"), axum::routing::post(handler))
}

fn documented<I: ToSchema, O: ToSchema>(
    name: &str,
    summary: &str,
    method: axum::routing::MethodRouter<Arc<AppState>>,
) -> OpenApiRouter<Arc<AppState>> {
    let path = format!("/v1/models/{name}/predict");
    let json = |schema: Ref| Content::new(Some(schema));
    let error = |d: &str| {
        ResponseBuilder::new()
            .description(d)
            .content("application/json", json(Ref::from_schema_name(ErrorBody::name())))
            .build()
    };
    let op = OperationBuilder::new()
        .summary(Some(summary.to_string()))
        .tag("typed")
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json(Ref::from_schema_name(I::name())))
                .required(Some(Required::True))
                .build(),
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("the model's outputs")
                .content("application/json", json(Ref::from_schema_name(O::name())))
                .build(),
        )
        .response("400", error("malformed JSON"))
        .response("413", error("body too large"))
        .response("422", error("a tensor of the wrong type or shape (the message names it)"))
        .response("500", error("inference failed"))
        .response("503", error("not ready or overloaded"))
        .build();
    let paths = PathsBuilder::new().path(path, PathItem::new(HttpMethod::Post, op)).build();
    let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    I::schemas(&mut schemas);
    O::schemas(&mut schemas);
    schemas.push((I::name().into_owned(), I::schema()));
    schemas.push((O::name().into_owned(), O::schema()));
    OpenApiRouter::new().routes((schemas, paths, method))
}

/// JSON into a request type: syntax errors are 400, wrong fields or shapes 422 naming the field.
/// Read straight into the type; a body that fails is read again with its path tracked for the
/// message (tracking every element's path would slow every request: `cargo bench -p nimify
/// --bench json_codec`, typed decode).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Arrays, objects and numbers by the V2 reader's loops, the same values serde_json reads.
    if let Some(value) = crate::v2::fast_json::typed(bytes) {
        return Ok(value);
    }
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|e| {
        let at = e.path().to_string();
        match e.inner().classify() {
            serde_json::error::Category::Data => ApiError::InvalidTensor(format!("{at}: {}", e.inner())),
            _ => ApiError::BadRequest(format!("malformed JSON: {}", e.inner())),
        }
    })
}

async fn predict<M: TypedModel>(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<M::Output>, ApiError> {
    let model = state.model(M::NAME, None)?;
    // Reading and parsing run inside the inference path too: under its deadline, and a 422 here
    // counts as a failed request of the model, as over V2.
    let request = async {
        let bytes = state.read_body(body).await?;
        let input: M::Input = parse_json(&bytes).map_err(|e| match e {
            ApiError::InvalidTensor(m) => ApiError::InvalidTensor(format!("tensor {m}")),
            other => other,
        })?;
        crate::typed::run_typed::<M>(&model, input).await
    };
    crate::inference::run(&state, &model, request).await.map(Json)
}
