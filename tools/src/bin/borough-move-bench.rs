//! `make bench-move`: a live tenant move of `BENCH_USERS` users (100,000) against the
//! release binaries (user, query, gateway) on a throwaway PostgreSQL, under a tenant's own
//! readers and writers (three of each, through the gateway), shared -> database and then
//! database -> schema, with the default move settings (`BOROUGH_MOVE_GRACE` aside, 2 s
//! here so that each move's cleanup is measured too).
//!
//! Reported per move, the median of `BENCH_ROUNDS` (3) rounds: the time from the request
//! to the switch and to the end (old copy removed), the fence (how long the tenant's
//! writes were held, as the move measured it), the slowest write the load saw during the
//! move (the pause as a client sees it), and requests that failed (0 expected). Writes
//! `target/bench/moves.json`, and the user service's log to `target/bench/moves-user.log`.

#![allow(clippy::print_stdout)] // Its output is the report.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use borough_testkit::TestDatabase;
use borough_testkit::load::{Load, move_tenant};
use borough_testkit::process::ServiceProcess as Process;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn create_tenant(
    http: &reqwest::Client,
    gateway: &str,
    name: &str,
) -> Result<(String, String)> {
    let response = http
        .post(format!("{gateway}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name, "placement": "shared"}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("creating a tenant: {}", response.status());
    }
    let body: Value = response.json().await?;
    Ok((
        body["tenant"]["id"].as_str().context("no id")?.to_owned(),
        body["api_key"]["key"]
            .as_str()
            .context("no key")?
            .to_owned(),
    ))
}

/// `users` users imported, 10,000 a request.
async fn import(http: &reqwest::Client, gateway: &str, key: &str, users: usize) -> Result<()> {
    for chunk in (0..users).collect::<Vec<_>>().chunks(10_000) {
        let body: String = chunk
            .iter()
            .map(|i| format!("{{\"name\":\"User {i}\",\"email\":\"user{i}@bench.example\"}}\n"))
            .collect();
        let response = http
            .post(format!("{gateway}/api/v1/users:import"))
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let report: Value = response.json().await?;
        if status != 200 || report["created"].as_u64() != Some(chunk.len() as u64) {
            bail!("import: {status} {report}");
        }
    }
    Ok(())
}

/// One move's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    to_switch: Duration,
    to_done: Duration,
    fence_ms: f64,
    slowest_write: Duration,
    failed: u64,
    writes: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = env("BENCH_ROUNDS", 3);
    let users = env("BENCH_USERS", 100_000);
    let bin = borough_testkit::process::binary_dir()?;
    let cluster = borough_testkit::own_cluster()?;
    let db = TestDatabase::create_on(&cluster).await?;
    let service_env = |login| {
        let mut env = db.env_for(login);
        env.extend(
            [
                ("BOROUGH_SHUTDOWN_GRACE", "300ms"),
                ("BOROUGH_PROBE_INTERVAL", "100ms"),
                ("BOROUGH_MOVE_GRACE", "2s"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    };
    // The user service logs as shipped, to a file: each move's phase lines, and the
    // fence's parts (`tenant move: fenced, last changes applied`, `compare_ms`).
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    let user = Process::start_as_shipped(
        &bin,
        "borough-user",
        "BOROUGH_GRPC_ADDR",
        &service_env(borough_testkit::pg::Login::User),
        &out.join("moves-user.log"),
    )
    .await?;
    let query = Process::start(
        &bin,
        "borough-query",
        "BOROUGH_GRPC_ADDR",
        None,
        &service_env(borough_testkit::pg::Login::Query),
    )
    .await?;
    let gateway_env: Vec<(String, String)> = [
        ("BOROUGH_USER_URL", user.grpc_url()),
        ("BOROUGH_QUERY_URL", query.grpc_url()),
        ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("BOROUGH_RATE_LIMIT_RPS", "1000000".to_owned()),
        ("BOROUGH_RATE_LIMIT_BURST", "1000000".to_owned()),
        ("BOROUGH_PROBE_INTERVAL", "100ms".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let gateway = Process::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env,
    )
    .await?;
    let url = gateway.url();
    let http = reqwest::Client::new();
    let (_, neighbour) = create_tenant(&http, &url, "neighbour").await?;

    let mut results: Vec<[Figures; 2]> = Vec::new();
    for round in 0..rounds {
        let (tenant, key) = create_tenant(&http, &url, &format!("mover-{round}")).await?;
        let started = Instant::now();
        import(&http, &url, &key, users).await?;
        println!(
            "round {round}: {users} users imported in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let load = Load::start(&http, &url, &key, &neighbour, 3, 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut figures = [Figures::default(); 2];
        for (i, target) in ["database", "schema"].into_iter().enumerate() {
            load.seen.reset_slowest();
            let failed_before = load.seen.failed.load(Ordering::Relaxed);
            let writes_before = load.seen.writes.load(Ordering::Relaxed);
            let asked = Instant::now();
            let moved = move_tenant(
                &http,
                &url,
                ADMIN_TOKEN,
                &tenant,
                json!({ "placement": target }),
                "done",
            )
            .await?;
            let (slowest, slowest_at) = load.seen.slowest_write();
            figures[i] = Figures {
                to_switch: moved.switched_after,
                to_done: moved.took,
                fence_ms: moved.last["fence_ms"].as_f64().unwrap_or_default(),
                slowest_write: slowest,
                failed: load.seen.failed.load(Ordering::Relaxed) - failed_before,
                writes: load.seen.writes.load(Ordering::Relaxed) - writes_before,
            };
            println!(
                "round {round}: -> {target}: switched after {:.2} s, done after {:.2} s, fence {:.1} ms, \
                 slowest write {:.1} ms (started {:.2} s in), {} writes, {} failed; rows {} copied, \
                 {} changes applied in {} rounds",
                figures[i].to_switch.as_secs_f64(),
                figures[i].to_done.as_secs_f64(),
                figures[i].fence_ms,
                figures[i].slowest_write.as_secs_f64() * 1000.0,
                slowest_at.map_or(0.0, |at| at.saturating_duration_since(asked).as_secs_f64()),
                figures[i].writes,
                figures[i].failed,
                moved.last["rows_copied"],
                moved.last["changes_applied"],
                moved.last["catch_up_rounds"],
            );
        }
        let seen = load.stop().await;
        let failures = seen.failures.lock().await.clone();
        if !failures.is_empty() {
            println!("round {round}: failures: {failures:#?}");
        }
        results.push(figures);
    }

    let mut report = serde_json::Map::new();
    println!("\nmedian of {rounds} rounds, {users} users:");
    for (i, name) in ["shared_to_database", "database_to_schema"]
        .into_iter()
        .enumerate()
    {
        let pick = |f: fn(&Figures) -> f64| {
            median(&mut results.iter().map(|r| f(&r[i])).collect::<Vec<_>>())
        };
        let to_switch = pick(|f| f.to_switch.as_secs_f64());
        let to_done = pick(|f| f.to_done.as_secs_f64());
        let fence = pick(|f| f.fence_ms);
        let slowest = pick(|f| f.slowest_write.as_secs_f64() * 1000.0);
        let failed: u64 = results.iter().map(|r| r[i].failed).sum();
        println!(
            "  {name}: switched after {to_switch:.2} s, done after {to_done:.2} s, fence {fence:.1} ms, \
             slowest write {slowest:.1} ms, failed requests {failed} (all rounds)"
        );
        report.insert(
            name.to_owned(),
            json!({
                "users": users,
                "seconds_to_switch": to_switch,
                "seconds_to_done": to_done,
                "fence_ms": fence,
                "slowest_write_ms": slowest,
                "failed_requests": failed,
            }),
        );
    }
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("moves.json"),
        serde_json::to_string_pretty(&Value::Object(report))?,
    )?;
    println!("\nwritten: target/bench/moves.json");
    gateway.stop().await?;
    query.stop().await?;
    user.stop().await?;
    Ok(())
}
