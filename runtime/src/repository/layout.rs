//! Reading a Triton-style model repository: `REPO/<name>/<version>/model.onnx`, version
//! directories named by positive integers, and per model an optional `config.toml` (nimify's
//! keys) or `config.pbtxt` (Triton's, the common subset), never both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies one version of a file: size, modification time and, on Unix, inode and
/// status-change time (a file replaced by one of the same size and modification time, as
/// reproducible builds make, still differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes.
    pub len: u64,
    /// Modification time.
    pub modified: SystemTime,
    /// Inode and status-change time in nanoseconds (0 where there are none).
    pub identity: (u64, i128),
}

impl Stamp {
    /// The stamp of what `path` names (following links); `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let identity = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.ino(), i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let identity = (0, 0);
        Some(Self { len: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), identity })
    }
}

/// What a directory holds, for noticing changes: every entry that is not hidden, with its stamp,
/// and one level into subdirectories (a version directory's files). A listing that fails is an
/// entry of its own, so an error that changes is a change too.
pub type Fingerprint = Vec<(String, Option<Stamp>)>;

/// The [`Fingerprint`] of `dir`.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    list_into(dir, "", 2, &mut out);
    out
}

fn list_into(dir: &Path, prefix: &str, depth: u8, out: &mut Fingerprint) {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.file_name()).collect::<Vec<_>>(),
        Err(e) => {
            out.push((format!("{prefix}<cannot list: {e}>"), None));
            return;
        }
    };
    entries.sort();
    for name in entries {
        let text = name.to_string_lossy();
        if text.starts_with('.') {
            continue;
        }
        let path = dir.join(&name);
        out.push((format!("{prefix}{text}"), Stamp::of(&path)));
        if depth > 1 && path.is_dir() {
            list_into(&path, &format!("{prefix}{text}/"), depth - 1, out);
        }
    }
}

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{BatchingConfig, Config, SessionConfig, WarmupConfig};

/// nimify's per-model configuration file.
pub const CONFIG_TOML: &str = "config.toml";
/// Triton's per-model configuration file (read for the common subset).
pub const CONFIG_PBTXT: &str = "config.pbtxt";
/// The model file of a version directory unless the configuration names another.
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionPolicy {
    /// The newest `n` versions (Triton's default, with 1).
    Latest(u32),
    /// Every version.
    All,
    /// These versions (those present).
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions served out of `available` (ascending), ascending.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        match self {
            Self::Latest(n) => {
                let n = usize::try_from(*n).unwrap_or(usize::MAX);
                available[available.len().saturating_sub(n)..].to_vec()
            }
            Self::All => available.to_vec(),
            Self::Specific(wanted) => available.iter().copied().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

impl std::fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest(n) => write!(f, "latest {n}"),
            Self::All => f.write_str("all"),
            Self::Specific(v) => {
                write!(f, "specific [{}]", v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// A tensor a `config.pbtxt` declares, checked against the model when it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// `input` or `output`.
    pub kind: &'static str,
    /// Tensor name.
    pub name: String,
    /// KServe datatype (`FP32`), from Triton's `TYPE_FP32`.
    pub datatype: String,
    /// Dims without the batch dim when `max_batch_size` > 0 (-1: any).
    pub dims: Vec<i64>,
}

/// One model's settings from its configuration file; `None`: the server's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSettings {
    /// Versions served.
    pub policy: VersionPolicy,
    /// Session options.
    pub session: Option<SessionConfig>,
    /// Batching.
    pub batching: Option<BatchingConfig>,
    /// Warm-up.
    pub warmup: Option<WarmupConfig>,
    /// Reference profile for drift, relative to the model directory.
    pub reference: Option<PathBuf>,
    /// Model file inside each version directory.
    pub filename: String,
    /// Tensors declared by a `config.pbtxt` (checked against each version), with the batch dim
    /// left out when `batched`.
    pub declared: Vec<DeclaredTensor>,
    /// `max_batch_size` > 0 in a `config.pbtxt`: declared dims leave out dim 0.
    pub batched: bool,
}

/// One version directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    /// The version number.
    pub version: u64,
    /// The model file it should hold.
    pub model: PathBuf,
    /// The model file's stamp; `None` when it is missing.
    pub stamp: Option<Stamp>,
}

/// One model directory of a repository.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDir {
    /// Served name (the directory's).
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
    /// The configuration file read, when there is one.
    pub config_file: Option<PathBuf>,
    /// The configuration file's stamp.
    pub config_stamp: Option<Stamp>,
    /// Settings from the configuration file.
    pub settings: ModelSettings,
    /// Every version directory, ascending.
    pub versions: Vec<VersionDir>,
    /// Entries that are neither a version directory nor a configuration file, with why they
    /// are not served (hidden entries are skipped silently: copy a version in as `.tmp` and
    /// rename it).
    pub skipped: Vec<(String, String)>,
}

