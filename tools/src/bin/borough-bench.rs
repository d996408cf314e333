//! `make bench`: Borough measured side by side with its baselines, on this machine, with
//! the release binaries and `wrk` (HTTP), `h2load` (HTTP/2) and `pgbench` (PostgreSQL).
//! Beside each load run, the CPU each process on the path spent per request (from
//! `/proc/<pid>/stat` over the run, divided by the requests it completed; PostgreSQL with
//! all its backends; the load generator as `client`):
//!
//! 1. edge: `GET /hello` through the whole gateway vs a bare axum binary, with the suite's
//!    quiet logging (`RUST_LOG=error`), and `shipped`: the same against a gateway run as a
//!    user runs it (default log level and access log, standard output to a file);
//! 2. hop: `GET /api/v1/users/{id}` from the query cache vs `GetUserInfo` over gRPC, one
//!    caller at a time (the latency the hop adds, not queueing), both timed in this
//!    process (a minimal HTTP/1.1 client on one kept-alive connection; tonic's client);
//! 3. cached: the cached read at load (throughput, p99, CPU per read); `floor`: the same
//!    read through Borough's plaintext stack and through a bare axum gateway calling a
//!    bare tonic query service (`borough-hello`), alternating: each role's CPU per read
//!    over what the libraries and the kernel cost;
//! 4. read path: uncached reads (cache off) vs `pgbench -S`, same concurrency, and the
//!    isolation cost: the uncached read of a shared (RLS) tenant vs a database tenant;
//! 5. write path: `POST /api/v1/users`;
//! 6. h2: `h2load` against `/hello` and the cached read, HTTP/1.1 vs h2c, same
//!    connections;
//! 7. scale: the uncached read through one gateway and two query replicas, against the
//!    model (cores / CPU per read);
//! 8. footprint: idle RSS and time from start to `/readyz` 200 of each service;
//! 9. mtls: what mutual TLS between services costs — the same cached read through a
//!    gateway whose backends speak mTLS (the default) and one whose stack runs with
//!    `BOROUGH_INTERNAL_TLS=off`, alternating, one caller at a time (the hop's added p50
//!    and p99); the handshakes the query service saw per 1,000 calls (connection reuse);
//!    and the CPU one full mutual handshake costs (client and server, in this process),
//!    with X25519MLKEM768 and with classical X25519.
//!
//! Settings: `BENCH_SECONDS` (10 per measurement), `BENCH_CONNECTIONS` (32),
//! `BENCH_ROUNDS` (3; medians reported), `BENCH_ONLY` (a subset of `edge`, `shipped`,
//! `hop`, `cached`, `floor`, `read`, `write`, `h2`, `scale`, `mtls`, comma-separated),
//! `BENCH_VERBOSE` (print the load generators' reports), `BENCH_DB_POOL` (the
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
use borough_tenant::TenantContext;
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
    /// Requests completed in the run.
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// CPU each measured process spent per request of one run, in microseconds.
type CpuPer = Vec<(String, f64)>;

/// Runs `load`, measuring the CPU `processes` (name, pid: each with its descendants)
/// spend meanwhile, and the load generator's (`client`: the child process the run waited
/// for — wrk, pgbench, h2load); per request, by the requests the run completed.
async fn with_cpu(
    processes: &[(&str, u32)],
    load: impl std::future::Future<Output = Result<Load>>,
) -> Result<(Load, CpuPer)> {
    let window = borough_testkit::cpu::Window::start(processes)?;
    let client = borough_testkit::cpu::reaped_children()?;
    let load = load.await?;
    let client = borough_testkit::cpu::reaped_children()?.saturating_sub(client);
    let requests = load.requests.max(1.0);
    let mut per: CpuPer = window
        .spent()?
        .into_iter()
        .map(|(name, cpu)| (name, cpu.as_secs_f64() * 1e6 / requests))
        .collect();
    per.push(("client".to_owned(), client.as_secs_f64() * 1e6 / requests));
    Ok((load, per))
}

