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
