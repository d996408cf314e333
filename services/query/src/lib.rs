//! The query service: the read side. Lookups through a per-replica cache (single-flight,
//! invalidated by the change feed, stale copies served while the database is unreachable),
//! search, export streams and batch lookups, all read from the tenant's pool (its read
//! replica where it has one).
//!
//! [`serve`] runs it on listeners it is given; `main.rs` only reads settings and calls it.

pub mod cache;
pub mod feed;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use borough_config_client::{Env, ServerSettings, SettingsError, Var};
use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::page;
use borough_proto::query::v1::batch_get_error::Reason;
use borough_proto::query::v1::batch_get_users_response::Result as BatchResult;
use borough_proto::query::v1::query_service_server::{QueryService, QueryServiceServer};
use borough_proto::query::v1::{
    BatchGetError, BatchGetUsersRequest, BatchGetUsersResponse, ExportUsersRequest,
    GetUserInfoRequest, SearchUsersRequest, SearchUsersResponse,
};
use borough_proto::time::from_timestamp;
use borough_proto::user::v1::User;
use borough_telemetry::Metrics;
use borough_tenancy::rows::UserRow;
use borough_tenancy::settings::DatabaseSettings;
use borough_tenancy::{PoolRouter, RouteError, db};
use borough_tenant::TenantContext;
use futures_util::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::cache::{CacheSettings, UserCache};

pub use borough_net::{Listeners, ServeError};

pub const SERVICE: &str = "query";

use borough_proto::query::{STALE_AGE_METADATA, STALE_METADATA};

/// Rows per `FETCH` of an export.
const EXPORT_BATCH: i64 = 500;
/// Export rows buffered between the database and the client: the memory bound.
const EXPORT_BUFFER: usize = 256;
/// Batch lookups resolved at once per call.
const BATCH_CONCURRENCY: usize = 16;
/// The longest search prefix.
const MAX_QUERY_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is not a valid user id")]
    InvalidId(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no user with id {0}")]
    NotFound(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl QueryError {
    /// The tenant's database could not be reached (a stale copy may be served).
    pub fn is_unreachable(&self) -> bool {
        match self {
            QueryError::Route(e) => e.is_unreachable(),
            QueryError::Database(e) => db::classify(e) == ErrorKind::Unavailable,
            _ => false,
        }
    }
}

impl ServiceError for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::InvalidId(_) | QueryError::Invalid(_) => ErrorKind::InvalidArgument,
            QueryError::NotFound(_) => ErrorKind::NotFound,
            QueryError::Database(e) => db::classify(e),
            QueryError::Route(e) => e.kind(),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            QueryError::Database(e) => db::public_detail(e),
            QueryError::Route(e) => e.public_detail(),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        self.is_unreachable()
            .then_some(std::time::Duration::from_secs(1))
    }
}

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Status {
        (&err).into()
    }
}

impl From<&QueryError> for Status {
    fn from(err: &QueryError) -> Status {
        match err {
            // Its own detail and retry hint.
            QueryError::Route(e) => to_status(e),
            err => to_status(err),
        }
    }
}

const COLUMNS: &str = UserRow::COLUMNS;

fn parse_id(raw: &str) -> Result<Uuid, QueryError> {
    Uuid::parse_str(raw).map_err(|_| QueryError::InvalidId(raw.to_owned()))
}

