//! The router's metrics: pools open, connections per pool, tenants waiting at their cap.

use std::sync::Arc;

use borough_telemetry::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct PoolLabels {
    pub(super) pool: String,
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct TenantLabels {
    pub(super) tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

/// Tenants named in the wait/rejection metrics (the ones hitting their cap); later ones
/// are counted as `other`.
const MAX_TENANT_LABELS: usize = 100;

#[derive(Clone)]
pub(super) struct RouterMetrics {
    pub(super) tenant_labels: Arc<borough_telemetry::metrics::LabelCap>,
    pub(super) pools_open: Gauge,
    pub(super) connections: Family<PoolLabels, Gauge>,
    pub(super) waits: Family<TenantLabels, Counter>,
    pub(super) rejections: Family<TenantLabels, Counter>,
    pub(super) pool_closes: Family<ReasonLabels, Counter>,
}

impl RouterMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        let m = RouterMetrics {
            tenant_labels: Arc::new(borough_telemetry::metrics::LabelCap::new(MAX_TENANT_LABELS)),
            pools_open: Gauge::default(),
            connections: Family::default(),
            waits: Family::default(),
            rejections: Family::default(),
            pool_closes: Family::default(),
        };
        metrics.register(
            "tenant_pools_open",
            "Dedicated tenant pools open (bounded by BOROUGH_MAX_TENANT_POOLS)",
            m.pools_open.clone(),
        );
        metrics.register(
            "db_pool_connections",
            "Connections per pool (default, or tenant:<id>[:read]) by state",
            m.connections.clone(),
        );
        metrics.register(
            "tenant_connection_waits",
            "Transactions that waited because their tenant was at its connection cap",
            m.waits.clone(),
        );
        metrics.register(
            "tenant_connection_rejections",
            "Transactions refused (503) because their tenant stayed at its connection cap",
            m.rejections.clone(),
        );
        metrics.register(
            "tenant_pool_closes",
            "Dedicated pools closed, by reason (idle, lru, moved)",
            m.pool_closes.clone(),
        );
        m
    }
}
