//! Serving on the listeners: both protocols' accept loops, the loading phase before the models
//! are ready, and the shutdown a Kubernetes pod needs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::connections::{Endpoint, Limits, Routes, accept_loop};
use crate::server::AppState;

/// The sockets a server listens on: HTTP, and gRPC when it is served.
#[derive(Debug)]
pub struct Listeners {
    /// KServe V2 over HTTP/1.1 and HTTP/2, the docs, metrics and typed routes.
    pub http: TcpListener,
    /// `inference.GRPCInferenceService`, health and reflection over gRPC.
    pub grpc: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(http: TcpListener) -> Self {
        Self { http, grpc: None }
    }
}

/// Accept loops running on shared listeners until told to stop.
struct Running {
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<Arc<Semaphore>>>,
    limits: Limits,
}

impl Running {
    /// Starts accepting on `http` with `routes` and, when given, on the gRPC listener with its
    /// routes, both with the state's TLS and limits.
    fn start(
        http: &Arc<TcpListener>,
        grpc: Option<(&Arc<TcpListener>, Routes)>,
        state: &Arc<AppState>,
        routes: Routes,
    ) -> Self {
        let limits = Limits::from_config(state.config());
        let (stop, stopped) = watch::channel(false);
        let tls = state.tls().map(tokio_rustls::TlsAcceptor::from);
        let metrics = state.metrics().connections();
        let http_endpoint = Endpoint { routes, tls: tls.clone(), keepalive: None };
        let mut loops =
            vec![tokio::spawn(accept_loop(Arc::clone(http), http_endpoint, limits, metrics.clone(), stopped.clone()))];
        if let Some((grpc, routes)) = grpc {
            let c = state.config();
            let keepalive = (c.grpc_keepalive_interval_ms > 0).then(|| {
                (
                    Duration::from_millis(c.grpc_keepalive_interval_ms),
                    Duration::from_millis(c.grpc_keepalive_timeout_ms),
                )
            });
            let endpoint = Endpoint { routes, tls, keepalive };
            loops.push(tokio::spawn(accept_loop(Arc::clone(grpc), endpoint, limits, metrics, stopped)));
        }
        Self { stop, loops, limits }
    }

    /// Stops accepting, tells open connections to close after their current request, and waits
    /// up to `drain` for them to end. Returns whether they all did.
    async fn stop(self, drain: Duration) -> std::io::Result<bool> {
        Ok(self.stop_accepting().await?.wait(drain).await)
    }

    /// Stops accepting (the listeners are free for another server at once) and tells open
    /// connections to close after their current request.
    async fn stop_accepting(self) -> std::io::Result<Closing> {
        let _ = self.stop.send(true);
        let mut slots = Vec::new();
        for task in self.loops {
            slots.push(task.await.map_err(std::io::Error::other)?);
        }
        Ok(Closing { slots, limits: self.limits })
    }
}

/// Connections of stopped accept loops, closing.
struct Closing {
    slots: Vec<Arc<Semaphore>>,
    limits: Limits,
}

impl Closing {
    /// Waits up to `drain` for every connection to end; whether they all did.
    async fn wait(self, drain: Duration) -> bool {
        let every = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let drained = async {
            for s in &self.slots {
                let _ = s.acquire_many(every).await;
            }
        };
        tokio::time::timeout(drain, drained).await.is_ok()
    }
}

/// Serves until `shutdown` resolves, then stops the way a Kubernetes pod should:
///
/// 1. readiness answers 503 (gRPC health NOT_SERVING) at once, while the listeners keep accepting
///    and serving for `shutdown_delay_ms` (endpoints take a few seconds to drop a terminating
///    pod; a second SIGTERM or Ctrl-C skips the rest of the delay, and a Ctrl-C from
///    [`shutdown_signal`] has none);
/// 2. the listeners stop accepting, idle kept-alive connections are closed and busy ones are
///    closed after their current response (`Connection: close`, HTTP/2 GOAWAY);
/// 3. in-flight requests finish within `drain_timeout_ms`; past it the server returns anyway.
///
/// `listeners` is one HTTP listener, or [`Listeners`] with a gRPC one too.
pub async fn serve(
    listeners: impl Into<Listeners>,
    state: Arc<AppState>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Listeners { http, grpc } = listeners.into();
    let grpc = grpc.map(|g| (Arc::new(g), crate::grpc::router(Arc::clone(&state))));
    serve_shared(Arc::new(http), grpc, state, router, shutdown, None).await
}

