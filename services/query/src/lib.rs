//! The query service: the read side. Today `GetUserInfo`, read from the tenant's pool
//! (its read replica where one is placed); search, export streams and the cache come next.
//!
//! [`serve`] runs it on listeners it is given; `main.rs` only reads settings and calls it.

use std::future::Future;

use borough_config_client::{Env, ServerSettings, SettingsError};
use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::query::v1::query_service_server::{QueryService, QueryServiceServer};
use borough_proto::query::v1::{GetUserInfoRequest, GetUserInfoResponse};
use borough_proto::time::to_timestamp;
use borough_telemetry::Metrics;
use borough_tenancy::db::DatabaseSettings;
use borough_tenancy::{PoolRouter, RouteError, TenantContext, db};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use borough_net::{Listeners, ServeError};

pub const SERVICE: &str = "query";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is not a valid user id")]
    InvalidId(String),
    #[error("no user with id {0}")]
    NotFound(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl ServiceError for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::InvalidId(_) => ErrorKind::InvalidArgument,
            QueryError::NotFound(_) => ErrorKind::NotFound,
            QueryError::Database(e) => db::classify(e),
            QueryError::Route(e) => e.kind(),
        }
    }
}

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Status {
        match err {
            // Its own detail and retry hint.
            QueryError::Route(e) => to_status(&e),
            err => to_status(&err),
        }
    }
}

/// name, email, version, created_at, updated_at
type InfoRow = (String, String, i64, DateTime<Utc>, DateTime<Utc>);

#[derive(Clone)]
pub struct Query {
    router: PoolRouter,
}

impl Query {
    pub fn new(router: PoolRouter) -> Self {
        Query { router }
    }

    pub async fn user_info(
        &self,
        ctx: &TenantContext,
        user_id: &str,
    ) -> Result<GetUserInfoResponse, QueryError> {
        let id = Uuid::parse_str(user_id).map_err(|_| QueryError::InvalidId(user_id.to_owned()))?;
        let mut tx = self.router.begin_read(ctx).await?;
        let row: Option<InfoRow> = sqlx::query_as(
            "SELECT name, email, version, created_at, updated_at
               FROM users WHERE tenant_id = $1 AND id = $2",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let (name, email, version, created_at, updated_at) = row.ok_or(QueryError::NotFound(id))?;
        Ok(GetUserInfoResponse {
            name,
            email,
            user_id: id.to_string(),
            version,
            created_at: Some(to_timestamp(created_at)),
            updated_at: Some(to_timestamp(updated_at)),
        })
    }
}

#[tonic::async_trait]
impl QueryService for Query {
    async fn get_user_info(
        &self,
        request: Request<GetUserInfoRequest>,
    ) -> Result<Response<GetUserInfoResponse>, Status> {
        let ctx = TenantContext::from_metadata(request.metadata())?;
        let info = self.user_info(&ctx, &request.get_ref().user_id).await?;
        Ok(Response::new(info))
    }
}

/// The service's settings, from `BOROUGH_*` environment variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BOROUGH_GRPC_ADDR` (127.0.0.1:50052), `BOROUGH_ADMIN_ADDR` (127.0.0.1:9462), shutdown.
    pub server: ServerSettings,
    /// `BOROUGH_DATABASE_URL` and the pool's limits.
    pub database: DatabaseSettings,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                "BOROUGH_GRPC_ADDR",
                "127.0.0.1:50052",
                "127.0.0.1:9462",
            )?,
            database: DatabaseSettings::from_env(env)?,
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
    let router = settings
        .database
        .router(&metrics)
        .map_err(ServeError::DatabaseUrl)?;
    let pool = router.shared_pool().clone();
    let routes = tonic::service::Routes::new(QueryServiceServer::new(Query::new(router)));
    borough_net::serve_grpc(
        SERVICE,
        &settings.server,
        listeners,
        routes,
        pool,
        metrics,
        shutdown,
    )
    .await
}
