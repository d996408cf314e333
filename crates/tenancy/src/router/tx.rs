//! A transaction scoped to one tenant, begun and scoped in one round trip.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use tokio::sync::OwnedSemaphorePermit;

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
    pub(super) async fn begin(
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
