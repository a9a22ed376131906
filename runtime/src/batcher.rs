//! Dynamic batching: one bounded queue per model and one worker thread per session instance.
//!
//! A worker takes the first waiting request, then keeps taking requests while its [`Plan`] says
//! a larger batch pays (within `max_batch_size` and the preferred sizes) and until the first
//! request has waited `max_queue_delay`. Requests nobody
//! waits for any more (deadline passed, client gone) are dropped (counted) before execution, and
//! an execution is stopped midway when every request it serves goes (see [`crate::cancel`]).
//! Requests that agree on every dim but dim 0 run as one execution; when an output's dim 0 does
//! not come back as the summed batch, those requests run again one by one. While one worker
//! executes, the next collects. Requests to a model whose runs are short skip the queue and are
//! merged and run on the async runtime's threads ([`Inline`]), by the same rules, on the same
//! instances.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use ort::session::{RunOptions, Session};
use tokio::sync::oneshot;

use crate::batch_plan::Plan;
use crate::cancel::{Link, Run};
use crate::error::ApiError;
use crate::metrics::{ModelMetrics, micros};
use crate::tensor::{Tensor, from_ort};

/// Weight of each new execution in [`Core`]'s typical run length.
const SMOOTHING: f64 = 0.125;

/// Outputs by name, in the order asked for.
pub type Outputs = Vec<(String, Tensor)>;

/// One queued request.
pub struct Job {
    /// Inputs in the model's input order.
    pub inputs: Vec<Tensor>,
    /// Output names to return, in order.
    pub wanted: Vec<String>,
    /// Items (dim 0) this request contributes to a batch; 1 when the model does not batch.
    pub items: usize,
    /// Its inputs' bytes.
    pub bytes: usize,
    /// When it was queued.
    pub enqueued: Instant,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Outputs, ApiError>>,
    /// Whether anybody still waits for it.
    pub(crate) link: Link,
    /// Its spans, with tracing on.
    pub(crate) trace: Option<crate::telemetry::JobTrace>,
}

/// Short requests served on the async runtime's threads, merged just as a worker merges queued
/// requests: the first request of a round starts a task that yields once, so that every request
/// already readable is decoded and joins, then runs what has gathered on a free instance, round
/// after round while requests keep coming. Handing a request to a worker thread and its answer
/// back costs two thread wake-ups, more CPU than a short run.
///
/// Which requests: the model's successful executions took at most `inline_below_us` (smoothed,
/// from the warm-up on), it waits for no batches (`max_queue_delay_us` 0), nothing waits in the
/// workers' queue, and the request's inputs are at most four times a typical execution's (a far
/// larger request, a long sequence, goes to a worker). Up to one task per instance serves rounds
/// at a time; when every instance is busy with a worker's batch, the workers take what has
/// gathered. A round runs one collected batch (merged where dims allow, one by one after a
/// failed merge), so a runtime thread is held for about one short execution per request in it.
pub(crate) struct Inline {
    name: String,
    cores: Vec<Arc<Mutex<Core>>>,
    /// Largest request (input bytes) served here; 0: none is. Kept by the instances.
    limit: Arc<AtomicU64>,
    gathered: Mutex<Gathered>,
    /// The workers' queue, for requests no instance is free for.
    queue: SyncSender<Job>,
    /// `queue_capacity`: pending requests (gathered and queued) beyond it are refused.
    capacity: usize,
    metrics: ModelMetrics,
}

#[derive(Default)]
struct Gathered {
    jobs: VecDeque<Job>,
    /// Tasks serving rounds.
    servers: usize,
    /// Of those, the ones not running a round now (spawned, or yielding before the next).
    waiting: usize,
}

/// What [`Inline::submit`] did with a request.
pub(crate) enum Submitted {
    /// It will be answered from a round.
    Taken,
    /// Not for this path: queue it for the workers.
    Back(Job),
    /// `queue_capacity` requests are pending already.
    Full,
}