/// The sum of two runs' CPU per request, halved (the mean of two halves).
fn mean_cpu(a: &CpuPer, b: &CpuPer) -> CpuPer {
    a.iter()
        .zip(b)
        .map(|((name, x), (_, y))| (name.clone(), (x + y) / 2.0))
        .collect()
}

/// The CPU per request of `name` in `per` (NaN if absent).
fn cpu_of(per: &CpuPer, name: &str) -> f64 {
    per.iter()
        .find(|(n, _)| n == name)
        .map_or(f64::NAN, |(_, us)| *us)
}

/// All processes' CPU per request, the load generator's included.
fn cpu_total(per: &CpuPer) -> f64 {
    per.iter().map(|(_, us)| us).sum()
}

/// `gateway 18 us, query 17 us`.
fn show_cpu(per: &CpuPer) -> String {
    per.iter()
        .map(|(name, us)| format!("{name} {us:.1} us"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_json(per: &CpuPer) -> Value {
    Value::Object(
        per.iter()
            .map(|(name, us)| (name.clone(), json!(us)))
            .collect(),
    )
}

/// The pid of a started process.
fn pid(process: &ServiceProcess) -> Result<u32> {
    process.pid().context("the process has exited")
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
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            load.requests = count.trim().parse().unwrap_or(0.0);
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
        requests: latencies.len() as f64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// `pgbench -i` (scale 1) into the database at `url`.
async fn pgbench_init(url: &str) -> Result<()> {
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
    Ok(())
}

/// `pgbench -S` (select-only) at `connections` for `seconds`: transactions a second (as
/// `rps`) and in all.
async fn pgbench(url: &str, seconds: u64, connections: u32) -> Result<Load> {
    let bin = borough_testkit::pg::pg_bin_dir()?.join("pgbench");
    let output = tokio::process::Command::new(&bin)
        .args(["-S", "-n", "-j", "1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-T{seconds}"))
        .arg(url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(['/', ' ']).next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no transaction count in pgbench's output: {text}"))?;
    Ok(Load {
        rps: tps,
        requests,
        ..Load::default()
    })
}

/// `h2load` (Debian's nghttp2-client) against `url` for `seconds` at `connections`, one
/// stream per connection at a time: HTTP/2 over cleartext (prior knowledge, as the
/// gateway's h2c), or HTTP/1.1 when `h1`. Throughput and mean latency (h2load reports no
/// percentiles).
async fn h2load(
    url: &str,
    key: Option<&str>,
    seconds: u64,
    connections: u32,
    h1: bool,
) -> Result<Load> {
    let mut command = tokio::process::Command::new("h2load");
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg("-m1")
        .arg(format!("-D{seconds}"));
    if h1 {
        command.arg("--h1");
    }
    if let Some(key) = key {
        command
            .arg("-H")
            .arg(format!("Authorization: Bearer {key}"));
    }
    let output = command
        .arg(url)
        .output()
        .await
        .context("running h2load (make bench installs nghttp2-client)")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        println!("{text}");
    }
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            load.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|r| r.strip_suffix(" req/s"))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            let field = |name: &str| {
                rest.split(", ")
                    .find_map(|f| f.strip_suffix(name))
                    .and_then(|n| n.trim().parse::<f64>().ok())
            };
            load.requests = field(" succeeded").unwrap_or(0.0);
            if field(" failed").unwrap_or(0.0) + field(" errored").unwrap_or(0.0) > 0.0 {
                bail!("h2load saw failures against {url}:\n{text}");
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            let bad: f64 = rest
                .split(", ")
                .filter(|f| f.ends_with(" 4xx") || f.ends_with(" 5xx"))
                .filter_map(|f| f.split_whitespace().next()?.parse::<f64>().ok())
                .sum();
            if bad > 0.0 {
                bail!("h2load saw error statuses against {url}:\n{text}");
            }
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            load.p50_ms = rest
                .split_whitespace()
                .nth(2)
                .and_then(parse_wrk_duration)
                .unwrap_or(f64::NAN);
        }
    }
    if !output.status.success() || load.requests == 0.0 {
        bail!(
            "h2load failed against {url}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(load)
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
    // The floor of the cached read: a bare tonic query service and a bare axum gateway
    // calling it (borough-hello), plaintext like the stack they are compared with.
    let bare_grpc = format!("127.0.0.1:{}", borough_testkit::pg::free_port()?);
    let bare_query = ServiceProcess::start_probing(
        &bin,
        "borough-hello",
        "BOROUGH_HTTP_ADDR",
        None,
        &pairs(&[("BOROUGH_HELLO_GRPC_ADDR", &bare_grpc)]),
        Some("/hello"),
    )
    .await?;
    let bare_gateway = ServiceProcess::start_probing(
        &bin,
        "borough-hello",
        "BOROUGH_HTTP_ADDR",
        None,
        &pairs(&[("BOROUGH_HELLO_QUERY_URL", &format!("http://{bare_grpc}"))]),
        Some("/api/v1/users/probe"),
    )
    .await?;
    // As a user runs it: default logging, standard output to a file.
    let shipped_log = out.join("gateway-as-shipped.log");
    let gateway_shipped = ServiceProcess::start_as_shipped(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        &gateway_env(&query),
        &shipped_log,
    )
    .await?;
    // A second uncached query replica, and a gateway spreading reads over both.
    let replica = ServiceProcess::start(
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
    let gateway_two = ServiceProcess::start(
        &bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &gateway_env(&uncached)
            .into_iter()
            .map(|(k, v)| {
                if k == "BOROUGH_QUERY_URL" {
                    (k, format!("{v},{}", replica.grpc_url()))
                } else {
                    (k, v)
                }
            })
            .collect::<Vec<_>>(),
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

    pgbench_init(&pgbench_url).await?;
    let postgres = borough_testkit::cpu::postmaster_pid(&cluster.data_dir)?;

    let mut rounds_out: Vec<Value> = Vec::new();
    let mut figures = Figures::default();
    let gu = gateway_uncached.url();
    let (g_pid, gu_pid, q_pid, qu_pid, u_pid) = (
        pid(&gateway)?,
        pid(&gateway_uncached)?,
        pid(&query)?,
        pid(&uncached)?,
        pid(&user)?,
    );
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        let mut out = json!({"round": round});
        // The previous round's writes leave PostgreSQL work (dirty buffers, autovacuum)
        // that would otherwise land in the middle of the next measurement.
        sqlx::query("CHECKPOINT").execute(&admin).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 1. edge: gateway and bare binary in alternating halves, so that a change in the
        //    machine's background load meets both alike; with the suite's quiet logging
        //    (`RUST_LOG=error`) and as shipped (defaults, the access log to a file).
        for (measure, edge_gateway) in [("edge", &gateway), ("shipped", &gateway_shipped)] {
            if !run(measure) {
                continue;
            }
            let (edge_url, bare_url) = (
                format!("{}/hello", edge_gateway.url()),
                format!("{}/hello", hello.url()),
            );
            let (edge, edge_cpu, bare, bare_cpu) = alternating(
                seconds,
                Side {
                    url: &edge_url,
                    key: None,
                    processes: &[("server", pid(edge_gateway)?)],
                },
                Side {
                    url: &bare_url,
                    key: None,
                    processes: &[("server", pid(&hello)?)],
                },
                connections,
            )
            .await?;
            let ratio = edge.rps / bare.rps;
            let gateway_us = cpu_of(&edge_cpu, "server");
            let bare_us = cpu_of(&bare_cpu, "server");
            line += &format!(
                " {measure} {:.0}/{:.0} rps ({ratio:.2}x, CPU {gateway_us:.1}/{bare_us:.1} us);",
                edge.rps, bare.rps,
            );
            if measure == "edge" {
                figures.edge.push(ratio);
                figures.edge_cpu.push(gateway_us);
            } else {
                figures.shipped.push(ratio);
                figures.shipped_cpu.push(gateway_us);
            }
            out[measure] = json!({
                "gateway": load_json(edge), "gateway_cpu_us": cpu_json(&edge_cpu),
                "bare_axum": load_json(bare), "bare_axum_cpu_us": cpu_json(&bare_cpu),
            });
        }
        if run("shipped") {
            let written = std::fs::metadata(&shipped_log).map_or(0, |m| m.len());
            let dropped = borough_testkit::scrape_metric(
                &http,
                &gateway_shipped.admin_url(""),
                "borough_log_lines_dropped_total",
                "",
            )
            .await?
            .unwrap_or(0.0);
            line += &format!(" as-shipped log {written} bytes, {dropped:.0} lines dropped;");
            out["shipped"]["log_bytes"] = json!(written);
            out["shipped"]["log_lines_dropped"] = json!(dropped);
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
            figures.hop_p50.push((cached.p50_ms - direct.p50_ms) * 1e3);
            figures.hop_p99.push((cached.p99_ms - direct.p99_ms) * 1e3);
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
        // 3. cached reads at load: throughput, p99 and each process's CPU per read.
        if run("cached") {
            let (load, cpu) = with_cpu(
                &[("gateway", g_pid), ("query", q_pid), ("postgres", postgres)],
                wrk(
                    &format!("{g}/api/v1/users/{shared_user}"),
                    Some(&shared_key),
                    seconds,
                    connections,
                    None,
                ),
            )
            .await?;
            line += &format!(
                " cached {:.0} rps p99 {:.2} ms ({});",
                load.rps,
                load.p99_ms,
                show_cpu(&cpu)
            );
            figures.cached.push((load, cpu.clone()));
            out["cached"] = json!({"load": load_json(load), "cpu_us": cpu_json(&cpu)});
        }
        // 3b. floor: the same cached read through Borough's plaintext stack and through
        //     the bare pair, alternating halves: what our own code costs per read over
        //     axum + tonic + hyper + the kernel.
        if run("floor") {
            let (ours_url, bare_url) = (
                format!("{}/api/v1/users/{shared_user}", gateway_plain.url()),
                format!("{}/api/v1/users/{shared_user}", bare_gateway.url()),
            );
            let (ours, ours_cpu, bare, bare_cpu) = alternating(
                seconds,
                Side {
                    url: &ours_url,
                    key: Some(&shared_key),
                    processes: &[
                        ("gateway", pid(&gateway_plain)?),
                        ("query", pid(&query_plain)?),
                    ],
                },
                Side {
                    url: &bare_url,
                    key: Some(&shared_key),
                    processes: &[
                        ("gateway", pid(&bare_gateway)?),
                        ("query", pid(&bare_query)?),
                    ],
                },
                connections,
            )
            .await?;
            line += &format!(
                " floor: ours {:.0} rps ({}), bare {:.0} rps ({});",
                ours.rps,
                show_cpu(&ours_cpu),
                bare.rps,
                show_cpu(&bare_cpu)
            );
            figures
                .floor
                .push((ours, ours_cpu.clone(), bare, bare_cpu.clone()));
            out["floor"] = json!({
                "ours": load_json(ours), "ours_cpu_us": cpu_json(&ours_cpu),
                "bare": load_json(bare), "bare_cpu_us": cpu_json(&bare_cpu),
            });
        }
        // 4 and 5. uncached reads (shared and database tenants) vs pgbench -S.
        if run("read") {
            let (uncached_shared, read_cpu) = with_cpu(
                &[
                    ("gateway", gu_pid),
                    ("query", qu_pid),
                    ("postgres", postgres),
                ],
                wrk(
                    &format!("{gu}/api/v1/users/{shared_user}"),
                    Some(&shared_key),
                    seconds,
                    connections,
                    None,
                ),
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
            let (pg, pg_cpu) = with_cpu(
                &[("postgres", postgres)],
                pgbench(&pgbench_url, seconds, connections),
            )
            .await?;
            figures.read.push(uncached_shared.rps / pg.rps);
            figures
                .rls
                .push(1.0 - uncached_shared.rps / uncached_database.rps);
            line += &format!(
                " uncached {:.0} rps p99 {:.2} ms ({}) vs pgbench {:.0} tps ({}) = {:.0} %; database tenant {:.0} rps;",
                uncached_shared.rps,
                uncached_shared.p99_ms,
                show_cpu(&read_cpu),
                pg.rps,
                show_cpu(&pg_cpu),
                uncached_shared.rps / pg.rps * 100.0,
                uncached_database.rps,
            );
            figures.read_cpu.push((uncached_shared, read_cpu.clone()));
            figures.pgbench_cpu.push((pg, pg_cpu.clone()));
            out["read"] = json!({
                "uncached_shared": load_json(uncached_shared), "uncached_cpu_us": cpu_json(&read_cpu),
                "uncached_database": load_json(uncached_database),
                "pgbench_select_tps": pg.rps, "pgbench_cpu_us": cpu_json(&pg_cpu),
            });
        }
        // 6. writes
        if run("write") {
            write_script(&uuid::Uuid::now_v7().simple().to_string())?;
            let (write, write_cpu) = with_cpu(
                &[("gateway", g_pid), ("user", u_pid), ("postgres", postgres)],
                wrk(
                    &format!("{g}/api/v1/users"),
                    Some(&shared_key),
                    seconds,
                    connections,
                    Some(&post_script),
                ),
            )
            .await?;
            line += &format!(
                " writes {:.0} rps p99 {:.2} ms ({});",
                write.rps,
                write.p99_ms,
                show_cpu(&write_cpu)
            );
            figures.write.push((write, write_cpu.clone()));
            out["write"] = json!({"load": load_json(write), "cpu_us": cpu_json(&write_cpu)});
        }
        // 7. HTTP/2 (h2c) vs HTTP/1.1 at the edge, h2load, same connections.
        if run("h2") {
            let hello_url = format!("{g}/hello");
            let read_url = format!("{g}/api/v1/users/{shared_user}");
            let mut results = json!({});
            for (what, url, key) in [
                ("hello", hello_url.as_str(), None),
                ("cached", read_url.as_str(), Some(shared_key.as_str())),
            ] {
                let (h1, h1_cpu) = with_cpu(
                    &[("gateway", g_pid)],
                    h2load(url, key, seconds.div_ceil(2), connections, true),
                )
                .await?;
                let (h2, h2_cpu) = with_cpu(
                    &[("gateway", g_pid)],
                    h2load(url, key, seconds.div_ceil(2), connections, false),
                )
                .await?;
                line += &format!(
                    " h2load {what}: http/1.1 {:.0} rps ({:.1} us), h2 {:.0} rps ({:.1} us);",
                    h1.rps,
                    cpu_of(&h1_cpu, "gateway"),
                    h2.rps,
                    cpu_of(&h2_cpu, "gateway"),
                );
                figures.h2.push((what, h1, h2));
                results[what] = json!({
                    "http1": load_json(h1), "http1_gateway_cpu_us": cpu_of(&h1_cpu, "gateway"),
                    "h2": load_json(h2), "h2_gateway_cpu_us": cpu_of(&h2_cpu, "gateway"),
                });
            }
            out["h2"] = results;
        }
        // 8. scaling: the uncached read through one gateway and two query replicas.
        if run("scale") {
            let (load, cpu) = with_cpu(
                &[
                    ("gateway", pid(&gateway_two)?),
                    ("query", qu_pid),
                    ("query2", pid(&replica)?),
                    ("postgres", postgres),
                ],
                wrk(
                    &format!("{}/api/v1/users/{shared_user}", gateway_two.url()),
                    Some(&shared_key),
                    seconds,
                    connections,
                    None,
                ),
            )
            .await?;
            line += &format!(
                " two query replicas: uncached {:.0} rps ({});",
                load.rps,
                show_cpu(&cpu)
            );
            figures.scale.push((load, cpu.clone()));
            out["scale"] = json!({"load": load_json(load), "cpu_us": cpu_json(&cpu)});
        }
        // 9. mtls: the same cached read, through the mTLS stack and the plaintext one,
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
            let calls: f64 = tls.iter().map(|l| l.requests).sum();
            let mean = |loads: &[Load], f: fn(&Load) -> f64| {
                loads.iter().map(f).sum::<f64>() / loads.len() as f64
            };
            let (p50, p99) = (
                (mean(&tls, |l| l.p50_ms) - mean(&plaintext, |l| l.p50_ms)) * 1e3,
                (mean(&tls, |l| l.p99_ms) - mean(&plaintext, |l| l.p99_ms)) * 1e3,
            );
            figures.mtls_p50.push(p50);
            figures.mtls_p99.push(p99);
            figures.per_thousand.push(made / calls.max(1.0) * 1000.0);
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

    figures.report(rounds, connections, seconds);
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
            if rss * 1.048_576 <= 15.0 && ready <= 100.0 {
                "met"
            } else {
                "NOT met"
            },
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
        gateway_shipped,
        gateway_two,
        replica,
        gateway_uncached,
        gateway_plain,
        user,
        user_plain,
        query,
        query_plain,
        uncached,
        config,
        hello,
        bare_gateway,
        bare_query,
    ] {
        process.stop().await?;
    }
    Ok(())
}

/// One side of an alternating comparison: the URL loaded (with an API key or none) and the
/// processes whose CPU is measured, by name.
#[derive(Clone, Copy)]
struct Side<'a> {
    url: &'a str,
    key: Option<&'a str>,
    processes: &'a [(&'a str, u32)],
}

/// Two sides in alternating halves (a, b, a, b): each one's load (rates averaged, the
/// worse percentiles kept) and its processes' CPU per request, and the load generator's
/// (`client`).
async fn alternating(
    seconds: u64,
    a: Side<'_>,
    b: Side<'_>,
    connections: u32,
) -> Result<(Load, CpuPer, Load, CpuPer)> {
    let half = seconds.div_ceil(2);
    let mut runs: Vec<(Load, CpuPer)> = Vec::new();
    for _ in 0..2 {
        for side in [a, b] {
            runs.push(
                with_cpu(
                    side.processes,
                    wrk(side.url, side.key, half, connections, None),
                )
                .await?,
            );
        }
    }
    let combine = |x: &(Load, CpuPer), y: &(Load, CpuPer)| {
        (
            Load {
                rps: (x.0.rps + y.0.rps) / 2.0,
                requests: x.0.requests + y.0.requests,
                p50_ms: x.0.p50_ms.max(y.0.p50_ms),
                p99_ms: x.0.p99_ms.max(y.0.p99_ms),
            },
            mean_cpu(&x.1, &y.1),
        )
    };
    let (first, second) = (combine(&runs[0], &runs[2]), combine(&runs[1], &runs[3]));
    Ok((first.0, first.1, second.0, second.1))
}

/// Every round's figures, for the medians.
#[derive(Default)]
struct Figures {
    edge: Vec<f64>,
    edge_cpu: Vec<f64>,
    shipped: Vec<f64>,
    shipped_cpu: Vec<f64>,
    hop_p50: Vec<f64>,
    hop_p99: Vec<f64>,
    cached: Vec<(Load, CpuPer)>,
    floor: Vec<(Load, CpuPer, Load, CpuPer)>,
    read: Vec<f64>,
    read_cpu: Vec<(Load, CpuPer)>,
    pgbench_cpu: Vec<(Load, CpuPer)>,
    rls: Vec<f64>,
    write: Vec<(Load, CpuPer)>,
    h2: Vec<(&'static str, Load, Load)>,
    scale: Vec<(Load, CpuPer)>,
    mtls_p50: Vec<f64>,
    mtls_p99: Vec<f64>,
    per_thousand: Vec<f64>,
}

fn median(values: Vec<f64>) -> Option<f64> {
    (!values.is_empty()).then(|| borough_testkit::process::median(values))
}

/// The medians, over rounds, of the throughput, p99 and each process's CPU per request.
fn medians(runs: &[(Load, CpuPer)]) -> Option<(f64, f64, CpuPer)> {
    let first = runs.first()?;
    let cpu = first
        .1
        .iter()
        .map(|(name, _)| {
            let values = runs.iter().map(|(_, per)| cpu_of(per, name)).collect();
            (name.clone(), median(values).unwrap_or(f64::NAN))
        })
        .collect();
    Some((
        median(runs.iter().map(|(l, _)| l.rps).collect())?,
        median(runs.iter().map(|(l, _)| l.p99_ms).collect())?,
        cpu,
    ))
}

impl Figures {
    fn report(&self, rounds: usize, connections: u32, seconds: u64) {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
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
        let us = |v: f64| format!("{v:.1} us");
        let at_most = |limit: f64| move |v: f64| v <= limit;
        row(
            "edge: gateway /hello vs bare axum (RUST_LOG=error)",
            median(self.edge.clone()),
            &|v| format!("{v:.3}x"),
            ">= 0.9x",
            &|v| v >= 0.9,
        );
        row(
            "edge: gateway CPU per /hello (RUST_LOG=error)",
            median(self.edge_cpu.clone()),
            &us,
            "",
            &|_| true,
        );
        row(
            "edge as shipped: default logging, access log to a file",
            median(self.shipped.clone()),
            &|v| format!("{v:.3}x"),
            ">= 0.8x",
            &|v| v >= 0.8,
        );
        row(
            "edge as shipped: gateway CPU per /hello",
            median(self.shipped_cpu.clone()),
            &us,
            "",
            &|_| true,
        );
        row(
            "hop: REST->gRPC p50 added",
            median(self.hop_p50.clone()),
            &|v| format!("{v:.0} us"),
            "<= 100 us",
            &at_most(100.0),
        );
        row(
            "hop: REST->gRPC p99 added",
            median(self.hop_p99.clone()),
            &|v| format!("{v:.0} us"),
            "<= 300 us",
            &at_most(300.0),
        );
        match medians(&self.cached) {
            Some((rps, p99, cpu)) => {
                println!("| cached read: throughput / p99 | {rps:.0} rps / {p99:.2} ms | | |");
                row(
                    "cached read: gateway CPU per read",
                    Some(cpu_of(&cpu, "gateway")),
                    &us,
                    "<= 20 us",
                    &at_most(20.0),
                );
                row(
                    "cached read: query CPU per read",
                    Some(cpu_of(&cpu, "query")),
                    &us,
                    "<= 20 us",
                    &at_most(20.0),
                );
                row(
                    "cached read: all processes per read (load generator included)",
                    Some(cpu_total(&cpu)),
                    &us,
                    "",
                    &|_| true,
                );
            }
            None => println!("| cached read | (skipped) | | |"),
        }
        let ours: Vec<(Load, CpuPer)> = self.floor.iter().map(|f| (f.0, f.1.clone())).collect();
        let bare: Vec<(Load, CpuPer)> = self.floor.iter().map(|f| (f.2, f.3.clone())).collect();
        if let (Some((ours_rps, _, ours)), Some((bare_rps, _, bare))) =
            (medians(&ours), medians(&bare))
        {
            for role in ["gateway", "query"] {
                println!(
                    "| floor: {role} CPU per cached read, ours (internal TLS off) vs bare axum/tonic | {:.1} us vs {:.1} us (ours {:.1} us over it) | | |",
                    cpu_of(&ours, role),
                    cpu_of(&bare, role),
                    cpu_of(&ours, role) - cpu_of(&bare, role),
                );
            }
            println!(
                "| floor: cached read throughput, ours vs bare | {ours_rps:.0} vs {bare_rps:.0} rps ({:.2}x) | | |",
                ours_rps / bare_rps
            );
        }
        row(
            "read path: uncached read vs pgbench -S",
            median(self.read.clone()),
            &|v| format!("{:.0} %", v * 100.0),
            ">= 45 %",
            &|v| v >= 0.45,
        );
        let model = medians(&self.read_cpu);
        match &model {
            Some((rps, p99, cpu)) => {
                println!("| uncached read: throughput / p99 | {rps:.0} rps / {p99:.2} ms | | |");
                row(
                    "uncached read: gateway CPU per read",
                    Some(cpu_of(cpu, "gateway")),
                    &us,
                    "<= 20 us",
                    &at_most(20.0),
                );
                row(
                    "uncached read: query CPU per read",
                    Some(cpu_of(cpu, "query")),
                    &us,
                    "<= 20 us",
                    &at_most(20.0),
                );
                row(
                    "uncached read: PostgreSQL CPU per read",
                    Some(cpu_of(cpu, "postgres")),
                    &us,
                    "<= 50 us",
                    &at_most(50.0),
                );
                row(
                    "uncached read: wrk CPU per read",
                    Some(cpu_of(cpu, "client")),
                    &us,
                    "",
                    &|_| true,
                );
            }
            None => println!("| uncached read | (skipped) | | |"),
        }
        if let Some((tps, _, cpu)) = medians(&self.pgbench_cpu) {
            println!(
                "| pgbench -S: tps / PostgreSQL CPU per transaction / pgbench's | {tps:.0} / {:.1} us / {:.1} us | | |",
                cpu_of(&cpu, "postgres"),
                cpu_of(&cpu, "client")
            );
        }
        row(
            "isolation: RLS (shared) vs database tenant cost",
            median(self.rls.clone()),
            &|v| format!("{:.1} %", v * 100.0),
            "<= 10 %",
            &at_most(0.10),
        );
        match medians(&self.write) {
            Some((rps, p99, cpu)) => println!(
                "| write path: POST /api/v1/users | {rps:.0} rps, p99 {p99:.2} ms; CPU per write: {} | | |",
                show_cpu(&cpu)
            ),
            None => println!("| write path: POST /api/v1/users | (skipped) | | |"),
        }
        for what in ["hello", "cached"] {
            let runs: Vec<&(&str, Load, Load)> =
                self.h2.iter().filter(|(w, _, _)| *w == what).collect();
            if let (Some(h1), Some(h2)) = (
                median(runs.iter().map(|(_, h1, _)| h1.rps).collect()),
                median(runs.iter().map(|(_, _, h2)| h2.rps).collect()),
            ) {
                println!(
                    "| h2load {what}: HTTP/1.1 vs h2c, {connections} connections | {h1:.0} vs {h2:.0} rps ({:.2}x) | | |",
                    h2 / h1
                );
            }
        }
        if let (Some((one, _, cpu)), Some((two, _, two_cpu))) = (&model, medians(&self.scale)) {
            // The machine's cores, all busy: reads a second = cores / CPU per read.
            let cores = std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64);
            let predicted = cores * 1e6 / cpu_total(cpu);
            println!(
                "| scaling: two query replicas, uncached | {two:.0} rps (one replica {one:.0}; model {predicted:.0} = {cores} cores / {:.1} us per read); CPU per read: {} | | |",
                cpu_total(cpu),
                show_cpu(&two_cpu)
            );
        }
        row(
            "mTLS: REST->gRPC hop p50 added (vs internal TLS off)",
            median(self.mtls_p50.clone()),
            &|v| format!("{v:.0} us"),
            "<= 30 us",
            &at_most(30.0),
        );
        row(
            "mTLS: REST->gRPC hop p99 added (vs internal TLS off)",
            median(self.mtls_p99.clone()),
            &|v| format!("{v:.0} us"),
            "",
            &|_| true,
        );
        row(
            "mTLS: handshakes per 1,000 calls (connection reuse)",
            median(self.per_thousand.clone()),
            &|v| format!("{v:.3}"),
            "",
            &|_| true,
        );
    }
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
    // This process alone: its children are the services.
    let cpu = borough_testkit::cpu::own()?;
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
    let spent = borough_testkit::cpu::own()? - cpu;
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
