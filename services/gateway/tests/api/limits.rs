//! Per-tenant rate limits at the gateway.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

#[tokio::test]
async fn a_flooding_tenant_gets_429_with_rate_limit_headers_and_another_tenant_is_unaffected()
-> anyhow::Result<()> {
    let stack = Stack::start_with(&[
        ("BOROUGH_RATE_LIMIT_RPS", "5"),
        ("BOROUGH_RATE_LIMIT_BURST", "5"),
    ])
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
    let stack = Stack::start_with(&[
        ("BOROUGH_RATE_LIMIT_RPS", "2"),
        ("BOROUGH_RATE_LIMIT_BURST", "2"),
    ])
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
