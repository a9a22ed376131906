//! Many models and versions, changed while serving.
//!
//! The catalog is what is served now: every model's ready versions, swapped whole on each
//! change, so a lookup sees one consistent set and a request keeps the version it looked up
//! (an `Arc`) until it is answered. A removed version is unloaded when its last request ends:
//! its worker threads stop once its queue is empty and no request holds it.
//!
//! A repository is a Triton-style model repository directory (see [`layout`]) and its
//! control mode: `none` loads it once at start, `poll` watches it, `explicit` loads and
//! unloads on request (`POST /v2/repository/models/{m}/load`). A new or changed version is
//! loaded and warmed up beside the serving one and switched to in one swap; one that fails to
//! load leaves the serving versions in place and is reported (log, metric, repository index).

pub mod layout;
pub(crate) mod pbtxt;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::config::{Config, ControlMode};
use crate::error::ApiError;
use crate::model::{Model, ModelOptions};
use crate::server::AppState;
use layout::{Fingerprint, LayoutError, ModelDir, Stamp};

/// The ready versions of one model, by number.
pub(crate) type Versions = BTreeMap<u64, Arc<Model>>;

/// The models served now.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    served: RwLock<Arc<BTreeMap<String, Versions>>>,
}

impl Catalog {
    /// Serves `models` (the ones given as files, at start) beside what is served.
    pub(crate) fn serve_all(&self, models: BTreeMap<String, Versions>) {
        let mut served = self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = BTreeMap::clone(&served);
        next.extend(models);
        *served = Arc::new(next);
    }

    /// Everything served now, as one consistent set.
    pub(crate) fn snapshot(&self) -> Arc<BTreeMap<String, Versions>> {
        Arc::clone(&self.served.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A model by name: the version asked for, else the newest ready one.
    pub(crate) fn lookup(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, ApiError> {
        let served = self.snapshot();
        let versions = served.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown model {name:?}; this server has {}",
                if served.is_empty() {
                    "no models loaded".to_string()
                } else {
                    served.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                }
            ))
        })?;
        let model = match version {
            None => versions.values().next_back(),
            Some(v) => versions.values().find(|m| m.version() == v),
        };
        model.cloned().ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown version {:?} of model {name:?}; ready versions: {}",
                version.unwrap_or_default(),
                versions.keys().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Every ready version of every model.
    pub(crate) fn all(&self) -> Vec<Arc<Model>> {
        self.snapshot().values().flat_map(|v| v.values().cloned()).collect()
    }

    /// The ready versions of `name`, ascending.
    pub(crate) fn versions(&self, name: &str) -> Vec<String> {
        self.snapshot().get(name).map(|v| v.keys().map(ToString::to_string).collect()).unwrap_or_default()
    }

    /// Serves `versions` as `name` from now on (none: the model is no longer served); returns
    /// what was served before.
    fn set(&self, name: &str, versions: Versions) -> Versions {
        let mut served = self.served.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = BTreeMap::clone(&served);
        let old = if versions.is_empty() { next.remove(name) } else { next.insert(name.to_string(), versions) };
        *served = Arc::new(next);
        old.unwrap_or_default()
    }
}

/// A version's state in the repository index (Triton's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    /// Served.
    Ready,
    /// Being loaded and warmed up.
    Loading,
    /// Not served: see the reason.
    Unavailable,
}

impl VersionState {
    /// Triton's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Loading => "LOADING",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One line of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version; empty for a model with no version directory.
    pub version: String,
    /// State.
    pub state: VersionState,
    /// Why it is not ready; empty when it is.
    pub reason: String,
}

/// What the repository knows of one model beyond the catalog.
#[derive(Debug, Default)]
struct Tracked {
    /// The model directory's fingerprint when its serving versions were loaded.
    served: Option<Fingerprint>,
    /// Per serving version: the configuration file's stamp and the version directory's
    /// fingerprint it was loaded from (poll mode reloads a version when either changes).
    loaded: BTreeMap<u64, (Option<Stamp>, Fingerprint)>,
    /// The fingerprint of the last failed load and why: poll mode retries, and reports, only
    /// when the directory changes.
    failed: Option<(Fingerprint, String)>,
    /// What the last poll saw: a change is acted on when two polls in a row see it the same, so
    /// a file being copied or rewritten is not taken half-written.
    seen: Option<Fingerprint>,
    /// Per version, a state other than READY and its reason.
    states: BTreeMap<u64, (VersionState, String)>,
    /// Unloaded on request (explicit mode).
    unloaded: bool,
}

