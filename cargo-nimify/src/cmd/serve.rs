//! `cargo nimify serve x.onnx [y.onnx ...]` or `cargo nimify serve REPO`: serves ONNX files, or a
//! Triton-style model repository, over KServe V2 with no code, with the same flags, `NIMIFY_*`
//! environment variables and config file as every nimify service.

use std::path::PathBuf;

use clap::Args;
use nimify::ModelOptions;
use nimify::cli::ServiceArgs;

use crate::CliError;

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// ONNX model files, each served under its file stem, or one model repository directory
    /// (REPO/NAME/VERSION/model.onnx; the same as --model-repository).
    #[arg(num_args = 0.., required_unless_present = "model_repository")]
    pub models: Vec<PathBuf>,
    /// Name to serve the model under (default: the file stem); only with one model file.
    #[arg(long, env = "NIMIFY_MODEL_NAME")]
    pub name: Option<String>,
    /// Service settings.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Runs the command until SIGTERM or Ctrl-C.
pub fn run(mut args: ServeArgs) -> Result<(), CliError> {
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = args.models.iter().cloned().partition(|p| p.is_dir());
    match (dirs.as_slice(), &args.service.model_repository) {
        ([], _) => {}
        ([dir], None) => args.service.model_repository = Some(dir.clone()),
        ([dir], Some(given)) if same_dir(dir, given) => {}
        ([_], Some(_)) | ([_, _, ..], _) => {
            return Err(CliError::with_help(
                "serve takes one model repository directory",
                "give one directory (or --model-repository DIR), and any number of .onnx files beside it",
            ));
        }
    }
    if args.name.is_some() && files.len() != 1 {
        return Err(CliError::with_help(
            format!("--name names one model file, and {} were given", files.len()),
            "leave --name out: each file is served under its file stem",
        ));
    }
    let mut options: Vec<ModelOptions> = Vec::new();
    for file in &files {
        let mut o = ModelOptions::new(file);
        o.name.clone_from(&args.name);
        if let Some(same) = options.iter().find(|p| p.served_name() == o.served_name()) {
            return Err(CliError::with_help(
                format!("{} and {} would both be served as {:?}", same.path.display(), file.display(), o.served_name()),
                "rename one file, or lay them out as versions of one model in a repository: REPO/<name>/<version>/model.onnx",
            ));
        }
        options.push(o);
    }
    nimify::cli::serve(&args.service, |server| options.into_iter().fold(server, nimify::ServerBuilder::model))
        .map_err(CliError::msg)
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}
