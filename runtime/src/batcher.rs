//! Dynamic batching: one bounded queue per model and one worker thread per session instance.
//!
//! A worker takes the first waiting request, then keeps taking requests while its [`Plan`] says
//! a larger batch pays (within `max_batch_size` and the preferred sizes) and until the first
//! request has waited `max_queue_delay`. Requests nobody
//! waits for any more (deadline passed, client gone) are dropped (counted) before execution, and
//! an execution is stopped midway when every request it serves goes (see [`crate::cancel`]).
//! Requests that agree on every dim but dim 0 run as one execution; when an output's dim 0 does
//! not come back as the summed batch, those requests run again one by one. While one worker
//! executes, the next collects.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
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

/// What a worker needs besides its session.
pub struct Worker {
    /// Shared queue and the request that did not fit the previous batch.
    pub queue: Arc<Mutex<(Receiver<Job>, Option<Job>)>>,
    /// Input names in model order.
    pub input_names: Arc<Vec<String>>,
    /// Merge requests at all.
    pub batching: bool,
    /// When to merge (bounds, preferred sizes, measured costs).
    pub plan: Plan,
    /// Longest wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Metric handles.
    pub metrics: ModelMetrics,
    /// Most output bytes per request (`max_output_bytes`); `None`: no limit.
    pub max_output_bytes: Option<usize>,
}

impl Worker {
    /// Runs until the queue's sender is dropped.
    pub fn run(mut self, mut session: Session) {
        let mut options = crate::cancel::run_options();
        while let Some(jobs) = self.collect() {
            let jobs: Vec<Job> = jobs
                .into_iter()
                .filter(|j| {
                    self.metrics.pending.dec();
                    self.still_wanted(j)
                })
                .collect();
            for group in group_by_trailing_dims(jobs) {
                self.execute(&mut session, &mut options, group);
            }
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

    fn collect(&mut self) -> Option<Vec<Job>> {
        let mut guard = self.queue.lock().ok()?;
        let (rx, carry) = &mut *guard;
        let first = match carry.take() {
            Some(job) => job,
            None => rx.recv().ok()?,
        };
        let mut items = first.items;
        let deadline = first.enqueued + self.max_queue_delay;
        let mut jobs = vec![first];
        // A batch that has held a preferred size takes only what is queued.
        let mut settled = self.plan.preferred(items);
        while self.batching && self.plan.open(items) {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !settled && self.plan.wait(items) => rx.recv_timeout(left),
                _ => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match next {
                Ok(job) if !self.plan.grow(items, job.items) => {
                    *carry = Some(job);
                    break;
                }
                Ok(job) => {
                    items += job.items;
                    settled |= self.plan.preferred(items);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn execute(&mut self, session: &mut Session, options: &mut Option<Arc<RunOptions>>, mut jobs: Vec<Job>) {
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
            let batched = span.in_scope(|| self.run_batched(session, options, &jobs));
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
            let result = span.in_scope(|| self.run_one(session, options, &[&job.link], job.inputs, &wanted));
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
    fn run_batched(&self, session: &mut Session, options: &mut Option<Arc<RunOptions>>, jobs: &[Job]) -> Batched {
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
        let outputs = match self.run_one(session, options, &links, merged, &wanted) {
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
    fn run_one(
        &self,
        session: &mut Session,
        options: &mut Option<Arc<RunOptions>>,
        links: &[&Link],
        inputs: Vec<Tensor>,
        wanted: &[&str],
    ) -> Result<Outputs, ApiError> {
        let run = Run::new(options.clone());
        let joined = links.iter().filter(|l| l.join(&run).is_ok()).count();
        if joined == 0 {
            return Err(ApiError::Timeout("nobody waits for this request any more".into()));
        }
        let start = Instant::now();
        // A merged run may hold each of its requests' share.
        let cap = self.max_output_bytes.map(|c| (c.saturating_mul(links.len()), wanted));
        let result = run_session(session, &self.input_names, inputs, run.options(), cap);
        let stopped = run.finish();
        for link in links {
            link.release();
        }
        self.metrics.exec_count.inc();
        self.metrics.compute_us.inc_by(micros(start.elapsed()));
        if let Some(why) = stopped {
            *options = crate::cancel::run_options();
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
