//! `make bench-config`: put -> delivered latency at many watchers, memory per watch stream,
//! and missed revisions, against the release `borough-config` binary on a throwaway
//! PostgreSQL.
//!
//! Settings: `BENCH_WATCHERS` (1000), `BENCH_PUTS` (200 per round), `BENCH_ROUNDS` (3).

#![allow(clippy::print_stdout)] // Its output is the report.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::config::v1::watch_event::Event;
use borough_proto::config::v1::{PutRequest, WatchRequest};
use tonic::transport::Channel;

/// Watch streams per HTTP/2 connection (servers cap concurrent streams per connection).
const STREAMS_PER_CONNECTION: usize = 100;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    borough_testkit::process::percentile(sorted, p).unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let watchers = env_usize("BENCH_WATCHERS", 1000)?;
    let puts = env_usize("BENCH_PUTS", 200)?;
    let rounds = env_usize("BENCH_ROUNDS", 3)?;

    // PostgreSQL and the service, as a separate process so its memory is its own.
    let cluster = borough_testkit::own_cluster()?;
    let db = borough_testkit::TestDatabase::create_on(&cluster).await?;
    let port = borough_testkit::pg::free_port()?;
    let admin_port = borough_testkit::pg::free_port()?;
    let binary = std::env::current_exe()?
        .parent()
        .context("no binary directory")?
        .join("borough-config");
    let mut service = tokio::process::Command::new(&binary)
        .envs(borough_testkit::tls::pki()?.env())
        .env("BOROUGH_DATABASE_URL", &db.config_url)
        .env("BOROUGH_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("BOROUGH_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = service.id().context("no pid")?;
    let url = format!("https://127.0.0.1:{port}");
    borough_testkit::wait_for_status(
        &format!("http://127.0.0.1:{admin_port}/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await?;

    // Over mutual TLS, as the gateway (which may write platform configuration).
    let mut writer =
        ConfigServiceClient::new(borough_testkit::tls::channel(&url, "gateway", "config")?);
    writer
        .put(PutRequest {
            namespace: "platform/bench".into(),
            key: "warmup".into(),
            value_json: "0".into(),
            expected_revision: None,
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = borough_testkit::process::rss_kib(pid)?;

    // The watchers: each records when it received each revision.
    let received: Arc<Mutex<HashMap<i64, Vec<Instant>>>> = Arc::default();
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..watchers.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(borough_testkit::tls::channel(&url, "gateway", "config")?);
    }
    let from = writer
        .get(borough_proto::config::v1::GetRequest {
            namespace: "platform/bench".into(),
            key: "warmup".into(),
        })
        .await?
        .into_inner()
        .revision;
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for i in 0..watchers {
        let mut client = ConfigServiceClient::new(channels[i / STREAMS_PER_CONNECTION].clone());
        let received = received.clone();
        let synced = synced_tx.clone();
        tokio::spawn(async move {
            let Ok(response) = client
                .watch(WatchRequest {
                    namespaces: vec!["platform/bench".into()],
                    from_revision: from,
                })
                .await
            else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                match event.event {
                    Some(Event::Synced(_)) => {
                        let _ = synced.send(()).await;
                    }
                    Some(Event::Change(change)) => {
                        let at = Instant::now();
                        if let Ok(mut received) = received.lock() {
                            received.entry(change.revision).or_default().push(at);
                        }
                    }
                    None => {}
                }
            }
        });
    }
    for _ in 0..watchers {
        synced_rx.recv().await.context("a watcher failed")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watching_rss = borough_testkit::process::rss_kib(pid)?;
    let per_stream = (watching_rss.saturating_sub(idle_rss) as f64 * 1024.0) / watchers as f64;

    println!("borough-config bench: {watchers} watchers, {puts} puts x {rounds} rounds");
    println!(
        "  service RSS idle {idle_rss} KiB, with watchers {watching_rss} KiB: {:.1} KB per watch stream",
        per_stream / 1000.0
    );
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut missed_total = 0_usize;
    for round in 0..rounds {
        let mut sent: Vec<(i64, Instant)> = Vec::with_capacity(puts);
        for n in 0..puts {
            let at = Instant::now();
            let entry = writer
                .put(PutRequest {
                    namespace: "platform/bench".into(),
                    key: format!("k{}", n % 10),
                    value_json: n.to_string(),
                    expected_revision: None,
                })
                .await?
                .into_inner();
            sent.push((entry.revision, at));
            // About 100 puts a second: a config workload, not a write benchmark.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let received = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut latencies = Vec::with_capacity(puts * watchers);
        let mut missed = 0;
        for (revision, at) in &sent {
            let times = received
                .get(revision)
                .map(Vec::as_slice)
                .unwrap_or_default();
            missed += watchers.saturating_sub(times.len());
            latencies.extend(times.iter().map(|t| t.saturating_duration_since(*at)));
        }
        latencies.sort();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!(
            "  round {}: put->delivered p50 {:.2} ms, p99 {:.2} ms over {} deliveries; missed {missed}",
            round + 1,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            latencies.len()
        );
        p50s.push(p50);
        p99s.push(p99);
        missed_total += missed;
    }
    p50s.sort();
    p99s.sort();
    let (p50, p99) = (p50s[p50s.len() / 2], p99s[p99s.len() / 2]);
    println!(
        "  median of rounds: p50 {:.2} ms, p99 {:.2} ms (target p99 <= 50 ms: {}); {:.1} KB per stream (target <= 20 KB: {}); missed revisions {missed_total} (target 0: {})",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        if p99 <= Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        },
        per_stream / 1000.0,
        if per_stream <= 20_000.0 {
            "met"
        } else {
            "NOT met"
        },
        if missed_total == 0 { "met" } else { "NOT met" },
    );
    service.kill().await?;
    drop(cluster);
    Ok(())
}
