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
//! reports) and the model's files: the model, its external-data files and, for a model with
//! external data, every regular file beside it (canonical path, inode, size, modification and
//! change times in nanoseconds; the change time moves on every write and cannot be set back by a
//! user). On a file system without sub-second times, or a CPU without a flag list, there is no
//! cache. The key's hash names the entry and the key itself is written beside it: an entry is
//! used only when that key equals this process's key field for field, so an entry made on
//! another CPU or for another file is never used, even when copied under the right name.
//!
//! An entry is two files: `<model>-<hash>.ort`, the bytes ONNX Runtime saved (renamed into place,
//! never copied), and `<model>-<hash>.json`, the key with the bytes' length and CRC-32. Each is
//! written under a unique temporary name and renamed. A reader checks that the pair agrees
//! (length, checksum), so a crash between the two renames, two starts writing the same entry at
//! once or a damaged disk cost a new entry, never a wrong model. Making an entry removes the
//! entries of the same model file under older keys. Nothing about the cache can stop a model
//! from loading: every failure is logged and the model loads from its ONNX file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Optimization, SessionConfig};

/// Bumped whenever the entry layout or the key's meaning changes.
const FORMAT: u32 = 1;
/// Longest header accepted.
const MAX_HEADER: u64 = 1 << 20;
/// Most files beside a model that are stamped; a directory holding more gets no cache.
const MAX_FILES: usize = 1000;

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
    /// The model file first, then the files beside it and its external-data files.
    files: Vec<FileStamp>,
}

/// Identity of one file's content: any write moves `changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStamp {
    path: PathBuf,
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
    data_len: u64,
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

    /// Reads `file`, which must hold exactly `len` bytes.
    fn read(mut file: std::fs::File, len: u64) -> std::io::Result<Self> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0u128; len.div_ceil(16)];
        file.read_exact(&mut bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..len])?;
        if file.read(&mut [0u8])? != 0 {
            return Err(std::io::Error::other("the file grew while it was read"));
        }
        Ok(Self { buf, len })
    }
}

