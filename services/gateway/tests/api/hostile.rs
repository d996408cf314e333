//! A hostile caller against the gateway: every resource a request can make it hold is
//! bounded, and failing is cheap. Each test fails on the code before the bound existed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem, spawn_gateway};

/// A gateway with no backends (they are not needed for what is tested) and `extra`
/// settings.
async fn lone_gateway(extra: &[(&str, &str)]) -> anyhow::Result<borough_testkit::Spawned> {
    spawn_gateway("https://127.0.0.1:9", "https://127.0.0.1:9", extra).await
}

fn addr(gateway: &borough_testkit::Spawned) -> std::net::SocketAddr {
    gateway.addrs[0]
}

/// Reads until the server closes the connection or `within` passes: whether it closed,
/// and what it sent.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut out = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
        Ok(_) => (true, out),
        Err(_) => (false, out),
    }
}

async fn series(
    http: &reqwest::Client,
    gateway: &borough_testkit::Spawned,
) -> anyhow::Result<usize> {
    let text = http
        .get(format!("{}/metrics", gateway.url(1)))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count())
}

#[tokio::test]
async fn invented_http_methods_do_not_grow_the_metric_series() -> anyhow::Result<()> {
    let gateway = lone_gateway(&[]).await?;
    let http = reqwest::Client::new();
    let at = addr(&gateway);
    let send = |method: String| async move {
        let mut stream = tokio::net::TcpStream::connect(at).await?;
        let request = format!("{method} /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let (_, reply) = closed_within(&mut stream, Duration::from_secs(5)).await;
        anyhow::ensure!(
            reply.starts_with(b"HTTP/1.1 405"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        Ok::<_, anyhow::Error>(())
    };
    send("INVENTED0".to_owned()).await?;
    let after_one = series(&http, &gateway).await?;
    for i in 1..200 {
        send(format!("INVENTED{i}")).await?;
    }
    let after_many = series(&http, &gateway).await?;
    assert_eq!(after_one, after_many, "series grew with invented methods");
    let text = http
        .get(format!("{}/metrics", gateway.url(1)))
        .send()
        .await?
        .text()
        .await?;
    assert!(text.contains("method=\"_OTHER\""), "{text}");
    assert!(!text.contains("INVENTED"));
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let gateway = lone_gateway(&[("BOROUGH_HTTP_HEADER_TIMEOUT", "300ms")]).await?;
    let mut stream = tokio::net::TcpStream::connect(addr(&gateway)).await?;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let started = Instant::now();
    let (closed, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A connection that never sends a byte is closed as well.
    let mut silent = tokio::net::TcpStream::connect(addr(&gateway)).await?;
    let (closed, _) = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection stayed open");
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() -> anyhow::Result<()> {
    let gateway = lone_gateway(&[("BOROUGH_HTTP_IDLE_TIMEOUT", "400ms")]).await?;
    let mut busy = tokio::net::TcpStream::connect(addr(&gateway)).await?;
    let mut buf = vec![0_u8; 4096];
    // Busy: a request every 100 ms for 1.2 s, all answered on the one connection.
    for _ in 0..12 {
        busy.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let n = tokio::time::timeout(Duration::from_secs(5), busy.read(&mut buf)).await??;
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then idle: closed.
    let (closed, _) = closed_within(&mut busy, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection stayed open");
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_counted() -> anyhow::Result<()> {
    let gateway = lone_gateway(&[("BOROUGH_HTTP_MAX_CONNECTIONS", "2")]).await?;
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr(&gateway)).await?;
        // Answered: the connection is being served.
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = vec![0_u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(addr(&gateway)).await?;
    let _ = third
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (closed, reply) = closed_within(&mut third, Duration::from_secs(2)).await;
    assert!(
        closed && reply.is_empty(),
        "the third connection was served"
    );
    let refused = borough_testkit::scrape_metric(
        &http,
        &gateway.url(1),
        "borough_http_connections_refused_total",
        "",
    )
    .await?;
    assert_eq!(refused, Some(1.0));
    drop(held);
    // Slots come back when connections close.
    borough_testkit::wait_until(Duration::from_secs(5), || async {
        let response = http.get(format!("{}/hello", gateway.url(0))).send().await;
        Ok(response.is_ok_and(|r| r.status() == 200))
    })
    .await?;
    gateway.stop().await?;
    Ok(())
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_and_oversized_headers_are_refused()
-> anyhow::Result<()> {
    let gateway = lone_gateway(&[("BOROUGH_HTTP_MAX_HEADER_BYTES", "8KiB")]).await?;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let response = h2.get(format!("{}/hello", gateway.url(0))).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let huge = "x".repeat(16 * 1024);
    let refused = h2
        .get(format!("{}/hello", gateway.url(0)))
        .header("x-padding", &huge)
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 431),
        "{refused:?}"
    );
    let h1 = reqwest::Client::new();
    let response = h1
        .get(format!("{}/hello", gateway.url(0)))
        .header("x-padding", &huge)
        .send()
        .await;
    assert!(
        response.as_ref().map_or(true, |r| r.status() == 431),
        "{response:?}"
    );
    gateway.stop().await?;
    Ok(())
}

/// A random well-formed API key.
fn random_key() -> String {
    let mut prefix = [0_u8; 6];
    let mut secret = [0_u8; 16];
    let _ = getrandom::fill(&mut prefix);
    let _ = getrandom::fill(&mut secret);
    format!("bk_{}_{}", hex::encode(prefix), hex::encode(secret))
}

async fn auth_calls(stack: &Stack) -> anyhow::Result<f64> {
    stack
        .metric_with(
            stack.user(),
            "borough_grpc_server_calls_total",
            "AuthenticateApiKey",
        )
        .await
}

#[tokio::test]
async fn unknown_keys_cost_a_bounded_number_of_directory_calls_per_source() -> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[
            ("BOROUGH_AUTH_FAILURES_PER_SEC", "1"),
            ("BOROUGH_AUTH_FAILURE_BURST", "5"),
            ("BOROUGH_AUTH_CACHE_TTL", "10m"),
        ])
        .start()
        .await?;
    // A tenant working from the same address, its key cached by a first request.
    let (_, key) = stack.create_tenant("known").await?;
    let list = |key: String| {
        stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(list(key.clone()).await?.status(), 200);
    let before = auth_calls(&stack).await?;
    let started = Instant::now();
    let mut limited = None;
    for _ in 0..200 {
        let response = stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(random_key())
            .send()
            .await?;
        if response.status() == 429 {
            limited = Some(response);
        } else {
            assert_eq!(response.status(), 401);
        }
    }
    let calls = auth_calls(&stack).await? - before;
    let allowed = 5.0 + started.elapsed().as_secs_f64() + 1.0;
    assert!(
        calls <= allowed,
        "{calls} directory calls for 200 keys (at most {allowed})"
    );
    let limited = limited.expect("the source was limited");
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429).await?;
    // The known key is still served from this source (from the cache).
    assert_eq!(list(key).await?.status(), 200);
    // A refused key asked again is refused from the negative cache, without a call.
    let stack2 = Stack::builder()
        .gateway(&[("BOROUGH_AUTH_FAILURE_BURST", "100")])
        .start()
        .await?;
    let bad = random_key();
    for _ in 0..2 {
        let response = stack2
            .http
            .get(stack2.url("/api/v1/users"))
            .bearer_auth(&bad)
            .send()
            .await?;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(auth_calls(&stack2).await?, 1.0, "the second was not cached");
    Ok(())
}

#[tokio::test]
async fn an_import_report_lists_the_first_lines_and_counts_all_of_them() -> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[("BOROUGH_IMPORT_REPORT_LIMIT", "50")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("importer").await?;
    // Lines 1..=300: odd ones are not JSON (rejected here), even ones carry an invalid
    // email (rejected by the user service), every tenth a valid row.
    let mut body = String::new();
    for line in 1..=300 {
        if line % 10 == 0 {
            body.push_str(&format!(
                "{{\"name\":\"U{line}\",\"email\":\"u{line}@example.com\"}}\n"
            ));
        } else if line % 2 == 1 {
            body.push_str(&format!("not json {}\n", "x".repeat(1000)));
        } else {
            body.push_str(&format!(
                "{{\"name\":\"U{line}\",\"email\":\"{}\"}}\n",
                "y".repeat(300)
            ));
        }
    }
    let response = stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(&key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await?;
    assert_eq!(report["received"], 300);
    assert_eq!(report["created"], 30);
    assert_eq!(report["rejected_count"], 270);
    let listed = report["rejected"].as_array().expect("a list");
    assert_eq!(listed.len(), 50);
    let lines: Vec<u64> = listed.iter().filter_map(|r| r["line"].as_u64()).collect();
    let expected: Vec<u64> = (1..=300).filter(|l| l % 10 != 0).take(50).collect();
    assert_eq!(lines, expected, "the first lines, in order");
    for rejection in listed {
        let reason = rejection["reason"].as_str().unwrap_or_default();
        assert!(reason.chars().count() <= 201, "{} characters", reason.len());
    }
    Ok(())
}

#[tokio::test]
async fn a_tenants_watches_are_capped_and_each_ends_after_its_longest_life() -> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[
            ("BOROUGH_WATCH_MAX_PER_TENANT", "2"),
            ("BOROUGH_WATCH_MAX_DURATION", "2s"),
        ])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("watcher").await?;
    let (_, other) = stack.create_tenant("other").await?;
    let watch = |key: &str| {
        stack
            .http
            .get(stack.url("/api/v1/config/app:watch"))
            .bearer_auth(key)
            .send()
    };
    let first = watch(&key).await?;
    assert_eq!(first.status(), 200);
    let second = watch(&key).await?;
    assert_eq!(second.status(), 200);
    let refused = watch(&key).await?;
    assert!(refused.headers().contains_key("retry-after"));
    let body = assert_problem(refused, 429).await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("BOROUGH_WATCH_MAX_PER_TENANT")),
        "{body}"
    );
    assert_eq!(
        watch(&other).await?.status(),
        200,
        "another tenant is not affected"
    );
    // Each watch ends on its own after BOROUGH_WATCH_MAX_DURATION.
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(10), first.bytes()).await??;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&body).contains("synced"));
    drop(second);
    // Both slots come back.
    borough_testkit::wait_until(Duration::from_secs(5), || async {
        Ok(watch(&key).await?.status() == 200)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn nul_characters_anywhere_are_400_problems_naming_the_field() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("nul").await?;
    let response = stack
        .http
        .get(stack.url("/api/v1/users?q=a%00b"))
        .bearer_auth(&key)
        .send()
        .await?;
    let body = assert_problem(response, 400).await?;
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains('q')),
        "{body}"
    );
    for (path, json) in [
        ("/api/v1/config/app/k", r#"{"a":"x\u0000y"}"#),
        (
            "/api/v1/config/app:schema",
            r#"{"type":"object","description":"\u0000"}"#,
        ),
    ] {
        let response = stack
            .http
            .put(stack.url(path))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(json)
            .send()
            .await?;
        let body = assert_problem(response, 400).await?;
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("NUL")),
            "{body}"
        );
    }
    for body in [
        json!({"name": "a\u{0}b", "email": "a@example.com"}),
        json!({"name": "Ada", "email": "a\u{0}@example.com"}),
    ] {
        let response = stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await?;
        assert_problem(response, 400).await?;
    }
    let response = stack
        .http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "nul2", "placement": "database",
                      "database_url": "postgres://u:p@db/x\u{0}"}))
        .send()
        .await?;
    let body = assert_problem(response, 400).await?;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("database_url")),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn responses_carrying_an_api_key_are_never_stored_by_caches() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let response = stack
        .http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "cached"}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created: Value = response.json().await?;
    let id = created["tenant"]["id"].as_str().unwrap_or_default();
    let response = stack
        .http
        .post(stack.url(&format!("/admin/v1/tenants/{id}/api-keys")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    Ok(())
}

#[tokio::test]
async fn purging_a_tenant_removes_its_configuration_and_rate_limit_override() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let (id, key) = stack.create_tenant("purged").await?;
    let response = stack
        .http
        .put(stack.url("/api/v1/config/app/theme"))
        .bearer_auth(&key)
        .json(&json!({"mode": "dark"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = stack
        .http
        .put(stack.url(&format!("/admin/v1/tenants/{id}/limits")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requests_per_second": 7, "burst": 7}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = stack
        .http
        .delete(stack.url(&format!("/admin/v1/tenants/{id}?purge=true")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(response.status(), 204);
    let pool = stack.db.admin_pool().await?;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM config.entries WHERE namespace LIKE 'tenant/' || $1 || '/%')
              + (SELECT count(*) FROM config.entries WHERE key = 'rate_limit.tenant.' || $1)
              + (SELECT count(*) FROM config.namespaces WHERE tenant_id = $1::uuid)",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await?;
    assert_eq!(left, 0, "configuration left behind");
    Ok(())
}
