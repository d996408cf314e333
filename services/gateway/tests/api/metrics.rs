//! RED metrics after known traffic: the gateway per route template, method and status;
//! each gRPC service per method and status code.

use serde_json::json;

use crate::support::Stack;

#[tokio::test]
async fn known_traffic_shows_up_by_route_and_status_at_the_gateway_and_by_method_and_code_behind_it()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("metrics").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default();
    let get = |path: String| stack.http.get(stack.url(&path)).bearer_auth(&key).send();
    for _ in 0..3 {
        assert_eq!(get(format!("/api/v1/users/{id}")).await?.status(), 200);
    }
    let missing = "0190d6f0-0000-7000-8000-000000000000";
    assert_eq!(get(format!("/api/v1/users/{missing}")).await?.status(), 404);
    let conflict = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await?;
    assert_eq!(conflict.status(), 409);

    let gateway = |labels: &'static str| {
        stack.metric_with(&stack.gateway, "borough_http_requests_total", labels)
    };
    assert_eq!(
        gateway(r#"method="GET",route="/api/v1/users/{id}",status="200""#).await?,
        3.0
    );
    assert_eq!(
        gateway(r#"method="GET",route="/api/v1/users/{id}",status="404""#).await?,
        1.0
    );
    assert_eq!(
        gateway(r#"method="POST",route="/api/v1/users",status="201""#).await?,
        1.0
    );
    assert_eq!(
        gateway(r#"method="POST",route="/api/v1/users",status="409""#).await?,
        1.0
    );

    let calls = |service, labels: &'static str| {
        stack.metric_with(service, "borough_grpc_server_calls_total", labels)
    };
    assert_eq!(
        calls(
            stack.user(),
            r#"method="/borough.user.v1.UserService/CreateUser",code="OK""#
        )
        .await?,
        1.0
    );
    assert_eq!(
        calls(
            stack.user(),
            r#"method="/borough.user.v1.UserService/CreateUser",code="ALREADY_EXISTS""#
        )
        .await?,
        1.0
    );
    // Three reads: the first from the database, the next two from the cache; all OK.
    assert_eq!(
        calls(
            stack.query(),
            r#"method="/borough.query.v1.QueryService/GetUserInfo",code="OK""#
        )
        .await?,
        3.0
    );
    assert_eq!(
        calls(
            stack.query(),
            r#"method="/borough.query.v1.QueryService/GetUserInfo",code="NOT_FOUND""#
        )
        .await?,
        1.0
    );
    // Latency histograms exist per method and code.
    let histogram = stack
        .metric_with(
            stack.query(),
            "borough_grpc_server_call_duration_seconds_count",
            r#"method="/borough.query.v1.QueryService/GetUserInfo",code="OK""#,
        )
        .await?;
    assert_eq!(histogram, 3.0);
    // The config service counts the list calls of the services following it.
    let lists = calls(
        &stack.config,
        r#"method="/borough.config.v1.ConfigService/List",code="OK""#,
    )
    .await?;
    assert!(lists >= 1.0, "{lists}");
    Ok(())
}

/// The admin status: the config service's clients, each backend's endpoints with health
/// and circuit, and per route the rate, error shares and p99 between two snapshots; the
/// watch sends the same as Server-Sent Events.
#[tokio::test]
async fn the_admin_status_shows_config_clients_backends_and_each_routes_traffic_since_the_last_look()
-> anyhow::Result<()> {
    use futures_util::StreamExt;

    let stack = Stack::start().await?;
    let status = || async {
        let response = stack
            .http
            .get(stack.url("/admin/v1/status"))
            .bearer_auth(crate::support::ADMIN_TOKEN)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "{}", response.status());
        Ok::<serde_json::Value, anyhow::Error>(response.json().await?)
    };
    status().await?; // the first look: totals only
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // a window of its own
    for _ in 0..30 {
        stack.http.get(stack.url("/hello")).send().await?;
    }
    let missing = stack.http.get(stack.url("/api/v1/users/x")).send().await?;
    assert_eq!(missing.status(), 401);
    let snapshot = status().await?;

    let hello = snapshot["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["route"] == "/hello" && r["method"] == "GET")
        .cloned()
        .unwrap_or_default();
    assert!(
        hello["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0,
        "{hello}"
    );
    assert_eq!(hello["error_ratio"], 0.0);
    assert!(hello["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{hello}");
    assert!(hello["requests_total"].as_u64().unwrap_or(0) >= 30);
    let unauthorized = snapshot["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["route"] == "/api/v1/users/{id}")
        .cloned()
        .unwrap_or_default();
    assert_eq!(unauthorized["client_error_ratio"], 1.0, "{unauthorized}");

    let backends: Vec<&str> = snapshot["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(backends, ["user", "query", "config"]);
    for backend in snapshot["backends"].as_array().into_iter().flatten() {
        let endpoint = &backend["endpoints"][0];
        assert_eq!(endpoint["healthy"], true, "{backend}");
        assert_eq!(endpoint["breaker"], "closed", "{backend}");
    }
    assert!(snapshot["config_error"].is_null(), "{snapshot}");
    assert!(snapshot["config"]["instances"].is_array());

    // The watch: `status` events, two seconds apart.
    let mut events = stack
        .http
        .get(stack.url("/admin/v1/status:watch"))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await?
        .bytes_stream();
    let mut text = String::new();
    let started = std::time::Instant::now();
    while text.matches("event: status").count() < 2 {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{text}"
        );
        match tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk?)),
            _ => anyhow::bail!("the watch went quiet: {text}"),
        }
    }
    assert!(text.contains("\"backends\""), "{text}");
    Ok(())
}
