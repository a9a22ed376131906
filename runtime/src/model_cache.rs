//! The optimized-model cache: ONNX Runtime's own serialized form (ORT format) of a model after
//! graph optimization, written the first time a model loads and read on every later start. A
//! start from the cache skips parsing the protobuf and optimizing the graph, and the session
//! reads its weights straight from the cached bytes (`session.use_ort_model_bytes_directly` and
//! `session.use_ort_model_bytes_for_initializers`) instead of copying them.
//!
//! An optimized graph can hold rewrites chosen for the CPU that made it (NCHWc blocks of 8 or 16
//! floats, kernels picked by instruction set) that are wrong or unrunnable on another CPU. So an
//! entry is keyed on everything that shapes the optimized graph: the ONNX Runtime build, the
//! optimization level, the CPU (architecture, vendor, model and every feature flag the kernel
//! reports) and the model file with its external-data files (device, inode, size, modification
//! and change times; the change time moves on every write and cannot be set back by a user).
//! The key's hash names the entry and the key itself heads it: an entry is used only when its
//! header equals this process's key field for field, so an entry made on another CPU or for
//! another file is never used, even when copied under the right name.
//!
//! An entry is two files: `<model>-<hash>.ort`, the bytes ONNX Runtime saved (renamed into place,
//! never copied), and `<model>-<hash>.json`, the key with the bytes' length and CRC-32. Both are
//! written under temporary names and renamed, the header first, so a crash or a full disk leaves
//! no half entry under the real names; an entry whose bytes disagree with its header (length or
//! checksum), or that ONNX Runtime refuses, is removed and made again. Nothing about the cache can stop a model from
//! loading: every failure is logged and the model loads from its ONNX file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::{Optimization, SessionConfig};

/// Bumped whenever the entry layout or the key's meaning changes.
const FORMAT: u32 = 1;
/// Longest header accepted.
const MAX_HEADER: u64 = 1 << 20;

/// Everything that decides what an optimized graph looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Key {
    format: u32,
    /// ONNX Runtime's build string (version, commit, build flags).
    onnxruntime: String,
    optimization: Optimization,
    /// Architecture, then the CPU description lines the kernel reports, flags sorted.
    cpu: Vec<String>,
    /// The model file first, then its external-data files.
    files: Vec<FileStamp>,
}

/// Identity of one file's content: any write moves `changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStamp {
    path: PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// An entry's header file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    nimify_optimized_model: Key,
    data_len: usize,
    /// CRC-32 of the ORT bytes: a flipped bit on disk is found before ONNX Runtime reads weights.
    data_crc32: u32,
}

/// Cached ORT bytes in a 16-byte aligned buffer (`u128`s), as ONNX Runtime reads initializers
/// in place. A session made from them must not outlive them: see `model::OpenSession`.
pub(crate) struct Entry {
    buf: Vec<u128>,
    len: usize,
}

impl Entry {
    /// The ORT-format model.
    pub(crate) fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.buf)[..self.len]
    }

    /// Reads `len` bytes of `file`, which must hold exactly that many.
    fn read(mut file: std::fs::File, len: usize) -> std::io::Result<Self> {
        let mut buf = vec![0u128; len.div_ceil(16)];
        file.read_exact(&mut bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..len])?;
        if file.read(&mut [0u8])? != 0 {
            return Err(std::io::Error::other("the file grew while it was read"));
        }
        Ok(Self { buf, len })
    }
}

/// One model's place in the cache.
pub(crate) struct Cache {
    key: Key,
    entry: PathBuf,
}

