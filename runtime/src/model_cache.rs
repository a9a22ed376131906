//! The optimized-model cache: each model's graph after ONNX Runtime's optimization, saved the
//! first time the model loads (as ONNX, its weights in an external-data file that ONNX Runtime
//! lays out page-aligned) and opened on every later start. A start from the cache skips graph
//! optimization, and ONNX Runtime maps the weights file instead of copying the weights, so they
//! stay in the page cache, shared by every instance and process that serves the model.
//!
//! An optimized graph can hold rewrites chosen for the CPU that made it (NCHWc blocks of 8 or 16
//! floats, kernels picked by instruction set) that are wrong or unrunnable on another CPU. So an
//! entry is keyed on everything that shapes the optimized graph: the ONNX Runtime build, the
//! optimization level, the CPU (architecture, vendor, model and every feature flag the kernel
//! reports) and the model's files: the model, its external-data files and, for a model with
//! external data, every regular file beside it (canonical path, inode, size, modification and
//! change times in nanoseconds; the change time moves on every write and cannot be set back by a
//! user). On a file system without sub-second times, or a CPU without a flag list, there is no
//! cache. The key's hash names the entry and the key itself heads it: an entry is used only when
//! that key equals this process's key field for field, so an entry made on another CPU or for
//! another file is never used, even when copied under the right name.
//!
//! An entry is three files: `<model>-<hash>.json`, the header (the key, and the names, lengths
//! and the graph's CRC-32 of the other two), and the graph and weights files ONNX Runtime wrote,
//! under names of their own (`<model>-<hash>.<tag>.onnx` and `.data`) so that two starts writing
//! the same entry at once never mix their files. The header is written last, under a temporary
//! name, and renamed: until then the entry does not exist, so a crash or a full disk leaves no
//! half entry. A reader checks the files against the header (lengths, the graph's checksum);
//! an entry that disagrees, or that ONNX Runtime refuses, is made again. Making an entry removes
//! the entries of the same model file under older keys and files no header names. Nothing about
//! the cache can stop a model from loading: every failure is logged and the model loads from its
//! ONNX file.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Optimization, SessionConfig};

/// Bumped whenever the entry layout or the key's meaning changes.
const FORMAT: u32 = 2;
/// Longest header read.
const MAX_HEADER: u64 = 1 << 20;
/// How long a file of an entry that no header names is left alone (another start may be saving
/// it).
const STRAY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// Most files beside a model that are stamped; a directory holding more gets no cache.
const MAX_FILES: usize = 1000;
/// Initializers this large or larger go to the weights file (smaller ones stay in the graph).
pub(crate) const EXTERNAL_FROM_BYTES: &str = "1024";

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
    /// The model file first, then its external-data files and the files beside it.
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

/// An entry's header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    nimify_optimized_model: Key,
    /// The optimized graph, a file name in the cache directory.
    graph: String,
    graph_len: u64,
    graph_crc32: u32,
    /// Its weights, a file name in the cache directory.
    data: String,
    data_len: u64,
}

/// Where ONNX Runtime saves a new entry's graph (its weights go beside it, named `data`).
pub(crate) struct Saving {
    pub graph: PathBuf,
    pub data: String,
}

