//! Calling a gRPC backend the resilient way: discovery, health, balancing, circuit
//! breaking and retries, as one tower service that tonic's generated clients run on.
//!
//! A [`Backend`] is named by a URL list (`http://user-0:50051,http://user-1:50051`) where
//! each host may be a DNS name with several addresses (a Kubernetes headless Service, a
//! scaled compose service). It:
//!
//! - **discovers**: re-resolves every name each `resolve_interval`; a name that fails to
//!   resolve keeps its last good addresses;
//! - **checks health** with `grpc.health.v1` each `health_interval`: an endpoint that is
//!   not serving (draining, say) gets no new calls while at least half of the set is
//!   healthy; below that, health is ignored (a whole set failing its checks is more likely
//!   a shared dependency than every replica at once, and the query service still answers
//!   from its cache then);
//! - **balances** with power of two choices over peak-EWMA latency × (in flight + 1);
//! - **breaks circuits** per endpoint: the failure rate (connection failures, resets,
//!   timeouts) over a sliding window opens it; while open the endpoint gets no calls, and
//!   when every endpoint is open calls fail at once with `UNAVAILABLE` + `retry-after`;
//!   after `open_for`, a few probe calls decide whether it closes again;
//! - **retries** only calls that are safe to repeat (methods named idempotent, or writes
//!   carrying an `idempotency-key`), only after a connection failure or an `UNAVAILABLE`
//!   from load shedding (not processed at all; a dependency's outage is not retried), with
//!   exponential backoff and full jitter, a cap on attempts, never past the call's deadline,
//!   and only while the retry budget (a fraction of recent calls) allows.
//!
//! One file per concern: `settings`, `targets` and `discovery`, `health`, `balance` (p2c)
//! and `ewma`, `breaker`, `policy` (which calls may be sent twice), `budget` and `retry`
//! (the call loop), `classify` (what a failure was), `metrics`. This file holds the
//! backend, its endpoints and the tower service tonic's clients call; it imports only the
//! leaf files, and the files that add methods to its `Shared` import it — no loop.

mod balance;
mod breaker;
mod budget;
mod classify;
mod discovery;
mod ewma;
mod health;
mod metrics;
mod policy;
mod retry;
mod settings;
mod targets;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tonic::body::Body;
use tonic::transport::Channel;

pub use breaker::BreakerState;
pub use metrics::ClientMetrics;
pub use policy::RetryPolicy;
pub use settings::{BreakerSettings, ClientSettings, RetrySettings};
pub use targets::BackendError;

use breaker::Breaker;
use budget::Budget;
use ewma::PeakEwma;
use metrics::EndpointLabels;
use targets::{Target, parse_targets};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC backend: every address behind its names. Cheap to clone; the background
/// discovery and health checks end when the last clone is dropped.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

struct Shared {
    name: &'static str,
    targets: Vec<Target>,
    settings: ClientSettings,
    policy: RetryPolicy,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// Each target's last good addresses.
    resolved: Mutex<HashMap<Target, Vec<SocketAddr>>>,
    discovered: tokio::sync::watch::Sender<bool>,
    budget: Mutex<Budget>,
    metrics: ClientMetrics,
    /// Mutual TLS material; `None`: plaintext.
    tls: Option<borough_tls::Materials>,
}

impl Backend {
    /// A backend named `name` (for metrics and errors) at `urls` (comma-separated), whose
    /// variable `var` is named in errors. Addresses given as IP literals are usable at
    /// once; DNS names are resolved in the background, and calls wait for the first
    /// resolution (within their deadline).
    /// Calls are mutual TLS on `tls`, to servers whose certificate names the service
    /// `name`; plaintext without it (internal TLS off).
    pub fn new(
        name: &'static str,
        var: &'static str,
        urls: &str,
        settings: ClientSettings,
        policy: RetryPolicy,
        metrics: &ClientMetrics,
        tls: Option<borough_tls::Materials>,
    ) -> Result<Self, BackendError> {
        let targets = parse_targets(var, urls, tls.is_some())?;
        let mut literal = HashMap::new();
        for target in &targets {
            if let Ok(ip) = target.host.parse::<IpAddr>() {
                literal.insert(target.clone(), vec![SocketAddr::new(ip, target.port)]);
            }
        }
        let all_literal = literal.len() == targets.len();
        let shared = Arc::new(Shared {
            name,
            targets,
            policy,
            endpoints: RwLock::new(Arc::new(Vec::new())),
            resolved: Mutex::new(literal),
            discovered: tokio::sync::watch::channel(all_literal).0,
            budget: Mutex::new(Budget::new(settings.retry)),
            metrics: metrics.clone(),
            settings,
            tls,
        });
        shared.rebuild_endpoints();
        tokio::spawn(maintain(Arc::downgrade(&shared)));
        Ok(Backend { shared })
    }

