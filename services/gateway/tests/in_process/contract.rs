//! The OpenAPI contract against the router itself: every documented operation is routed,
//! and every routed method is documented. Adding a route without its documentation fails
//! here.

use std::collections::BTreeSet;

use axum::body::Body;
use borough_gateway::middleware::{AroundLayer, Guard};
use borough_gateway::route_table;
use borough_telemetry::Metrics;
use http::{Method, Request};
use serde_json::Value;

use crate::{ADMIN_TOKEN, App, TENANT_KEY};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
];

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
    let response = app.send(request).await;
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
    let app = App::new()?;
    let response = app
        .send(Request::get("/openapi.json").body(Body::empty())?)
        .await;
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
    let app = App::new()?;
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
    let app = App::new()?;
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
