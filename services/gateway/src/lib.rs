//! The REST gateway: the axum edge in front of Borough's gRPC services.
//!
//! [`serve`] runs it on listeners it is given (tests pass 127.0.0.1:0) until `shutdown`
//! resolves; `main.rs` only reads settings, binds and calls it. [`router`] is the whole
//! HTTP surface with its middleware, for in-process use.

pub mod auth;
pub mod auth_guard;
pub mod console;
pub mod extract;
pub mod grpc;
pub mod middleware;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod settings;
pub mod state;
pub mod watches;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use borough_net::client::{Backend, ClientMetrics};
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_telemetry::admin::{AdminServer, AdminState};
use borough_telemetry::{Metrics, Readiness, lifecycle};
use borough_tenant::keys::KeyCache;
use http::HeaderValue;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use settings::Settings;
use state::AppState;

pub const SERVICE: &str = "gateway";

pub use borough_net::{Listeners, ServeError};

/// Which backend calls may be sent again after `UNAVAILABLE` or a connection failure.
mod retry {
    use borough_net::client::RetryPolicy;

    pub const USER: RetryPolicy = RetryPolicy {
        idempotent: &[
            "/borough.user.v1.UserService/GetUser",
            "/borough.user.v1.UserService/ListUsers",
            "/borough.user.v1.TenantAdminService/GetTenant",
            "/borough.user.v1.TenantAdminService/ListTenants",
            "/borough.user.v1.TenantAdminService/AuthenticateApiKey",
        ],
        // With an Idempotency-Key, the user service answers a repeat with the first reply.
        keyed: &["/borough.user.v1.UserService/CreateUser"],
    };
    pub const QUERY: RetryPolicy = RetryPolicy {
        idempotent: &[
            "/borough.query.v1.QueryService/GetUserInfo",
            "/borough.query.v1.QueryService/SearchUsers",
            "/borough.query.v1.QueryService/ExportUsers",
        ],
        keyed: &[],
    };
    pub const CONFIG: RetryPolicy = RetryPolicy {
        idempotent: &[
            "/borough.config.v1.ConfigService/Get",
            "/borough.config.v1.ConfigService/List",
            "/borough.config.v1.ConfigService/History",
            "/borough.config.v1.ConfigService/GetSchema",
            "/borough.config.v1.ConfigService/Status",
            "/borough.config.v1.ConfigService/Watch",
            "/borough.config.v1.ConfigService/PurgeTenant",
        ],
        keyed: &[],
    };
}

/// The backends: discovered, health-checked, balanced, circuit-broken and retried
/// ([`borough_net::client`]). The gateway starts (and answers `/hello`) with every backend
/// down; calls fail fast with 503 until they are up.
pub struct Backends {
    pub user: Backend,
    pub query: Backend,
    pub config: Backend,
}

impl Backends {
    /// Over mutual TLS on `tls` (plaintext without it: internal TLS off).
    pub fn new(
        settings: &Settings,
        metrics: &Metrics,
        tls: Option<&borough_tls::Materials>,
    ) -> Result<Self, ServeError> {
        let client_metrics = ClientMetrics::register(metrics);
        let backend = |name, var, url: &str, policy| {
            Backend::new(
                name,
                var,
                url,
                settings.client.clone(),
                policy,
                &client_metrics,
                tls.cloned(),
            )
            .map_err(|e| ServeError::Backend(e.to_string()))
        };
        Ok(Backends {
            user: backend(
                "user",
                Settings::USER_URL.name,
                &settings.user_url,
                retry::USER,
            )?,
            query: backend(
                "query",
                Settings::QUERY_URL.name,
                &settings.query_url,
                retry::QUERY,
            )?,
            config: backend(
                "config",
                borough_config_client::remote::RemoteSettings::URL.name,
                &settings.config_url,
                retry::CONFIG,
            )?,
        })
    }
}

