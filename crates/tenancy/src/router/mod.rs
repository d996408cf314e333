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

mod error;
mod metrics;
mod pools;
mod scope;
mod settings;
mod tx;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use borough_telemetry::Metrics;
use borough_tenant::{TenantContext, TenantId};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use crate::db::{self, PoolSettings};
use crate::listen::{self, Heard, Next};
use crate::placement::{self, Route, Status, Storage};

pub use error::RouteError;
pub use settings::RouterSettings;
pub use tx::TenantTx;

use metrics::{PoolLabels, ReasonLabels, RouterMetrics, TenantLabels};
use pools::{Dedicated, PoolKey, Routed, external_options, lock, primary_options};
use scope::{quote_ident, scope_statement};

/// The channel `control.tenants` changes are announced on (see the control migrations).
pub const TENANT_CHANNEL: &str = "borough_tenant_changed";

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
    unreachable: Mutex<HashMap<Option<TenantId>, Down>>,
    /// Whether `unreachable` has an entry: calls look no further while it is false (no
    /// lock on the hot path).
    any_unreachable: AtomicBool,
    metrics: RouterMetrics,
    databases: watch::Sender<OpenDatabases>,
    /// Tenants whose route changed (`None`: any may have: the listener reconnected).
    route_changes: broadcast::Sender<Option<TenantId>>,
}

/// The database tenants whose own databases the router has a pool open for, and how to
/// reach each one's primary (where its changes are announced): what a follower of those
/// databases follows ([`PoolRouter::open_databases`]).
pub type OpenDatabases = Arc<HashMap<TenantId, Arc<PgConnectOptions>>>;

/// Route changes a slow follower of [`PoolRouter::route_changes`] may fall behind by before
/// it is told it lagged (and treats every route as changed).
const ROUTE_CHANGES_BUFFER: usize = 256;