impl ModelDir {
    /// The versions the policy serves, ascending.
    pub fn selected(&self) -> Vec<&VersionDir> {
        let available: Vec<u64> = self.versions.iter().map(|v| v.version).collect();
        let chosen = self.settings.policy.select(&available);
        self.versions.iter().filter(|v| chosen.contains(&v.version)).collect()
    }
}

/// Why a repository or one of its models cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The repository directory itself cannot be listed.
    #[error("model repository {path}: {reason}")]
    Repository {
        /// The repository.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The repository has no directory of that name.
    #[error("model repository {repository} has no model {name:?} (no directory {repository}/{name})")]
    NoSuchModel {
        /// The repository.
        repository: PathBuf,
        /// The model asked for.
        name: String,
    },
    /// One model's directory or configuration is wrong.
    #[error("model {name:?} in {dir}: {reason}")]
    Model {
        /// Served name.
        name: String,
        /// Its directory.
        dir: PathBuf,
        /// What is wrong, with the fix.
        reason: String,
    },
}

/// Names of the model directories in `root`, sorted (hidden entries and plain files skipped).
/// A directory whose name cannot be a model name (not UTF-8, a `\\`) is an error naming it.
pub fn model_names(root: &Path) -> Result<Vec<String>, LayoutError> {
    let fail = |reason: String| LayoutError::Repository { path: root.to_path_buf(), reason };
    let entries = std::fs::read_dir(root).map_err(|e| fail(format!("cannot list it: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot list it: {e}")))?;
        let raw = entry.file_name();
        let lossy = raw.to_string_lossy().into_owned();
        if lossy.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let name = raw
            .into_string()
            .map_err(|_| fail(format!("directory {lossy:?} is not named in UTF-8, and a model name is; rename it")))?;
        if name.contains('\\') {
            return Err(fail(format!("directory {name:?} has a backslash, which a model name cannot; rename it")));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Whether `name` is a model directory of `root` (what a client names is checked against the
/// listing, never joined to a path first).
pub fn is_model(root: &Path, name: &str) -> bool {
    model_names(root).is_ok_and(|names| names.iter().any(|n| n == name))
}

/// Reads one model directory: its configuration (applied over `server`'s settings) and its
/// version directories.
pub fn read_model_dir(root: &Path, name: &str, server: &Config) -> Result<ModelDir, LayoutError> {
    let dir = root.join(name);
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) || !dir.is_dir() {
        return Err(LayoutError::NoSuchModel { repository: root.to_path_buf(), name: name.to_string() });
    }
    let fail = |reason: String| LayoutError::Model { name: name.to_string(), dir: dir.clone(), reason };
    let toml_path = dir.join(CONFIG_TOML);
    let pbtxt_path = dir.join(CONFIG_PBTXT);
    let (config_file, settings) = match (present(&toml_path).map_err(&fail)?, present(&pbtxt_path).map_err(&fail)?) {
        (true, true) => {
            return Err(fail(format!(
                "it has both {CONFIG_TOML} and {CONFIG_PBTXT}; keep one (nimify reads either, never both)"
            )));
        }
        (true, false) => {
            let text = read_text(&toml_path).map_err(&fail)?;
            (Some(toml_path), parse_toml(&text, server).map_err(|e| fail(format!("{CONFIG_TOML}: {e}")))?)
        }
        (false, true) => {
            let text = read_text(&pbtxt_path).map_err(&fail)?;
            let settings =
                super::pbtxt::settings(&text, name, server).map_err(|e| fail(format!("{CONFIG_PBTXT}: {e}")))?;
            (Some(pbtxt_path), settings)
        }
        (false, false) => (None, ModelSettings { filename: DEFAULT_MODEL_FILENAME.into(), ..ModelSettings::default() }),
    };
    let config_stamp = config_file.as_deref().and_then(Stamp::of);
    let entries = std::fs::read_dir(&dir).map_err(|e| fail(format!("cannot list it: {e}")))?;
    let mut versions = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot list it: {e}")))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if file.starts_with('.') || file == CONFIG_TOML || file == CONFIG_PBTXT {
            continue;
        }
        if !path.is_dir() {
            skipped.push((file, "not a version directory".into()));
            continue;
        }
        match parse_version(&file) {
            Some(version) => {
                let model = path.join(&settings.filename);
                if let Err(e) = std::fs::read_dir(&path) {
                    return Err(fail(format!("cannot list version directory {}: {e}", path.display())));
                }
                versions.push(VersionDir { version, stamp: Stamp::of(&model).filter(|_| model.is_file()), model });
            }
            None => skipped.push((file, "a version directory is named by a positive integer (1, 2, ...)".into())),
        }
    }
    versions.sort_by_key(|v| v.version);
    skipped.sort();
    Ok(ModelDir { name: name.to_string(), dir, config_file, config_stamp, settings, versions, skipped })
}

