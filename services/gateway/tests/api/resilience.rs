//! Resilience under real faults: idempotency keys, retries, circuit breaking, deadlines,
//! load shedding, rolling restarts and PostgreSQL going away — all over real sockets,
//! with the test kit's fault-injecting proxy between the components.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use borough_testkit::proxy::{Fault, FaultProxy};
use borough_testkit::{Spawned, wait_for_status};
use serde_json::{Value, json};

use crate::support::{Stack, assert_problem, spawn_gateway};

/// A second gateway in front of the given backend URLs, ready.
async fn gateway_to(user_url: &str, query_url: &str, extra: &[(&str, &str)]) -> Result<Spawned> {
    let gateway = spawn_gateway(user_url, query_url, extra).await?;
    wait_for_status(
        &format!("{}/readyz", gateway.url(1)),
        200,
        Duration::from_secs(20),
    )
    .await?;
    Ok(gateway)
}

async fn users_named(stack: &Stack, email: &str) -> Result<i64> {
    let pool = stack.db.admin_pool().await?;
    let count = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(count)
}

async fn metric_at(
    http: &reqwest::Client,
    admin_url: &str,
    name: &str,
    labels: &str,
) -> Result<f64> {
    Ok(
        borough_testkit::scrape_metric(http, admin_url, name, labels)
            .await?
            .unwrap_or(0.0),
    )
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_create_and_refuses_another_body() -> Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("idempotent").await?;
    let post = |body: Value, idempotency_key: &str| {
        stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idempotency_key)
            .json(&body)
            .send()
    };
    let ada = json!({"name": "Ada", "email": "ada@example.com"});

    let first = post(ada.clone(), "key-1").await?;
    assert_eq!(first.status(), 201);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await?;

    let again = post(ada.clone(), "key-1").await?;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await?;
    assert_eq!(again, first, "the replay is the original response");

    let other = post(json!({"name": "Bob", "email": "bob@example.com"}), "key-1").await?;
    let problem = assert_problem(other, 422).await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("key-1")
    );
    assert_eq!(
        users_named(&stack, "bob@example.com").await?,
        0,
        "nothing written"
    );

    for bad in [String::new(), "k".repeat(256), "with space".to_owned()] {
        let response = post(json!({"name": "Cy", "email": "cy@example.com"}), &bad).await?;
        assert_problem(response, 400).await?;
    }

    // Concurrent duplicates: one creates, the others replay it or get 409; one user.
    let grace = json!({"name": "Grace", "email": "grace@example.com"});
    let attempts: Vec<_> = (0..8).map(|_| post(grace.clone(), "key-2")).collect();
    let mut ids = Vec::new();
    for response in futures_util::future::join_all(attempts).await {
        let response = response?;
        match response.status().as_u16() {
            201 => ids.push(response.json::<Value>().await?["id"].clone()),
            409 => {
                assert_problem(response, 409).await?;
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(users_named(&stack, "grace@example.com").await?, 1);
    Ok(())
}

#[tokio::test]
async fn posts_with_idempotency_keys_through_a_proxy_that_cuts_replies_create_each_user_once()
-> Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("exactly-once").await?;
    // The client reaches the gateway through a proxy that drops the gateway's answers.
    let proxy = FaultProxy::start(stack.gateway.addr(0)).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/users", proxy.url());
    for i in 0..20 {
        let body = json!({"name": format!("User {i}"), "email": format!("user{i}@example.com")});
        let idempotency_key = format!("create-{i}");
        proxy.set(Fault::CutResponses);
        let lost = http
            .post(&url)
            .bearer_auth(&key)
            .header("Idempotency-Key", &idempotency_key)
            .json(&body)
            .send()
            .await;
        assert!(lost.is_err(), "the first answer is cut");
        // The client retries with the same key once the network is back.
        proxy.set(Fault::Pass);
        let mut replayed = None;
        for _ in 0..50 {
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .header("Idempotency-Key", &idempotency_key)
                .json(&body)
                .send()
                .await?;
            if response.status() == 409 {
                // The cut request is still committing: retry shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            assert_eq!(response.status(), 201);
            replayed = Some(response.headers().contains_key("idempotent-replayed"));
            break;
        }
        assert_eq!(
            replayed,
            Some(true),
            "user {i}: the retry replays the first create"
        );
    }
    let pool = stack.db.admin_pool().await?;
    let (total, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT email) FROM users WHERE email LIKE 'user%@example.com'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((total, distinct), (20, 20), "each user exactly once");
    Ok(())
}

#[tokio::test]
async fn a_replica_refusing_connections_costs_no_idempotent_request_and_writes_without_a_key_are_not_retried()
-> Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("retries").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());

    // Query: the real replica and one behind a proxy that will refuse every connection
    // (healthy when the gateway first checks it; next checked in 10 s).
    let http = reqwest::Client::new();
    let dead_query = FaultProxy::start(stack.query().addr(0)).await?;
    // User: only through a proxy that cuts every answer (the write happens, the reply is lost).
    let cut_user = FaultProxy::start(stack.user().addr(0)).await?;
    let gateway = gateway_to(
        &stack.user().grpc_url(0),
        &format!("{},{}", stack.query().grpc_url(0), dead_query.grpc_url()),
        &[("BOROUGH_HEALTH_INTERVAL", "10s")],
    )
    .await?;
    // Readiness does not wait for every replica's first check: wait for the proxied one's
    // (over TLS a handshake longer), or the check itself would meet the refusal.
    let checked = format!("endpoint=\"{}\"", dead_query.addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric_at(
        &http,
        &gateway.url(1),
        "borough_backend_endpoint_healthy",
        &checked,
    )
    .await?
        < 1.0
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the proxied replica was never checked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dead_query.set(Fault::Refuse);
    let mut failed = 0;
    for _ in 0..200 {
        let response = http
            .get(format!("{}{path}", gateway.url(0)))
            .bearer_auth(&key)
            .send()
            .await?;
        if response.status() != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "no GET failed");
    assert!(dead_query.connections() >= 1, "the dead replica was tried");
    let retries = metric_at(
        &http,
        &gateway.url(1),
        "borough_client_retries_total",
        "backend=\"query\"",
    )
    .await?;
    assert!(retries >= 1.0, "retries: {retries}");

    let cutting = gateway_to(&cut_user.grpc_url(), &stack.query().grpc_url(0), &[]).await?;
    // The gateway knows the key already (its check went through while the network was good).
    let warm = http
        .get(format!("{}{path}", cutting.url(0)))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(warm.status(), 200);
    cut_user.set(Fault::CutResponses);
    let response = http
        .post(format!("{}/api/v1/users", cutting.url(0)))
        .bearer_auth(&key)
        .json(&json!({"name": "Once", "email": "once@example.com"}))
        .send()
        .await?;
    assert_problem(response, 503).await?;
    // Had it been retried, the second attempt would have found the email taken (409) or
    // created a second user; it was sent once and written once.
    assert_eq!(users_named(&stack, "once@example.com").await?, 1);
    let retries = metric_at(
        &http,
        &cutting.url(1),
        "borough_client_retries_total",
        "backend=\"user\"",
    )
    .await?;
    assert_eq!(retries, 0.0);
    Ok(())
}

#[tokio::test]
async fn a_failing_backend_opens_its_circuit_within_a_second_fails_fast_and_closes_after_recovery()
-> Result<()> {
    let stack = Stack::builder()
        .query_behind_proxy()
        .gateway(&[
            ("BOROUGH_BREAKER_OPEN_FOR", "500ms"),
            ("BOROUGH_HEALTH_INTERVAL", "10s"),
        ])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("breaker").await?;
    let (proxy, gateway, http) = (stack.query_proxy()?, &stack.gateway, &stack.http);
    let api = stack.api(&key);
    let user = api.create_user("Ada", "ada@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default();
    let get = || api.get_user(id);
    assert_eq!(get().await?.status(), 200);

    proxy.set(Fault::Refuse);
    let failing_since = Instant::now();
    let opened_after = loop {
        let _ = get().await?;
        let state = metric_at(
            http,
            &gateway.url(1),
            "borough_breaker_state",
            "backend=\"query\"",
        )
        .await?;
        if state == 2.0 {
            break failing_since.elapsed();
        }
        if failing_since.elapsed() > Duration::from_secs(3) {
            let text = http
                .get(format!("{}/metrics", gateway.url(1)))
                .send()
                .await?
                .text()
                .await?;
            let lines: Vec<&str> = text.lines().filter(|l| l.contains("breaker")).collect();
            anyhow::bail!("the circuit never opened: {lines:?}");
        }
    };
    assert!(
        opened_after <= Duration::from_secs(1),
        "opened after {opened_after:?}"
    );

    // Open: calls fail at once, with a retry hint, without touching the backend.
    let connections = proxy.connections();
    let started = Instant::now();
    let response = get().await?;
    let fast = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503).await?;
    assert!(fast < Duration::from_millis(100), "took {fast:?}");
    assert_eq!(
        proxy.connections(),
        connections,
        "the backend was not called"
    );

    // Recovery: after the open period, probes pass and the circuit closes.
    proxy.set(Fault::Pass);
    let recovering = Instant::now();
    loop {
        let status = get().await?.status();
        let state = metric_at(
            http,
            &gateway.url(1),
            "borough_breaker_state",
            "backend=\"query\"",
        )
        .await?;
        if status == 200 && state == 0.0 {
            break;
        }
        anyhow::ensure!(
            recovering.elapsed() < Duration::from_secs(5),
            "the circuit did not close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_backend_makes_the_gateway_answer_504_near_its_timeout() -> Result<()> {
    let stack = Stack::builder()
        .query_behind_proxy()
        .gateway(&[
            ("BOROUGH_REQUEST_TIMEOUT", "500ms"),
            ("BOROUGH_HEALTH_INTERVAL", "10s"),
        ])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("slow").await?;
    let api = stack.api(&key);
    let user = api.create_user("Ada", "ada@example.com").await?;
    stack
        .query_proxy()?
        .set(Fault::Latency(Duration::from_secs(3)));
    let started = Instant::now();
    let response = api
        .get_user(user["id"].as_str().unwrap_or_default())
        .await?;
    let took = started.elapsed();
    assert_problem(response, 504).await?;
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn past_its_in_flight_limit_the_gateway_sheds_at_once_with_503_and_the_limit_hot_reloads()
-> Result<()> {
    let stack = Stack::builder()
        .query_behind_proxy()
        .gateway(&[
            ("BOROUGH_MAX_IN_FLIGHT", "2"),
            ("BOROUGH_MAX_QUEUE", "1"),
            ("BOROUGH_QUEUE_TIMEOUT", "50ms"),
            ("BOROUGH_HEALTH_INTERVAL", "10s"),
        ])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("shed").await?;
    let user = stack
        .api(&key)
        .create_user("Ada", "ada@example.com")
        .await?;
    // Slow reads hold their slots.
    stack
        .query_proxy()?
        .set(Fault::Latency(Duration::from_millis(400)));
    let http = stack.http.clone();
    let url = stack.url(&format!(
        "/api/v1/users/{}",
        user["id"].as_str().unwrap_or_default()
    ));
    let burst = |n: usize| {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let http = http.clone();
                let url = url.clone();
                let key = key.clone();
                async move {
                    let started = Instant::now();
                    let response = http.get(&url).bearer_auth(&key).send().await?;
                    let retry_after = response.headers().contains_key("retry-after");
                    Ok::<_, anyhow::Error>((
                        response.status().as_u16(),
                        retry_after,
                        started.elapsed(),
                    ))
                }
            })
            .collect();
        futures_util::future::join_all(requests)
    };
    let results: Vec<_> = burst(6).await.into_iter().collect::<Result<_>>()?;
    let shed: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    let served = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(served, 2, "{results:?}");
    assert_eq!(shed.len(), 4, "{results:?}");
    assert!(
        shed.iter()
            .all(|(_, retry_after, took)| *retry_after && *took < Duration::from_millis(300)),
        "{results:?}"
    );

    // More room, without a restart.
    let response = http
        .put(format!(
            "{}/admin/v1/config/platform/gateway/shed.max_in_flight",
            stack.url("")
        ))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&json!(8))
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.status());
    let started = Instant::now();
    loop {
        let results: Vec<_> = burst(6).await.into_iter().collect::<Result<_>>()?;
        if results.iter().all(|(s, _, _)| *s == 200) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the new limit never applied: {results:?}"
        );
    }
    Ok(())
}

