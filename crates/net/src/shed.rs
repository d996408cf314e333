//! Load shedding: a bound on the work a service does at once, with a short queue.
//!
//! At most `max_in_flight` requests run; up to `max_queue` more wait, each for at most
//! `queue_timeout`, for a slot; anything beyond is refused at once (503 + `Retry-After`
//! at the edge, `UNAVAILABLE` + `retry-after` inside), so an overload never turns into an
//! unbounded queue and ever-growing latency. The limits are read on every admission,
//! so they hot-reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use borough_config_client::ShedLimits;
use borough_config_client::remote::Snapshot;
use borough_telemetry::Metrics;
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};

/// The hot load-shedding limits of the service's platform namespace
/// ([`ShedLimits::MAX_IN_FLIGHT`] and the others' hot keys) over `defaults`, by the same
/// parsers as the environment's.
pub fn parse_limits(snapshot: &Snapshot, defaults: &ShedLimits) -> Result<ShedLimits, String> {
    defaults.updated(&snapshot.hot()).map_err(|e| e.to_string())
}

/// Admission control for one server. Cheap to clone.
#[derive(Clone)]
pub struct Shedder {
    inner: Arc<Inner>,
}

struct Inner {
    limits: watch::Receiver<ShedLimits>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    released: Notify,
    metrics: ShedMetrics,
}

#[derive(Clone)]
struct ShedMetrics {
    in_flight: Gauge,
    queued: Gauge,
    rejected: Counter,
}

/// A request was refused: how long the caller should wait before trying again.
#[derive(Debug, Clone, Copy)]
pub struct Shed {
    pub retry_after: Duration,
    pub max_in_flight: usize,
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server is at its limit of {} requests in flight; retry shortly",
            self.max_in_flight
        )
    }
}

/// A slot of in-flight work; released when dropped.
pub struct Permit {
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.inner.metrics.in_flight.dec();
        self.inner.released.notify_one();
    }
}

impl Shedder {
    pub fn new(limits: watch::Receiver<ShedLimits>, metrics: &Metrics) -> Self {
        let shed = ShedMetrics {
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            rejected: Counter::default(),
        };
        metrics.register(
            "shed_in_flight",
            "Requests being served right now (load shedding's count)",
            shed.in_flight.clone(),
        );
        metrics.register(
            "shed_queued",
            "Requests waiting for an in-flight slot",
            shed.queued.clone(),
        );
        metrics.register(
            "shed_rejected",
            "Requests refused at once because the server was at its limit",
            shed.rejected.clone(),
        );
        Shedder {
            inner: Arc::new(Inner {
                limits,
                in_flight: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                released: Notify::new(),
                metrics: shed,
            }),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    fn try_take(&self, max: usize) -> Option<Permit> {
        let taken = self
            .inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| {
            self.inner.metrics.in_flight.inc();
            Permit {
                inner: self.inner.clone(),
            }
        })
    }

    /// A slot now, or after a short wait in the queue, or [`Shed`] at once.
    pub async fn admit(&self) -> Result<Permit, Shed> {
        let limits = *self.inner.limits.borrow();
        if let Some(permit) = self.try_take(limits.max_in_flight) {
            return Ok(permit);
        }
        let shed = Shed {
            retry_after: Duration::from_secs(1),
            max_in_flight: limits.max_in_flight,
        };
        let queued = self
            .inner
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_queue).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            self.inner.metrics.rejected.inc();
            return Err(shed);
        }
        self.inner.metrics.queued.inc();
        let waited = tokio::time::timeout(limits.queue_timeout, async {
            loop {
                let released = self.inner.released.notified();
                if let Some(permit) = self.try_take(self.inner.limits.borrow().max_in_flight) {
                    return permit;
                }
                released.await;
            }
        })
        .await;
        self.inner.queued.fetch_sub(1, Ordering::AcqRel);
        self.inner.metrics.queued.dec();
        waited.map_err(|_| {
            self.inner.metrics.rejected.inc();
            shed
        })
    }
}

/// The tower layer that sheds load in front of a gRPC server.
#[derive(Clone)]
pub struct ShedLayer {
    shedder: Shedder,
}

