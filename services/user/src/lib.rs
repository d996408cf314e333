//! The user service: tenants' users (the write side) and the tenant directory, over gRPC.
//!
//! [`serve`] runs it on listeners it is given (tests pass 127.0.0.1:0), until `shutdown`
//! resolves; `main.rs` only reads settings, binds and calls it.

pub mod settings;
pub mod tenants;
pub mod users;
pub mod validate;

use std::future::Future;

use borough_proto::user::v1::tenant_admin_service_server::TenantAdminServiceServer;
use borough_proto::user::v1::user_service_server::UserServiceServer;
use borough_telemetry::admin::{AdminServer, AdminState};
use borough_telemetry::{Metrics, Readiness, lifecycle};
use borough_tenancy::{PoolRouter, db};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use settings::Settings;

pub const SERVICE: &str = "user";

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
        db::grpc_health_updater(health),
    ));

    let admin = AdminServer::spawn(
        listeners.admin,
        AdminState {
            service: SERVICE,
            readiness: readiness.clone(),
            metrics: Metrics::new(SERVICE),
        },
    );
    tracing::info!(
        grpc = %listeners.grpc.local_addr()?,
        "user service listening"
    );

    let users = users::Users::new(PoolRouter::new(pool.clone()));
    let tenants = tenants::Tenants::new(pool.clone());
    let result = tonic::transport::Server::builder()
        .trace_fn(borough_telemetry::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(UserServiceServer::new(users))
        .add_service(TenantAdminServiceServer::new(tenants))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.grpc),
            lifecycle::drain_after(shutdown, readiness, settings.shutdown_grace),
        )
        .await;

    probe.abort();
    admin.stop().await?;
    pool.close().await;
    tracing::info!("user service stopped");
    Ok(result?)
}
