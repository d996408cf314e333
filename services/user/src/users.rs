//! `borough.user.v1.UserService`: tenants' users, on the tenant's pool.
//!
//! Every statement filters on `tenant_id` in code *and* runs in a transaction scoped to
//! the tenant, where row-level security refuses other tenants' rows regardless.

use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::page;
use borough_proto::user::v1::{
    CreateUserRequest, CreateUserResponse, DeleteUserRequest, DeleteUserResponse, GetUserRequest,
    GetUserResponse, ImportFailedChunk, ImportRejection, ImportUsersRequest, ImportUsersResponse,
    ListUsersRequest, ListUsersResponse, UpdateUserRequest, UpdateUserResponse, User,
    user_service_server::UserService,
};
use borough_proto::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use borough_tenancy::rows::UserRow;
use borough_tenancy::{PoolRouter, RouteError, TenantTx, db};
use borough_tenant::TenantContext;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::validate;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("no user with id {0}")]
    NotFound(Uuid),
    #[error("a user with email {0:?} already exists")]
    EmailTaken(String),
    #[error("user {id} has version {actual}, not the expected {expected}")]
    VersionMismatch {
        id: Uuid,
        expected: i64,
        actual: i64,
    },
    #[error("Idempotency-Key {0:?} was used with a different request")]
    KeyReused(String),
    #[error("a request with Idempotency-Key {0:?} is in progress; retry shortly")]
    KeyInProgress(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl ServiceError for UserError {
    fn kind(&self) -> ErrorKind {
        match self {
            UserError::Invalid(_) => ErrorKind::InvalidArgument,
            UserError::NotFound(_) => ErrorKind::NotFound,
            UserError::EmailTaken(_) => ErrorKind::AlreadyExists,
            UserError::VersionMismatch { .. } => ErrorKind::PreconditionFailed,
            UserError::KeyReused(_) => ErrorKind::Unprocessable,
            UserError::KeyInProgress(_) => ErrorKind::Conflict,
            UserError::Database(e) => db::classify(e),
            UserError::Route(e) => e.kind(),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            _ if self.is_tenant_moved() => {
                "the tenant is moving to another placement; retry in a moment".to_owned()
            }
            UserError::Database(e) => db::public_detail(e),
            UserError::Route(e) => e.public_detail(),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        self.is_tenant_moved()
            .then_some(std::time::Duration::from_secs(1))
    }
}

impl From<UserError> for Status {
    fn from(err: UserError) -> Status {
        match err {
            // Its own detail and retry hint.
            UserError::Route(e) => to_status(&e),
            err => to_status(&err),
        }
    }
}

const COLUMNS: &str = UserRow::COLUMNS;

/// How soon a write refused by a move's fence is tried again (with the route read again).
const MOVED_RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a write waits for a fenced tenant's switch when its caller set no deadline.
const MOVED_WAIT_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

impl UserError {
    /// The write reached a copy of the tenant that a move has fenced (SQLSTATE BM001).
    fn is_tenant_moved(&self) -> bool {
        match self {
            UserError::Database(e) | UserError::Route(RouteError::Database(e)) => {
                db::is_tenant_moved(e)
            }
            _ => false,
        }
    }
}

fn parse_id(id: &str) -> Result<Uuid, UserError> {
    Uuid::parse_str(id).map_err(|_| UserError::Invalid(format!("{id:?} is not a valid user id")))
}

/// Maps a unique violation on the email index to `EmailTaken`.
fn email_conflict(err: sqlx::Error, email: &str) -> UserError {
    if db::constraint(&err) == Some("users_tenant_email") {
        UserError::EmailTaken(email.to_owned())
    } else {
        UserError::Database(err)
    }
}

/// Locks the user's row for the rest of the transaction, so the version checked is the
/// version written over; fails when it is absent or not at `expected` (when given).
async fn lock_at_version(
    tx: &mut TenantTx,
    ctx: &TenantContext,
    id: Uuid,
    expected: Option<i64>,
) -> Result<(), UserError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM users WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
            .bind(ctx.tenant_id.as_uuid())
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let actual = current.ok_or(UserError::NotFound(id))?;
    match expected {
        Some(expected) if expected != actual => Err(UserError::VersionMismatch {
            id,
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// An idempotency key: 1 to 255 visible ASCII characters.
fn idempotency_key(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, UserError> {
    let Some(value) = metadata.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            UserError::Invalid(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// The idempotency keys of an import's chunks: `<key>#<n>`.
struct ChunkKeys<'a> {
    key: Option<&'a str>,
    next: u64,
    replayed: bool,
}

impl ChunkKeys<'_> {
    fn next_key(&mut self) -> Option<String> {
        self.next += 1;
        self.key.map(|key| format!("{key}#{}", self.next))
    }
}

/// What an idempotency key's record says: replay its response, or go on with the write.
enum Recorded {
    Replay(Vec<u8>),
    New,
}

#[derive(Clone)]
pub struct Users {
    router: PoolRouter,
    idempotency_ttl: std::time::Duration,
}

impl Users {
    pub fn new(router: PoolRouter, idempotency_ttl: std::time::Duration) -> Self {
        Users {
            router,
            idempotency_ttl,
        }
    }

    /// Claims `key` for this transaction (another transaction holding it: 409), then looks
    /// for its record: the same request gets the recorded response back, another one 422.
    /// Expired records are cleared (this key's, and a few others).
    async fn claim_key(
        tx: &mut TenantTx,
        ctx: &TenantContext,
        key: &str,
        method: &str,
        hash: &[u8],
    ) -> Result<Recorded, UserError> {
        let claimed: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('idempotency:' || $1 || ':' || $2, 0))",
        )
        .bind(ctx.tenant_id.to_string())
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        if !claimed {
            return Err(UserError::KeyInProgress(key.to_owned()));
        }
        #[derive(sqlx::FromRow)]
        struct Record {
            method: String,
            request_hash: Vec<u8>,
            response: Vec<u8>,
        }
        let recorded: Option<Record> = sqlx::query_as(
            "SELECT method, request_hash, response FROM idempotency_keys
             WHERE tenant_id = $1 AND key = $2 AND expires_at > now()",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        match recorded {
            Some(record) if record.method == method && record.request_hash == hash => {
                Ok(Recorded::Replay(record.response))
            }
            Some(_) => Err(UserError::KeyReused(key.to_owned())),
            None => {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND expires_at <= now()
                     AND (key = $2 OR key IN (SELECT key FROM idempotency_keys
                          WHERE tenant_id = $1 AND expires_at <= now() LIMIT 16))",
                )
                .bind(ctx.tenant_id.as_uuid())
                .bind(key)
                .execute(&mut **tx)
                .await?;
                Ok(Recorded::New)
            }
        }
    }

    /// Records `response` under `key`, in the write's transaction.
    async fn record_key(
        &self,
        tx: &mut TenantTx,
        ctx: &TenantContext,
        key: &str,
        method: &str,
        hash: &[u8],
        response: &[u8],
    ) -> Result<(), UserError> {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(key)
        .bind(method)
        .bind(hash)
        .bind(response)
        .bind(self.idempotency_ttl.as_secs_f64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Creates a user once per idempotency key: the user and the key's record commit
    /// together, and a repeat returns the first reply (`true`: replayed).
    pub async fn create_once(
        &self,
        ctx: &TenantContext,
        name: &str,
        email: &str,
        key: Option<&str>,
    ) -> Result<(User, bool), UserError> {
        let Some(key) = key else {
            return Ok((self.create(ctx, name, email).await?, false));
        };
        const METHOD: &str = "CreateUser";
        let hash = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for part in [METHOD, name, email] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            h.finalize().to_vec()
        };
        let name = validate::name(name).map_err(UserError::Invalid)?;
        let email = validate::email(email).map_err(UserError::Invalid)?;
        let mut tx = self.begin(ctx).await?;
        if let Recorded::Replay(response) =
            Self::claim_key(&mut tx, ctx, key, METHOD, &hash).await?
        {
            let user = <User as prost::Message>::decode(response.as_slice())
                .map_err(|e| UserError::Database(sqlx::Error::Decode(Box::new(e))))?;
            tracing::info!(tenant = %ctx.tenant_id, user = %user.id, "create replayed for its idempotency key");
            return Ok((user, true));
        }
        let user = Self::insert_user(&mut tx, ctx, &name, &email).await?;
        let response = prost::Message::encode_to_vec(&user);
        self.record_key(&mut tx, ctx, key, METHOD, &hash, &response)
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %ctx.tenant_id, user = %user.id, "user created");
        Ok((user, false))
    }

    async fn insert_user(
        tx: &mut TenantTx,
        ctx: &TenantContext,
        name: &str,
        email: &str,
    ) -> Result<User, UserError> {
        let row: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO users (tenant_id, id, name, email) VALUES ($1, $2, $3, $4)
             RETURNING {COLUMNS}"
        )))
        .bind(ctx.tenant_id.as_uuid())
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(email)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| email_conflict(e, email))?;
        Ok(User::from(row))
    }

    async fn begin(&self, ctx: &TenantContext) -> Result<TenantTx, UserError> {
        Ok(self.router.begin(ctx).await?)
    }

    /// Runs `write`, and again while the copy of the tenant it reached is fenced by a
    /// move: each time with the tenant's route read again, so that once the move switches
    /// the write lands where the tenant is now. A fenced write changed nothing (its
    /// transaction failed whole), so trying it again is safe. Bounded by the caller's
    /// deadline (or [`MOVED_WAIT_AT_MOST`]); past it the caller gets 503 to retry.
    async fn through_moves<T, F, Fut>(
        &self,
        ctx: &TenantContext,
        mut write: F,
    ) -> Result<T, UserError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, UserError>>,
    {
        let started = std::time::Instant::now();
        loop {
            match write().await {
                Err(e) if e.is_tenant_moved() => {
                    self.router.invalidate(ctx.tenant_id);
                    let out_of_time = match ctx.remaining() {
                        Some(left) => left <= MOVED_RETRY_EVERY,
                        None => started.elapsed() >= MOVED_WAIT_AT_MOST,
                    };
                    if out_of_time {
                        tracing::warn!(tenant = %ctx.tenant_id, waited_ms = started.elapsed().as_millis() as u64, "write refused: the tenant is being moved and did not switch in time");
                        return Err(e);
                    }
                    tokio::time::sleep(MOVED_RETRY_EVERY).await;
                }
                other => return other,
            }
        }
    }

    pub async fn create(
        &self,
        ctx: &TenantContext,
        name: &str,
        email: &str,
    ) -> Result<User, UserError> {
        let name = validate::name(name).map_err(UserError::Invalid)?;
        let email = validate::email(email).map_err(UserError::Invalid)?;
        // One prepared call, committed as it ends (migrations/tenant/0006_create_user.sql):
        // one round trip where a transaction takes three. Lock waits (a concurrent insert
        // of the same email) are bounded by what is left of the deadline.
        let lock_timeout = ctx.remaining().map_or_else(
            || "0".to_owned(),
            |left| format!("{}ms", left.as_millis().max(1)),
        );
        let row: Option<UserRow> = self
            .router
            .call_tenant_function(ctx, false, "create_user($1, $2, $3, $4, $5)", {
                let (name, email) = (name.clone(), email.clone());
                move |q| {
                    q.bind(Uuid::now_v7())
                        .bind(name)
                        .bind(email)
                        .bind(lock_timeout)
                }
            })
            .await
            .map_err(|e| match e {
                borough_tenancy::RouteError::Database(e) => email_conflict(e, &email),
                e => UserError::from(e),
            })?;
        let user = User::from(row.ok_or_else(|| UserError::Database(sqlx::Error::RowNotFound))?);
        tracing::info!(tenant = %ctx.tenant_id, user = %user.id, "user created");
        Ok(user)
    }

    pub async fn get(&self, ctx: &TenantContext, id: &str) -> Result<User, UserError> {
        let id = parse_id(id)?;
        let mut tx = self.begin(ctx).await?;
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(ctx.tenant_id.as_uuid())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(User::from).ok_or(UserError::NotFound(id))
    }

    pub async fn update(
        &self,
        ctx: &TenantContext,
        request: &UpdateUserRequest,
    ) -> Result<User, UserError> {
        let id = parse_id(&request.id)?;
        let name = request
            .name
            .as_deref()
            .map(validate::name)
            .transpose()
            .map_err(UserError::Invalid)?;
        let email = request
            .email
            .as_deref()
            .map(validate::email)
            .transpose()
            .map_err(UserError::Invalid)?;
        let mut tx = self.begin(ctx).await?;
        lock_at_version(&mut tx, ctx, id, request.expected_version).await?;
        let row: UserRow = if name.is_none() && email.is_none() {
            // Nothing to change: no new version.
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
            )))
            .bind(ctx.tenant_id.as_uuid())
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE users
                    SET name = COALESCE($3, name), email = COALESCE($4, email),
                        version = version + 1, updated_at = now()
                  WHERE tenant_id = $1 AND id = $2
              RETURNING {COLUMNS}"
            )))
            .bind(ctx.tenant_id.as_uuid())
            .bind(id)
            .bind(name.as_deref())
            .bind(email.as_deref())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| email_conflict(e, email.as_deref().unwrap_or_default()))?
        };
        tx.commit().await?;
        tracing::info!(tenant = %ctx.tenant_id, user = %id, version = row.version, "user updated");
        Ok(User::from(row))
    }

    pub async fn delete(
        &self,
        ctx: &TenantContext,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<(), UserError> {
        let id = parse_id(id)?;
        let mut tx = self.begin(ctx).await?;
        lock_at_version(&mut tx, ctx, id, expected_version).await?;
        sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(ctx.tenant_id.as_uuid())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = %ctx.tenant_id, user = %id, "user deleted");
        Ok(())
    }

    pub async fn list(
        &self,
        ctx: &TenantContext,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListUsersResponse, UserError> {
        let limit = page::page_size(page_size).map_err(UserError::Invalid)?;
        let after = page::decode_token(page_token).map_err(UserError::Invalid)?;
        let mut tx = self.begin(ctx).await?;
        // One row more than the page tells whether another page follows.
        let mut rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users
              WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
              ORDER BY id LIMIT $3"
        )))
        .bind(ctx.tenant_id.as_uuid())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => page::encode_token(last.id),
            _ => String::new(),
        };
        Ok(ListUsersResponse {
            users: rows.into_iter().map(User::from).collect(),
            next_page_token,
        })
    }
}