/// Why a load was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// At start, or `POST .../load`: load every selected version again, and fail loudly.
    Request,
    /// A poll: only settled changes, once each.
    Poll,
}

/// A model repository and its control mode.
pub(crate) struct Repository {
    root: PathBuf,
    mode: ControlMode,
    /// The server's settings: what a model's configuration file does not replace.
    config: Config,
    /// `#[nimify]` models: a version with another signature is refused.
    typed: Vec<(String, crate::typed::generated::Signature)>,
    /// Names served from files, not from the repository.
    fixed: Vec<String>,
    /// Held (before a blocking thread is taken) while a load, unload or poll runs: one at a
    /// time, and requests waiting for their turn hold no thread.
    loading: Arc<tokio::sync::Mutex<()>>,
    tracked: Mutex<BTreeMap<String, Tracked>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("root", &self.root).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Why a load or unload was refused.
#[derive(Debug)]
pub(crate) enum ControlError {
    /// The repository has no such model.
    NoSuchModel(String),
    /// The model is not the repository's to change.
    Refused(String),
    /// Loading failed; the serving versions stay.
    Failed(String),
}

impl Repository {
    /// The repository at `root`, with the server's configuration, the typed models' signatures
    /// and the names served from files (which the repository may not also serve).
    pub(crate) fn new(
        root: PathBuf,
        config: Config,
        typed: Vec<(String, crate::typed::generated::Signature)>,
        fixed: Vec<String>,
    ) -> Self {
        Self {
            mode: config.repository.control_mode,
            root,
            config,
            typed,
            fixed,
            loading: Arc::new(tokio::sync::Mutex::new(())),
            tracked: Mutex::new(BTreeMap::new()),
        }
    }

    /// The control mode.
    pub(crate) fn mode(&self) -> ControlMode {
        self.mode
    }

