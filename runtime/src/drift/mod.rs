//! Drift and data-quality monitoring against a reference profile
//! ([`nimify_model::profile`]): a sample of the requests a model serves is cut into the
//! profile's features and bucketed into a sliding window (the last `window_rows` rows, and no
//! older than `window_seconds`), one per profiled tensor; the window's bucket shares are compared
//! with the reference's by the population stability index, on `/metrics`
//! (`nimify_drift_psi`) and on `GET /v2/models/{model}/drift`.
//!
//! The request's own task only copies a sampled request's profiled tensors (inputs before it is
//! queued, outputs once answered) onto a pending list; a monitor thread buckets that list into
//! the windows every 50 ms, and so does every read (a scrape, the drift endpoint) before
//! it answers, so what is read includes every request answered before it. The request path thus
//! never waits for bucketing, and the model's batches form as they would without drift. PSI is
//! computed when asked for, from counts kept up to date as rows enter and leave the window.

pub mod build;
pub(crate) mod features;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimify_model::profile::{Mode, Profile, TensorProfile, psi};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use utoipa::ToSchema;

use features::{Buckets, Seen, visit};

use crate::config::DriftConfig;
use crate::tensor::Tensor;

/// Where a model's reference profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A profile file (`--reference`, `drift.reference`, `NIMIFY_REFERENCE`).
    File(PathBuf),
    /// A profile compiled into a `#[nimify(reference = "...")]` service: where it was read
    /// from, and its text.
    Embedded {
        /// The path as the attribute writes it (relative to the crate).
        path: &'static str,
        /// Its JSON.
        json: &'static str,
    },
}

impl Reference {
    /// Where the profile was read from, for messages.
    pub fn origin(&self) -> String {
        match self {
            Reference::File(p) => p.display().to_string(),
            Reference::Embedded { path, .. } => format!("{path} (compiled in)"),
        }
    }

