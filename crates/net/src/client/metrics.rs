//! A backend client's metrics (one registration per process, shared by its backends).

use borough_telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BackendLabels {
    pub(super) backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndpointLabels {
    pub(super) backend: &'static str,
    pub(super) endpoint: String,
}

/// The metrics of every backend client of a process (register once, share).
#[derive(Clone)]
pub struct ClientMetrics {
    pub(super) breaker_state: Family<EndpointLabels, Gauge>,
    pub(super) breaker_opened: Family<EndpointLabels, Counter>,
    pub(super) healthy: Family<EndpointLabels, Gauge>,
    pub(super) retries: Family<BackendLabels, Counter>,
    pub(super) retries_refused: Family<BackendLabels, Counter>,
    pub(super) fast_failures: Family<BackendLabels, Counter>,
    pub(super) endpoints: Family<BackendLabels, Gauge>,
    pub(super) resolve_failures: Family<BackendLabels, Counter>,
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