/// A serving task's place in [`Gathered`]'s counts, given back however the task ends: dropped
/// mid-way (the runtime shutting down, a panic), the last task hands what has gathered to the
/// workers, so that nothing waits for rounds that will not come.
struct Rounds {
    inline: Arc<Inline>,
    /// Counted in `waiting`.
    waiting: bool,
    over: bool,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if self.over {
            return;
        }
        let mut gathered = self.inline.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        gathered.servers -= 1;
        gathered.waiting -= usize::from(self.waiting);
        if gathered.servers == 0 {
            self.inline.hand_over(&mut gathered);
        }
    }
}

/// An instance's lock when nobody holds it (a poisoned one too: its session and plan stay
/// usable after a panic elsewhere in a run).
fn free(core: &Mutex<Core>) -> Option<MutexGuard<'_, Core>> {
    match core.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The largest request (input bytes) served inline after executions typically `run` long with
/// `size` input bytes: four times that (64 KiB at least) when they are short (`below`, 0: never)
/// and batches do not wait, else none (0).
fn inline_limit(run: Duration, size: f64, below: Duration, waits: bool) -> u64 {
    match !below.is_zero() && run <= below && !waits {
        true => (size * 4.0).max(65536.0) as u64,
        false => 0,
    }
}

/// The answer to a request beyond `queue_capacity`.
pub(crate) fn queue_full(model: &str) -> ApiError {
    ApiError::Overloaded(format!("model {model} has a full queue; retry shortly"))
}

/// The answer to a request whose model has no worker left.
pub(crate) fn no_worker(model: &str) -> ApiError {
    ApiError::Internal(format!("model {model} has no running worker"))
}

impl Inline {
    /// The model's instances.
    #[cfg(test)]
    pub(crate) fn instances(&self) -> &[Arc<Mutex<Core>>] {
        &self.cores
    }

    /// Requests gathered for rounds now, and the tasks serving rounds.
    #[cfg(test)]
    pub(crate) fn gathered(&self) -> (usize, usize) {
        let gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        (gathered.jobs.len(), gathered.servers)
    }

    /// Serving `name` through `cores`, which keep `limit`.
    pub(crate) fn new(
        name: String,
        cores: Vec<Arc<Mutex<Core>>>,
        limit: Arc<AtomicU64>,
        queue: SyncSender<Job>,
        capacity: usize,
        metrics: ModelMetrics,
    ) -> Self {
        Self { name, cores, limit, gathered: Mutex::default(), queue, capacity, metrics }
    }

    /// Takes `job` to be served on the runtime's threads (counted pending), or says why not.
    pub(crate) fn submit(self: &Arc<Self>, job: Job) -> Submitted {
        if job.bytes as u64 > self.limit.load(Ordering::Relaxed) {
            return Submitted::Back(job);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Submitted::Back(job) };
        let mut gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = usize::try_from(self.metrics.pending.get()).unwrap_or(0);
        // Requests waiting in the workers' queue go first.
        if pending > gathered.jobs.len() {
            return Submitted::Back(job);
        }
        if pending >= self.capacity {
            return Submitted::Full;
        }
        self.metrics.pending.inc();
        gathered.jobs.push_back(job);
        let start = gathered.waiting == 0 && gathered.servers < self.cores.len();
        if start {
            gathered.servers += 1;
            gathered.waiting += 1;
        }
        // Spawned outside the lock: a runtime shutting down drops the task at once, and its
        // guard takes the lock.
        drop(gathered);
        if start {
            runtime.spawn(Self::serve(Rounds { inline: Arc::clone(self), waiting: true, over: false }));
        }
        Submitted::Taken
    }

    /// Rounds of serving what has gathered, until nothing has.
    async fn serve(mut guard: Rounds) {
        loop {
            // Requests readable now are decoded and join before the round runs.
            tokio::task::yield_now().await;
            if !guard.inline.round(&mut guard.waiting) {
                guard.over = true;
                return;
            }
        }
    }

