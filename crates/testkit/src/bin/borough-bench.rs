//! `make bench`: Borough measured side by side with its baselines, on this machine, with
//! the release binaries and `wrk` (HTTP) / `pgbench` (PostgreSQL):
//!
//! 1. edge: `GET /hello` through the whole gateway vs a bare axum binary;
//! 2. hop: `GET /api/v1/users/{id}` from the query cache vs `GetUserInfo` over gRPC, one
//!    caller at a time (the latency the hop adds, not queueing), both timed in this
//!    process (a minimal HTTP/1.1 client on one kept-alive connection; tonic's client);
//! 3. read path: uncached reads (cache off) vs `pgbench -S`, same concurrency;
//! 4. isolation cost: the uncached read of a shared (RLS) tenant vs a database tenant;
//! 5. write path: `POST /api/v1/users`;
//! 6. footprint: idle RSS and time from start to `/readyz` 200 of each service;
//! 7. mtls: what mutual TLS between services costs — the same cached read through a
//!    gateway whose backends speak mTLS (the default) and one whose stack runs with
//!    `BOROUGH_INTERNAL_TLS=off`, alternating, one caller at a time (the hop's added p50
//!    and p99); the handshakes the query service saw per 1,000 calls (connection reuse);
//!    and the CPU one full mutual handshake costs (client and server, in this process),
//!    with X25519MLKEM768 and with classical X25519.
//!
//! Settings: `BENCH_SECONDS` (10 per measurement), `BENCH_CONNECTIONS` (32),
//! `BENCH_ROUNDS` (3; medians reported), `BENCH_ONLY` (e.g. `edge,hop`: a subset of
//! `edge`, `hop`, `read`, `write`, `mtls`), `BENCH_VERBOSE` (print wrk's reports), `BENCH_DB_POOL` (the
//! connections the query services may open, all of them for one tenant: 10, the default
//! pool; more only adds PostgreSQL backends competing for the same two cores). Writes
//! `target/bench/results.json`.

#![allow(clippy::print_stdout)] // Its output is the report.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use borough_proto::query::v1::GetUserInfoRequest;
use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_tenancy::TenantContext;
use borough_testkit::TestDatabase;
use borough_testkit::pg::Login;
use borough_testkit::process::ServiceProcess;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Throughput and latency of one load run.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_wrk_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

/// Runs wrk against `url` (with a Lua `script` for non-GET requests).
async fn wrk(
    url: &str,
    key: Option<&str>,
    seconds: u64,
    connections: u32,
    script: Option<&Path>,
) -> Result<Load> {
    let mut command = tokio::process::Command::new("wrk");
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(key) = key {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {key}"));
    }
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .output()
        .await
        .context("running wrk (make bench installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        println!("{text}");
    }
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk saw errors ({}) against {url}:\n{text}", line.trim());
    }
    let mut load = Load::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            load.rps = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("50%") {
            load.p50_ms = parse_wrk_duration(rest).unwrap_or(f64::NAN);
        } else if let Some(rest) = line.strip_prefix("99%") {
            load.p99_ms = parse_wrk_duration(rest).unwrap_or(f64::NAN);
        }
    }
    Ok(load)
}

/// `GetUserInfo` over gRPC from `connections` concurrent callers for `seconds`.
async fn grpc_lookups(
    url: &str,
    tenant: TenantContext,
    user: &str,
    seconds: u64,
    connections: u32,
) -> Result<Load> {
    // As the gateway does: mutual TLS on https, one connection reused.
    let channel = if url.starts_with("https://") {
        borough_testkit::tls::channel(url, "gateway", "query")?
    } else {
        tonic::transport::Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (mut client, latencies, user) = (
            QueryServiceClient::new(channel.clone()),
            latencies.clone(),
            user.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < until {
                let mut request = tonic::Request::new(GetUserInfoRequest {
                    user_id: user.clone(),
                    min_version: 0,
                });
                tenant.write_metadata(request.metadata_mut());
                let at = Instant::now();
                if client.get_user_info(request).await.is_ok() {
                    mine.push(at.elapsed());
                }
            }
            latencies.lock().map(|mut l| l.extend(mine)).ok();
        }));
    }
    for task in tasks {
        task.await?;
    }
    let latencies =
        std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(load_of(latencies, started.elapsed()))
}

