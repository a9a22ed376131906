//! What user code calls and implements: [`Context`] to run models, [`Process`] for custom
//! request and response types around them.

use serde::Serialize;

use super::contract::{FromTensors, IntoTensors, TypedModel};

/// What user code sees of the server: every registered model, callable with its typed input
/// through the same queue, batcher, limits and metrics as the HTTP routes.
#[derive(Clone)]
pub struct Context {
    state: std::sync::Arc<crate::AppState>,
}

impl Context {
    pub(crate) fn new(state: std::sync::Arc<crate::AppState>) -> Self {
        Self { state }
    }

    /// Runs model `M` (registered with [`crate::ServerBuilder::typed`] or
    /// [`crate::ServerBuilder::service`]) on a typed input.
    pub async fn infer<M: TypedModel>(&self, input: M::Input) -> Result<M::Output, crate::ApiError> {
        let model = self.state.model(M::NAME, None)?;
        let span = crate::__trace_span!("infer", nimify.model.name = M::NAME);
        tracing::Instrument::instrument(crate::inference::run(&self.state, &model, run_typed::<M>(&model, input)), span)
            .await
    }
}

/// A typed model's part of a request: its input as named tensors through the inference path,
/// and the outputs back as its output type.
pub(crate) async fn run_typed<M: TypedModel>(
    model: &crate::Model,
    input: M::Input,
) -> Result<M::Output, crate::ApiError> {
    use crate::ApiError;
    let tensors = input.into_tensors().map_err(ApiError::InvalidTensor)?;
    let wanted = model.outputs().iter().map(|s| s.name.clone()).collect();
    let outputs = crate::inference::infer(model, tensors, wanted).await?;
    M::Output::from_tensors(outputs).map_err(ApiError::Inference)
}

/// Custom processing in plain Rust: your own request and response types (with their schemas in
/// the OpenAPI document) around one or more models. Implement it for a `#[nimify]` struct and
/// register an instance with [`crate::ServerBuilder::service`] (the struct's fields are your
/// state: a tokenizer, a label list), or for any struct calling several models and register it
/// with [`crate::ServerBuilder::endpoint`] (a pipeline). Return [`crate::ApiError`]s for 4xx/5xx.
pub trait Process: Send + Sync + 'static {
    /// What clients send.
    type Request: serde::de::DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// What clients get back.
    type Response: Serialize + utoipa::ToSchema + Send + 'static;
    /// Handles one request; call models with [`Context::infer`].
    fn process(
        &self,
        ctx: &Context,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<Self::Response, crate::ApiError>> + Send;
}
