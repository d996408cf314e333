//! Live tenant moves through the admin API: a tenant moved shared -> database -> schema
//! while readers and writers run, and the API's answers (202 and Location, 404, 409).

use std::collections::HashMap;
use std::time::Duration;

use borough_testkit::load::{Load, move_tenant};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

#[tokio::test]
async fn a_tenant_moves_shared_to_database_to_schema_under_load_losing_nothing_and_failing_no_request()
-> anyhow::Result<()> {
    let stack = Stack::builder()
        .services(&[
            ("BOROUGH_MOVE_GRACE", "1s"),
            ("BOROUGH_MOVE_BATCH_ROWS", "500"),
        ])
        .start()
        .await?;
    let (tenant, key) = stack.create_tenant_in("mover", "shared").await?;
    let (_, neighbour_key) = stack.create_tenant_in("neighbour", "shared").await?;
    let neighbour_user = stack
        .create_user(&neighbour_key, "Nell", "nell@n.example")
        .await?;
    // 2,000 users to copy.
    let ndjson: String = (0..2000)
        .map(|i| format!("{{\"name\":\"Seed {i}\",\"email\":\"seed{i}@m.example\"}}\n"))
        .collect();
    let imported = stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await?;
    assert_eq!(imported.status(), 200, "{}", imported.text().await?);

    let gateway = stack.gateway.url(0);
    let load = Load::start(&stack.http, &gateway, &key, &neighbour_key, 3, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = move_tenant(
        &stack.http,
        &gateway,
        ADMIN_TOKEN,
        &tenant,
        json!({ "placement": "database" }),
        "done",
    )
    .await?;
    let writes_before = load.seen.writes.load(std::sync::atomic::Ordering::Relaxed);
    let second = move_tenant(
        &stack.http,
        &gateway,
        ADMIN_TOKEN,
        &tenant,
        json!({ "placement": "schema" }),
        "done",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.stop().await;
    let failures = seen.failures.lock().await.clone();
    let acked = seen.acked.lock().await.clone();
    let writes = seen.writes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "moves: shared->database {:?} (fence {} ms, phases {:?}), database->schema {:?} \
         (fence {} ms, phases {:?}); {writes} writes ({} during the second move), {} reads, \
         slowest write {:?}",
        first.took,
        first.last["fence_ms"],
        first.phases,
        second.took,
        second.last["fence_ms"],
        second.phases,
        writes - writes_before,
        seen.reads.load(std::sync::atomic::Ordering::Relaxed),
        seen.slowest_write().0,
    );
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    for m in [&first, &second] {
        assert_eq!(
            m.phases.last().map(String::as_str),
            Some("done"),
            "{:?}",
            m.phases
        );
        assert_eq!(m.last["rows_copied"], m.last["rows_total"], "{}", m.last);
        assert!(
            m.last["rows_total"].as_i64().unwrap_or(0) >= 2000,
            "{}",
            m.last
        );
        assert!(m.last["fence_ms"].as_f64().is_some(), "{}", m.last);
    }
    // Counted on the user service: each phase of both moves, and the rows copied.
    for phase in ["copying", "fenced", "switched", "done"] {
        let entered = stack
            .metric_with(
                stack.user(),
                "borough_tenant_move_phases_total",
                &format!("phase=\"{phase}\""),
            )
            .await?;
        assert!(entered >= 2.0, "{phase}: {entered}");
    }
    let copied = stack
        .metric(stack.user(), "borough_tenant_move_rows_copied_total")
        .await?;
    assert!(copied >= 4000.0, "rows copied: {copied}");
    assert!(acked.len() > 10, "the writers wrote: {}", acked.len());

    // Every acknowledged write is there, once, at least at the version acknowledged.
    let export = stack
        .http
        .get(stack.url("/api/v1/users:export"))
        .bearer_auth(&key)
        .send()
        .await?
        .text()
        .await?;
    let mut exported: HashMap<String, i64> = HashMap::new();
    for line in export.lines() {
        let user: Value = serde_json::from_str(line)?;
        let id = user["id"].as_str().unwrap_or_default().to_owned();
        assert!(
            exported
                .insert(id.clone(), user["version"].as_i64().unwrap_or(0))
                .is_none(),
            "{id} exported twice"
        );
    }
    assert_eq!(exported.len(), 2000 + acked.len(), "users after the moves");
    for (id, version) in &acked {
        let found = exported.get(id).copied();
        assert!(
            found.is_some_and(|v| v >= *version),
            "{id}: acknowledged {version}, found {found:?}"
        );
    }
    // The neighbour was never touched, and the tenant now lives in its schema alone.
    let response = stack
        .api(&neighbour_key)
        .get_user(neighbour_user["id"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(response.status(), 200);
    let tenant_body: Value = stack
        .http
        .get(stack.url(&format!("/admin/v1/tenants/{tenant}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(tenant_body["placement"], "schema", "{tenant_body}");
    let admin = stack.db.admin_pool().await?;
    let tenant_uuid = uuid::Uuid::parse_str(&tenant)?;
    let shared_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.users WHERE tenant_id = $1)
              + (SELECT count(*) FROM public.idempotency_keys WHERE tenant_id = $1)
              + (SELECT count(*) FROM public.tenant_fences WHERE tenant_id = $1)",
    )
    .bind(tenant_uuid)
    .fetch_one(&admin)
    .await?;
    assert_eq!(
        shared_rows, 0,
        "the shared copy was removed after the grace period"
    );
    let database_left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(format!("t_{}", tenant_uuid.simple()))
            .fetch_one(&admin)
            .await?;
    assert!(
        !database_left,
        "the database copy was dropped after the grace period"
    );
    Ok(())
}

#[tokio::test]
async fn move_requests_are_answered_with_precise_problems() -> anyhow::Result<()> {
    let stack = Stack::builder()
        .services(&[("BOROUGH_MOVE_GRACE", "1h")])
        .start()
        .await?;
    let (tenant, _key) = stack.create_tenant_in("stays", "schema").await?;
    let post = |path: String, body: Value| {
        stack
            .http
            .post(stack.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    // Already there.
    let response = post(
        format!("/admin/v1/tenants/{tenant}:move"),
        json!({ "placement": "schema" }),
    )
    .await?;
    assert_problem(response, 409).await?;
    // A bad placement, a URL for another placement, an unknown tenant, no action.
    let response = post(
        format!("/admin/v1/tenants/{tenant}:move"),
        json!({ "placement": "moon" }),
    )
    .await?;
    assert_problem(response, 400).await?;
    let response = post(
        format!("/admin/v1/tenants/{tenant}:move"),
        json!({ "placement": "schema", "database_url": "postgres://u:secret@h/db" }),
    )
    .await?;
    let problem = assert_problem(response, 400).await?;
    assert!(!problem.to_string().contains("secret"), "{problem}");
    let response = post(
        format!("/admin/v1/tenants/{}:move", uuid::Uuid::now_v7()),
        json!({ "placement": "shared" }),
    )
    .await?;
    assert_problem(response, 404).await?;
    let response = post(
        format!("/admin/v1/tenants/{tenant}"),
        json!({ "placement": "shared" }),
    )
    .await?;
    assert_problem(response, 400).await?;
    // Without the admin token: 401.
    let response = stack
        .http
        .post(stack.url(&format!("/admin/v1/tenants/{tenant}:move")))
        .json(&json!({ "placement": "shared" }))
        .send()
        .await?;
    assert_problem(response, 401).await?;

    // A move that switches, then: another is refused while the old copy is kept, and the
    // switched one cannot be cancelled.
    let done = move_tenant(
        &stack.http,
        &stack.gateway.url(0),
        ADMIN_TOKEN,
        &tenant,
        json!({ "placement": "shared" }),
        "switched",
    )
    .await?
    .last;
    assert_eq!(done["phase"], "switched", "{done}");
    assert!(done["cleanup_after"].is_string(), "{done}");
    let path = format!(
        "/admin/v1/tenants/{tenant}/moves/{}",
        done["id"].as_str().unwrap_or_default()
    );
    let response = stack
        .http
        .delete(stack.url(&path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(response, 409).await?;
    let response = post(
        format!("/admin/v1/tenants/{tenant}:move"),
        json!({ "placement": "schema" }),
    )
    .await?;
    let problem = assert_problem(response, 409).await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("old copy"),
        "{problem}"
    );
    // Purging waits for the move too.
    let response = stack
        .http
        .delete(stack.url(&format!("/admin/v1/tenants/{tenant}?purge=true")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(response, 409).await?;
    // Another tenant's move id is not this tenant's.
    let (other, _) = stack.create_tenant_in("other", "shared").await?;
    let response = stack
        .http
        .get(stack.url(&format!(
            "/admin/v1/tenants/{other}/moves/{}",
            done["id"].as_str().unwrap_or_default()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_problem(response, 404).await?;
    Ok(())
}

#[tokio::test]
async fn moves_beyond_borough_move_max_active_are_refused_until_one_ends() -> anyhow::Result<()> {
    // One move at a time, slowed down so that it is still copying when the second asks.
    let stack = Stack::builder()
        .services(&[
            ("BOROUGH_MOVE_MAX_ACTIVE", "1"),
            ("BOROUGH_MOVE_BATCH_ROWS", "100"),
            ("BOROUGH_MOVE_BATCH_PAUSE", "200ms"),
        ])
        .start()
        .await?;
    let (first, first_key) = stack.create_tenant_in("first", "shared").await?;
    let (second, _) = stack.create_tenant_in("second", "shared").await?;
    let ndjson: String = (0..500)
        .map(|i| format!("{{\"name\":\"Seed {i}\",\"email\":\"seed{i}@f.example\"}}\n"))
        .collect();
    let imported = stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(&first_key)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await?;
    assert_eq!(imported.status(), 200);
    let move_to = |tenant: &str| {
        stack
            .http
            .post(stack.url(&format!("/admin/v1/tenants/{tenant}:move")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "placement": "schema" }))
            .send()
    };
    let started = move_to(&first).await?;
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await?;
    let refused = assert_problem(move_to(&second).await?, 409).await?;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("BOROUGH_MOVE_MAX_ACTIVE"),
        "{refused}"
    );
    // Once the first is cancelled (and rolled back), the second may start.
    let path = format!(
        "/admin/v1/tenants/{first}/moves/{}",
        started["id"].as_str().unwrap_or_default()
    );
    let cancel = stack
        .http
        .delete(stack.url(&path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(cancel.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Value = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        if seen["phase"] == "cancelled" {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not cancelled: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(move_to(&second).await?.status(), 202);
    Ok(())
}