/// The cache directory: `$NIMIFY_CACHE_DIR/models`, by default `~/.cache/nimify/models`.
pub(crate) fn dir() -> Option<PathBuf> {
    std::env::var_os("NIMIFY_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("nimify")))
        .map(|d| d.join("models"))
}

impl Cache {
    /// The cache place of `model` (with its external-data files) under `config`; `None`, with
    /// the reason logged, when the cache is off or cannot be keyed on this platform.
    pub(crate) fn new(model: &Path, external: &[PathBuf], config: &SessionConfig) -> Option<Self> {
        if !config.model_cache {
            return None;
        }
        let Some(dir) = dir() else {
            tracing::info!("no cache directory (set NIMIFY_CACHE_DIR); models load without the optimized-model cache");
            return None;
        };
        let Some(cpu) = cpu_description() else {
            tracing::info!("this platform does not describe its CPU; models load without the optimized-model cache");
            return None;
        };
        let files = std::iter::once(model)
            .chain(external.iter().map(PathBuf::as_path))
            .map(stamp)
            .collect::<Result<Vec<_>, _>>();
        let files = match files {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(model = %model.display(), error = %e, "cannot stamp the model files; loading without the optimized-model cache");
                return None;
            }
        };
        let key =
            Key { format: FORMAT, onnxruntime: ort::info().to_string(), optimization: config.optimization, cpu, files };
        Some(Self::at(&dir, key))
    }

    fn at(dir: &Path, key: Key) -> Self {
        use sha2::Digest;
        let json = serde_json::to_vec(&key).unwrap_or_default();
        let hash: String = sha2::Sha256::digest(&json).iter().take(16).map(|b| format!("{b:02x}")).collect();
        let stem = key.files[0].path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Self { entry: dir.join(format!("{stem}-{hash}.ort")), key }
    }

    /// The entry's ORT file.
    pub(crate) fn path(&self) -> &Path {
        &self.entry
    }

    /// The entry's header file.
    fn header_path(&self) -> PathBuf {
        self.entry.with_extension("json")
    }

    /// The cached bytes when a usable entry exists. A missing entry is `None`; one that is
    /// unreadable, truncated or keyed for something else is also `None`, logged, and removed
    /// when it is broken.
    pub(crate) fn load(&self) -> Option<Arc<Entry>> {
        match read_entry(&self.entry, &self.header_path(), &self.key) {
            Ok(entry) => Some(Arc::new(entry)),
            Err(Miss::Absent) => None,
            Err(Miss::OtherKey(why)) => {
                tracing::warn!(entry = %self.entry.display(), "optimized-model cache entry not used: {why}; making a new one");
                None
            }
            Err(Miss::Broken(why)) => {
                tracing::warn!(entry = %self.entry.display(), "optimized-model cache entry is broken ({why}); removing it and making a new one");
                self.discard();
                None
            }
        }
    }

    /// Removes the entry (broken, or ONNX Runtime refused it).
    pub(crate) fn discard(&self) {
        let _ = std::fs::remove_file(&self.entry);
        let _ = std::fs::remove_file(self.header_path());
    }

    /// A fresh temporary path in the cache directory for ONNX Runtime to save the optimized
    /// model to; `Err` when the directory cannot be made or written.
    pub(crate) fn scratch(&self) -> std::io::Result<PathBuf> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.entry.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = self.entry.file_name().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let path = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, b"")?;
        Ok(path)
    }

    /// Makes the ORT file ONNX Runtime saved at `saved` the entry: its header written (to a
    /// temporary name, renamed), then the file renamed into place; returns the entry's bytes.
    /// `saved` is gone either way.
    pub(crate) fn store(&self, saved: &Path) -> std::io::Result<Arc<Entry>> {
        let result = self.commit(saved);
        if result.is_err() {
            let _ = std::fs::remove_file(saved);
        }
        result
    }

    fn commit(&self, saved: &Path) -> std::io::Result<Arc<Entry>> {
        let file = std::fs::File::open(saved)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        let entry = Entry::read(file, len)?;
        let header = Header {
            nimify_optimized_model: self.key.clone(),
            data_len: len,
            data_crc32: crc32fast::hash(entry.bytes()),
        };
        let tmp = self.scratch()?;
        let written = serde_json::to_vec(&header)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, self.header_path()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(saved, &self.entry)?;
        Ok(Arc::new(entry))
    }
}

enum Miss {
    Absent,
    OtherKey(String),
    Broken(String),
}

