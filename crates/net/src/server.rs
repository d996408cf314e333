//! Running a gRPC service: one function so every service starts and stops the same way.

use std::future::Future;

use borough_config_client::ServerSettings;
use borough_telemetry::admin::{AdminServer, AdminState};
use borough_telemetry::{Metrics, Readiness, lifecycle};
use borough_tenancy::db;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {var}={addr}: {source}")]
    Bind {
        var: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("BOROUGH_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(sqlx::Error),
    #[error("{0}")]
    Backend(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A server's listeners: its API (gRPC or HTTP) and its admin port.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses; an error names the variable that set the address.
    pub async fn bind(settings: &ServerSettings) -> Result<Listeners, ServeError> {
        let bind = |var: &'static str, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { var, addr, source })
        };
        let api = if settings.reuse_port {
            let addr = settings.api_addr;
            reusable(addr).map_err(|source| ServeError::Bind {
                var: settings.api_var,
                addr,
                source,
            })?
        } else {
            bind(settings.api_var, settings.api_addr).await?
        };
        Ok(Listeners {
            api,
            admin: bind("BOROUGH_ADMIN_ADDR", settings.admin_addr).await?,
        })
    }
}

/// A listener sharing its port with others that set `SO_REUSEPORT` (the kernel spreads
/// new connections over them): how an upgraded process starts beside the old one.
fn reusable(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `routes` over gRPC (plus `grpc.health.v1`) until `shutdown` resolves.
///
/// Readiness (`/readyz`, gRPC health) follows the database. With `settings.remote.url`
/// set, the service follows `platform/<service>` ([`crate::config`]). On shutdown: readiness fails,
/// `shutdown_grace` passes, the listener closes and in-flight calls drain, then the admin
/// port closes and the pool is closed.
pub async fn serve_grpc(
    service: &'static str,
    settings: &ServerSettings,
    listeners: Listeners,
    routes: tonic::service::Routes,
    pool: PgPool,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let readiness = Readiness::new();
    let shed_limits = if settings.remote.url.is_some() {
        // Hot settings of every service: the log level and the load-shedding limits.
        crate::config::follow_platform_config(service, settings.remote.clone(), &readiness)
            .typed(settings.shed, crate::shed::parse_limits)
    } else {
        tokio::sync::watch::channel(settings.shed).1
    };
    let shedder = crate::shed::Shedder::new(shed_limits, &metrics);
    let grpc_metrics = crate::metrics::GrpcMetrics::register(&metrics);
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
            service,
            readiness: readiness.clone(),
            metrics,
        },
    );
    tracing::info!(service, grpc = %listeners.api.local_addr()?, "listening");

    let result = tonic::transport::Server::builder()
        .trace_fn(borough_telemetry::trace::grpc_request_span)
        .layer(crate::metrics::GrpcMetricsLayer::new(grpc_metrics))
        .layer(crate::shed::ShedLayer::new(shedder))
        .add_routes(routes.add_service(health_service))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.api),
            lifecycle::drain_after(shutdown, readiness, settings.shutdown_grace),
        )
        .await;

    probe.abort();
    admin.stop().await?;
    pool.close().await;
    tracing::info!(service, "stopped");
    Ok(result?)
}
