//! The REST gateway: the axum edge in front of Borough's gRPC services.
//!
//! [`serve`] runs it on listeners it is given (tests pass 127.0.0.1:0) until `shutdown`
//! resolves; `main.rs` only reads settings, binds and calls it. [`router`] is the whole
//! HTTP surface with its middleware, for in-process use.

pub mod auth;
pub mod extract;
pub mod grpc;
pub mod middleware;
pub mod ratelimit;
pub mod routes;
pub mod settings;
pub mod state;

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
use borough_tenancy::directory::KeyCache;
use http::{HeaderValue, StatusCode};
use tower::ServiceBuilder;
use tower_http::ServiceBuilderExt;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

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
    pub fn new(settings: &Settings, metrics: &Metrics) -> Result<Self, ServeError> {
        let client_metrics = ClientMetrics::register(metrics);
        let backend = |name, var, url: &str, policy| {
            Backend::new(
                name,
                var,
                url,
                settings.client.clone(),
                policy,
                &client_metrics,
            )
            .map_err(|e| ServeError::Backend(e.to_string()))
        };
        Ok(Backends {
            user: backend("user", "BOROUGH_USER_URL", &settings.user_url, retry::USER)?,
            query: backend(
                "query",
                "BOROUGH_QUERY_URL",
                &settings.query_url,
                retry::QUERY,
            )?,
            config: backend(
                "config",
                "BOROUGH_CONFIG_URL",
                &settings.config_url,
                retry::CONFIG,
            )?,
        })
    }
}

/// The application state for `settings` over `backends`.
pub fn app_state(settings: &Settings, backends: &Backends) -> AppState {
    AppState {
        users: UserServiceClient::new(backends.user.clone()),
        tenants: TenantAdminServiceClient::new(backends.user.clone()),
        query: QueryServiceClient::new(backends.query.clone()),
        config: ConfigServiceClient::new(backends.config.clone()),
        keys: Arc::new(KeyCache::new(settings.auth_cache_ttl, 10_000)),
        admin_token_hash: tokio::sync::watch::channel(settings.admin_token_hash()).1,
        limiter: Arc::new(ratelimit::RateLimiter::new(
            tokio::sync::watch::channel(settings.rate_limits()).1,
        )),
        request_timeout: settings.request_timeout,
        limits: tokio::sync::watch::channel(settings.limits()).1,
        stream_timeout: settings.stream_timeout,
        recent_writes: Arc::new(state::RecentWrites::new(
            settings.read_your_writes_ttl,
            100_000,
        )),
        shedder: None,
    }
}

