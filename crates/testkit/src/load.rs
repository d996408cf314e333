//! A tenant's readers and writers against a gateway, checking what they see: the load a
//! tenant move runs under (tests and `make bench-move`).
//!
//! Writers create a user, then rename it (`If-Match`), over and over, each write with an
//! `Idempotency-Key`; readers read users written before and check they are never older
//! than acknowledged, and now and then read one as another tenant (never found). Every
//! request that does not answer as expected is a failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// What the load saw.
#[derive(Default)]
pub struct Seen {
    /// Every acknowledged write: user id -> the version acknowledged last.
    pub acked: Mutex<HashMap<String, i64>>,
    ids: Mutex<Vec<String>>,
    /// The first failures (at most 20), described.
    pub failures: Mutex<Vec<String>>,
    pub failed: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    /// The slowest write since [`Seen::reset_slowest`], in microseconds, and when it
    /// started.
    slowest_write_us: AtomicU64,
    slowest_started: std::sync::Mutex<Option<Instant>>,
}

impl Seen {
    async fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().await;
        if failures.len() < 20 {
            failures.push(what);
        }
    }

    fn wrote(&self, started: Instant) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed().as_micros() as u64;
        if self.slowest_write_us.fetch_max(took, Ordering::Relaxed) < took
            && let Ok(mut at) = self.slowest_started.lock()
        {
            *at = Some(started);
        }
    }

    /// The slowest write since the last reset, and when it started.
    pub fn slowest_write(&self) -> (Duration, Option<Instant>) {
        let at = self.slowest_started.lock().ok().and_then(|at| *at);
        (
            Duration::from_micros(self.slowest_write_us.load(Ordering::Relaxed)),
            at,
        )
    }

    pub fn reset_slowest(&self) {
        self.slowest_write_us.store(0, Ordering::Relaxed);
    }
}

/// Readers and writers running until [`Load::stop`].
pub struct Load {
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// `writers` writers and `readers` readers as the tenant of `key` on the gateway at
    /// `gateway` (`http://…`); readers also read as `other_key`'s tenant.
    pub fn start(
        http: &reqwest::Client,
        gateway: &str,
        key: &str,
        other_key: &str,
        writers: usize,
        readers: usize,
    ) -> Load {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let run = Run {
            http: http.clone(),
            gateway: gateway.to_owned(),
            key: key.to_owned(),
            other_key: other_key.to_owned(),
            seen: seen.clone(),
            stop: stop.clone(),
        };
        for n in 0..writers {
            tasks.push(tokio::spawn(run.clone().write(n)));
        }
        for n in 0..readers {
            tasks.push(tokio::spawn(run.clone().read(n)));
        }
        Load { seen, stop, tasks }
    }

    /// Stops the load and waits for the requests in flight.
    pub async fn stop(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.seen
    }
}

