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
use crate::typed::{FromTensors, IntoTensors, TypedModel};

/// The typed route of `M`, with its OpenAPI path and schemas.
pub fn router<M: TypedModel>() -> OpenApiRouter<Arc<AppState>> {
    let path = format!("/v1/models/{}/predict", M::NAME);
    let json = |schema: Ref| Content::new(Some(schema));
    let error = |d: &str| ResponseBuilder::new().description(d).content("application/json", json(Ref::from_schema_name(ErrorBody::name()))).build();
    let op = OperationBuilder::new()
        .summary(Some(format!("Run model `{}` on typed inputs", M::NAME)))
        .tag("typed")
        .request_body(Some(
            RequestBodyBuilder::new().content("application/json", json(Ref::from_schema_name(M::Input::name()))).required(Some(Required::True)).build(),
        ))
        .response("200", ResponseBuilder::new().description("the model's outputs").content("application/json", json(Ref::from_schema_name(M::Output::name()))).build())
        .response("400", error("malformed JSON"))
        .response("413", error("body too large"))
        .response("422", error("a tensor of the wrong type or shape (the message names it)"))
        .response("500", error("inference failed"))
        .response("503", error("not ready or overloaded"))
        .build();
    let paths = PathsBuilder::new().path(path, PathItem::new(HttpMethod::Post, op)).build();
    let schemas = vec![
        (M::Input::name().into_owned(), M::Input::schema()),
        (M::Output::name().into_owned(), M::Output::schema()),
        (ErrorBody::name().into_owned(), ErrorBody::schema()),
    ];
    OpenApiRouter::new().routes((schemas, paths, axum::routing::post(predict::<M>)))
}

async fn predict<M: TypedModel>(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<M::Output>, ApiError> {
    let model = Arc::clone(state.model(M::NAME, None)?);
    crate::routes::v2::instrumented(&state, &model, async {
        let bytes = state.read_body(body).await?;
        let input: M::Input = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes)).map_err(|e| {
            let at = e.path().to_string();
            match e.inner().classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
                    ApiError::BadRequest(format!("malformed JSON: {}", e.inner()))
                }
                serde_json::error::Category::Data => ApiError::InvalidTensor(format!("tensor {at}: {}", e.inner())),
            }
        })?;
        let tensors = input.into_tensors().map_err(ApiError::InvalidTensor)?;
        let inputs = crate::v2::codec::check_named(&model, tensors)?;
        let wanted = model.outputs().iter().map(|s| s.name.clone()).collect();
        let outputs = model.infer(inputs, wanted).await?;
        M::Output::from_tensors(outputs).map(Json).map_err(ApiError::Inference)
    })
    .await
}