/// Serves `router` on `http` and the given gRPC routes on their listener until `shutdown`, then
/// drains them and the loading phase's connections still `closing`.
async fn serve_shared(
    http: Arc<TcpListener>,
    grpc: Option<(Arc<TcpListener>, Router)>,
    state: Arc<AppState>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    closing: Option<Closing>,
) -> std::io::Result<()> {
    let local = http.local_addr()?;
    let grpc_local = grpc.as_ref().map(|(g, _)| g.local_addr()).transpose()?;
    // Poll the shutdown future once before announcing the server: signal handlers (tokio's and
    // [`shutdown_signal`]'s) are installed on the first poll, and a SIGTERM or Ctrl-C that came
    // before them would end the process at once instead of gracefully.
    let mut shutdown = Box::pin(shutdown);
    let signalled = std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    let running =
        Running::start(&http, grpc.as_ref().map(|(g, r)| (g, Routes::fixed(r.clone()))), &state, Routes::fixed(router));
    let polling = (state.repository().map(crate::repository::Repository::mode)
        == Some(crate::config::ControlMode::Poll))
    .then(|| tokio::spawn(crate::repository::poll_loop(Arc::clone(&state))));
    let base = base_url(local, state.tls().is_some());
    tracing::info!(
        address = %local,
        docs = %format!("{base}/docs"),
        metrics = %format!("{base}/metrics"),
        grpc_address = grpc_local.map_or_else(|| "off".to_string(), |a| a.to_string()),
        tls = state.tls().is_some(),
        models = state.models().len(),
        max_connections = running.limits.max_connections,
        runtime = runtime_flavor(),
        runtime_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        header_read_timeout_ms = running.limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = running.limits.idle_timeout.as_millis() as u64,
        "serving"
    );
    if !signalled {
        shutdown.await;
    }
    state.begin_shutdown();
    // No model changes while shutting down.
    if let Some(polling) = polling {
        polling.abort();
    }
    // The delay is for orchestrators (SIGTERM); someone pressing Ctrl-C wants the server gone.
    let interactive = INTERRUPTED.load(Ordering::SeqCst);
    let delay = Duration::from_millis(state.config().shutdown_delay_ms);
    if !delay.is_zero() && !interactive {
        tracing::info!(
            shutdown_delay_ms = delay.as_millis() as u64,
            "shutting down: readiness is 503; still serving during the shutdown delay (a second signal skips it)"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown_signal() => tracing::info!("second signal: skipping the rest of the shutdown delay"),
        }
    }
    let drain = Duration::from_millis(state.config().drain_timeout_ms);
    tracing::info!(
        drain_timeout_ms = drain.as_millis() as u64,
        "shutting down: not accepting connections, draining in-flight requests"
    );
    state.begin_drain();
    let loading_drained = async {
        match closing {
            Some(closing) => closing.wait(drain).await,
            None => true,
        }
    };
    let (drained, loading_drained) = tokio::join!(running.stop(drain), loading_drained);
    if drained? && loading_drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; exiting with requests still in flight");
    }
    // The payload events of the drained requests go out before the runtime stops.
    if let Some(log) = state.payload_log() {
        log.flush(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// Which tokio runtime serves: `current_thread` (one CPU) or `multi_thread`.
fn runtime_flavor() -> &'static str {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    }
}

/// `http(s)://host:port` to reach a listener at `local` from this machine: an unspecified
/// address (`0.0.0.0`, `::`) is shown as loopback, which is where someone reading the log can
/// open it.
fn base_url(local: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("{scheme}://{}", std::net::SocketAddr::new(ip, local.port()))
}

/// Serves `listeners` with the `starting` stand-in (see `ServerBuilder::prepare_loading`) while
/// `load` builds the server on a blocking thread, then serves what it built until `shutdown`.
/// While loading, liveness passes and readiness fails on both protocols (HTTP 503, gRPC health
/// NOT_SERVING), and everything else answers 503 / UNAVAILABLE "starting", so probes and clients
/// see a starting server rather than a refused connection. Once built, the loading phase's
/// connections serve their next requests with the built server (see `Routes`) until they close.
/// A shutdown signal while loading ends it at once (`Ok(Ok(()))`; the load is left to the
/// process's exit).
pub(crate) async fn serve_after_loading<E: Send + 'static>(
    listeners: Listeners,
    (starting, starting_router): (Arc<AppState>, Router),
    load: impl FnOnce() -> Result<(Arc<AppState>, Router), E> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<std::io::Result<()>, E> {
    let http = Arc::new(listeners.http);
    let grpc = listeners.grpc.map(Arc::new);
    let mut shutdown = Box::pin(shutdown);
    // Installs the signal handlers (see `serve_shared`).
    let signalled = std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    let mut load = tokio::task::spawn_blocking(load);
    // The loading phase's connections are handed the built server's routes as soon as it is
    // built, then closed (see `Routes`).
    let (http_then, grpc_then) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
    let loading = Running::start(
        &http,
        grpc.as_ref().map(|g| (g, Routes::until(crate::grpc::router(Arc::clone(&starting)), Arc::clone(&grpc_then)))),
        &starting,
        Routes::until(starting_router, Arc::clone(&http_then)),
    );
    tracing::info!(
        address = %http.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        grpc_address = grpc.as_ref().and_then(|g| g.local_addr().ok()).map_or_else(|| "off".to_string(), |a| a.to_string()),
        "listening; loading and warming up the models (readiness fails until they are ready)"
    );
    let built = if signalled {
        None
    } else {
        tokio::select! {
            built = &mut load => Some(built),
            () = shutdown.as_mut() => None,
        }
    };
    let Some(built) = built else {
        tracing::info!("shutdown signal while loading: exiting without serving");
        return Ok(loading.stop(Duration::ZERO).await.map(|_| ()));
    };
    let (state, router) = match built {
        Ok(Ok(built)) => built,
        Ok(Err(e)) => {
            let _ = loading.stop(Duration::ZERO).await;
            return Err(e);
        }
        Err(e) => {
            let _ = loading.stop(Duration::ZERO).await;
            return Ok(Err(std::io::Error::other(e)));
        }
    };
    let _ = http_then.set(router.clone());
    let grpc = grpc.map(|g| (g, crate::grpc::router(Arc::clone(&state))));
    if let Some((_, routes)) = &grpc {
        let _ = grpc_then.set(routes.clone());
    }
    starting.handed_over();
    let closing = match loading.stop_accepting().await {
        Ok(closing) => closing,
        Err(e) => return Ok(Err(e)),
    };
    // The loading phase's connections close after their current request (GOAWAY,
    // `Connection: close`) while the built server already accepts; what they still serve
    // meanwhile, they serve with the built server's routes, and its shutdown drains them too.
    Ok(serve_shared(http, grpc, state, router, shutdown, Some(closing)).await)
}

/// Whether [`shutdown_signal`] was resolved by Ctrl-C (SIGINT) rather than SIGTERM: [`serve`]
/// skips the shutdown delay for a person at a terminal.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        INTERRUPTED.store(true, Ordering::SeqCst);
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn log_urls_point_at_loopback_for_unspecified_addresses() {
        assert_eq!(base_url("0.0.0.0:8000".parse().expect("addr"), false), "http://127.0.0.1:8000");
        assert_eq!(base_url("[::]:8443".parse().expect("addr"), true), "https://[::1]:8443");
        assert_eq!(base_url("10.1.2.3:80".parse().expect("addr"), false), "http://10.1.2.3:80");
    }
}
