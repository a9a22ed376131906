//! The `cargo nimify` subcommand: argument parsing and dispatch. Each subcommand is a file in
//! `cmd/`; expected failures are [`CliError`]s, printed the way cargo prints its own, with a documented
//! exit code.

// The argument structs' doc comments are the `--help` text clap prints (`[default: ...]`,
// `<name>`), written for a terminal rather than for rustdoc.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

pub mod cmd;
mod error;
mod http;
pub mod image;
pub mod ort;
pub mod project;
pub mod term;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use error::{CliError, IoContext};

/// Exit codes (documented in `--help`).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An expected failure: bad model file, missing ONNX Runtime, bind error.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
}

// `cargo` runs `cargo-nimify nimify ...`: the binary is named `cargo` for clap so its usage
// lines read `cargo nimify ...`, and `nimify` is the one subcommand.
#[allow(missing_docs)]
#[derive(Debug, Parser)]
#[command(
    name = "cargo",
    bin_name = "cargo",
    about = "Turn ONNX models into production inference services.",
    long_about = None,
    styles = clap::builder::styling::Styles::styled()
)]
pub enum Cargo {
    /// Turn ONNX models into production inference services.
    Nimify(Cli),
}

/// Turn ONNX models into production inference services.
#[derive(Debug, Args)]
#[command(
    version,
    after_help = "Exit codes: 0 success, 1 failure (the message says why and how to fix it), 2 bad usage."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Output: text, or json (one JSON document on stdout, errors included).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = Format::Text,
        env = "NIMIFY_FORMAT",
        hide_possible_values = true,
        help_heading = "Global options"
    )]
    pub format: Format,
    /// Colour: auto, always or never [default: $CARGO_TERM_COLOR, else auto].
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        hide_possible_values = true,
        help_heading = "Global options"
    )]
    pub color: Option<term::ColorWhen>,
    /// Print only errors (and the result).
    #[arg(long, short, global = true, conflicts_with = "verbose", help_heading = "Global options")]
    pub quiet: bool,
    /// Also print the commands run and the paths tried.
    #[arg(long, short, global = true, help_heading = "Global options")]
    pub verbose: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's signature: inputs, outputs, opsets, producer, size, sha256.
    Inspect(cmd::inspect::InspectArgs),
    /// Serve ONNX files or a model repository over KServe V2 / Open Inference Protocol, no code needed.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Write a model's reference profile from a data sample, for drift monitoring (`serve --reference`).
    Profile(cmd::profile::ProfileArgs),
    /// Manage the ONNX Runtime library nimify loads.
    Ort(cmd::ort::OrtArgs),
    /// Create a service crate for a model: typed endpoint, V2, metrics, docs.
    New(cmd::new::NewCommand),
    /// Turn the current directory (e.g. a fresh `cargo init`) into a service crate for a model.
    Init(cmd::new::NewArgs),
    /// Build the service crate's binary (`cargo build --release`).
    Build(cmd::build::BuildArgs),
    /// Build a reproducible OCI image of the service, without Docker.
    Image(Box<cmd::image::ImageArgs>),
    /// Write the service's Helm chart (image by digest from `cargo nimify image`).
    Chart(cmd::chart::ChartArgs),
    /// Install or upgrade the service in an environment with Helm.
    Deploy(cmd::deploy::DeployArgs),
    /// Roll an environment back to an earlier Helm revision.
    Rollback(cmd::deploy::RollbackArgs),
    /// Finish a canary (`deploy --canary`): the stable pods take its image, then it is removed.
    Promote(cmd::canary::FinishArgs),
    /// Roll a canary back: every request to the stable pods, then the canary is removed.
    Abort(cmd::canary::FinishArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions(cmd::completions::CompletionsArgs),
}

/// Output formats, the same for every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human status on stderr, the essential value (a path, a digest, a table) on stdout.
    #[value(alias = "table")]
    Text,
    /// One JSON document on stdout: the result, or `{"error": {...}}` on failure.
    Json,
}

