//! The data side of a move: connections to its source and target, the snapshot copy,
//! catching up between snapshots, the fence, and the comparison of both copies.
//!
//! Every connection here is a dedicated one (not a pool's): killed with the process, it
//! takes its transaction and its locks with it.
//!
//! What a move carries, per table:
//! - `users`: every row of the snapshot, then each user the outbox (`user_changes`) names
//!   as changed by a transaction committed between two snapshots (`pg_visible_in_snapshot`
//!   on the outbox row's `txid`), copied again as it is at the later snapshot (or deleted);
//! - `idempotency_keys`: the unexpired records of the snapshot, then every record written
//!   between two snapshots (its own `txid`). Expired records are not carried (nor compared).
//!
//! The outbox itself is not carried: it serves the query service's catch-up, which the
//! switch replaces by dropping the tenant's cached users.

use std::time::Duration;

use borough_tenancy::PoolRouter;
use borough_tenancy::placement::Route;
use borough_tenant::TenantId;
use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

/// How long connecting to a side may take before it is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound on any one statement of a move (a copy batch, a comparison).
const STATEMENT_TIMEOUT: &str = "5min";

/// Connects to `route`'s database (as this service logs in there), scoped to the tenant
/// for the session: its id for row-level security, its schema as the search path, and,
/// with `relocating`, rows written are not changes (no outbox, no notification, no fence
/// check: `migrations/tenant/0007`).
pub(super) async fn connect(
    router: &PoolRouter,
    route: &Route,
    relocating: bool,
) -> Result<PgConnection, sqlx::Error> {
    let options = router.connect_options(route)?;
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(conn) => conn?,
        Err(_) => {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting timed out",
            )));
        }
    };
    sqlx::query(
        "SELECT set_config('borough.tenant_id', $1, false),
                set_config('search_path', $2, false),
                set_config('borough.relocating', $3, false),
                set_config('statement_timeout', $4, false)",
    )
    .bind(route.tenant_id.to_string())
    .bind(format!("\"{}\"", route.schema))
    .bind(if relocating { "on" } else { "off" })
    .bind(STATEMENT_TIMEOUT)
    .execute(&mut conn)
    .await?;
    Ok(conn)
}

/// Users as columns (what a batch moves).
#[derive(Default)]
struct Users {
    id: Vec<Uuid>,
    name: Vec<String>,
    email: Vec<String>,
    version: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
}

type UserTuple = (Uuid, String, String, i64, DateTime<Utc>, DateTime<Utc>);

impl Users {
    fn from_rows(rows: Vec<UserTuple>) -> Users {
        let mut users = Users::default();
        for (id, name, email, version, created_at, updated_at) in rows {
            users.id.push(id);
            users.name.push(name);
            users.email.push(email);
            users.version.push(version);
            users.created_at.push(created_at);
            users.updated_at.push(updated_at);
        }
        users
    }

    async fn insert(&self, conn: &mut PgConnection, tenant: TenantId) -> Result<u64, sqlx::Error> {
        if self.id.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "INSERT INTO users (tenant_id, id, name, email, version, created_at, updated_at)
             SELECT $1, r.* FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int8[],
                                        $6::timestamptz[], $7::timestamptz[]) AS r",
        )
        .bind(tenant.as_uuid())
        .bind(&self.id)
        .bind(&self.name)
        .bind(&self.email)
        .bind(&self.version)
        .bind(&self.created_at)
        .bind(&self.updated_at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Idempotency records as columns.
#[derive(Default)]
struct Records {
    key: Vec<String>,
    method: Vec<String>,
    request_hash: Vec<Vec<u8>>,
    response: Vec<Vec<u8>>,
    created_at: Vec<DateTime<Utc>>,
    expires_at: Vec<DateTime<Utc>>,
}

type RecordTuple = (
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    DateTime<Utc>,
    DateTime<Utc>,
);

impl Records {
    fn from_rows(rows: Vec<RecordTuple>) -> Records {
        let mut records = Records::default();
        for (key, method, request_hash, response, created_at, expires_at) in rows {
            records.key.push(key);
            records.method.push(method);
            records.request_hash.push(request_hash);
            records.response.push(response);
            records.created_at.push(created_at);
            records.expires_at.push(expires_at);
        }
        records
    }

    async fn upsert(&self, conn: &mut PgConnection, tenant: TenantId) -> Result<u64, sqlx::Error> {
        if self.key.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "INSERT INTO idempotency_keys
                 (tenant_id, key, method, request_hash, response, created_at, expires_at)
             SELECT $1, r.* FROM UNNEST($2::text[], $3::text[], $4::bytea[], $5::bytea[],
                                        $6::timestamptz[], $7::timestamptz[]) AS r
             ON CONFLICT (tenant_id, key) DO UPDATE
                SET method = EXCLUDED.method, request_hash = EXCLUDED.request_hash,
                    response = EXCLUDED.response, created_at = EXCLUDED.created_at,
                    expires_at = EXCLUDED.expires_at",
        )
        .bind(tenant.as_uuid())
        .bind(&self.key)
        .bind(&self.method)
        .bind(&self.request_hash)
        .bind(&self.response)
        .bind(&self.created_at)
        .bind(&self.expires_at)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }
}

