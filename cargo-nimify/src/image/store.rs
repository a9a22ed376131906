//! A staging directory of content-addressed blobs (`blobs/sha256/<hex>`), removed when dropped:
//! layers, config and manifest are written here first, so an output is only touched once every
//! blob exists and a failure leaves nothing half-written.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::{CliError, IoContext};

/// One blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>` of the stored bytes.
    pub digest: String,
    /// Stored size in bytes.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
    /// For layers: `sha256:<hex>` of the uncompressed tar.
    pub diff_id: Option<String>,
    /// For layers: size of the uncompressed tar.
    pub uncompressed_size: Option<u64>,
}

impl Blob {
    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// The staging directory.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    next: AtomicU64,
    cache: Option<PathBuf>,
}

/// Compressed layers the layer cache keeps (the newest by use); older ones are removed.
const CACHED_LAYERS: usize = 16;

impl BlobStore {
    /// Creates (or empties) `dir`.
    pub fn create(dir: PathBuf) -> Result<Self, CliError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("blobs/sha256")).at("create", &dir)?;
        Ok(Self { dir, next: AtomicU64::new(0), cache: None })
    }

    /// Keeps compressed layers in `cache` (`<diff id hex>.tar.gz` with its digest in
    /// `<diff id hex>.digest`), so a layer whose tar is unchanged since an earlier build (ONNX
    /// Runtime, the libraries, an unchanged binary) is not compressed again.
    pub fn with_layer_cache(mut self, cache: PathBuf) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cached compressed blob of the layer whose tar has `diff_id`, copied into the store
    /// and checked against its recorded digest; `None` when absent or damaged (then dropped).
    pub fn cached_layer(&self, diff_id: &str) -> Result<Option<Blob>, CliError> {
        let Some(cache) = &self.cache else { return Ok(None) };
        let hex = diff_id.trim_start_matches("sha256:");
        let (blob, record) = (cache.join(format!("{hex}.tar.gz")), cache.join(format!("{hex}.digest")));
        let (Ok(digest), Ok(mut input)) = (std::fs::read_to_string(&record), File::open(&blob)) else {
            return Ok(None);
        };
        let (mut out, temp) = self.temp_file()?;
        let mut hashing = super::layer::Hashing::new(&mut out);
        std::io::copy(&mut input, &mut hashing).at("copy a cached layer into", &temp)?;
        let (actual, size, _) = hashing.finish();
        if actual != digest.trim() {
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(&blob);
            let _ = std::fs::remove_file(&record);
            return Ok(None);
        }
        let _ = File::open(&blob).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        self.commit(temp, &actual, size).map(Some)
    }

    /// Adds a freshly compressed layer to the cache (best effort: a cache that cannot be
    /// written only costs the next build its compression), keeping the newest `CACHED_LAYERS`.
    pub fn cache_layer(&self, diff_id: &str, blob: &Blob) {
        let Some(cache) = &self.cache else { return };
        let hex = diff_id.trim_start_matches("sha256:");
        let _ = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(cache)?;
            let temp = cache.join(format!(".{hex}.{}", std::process::id()));
            if std::fs::hard_link(&blob.path, &temp).is_err() {
                std::fs::copy(&blob.path, &temp)?;
            }
            std::fs::rename(&temp, cache.join(format!("{hex}.tar.gz")))?;
            std::fs::write(&temp, &blob.digest)?;
            std::fs::rename(&temp, cache.join(format!("{hex}.digest")))?;
            let mut layers: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "gz"))
                .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
                .collect();
            layers.sort();
            for (_, old) in layers.iter().rev().skip(CACHED_LAYERS) {
                let _ = std::fs::remove_file(old.with_extension("").with_extension("digest"));
                let _ = std::fs::remove_file(old);
            }
            Ok(())
        })();
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new temporary file inside the store.
    pub fn temp_file(&self) -> Result<(File, PathBuf), CliError> {
        let path = self.dir.join(format!("tmp-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        let file = File::create(&path).at("create", &path)?;
        Ok((file, path))
    }

    /// Moves a finished temporary file to its content address.
    pub fn commit(&self, temp: PathBuf, digest: &str, size: u64) -> Result<Blob, CliError> {
        let path = self.blob_path(digest);
        std::fs::rename(&temp, &path)
            .map_err(|e| CliError::msg(format!("cannot move {} to {}: {e}", temp.display(), path.display())))?;
        Ok(Blob { digest: digest.to_string(), size, path, diff_id: None, uncompressed_size: None })
    }

    /// Stores `bytes` (a config or manifest).
    pub fn bytes(&self, bytes: &[u8]) -> Result<Blob, CliError> {
        let digest = format!("sha256:{}", super::layer::hex(&Sha256::digest(bytes)));
        let path = self.blob_path(&digest);
        std::fs::write(&path, bytes).at("write", &path)?;
        Ok(Blob { digest, size: bytes.len() as u64, path, diff_id: None, uncompressed_size: None })
    }

    /// Brings in a blob from elsewhere (a base image), checking its digest.
    pub fn import(&self, from: &Path, digest: &str) -> Result<Blob, CliError> {
        let input = File::open(from).map_err(|e| CliError::msg(format!("cannot read blob {}: {e}", from.display())))?;
        self.import_from(input, digest, &from.display().to_string())
    }

    /// Stores what `input` reads (`what` names it in errors), checking it has `digest`.
    pub fn import_from(&self, mut input: impl std::io::Read, digest: &str, what: &str) -> Result<Blob, CliError> {
        let (mut out, temp) = self.temp_file()?;
        let mut hashing = super::layer::Hashing::new(&mut out);
        let copied = std::io::copy(&mut input, &mut hashing);
        let (actual, size, _) = hashing.finish();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&temp);
            return Err(CliError::msg(format!("cannot copy blob {what}: {e}")));
        }
        if actual != digest {
            let _ = std::fs::remove_file(&temp);
            return Err(CliError::msg(format!(
                "blob {what} has digest {actual}, but the base image says {digest}; the base image is corrupt"
            )));
        }
        self.commit(temp, digest, size)
    }

    /// `blobs/sha256/<hex>` for a digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }
}

impl Drop for BlobStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes what interrupted runs left in `parent`: entries named `<prefix><pid>` whose process
/// is gone (a Ctrl-C or SIGKILL skips the cleanup on drop). Entries of live processes, a
/// concurrent build's, stay; without `/proc` to tell, nothing is removed.
pub fn sweep_abandoned(parent: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// Copies `from` to `to` through a temporary name in `to`'s directory (hard link when possible),
/// so `to` is either absent or complete.
pub fn place(from: &Path, to: &Path) -> Result<(), CliError> {
    if to.is_file() {
        return Ok(());
    }
    let temp = to.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    if std::fs::hard_link(from, &temp).is_err() {
        std::fs::copy(from, &temp).at("write", &temp)?;
    }
    std::fs::rename(&temp, to).at("write", to)
}