    /// The lock every load, unload and poll holds.
    pub(crate) fn lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.loading)
    }

    /// The models to load at start: all of them, or in explicit mode those of
    /// `repository.load_models` (`*`: all).
    pub(crate) fn initial(config: &Config, root: &std::path::Path) -> Result<Vec<String>, LayoutError> {
        let all = layout::model_names(root)?;
        let wanted = &config.repository.load_models;
        Ok(match config.repository.control_mode {
            ControlMode::Explicit if !wanted.iter().any(|m| m == "*") => wanted.clone(),
            _ => all,
        })
    }

    /// Loads the models of [`initial`](Self::initial) (before serving: nothing else runs).
    /// Every failure is listed in the error.
    pub(crate) fn load_initial(&self, state: &AppState) -> Result<(), String> {
        let names = Self::initial(&self.config, &self.root).map_err(|e| e.to_string())?;
        let problems: Vec<String> = names
            .iter()
            .filter_map(|name| match self.load(state, name) {
                Ok(()) => None,
                Err(ControlError::NoSuchModel(e) | ControlError::Refused(e) | ControlError::Failed(e)) => Some(e),
            })
            .collect();
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// Loads (or reloads) `name`'s selected versions from the repository; the serving versions
    /// stay when any fails. The caller holds [`lock`](Self::lock).
    pub(crate) fn load(&self, state: &AppState, name: &str) -> Result<(), ControlError> {
        if !layout::is_model(&self.root, name) {
            return Err(ControlError::NoSuchModel(format!(
                "model repository {} has no model {name:?}",
                self.root.display()
            )));
        }
        if self.fixed.iter().any(|f| f == name) {
            return Err(ControlError::Refused(self.clash(name)));
        }
        self.tracked(name, |t| t.unloaded = false);
        self.sync(state, name, Trigger::Request).map_err(ControlError::Failed)
    }

    /// Stops serving every version of `name`; in-flight requests finish on the versions they
    /// started on. The caller holds [`lock`](Self::lock).
    pub(crate) fn unload(&self, state: &AppState, name: &str) -> Result<(), ControlError> {
        if self.fixed.iter().any(|f| f == name) {
            return Err(ControlError::Refused(format!(
                "model {name:?} is served from a file given at start, not from the repository; it cannot be unloaded"
            )));
        }
        let served = state.catalog().snapshot().contains_key(name);
        if !served && !layout::is_model(&self.root, name) {
            return Err(ControlError::NoSuchModel(format!(
                "model repository {} has no model {name:?}",
                self.root.display()
            )));
        }
        let old = state.catalog().set(name, Versions::new());
        retire(state, name, &old, &Versions::new());
        self.tracked(name, |t| {
            *t = Tracked {
                unloaded: true,
                states: old.keys().map(|v| (*v, (VersionState::Unavailable, "unloaded".to_string()))).collect(),
                ..Tracked::default()
            };
        });
        tracing::info!(model = name, versions = ?old.keys().collect::<Vec<_>>(), "model unloaded on request");
        Ok(())
    }

    /// One poll: loads what is new or changed (once it has settled), unloads what is gone.
    /// Failures are logged and reported once per change, not returned: the serving versions
    /// stay. The caller holds [`lock`](Self::lock).
    pub(crate) fn poll(&self, state: &AppState) {
        let names = match layout::model_names(&self.root) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "cannot poll the model repository; serving what is loaded");
                return;
            }
        };
        for name in &names {
            if self.fixed.contains(name) {
                let fingerprint = layout::fingerprint(&self.root.join(name));
                if self.tracked(name, |t| t.failed.as_ref().is_none_or(|(f, _)| f != &fingerprint)) {
                    let _ = self.failed(state, name, fingerprint, self.clash(name));
                }
                continue;
            }
            let _ = self.sync(state, name, Trigger::Poll);
        }
        // Model directories removed: their versions are unloaded.
        let gone: Vec<String> = state
            .catalog()
            .snapshot()
            .keys()
            .filter(|k| !names.contains(k) && !self.fixed.contains(k))
            .cloned()
            .collect();
        for name in gone {
            let old = state.catalog().set(&name, Versions::new());
            retire(state, &name, &old, &Versions::new());
            self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name);
            tracing::info!(model = name, "model directory removed from the repository: unloaded");
        }
    }

    fn clash(&self, name: &str) -> String {
        format!(
            "model {name:?} is served from a file given at start and also has a directory in the model repository {}; rename one",
            self.root.display()
        )
    }

    /// The repository index: every model directory and every version found in it (with
    /// `ready_only`, those ready).
    pub(crate) fn index(&self, state: &AppState, ready_only: bool) -> Vec<IndexEntry> {
        let names = layout::model_names(&self.root).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "repository index: cannot list the model repository; listing the served models");
            Vec::new()
        });
        let served = state.catalog().snapshot();
        let tracked = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entries = Vec::new();
        let mut all: Vec<&String> = names.iter().collect();
        all.extend(served.keys().filter(|k| !names.contains(k) && !self.fixed.contains(k)));
        for name in all {
            let ready = served.get(name.as_str());
            let t = tracked.get(name.as_str());
            let on_disk = layout::read_model_dir(&self.root, name, &self.config);
            let problem = match (&on_disk, t.and_then(|t| t.failed.as_ref())) {
                (Err(e), _) => Some(e.to_string()),
                (Ok(_), Some((_, why))) if ready.is_none() => Some(why.clone()),
                _ => None,
            };
            let mut versions: Vec<u64> = on_disk.iter().flat_map(|d| d.versions.iter().map(|v| v.version)).collect();
            versions.extend(ready.iter().flat_map(|r| r.keys()));
            versions.sort_unstable();
            versions.dedup();
            if versions.is_empty() && !ready_only {
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: problem.clone().unwrap_or_else(|| "no version directory".into()),
                });
            }
            for v in versions {
                let (state, reason) = if ready.is_some_and(|r| r.contains_key(&v)) {
                    match t.and_then(|t| t.states.get(&v)) {
                        Some((VersionState::Loading, why)) => (VersionState::Loading, why.clone()),
                        _ => (VersionState::Ready, String::new()),
                    }
                } else if let Some((s, why)) = t.and_then(|t| t.states.get(&v)) {
                    (*s, why.clone())
                } else if let Some(problem) = &problem {
                    (VersionState::Unavailable, problem.clone())
                } else {
                    let why = match (&on_disk, t.is_some_and(|t| t.unloaded)) {
                        (_, true) => "unloaded",
                        (Ok(d), false) => layout::describe(d).get(&v).copied().unwrap_or("not loaded"),
                        (Err(_), false) => "not loaded",
                    };
                    let why = match (why, self.mode) {
                        ("served", ControlMode::Poll) => "not loaded yet: a poll loads it once its files stop changing",
                        ("served", _) => "not loaded",
                        (why, _) => why,
                    };
                    (VersionState::Unavailable, why.to_string())
                };
                if !ready_only || state == VersionState::Ready {
                    entries.push(IndexEntry { name: name.clone(), version: v.to_string(), state, reason });
                }
            }
        }
        entries
    }

    /// Brings `name` in line with its directory.
    fn sync(&self, state: &AppState, name: &str, trigger: Trigger) -> Result<(), String> {
        let poll = trigger == Trigger::Poll;
        if poll && self.tracked(name, |t| t.unloaded) {
            return Ok(());
        }
        let dir_path = self.root.join(name);
        let fingerprint = layout::fingerprint(&dir_path);
        if poll {
            let settled = self.tracked(name, |t| t.seen.replace(fingerprint.clone()).as_ref() == Some(&fingerprint));
            let known = self.tracked(name, |t| {
                t.served.as_ref() == Some(&fingerprint) || t.failed.as_ref().is_some_and(|(f, _)| f == &fingerprint)
            });
            // An empty configuration file is one being written.
            let writing = [layout::CONFIG_TOML, layout::CONFIG_PBTXT]
                .iter()
                .any(|c| Stamp::of(&dir_path.join(c)).is_some_and(|s| s.len == 0));
            if !settled || known || writing {
                return Ok(());
            }
        }
        let dir = match layout::read_model_dir(&self.root, name, &self.config) {
            Ok(dir) => dir,
            Err(e) => return Err(self.failed(state, name, fingerprint, e.to_string())),
        };
        let selected = dir.selected();
        if selected.is_empty() {
            let on_disk: Vec<u64> = dir.versions.iter().map(|v| v.version).collect();
            let reason = format!(
                "no version to serve: version directories {on_disk:?}, version policy {}; add a version directory such as {}/1/{}",
                dir.settings.policy,
                dir.dir.display(),
                dir.settings.filename
            );
            return Err(self.failed(state, name, fingerprint, reason));
        }
        let served = state.catalog().snapshot().get(name).cloned().unwrap_or_default();
        let loaded_from = self.tracked(name, |t| t.loaded.clone());
        let mut next = Versions::new();
        let mut sources = BTreeMap::new();
        let mut problems = Vec::new();
        for v in &selected {
            let source = (dir.config_stamp, layout::fingerprint(&dir.dir.join(v.version.to_string())));
            let unchanged = poll && loaded_from.get(&v.version) == Some(&source);
            sources.insert(v.version, source);
            if let (true, Some(model)) = (unchanged, served.get(&v.version)) {
                next.insert(v.version, Arc::clone(model));
                continue;
            }
            self.tracked(name, |t| {
                t.states.insert(v.version, (VersionState::Loading, "loading and warming up".into()));
            });
            match self.load_version(state, &dir, v) {
                Ok(model) => {
                    next.insert(v.version, Arc::new(model));
                }
                Err(e) => {
                    self.tracked(name, |t| {
                        t.states.insert(v.version, (VersionState::Unavailable, e.clone()));
                    });
                    problems.push(format!("version {}: {e}", v.version));
                }
            }
        }
        if !problems.is_empty() {
            // What was loaded for this attempt is dropped (its workers stop) with its metric
            // series, and the series of the versions that failed too; what served serves on.
            for v in &selected {
                if !served.contains_key(&v.version) {
                    let model = next.get(&v.version);
                    state.metrics().forget_model(
                        name,
                        &v.version.to_string(),
                        model.and_then(|m| m.drift().map(|d| &**d)),
                    );
                }
            }
            self.tracked(name, |t| {
                for v in next.keys() {
                    if served.contains_key(v) {
                        t.states.remove(v);
                    } else {
                        let why =
                            "loaded, but not switched to: another version of the model failed to load".to_string();
                        t.states.insert(*v, (VersionState::Unavailable, why));
                    }
                }
                t.states.retain(|v, (s, _)| !(served.contains_key(v) && *s == VersionState::Loading));
            });
            return Err(self.failed(state, name, fingerprint, problems.join("; ")));
        }
        let old = state.catalog().set(name, next.clone());
        retire(state, name, &old, &next);
        state.metrics().model_loaded(name, true);
        tracing::info!(
            model = name,
            versions = ?next.keys().collect::<Vec<_>>(),
            unloaded = ?old.keys().filter(|v| !next.contains_key(v)).collect::<Vec<_>>(),
            "model serving"
        );
        self.tracked(name, |t| {
            t.served = Some(fingerprint.clone());
            t.seen = Some(fingerprint);
            t.loaded = sources;
            t.failed = None;
            t.states.clear();
        });
        Ok(())
    }

    /// Records a failed load: logged, counted, kept for the index. The message is returned.
    fn failed(&self, state: &AppState, name: &str, fingerprint: Fingerprint, reason: String) -> String {
        let serving = state.catalog().versions(name);
        tracing::error!(model = name, error = %reason, serving = ?serving, "model load failed; the serving versions stay");
        state.metrics().model_loaded(name, false);
        let message = format!("model {name:?}: {reason}");
        self.tracked(name, |t| {
            t.seen = Some(fingerprint.clone());
            t.failed = Some((fingerprint, reason));
        });
        message
    }

    /// Loads and warms up one version, refused when it does not match its `config.pbtxt` or a
    /// typed model's compiled-in signature.
    fn load_version(&self, state: &AppState, dir: &ModelDir, v: &layout::VersionDir) -> Result<Model, String> {
        if v.stamp.is_none() {
            return Err(format!("{} is missing", v.model.display()));
        }
        let mut options = ModelOptions::new(&v.model).name(&dir.name);
        options.version = Some(v.version);
        options.session.clone_from(&dir.settings.session);
        options.batching.clone_from(&dir.settings.batching);
        options.warmup.clone_from(&dir.settings.warmup);
        let typed = self.typed.iter().find(|(n, _)| n == &dir.name).map(|(_, s)| s);
        if let Some(signature) = typed {
            signature.apply_to(&mut options);
            // Checked before any session opens: a wrong model costs no load.
            let mut info = nimify_model::read_model(&v.model).map_err(|e| e.to_string())?;
            crate::model::override_dims(&mut info, &options.dims).map_err(|(t, why)| format!("{t}: {why}"))?;
            crate::typed::check_file(&v.model, &info, signature).map_err(|e| e.to_string())?;
        }
        if let Some(reference) = &dir.settings.reference {
            options.reference = Some(crate::drift::Reference::File(dir.dir.join(reference)));
        }
        let model = state.load_model(&options).map_err(|e| e.to_string())?;
        pbtxt::check_declared(&dir.settings, &model)?;
        if let Some(signature) = typed {
            crate::typed::check_loaded(&model, signature).map_err(|e| e.to_string())?;
        }
        Ok(model)
    }

    fn tracked<R>(&self, name: &str, f: impl FnOnce(&mut Tracked) -> R) -> R {
        let mut tracked = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(tracked.entry(name.to_string()).or_default())
    }
}

