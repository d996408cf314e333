//! Every error status of the API, each as problem+json, with nothing half-written.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem, spawn_gateway};

async fn user_count(stack: &Stack) -> anyhow::Result<i64> {
    let pool = stack.db.admin_pool().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?)
}

#[tokio::test]
async fn malformed_json_missing_fields_and_invalid_values_are_400() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("badinput").await?;
    let post = |body: &'static str| {
        stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let body = assert_problem(post("{\"name\": \"Ada\",").await?, 400).await?;
    assert_eq!(body["type"], "urn:borough:problem:invalid-argument");
    let body = assert_problem(post("{\"name\": \"Ada\"}").await?, 400).await?;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("email")),
        "{body}"
    );
    let body = assert_problem(
        post("{\"name\": \"Ada\", \"email\": \"not-an-email\"}").await?,
        400,
    )
    .await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not-an-email")),
        "{body}"
    );
    assert_problem(
        post("{\"name\": \"  \", \"email\": \"a@example.com\"}").await?,
        400,
    )
    .await?;
    assert_problem(
        post("{\"name\": 42, \"email\": \"a@example.com\"}").await?,
        400,
    )
    .await?;
    assert_problem(
        post("{\"name\": \"A\", \"email\": \"a@example.com\", \"admin\": true}").await?,
        400,
    )
    .await?;
    assert_eq!(
        user_count(&stack).await?,
        0,
        "a rejected request wrote something"
    );
    Ok(())
}

#[tokio::test]
async fn a_malformed_id_or_query_parameter_is_400() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("badids").await?;
    for path in [
        "/api/v1/users/not-a-uuid",
        "/api/v1/users?limit=abc",
        "/api/v1/users?limit=0",
        "/api/v1/users?cursor=garbage!",
        "/api/v1/users?colour=blue",
    ] {
        let response = stack
            .http
            .get(stack.url(path))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_problem(response, 400).await?;
    }
    let response = stack
        .http
        .patch(stack.url("/api/v1/users/123"))
        .bearer_auth(&key)
        .json(&json!({ "name": "x" }))
        .send()
        .await?;
    assert_problem(response, 400).await?;
    Ok(())
}

#[tokio::test]
async fn missing_malformed_unknown_and_admin_credentials_are_401() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let users = stack.url("/api/v1/users");
    let response = stack.http.get(&users).send().await?;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401).await?;
    let response = stack
        .http
        .get(&users)
        .header("authorization", "Basic eDp5")
        .send()
        .await?;
    assert_problem(response, 401).await?;
    let response = stack
        .http
        .get(&users)
        .bearer_auth("not-a-key")
        .send()
        .await?;
    assert_problem(response, 401).await?;
    // Well-formed, but never issued.
    let unknown = "bk_0123456789ab_0123456789abcdef0123456789abcdef";
    let response = stack.http.get(&users).bearer_auth(unknown).send().await?;
    assert_problem(response, 401).await?;
    // The admin token is not an API key, and an API key is not the admin token.
    let response = stack
        .http
        .get(&users)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(response, 401).await?;
    let (_, key) = stack.create_tenant("notadmin").await?;
    let response = stack
        .http
        .get(stack.url("/admin/v1/tenants"))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_problem(response, 401).await?;
    Ok(())
}

#[tokio::test]
async fn unknown_users_routes_and_tenants_are_404() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("unknowns").await?;
    let missing = uuid::Uuid::now_v7();
    for request in [
        stack
            .http
            .get(stack.url(&format!("/api/v1/users/{missing}"))),
        stack
            .http
            .patch(stack.url(&format!("/api/v1/users/{missing}")))
            .json(&json!({"name": "x"})),
        stack
            .http
            .delete(stack.url(&format!("/api/v1/users/{missing}"))),
    ] {
        assert_problem(request.bearer_auth(&key).send().await?, 404).await?;
    }
    let response = stack.http.get(stack.url("/no/such/route")).send().await?;
    assert_problem(response, 404).await?;
    let response = stack
        .http
        .get(stack.url(&format!("/admin/v1/tenants/{missing}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    Ok(())
}

#[tokio::test]
async fn a_duplicate_email_or_tenant_name_is_409() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("dupes").await?;
    stack.create_user(&key, "Ada", "ada@example.com").await?;
    let response = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&json!({ "name": "Other Ada", "email": "ADA@example.com" }))
        .send()
        .await?;
    let body = assert_problem(response, 409).await?;
    assert_eq!(body["type"], "urn:borough:problem:already-exists");
    assert_eq!(user_count(&stack).await?, 1);

    let response = stack
        .http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "dupes" }))
        .send()
        .await?;
    assert_problem(response, 409).await?;
    Ok(())
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("stale").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
    let response = stack
        .http
        .patch(stack.url(&path))
        .bearer_auth(&key)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "Ada v2" }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);

    for request in [
        stack
            .http
            .patch(stack.url(&path))
            .json(&json!({ "name": "lost update" })),
        stack.http.delete(stack.url(&path)),
    ] {
        let response = request
            .bearer_auth(&key)
            .header("if-match", "\"1\"")
            .send()
            .await?;
        let body = assert_problem(response, 412).await?;
        assert_eq!(body["type"], "urn:borough:problem:precondition-failed");
    }
    let current: Value = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(current["name"], "Ada v2");
    assert_eq!(current["version"], 2);
    Ok(())
}

