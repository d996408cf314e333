//! `make bench-resilience`: the release binaries on a throwaway PostgreSQL, measured for
//!
//! 1. the rate limiter's admitted-rate error with a tenant at twice its limit;
//! 2. how long a backend that starts refusing connections takes to open its circuit, and
//!    the p99 latency of the requests that then fail fast;
//! 3. requests failed while every user and query replica is restarted one by one under
//!    load (two of each).
//!
//! Settings: `BENCH_ROUNDS` (3; the median is reported). Writes
//! `target/bench/resilience.json`.

#![allow(clippy::print_stdout)] // Its output is the report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use borough_testkit::TestDatabase;
use borough_testkit::process::ServiceProcess as Process;
use borough_testkit::proxy::{Fault, FaultProxy};
use serde_json::json;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

async fn metric(http: &reqwest::Client, admin_url: &str, name: &str, labels: &str) -> Result<f64> {
    Ok(
        borough_testkit::scrape_metric(http, admin_url, name, labels)
            .await?
            .unwrap_or(0.0),
    )
}

async fn create_tenant(http: &reqwest::Client, gateway: &str, name: &str) -> Result<String> {
    let response = http
        .post(format!("{gateway}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name, "placement": "shared"}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("creating a tenant: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    body["api_key"]["key"]
        .as_str()
        .map(str::to_owned)
        .context("no api key")
}

/// A tenant limited to `rate`/s (burst `burst`) sends `2 × rate`/s for `seconds`: the
/// relative error of what was admitted against `burst + rate × elapsed`.
async fn limiter_error(
    gateway: &str,
    key: &str,
    rate: f64,
    burst: f64,
    seconds: f64,
) -> Result<f64> {
    let http = reqwest::Client::new();
    let count = (2.0 * rate * seconds) as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / (2.0 * rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = Vec::with_capacity(count);
    for _ in 0..count {
        ticks.tick().await;
        sent.push(tokio::spawn(
            http.get(format!("{gateway}/api/v1/users?limit=1"))
                .bearer_auth(key)
                .send(),
        ));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut admitted = 0_u64;
    for request in sent {
        if request.await??.status() == 200 {
            admitted += 1;
        }
    }
    let expected = burst + rate * elapsed;
    Ok((admitted as f64 - expected) / expected)
}

/// (time to open, fast-fail p99) for a gateway whose only query endpoint starts refusing.
async fn breaker(
    bin: &Path,
    user: &str,
    query_addr: std::net::SocketAddr,
    key: &str,
    user_path: &str,
) -> Result<(Duration, Duration)> {
    let proxy = FaultProxy::start(query_addr).await?;
    let gateway = Process::start(
        bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(
            user,
            &proxy.grpc_url(),
            &[
                ("BOROUGH_BREAKER_OPEN_FOR", "60s"),
                ("BOROUGH_HEALTH_INTERVAL", "60s"),
            ],
        ),
    )
    .await?;
    let http = reqwest::Client::new();
    let url = format!("{}{user_path}", gateway.url());
    for _ in 0..10 {
        http.get(&url).bearer_auth(key).send().await?;
    }
    proxy.set(Fault::Refuse);
    let failing = Instant::now();
    let metrics = gateway.admin_url("");
    let opened = loop {
        http.get(&url).bearer_auth(key).send().await?;
        if metric(
            &http,
            &metrics,
            "borough_breaker_state",
            "backend=\"query\"",
        )
        .await?
            == 2.0
        {
            break failing.elapsed();
        }
        if failing.elapsed() > Duration::from_secs(10) {
            bail!("the circuit did not open in 10 s");
        }
    };
    let mut latencies = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        let response = http.get(&url).bearer_auth(key).send().await?;
        latencies.push(started.elapsed());
        if response.status() != 503 {
            bail!("expected a fast 503, got {}", response.status());
        }
    }
    latencies.sort();
    let p99 = borough_testkit::process::percentile(&latencies, 0.99).unwrap_or_default();
    gateway.stop().await?;
    Ok((opened, p99))
}

fn gateway_env(user: &str, query: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("BOROUGH_USER_URL", user),
        ("BOROUGH_QUERY_URL", query),
        ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
        ("BOROUGH_RATE_LIMIT_RPS", "1000000"),
        ("BOROUGH_RATE_LIMIT_BURST", "1000000"),
        ("BOROUGH_HEALTH_INTERVAL", "100ms"),
        ("BOROUGH_PROBE_INTERVAL", "100ms"),
        ("BOROUGH_SHUTDOWN_GRACE", "300ms"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Restarts every user and query replica one by one under load: (requests, failed).
async fn rolling_restart(
    bin: &Path,
    users: &mut Vec<Process>,
    queries: &mut Vec<Process>,
    gateway: &str,
    key: &str,
    user_path: &str,
) -> Result<(u64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (gateway, key, user_path) = (gateway.to_owned(), key.to_owned(), user_path.to_owned());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let response = if i.is_multiple_of(4) {
                        http.post(format!("{gateway}/api/v1/users"))
                            .bearer_auth(&key)
                            .header("Idempotency-Key", format!("bench-{worker}-{i}-{}", uuid::Uuid::now_v7()))
                            .json(&json!({"name": "Bench", "email": format!("b{worker}-{i}-{}@example.com", uuid::Uuid::now_v7().simple())}))
                            .send()
                            .await
                    } else {
                        http.get(format!("{gateway}{user_path}")).bearer_auth(&key).send().await
                    };
                    match response {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for replicas in [&mut *users, &mut *queries] {
        for i in 0..replicas.len() {
            let old = replicas.remove(i);
            let new = old.restart(bin).await?;
            replicas.insert(i, new);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok((ok + failed, failed))
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bin = borough_testkit::process::binary_dir()?;
    let cluster = borough_testkit::own_cluster()?;
    let db = TestDatabase::create_on(&cluster).await?;
    let service_env = |login| {
        let mut env = db.env_for(login);
        env.extend(
            [
                ("BOROUGH_SHUTDOWN_GRACE", "300ms"),
                ("BOROUGH_PROBE_INTERVAL", "100ms"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    };
    let mut users = Vec::new();
    let mut queries = Vec::new();
    for _ in 0..2 {
        users.push(
            Process::start(
                &bin,
                "borough-user",
                "BOROUGH_GRPC_ADDR",
                None,
                &service_env(borough_testkit::pg::Login::User),
            )
            .await?,
        );
        queries.push(
            Process::start(
                &bin,
                "borough-query",
                "BOROUGH_GRPC_ADDR",
                None,
                &service_env(borough_testkit::pg::Login::Query),
            )
            .await?,
        );
    }
    let user_urls = users
        .iter()
        .map(Process::grpc_url)
        .collect::<Vec<_>>()
        .join(",");
    let query_urls = queries
        .iter()
        .map(Process::grpc_url)
        .collect::<Vec<_>>()
        .join(",");
    let gateway = Process::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(&user_urls, &query_urls, &[]),
    )
    .await?;
    // The limiter's own gateway: 200 requests a second per tenant, burst 10.
    let limited = Process::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(
            &user_urls,
            &query_urls,
            &[
                ("BOROUGH_RATE_LIMIT_RPS", "200"),
                ("BOROUGH_RATE_LIMIT_BURST", "10"),
            ],
        ),
    )
    .await?;
    let http = reqwest::Client::new();
    let gateway_url = gateway.url();

    let mut limiter = Vec::new();
    let mut open_times = Vec::new();
    let mut fast_p99 = Vec::new();
    let mut restart_failed = Vec::new();
    let mut restart_requests = Vec::new();
    for round in 0..rounds {
        let key = create_tenant(&http, &gateway_url, &format!("bench-{round}")).await?;
        limiter.push(limiter_error(&limited.url(), &key, 200.0, 10.0, 5.0).await?);

        let created: serde_json::Value = http
            .post(format!("{gateway_url}/api/v1/users"))
            .bearer_auth(&key)
            .json(&json!({"name": "Ada", "email": format!("ada-{round}@example.com")}))
            .send()
            .await?
            .json()
            .await?;
        let user_path = format!(
            "/api/v1/users/{}",
            created["id"].as_str().unwrap_or_default()
        );
        let query_addr = format!("127.0.0.1:{}", queries[0].api).parse()?;
        let (opened, p99) =
            breaker(&bin, &users[0].grpc_url(), query_addr, &key, &user_path).await?;
        open_times.push(opened.as_secs_f64());
        fast_p99.push(p99.as_secs_f64());

        let (requests, failed) = rolling_restart(
            &bin,
            &mut users,
            &mut queries,
            &gateway_url,
            &key,
            &user_path,
        )
        .await?;
        restart_requests.push(requests as f64);
        restart_failed.push(failed as f64);
        println!(
            "round {}: limiter error {:+.2} %, circuit open after {:.0} ms, fast-fail p99 {:.3} ms, rolling restart {failed} failed of {requests}",
            round + 1,
            limiter[round] * 100.0,
            opened.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
    }

    let (limiter_m, open_m, p99_m, failed_m) = (
        borough_testkit::process::median(limiter.clone()),
        borough_testkit::process::median(open_times.clone()),
        borough_testkit::process::median(fast_p99.clone()),
        borough_testkit::process::median(restart_failed.clone()),
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!("| measure (median of {rounds}) | figure | target | |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| limiter admitted-rate error at 2x overload | {:+.2} % | ±2 % | {} |",
        limiter_m * 100.0,
        verdict(limiter_m.abs() <= 0.02)
    );
    println!(
        "| breaker open time | {:.0} ms | ≤ 1000 ms | {} |",
        open_m * 1e3,
        verdict(open_m <= 1.0)
    );
    println!(
        "| fast-fail p99 (through the gateway) | {:.3} ms | ≤ 1 ms | {} |",
        p99_m * 1e3,
        verdict(p99_m <= 0.001)
    );
    println!(
        "| requests failed in a rolling restart | {failed_m:.0} of {:.0} | 0 | {} |",
        borough_testkit::process::median(restart_requests.clone()),
        verdict(failed_m == 0.0)
    );

    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("resilience.json"),
        serde_json::to_string_pretty(&json!({
            "rounds": rounds,
            "limiter_error": limiter,
            "breaker_open_seconds": open_times,
            "fast_fail_p99_seconds": fast_p99,
            "rolling_restart_requests": restart_requests,
            "rolling_restart_failed": restart_failed,
        }))?,
    )?;
    println!("\nwritten: target/bench/resilience.json");
    gateway.stop().await?;
    limited.stop().await?;
    for process in users.into_iter().chain(queries) {
        process.stop().await?;
    }
    Ok(())
}