/// `abc` -> `abc%` for LIKE, with `%`, `_` and `\` in the input matched literally.
fn prefix_pattern(query: &str) -> String {
    let mut pattern = String::with_capacity(query.len() + 1);
    for c in query.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[derive(Clone, Default)]
struct QueryMetrics {
    active: Gauge,
    rows: Counter,
    /// Single-user reads that reached the database (cache misses after single-flight).
    user_reads: Counter,
}

#[derive(Clone)]
pub struct Query {
    router: PoolRouter,
    cache: UserCache,
    metrics: QueryMetrics,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Query {
    pub fn new(router: PoolRouter, cache: UserCache, metrics: &Metrics) -> Self {
        let counters = QueryMetrics::default();
        metrics.register(
            "export_streams_active",
            "Export streams being served right now",
            counters.active.clone(),
        );
        metrics.register(
            "export_rows",
            "Rows sent by export streams",
            counters.rows.clone(),
        );
        metrics.register(
            "user_reads",
            "Single-user reads sent to the database (cache misses, after single-flight)",
            counters.user_reads.clone(),
        );
        Query {
            router,
            cache,
            metrics: counters,
        }
    }

    async fn load(&self, ctx: TenantContext, id: Uuid) -> Result<User, QueryError> {
        self.metrics.user_reads.inc();
        // One prepared call in one round trip, the tenant scope a parameter
        // (migrations/tenant/0005_user_by_id.sql): the miss path's main cost.
        let row: Option<UserRow> = self
            .router
            .call_tenant_function(&ctx, true, "user_by_id($1, $2)", |q| q.bind(id))
            .await?;
        row.map(User::from).ok_or(QueryError::NotFound(id))
    }

    /// One user, through the cache.
    pub async fn user(
        &self,
        ctx: &TenantContext,
        id: Uuid,
        min_version: i64,
    ) -> Result<cache::Found, Arc<QueryError>> {
        let key = (ctx.tenant_id, id);
        let found = self
            .cache
            .get(
                key,
                min_version,
                || self.load(*ctx, id),
                QueryError::is_unreachable,
            )
            .await;
        let behind = match &found {
            Ok(found) => found.user.info.version < min_version,
            Err(e) => min_version > 0 && matches!(**e, QueryError::NotFound(_)),
        };
        if !behind {
            return found;
        }
        // Older than what the caller has written: the tenant may have just moved, and
        // its route here not re-read yet (the switch's notification on its way). Read
        // the route again, and the user once more.
        self.router.invalidate(ctx.tenant_id);
        self.cache.invalidate(&key).await;
        self.cache
            .get(
                key,
                min_version,
                || self.load(*ctx, id),
                QueryError::is_unreachable,
            )
            .await
    }

    pub async fn search(
        &self,
        ctx: &TenantContext,
        req: &SearchUsersRequest,
    ) -> Result<SearchUsersResponse, QueryError> {
        let limit = page::page_size(req.page_size).map_err(QueryError::Invalid)?;
        let after = page::decode_token(&req.page_token).map_err(QueryError::Invalid)?;
        let query = req.query.trim();
        if query.chars().count() > MAX_QUERY_LEN {
            return Err(QueryError::Invalid(format!(
                "the search text is longer than {MAX_QUERY_LEN} characters"
            )));
        }
        if query.contains('\0') {
            // No PostgreSQL text can hold a NUL: refused here, not as a database error.
            return Err(QueryError::Invalid(
                "q must not contain a NUL character".to_owned(),
            ));
        }
        let bound = |ts: &Option<prost_types::Timestamp>, what: &str| {
            ts.as_ref()
                .map(|t| {
                    from_timestamp(t)
                        .ok_or_else(|| QueryError::Invalid(format!("{what} is not a valid time")))
                })
                .transpose()
        };
        let created_after = bound(&req.created_after, "created_after")?;
        let created_before = bound(&req.created_before, "created_before")?;
        if let (Some(a), Some(b)) = (created_after, created_before)
            && a >= b
        {
            return Err(QueryError::Invalid(
                "created_after must be earlier than created_before".to_owned(),
            ));
        }
        let mut tx = self.router.begin_read(ctx).await?;
        let mut rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users
              WHERE tenant_id = $1
                AND ($2 = '%' OR lower(name) LIKE $2 OR lower(email) LIKE $2)
                AND ($3::timestamptz IS NULL OR created_at > $3)
                AND ($4::timestamptz IS NULL OR created_at < $4)
                AND ($5::uuid IS NULL OR id > $5)
              ORDER BY id LIMIT $6"
        )))
        .bind(ctx.tenant_id.as_uuid())
        .bind(prefix_pattern(query))
        .bind(created_after)
        .bind(created_before)
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
        Ok(SearchUsersResponse {
            users: rows.into_iter().map(User::from).collect(),
            next_page_token,
        })
    }

    /// Streams every user of the tenant from one snapshot (a cursor in a read-only
    /// transaction), `EXPORT_BATCH` rows per fetch, through a buffer of `EXPORT_BUFFER`:
    /// memory stays constant, and when the client goes away the next send fails, the
    /// cursor is closed with the transaction, and the database stops.
    pub async fn export(&self, ctx: TenantContext) -> Result<BoxStream<User>, QueryError> {
        // Open before answering, so that an unreachable database is an error, not an
        // empty stream.
        let mut tx = self.router.begin_read(&ctx).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DECLARE export NO SCROLL CURSOR FOR
             SELECT {COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY id"
        )))
        .bind(ctx.tenant_id.as_uuid())
        .execute(&mut *tx)
        .await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(EXPORT_BUFFER);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.active.inc();
            let fetch = format!("FETCH {EXPORT_BATCH} FROM export");
            'batches: loop {
                let rows: Vec<UserRow> = match sqlx::query_as(sqlx::AssertSqlSafe(fetch.as_str()))
                    .fetch_all(&mut *tx)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = sender
                            .send(Err(Status::from(QueryError::Database(e))))
                            .await;
                        break;
                    }
                };
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    if sender.send(Ok(User::from(row))).await.is_err() {
                        tracing::info!(tenant = %ctx.tenant_id, "export stopped: the client went away");
                        break 'batches;
                    }
                    metrics.rows.inc();
                }
            }
            // Dropping the transaction rolls it back and closes the cursor.
            drop(tx);
            metrics.active.dec();
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    /// Resolves ids as they arrive, `BATCH_CONCURRENCY` at a time, each through the cache.
    pub fn batch_get(
        &self,
        ctx: TenantContext,
        requests: Streaming<BatchGetUsersRequest>,
    ) -> BoxStream<BatchGetUsersResponse> {
        let query = self.clone();
        let resolved = requests
            .enumerate()
            .map(move |(index, request)| {
                let query = query.clone();
                async move {
                    let request = request?;
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    let result = match parse_id(&request.user_id) {
                        Err(e) => BatchResult::Error(BatchGetError {
                            reason: Reason::InvalidId as i32,
                            message: e.to_string(),
                        }),
                        Ok(id) => match query.user(&ctx, id, 0).await {
                            Ok(found) => BatchResult::User(found.user.info.clone()),
                            Err(e) => match &*e {
                                QueryError::NotFound(_) => BatchResult::Error(BatchGetError {
                                    reason: Reason::NotFound as i32,
                                    message: e.to_string(),
                                }),
                                e if e.kind() == ErrorKind::Unavailable => {
                                    BatchResult::Error(BatchGetError {
                                        reason: Reason::Unavailable as i32,
                                        message: Status::from(e).message().to_owned(),
                                    })
                                }
                                e => return Err(Status::from(e)),
                            },
                        },
                    };
                    Ok(BatchGetUsersResponse {
                        index,
                        user_id: request.user_id,
                        result: Some(result),
                    })
                }
            })
            .buffer_unordered(BATCH_CONCURRENCY);
        Box::pin(resolved)
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<User>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let req = request.get_ref();
        let id = parse_id(&req.user_id)?;
        let found = self
            .user(&ctx, id, req.min_version)
            .await
            .map_err(|e| Status::from(&*e))?;
        let mut response = Response::new(found.user.info.clone());
        if let Some(age) = found.stale_for {
            let metadata = response.metadata_mut();
            metadata.insert(STALE_METADATA, MetadataValue::from_static("true"));
            metadata.insert(STALE_AGE_METADATA, MetadataValue::from(age.as_secs()));
        }
        Ok(response)
    }

    async fn search_users(
        &self,
        request: Request<SearchUsersRequest>,
    ) -> Result<Response<SearchUsersResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        Ok(Response::new(self.search(&ctx, request.get_ref()).await?))
    }

    type ExportUsersStream = BoxStream<User>;

    async fn export_users(
        &self,
        request: Request<ExportUsersRequest>,
    ) -> Result<Response<Self::ExportUsersStream>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        Ok(Response::new(self.export(ctx).await?))
    }

    type BatchGetUsersStream = BoxStream<BatchGetUsersResponse>;

    async fn batch_get_users(
        &self,
        request: Request<Streaming<BatchGetUsersRequest>>,
    ) -> Result<Response<Self::BatchGetUsersStream>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        Ok(Response::new(self.batch_get(ctx, request.into_inner())))
    }
}

