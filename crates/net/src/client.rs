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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use borough_config_client::{Env, SettingsError};
use borough_telemetry::Metrics;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a backend's client discovers, balances, breaks circuits and retries.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `BOROUGH_RESOLVE_INTERVAL` (5s): how often DNS names are resolved again.
    pub resolve_interval: Duration,
    /// `BOROUGH_HEALTH_INTERVAL` (1s): how often each endpoint's gRPC health is checked.
    pub health_interval: Duration,
    /// `BOROUGH_CONNECT_TIMEOUT` (1s).
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

/// When an endpoint's circuit opens and how it closes again.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// `BOROUGH_BREAKER_WINDOW` (1s): the sliding window failures are counted over.
    pub window: Duration,
    /// `BOROUGH_BREAKER_MIN_CALLS` (5): calls in the window before the rate counts.
    pub min_calls: u32,
    /// `BOROUGH_BREAKER_FAILURE_RATE` (0.5): the failure rate that opens the circuit.
    pub failure_rate: f64,
    /// `BOROUGH_BREAKER_OPEN_FOR` (1s): how long an open circuit fails fast.
    pub open_for: Duration,
    /// `BOROUGH_BREAKER_PROBES` (3): probe calls that must succeed to close it again.
    pub probes: u32,
}

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// `BOROUGH_RETRY_MAX_ATTEMPTS` (3): attempts per call, the first included.
    pub max_attempts: u32,
    /// `BOROUGH_RETRY_BASE` (25ms) and `BOROUGH_RETRY_CAP` (500ms): the backoff before
    /// retry n is uniformly random in [0, min(cap, base × 2^n)).
    pub base: Duration,
    pub cap: Duration,
    /// `BOROUGH_RETRY_BUDGET` (0.2): retries may add at most this fraction of the calls made,
    /// plus `BOROUGH_RETRY_MIN_PER_SEC` (10) a second, so they cannot multiply an outage.
    pub budget_ratio: f64,
    pub budget_min_per_sec: f64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            resolve_interval: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            breaker: BreakerSettings {
                window: Duration::from_secs(1),
                min_calls: 5,
                failure_rate: 0.5,
                open_for: Duration::from_secs(1),
                probes: 3,
            },
            retry: RetrySettings {
                max_attempts: 3,
                base: Duration::from_millis(25),
                cap: Duration::from_millis(500),
                budget_ratio: 0.2,
                budget_min_per_sec: 10.0,
            },
        }
    }
}

impl ClientSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let d = ClientSettings::default();
        let invalid = |name: &str, value: String, reason: &str| SettingsError::Invalid {
            name: name.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        let settings = ClientSettings {
            resolve_interval: env.duration("BOROUGH_RESOLVE_INTERVAL", d.resolve_interval)?,
            health_interval: env.duration("BOROUGH_HEALTH_INTERVAL", d.health_interval)?,
            connect_timeout: env.duration("BOROUGH_CONNECT_TIMEOUT", d.connect_timeout)?,
            breaker: BreakerSettings {
                window: env.duration("BOROUGH_BREAKER_WINDOW", d.breaker.window)?,
                min_calls: env.parse("BOROUGH_BREAKER_MIN_CALLS", d.breaker.min_calls)?,
                failure_rate: env.parse("BOROUGH_BREAKER_FAILURE_RATE", d.breaker.failure_rate)?,
                open_for: env.duration("BOROUGH_BREAKER_OPEN_FOR", d.breaker.open_for)?,
                probes: env.parse("BOROUGH_BREAKER_PROBES", d.breaker.probes)?,
            },
            retry: RetrySettings {
                max_attempts: env.parse("BOROUGH_RETRY_MAX_ATTEMPTS", d.retry.max_attempts)?,
                base: env.duration("BOROUGH_RETRY_BASE", d.retry.base)?,
                cap: env.duration("BOROUGH_RETRY_CAP", d.retry.cap)?,
                budget_ratio: env.parse("BOROUGH_RETRY_BUDGET", d.retry.budget_ratio)?,
                budget_min_per_sec: env
                    .parse("BOROUGH_RETRY_MIN_PER_SEC", d.retry.budget_min_per_sec)?,
            },
        };
        let rate = settings.breaker.failure_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(invalid(
                "BOROUGH_BREAKER_FAILURE_RATE",
                rate.to_string(),
                "must be more than 0 and at most 1",
            ));
        }
        if settings.breaker.window.is_zero() {
            return Err(invalid(
                "BOROUGH_BREAKER_WINDOW",
                "0".to_owned(),
                "must be more than zero",
            ));
        }
        if settings.retry.max_attempts == 0 {
            return Err(invalid(
                "BOROUGH_RETRY_MAX_ATTEMPTS",
                "0".to_owned(),
                "must be at least 1 (1: no retries)",
            ));
        }
        let budget = settings.retry.budget_ratio;
        if !(0.0..=1.0).contains(&budget) || !settings.retry.budget_min_per_sec.is_finite() {
            return Err(invalid(
                "BOROUGH_RETRY_BUDGET",
                budget.to_string(),
                "must be between 0 and 1",
            ));
        }
        Ok(settings)
    }
}

