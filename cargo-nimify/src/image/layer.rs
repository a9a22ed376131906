//! Reproducible layers: a sorted set of files and directories written as a gzip-compressed tar
//! with normalised metadata (owner 0:0, no user or group names, modes 0644/0755, one timestamp),
//! so the same inputs give the same bytes and digest whatever their mtimes or owners on disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::store::{Blob, BlobStore};
use crate::{CliError, IoContext};

/// Where an entry's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on the build host (symlinks followed).
    File(PathBuf),
    /// Generated content.
    Bytes(Vec<u8>),
    /// A directory.
    Dir,
}

#[derive(Debug, Clone)]
struct Entry {
    source: Source,
    mode: u32,
}

/// The content of one layer, keyed by absolute path in the image.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

impl Layer {
    /// Adds a host file at `path`; executable on the host means mode 0755, else 0644.
    pub fn file(&mut self, path: &str, host: &Path) -> Result<(), CliError> {
        let meta = std::fs::metadata(host).at("read", host)?;
        if !meta.is_file() {
            return Err(CliError::msg(format!("{} is not a regular file", host.display())));
        }
        #[cfg(unix)]
        let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
        #[cfg(not(unix))]
        let executable = false;
        self.insert(path, Source::File(host.to_path_buf()), if executable { 0o755 } else { 0o644 })
    }

    /// Adds generated content at `path` with mode 0644.
    pub fn bytes(&mut self, path: &str, content: impl Into<Vec<u8>>) -> Result<(), CliError> {
        self.insert(path, Source::Bytes(content.into()), 0o644)
    }

    /// Adds a directory with an explicit mode (parents of files get 0755 on their own).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CliError> {
        self.insert(path, Source::Dir, mode)
    }

    /// Adds a host directory's files under `path`, recursively, in sorted order.
    pub fn tree(&mut self, path: &str, host: &Path) -> Result<(), CliError> {
        let read = |d: &Path| std::fs::read_dir(d).at("list", d);
        let mut names: Vec<_> = read(host)?.filter_map(Result::ok).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let child = host.join(&name);
            let inner = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
            if child.is_dir() { self.tree(&inner, &child)? } else { self.file(&inner, &child)? }
        }
        Ok(())
    }

    /// Whether the layer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: &str, source: Source, mode: u32) -> Result<(), CliError> {
        let path = normalise(path)?;
        if let Some(old) = self.entries.get(&path) {
            let same_dir = matches!((&old.source, &source), (Source::Dir, Source::Dir));
            if !same_dir {
                return Err(CliError::msg(format!("two files would land at /{path} in the image; rename one of them")));
            }
        }
        self.entries.insert(path, Entry { source, mode });
        Ok(())
    }

    /// Every entry with its parent directories, sorted by path.
    fn with_parents(&self) -> BTreeMap<String, Entry> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                all.entry(p.to_string_lossy().into_owned()).or_insert(Entry { source: Source::Dir, mode: 0o755 });
                parent = p.parent();
            }
        }
        all
    }

    /// Writes the layer as `tar+gzip` into `store`, timestamps set to `epoch`. The uncompressed
    /// tar is hashed first: when the store's layer cache holds a compressed blob of that exact
    /// tar (gzip is deterministic, so it is the blob this call would make), it is reused instead
    /// of compressing again. Returns the blob and whether it came from the cache.
    pub fn write(&self, store: &BlobStore, epoch: u64) -> Result<(Blob, bool), CliError> {
        let fail =
            |e: std::io::Error| CliError::msg(format!("cannot write a layer into {}: {e}", store.dir().display()));
        let (diff_id, uncompressed_size, _) = self.tar(Hashing::new(std::io::sink()), epoch, &fail)?.finish();
        if let Some(blob) = store.cached_layer(&diff_id)? {
            return Ok((Blob { diff_id: Some(diff_id), uncompressed_size: Some(uncompressed_size), ..blob }, true));
        }
        let (file, temp) = store.temp_file()?;
        let gz = flate2::GzBuilder::new().mtime(0).write(Hashing::new(file), flate2::Compression::default());
        let counted = crate::term::Counted::new(gz, crate::term::bytes_bar("Compressing", uncompressed_size));
        let gz = self.tar(counted, epoch, &fail)?.into_inner();
        let (digest, size, mut file) = gz.finish().map_err(fail)?.finish();
        file.flush().map_err(fail)?;
        let blob = store.commit(temp, &digest, size)?;
        store.cache_layer(&diff_id, &blob);
        Ok((Blob { diff_id: Some(diff_id), uncompressed_size: Some(uncompressed_size), ..blob }, false))
    }

    /// Writes the tar of every entry (parents first, sorted) into `out` and returns it.
    fn tar<W: Write>(&self, out: W, epoch: u64, fail: &dyn Fn(std::io::Error) -> CliError) -> Result<W, CliError> {
        let mut tar = tar::Builder::new(out);
        for (path, entry) in self.with_parents() {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(epoch);
            header.set_mode(entry.mode);
            match &entry.source {
                Source::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty()).map_err(fail)?;
                }
                Source::Bytes(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, &path, bytes.as_slice()).map_err(fail)?;
                }
                Source::File(host) => {
                    let f = File::open(host).at("read", host)?;
                    let len = f.metadata().map_err(fail)?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(len);
                    tar.append_data(&mut header, &path, f.take(len)).map_err(fail)?;
                }
            }
        }
        tar.into_inner().map_err(fail)
    }
}