/// The service's settings ([`Settings::vars`]: every variable it reads).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners (127.0.0.1:50052, admin 127.0.0.1:9462) and shutdown.
    pub server: ServerSettings,
    /// The database and the pools' limits.
    pub database: DatabaseSettings,
    /// The user cache.
    pub cache: CacheSettings,
    /// Mutual TLS with the other services.
    pub tls: borough_tls::TlsSettings,
}

/// Who may call the query service: the gateway (reads, for tenants), and every Borough
/// process its health.
pub static POLICY: borough_net::authz::Policy = borough_net::authz::Policy {
    rules: &[borough_net::authz::Rule {
        callers: &["gateway"],
        methods: &["/borough.query.v1.QueryService/"],
    }],
};

impl Settings {
    /// Every variable the service reads, for `docs/settings.md`.
    pub fn vars() -> Vec<&'static Var> {
        std::iter::once(&ServerSettings::GRPC_ADDR)
            .chain(ServerSettings::vars())
            .chain(DatabaseSettings::vars())
            .chain(CacheSettings::VARS.iter().copied())
            .chain(borough_tls::TlsSettings::VARS.iter().copied())
            .chain(borough_telemetry::vars())
            .collect()
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                SERVICE,
                &ServerSettings::GRPC_ADDR,
                "127.0.0.1:50052",
                "127.0.0.1:9462",
            )?,
            database: DatabaseSettings::from_env(env)?,
            cache: CacheSettings::from_env(env)?,
            tls: borough_tls::TlsSettings::from_env(env, SERVICE)?,
        })
    }
}