/// Valid import rows committed per transaction.
pub const IMPORT_CHUNK: usize = 500;

/// An import's report as it is built, bounded whatever the input: the rejected rows with
/// the lowest line numbers (at most `MAX_IMPORT_REJECTIONS`, kept in a max-heap so a later
/// chunk's earlier lines still make the cut) and the first failed chunks, in full, and
/// counts of all of them.
#[derive(Default)]
struct Report {
    received: u64,
    created: u64,
    rejected: std::collections::BinaryHeap<(u64, String)>,
    rejected_count: u64,
    failed_chunks: Vec<ImportFailedChunk>,
    failed_chunk_count: u64,
}

impl Report {
    fn reject(&mut self, line: u64, reason: String) {
        use borough_proto::user::{MAX_IMPORT_REJECTIONS, bounded_reason};
        self.rejected_count += 1;
        if self.rejected.len() < MAX_IMPORT_REJECTIONS {
            self.rejected.push((line, bounded_reason(reason)));
        } else if self.rejected.peek().is_some_and(|(last, _)| line < *last) {
            self.rejected.pop();
            self.rejected.push((line, bounded_reason(reason)));
        }
    }

    fn fail_chunk(&mut self, chunk: ImportFailedChunk) {
        self.failed_chunk_count += 1;
        if self.failed_chunks.len() < borough_proto::user::MAX_IMPORT_FAILED_CHUNKS {
            self.failed_chunks.push(ImportFailedChunk {
                reason: borough_proto::user::bounded_reason(chunk.reason),
                ..chunk
            });
        }
    }

