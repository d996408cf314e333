//! The `borough-gateway` binary as an operator runs it, following its platform config:
//! started from a snapshot while the config service is down, then catching up, with the
//! log level changing live.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borough_proto::config::v1::PutRequest;
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_testkit::TestDatabase;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_borough-gateway");

async fn wait_for(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !check().await? {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_gateway_starts_from_its_snapshot_catches_up_and_changes_log_level_live()
-> anyhow::Result<()> {
    borough_telemetry::logging::init_test_logging();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (http, admin, config_addr) = (free()?, free()?, free()?);
    let snapshot = std::env::temp_dir().join(format!(
        "borough-bin-test-{}.json",
        uuid::Uuid::now_v7().simple()
    ));
    // The last configuration this gateway had: warnings only.
    std::fs::write(&snapshot, r#"{"revision":5,"values":{"log.level":"warn"}}"#)?;

    let mut child = tokio::process::Command::new(BIN)
        .envs(support::tls_env())
        .env("BOROUGH_HTTP_ADDR", http.to_string())
        .env("BOROUGH_ADMIN_ADDR", admin.to_string())
        .env("BOROUGH_CONFIG_URL", format!("https://{config_addr}"))
        .env("BOROUGH_CONFIG_SNAPSHOT", &snapshot)
        .env("BOROUGH_USER_URL", "https://127.0.0.1:9")
        .env("BOROUGH_QUERY_URL", "https://127.0.0.1:9")
        .env("BOROUGH_LOG_FORMAT", "json")
        .env("BOROUGH_ACCESS_LOG", "all")
        .env("BOROUGH_SHUTDOWN_GRACE", "0s")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    tokio::spawn({
        let lines = lines.clone();
        async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        }
    });
    let logged = |needle: &'static str| {
        let lines = lines.clone();
        move || {
            lines
                .lock()
                .map(|l| l.iter().filter(|x| x.contains(needle)).count())
                .unwrap_or(0)
        }
    };
    let hello_lines = logged("/hello");
    let client = reqwest::Client::new();

    // Up, on its snapshot (said on /readyz), logging warnings only: no access log line.
    wait_for("the gateway", async || {
        Ok(client
            .get(format!("http://{http}/hello"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
    })
    .await?;
    let readyz: serde_json::Value = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        readyz["notes"]
            .to_string()
            .contains("snapshot at revision 5"),
        "{readyz}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hello_lines(),
        0,
        "an access log line at INFO despite the warn filter"
    );

    // The config service comes up on its address, with a newer log level: the gateway
    // catches up (no restart) and logs requests at INFO again.
    let db = TestDatabase::create().await?;
    let settings = borough_config::Settings::from_env(&support::service_env(
        &db,
        borough_testkit::pg::Login::Config,
        &[],
    ))?;
    let listeners = borough_config::Listeners {
        api: tokio::net::TcpListener::bind(config_addr).await?,
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = tokio::spawn(borough_config::serve(settings, listeners, async {
        let _ = stopped.await;
    }));
    let mut grpc = ConfigServiceClient::new(borough_testkit::tls::channel(
        &format!("https://{config_addr}"),
        "gateway",
        "config",
    )?);
    grpc.put(PutRequest {
        namespace: "platform/gateway".into(),
        key: "log.level".into(),
        value_json: "\"info\"".into(),
        expected_revision: None,
    })
    .await?;
    wait_for("the new log level", async || {
        let _ = client.get(format!("http://{http}/hello")).send().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(hello_lines() > 0)
    })
    .await?;
    let readyz: serde_json::Value = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(readyz["notes"], serde_json::json!([]), "{readyz}");
    // The snapshot file comes to hold the live configuration (it is written after the
    // revision is applied: under load, a moment after the new level shows).
    wait_for("the snapshot to hold the new level", async || {
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&snapshot)?).unwrap_or_default();
        Ok(saved["values"]["log.level"] == "info")
    })
    .await?;

    child.kill().await?;
    let _ = stop.send(());
    config.await??;
    let _ = std::fs::remove_file(&snapshot);
    Ok(())
}

#[path = "api/support/mod.rs"]
mod support;

/// GETs of `/hello` from `workers` clients until `stop`: (answered 200, failures).
fn hello_load(
    url: String,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    (0..workers)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut ok, mut failures) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failures.push(r.status().to_string()),
                        Err(e) => failures.push(format!("{e:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (ok, failures)
            })
        })
        .collect()
}

