//! The listener: accepting connections under a cap, closing the ones that stall, answering
//! malformed requests in JSON, and stopping the way Kubernetes needs.
//!
//! Each connection has a clock, timed as Go's `net/http` times its connections:
//!
//! - waiting for a request's header section, from the connection's start (or from the first byte
//!   of a request on a kept-alive HTTP/1 connection): closed after `header_read_timeout_ms`;
//! - idle between requests on a kept-alive connection: closed after `idle_timeout_ms`;
//! - busy (a request being read, handled or answered, until hyper has flushed the answer to the
//!   socket): the request deadline (`request_timeout_ms`) bounds slow bodies and slow work, and
//!   a client that reads nothing of its answer for `idle_timeout_ms` is closed.
//!
//! At most `max_connections` are open at once. When a new client arrives at the cap, or accepting
//! fails for want of file descriptors (EMFILE, ENFILE), the connection that has waited longest
//! without a request in progress is closed to make room, as nginx reuses idle keep-alive
//! connections; while every connection is busy, the new client waits and shedding is tried again
//! as connections go idle. Accept errors back off (5 ms doubling to 1 s) instead of spinning.
//!
//! hyper answers requests it cannot parse (400, 414, 431) itself, with an empty body; the
//! connection's writer turns those answers into the documented `{"error": ...}` JSON, and only
//! between two of our answers, so no byte of a response body is ever taken for one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::Request;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::metrics::ConnectionMetrics;

/// File descriptors kept back from the connection cap when it is derived from the process's
/// limit: model files, logs, ONNX Runtime's own, the listener.
const RESERVED_FDS: u64 = 64;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4); hyper-util tells the protocols
/// apart by it too.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest wait for a request's header section.
    pub header_read_timeout: Duration,
    /// Longest idle wait between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The limits `config` asks for; a `max_connections` of 0 becomes the process's open-file
    /// limit less [`RESERVED_FDS`] (or 10 000 where that limit cannot be read).
    pub fn from_config(config: &crate::Config) -> Self {
        let max_connections = match config.max_connections {
            0 => open_file_limit()
                .map_or(10_000, |n| usize::try_from(n.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)),
            n => n,
        }
        // The cap is a semaphore's permit count, waited for all at once on shutdown.
        .min(u32::MAX as usize);
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_connections,
        }
    }
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (Linux; `None` elsewhere or when it
/// is unlimited).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The routes a connection's requests go to: fixed, or the loading phase's stand-in until the
/// built server's routes are handed over. A connection opened while loading then serves its
/// next requests with the built server, so no client sees "starting" once the server says it
/// serves, even on a kept-alive connection (gRPC channels share theirs) still closing.
#[derive(Clone)]
pub(crate) struct Routes {
    first: Router,
    then: Option<Arc<OnceLock<Router>>>,
}

impl Routes {
    /// Always `router`.
    pub(crate) fn fixed(router: Router) -> Self {
        Self { first: router, then: None }
    }

    /// `first` until `then` is set.
    pub(crate) fn until(first: Router, then: Arc<OnceLock<Router>>) -> Self {
        Self { first, then: Some(then) }
    }

    fn current(&self) -> &Router {
        self.then.as_ref().and_then(|t| t.get()).unwrap_or(&self.first)
    }
}

/// What one listener serves, and how.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The routes (HTTP's or gRPC's).
    pub routes: Routes,
    /// TLS, when configured: the handshake must finish within `header_read_timeout_ms`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// HTTP/2 keep-alive pings (interval, timeout) for long-lived gRPC channels.
    pub keepalive: Option<(Duration, Duration)>,
}

