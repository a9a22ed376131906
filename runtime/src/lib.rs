//! nimify: serve ONNX models over the KServe V2 / Open Inference Protocol (Triton's clients work
//! unchanged) and, with `#[nimify(model = "...")]`, over typed endpoints checked at compile time.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let (state, router) = nimify::ServerBuilder::default()
//!     .model(nimify::ModelOptions::new("model.onnx"))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8000").await?;
//! nimify::serve(listener, state, router, nimify::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod batcher;
pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod model;
mod openapi;
pub mod ortlib;
pub mod routes;
pub mod server;
pub mod tensor;
pub mod typed;
pub mod v2;

pub use config::Config;
pub use error::ApiError;
pub use model::{LoadError, Model, ModelOptions, TensorSpec};

pub use nimify_macros::nimify;
pub use nimify_model as signature;
pub use server::{AppState, ServerBuilder, app, serve, shutdown_signal};
pub use tensor::{Tensor, TensorData};

/// Default listen address.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Default listen port.
pub const DEFAULT_PORT: u16 = 8000;

#[doc(hidden)]
pub mod __private {
    //! Paths the macro's generated code names; not a public API.
    pub use half;
    pub use serde;
    pub use serde_json;
    pub use utoipa;
}
