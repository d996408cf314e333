//! What every handler shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borough_tenant::TenantId;

use borough_net::client::Backend;
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_tenant::keys::KeyCache;

/// The shared state behind one `Arc`: axum clones the state for every middleware and
/// handler a request meets, so a clone must be a reference count, not a copy of four
/// gRPC clients (a third of the gateway's CPU per request before it was shared).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub users: UserServiceClient<Backend>,
    pub tenants: TenantAdminServiceClient<Backend>,
    pub query: QueryServiceClient<Backend>,
    pub config: ConfigServiceClient<Backend>,
    pub keys: Arc<KeyCache>,
    /// SHA-256 of the admin token; `None`: the admin API is off. From
    /// `BOROUGH_ADMIN_TOKEN`, rotated hot by `admin.token_sha256` in `platform/gateway`.
    pub admin_token_hash: tokio::sync::watch::Receiver<Option<[u8; 32]>>,
    /// The request deadline and body limit of the API routes, hot-reloaded from
    /// `platform/gateway` (`http.request_timeout`, `http.body_limit`).
    pub limits: tokio::sync::watch::Receiver<Limits>,
    /// Per-tenant token buckets (policies hot from `platform/gateway`).
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
    /// The deadline of exports and imports.
    pub stream_timeout: Duration,
    pub recent_writes: Arc<RecentWrites>,
    /// Load shedding of the API routes (limits hot from `platform/gateway`, `shed.*`).
    pub shedder: borough_net::shed::Shedder,
    /// API keys the directory refused lately (`BOROUGH_AUTH_NEGATIVE_TTL`).
    pub refused_keys: crate::auth_guard::NegativeCache,
    /// Failed authentications per source address.
    pub auth_failures: crate::auth_guard::FailureLimiter,
    /// Config watches open, per tenant and in total.
    pub watches: Arc<crate::watches::WatchSlots>,
    /// Rejected import lines reported in full (the rest are counted).
    pub import_report_limit: usize,
    /// The OpenAPI document served at `/openapi.json`.
    pub openapi: bytes::Bytes,
    /// Console sessions.
    pub console: Arc<crate::console::session::Sessions>,
    /// Whether the gateway serves TLS itself (console cookies are then `Secure`).
    pub edge_tls: bool,
    /// The backends by name, for the admin status.
    pub backends: Vec<(&'static str, Backend)>,
    /// The request metrics of every route (registered once, with the state).
    pub http_metrics: borough_telemetry::metrics::HttpMetrics,
    /// The routes' traffic, read from `http_metrics` for the admin status.
    pub routes: Arc<crate::console::sampler::RouteSampler>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_timeout: Duration,
    pub body_limit: usize,
}

/// Read-your-writes: the version of each user this gateway wrote lately. Reads ask the
/// query service for at least that version, so a cached older copy is never returned to
/// the writer (`i64::MAX` after a delete: never a cached copy).
pub struct RecentWrites {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<(TenantId, uuid::Uuid), (i64, Instant)>>,
}

impl RecentWrites {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        RecentWrites {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn record(&self, tenant: TenantId, user: &str, version: i64) {
        let Ok(user) = uuid::Uuid::parse_str(user) else {
            return; // Not a user id: nothing was written.
        };
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= self.capacity {
                // Full of live entries: forgetting them only costs cache hits, never
                // correctness beyond the cache's own bound.
                entries.clear();
            }
        }
        entries.insert((tenant, user), (version, Instant::now()));
    }

    /// The least version a read of this user must see (0: any).
    pub fn min_version(&self, tenant: TenantId, user: &str) -> i64 {
        // Parsing, not allocating, on every read; an id that does not parse was never
        // written (and the query service will say 400).
        let Ok(user) = uuid::Uuid::parse_str(user) else {
            return 0;
        };
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(tenant, user))
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map_or(0, |(version, _)| *version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_remember_versions_for_their_ttl_within_capacity() {
        let writes = RecentWrites::new(Duration::from_secs(60), 2);
        let tenant = TenantId::new_v7();
        let [a, b, c] = [(); 3].map(|()| uuid::Uuid::now_v7().to_string());
        writes.record(tenant, &a, 3);
        assert_eq!(writes.min_version(tenant, &a), 3);
        assert_eq!(writes.min_version(tenant, &b), 0);
        assert_eq!(writes.min_version(TenantId::new_v7(), &a), 0);
        writes.record(tenant, &b, 1);
        writes.record(tenant, &c, 1);
        let len = writes.entries.lock().map(|e| e.len()).unwrap_or(0);
        assert!(len <= 2);
        let expired = RecentWrites::new(Duration::ZERO, 10);
        expired.record(tenant, &a, 3);
        assert_eq!(expired.min_version(tenant, &a), 0);
    }
}