    /// Reads and parses the profile.
    pub(crate) fn read(&self) -> Result<Profile, String> {
        let text = match self {
            Reference::File(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?,
            Reference::Embedded { json, .. } => (*json).to_string(),
        };
        Profile::from_json(&text)
    }
}

/// Reads `reference` and checks it against the model's signature (`info`, dims overrides
/// applied): a clear error for a profile made for another model.
pub(crate) fn load_reference(
    reference: &Reference,
    model: &str,
    info: &nimify_model::ModelInfo,
) -> Result<Profile, crate::LoadError> {
    let fail =
        |reason: String| crate::LoadError::Reference { model: model.to_string(), origin: reference.origin(), reason };
    let profile = reference.read().map_err(fail)?;
    profile.check_against(&info.inputs, &info.outputs).map_err(|problems| fail(problems.join("; ")))?;
    Ok(profile)
}

/// Warns when the profile was made from another file than the one served (same signature,
/// other weights: the reference's outputs may not be this model's). The file is hashed on a
/// thread of its own, so that a large model does not delay the start.
pub(crate) fn compare_digest(profile: &Profile, model: &str, path: &Path) {
    let (expected, model, path) = (profile.model.sha256.clone(), model.to_string(), path.to_path_buf());
    let spawned = std::thread::Builder::new().name("nimify-digest".into()).spawn(move || {
        match nimify_model::file_sha256(&path) {
            Ok(digest) if digest == expected => {}
            Ok(digest) => tracing::warn!(
                model,
                profile_sha256 = %expected,
                model_sha256 = %digest,
                "the reference profile was made with another model file (same signature, other weights): output drift compares with that model's outputs; run `cargo nimify profile` again with this one"
            ),
            Err(e) => tracing::warn!(model, "cannot read {} to compare it with the profile: {e}", path.display()),
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot compare the model file with its profile: {e}");
    }
}

/// The data-quality counters of one server, labelled by model, version, tensor and feature.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub out_of_range: IntCounterVec,
    pub missing: IntCounterVec,
    pub sampled: IntCounterVec,
}

/// How often the monitor thread buckets what requests left pending.
pub(crate) const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Sampled tensors waiting to be bucketed: (when, inputs or outputs, the tensors).
type Pending = VecDeque<(Instant, Side, Vec<(String, Tensor)>)>;

/// Which of a model's tensors a pending batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Inputs,
    Outputs,
}

/// One model's monitor.
#[derive(Debug)]
pub(crate) struct Drift {
    model: String,
    version: String,
    origin: String,
    profile_rows: u64,
    epsilon: f64,
    sample_rate: f64,
    seen: AtomicU64,
    window_rows: usize,
    window_age: Option<Duration>,
    inputs: Vec<Watched>,
    outputs: Vec<Watched>,
    /// Sampled tensors not yet bucketed, and their rows (at most about `window_rows`).
    pending: Mutex<(Pending, usize)>,
    /// Held through a whole drain: a read that finds the thread draining waits for its rows.
    draining: Mutex<()>,
}

/// One profiled tensor and its window.
#[derive(Debug)]
struct Watched {
    name: String,
    mode: Mode,
    features: Vec<WatchedFeature>,
    sampled: IntCounter,
    window: Mutex<Window>,
    /// Whether rows of another width were seen (warned once).
    misfit: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct WatchedFeature {
    name: String,
    buckets: Buckets,
    /// Reference shares: value buckets, then missing.
    reference: Vec<f64>,
    labels: Vec<String>,
    out_of_range: IntCounter,
    missing: IntCounter,
}

/// The rows in a window, oldest first: their bucket indices (row-major, one per feature) in one
/// ring buffer (no allocation per request once it has grown), when each batch of them came,
/// and the count per feature and bucket.
#[derive(Debug)]
struct Window {
    buckets: VecDeque<u16>,
    /// (when, rows still in the window) per batch.
    batches: VecDeque<(Instant, usize)>,
    rows: usize,
    counts: Vec<Vec<u64>>,
}

impl Drift {
    /// A monitor for `model` comparing with `profile` ([`Drift::start`] starts its thread).
    pub(crate) fn new(
        model: &str,
        version: &str,
        origin: String,
        profile: &Profile,
        config: &DriftConfig,
        counters: &Counters,
    ) -> Self {
        let watch = |t: &TensorProfile| Watched {
            name: t.name.clone(),
            mode: t.mode.clone(),
            sampled: counters.sampled.with_label_values(&[model, version, &t.name]),
            features: t
                .features
                .iter()
                .map(|f| {
                    let labels = [model, version, &t.name, &f.name];
                    let buckets = Buckets::new(f);
                    WatchedFeature {
                        name: f.name.clone(),
                        reference: f.stats.all_shares(f.missing),
                        labels: (0..buckets.count()).map(|i| f.stats.bucket_label(i)).collect(),
                        buckets,
                        out_of_range: counters.out_of_range.with_label_values(&labels),
                        missing: counters.missing.with_label_values(&labels),
                    }
                })
                .collect(),
            window: Mutex::new(Window::new(Vec::new())),
            misfit: std::sync::atomic::AtomicBool::new(false),
        };
        Self {
            model: model.to_string(),
            version: version.to_string(),
            origin,
            profile_rows: profile.rows,
            epsilon: profile.epsilon,
            sample_rate: config.sample_rate,
            seen: AtomicU64::new(0),
            window_rows: config.window_rows.max(1),
            window_age: (config.window_seconds > 0).then(|| Duration::from_secs(config.window_seconds)),
            inputs: profile.inputs.iter().map(watch).map(Watched::with_counts).collect(),
            outputs: profile.outputs.iter().map(watch).map(Watched::with_counts).collect(),
            pending: Mutex::new((VecDeque::new(), 0)),
            draining: Mutex::new(()),
        }
    }

