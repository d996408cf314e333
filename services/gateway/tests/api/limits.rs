//! Per-tenant rate limits at the gateway.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

#[tokio::test]
async fn a_flooding_tenant_gets_429_with_rate_limit_headers_and_another_tenant_is_unaffected()
-> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[
            ("BOROUGH_RATE_LIMIT_RPS", "5"),
            ("BOROUGH_RATE_LIMIT_BURST", "5"),
        ])
        .start()
        .await?;
    let (_, flood) = stack.create_tenant("flood").await?;
    let (_, calm) = stack.create_tenant("calm").await?;
    let list = |key: &str| {
        stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(key)
            .send()
    };

    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let response = list(&flood).await?;
        statuses.push(response.status().as_u16());
        if response.status() == 429 && refused.is_none() {
            refused = Some(response);
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let refused = refused.ok_or_else(|| anyhow::anyhow!("never refused: {statuses:?}"))?;
    for header in ["retry-after", "ratelimit", "ratelimit-policy"] {
        assert!(refused.headers().contains_key(header), "{header} missing");
    }
    assert!(
        refused.headers()["ratelimit-policy"]
            .to_str()?
            .contains("q=5")
    );
    let problem = assert_problem(refused, 429).await?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("rate limit")),
        "{problem}"
    );

    // The calm tenant, meanwhile: every request served, with its own bucket's headers.
    for _ in 0..4 {
        let response = list(&calm).await?;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("ratelimit"));
    }
    // Health and admin routes are not a tenant's budget.
    assert_eq!(
        stack.http.get(stack.url("/hello")).send().await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_override_written_through_the_admin_api_applies_without_a_restart()
-> anyhow::Result<()> {
    let stack = Stack::builder()
        .gateway(&[
            ("BOROUGH_RATE_LIMIT_RPS", "2"),
            ("BOROUGH_RATE_LIMIT_BURST", "2"),
        ])
        .start()
        .await?;
    let (id, key) = stack.create_tenant("big-customer").await?;
    let limits = stack.url(&format!("/admin/v1/tenants/{id}/limits"));
    let got: serde_json::Value = stack
        .http
        .get(&limits)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        got,
        json!({"requests_per_second": 2, "burst": 2, "source": "default"})
    );

    let response = stack
        .http
        .put(&limits)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requests_per_second": 1000, "burst": 1000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let got: serde_json::Value = stack
        .http
        .get(&limits)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        got,
        json!({"requests_per_second": 1000, "burst": 1000, "source": "tenant"})
    );

    // Applied by the gateway within moments: 50 quick requests all pass.
    let started = Instant::now();
    loop {
        let response = stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .send()
            .await?;
        let policy = response
            .headers()
            .get("ratelimit-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if policy.contains("q=1000") {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "override never applied: {policy}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..50 {
        let response = stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
    }

    // Bad input.
    let response = stack
        .http
        .put(&limits)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requests_per_second": 0, "burst": 1}))
        .send()
        .await?;
    assert_problem(response, 400).await?;
    let unknown = stack.url(&format!(
        "/admin/v1/tenants/{}/limits",
        uuid::Uuid::now_v7()
    ));
    let response = stack
        .http
        .put(&unknown)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requests_per_second": 1, "burst": 1}))
        .send()
        .await?;
    assert_problem(response, 404).await?;
    Ok(())
}

/// Sends `count` GETs as `key`, one every `every`, without waiting for answers: the
/// number answered 200 and the number answered 429.
async fn paced(
    stack: &Stack,
    key: &str,
    count: usize,
    every: Duration,
) -> anyhow::Result<(usize, usize)> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::with_capacity(count);
    for _ in 0..count {
        ticks.tick().await;
        let request = stack
            .http
            .get(stack.url("/api/v1/users?limit=1"))
            .bearer_auth(key)
            .send();
        sent.push(tokio::spawn(request));
    }
    let (mut ok, mut limited) = (0, 0);
    for request in sent {
        match request.await??.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    Ok((ok, limited))
}

#[tokio::test]
async fn a_tenant_at_twice_its_limit_gets_its_limit_admitted_within_5_percent_and_a_calm_one_no_429()
-> anyhow::Result<()> {
    // 40 requests a second, burst 4: a tenant sending 80 a second for 3 s should get
    // 4 + 40 × 3 = 124 through.
    let stack = Stack::builder()
        .gateway(&[
            ("BOROUGH_RATE_LIMIT_RPS", "40"),
            ("BOROUGH_RATE_LIMIT_BURST", "4"),
        ])
        .start()
        .await?;
    let (_, flood) = stack.create_tenant("twice").await?;
    let (_, calm) = stack.create_tenant("half").await?;
    let started = Instant::now();
    let (flooding, calming) = tokio::join!(
        paced(&stack, &flood, 240, Duration::from_micros(12_500)),
        paced(&stack, &calm, 60, Duration::from_millis(50)),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let (admitted, limited) = flooding?;
    let (calm_ok, calm_limited) = calming?;
    let expected = 4.0 + 40.0 * elapsed;
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.05,
        "admitted {admitted} (refused {limited}) in {elapsed:.2} s; expected {expected:.0} (error {:.1} %)",
        error * 100.0
    );
    assert_eq!(
        (calm_ok, calm_limited),
        (60, 0),
        "the calm tenant is never limited"
    );
    Ok(())
}
