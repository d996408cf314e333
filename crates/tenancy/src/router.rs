//! The per-tenant pool router.
//!
//! Callers ask for a transaction *for a tenant* ([`PoolRouter::begin`],
//! [`PoolRouter::begin_read`]) and get one scoped to it, whatever its placement:
//!
//! 1. the tenant's [`Route`] comes from the control database, cached and invalidated by
//!    `LISTEN borough_tenant_changed` (with a TTL as a backstop, and a full flush whenever
//!    the listener reconnects, since notifications sent meanwhile are lost);
//! 2. a per-tenant permit caps how many connections one tenant holds at once: a tenant
//!    over its cap waits up to `tenant_acquire_timeout`, then gets [`RouteError::Busy`]
//!    (503 + `Retry-After`), and other tenants are unaffected;
//! 3. the pool: the default server's pool for shared and schema tenants; a pool of its own
//!    (and one for its read replica) for a database tenant, opened on first use, closed
//!    when idle, and at most `max_tenant_pools` of them open (least recently used closed
//!    first);
//! 4. `set_config('borough.tenant_id', …, true)` and `set_config('search_path', …, true)`
//!    in one statement: both end with the transaction.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use borough_config_client::{Env, SettingsError};
use borough_error::{ErrorKind, ServiceError};
use borough_telemetry::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db::{self, PoolSettings};
use crate::placement::{self, Route, Status, Storage};
use crate::{TenantContext, TenantId};

/// The channel `control.tenants` changes are announced on (see the control migrations).
pub const TENANT_CHANNEL: &str = "borough_tenant_changed";

/// How the router bounds pools and tenants.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// `BOROUGH_MAX_TENANT_POOLS` (32): dedicated pools (database tenants, and their read
    /// replicas) open at once.
    pub max_tenant_pools: usize,
    /// `BOROUGH_TENANT_POOL_MAX_CONNECTIONS` (4): the size of each dedicated pool.
    pub tenant_pool: PoolSettings,
    /// `BOROUGH_TENANT_POOL_IDLE_TIMEOUT` (5m): a dedicated pool unused this long is closed.
    pub pool_idle_timeout: Duration,
    /// `BOROUGH_TENANT_MAX_CONNECTIONS` (half the default pool, at least 1): connections
    /// one tenant may hold at once.
    pub tenant_max_connections: u32,
    /// `BOROUGH_TENANT_ACQUIRE_TIMEOUT` (250ms): how long a tenant at its cap waits.
    pub tenant_acquire_timeout: Duration,
    /// `BOROUGH_TENANT_ROUTE_TTL` (60s): the backstop lifetime of a cached route.
    pub route_ttl: Duration,
}

