//! Finding and loading the ONNX Runtime shared library.
//!
//! One lookup serves users, tests, CI and image building, in this order:
//! 1. `ORT_DYLIB_PATH` (a relative path is tried against the executable's directory, then the
//!    working directory);
//! 2. the directory of the running executable (where an image puts it);
//! 3. the per-user cache that `cargo nimify ort install` fills.
//!
//! Not found, or a library older than the API nimify is built for, is one clear error that lists
//! every path tried and the command that fixes it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release nimify is built and tested against.
pub const ORT_VERSION: &str = "1.32.0";

/// File name of the library on this platform (as the official builds name it).
#[cfg(not(any(target_os = "macos", windows)))]
pub const LIB_NAME: &str = "libonnxruntime.so.1.32.0";
/// File name of the library on this platform (as the official builds name it).
#[cfg(target_os = "macos")]
pub const LIB_NAME: &str = "libonnxruntime.1.32.0.dylib";
/// File name of the library on this platform (as the official builds name it).
#[cfg(windows)]
pub const LIB_NAME: &str = "onnxruntime.dll";

/// The command that installs the library into the per-user cache.
pub const INSTALL_HINT: &str =
    "run `cargo nimify ort install` (or set ORT_DYLIB_PATH to an ONNX Runtime library of version 1.31 or newer)";

/// Why ONNX Runtime could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtLibError {
    /// No candidate path exists.
    #[error("ONNX Runtime library not found (tried: {}); {INSTALL_HINT}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// Every path looked at, in order.
        tried: Vec<PathBuf>,
    },
    /// A file was found but ONNX Runtime refused it (too old, wrong architecture, corrupt).
    #[error("cannot load ONNX Runtime from {path}: {reason}; {INSTALL_HINT}")]
    Load {
        /// The library path.
        path: PathBuf,
        /// What `ort` reported.
        reason: String,
    },
}

/// The platform this process runs on, as OCI images name platforms: `linux/amd64`,
/// `linux/arm64`, `darwin/arm64`, `windows/amd64`.
pub fn host_platform() -> String {
    platform_name(std::env::consts::OS, std::env::consts::ARCH)
}

/// The OCI platform of a Rust OS and architecture name: `macos` + `aarch64` -> `darwin/arm64`
/// (names OCI already uses pass through).
pub fn platform_name(os: &str, arch: &str) -> String {
    let os = match os {
        "macos" => "darwin",
        other => other,
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{os}/{arch}")
}

/// The per-user cache directory of the pinned ONNX Runtime for `platform` (`linux/arm64`):
/// `$NIMIFY_CACHE_DIR/onnxruntime/<version>/linux-arm64`, by default under the user's cache
/// directory (`~/.cache/nimify/...` on Linux).
pub fn platform_cache_dir(platform: &str) -> Option<PathBuf> {
    Some(cache_base()?.join("onnxruntime").join(ORT_VERSION).join(platform.replace('/', "-")))
}

/// nimify's per-user cache: `$NIMIFY_CACHE_DIR` when set and not empty, else `nimify` under the
/// user's cache directory (`~/.cache/nimify` on Linux).
pub fn cache_base() -> Option<PathBuf> {
    std::env::var_os("NIMIFY_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("nimify")))
}

/// The per-user cache directory of this platform's library (see [`platform_cache_dir`]).
pub fn cache_dir() -> Option<PathBuf> {
    platform_cache_dir(&host_platform())
}

/// Every path the lookup tries, in order.
pub fn candidates() -> Vec<PathBuf> {
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map(PathBuf::from) {
        if p.is_relative() {
            if let Some(dir) = &exe_dir {
                out.push(dir.join(&p));
            }
            if let Ok(cwd) = std::env::current_dir() {
                out.push(cwd.join(&p));
            }
        } else {
            out.push(p);
        }
    }
    if let Some(dir) = exe_dir {
        out.push(dir.join(LIB_NAME));
    }
    if let Some(dir) = cache_dir() {
        out.push(dir.join(LIB_NAME));
    }
    out
}

/// Finds the library without loading it.
pub fn find() -> Result<PathBuf, OrtLibError> {
    let tried = candidates();
    tried.iter().find(|p| p.is_file()).cloned().ok_or(OrtLibError::NotFound { tried })
}

static ENV: OnceLock<Result<ort::environment::Environment, OrtLibError>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment.
pub fn environment() -> Result<&'static ort::environment::Environment, OrtLibError> {
    ENV.get_or_init(|| {
        let path = find()?;
        let load_err = |reason: String| OrtLibError::Load { path: path.clone(), reason };
        let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
        builder.with_name("nimify").build().map_err(|e| load_err(e.to_string()))
    })
    .as_ref()
    .map_err(Clone::clone)
}