/// Accepts connections until `stop` turns true, then returns; the connections already open get
/// `stop` too and close once their current request is answered. Returns the cap's semaphore so
/// the caller can wait for every connection to end.
pub(crate) async fn accept_loop(
    listener: Arc<TcpListener>,
    endpoint: Endpoint,
    limits: Limits,
    metrics: ConnectionMetrics,
    mut stop: watch::Receiver<bool>,
) -> Arc<Semaphore> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    let mut backoff = Duration::ZERO;
    let mut warned_full = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                (stream, peer)
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: resources run out; retrying at once would spin.
                metrics.accept_error();
                open.shed_longest_waiting();
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot accept a connection; backing off");
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        // A slot for the client just taken: at the cap, room is made by shedding the connection
        // that has waited longest for a request; while every connection is busy, the client
        // waits, and shedding is tried again as connections go idle.
        let permit = loop {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => break Some(permit),
                Err(tokio::sync::TryAcquireError::Closed) => break None,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    if !warned_full {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            "connection cap reached; shedding the connections that wait longest for a request (max_connections)"
                        );
                        warned_full = true;
                    }
                    open.shed_longest_waiting();
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => break None,
                        permit = Arc::clone(&slots).acquire_owned() => break permit.ok(),
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        };
        let Some(permit) = permit else { break };
        if slots.available_permits() > limits.max_connections / 10 {
            warned_full = false;
        }
        let _ = stream.set_nodelay(true);
        let (endpoint, metrics) = (endpoint.clone(), metrics.clone());
        let clock = Arc::new(Clock::new(limits));
        let registered = open.register(Arc::clone(&clock));
        tokio::spawn(async move {
            // Dropped when the task ends, even by a panic: the gauge, the registry and the
            // cap's slot always come back.
            let _open = (OpenGauge::new(&metrics), registered, permit);
            let Some(acceptor) = &endpoint.tls else {
                return serve_connection(stream, peer, &endpoint, clock, &metrics).await;
            };
            // The handshake is part of waiting for the first request: bounded by the header
            // timeout, and the connection can be shed meanwhile.
            let tls = tokio::select! {
                biased;
                result = acceptor.accept(stream) => result,
                event = clock.event(false) => {
                    if let Event::Expired(reason) = event {
                        metrics.closed_by_server(reason);
                    }
                    return;
                }
            };
            match tls {
                Ok(tls) => serve_connection(tls, peer, &endpoint, clock, &metrics).await,
                // A client that does not trust the certificate, speaks plain HTTP, or (with mutual
                // TLS) has no valid certificate of its own.
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            }
        });
    }
    // Told here rather than each watching `stop`: a connection's every wake-up would poll it.
    open.stop_all();
    slots
}

/// Counts a connection in `nimify_open_connections` while it lives.
struct OpenGauge(ConnectionMetrics);

impl OpenGauge {
    fn new(metrics: &ConnectionMetrics) -> Self {
        metrics.opened();
        Self(metrics.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Errors that concern one connection (it went away before we took it), not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted)
}

/// The open connections' clocks, to find the one to shed.
#[derive(Default)]
struct Open {
    clocks: Mutex<std::collections::HashMap<u64, Arc<Clock>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Open {
    fn register(self: &Arc<Self>, clock: Arc<Clock>) -> Registered {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.clocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, clock);
        Registered { open: Arc::clone(self), id }
    }

    /// Closes the connection that has waited longest for a request (header or idle phase), if
    /// any: it frees a slot and a file descriptor for a client that may have one to send.
    fn shed_longest_waiting(&self) {
        let clocks = self.clocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let longest =
            clocks.values().filter_map(|c| c.waiting_since().map(|since| (since, c))).min_by_key(|(since, _)| *since);
        if let Some((_, clock)) = longest {
            clock.shed();
        }
    }
}

impl Open {
    /// Tells every open connection to close after its current request.
    fn stop_all(&self) {
        for clock in self.clocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
            clock.stop();
        }
    }
}