const USER_COLUMNS: &str = "id, name, email, version, created_at, updated_at";
const RECORD_COLUMNS: &str = "key, method, request_hash, response, created_at, expires_at";

/// The snapshot copy, batch by batch, inside one REPEATABLE READ transaction on the
/// source (every batch sees the same snapshot).
pub(super) struct SnapshotCopy<'a> {
    src: &'a mut PgConnection,
    dst: &'a mut PgConnection,
    tenant: TenantId,
    batch: i64,
    /// The snapshot, as `pg_current_snapshot()` wrote it.
    pub snapshot: String,
    /// Rows of the snapshot (users and unexpired idempotency records).
    pub total: i64,
    after_user: Option<Uuid>,
    after_key: Option<String>,
    users_done: bool,
}

impl<'a> SnapshotCopy<'a> {
    pub(super) async fn begin(
        src: &'a mut PgConnection,
        dst: &'a mut PgConnection,
        tenant: TenantId,
        batch: i64,
    ) -> Result<SnapshotCopy<'a>, sqlx::Error> {
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *src)
            .await?;
        // The first statement takes the transaction's snapshot: this one, which names it.
        let (snapshot, users, records): (String, i64, i64) = sqlx::query_as(
            "SELECT pg_current_snapshot()::text,
                    (SELECT count(*) FROM users WHERE tenant_id = $1),
                    (SELECT count(*) FROM idempotency_keys
                      WHERE tenant_id = $1 AND expires_at > now())",
        )
        .bind(tenant.as_uuid())
        .fetch_one(&mut *src)
        .await?;
        Ok(SnapshotCopy {
            src,
            dst,
            tenant,
            batch,
            snapshot,
            total: users + records,
            after_user: None,
            after_key: None,
            users_done: false,
        })
    }

    /// Copies the next batch; `None` when everything is copied (the source's transaction
    /// is then ended).
    pub(super) async fn next(&mut self) -> Result<Option<u64>, sqlx::Error> {
        if !self.users_done {
            let rows: Vec<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {USER_COLUMNS} FROM users
                  WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
                  ORDER BY id LIMIT $3"
            )))
            .bind(self.tenant.as_uuid())
            .bind(self.after_user)
            .bind(self.batch)
            .fetch_all(&mut *self.src)
            .await?;
            if let Some(last) = rows.last() {
                self.after_user = Some(last.0);
                let copied = Users::from_rows(rows).insert(self.dst, self.tenant).await?;
                return Ok(Some(copied));
            }
            self.users_done = true;
        }
        let rows: Vec<RecordTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM idempotency_keys
              WHERE tenant_id = $1 AND expires_at > now() AND ($2::text IS NULL OR key > $2)
              ORDER BY key LIMIT $3"
        )))
        .bind(self.tenant.as_uuid())
        .bind(self.after_key.as_deref())
        .bind(self.batch)
        .fetch_all(&mut *self.src)
        .await?;
        if let Some(last) = rows.last() {
            self.after_key = Some(last.0.clone());
            let copied = Records::from_rows(rows)
                .upsert(self.dst, self.tenant)
                .await?;
            return Ok(Some(copied));
        }
        sqlx::raw_sql("COMMIT").execute(&mut *self.src).await?;
        Ok(None)
    }
}