/// The HTTP surface: routes and middleware.
pub fn router(state: AppState, settings: &Settings, metrics: &Metrics) -> Router {
    let http_metrics = borough_telemetry::metrics::HttpMetrics::register(metrics);
    state.limiter.register_metrics(metrics);
    // Whole-tenant streams: their own deadline and body limit.
    let streams = Router::new()
        .route("/api/v1/users:export", get(routes::bulk::export))
        .route("/api/v1/users:import", post(routes::bulk::import))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::shed,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit,
        ))
        .layer(DefaultBodyLimit::max(settings.import_body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    settings.stream_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(settings.import_body_limit)),
        );
    let api = Router::new()
        .route("/hello", get(routes::hello))
        .route(
            "/api/v1/users",
            post(routes::users::create).get(routes::users::list),
        )
        .route(
            "/api/v1/users/{id}",
            get(routes::users::get)
                .patch(routes::users::update)
                .delete(routes::users::delete),
        )
        .route("/api/v1/users:batchGet", post(routes::bulk::batch_get))
        .route(
            "/api/v1/config/{name}",
            get(routes::config::get_namespace).put(routes::config::put_namespace),
        )
        .route(
            "/api/v1/config/{name}/{key}",
            get(routes::config::get_key)
                .put(routes::config::put_key)
                .delete(routes::config::delete_key)
                .post(routes::config::post_key),
        )
        .route(
            "/api/v1/config/{name}/{key}/history",
            get(routes::config::get_history),
        )
        .route("/admin/v1/config/status", get(routes::config::status))
        .route(
            "/admin/v1/config/platform/{name}",
            get(routes::config::get_namespace).put(routes::config::put_namespace),
        )
        .route(
            "/admin/v1/config/platform/{name}/{key}",
            get(routes::config::get_key)
                .put(routes::config::put_key)
                .delete(routes::config::delete_key)
                .post(routes::config::post_key),
        )
        .route(
            "/admin/v1/config/platform/{name}/{key}/history",
            get(routes::config::get_history),
        )
        .route(
            "/admin/v1/tenants",
            post(routes::admin::create_tenant).get(routes::admin::list_tenants),
        )
        .route(
            "/admin/v1/tenants/{id}",
            get(routes::admin::get_tenant).delete(routes::admin::delete_tenant),
        )
        .route(
            "/admin/v1/tenants/{id}/limits",
            get(routes::admin::get_limits).put(routes::admin::put_limits),
        )
        .route(
            "/admin/v1/tenants/{id}/api-keys",
            post(routes::admin::issue_key),
        )
        .route(
            "/admin/v1/tenants/{id}/api-keys/{key_id}",
            delete(routes::admin::revoke_key),
        )
        // The deadline (504 past it) and the body limit (413), as configured now: our
        // middleware enforces both, so the extractors' own limit is off.
        // Load shedding inside the tenant's token bucket (taken once authenticated).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::shed,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit,
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            middleware::limits,
        ))
        .merge(streams)
        // RED metrics per route template (routed requests only: the template is known).
        .route_layer(axum::middleware::from_fn_with_state(
            http_metrics,
            middleware::record_metrics,
        ))
        .with_state(state);

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

    // The stack, in the order a request meets it (outermost first). It is built in
    // `Router::layer` steps because axum's function middleware must wrap a `Sync` service
    // with plain bodies, which each step's `Route` is.
    //
    // 1. Every request has an id: the caller's `x-request-id`, or a new one; echoed back.
    let outer = ServiceBuilder::new()
        .set_x_request_id(middleware::MakeRequestHex)
        .propagate_x_request_id();
    // 2. The request's span and trace (continued from `traceparent`, or new), its
    //    deadline, and a log line with its outcome; everything inside runs in them.
    let trace =
        axum::middleware::from_fn_with_state(settings.request_timeout, middleware::trace_request);
    // 3. Framework errors (no route, timeout, too large) become problem+json too.
    let problems = axum::middleware::map_response(middleware::problem_for_bare_errors);
    // 4. gzip / br for clients that accept them.
    let inner = ServiceBuilder::new().layer(CompressionLayer::new().gzip(true).br(true));
    // 5. Per route group (above): the deadline (504 past it) and the body limit (413).
    // 6. CORS, innermost, only when origins are configured.
    let api = match cors {
        Some(cors) => api.layer(cors),
        None => api,
    };
    api.layer(inner).layer(problems).layer(trace).layer(outer)
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
    let backends = Backends::new(&settings, &metrics)?;
    let mut state = app_state(&settings, &backends);
    let readiness = Readiness::new();
    if settings.server.remote.url.is_some() {
        let remote = borough_net::config::follow_platform_config(
            SERVICE,
            settings.server.remote.clone(),
            &readiness,
        );
        state.limits = remote.typed(settings.limits(), settings::parse_limits);
        state.admin_token_hash = remote.typed(
            settings.admin_token_hash(),
            settings::parse_admin_token_hash,
        );
        state.limiter = Arc::new(ratelimit::RateLimiter::new(
            remote.typed(settings.rate_limits(), ratelimit::parse_policies),
        ));
        state.shedder = Some(borough_net::shed::Shedder::new(
            remote.typed(settings.server.shed, borough_net::shed::parse_limits),
            &metrics,
        ));
    } else {
        state.shedder = Some(borough_net::shed::Shedder::new(
            tokio::sync::watch::channel(settings.server.shed).1,
            &metrics,
        ));
    }
    let probe = tokio::spawn(probe_backends(
        vec![
            ("user", backends.user.clone()),
            ("query", backends.query.clone()),
        ],
        readiness.clone(),
        settings.server.probe_interval,
    ));
    let app = router(state, &settings, &metrics).layer(axum::middleware::map_response_with_state(
        readiness.clone(),
        middleware::close_when_draining,
    ));
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
    tracing::info!(http = %listeners.api.local_addr()?, "gateway listening");

    // TCP_NODELAY: a response written in parts is not held back waiting for an ACK.
    let api = axum::serve::ListenerExt::tap_io(listeners.api, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let result = axum::serve(api, app)
        .with_graceful_shutdown(lifecycle::drain_after(
            shutdown,
            readiness,
            settings.server.shutdown_grace,
        ))
        .await;

    probe.abort();
    admin.stop().await?;
    tracing::info!("gateway stopped");
    Ok(result?)
}