/// A version directory's number: digits only, no leading zero, above 0.
fn parse_version(name: &str) -> Option<u64> {
    let canonical = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) && !name.starts_with('0');
    canonical.then(|| name.parse().ok()).flatten()
}

/// Whether a configuration file is there: a readable file, or nothing at all (a link to
/// nowhere, a directory or an unreadable file is an error, never taken as no configuration).
fn present(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(_) => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(true),
            Ok(_) => Err(format!("{} is not a file", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        },
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The keys of a model's `config.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelToml {
    version_policy: Option<toml::Value>,
    default_model_filename: Option<String>,
    reference: Option<PathBuf>,
    session: Option<toml::Table>,
    batching: Option<toml::Table>,
    warmup: Option<toml::Table>,
}

/// Reads a `config.toml`: `version_policy = "all" | { latest = N } | { specific = [..] }`,
/// `default_model_filename`, `reference`, and `[session]`, `[batching]`, `[warmup]` with the
/// server configuration's keys (the keys left out keep the server's values).
pub(crate) fn parse_toml(text: &str, server: &Config) -> Result<ModelSettings, String> {
    let parsed: ModelToml = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let policy = match parsed.version_policy {
        None => VersionPolicy::default(),
        Some(v) => toml_policy(&v)?,
    };
    let filename = parsed.default_model_filename.unwrap_or_else(|| DEFAULT_MODEL_FILENAME.into());
    check_filename(&filename)?;
    let session = parsed.session.map(|t| overlay(&server.session, t, "session")).transpose()?;
    let batching = parsed.batching.map(|t| overlay(&server.batching, t, "batching")).transpose()?;
    check_sections(session.as_ref(), batching.as_ref())?;
    Ok(ModelSettings {
        policy,
        session,
        batching,
        warmup: parsed.warmup.map(|t| overlay(&server.warmup, t, "warmup")).transpose()?,
        reference: parsed.reference,
        filename,
        declared: Vec::new(),
        batched: false,
    })
}

/// The server configuration's range checks, on one model's sections.
pub(crate) fn check_sections(session: Option<&SessionConfig>, batching: Option<&BatchingConfig>) -> Result<(), String> {
    let mut config = Config::default();
    if let Some(s) = session {
        config.session = s.clone();
    }
    if let Some(b) = batching {
        config.batching = b.clone();
    }
    config.validate().map(|_| ()).map_err(|e| e.to_string())
}

/// A model file name: one plain file name, no directories.
pub(crate) fn check_filename(name: &str) -> Result<(), String> {
    let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if plain { Ok(()) } else { Err(format!("default_model_filename {name:?} must be a plain file name")) }
}

fn toml_policy(value: &toml::Value) -> Result<VersionPolicy, String> {
    const HELP: &str = "version_policy is \"all\", { latest = N } or { specific = [1, 2] }";
    match value {
        toml::Value::String(s) if s == "all" => Ok(VersionPolicy::All),
        toml::Value::Table(t) if t.len() == 1 => match t.iter().next() {
            Some((k, toml::Value::Integer(n))) if k == "latest" => match u32::try_from(*n) {
                Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
                _ => Err(format!("version_policy latest = {n}: it must be at least 1")),
            },
            Some((k, toml::Value::Array(items))) if k == "specific" => {
                let versions = items
                    .iter()
                    .map(|i| match i.as_integer().and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0) {
                        Some(n) => Ok(n),
                        None => Err(format!("version_policy specific: {i} is not a positive version number")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if versions.is_empty() {
                    return Err("version_policy specific = []: name at least one version".into());
                }
                Ok(VersionPolicy::Specific(versions))
            }
            _ => Err(format!("{HELP}, not {value}")),
        },
        _ => Err(format!("{HELP}, not {value}")),
    }
}

/// `base` with the keys of `table` replaced, read back with the same checks as the server's
/// configuration (unknown keys are errors).
fn overlay<T: Serialize + DeserializeOwned>(base: &T, table: toml::Table, section: &str) -> Result<T, String> {
    let mut merged = match toml::Value::try_from(base) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    merged.extend(table);
    toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| format!("[{section}]: {}", e.message()))
}

/// What `inspect` and the repository index show of one version: whether the policy serves it
/// and whether its file is there.
pub fn describe(dir: &ModelDir) -> BTreeMap<u64, &'static str> {
    let selected: Vec<u64> = dir.selected().iter().map(|v| v.version).collect();
    dir.versions
        .iter()
        .map(|v| {
            let what = match (selected.contains(&v.version), v.stamp.is_some()) {
                (true, true) => "served",
                (true, false) => "missing model file",
                (false, _) => "not selected by the version policy",
            };
            (v.version, what)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policies_pick_versions() {
        let available = [1, 2, 3, 7];
        assert_eq!(VersionPolicy::default().select(&available), [7]);
        assert_eq!(VersionPolicy::Latest(2).select(&available), [3, 7]);
        assert_eq!(VersionPolicy::Latest(9).select(&available), [1, 2, 3, 7]);
        assert_eq!(VersionPolicy::All.select(&available), [1, 2, 3, 7]);
        assert_eq!(VersionPolicy::Specific(vec![2, 5, 7]).select(&available), [2, 7]);
        assert!(VersionPolicy::Latest(1).select(&[]).is_empty());
    }

    #[test]
    fn version_directories_are_positive_integers() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("12"), Some(12));
        for bad in ["0", "01", "-1", "1a", "", "v1", "18446744073709551616"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_toml_keeps_the_server_values_it_does_not_name() {
        let mut server = Config::default();
        server.batching.max_queue_delay_us = 500;
        let s =
            parse_toml("version_policy = { latest = 2 }\n[batching]\nmax_batch_size = 4\n", &server).expect("parse");
        assert_eq!(s.policy, VersionPolicy::Latest(2));
        let b = s.batching.expect("batching");
        assert_eq!((b.max_batch_size, b.max_queue_delay_us), (4, 500));
        assert_eq!(s.session, None);
        assert_eq!(parse_toml("version_policy = \"all\"", &server).expect("all").policy, VersionPolicy::All);
        let s = parse_toml("version_policy = { specific = [3, 1] }", &server).expect("specific");
        assert_eq!(s.policy, VersionPolicy::Specific(vec![3, 1]));
    }

    #[test]
    fn config_toml_mistakes_are_named() {
        let server = Config::default();
        for (text, needle) in [
            ("version_policy = { latest = 0 }", "at least 1"),
            ("version_policy = \"newest\"", "version_policy is"),
            ("version_policy = { specific = [] }", "at least one"),
            ("version_policy = { specific = [0] }", "positive"),
            ("[batching]\nmax_batch = 3", "max_batch"),
            ("instances = 2", "instances"),
            ("default_model_filename = \"../x.onnx\"", "plain file name"),
        ] {
            let e = parse_toml(text, &server).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