    fn finish(self) -> ImportUsersResponse {
        ImportUsersResponse {
            received: self.received,
            created: self.created,
            rejected: self
                .rejected
                .into_sorted_vec()
                .into_iter()
                .map(|(line, reason)| ImportRejection { line, reason })
                .collect(),
            rejected_count: self.rejected_count,
            failed_chunks: self.failed_chunks,
            failed_chunk_count: self.failed_chunk_count,
        }
    }
}

/// A validated import row.
struct ImportRow {
    line: u64,
    id: Uuid,
    name: String,
    email: String,
}

impl Users {
    /// Creates users from a stream of rows: each validated alone, the valid ones inserted
    /// `IMPORT_CHUNK` per transaction. A duplicate email (in the tenant or earlier in the
    /// import) rejects its row; a chunk whose transaction fails is reported whole and
    /// created nothing.
    /// Imports rows in chunks of `IMPORT_CHUNK`, one transaction each. With an idempotency
    /// key, each chunk is recorded under `<key>#<chunk number>` in its own transaction:
    /// importing the same rows again with the same key replays committed chunks (their
    /// outcome as first reported, nothing written twice) and retries failed ones. The
    /// `bool`: whether any chunk was replayed.
    pub async fn import(
        &self,
        ctx: &TenantContext,
        rows: &mut Streaming<ImportUsersRequest>,
        key: Option<&str>,
    ) -> Result<(ImportUsersResponse, bool), Status> {
        let mut chunks = ChunkKeys {
            key,
            next: 0,
            replayed: false,
        };
        let mut report = Report::default();
        let mut chunk: Vec<ImportRow> = Vec::with_capacity(IMPORT_CHUNK);
        while let Some(row) = rows.message().await? {
            report.received += 1;
            let valid = validate::name(&row.name)
                .and_then(|name| validate::email(&row.email).map(|email| (name, email)));
            match valid {
                Ok((name, email)) => chunk.push(ImportRow {
                    line: row.line,
                    id: Uuid::now_v7(),
                    name,
                    email,
                }),
                Err(reason) => report.reject(row.line, reason),
            }
            if chunk.len() == IMPORT_CHUNK {
                self.import_chunk(ctx, &mut chunk, &mut report, &mut chunks)
                    .await?;
            }
        }
        if !chunk.is_empty() {
            self.import_chunk(ctx, &mut chunk, &mut report, &mut chunks)
                .await?;
        }
        let report = report.finish();
        tracing::info!(
            tenant = %ctx.tenant_id,
            received = report.received,
            created = report.created,
            rejected = report.rejected_count,
            failed_chunks = report.failed_chunk_count,
            replayed = chunks.replayed,
            "users imported"
        );
        Ok((report, chunks.replayed))
    }