impl ShedLayer {
    pub fn new(shedder: Shedder) -> Self {
        ShedLayer { shedder }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            shedder: self.shedder.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ShedService<S> {
    inner: S,
    shedder: Shedder,
}

/// Marks a reply refused by load shedding: the call was not processed at all, so a client
/// may send it to another replica (`borough_net::client` retries only these `UNAVAILABLE`s).
pub const SHED_METADATA: &str = "x-borough-shed";

/// The gRPC reply to a shed call: `UNAVAILABLE` with `retry-after` (seconds) and
/// [`SHED_METADATA`].
fn shed_response(shed: Shed) -> http::Response<tonic::body::Body> {
    let mut status = tonic::Status::unavailable(shed.to_string());
    status.metadata_mut().insert(
        borough_error::RETRY_AFTER_METADATA,
        tonic::metadata::MetadataValue::from(shed.retry_after.as_secs().max(1)),
    );
    status.metadata_mut().insert(
        SHED_METADATA,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    status.into_http()
}

impl<S, B> tower::Service<http::Request<B>> for ShedService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service goes with this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shedder = self.shedder.clone();
        Box::pin(async move {
            // Health checks are never shed: an overloaded server is still alive.
            if request.uri().path().starts_with("/grpc.health.v1.") {
                return inner.call(request).await;
            }
            match shedder.admit().await {
                Ok(permit) => {
                    let response = inner.call(request).await;
                    drop(permit);
                    response
                }
                Err(shed) => Ok(shed_response(shed)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shedder(max_in_flight: usize, max_queue: usize) -> (Shedder, watch::Sender<ShedLimits>) {
        let (tx, rx) = watch::channel(ShedLimits {
            max_in_flight,
            max_queue,
            queue_timeout: Duration::from_millis(50),
        });
        (Shedder::new(rx, &Metrics::new("test")), tx)
    }

    #[tokio::test]
    async fn past_the_limit_and_the_queue_requests_are_refused_at_once() {
        let (shedder, _limits) = shedder(2, 1);
        let a = shedder.admit().await.expect("first");
        let _b = shedder.admit().await.expect("second");
        // One may queue: it gets the slot the first one frees.
        let queued = tokio::spawn({
            let shedder = shedder.clone();
            async move { shedder.admit().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = std::time::Instant::now();
        assert!(shedder.admit().await.is_err(), "the queue is full");
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "refused at once"
        );
        drop(a);
        assert!(
            queued.await.expect("joined"),
            "the queued request got a slot"
        );
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_after_the_queue_timeout() {
        let (shedder, _limits) = shedder(1, 4);
        let _a = shedder.admit().await.expect("first");
        let started = std::time::Instant::now();
        let shed = shedder.admit().await.err().expect("timed out in the queue");
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert_eq!(shed.max_in_flight, 1);
    }

    #[tokio::test]
    async fn raising_the_limit_admits_more_without_a_restart() {
        let (shedder, limits) = shedder(1, 0);
        let _a = shedder.admit().await.expect("first");
        assert!(shedder.admit().await.is_err());
        limits.send_modify(|l| l.max_in_flight = 2);
        assert!(shedder.admit().await.is_ok());
    }

    #[test]
    fn hot_limits_parse_and_bad_values_are_refused() {
        let snapshot = |pairs: serde_json::Value| Snapshot {
            values: serde_json::from_value(pairs).expect("map"),
            ..Snapshot::default()
        };
        let defaults = ShedLimits::default();
        let parsed = parse_limits(
            &snapshot(serde_json::json!({"shed.max_in_flight": 8, "shed.max_queue": 0, "shed.queue_timeout": "20ms"})),
            &defaults,
        )
        .expect("valid");
        assert_eq!(
            parsed,
            ShedLimits {
                max_in_flight: 8,
                max_queue: 0,
                queue_timeout: Duration::from_millis(20)
            }
        );
        for bad in [
            serde_json::json!({"shed.max_in_flight": 0}),
            serde_json::json!({"shed.max_in_flight": "many"}),
            serde_json::json!({"shed.max_queue": -1}),
            serde_json::json!({"shed.queue_timeout": "soon"}),
        ] {
            assert!(
                parse_limits(&snapshot(bad.clone()), &defaults).is_err(),
                "{bad}"
            );
        }
    }
}
