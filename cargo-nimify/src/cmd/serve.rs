//! `cargo nimify serve x.onnx`: serves any ONNX file over KServe V2 with no code, with the same
//! flags, `NIMIFY_*` environment variables and config file as every nimify service.

use std::path::PathBuf;

use clap::Args;
use nimify::ModelOptions;
use nimify::cli::ServiceArgs;

use crate::CliError;

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Name to serve the model under (default: the file stem).
    #[arg(long, env = "NIMIFY_MODEL_NAME")]
    pub name: Option<String>,
    /// Service settings.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Runs the command until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let mut options = ModelOptions::new(&args.model);
    options.name.clone_from(&args.name);
    nimify::cli::serve(&args.service, |server| server.model(options)).map_err(CliError::msg)
}
