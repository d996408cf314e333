//! The gateway's HTTP server: its own accept loop over hyper, so that every connection is
//! bounded (axum's `serve` sets none of these):
//!
//! - at most `max_connections` open at once; one more is accepted and closed at once
//!   (counted), so the listener's backlog never fills with clients nobody will serve;
//! - HTTP/1.1 request headers must arrive within `header_timeout` (a half-sent request is
//!   closed, not kept forever), and be at most `max_header_bytes` in at most 100 fields;
//! - a connection with nothing in flight and no bytes moved for `idle_timeout` is closed,
//!   and one that has not completed a first request within `header_timeout` too (this
//!   covers HTTP/2, which has no header timeout of its own);
//! - HTTP/2 (cleartext with prior knowledge; `h2` by ALPN once TLS terminates here) is
//!   deliberate: at most `http2_max_streams` concurrent streams per connection, a header
//!   list of at most `max_header_bytes`, a bound on streams reset by the client (the
//!   "rapid reset" attack), and keep-alive pings.
//!
//! Shutdown: when `shutdown` resolves the listener closes, every connection is asked to
//! finish (HTTP/1.1: after its current response; HTTP/2: GOAWAY), and the loop waits up to
//! `drain_timeout` for them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use borough_config_client::{Env, SettingsError, Var};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The HTTP server's connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// [`ConnectionLimits::MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`ConnectionLimits::HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// [`ConnectionLimits::IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`ConnectionLimits::MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// [`ConnectionLimits::HTTP2_MAX_STREAMS`].
    pub http2_max_streams: u32,
    /// [`ConnectionLimits::DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The declared defaults.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            http2_max_streams: 100,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ConnectionLimits {
    pub const MAX_CONNECTIONS: Var = Var::new(
        "BOROUGH_HTTP_MAX_CONNECTIONS",
        "4096",
        "Connections open at once (1 to 1,000,000); past it, new ones are closed at once and \
         counted",
    );
    pub const HEADER_TIMEOUT: Var = Var::new(
        "BOROUGH_HTTP_HEADER_TIMEOUT",
        "10s",
        "The time a client has to send a request's headers (HTTP/1.1) or complete its first \
         request (any version)",
    );
    pub const IDLE_TIMEOUT: Var = Var::new(
        "BOROUGH_HTTP_IDLE_TIMEOUT",
        "60s",
        "A connection with nothing in flight and no bytes moved for this long is closed",
    );
    pub const MAX_HEADER_BYTES: Var = Var::new(
        "BOROUGH_HTTP_MAX_HEADER_BYTES",
        "16KiB",
        "The largest request header block (8KiB to 1MiB)",
    );
    pub const HTTP2_MAX_STREAMS: Var = Var::new(
        "BOROUGH_HTTP2_MAX_STREAMS",
        "100",
        "Concurrent streams per HTTP/2 connection (1 to 10,000)",
    );
    pub const DRAIN_TIMEOUT: Var = Var::new(
        "BOROUGH_HTTP_DRAIN_TIMEOUT",
        "30s",
        "How long shutdown waits for open connections",
    );
    pub const VARS: &[&Var] = &[
        &Self::MAX_CONNECTIONS,
        &Self::HEADER_TIMEOUT,
        &Self::IDLE_TIMEOUT,
        &Self::MAX_HEADER_BYTES,
        &Self::HTTP2_MAX_STREAMS,
        &Self::DRAIN_TIMEOUT,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(ConnectionLimits {
            max_connections: env.parse_in(&Self::MAX_CONNECTIONS, 1..=1_000_000)?,
            header_timeout: env.duration_in(
                &Self::HEADER_TIMEOUT,
                Duration::from_millis(10)..=Duration::from_secs(3600),
            )?,
            idle_timeout: env.duration_in(
                &Self::IDLE_TIMEOUT,
                Duration::from_millis(10)..=Duration::from_secs(24 * 3600),
            )?,
            // hyper's HTTP/1.1 read buffer is at least 8 KiB.
            max_header_bytes: env.bytes_in(&Self::MAX_HEADER_BYTES, 8 * 1024..=1024 * 1024)?,
            http2_max_streams: env.parse_in(&Self::HTTP2_MAX_STREAMS, 1..=10_000)?,
            drain_timeout: env.duration_in(
                &Self::DRAIN_TIMEOUT,
                Duration::ZERO..=Duration::from_secs(3600),
            )?,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Connection metrics: open now, refused at the cap, closed by a bound.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    refused: Counter,
    closed: Family<ReasonLabels, Counter>,
}

impl ConnectionMetrics {
    pub fn register(metrics: &borough_telemetry::Metrics) -> Self {
        let m = ConnectionMetrics {
            open: Gauge::default(),
            refused: Counter::default(),
            closed: Family::default(),
        };
        metrics.register(
            "http_connections_open",
            "HTTP connections open (bounded by BOROUGH_HTTP_MAX_CONNECTIONS)",
            m.open.clone(),
        );
        metrics.register(
            "http_connections_refused",
            "HTTP connections closed at once because BOROUGH_HTTP_MAX_CONNECTIONS were open",
            m.refused.clone(),
        );
        metrics.register(
            "http_connections_closed_by_bound",
            "HTTP connections closed by a bound: idle, or no first request in time",
            m.closed.clone(),
        );
        m
    }
}

/// The peer of the connection a request came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What one connection shares with its watchdog: when bytes last moved, requests in
/// flight, and requests begun.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    begun: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The connection's stream, noting when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight until its response (headers) is ready; a streamed body is
/// then seen as bytes moving.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.begun.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module
/// docs).
pub async fn serve<A>(
    listener: TcpListener,
    app: A,
    limits: ConnectionLimits,
    edge: Option<(borough_tls::edge::EdgeCert, borough_tls::TlsMetrics)>,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    A: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = edge.map(|(edge, tls_metrics)| {
        (
            tokio_rustls::TlsAcceptor::from(edge.server_config()),
            tls_metrics,
        )
    });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let metrics = metrics.clone();
        let stopping = stopping.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            metrics.open.inc();
            match acceptor {
                // HTTPS: the handshake is bounded like the headers that follow it.
                Some((acceptor, tls_metrics)) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let group = tls
                                .get_ref()
                                .1
                                .negotiated_key_exchange_group()
                                .map(|g| borough_tls::group_name(g.name()));
                            tls_metrics.handshake("edge", "client".to_owned(), group);
                            connection(tls, peer, app, limits, &metrics, stopping).await
                        }
                        Ok(Err(e)) => {
                            tls_metrics.failure("edge");
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tls_metrics.failure("edge");
                            metrics
                                .closed
                                .get_or_create(&ReasonLabels {
                                    reason: "handshake_timeout",
                                })
                                .inc();
                        }
                    }
                }
                None => connection(stream, peer, app, limits, &metrics, stopping).await,
            }
            metrics.open.dec();
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every slot back: every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = limits.max_connections - slots.available_permits(),
            "connections still open after the drain timeout: closing them"
        );
    }
    Ok(())
}

/// Serves one connection (TCP, or TLS over it) until it ends, closing it when a bound
/// says so.
async fn connection<A, T>(
    stream: T,
    peer: SocketAddr,
    app: A,
    limits: ConnectionLimits,
    metrics: &ConnectionMetrics,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    A: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::new(&activity);
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(Peer(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(in_flight);
                response
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(100)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let check = (limits.idle_timeout.min(limits.header_timeout) / 4)
        .clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    if *stopping.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tick.tick(), if !closing => {
                let idle = activity.in_flight.load(Ordering::Acquire) == 0;
                let reason = if idle && activity.begun.load(Ordering::Acquire) == 0
                    && activity.started.elapsed() >= limits.header_timeout
                {
                    Some("no_request")
                } else if idle && activity.idle_for() >= limits.idle_timeout {
                    Some("idle")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    metrics.closed.get_or_create(&ReasonLabels { reason }).inc();
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