    /// Starts the thread that buckets pending rows every [`DRAIN_EVERY`]; it ends with the
    /// monitor (the model, when its server goes).
    pub(crate) fn start(self) -> Arc<Self> {
        let drift = Arc::new(self);
        let weak = Arc::downgrade(&drift);
        let spawned = std::thread::Builder::new().name(format!("nimify-drift-{}", drift.model)).spawn(move || {
            loop {
                std::thread::sleep(DRAIN_EVERY);
                match weak.upgrade() {
                    Some(drift) => drift.drain(),
                    None => return,
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(model = %drift.model, "no drift monitor thread ({e}): sampled requests are bucketed when drift is read");
        }
        drift
    }

    /// Removes this monitor's counters from `counters` (its model version was unloaded).
    pub(crate) fn forget(&self, counters: &Counters) {
        for t in self.inputs.iter().chain(&self.outputs) {
            let _ = counters.sampled.remove_label_values(&[&self.model, &self.version, &t.name]);
            for f in &t.features {
                let labels = [self.model.as_str(), self.version.as_str(), t.name.as_str(), f.name.as_str()];
                let _ = counters.out_of_range.remove_label_values(&labels);
                let _ = counters.missing.remove_label_values(&labels);
            }
        }
    }

    /// Whether the next request is sampled: exactly `sample_rate` of them, spread evenly.
    pub(crate) fn sampled(&self) -> bool {
        crate::payload_log::every(&self.seen, self.sample_rate)
    }

    /// Leaves a copy of a sampled request's profiled inputs for the windows.
    pub(crate) fn observe_inputs(&self, tensors: &[(String, Tensor)]) {
        self.leave(Side::Inputs, &self.inputs, tensors);
    }

    /// Leaves a copy of a sampled request's profiled outputs (those it asked for) for the windows.
    pub(crate) fn observe_outputs(&self, tensors: &[(String, Tensor)]) {
        self.leave(Side::Outputs, &self.outputs, tensors);
    }

    fn leave(&self, side: Side, watched: &[Watched], tensors: &[(String, Tensor)]) {
        let copies: Vec<(String, Tensor)> =
            tensors.iter().filter(|(n, _)| watched.iter().any(|w| &w.name == n)).cloned().collect();
        let Some(rows) = copies.first().map(|(_, t)| features::rows(t).0) else { return };
        let over = {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.0.push_back((Instant::now(), side, copies));
            pending.1 += rows;
            pending.1 > self.window_rows
        };
        // More rows waiting than a window holds: the request that finds it so buckets them
        // itself, so that memory stays bounded and no sampled row goes uncounted.
        if over {
            self.drain();
        }
    }

    /// Buckets what is pending into the windows. Drains run one at a time, so that one that
    /// returns has seen every row pending when it began, including rows another drain had taken.
    pub(crate) fn drain(&self) {
        let _one_at_a_time = self.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let batch = {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.1 = 0;
            std::mem::take(&mut pending.0)
        };
        for (at, side, tensors) in batch {
            let watched = match side {
                Side::Inputs => &self.inputs,
                Side::Outputs => &self.outputs,
            };
            observe(watched, &tensors, self.window_rows, at);
        }
    }

    /// The current comparison with the reference, every request answered so far included.
    pub(crate) fn report(&self) -> DriftReport {
        self.drain();
        let now = Instant::now();
        let tensors = |watched: &[Watched], io: &'static str| {
            watched.iter().map(|w| w.report(io, self.epsilon, self.window_age, now)).collect::<Vec<_>>()
        };
        let mut all = tensors(&self.inputs, "input");
        all.extend(tensors(&self.outputs, "output"));
        DriftReport {
            model: self.model.clone(),
            version: self.version.clone(),
            reference: self.origin.clone(),
            reference_rows: self.profile_rows,
            epsilon: self.epsilon,
            sample_rate: self.sample_rate,
            window_rows: self.window_rows,
            window_seconds: self.window_age.map(|d| d.as_secs()),
            rows: all.iter().filter(|t| t.io == "input").map(|t| t.rows).max().unwrap_or(0),
            tensors: all,
        }
    }
}

fn observe(watched: &[Watched], tensors: &[(String, Tensor)], limit: usize, at: Instant) {
    thread_local! {
        /// Bucket indices of the batch being added, reused: the window copies them in.
        static SCRATCH: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    for w in watched {
        let Some((_, tensor)) = tensors.iter().find(|(n, _)| n == &w.name) else { continue };
        let width = w.features.len();
        // Columns are the profile's: a row of another width (an output wider or narrower than
        // its declared dims) cannot be placed feature by feature, and is left out.
        let (rows, row_width) = features::rows(tensor);
        if w.mode == Mode::Columns && rows > 0 && row_width != width {
            if !w.misfit.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    tensor = %w.name,
                    shape = ?tensor.shape,
                    features = width,
                    "rows of this tensor do not have the profile's column count; they are left out of drift"
                );
            }
            continue;
        }
        SCRATCH.with_borrow_mut(|buckets| {
            buckets.clear();
            let rows = visit(tensor, &w.mode, |_, feature, value| {
                let Some(f) = w.features.get(feature) else { return };
                let (bucket, seen) = f.buckets.place(value);
                match seen {
                    Seen::Usual => {}
                    Seen::OutOfRange => f.out_of_range.inc(),
                    Seen::Missing => f.missing.inc(),
                }
                buckets.push(u16::try_from(bucket).unwrap_or(u16::MAX));
            });
            if rows == 0 || buckets.len() != rows * width {
                return;
            }
            w.sampled.inc_by(rows as u64);
            // Only the newest `limit` rows can stay in the window.
            let keep = rows.min(limit);
            let newest = &buckets[(rows - keep) * width..];
            let mut window = w.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            window.push(at, newest, width, limit);
        });
    }
}

impl Window {
    fn new(counts: Vec<Vec<u64>>) -> Self {
        Self { buckets: VecDeque::new(), batches: VecDeque::new(), rows: 0, counts }
    }