/// Removes a connection's clock from [`Open`] when the connection ends.
struct Registered {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.clocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: std::net::SocketAddr,
    endpoint: &Endpoint,
    clock: Arc<Clock>,
    metrics: &ConnectionMetrics,
) {
    let io = TokioIo::new(Guarded { stream, clock: Arc::clone(&clock), replacement: None, preface: Some(0) });
    let service_clock = Arc::clone(&clock);
    let routes = endpoint.routes.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = Busy::start(Arc::clone(&service_clock));
        let router = routes.current().clone();
        async move {
            // The client's address, for the audit log and spans (axum's `ConnectInfo`; an
            // IPv4 client of a dual-stack listener as plain IPv4).
            let mut request = request.map(Body::new);
            let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let response = router.oneshot(request).await.unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| Body::new(Held::new(body, busy))))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The connection clock times header reads; hyper's own timer would also fire while idle.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    if let Some((interval, timeout)) = endpoint.keepalive {
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        // Polled after the connection on each wake-up: what the connection just did (a request
        // began, an answer was flushed) moves the deadline, and the timer follows.
        let event = tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            event = clock.event(!stopping) => event,
        };
        if let Event::Expired(reason) = event {
            metrics.closed_by_server(reason);
            tracing::debug!(reason, "closing a stalled connection");
            // An idle HTTP/2 connection gets a GOAWAY first, so a gRPC channel knows to reconnect
            // rather than fail the call it was about to send.
            if reason == "idle_timeout" && clock.with(|s| s.http2) {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
            }
            return;
        }
        stopping = true;
        connection.as_mut().graceful_shutdown();
    }
}

/// What [`Clock::event`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The server stops: close after the current request.
    Stop,
    /// Close now, for this reason (a `nimify_connections_closed_total` reason).
    Expired(&'static str),
}

/// Where a connection is in its life, and since when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Closed to make room for another (see [`Open::shed_longest_waiting`]).
    Shed,
    /// Waiting for (the rest of) a request's header section.
    Head(Instant),
    /// Between requests, no byte of the next one yet.
    Idle(Instant),
    /// This many requests being handled or answered.
    Busy(usize),
    /// Every response handed to hyper, not all of it written to the socket yet.
    Flushing,
}

/// A connection's phase and the timeouts that apply to it.
struct Clock {
    state: Mutex<ClockState>,
    limits: Limits,
    /// The connection's task, woken by other tasks: to shed it, or as the server stops.
    waker: AtomicWaker,
}

struct ClockState {
    phase: Phase,
    /// Since when a write of an answer has been blocked (the client reads nothing).
    write_blocked: Option<Instant>,
    /// HTTP/2: frames arrive between requests (pings, window updates), so bytes do not mean a
    /// request has begun.
    http2: bool,
    /// The server stops.
    stop: bool,
}

impl Clock {
    fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(ClockState {
                phase: Phase::Head(Instant::now()),
                write_blocked: None,
                http2: false,
                stop: false,
            }),
            limits,
            waker: AtomicWaker::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ClockState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    fn deadline(&self) -> Option<Instant> {
        self.with(|s| match s.phase {
            Phase::Shed => Some(Instant::now()),
            Phase::Head(since) => Some(since + self.limits.header_read_timeout),
            Phase::Idle(since) => Some(since + self.limits.idle_timeout),
            Phase::Busy(_) | Phase::Flushing => s.write_blocked.map(|since| since + self.limits.idle_timeout),
        })
    }

    /// When an idle connection's next request's header would be due at the earliest.
    fn next_header_due(&self) -> Option<Instant> {
        self.with(|s| match s.phase {
            Phase::Idle(since) => Some(since + self.limits.header_read_timeout),
            _ => None,
        })
    }

    /// Waits for the connection to be told to stop (when `stopping` is asked for) or to expire.
    /// Polled right after the connection each time its task wakes, so it sees each deadline the
    /// connection's progress sets. The timer is moved only when a deadline comes earlier than
    /// it is set for; it may go off early (then it is set again), never late. An idle
    /// connection's is set for when its next request's header would be due at the earliest, so
    /// that the requests of a busy connection never move it.
    async fn event(&self, stopping: bool) -> Event {
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        std::future::poll_fn(|cx| {
            // Registered before the flags are read: a flag set after the read wakes the task.
            self.waker.register(cx.waker());
            loop {
                if stopping && self.with(|s| s.stop) {
                    return Poll::Ready(Event::Stop);
                }
                let Some(deadline) = self.deadline() else { return Poll::Pending };
                if armed.is_none_or(|at| deadline < at) {
                    let at = self.next_header_due().filter(|&at| at < deadline && at > Instant::now());
                    let at = at.unwrap_or(deadline);
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some(reason) = self.expired() {
                    return Poll::Ready(Event::Expired(reason));
                }
                // Looked at early: the deadline is later.
                armed = None;
            }
        })
        .await
    }

    /// Why the connection should close now, if its deadline has passed.
    fn expired(&self) -> Option<&'static str> {
        let now = Instant::now();
        self.with(|s| match s.phase {
            Phase::Shed => Some("shed"),
            Phase::Head(since) if now >= since + self.limits.header_read_timeout => Some("header_timeout"),
            Phase::Idle(since) if now >= since + self.limits.idle_timeout => Some("idle_timeout"),
            Phase::Busy(_) | Phase::Flushing
                if s.write_blocked.is_some_and(|since| now >= since + self.limits.idle_timeout) =>
            {
                Some("write_stalled")
            }
            _ => None,
        })
    }

