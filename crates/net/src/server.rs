//! Running a gRPC service: one function so every service starts and stops the same way.

use std::future::Future;

use borough_config_client::ServerSettings;
use borough_telemetry::admin::{AdminServer, AdminState};
use borough_telemetry::{Dependency, Metrics, Readiness, lifecycle};
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
    DatabaseUrl(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Backend(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] borough_tls::TlsError),
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
                var: settings.api_var.name,
                addr,
                source,
            })?
        } else {
            bind(settings.api_var.name, settings.api_addr).await?
        };
        Ok(Listeners {
            api,
            admin: bind(ServerSettings::ADMIN_ADDR.name, settings.admin_addr).await?,
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

/// A service's TLS material as `settings` say: `None` when internal TLS is off (said
/// loudly: nothing is encrypted or authenticated then).
pub fn tls_materials(
    service: &str,
    settings: &borough_tls::TlsSettings,
    metrics: &Metrics,
) -> Result<Option<borough_tls::Materials>, ServeError> {
    match settings.mode {
        borough_tls::Mode::Off => {
            tracing::warn!(
                "BOROUGH_INTERNAL_TLS=off: calls between services are plaintext and their \
                 callers unverified; for measurements only, never a deployment"
            );
            Ok(None)
        }
        borough_tls::Mode::Mutual => Ok(Some(borough_tls::Materials::load(
            settings,
            service,
            borough_tls::TlsMetrics::register(metrics),
        )?)),
    }
}

/// How long a client has to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `routes` over gRPC (plus `grpc.health.v1`) until `shutdown` resolves.
///
/// Calls are mutual TLS on `tls` (plaintext only when it is `None`) and authorised by the
/// caller's identity against `policy` ([`crate::authz`]). Readiness (`/readyz`, gRPC
/// health) follows `dependency` (the service's database). With `settings.remote.url` set, the service follows
/// `platform/<service>` ([`crate::config`]). On shutdown: readiness fails,
/// `shutdown_grace` passes, the listener closes and in-flight calls drain, then the admin
/// port closes and the dependency is closed.
#[allow(clippy::too_many_arguments)] // Each is one of the service's parts.
pub async fn serve_grpc(
    service: &'static str,
    settings: &ServerSettings,
    tls: Option<borough_tls::Materials>,
    policy: &'static crate::authz::Policy,
    listeners: Listeners,
    routes: tonic::service::Routes,
    dependency: std::sync::Arc<dyn Dependency>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let readiness = Readiness::new();
    let shed_limits = if settings.remote.url.is_some() {
        // Hot settings of every service: the log level and the load-shedding limits.
        crate::config::follow_platform_config(
            service,
            settings.remote.clone(),
            tls.as_ref(),
            &readiness,
        )
        .typed(settings.shed, crate::shed::parse_limits)
    } else {
        tokio::sync::watch::channel(settings.shed).1
    };
    let shedder = crate::shed::Shedder::new(shed_limits, &metrics);
    let grpc_metrics = crate::metrics::GrpcMetrics::register(&metrics);
    let (health, health_service) = tonic_health::server::health_reporter();
    let probe = tokio::spawn(borough_telemetry::dependency::follow(
        dependency.clone(),
        readiness.clone(),
        settings.probe_interval,
        grpc_health_updater(health),
    ));
    let metrics_for_authz = metrics.clone();
    let admin = AdminServer::spawn(
        listeners.admin,
        AdminState {
            service,
            readiness: readiness.clone(),
            metrics,
        },
    );
    tracing::info!(service, grpc = %listeners.api.local_addr()?, tls = tls.is_some(), "listening");

    let authz = crate::authz::AuthzLayer::new(policy, tls.is_some(), &metrics_for_authz);
    // In the order a call meets them: metrics (every call counted, refused ones too),
    // authorisation by the caller's identity, then load shedding.
    let server = tonic::transport::Server::builder()
        .trace_fn(borough_telemetry::spans::grpc_request_span)
        .layer(crate::metrics::GrpcMetricsLayer::new(grpc_metrics))
        .layer(authz)
        .layer(crate::shed::ShedLayer::new(shedder));
    let routes = routes.add_service(health_service);
    let drain = lifecycle::drain_after(shutdown, readiness, settings.shutdown_grace);
    let result = match &tls {
        Some(materials) => {
            let incoming =
                borough_tls::server::incoming(listeners.api, materials, HANDSHAKE_TIMEOUT);
            let mut server = server;
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, drain)
                .await
        }
        None => {
            let mut server = server;
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.api), drain)
                .await
        }
    };

    probe.abort();
    admin.stop().await?;
    dependency.close().await;
    tracing::info!(service, "stopped");
    Ok(result?)
}

/// Mirrors the dependency's state into the gRPC health service's overall status (the one
/// Kubernetes' gRPC probes ask about).
fn grpc_health_updater(
    health: tonic_health::server::HealthReporter,
) -> impl Fn(bool) + Send + 'static {
    move |ok| {
        let health = health.clone();
        tokio::spawn(async move {
            let status = if ok {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        });
    }
}
