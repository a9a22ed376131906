//! `cargo nimify ort install|path`: puts the pinned ONNX Runtime library in the per-user cache
//! (see [`crate::ort`]), or shows which library the lookup finds.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use nimify::__private::ortlib;
use serde_json::json;

use crate::ort::{Install, pins};
use crate::{CliError, Out, term};
/// `ort` arguments.
#[derive(Debug, Args)]
pub struct OrtArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: OrtCommand,
}

/// `ort` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrtCommand {
    /// Download ONNX Runtime 1.32.0 (the official wheel from the Python package index, sha256
    /// checked) into the per-user cache. No Python needed.
    Install {
        /// Install from this wheel or .tar.gz archive already on disk instead of downloading
        /// (its libraries must be the pinned ones).
        #[arg(long, value_name = "FILE", alias = "wheel")]
        from: Option<PathBuf>,
        /// Install for another platform: linux/amd64, linux/arm64, darwin/arm64, windows/amd64
        /// (or a Rust target triple), e.g. for a multi-platform image. [default: this machine's]
        #[arg(long)]
        platform: Option<String>,
        /// The package index to download from (a "simple" API root, like pip's --index-url).
        /// [default: $NIMIFY_INDEX_URL, then $PIP_INDEX_URL, then PyPI]
        #[arg(long, value_name = "URL")]
        index_url: Option<String>,
        /// Install again even when the library is already there.
        #[arg(long)]
        force: bool,
    },
    /// Print the library the lookup finds (with --verbose: the platform, the library's file name
    /// and every path tried).
    Path,
}

/// Runs the command.
pub fn run(args: &OrtArgs, out: Out) -> Result<(), CliError> {
    match &args.command {
        OrtCommand::Install { from, platform, index_url, force } => {
            let request =
                Install { platform: platform.clone(), from: from.clone(), index_url: index_url.clone(), force: *force };
            let library = crate::ort::install(&request)?;
            out.result(library.display(), || json!({"library": library, "version": ortlib::ORT_VERSION}));
            Ok(())
        }
        OrtCommand::Path => {
            let host = ortlib::host_platform();
            let pinned = pins::find(&host).map_or_else(|e| e, |p| format!("pinned wheel {}", p.wheel));
            term::verbose("Platform", format!("{host}: {} ({pinned})", ortlib::LIB_NAME));
            let candidates = ortlib::candidates();
            for c in &candidates {
                term::verbose(if c.is_file() { "Found" } else { "Missing" }, c.display());
            }
            let library = ortlib::find()?;
            out.result(library.display(), || {
                json!({"library": library, "platform": host, "file_name": ortlib::LIB_NAME, "candidates": candidates})
            });
            Ok(())
        }
    }
}