/// How long callers fail fast after a database could not be reached.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// While a database is marked unreachable, one call in this long goes through to try it
/// (and clears the mark when it gets a connection), so that callers see it back within
/// this long of its return, not only when the mark runs out.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A database marked unreachable.
#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    next_probe: Instant,
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
        Self::build(default, default_options, settings, metrics)
    }

    fn build(
        default: PgPool,
        default_options: PgConnectOptions,
        settings: RouterSettings,
        metrics: &Metrics,
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
            any_unreachable: AtomicBool::new(false),
            metrics: RouterMetrics::register(metrics),
            databases: watch::Sender::new(OpenDatabases::default()),
            route_changes: broadcast::Sender::new(ROUTE_CHANGES_BUFFER),
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

    /// The default database's connect options (the control plane, shared and schema
    /// tenants), as this service logs in.
    pub fn default_options(&self) -> &PgConnectOptions {
        &self.inner.default_options
    }

    /// The tenant databases the router has pools open for, kept current as pools open
    /// and close (at most `max_tenant_pools`).
    pub fn open_databases(&self) -> watch::Receiver<OpenDatabases> {
        self.inner.databases.subscribe()
    }

    /// Tenants whose route changed, as the router hears of it (`None`: the listener
    /// reconnected, and any route may have changed unannounced). A receiver that lags
    /// gets `RecvError::Lagged`: treat it as `None`.
    pub fn route_changes(&self) -> broadcast::Receiver<Option<TenantId>> {
        self.inner.route_changes.subscribe()
    }

    /// How this service connects to the primary of a route's database (the database's
    /// own schema is `route.schema`): for work on a placement the tenant is not routed
    /// to yet, or any more (a move's source and target).
    pub fn connect_options(&self, route: &Route) -> Result<PgConnectOptions, sqlx::Error> {
        match &route.storage {
            Storage::Default => Ok(self.inner.default_options.clone()),
            Storage::OwnDatabase { name } => Ok(self.inner.default_options.clone().database(name)),
            Storage::External(external) => {
                external_options(&self.inner.default_options, external, false)
            }
        }
    }

    /// Opens the pool a tenant will be routed to once `route` is its route, with
    /// `connections` (at most the pool's size) connected and ready: a move, just before it
    /// switches the tenant to a database of its own, so that the first writes there need
    /// not log in. Only while the tenant's current route takes no dedicated pool (its key
    /// would be taken over): `current` says.
    pub async fn warm(
        &self,
        current: &Route,
        route: &Route,
        connections: u32,
    ) -> Result<(), RouteError> {
        if matches!(route.storage, Storage::Default) || !matches!(current.storage, Storage::Default)
        {
            return Ok(());
        }
        let routed = self.pool_for(route, false);
        let n = connections.min(self.inner.settings.tenant_pool.max_connections);
        let conns = futures_util::future::join_all((0..n).map(|_| routed.acquire())).await;
        for conn in conns {
            conn?;
        }
        Ok(())
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
            Ok(tx) => {
                self.note_reached(db);
                Ok(tx)
            }
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
        match rows {
            Ok(rows) => {
                self.note_reached(db);
                Ok(rows)
            }
            Err(e) => {
                self.note_failure(db, pool, &e);
                Err(e.into())
            }
        }
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
        match row {
            Ok(row) => {
                self.note_reached(db);
                Ok(row)
            }
            Err(e) => {
                self.note_failure(db, pool, &e);
                Err(e.into())
            }
        }
    }

    /// Fails fast while a database recently could not be reached, instead of making every
    /// caller wait out the pool's acquire timeout; but lets one call in [`PROBE_EVERY`]
    /// through to try it.
    fn check_reachable(&self, db: Option<TenantId>) -> Result<(), RouteError> {
        if !self.inner.any_unreachable.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut unreachable = lock(&self.inner.unreachable);
        let Some(down) = unreachable.get_mut(&db) else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= down.until {
            unreachable.remove(&db);
            self.inner
                .any_unreachable
                .store(!unreachable.is_empty(), Ordering::Release);
            return Ok(());
        }
        if now >= down.next_probe {
            down.next_probe = now + PROBE_EVERY;
            return Ok(()); // This call tries it.
        }
        Err(RouteError::Unreachable {
            retry_after: Duration::from_secs(1),
        })
    }

    /// A call got a connection to `db` (and an answer): it is reachable again.
    fn note_reached(&self, db: Option<TenantId>) {
        if !self.inner.any_unreachable.load(Ordering::Acquire) {
            return;
        }
        let mut unreachable = lock(&self.inner.unreachable);
        if unreachable.remove(&db).is_some() {
            self.inner
                .any_unreachable
                .store(!unreachable.is_empty(), Ordering::Release);
            tracing::info!(database = ?db.map(|t| t.to_string()), "database reachable again");
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
            let now = Instant::now();
            let mut marked = lock(&self.inner.unreachable);
            marked.insert(
                db,
                Down {
                    until: now + UNREACHABLE_FOR,
                    next_probe: now + PROBE_EVERY,
                },
            );
            self.inner.any_unreachable.store(true, Ordering::Release);
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
        // One value per tenant database, whichever of its pools opens first.
        let primary = pools
            .iter()
            .find(|(k, e)| k.tenant == route.tenant_id && e.target == route.storage)
            .and_then(|(_, e)| e.primary.clone())
            .or_else(|| primary_options(&self.inner.default_options, &route.storage).map(Arc::new));
        let routed = Routed::new(pool);
        pools.insert(
            key,
            Dedicated {
                routed: routed.clone(),
                target: route.storage.clone(),
                last_used: Instant::now(),
                primary,
            },
        );
        publish_databases(&self.inner, &pools);
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
    // Transactions already running on it finish; close() waits for them (the parked
    // connections go back as it begins: `Warm::new`).
    tokio::spawn(async move { entry.routed.pool().close().await });
}

/// Tells followers of [`PoolRouter::open_databases`] which tenant databases have pools
/// open now (called with the pools' lock held, after every change to them).
fn publish_databases(inner: &Inner, pools: &HashMap<PoolKey, Dedicated>) {
    let mut open: HashMap<TenantId, Arc<PgConnectOptions>> = HashMap::new();
    for (key, entry) in pools {
        if let Some(primary) = &entry.primary
            && (!key.read || !open.contains_key(&key.tenant))
        {
            open.insert(key.tenant, primary.clone());
        }
    }
    inner.databases.send_if_modified(|current| {
        let same = current.len() == open.len()
            && open
                .iter()
                .all(|(tenant, at)| current.get(tenant).is_some_and(|c| Arc::ptr_eq(c, at)));
        if !same {
            *current = Arc::new(open);
        }
        !same
    });
}

/// Flushes cached routes as `control.tenants` changes. Reconnects forever; every
/// (re)connection flushes everything, as notifications may have been missed meanwhile.
/// Ends when the router is dropped (checked at least every 5 seconds).
async fn listen_for_changes(inner: Weak<Inner>) {
    let Some(options) = inner.upgrade().map(|i| i.default_options.clone()) else {
        return;
    };
    listen::follow(
        options,
        &[TENANT_CHANNEL],
        Duration::from_secs(5),
        |heard| {
            let Some(router) = inner.upgrade() else {
                return std::future::ready(Next::Stop);
            };
            let mut routes = lock(&router.routes);
            let changed = match heard {
                Heard::Notification { payload, .. } => match payload.parse::<TenantId>() {
                    Ok(tenant) => {
                        routes.remove(&tenant);
                        Some(Some(tenant))
                    }
                    Err(_) => {
                        routes.clear();
                        Some(None)
                    }
                },
                // What was cached before may have changed unannounced.
                Heard::Subscribed | Heard::Lost => {
                    routes.clear();
                    Some(None)
                }
                Heard::Quiet => None,
            };
            drop(routes);
            if let Some(changed) = changed {
                // No receiver is fine.
                let _ = router.route_changes.send(changed);
            }
            std::future::ready(Next::Listen)
        },
    )
    .await;
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
        publish_databases(&inner, &pools);
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