/// Which calls may be sent twice.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryPolicy {
    /// Full method paths (`/package.Service/Method`) safe to repeat as they are.
    pub idempotent: &'static [&'static str],
    /// Methods safe to repeat when the call carries an `idempotency-key`.
    pub keyed: &'static [&'static str],
}

impl RetryPolicy {
    fn allows(&self, path: &str, has_key: bool) -> bool {
        self.idempotent.contains(&path) || (has_key && self.keyed.contains(&path))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{var} has an invalid URL {url:?}: {reason}")]
    Url {
        var: &'static str,
        url: String,
        reason: String,
    },
}

/// One configured name: `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

/// The URLs of `var`: `https://` with internal TLS (`tls`), `http://` without.
fn parse_targets(var: &'static str, urls: &str, tls: bool) -> Result<Vec<Target>, BackendError> {
    let wanted = if tls { "https" } else { "http" };
    let mut targets = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let bad = |reason: &str| BackendError::Url {
            var,
            url: borough_config_client::redact_url(url),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("no scheme"))?;
        if scheme != wanted {
            return Err(bad(if tls {
                "calls inside Borough are mutual TLS: use https://"
            } else {
                "BOROUGH_INTERNAL_TLS=off: calls are plaintext: use http://"
            }));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        targets.push(Target {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        });
    }
    if targets.is_empty() {
        return Err(BackendError::Url {
            var,
            url: String::new(),
            reason: "no URL given".to_owned(),
        });
    }
    Ok(targets)
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    backend: &'static str,
    endpoint: String,
}

/// The metrics of every backend client of a process (register once, share).
#[derive(Clone)]
pub struct ClientMetrics {
    breaker_state: Family<EndpointLabels, Gauge>,
    breaker_opened: Family<EndpointLabels, Counter>,
    healthy: Family<EndpointLabels, Gauge>,
    retries: Family<BackendLabels, Counter>,
    retries_refused: Family<BackendLabels, Counter>,
    fast_failures: Family<BackendLabels, Counter>,
    endpoints: Family<BackendLabels, Gauge>,
    resolve_failures: Family<BackendLabels, Counter>,
}

impl ClientMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = ClientMetrics {
            breaker_state: Family::default(),
            breaker_opened: Family::default(),
            healthy: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            fast_failures: Family::default(),
            endpoints: Family::default(),
            resolve_failures: Family::default(),
        };
        metrics.register(
            "breaker_state",
            "Circuit state per backend endpoint: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        metrics.register(
            "breaker_opened",
            "Times an endpoint's circuit opened",
            m.breaker_opened.clone(),
        );
        metrics.register(
            "backend_endpoint_healthy",
            "1 while an endpoint passes its gRPC health check",
            m.healthy.clone(),
        );
        metrics.register(
            "client_retries",
            "Calls sent again after UNAVAILABLE or a connection failure",
            m.retries.clone(),
        );
        metrics.register(
            "client_retries_refused",
            "Retries not made because the retry budget was spent",
            m.retries_refused.clone(),
        );
        metrics.register(
            "client_fast_failures",
            "Calls failed at once because every endpoint's circuit was open",
            m.fast_failures.clone(),
        );
        metrics.register(
            "backend_endpoints",
            "Addresses currently discovered per backend",
            m.endpoints.clone(),
        );
        metrics.register(
            "backend_resolve_failures",
            "Failed DNS resolutions (the last good addresses were kept)",
            m.resolve_failures.clone(),
        );
        m
    }
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

    /// Makes the endpoint set match the resolved addresses, keeping existing endpoints
    /// (their connections, health and circuit) for addresses still there.
    fn rebuild_endpoints(&self) {
        let mut addrs: Vec<(SocketAddr, &str)> = Vec::new();
        {
            let resolved = lock(&self.resolved);
            for target in &self.targets {
                for addr in resolved.get(target).into_iter().flatten() {
                    if !addrs.iter().any(|(a, _)| a == addr) {
                        addrs.push((*addr, target.scheme.as_str()));
                    }
                }
            }
        }
        let current = self.snapshot();
        if current.len() == addrs.len()
            && current
                .iter()
                .all(|e| addrs.iter().any(|(a, _)| *a == e.addr))
        {
            return;
        }
        let mut next = Vec::with_capacity(addrs.len());
        for (addr, scheme) in addrs {
            match current.iter().find(|e| e.addr == addr) {
                Some(existing) => next.push(existing.clone()),
                None => {
                    let Some(endpoint) = Endpoint::new(self, scheme, addr) else {
                        continue;
                    };
                    tracing::info!(backend = self.name, endpoint = %addr, "endpoint added");
                    next.push(Arc::new(endpoint));
                }
            }
        }
        for gone in current
            .iter()
            .filter(|e| !next.iter().any(|n| n.addr == e.addr))
        {
            tracing::info!(backend = self.name, endpoint = %gone.addr, "endpoint removed");
            let labels = gone.labels.clone();
            self.metrics.breaker_state.remove(&labels);
            self.metrics.healthy.remove(&labels);
        }
        self.metrics
            .endpoints
            .get_or_create(&BackendLabels { backend: self.name })
            .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    async fn resolve(&self) {
        for target in &self.targets {
            if target.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(found) => {
                    let mut addrs: Vec<SocketAddr> = found.collect();
                    addrs.sort();
                    addrs.dedup();
                    if addrs.is_empty() {
                        self.metrics
                            .resolve_failures
                            .get_or_create(&BackendLabels { backend: self.name })
                            .inc();
                        continue;
                    }
                    lock(&self.resolved).insert(target.clone(), addrs);
                }
                Err(e) => {
                    self.metrics
                        .resolve_failures
                        .get_or_create(&BackendLabels { backend: self.name })
                        .inc();
                    tracing::warn!(backend = self.name, host = %target.host, error = %e,
                        "resolving failed: keeping the last good addresses");
                }
            }
        }
        self.rebuild_endpoints();
        self.discovered.send_replace(true);
    }

    async fn check_health(&self) {
        let endpoints = self.snapshot();
        let checks = endpoints.iter().map(|endpoint| async move {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(endpoint.channel.clone());
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(self.settings.health_interval.max(Duration::from_millis(200)));
            let serving = matches!(
                client.check(request).await,
                Ok(reply) if reply.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
            let was = endpoint.healthy.swap(serving, Ordering::AcqRel);
            if was != serving {
                tracing::info!(backend = self.name, endpoint = %endpoint.addr, serving, "endpoint health changed");
            }
            self.metrics
                .healthy
                .get_or_create(&endpoint.labels)
                .set(i64::from(serving));
        });
        futures_util::future::join_all(checks).await;
    }

    /// An endpoint for the next attempt (avoiding `avoid` if another will do), admitted
    /// by its circuit; or the status to fail with at once.
    fn pick(&self, avoid: Option<SocketAddr>) -> Result<(Arc<Endpoint>, bool), tonic::Status> {
        let endpoints = self.snapshot();
        if endpoints.is_empty() {
            return Err(tonic::Status::unavailable(format!(
                "no address is known for the {} service",
                self.name
            )));
        }
        let now = Instant::now();
        let healthy = endpoints
            .iter()
            .filter(|e| e.healthy.load(Ordering::Acquire))
            .count();
        let use_health = healthy * 2 >= endpoints.len();
        let eligible = |e: &&Arc<Endpoint>, avoid: Option<SocketAddr>| {
            (!use_health || e.healthy.load(Ordering::Acquire))
                && Some(e.addr) != avoid
                && lock(&e.state).breaker.could_admit(now)
        };
        // Power of two choices among the eligible endpoints (collected on the stack).
        let mut candidates: smallvec::SmallVec<[&Arc<Endpoint>; 8]> =
            endpoints.iter().filter(|e| eligible(e, avoid)).collect();
        if candidates.is_empty() && avoid.is_some() {
            candidates = endpoints.iter().filter(|e| eligible(e, None)).collect();
        }
        let chosen = match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (ca, cb) = (candidates[a].cost(now), candidates[b].cost(now));
                Some(if ca <= cb {
                    candidates[a]
                } else {
                    candidates[b]
                })
            }
        };
        if let Some(endpoint) = chosen {
            let admitted = lock(&endpoint.state).breaker.admit(now);
            if let Some(probe) = admitted {
                self.publish_breaker(endpoint);
                return Ok((endpoint.clone(), probe));
            }
        }
        self.metrics
            .fast_failures
            .get_or_create(&BackendLabels { backend: self.name })
            .inc();
        let wait = endpoints
            .iter()
            .map(|e| lock(&e.state).breaker.open_remaining(now))
            .min()
            .unwrap_or(Duration::from_secs(1));
        let mut status = tonic::Status::unavailable(format!(
            "the {} service is failing: every endpoint's circuit is open",
            self.name
        ));
        status.metadata_mut().insert(
            borough_error::RETRY_AFTER_METADATA,
            tonic::metadata::MetadataValue::from(borough_error::whole_seconds_up(wait)),
        );
        Err(status)
    }

    fn publish_breaker(&self, endpoint: &Endpoint) {
        let state = lock(&endpoint.state).breaker.state_at(Instant::now());
        endpoint.breaker_gauge.set(state as i64);
    }

    /// Records an attempt's outcome on its endpoint.
    fn record(&self, endpoint: &Endpoint, probe: bool, ok: bool, latency: Duration) {
        let opened = {
            let mut state = lock(&endpoint.state);
            let now = Instant::now();
            state.ewma.observe(latency, now);
            state.breaker.record(ok, probe, now)
        };
        if opened {
            tracing::warn!(backend = self.name, endpoint = %endpoint.addr, "circuit opened");
            self.metrics
                .breaker_opened
                .get_or_create(&endpoint.labels)
                .inc();
        }
        self.publish_breaker(endpoint);
    }

    async fn call(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(borough_tenancy::context::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        let retryable = self.policy.allows(
            request.uri().path(),
            request
                .headers()
                .contains_key(borough_proto::IDEMPOTENCY_KEY),
        ) && self.settings.retry.max_attempts > 1;
        lock(&self.budget).deposit(Instant::now());
        self.wait_for_discovery(deadline).await;

        if !retryable {
            let (endpoint, probe) = self.pick(None)?;
            return self.attempt(&endpoint, probe, request).await;
        }

        // Safe to repeat: keep the (small, unary) request to send it again.
        let (parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let mut avoid = None;
        let mut attempt = 1;
        loop {
            let (endpoint, probe) = self.pick(avoid)?;
            let mut request =
                http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            *request.extensions_mut() = parts.extensions.clone();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Box::new(tonic::Status::deadline_exceeded(
                        "the call's deadline passed before it could be sent",
                    )));
                }
                if let Ok(value) =
                    http::HeaderValue::from_str(&format!("{}m", left.as_millis().max(1)))
                {
                    request.headers_mut().insert("grpc-timeout", value);
                }
            }
            let outcome = self.attempt(&endpoint, probe, request).await;
            let again = match &outcome {
                // Refused unprocessed by load shedding: another replica may take it. Other
                // UNAVAILABLE replies say a dependency (the database) is down: every
                // replica shares it, and the service has already failed fast.
                Ok(response) => {
                    grpc_status(response) == Some(tonic::Code::Unavailable)
                        && response.headers().contains_key(crate::shed::SHED_METADATA)
                }
                Err(e) => is_connection_failure(e.as_ref()),
            };
            if !again || attempt >= self.settings.retry.max_attempts {
                return outcome;
            }
            let delay = backoff(self.settings.retry, attempt);
            if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) <= delay) {
                return outcome; // No time left to try again: never retry past the deadline.
            }
            if !lock(&self.budget).withdraw(Instant::now()) {
                self.metrics
                    .retries_refused
                    .get_or_create(&BackendLabels { backend: self.name })
                    .inc();
                return outcome;
            }
            self.metrics
                .retries
                .get_or_create(&BackendLabels { backend: self.name })
                .inc();
            tracing::debug!(backend = self.name, endpoint = %endpoint.addr, attempt, ?delay, "retrying");
            tokio::time::sleep(delay).await;
            avoid = Some(endpoint.addr);
            attempt += 1;
        }
    }

    async fn wait_for_discovery(&self, deadline: Option<Instant>) {
        if *self.discovered.borrow() {
            return; // Every call after the first resolution: no subscription.
        }
        let mut discovered = self.discovered.subscribe();
        let limit = deadline.map_or(Duration::from_secs(5), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let _ = tokio::time::timeout(limit, discovered.wait_for(|done| *done)).await;
    }

    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        probe: bool,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut guard = InFlight::new(self, endpoint, probe);
        let started = Instant::now();
        let result = endpoint.channel.clone().oneshot(request).await;
        let latency = started.elapsed();
        match result {
            Ok(response) => {
                guard.done(true, latency);
                Ok(response)
            }
            Err(e) => {
                let e: BoxError = e.into();
                tracing::debug!(backend = self.name, endpoint = %endpoint.addr, error = ?e, "attempt failed");
                if is_timeout(e.as_ref()) {
                    guard.done(false, latency);
                    return Err(e);
                }
                guard.done(false, latency);
                // Transport failures become UNAVAILABLE (503 at the edge); for a call that
                // is not retried, whether it took effect is unknown, and the message says so.
                Err(Box::new(tonic::Status::unavailable(format!(
                    "the connection to the {} service failed ({e}); the call may or may not \
                     have taken effect",
                    self.name
                ))))
            }
        }
    }
}

