//! Typed services: your own code around models whose signatures `#[nimify(model = "...")]` read
//! at compile time.
//!
//! The macro turns each tensor into a Rust type: fixed dims become arrays (longer than 32:
//! [`Array`]), the others `Vec`s, a tensor of undeclared rank a [`Dyn`]. Call a model from your
//! code with [`Context::infer`]; wrap it in your own request and response types with [`Process`].
//!
//! ```no_run
//! use nimify::ApiError;
//! use nimify::typed::{Context, Process};
//!
//! /// Iris classifier with class names instead of indices.
//! #[nimify::nimify(model = "../examples/iris/iris.onnx")]
//! pub struct Iris;
//!
//! #[derive(serde::Deserialize, utoipa::ToSchema)]
//! pub struct Flower {
//!     measurements: [f32; 4],
//! }
//!
//! #[derive(serde::Serialize, utoipa::ToSchema)]
//! pub struct Species {
//!     name: String,
//! }
//!
//! impl Process for Iris {
//!     type Request = Flower;
//!     type Response = Species;
//!     async fn process(&self, ctx: &Context, flower: Flower) -> Result<Species, ApiError> {
//!         let out = ctx.infer::<Iris>(IrisInput { x: vec![flower.measurements] }).await?;
//!         let label = out.output_label.first().copied().unwrap_or(-1);
//!         Ok(Species { name: ["setosa", "versicolor", "virginica"].get(label as usize).unwrap_or(&"?").to_string() })
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     nimify::cli::run(|server| server.service(Iris))
//! }
//! ```

mod contract;
mod conversion;
mod schema;
mod service;

pub use conversion::{Array, Dyn};
pub use service::{Context, Process};

pub(crate) use contract::{check_file, check_loaded};
pub(crate) use service::run_typed;

/// What the macro's generated code names; not an API (see [`crate::__private`]).
pub(crate) mod generated {
    pub use super::contract::{FromTensors, IntoTensors, Signature, TypedModel};
    pub use super::conversion::{Element, Nested, OutputMap, TensorField};
    pub use super::schema::{object_schema, tensor_schema};
}