/// The application state for `settings` over `backends`, with the hot settings `hot`.
pub fn app_state(
    settings: &Settings,
    backends: &Backends,
    hot: settings::Hot,
    metrics: &Metrics,
) -> AppState {
    let http_metrics = borough_telemetry::metrics::HttpMetrics::register(metrics);
    AppState::new(state::Shared {
        users: UserServiceClient::new(backends.user.clone()),
        tenants: TenantAdminServiceClient::new(backends.user.clone()),
        query: QueryServiceClient::new(backends.query.clone()),
        config: ConfigServiceClient::new(backends.config.clone()),
        keys: Arc::new(
            KeyCache::new(settings.auth_cache_ttl, 10_000).with_stale_ttl(settings.auth_stale_ttl),
        ),
        admin_token_hash: hot.admin_token_hash,
        limiter: Arc::new(ratelimit::RateLimiter::new(hot.rate_limits)),
        limits: hot.limits,
        stream_timeout: settings.stream_timeout,
        recent_writes: Arc::new(state::RecentWrites::new(
            settings.read_your_writes_ttl,
            100_000,
        )),
        shedder: borough_net::shed::Shedder::new(hot.shed, metrics),
        refused_keys: auth_guard::NegativeCache::new(settings.auth.negative_ttl),
        auth_failures: auth_guard::FailureLimiter::new(&settings.auth),
        watches: watches::WatchSlots::new(settings.watches),
        import_report_limit: settings.import_report_limit,
        openapi: openapi::document(),
        console: Arc::new(console::session::Sessions::new(settings.console)),
        edge_tls: settings.edge_tls.is_some(),
        backends: vec![
            ("user", backends.user.clone()),
            ("query", backends.query.clone()),
            ("config", backends.config.clone()),
        ],
        http_metrics: http_metrics.clone(),
        routes: Arc::new(console::sampler::RouteSampler::new(http_metrics)),
    })
}

/// The HTTP surface: routes and middleware.
///
/// Built for the cost per request: axum's `Router::layer` and `route_layer` wrap every
/// route in a boxed service of its own, cloned (allocated) per request and per layer, so
/// the routed part has a single layer ([`middleware::Guard`]) and the stack around it is
/// one tower service wrapping the whole router (docs/performance.md).
pub fn router(
    state: AppState,
    settings: &Settings,
    metrics: &Metrics,
    readiness: &Readiness,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let http_metrics = state.http_metrics.clone();
    state.limiter.register_metrics(metrics);
    state.watches.register_metrics(metrics);
    let guard = |scope| {
        middleware::AroundLayer::new(middleware::Guard {
            state: state.clone(),
            metrics: http_metrics.clone(),
            scope,
        })
    };
    let routes = route_table(settings, guard)
        .router
        .with_state(state.clone());
    let cors = (!settings.cors_origins.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = settings
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any)
            .expose_headers(tower_http::cors::Any)
    });

    // The stack, in the order a request meets it (outermost first):
    ServiceBuilder::new()
        // 1. The request's id (the caller's `x-request-id` when it is short and plain,
        //    else a new one; echoed), its span and trace (continued from `traceparent`,
        //    or new), and a log line with its outcome; everything inside runs in them.
        //    Framework errors (no route, 405, too large) become problem+json too, and
        //    while draining every response says `Connection: close`.
        .layer(middleware::AroundLayer::new(middleware::Edge {
            readiness: readiness.clone(),
            access_log: settings.access_log,
        }))
        // 2. gzip / br for clients that accept them, on bodies worth it.
        .layer(middleware::CompressWhenAskedLayer)
        // 3. The guard enforces each group's body limit; the extractors' own is off.
        .layer(DefaultBodyLimit::disable())
        // 4. CORS, innermost, only when origins are configured.
        .option_layer(cors)
        .service(routes)
}