#[tokio::test]
async fn an_import_over_its_body_limit_is_413_naming_the_setting() -> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[("BOROUGH_IMPORT_BODY_LIMIT", "1KiB")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("bigimport").await?;
    // Whole, valid lines, streamed without a Content-Length: refused while reading, when
    // the body passes 1 KiB.
    let lines: Vec<Result<Vec<u8>, std::io::Error>> = (0..40)
        .map(|i| {
            Ok(
                format!("{{\"name\":\"Line {i}\",\"email\":\"line{i}@example.com\"}}\n")
                    .into_bytes(),
            )
        })
        .collect();
    let response = stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            lines,
        )))
        .send()
        .await?;
    let body = assert_problem(response, 413).await?;
    assert_eq!(body["type"], "urn:borough:problem:payload-too-large");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("BOROUGH_IMPORT_BODY_LIMIT")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn with_backends_down_hello_works_readyz_says_what_is_missing_and_calls_are_503()
-> anyhow::Result<()> {
    // Ports that were free a moment ago: nothing listens there.
    let user = format!("https://127.0.0.1:{}", borough_testkit::pg::free_port()?);
    let query = format!("https://127.0.0.1:{}", borough_testkit::pg::free_port()?);
    let gateway = spawn_gateway(&user, &query, &[]).await?;
    let http = reqwest::Client::new();

    let hello = http.get(format!("{}/hello", gateway.url(0))).send().await?;
    assert_eq!(hello.status(), 200);

    let readyz = format!("{}/readyz", gateway.url(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body: Value = loop {
        let body: Value = http.get(&readyz).send().await?.json().await?;
        let reasons = body["reasons"].to_string();
        if reasons.contains("unreachable") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "not_ready", "{body}");
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("user") && reasons.contains("query"),
        "{body}"
    );
    assert_eq!(http.get(&readyz).send().await?.status(), 503);

    let key = "bk_0123456789ab_0123456789abcdef0123456789abcdef";
    let started = std::time::Instant::now();
    let response = http
        .get(format!("{}/api/v1/users", gateway.url(0)))
        .bearer_auth(key)
        .send()
        .await?;
    assert!(response.headers().contains_key("retry-after"));
    let body = assert_problem(response, 503).await?;
    assert!(
        !body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    let response = http
        .post(format!("{}/admin/v1/tenants", gateway.url(0)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "down" }))
        .send()
        .await?;
    assert_problem(response, 503).await?;
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn services_start_with_the_database_down_and_report_it_on_readyz() -> anyhow::Result<()> {
    let url = format!(
        "postgres://borough_user:x@127.0.0.1:{}/none",
        borough_testkit::pg::free_port()?
    );
    let env = borough_testkit::tls::service_env(&[
        ("BOROUGH_DATABASE_URL", url.as_str()),
        ("BOROUGH_PROBE_INTERVAL", "100ms"),
        ("BOROUGH_DB_ACQUIRE_TIMEOUT", "500ms"),
    ])?;
    let settings = borough_user::Settings::from_env(&env)?;
    let user = crate::support::spawn_user_with(settings).await?;
    let readyz = format!("{}/readyz", user.url(1));
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = http.get(&readyz).send().await?.json().await?;
        if body["reasons"]
            .to_string()
            .contains("database: unreachable")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never said why: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http.get(format!("{}/healthz", user.url(1)))
            .send()
            .await?
            .status(),
        200
    );

    // Calls that need the database fail with UNAVAILABLE, not a hang or a crash.
    let mut client =
        borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient::new(
            borough_testkit::tls::channel(&user.grpc_url(0), "gateway", "user")?,
        );
    let status = client
        .list_tenants(borough_proto::user::v1::ListTenantsRequest::default())
        .await
        .expect_err("no database");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    user.stop().await?;
    Ok(())
}