    /// Adds rows of bucket indices (row-major, `width` per row) seen at `at`, then drops the
    /// oldest rows past `limit`.
    fn push(&mut self, at: Instant, rows: &[u16], width: usize, limit: usize) {
        if width == 0 {
            return;
        }
        for row in rows.chunks(width) {
            for (f, &b) in row.iter().enumerate() {
                self.counts[f][usize::from(b)] += 1;
            }
        }
        let n = rows.len() / width;
        self.buckets.extend(rows);
        self.batches.push_back((at, n));
        self.rows += n;
        if self.rows > limit {
            self.drop_front(self.rows - limit, width);
        }
    }

    /// Drops the `n` oldest rows.
    fn drop_front(&mut self, n: usize, width: usize) {
        let n = n.min(self.rows);
        for (i, b) in self.buckets.drain(..n * width).enumerate() {
            self.counts[i % width][usize::from(b)] -= 1;
        }
        self.rows -= n;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.batches.front_mut() else { break };
            let take = left.min(front.1);
            front.1 -= take;
            left -= take;
            if front.1 == 0 {
                self.batches.pop_front();
            }
        }
    }

    /// Drops the rows older than `age`.
    fn expire(&mut self, age: Option<Duration>, now: Instant, width: usize) {
        let Some(age) = age else { return };
        while let Some(&(at, rows)) = self.batches.front() {
            if now.duration_since(at) <= age {
                break;
            }
            self.drop_front(rows, width);
        }
    }
}

impl Watched {
    /// Its window's counts, one per bucket of each feature.
    fn with_counts(self) -> Self {
        let counts = self.features.iter().map(|f| vec![0; f.buckets.count()]).collect();
        Self { window: Mutex::new(Window::new(counts)), ..self }
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self, io: &'static str, epsilon: f64, age: Option<Duration>, now: Instant) -> TensorDrift {
        let (rows, counts) = {
            let mut window = self.window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            window.expire(age, now, self.features.len());
            (window.rows, window.counts.clone())
        };
        let features = self
            .features
            .iter()
            .zip(counts)
            .map(|(f, counts)| {
                let (psi_value, top) = if rows == 0 {
                    (None, Vec::new())
                } else {
                    let actual: Vec<f64> = counts.iter().map(|&c| c as f64 / rows as f64).collect();
                    let mut top: Vec<BucketShift> = f
                        .reference
                        .iter()
                        .zip(&actual)
                        .enumerate()
                        .map(|(i, (&e, &a))| BucketShift {
                            bucket: f.labels[i].clone(),
                            reference_share: e,
                            window_share: a,
                            contribution: psi(&[e], &[a], epsilon),
                        })
                        .collect();
                    top.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
                    top.truncate(3);
                    (Some(psi(&f.reference, &actual, epsilon)), top)
                };
                FeatureDrift {
                    name: f.name.clone(),
                    psi: psi_value,
                    out_of_range: f.out_of_range.get(),
                    missing: f.missing.get(),
                    top_buckets: top,
                }
            })
            .collect();
        TensorDrift { name: self.name.clone(), io, rows, features }
    }
}

/// A model's drift against its reference profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriftReport {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Where the reference profile was read from.
    pub reference: String,
    /// Rows the reference profile was made from.
    pub reference_rows: u64,
    /// The least share a bucket counts as in PSI, on both sides.
    pub epsilon: f64,
    /// Share of requests sampled into the window.
    pub sample_rate: f64,
    /// Most rows the window holds.
    pub window_rows: usize,
    /// Oldest a row in the window may be, in seconds (none: no age limit).
    pub window_seconds: Option<u64>,
    /// Rows now in the (inputs') window.
    pub rows: usize,
    /// Each profiled tensor, inputs first.
    pub tensors: Vec<TensorDrift>,
}

/// One tensor's drift.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TensorDrift {
    /// Tensor name.
    pub name: String,
    /// `input` or `output`.
    pub io: &'static str,
    /// Rows in its window.
    pub rows: usize,
    /// Each feature.
    pub features: Vec<FeatureDrift>,
}