/// CRC-32 of a whole file, read in pieces.
fn file_crc32(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// One model's place in the cache.
pub(crate) struct Cache {
    key: Key,
    entry: PathBuf,
}

impl Cache {
    /// The cache place of `model` (with its external-data files) under `config`; `None`, with
    /// the reason logged, when the cache is off or cannot be keyed here.
    pub(crate) fn new(model: &Path, external: &[PathBuf], config: &SessionConfig) -> Option<Self> {
        if !config.model_cache {
            return None;
        }
        let off = |why: &str| {
            tracing::info!(model = %model.display(), "{why}; loading without the optimized-model cache");
            None
        };
        let Some(dir) = crate::ortlib::cache_base().map(|d| d.join("models")) else {
            return off("no cache directory (set NIMIFY_CACHE_DIR)");
        };
        let Some(cpu) = cpu_description() else {
            return off("this system does not list its CPU's instruction sets");
        };
        let files = match stamp_all(model, external) {
            Ok(files) => files,
            Err(why) => return off(&why),
        };
        let key =
            Key { format: FORMAT, onnxruntime: ort::info().to_string(), optimization: config.optimization, cpu, files };
        match Self::at(&dir, key) {
            Some(cache) => Some(cache),
            None => off("its path cannot be written into a cache key"),
        }
    }

    fn at(dir: &Path, key: Key) -> Option<Self> {
        use sha2::Digest;
        let json = serde_json::to_vec(&key).ok()?;
        let hash: String = sha2::Sha256::digest(&json).iter().take(16).map(|b| format!("{b:02x}")).collect();
        let stem: String = key.files[0].path.file_stem()?.to_string_lossy().chars().take(64).collect();
        Some(Self { entry: dir.join(format!("{stem}-{hash}.ort")), key })
    }

    /// The entry's ORT file.
    pub(crate) fn path(&self) -> &Path {
        &self.entry
    }

    /// The entry's header file.
    fn header_path(&self) -> PathBuf {
        self.entry.with_extension("json")
    }

    /// The cached bytes when a usable entry exists; `None` when there is none, or (logged) when
    /// it is unreadable, damaged or keyed for something else, so that a new one replaces it.
    pub(crate) fn load(&self) -> Option<Arc<Entry>> {
        match read_entry(&self.entry, &self.header_path(), &self.key) {
            Ok(entry) => Some(Arc::new(entry)),
            Err(Miss::Absent) => None,
            Err(Miss::OtherKey(why)) => {
                tracing::warn!(entry = %self.entry.display(), "optimized-model cache entry not used: {why}; making a new one");
                None
            }
            Err(Miss::Broken(why)) => {
                tracing::warn!(entry = %self.entry.display(), "optimized-model cache entry is broken ({why}); making a new one");
                None
            }
        }
    }

    /// Whether the model's files are still those the key stamped (none was written or swapped
    /// since): only then may what ONNX Runtime read be stored under it.
    fn still_current(&self) -> bool {
        let model = &self.key.files[0].path;
        let rest: Vec<PathBuf> = self.key.files[1..].iter().map(|f| f.path.clone()).collect();
        stamp_all(model, &rest).is_ok_and(|files| files == self.key.files)
    }

    /// A fresh, uniquely named file in the cache directory; `Err` when the directory cannot be
    /// made or written.
    pub(crate) fn scratch(&self) -> std::io::Result<PathBuf> {
        let dir = self.entry.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let file = tempfile::Builder::new().prefix(".nimify-").suffix(".tmp").tempfile_in(dir)?;
        file.into_temp_path().keep().map_err(|e| e.error)
    }

    /// Makes the ORT file ONNX Runtime saved at `saved` the entry, when the model's files are
    /// still those the key stamped: its header written (to a temporary name, renamed), then the
    /// file renamed into place, then older entries of the same model removed. Returns the bytes when `keep` (more sessions will open from them). `saved`
    /// is gone either way.
    pub(crate) fn store(&self, saved: &Path, keep: bool) -> std::io::Result<Option<Arc<Entry>>> {
        let result = if self.still_current() {
            self.commit(saved, keep)
        } else {
            Err(std::io::Error::other("the model's files changed while it loaded"))
        };
        if result.is_err() {
            let _ = std::fs::remove_file(saved);
        }
        result
    }

    fn commit(&self, saved: &Path, keep: bool) -> std::io::Result<Option<Arc<Entry>>> {
        let (entry, len, crc) = if keep {
            let file = std::fs::File::open(saved)?;
            let entry = Entry::read(file, std::fs::metadata(saved)?.len())?;
            let crc = crc32fast::hash(entry.bytes());
            let len = entry.len as u64;
            (Some(Arc::new(entry)), len, crc)
        } else {
            let (len, crc) = file_crc32(saved)?;
            (None, len, crc)
        };
        let header = Header { nimify_optimized_model: self.key.clone(), data_len: len, data_crc32: crc };
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
        self.prune();
        Ok(entry)
    }

    /// Removes the entries of this model file made under other keys (an older model, runtime or
    /// CPU): each is a model's size on disk that would never be read again.
    fn prune(&self) {
        let Some(dir) = self.entry.parent() else { return };
        let Ok(listing) = std::fs::read_dir(dir) else { return };
        let mine = self.header_path();
        for item in listing.flatten() {
            let path = item.path();
            if path == mine || path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let same_model =
                std::fs::read(&path).ok().and_then(|text| serde_json::from_slice::<Header>(&text).ok()).is_some_and(
                    |h| h.nimify_optimized_model.files.first().map(|f| &f.path) == Some(&self.key.files[0].path),
                );
            if same_model {
                let _ = std::fs::remove_file(path.with_extension("ort"));
                let _ = std::fs::remove_file(&path);
            }
        }
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
    if len != header.data_len {
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

/// Stamps the model and its external-data files, and, for a model with external data, every
/// regular file beside it too (each once, the model first): `nimify-model` lists the external
/// data of the graph's initializers, not that of tensors inside subgraphs or node attributes,
/// which exporters put beside the model as well. `Err(why)` when a file cannot be read, the
/// directory holds more than [`MAX_FILES`], or the file system keeps whole-second times (a
/// rewrite within the second would go unseen).
fn stamp_all(model: &Path, external: &[PathBuf]) -> Result<Vec<FileStamp>, String> {
    let model = std::fs::canonicalize(model).map_err(|e| format!("cannot resolve the model's path: {e}"))?;
    let dir = model.parent().unwrap_or(Path::new("/"));
    let mut beside = Vec::new();
    if !external.is_empty() {
        for item in std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
            let path = item.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
            if path != model && path.is_file() {
                beside.push(path);
            }
            if beside.len() > MAX_FILES {
                return Err(format!("{} holds more than {MAX_FILES} files", dir.display()));
            }
        }
    }
    for path in external {
        let path = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
        if path != model {
            beside.push(path);
        }
    }
    beside.sort();
    beside.dedup();
    let files = std::iter::once(model.as_path())
        .chain(beside.iter().map(PathBuf::as_path))
        .map(|p| stamp(p).map_err(|e| format!("cannot stamp {}: {e}", p.display())))
        .collect::<Result<Vec<_>, _>>()?;
    if files.iter().all(|f| f.modified.1 == 0 && f.changed.1 == 0) {
        return Err("the file system keeps whole-second file times".into());
    }
    Ok(files)
}

#[cfg(unix)]
fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        path: path.to_path_buf(),
        inode: m.ino(),
        size: m.size(),
        modified: (m.mtime(), m.mtime_nsec()),
        changed: (m.ctime(), m.ctime_nsec()),
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
    let described = describe_cpu(std::env::consts::ARCH, &text);
    described
        .iter()
        .any(|l| l.starts_with("flags: ") || l.starts_with("Features: ") || l.starts_with("isa: "))
        .then_some(described)
}

fn describe_cpu(arch: &str, cpuinfo: &str) -> Vec<String> {
    const NAMING: [&str; 11] = [
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
        "isa",
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
            "flags" | "Features" | "isa" => {
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
            files: vec![FileStamp { path: "/m/cnn.onnx".into(), inode: 2, size: 3, modified: (4, 5), changed: (6, 7) }],
        }
    }

    /// A key for a real model file (a store re-stamps it).
    fn key_for(model: &Path, cpu: Vec<String>) -> Key {
        Key { files: stamp_all(model, &[]).expect("a model file"), ..key(cpu) }
    }

    fn model_in(dir: &Path, name: &str) -> PathBuf {
        let models = dir.join("m");
        std::fs::create_dir_all(&models).expect("test files");
        let path = models.join(name);
        std::fs::write(&path, name).expect("test files");
        path
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
        let here = Cache::at(Path::new("/c"), key(describe_cpu("x86_64", AVX2))).expect("a key");
        let there = Cache::at(Path::new("/c"), key(describe_cpu("x86_64", AVX512))).expect("a key");
        assert_ne!(here.path(), there.path());
        let why = differs(&there.key, &here.key).expect("another CPU");
        assert!(why.contains("only there: [flags: avx avx2 avx512f fpu sse2]"), "{why}");
        assert_eq!(differs(&here.key, &here.key), None);
    }

    #[test]
    fn every_part_of_the_key_names_another_entry() {
        let base = key(describe_cpu("x86_64", AVX2));
        let path = |k: Key| Cache::at(Path::new("/c"), k).expect("a key").path().to_path_buf();
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
        let model = model_in(dir.path(), "cnn.onnx");
        let cache_dir = dir.path().join("c");
        std::fs::create_dir_all(&cache_dir).expect("test files");
        let cache = Cache::at(&cache_dir, key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        let saved = dir.path().join("saved.ort");
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let store = |keep: bool| {
            std::fs::write(&saved, &payload).expect("test files");
            let stored = cache.store(&saved, keep).expect("test files");
            assert_eq!(stored.as_ref().map(|e| e.bytes()), keep.then_some(&payload[..]));
            assert!(!saved.exists(), "the saved file became the entry");
        };
        store(false);
        let loaded = cache.load().expect("a hit");
        assert_eq!(loaded.bytes(), &payload[..]);
        assert_eq!(loaded.bytes().as_ptr() as usize % 16, 0, "ORT bytes start 16-byte aligned");

        let other = Cache { key: key_for(&model, describe_cpu("x86_64", AVX512)), entry: cache.path().to_path_buf() };
        assert!(other.load().is_none(), "keyed for another CPU");

        let mut flipped = payload.clone();
        flipped[5000] ^= 1;
        let damage: [(&str, &dyn Fn()); 4] = [
            ("truncated", &|| std::fs::write(cache.path(), &payload[..payload.len() - 1]).expect("test files")),
            ("a flipped bit", &|| std::fs::write(cache.path(), &flipped).expect("test files")),
            ("a header without its bytes", &|| std::fs::remove_file(cache.path()).expect("test files")),
            ("not a header", &|| std::fs::write(cache.header_path(), b"not a header").expect("test files")),
        ];
        for (what, harm) in damage {
            harm();
            assert!(cache.load().is_none(), "{what}");
            store(true);
            assert_eq!(cache.load().expect("made again").bytes(), &payload[..], "{what}");
        }
        std::fs::write(&model, "retrained").expect("test files");
        std::fs::write(&saved, &payload).expect("test files");
        assert!(cache.store(&saved, false).is_err(), "a model written since it was stamped is not stored");
        assert!(!saved.exists());
        let mut names: Vec<_> = std::fs::read_dir(&cache_dir)
            .expect("test files")
            .map(|e| e.expect("test files").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let entry = cache.path().file_name().expect("a name").to_string_lossy().into_owned();
        assert_eq!(names, [entry.replace(".ort", ".json"), entry], "no temporary files left");
    }

    #[test]
    fn a_new_entry_removes_the_older_entries_of_its_model_only() {
        let dir = tempfile::tempdir().expect("test files");
        let saved = dir.path().join("saved.ort");
        let store = |cache: &Cache| {
            std::fs::write(&saved, b"ort bytes").expect("test files");
            cache.store(&saved, false).expect("test files");
        };
        let model = model_in(dir.path(), "cnn.onnx");
        let other_model = model_in(dir.path(), "other.onnx");
        let old = Cache::at(dir.path(), key_for(&model, describe_cpu("x86_64", AVX512))).expect("a key");
        let other = Cache::at(dir.path(), key_for(&other_model, describe_cpu("x86_64", AVX512))).expect("a key");
        store(&old);
        store(&other);
        let new = Cache::at(dir.path(), key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        store(&new);
        assert!(new.load().is_some());
        assert!(!old.path().exists() && !old.header_path().exists(), "the older entry of cnn.onnx is gone");
        assert!(other.load().is_some(), "another model's entry stays");
    }

    #[test]
    fn a_cpu_without_a_flag_list_gets_no_cache() {
        let bare = describe_cpu("riscv64", "processor\t: 0\nhart\t\t: 0\n");
        assert_eq!(bare, ["arch: riscv64"]);
        let isa = describe_cpu("riscv64", "processor\t: 0\nisa\t\t: rv64imafdc_zicsr\n");
        assert_eq!(isa, ["arch: riscv64", "isa: rv64imafdc_zicsr"]);
    }

    #[test]
    fn a_cache_directory_that_is_a_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("test files");
        let blocker = dir.path().join("models");
        std::fs::write(&blocker, b"").expect("test files");
        let cache = Cache::at(&blocker, key(describe_cpu("x86_64", AVX2))).expect("a key");
        assert!(cache.scratch().is_err());
        assert!(cache.load().is_none());
    }
}
