//! `make bench-client`: what Borough's backend client costs a call, against the clients it
//! could be built from — in one process, over two in-process gRPC servers on loopback
//! (`grpc.health.v1` Check: the smallest call there is), plaintext:
//!
//! - `channel`: one tonic `Channel` to one server (the floor: no balancing at all);
//! - `tonic_p2c`: tonic's `Channel::balance_list` over both (tower's `p2c` with every
//!   endpoint's load 0: a random ready one, behind a `Buffer`);
//! - `tower_ewma`: tower's `p2c::Balance` over `PeakEwma`-wrapped channels behind a
//!   `Buffer` (what adopting tower's balancing and load would look like);
//! - `borough`: `borough_net::client::Backend` over both (health checks, a breaker per
//!   endpoint, p2c on EWMA latency, the retry policy and budget, metrics) — as shipped.
//!
//! Each round runs every client, in a rotated order, for `BENCH_SECONDS` with one caller
//! (latency p50 and p99: the hop's own cost) and then with `BENCH_CONNECTIONS` callers
//! (calls a second, and this process's CPU per call: both servers are the same for every
//! client, so the differences are the clients'). Medians over `BENCH_ROUNDS` (3).
//! Writes `target/bench/client.json`.

#![allow(clippy::print_stdout)] // Its output is the report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use borough_net::client::{Backend, ClientMetrics, ClientSettings, RetryPolicy};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const POLICY: RetryPolicy = RetryPolicy {
    idempotent: &["/grpc.health.v1.Health/Check"],
    keyed: &[],
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Request = http::Request<tonic::body::Body>;
type Boxed = tower::util::BoxService<Request, http::Response<tonic::body::Body>, tower::BoxError>;
type TowerBuffer = tower::buffer::Buffer<Request, <Boxed as tower::Service<Request>>::Future>;

/// A client of one kind, as a service a `HealthClient` can call.
#[derive(Clone)]
enum Client {
    Channel(Channel),
    Tower(TowerService),
    Borough(Backend),
}

impl Client {
    async fn check(&self) -> bool {
        let request = || {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(Duration::from_secs(5));
            request
        };
        match self {
            Client::Channel(channel) => HealthClient::new(channel.clone())
                .check(request())
                .await
                .is_ok(),
            Client::Tower(tower) => HealthClient::new(tower.clone())
                .check(request())
                .await
                .is_ok(),
            Client::Borough(backend) => HealthClient::new(backend.clone())
                .check(request())
                .await
                .is_ok(),
        }
    }
}

/// The tower stack as a tonic client's service.
#[derive(Clone)]
struct TowerService(TowerBuffer);

impl tower::Service<Request> for TowerService {
    type Response = http::Response<tonic::body::Body>;
    type Error = tower::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Box::pin(self.0.call(request))
    }
}

/// tower's p2c over PeakEwma-wrapped channels, behind a buffer.
fn tower_ewma(addrs: &[SocketAddr]) -> Result<Client> {
    let services: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect_lazy();
            Ok(tower::load::PeakEwma::new(
                channel,
                Duration::from_millis(1),
                10e9, // a 10 s decay, in nanoseconds: as ours
                tower::load::CompleteOnResponse::default(),
            ))
        })
        .collect::<Result<_>>()?;
    let balance = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
    let boxed: Boxed = tower::util::BoxService::new(balance);
    Ok(Client::Tower(TowerService(tower::buffer::Buffer::new(
        boxed, 1024,
    ))))
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    cpu_us: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1e6
}

async fn measure(client: &Client, seconds: u64, callers: usize) -> Result<Figures> {
    // Warm: connections made, health checks passed, EWMA settled.
    for _ in 0..200 {
        client.check().await;
    }
    // One caller: the hop's latency.
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let started = Instant::now();
        if client.check().await {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    // Many callers: throughput and CPU per call.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let me = borough_testkit::cpu::Tree {
        root: std::process::id(),
    };
    let cpu_before = me.cpu()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..callers)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.check().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (me.cpu()? - cpu_before).as_secs_f64();
    let calls = done.load(Ordering::Relaxed).max(1) as f64;
    Ok(Figures {
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        rps: calls / elapsed,
        cpu_us: cpu / calls * 1e6,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let callers: usize = env_or("BENCH_CONNECTIONS", 32);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let addrs = [
        borough_testkit::grpc::health_server().await?,
        borough_testkit::grpc::health_server().await?,
    ];
    let urls = addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let metrics = borough_telemetry::Metrics::new("bench");
    let clients: Vec<(&str, Client)> = vec![
        (
            "channel",
            Client::Channel(
                Endpoint::from_shared(format!("http://{}", addrs[0]))?
                    .tcp_nodelay(true)
                    .connect_lazy(),
            ),
        ),
        (
            "tonic_p2c",
            Client::Channel(Channel::balance_list(addrs.iter().map(|a| {
                Endpoint::from_shared(format!("http://{a}"))
                    .map(|e| e.tcp_nodelay(true))
                    .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"))
            }))),
        ),
        ("tower_ewma", tower_ewma(&addrs)?),
        (
            "borough",
            Client::Borough(Backend::new(
                "bench",
                "BENCH_URLS",
                &urls,
                ClientSettings::default(),
                POLICY,
                &ClientMetrics::register(&metrics),
                None,
            )?),
        ),
    ];
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); clients.len()];
    for round in 0..rounds {
        // Rotate the order, so no client always runs on a warmer (or cooler) machine.
        for k in 0..clients.len() {
            let i = (k + round) % clients.len();
            let (name, client) = &clients[i];
            let figures = measure(client, seconds, callers).await?;
            println!(
                "round {}: {name:<10} p50 {:>6.1} µs  p99 {:>6.1} µs  {:>8.0} calls/s  {:>5.1} µs CPU/call",
                round + 1,
                figures.p50_us,
                figures.p99_us,
                figures.rps,
                figures.cpu_us
            );
            results[i].push(figures);
        }
    }
    let mut report = serde_json::Map::new();
    println!("\nmedians of {rounds} rounds ({seconds} s each, {callers} callers for throughput):");
    let floor = median(results[0].iter().map(|f| f.cpu_us).collect());
    let floor_p50 = median(results[0].iter().map(|f| f.p50_us).collect());
    for ((name, _), figures) in clients.iter().zip(&results) {
        let p50 = median(figures.iter().map(|f| f.p50_us).collect());
        let p99 = median(figures.iter().map(|f| f.p99_us).collect());
        let rps = median(figures.iter().map(|f| f.rps).collect());
        let cpu = median(figures.iter().map(|f| f.cpu_us).collect());
        println!(
            "  {name:<10} p50 {p50:>6.1} µs ({:+.1} over channel)  p99 {p99:>6.1} µs  {rps:>8.0} calls/s  {cpu:>5.1} µs CPU/call ({:+.1})",
            p50 - floor_p50,
            cpu - floor
        );
        report.insert(
            (*name).to_owned(),
            serde_json::json!({"p50_us": p50, "p99_us": p99, "rps": rps, "cpu_us_per_call": cpu}),
        );
    }
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/client.json",
        serde_json::to_vec_pretty(&serde_json::Value::Object(report))?,
    )?;
    Ok(())
}