/// One feature's drift.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeatureDrift {
    /// Column index, or the summary or token feature's name.
    pub name: String,
    /// Population stability index of the window against the reference (none while the window
    /// is empty).
    pub psi: Option<f64>,
    /// Sampled values outside the reference's min/max since start.
    pub out_of_range: u64,
    /// Sampled values missing since start.
    pub missing: u64,
    /// The buckets adding most to PSI, largest first (at most 3).
    pub top_buckets: Vec<BucketShift>,
}

/// One bucket's shares.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BucketShift {
    /// The bucket: an interval, a category, `other` or `missing`.
    pub bucket: String,
    /// Its share in the reference.
    pub reference_share: f64,
    /// Its share in the window.
    pub window_share: f64,
    /// What it adds to PSI.
    pub contribution: f64,
}

/// `nimify_drift_psi` and `nimify_drift_window_rows`, computed from the windows at each scrape.
pub(crate) struct Gauges {
    /// The served models, whose monitors are read at every scrape (models come and go).
    catalog: std::sync::Arc<crate::repository::Catalog>,
    /// One scrape at a time: each rebuilds the series from nothing.
    scraping: Mutex<()>,
    psi: GaugeVec,
    rows: IntGaugeVec,
}

impl Gauges {
    pub(crate) fn new(catalog: std::sync::Arc<crate::repository::Catalog>) -> Self {
        let psi = GaugeVec::new(
            Opts::new(
                "nimify_drift_psi",
                "Population stability index of the sampled window against the reference profile, per tensor (inputs and outputs) and feature",
            ),
            &["model", "version", "tensor", "feature"],
        )
        .unwrap_or_else(|e| panic!("nimify_drift_psi is mis-defined: {e}"));
        let rows = IntGaugeVec::new(
            Opts::new("nimify_drift_window_rows", "Rows in the drift window (inputs)"),
            &["model", "version"],
        )
        .unwrap_or_else(|e| panic!("nimify_drift_window_rows is mis-defined: {e}"));
        Self { catalog, scraping: Mutex::new(()), psi, rows }
    }
}

impl Collector for Gauges {
    fn desc(&self) -> Vec<&Desc> {
        self.psi.desc().into_iter().chain(self.rows.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scraping.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Unloaded versions' series go with them.
        self.psi.reset();
        self.rows.reset();
        for model in self.catalog.all() {
            let Some(drift) = model.drift() else { continue };
            let report = drift.report();
            self.rows
                .with_label_values(&[&report.model, &report.version])
                .set(i64::try_from(report.rows).unwrap_or(i64::MAX));
            for t in &report.tensors {
                for f in &t.features {
                    let labels = [report.model.as_str(), report.version.as_str(), t.name.as_str(), f.name.as_str()];
                    if let Some(v) = f.psi {
                        self.psi.with_label_values(&labels).set(v);
                    }
                }
            }
        }
        self.psi.collect().into_iter().chain(self.rows.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_rows_and_their_counts() {
        let mut w = Window::new(vec![vec![0; 3]]);
        let now = Instant::now();
        w.push(now, &[0, 0, 1], 1, 4);
        w.push(now, &[2, 2, 2], 1, 4);
        assert_eq!(w.rows, 4);
        assert_eq!(w.counts[0], [0, 1, 3]);
        w.push(now, &[1; 10], 1, 4);
        assert_eq!((w.rows, w.batches.len(), w.buckets.len()), (4, 1, 4));
        assert_eq!(w.counts[0], [0, 4, 0]);
        w.expire(Some(Duration::ZERO), now + Duration::from_millis(5), 1);
        assert_eq!((w.rows, &w.counts[0][..], w.batches.len()), (0, &[0, 0, 0][..], 0));
        // Two features per row.
        let mut w = Window::new(vec![vec![0; 2], vec![0; 3]]);
        w.push(now, &[0, 2, 1, 1, 1, 0], 2, 2);
        w.push(now, &[1, 2], 2, 2);
        assert_eq!((w.counts[0].clone(), w.counts[1].clone()), (vec![0, 2], vec![1, 0, 1]));
    }
}
