//! The gateway's HTTP surface in-process: [`borough_gateway::router`] called with
//! `oneshot` — no socket, no backend, no PostgreSQL. Everything the edge decides alone is
//! tested here (the OpenAPI contract, 404, 405, 413, 415, problem bodies, CORS,
//! compression, request ids); what needs the services is in `tests/api`.

mod console;
mod contract;
mod edge;

use axum::body::Body;
use borough_config_client::Env;
use borough_gateway::settings::Hot;
use borough_gateway::state::AppState;
use borough_gateway::{Backends, Settings, app_state, router};
use borough_telemetry::{Metrics, Readiness};
use tower::ServiceExt;
use tower::util::BoxCloneService;

/// A tenant key known to the gateway's key cache: tenant routes get past authentication
/// without a directory.
pub const TENANT_KEY: &str = "bk_0123456789ab_0123456789abcdef0123456789abcdef";
pub const ADMIN_TOKEN: &str = "contract-admin-token-0123456789";

pub type Service =
    BoxCloneService<http::Request<Body>, axum::response::Response, std::convert::Infallible>;

/// A gateway's router over backends that are not there (a call to one fails fast).
pub struct App {
    pub state: AppState,
    pub settings: Settings,
    pub service: Service,
}

impl App {
    pub fn new() -> anyhow::Result<App> {
        App::with(&[])
    }

    /// With these settings over the defaults.
    pub fn with(extra: &[(&str, &str)]) -> anyhow::Result<App> {
        let mut pairs = vec![
            ("BOROUGH_USER_URL", "http://127.0.0.1:9"),
            ("BOROUGH_QUERY_URL", "http://127.0.0.1:9"),
            ("BOROUGH_CONFIG_URL", "http://127.0.0.1:9"),
            ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
            // No backend is called for real: plaintext, no certificates needed.
            ("BOROUGH_INTERNAL_TLS", "off"),
        ];
        pairs.extend_from_slice(extra);
        let settings = Settings::from_env(&Env::from_pairs(pairs))?;
        let metrics = Metrics::new("gateway");
        let backends = Backends::new(&settings, &metrics, None)?;
        let state = app_state(&settings, &backends, Hot::fixed(&settings), &metrics);
        state.keys.insert(
            TENANT_KEY,
            borough_tenant::keys::Principal {
                tenant_id: borough_tenant::TenantId::new_v7(),
                key_id: uuid::Uuid::now_v7(),
            },
        );
        let service = BoxCloneService::new(router(
            state.clone(),
            &settings,
            &metrics,
            &Readiness::new(),
        ));
        Ok(App {
            state,
            settings,
            service,
        })
    }

    pub async fn send(&self, request: http::Request<Body>) -> axum::response::Response {
        match self.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The response's body as JSON, after checking it is a problem of `status`.
pub async fn problem(
    response: axum::response::Response,
    status: u16,
) -> anyhow::Result<serde_json::Value> {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        borough_error::PROBLEM_JSON,
        "a {status} without problem+json"
    );
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let problem: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(problem["status"], status, "{problem}");
    Ok(problem)
}
