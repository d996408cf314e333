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
//! 4. `set_config('borough.tenant_id', …, true)`, `set_config('search_path', …, true)` and
//!    `set_config('statement_timeout', …, true)` (what is left of the caller's deadline) in
//!    one statement: all end with the transaction.

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
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{PgConnection, PgPool, Postgres};
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
    /// How tenant databases elsewhere are reached: this service's own login (the default)
    /// or the operator's URLs opened with `BOROUGH_SECRET_KEYS` (the user service).
    pub credentials: placement::Credentials,
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
            credentials: placement::Credentials::OwnLogin,
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
            credentials: placement::Credentials::OwnLogin,
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
    #[error("the tenant's database could not be reached a moment ago; retry shortly")]
    Unreachable { retry_after: Duration },
    #[error("the call's deadline passed before its transaction could start")]
    DeadlineExceeded,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant's route cannot be used by this service (a URL that does not open, an
    /// inconsistent row): an operator's problem, logged with the reason.
    #[error("{0}")]
    Unusable(String),
}

impl From<placement::RouteLoadError> for RouteError {
    fn from(e: placement::RouteLoadError) -> Self {
        match e {
            placement::RouteLoadError::Database(e) => RouteError::Database(e),
            other => {
                tracing::error!(error = %other, "a tenant's route is unusable");
                RouteError::Unusable(other.to_string())
            }
        }
    }
}

impl RouteError {
    /// The database could not be reached (as opposed to a refusal or a failed statement).
    pub fn is_unreachable(&self) -> bool {
        match self {
            RouteError::Unreachable { .. } => true,
            RouteError::Database(e) => db::classify(e) == ErrorKind::Unavailable,
            _ => false,
        }
    }
}

impl ServiceError for RouteError {
    fn kind(&self) -> ErrorKind {
        match self {
            RouteError::UnknownTenant(_) | RouteError::Inactive { .. } => {
                ErrorKind::PermissionDenied
            }
            RouteError::Busy { .. } | RouteError::Unreachable { .. } => ErrorKind::Unavailable,
            RouteError::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            RouteError::Database(e) => db::classify(e),
            RouteError::Unusable(_) => ErrorKind::Internal,
        }
    }

    fn public_detail(&self) -> String {
        match self {
            // The caller's own tenant: safe and useful to say.
            RouteError::Busy { .. } | RouteError::Unreachable { .. } => self.to_string(),
            RouteError::Database(e) => db::public_detail(e),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RouteError::Busy { retry_after, .. } | RouteError::Unreachable { retry_after } => {
                Some(*retry_after)
            }
            RouteError::Database(e) if db::classify(e) == ErrorKind::Unavailable => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

/// A transaction scoped to one tenant, holding one of the tenant's connection permits.
/// Commit it, or drop it to roll back.
///
/// It is begun and scoped in one round trip: `BEGIN` and the `set_config` calls travel as
/// one simple-protocol message (sqlx's `Transaction` would send them as two, after a third
/// for its ping). So it manages the transaction itself: `commit`/`rollback` end it, and a
/// transaction dropped unfinished is rolled back by a background task before its
/// connection is reused (or the connection is closed if that fails). Do not begin a nested
/// transaction on its connection: sqlx does not know one is open.
pub struct TenantTx {
    conn: Option<PoolConnection<Postgres>>,
    _permit: OwnedSemaphorePermit,
}

impl TenantTx {
    /// Sends `begin` (a `BEGIN …` and the scope, all literals) on `conn`.
    async fn begin(
        mut conn: PoolConnection<Postgres>,
        begin: String,
        permit: OwnedSemaphorePermit,
    ) -> Result<Self, sqlx::Error> {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(TenantTx {
                conn: Some(conn),
                _permit: permit,
            }),
            Err(e) => {
                abandon(conn);
                Err(e)
            }
        }
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let ended = sqlx::raw_sql(statement).execute(&mut *conn).await;
        if ended.is_err() {
            // Its state is unknown: it must not serve anyone else.
            conn.close_on_drop();
        }
        ended.map(|_| ())
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            abandon(conn);
        }
    }
}

/// Rolls back whatever `conn` has open before the pool hands it out again; a connection
/// that cannot be rolled back (or outside a runtime) is closed instead.
fn abandon(mut conn: PoolConnection<Postgres>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                    conn.close_on_drop();
                }
            });
        }
        Err(_) => conn.close_on_drop(),
    }
}