    /// One round: false when the task ends (nothing was left to run, or it went to the workers).
    fn round(&self, waiting: &mut bool) -> bool {
        let mut gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        gathered.waiting -= 1;
        *waiting = false;
        let Some(first) = gathered.jobs.pop_front() else {
            gathered.servers -= 1;
            return false;
        };
        let Some(mut core) = self.cores.iter().find_map(|c| free(c)) else {
            // Every instance is busy with a worker's batch (or another task's round): with no
            // other task left, the workers take the rest.
            gathered.jobs.push_front(first);
            gathered.servers -= 1;
            if gathered.servers == 0 {
                self.hand_over(&mut gathered);
            }
            return false;
        };
        let (jobs, refused) = core.collect(first, |_| gathered.jobs.pop_front());
        if let Some(job) = refused {
            gathered.jobs.push_front(job);
        }
        self.metrics.pending.sub(jobs.len() as i64);
        drop(gathered);
        core.serve(jobs);
        drop(core);
        let mut gathered = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
        gathered.waiting += 1;
        *waiting = true;
        true
    }

    /// Sends every gathered request to the workers' queue (those that do not fit there are
    /// answered).
    fn hand_over(&self, gathered: &mut Gathered) {
        for job in gathered.jobs.drain(..) {
            if let Err(e) = self.queue.try_send(job) {
                self.metrics.pending.dec();
                let (job, error) = match e {
                    TrySendError::Full(job) => {
                        self.metrics.rejected_queue_full.inc();
                        (job, queue_full(&self.name))
                    }
                    TrySendError::Disconnected(job) => (job, no_worker(&self.name)),
                };
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// One session instance and what running it needs: used by its worker thread, and by
/// [`Inline`]'s rounds.
pub struct Core {
    /// The instance.
    session: Session,
    /// Input names in model order.
    input_names: Arc<Vec<String>>,
    /// Merge requests at all.
    batching: bool,
    /// When to merge (bounds, preferred sizes, measured costs).
    plan: Plan,
    /// Longest wait for a batch to fill.
    max_queue_delay: Duration,
    /// Metric handles.
    metrics: ModelMetrics,
    /// Most output bytes per request (`max_output_bytes`); `None`: no limit.
    max_output_bytes: Option<usize>,
    /// Run options the next execution can be stopped through.
    options: Option<Arc<RunOptions>>,
    /// Smoothed length and input bytes of this instance's successful executions (the warm-up's
    /// first); `None` before one.
    typical: Option<(Duration, f64)>,
    /// Executions up to this long make the model's requests [`Inline`]'s (`inline_below_us`).
    inline_below: Duration,
    /// Shared by the model's instances: the largest request [`Inline`] serves (0: none), kept
    /// from this instance's executions.
    inline_limit: Arc<AtomicU64>,
}

/// A worker thread: its share of the model's queue and its instance.
pub struct Worker {
    /// Shared queue and the request that did not fit the previous batch.
    pub queue: Arc<Mutex<(Receiver<Job>, Option<Job>)>>,
    /// The instance it runs.
    pub core: Arc<Mutex<Core>>,
}

impl Worker {
    /// Runs until the queue's sender is dropped.
    pub fn run(self) {
        loop {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let (rx, carry) = &mut *queue;
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let Some(mut core) = free(&self.core) else {
                // A round of short requests runs on this instance: another worker may take the
                // request meanwhile; this one waits for its instance outside the queue's lock.
                *carry = Some(first);
                drop(queue);
                drop(self.core.lock());
                continue;
            };
            let (jobs, refused) = core.collect(first, |wait| match wait {
                Some(left) => rx.recv_timeout(left).ok(),
                None => rx.try_recv().ok(),
            });
            *carry = refused;
            drop(queue);
            core.metrics.pending.sub(jobs.len() as i64);
            core.serve(jobs);
        }
    }
}

impl Core {
    /// An instance ready to serve: merging as `batching` says (`None`: requests run one by one),
    /// and on the runtime's threads when runs take up to `inline_below_us`, which applies
    /// whether the model batches or not.
    pub fn new(
        session: Session,
        input_names: Arc<Vec<String>>,
        batching: Option<&crate::config::BatchingConfig>,
        inline_below_us: u64,
        metrics: ModelMetrics,
        max_output_bytes: Option<usize>,
        inline_limit: Arc<AtomicU64>,
    ) -> Self {
        let defaults = crate::config::BatchingConfig::default();
        let config = batching.unwrap_or(&defaults);
        Self {
            session,
            input_names,
            batching: batching.is_some(),
            plan: Plan::new(config),
            max_queue_delay: Duration::from_micros(config.max_queue_delay_us),
            metrics,
            max_output_bytes,
            options: crate::cancel::run_options(),
            typical: None,
            inline_below: Duration::from_micros(inline_below_us),
            inline_limit,
        }
    }

    /// Counts one successful execution of `bytes` input bytes that took `took` in the typical
    /// execution, and says which requests [`Inline`] serves now: none when executions are not
    /// short or batches are to wait for more requests, else those up to four times a typical
    /// execution's inputs (64 KiB at least).
    pub(crate) fn note_run(&mut self, took: Duration, bytes: usize) {
        let (run, size) = match self.typical {
            Some((run, size)) => (
                run.mul_f64(1.0 - SMOOTHING) + took.mul_f64(SMOOTHING),
                size * (1.0 - SMOOTHING) + bytes as f64 * SMOOTHING,
            ),
            None => (took, bytes as f64),
        };
        self.typical = Some((run, size));
        let waits = self.batching && !self.max_queue_delay.is_zero();
        self.inline_limit.store(inline_limit(run, size, self.inline_below, waits), Ordering::Relaxed);
    }

    /// False (and counted) when nobody waits for `job` any more.
    fn still_wanted(&self, job: &Job) -> bool {
        match job.link.gone() {
            Some(why) => {
                self.metrics.cancelled(why).inc();
                false
            }
            None => true,
        }
    }

    /// `first` and the waiting requests that join it, and the request taken but not joined:
    /// `next` gives the next one, waiting up to the time given (or not at all).
    fn collect(
        &mut self,
        first: Job,
        mut next: impl FnMut(Option<Duration>) -> Option<Job>,
    ) -> (Vec<Job>, Option<Job>) {
        self.plan.begin();
        let mut items = first.items;
        let deadline = first.enqueued + self.max_queue_delay;
        let mut jobs = vec![first];
        // A batch that has held a preferred size takes only what is queued.
        let mut settled = self.plan.preferred(items);
        while self.batching && self.plan.open(items) {
            let wait = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !settled && self.plan.wait(items) => Some(left),
                _ => None,
            };
            match next(wait) {
                Some(job) if !self.plan.grow(items, job.items) => return (jobs, Some(job)),
                Some(job) => {
                    items += job.items;
                    settled |= self.plan.preferred(items);
                    jobs.push(job);
                }
                None => break,
            }
        }
        (jobs, None)
    }

    /// Runs collected requests (no longer counted pending): those still wanted, merged where
    /// their dims allow.
    fn serve(&mut self, jobs: Vec<Job>) {
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| self.still_wanted(j)).collect();
        for group in group_by_trailing_dims(jobs) {
            self.execute(group);
        }
    }

    fn execute(&mut self, mut jobs: Vec<Job>) {
        let start = Instant::now();
        for trace in jobs.iter_mut().filter_map(|j| j.trace.as_mut()) {
            trace.dequeued();
        }
        for job in &jobs {
            let waited = start.duration_since(job.enqueued);
            self.metrics.queue_us.inc_by(micros(waited));
            self.metrics.stats.dequeued(waited);
            self.metrics.queue_seconds.observe(waited.as_secs_f64());
        }
        // A merge the model's outputs could not be split back from: the plan stops merging to
        // that size but for a rare retry.
        let mut failed_merge = None;
        if jobs.len() > 1 {
            let items = jobs.iter().map(|j| j.items).sum();
            let span = crate::telemetry::run_span(jobs.iter().filter_map(|j| j.trace.as_ref()), items);
            let began = Instant::now();
            let batched = span.in_scope(|| self.run_batched(&jobs));
            drop(span);
            match batched {
                Batched::Done(results) => {
                    let total: usize = jobs.iter().map(|j| j.items).sum();
                    self.plan.record(total, began.elapsed(), true);
                    self.note_run(began.elapsed(), jobs.iter().map(|j| j.bytes).sum());
                    self.metrics.stats.executed(total, jobs.len(), start.elapsed());
                    self.metrics.count.inc_by(total as u64);
                    self.metrics.batch_size.observe(total as f64);
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.reply.send(Ok(result));
                    }
                    return;
                }
                Batched::Stopped => return,
                Batched::OneByOne => {}
                Batched::Unmergeable => failed_merge = Some(items),
            }
        }
        for job in jobs {
            if !self.still_wanted(&job) {
                continue;
            }
            let wanted: Vec<&str> = job.wanted.iter().map(String::as_str).collect();
            let began = Instant::now();
            let span = crate::telemetry::run_span(job.trace.as_ref(), job.items);
            let result = span.in_scope(|| self.run_one(&[&job.link], job.inputs, &wanted));
            drop(span);
            if result.is_ok() {
                self.plan.record(job.items, began.elapsed(), false);
                self.note_run(began.elapsed(), job.bytes);
                self.metrics.stats.executed(job.items, 1, began.elapsed());
                self.metrics.count.inc_by(job.items as u64);
                self.metrics.batch_size.observe(job.items as f64);
            }
            let _ = job.reply.send(result.and_then(|all| select(all, &job.wanted)));
        }
        if let Some(items) = failed_merge {
            self.plan.failed(items);
        }
    }

    /// Runs merged inputs once.
    fn run_batched(&mut self, jobs: &[Job]) -> Batched {
        let rows: Vec<usize> = jobs.iter().map(|j| j.items).collect();
        let total: usize = rows.iter().sum();
        let Some(merged) = (0..self.input_names.len())
            .map(|i| Tensor::concat(&jobs.iter().map(|j| &j.inputs[i]).collect::<Vec<_>>()))
            .collect::<Option<Vec<_>>>()
        else {
            return Batched::OneByOne;
        };
        let links: Vec<&Link> = jobs.iter().map(|j| &j.link).collect();
        let mut wanted: Vec<&str> = jobs.iter().flat_map(|j| j.wanted.iter().map(String::as_str)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let outputs = match self.run_one(&links, merged, &wanted) {
            Ok(o) => o,
            Err(_) if jobs.iter().all(|j| j.link.gone().is_some()) => return Batched::Stopped,
            // Each request alone may still fit; the one that does not is told so.
            Err(ApiError::OutputTooLarge(_)) => return Batched::OneByOne,
            Err(e) => {
                tracing::warn!(error = %e.detail(), requests = jobs.len(), "batched execution failed; running requests one by one");
                return Batched::OneByOne;
            }
        };
        let mut per_job: Vec<Outputs> = jobs.iter().map(|_| Vec::new()).collect();
        for (name, tensor) in outputs {
            if tensor.shape.first() != Some(&total) {
                tracing::debug!(output = %name, expected = total, shape = ?tensor.shape, "output dim 0 is not the batch; running requests one by one");
                return Batched::Unmergeable;
            }
            let Some(pieces) = tensor.split(&rows) else { return Batched::Unmergeable };
            for (slot, piece) in per_job.iter_mut().zip(pieces) {
                slot.push((name.clone(), piece));
            }
        }
        per_job
            .into_iter()
            .zip(jobs)
            .map(|(all, job)| select(all, &job.wanted).ok())
            .collect::<Option<Vec<_>>>()
            .map_or(Batched::Unmergeable, Batched::Done)
    }

    /// One execution for the requests behind `links`, counted in `exec_count` and compute time
    /// (items are counted by the caller once the results are delivered); stopped midway when
    /// they all go, and not started when they all have.
    fn run_one(&mut self, links: &[&Link], inputs: Vec<Tensor>, wanted: &[&str]) -> Result<Outputs, ApiError> {
        let run = Run::new(self.options.clone());
        let joined = links.iter().filter(|l| l.join(&run).is_ok()).count();
        if joined == 0 {
            return Err(ApiError::Timeout("nobody waits for this request any more".into()));
        }
        let start = Instant::now();
        // A merged run may hold each of its requests' share.
        let cap = self.max_output_bytes.map(|c| (c.saturating_mul(links.len()), wanted));
        let result = run_session(&mut self.session, &self.input_names, inputs, run.options(), cap);
        let took = start.elapsed();
        let stopped = run.finish();
        for link in links {
            link.release();
        }
        self.metrics.exec_count.inc();
        self.metrics.compute_us.inc_by(micros(took));
        if let Some(why) = stopped {
            self.options = crate::cancel::run_options();
            if result.is_err() {
                self.metrics.terminated(why).inc();
                tracing::info!(
                    reason = why.label(),
                    requests = joined,
                    took_ms = start.elapsed().as_millis() as u64,
                    "stopped an ONNX Runtime run nobody waited for"
                );
            }
        }
        result
    }
}

/// How a merged execution ended.
enum Batched {
    /// Each request's outputs, in order.
    Done(Vec<Outputs>),
    /// The merged run failed or answered too much (perhaps for one request's sake): run each
    /// request alone.
    OneByOne,
    /// The model's outputs cannot be split back per request (dim 0 is not the batch): run each
    /// request alone, and merging to this size does not pay.
    Unmergeable,
    /// Every request went, and the run was stopped.
    Stopped,
}

/// Requests that agree on every input's dims after dim 0 can share an execution.
fn group_by_trailing_dims(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<(Vec<Vec<usize>>, Vec<Job>)> = Vec::new();
    for job in jobs {
        let key: Vec<Vec<usize>> =
            job.inputs.iter().map(|t| t.shape.get(1..).map(<[usize]>::to_vec).unwrap_or_default()).collect();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// The answer to outputs above `max_output_bytes`.
pub(crate) fn output_too_large(bytes: usize, cap: usize) -> ApiError {
    ApiError::OutputTooLarge(format!(
        "the outputs of this request take {bytes} bytes, above the {cap} byte limit (max_output_bytes); ask for fewer outputs or a smaller batch, or raise --max-output-bytes"
    ))
}

fn select(mut all: Outputs, wanted: &[String]) -> Result<Outputs, ApiError> {
    wanted
        .iter()
        .map(|name| {
            let i = all
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| ApiError::Inference(format!("ONNX Runtime returned no output {name:?}")))?;
            Ok(all.swap_remove(i))
        })
        .collect()
}

/// One ONNX Runtime execution, stoppable through `options`; every output, in session order.
/// With `output_cap` (bytes, outputs asked for), outputs asked for that total more than the
/// cap are refused before anything is copied out of ONNX Runtime.
pub fn run_session(
    session: &mut Session,
    names: &[String],
    inputs: Vec<Tensor>,
    options: Option<&RunOptions>,
    output_cap: Option<(usize, &[&str])>,
) -> Result<Outputs, ApiError> {
    let values = names
        .iter()
        .map(String::as_str)
        .zip(inputs)
        .map(|(name, t)| t.into_ort().map(|v| (name, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::InvalidTensor(format!("cannot build input tensor: {e}")))?;
    let outputs = match options {
        Some(options) => session.run_with_options(values, options),
        None => session.run(values),
    }
    .map_err(|e| ApiError::Inference(e.to_string()))?;
    if let Some((cap, wanted)) = output_cap {
        let total = outputs
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .map(|(_, v)| crate::tensor::ort_byte_len(&v))
            .fold(0usize, usize::saturating_add);
        if total > cap {
            return Err(output_too_large(total, cap));
        }
    }
    outputs
        .iter()
        .map(|(name, value)| from_ort(&value).map(|t| (name.to_string(), t)).map_err(ApiError::Inference))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::inline_limit;
    use crate::model::Model;
    use crate::{Config, ModelOptions, ServerBuilder};

    /// The MLP served with every run short enough for the runtime's threads, merged by the
    /// fixed policy, with no request deadline (no timer of the runtime a test drops).
    fn mlp() -> (Arc<Model>, Router) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models/mlp.onnx");
        let config = "request_timeout_ms = 0\n[batching]\npolicy = \"fixed\"\ninline_below_us = 1000000000\n";
        let (state, router) = ServerBuilder::new(Config::from_toml(config).expect("config"))
            .model(ModelOptions::new(path))
            .build()
            .expect("model loads (is ONNX Runtime installed? run `cargo nimify ort install`)");
        (state.models().remove(0), router)
    }

    fn request(row: usize) -> Request<Body> {
        let x = [row as f32, 0.5, -1.0, 0.25];
        let body = format!(r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":{x:?}}}]}}"#);
        Request::post("/v2/models/mlp/infer").body(Body::from(body)).expect("request")
    }

    /// The answer's numbers (OK only).
    async fn answer(response: axum::response::Response) -> Vec<f64> {
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        answer["outputs"][0]["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("number")).collect()
    }

    /// Equal up to the rounding a batch's kernels may change.
    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    }

    fn one_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    #[expect(clippy::await_holding_lock, reason = "the test holds the instance as a worker's batch would")]
    fn requests_gathered_while_every_instance_is_busy_go_to_the_workers() {
        let runtime = one_thread();
        let _entered = runtime.enter();
        let (model, router) = mlp();
        runtime.block_on(async {
            let mut alone = Vec::new();
            for i in 0..4 {
                alone.push(answer(router.clone().oneshot(request(i)).await.expect("infallible")).await);
            }
            let execs = model.metrics().exec_count.get();
            // The test holds the only instance, as a worker's batch would: the round finds none
            // free and, as the last serving task, hands what gathered to the workers, whose
            // worker waits for the instance and runs them once it is let go.
            let held = model.cores()[0].lock().expect("instance");
            let calls: Vec<_> = (0..4).map(|i| tokio::spawn(router.clone().oneshot(request(i)))).collect();
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert_eq!(model.metrics().pending.get(), 4, "the requests wait for the instance");
            drop(held);
            for (call, alone) in calls.into_iter().zip(alone) {
                let response = tokio::time::timeout(Duration::from_secs(30), call)
                    .await
                    .expect("answered once the instance is free, not left waiting for a round")
                    .expect("task")
                    .expect("infallible");
                let got = answer(response).await;
                assert!(close(&got, &alone), "{got:?} against {alone:?} alone");
            }
            assert_eq!(model.metrics().pending.get(), 0);
            assert!(model.metrics().exec_count.get() > execs);
        });
    }

    #[test]
    fn a_round_dropped_before_it_runs_hands_its_requests_to_the_workers() {
        let serving = one_thread();
        let _entered = serving.enter();
        let (model, router) = mlp();
        let alone =
            serving.block_on(async { answer(router.clone().oneshot(request(7)).await.expect("infallible")).await });
        // The round that served it ends once it finds nothing more.
        serving.block_on(async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(model.gathered(), (0, 0), "no round is left running");
        let execs = model.metrics().exec_count.get();
        // Polled once on a runtime that is then shut down: the request is gathered and its round
        // spawned there, but the runtime drops the round's task before it ever runs.
        let dropped = one_thread();
        let mut call = Box::pin(router.clone().oneshot(request(7)));
        let pending = dropped.block_on(std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending())));
        assert!(pending, "the request waits for its round");
        assert_eq!(model.gathered(), (1, 1), "the request was gathered for a round of its own");
        assert_eq!(model.metrics().exec_count.get(), execs, "and not run");
        drop(dropped);
        let response = serving
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), call).await })
            .expect("answered by a worker, not left waiting for the dropped round")
            .expect("infallible");
        let got = serving.block_on(answer(response));
        assert!(close(&got, &alone), "{got:?} against {alone:?} alone");
        assert_eq!(model.metrics().pending.get(), 0);
        assert_eq!(model.metrics().exec_count.get(), execs + 1);
    }

    #[test]
    fn short_runs_serve_requests_up_to_four_times_their_inputs_inline() {
        let below = Duration::from_micros(100);
        let us = Duration::from_micros;
        assert_eq!(inline_limit(us(40), 1e6, below, false), 4_000_000);
        assert_eq!(inline_limit(us(100), 16.0, below, false), 65536, "64 KiB at least");
        assert_eq!(inline_limit(us(101), 16.0, below, false), 0, "longer runs go to the workers");
        assert_eq!(inline_limit(us(40), 16.0, below, true), 0, "batches that wait keep their workers");
        assert_eq!(inline_limit(us(0), 16.0, Duration::ZERO, false), 0, "inline_below_us 0: never");
    }
}