/// One model's place in the cache.
pub(crate) struct Cache {
    key: Key,
    dir: PathBuf,
    /// `<model>-<hash>`: the header's name and the prefix of the entry's files.
    name: String,
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
        // A plain, short file-name prefix: ASCII letters, digits, `-` and `_` (never a leading dot).
        let stem: String = key.files[0]
            .path
            .file_stem()?
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(64)
            .collect();
        Some(Self { name: format!("{stem}-{hash}"), dir: dir.to_path_buf(), key })
    }

    /// The entry's header file.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    /// The graph file to open when a usable entry exists; `None` when there is none, or (logged)
    /// when it is unreadable, damaged or keyed for something else, so that a new one replaces it.
    pub(crate) fn load(&self) -> Option<PathBuf> {
        match self.read() {
            Ok(graph) => Some(graph),
            Err(Miss::Absent) => None,
            Err(Miss::OtherKey(why)) => {
                tracing::warn!(entry = %self.path().display(), "optimized-model cache entry not used: {why}; making a new one");
                None
            }
            Err(Miss::Broken(why)) => {
                tracing::warn!(entry = %self.path().display(), "optimized-model cache entry is broken ({why}); making a new one");
                None
            }
        }
    }

    fn read(&self) -> Result<PathBuf, Miss> {
        let header = read_header(&self.path())?;
        if let Some(why) = differs(&header.nimify_optimized_model, &self.key) {
            return Err(Miss::OtherKey(why));
        }
        let (graph, data) = (self.dir.join(&header.graph), self.dir.join(&header.data));
        let len = |path: &Path| std::fs::metadata(path).map(|m| m.len()).ok();
        let broken = |what: &str, path: &Path, want: u64| {
            Miss::Broken(format!("{what} {} is {:?} bytes, its header says {want}", path.display(), len(path)))
        };
        if len(&data) != Some(header.data_len) {
            return Err(broken("weights file", &data, header.data_len));
        }
        if len(&graph) != Some(header.graph_len) {
            return Err(broken("graph file", &graph, header.graph_len));
        }
        let crc = file_crc32(&graph).map_err(|e| Miss::Broken(format!("cannot read {}: {e}", graph.display())))?;
        if crc != header.graph_crc32 {
            return Err(Miss::Broken(format!("{} does not match its checksum", graph.display())));
        }
        // Saves killed midway (an OOM loop at start) leave a model's size each: gone once old.
        self.prune(Some(&header));
        Ok(graph)
    }

    /// Fresh, unique names for ONNX Runtime to save a new entry's graph and weights under;
    /// `Err` when the directory cannot be made or written.
    pub(crate) fn saving(&self) -> std::io::Result<Saving> {
        // Only this user reads the weights, whatever the model file's own mode.
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(&self.dir)?;
        self.prune(read_header(&self.path()).ok().as_ref());
        let graph = tempfile::Builder::new()
            .prefix(&format!("{}.", self.name))
            .suffix(".onnx")
            .tempfile_in(&self.dir)?
            .into_temp_path()
            .keep()
            .map_err(|e| e.error)?;
        // The weights' name is taken too (ONNX Runtime truncates what it writes to), never an
        // existing file's.
        let data_path = graph.with_extension("data");
        if let Err(e) = std::fs::OpenOptions::new().write(true).create_new(true).open(&data_path) {
            let _ = std::fs::remove_file(&graph);
            return Err(e);
        }
        let data = data_path.file_name().map(|n| n.to_string_lossy().into_owned());
        Ok(Saving { data: data.ok_or_else(|| std::io::Error::other("no file name"))?, graph })
    }

    /// Removes what ONNX Runtime saved for an entry that is not made.
    pub(crate) fn abandon(&self, saving: &Saving) {
        let _ = std::fs::remove_file(&saving.graph);
        let _ = std::fs::remove_file(self.dir.join(&saving.data));
    }

    /// Makes the files ONNX Runtime saved the entry, when the model's files are still those the
    /// key stamped: the header written under a temporary name and renamed, then the model's
    /// older entries and stray files removed. Returns the graph to open. What was saved is
    /// removed when this fails.
    pub(crate) fn store(&self, saving: &Saving) -> std::io::Result<PathBuf> {
        let result = self.commit(saving);
        if result.is_err() {
            self.abandon(saving);
        }
        result
    }

    fn commit(&self, saving: &Saving) -> std::io::Result<PathBuf> {
        if !self.still_current() {
            return Err(std::io::Error::other("the model's files changed while it loaded"));
        }
        let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let data = self.dir.join(&saving.data);
        // A model whose initializers are all small keeps them in the graph, and ONNX Runtime
        // leaves no weights file (a graph that did name one would fail its open, and be made
        // again, never serve).
        if !data.exists() {
            std::fs::write(&data, b"")?;
        }
        // On disk before the header names them: after a power cut a header never points at
        // weights that did not reach the disk (their length is all a reader checks).
        for file in [&saving.graph, &data] {
            std::fs::File::open(file)?.sync_all()?;
        }
        let (graph_len, graph_crc32) = (std::fs::metadata(&saving.graph)?.len(), file_crc32(&saving.graph)?);
        let header = Header {
            nimify_optimized_model: self.key.clone(),
            graph: name(&saving.graph),
            graph_len,
            graph_crc32,
            data: saving.data.clone(),
            data_len: std::fs::metadata(&data)?.len(),
        };
        let tmp = tempfile::Builder::new().prefix(".nimify-").suffix(".tmp").tempfile_in(&self.dir)?;
        std::fs::write(tmp.path(), serde_json::to_vec(&header).map_err(std::io::Error::other)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path()).map_err(|e| e.error)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.prune(Some(&header));
        Ok(saving.graph.clone())
    }

    /// Whether the model's files are still those the key stamped (none was written or swapped
    /// since): only then may what ONNX Runtime read be stored under it.
    fn still_current(&self) -> bool {
        let model = &self.key.files[0].path;
        let rest: Vec<PathBuf> = self.key.files[1..].iter().map(|f| f.path.clone()).collect();
        stamp_all(model, &rest).is_ok_and(|files| files == self.key.files)
    }

    /// Removes this model file's entries for other versions of its files (the model changed:
    /// they can never be used again) with their files, and this entry's files that `mine` (its
    /// header, when there is one) does not name and nobody has written for [`STRAY_AFTER`] (left
    /// by a killed save or by a start that lost the race to write the entry; a younger one may
    /// be another start's save in progress). Entries of the same files for another ONNX
    /// Runtime, CPU or level stay: processes that differ so can share a cache directory.
    fn prune(&self, mine: Option<&Header>) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else { return };
        let ours = format!("{}.", self.name);
        let stale = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STRAY_AFTER))
        };
        for item in listing.flatten() {
            let file = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if file.starts_with(&ours) {
                let named = mine.is_some_and(|h| file == h.graph || file == h.data);
                if !named && !file.ends_with(".json") && stale(&path) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if !file.ends_with(".json") {
                continue;
            }
            let Ok(old) = read_header(&path) else { continue };
            let files = &old.nimify_optimized_model.files;
            if files.first().map(|f| &f.path) == Some(&self.key.files[0].path) && *files != self.key.files {
                let _ = std::fs::remove_file(self.dir.join(&old.graph));
                let _ = std::fs::remove_file(self.dir.join(&old.data));
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// CRC-32 of a whole file, read in pieces.
fn file_crc32(path: &Path) -> std::io::Result<u32> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&buf[..n]),
        }
    }
}