fn read_entry(ort: &Path, header: &Path, key: &Key) -> Result<Entry, Miss> {
    let open = |path: &Path| match std::fs::File::open(path) {
        Ok(f) => Ok(f),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            Err(Miss::Absent)
        }
        Err(e) => Err(Miss::Broken(format!("cannot open {}: {e}", path.display()))),
    };
    let mut text = Vec::new();
    open(header)?
        .take(MAX_HEADER)
        .read_to_end(&mut text)
        .map_err(|e| Miss::Broken(format!("cannot read its header: {e}")))?;
    let header: Header = serde_json::from_slice(&text).map_err(|e| Miss::Broken(format!("unreadable header: {e}")))?;
    if let Some(why) = differs(&header.nimify_optimized_model, key) {
        return Err(Miss::OtherKey(why));
    }
    let file = open(ort).map_err(|miss| match miss {
        Miss::Absent => Miss::Broken("its header has no model file".into()),
        other => other,
    })?;
    let len = file.metadata().map_err(|e| Miss::Broken(format!("cannot read its size: {e}")))?.len();
    if len != header.data_len as u64 {
        return Err(Miss::Broken(format!("{len} bytes on disk, but the header says {}", header.data_len)));
    }
    let entry = Entry::read(file, header.data_len).map_err(|e| Miss::Broken(format!("cannot read it: {e}")))?;
    if crc32fast::hash(entry.bytes()) != header.data_crc32 {
        return Err(Miss::Broken("its bytes do not match their checksum".into()));
    }
    Ok(entry)
}

/// Why an entry keyed `found` may not serve a process keyed `want`; `None` when they agree.
fn differs(found: &Key, want: &Key) -> Option<String> {
    if found == want {
        return None;
    }
    Some(if found.format != want.format {
        format!("it is in cache format {}, this build reads {}", found.format, want.format)
    } else if found.cpu != want.cpu {
        let only =
            |a: &[String], b: &[String]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>().join(" ");
        format!(
            "it was made on another CPU (only there: [{}]; only here: [{}])",
            only(&found.cpu, &want.cpu),
            only(&want.cpu, &found.cpu)
        )
    } else if found.onnxruntime != want.onnxruntime {
        "it was made by another ONNX Runtime build".into()
    } else if found.optimization != want.optimization {
        format!("it was optimized at level {:?}, this session uses {:?}", found.optimization, want.optimization)
    } else {
        "it was made from another version of the model files".into()
    })
}

#[cfg(unix)]
fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path)?;
    let m = std::fs::metadata(&path)?;
    Ok(FileStamp {
        device: m.dev(),
        inode: m.ino(),
        size: m.size(),
        modified: (m.mtime(), m.mtime_nsec()),
        changed: (m.ctime(), m.ctime_nsec()),
        path,
    })
}

#[cfg(not(unix))]
fn stamp(_: &Path) -> std::io::Result<FileStamp> {
    Err(std::io::Error::other("file change times are only read on Unix"))
}

/// The CPU as this process sees it: the architecture, then every `key: value` line of the first
/// processor in `/proc/cpuinfo` that names the CPU or its instruction sets, flag lists sorted.
fn cpu_description() -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    Some(describe_cpu(std::env::consts::ARCH, &text))
}