impl RouterSettings {
    pub fn from_env(env: &Env, default_pool: &PoolSettings) -> Result<Self, SettingsError> {
        let max_tenant_pools: usize = env.parse("BOROUGH_MAX_TENANT_POOLS", 32)?;
        let tenant_max_connections: u32 = env.parse(
            "BOROUGH_TENANT_MAX_CONNECTIONS",
            (default_pool.max_connections / 2).max(1),
        )?;
        for (name, value) in [
            ("BOROUGH_MAX_TENANT_POOLS", max_tenant_pools),
            (
                "BOROUGH_TENANT_MAX_CONNECTIONS",
                tenant_max_connections as usize,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::Invalid {
                    name: name.to_owned(),
                    value: "0".to_owned(),
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(RouterSettings {
            max_tenant_pools,
            tenant_pool: PoolSettings {
                max_connections: env.parse("BOROUGH_TENANT_POOL_MAX_CONNECTIONS", 4)?,
                acquire_timeout: default_pool.acquire_timeout,
            },
            pool_idle_timeout: env
                .duration("BOROUGH_TENANT_POOL_IDLE_TIMEOUT", Duration::from_secs(300))?,
            tenant_max_connections,
            tenant_acquire_timeout: env
                .duration("BOROUGH_TENANT_ACQUIRE_TIMEOUT", Duration::from_millis(250))?,
            route_ttl: env.duration("BOROUGH_TENANT_ROUTE_TTL", Duration::from_secs(60))?,
        })
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            max_tenant_pools: 32,
            tenant_pool: PoolSettings {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(3),
            },
            pool_idle_timeout: Duration::from_secs(300),
            tenant_max_connections: 5,
            tenant_acquire_timeout: Duration::from_millis(250),
            route_ttl: Duration::from_secs(60),
        }
    }
}

/// Why a tenant's transaction could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("tenant {0} does not exist")]
    UnknownTenant(TenantId),
    #[error("tenant {tenant} is {}", status.as_str())]
    Inactive { tenant: TenantId, status: Status },
    #[error("tenant {tenant} is using all of its {cap} database connections; retry shortly")]
    Busy {
        tenant: TenantId,
        cap: u32,
        retry_after: Duration,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ServiceError for RouteError {
    fn kind(&self) -> ErrorKind {
        match self {
            RouteError::UnknownTenant(_) | RouteError::Inactive { .. } => {
                ErrorKind::PermissionDenied
            }
            RouteError::Busy { .. } => ErrorKind::Unavailable,
            RouteError::Database(e) => db::classify(e),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            // The caller's own tenant: safe and useful to say.
            RouteError::Busy { .. } => self.to_string(),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RouteError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A transaction scoped to one tenant, holding one of the tenant's connection permits.
/// Commit it, or drop it to roll back.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    _permit: OwnedSemaphorePermit,
}

impl TenantTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// The transaction's connection: `&mut *tx` is an executor.
impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Default)]
struct RouterMetrics {
    pools_open: Gauge,
    connections: Family<PoolLabels, Gauge>,
    waits: Family<TenantLabels, Counter>,
    rejections: Family<TenantLabels, Counter>,
    pool_closes: Family<ReasonLabels, Counter>,
}

impl RouterMetrics {
    fn register(metrics: &Metrics) -> Self {
        let m = RouterMetrics::default();
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

/// Which dedicated pool: a tenant's primary or its read replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    tenant: TenantId,
    read: bool,
}

impl PoolKey {
    fn label(&self) -> String {
        if self.read {
            format!("tenant:{}:read", self.tenant)
        } else {
            format!("tenant:{}", self.tenant)
        }
    }
}

struct Dedicated {
    pool: PgPool,
    /// What the pool connects to; a route that moved gets a new pool.
    target: Storage,
    last_used: Instant,
}

struct Inner {
    default: PgPool,
    default_options: PgConnectOptions,
    settings: RouterSettings,
    routes: Mutex<HashMap<TenantId, (Arc<Route>, Instant)>>,
    pools: Mutex<HashMap<PoolKey, Dedicated>>,
    caps: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    metrics: RouterMetrics,
}

/// Routes a tenant to the pool holding its data. Cheap to clone.
#[derive(Clone)]
pub struct PoolRouter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PoolRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRouter")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PoolRouter {
    /// A router over `default` (the control plane, shared and schema tenants), whose
    /// connect options are the template for tenant databases on the same server. Starts the
    /// change listener and the idle-pool reaper; both end when the last clone is dropped.
    pub fn new(
        default: PgPool,
        default_options: PgConnectOptions,
        settings: RouterSettings,
        metrics: &Metrics,
    ) -> Self {
        let inner = Arc::new(Inner {
            default,
            default_options,
            settings,
            routes: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            metrics: RouterMetrics::register(metrics),
        });
        tokio::spawn(listen_for_changes(Arc::downgrade(&inner)));
        tokio::spawn(reap(Arc::downgrade(&inner)));
        PoolRouter { inner }
    }

    /// A router from a URL, with default settings and a registry of its own (tests).
    pub fn connect_lazy(url: &str) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let pool = db::lazy_pool(url, &PoolSettings::default())?;
        Ok(Self::new(
            pool,
            options,
            RouterSettings::default(),
            &Metrics::new("test"),
        ))
    }

    /// A read-write transaction for the tenant.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<TenantTx, RouteError> {
        self.open(ctx, false).await
    }

    /// A read-only transaction for the tenant, on its read replica where it has one.
    pub async fn begin_read(&self, ctx: &TenantContext) -> Result<TenantTx, RouteError> {
        self.open(ctx, true).await
    }

    /// The default server's pool (control plane, shared and schema tenants).
    pub fn shared_pool(&self) -> &PgPool {
        &self.inner.default
    }

    /// Dedicated pools open right now.
    pub fn dedicated_pools_open(&self) -> usize {
        lock(&self.inner.pools).len()
    }

    /// Forgets a tenant's cached route (its next transaction reads it again).
    pub fn invalidate(&self, tenant: TenantId) {
        lock(&self.inner.routes).remove(&tenant);
    }

    async fn open(&self, ctx: &TenantContext, read: bool) -> Result<TenantTx, RouteError> {
        let route = self.route(ctx.tenant_id).await?;
        let permit = self.admit(ctx.tenant_id).await?;
        let pool = self.pool_for(&route, read);
        let mut tx = if read {
            pool.begin_with("BEGIN READ ONLY").await?
        } else {
            pool.begin().await?
        };
        sqlx::query(
            "SELECT set_config('borough.tenant_id', $1, true), set_config('search_path', $2, true)",
        )
        .bind(ctx.tenant_id.to_string())
        .bind(quote_ident(&route.schema))
        .execute(&mut *tx)
        .await?;
        Ok(TenantTx {
            tx,
            _permit: permit,
        })
    }

    async fn route(&self, tenant: TenantId) -> Result<Arc<Route>, RouteError> {
        let cached = lock(&self.inner.routes)
            .get(&tenant)
            .filter(|(_, at)| at.elapsed() < self.inner.settings.route_ttl)
            .map(|(route, _)| route.clone());
        let route = match cached {
            Some(route) => route,
            None => {
                let route = placement::load_route(&self.inner.default, tenant)
                    .await?
                    .ok_or(RouteError::UnknownTenant(tenant))?;
                let route = Arc::new(route);
                lock(&self.inner.routes).insert(tenant, (route.clone(), Instant::now()));
                route
            }
        };
        match route.status {
            Status::Active => Ok(route),
            status => Err(RouteError::Inactive { tenant, status }),
        }
    }

    async fn admit(&self, tenant: TenantId) -> Result<OwnedSemaphorePermit, RouteError> {
        let cap = self.inner.settings.tenant_max_connections;
        let semaphore = lock(&self.inner.caps)
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(cap as usize)))
            .clone();
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let labels = TenantLabels {
            tenant: tenant.to_string(),
        };
        self.inner.metrics.waits.get_or_create(&labels).inc();
        let wait = self.inner.settings.tenant_acquire_timeout;
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.inner.metrics.rejections.get_or_create(&labels).inc();
                tracing::warn!(tenant = %tenant, cap, "tenant at its connection cap: refused");
                Err(RouteError::Busy {
                    tenant,
                    cap,
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }

    fn pool_for(&self, route: &Route, read: bool) -> PgPool {
        let (options, read) = match &route.storage {
            Storage::Default => return self.inner.default.clone(),
            Storage::OwnDatabase { name } => {
                (Ok(self.inner.default_options.clone().database(name)), false)
            }
            Storage::External { url, read_url } => match (read, read_url) {
                (true, Some(read_url)) => (read_url.parse::<PgConnectOptions>(), true),
                _ => (url.parse::<PgConnectOptions>(), false),
            },
        };
        let key = PoolKey {
            tenant: route.tenant_id,
            read,
        };
        let mut pools = lock(&self.inner.pools);
        if let Some(entry) = pools.get_mut(&key) {
            if entry.target == route.storage {
                entry.last_used = Instant::now();
                return entry.pool.clone();
            }
            if let Some(old) = pools.remove(&key) {
                self.close(key, old, "moved");
            }
        }
        while pools.len() >= self.inner.settings.max_tenant_pools {
            let Some(oldest) = pools
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(key, _)| *key)
            else {
                break;
            };
            if let Some(old) = pools.remove(&oldest) {
                self.close(oldest, old, "lru");
            }
        }
        // A URL that no longer parses (validated at creation, so only a hand-edited row)
        // gets a pool that fails to connect, reported as the database being unavailable.
        let options = options.unwrap_or_else(|_| PgConnectOptions::new().host("invalid."));
        let settings = &self.inner.settings.tenant_pool;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Some(self.inner.settings.pool_idle_timeout))
            .connect_lazy_with(options);
        pools.insert(
            key,
            Dedicated {
                pool: pool.clone(),
                target: route.storage.clone(),
                last_used: Instant::now(),
            },
        );
        self.inner.metrics.pools_open.set(pools.len() as i64);
        tracing::info!(pool = %key.label(), open = pools.len(), "tenant pool opened");
        pool
    }

    fn close(&self, key: PoolKey, entry: Dedicated, reason: &'static str) {
        close_pool(&self.inner, key, entry, reason);
    }
}

