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

mod audit;
mod batch_plan;
mod batcher;
mod cancel;
pub mod cli;
pub mod config;
mod connections;
mod digest;
pub mod drift;
mod error;
mod grpc;
mod inference;
mod logging;
mod metrics;
mod model;
mod model_cache;
mod openapi;
mod ortlib;
mod payload_log;
pub mod repository;
mod request_body;
mod request_id;
mod routes;
mod server;
mod serving;
mod telemetry;
mod tensor;
mod tls;
pub mod typed;
mod v2;

/// mimalloc for every binary that links nimify (feature `mimalloc`, on by default): see
/// `runtime/Cargo.toml`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use config::Config;
pub use error::ApiError;
pub use model::{LoadError, ModelOptions};
pub use nimify_model::Dim;
pub use ortlib::OrtLibError;

pub use nimify_macros::nimify;
pub use server::{AppState, ServerBuilder};
pub use serving::{Listeners, serve, shutdown_signal};

pub(crate) use model::Model;

/// Default listen address.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Default listen port.
pub const DEFAULT_PORT: u16 = 8000;
/// Default gRPC listen port (Triton's).
pub const DEFAULT_GRPC_PORT: u16 = 8001;

#[doc(hidden)]
#[path = "fuzz_door.rs"]
pub mod __fuzz;

#[doc(hidden)]
pub mod __bench {
    //! The internals the benchmarks time (`runtime/benches`); not a public API.
    pub use crate::batcher::run_session;
    pub use crate::model::open_session;
    pub use crate::ortlib::environment;
    pub use crate::tensor::Tensor;

    /// Decodes a V2 request body (all JSON) for a model taking one input `name` of `elem`, with
    /// the fast JSON reader or (`fast: false`) the reference decoder alone; the number of
    /// elements read.
    pub fn v2_decode(
        name: &str,
        elem: nimify_model::ElementType,
        body: &bytes::Bytes,
        fast: bool,
    ) -> Result<usize, String> {
        let inputs = [crate::model::TensorSpec { name: name.into(), elem, shape: None }];
        let decoded =
            crate::v2::codec::decode_with("bench", &inputs, &[], None, body, fast).map_err(|e| e.to_string())?;
        Ok(decoded.inputs.iter().map(|(_, t)| t.data.len()).sum())
    }

    /// Reads a typed route's JSON body into `T` as the route does (`tracked`: with every
    /// element's path tracked, as the route did before reading straight into the type).
    pub fn typed_decode<T: serde::de::DeserializeOwned>(body: &[u8], tracked: bool) -> Result<T, String> {
        match tracked {
            true => serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                .map_err(|e| e.to_string()),
            false => crate::routes::typed::parse_json(body).map_err(|e| e.to_string()),
        }
    }

    /// Writes f32 elements as a JSON output writes them; the bytes written.
    pub fn v2_encode_json(data: Vec<f32>) -> usize {
        let data = crate::tensor::TensorData::F32(data);
        let mut out = Vec::new();
        crate::v2::codec::write_json_elements(&data, 0..data.len(), &mut out);
        out.len()
    }
}

#[doc(hidden)]
pub mod __private {

    //! What the macro's generated code and nimify's own crates (`cargo-nimify`, the tests) name;
    //! not a public API: it changes without notice.

    pub use crate::audit::rfc3339;

    /// Whether spans are exported (for [`__trace_span`](crate::__trace_span)).
    pub fn telemetry_enabled() -> bool {
        crate::telemetry::enabled()
    }
    pub use half;
    pub use nimify_model::{Dim, ElementType};
    pub use serde;
    pub use serde_json;
    pub use utoipa;

    /// The ONNX Runtime library nimify loads, for `cargo nimify ort` and `image`.
    pub mod ortlib {
        pub use crate::ortlib::{
            INSTALL_HINT, LIB_NAME, ORT_VERSION, OrtLibError, cache_dir, candidates, environment, find, host_platform,
            platform_cache_dir, platform_name,
        };
    }
    pub use crate::tensor::{Tensor, TensorData};
    pub use crate::typed::generated::*;
    pub use nimify_model::decl::TensorDecl;

    /// Where [`asset!`](crate::asset) finds `relative`: under `NIMIFY_ASSET_DIR` when set (images
    /// set it), else under the crate's own directory.
    pub fn asset_path(manifest_dir: &str, relative: &str) -> std::path::PathBuf {
        match std::env::var_os("NIMIFY_ASSET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => std::path::PathBuf::from(dir).join(relative),
            None => std::path::Path::new(manifest_dir).join(relative),
        }
    }
}

/// The path of a file shipped next to the service: declare it in `[package.metadata.nimify]
/// assets = ["tokenizer.json"]` (relative to the crate) and read it at run time from
/// `nimify::asset!("tokenizer.json")`. `cargo run` finds it in the crate; an image built by
/// `cargo nimify image` carries it and sets `NIMIFY_ASSET_DIR`.
#[macro_export]
macro_rules! asset {
    ($relative:expr) => {
        $crate::__private::asset_path(::core::env!("CARGO_MANIFEST_DIR"), $relative)
    };
}