/// Serves until `shutdown` resolves, then fails readiness, waits the grace period, drains
/// in-flight calls and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(SERVICE);
    let tls = borough_net::tls_materials(SERVICE, &settings.tls, &metrics)?;
    let router = settings
        .database
        .router(&metrics)
        .map_err(|e| ServeError::DatabaseUrl(e.into()))?;
    let cache = UserCache::new(&settings.cache, &metrics);
    if settings.server.remote.url.is_some() {
        // `cache.ttl` in platform/query: hot, for entries cached from then on.
        let remote =
            borough_net::config::platform_config(SERVICE, &settings.server.remote, tls.as_ref());
        let mut ttl = remote.typed(settings.cache.ttl, |snapshot, defaults| {
            snapshot
                .hot()
                .duration_or(&CacheSettings::TTL, *defaults)
                .map_err(|e| e.to_string())
        });
        let cache = cache.clone();
        tokio::spawn(async move {
            loop {
                cache.set_ttl(*ttl.borrow_and_update());
                if ttl.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::spawn(feed::follow(router.clone(), cache.clone()));
    let pool = router.shared_pool().clone();
    let query = Query::new(router, cache, &metrics);
    let routes = tonic::service::Routes::new(QueryServiceServer::new(query));
    borough_net::serve_grpc(
        SERVICE,
        &settings.server,
        tls,
        &POLICY,
        listeners,
        routes,
        std::sync::Arc::new(borough_tenancy::db::Database(pool)),
        metrics,
        shutdown,
    )
    .await
}