fn describe_cpu(arch: &str, cpuinfo: &str) -> Vec<String> {
    const NAMING: [&str; 10] = [
        "vendor_id",
        "cpu family",
        "model",
        "model name",
        "flags",
        "CPU implementer",
        "CPU architecture",
        "CPU variant",
        "CPU part",
        "Features",
    ];
    let first = cpuinfo.split("\n\n").next().unwrap_or("");
    let mut out = vec![format!("arch: {arch}")];
    for line in first.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim();
        if !NAMING.contains(&name) {
            continue;
        }
        let value = match name {
            "flags" | "Features" => {
                let mut flags: Vec<&str> = value.split_whitespace().collect();
                flags.sort_unstable();
                flags.join(" ")
            }
            _ => value.trim().to_string(),
        };
        out.push(format!("{name}: {value}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX512: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\ncpu MHz\t\t: 3700.0\nflags\t\t: sse2 fpu avx avx2 avx512f\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n";
    const AVX2: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\ncpu MHz\t\t: 2100.0\nflags\t\t: fpu sse2 avx avx2\n";

    fn key(cpu: Vec<String>) -> Key {
        Key {
            format: FORMAT,
            onnxruntime: "ORT Build Info: git-branch=rel-1.32.0".into(),
            optimization: Optimization::All,
            cpu,
            files: vec![FileStamp {
                path: "/m/cnn.onnx".into(),
                device: 1,
                inode: 2,
                size: 3,
                modified: (4, 5),
                changed: (6, 7),
            }],
        }
    }

    #[test]
    fn the_cpu_is_described_by_its_name_and_sorted_flags_not_its_clock() {
        let d = describe_cpu("x86_64", AVX512);
        assert_eq!(
            d,
            [
                "arch: x86_64",
                "vendor_id: AuthenticAMD",
                "cpu family: 25",
                "model: 17",
                "model name: AMD EPYC 9R14",
                "flags: avx avx2 avx512f fpu sse2"
            ]
        );
    }

    #[test]
    fn a_cpu_without_avx512_gets_another_entry_and_refuses_this_one() {
        let here = Cache::at(Path::new("/c"), key(describe_cpu("x86_64", AVX2)));
        let there = Cache::at(Path::new("/c"), key(describe_cpu("x86_64", AVX512)));
        assert_ne!(here.path(), there.path());
        let why = differs(&there.key, &here.key).expect("another CPU");
        assert!(why.contains("only there: [flags: avx avx2 avx512f fpu sse2]"), "{why}");
        assert_eq!(differs(&here.key, &here.key), None);
    }

    #[test]
    fn every_part_of_the_key_names_another_entry() {
        let base = key(describe_cpu("x86_64", AVX2));
        let path = |k: Key| Cache::at(Path::new("/c"), k).path().to_path_buf();
        let mut variants = vec![base.clone()];
        let mut k = base.clone();
        k.onnxruntime.push('x');
        variants.push(k);
        let mut k = base.clone();
        k.optimization = Optimization::Extended;
        variants.push(k);
        let mut k = base.clone();
        k.files[0].changed.1 += 1;
        variants.push(k);
        let mut k = base.clone();
        k.cpu[0] = "arch: aarch64".into();
        variants.push(k);
        let mut paths: Vec<PathBuf> = variants.into_iter().map(path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 5);
    }

    #[test]
    fn entries_round_trip_and_refuse_truncation_other_keys_and_garbage() {
        let dir = tempfile::tempdir().expect("test files");
        let cache = Cache::at(dir.path(), key(describe_cpu("x86_64", AVX2)));
        let saved = dir.path().join("saved.ort");
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let store = || {
            std::fs::write(&saved, &payload).expect("test files");
            let stored = cache.store(&saved).expect("test files");
            assert_eq!(stored.bytes(), &payload[..]);
            assert!(!saved.exists(), "the saved file became the entry");
        };
        let gone = || !cache.path().exists() && !cache.header_path().exists();
        store();
        let loaded = cache.load().expect("a hit");
        assert_eq!(loaded.bytes(), &payload[..]);
        assert_eq!(loaded.bytes().as_ptr() as usize % 16, 0, "ORT bytes start 16-byte aligned");

        let other = Cache { key: key(describe_cpu("x86_64", AVX512)), entry: cache.path().to_path_buf() };
        assert!(other.load().is_none(), "keyed for another CPU");
        assert!(cache.path().exists(), "an entry for another key is left alone");

        std::fs::write(cache.path(), &payload[..payload.len() - 1]).expect("test files");
        assert!(cache.load().is_none(), "truncated");
        assert!(gone(), "a broken entry is removed");

        store();
        let mut flipped = payload.clone();
        flipped[5000] ^= 1;
        std::fs::write(cache.path(), &flipped).expect("test files");
        assert!(cache.load().is_none(), "a flipped bit");
        assert!(gone());

        store();
        std::fs::remove_file(cache.path()).expect("test files");
        assert!(cache.load().is_none(), "a header without its bytes");
        assert!(gone());

        store();
        std::fs::write(cache.header_path(), b"not a header").expect("test files");
        assert!(cache.load().is_none());
        assert!(gone());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("test files").collect();
        assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_cache_directory_that_is_a_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("test files");
        let blocker = dir.path().join("models");
        std::fs::write(&blocker, b"").expect("test files");
        let cache = Cache::at(&blocker, key(describe_cpu("x86_64", AVX2)));
        assert!(cache.scratch().is_err());
        assert!(cache.load().is_none());
    }
}
