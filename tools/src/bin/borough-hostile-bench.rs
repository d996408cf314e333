//! `make bench-hostile`: a hostile tenant (and an anonymous caller) against the release
//! binaries, as shipped (default settings), while a calm tenant keeps working. For each
//! attack it reports the peak RSS of the gateway, user and config services (sampled every
//! 20 ms), the calm tenant's p99 and errors during the attack, and what the attack got.
//!
//! 1. `labels`: 400 invented HTTP methods; series on the gateway's `/metrics`.
//! 2. `import`: an 8 MB import body of bad lines; the report's size.
//! 3. `history`: config history and lists of large values read in parallel.
//! 4. `schema`: writes against a catastrophic-backtracking `pattern`; calm config writes.
//! 5. `watch`: 500 SSE watches from one tenant; calm config writes.
//! 6. `slowloris`: 300 half-sent requests; how many are still open after 15 s.
//! 7. `keys`: 10,000 random well-formed API keys; calls reaching the user service.
//! 8. `nul`: NUL bytes in a search, a config value and a schema; 5xx answers.
//!
//! Settings: `BENCH_ONLY` (a subset, e.g. `import,keys`), `BENCH_BIN_DIR` (the service
//! binaries to attack: default, beside this one). Writes `target/bench/hostile.json`.

#![allow(clippy::print_stdout)] // Its output is the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use borough_testkit::TestDatabase;
use borough_testkit::pg::Login;
use borough_testkit::process::{ServiceProcess, percentile, rss_kib};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

struct Stack {
    http: reqwest::Client,
    gateway: ServiceProcess,
    user: ServiceProcess,
    config: ServiceProcess,
    _query: ServiceProcess,
    calm_key: String,
    calm_user: String,
    attacker_key: String,
}

