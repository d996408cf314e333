//! Configuration through the gateway: a tenant's own namespaces with its API key, the
//! platform's with the admin token, Server-Sent Events for watching.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

#[tokio::test]
async fn a_tenant_puts_reads_cas_updates_rolls_back_lists_and_deletes_its_config()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("cfg").await?;
    let http = &stack.http;
    let url = |path: &str| stack.url(&format!("/api/v1/config{path}"));

    let response = http
        .put(url("/app/theme"))
        .bearer_auth(&key)
        .json(&json!({"mode": "dark"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let first = response.headers()["etag"].to_str()?.to_owned();
    let entry: Value = response.json().await?;
    assert_eq!(entry["value"], json!({"mode": "dark"}));

    // A stale If-Match: 412, nothing changes; the current one: a new revision.
    let response = http
        .put(url("/app/theme"))
        .bearer_auth(&key)
        .header("if-match", "\"1000000\"")
        .json(&json!({"mode": "light"}))
        .send()
        .await?;
    assert_problem(response, 412).await?;
    let response = http
        .put(url("/app/theme"))
        .bearer_auth(&key)
        .header("if-match", &first)
        .json(&json!({"mode": "light"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_ne!(response.headers()["etag"].to_str()?, first);
    // Create-only on an existing key: 412.
    let response = http
        .put(url("/app/theme"))
        .bearer_auth(&key)
        .header("if-none-match", "*")
        .json(&json!({}))
        .send()
        .await?;
    assert_problem(response, 412).await?;

    let response = http.get(url("/app/theme")).bearer_auth(&key).send().await?;
    assert_eq!(response.status(), 200);
    let current: Value = response.json().await?;
    assert_eq!(current["value"], json!({"mode": "light"}));

    // History, newest first; roll back to the first revision.
    let history: Value = http
        .get(url("/app/theme/history"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let revisions: Vec<i64> = history["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["revision"].as_i64())
        .collect();
    assert_eq!(revisions.len(), 2, "{history}");
    let response = http
        .post(url("/app/theme:rollback"))
        .bearer_auth(&key)
        .json(&json!({"revision": revisions[1]}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let rolled: Value = response.json().await?;
    assert_eq!(rolled["value"], json!({"mode": "dark"}));

    // List (and by prefix), then delete.
    http.put(url("/app/limits"))
        .bearer_auth(&key)
        .json(&json!(10))
        .send()
        .await?;
    let listed: Value = http
        .get(url("/app"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["limits", "theme"]);
    let listed: Value = http
        .get(url("/app?prefix=th"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    let response = http
        .delete(url("/app/theme"))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(response.status(), 204);
    let response = http.get(url("/app/theme")).bearer_auth(&key).send().await?;
    assert_problem(response, 404).await?;

    // A schema: a value breaking it is 422 with the errors, and not stored.
    let response = http
        .put(url("/app:schema"))
        .bearer_auth(&key)
        .json(&json!({"type": "object", "properties": {"port": {"type": "integer"}}, "required": ["port"]}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = http
        .put(url("/app/listen"))
        .bearer_auth(&key)
        .json(&json!({"port": "http"}))
        .send()
        .await?;
    let problem = assert_problem(response, 422).await?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/port")),
        "{problem}"
    );
    let response = http
        .get(url("/app/listen"))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    Ok(())
}

#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_or_the_platforms_config() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key_a) = stack.create_tenant("cfg-a").await?;
    let (_, key_b) = stack.create_tenant("cfg-b").await?;
    let http = &stack.http;
    http.put(stack.url("/api/v1/config/app/secret"))
        .bearer_auth(&key_b)
        .json(&json!("b-only"))
        .send()
        .await?;
    // The same path as A is A's own namespace: B's value is not there.
    let response = http
        .get(stack.url("/api/v1/config/app/secret"))
        .bearer_auth(&key_a)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    let listed: Value = http
        .get(stack.url("/api/v1/config/app"))
        .bearer_auth(&key_a)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"], json!([]));
    // Platform config needs the admin token.
    for request in [
        http.get(stack.url("/admin/v1/config/platform/gateway")),
        http.put(stack.url("/admin/v1/config/platform/gateway/x"))
            .json(&json!(1)),
        http.get(stack.url("/admin/v1/config/platform/gateway:watch")),
    ] {
        assert_problem(request.bearer_auth(&key_a).send().await?, 401).await?;
    }
    // B's value is intact.
    let theirs: Value = http
        .get(stack.url("/api/v1/config/app/secret"))
        .bearer_auth(&key_b)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(theirs["value"], "b-only");
    Ok(())
}

/// Reads SSE events (id, event name) until `count` change events have arrived.
async fn sse_changes(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    count: usize,
) -> anyhow::Result<Vec<(i64, Value)>> {
    let mut out = Vec::new();
    while out.len() < count {
        while let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data["new_value"].clone()));
            }
        }
        if out.len() >= count {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event stream ended"))??;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    Ok(out)
}

#[tokio::test]
async fn the_platform_config_is_watched_as_server_sent_events_and_resumed_by_last_event_id()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = &stack.http;
    let url = |path: &str| stack.url(&format!("/admin/v1/config/platform/gateway{path}"));
    let put = |value: i64| {
        http.put(url("/request_timeout_ms"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!(value))
            .send()
    };
    assert_eq!(put(1000).await?.status(), 200);

    let response = http
        .get(url(":watch"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let replayed = sse_changes(&mut body, &mut buffer, 1).await?;
    assert_eq!(replayed[0].1, json!(1000));
    let last = replayed[0].0;
    drop(body);

    // Missed while away; resumed with Last-Event-ID: exactly those, in order.
    for value in [2000, 3000, 4000] {
        put(value).await?;
    }
    let response = http
        .get(url(":watch"))
        .bearer_auth(ADMIN_TOKEN)
        .header("last-event-id", last.to_string())
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let resumed = sse_changes(&mut body, &mut buffer, 3).await?;
    let values: Vec<Value> = resumed.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values, [json!(2000), json!(3000), json!(4000)]);
    assert!(resumed.windows(2).all(|w| w[0].0 < w[1].0));
    // Live.
    put(5000).await?;
    let live = sse_changes(&mut body, &mut buffer, 1).await?;
    assert_eq!(live[0].1, json!(5000));
    Ok(())
}

async fn set_gateway_config(stack: &Stack, key: &str, value: Value) -> anyhow::Result<()> {
    set_platform_config(stack, "gateway", key, value).await
}

/// Puts a `platform/<service>` value through the admin API; waits until the stack's
/// instance of that service has applied it (its report in `/admin/v1/config/status`).
async fn set_platform_config(
    stack: &Stack,
    service: &str,
    key: &str,
    value: Value,
) -> anyhow::Result<()> {
    let response = stack
        .http
        .put(stack.url(&format!("/admin/v1/config/platform/{service}/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&value)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "put {key}: {}", response.status());
    let entry: Value = response.json().await?;
    applied(
        stack,
        ADMIN_TOKEN,
        service,
        entry["revision"].as_i64().unwrap_or_default(),
    )
    .await
}

/// Waits until an instance of `service` reports `revision` applied (asking with `token`).
async fn applied(stack: &Stack, token: &str, service: &str, revision: i64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let status: Value = stack
            .http
            .get(stack.url("/admin/v1/config/status"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let applied = status["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["service"] == service)
            .filter_map(|i| i["applied_revision"].as_i64())
            .max()
            .unwrap_or_default();
        if applied >= revision {
            // The typed settings follow the snapshot in a task of their own; the report
            // of the applied revision is a gRPC call after it: a beat covers the two.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "never applied: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gateways_request_timeout_and_body_limit_hot_reload_from_the_config_service()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("hot").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/v1/users/{id}");

    // A request held on a row lock for ~600ms: within the default 10s deadline it succeeds.
    let slow_patch = |release_after: Duration| {
        let stack_url = stack.url(&path);
        let http = stack.http.clone();
        let key = key.clone();
        let admin_url = stack.db.admin_url.clone();
        let id = id.clone();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let request = http
                .patch(stack_url)
                .bearer_auth(&key)
                .json(&json!({ "name": "Slow" }))
                .send();
            let release = async {
                tokio::time::sleep(release_after).await;
                tx.rollback().await
            };
            let (response, released) = tokio::join!(request, release);
            released?;
            Ok::<u16, anyhow::Error>(response?.status().as_u16())
        }
    };
    assert_eq!(slow_patch(Duration::from_millis(600)).await?, 200);

    // 300ms deadline, hot: the same request is cut off with 504, without a restart.
    set_gateway_config(&stack, "http.request_timeout", json!("300ms")).await?;
    let started = std::time::Instant::now();
    assert_eq!(slow_patch(Duration::from_millis(1500)).await?, 504);
    assert!(started.elapsed() < Duration::from_millis(1500) + Duration::from_secs(1));

    // An invalid value is refused and the previous one kept.
    set_gateway_config(&stack, "http.request_timeout", json!("soon")).await?;
    assert_eq!(slow_patch(Duration::from_millis(1500)).await?, 504);

    // Back to 10s.
    set_gateway_config(&stack, "http.request_timeout", json!("10s")).await?;
    assert_eq!(slow_patch(Duration::from_millis(600)).await?, 200);

    // Body limit: 100 bytes refuses a larger body with 413; lifted, it is accepted.
    let big = json!({ "name": "N".repeat(150), "email": "big@example.com" });
    set_gateway_config(&stack, "http.body_limit", json!(100)).await?;
    let response = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&big)
        .send()
        .await?;
    assert_problem(response, 413).await?;
    set_gateway_config(&stack, "http.body_limit", json!("1MiB")).await?;
    let response = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&big)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    Ok(())
}

#[tokio::test]
async fn the_query_cache_ttl_hot_reloads_from_the_config_service() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("ttl").await?;
    let reads = || stack.metric(stack.query(), "borough_user_reads_total");
    let get = |id: String| {
        let request = stack
            .http
            .get(stack.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(&key);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };

    // 100ms: a user read twice 300ms apart is read from the database twice.
    set_platform_config(&stack, "query", "cache.ttl", json!("100ms")).await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    let before = reads().await?;
    assert_eq!(get(id.clone()).await?, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(id.clone()).await?, 200);
    assert_eq!(reads().await? - before, 2.0, "the 100ms TTL did not apply");

    // 1h: the second read comes from the cache.
    set_platform_config(&stack, "query", "cache.ttl", json!("1h")).await?;
    let invalidations = || stack.metric(stack.query(), "borough_cache_invalidations_total");
    let noticed = invalidations().await.unwrap_or_default();
    let user = stack.create_user(&key, "Alan", "alan@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    // The user's creation is announced to the query service, which drops the user from
    // its cache when the notice arrives: that may land after a first read. So: read, wait
    // for the notice, read again (cached from here on), and once more 300 ms later.
    assert_eq!(get(id.clone()).await?, 200);
    borough_testkit::wait_until(Duration::from_secs(10), || async {
        Ok(invalidations().await.unwrap_or_default() > noticed)
    })
    .await?;
    assert_eq!(get(id.clone()).await?, 200);
    let before = reads().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(id.clone()).await?, 200);
    assert_eq!(reads().await? - before, 0.0, "the 1h TTL did not apply");
    Ok(())
}

#[tokio::test]
async fn the_admin_token_rotates_hot_by_its_hash_in_the_platform_config() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    const NEW_TOKEN: &str = "rotated-admin-token-0123456789abcdef";
    let hash = hex::encode(borough_tenant::apikey::hash(NEW_TOKEN));
    let list = |token: &'static str| {
        let request = stack
            .http
            .get(stack.url("/admin/v1/tenants"))
            .bearer_auth(token);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    let put_hash = |token: &'static str, value: Value| {
        let request = stack
            .http
            .put(stack.url("/admin/v1/config/platform/gateway/admin.token_sha256"))
            .bearer_auth(token)
            .json(&value);
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let entry: Value = response.json().await.unwrap_or_default();
            anyhow::Ok((status, entry["revision"].as_i64().unwrap_or_default()))
        }
    };
    assert_eq!(put_hash(ADMIN_TOKEN, json!(hash)).await?.0, 200);
    // Applied within moments, no restart: the new token works, the old one does not.
    let started = std::time::Instant::now();
    while list(NEW_TOKEN).await? != 200 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "never rotated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(list(ADMIN_TOKEN).await?, 401, "the old token still works");
    // A malformed hash is refused: the rotated token stays in force.
    let (status, revision) = put_hash(NEW_TOKEN, json!("not-hex")).await?;
    assert_eq!(status, 200);
    applied(&stack, NEW_TOKEN, "gateway", revision).await?;
    assert_eq!(list(NEW_TOKEN).await?, 200);
    Ok(())
}

/// The admin reaches a tenant's namespace under `/admin/v1/tenants/{id}/config/{name}`:
/// what it writes is what the tenant reads with its key (recorded as the admin's), the
/// schema it sets is the tenant's, its history and rollback are the tenant's key's.
#[tokio::test]
async fn the_admin_reads_and_writes_a_tenants_namespace_as_the_tenant_sees_it() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let (tenant, key) = stack.create_tenant("admin-cfg").await?;
    let http = &stack.http;
    let admin = |path: &str| stack.url(&format!("/admin/v1/tenants/{tenant}/config/app{path}"));

    // No schema yet, then one; both read back with the tenant's key too.
    let schema: Value = http
        .get(admin(":schema"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(schema, json!({"schema": null}));
    let strict = json!({"type": "object", "required": ["mode"]});
    let response = http
        .put(admin(":schema"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&strict)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let seen: Value = http
        .get(stack.url("/api/v1/config/app:schema"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen["schema"], strict);

    // The schema holds for the admin too.
    let refused = http
        .put(admin("/theme"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"colour": 1}))
        .send()
        .await?;
    assert_problem(refused, 422).await?;
    let first: Value = http
        .put(admin("/theme"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"mode": "dark"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(first["updated_by"], "admin");
    let read: Value = http
        .get(stack.url("/api/v1/config/app/theme"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["value"], json!({"mode": "dark"}));

    // The tenant changes it; the admin's stale CAS fails, its history shows both, its
    // rollback restores the admin's value for the tenant.
    let response = http
        .put(stack.url("/api/v1/config/app/theme"))
        .bearer_auth(&key)
        .json(&json!({"mode": "light"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let stale = http
        .put(admin("/theme"))
        .bearer_auth(ADMIN_TOKEN)
        .header("if-match", format!("\"{}\"", first["revision"]))
        .json(&json!({"mode": "dark"}))
        .send()
        .await?;
    assert_problem(stale, 412).await?;
    let history: Value = http
        .get(admin("/theme/history"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let actors: Vec<&str> = history["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["actor"].as_str())
        .collect();
    assert_eq!(actors.len(), 2, "{history}");
    assert_eq!(actors[1], "admin");
    let rolled = http
        .post(admin("/theme:rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"revision": first["revision"]}))
        .send()
        .await?;
    assert_eq!(rolled.status(), 200);
    let read: Value = http
        .get(stack.url("/api/v1/config/app/theme"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["value"], json!({"mode": "dark"}));

    // Its namespaces, as the admin and the tenant list them; another tenant sees none.
    let listed: Value = http
        .get(stack.url(&format!("/admin/v1/tenants/{tenant}/config")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["items"],
        json!([{"name": "app", "keys": 1, "value_bytes": listed["items"][0]["value_bytes"], "schema": true}])
    );
    let own: Value = http
        .get(stack.url("/api/v1/config"))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(own["items"], listed["items"]);
    let (_, other) = stack.create_tenant("admin-cfg-other").await?;
    let theirs: Value = http
        .get(stack.url("/api/v1/config"))
        .bearer_auth(&other)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(theirs["items"], json!([]));

    // Not a tenant id: 400; without the admin token: 401.
    let bad = http
        .get(stack.url("/admin/v1/tenants/not-an-id/config/app"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(bad, 400).await?;
    let anonymous = http.get(admin("")).bearer_auth(&key).send().await?;
    assert_problem(anonymous, 401).await?;
    Ok(())
}
