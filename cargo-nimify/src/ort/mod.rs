//! Installing the pinned ONNX Runtime library without Python: the official `onnxruntime` wheel
//! is found on a Python package index, downloaded over HTTPS with the crate's one HTTP client,
//! checked against its pinned size and sha256, and its libraries (each checked again) put in the
//! per-user cache where the runtime's lookup finds them. `--from` takes a wheel or archive
//! already on disk instead, for hosts without network access.

pub mod archive;
pub mod index;
pub mod pins;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nimify::__private::ortlib::{self, ORT_VERSION};
use sha2::Digest as _;

use crate::CliError;
use pins::Pin;

/// What to install and from where.
#[derive(Debug, Default)]
pub struct Install {
    /// The platform (`linux/arm64`, a target triple); `None`: this machine's.
    pub platform: Option<String>,
    /// A wheel or `.tar.gz` archive on disk instead of a download.
    pub from: Option<PathBuf>,
    /// The package index (the "simple" API's root); `None`: `NIMIFY_INDEX_URL`, `PIP_INDEX_URL`
    /// or PyPI.
    pub index_url: Option<String>,
    /// Install again even when the cache holds the pinned files.
    pub force: bool,
}

/// Installs, or finds already installed, the pinned library; returns its path.
pub fn install(request: &Install) -> Result<PathBuf, CliError> {
    let platform = request.platform.clone().unwrap_or_else(ortlib::host_platform);
    let pin = pins::find(&platform).map_err(CliError::msg)?;
    let dir = ortlib::platform_cache_dir(pin.platform)
        .ok_or_else(|| CliError::msg("no per-user cache directory (set NIMIFY_CACHE_DIR or HOME)"))?;
    let library = dir.join(pin.library().name());
    if !request.force && installed(pin, &dir) {
        crate::term::status("Fresh", format!("ONNX Runtime {ORT_VERSION} ({}) at {}", pin.platform, dir.display()));
        return Ok(library);
    }
    std::fs::create_dir_all(&dir).map_err(CliError::io("create", &dir))?;
    let result = unpack(pin, &dir, request);
    if result.is_err() {
        // Nothing was put in place: leave no empty directory behind.
        let _ = std::fs::remove_dir(&dir);
    }
    result?;
    crate::term::status("Installed", format!("ONNX Runtime {ORT_VERSION} ({}) to {}", pin.platform, dir.display()));
    Ok(library)
}

/// Stages every pinned file from the request's source, then moves them into `dir`.
fn unpack(pin: &'static Pin, dir: &Path, request: &Install) -> Result<(), CliError> {
    let source = match &request.from {
        Some(path) => path.clone(),
        None => cached_wheel(pin, dir, request.index_url.as_deref())?,
    };
    let staged = archive::stage(&source, pin, dir).map_err(|e| match e {
        archive::ArchiveError::Io(io) => CliError::Io { op: "unpack", path: source.clone(), source: io },
        archive::ArchiveError::Mismatch { .. } => CliError::with_help(
            format!("refusing to install from {}: {e}", source.display()),
            format!(
                "use the official onnxruntime {ORT_VERSION} wheel for {} (any Python version), or set ORT_DYLIB_PATH to a library you trust",
                pin.platform
            ),
        ),
        other => CliError::msg(format!("cannot install from {}: {other}", source.display())),
    })?;
    // Every file was verified before the first is put in place.
    for s in &staged {
        std::fs::rename(&s.temp, &s.dest).map_err(CliError::io("install", &s.dest))?;
    }
    Ok(())
}

/// The pinned wheel, kept beside the platforms' directories (as cargo keeps `.crate` files): a
/// reinstall, `--force` or a damaged library needs no network; a kept wheel with other bytes is
/// downloaded again.
fn cached_wheel(pin: &'static Pin, dir: &Path, index: Option<&str>) -> Result<PathBuf, CliError> {
    let wheels = dir.parent().unwrap_or(dir);
    let kept = wheels.join(pin.wheel);
    if sha256_file(&kept).is_ok_and(|h| h == pin.wheel_sha256) {
        crate::term::status("Unpacking", format!("{} (downloaded before)", kept.display()));
        return Ok(kept);
    }
    let temp = download(pin, &index_url(index), wheels)?;
    std::fs::rename(&temp, &kept).map_err(CliError::io("keep the download as", &kept))?;
    Ok(kept)
}

