//! The accept loop: HTTP/1.1 connections with a header read timeout, a
//! request body deadline, an idle keep-alive timeout, a stalled-write
//! timeout and a cap on connections served at once, closed gracefully on
//! shutdown.
//!
//! hyper's own `header_read_timeout` is left off: in hyper 1.x it also
//! starts while a keep-alive connection waits for its next request, so it
//! would cut idle connections at `header_timeout`, long before
//! `idle_timeout` (the load balancer must be the one to close an idle
//! connection, or it may send a request on a socket we are closing).
//! Instead each connection has a watchdog over its own activity: bytes read
//! while no request is in flight start the header clock, the request
//! reaching the router stops it, the response body's end starts the idle
//! clock.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::throttle::LogThrottle;
use crate::config::ServerSettings;

/// The limits every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte of a request (or the connection's opening) to
    /// the end of its headers.
    pub header_timeout: Duration,
    /// From the end of a request's headers to the end of its body; also how
    /// long a response write may make no progress.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; the rest wait in the listen backlog.
    pub max_connections: usize,
}

impl From<&ServerSettings> for Limits {
    fn from(s: &ServerSettings) -> Self {
        Self {
            header_timeout: s.header_timeout,
            body_timeout: s.body_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled; then accepts no
/// more connections and lets each open one finish its request in flight and
/// close; once `kill` is cancelled too, closes those still open. Returns
/// when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let accept_errors = LogThrottle::new(Duration::from_secs(60));
    loop {
        // The permit comes first: over the cap, connections stay in the
        // kernel's backlog instead of being accepted and held.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !is_per_connection(&e) {
                        if let Some(n) = accept_errors.hit() {
                            tracing::warn!(error = %e, errors = n, "accepting connections fails (e.g. out of file descriptors); retrying");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            app.clone(),
            limits,
            stop.clone(),
            kill.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = connections.wait() => {}
        _ = kill.cancelled() => {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown grace; closing them"
            );
            connections.wait().await;
        }
    }
}

/// Accept errors about one connection (the peer gave up before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    kill: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let peer = stream.peer_addr().ok();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(activity.clone());
            let deadline = Instant::now() + limits.body_timeout;
            let mut request = request.map(|body| Body::new(DeadlineBody::new(body, deadline)));
            // Who is asking, for handlers that log it (the console's sign-in).
            if let Some(peer) = peer {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(ResponseBody {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            expired = activity.expired(&limits, !closing) => match expired {
                Expired::Idle => {
                    tracing::trace!("closing an idle keep-alive connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Expired::Head => {
                    tracing::debug!("closing a connection that did not send its request headers in time");
                    return;
                }
                Expired::Stalled => {
                    tracing::debug!("closing a connection that stopped reading its response");
                    return;
                }
            },
            _ = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = kill.cancelled() => return,
        }
    }
}

/// What a connection is doing, as far as its timeouts are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request's headers (or waiting for the first request).
    Head,
    /// A request is in the router or its response is being written.
    Busy,
    /// Waiting for the next request on a keep-alive connection.
    Idle,
}

#[derive(Debug)]
struct ActivityState {
    phase: Phase,
    since: Instant,
    in_flight: usize,
    write_stalled_since: Option<Instant>,
}

/// One connection's activity, updated by its IO and its requests, watched
/// by its serving task.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Head,
    Idle,
    Stalled,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                phase: Phase::Head,
                since: Instant::now(),
                in_flight: 0,
                write_stalled_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ActivityState) -> bool) {
        let changed = f(&mut self.state.lock().expect("activity lock"));
        if changed {
            self.changed.notify_one();
        }
    }

    fn read(&self) {
        self.update(|s| {
            // Bytes while idle are the start of the next request's headers.
            // Bytes while busy are a body (or a pipelined request, which the
            // idle clock bounds once the current response is written).
            if s.phase == Phase::Idle {
                s.phase = Phase::Head;
                s.since = Instant::now();
                return true;
            }
            false
        });
    }

    fn write(&self, stalled: bool) {
        self.update(|s| match (stalled, s.write_stalled_since) {
            (true, None) => {
                s.write_stalled_since = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                s.write_stalled_since = None;
                true
            }
            _ => false,
        });
    }

    fn request_started(&self) {
        self.update(|s| {
            s.in_flight += 1;
            s.phase = Phase::Busy;
            true
        });
    }

    fn request_finished(&self) {
        self.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.phase = Phase::Idle;
                s.since = Instant::now();
            }
            true
        });
    }

    fn deadline(&self, limits: &Limits, idle: bool) -> Option<(Instant, Expired)> {
        let s = self.state.lock().expect("activity lock");
        let phase = match s.phase {
            Phase::Head => Some((s.since + limits.header_timeout, Expired::Head)),
            Phase::Idle if idle => Some((s.since + limits.idle_timeout, Expired::Idle)),
            Phase::Idle | Phase::Busy => None,
        };
        let stalled = s
            .write_stalled_since
            .map(|t| (t + limits.body_timeout, Expired::Stalled));
        match (phase, stalled) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Resolves when one of the connection's timeouts has run out (the idle
    /// one only if `idle`).
    async fn expired(&self, limits: &Limits, idle: bool) -> Expired {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits, idle) {
                Some((at, what)) if at <= Instant::now() => return what,
                Some((at, _)) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// The connection's socket, reporting reads and stalled writes.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks one request in flight on its connection until dropped (with the
/// response body, once written, or with the request if it is abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request in flight until it is done.
struct ResponseBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a request body gives when it has not fully arrived within
/// `server.body_timeout` of its headers.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body timeout")]
pub struct BodyTimedOut;

impl BodyTimedOut {
    /// Whether `error` (or one of its sources) is a body timeout.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<BodyTimedOut>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has
/// passed (a total deadline: a client trickling one byte at a time gets no
/// more time than one that sends nothing).
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if Instant::now() < this.deadline {
            if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            let deadline = this.deadline;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            ready!(sleep.as_mut().poll(cx));
        }
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