/// Counts an attempt in flight on its endpoint; an attempt dropped unfinished (the caller
/// gave up) releases its probe slot without counting as an outcome.
struct InFlight<'a> {
    shared: &'a Shared,
    endpoint: &'a Endpoint,
    probe: bool,
    finished: bool,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, endpoint: &'a Endpoint, probe: bool) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared,
            endpoint,
            probe,
            finished: false,
        }
    }

    fn done(&mut self, ok: bool, latency: Duration) {
        self.finished = true;
        self.shared.record(self.endpoint, self.probe, ok, latency);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished && self.probe {
            lock(&self.endpoint.state).breaker.release_probe();
        }
    }
}

/// The gRPC status of a trailers-only reply (the status in the headers).
fn grpc_status(response: &http::Response<Body>) -> Option<tonic::Code> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A failure to reach the endpoint or keep the connection (refused, reset, closed, a
/// stream refused while draining) — not a spent deadline.
fn is_connection_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return false;
        }
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return status.code() == tonic::Code::Unavailable;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
            );
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && (hyper.is_canceled() || hyper.is_closed() || hyper.is_incomplete_message())
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // REFUSED_STREAM: the server did not process the stream (draining).
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Full jitter: uniformly random in [0, min(cap, base × 2^attempt)).
fn backoff(retry: RetrySettings, attempt: u32) -> Duration {
    let ceiling = retry
        .base
        .saturating_mul(1_u32 << attempt.min(16))
        .min(retry.cap);
    ceiling.mul_f64(fastrand::f64())
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
            let (service, method) = borough_telemetry::trace::rpc_names(path);
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

    /// Peak-EWMA latency × (calls in flight + 1): what p2c compares.
    fn cost(&self, now: Instant) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Acquire) as f64;
        lock(&self.state).ewma.estimate(now) * (in_flight + 1.0)
    }
}