enum Miss {
    Absent,
    OtherKey(String),
    Broken(String),
}

fn read_header(path: &Path) -> Result<Header, Miss> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(Miss::Absent);
        }
        Err(e) => return Err(Miss::Broken(format!("cannot open its header: {e}"))),
    };
    let mut text = Vec::new();
    file.take(MAX_HEADER).read_to_end(&mut text).map_err(|e| Miss::Broken(format!("cannot read its header: {e}")))?;
    let header: Header = serde_json::from_slice(&text).map_err(|e| Miss::Broken(format!("unreadable header: {e}")))?;
    // Only this entry's own files: `<name>.<tag>.onnx` and `<name>.<tag>.data`, nothing outside
    // the cache directory or of another entry.
    let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = header.graph.strip_prefix(&format!("{name}.")).and_then(|rest| rest.strip_suffix(".onnx"));
    let own = tag
        .is_some_and(|tag| !tag.is_empty() && !tag.contains(['/', '.']) && header.data == format!("{name}.{tag}.data"));
    if !own {
        return Err(Miss::Broken("its header names files that are not its own".into()));
    }
    Ok(header)
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

    /// What ONNX Runtime would save for an entry: a graph and its weights.
    fn save(cache: &Cache, graph: &[u8], data: &[u8]) -> Saving {
        let saving = cache.saving().expect("test files");
        std::fs::write(&saving.graph, graph).expect("test files");
        std::fs::write(cache.dir.join(&saving.data), data).expect("test files");
        saving
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("test files")
            .map(|e| e.expect("test files").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_round_trip_and_refuse_damage_other_keys_and_garbage() {
        let dir = tempfile::tempdir().expect("test files");
        let model = model_in(dir.path(), "cnn.onnx");
        let cache = Cache::at(&dir.path().join("c"), key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        let store = || {
            let saving = save(&cache, b"graph bytes", &[7u8; 5000]);
            assert_eq!(cache.store(&saving).expect("stored"), saving.graph);
            saving
        };
        let saving = store();
        assert_eq!(cache.load(), Some(saving.graph.clone()));

        let other = Cache {
            key: key_for(&model, describe_cpu("x86_64", AVX512)),
            dir: cache.dir.clone(),
            name: cache.name.clone(),
        };
        assert_eq!(other.load(), None, "keyed for another CPU");

        type Harm<'a> = &'a dyn Fn(&Saving);
        let damage: [(&str, Harm<'_>); 5] = [
            ("a changed graph", &|s| std::fs::write(&s.graph, b"graph bytez").expect("test files")),
            ("a truncated graph", &|s| std::fs::write(&s.graph, b"graph").expect("test files")),
            ("truncated weights", &|s| std::fs::write(cache.dir.join(&s.data), [7u8; 4999]).expect("test files")),
            ("no weights", &|s| std::fs::remove_file(cache.dir.join(&s.data)).expect("test files")),
            ("not a header", &|_| std::fs::write(cache.path(), b"not a header").expect("test files")),
        ];
        for (what, harm) in damage {
            let saving = store();
            harm(&saving);
            assert_eq!(cache.load(), None, "{what}");
        }
        // Each store above replaced the entry before it; the replaced files are young strays,
        // left for a while (another start might be saving them), then removed by a later store.
        let saving = store();
        assert_eq!(cache.load(), Some(saving.graph.clone()));
        assert!(names(&cache.dir).len() > 3, "young strays stay: {:?}", names(&cache.dir));
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for name in names(&cache.dir) {
            let file = std::fs::File::options().append(true).open(cache.dir.join(&name)).expect("test files");
            file.set_modified(an_hour_ago).expect("test files");
        }
        // A hit clears them too (a save killed in a loop never reaches a store).
        assert_eq!(cache.load(), Some(saving.graph.clone()));
        let file = |p: &Path| p.file_name().expect("a name").to_string_lossy().into_owned();
        let mut want = vec![file(&cache.path()), file(&saving.graph), saving.data.clone()];
        want.sort();
        assert_eq!(names(&cache.dir), want, "old strays and temporary files are gone");

        std::fs::write(&model, "retrained").expect("test files");
        let saving = save(&cache, b"graph", b"data");
        assert!(cache.store(&saving).is_err(), "a model written since it was stamped is not stored");
        assert!(!saving.graph.exists() && !cache.dir.join(&saving.data).exists(), "what was saved is removed");
    }

    #[test]
    fn a_header_naming_files_that_are_not_its_own_is_refused_and_they_are_left_alone() {
        let dir = tempfile::tempdir().expect("test files");
        let model = model_in(dir.path(), "cnn.onnx");
        let cache = Cache::at(&dir.path().join("c"), key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        cache.store(&save(&cache, b"graph", b"data")).expect("stored");
        let mut header: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cache.path()).expect("test files")).expect("json");
        header["data"] = "../m/cnn.onnx".into();
        header["data_len"] = std::fs::metadata(&model).expect("test files").len().into();
        std::fs::write(cache.path(), header.to_string()).expect("test files");
        assert_eq!(cache.load(), None);
        cache.store(&save(&cache, b"graph", b"data")).expect("stored");
        assert!(model.exists(), "the model named by a forged header is never removed");
        assert!(cache.load().is_some());
    }

    #[test]
    fn a_changed_model_removes_its_older_entries_and_keeps_other_cpus_and_models() {
        let dir = tempfile::tempdir().expect("test files");
        let model = model_in(dir.path(), "cnn.onnx");
        let other_model = model_in(dir.path(), "other.onnx");
        let c = dir.path().join("c");
        let old = Cache::at(&c, key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        let other_cpu = Cache::at(&c, key_for(&model, describe_cpu("x86_64", AVX512))).expect("a key");
        let other = Cache::at(&c, key_for(&other_model, describe_cpu("x86_64", AVX2))).expect("a key");
        for cache in [&old, &other_cpu, &other] {
            cache.store(&save(cache, b"graph", b"weights")).expect("stored");
        }
        std::fs::write(&model, "retrained").expect("test files");
        let new = Cache::at(&c, key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        new.store(&save(&new, b"new", b"new weights")).expect("stored");
        assert!(new.load().is_some());
        assert!(
            names(&c).iter().all(|n| !n.starts_with(&old.name)),
            "the entry of the old cnn.onnx is gone: {:?}",
            names(&c)
        );
        // An entry of the old file for another CPU goes too: its files changed as well.
        assert!(names(&c).iter().all(|n| !n.starts_with(&other_cpu.name)));
        assert!(other.load().is_some(), "another model's entry stays");
    }

    #[test]
    fn entries_for_another_cpu_of_the_same_files_stay() {
        let dir = tempfile::tempdir().expect("test files");
        let model = model_in(dir.path(), "cnn.onnx");
        let c = dir.path().join("c");
        let here = Cache::at(&c, key_for(&model, describe_cpu("x86_64", AVX2))).expect("a key");
        let there = Cache::at(&c, key_for(&model, describe_cpu("x86_64", AVX512))).expect("a key");
        there.store(&save(&there, b"there", b"weights")).expect("stored");
        here.store(&save(&here, b"here", b"weights")).expect("stored");
        assert!(here.load().is_some() && there.load().is_some());
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
        assert!(cache.saving().is_err());
        assert!(cache.load().is_none());
    }
}