/// The router and the path of every route, as registered (tests check each against the
/// OpenAPI document).
pub struct RouteTable {
    pub router: Router<AppState>,
    pub paths: Vec<&'static str>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    fn route(mut self, path: &'static str, methods: axum::routing::MethodRouter<AppState>) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, methods);
        self
    }

    /// Pages (the console), behind a guard of `scope`: not part of the API document.
    fn pages(
        mut self,
        pages: Router<AppState>,
        guard: middleware::AroundLayer<middleware::Guard>,
    ) -> Self {
        self.router = self.router.merge(pages.route_layer(guard));
        self
    }

    /// Every route of `group` behind one guard of `scope`.
    fn group(
        mut self,
        group: RouteTable,
        guard: middleware::AroundLayer<middleware::Guard>,
    ) -> Self {
        self.paths.extend(group.paths);
        self.router = self.router.merge(group.router.route_layer(guard));
        self
    }
}

/// Every route, grouped by scope: who may call it (nobody in particular, a tenant by its
/// API key, the platform admin by its token) and with which deadline and body limit. The
/// scope is the group's: no handler or middleware looks at the path to decide it.
pub fn route_table(
    settings: &Settings,
    guard: impl Fn(middleware::GuardScope) -> middleware::AroundLayer<middleware::Guard>,
) -> RouteTable {
    use middleware::GuardScope;
    use routes::{admin, bulk, config, moves, users};
    let public = RouteTable::new()
        .route("/hello", get(routes::hello))
        .route("/openapi.json", get(routes::openapi_json));
    let tenant = RouteTable::new()
        .route("/api/v1/users", post(users::create).get(users::list))
        .route(
            "/api/v1/users/{id}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/api/v1/users:batchGet", post(bulk::batch_get))
        .route("/api/v1/config", get(config::tenant_namespaces))
        .route(
            "/api/v1/config/{name}",
            get(config::tenant_namespace).put(config::tenant_put_namespace),
        )
        .route(
            "/api/v1/config/{name}/{key}",
            get(config::tenant_get_key)
                .put(config::tenant_put_key)
                .delete(config::tenant_delete_key)
                .post(config::tenant_post_key),
        )
        .route(
            "/api/v1/config/{name}/{key}/history",
            get(config::tenant_history),
        );
    // Whole-tenant streams: their own deadline and body limit.
    let streams = RouteTable::new()
        .route("/api/v1/users:export", get(bulk::export))
        .route("/api/v1/users:import", post(bulk::import));
    let admin = RouteTable::new()
        .route("/admin/v1/status", get(console::status::status))
        .route("/admin/v1/status:watch", get(console::status::watch))
        .route("/admin/v1/config/status", get(config::status))
        .route(
            "/admin/v1/config/platform/{service}",
            get(config::platform_namespace).put(config::platform_put_namespace),
        )
        .route(
            "/admin/v1/config/platform/{service}/{key}",
            get(config::platform_get_key)
                .put(config::platform_put_key)
                .delete(config::platform_delete_key)
                .post(config::platform_post_key),
        )
        .route(
            "/admin/v1/config/platform/{service}/{key}/history",
            get(config::platform_history),
        )
        .route(
            "/admin/v1/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/admin/v1/tenants/{id}",
            get(admin::get_tenant)
                .delete(admin::delete_tenant)
                .post(moves::post_tenant),
        )
        .route(
            "/admin/v1/tenants/{id}/moves/{move_id}",
            get(moves::get_move).delete(moves::cancel_move),
        )
        .route(
            "/admin/v1/tenants/{id}/limits",
            get(admin::get_limits).put(admin::put_limits),
        )
        .route("/admin/v1/tenants/{id}/api-keys", post(admin::issue_key))
        .route(
            "/admin/v1/tenants/{id}/config",
            get(config::admin_tenant_namespaces),
        )
        .route(
            "/admin/v1/tenants/{id}/config/{name}",
            get(config::admin_tenant_namespace).put(config::admin_tenant_put_namespace),
        )
        .route(
            "/admin/v1/tenants/{id}/config/{name}/{key}",
            get(config::admin_tenant_get_key)
                .put(config::admin_tenant_put_key)
                .delete(config::admin_tenant_delete_key)
                .post(config::admin_tenant_post_key),
        )
        .route(
            "/admin/v1/tenants/{id}/config/{name}/{key}/history",
            get(config::admin_tenant_history),
        )
        .route(
            "/admin/v1/tenants/{id}/api-keys/{key_id}",
            delete(admin::revoke_key),
        );
    RouteTable::new()
        .group(public, guard(GuardScope::Public))
        .group(tenant, guard(GuardScope::Tenant))
        .group(
            streams,
            guard(GuardScope::TenantStream {
                timeout: settings.stream_timeout,
                body_limit: settings.import_body_limit,
            }),
        )
        .group(admin, guard(GuardScope::Admin))
        .pages(console::routes(), guard(GuardScope::Public))
}