/// Latency estimate that jumps up to any slower observation at once and decays back
/// (time constant 10 s), so a slowing endpoint loses traffic immediately.
struct PeakEwma {
    nanos: f64,
    at: Instant,
}

const EWMA_DECAY_NANOS: f64 = 10e9;

impl PeakEwma {
    fn new() -> Self {
        // A new endpoint looks fast (1 ms) so that it is tried.
        PeakEwma {
            nanos: 1e6,
            at: Instant::now(),
        }
    }

    fn estimate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        // Decays toward zero between observations: an idle endpoint is tried again.
        self.nanos * (-elapsed / EWMA_DECAY_NANOS).exp()
    }

    fn observe(&mut self, latency: Duration, now: Instant) {
        let rtt = latency.as_nanos() as f64;
        if rtt > self.nanos {
            self.nanos = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let w = (-elapsed / EWMA_DECAY_NANOS).exp();
            self.nanos = self.nanos * w + rtt * (1.0 - w);
        }
        self.at = now;
    }
}

/// A circuit's state, as the metric reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: u32, passed: u32 },
}

/// One endpoint's circuit breaker over a sliding window of ten buckets.
#[derive(Debug)]
struct Breaker {
    settings: BreakerSettings,
    circuit: Circuit,
    origin: Instant,
    /// (bucket number, calls, failures)
    buckets: [(u64, u32, u32); 10],
}