/// The transaction's connection: `&mut *tx` is an executor.
impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &Self::Target {
        self.conn
            .as_deref()
            .unwrap_or_else(|| unreachable!("the connection is only taken when it ends"))
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("the connection is only taken when it ends"))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TenantLabels {
    tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Tenants named in the wait/rejection metrics (the ones hitting their cap); later ones
/// are counted as `other`.
const MAX_TENANT_LABELS: usize = 100;

#[derive(Clone)]
struct RouterMetrics {
    tenant_labels: Arc<borough_telemetry::metrics::LabelCap>,
    pools_open: Gauge,
    connections: Family<PoolLabels, Gauge>,
    waits: Family<TenantLabels, Counter>,
    rejections: Family<TenantLabels, Counter>,
    pool_closes: Family<ReasonLabels, Counter>,
}

impl RouterMetrics {
    fn register(metrics: &Metrics) -> Self {
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
    routed: Routed,
    /// What the pool connects to; a route that moved gets a new pool.
    target: Storage,
    last_used: Instant,
    /// The change-feed listener on the tenant's primary database, if there is a feed.
    listener: Option<tokio::task::JoinHandle<()>>,
}

/// Connections that [`PoolRouter::call_tenant_function`] keeps checked out between calls,
/// at most half the pool's connections (none for a pool of one) and each for at most
/// [`WARM_FOR`]. sqlx sends a
/// round trip (a `Sync`) on every connection returned to its pool, to check it: for a
/// one-statement call, a second round trip that doubles what the database is woken for.
/// A connection that just answered is known to be good; the next call takes it from here
/// instead (the newest first). Transactions take from here first too, so the pool's
/// other users never wait on connections parked here; older ones go back to the pool
/// (checked then) from the router's reaper, and all of them when the pool closes.
struct Warm {
    pool: PgPool,
    conns: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    cap: usize,
}

/// How long a connection stays in [`Warm`] unused: as long as the pool trusts an idle
/// connection without a ping (`db::PING_AFTER_IDLE`).
const WARM_FOR: Duration = crate::db::PING_AFTER_IDLE;

impl Warm {
    /// The parking of `pool`. When the pool is closed (by whoever holds it: the router,
    /// or a service shutting down) its parked connections go back at once, so that the
    /// close, which waits for every checked-out connection, is not held up by them.
    fn new(pool: PgPool) -> Arc<Warm> {
        let closed = pool.close_event();
        let warm = Arc::new(Warm {
            // Half: the pool's other users (route loads, the control plane) that take
            // from it directly always find the other half.
            cap: pool.options().get_max_connections() as usize / 2,
            pool,
            conns: Mutex::new(Vec::new()),
        });
        let parked = Arc::downgrade(&warm);
        tokio::spawn(async move {
            closed.await;
            if let Some(warm) = parked.upgrade() {
                warm.trim(true);
            }
        });
        warm
    }

    /// The newest connection parked less than [`WARM_FOR`] ago (older ones go back).
    fn take(&self) -> Option<PoolConnection<Postgres>> {
        let mut stale = Vec::new();
        let taken = {
            let mut conns = lock(&self.conns);
            loop {
                match conns.pop() {
                    Some((conn, at)) if at.elapsed() < WARM_FOR => break Some(conn),
                    Some((conn, _)) => stale.push(conn),
                    None => break None,
                }
            }
        };
        drop(stale);
        taken
    }

    /// Parks `conn` (ready: its last statement answered) if there is room.
    fn put(&self, conn: PoolConnection<Postgres>) {
        let mut conns = lock(&self.conns);
        // Checked under the lock: a close after this is seen by its trim.
        if conns.len() < self.cap && !self.pool.is_closed() {
            conns.push((conn, Instant::now()));
        }
    }

    /// Returns connections parked [`WARM_FOR`] or longer to the pool (all with `all`).
    fn trim(&self, all: bool) {
        let returned: Vec<(PoolConnection<Postgres>, Instant)> = {
            let mut conns = lock(&self.conns);
            let keep = if all {
                0
            } else {
                conns
                    .iter()
                    .filter(|(_, at)| at.elapsed() < WARM_FOR)
                    .count()
            };
            // Oldest first in the vector: what is returned is its front.
            let returned = conns.len() - keep;
            conns.drain(..returned).collect()
        };
        drop(returned);
    }
}

/// A tenant's pool, with its [`Warm`] connections.
#[derive(Clone)]
struct Routed(Arc<Warm>);

impl Routed {
    fn new(pool: PgPool) -> Self {
        Routed(Warm::new(pool))
    }

    fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        match self.0.take() {
            Some(conn) => Ok(conn),
            None => self.0.pool.acquire().await,
        }
    }
}

/// Where a [`FeedEvent`] comes from: the default server's database (shared and schema
/// tenants), or one database tenant's own database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedSource {
    Default,
    Tenant(TenantId),
}