    /// Since when the connection has waited for a request, when it is waiting.
    fn waiting_since(&self) -> Option<Instant> {
        self.with(|s| match s.phase {
            Phase::Head(since) | Phase::Idle(since) => Some(since),
            Phase::Shed | Phase::Busy(_) | Phase::Flushing => None,
        })
    }

    /// Whether none of our answers is being written: what hyper writes now is its own.
    fn between_answers(&self) -> bool {
        self.with(|s| matches!(s.phase, Phase::Head(_) | Phase::Idle(_)))
    }

    /// Marks a waiting connection for closing now.
    fn shed(&self) {
        self.with(|s| {
            if matches!(s.phase, Phase::Head(_) | Phase::Idle(_)) {
                s.phase = Phase::Shed;
            }
        });
        self.waker.wake();
    }

    /// Marks the connection to close after its current request.
    fn stop(&self) {
        self.with(|s| s.stop = true);
        self.waker.wake();
    }

    // The three below run in the connection's own task (its socket's reads, writes and
    // flushes), which looks at the clock after each: they wake nobody.

    /// Bytes arrived: on an idle HTTP/1 connection, a request's header section has begun.
    /// `http2` comes with the read that tells the protocol.
    fn on_read(&self, http2: Option<bool>) {
        self.with(|s| {
            if let Some(http2) = http2 {
                s.http2 = http2;
                // An HTTP/2 client (a gRPC channel) may open its connection well before its
                // first call: from the preface on it is idle, not sending a header section.
                if s.http2 && matches!(s.phase, Phase::Head(_)) {
                    s.phase = Phase::Idle(Instant::now());
                    return;
                }
            }
            if matches!(s.phase, Phase::Idle(_)) && !s.http2 {
                s.phase = Phase::Head(Instant::now());
            }
        });
    }

    /// A write was refused for now (the client's window is full) or made progress.
    fn on_write(&self, blocked: bool) {
        self.with(|s| match (blocked, s.write_blocked) {
            (true, None) => s.write_blocked = Some(Instant::now()),
            (false, Some(_)) => s.write_blocked = None,
            _ => {}
        });
    }

    /// Everything handed over is on the socket: a connection done answering is idle.
    fn on_flushed(&self) {
        self.with(|s| {
            if matches!(s.phase, Phase::Flushing) {
                s.phase = Phase::Idle(Instant::now());
            }
        });
    }
}

/// Marks the connection busy from the moment hyper hands over a request until its response
/// body is handed back (then the connection is flushing until the socket has it all).
struct Busy(Arc<Clock>);

impl Busy {
    fn start(clock: Arc<Clock>) -> Self {
        clock.with(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                Phase::Head(_) | Phase::Idle(_) | Phase::Shed | Phase::Flushing => Phase::Busy(1),
            }
        });
        Self(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let http2 = self.0.with(|s| {
            s.phase = match s.phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Flushing,
            };
            s.http2
        });
        // An HTTP/2 stream's answer is dropped in its own task, not the connection's.
        if http2 {
            self.0.waker.wake();
        }
    }
}

/// A response body holding `G` (a busy mark, an in-flight place) until the body is dropped.
pub(crate) struct Held<G> {
    body: Body,
    _guard: G,
}