    /// Imports one chunk into `report`. A failed transaction is reported as a failed
    /// chunk; only an idempotency-key conflict (reused with other rows: 422, in use: 409)
    /// ends the import.
    async fn import_chunk(
        &self,
        ctx: &TenantContext,
        chunk: &mut Vec<ImportRow>,
        report: &mut Report,
        chunks: &mut ChunkKeys<'_>,
    ) -> Result<(), UserError> {
        let rows = std::mem::take(chunk);
        let key = chunks.next_key();
        match self
            .through_moves(ctx, || self.insert_chunk(ctx, &rows, key.as_deref()))
            .await
        {
            Ok((outcome, replayed)) => {
                chunks.replayed |= replayed;
                report.created += outcome.created;
                for rejection in outcome.rejected {
                    report.reject(rejection.line, rejection.reason);
                }
            }
            Err(e @ (UserError::KeyReused(_) | UserError::KeyInProgress(_))) => return Err(e),
            Err(e) => {
                let status = Status::from(e);
                report.fail_chunk(ImportFailedChunk {
                    first_line: rows.first().map_or(0, |r| r.line),
                    last_line: rows.last().map_or(0, |r| r.line),
                    rows: rows.len() as u64,
                    reason: status.message().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// One transaction: the chunk's outcome (rows created; duplicates rejected), recorded
    /// under its idempotency key when there is one, or the recorded outcome replayed.
    async fn insert_chunk(
        &self,
        ctx: &TenantContext,
        rows: &[ImportRow],
        key: Option<&str>,
    ) -> Result<(ImportUsersResponse, bool), UserError> {
        const METHOD: &str = "ImportUsers";
        let mut tx = self.begin(ctx).await?;
        let hash = key.map(|_| {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for row in rows {
                h.update(row.line.to_be_bytes());
                for part in [&row.name, &row.email] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
            }
            h.finalize().to_vec()
        });
        if let (Some(key), Some(hash)) = (key, &hash)
            && let Recorded::Replay(response) =
                Self::claim_key(&mut tx, ctx, key, METHOD, hash).await?
        {
            let outcome = <ImportUsersResponse as prost::Message>::decode(response.as_slice())
                .map_err(|e| UserError::Database(sqlx::Error::Decode(Box::new(e))))?;
            return Ok((outcome, true));
        }
        let created: std::collections::HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO users (tenant_id, id, name, email)
             SELECT $1, r.id, r.name, r.email
               FROM UNNEST($2::uuid[], $3::text[], $4::text[]) AS r(id, name, email)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.email.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let rejected: Vec<ImportRejection> = rows
            .iter()
            .filter(|r| !created.contains(&r.id))
            .map(|row| ImportRejection {
                line: row.line,
                reason: format!("a user with email {:?} already exists", row.email),
            })
            .collect();
        let outcome = ImportUsersResponse {
            created: created.len() as u64,
            rejected_count: rejected.len() as u64,
            rejected,
            ..ImportUsersResponse::default()
        };
        if let (Some(key), Some(hash)) = (key, &hash) {
            let response = prost::Message::encode_to_vec(&outcome);
            self.record_key(&mut tx, ctx, key, METHOD, hash, &response)
                .await?;
        }
        tx.commit().await?;
        Ok((outcome, false))
    }
}

#[tonic::async_trait]
impl UserService for Users {
    async fn import_users(
        &self,
        request: Request<Streaming<ImportUsersRequest>>,
    ) -> Result<Response<ImportUsersResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let key = idempotency_key(request.metadata())?;
        let mut rows = request.into_inner();
        let (report, replayed) = self.import(&ctx, &mut rows, key.as_deref()).await?;
        let mut response = Response::new(report);
        if replayed {
            response.metadata_mut().insert(
                IDEMPOTENT_REPLAYED,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let key = idempotency_key(request.metadata())?;
        let req = request.into_inner();
        let (user, replayed) = self
            .through_moves(&ctx, || {
                self.create_once(&ctx, &req.name, &req.email, key.as_deref())
            })
            .await?;
        let mut response = Response::new(CreateUserResponse { user: Some(user) });
        if replayed {
            response.metadata_mut().insert(
                IDEMPOTENT_REPLAYED,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(response)
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let user = self.get(&ctx, &request.get_ref().id).await?;
        Ok(Response::new(GetUserResponse { user: Some(user) }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let user = self
            .through_moves(&ctx, || self.update(&ctx, request.get_ref()))
            .await?;
        Ok(Response::new(UpdateUserResponse { user: Some(user) }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let req = request.get_ref();
        self.through_moves(&ctx, || self.delete(&ctx, &req.id, req.expected_version))
            .await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let req = request.get_ref();
        let page = self.list(&ctx, req.page_size, &req.page_token).await?;
        Ok(Response::new(page))
    }
}