/// What one catch-up applied.
pub(super) struct CaughtUp {
    /// The snapshot the target now matches.
    pub snapshot: String,
    /// Outbox rows and idempotency records between the two snapshots.
    pub changes: i64,
    /// The users and idempotency keys changed between them.
    pub changed: Changed,
    /// The source's sums at the new snapshot, when asked for (`sums_at`).
    pub source_sums: Option<Vec<TableSum>>,
}

/// Rows changed between two snapshots.
#[derive(Debug, Default)]
pub(super) struct Changed {
    pub users: Vec<Uuid>,
    pub keys: Vec<String>,
}

impl Changed {
    /// Adds what changed between two later snapshots.
    pub(super) fn add(&mut self, later: Changed) {
        self.users.extend(later.users);
        self.users.sort_unstable();
        self.users.dedup();
        self.keys.extend(later.keys);
        self.keys.sort_unstable();
        self.keys.dedup();
    }
}

/// Applies to the target what transactions committed between snapshot `since` and a new
/// snapshot of the source wrote, and returns the new one; with `sums_at`, also the
/// source's sums ([`sums`]) at that snapshot, to compare the target with once it is
/// applied.
pub(super) async fn catch_up(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tenant: TenantId,
    since: &str,
    sums_at: Option<DateTime<Utc>>,
) -> Result<CaughtUp, sqlx::Error> {
    let mut read = src
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *read)
        .await?;
    let (changed, outbox_rows): (Vec<Uuid>, i64) = sqlx::query_as(
        "SELECT coalesce(array_agg(DISTINCT user_id), '{}'), count(*)
           FROM user_changes
          WHERE tenant_id = $1 AND txid >= pg_snapshot_xmin($2::pg_snapshot)
            AND NOT pg_visible_in_snapshot(txid, $2::pg_snapshot)",
    )
    .bind(tenant.as_uuid())
    .bind(since)
    .fetch_one(&mut *read)
    .await?;
    let users: Vec<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = ANY($2)"
    )))
    .bind(tenant.as_uuid())
    .bind(&changed)
    .fetch_all(&mut *read)
    .await?;
    let records: Vec<RecordTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RECORD_COLUMNS} FROM idempotency_keys
          WHERE tenant_id = $1 AND txid >= pg_snapshot_xmin($2::pg_snapshot)
            AND NOT pg_visible_in_snapshot(txid, $2::pg_snapshot)"
    )))
    .bind(tenant.as_uuid())
    .bind(since)
    .fetch_all(&mut *read)
    .await?;
    let source_sums = match sums_at {
        Some(cutoff) => Some(sums(&mut read, tenant, cutoff, None).await?),
        None => None,
    };
    read.commit().await?;

    let changes = outbox_rows + records.len() as i64;
    let keys: Vec<String> = records.iter().map(|r| r.0.clone()).collect();
    if changes > 0 {
        let mut write = dst.begin().await?;
        // Each changed user as it is now: gone, or its current row (deleted first, so
        // that emails swapped between users never collide half way).
        sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant.as_uuid())
            .bind(&changed)
            .execute(&mut *write)
            .await?;
        Users::from_rows(users).insert(&mut write, tenant).await?;
        Records::from_rows(records)
            .upsert(&mut write, tenant)
            .await?;
        write.commit().await?;
    }
    Ok(CaughtUp {
        snapshot,
        changes,
        changed: Changed {
            users: changed,
            keys,
        },
        source_sums,
    })
}

/// Changes committed on the source after `snapshot` (what the next catch-up has to do).
pub(super) async fn lag(
    src: &mut PgConnection,
    tenant: TenantId,
    snapshot: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM user_changes
                  WHERE tenant_id = $1 AND txid >= pg_snapshot_xmin($2::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(txid, $2::pg_snapshot))
              + (SELECT count(*) FROM idempotency_keys
                  WHERE tenant_id = $1 AND txid >= pg_snapshot_xmin($2::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(txid, $2::pg_snapshot))",
    )
    .bind(tenant.as_uuid())
    .bind(snapshot)
    .fetch_one(src)
    .await
}

