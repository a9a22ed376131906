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
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, ControlMode};
use crate::error::ApiError;
use crate::model::{Model, ModelOptions};
use crate::server::AppState;
use layout::{LayoutError, ModelDir};

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

/// What a version was loaded from: its model file and the model's configuration file, by size
/// and modification time. A change to either reloads it.
type Stamp = Option<(u64, SystemTime)>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    config: Stamp,
    versions: BTreeMap<u64, Stamp>,
}

/// What the repository knows of one model beyond the catalog.
#[derive(Debug, Default)]
struct Tracked {
    /// The files the served versions came from.
    served: Option<Attempt>,
    /// The last load that failed (poll mode retries only when the files change) and why.
    failed: Option<(Attempt, String)>,
    /// Per version, a state other than READY and its reason.
    states: BTreeMap<u64, (VersionState, String)>,
    /// Unloaded on request (explicit mode).
    unloaded: bool,
}

/// Why a load was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// At start, or `POST .../load`: load whatever the files are, and fail loudly.
    Request,
    /// A poll: only changes, and a model directory gone unloads its versions.
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
    /// Held while a load or unload runs: one at a time.
    loading: Mutex<()>,
    tracked: Mutex<BTreeMap<String, Tracked>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("root", &self.root).field("mode", &self.mode).finish_non_exhaustive()
    }
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
            loading: Mutex::new(()),
            tracked: Mutex::new(BTreeMap::new()),
        }
    }

    /// The control mode.
    pub(crate) fn mode(&self) -> ControlMode {
        self.mode
    }

    /// The models loaded at start: all of them, or in explicit mode those of
    /// `repository.load_models` (`*`: all). Every failure is listed in the error.
    pub(crate) fn load_initial(&self, state: &AppState) -> Result<(), String> {
        let names = layout::model_names(&self.root).map_err(|e| e.to_string())?;
        let wanted: Vec<String> = match self.mode {
            ControlMode::Explicit if !self.config.repository.load_models.iter().any(|m| m == "*") => {
                self.config.repository.load_models.clone()
            }
            _ => names,
        };
        let problems: Vec<String> = wanted.iter().filter_map(|name| self.load(state, name).err()).collect::<Vec<_>>();
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// Loads (or reloads) `name`'s selected versions from the repository; the serving versions
    /// stay when any fails.
    pub(crate) fn load(&self, state: &AppState, name: &str) -> Result<(), String> {
        let _one = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.tracked(name, |t| t.unloaded = false);
        self.sync(state, name, Trigger::Request)
    }

    /// Stops serving every version of `name`; in-flight requests finish on the versions they
    /// started on.
    pub(crate) fn unload(&self, state: &AppState, name: &str) -> Result<(), ApiError> {
        let _one = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.fixed.iter().any(|f| f == name) {
            return Err(ApiError::BadRequest(format!(
                "model {name:?} is served from a file given at start, not from the repository; it cannot be unloaded"
            )));
        }
        let old = state.catalog().set(name, Versions::new());
        let known = !old.is_empty() || self.root.join(name).is_dir();
        if !known {
            return Err(ApiError::NotFound(format!("model repository {} has no model {name:?}", self.root.display())));
        }
        self.retire(state, name, &old, &Versions::new());
        self.tracked(name, |t| {
            t.served = None;
            t.failed = None;
            t.unloaded = true;
            t.states = old.keys().map(|v| (*v, (VersionState::Unavailable, "unloaded".to_string()))).collect();
        });
        tracing::info!(model = name, versions = ?old.keys().collect::<Vec<_>>(), "model unloaded on request");
        Ok(())
    }

    /// One poll: loads what is new or changed, unloads what is gone. Failures are logged and
    /// reported, not returned: the serving versions stay.
    pub(crate) fn poll(&self, state: &AppState) {
        let _one = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = match layout::model_names(&self.root) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "cannot poll the model repository; serving what is loaded");
                return;
            }
        };
        let mut known: Vec<String> = state.catalog().snapshot().keys().cloned().collect();
        known.retain(|k| !self.fixed.contains(k));
        for name in names.iter().chain(known.iter().filter(|k| !names.contains(k))) {
            let _ = self.sync(state, name, Trigger::Poll);
        }
    }

    /// The repository index: every model directory and every version found in it (with
    /// `ready_only`, those ready).
    pub(crate) fn index(&self, state: &AppState, ready_only: bool) -> Result<Vec<IndexEntry>, ApiError> {
        let names = layout::model_names(&self.root).map_err(|e| ApiError::Internal(e.to_string()))?;
        let served = state.catalog().snapshot();
        let tracked = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entries = Vec::new();
        let mut all: Vec<&String> = names.iter().collect();
        all.extend(served.keys().filter(|k| !names.contains(k) && !self.fixed.contains(k)));
        for name in all {
            let ready = served.get(name.as_str());
            let t = tracked.get(name.as_str());
            let on_disk = layout::read_model_dir(&self.root, name, &self.config).ok();
            let mut versions: Vec<u64> = on_disk.iter().flat_map(|d| d.versions.iter().map(|v| v.version)).collect();
            versions.extend(ready.iter().flat_map(|r| r.keys()));
            versions.sort_unstable();
            versions.dedup();
            if versions.is_empty() {
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: VersionState::Unavailable,
                    reason: "no version directory".into(),
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
                } else {
                    let why = match (&on_disk, t.is_some_and(|t| t.unloaded)) {
                        (_, true) => "unloaded",
                        (Some(d), false) => layout::describe(d).get(&v).copied().unwrap_or("not loaded"),
                        (None, false) => "not loaded",
                    };
                    let why = match (why, self.mode) {
                        ("served", ControlMode::Poll) => "not loaded yet: the next poll loads it",
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
        Ok(entries)
    }

    /// Brings `name` in line with its directory.
    fn sync(&self, state: &AppState, name: &str, trigger: Trigger) -> Result<(), String> {
        if self.fixed.iter().any(|f| f == name) {
            return Err(format!(
                "model {name:?} is served from a file given at start and also has a directory in the model repository {}; rename one",
                self.root.display()
            ));
        }
        if trigger == Trigger::Poll && self.tracked(name, |t| t.unloaded) {
            return Ok(());
        }
        let dir = match layout::read_model_dir(&self.root, name, &self.config) {
            Ok(dir) => dir,
            Err(LayoutError::NoSuchModel { .. }) if trigger == Trigger::Poll => {
                let old = state.catalog().set(name, Versions::new());
                self.retire(state, name, &old, &Versions::new());
                self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
                tracing::info!(model = name, "model directory removed from the repository: unloaded");
                return Ok(());
            }
            Err(e) => return Err(self.failed(state, name, None, e.to_string(), trigger)),
        };
        let selected = dir.selected();
        let attempt =
            Attempt { config: dir.config_stamp, versions: selected.iter().map(|v| (v.version, v.stamp)).collect() };
        if trigger == Trigger::Poll
            && self.tracked(name, |t| {
                t.served.as_ref() == Some(&attempt) || t.failed.as_ref().is_some_and(|(a, _)| a == &attempt)
            })
        {
            return Ok(());
        }
        if selected.is_empty() {
            let on_disk: Vec<u64> = dir.versions.iter().map(|v| v.version).collect();
            let reason = format!(
                "no version to serve: version directories {on_disk:?}, version policy {}; add a version directory such as {}/1/{}",
                dir.settings.policy,
                dir.dir.display(),
                dir.settings.filename
            );
            return Err(self.failed(state, name, Some(attempt), reason, trigger));
        }
        let served = state.catalog().snapshot().get(name).cloned().unwrap_or_default();
        let previous = self.tracked(name, |t| t.served.clone());
        let mut next = Versions::new();
        let mut problems = Vec::new();
        for v in &selected {
            let same_files = previous
                .as_ref()
                .is_some_and(|p| p.config == attempt.config && p.versions.get(&v.version) == Some(&v.stamp));
            if let (true, Some(model)) = (same_files, served.get(&v.version)) {
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
            // The versions loaded for this attempt are dropped (their workers stop); what
            // served before serves on.
            for v in next.keys().filter(|v| !served.contains_key(v)) {
                state.metrics().forget_model(name, &v.to_string());
            }
            self.tracked(name, |t| {
                t.states.retain(|v, (s, _)| !(served.contains_key(v) && *s == VersionState::Loading))
            });
            return Err(self.failed(state, name, Some(attempt), problems.join("; "), trigger));
        }
        let old = state.catalog().set(name, next.clone());
        self.retire(state, name, &old, &next);
        state.metrics().model_loaded(name, true);
        tracing::info!(
            model = name,
            versions = ?next.keys().collect::<Vec<_>>(),
            unloaded = ?old.keys().filter(|v| !next.contains_key(v)).collect::<Vec<_>>(),
            "model serving"
        );
        self.tracked(name, |t| {
            t.served = Some(attempt);
            t.failed = None;
            t.states.clear();
        });
        Ok(())
    }

    /// Records a failed load: logged, counted, kept for the index. The message is returned.
    fn failed(
        &self,
        state: &AppState,
        name: &str,
        attempt: Option<Attempt>,
        reason: String,
        trigger: Trigger,
    ) -> String {
        let serving = state.catalog().versions(name);
        tracing::error!(model = name, error = %reason, serving = ?serving, "model load failed; the serving versions stay");
        state.metrics().model_loaded(name, false);
        let message = format!("model {name:?}: {reason}");
        self.tracked(name, |t| {
            if let Some(a) = attempt {
                t.failed = Some((a, reason.clone()));
            } else if trigger == Trigger::Poll {
                t.failed = None;
            }
        });
        message
    }

    /// Forgets the metrics of the versions in `old` that `next` does not serve.
    fn retire(&self, state: &AppState, name: &str, old: &Versions, next: &Versions) {
        for (v, model) in old {
            if !next.contains_key(v) {
                state.metrics().forget_model(name, model.version());
            }
        }
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
            options.dims.clone_from(&signature.dims_overrides);
            options.reference =
                signature.reference.map(|(path, json)| crate::drift::Reference::Embedded { path, json });
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
        if let (Some(_), Some(lie)) = (typed, model.shape_lie()) {
            return Err(format!(
                "{lie}; the typed types are built from the declared dims: declare the real ones in #[nimify(model = ..., dims(...))]"
            ));
        }
        Ok(model)
    }

    fn tracked<R>(&self, name: &str, f: impl FnOnce(&mut Tracked) -> R) -> R {
        let mut tracked = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(tracked.entry(name.to_string()).or_default())
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
        let state = Arc::clone(&state);
        let polled = tokio::task::spawn_blocking(move || {
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
        let mut entries = match state.repository() {
            Some(_) => {
                blocking(Arc::clone(&state), move |s| match s.repository() {
                    Some(r) => r.index(s, ready_only),
                    None => Ok(Vec::new()),
                })
                .await?
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
        explicit(&state, "load")?;
        blocking(state, move |s| match s.repository() {
            Some(r) => r.load(s, &name).map_err(|e| match e {
                e if e.contains("has no model") => ApiError::NotFound(e),
                e => ApiError::BadRequest(format!("failed to load {e}")),
            }),
            None => Ok(()),
        })
        .await
    }

    /// Unloads a model: explicit mode only.
    pub(crate) async fn unload(state: Arc<AppState>, name: String) -> Result<(), ApiError> {
        explicit(&state, "unload")?;
        blocking(state, move |s| match s.repository() {
            Some(r) => r.unload(s, &name),
            None => Ok(()),
        })
        .await
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

    async fn blocking<T: Send + 'static>(
        state: Arc<AppState>,
        f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| ApiError::Internal(format!("a repository operation stopped: {e}")))?
    }
}
