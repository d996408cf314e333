//! Database errors in Borough's terms, pool settings, and the database as a service's
//! readiness dependency.

use std::time::Duration;

use borough_error::ErrorKind;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// PostgreSQL SQLSTATEs we act on.
pub mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// Borough's own: a write reached a copy of a tenant that a move has fenced
    /// (`migrations/tenant/0007_live_moves.sql`); the tenant is (about to be) elsewhere.
    pub const TENANT_MOVED: &str = "BM001";
}

/// Whether `err` is a write refused by a move's fence ([`sqlstate::TENANT_MOVED`]).
pub fn is_tenant_moved(err: &sqlx::Error) -> bool {
    sqlstate(err).as_deref() == Some(sqlstate::TENANT_MOVED)
}

/// The kind of a database error, by SQLSTATE or by failure class.
pub fn classify(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(sqlstate::UNIQUE_VIOLATION) => ErrorKind::AlreadyExists,
            Some(sqlstate::SERIALIZATION_FAILURE | sqlstate::DEADLOCK_DETECTED) => {
                ErrorKind::Conflict
            }
            Some(sqlstate::QUERY_CANCELED) => ErrorKind::DeadlineExceeded,
            Some(
                sqlstate::ADMIN_SHUTDOWN
                | sqlstate::CANNOT_CONNECT_NOW
                | sqlstate::TOO_MANY_CONNECTIONS
                | sqlstate::TENANT_MOVED,
            ) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// What a caller may read of a database error: a sentence for its kind, never the
/// driver's text (which names tables, constraints and values).
pub fn public_detail(err: &sqlx::Error) -> String {
    match classify(err) {
        ErrorKind::AlreadyExists => "a record with the same unique value already exists",
        ErrorKind::Conflict => "the change conflicted with a concurrent one; retry it",
        ErrorKind::DeadlineExceeded => "the database did not finish within the request's deadline",
        ErrorKind::NotFound => "no such record",
        kind => kind.title(),
    }
    .to_owned()
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The constraint a database error names, if any.
pub fn constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// How services open their pools.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a call waits for a connection before failing with UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// A pool that connects lazily, so a service starts (and reports not-ready) while its
/// database is down, and recovers without a restart when it returns.
pub fn lazy_pool(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    // sqlx logs statement text (never bound values) at debug, slow ones at warn.
    let options: PgConnectOptions = url.parse()?;
    Ok(pool_options(settings, Duration::from_secs(300)).connect_lazy_with(options))
}

/// A connection idle longer than this is pinged before it is handed out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The options every request-serving pool shares. sqlx pings each connection before
/// handing it out (a round trip on every acquire: one in five of a cached-miss read's);
/// here only a connection idle for [`PING_AFTER_IDLE`] is pinged. One that died while
/// busy fails its next statement, which the router reports as the database unreachable.
pub fn pool_options(settings: &PoolSettings, idle_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(idle_timeout))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A pool of one long-lived connection for a `PgListener`, so listening never takes a
/// connection from a service's pool (lazy: the database may be down at start).
pub fn listener_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options)
}

/// A service's default pool as the dependency its readiness follows (`database`): one
/// `SELECT 1` per check, closed after the service drains.
pub struct Database(pub PgPool);

impl borough_telemetry::Dependency for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> borough_telemetry::dependency::DependencyFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&self.0)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("unreachable ({})", classify(&e))),
            }
        })
    }

    fn close(&self) -> borough_telemetry::dependency::DependencyFuture<'_, ()> {
        Box::pin(self.0.close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_map_to_kinds_by_class() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorKind::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorKind::NotFound);
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            ErrorKind::Unavailable
        );
    }
}
