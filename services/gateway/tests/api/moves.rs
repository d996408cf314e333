//! Live tenant moves through the admin API: a tenant moved shared -> database -> schema
//! while readers and writers run, and the API's answers (202 and Location, 404, 409).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Every acknowledged write: user id -> the version acknowledged last.
    acked: Mutex<HashMap<String, i64>>,
    /// Ids in `acked`, to pick from.
    ids: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
    writes: AtomicU64,
    reads: AtomicU64,
    /// The slowest write, in microseconds.
    slowest_write_us: AtomicU64,
}

impl Seen {
    async fn fail(&self, what: String) {
        let mut failures = self.failures.lock().await;
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// A writer: creates a user, then renames it (If-Match), over and over.
async fn write_loop(
    stack: Arc<Stack>,
    key: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    n: usize,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let started = Instant::now();
        let created = stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .header("idempotency-key", format!("w{n}-{i}"))
            .json(
                &json!({ "name": format!("W{n} {i}"), "email": format!("w{n}-{i}@load.example") }),
            )
            .send()
            .await;
        note_write(&seen, started);
        let body: Value = match created {
            Ok(r) if r.status() == 201 => match r.json().await {
                Ok(body) => body,
                Err(e) => {
                    seen.fail(format!("create body: {e}")).await;
                    continue;
                }
            },
            Ok(r) => {
                let status = r.status();
                seen.fail(format!(
                    "create: {status} {}",
                    r.text().await.unwrap_or_default()
                ))
                .await;
                continue;
            }
            Err(e) => {
                seen.fail(format!("create: {e}")).await;
                continue;
            }
        };
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        seen.acked.lock().await.insert(id.clone(), 1);
        seen.ids.lock().await.push(id.clone());
        let started = Instant::now();
        let renamed = stack
            .http
            .patch(stack.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(&key)
            .header("if-match", "\"1\"")
            .json(&json!({ "name": format!("W{n} {i} renamed") }))
            .send()
            .await;
        note_write(&seen, started);
        match renamed {
            Ok(r) if r.status() == 200 => {
                seen.acked.lock().await.insert(id, 2);
            }
            Ok(r) => {
                let status = r.status();
                seen.fail(format!(
                    "rename: {status} {}",
                    r.text().await.unwrap_or_default()
                ))
                .await;
            }
            Err(e) => seen.fail(format!("rename: {e}")).await,
        }
    }
}

fn note_write(seen: &Seen, started: Instant) {
    seen.writes.fetch_add(1, Ordering::Relaxed);
    seen.slowest_write_us
        .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// A reader: reads users written before (never older than acknowledged), and now and then
/// one as another tenant (never found).
async fn read_loop(
    stack: Arc<Stack>,
    key: String,
    other_key: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    n: usize,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let picked = {
            let ids = seen.ids.lock().await;
            if ids.is_empty() {
                None
            } else {
                Some(ids[(i * 7919 + n * 104_729) % ids.len()].clone())
            }
        };
        let Some(id) = picked else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let acked = seen.acked.lock().await.get(&id).copied().unwrap_or(0);
        let as_other = i % 10 == 0;
        let response = stack
            .http
            .get(stack.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(if as_other { &other_key } else { &key })
            .send()
            .await;
        seen.reads.fetch_add(1, Ordering::Relaxed);
        match response {
            Ok(r) if as_other => {
                if r.status() != 404 {
                    seen.fail(format!("another tenant read {id}: {}", r.status()))
                        .await;
                }
            }
            Ok(r) if r.status() == 200 => {
                let body: Value = r.json().await.unwrap_or_default();
                let version = body["version"].as_i64().unwrap_or(0);
                if body["id"] != id.as_str() || version < acked {
                    seen.fail(format!(
                        "read {id}: version {version} < acknowledged {acked} ({body})"
                    ))
                    .await;
                }
            }
            Ok(r) => {
                let status = r.status();
                seen.fail(format!(
                    "read {id}: {status} {}",
                    r.text().await.unwrap_or_default()
                ))
                .await;
            }
            Err(e) => seen.fail(format!("read {id}: {e}")).await,
        }
    }
}

/// Starts a move and follows it until it is `done` (or fails): the last view of it, and
/// the phases seen.
async fn move_and_wait(
    stack: &Stack,
    tenant: &str,
    body: Value,
) -> anyhow::Result<(Value, Vec<String>, Duration)> {
    let started = Instant::now();
    let response = stack
        .http
        .post(stack.url(&format!("/admin/v1/tenants/{tenant}:move")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let started_move: Value = response.json().await?;
    anyhow::ensure!(status == 202, "move: {status} {started_move}");
    let location = location.context("a Location header")?;
    assert_eq!(
        location,
        format!(
            "/admin/v1/tenants/{tenant}/moves/{}",
            started_move["id"].as_str().unwrap_or_default()
        )
    );
    let mut phases: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen: Value = stack
            .http
            .get(stack.url(&location))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let phase = seen["phase"].as_str().unwrap_or_default().to_owned();
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        match phase.as_str() {
            "done" => return Ok((seen, phases, started.elapsed())),
            "failed" | "cancelled" => anyhow::bail!("the move ended {phase}: {seen}"),
            _ if Instant::now() > deadline => anyhow::bail!("the move did not finish: {seen}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn a_tenant_moves_shared_to_database_to_schema_under_load_losing_nothing_and_failing_no_request()
-> anyhow::Result<()> {
    let stack = Arc::new(
        Stack::builder()
            .services(&[
                ("BOROUGH_MOVE_GRACE", "1s"),
                ("BOROUGH_MOVE_BATCH_ROWS", "500"),
            ])
            .start()
            .await?,
    );
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

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for n in 0..3 {
        load.push(tokio::spawn(write_loop(
            stack.clone(),
            key.clone(),
            seen.clone(),
            stop.clone(),
            n,
        )));
        load.push(tokio::spawn(read_loop(
            stack.clone(),
            key.clone(),
            neighbour_key.clone(),
            seen.clone(),
            stop.clone(),
            n,
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (first, first_phases, first_took) =
        move_and_wait(&stack, &tenant, json!({ "placement": "database" })).await?;
    let writes_before = seen.writes.load(Ordering::Relaxed);
    let (second, second_phases, second_took) =
        move_and_wait(&stack, &tenant, json!({ "placement": "schema" })).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let failures = seen.failures.lock().await.clone();
    let acked = seen.acked.lock().await.clone();
    eprintln!(
        "moves: shared->database {first_took:?} (fence {} ms, phases {first_phases:?}), \
         database->schema {second_took:?} (fence {} ms, phases {second_phases:?}); \
         {} writes ({} during the second move), {} reads, slowest write {} ms",
        first["fence_ms"],
        second["fence_ms"],
        seen.writes.load(Ordering::Relaxed),
        seen.writes.load(Ordering::Relaxed) - writes_before,
        seen.reads.load(Ordering::Relaxed),
        seen.slowest_write_us.load(Ordering::Relaxed) / 1000,
    );
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    for (m, phases) in [(&first, &first_phases), (&second, &second_phases)] {
        assert!(phases.contains(&"done".to_owned()), "{phases:?}");
        assert_eq!(m["rows_copied"], m["rows_total"], "{m}");
        assert!(m["rows_total"].as_i64().unwrap_or(0) >= 2000, "{m}");
        assert!(m["fence_ms"].as_f64().is_some(), "{m}");
    }
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
    let (done, _, _) = {
        let response = post(
            format!("/admin/v1/tenants/{tenant}:move"),
            json!({ "placement": "shared" }),
        )
        .await?;
        assert_eq!(response.status(), 202);
        let started: Value = response.json().await?;
        let path = format!(
            "/admin/v1/tenants/{tenant}/moves/{}",
            started["id"].as_str().unwrap_or_default()
        );
        let mut seen = started;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen["phase"] != "switched" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = stack
                .http
                .get(stack.url(&path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?
                .json()
                .await?;
        }
        (seen, path, ())
    };
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
