//! The pools a router holds: which dedicated pool (`PoolKey`), its entry (`Dedicated`),
//! the connections parked between calls (`Warm`), and how a tenant's database is reached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borough_tenant::TenantId;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres};

use crate::placement::{self, Storage};

/// A mutex's guard, whether or not a holder panicked (every critical section here leaves
/// its data consistent).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which dedicated pool: a tenant's primary or its read replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub(super) tenant: TenantId,
    pub(super) read: bool,
}

impl PoolKey {
    pub(super) fn label(&self) -> String {
        if self.read {
            format!("tenant:{}:read", self.tenant)
        } else {
            format!("tenant:{}", self.tenant)
        }
    }
}

pub(super) struct Dedicated {
    pub(super) routed: Routed,
    /// What the pool connects to; a route that moved gets a new pool.
    pub(super) target: Storage,
    pub(super) last_used: Instant,
    /// How to reach the tenant's primary database (where its changes are announced), the
    /// same value for its primary and its replica pool: [`super::OpenDatabases`].
    pub(super) primary: Option<Arc<PgConnectOptions>>,
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
pub(super) struct Warm {
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
    pub(super) fn new(pool: PgPool) -> Arc<Warm> {
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
    pub(super) fn take(&self) -> Option<PoolConnection<Postgres>> {
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
    pub(super) fn put(&self, conn: PoolConnection<Postgres>) {
        let mut conns = lock(&self.conns);
        // Checked under the lock: a close after this is seen by its trim.
        if conns.len() < self.cap && !self.pool.is_closed() {
            conns.push((conn, Instant::now()));
        }
    }

    /// Returns connections parked [`WARM_FOR`] or longer to the pool (all with `all`).
    pub(super) fn trim(&self, all: bool) {
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
pub(super) struct Routed(pub(super) Arc<Warm>);

impl Routed {
    pub(super) fn new(pool: PgPool) -> Self {
        Routed(Warm::new(pool))
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    pub(super) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        match self.0.take() {
            Some(conn) => Ok(conn),
            None => self.0.pool.acquire().await,
        }
    }
}

/// The connect options of a tenant's primary database (notifications are sent there).
pub(super) fn primary_options(
    default: &PgConnectOptions,
    storage: &Storage,
) -> Option<PgConnectOptions> {
    match storage {
        Storage::Default => Some(default.clone()),
        Storage::OwnDatabase { name } => Some(default.clone().database(name)),
        Storage::External(external) => external_options(default, external, false).ok(),
    }
}

/// How to reach a database given by the operator (its replica when `replica`): with its
/// URL when this service may read it, else with this service's own login (user, password
/// and TLS settings of `default`) at its location.
pub(super) fn external_options(
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
