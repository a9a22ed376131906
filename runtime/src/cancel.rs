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
    /// Why the run was told to stop, and whether it is over (then nothing may stop it: its
    /// options may already serve the next run). One lock, so the two cannot cross.
    end: Mutex<End>,
}

#[derive(Default)]
struct End {
    stopped: Option<Gone>,
    finished: bool,
}

impl Run {
    /// A run that stops through `options` (a worker's own, reused from run to run).
    pub fn new(options: Option<Arc<RunOptions>>) -> Arc<Self> {
        Arc::new(Self { live: AtomicUsize::new(0), options, end: Mutex::new(End::default()) })
    }

    /// The options to run with.
    pub fn options(&self) -> Option<&RunOptions> {
        self.options.as_deref()
    }

    fn leave(&self, why: Gone) {
        if self.live.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        // A request that goes just as its run ends must not stop the next run.
        if end.finished {
            return;
        }
        end.stopped = Some(why);
        if let Some(options) = &self.options
            && let Err(e) = options.terminate()
        {
            tracing::warn!(error = %e, "cannot stop an ONNX Runtime run nobody waits for");
        }
    }

    /// Once ONNX Runtime has returned: why the run was told to stop, if it was (its options then
    /// stay stopped: the worker takes new ones). Nothing stops the run after this.
    pub fn finish(&self) -> Option<Gone> {
        let mut end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        end.finished = true;
        end.stopped.take()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_stops_when_its_last_request_goes_and_never_after_it_finished() {
        // Both requests go during the run: stopped, for the reason of the last to go.
        let run = Run::new(None);
        let (a, link_a) = link();
        let (b, link_b) = link();
        link_a.join(&run).expect("live");
        link_b.join(&run).expect("live");
        drop(a);
        assert_eq!(link_a.gone(), Some(Gone::Disconnect));
        assert!(run.end.lock().expect("lock").stopped.is_none(), "one request still waits");
        drop(b);
        assert_eq!(run.finish(), Some(Gone::Disconnect));

        // The request goes just after the run ended but before its place was released: the
        // run is finished, so nothing is stopped (its options may serve the next run already).
        let run = Run::new(None);
        let (c, link_c) = link();
        link_c.join(&run).expect("live");
        assert_eq!(run.finish(), None);
        drop(c);
        assert!(run.end.lock().expect("lock").stopped.is_none(), "a finished run was told to stop");
        link_c.release();

        // A request already gone does not join, and an answered one stops nothing.
        let (d, link_d) = link();
        drop(d);
        assert_eq!(link_d.join(&Run::new(None)), Err(Gone::Disconnect));
        let run = Run::new(None);
        let (e, link_e) = link();
        link_e.join(&run).expect("live");
        e.answered();
        assert_eq!(link_e.gone(), None);
        assert_eq!(run.finish(), None);
    }

    #[tokio::test]
    async fn past_its_deadline_a_request_is_gone_for_the_deadline() {
        let deadline = Instant::now();
        let (late, late_link) = with_deadline(deadline, async { link() }).await;
        drop(late);
        assert_eq!(late_link.gone(), Some(Gone::Deadline));
        let (early, early_link) =
            with_deadline(Instant::now() + std::time::Duration::from_secs(60), async { link() }).await;
        drop(early);
        assert_eq!(early_link.gone(), Some(Gone::Disconnect));
    }
}
