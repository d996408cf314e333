//! The README's curl walk-through, step by step.

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

#[tokio::test]
async fn hello_answers_the_seed_greeting() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let response = stack.http.get(stack.url("/hello")).send().await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await?;
    assert_eq!(body, json!({ "message": "Hello from Borough!" }));
    Ok(())
}

#[tokio::test]
async fn the_curl_walkthrough_works_for_a_shared_tenant() -> anyhow::Result<()> {
    walkthrough(Some("shared")).await
}

#[tokio::test]
async fn the_curl_walkthrough_works_for_a_schema_tenant() -> anyhow::Result<()> {
    walkthrough(Some("schema")).await
}

#[tokio::test]
async fn the_curl_walkthrough_works_for_a_database_tenant() -> anyhow::Result<()> {
    walkthrough(Some("database")).await
}

#[tokio::test]
async fn the_curl_walkthrough_works_for_a_tenant_created_without_a_placement() -> anyhow::Result<()>
{
    walkthrough(None).await
}

/// The README's walk-through: create a tenant (in `placement`; the default when `None`),
/// then create, read, list, update and delete users as it.
async fn walkthrough(placement: Option<&str>) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = &stack.http;

    // The admin creates a tenant and receives its API key once.
    let mut body = json!({ "name": "acme" });
    if let Some(placement) = placement {
        body["placement"] = json!(placement);
    }
    let response = http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await?;
    let tenant_id = created["tenant"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = created["api_key"]["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(created["tenant"]["name"], "acme");
    assert_eq!(
        created["tenant"]["placement"],
        placement.unwrap_or("shared")
    );
    let expected_schema = match placement {
        Some("schema") => format!("t_{}", uuid::Uuid::parse_str(&tenant_id)?.simple()),
        Some("database") => "borough".to_owned(),
        _ => "public".to_owned(),
    };
    assert_eq!(created["tenant"]["schema"], expected_schema.as_str());
    assert_eq!(created["tenant"]["status"], "active");
    assert!(key.starts_with("bk_"), "{created}");

    // The tenant is listed and shows its key by prefix only.
    let tenants: Value = http
        .get(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(tenants["items"][0]["id"], tenant_id.as_str());
    let detail: Value = http
        .get(stack.url(&format!("/admin/v1/tenants/{tenant_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        detail["api_keys"][0]["prefix"],
        created["api_key"]["prefix"]
    );
    assert!(
        !detail.to_string().contains(&key),
        "the secret must never be shown again"
    );

    // Create a user: 201, Location, ETag.
    let response = http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&json!({ "name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str()?.to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let user: Value = response.json().await?;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(location, format!("/api/v1/users/{id}"));
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 7);
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["version"], 1);
    assert!(
        user["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{user}"
    );

    // Get it back through the query service.
    let response = http
        .get(stack.url(&location))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let fetched: Value = response.json().await?;
    assert_eq!(fetched, user);

    // A matching If-None-Match is answered 304.
    let response = http
        .get(stack.url(&location))
        .bearer_auth(&key)
        .header("if-none-match", "\"1\"")
        .send()
        .await?;
    assert_eq!(response.status(), 304);

    // List: two more users, pages of two.
    stack
        .create_user(&key, "Grace Hopper", "grace@example.com")
        .await?;
    stack
        .create_user(&key, "Alan Turing", "alan@example.com")
        .await?;
    let page: Value = http
        .get(stack.url("/api/v1/users?limit=2"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["items"][0]["id"], id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert!(!cursor.is_empty(), "{page}");
    let last: Value = http
        .get(stack.url(&format!("/api/v1/users?limit=2&cursor={cursor}")))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["items"][0]["name"], "Alan Turing");
    assert_eq!(last["next_cursor"], Value::Null);

    // Update with the current ETag: version 2.
    let response = http
        .patch(stack.url(&location))
        .bearer_auth(&key)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "Ada King" }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let updated: Value = response.json().await?;
    assert_eq!(updated["name"], "Ada King");
    assert_eq!(updated["email"], "ada@example.com");
    assert_eq!(updated["version"], 2);

    // The read side sees the new version.
    let fetched: Value = http
        .get(stack.url(&location))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fetched["version"], 2);

    // Delete, then it is gone.
    let response = http
        .delete(stack.url(&location))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(response.status(), 204);
    let response = http
        .get(stack.url(&location))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once_and_a_new_key_works() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (tenant, key) = stack.create_tenant("revoking").await?;
    stack.create_user(&key, "A", "a@example.com").await?;

    let issued: Value = stack
        .http
        .post(stack.url(&format!("/admin/v1/tenants/{tenant}/api-keys")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let second = issued["key"].as_str().unwrap_or_default().to_owned();

    let detail: Value = stack
        .http
        .get(stack.url(&format!("/admin/v1/tenants/{tenant}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let first_id = detail["api_keys"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let response = stack
        .http
        .delete(stack.url(&format!("/admin/v1/tenants/{tenant}/api-keys/{first_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(response.status(), 204);

    let response = stack
        .http
        .get(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_problem(response, 401).await?;
    let response = stack
        .http
        .get(stack.url("/api/v1/users"))
        .bearer_auth(&second)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_method_and_status() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("metered").await?;
    for _ in 0..3 {
        stack.http.get(stack.url("/hello")).send().await?;
    }
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default();
    stack
        .http
        .get(stack.url(&format!("/api/v1/users/{id}")))
        .bearer_auth(&key)
        .send()
        .await?;
    stack
        .http
        .get(stack.url(&format!("/api/v1/users/{}", uuid::Uuid::now_v7())))
        .bearer_auth(&key)
        .send()
        .await?;

    let text = stack
        .http
        .get(stack.gateway_admin("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let count = |route: &str, method: &str, status: u16| {
        text.lines()
            .find(|l| {
                l.starts_with("borough_http_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(count("/hello", "GET", 200), Some(3), "{text}");
    assert_eq!(count("/api/v1/users", "POST", 201), Some(1), "{text}");
    assert_eq!(count("/api/v1/users/{id}", "GET", 200), Some(1), "{text}");
    assert_eq!(count("/api/v1/users/{id}", "GET", 404), Some(1), "{text}");
    assert!(!text.contains(id), "raw ids must never become labels");
    assert!(
        text.contains("borough_http_request_duration_seconds_bucket"),
        "{text}"
    );
    Ok(())
}
