//! `cargo nimify ort install|path`: puts the pinned ONNX Runtime library in the per-user cache
//! (from the official `onnxruntime` wheel on PyPI, fetched with `pip download` and checked
//! against a pinned sha256), or shows which library the lookup finds.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};
use nimify::__private::ortlib::{self, LIB_NAME, ORT_VERSION};
use sha2::Digest as _;

use crate::{CliError, IoContext};

/// The wheel nimify pins, per platform: (pip platform tag, file name, sha256).
const WHEELS: &[(&str, &str, &str)] = &[(
    "manylinux_2_28_x86_64",
    "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
)];

/// Files taken from the wheel's `onnxruntime/capi/`.
const FILES: &[&str] = &[LIB_NAME, "libonnxruntime_providers_shared.so"];

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
    /// Download ONNX Runtime 1.32.0 into the per-user cache (needs python3 with pip, or --wheel).
    Install {
        /// Use this already-downloaded wheel instead of running pip.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Install again even when the library is already there.
        #[arg(long)]
        force: bool,
    },
    /// Print the library the lookup finds (and every path it tries, with --verbose).
    Path {
        /// List every candidate path.
        #[arg(long)]
        verbose: bool,
    },
}

/// Runs the command.
pub fn run(args: &OrtArgs) -> Result<(), CliError> {
    match &args.command {
        OrtCommand::Install { wheel, force } => install(wheel.as_deref(), *force),
        OrtCommand::Path { verbose } => {
            if *verbose {
                for c in ortlib::candidates() {
                    eprintln!("{} {}", if c.is_file() { "found  " } else { "missing" }, c.display());
                }
            }
            println!("{}", ortlib::find()?.display());
            Ok(())
        }
    }
}

fn install(wheel: Option<&Path>, force: bool) -> Result<(), CliError> {
    let dir = ortlib::cache_dir()
        .ok_or_else(|| CliError::msg("no per-user cache directory (set NIMIFY_CACHE_DIR or HOME)"))?;
    let target = dir.join(LIB_NAME);
    if target.is_file() && !force {
        eprintln!("     Fresh ONNX Runtime {ORT_VERSION} already at {}", target.display());
        println!("{}", target.display());
        return Ok(());
    }
    let (platform, file_name, sha256) =
        WHEELS.iter().find(|(p, _, _)| p.ends_with(std::env::consts::ARCH)).ok_or_else(|| {
            CliError::msg(format!(
                "no pinned ONNX Runtime wheel for {}; set ORT_DYLIB_PATH to a libonnxruntime.so 1.31+",
                std::env::consts::ARCH
            ))
        })?;
    let download = tempdir(&dir)?;
    let wheel_path = match wheel {
        Some(w) => w.to_path_buf(),
        None => {
            eprintln!(" Downloading onnxruntime=={ORT_VERSION} ({platform}) with pip");
            pip_download(platform, &download)?;
            download.join(file_name)
        }
    };
    let bytes = std::fs::read(&wheel_path)
        .map_err(|e| CliError::msg(format!("cannot read wheel {}: {e}", wheel_path.display())))?;
    let actual = crate::image::layer::hex(&sha2::Sha256::digest(&bytes));
    if actual != *sha256 {
        return Err(CliError::msg(format!(
            "wheel {} has sha256 {actual}, expected {sha256}; refusing to install it",
            wheel_path.display()
        )));
    }
    extract(&bytes, &dir)?;
    let _ = std::fs::remove_dir_all(&download);
    eprintln!("   Installed ONNX Runtime {ORT_VERSION} to {}", dir.display());
    println!("{}", target.display());
    Ok(())
}

fn tempdir(cache: &Path) -> Result<PathBuf, CliError> {
    let dir = cache.with_file_name(format!("download-{}", std::process::id()));
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    Ok(dir)
}

fn pip_download(platform: &str, dest: &Path) -> Result<(), CliError> {
    let python = std::env::var("NIMIFY_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--platform",
            platform,
            "--python-version",
            "3.11",
        ])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(dest)
        .status()
        .map_err(|e| {
            CliError::msg(format!("cannot run `{python} -m pip`: {e}; install Python 3 with pip, or pass --wheel"))
        })?;
    if !status.success() {
        return Err(CliError::msg(format!(
            "`{python} -m pip download onnxruntime=={ORT_VERSION}` failed ({status}); check network access to PyPI, or pass --wheel"
        )));
    }
    Ok(())
}

fn extract(wheel: &[u8], dir: &Path) -> Result<(), CliError> {
    let bad = |e: String| CliError::msg(format!("cannot unpack the onnxruntime wheel: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    for name in FILES {
        let mut entry =
            archive.by_name(&format!("onnxruntime/capi/{name}")).map_err(|e| bad(format!("{name}: {e}")))?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
        // Write then rename, so a concurrent reader never sees half a library.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, &data).map_err(|e| bad(e.to_string()))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}