#[derive(Clone)]
struct Run {
    http: reqwest::Client,
    gateway: String,
    key: String,
    other_key: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Run {
    async fn write(self, n: usize) {
        let mut i = 0u64;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        while !self.stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            let created = self
                .http
                .post(format!("{}/api/v1/users", self.gateway))
                .bearer_auth(&self.key)
                .header("idempotency-key", format!("w{n}-{i}-{tag}"))
                .json(&json!({ "name": format!("W{n} {i}"), "email": format!("w{n}-{i}-{tag}@load.example") }))
                .send()
                .await;
            self.seen.wrote(started);
            let body: Value = match created {
                Ok(r) if r.status() == 201 => match r.json().await {
                    Ok(body) => body,
                    Err(e) => {
                        self.seen.fail(format!("create body: {e}")).await;
                        continue;
                    }
                },
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.seen.fail(format!("create: {status} {text}")).await;
                    continue;
                }
                Err(e) => {
                    self.seen.fail(format!("create: {e}")).await;
                    continue;
                }
            };
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            self.seen.acked.lock().await.insert(id.clone(), 1);
            self.seen.ids.lock().await.push(id.clone());
            let started = Instant::now();
            let renamed = self
                .http
                .patch(format!("{}/api/v1/users/{id}", self.gateway))
                .bearer_auth(&self.key)
                .header("if-match", "\"1\"")
                .json(&json!({ "name": format!("W{n} {i} renamed") }))
                .send()
                .await;
            self.seen.wrote(started);
            match renamed {
                Ok(r) if r.status() == 200 => {
                    self.seen.acked.lock().await.insert(id, 2);
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.seen.fail(format!("rename: {status} {text}")).await;
                }
                Err(e) => self.seen.fail(format!("rename: {e}")).await,
            }
        }
    }

    async fn read(self, n: usize) {
        let mut i = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            i += 1;
            let picked = {
                let ids = self.seen.ids.lock().await;
                (!ids.is_empty()).then(|| ids[(i * 7919 + n * 104_729) % ids.len()].clone())
            };
            let Some(id) = picked else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let acked = self.seen.acked.lock().await.get(&id).copied().unwrap_or(0);
            let as_other = i.is_multiple_of(10);
            let response = self
                .http
                .get(format!("{}/api/v1/users/{id}", self.gateway))
                .bearer_auth(if as_other { &self.other_key } else { &self.key })
                .send()
                .await;
            self.seen.reads.fetch_add(1, Ordering::Relaxed);
            match response {
                Ok(r) if as_other => {
                    if r.status() != 404 {
                        let status = r.status();
                        self.seen
                            .fail(format!("another tenant read {id}: {status}"))
                            .await;
                    }
                }
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    let version = body["version"].as_i64().unwrap_or(0);
                    if body["id"] != id.as_str() || version < acked {
                        self.seen
                            .fail(format!(
                                "read {id}: version {version} < acknowledged {acked} ({body})"
                            ))
                            .await;
                    }
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.seen.fail(format!("read {id}: {status} {text}")).await;
                }
                Err(e) => self.seen.fail(format!("read {id}: {e}")).await,
            }
        }
    }
}

/// Starts a move of `tenant` (`body`: the target) through the admin API and follows it
/// until `until` (a phase) or past it; fails if it fails or is cancelled.
pub async fn move_tenant(
    http: &reqwest::Client,
    gateway: &str,
    admin_token: &str,
    tenant: &str,
    body: Value,
    until: &str,
) -> anyhow::Result<Moved> {
    let started = Instant::now();
    let response = http
        .post(format!("{gateway}/admin/v1/tenants/{tenant}:move"))
        .bearer_auth(admin_token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let first: Value = response.json().await?;
    anyhow::ensure!(status == 202, "move: {status} {first}");
    let location = location.ok_or_else(|| anyhow::anyhow!("no Location"))?;
    let mut phases: Vec<String> = Vec::new();
    let mut switched_after = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let seen: Value = http
            .get(format!("{gateway}{location}"))
            .bearer_auth(admin_token)
            .send()
            .await?
            .json()
            .await?;
        let phase = seen["phase"].as_str().unwrap_or_default().to_owned();
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if switched_after.is_none() && ["switched", "cleaning", "done"].contains(&phase.as_str()) {
            switched_after = Some(started.elapsed());
        }
        let reached = match until {
            "switched" => switched_after.is_some(),
            other => phase == other,
        };
        if reached {
            return Ok(Moved {
                location,
                last: seen,
                phases,
                switched_after: switched_after.unwrap_or_default(),
                took: started.elapsed(),
            });
        }
        match phase.as_str() {
            "failed" | "cancelled" => anyhow::bail!("the move ended {phase}: {seen}"),
            _ if Instant::now() > deadline => anyhow::bail!("the move did not finish: {seen}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A move as followed by [`move_tenant`].
#[derive(Debug)]
pub struct Moved {
    /// `/admin/v1/tenants/{id}/moves/{move_id}`.
    pub location: String,
    /// The move as last seen.
    pub last: Value,
    /// The phases seen, in order.
    pub phases: Vec<String>,
    /// From the start to the first look at it switched.
    pub switched_after: Duration,
    /// From the start to `until`.
    pub took: Duration,
}