impl<G> Held<G> {
    /// `body`, holding `guard` as long as it lives.
    pub(crate) fn new(body: Body, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<G: Unpin + Send + 'static> HttpBody for Held<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads move the clock; hyper's bodiless answers to unparsable
/// requests are replaced by JSON ones.
struct Guarded<S> {
    stream: S,
    clock: Arc<Clock>,
    /// A replacement answer and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// How many bytes of HTTP/2's connection preface the bytes read so far match, while they
    /// still may be one (they tell HTTP/2 from HTTP/1, and may come in pieces).
    preface: Option<usize>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` for a replacement when it is one of hyper's own answers: written while no
    /// answer of ours is (so never a piece of a response body).
    fn replace(&mut self, head: &[u8], cx: &mut Context<'_>) -> Option<Poll<std::io::Result<usize>>> {
        if !head.starts_with(b"HTTP/1.") || head.len() > 1024 || !self.clock.between_answers() {
            return None;
        }
        let answer = json_answer_for(head)?;
        self.replacement = Some((answer, 0));
        Some(match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Written or queued: hyper counts its head as sent either way; flush finishes it.
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    fn note_write(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Pending => self.clock.on_write(true),
            Poll::Ready(Ok(n)) if *n > 0 => self.clock.on_write(false),
            Poll::Ready(_) => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let protocol = match self.preface {
                Some(matched) => {
                    let read = &buf.filled()[before..];
                    let rest = &HTTP2_PREFACE[matched..];
                    let n = read.len().min(rest.len());
                    let (http2, more) = (read[..n] == rest[..n], matched + n);
                    self.preface = (http2 && more < HTTP2_PREFACE.len()).then_some(more);
                    // Decided once the bytes differ or the preface is whole.
                    self.preface.is_none().then_some(http2)
                }
                None => None,
            };
            self.clock.on_read(protocol);
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(result) = self.replace(buf, cx) {
            return result;
        }
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        // hyper's own answers are a head and nothing else, in one slice.
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (slices.next(), slices.next())
            && let Some(result) = self.replace(head, cx)
        {
            return result;
        }
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        // hyper flushes its own buffer into the socket before it flushes the socket.
        if matches!(result, Poll::Ready(Ok(()))) {
            self.clock.on_flushed();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The JSON answer replacing `head` when `head` is an answer hyper wrote on its own: one of its
/// parse-error statuses with an empty body and no content type. The router never answers an
/// error without a JSON body (see `server::json_errors`), so nothing of ours matches.
fn json_answer_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status, reason, message) = match text.get(..13)? {
        "HTTP/1.1 400 " | "HTTP/1.0 400 " => (
            400,
            "Bad Request",
            "the request is not valid HTTP/1.1 (request line, method, URI or a header could not be parsed)",
        ),
        "HTTP/1.1 414 " | "HTTP/1.0 414 " => {
            (414, "URI Too Long", "the request URI is longer than the server accepts; send long values in the body")
        }
        "HTTP/1.1 431 " | "HTTP/1.0 431 " => (
            431,
            "Request Header Fields Too Large",
            "the request's header section is larger than the server accepts (at most 100 headers and about 400 KB); send less in headers",
        ),
        _ => return None,
    };
    let lower = text.to_ascii_lowercase();
    if !lower.ends_with("\r\n\r\n")
        || !lower.contains("\r\ncontent-length: 0\r\n")
        || lower.contains("\r\ncontent-type:")
    {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    Some(format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).into_bytes())
}

/// The client's address, as the accept loop put it in a request's extensions.
pub(crate) fn peer(extensions: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::json_answer_for;

    #[test]
    fn only_hyper_bodiless_parse_errors_are_replaced() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 18:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(json_answer_for(hyper_431).expect("replaced")).expect("utf-8");
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("header section")), "{json}");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        for status in ["400 Bad Request", "414 URI Too Long"] {
            assert!(
                json_answer_for(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).is_some(),
                "{status}"
            );
        }
        for kept in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"{\"error\": \"HTTP/1.1 400 \"}",
        ] {
            assert!(json_answer_for(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