/// The index to use: the flag, then `NIMIFY_INDEX_URL`, then pip's own `PIP_INDEX_URL`, then PyPI.
fn index_url(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("NIMIFY_INDEX_URL").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("PIP_INDEX_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| index::DEFAULT_INDEX.to_string())
}

/// Whether every pinned file is in `dir` with its pinned size and hash.
fn installed(pin: &Pin, dir: &Path) -> bool {
    pin.files.iter().all(|f| {
        let path = dir.join(f.name());
        std::fs::metadata(&path).is_ok_and(|m| m.len() == f.size) && sha256_file(&path).is_ok_and(|h| h == f.sha256)
    })
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(crate::image::layer::hex(&hasher.finalize()))
}

/// How many times a download is tried when the network, not the bytes, fails.
const ATTEMPTS: u32 = 3;

/// Downloads the pinned wheel into `dir` (under a temporary name) and returns its path, after
/// checking its size and sha256.
fn download(pin: &'static Pin, index: &str, dir: &Path) -> Result<PathBuf, CliError> {
    let agent = crate::http::agent(&[]);
    let page = index::project_page(index, "onnxruntime");
    let elsewhere = format!(
        "check the network (HTTPS_PROXY is honoured), name a mirror with --index-url or PIP_INDEX_URL, \
         or download {} elsewhere and pass --from FILE",
        pin.wheel
    );
    let url =
        retry(|| find_wheel(&agent, &page, pin.wheel)).map_err(|e| CliError::with_help(e.to_string(), &elsewhere))?;
    let temp = dir.join(format!(".{}.{}.partial", pin.wheel, std::process::id()));
    crate::term::status("Downloading", format!("{} ({})", pin.wheel, crate::image::human_size(pin.wheel_size)));
    crate::term::verbose("From", &url);
    let result = retry(|| fetch(&agent, &url, pin, &temp));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    match result {
        Ok(()) => Ok(temp),
        Err(Fetch::Refused(message)) => Err(CliError::with_help(
            message,
            "the index or a proxy served other bytes than PyPI's; try again, or use another mirror",
        )),
        Err(e) => Err(CliError::with_help(e.to_string(), elsewhere)),
    }
}

/// A failure worth another attempt, or not.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    /// The network or the server failed (a connection error, a 5xx, a body cut short).
    #[error("{0}")]
    Transient(String),
    /// The answer was wrong and will stay wrong (a 404, other bytes than pinned).
    #[error("{0}")]
    Refused(String),
}

fn retry<T>(mut attempt: impl FnMut() -> Result<T, Fetch>) -> Result<T, Fetch> {
    let mut tries = 1;
    loop {
        match attempt() {
            Err(Fetch::Transient(e)) if tries < ATTEMPTS => {
                crate::term::status("Retrying", format!("after: {e}"));
                std::thread::sleep(Duration::from_secs(u64::from(tries)));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// The wheel's address from the project page.
fn find_wheel(agent: &ureq::Agent, page: &str, wheel: &str) -> Result<String, Fetch> {
    let transient = |e: String| Fetch::Transient(format!("cannot read the package index page {page}: {e}"));
    let mut response = agent.get(page).header("Accept", index::ACCEPT).call().map_err(|e| transient(e.to_string()))?;
    check_status(response.status().as_u16(), page)?;
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("text/html").to_string();
    let body =
        response.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| transient(e.to_string()))?;
    index::wheel_url(page, &content_type, &body, wheel)
        .map_err(|e| Fetch::Refused(format!("the package index page {page} is not a simple-API page: {e}")))?
        .ok_or_else(|| Fetch::Refused(format!("the package index page {page} does not list {wheel}")))
}

fn check_status(status: u16, url: &str) -> Result<(), Fetch> {
    match status {
        200 => Ok(()),
        s if s >= 500 || s == 429 => Err(Fetch::Transient(format!("{url} answered HTTP {s}"))),
        s => Err(Fetch::Refused(format!("{url} answered HTTP {s}"))),
    }
}

/// Streams the wheel into `temp`, hashing as it goes, reading at most one byte past the pinned
/// size; the bytes must be exactly the pinned ones.
fn fetch(agent: &ureq::Agent, url: &str, pin: &Pin, temp: &Path) -> Result<(), Fetch> {
    let transient = |e: String| Fetch::Transient(format!("downloading {url}: {e}"));
    let response = agent.get(url).call().map_err(|e| transient(e.to_string()))?;
    check_status(response.status().as_u16(), url)?;
    let mut body = response.into_body().into_with_config().limit(pin.wheel_size + 1).reader();
    let mut out =
        std::fs::File::create(temp).map_err(|e| Fetch::Refused(format!("cannot write {}: {e}", temp.display())))?;
    let bar = crate::term::bytes_bar("Downloading", pin.wheel_size);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // ureq reports its own limit as an error; more bytes than pinned is not transient.
            Err(e) if size >= pin.wheel_size => {
                bar.finish_and_clear();
                return Err(Fetch::Refused(format!(
                    "{url} sent more than the pinned {} bytes of {} ({e})",
                    pin.wheel_size, pin.wheel
                )));
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(transient(e.to_string()));
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Fetch::Refused(format!("cannot write {}: {e}", temp.display())))?;
        size += n as u64;
        bar.set_position(size);
    }
    bar.finish_and_clear();
    let actual = crate::image::layer::hex(&hasher.finalize());
    if size != pin.wheel_size || actual != pin.wheel_sha256 {
        return Err(Fetch::Refused(format!(
            "{url} sent {size} bytes with sha256 {actual}, but {} is pinned as {} bytes with sha256 {}; refusing to install it",
            pin.wheel, pin.wheel_size, pin.wheel_sha256
        )));
    }
    Ok(())
}