impl Breaker {
    fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            circuit: Circuit::Closed,
            origin: Instant::now(),
            buckets: [(u64::MAX, 0, 0); 10],
        }
    }

    fn bucket_of(&self, now: Instant) -> u64 {
        let width = (self.settings.window.as_nanos() / 10).max(1);
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos() / width)
            .unwrap_or(u64::MAX)
    }

    fn state_at(&self, now: Instant) -> BreakerState {
        match self.circuit {
            Circuit::Closed => BreakerState::Closed,
            Circuit::Open { until } if now < until => BreakerState::Open,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn could_admit(&self, now: Instant) -> bool {
        match self.circuit {
            Circuit::Closed => true,
            Circuit::Open { until } => now >= until,
            Circuit::HalfOpen { probing, .. } => probing < self.settings.probes,
        }
    }

    fn open_remaining(&self, now: Instant) -> Duration {
        match self.circuit {
            Circuit::Open { until } => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Admits a call: `Some(false)` a normal call, `Some(true)` a probe, `None` refused.
    fn admit(&mut self, now: Instant) -> Option<bool> {
        match self.circuit {
            Circuit::Closed => Some(false),
            Circuit::Open { until } if now < until => None,
            Circuit::Open { .. } => {
                self.circuit = Circuit::HalfOpen {
                    probing: 1,
                    passed: 0,
                };
                Some(true)
            }
            Circuit::HalfOpen { probing, passed } if probing < self.settings.probes => {
                self.circuit = Circuit::HalfOpen {
                    probing: probing + 1,
                    passed,
                };
                Some(true)
            }
            Circuit::HalfOpen { .. } => None,
        }
    }

    fn release_probe(&mut self) {
        if let Circuit::HalfOpen { probing, passed } = self.circuit {
            self.circuit = Circuit::HalfOpen {
                probing: probing.saturating_sub(1),
                passed,
            };
        }
    }

    /// Records an outcome; true when this opened the circuit.
    fn record(&mut self, ok: bool, probe: bool, now: Instant) -> bool {
        match self.circuit {
            Circuit::HalfOpen { probing, passed } if probe => {
                if ok {
                    let passed = passed + 1;
                    if passed >= self.settings.probes {
                        self.circuit = Circuit::Closed;
                        self.buckets = [(u64::MAX, 0, 0); 10];
                    } else {
                        self.circuit = Circuit::HalfOpen {
                            probing: probing.saturating_sub(1),
                            passed,
                        };
                    }
                    false
                } else {
                    self.circuit = Circuit::Open {
                        until: now + self.settings.open_for,
                    };
                    true
                }
            }
            Circuit::Closed => {
                let bucket = self.bucket_of(now);
                let slot = &mut self.buckets[(bucket % 10) as usize];
                if slot.0 != bucket {
                    *slot = (bucket, 0, 0);
                }
                slot.1 += 1;
                slot.2 += u32::from(!ok);
                let (calls, failures) = self
                    .buckets
                    .iter()
                    .filter(|(b, _, _)| *b != u64::MAX && bucket.saturating_sub(*b) < 10)
                    .fold((0_u32, 0_u32), |(c, f), (_, bc, bf)| (c + bc, f + bf));
                if calls >= self.settings.min_calls
                    && f64::from(failures) >= self.settings.failure_rate * f64::from(calls)
                {
                    self.circuit = Circuit::Open {
                        until: now + self.settings.open_for,
                    };
                    self.buckets = [(u64::MAX, 0, 0); 10];
                    true
                } else {
                    false
                }
            }
            // Outcomes of calls admitted before the circuit opened do not count.
            _ => false,
        }
    }
}

/// The retry budget: each call deposits `ratio` of a retry, each retry withdraws one;
/// plus `min_per_sec` retries a second for quiet periods. Capped at ten seconds' worth.
struct Budget {
    settings: RetrySettings,
    balance: f64,
    at: Instant,
}

impl Budget {
    fn new(settings: RetrySettings) -> Self {
        Budget {
            settings,
            balance: settings.budget_min_per_sec,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let cap =
            (self.settings.budget_min_per_sec * 10.0).max(1.0) + 100.0 * self.settings.budget_ratio;
        self.balance = (self.balance + elapsed * self.settings.budget_min_per_sec).min(cap);
    }

    fn deposit(&mut self, now: Instant) {
        self.refill(now);
        self.balance += self.settings.budget_ratio;
    }

    fn withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            window: Duration::from_secs(1),
            min_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_millis(100),
            probes: 2,
        })
    }

    #[test]
    fn the_circuit_opens_on_the_failure_rate_and_closes_after_passing_probes() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(!b.record(false, false, now), "fewer than min_calls");
        }
        assert!(b.record(true, false, now) || b.record(false, false, now));
        assert_eq!(b.state_at(now), BreakerState::Open);
        assert_eq!(b.admit(now), None, "fails fast while open");
        let later = now + Duration::from_millis(150);
        assert_eq!(b.admit(later), Some(true), "a probe once open_for passed");
        assert_eq!(b.admit(later), Some(true));
        assert_eq!(b.admit(later), None, "no more than `probes` at once");
        assert!(!b.record(true, true, later));
        assert!(!b.record(true, true, later));
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..5 {
            b.record(false, false, now);
        }
        let later = now + Duration::from_millis(150);
        assert_eq!(b.admit(later), Some(true));
        assert!(b.record(false, true, later));
        assert_eq!(b.state_at(later), BreakerState::Open);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let mut b = breaker();
        let now = Instant::now();
        for _ in 0..4 {
            b.record(false, false, now);
        }
        let later = now + Duration::from_millis(1500);
        for _ in 0..4 {
            assert!(!b.record(true, false, later));
        }
        assert!(
            !b.record(false, false, later),
            "1 failure in 5 recent calls"
        );
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn the_retry_budget_allows_a_fraction_of_calls_plus_a_floor() {
        let settings = RetrySettings {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            budget_ratio: 0.1,
            budget_min_per_sec: 0.0,
        };
        let mut budget = Budget::new(settings);
        let now = Instant::now();
        for _ in 0..100 {
            budget.deposit(now);
        }
        let allowed = (0..100).filter(|_| budget.withdraw(now)).count();
        assert!(
            (9..=10).contains(&allowed),
            "{allowed} retries for 100 calls"
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        let retry = ClientSettings::default().retry;
        for attempt in 1..10 {
            let delay = backoff(retry, attempt);
            assert!(delay < retry.cap.min(retry.base * (1 << attempt)));
        }
    }

    #[test]
    fn peak_ewma_jumps_to_a_slow_call_and_decays_back() {
        let mut ewma = PeakEwma::new();
        let now = Instant::now();
        ewma.observe(Duration::from_millis(50), now);
        assert!(ewma.estimate(now) >= 50e6 * 0.99);
        let later = now + Duration::from_secs(20);
        assert!(ewma.estimate(later) < 10e6);
    }

    #[test]
    fn url_lists_parse_and_bad_ones_name_their_variable() {
        let targets = parse_targets("V", "https://a:1, https://10.0.0.1:2,https://[::1]:3", true)
            .expect("valid");
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[2].host, "::1");
        for bad in ["", "a:1", "http://a:1", "https://"] {
            let err = parse_targets("V", bad, true).expect_err(bad);
            assert!(err.to_string().contains('V'), "{err}");
        }
        // Plaintext only when internal TLS is off.
        assert!(parse_targets("V", "http://a:1", false).is_ok());
        assert!(parse_targets("V", "https://a:1", false).is_err());
    }

    #[test]
    fn retry_policy_needs_an_idempotent_method_or_a_key() {
        let policy = RetryPolicy {
            idempotent: &["/s.S/Get"],
            keyed: &["/s.S/Create"],
        };
        assert!(policy.allows("/s.S/Get", false));
        assert!(!policy.allows("/s.S/Create", false));
        assert!(policy.allows("/s.S/Create", true));
        assert!(!policy.allows("/s.S/Delete", true));
    }
}