    /// Endpoints discovered now, and how many of them pass their health check.
    pub fn endpoint_counts(&self) -> (usize, usize) {
        let endpoints = self.shared.snapshot();
        let healthy = endpoints
            .iter()
            .filter(|e| e.healthy.load(Ordering::Acquire))
            .count();
        (endpoints.len(), healthy)
    }

    /// The endpoints' addresses and whether each is healthy and its circuit closed.
    pub fn endpoints(&self) -> Vec<(SocketAddr, bool, BreakerState)> {
        self.shared
            .snapshot()
            .iter()
            .map(|e| {
                (
                    e.addr,
                    e.healthy.load(Ordering::Acquire),
                    lock(&e.state).breaker.state_at(Instant::now()),
                )
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl tower::Service<http::Request<Body>> for Backend {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call picks its endpoint (and waits for its connection) itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // One client span per call (retries included), whose context the server
        // continues, when traces are exported; otherwise the call runs in the caller's
        // span (its request id on any line logged meanwhile) and costs no span.
        let span = if borough_telemetry::otel::enabled() {
            let path = request.uri().path();
            let (service, method) = borough_telemetry::spans::rpc_names(path);
            let span = tracing::info_span!(
                "grpc.client",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                backend = self.shared.name,
            );
            span
        } else {
            tracing::Span::current()
        };
        // The trace context travels either way (without export: the caller's ids, so that
        // the services' log lines join the gateway's).
        borough_telemetry::otel::inject(&span, request.headers_mut());
        Box::pin(tracing::Instrument::instrument(
            self.shared.clone().call(request),
            span,
        ))
    }
}

/// Discovery and health checks, until the backend is dropped.
async fn maintain(shared: Weak<Shared>) {
    let mut last_resolve: Option<Instant> = None;
    loop {
        let Some(backend) = shared.upgrade() else {
            return;
        };
        let interval = backend.settings.health_interval;
        if last_resolve.is_none_or(|at| at.elapsed() >= backend.settings.resolve_interval) {
            backend.resolve().await;
            last_resolve = Some(Instant::now());
        }
        backend.check_health().await;
        drop(backend);
        tokio::time::sleep(interval).await;
    }
}

/// One address of a backend.
struct Endpoint {
    addr: SocketAddr,
    channel: Channel,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    state: Mutex<EndpointState>,
    labels: EndpointLabels,
    /// This endpoint's `borough_backend_breaker_state` series, set on every call without
    /// looking it up again.
    breaker_gauge: Gauge,
}

struct EndpointState {
    breaker: Breaker,
    ewma: PeakEwma,
}

impl Endpoint {
    fn new(shared: &Shared, scheme: &str, addr: SocketAddr) -> Option<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .ok()?
            .connect_timeout(shared.settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        // One handshake per connection, which then carries every call: the TLS cost is
        // paid once per endpoint, not per call.
        let channel = match &shared.tls {
            Some(materials) => {
                endpoint.connect_with_connector_lazy(borough_tls::client::Connector::new(
                    materials,
                    shared.name,
                    Some(addr),
                    shared.settings.connect_timeout,
                ))
            }
            None => endpoint.connect_lazy(),
        };
        let labels = EndpointLabels {
            backend: shared.name,
            endpoint: addr.to_string(),
        };
        let breaker_gauge = shared.metrics.breaker_state.get_or_create(&labels).clone();
        breaker_gauge.set(0);
        Some(Endpoint {
            breaker_gauge,
            addr,
            channel,
            // Optimistic until the first check: a new replica gets calls at once.
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(EndpointState {
                breaker: Breaker::new(shared.settings.breaker),
                ewma: PeakEwma::new(),
            }),
            labels,
        })
    }
}
