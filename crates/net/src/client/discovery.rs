//! Discovery: the configured names, resolved again every `resolve_interval` (a name
//! that fails keeps its last good addresses), and the endpoint set kept in step.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::metrics::BackendLabels;
use super::{Endpoint, Shared, lock};

impl Shared {
    /// Makes the endpoint set match the resolved addresses, keeping existing endpoints
    /// (their connections, health and circuit) for addresses still there.
    pub(super) fn rebuild_endpoints(&self) {
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

    pub(super) async fn resolve(&self) {
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
}
