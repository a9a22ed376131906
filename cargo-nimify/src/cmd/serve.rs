//! `cargo nimify serve x.onnx`: serves any ONNX file over KServe V2 with no code.

use std::path::PathBuf;

use clap::Args;
use nimify::{ModelOptions, ServerBuilder};

use crate::CliError;

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Name to serve the model under (default: the file stem).
    #[arg(long, env = "NIMIFY_MODEL_NAME")]
    pub name: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "NIMIFY_HOST", default_value = nimify::DEFAULT_HOST)]
    pub host: String,
    /// Port to listen on (0 picks a free one and logs it).
    #[arg(long, env = "NIMIFY_PORT", default_value_t = nimify::DEFAULT_PORT)]
    pub port: u16,
    /// Largest request body accepted, in bytes; larger gets 413.
    #[arg(long, env = "NIMIFY_MAX_BODY_BYTES", default_value_t = nimify::server::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime's default).
    #[arg(long, env = "NIMIFY_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
}

/// Runs the command until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    nimify::logging::init();
    let mut options = ModelOptions::new(&args.model);
    options.name = args.name.clone();
    options.intra_threads = args.intra_threads;
    let (state, router) = ServerBuilder::default().model(options).max_body(args.max_body_bytes).build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Message(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| CliError::Message(format!("cannot listen on {address}: {e}; pick another --port or stop what uses it")))?;
        nimify::serve(listener, state, router, nimify::shutdown_signal())
            .await
            .map_err(|e| CliError::Message(format!("server failed: {e}")))
    })
}
