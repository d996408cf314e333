//! The query service: the read side. Today `GetUserInfo`, read from the tenant's pool
//! (its read replica where one is placed); search, export streams and the cache come next.
//!
//! [`serve`] runs it on listeners it is given; `main.rs` only reads settings and calls it.

pub mod settings;

use std::future::Future;

use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::query::v1::query_service_server::{QueryService, QueryServiceServer};
use borough_proto::query::v1::{GetUserInfoRequest, GetUserInfoResponse};
use borough_proto::time::to_timestamp;
use borough_telemetry::admin::{AdminServer, AdminState};
use borough_telemetry::{Metrics, Readiness, lifecycle};
use borough_tenancy::{PoolRouter, TenantContext, db};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use settings::Settings;

pub const SERVICE: &str = "query";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0:?} is not a valid user id")]
    InvalidId(String),
    #[error("no user with id {0}")]
    NotFound(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ServiceError for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::InvalidId(_) => ErrorKind::InvalidArgument,
            QueryError::NotFound(_) => ErrorKind::NotFound,
            QueryError::Database(e) => db::classify(e),
        }
    }
}

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Status {
        to_status(&err)
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

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("BOROUGH_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server failed: {0}")]
    Admin(#[from] std::io::Error),
}

/// The listeners a service serves on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

/// Serves until `shutdown` resolves, then fails readiness, waits the grace period, drains
/// in-flight calls and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let pool =
        db::lazy_pool(&settings.database_url, &settings.pool).map_err(ServeError::DatabaseUrl)?;
    let readiness = Readiness::new();
    let (health, health_service) = tonic_health::server::health_reporter();
    let probe = tokio::spawn(db::probe_readiness(
        pool.clone(),
        readiness.clone(),
        settings.probe_interval,
        borough_tenancy::db::grpc_health_updater(health),
    ));
    let admin = AdminServer::spawn(
        listeners.admin,
        AdminState {
            service: SERVICE,
            readiness: readiness.clone(),
            metrics: Metrics::new(SERVICE),
        },
    );
    tracing::info!(grpc = %listeners.grpc.local_addr()?, "query service listening");

    let result = tonic::transport::Server::builder()
        .trace_fn(borough_telemetry::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(QueryServiceServer::new(Query::new(PoolRouter::new(
            pool.clone(),
        ))))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.grpc),
            lifecycle::drain_after(shutdown, readiness, settings.shutdown_grace),
        )
        .await;

    probe.abort();
    admin.stop().await?;
    pool.close().await;
    tracing::info!("query service stopped");
    Ok(result?)
}
