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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::{RunOptions, Session};
use tokio::sync::oneshot;

use crate::batch_plan::Plan;
use crate::cancel::{Link, Run};
use crate::error::ApiError;
use crate::metrics::{ModelMetrics, micros};
use crate::tensor::{Tensor, from_ort};

/// What a merged run whose outputs could not be split back counts as in the plan's costs: far
/// above any real run, since such a merge fails again; the plan tries the size again only when it
/// measures it afresh.
const FAILED_MERGE: Duration = Duration::from_secs(3600);

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
    /// When it was queued.
    pub enqueued: Instant,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Outputs, ApiError>>,
    /// Whether anybody still waits for it.
    pub(crate) link: Link,
    /// Its spans, with tracing on.
    pub(crate) trace: Option<crate::telemetry::JobTrace>,
}

/// Executions at most this long (smoothed) run on the async runtime's threads instead of a worker
/// thread's: handing a request to a worker and its answer back (two thread wake-ups) costs more
/// CPU than such a run. Longer runs always go to a worker, so no runtime thread is held long.
pub(crate) const INLINE_BELOW: Duration = Duration::from_micros(100);

/// Short requests served on the async runtime's threads ([`INLINE_BELOW`]), merged just as a
/// worker merges queued requests: the first request of a round starts a task that yields once,
/// so that every request already readable is decoded and joins, then runs what has gathered on
/// a free instance, round after round while requests keep coming. Only with no waiting for
/// batches asked (`max_queue_delay` 0): a model told to wait for merges keeps its workers.
pub(crate) struct Inline {
    cores: Vec<Arc<Mutex<Core>>>,
    /// Whether the model's recent executions were short.
    short: Arc<AtomicBool>,
    gathered: Mutex<Gathered>,
    /// The workers' queue, for requests no instance is free for.
    queue: SyncSender<Job>,
    metrics: ModelMetrics,
}

/// Ends a task's rounds however it ends: dropped mid-way (runtime shutting down, a panic), it
/// hands what has gathered to the workers, so that nothing waits for rounds that will not come.
struct Rounds {
    inline: Arc<Inline>,
    over: bool,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if !self.over {
            let mut gathered = self.inline.gathered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.inline.hand_over(&mut gathered);
        }
    }
}

#[derive(Default)]
struct Gathered {
    jobs: VecDeque<Job>,
    /// A task serves `jobs`.
    served: bool,
}

impl Inline {
    /// Serving through `cores`, whose executions say whether they are short.
    pub(crate) fn new(
        cores: Vec<Arc<Mutex<Core>>>,
        short: Arc<AtomicBool>,
        queue: SyncSender<Job>,
        metrics: ModelMetrics,
    ) -> Self {
        Self { cores, short, gathered: Mutex::default(), queue, metrics }
    }

    /// Takes `job` to be served on the runtime's threads (counted pending), or gives it back
    /// (`Some`) for the workers' queue: the model's runs are not short, requests already wait there, or
    /// this is not a runtime thread.
    pub(crate) fn submit(self: &Arc<Self>, job: Job) -> Option<Job> {
        if !self.short.load(Ordering::Relaxed) {
            return Some(job);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Some(job) };
        let Ok(mut gathered) = self.gathered.lock() else { return Some(job) };
        // Requests waiting in the workers' queue go first.
        if usize::try_from(self.metrics.pending.get()).unwrap_or(0) > gathered.jobs.len() {
            return Some(job);
        }
        self.metrics.pending.inc();
        gathered.jobs.push_back(job);
        if !std::mem::replace(&mut gathered.served, true) {
            // The guard is the task's own from the start: a task dropped before it first runs
            // (the runtime shutting down) hands the requests over too.
            runtime.spawn(Self::serve(Rounds { inline: Arc::clone(self), over: false }));
        }
        None
    }

    /// Rounds of serving what has gathered, until nothing has.
    async fn serve(mut guard: Rounds) {
        loop {
            // Requests readable now are decoded and join before the round runs.
            tokio::task::yield_now().await;
            if !guard.inline.round() {
                guard.over = true;
                return;
            }
        }
    }

    /// Sends every gathered request to the workers' queue (none fit there: answered
    /// overloaded), and ends the rounds.
    fn hand_over(&self, gathered: &mut Gathered) {
        gathered.served = false;
        for job in gathered.jobs.drain(..) {
            if let Err(e) = self.queue.try_send(job) {
                let (TrySendError::Full(job) | TrySendError::Disconnected(job)) = e;
                self.metrics.pending.dec();
                self.metrics.rejected_queue_full.inc();
                let _ = job.reply.send(Err(ApiError::Overloaded("the model's queue is full; retry shortly".into())));
            }
        }
    }

    /// One round: false when nothing was left to run (or it went to the workers).
    fn round(&self) -> bool {
        let Ok(mut gathered) = self.gathered.lock() else { return false };
        let Some(first) = gathered.jobs.pop_front() else {
            gathered.served = false;
            return false;
        };
        let Some(mut core) = self.cores.iter().find_map(|c| c.try_lock().ok()) else {
            // Every instance is busy with a worker's batch: the workers take the rest.
            gathered.jobs.push_front(first);
            self.hand_over(&mut gathered);
            return false;
        };
        let (jobs, refused) = core.collect(first, |_| gathered.jobs.pop_front());
        if let Some(job) = refused {
            gathered.jobs.push_front(job);
        }
        self.metrics.pending.sub(jobs.len() as i64);
        drop(gathered);
        core.serve(jobs);
        true
    }
}

/// One session instance and what running it needs: used by its worker thread, and by callers
/// that run a short request themselves ([`Core::try_inline`]).
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
    /// Smoothed length of this instance's executions; `None` before the first.
    typical_run: Option<Duration>,
    /// Shared by the model's instances: whether executions are short ([`INLINE_BELOW`]) and no
    /// batch is to wait for more requests.
    short: Arc<AtomicBool>,
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
            let Ok(mut queue) = self.queue.lock() else { return };
            let (rx, carry) = &mut *queue;
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            // The instance may be running a caller's short request: taken once that ends.
            let Ok(mut core) = self.core.lock() else { return };
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
    /// An instance ready to serve.
    pub fn new(
        session: Session,
        input_names: Arc<Vec<String>>,
        batching: Option<&crate::config::BatchingConfig>,
        metrics: ModelMetrics,
        max_output_bytes: Option<usize>,
        short: Arc<AtomicBool>,
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
            typical_run: None,
            short,
        }
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
        // A merge the model's outputs could not be split back from: recorded as
        // [`FAILED_MERGE`], so the plan stops merging to that size until it measures it afresh.
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
                    self.plan.record(total, began.elapsed());
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
                self.plan.record(job.items, began.elapsed());
                self.metrics.stats.executed(job.items, 1, began.elapsed());
                self.metrics.count.inc_by(job.items as u64);
                self.metrics.batch_size.observe(job.items as f64);
            }
            let _ = job.reply.send(result.and_then(|all| select(all, &job.wanted)));
        }
        if let Some(items) = failed_merge {
            self.plan.record(items, FAILED_MERGE);
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
        let typical = self.typical_run.map_or(took, |t| t.mul_f64(1.0 - SMOOTHING) + took.mul_f64(SMOOTHING));
        self.typical_run = Some(typical);
        let waits = self.batching && !self.max_queue_delay.is_zero();
        self.short.store(typical <= INLINE_BELOW && !waits, Ordering::Relaxed);
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