/// Load through the gateway until `stop`: GETs of a user and keyed POSTs; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(gateway: &str, key: &str, user_path: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|worker| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (gateway, key, user_path) = (gateway.to_owned(), key.to_owned(), user_path.to_owned());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut errors = Vec::new();
                    let mut i = 0_u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let result = if i.is_multiple_of(4) {
                            http.post(format!("{gateway}/api/v1/users"))
                                .bearer_auth(&key)
                                .header("Idempotency-Key", format!("load-{worker}-{i}"))
                                .json(&json!({"name": "Load", "email": format!("load-{worker}-{i}@example.com")}))
                                .send()
                                .await
                        } else {
                            http.get(format!("{gateway}{user_path}")).bearer_auth(&key).send().await
                        };
                        match result {
                            Ok(r) if r.status().is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default()));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e.to_string());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until the load has had `count` more requests answered.
    async fn served(&self, count: u64) -> Result<()> {
        let from = self.ok.load(Ordering::Relaxed);
        borough_testkit::wait_until(Duration::from_secs(10), || async move {
            Ok(self.ok.load(Ordering::Relaxed) >= from + count)
        })
        .await
    }

    async fn finish(self) -> Result<(u64, u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await?);
        }
        Ok((
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        ))
    }
}

#[tokio::test]
async fn restarting_every_user_and_query_replica_one_by_one_under_load_fails_no_request()
-> Result<()> {
    // Two replicas of each, draining for 300 ms on shutdown (readiness fails first).
    let mut stack = Stack::builder()
        .replicas(2)
        .services(&[
            ("BOROUGH_SHUTDOWN_GRACE", "300ms"),
            ("BOROUGH_PROBE_INTERVAL", "50ms"),
        ])
        .gateway(&[("BOROUGH_HEALTH_INTERVAL", "50ms")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("rolling").await?;
    let user = stack
        .api(&key)
        .create_user("Ada", "ada@example.com")
        .await?;
    let user_path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
    let load = Load::start(&stack.url(""), &key, &user_path, 4);
    load.served(20).await?;
    for i in 0..2 {
        stack.restart_user(i).await?;
    }
    for i in 0..2 {
        stack.restart_query(i).await?;
    }
    let (ok, failed, errors) = load.finish().await?;
    assert!(ok >= 100, "only {ok} requests made");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    Ok(())
}

#[tokio::test]
async fn postgresql_killed_mid_load_recovers_without_restarts_and_keeps_every_acknowledged_write()
-> Result<()> {
    let mut cluster = borough_testkit::own_cluster()?;
    let db = borough_testkit::TestDatabase::create_on(&cluster).await?;
    let stack = Stack::builder()
        .on(db)
        .services(&[("BOROUGH_DB_ACQUIRE_TIMEOUT", "1s")])
        .gateway(&[("BOROUGH_AUTH_CACHE_TTL", "10m")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("outage").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|worker| {
            let (http, url, key, stop) = (
                stack.http.clone(),
                stack.url("/api/v1/users"),
                key.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("w{worker}-{i}@example.com");
                    if let Ok(response) = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"name": "W", "email": email}))
                        .send()
                        .await
                        && response.status() == 201
                    {
                        acknowledged.push(email);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pause()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.resume()?;
    // Writes succeed again without restarting any service.
    let back = Instant::now();
    loop {
        let response = stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .json(&json!({"name": "After", "email": format!("after-{}@example.com", back.elapsed().as_nanos())}))
            .send()
            .await?;
        if response.status() == 201 {
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(20),
            "writes did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await?);
    }
    assert!(
        acknowledged.len() >= 10,
        "only {} writes acknowledged",
        acknowledged.len()
    );
    let pool = stack.db.admin_pool().await?;
    let stored: Vec<String> = sqlx::query_scalar("SELECT email FROM users WHERE email = ANY($1)")
        .bind(&acknowledged)
        .fetch_all(&pool)
        .await
        .context("reading back")?;
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "every acknowledged write is stored"
    );
    Ok(())
}

#[tokio::test]
async fn an_import_retried_with_its_idempotency_key_after_a_lost_answer_writes_each_row_once()
-> Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("import-once").await?;
    let proxy = FaultProxy::start(stack.gateway.addr(0)).await?;
    let http = reqwest::Client::new();
    // 1,200 rows: three chunks, each its own transaction and its own key record.
    let body: String = (0..1200)
        .map(|i| format!("{{\"name\":\"Row {i}\",\"email\":\"row{i}@example.com\"}}\n"))
        .collect();
    let import = |body: String| {
        http.post(format!("{}/api/v1/users:import", proxy.url()))
            .bearer_auth(&key)
            .header("Idempotency-Key", "import-1")
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
    };
    proxy.set(Fault::CutResponses);
    assert!(import(body.clone()).await.is_err(), "the answer is lost");
    proxy.set(Fault::Pass);
    let mut answer = None;
    for _ in 0..50 {
        let response = import(body.clone()).await?;
        if response.status() == 409 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        answer = Some(response);
        break;
    }
    let response = answer.context("the import stayed in progress")?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let report: Value = response.json().await?;
    assert_eq!(report["created"], 1200, "the first run's outcome: {report}");
    assert_eq!(
        report["rejected"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    let pool = stack.db.admin_pool().await?;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE 'row%@example.com'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(stored, 1200, "each row once");

    // Other rows under the same key: refused, nothing written.
    let other: String = (0..10)
        .map(|i| format!("{{\"name\":\"Other {i}\",\"email\":\"other{i}@example.com\"}}\n"))
        .collect();
    assert_problem(import(other).await?, 422).await?;
    assert_eq!(users_named(&stack, "other0@example.com").await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_expires_after_its_ttl_and_may_then_be_used_again() -> Result<()> {
    let stack = Stack::builder()
        .services(&[("BOROUGH_IDEMPOTENCY_TTL", "1s")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("expiry").await?;
    let post = |email: &str| {
        stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .header("Idempotency-Key", "reused-later")
            .json(&json!({"name": "N", "email": email}))
            .send()
    };
    assert_eq!(post("first@example.com").await?.status(), 201);
    assert_problem(post("second@example.com").await?, 422).await?;
    // The key is in force for its TTL (1 s), then free again.
    let reused = Instant::now();
    let response = loop {
        let response = post("second@example.com").await?;
        if response.status() != 422 {
            break response;
        }
        anyhow::ensure!(
            reused.elapsed() < Duration::from_secs(10),
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reused.elapsed() >= Duration::from_millis(500),
        "freed after {:?}, before its TTL",
        reused.elapsed()
    );
    assert_eq!(response.status(), 201, "the expired key is free again");
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let pool = stack.db.admin_pool().await?;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await?;
    assert_eq!(keys, 1, "the expired record was replaced, not kept beside");
    Ok(())
}
