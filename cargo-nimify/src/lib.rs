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
mod term;

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

/// `cargo` passes the subcommand name as the first argument: `cargo-nimify nimify ...`.
#[derive(Debug, Parser)]
#[command(name = "cargo", bin_name = "cargo", styles = clap::builder::styling::Styles::styled())]
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
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a model's signature: inputs, outputs, opsets, producer, size, sha256.
    Inspect(cmd::inspect::InspectArgs),
    /// Serve an ONNX file over KServe V2 / Open Inference Protocol, no code needed.
    Serve(Box<cmd::serve::ServeArgs>),
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
}

/// Output formats of `build` and `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human status on stderr, the essential value on stdout.
    Text,
    /// JSON on stdout.
    Json,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let Cargo::Nimify(cli) = Cargo::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(&args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Ort(args) => cmd::ort::run(&args),
        Command::New(args) => cmd::new::new(&args),
        Command::Init(args) => cmd::new::init(&args),
        Command::Build(args) => cmd::build::run(&args),
        Command::Image(args) => cmd::image::run(&args),
        Command::Chart(args) => cmd::chart::run(&args),
        Command::Deploy(args) => cmd::deploy::deploy(&args),
        Command::Rollback(args) => cmd::deploy::rollback(&args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("{}", e.render());
            ExitCode::from(exit::FAILURE)
        }
    }
}