/// `/a//b/` -> `a/b`; refuses `..` and empty paths.
fn normalise(path: &str) -> Result<String, CliError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(CliError::msg(format!("image path {path:?} must be a path below / without `..`")));
    }
    Ok(parts.join("/"))
}

/// A writer that hashes and counts what passes through.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// `(sha256:hex, bytes written, inner)`.
    pub fn finish(self) -> (String, u64, W) {
        (format!("sha256:{}", hex(&self.hasher.finalize())), self.count, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (path, mode, uid, mtime, size) of every entry of a stored layer.
    pub(crate) fn entries(blob: &Blob) -> Vec<(String, u32, u64, u64, u64)> {
        let file = File::open(&blob.path).expect("blob");
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        tar.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").to_string_lossy().into_owned(),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    h.mtime().expect("mtime"),
                    h.size().expect("size"),
                )
            })
            .collect()
    }

    #[test]
    fn same_content_same_digest_whatever_the_mtime_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::create(dir.path().join("store")).expect("store");
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.txt"));
        std::fs::write(&a, b"weights").expect("a");
        std::fs::write(&b, b"labels").expect("b");
        let mut one = Layer::default();
        one.file("/opt/m/a.bin", &a).expect("a");
        one.bytes("/etc/passwd", "root:x:0:0::/:/sbin/nologin\n").expect("passwd");
        one.file("/opt/m/b.txt", &b).expect("b");
        let (first, _) = one.write(&store, 42).expect("write");
        std::fs::write(&a, b"weights").expect("touch");
        let mut two = Layer::default();
        two.file("opt/m/b.txt", &b).expect("b");
        two.bytes("/etc/passwd", "root:x:0:0::/:/sbin/nologin\n").expect("passwd");
        two.file("/opt//m/a.bin", &a).expect("a");
        let (second, _) = two.write(&store, 42).expect("write");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        let got = entries(&first);
        let paths: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(paths, ["etc/", "etc/passwd", "opt/", "opt/m/", "opt/m/a.bin", "opt/m/b.txt"]);
        assert!(got.iter().all(|e| e.2 == 0 && e.3 == 42), "{got:?}");
        assert_eq!(got[4].1, 0o644);
        assert_eq!(got[4].4, 7);
        let (later, _) = one.write(&store, 43).expect("other epoch");
        assert_ne!(later.digest, first.digest);
    }

    #[test]
    fn an_unchanged_layer_comes_from_the_cache_and_a_damaged_entry_is_remade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let store = |n: &str| BlobStore::create(dir.path().join(n)).expect("store").with_layer_cache(cache.clone());
        let a = dir.path().join("a.bin");
        std::fs::write(&a, vec![7u8; 100_000]).expect("a");
        let mut layer = Layer::default();
        layer.file("/opt/m/a.bin", &a).expect("a");
        let (one, two) = (store("one"), store("two"));
        let (first, reused) = layer.write(&one, 0).expect("first");
        assert!(!reused);
        let (again, reused) = layer.write(&two, 0).expect("again");
        assert!(reused);
        assert_eq!((&again.digest, again.size, &again.diff_id), (&first.digest, first.size, &first.diff_id));
        assert_eq!(entries(&again), entries(&first));
        // A cached blob changed on disk is not trusted: the layer is compressed again, same digest.
        let hex = first.diff_id.as_deref().expect("diff id").trim_start_matches("sha256:").to_string();
        std::fs::write(cache.join(format!("{hex}.tar.gz")), b"not the layer").expect("damage");
        let (remade, reused) = layer.write(&store("three"), 0).expect("remade");
        assert!(!reused);
        assert_eq!(remade.digest, first.digest);
        // Other content is another entry.
        std::fs::write(&a, vec![8u8; 100_000]).expect("change");
        let (changed, reused) = layer.write(&store("four"), 0).expect("changed");
        assert!(!reused && changed.digest != first.digest);
    }

    #[test]
    fn bad_paths_and_collisions_are_refused() {
        let mut layer = Layer::default();
        assert!(layer.bytes("/../etc/passwd", "x").is_err());
        assert!(layer.bytes("/", "x").is_err());
        layer.bytes("/etc/passwd", "x").expect("first");
        let err = layer.bytes("etc/passwd", "y").expect_err("collision").to_string();
        assert!(err.contains("/etc/passwd"), "{err}");
        let err = layer.file("/x", Path::new("/no/such/file")).expect_err("missing").to_string();
        assert!(err.contains("/no/such/file"), "{err}");
    }
}
