//! Runaway work: a request whose answer nobody waits for any more (its deadline passed, or its
//! client closed the connection) is not run, and the ONNX Runtime run executing it is stopped
//! when no other request of the same batch still needs that run.
//!
//! Each queued request has a [`Link`] between the waiting side ([`Waiting`], held by the request's
//! future) and the worker. Dropping `Waiting` before the answer arrives marks the request gone,
//! with why: past its deadline (a task-local set by the inference path) or not (the client left).
//! While a batch runs, each of its live requests holds a place in its [`Run`]; when the last one
//! leaves, the run's `RunOptions` are told to terminate, and ONNX Runtime stops at its next node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ort::session::RunOptions;

/// Why a request is no longer waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// Its request deadline passed.
    Deadline,
    /// Its client went away first.
    Disconnect,
}

impl Gone {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Gone::Deadline => "deadline",
            Gone::Disconnect => "disconnect",
        }
    }
}

tokio::task_local! {
    /// The deadline of the request being handled on this task, when it has one.
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` known to every request it queues.
pub(crate) async fn with_deadline<T>(deadline: Instant, work: impl Future<Output = T>) -> T {
    DEADLINE.scope(deadline, work).await
}

#[derive(Default)]
struct State {
    gone: Option<Gone>,
    run: Option<Arc<Run>>,
}

/// The worker's side of a request's link.
pub(crate) struct Link(Arc<Mutex<State>>);

/// The waiting request's side: dropped before [`Waiting::answered`], the request is gone.
pub(crate) struct Waiting {
    state: Arc<Mutex<State>>,
    deadline: Option<Instant>,
    answered: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new link for a request queued from the current task.
pub(crate) fn link() -> (Waiting, Link) {
    let state = Arc::new(Mutex::new(State::default()));
    let deadline = DEADLINE.try_with(|d| *d).ok();
    (Waiting { state: Arc::clone(&state), deadline, answered: false }, Link(state))
}

impl Waiting {
    /// The answer arrived: nothing to stop.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let why = if self.deadline.is_some_and(|d| Instant::now() >= d) { Gone::Deadline } else { Gone::Disconnect };
        let run = {
            let mut state = lock(&self.state);
            state.gone = Some(why);
            state.run.take()
        };
        if let Some(run) = run {
            run.leave(why);
        }
    }
}

impl Link {
    /// Why the request is gone, if it is.
    pub fn gone(&self) -> Option<Gone> {
        lock(&self.0).gone
    }

    /// Takes a place in `run`, unless the request is already gone.
    pub fn join(&self, run: &Arc<Run>) -> Result<(), Gone> {
        let mut state = lock(&self.0);
        if let Some(why) = state.gone {
            return Err(why);
        }
        run.live.fetch_add(1, Ordering::AcqRel);
        state.run = Some(Arc::clone(run));
        Ok(())
    }

    /// Gives the place back once the run is over, so a later drop cannot stop another run.
    pub fn release(&self) {
        lock(&self.0).run = None;
    }
}

/// One ONNX Runtime execution and the requests that still need it.
pub(crate) struct Run {
    live: AtomicUsize,
    options: Option<Arc<RunOptions>>,
    stopped: Mutex<Option<Gone>>,
}

impl Run {
    /// A run that stops through `options` (a worker's own, reused from run to run).
    pub fn new(options: Option<Arc<RunOptions>>) -> Arc<Self> {
        Arc::new(Self { live: AtomicUsize::new(0), options, stopped: Mutex::new(None) })
    }

    /// The options to run with.
    pub fn options(&self) -> Option<&RunOptions> {
        self.options.as_deref()
    }

    fn leave(&self, why: Gone) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(options) = &self.options
        {
            *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
            if let Err(e) = options.terminate() {
                tracing::warn!(error = %e, "cannot stop an ONNX Runtime run nobody waits for");
            }
        }
    }

    /// After every place is released: why the run was told to stop, if it was (its options
    /// then stay stopped: the worker takes new ones).
    pub fn finish(&self) -> Option<Gone> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Fresh run options for a worker; `None` (runs cannot be stopped, logged) when ONNX Runtime
/// cannot make them. ONNX Runtime's own log of a failed run is kept to fatal messages: every
/// failure comes back as an error that the server logs with its request id, and a stopped run
/// is not an error at all.
pub(crate) fn run_options() -> Option<Arc<RunOptions>> {
    let mut options = RunOptions::new().inspect_err(|e| tracing::warn!(error = %e, "cannot create ONNX Runtime run options; runs nobody waits for will not be stopped")).ok()?;
    if let Err(e) = options.set_log_level(ort::logging::LogLevel::Fatal) {
        tracing::debug!(error = %e, "cannot quiet ONNX Runtime's per-run log");
    }
    Some(Arc::new(options))
}