/// `GET url` with `key` from one caller over one kept-alive connection for `seconds`,
/// each latency timed in this process (as [`grpc_lookups`] times the gRPC call). wrk's
/// single-connection percentiles cannot be used for this: its report is inconsistent with
/// its own request count (mean 1.03 ms claimed where 32,692 sequential requests in 5.1 s
/// average 0.156 ms), so both sides of the hop are measured the same way, here.
async fn http_lookups(url: &str, key: &str, seconds: u64) -> Result<Load> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .context("no host in the URL")?
        .as_str()
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\n\r\n",
        uri.path()
    );
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut buffer = Vec::with_capacity(16 * 1024);
    while Instant::now() < until {
        let at = Instant::now();
        stream.write_all(request.as_bytes()).await?;
        // One response: its head, then Content-Length bytes of body.
        buffer.clear();
        let length = loop {
            if stream.read_buf(&mut buffer).await? == 0 {
                bail!("GET {url}: the connection closed");
            }
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    bail!("GET {url}: {}", head.lines().next().unwrap_or_default());
                }
                let body: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("a response without Content-Length")?;
                break end + 4 + body;
            }
        };
        while buffer.len() < length {
            if stream.read_buf(&mut buffer).await? == 0 {
                bail!("GET {url}: the connection closed mid-body");
            }
        }
        latencies.push(at.elapsed());
    }
    Ok(load_of(latencies, started.elapsed()))
}

