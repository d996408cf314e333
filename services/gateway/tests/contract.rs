//! The OpenAPI contract against the router itself, in-process (no socket, no backend, no
//! PostgreSQL): every documented operation is routed, and every routed method is
//! documented. Adding a route without its documentation fails here.

use std::collections::BTreeSet;

use axum::body::Body;
use borough_config_client::Env;
use borough_gateway::middleware::{AroundLayer, Guard};
use borough_gateway::state::AppState;
use borough_gateway::{Backends, Settings, app_state, route_table, router};
use borough_telemetry::{Metrics, Readiness};
use http::{Method, Request};
use serde_json::Value;
use tower::ServiceExt;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
];

struct App {
    state: AppState,
    settings: Settings,
}

fn app() -> anyhow::Result<App> {
    // Backends that are not there: calls to them fail fast, which is fine here.
    let settings = Settings::from_env(&Env::from_pairs([
        ("BOROUGH_USER_URL", "http://127.0.0.1:9"),
        ("BOROUGH_QUERY_URL", "http://127.0.0.1:9"),
        ("BOROUGH_CONFIG_URL", "http://127.0.0.1:9"),
        ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
        // No backend is called for real: plaintext, no certificates needed.
        ("BOROUGH_INTERNAL_TLS", "off"),
    ]))?;
    let backends = Backends::new(&settings, &Metrics::new("gateway"), None)?;
    let state = AppState::new(app_state(&settings, &backends));
    // A tenant key known to the gateway's cache: tenant routes get past authentication
    // to their method routing without a directory.
    state.keys.insert(
        TENANT_KEY,
        borough_tenant::keys::Principal {
            tenant_id: borough_tenant::TenantId::new_v7(),
            key_id: uuid::Uuid::now_v7(),
        },
    );
    Ok(App { state, settings })
}

const TENANT_KEY: &str = "bk_0123456789ab_0123456789abcdef0123456789abcdef";
const ADMIN_TOKEN: &str = "contract-admin-token-0123456789";

/// The path a request can be sent to: each `{parameter}` given a sample value.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "0193a0a0-0000-7000-8000-000000000000")
        .replace("{key_id}", "0193a0a0-0000-7000-8000-000000000001")
        .replace("{service}", "gateway")
        .replace("{name}", "sample")
        .replace("{key}", "sample")
}

/// The route a documented path is served by: an action after a parameter
/// (`{name}:watch`) shares its parameter's route.
fn route_of(documented: &str) -> String {
    match documented.rsplit_once("}:") {
        Some((head, action)) if !action.contains('/') => format!("{head}}}"),
        _ => documented.to_owned(),
    }
}

/// Whether the router routed `method path` (anything but its own 404 for an unknown path
/// and its 405).
async fn routed(app: &App, method: &Method, path: &str) -> anyhow::Result<bool> {
    let service = router(
        app.state.clone(),
        &app.settings,
        &Metrics::new("gateway"),
        &Readiness::new(),
    );
    let credential = if path.starts_with("/admin/") {
        ADMIN_TOKEN
    } else {
        TENANT_KEY
    };
    let request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {credential}"))
        .body(Body::from("{}"))?;
    let response = service.oneshot(request).await?;
    let status = response.status().as_u16();
    if status == 405 {
        return Ok(false);
    }
    if status == 404 {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
        let problem: Value = serde_json::from_slice(&body).unwrap_or_default();
        return Ok(problem["detail"] != "no such route");
    }
    Ok(true)
}

fn document(app: &App) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&app.state.openapi)?)
}

/// (method, documented path) of every operation.
fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if item.get(method.as_str().to_ascii_lowercase()).is_some() {
                    out.push((method.clone(), path.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_is_openapi_3_1_served_at_openapi_json() -> anyhow::Result<()> {
    let app = app()?;
    let service = router(
        app.state.clone(),
        &app.settings,
        &Metrics::new("gateway"),
        &Readiness::new(),
    );
    let response = service
        .oneshot(Request::get("/openapi.json").body(Body::empty())?)
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(response.into_body(), 1 << 22).await?;
    let doc: Value = serde_json::from_slice(&body)?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());
    // Every operation documents its errors as problem+json and its request id.
    for (method, path) in operations(&doc) {
        let operation = &doc["paths"][&path][method.as_str().to_ascii_lowercase()];
        let default = &operation["responses"]["default"];
        assert!(
            default["content"]["application/problem+json"].is_object(),
            "{method} {path}: no problem+json default"
        );
        assert!(
            operation["responses"]["503"]["headers"]["Retry-After"].is_object(),
            "{method} {path}: no Retry-After on 503"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_documented_operation_is_routed() -> anyhow::Result<()> {
    let app = app()?;
    let doc = document(&app)?;
    let operations = operations(&doc);
    assert!(operations.len() >= 30, "{} operations", operations.len());
    for (method, path) in operations {
        assert!(
            routed(&app, &method, &concrete(&path)).await?,
            "{method} {path} is documented but not routed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_routed_method_is_documented() -> anyhow::Result<()> {
    let app = app()?;
    let doc = document(&app)?;
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path)| (method.to_string(), route_of(&path)))
        .collect();
    let metrics = Metrics::new("gateway");
    let http = borough_telemetry::metrics::HttpMetrics::register(&metrics);
    let table = route_table(&app.settings, |scope| {
        AroundLayer::new(Guard {
            state: app.state.clone(),
            metrics: http.clone(),
            scope,
        })
    });
    assert!(table.paths.len() >= 19, "{} routes", table.paths.len());
    for path in table.paths {
        for method in METHODS {
            if routed(&app, &method, &concrete(path)).await? {
                assert!(
                    documented.contains(&(method.to_string(), path.to_owned())),
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn actions_share_their_parameters_route() {
    assert_eq!(
        route_of("/api/v1/config/{name}:watch"),
        "/api/v1/config/{name}"
    );
    assert_eq!(
        route_of("/api/v1/config/{name}/{key}:rollback"),
        "/api/v1/config/{name}/{key}"
    );
    assert_eq!(route_of("/api/v1/users:export"), "/api/v1/users:export");
}