/// Forgets the metrics (drift counters too) of the versions in `old` that `next` does not serve.
fn retire(state: &AppState, name: &str, old: &Versions, next: &Versions) {
    for (v, model) in old {
        if !next.contains_key(v) {
            state.metrics().forget_model(name, model.version(), model.drift().map(|d| &**d));
        }
    }
}

/// Polls the repository every `repository.poll_interval_ms` until the task is dropped.
pub(crate) async fn poll_loop(state: Arc<AppState>) {
    let Some(interval) =
        state.repository().map(|r| std::time::Duration::from_millis(r.config.repository.poll_interval_ms.max(1)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(lock) = state.repository().map(Repository::lock) else { return };
        let turn = lock.lock_owned().await;
        let state = Arc::clone(&state);
        let polled = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            if let Some(repository) = state.repository() {
                repository.poll(&state);
            }
        });
        if polled.await.is_err() {
            tracing::error!("a repository poll panicked; polling on");
        }
    }
}

/// What the repository API does, the same over HTTP and gRPC.
pub(crate) mod api {
    use std::sync::Arc;

    use super::{IndexEntry, VersionState};
    use crate::config::ControlMode;
    use crate::error::ApiError;
    use crate::server::AppState;

    /// The repository index: the repository's models and versions, and the models served from
    /// files (always ready).
    pub(crate) async fn index(state: Arc<AppState>, ready_only: bool) -> Result<Vec<IndexEntry>, ApiError> {
        if state.is_starting() {
            return Err(crate::server::starting());
        }
        let mut entries = match state.repository() {
            Some(_) => {
                let s = Arc::clone(&state);
                tokio::task::spawn_blocking(move || s.repository().map(|r| r.index(&s, ready_only)).unwrap_or_default())
                    .await
                    .map_err(|e| ApiError::Internal(format!("the repository index stopped: {e}")))?
            }
            None => Vec::new(),
        };
        for model in state.models() {
            let listed = entries.iter().any(|e| e.name == model.name() && e.version == model.version());
            if !listed {
                entries.push(IndexEntry {
                    name: model.name().to_string(),
                    version: model.version().to_string(),
                    state: VersionState::Ready,
                    reason: String::new(),
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name).then(version_order(&a.version).cmp(&version_order(&b.version))));
        Ok(entries)
    }

    fn version_order(v: &str) -> (usize, &str) {
        (v.len(), v)
    }

    /// Loads (or reloads) a model from the repository: explicit mode only.
    pub(crate) async fn load(state: Arc<AppState>, name: String) -> Result<(), ApiError> {
        control(state, "load", move |r, s| r.load(s, &name)).await
    }

    /// Unloads a model: explicit mode only.
    pub(crate) async fn unload(state: Arc<AppState>, name: String) -> Result<(), ApiError> {
        control(state, "unload", move |r, s| r.unload(s, &name)).await
    }

    /// Runs `f` on a blocking thread once it is this request's turn (waiting holds no thread).
    async fn control(
        state: Arc<AppState>,
        what: &'static str,
        f: impl FnOnce(&super::Repository, &AppState) -> Result<(), super::ControlError> + Send + 'static,
    ) -> Result<(), ApiError> {
        if state.is_starting() {
            return Err(crate::server::starting());
        }
        explicit(&state, what)?;
        let Some(lock) = state.repository().map(super::Repository::lock) else { return Ok(()) };
        let turn = lock.lock_owned().await;
        let done = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            match state.repository() {
                Some(r) => f(r, &state),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a repository {what} stopped: {e}")))?;
        done.map_err(|e| match e {
            super::ControlError::NoSuchModel(e) => ApiError::NotFound(e),
            super::ControlError::Refused(e) => ApiError::BadRequest(e),
            super::ControlError::Failed(e) => ApiError::BadRequest(format!("failed to {what} {e}")),
        })
    }

    /// A request naming a repository (gRPC's `repository_name`) names this server's: empty, or
    /// its directory's name.
    pub(crate) fn check_repository_name(state: &AppState, name: &str) -> Result<(), ApiError> {
        let ours = state.repository().and_then(|r| r.root.file_name()).map(|n| n.to_string_lossy().into_owned());
        if name.is_empty() || ours.as_deref() == Some(name) {
            return Ok(());
        }
        Err(ApiError::NotFound(format!(
            "unknown model repository {name:?}; this server serves {}",
            ours.map_or_else(|| "no model repository".to_string(), |o| format!("one, {o:?} (or leave the name empty)"))
        )))
    }

    /// The parameters a load or unload request may carry; any other is refused by name.
    pub(crate) fn check_parameters<'a>(
        names: impl IntoIterator<Item = &'a str>,
        allowed: &[&str],
    ) -> Result<(), ApiError> {
        for name in names {
            if !allowed.contains(&name) {
                return Err(ApiError::BadRequest(format!(
                    "parameter {name:?} is not supported by nimify{}; the model is loaded from its directory in the repository",
                    if allowed.is_empty() { String::new() } else { format!(" (supported: {})", allowed.join(", ")) }
                )));
            }
        }
        Ok(())
    }

    fn explicit(state: &AppState, what: &str) -> Result<(), ApiError> {
        match state.repository().map(super::Repository::mode) {
            Some(ControlMode::Explicit) => Ok(()),
            Some(mode) => Err(ApiError::BadRequest(format!(
                "explicit model {what} needs --model-control-mode explicit; this server's model control mode is {}",
                match mode {
                    ControlMode::Poll => "poll (it loads what the repository holds)",
                    _ => "none (its models are loaded once at start)",
                }
            ))),
            None => Err(ApiError::BadRequest(format!(
                "explicit model {what} needs a model repository (--model-repository DIR --model-control-mode explicit); this server serves fixed model files"
            ))),
        }
    }
}