impl Stack {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        [&self.gateway, &self.user, &self.config]
            .into_iter()
            .filter_map(|p| p.pid().map(|pid| (p.name, pid)))
            .collect()
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn create_tenant(http: &reqwest::Client, gateway: &str, name: &str) -> Result<String> {
    let response = http
        .post(format!("{gateway}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("creating a tenant: {}", response.status());
    }
    let body: Value = response.json().await?;
    body["api_key"]["key"]
        .as_str()
        .map(str::to_owned)
        .context("no api key")
}

async fn start(bin: &Path, db: &TestDatabase) -> Result<Stack> {
    let service = |login| {
        let mut env = db.env_for(login);
        env.extend(pairs(&[("BOROUGH_SHUTDOWN_GRACE", "0s")]));
        env
    };
    let config = ServiceProcess::start(
        bin,
        "borough-config",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::Config),
    )
    .await?;
    let user = ServiceProcess::start(
        bin,
        "borough-user",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::User),
    )
    .await?;
    let query = ServiceProcess::start(
        bin,
        "borough-query",
        "BOROUGH_GRPC_ADDR",
        None,
        &service(Login::Query),
    )
    .await?;
    let gateway = ServiceProcess::start(
        bin,
        "borough-gateway",
        "BOROUGH_HTTP_ADDR",
        None,
        &pairs(&[
            ("BOROUGH_USER_URL", &user.grpc_url()),
            ("BOROUGH_QUERY_URL", &query.grpc_url()),
            ("BOROUGH_CONFIG_URL", &config.grpc_url()),
            ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BOROUGH_SHUTDOWN_GRACE", "0s"),
            (
                "BOROUGH_CONFIG_SNAPSHOT",
                &std::env::temp_dir()
                    .join(format!("borough-hostile-{}.json", std::process::id()))
                    .display()
                    .to_string(),
            ),
        ]),
    )
    .await?;
    let http = reqwest::Client::new();
    let calm_key = create_tenant(&http, &gateway.url(), "calm").await?;
    let attacker_key = create_tenant(&http, &gateway.url(), "attacker").await?;
    let created: Value = http
        .post(format!("{}/api/v1/users", gateway.url()))
        .bearer_auth(&calm_key)
        .json(&json!({"name": "Calm", "email": "calm@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let calm_user = created["id"].as_str().context("no user id")?.to_owned();
    Ok(Stack {
        http,
        gateway,
        user,
        config,
        _query: query,
        calm_key,
        calm_user,
        attacker_key,
    })
}

/// Peak RSS (MiB) of each process while `stop` is false, sampled every 20 ms.
fn sample_rss(
    pids: Vec<(&'static str, u32)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(&'static str, f64)>> {
    tokio::spawn(async move {
        let mut peak = vec![0_u64; pids.len()];
        while !stop.load(Ordering::Acquire) {
            for (i, (_, pid)) in pids.iter().enumerate() {
                if let Ok(kib) = rss_kib(*pid) {
                    peak[i] = peak[i].max(kib);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pids.iter()
            .zip(peak)
            .map(|((name, _), kib)| (*name, kib as f64 / 1024.0))
            .collect()
    })
}

/// What the calm tenant saw: p99 (ms) and failed requests.
struct Calm {
    p99_ms: f64,
    requests: usize,
    errors: u64,
}

/// The calm tenant reads its user (and, with `config`, writes a config key) every 20 ms
/// until `stop`.
fn calm_tenant(
    stack: &Stack,
    config: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Calm> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let get = stack.url(&format!("/api/v1/users/{}", stack.calm_user));
    let put = stack.url("/api/v1/config/calm/setting");
    let key = stack.calm_key.clone();
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut n = 0_u64;
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let request = if config {
                n += 1;
                http.put(&put).json(&json!({ "n": n }))
            } else {
                http.get(&get)
            };
            match request.bearer_auth(&key).send().await {
                Ok(r) if r.status().is_success() => {}
                _ => errors += 1,
            }
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.sort();
        Calm {
            p99_ms: percentile(&latencies, 0.99).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            requests: latencies.len(),
            errors,
        }
    })
}

/// Runs `attack` with the RSS sampler and the calm tenant around it; the attack's own
/// figures plus peak RSS and the calm tenant's.
async fn measured<F, Fut>(stack: &Stack, calm_config: bool, attack: F) -> Result<Value>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(stack.pids(), stop.clone());
    let calm = calm_tenant(stack, calm_config, stop.clone());
    let started = Instant::now();
    let result = attack().await;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let rss = rss.await?;
    let calm = calm.await?;
    let mut figures = result?;
    figures["seconds"] = json!(round(seconds));
    figures["peak_rss_mib"] = rss
        .iter()
        .map(|(name, mib)| {
            (
                name.trim_start_matches("borough-").to_owned(),
                json!(round(*mib)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    figures["calm"] = json!({
        "p99_ms": round(calm.p99_ms),
        "requests": calm.requests,
        "errors": calm.errors,
    });
    Ok(figures)
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or
/// `wait` passes): the bytes read.
async fn raw(addr: &str, request: &[u8], wait: Duration) -> Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    Ok(out)
}

async fn series_count(http: &reqwest::Client, admin: &str) -> Result<usize> {
    let text = http.get(admin).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count())
}

async fn labels(stack: &Stack) -> Result<Value> {
    let metrics = stack.gateway.admin_url("/metrics");
    let before = series_count(&stack.http, &metrics).await?;
    let addr = format!("127.0.0.1:{}", stack.gateway.api);
    for i in 0..400 {
        let request = format!("M{i} /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw(&addr, request.as_bytes(), Duration::from_secs(2)).await?;
    }
    let after = series_count(&stack.http, &metrics).await?;
    Ok(json!({ "series_before": before, "series_after": after }))
}

async fn import(stack: &Stack) -> Result<Value> {
    let body = "x\n".repeat(4 * 1024 * 1024);
    let response = stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(&stack.attacker_key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let report = response.bytes().await?;
    Ok(json!({ "status": status, "report_bytes": report.len() }))
}

async fn history(stack: &Stack) -> Result<Value> {
    let big = "x".repeat(60 * 1024);
    let mut refused = 0;
    let mut stored = 0;
    for i in 0..300 {
        let response = stack
            .http
            .put(stack.url("/api/v1/config/big/key"))
            .bearer_auth(&stack.attacker_key)
            .json(&json!({ "i": i, "pad": big }))
            .send()
            .await?;
        if response.status().is_success() {
            stored += 1;
        } else {
            refused += 1;
            if response.status() == 429 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for i in 0..200 {
        let response = stack
            .http
            .put(stack.url(&format!("/api/v1/config/big/k{i}")))
            .bearer_auth(&stack.attacker_key)
            .json(&json!({ "pad": big }))
            .send()
            .await?;
        if response.status().is_success() {
            stored += 1;
        } else {
            refused += 1;
        }
    }
    // The writes spent the tenant's burst: let it refill before reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut readers = Vec::new();
    let bytes = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    for n in 0..8 {
        let http = stack.http.clone();
        let key = stack.attacker_key.clone();
        let url = if n % 2 == 0 {
            stack.url("/api/v1/config/big/key/history?limit=1000")
        } else {
            stack.url("/api/v1/config/big")
        };
        let bytes = bytes.clone();
        readers.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Ok(response) = http.get(&url).bearer_auth(&key).send().await
                    && let Ok(body) = response.bytes().await
                {
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for reader in readers {
        reader.await?;
    }
    Ok(json!({
        "writes_stored": stored,
        "writes_refused": refused,
        "read_mib": round(bytes.load(Ordering::Relaxed) as f64 / 1048576.0),
    }))
}

async fn schema(stack: &Stack) -> Result<Value> {
    // Fifty properties, each a pattern whose back-reference makes a backtracking engine
    // take it whole; `(a|a)*` then doubles its paths with every `a` (about 30 ms each on
    // fancy-regex, to its backtrack limit).
    let properties: serde_json::Map<String, Value> = (0..50)
        .map(|i| {
            (
                format!("p{i}"),
                json!({ "type": "string", "pattern": "^(a|a)*\\1$" }),
            )
        })
        .collect();
    let response = stack
        .http
        .put(stack.url("/api/v1/config/evil:schema"))
        .bearer_auth(&stack.attacker_key)
        .json(&json!({ "type": "object", "properties": properties }))
        .send()
        .await?;
    let schema_status = response.status().as_u16();
    let evil = format!("{}b", "a".repeat(40));
    let value: serde_json::Map<String, Value> =
        (0..50).map(|i| (format!("p{i}"), json!(evil))).collect();
    let value = Value::Object(value);
    let until = Instant::now() + Duration::from_secs(8);
    let mut writers = Vec::new();
    let done = Arc::new(AtomicU64::new(0));
    for _ in 0..4 {
        let http = stack.http.clone();
        let url = stack.url("/api/v1/config/evil/key");
        let key = stack.attacker_key.clone();
        let value = value.clone();
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let _ = http.put(&url).bearer_auth(&key).json(&value).send().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for writer in writers {
        writer.await?;
    }
    Ok(json!({
        "schema_status": schema_status,
        "attacker_writes": done.load(Ordering::Relaxed),
    }))
}

async fn watch(stack: &Stack) -> Result<Value> {
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..500 {
        // Paced under the tenant's default rate limit (100/s): every watch is admitted.
        tokio::time::sleep(Duration::from_millis(12)).await;
        let response = stack
            .http
            .get(stack.url("/api/v1/config/calm:watch"))
            .bearer_auth(&stack.attacker_key)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => open.push(r),
            _ => refused += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let opened = open.len();
    drop(open);
    Ok(json!({ "watches_open": opened, "watches_refused": refused }))
}

async fn slowloris(stack: &Stack) -> Result<Value> {
    let addr = format!("127.0.0.1:{}", stack.gateway.api);
    let mut streams = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .await?;
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut still_open = 0;
    for mut stream in streams {
        let mut buf = [0_u8; 1];
        // A closed connection reads EOF (or an error) at once; an open one times out.
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Err(_) => still_open += 1,
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(_)) => {}
        }
    }
    Ok(json!({ "half_sent": 300, "still_open_after_15s": still_open }))
}

async fn metric_sum(http: &reqwest::Client, admin: &str, name: &str, contains: &str) -> f64 {
    let Ok(response) = http.get(admin).send().await else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(contains))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn keys(stack: &Stack) -> Result<Value> {
    let metrics = stack.user.admin_url("/metrics");
    let name = "borough_grpc_server_calls_total";
    let method = "AuthenticateApiKey";
    let before = metric_sum(&stack.http, &metrics, name, method).await;
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let http = stack.http.clone();
        let url = stack.url("/api/v1/users?limit=1");
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<u16, u64>::new();
            for i in 0..625_u64 {
                let mut secret = [0_u8; 16];
                let mut prefix = [0_u8; 6];
                let _ = getrandom::fill(&mut secret);
                let _ = getrandom::fill(&mut prefix);
                let key = format!("bk_{}_{}", hex::encode(prefix), hex::encode(secret));
                let status = match http.get(&url).bearer_auth(&key).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *seen.entry(status).or_default() += 1;
                let _ = (worker, i);
            }
            seen
        }));
    }
    for task in tasks {
        for (status, n) in task.await? {
            *statuses.entry(status).or_default() += n;
        }
    }
    let after = metric_sum(&stack.http, &metrics, name, method).await;
    Ok(json!({
        "keys": 10_000,
        "backend_calls": after - before,
        "statuses": statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "seconds": round(started.elapsed().as_secs_f64()),
    }))
}

async fn nul(stack: &Stack) -> Result<Value> {
    let mut statuses = Vec::new();
    let search = stack
        .http
        .get(stack.url("/api/v1/users?q=a%00b"))
        .bearer_auth(&stack.attacker_key)
        .send()
        .await?;
    statuses.push(("search q", search.status().as_u16()));
    let value = stack
        .http
        .put(stack.url("/api/v1/config/nul/key"))
        .bearer_auth(&stack.attacker_key)
        .header("content-type", "application/json")
        .body(r#"{"a":"x\u0000y"}"#)
        .send()
        .await?;
    statuses.push(("config value", value.status().as_u16()));
    let schema = stack
        .http
        .put(stack.url("/api/v1/config/nul:schema"))
        .bearer_auth(&stack.attacker_key)
        .header("content-type", "application/json")
        .body(r#"{"type":"object","description":"\u0000"}"#)
        .send()
        .await?;
    statuses.push(("config schema", schema.status().as_u16()));
    Ok(json!({
        "server_errors": statuses.iter().filter(|(_, s)| *s >= 500).count(),
        "statuses": statuses.iter().map(|(what, s)| ((*what).to_owned(), json!(s))).collect::<serde_json::Map<_, _>>(),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|m| m.trim() == name);
    let bin: PathBuf = match std::env::var_os("BENCH_BIN_DIR") {
        Some(dir) => dir.into(),
        None => borough_testkit::process::binary_dir()?,
    };
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    let cluster = borough_testkit::own_cluster()?;
    let mut results = serde_json::Map::new();
    type Attack = for<'a> fn(
        &'a Stack,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Value>> + Send + 'a>,
    >;
    let attacks: [(&str, bool, Attack); 8] = [
        ("labels", false, |s| Box::pin(labels(s))),
        ("import", false, |s| Box::pin(import(s))),
        ("history", true, |s| Box::pin(history(s))),
        ("schema", true, |s| Box::pin(schema(s))),
        ("watch", true, |s| Box::pin(watch(s))),
        ("slowloris", false, |s| Box::pin(slowloris(s))),
        ("keys", false, |s| Box::pin(keys(s))),
        ("nul", false, |s| Box::pin(nul(s))),
    ];
    for (name, calm_config, attack) in attacks {
        if !run(name) {
            continue;
        }
        // Each attack on a fresh stack: peaks and counters are its own.
        let db = TestDatabase::create_on(&cluster).await?;
        let stack = start(&bin, &db).await?;
        let figures = measured(&stack, calm_config, || attack(&stack)).await;
        let figures = figures.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
        println!("{name:>10}: {figures}");
        results.insert(name.to_owned(), figures);
        for process in [stack.gateway, stack.user, stack.config, stack._query] {
            let _ = process.stop().await;
        }
    }
    std::fs::write(
        out.join("hostile.json"),
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    println!("written to target/bench/hostile.json");
    Ok(())
}