/// The first `program` on PATH that is an executable file.
pub fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &std::path::Path) -> bool {
    path.is_file()
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let color = term::ColorWhen::from_args_and_env(&args, std::env::var("CARGO_TERM_COLOR").ok());
    let command = <Cargo as clap::CommandFactory>::command().color(color.for_clap());
    let parsed =
        command.try_get_matches_from(&args).and_then(|m| <Cargo as clap::FromArgMatches>::from_arg_matches(&m));
    let Cargo::Nimify(cli) = match parsed {
        Ok(cli) => cli,
        Err(e) => usage_error(&args, e),
    };
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => term::Verbosity::Quiet,
        (_, true) => term::Verbosity::Verbose,
        _ => term::Verbosity::Normal,
    };
    term::configure(cli.color.unwrap_or(color), verbosity);
    let out = Out { format: cli.format };
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(&args, out),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Profile(args) => cmd::profile::run(&args, out),
        Command::Ort(args) => cmd::ort::run(&args, out),
        Command::New(args) => cmd::new::new(&args, out),
        Command::Init(args) => cmd::new::init(&args, out),
        Command::Build(args) => cmd::build::run(&args, out),
        Command::Image(args) => cmd::image::run(&args, out),
        Command::Chart(args) => cmd::chart::run(&args, out),
        Command::Deploy(args) => cmd::deploy::deploy(&args, out),
        Command::Rollback(args) => cmd::deploy::rollback(&args, out),
        Command::Promote(args) => cmd::canary::finish(&args, cmd::canary::Finish::Promote, out),
        Command::Abort(args) => cmd::canary::finish(&args, cmd::canary::Finish::Abort, out),
        Command::Completions(args) => cmd::completions::run(&args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if out.format == Format::Json {
                println!("{}", e.to_json());
            }
            anstream::eprintln!("{}", e.styled());
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Prints clap's error (help and version requests too) and exits; with `--format json` a usage
/// error is also a JSON object on stdout, `kind` `usage`, like every other failure.
fn usage_error(args: &[std::ffi::OsString], e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let json = term::flag_value(args, "--format")
        .or_else(|| std::env::var("NIMIFY_FORMAT").ok())
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    // Help asked for is no error; help shown for a missing subcommand is (exit 2).
    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if json && !informational {
        let text = e.render().to_string();
        let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        let help = format!("run `cargo nimify {}--help`", subcommand_hint(args));
        println!("{}", serde_json::json!({"error": {"kind": "usage", "message": message, "causes": [], "help": help}}));
    }
    e.exit()
}

/// `image ` when the arguments name a subcommand, for pointing at the right `--help`.
fn subcommand_hint(args: &[std::ffi::OsString]) -> String {
    let names: Vec<String> = <Cargo as clap::CommandFactory>::command()
        .find_subcommand("nimify")
        .map(|n| n.get_subcommands().map(|c| c.get_name().to_string()).collect())
        .unwrap_or_default();
    args.iter()
        .skip(2)
        .map(|a| a.to_string_lossy())
        .find(|a| names.iter().any(|n| n == a))
        .map_or_else(String::new, |a| format!("{a} "))
}

/// Where a command's result goes: text for people or one JSON document for programs.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--format`.
    pub format: Format,
}

impl Out {
    /// Prints the result: `text` as it is, or `json` as one line.
    pub fn result(self, text: impl std::fmt::Display, json: impl FnOnce() -> serde_json::Value) {
        match self.format {
            Format::Text => println!("{text}"),
            Format::Json => println!("{}", json()),
        }
    }

    /// For commands whose text output is their status lines alone: the JSON document, if asked for.
    pub fn json_only(self, json: impl FnOnce() -> serde_json::Value) {
        if self.format == Format::Json {
            println!("{}", json());
        }
    }
}