/// Throughput and percentiles of one caller's `latencies` over `elapsed`.
fn load_of(mut latencies: Vec<Duration>, elapsed: Duration) -> Load {
    latencies.sort();
    let at = |p: f64| {
        borough_testkit::process::percentile(&latencies, p)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Load {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// `pgbench -S` (select-only) at `connections` for `seconds`: transactions a second.
async fn pgbench(url: &str, seconds: u64, connections: u32) -> Result<f64> {
    let bin = borough_testkit::pg::pg_bin_dir()?.join("pgbench");
    let init = tokio::process::Command::new(&bin)
        .args(["-i", "-q", "-s", "1", url])
        .output()
        .await?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let output = tokio::process::Command::new(&bin)
        .args(["-S", "-n", "-j", "1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-T{seconds}"))
        .arg(url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

async fn create_tenant(
    http: &reqwest::Client,
    gateway: &str,
    name: &str,
    placement: &str,
) -> Result<(String, String)> {
    let response = http
        .post(format!("{gateway}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name, "placement": placement}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("creating a {placement} tenant: {}", response.status());
    }
    let body: Value = response.json().await?;
    Ok((
        body["tenant"]["id"]
            .as_str()
            .context("no tenant id")?
            .to_owned(),
        body["api_key"]["key"]
            .as_str()
            .context("no api key")?
            .to_owned(),
    ))
}

async fn create_user(
    http: &reqwest::Client,
    gateway: &str,
    key: &str,
    email: &str,
) -> Result<String> {
    let body: Value = http
        .post(format!("{gateway}/api/v1/users"))
        .bearer_auth(key)
        .json(&json!({"name": "Bench", "email": email}))
        .send()
        .await?
        .json()
        .await?;
    body["id"].as_str().map(str::to_owned).context("no user id")
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let connections: u32 = env_or("BENCH_CONNECTIONS", 32);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |measure: &str| only.is_empty() || only.split(',').any(|m| m.trim() == measure);
    let db_pool: u32 = env_or("BENCH_DB_POOL", 10);
    let bin = borough_testkit::process::binary_dir()?;
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;

    let cluster = borough_testkit::own_cluster()?;
    let db = TestDatabase::create_on(&cluster).await?;
    let service = |login: Login, extra: &[(&str, &str)]| {
        let mut env = db.env_for(login);
        env.extend(pairs(&[("BOROUGH_SHUTDOWN_GRACE", "0s")]));
        env.extend(pairs(extra));
        env
    };

    // Footprint: start each service on its own and measure.
    let user = ServiceProcess::start(
        &bin,
        "borough-user",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::User, &[]),
    )
    .await?;
    // The query services' pool, all of it for the one tenant being read.
    let pool = db_pool.to_string();
    let pool_env = [
        ("BOROUGH_DB_MAX_CONNECTIONS", pool.as_str()),
        ("BOROUGH_TENANT_MAX_CONNECTIONS", pool.as_str()),
        ("BOROUGH_TENANT_POOL_MAX_CONNECTIONS", pool.as_str()),
    ];
    let query = ServiceProcess::start(
        &bin,
        "borough-query",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::Query, &pool_env),
    )
    .await?;
    let uncached = ServiceProcess::start(
        &bin,
        "borough-query",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(
            Login::Query,
            &[pool_env.as_slice(), &[("BOROUGH_CACHE_MAX_ENTRIES", "0")]].concat(),
        ),
    )
    .await?;
    let config = ServiceProcess::start(
        &bin,
        "borough-config",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::Config, &[]),
    )
    .await?;
    let gateway_env = |query: &ServiceProcess| {
        pairs(&[
            ("BOROUGH_USER_URL", &user.grpc_url()),
            ("BOROUGH_QUERY_URL", &query.grpc_url()),
            ("BOROUGH_CONFIG_URL", &config.grpc_url()),
            ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BOROUGH_RATE_LIMIT_RPS", "1000000"),
            ("BOROUGH_RATE_LIMIT_BURST", "1000000"),
            ("BOROUGH_SHUTDOWN_GRACE", "0s"),
        ])
    };
    let gateway = ServiceProcess::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(&query),
    )
    .await?;
    let gateway_uncached = ServiceProcess::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(&uncached),
    )
    .await?;
    // The same stack with internal TLS off: what mTLS costs is the difference.
    let plain: &[(&str, &str)] = &[("BOROUGH_INTERNAL_TLS", "off")];
    let user_plain = ServiceProcess::start(
        &bin,
        "borough-user",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::User, plain),
    )
    .await?;
    let query_plain = ServiceProcess::start(
        &bin,
        "borough-query",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::Query, &[pool_env.as_slice(), plain].concat()),
    )
    .await?;
    let gateway_plain = ServiceProcess::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &pairs(&[
            ("BOROUGH_INTERNAL_TLS", "off"),
            ("BOROUGH_USER_URL", &user_plain.grpc_url()),
            ("BOROUGH_QUERY_URL", &query_plain.grpc_url()),
            ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BOROUGH_RATE_LIMIT_RPS", "1000000"),
            ("BOROUGH_RATE_LIMIT_BURST", "1000000"),
            ("BOROUGH_SHUTDOWN_GRACE", "0s"),
        ]),
    )
    .await?;
    let hello = ServiceProcess::start_probing(
        &bin,
        "borough-hello",
        "BOROUGH_HTTP_ADDR",
        None,
        &[],
        Some("/hello"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut footprint = Vec::new();
    for process in [&gateway, &user, &query, &config] {
        footprint.push(json!({
            "service": process.name,
            "idle_rss_mib": process.rss_kib()? as f64 / 1024.0,
            "ready_ms": process.ready_after.as_secs_f64() * 1e3,
        }));
    }

    // Data: a shared and a database tenant, each with a user.
    let http = reqwest::Client::new();
    let g = gateway.url();
    let (shared_id, shared_key) = create_tenant(&http, &g, "bench-shared", "shared").await?;
    let (_, database_key) = create_tenant(&http, &g, "bench-database", "database").await?;
    let shared_user = create_user(&http, &g, &shared_key, "reader@example.com").await?;
    let database_user = create_user(&http, &g, &database_key, "reader@example.com").await?;
    let shared_ctx = TenantContext::new(
        shared_id
            .parse()
            .map_err(|_| anyhow::anyhow!("bad tenant id"))?,
    );
    // A user with a new email on every request (the API key comes from -H); the prefix
    // differs per run, so that no run meets the emails of another.
    let post_script = out.join("post-user.lua");
    let write_script = |prefix: &str| {
        std::fs::write(
            &post_script,
            format!(
                r#"wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{{"name":"Bench","email":"{prefix}-%d@example.com"}}', counter)
  return wrk.format("POST", "/api/v1/users", nil, body)
end
"#
            ),
        )
    };
    let admin = db.admin_pool().await?;
    let pgbench_url = {
        sqlx::query("CREATE DATABASE borough_pgbench")
            .execute(&admin)
            .await?;
        // Over TLS like the services (libpq reads the same URL parameters).
        cluster.superuser_url("borough_pgbench")
    };

    let mut rounds_out: Vec<Value> = Vec::new();
    let (mut edge_ratio, mut hop_p50, mut hop_p99, mut read_ratio, mut rls_cost, mut writes) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut mtls_p50, mut mtls_p99, mut per_thousand) = (vec![], vec![], vec![]);
    let gu = gateway_uncached.url();
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        let mut out = json!({"round": round});
        // The previous round's writes leave PostgreSQL work (dirty buffers, autovacuum)
        // that would otherwise land in the middle of the next measurement.
        sqlx::query("CHECKPOINT").execute(&admin).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 1. edge: gateway and bare binary in alternating halves, so that a change in the
        //    machine's background load meets both alike.
        if run("edge") {
            let half = seconds.div_ceil(2);
            let mut edge = Load::default();
            let mut bare = Load::default();
            for _ in 0..2 {
                let e = wrk(&format!("{g}/hello"), None, half, connections, None).await?;
                let b = wrk(
                    &format!("{}/hello", hello.url()),
                    None,
                    half,
                    connections,
                    None,
                )
                .await?;
                for (sum, one) in [(&mut edge, e), (&mut bare, b)] {
                    sum.rps += one.rps / 2.0;
                    sum.p50_ms = sum.p50_ms.max(one.p50_ms);
                    sum.p99_ms = sum.p99_ms.max(one.p99_ms);
                }
            }
            edge_ratio.push(edge.rps / bare.rps);
            line += &format!(
                " edge {:.0}/{:.0} rps ({:.2}x);",
                edge.rps,
                bare.rps,
                edge.rps / bare.rps
            );
            out["edge"] = json!({"gateway": load_json(edge), "bare_axum": load_json(bare)});
        }
        // 2. hop: cached GET through the gateway vs the same lookup over gRPC, one caller
        //    at a time (at saturation both are queueing; the hop's own cost shows unloaded).
        if run("hop") {
            let cached = http_lookups(
                &format!("{g}/api/v1/users/{shared_user}"),
                &shared_key,
                seconds,
            )
            .await?;
            let direct =
                grpc_lookups(&query.grpc_url(), shared_ctx, &shared_user, seconds, 1).await?;
            hop_p50.push((cached.p50_ms - direct.p50_ms) * 1e3);
            hop_p99.push((cached.p99_ms - direct.p99_ms) * 1e3);
            line += &format!(
                " hop p50 +{:.0} us p99 +{:.0} us (gateway {:.3}/{:.3} ms, gRPC {:.3}/{:.3} ms);",
                (cached.p50_ms - direct.p50_ms) * 1e3,
                (cached.p99_ms - direct.p99_ms) * 1e3,
                cached.p50_ms,
                cached.p99_ms,
                direct.p50_ms,
                direct.p99_ms,
            );
            out["hop"] =
                json!({"gateway_cached": load_json(cached), "grpc_direct": load_json(direct)});
        }
        // 3 and 4. uncached reads (shared and database tenants) vs pgbench -S.
        if run("read") {
            let uncached_shared = wrk(
                &format!("{gu}/api/v1/users/{shared_user}"),
                Some(&shared_key),
                seconds,
                connections,
                None,
            )
            .await?;
            let uncached_database = wrk(
                &format!("{gu}/api/v1/users/{database_user}"),
                Some(&database_key),
                seconds,
                connections,
                None,
            )
            .await?;
            let pg_tps = pgbench(&pgbench_url, seconds, connections).await?;
            read_ratio.push(uncached_shared.rps / pg_tps);
            rls_cost.push(1.0 - uncached_shared.rps / uncached_database.rps);
            line += &format!(
                " uncached {:.0} rps vs pgbench {:.0} tps ({:.0} %); database tenant {:.0} rps;",
                uncached_shared.rps,
                pg_tps,
                uncached_shared.rps / pg_tps * 100.0,
                uncached_database.rps,
            );
            out["read"] = json!({"uncached_shared": load_json(uncached_shared), "uncached_database": load_json(uncached_database), "pgbench_select_tps": pg_tps});
        }
        // 5. writes
        if run("write") {
            write_script(&uuid::Uuid::now_v7().simple().to_string())?;
            let write = wrk(
                &format!("{g}/api/v1/users"),
                Some(&shared_key),
                seconds,
                connections,
                Some(&post_script),
            )
            .await?;
            writes.push(write.rps);
            line += &format!(" writes {:.0} rps p99 {:.2} ms;", write.rps, write.p99_ms);
            out["write"] = load_json(write);
        }
        // 6. mtls: the same cached read, through the mTLS stack and the plaintext one,
        //    alternating halves, one caller at a time.
        if run("mtls") {
            let plain_url = format!("{}/api/v1/users/{shared_user}", gateway_plain.url());
            let tls_url = format!("{g}/api/v1/users/{shared_user}");
            let half = seconds.div_ceil(2);
            let before = handshakes(&http, &query).await?;
            let (mut tls, mut plaintext) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                tls.push(http_lookups(&tls_url, &shared_key, half).await?);
                plaintext.push(http_lookups(&plain_url, &shared_key, half).await?);
            }
            let made = handshakes(&http, &query).await? - before;
            let calls: f64 = tls.iter().map(|l| l.rps * half as f64).sum();
            let mean = |loads: &[Load], f: fn(&Load) -> f64| {
                loads.iter().map(f).sum::<f64>() / loads.len() as f64
            };
            let (p50, p99) = (
                (mean(&tls, |l| l.p50_ms) - mean(&plaintext, |l| l.p50_ms)) * 1e3,
                (mean(&tls, |l| l.p99_ms) - mean(&plaintext, |l| l.p99_ms)) * 1e3,
            );
            mtls_p50.push(p50);
            mtls_p99.push(p99);
            per_thousand.push(made / calls.max(1.0) * 1000.0);
            line += &format!(
                " mTLS hop p50 {p50:+.0} us p99 {p99:+.0} us (mTLS {:.3}/{:.3} ms, plaintext {:.3}/{:.3} ms), {made:.0} handshakes for {calls:.0} calls;",
                mean(&tls, |l| l.p50_ms),
                mean(&tls, |l| l.p99_ms),
                mean(&plaintext, |l| l.p50_ms),
                mean(&plaintext, |l| l.p99_ms),
            );
            out["mtls"] = json!({
                "mtls_p50_ms": mean(&tls, |l| l.p50_ms), "mtls_p99_ms": mean(&tls, |l| l.p99_ms),
                "plaintext_p50_ms": mean(&plaintext, |l| l.p50_ms), "plaintext_p99_ms": mean(&plaintext, |l| l.p99_ms),
                "handshakes": made, "calls": calls,
            });
        }
        println!("{line}");
        rounds_out.push(out);
    }

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let median =
        |values: Vec<f64>| (!values.is_empty()).then(|| borough_testkit::process::median(values));
    println!();
    println!(
        "| measure (median of {rounds}, {connections} connections, {seconds} s each) | figure | target | |"
    );
    println!("| --- | --- | --- | --- |");
    let row = |name: &str,
               value: Option<f64>,
               show: &dyn Fn(f64) -> String,
               target: &str,
               ok: &dyn Fn(f64) -> bool| match value {
        Some(v) if target.is_empty() => println!("| {name} | {} | | |", show(v)),
        Some(v) => println!("| {name} | {} | {target} | {} |", show(v), verdict(ok(v))),
        None => println!("| {name} | (skipped) | {target} | |"),
    };
    row(
        "edge: gateway /hello vs bare axum",
        median(edge_ratio),
        &|v| format!("{v:.3}x"),
        ">= 0.8x",
        &|v| v >= 0.8,
    );
    row(
        "hop: REST->gRPC p50 added",
        median(hop_p50),
        &|v| format!("{v:.0} us"),
        "<= 100 us",
        &|v| v <= 100.0,
    );
    row(
        "hop: REST->gRPC p99 added",
        median(hop_p99),
        &|v| format!("{v:.0} us"),
        "<= 300 us",
        &|v| v <= 300.0,
    );
    row(
        "read path: uncached read vs pgbench -S",
        median(read_ratio),
        &|v| format!("{:.0} %", v * 100.0),
        ">= 60 %",
        &|v| v >= 0.6,
    );
    row(
        "isolation: RLS (shared) vs database tenant cost",
        median(rls_cost),
        &|v| format!("{:.1} %", v * 100.0),
        "<= 10 %",
        &|v| v <= 0.10,
    );
    match median(writes) {
        Some(w) => println!("| write path: POST /api/v1/users | {w:.0} rps | | |"),
        None => println!("| write path: POST /api/v1/users | (skipped) | | |"),
    }
    row(
        "mTLS: REST->gRPC hop p50 added (vs internal TLS off)",
        median(mtls_p50),
        &|v| format!("{v:.0} us"),
        "<= 30 us",
        &|v| v <= 30.0,
    );
    row(
        "mTLS: REST->gRPC hop p99 added (vs internal TLS off)",
        median(mtls_p99),
        &|v| format!("{v:.0} us"),
        "",
        &|_| true,
    );
    row(
        "mTLS: handshakes per 1,000 calls (connection reuse)",
        median(per_thousand),
        &|v| format!("{v:.3}"),
        "",
        &|_| true,
    );
    let mut handshake = json!(null);
    if run("mtls") {
        let (pq, pq_group) = handshake_cpu(400, false).await?;
        let (classical, classical_group) = handshake_cpu(400, true).await?;
        println!(
            "| mTLS: CPU per full handshake, both ends ({pq_group} / {classical_group}) | {:.0} us / {:.0} us | | |",
            pq.as_secs_f64() * 1e6,
            classical.as_secs_f64() * 1e6,
        );
        handshake = json!({
            "pq_group": pq_group, "pq_cpu_us": pq.as_secs_f64() * 1e6,
            "classical_group": classical_group, "classical_cpu_us": classical.as_secs_f64() * 1e6,
        });
    }
    for f in &footprint {
        let rss = f["idle_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let ready = f["ready_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "| footprint: {} idle RSS / ready | {rss:.1} MiB / {ready:.0} ms | <= 15 MB / <= 100 ms | {} |",
            f["service"].as_str().unwrap_or("?"),
            verdict(rss * 1.048_576 <= 15.0 && ready <= 100.0),
        );
    }
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json!({
            "seconds": seconds,
            "connections": connections,
            "db_pool": db_pool,
            "footprint": footprint,
            "handshake": handshake,
            "rounds": rounds_out,
        }))?,
    )?;
    println!("\nwritten: target/bench/results.json");
    for process in [
        gateway,
        gateway_uncached,
        gateway_plain,
        user,
        user_plain,
        query,
        query_plain,
        uncached,
        config,
        hello,
    ] {
        process.stop().await?;
    }
    Ok(())
}