#[tokio::test]
async fn the_gateway_is_upgraded_in_place_under_load_without_a_failed_request_and_a_broken_upgrade_rolls_back()
-> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let user = support::spawn_user(&db).await?;
    let query = support::spawn_query(&db).await?;
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (http, old_admin, new_admin, broken_admin) = (free()?, free()?, free()?, free()?);
    let snapshot = std::env::temp_dir().join(format!(
        "borough-upgrade-{}.json",
        uuid::Uuid::now_v7().simple()
    ));
    let settings = [
        ("BOROUGH_HTTP_ADDR", http.to_string()),
        ("BOROUGH_REUSE_PORT", "true".to_owned()),
        ("BOROUGH_USER_URL", user.grpc_url(0)),
        ("BOROUGH_QUERY_URL", query.grpc_url(0)),
        ("BOROUGH_SHUTDOWN_GRACE", "500ms".to_owned()),
        ("BOROUGH_PROBE_INTERVAL", "100ms".to_owned()),
        ("BOROUGH_CONFIG_SNAPSHOT", snapshot.display().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut old = tokio::process::Command::new(BIN)
        .envs(support::tls_env())
        .envs(settings.iter().cloned())
        .env("BOROUGH_ADMIN_ADDR", old_admin.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let old_pid = old.id().unwrap_or_default();
    borough_testkit::wait_for_status(
        &format!("http://{old_admin}/readyz"),
        200,
        Duration::from_secs(20),
    )
    .await?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = hello_load(format!("http://{http}/hello"), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The upgrade: the same binary as the "new version", on its own admin port.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/upgrade-gateway.sh"
    );
    let upgrade = |to: u32, admin: std::net::SocketAddr| {
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(script)
            .arg(to.to_string())
            .arg(BIN)
            .arg(admin.to_string())
            .envs(support::tls_env())
            .envs(settings.iter().cloned())
            .env("BOROUGH_UPGRADE_TIMEOUT", "20")
            .env("BOROUGH_UPGRADE_LOG", "/dev/null");
        command
    };
    let result = upgrade(old_pid, new_admin).output().await?;
    let log = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "upgrade failed: {log}");
    let new_pid: u32 = String::from_utf8_lossy(&result.stdout).trim().parse()?;
    assert_ne!(new_pid, old_pid);
    let exited = tokio::time::timeout(Duration::from_secs(5), old.wait()).await;
    assert!(exited.is_ok(), "the old gateway exited after draining");

    // A broken new version (it cannot start: a bad setting): rolled back, still serving.
    let broken = upgrade(new_pid, broken_admin)
        .env("BOROUGH_USER_URL", "not a url")
        .env("BOROUGH_UPGRADE_TIMEOUT", "5")
        .output()
        .await?;
    assert_eq!(
        broken.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(String::from_utf8_lossy(&broken.stderr).contains("rolling back"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for worker in load {
        let (n, f) = worker.await?;
        ok += n;
        failures.extend(f);
    }
    assert!(ok > 100, "only {ok} requests");
    let total = ok + failures.len() as u64;
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {failures:?}",
        failures.len()
    );
    // The new gateway is the one serving; stop it.
    let _ = std::process::Command::new("kill")
        .arg(new_pid.to_string())
        .status();
    Ok(())
}

/// Starts the gateway binary as shipped (no `RUST_LOG`, JSON to standard output) with
/// `access_log` (unset: the default), sends `GET /hello` (200) and `GET /no-such-route`
/// (404), stops it with SIGTERM and returns every line it wrote.
async fn access_log_lines(access_log: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (http, admin) = (free()?, free()?);
    let mut command = tokio::process::Command::new(BIN);
    command
        .envs(support::tls_env())
        .env("BOROUGH_HTTP_ADDR", http.to_string())
        .env("BOROUGH_ADMIN_ADDR", admin.to_string())
        .env("BOROUGH_CONFIG_URL", "https://127.0.0.1:9")
        .env("BOROUGH_USER_URL", "https://127.0.0.1:9")
        .env("BOROUGH_QUERY_URL", "https://127.0.0.1:9")
        .env("BOROUGH_SHUTDOWN_GRACE", "0s")
        .env_remove("RUST_LOG")
        .env_remove("BOROUGH_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(mode) = access_log {
        command.env("BOROUGH_ACCESS_LOG", mode);
    }
    let mut child = command.spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let client = reqwest::Client::new();
    wait_for("the gateway", async || {
        Ok(client
            .get(format!("http://{http}/hello"))
            .header("x-request-id", "hello-1")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
    })
    .await?;
    let missing = client
        .get(format!("http://{http}/no-such-route"))
        .header("x-request-id", "missing-1")
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    // SIGTERM: the gateway drains and flushes its log output before it exits.
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("exited early"))?;
    tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text).await?;
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The access log lines (target `access`) among `lines`, by request id.
fn access_lines(lines: &[serde_json::Value]) -> Vec<(String, serde_json::Value)> {
    lines
        .iter()
        .filter(|l| l["target"] == "access")
        .map(|l| {
            (
                l["span"]["request_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                l.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn as_shipped_the_access_log_has_errors_but_not_fast_successes_and_off_has_none()
-> anyhow::Result<()> {
    let lines = access_log_lines(None).await?;
    let access = access_lines(&lines);
    let ids: Vec<&str> = access.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        ids.contains(&"missing-1"),
        "the 404 was not logged: {lines:?}"
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("hello")),
        "a fast 200 was logged by default: {access:?}"
    );

    let lines = access_log_lines(Some("off")).await?;
    assert_eq!(
        access_lines(&lines),
        vec![],
        "access lines with the log off"
    );
    Ok(())
}

#[tokio::test]
async fn an_access_log_line_carries_each_field_once() -> anyhow::Result<()> {
    let lines = access_log_lines(Some("all")).await?;
    let access = access_lines(&lines);
    let (_, hello) = access
        .iter()
        .find(|(id, _)| id.starts_with("hello"))
        .ok_or_else(|| anyhow::anyhow!("no line for /hello: {lines:?}"))?;
    let span = &hello["span"];
    assert_eq!(span["http.request.method"], "GET", "{hello}");
    assert_eq!(span["http.route"], "/hello", "{hello}");
    assert_eq!(span["http.response.status_code"], 200, "{hello}");
    assert_eq!(span["url.path"], "/hello", "{hello}");
    assert!(
        span["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{hello}"
    );
    assert!(hello["fields"]["duration_ms"].is_number(), "{hello}");
    // No field twice under another name, and nothing only an exporter needs.
    for duplicate in [
        "method",
        "route",
        "status",
        "latency_ms",
        "otel.name",
        "otel.kind",
    ] {
        assert!(
            span.get(duplicate).is_none() && hello["fields"].get(duplicate).is_none(),
            "{duplicate} in {hello}"
        );
    }
    let (_, missing) = access
        .iter()
        .find(|(id, _)| id == "missing-1")
        .ok_or_else(|| anyhow::anyhow!("no line for the 404: {lines:?}"))?;
    assert_eq!(
        missing["span"]["http.response.status_code"], 404,
        "{missing}"
    );
    Ok(())
}
