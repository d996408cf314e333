//! Balancing: power of two choices over peak-EWMA latency × (in flight + 1), among the
//! endpoints that are healthy (while at least half are) and whose circuit admits a
//! call; outcomes feed back into the estimate and the breaker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::Admission;
use super::metrics::BackendLabels;
use super::{Endpoint, Shared, lock};

impl Shared {
    /// An endpoint for the next attempt (avoiding `avoid` if another will do), admitted
    /// by its circuit; or the status to fail with at once.
    pub(super) fn pick(
        &self,
        avoid: Option<SocketAddr>,
    ) -> Result<(Arc<Endpoint>, bool), tonic::Status> {
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
            let admission = lock(&endpoint.state).breaker.admit(now);
            if admission != Admission::Refused {
                self.publish_breaker(endpoint);
                return Ok((endpoint.clone(), admission == Admission::Probe));
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

    pub(super) fn publish_breaker(&self, endpoint: &Endpoint) {
        let state = lock(&endpoint.state).breaker.state_at(Instant::now());
        endpoint.breaker_gauge.set(state as i64);
    }

    /// Records an attempt's outcome on its endpoint.
    pub(super) fn record(&self, endpoint: &Endpoint, probe: bool, ok: bool, latency: Duration) {
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
}

impl Endpoint {
    /// Peak-EWMA latency × (calls in flight + 1): what p2c compares.
    pub(super) fn cost(&self, now: Instant) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Acquire) as f64;
        lock(&self.state).ewma.estimate(now) * (in_flight + 1.0)
    }
}