/// This process's CPU time (user and system), from /proc.
fn process_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command (which may hold spaces) start after its closing paren.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // The kernel's USER_HZ is 100 on Linux's common architectures.
    Ok(Duration::from_millis(ticks * 10))
}

/// CPU per full mutual TLS 1.3 handshake, both ends in this process over loopback: the
/// query service's server config and the gateway's client config from the test PKI,
/// offering X25519MLKEM768 (or classical X25519 alone when `classical`).
async fn handshake_cpu(count: usize, classical: bool) -> Result<(Duration, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = borough_testkit::tls::pki()?;
    let server = pki.materials("query")?;
    let client = pki.materials("gateway")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(borough_tls::server::server_config(
        &server,
        true,
        &[b"h2"],
    ));
    let config = if classical {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        borough_tls::client::client_config_with(&client, "query", Arc::new(provider))
    } else {
        borough_tls::client::client_config(&client, "query")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move {
        for _ in 0..count {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // The server's side done (client certificate verified) before the byte.
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"k").await;
                let _ = tls.flush().await;
            }
        }
    });
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from("query.borough")?;
    let mut group = String::new();
    let cpu = process_cpu()?;
    for _ in 0..count {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name.clone(), tcp).await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        if group.is_empty() {
            group = tls
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| borough_tls::group_name(g.name()).to_owned())
                .unwrap_or_default();
        }
    }
    let spent = process_cpu()? - cpu;
    serving.await?;
    Ok((spent / count as u32, group))
}

/// The handshakes `process`'s gRPC server has completed with the gateway.
async fn handshakes(http: &reqwest::Client, process: &ServiceProcess) -> Result<f64> {
    Ok(borough_testkit::scrape_metric(
        http,
        &process.admin_url(""),
        "borough_tls_handshakes_total",
        "role=\"server\",peer=\"gateway\"",
    )
    .await?
    .unwrap_or(0.0))
}

fn load_json(load: Load) -> Value {
    json!({"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms})
}