/// What a change feed ([`PoolRouter::with_feed`]) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A notification's payload, from any database the router follows.
    Notification(String),
    /// The source is (again) followed: anything announced before now may have been missed.
    Subscribed(FeedSource),
    /// The source is no longer followed (its pool closed, or its listener failed): what is
    /// derived from it can no longer be kept current.
    Lost(FeedSource),
}

struct Feed {
    channel: &'static str,
    events: tokio::sync::mpsc::UnboundedSender<FeedEvent>,
}

impl Feed {
    fn send(&self, event: FeedEvent) {
        // The receiver gone means the service is shutting down: nothing to tell.
        let _ = self.events.send(event);
    }
}

struct Inner {
    default: PgPool,
    /// The default pool (as `default`) with its parked connections.
    default_routed: Routed,
    default_options: PgConnectOptions,
    settings: RouterSettings,
    routes: Mutex<HashMap<TenantId, (Arc<Route>, Instant)>>,
    pools: Mutex<HashMap<PoolKey, Dedicated>>,
    caps: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    /// Databases (`None`: the default one) that recently could not be reached, and until when
    /// callers fail fast.
    unreachable: Mutex<HashMap<Option<TenantId>, Instant>>,
    metrics: RouterMetrics,
    feed: Option<Feed>,
}