fn close_pool(inner: &Inner, key: PoolKey, entry: Dedicated, reason: &'static str) {
    tracing::info!(pool = %key.label(), reason, "tenant pool closed");
    inner
        .metrics
        .pool_closes
        .get_or_create(&ReasonLabels { reason })
        .inc();
    for state in ["in_use", "idle"] {
        inner.metrics.connections.remove(&PoolLabels {
            pool: key.label(),
            state,
        });
    }
    // Transactions already running on it finish; close() waits for them.
    tokio::spawn(async move { entry.pool.close().await });
}

/// `"name"`, with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Flushes cached routes as `control.tenants` changes. Reconnects forever; every
/// (re)connection flushes everything, as notifications may have been missed meanwhile.
/// Ends when the router is dropped (checked at least every 5 seconds).
async fn listen_for_changes(inner: Weak<Inner>) {
    let Some(options) = inner.upgrade().map(|i| i.default_options.clone()) else {
        return;
    };
    // A pool of one connection of its own, so listening never takes a pooled connection.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let flush = |inner: &Inner| lock(&inner.routes).clear();
    loop {
        let subscribed = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(TENANT_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        // Subscribed (or not): what was cached before may have changed unannounced.
        match inner.upgrade() {
            Some(router) => flush(&router),
            None => return,
        }
        match subscribed {
            Ok(mut listener) => loop {
                let next = tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
                let Some(router) = inner.upgrade() else {
                    return;
                };
                match next {
                    Err(_) => {} // Nothing in 5 s: only a chance to notice a dropped router.
                    Ok(Ok(Some(notification))) => {
                        match notification.payload().parse::<TenantId>() {
                            Ok(tenant) => {
                                lock(&router.routes).remove(&tenant);
                            }
                            Err(_) => flush(&router),
                        }
                    }
                    // Reconnected: whatever was announced meanwhile is lost.
                    Ok(Ok(None)) => flush(&router),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tenant change listener lost");
                        flush(&router);
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "tenant change listener cannot connect"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if inner.upgrade().is_none() {
            return;
        }
    }
}

/// Every second: closes idle dedicated pools, forgets idle tenants' permits, and samples
/// pool gauges.
async fn reap(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let idle_after = inner.settings.pool_idle_timeout;
        let mut pools = lock(&inner.pools);
        let idle: Vec<PoolKey> = pools
            .iter()
            .filter(|(_, entry)| entry.last_used.elapsed() >= idle_after)
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            if let Some(entry) = pools.remove(&key) {
                close_pool(&inner, key, entry, "idle");
            }
        }
        inner.metrics.pools_open.set(pools.len() as i64);
        let samples = std::iter::once(("default".to_owned(), &inner.default))
            .chain(pools.iter().map(|(key, entry)| (key.label(), &entry.pool)));
        for (label, pool) in samples {
            let idle = pool.num_idle() as i64;
            let size = i64::from(pool.size());
            for (state, value) in [("in_use", size - idle), ("idle", idle)] {
                inner
                    .metrics
                    .connections
                    .get_or_create(&PoolLabels {
                        pool: label.clone(),
                        state,
                    })
                    .set(value);
            }
        }
        drop(pools);
        let cap = inner.settings.tenant_max_connections as usize;
        lock(&inner.caps).retain(|_, semaphore| {
            Arc::strong_count(semaphore) > 1 || semaphore.available_permits() < cap
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_for_search_path() {
        assert_eq!(quote_ident("t_abc"), "\"t_abc\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn router_settings_reject_zero_bounds_naming_the_variable() {
        let pool = PoolSettings::default();
        let defaults =
            RouterSettings::from_env(&Env::from_pairs([("", "")]), &pool).expect("defaults");
        assert_eq!(defaults.max_tenant_pools, 32);
        assert_eq!(defaults.tenant_max_connections, 5);
        for name in ["BOROUGH_MAX_TENANT_POOLS", "BOROUGH_TENANT_MAX_CONNECTIONS"] {
            let err =
                RouterSettings::from_env(&Env::from_pairs([(name, "0")]), &pool).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_busy_tenant_is_unavailable_with_a_retry_hint_and_a_public_reason() {
        let err = RouteError::Busy {
            tenant: TenantId::new_v7(),
            cap: 3,
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert!(err.public_detail().contains("all of its 3"));
        let db = RouteError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(db.public_detail(), "Service unavailable");
    }
}