/// Readiness follows the backends: ready while each of `user` and `query` has a healthy
/// endpoint (the backends check their endpoints' gRPC health themselves).
async fn probe_backends(
    backends: Vec<(&'static str, Backend)>,
    readiness: Readiness,
    interval: Duration,
) {
    for (name, _) in &backends {
        readiness.register(name, "not checked yet");
    }
    loop {
        for (name, backend) in &backends {
            match backend.endpoint_counts() {
                (0, _) => readiness.set_failing(name, "no address discovered"),
                (_, 0) => readiness.set_failing(name, "no endpoint passes its health check"),
                _ => readiness.set_ok(name),
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves until `shutdown` resolves, then fails readiness, waits the grace period, drains
/// in-flight requests and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(SERVICE);
    let tls = borough_net::tls_materials(SERVICE, &settings.tls, &metrics)?;
    let backends = Backends::new(&settings, &metrics, tls.as_ref())?;
    let edge = match &settings.edge_tls {
        Some(edge) => {
            let cert = borough_tls::edge::EdgeCert::load(
                edge.cert.clone(),
                edge.key.clone(),
                settings.tls.post_quantum,
                settings.tls.reload_interval,
            )?;
            // Edge handshakes are counted with the internal ones (role `edge`).
            let counted = match &tls {
                Some(materials) => materials.metrics().clone(),
                None => borough_tls::TlsMetrics::register(&metrics),
            };
            Some((cert, counted))
        }
        None => None,
    };
    let readiness = Readiness::new();
    let hot = match settings.server.remote.url {
        Some(_) => settings::Hot::following(
            &settings,
            &borough_net::config::follow_platform_config(
                SERVICE,
                settings.server.remote.clone(),
                tls.as_ref(),
                &readiness,
            ),
        ),
        None => settings::Hot::fixed(&settings),
    };
    let state = app_state(&settings, &backends, hot, &metrics);
    let probe = tokio::spawn(probe_backends(
        vec![
            ("user", backends.user.clone()),
            ("query", backends.query.clone()),
        ],
        readiness.clone(),
        settings.server.probe_interval,
    ));
    let app = router(state, &settings, &metrics, &readiness);
    let connection_metrics = server::ConnectionMetrics::register(&metrics);
    let admin = AdminServer::spawn(
        listeners.admin,
        AdminState {
            service: SERVICE,
            readiness: readiness.clone(),
            metrics,
        },
    );
    if settings.admin_token.is_none() {
        tracing::warn!("BOROUGH_ADMIN_TOKEN is not set: the admin API is disabled");
    }
    tracing::info!(http = %listeners.api.local_addr()?, https = edge.is_some(), "gateway listening");

    let result = server::serve(
        listeners.api,
        app,
        settings.connections,
        edge,
        connection_metrics,
        lifecycle::drain_after(shutdown, readiness, settings.server.shutdown_grace),
    )
    .await;

    probe.abort();
    admin.stop().await?;
    tracing::info!("gateway stopped");
    Ok(result?)
}