/// How long callers fail fast after a database could not be reached.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

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
        Self::build(default, default_options, settings, metrics, None)
    }

    /// As [`PoolRouter::new`], also following `LISTEN channel` on every database it routes
    /// to: the default database always, and each database tenant's own database while its
    /// pool is open (so at most `max_tenant_pools` of those).
    pub fn with_feed(
        default: PgPool,
        default_options: PgConnectOptions,
        settings: RouterSettings,
        metrics: &Metrics,
        channel: &'static str,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<FeedEvent>) {
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let feed = Feed { channel, events };
        let router = Self::build(default, default_options, settings, metrics, Some(feed));
        (router, receiver)
    }

    fn build(
        default: PgPool,
        default_options: PgConnectOptions,
        settings: RouterSettings,
        metrics: &Metrics,
        feed: Option<Feed>,
    ) -> Self {
        let inner = Arc::new(Inner {
            default_routed: Routed::new(default.clone()),
            default,
            default_options,
            settings,
            routes: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            metrics: RouterMetrics::register(metrics),
            feed,
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

    /// Everything before a connection: the deadline, the tenant's route and reachability,
    /// its permit, and the pool to take the connection from.
    async fn prepare(
        &self,
        ctx: &TenantContext,
        read: bool,
    ) -> Result<(Arc<Route>, OwnedSemaphorePermit, Routed, Option<TenantId>), RouteError> {
        if ctx.remaining().is_some_and(|left| left.is_zero()) {
            return Err(RouteError::DeadlineExceeded);
        }
        self.check_reachable(None)?;
        let route = self.route(ctx.tenant_id).await.inspect_err(|e| {
            if let RouteError::Database(e) = e {
                self.note_failure(None, &self.inner.default, e);
            }
        })?;
        let db = match route.storage {
            Storage::Default => None,
            _ => Some(route.tenant_id),
        };
        self.check_reachable(db)?;
        let permit = self.admit(ctx.tenant_id).await?;
        let pool = self.pool_for(&route, read);
        Ok((route, permit, pool, db))
    }

    async fn open(&self, ctx: &TenantContext, read: bool) -> Result<TenantTx, RouteError> {
        let (route, permit, routed, db) = self.prepare(ctx, read).await?;
        let pool = routed.pool();
        let begun = async {
            let conn = routed.acquire().await?;
            let begin = format!(
                "{}; {}",
                if read { "BEGIN READ ONLY" } else { "BEGIN" },
                scope_statement(ctx, &route, false),
            );
            TenantTx::begin(conn, begin, permit).await
        }
        .await;
        match begun {
            Ok(tx) => Ok(tx),
            Err(e) => {
                self.note_failure(db, pool, &e);
                Err(e.into())
            }
        }
    }

    /// One read-only statement for the tenant in one round trip: the scope and `statement`
    /// travel as one simple-protocol message, which PostgreSQL runs as one (implicit)
    /// transaction, so the scope holds for the statement and ends with it. A single-row
    /// lookup costs one round trip here against three in [`PoolRouter::begin_read`]
    /// (`BEGIN`+scope, the statement, `COMMIT`), which matters on the read path's miss.
    ///
    /// A simple-protocol message has no parameters: `statement` is a fixed text whose `$1`,
    /// `$2`, … stand for `args`, inlined as `'…'::uuid` literals (a UUID's text cannot
    /// carry anything else). Rows come in text format: decode types that have a text
    /// form (uuid, text, integers, timestamptz: sqlx decodes all of them).
    pub async fn read_one_trip(
        &self,
        ctx: &TenantContext,
        statement: &'static str,
        args: &[uuid::Uuid],
    ) -> Result<Vec<sqlx::postgres::PgRow>, RouteError> {
        use futures_util::TryStreamExt;
        let (route, _permit, routed, db) = self.prepare(ctx, true).await?;
        let pool = routed.pool();
        let mut sql = statement.to_owned();
        for (n, arg) in args.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", n + 1), &format!("'{arg}'::uuid"));
        }
        let message = format!("{}; {sql}", scope_statement(ctx, &route, true));
        let rows = async {
            let mut conn = routed.acquire().await?;
            let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(message)).fetch_many(&mut *conn);
            // The scope's own row and result come first; then the statement's rows.
            let mut scoped = false;
            let mut rows = Vec::new();
            while let Some(item) = results.try_next().await? {
                match item {
                    sqlx::Either::Left(_) => scoped = true,
                    sqlx::Either::Right(row) if scoped => rows.push(row),
                    sqlx::Either::Right(_) => {}
                }
            }
            Ok::<_, sqlx::Error>(rows)
        }
        .await;
        rows.map_err(|e| {
            self.note_failure(db, pool, &e);
            e.into()
        })
    }

    /// One statement for the tenant, in one round trip: `SELECT * FROM
    /// "<schema>".<call>`, where `call` names a function of the tenant schema and its
    /// parameters (`user_by_id($1, $2)`), `$1` being the tenant's id and the rest bound
    /// by `bind`. A prepared statement: parsed and planned once per connection, then one
    /// Bind/Execute. The function scopes itself — it takes the tenant id and sets
    /// `borough.tenant_id` inside, for row-level security — and names its tables with its
    /// schema (`migrations/tenant/0005_user_by_id.sql`); the statement commits when it
    /// ends. `read` routes to the tenant's read replica where it has one. Bounded by the
    /// caller's deadline.
    pub async fn call_tenant_function<T>(
        &self,
        ctx: &TenantContext,
        read: bool,
        call: &'static str,
        bind: impl for<'q> FnOnce(
            sqlx::query::QueryAs<'q, Postgres, T, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::QueryAs<'q, Postgres, T, sqlx::postgres::PgArguments>
        + Send,
    ) -> Result<Option<T>, RouteError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let (route, _permit, routed, db) = self.prepare(ctx, read).await?;
        let pool = routed.pool();
        let sql = format!("SELECT * FROM {}.{call}", quote_ident(&route.schema));
        let fetch = async {
            let mut conn = routed.acquire().await?;
            let row = bind(
                sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(sql)).bind(ctx.tenant_id.as_uuid()),
            )
            .fetch_optional(&mut *conn)
            .await?;
            // Answered: ready for the next call without sqlx's check (see `Warm`).
            routed.0.put(conn);
            Ok(row)
        };
        let row = match ctx.remaining() {
            Some(left) => match tokio::time::timeout(left, fetch).await {
                Ok(row) => row,
                Err(_) => return Err(RouteError::DeadlineExceeded),
            },
            None => fetch.await,
        };
        row.map_err(|e| {
            self.note_failure(db, pool, &e);
            e.into()
        })
    }

    /// Fails fast while a database recently could not be reached, instead of making every
    /// caller wait out the pool's acquire timeout.
    fn check_reachable(&self, db: Option<TenantId>) -> Result<(), RouteError> {
        let down = lock(&self.inner.unreachable).get(&db).copied();
        match down {
            Some(until) if Instant::now() < until => Err(RouteError::Unreachable {
                retry_after: Duration::from_secs(1),
            }),
            _ => Ok(()),
        }
    }

    /// Marks a database unreachable for `UNREACHABLE_FOR` after a failure to reach it (not
    /// after a busy pool or a failed statement).
    fn note_failure(&self, db: Option<TenantId>, pool: &PgPool, err: &sqlx::Error) {
        let unreachable = match err {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
            sqlx::Error::PoolTimedOut => pool.size() == 0,
            e => matches!(
                db::sqlstate(e).as_deref(),
                Some(db::sqlstate::ADMIN_SHUTDOWN | db::sqlstate::CANNOT_CONNECT_NOW)
            ),
        };
        if unreachable {
            tracing::warn!(database = ?db.map(|t| t.to_string()), "database unreachable: failing fast for a moment");
            lock(&self.inner.unreachable).insert(db, Instant::now() + UNREACHABLE_FOR);
        }
    }

    async fn route(&self, tenant: TenantId) -> Result<Arc<Route>, RouteError> {
        let cached = lock(&self.inner.routes)
            .get(&tenant)
            .filter(|(_, at)| at.elapsed() < self.inner.settings.route_ttl)
            .map(|(route, _)| route.clone());
        let route = match cached {
            Some(route) => route,
            None => {
                let route = placement::load_route(
                    &self.inner.default,
                    tenant,
                    &self.inner.settings.credentials,
                )
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
            tenant: self.inner.metrics.tenant_labels.label(&tenant.to_string()),
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

    fn pool_for(&self, route: &Route, read: bool) -> Routed {
        let (options, read) = match &route.storage {
            Storage::Default => {
                return self.inner.default_routed.clone();
            }
            Storage::OwnDatabase { name } => {
                (Ok(self.inner.default_options.clone().database(name)), false)
            }
            Storage::External(external) => {
                let replica = read && external.read_location.is_some();
                (
                    external_options(&self.inner.default_options, external, replica),
                    replica,
                )
            }
        };
        let key = PoolKey {
            tenant: route.tenant_id,
            read,
        };
        let mut pools = lock(&self.inner.pools);
        if let Some(entry) = pools.get_mut(&key) {
            if entry.target == route.storage {
                entry.last_used = Instant::now();
                return entry.routed.clone();
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
        let pool = db::pool_options(settings, self.inner.settings.pool_idle_timeout)
            .connect_lazy_with(options);
        let listener = self.inner.feed.as_ref().map(|_| {
            tokio::spawn(follow_tenant_database(
                Arc::downgrade(&self.inner),
                route.tenant_id,
                primary_options(&self.inner.default_options, &route.storage),
            ))
        });
        let routed = Routed::new(pool);
        pools.insert(
            key,
            Dedicated {
                routed: routed.clone(),
                target: route.storage.clone(),
                last_used: Instant::now(),
                listener,
            },
        );
        self.inner.metrics.pools_open.set(pools.len() as i64);
        tracing::info!(pool = %key.label(), open = pools.len(), "tenant pool opened");
        routed
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
    if let Some(listener) = &entry.listener {
        listener.abort();
        if let Some(feed) = &inner.feed {
            feed.send(FeedEvent::Lost(FeedSource::Tenant(key.tenant)));
        }
    }
    // Transactions already running on it finish; close() waits for them (the parked
    // connections go back as it begins: `Warm::new`).
    tokio::spawn(async move { entry.routed.pool().close().await });
}

/// The connect options of a tenant's primary database (notifications are sent there).
fn primary_options(default: &PgConnectOptions, storage: &Storage) -> Option<PgConnectOptions> {
    match storage {
        Storage::Default => Some(default.clone()),
        Storage::OwnDatabase { name } => Some(default.clone().database(name)),
        Storage::External(external) => external_options(default, external, false).ok(),
    }
}

/// How to reach a database given by the operator (its replica when `replica`): with its
/// URL when this service may read it, else with this service's own login (user, password
/// and TLS settings of `default`) at its location.
fn external_options(
    default: &PgConnectOptions,
    external: &placement::External,
    replica: bool,
) -> Result<PgConnectOptions, sqlx::Error> {
    let (url, location) = match replica {
        true => (
            external.read_url.as_deref(),
            external.read_location.as_deref(),
        ),
        false => (external.url.as_deref(), Some(external.location.as_str())),
    };
    if let Some(url) = url {
        return url.parse();
    }
    let at: PgConnectOptions = location.unwrap_or_default().parse()?;
    let mut options = default.clone().host(at.get_host()).port(at.get_port());
    if let Some(database) = at.get_database() {
        options = options.database(database);
    }
    Ok(options)
}

/// A listener of one connection of its own, subscribed to `channels`.
async fn subscribe(pool: &PgPool, channels: &[&str]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

/// Follows the feed channel on one database tenant's own database, until aborted (its
/// pool closed) or the router is dropped.
async fn follow_tenant_database(
    inner: Weak<Inner>,
    tenant: TenantId,
    options: Option<PgConnectOptions>,
) {
    let Some(options) = options else { return };
    let pool = db::listener_pool(options);
    let source = FeedSource::Tenant(tenant);
    loop {
        let Some(channel) = inner
            .upgrade()
            .and_then(|i| i.feed.as_ref().map(|f| f.channel))
        else {
            return;
        };
        match subscribe(&pool, &[channel]).await {
            Ok(mut listener) => {
                if let Some(router) = inner.upgrade()
                    && let Some(feed) = &router.feed
                {
                    feed.send(FeedEvent::Subscribed(source));
                }
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
                    let Some(router) = inner.upgrade() else {
                        return;
                    };
                    let Some(feed) = &router.feed else { return };
                    match next {
                        Err(_) => {}
                        Ok(Ok(Some(n))) => {
                            feed.send(FeedEvent::Notification(n.payload().to_owned()))
                        }
                        Ok(Ok(None)) => feed.send(FeedEvent::Subscribed(source)),
                        Ok(Err(e)) => {
                            tracing::debug!(tenant = %tenant, error = %e, "tenant database listener lost");
                            feed.send(FeedEvent::Lost(source));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(tenant = %tenant, error = %e, "tenant database listener cannot connect")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `"name"`, with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `SELECT set_config(…)` that scopes a transaction to `ctx`'s tenant: its id (for
/// row-level security), its schema as `search_path`, what is left of the caller's deadline
/// as `statement_timeout` (0: none), and read-only when `read`. Literals, not parameters
/// (it travels in simple-protocol messages): a UUID, a quoted identifier and a duration,
/// each quoted as a string literal.
fn scope_statement(ctx: &TenantContext, route: &Route, read: bool) -> String {
    let statement_timeout = ctx.remaining().map_or_else(
        || "0".to_owned(),
        |left| format!("{}ms", left.as_millis().max(1)),
    );
    format!(
        "SELECT set_config('borough.tenant_id', {}, true), set_config('search_path', {}, true), \
         set_config('statement_timeout', {}, true){}",
        quote_literal(&ctx.tenant_id.to_string()),
        quote_literal(&quote_ident(&route.schema)),
        quote_literal(&statement_timeout),
        if read {
            ", set_config('transaction_read_only', 'on', true)"
        } else {
            ""
        },
    )
}

/// A string literal for `text`, as PostgreSQL's `quote_literal` writes it (`E''` with
/// doubled backslashes when it has any, so that it means the same whatever
/// `standard_conforming_strings` says). NUL, which no PostgreSQL text can hold and which
/// would end a simple-protocol message early, is dropped.
fn quote_literal(text: &str) -> String {
    let text = text.replace('\0', "").replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\"))
    } else {
        format!("'{text}'")
    }
}

/// Flushes cached routes as `control.tenants` changes. Reconnects forever; every
/// (re)connection flushes everything, as notifications may have been missed meanwhile.
/// Ends when the router is dropped (checked at least every 5 seconds).
async fn listen_for_changes(inner: Weak<Inner>) {
    let Some((options, feed_channel)) = inner.upgrade().map(|i| {
        (
            i.default_options.clone(),
            i.feed.as_ref().map(|f| f.channel),
        )
    }) else {
        return;
    };
    // A pool of one connection of its own, so listening never takes a pooled connection.
    let pool = db::listener_pool(options);
    let channels: Vec<&str> = std::iter::once(TENANT_CHANNEL)
        .chain(feed_channel)
        .collect();
    let resubscribed = |inner: &Inner| {
        // What was cached before may have changed unannounced.
        lock(&inner.routes).clear();
        if let Some(feed) = &inner.feed {
            feed.send(FeedEvent::Subscribed(FeedSource::Default));
        }
    };
    loop {
        let subscribed = subscribe(&pool, &channels).await;
        let Some(router) = inner.upgrade() else {
            return;
        };
        match subscribed {
            Ok(mut listener) => {
                resubscribed(&router);
                drop(router);
                loop {
                    let next =
                        tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await;
                    let Some(router) = inner.upgrade() else {
                        return;
                    };
                    match next {
                        Err(_) => {} // Nothing in 5 s: only a chance to notice a dropped router.
                        Ok(Ok(Some(n))) if n.channel() == TENANT_CHANNEL => {
                            match n.payload().parse::<TenantId>() {
                                Ok(tenant) => {
                                    lock(&router.routes).remove(&tenant);
                                }
                                Err(_) => lock(&router.routes).clear(),
                            }
                        }
                        Ok(Ok(Some(n))) => {
                            if let Some(feed) = &router.feed {
                                feed.send(FeedEvent::Notification(n.payload().to_owned()));
                            }
                        }
                        // Reconnected: whatever was announced meanwhile is lost.
                        Ok(Ok(None)) => resubscribed(&router),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "change listener lost");
                            lock(&router.routes).clear();
                            if let Some(feed) = &router.feed {
                                feed.send(FeedEvent::Lost(FeedSource::Default));
                            }
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                lock(&router.routes).clear();
                tracing::debug!(error = %e, "change listener cannot connect");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        inner.default_routed.0.trim(false);
        for entry in pools.values() {
            entry.routed.0.trim(false);
        }
        let samples = std::iter::once(("default".to_owned(), &inner.default)).chain(
            pools
                .iter()
                .map(|(key, entry)| (key.label(), entry.routed.pool())),
        );
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

    #[tokio::test]
    async fn literals_mean_exactly_their_text_to_postgresql() -> anyhow::Result<()> {
        let db = borough_testkit::TestDatabase::create().await?;
        let pool = db.admin_pool().await?;
        for text in [
            "plain",
            "it's",
            "back\\slash",
            "\\'; DROP TABLE x; --",
            "\"t_a\"\"b\"",
            "",
        ] {
            let literal = quote_literal(text);
            let (back,): (String,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {literal}::text")))
                    .fetch_one(&pool)
                    .await?;
            assert_eq!(back, text, "{literal}");
            // Off as well as on: the E'' form does not depend on the setting.
            let mut conn = pool.acquire().await?;
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET standard_conforming_strings = off; SELECT {literal}::text"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let back: String = sqlx::Row::try_get(&rows[0], 0)?;
            assert_eq!(back, text, "{literal} with standard_conforming_strings off");
            conn.close().await?;
        }
        Ok(())
    }

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