/// Fences the tenant on the source: waits up to `wait` for the tenant's writes in flight
/// (writes arriving meanwhile queue behind), then records the fence; every later write of
/// the tenant there fails with SQLSTATE BM001. `false`: the writes in flight did not end
/// within `wait` (nothing fenced; the writes held meanwhile go on).
pub(super) async fn fence(
    src: &mut PgConnection,
    tenant: TenantId,
    move_id: Uuid,
    wait: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = src.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", wait.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    let locked = sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('borough.move:' || $1::uuid, 0))",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *tx)
    .await;
    match locked {
        Ok(_) => {}
        Err(e) if borough_tenancy::db::sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            tx.rollback().await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    sqlx::query(
        "INSERT INTO tenant_fences (tenant_id, move_id) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET move_id = EXCLUDED.move_id, fenced_at = now()",
    )
    .bind(tenant.as_uuid())
    .bind(move_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

const LOCK_NOT_AVAILABLE: &str = "55P03";

/// When the tenant was fenced on this side, if it is.
pub(super) async fn fenced_at(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT fenced_at FROM tenant_fences WHERE tenant_id = $1")
        .bind(tenant.as_uuid())
        .fetch_optional(conn)
        .await
}

/// Lifts the tenant's fence on this side (a move rolled back).
pub(super) async fn unfence(conn: &mut PgConnection, tenant: TenantId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tenant_fences WHERE tenant_id = $1")
        .bind(tenant.as_uuid())
        .execute(conn)
        .await?;
    Ok(())
}

/// One table's row count and checksum (a sum of 64-bit hashes of each row's columns;
/// timestamps as epoch seconds, so the session's time zone plays no part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableSum {
    pub table: &'static str,
    pub rows: i64,
    pub sum: String,
}

/// The tenant's tables summed on one side: each table's row count and checksum, of every
/// row, or with `only` of the rows it names (when the rest was compared before and has not
/// changed since). Idempotency records expiring before `cutoff` are left out (expired ones
/// are swept on the source and never carried).
pub(super) async fn sums(
    conn: &mut PgConnection,
    tenant: TenantId,
    cutoff: DateTime<Utc>,
    only: Option<&Changed>,
) -> Result<Vec<TableSum>, sqlx::Error> {
    let (users_only, keys_only) = match only {
        Some(_) => ("AND id = ANY($3)", "AND key = ANY($4)"),
        None => ("AND $3::uuid[] IS NULL", "AND $4::text[] IS NULL"),
    };
    let (users, users_sum, records, records_sum): (i64, String, i64, String) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM users WHERE tenant_id = $1 {users_only}),
                    (SELECT coalesce(sum(hashtextextended(concat_ws('|', id, name, email,
                            version, extract(epoch FROM created_at),
                            extract(epoch FROM updated_at)), 0)::numeric), 0)::text
                       FROM users WHERE tenant_id = $1 {users_only}),
                    (SELECT count(*) FROM idempotency_keys
                      WHERE tenant_id = $1 AND expires_at > $2 {keys_only}),
                    (SELECT coalesce(sum(hashtextextended(concat_ws('|', key, method,
                            md5(request_hash), md5(response), extract(epoch FROM created_at),
                            extract(epoch FROM expires_at)), 0)::numeric), 0)::text
                       FROM idempotency_keys
                      WHERE tenant_id = $1 AND expires_at > $2 {keys_only})"
        )))
        .bind(tenant.as_uuid())
        .bind(cutoff)
        .bind(only.map(|c| c.users.as_slice()))
        .bind(only.map(|c| c.keys.as_slice()))
        .fetch_one(conn)
        .await?;
    Ok(vec![
        TableSum {
            table: "users",
            rows: users,
            sum: users_sum,
        },
        TableSum {
            table: "idempotency_keys",
            rows: records,
            sum: records_sum,
        },
    ])
}
