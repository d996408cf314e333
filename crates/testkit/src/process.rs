//! A Borough service binary as a separate process (benches): its ports, readiness, RSS,
//! and a graceful stop.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use crate::pg::free_port;
use crate::wait_for_status;

/// Why a start failed: the process exited before it was ready (worth another try on
/// other ports), or anything else.
enum StartError {
    Exited(anyhow::Error),
    Failed(anyhow::Error),
}
use StartError::{Exited, Failed};

/// One service process and the ports it serves.
pub struct ServiceProcess {
    pub name: &'static str,
    pub api: u16,
    pub admin: u16,
    api_var: &'static str,
    env: Vec<(String, String)>,
    child: Child,
    /// From spawn to the first `/readyz` 200.
    pub ready_after: Duration,
}

impl ServiceProcess {
    /// Starts `bin/name` with `env`, its API (`api_var`) and admin ports on 127.0.0.1
    /// (`ports`, or free ones), and waits until `/readyz` answers 200.
    pub async fn start(
        bin: &Path,
        name: &'static str,
        api_var: &'static str,
        ports: Option<(u16, u16)>,
        env: &[(String, String)],
    ) -> Result<ServiceProcess> {
        Self::start_probing(bin, name, api_var, ports, env, None).await
    }

    /// As [`ServiceProcess::start`], but as a user runs it: no `RUST_LOG` (the default log
    /// level and access log), standard output written to `stdout` (a file, as a service
    /// manager or a container runtime would take it).
    pub async fn start_as_shipped(
        bin: &Path,
        name: &'static str,
        api_var: &'static str,
        env: &[(String, String)],
        stdout: &Path,
    ) -> Result<ServiceProcess> {
        Self::launch(bin, name, api_var, None, env, None, Some(stdout)).await
    }

    /// As [`ServiceProcess::start`], ready when `GET <api><api_probe>` answers 200 instead
    /// (for a binary without an admin port). A process that exits before it is ready (a
    /// port picked here taken meanwhile, say) is started again on other ports, twice at
    /// most; its standard error is kept in the temp directory and shown if it never gets
    /// there.
    pub async fn start_probing(
        bin: &Path,
        name: &'static str,
        api_var: &'static str,
        ports: Option<(u16, u16)>,
        env: &[(String, String)],
        api_probe: Option<&str>,
    ) -> Result<ServiceProcess> {
        Self::launch(bin, name, api_var, ports, env, api_probe, None).await
    }

    /// Starts a process: quiet (`RUST_LOG=error`, standard output discarded) unless
    /// `stdout` is given (then default logging, written there).
    async fn launch(
        bin: &Path,
        name: &'static str,
        api_var: &'static str,
        ports: Option<(u16, u16)>,
        env: &[(String, String)],
        api_probe: Option<&str>,
        stdout: Option<&Path>,
    ) -> Result<ServiceProcess> {
        let attempts = if ports.is_some() { 1 } else { 3 };
        // Internal calls are mutual TLS on the test PKI unless the caller chose otherwise.
        let mut env = env.to_vec();
        if !env
            .iter()
            .any(|(k, _)| k == "BOROUGH_TLS_DIR" || k == "BOROUGH_INTERNAL_TLS")
        {
            env.extend(
                crate::tls::pki()?
                    .env()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
            );
        }
        let env = env.as_slice();
        let mut attempt = 1;
        loop {
            match Self::start_once(bin, name, api_var, ports, env, api_probe, stdout).await {
                Ok(process) => return Ok(process),
                Err(Exited(e)) if attempt < attempts => {
                    eprintln!("{name} exited before it was ready ({e:#}); starting it again");
                    attempt += 1;
                }
                Err(Exited(e) | Failed(e)) => return Err(e),
            }
        }
    }

    async fn start_once(
        bin: &Path,
        name: &'static str,
        api_var: &'static str,
        ports: Option<(u16, u16)>,
        env: &[(String, String)],
        api_probe: Option<&str>,
        stdout: Option<&Path>,
    ) -> Result<ServiceProcess, StartError> {
        let (api, admin) = match ports {
            Some(ports) => ports,
            None => (free_port().map_err(Failed)?, free_port().map_err(Failed)?),
        };
        let log = std::env::temp_dir().join(format!(
            "borough-{name}-{}-{api}.stderr",
            std::process::id()
        ));
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("creating {}", log.display()))
            .map_err(Failed)?;
        let mut command = Command::new(bin.join(name));
        match stdout {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))
                    .map_err(Failed)?;
                command.env_remove("RUST_LOG").stdout(file);
            }
            None => {
                command.env("RUST_LOG", "error").stdout(Stdio::null());
            }
        }
        let started = Instant::now();
        let child = command
            .envs(env.iter().cloned())
            .env(api_var, format!("127.0.0.1:{api}"))
            .env("BOROUGH_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.join(name).display()))
            .map_err(Failed)?;
        let mut process = ServiceProcess {
            name,
            api,
            admin,
            api_var,
            env: env.to_vec(),
            child,
            ready_after: Duration::ZERO,
        };
        let client = reqwest::Client::new();
        let url = match api_probe {
            Some(path) => format!("{}{path}", process.url()),
            None => process.admin_url("/readyz"),
        };
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                break;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = said.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Exited(anyhow::anyhow!(
                    "{name} exited ({status}) before it was ready; its standard error ({}):\n{}",
                    log.display(),
                    tail.join("\n")
                )));
            }
            if started.elapsed() > Duration::from_secs(30) {
                wait_for_status(&url, 200, Duration::ZERO)
                    .await
                    .with_context(|| format!("{name} did not become ready"))
                    .map_err(Failed)?;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        process.ready_after = started.elapsed();
        Ok(process)
    }

    /// `http://127.0.0.1:<api port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }

    /// The API port as a gRPC URL: `https://` (mutual TLS), or `http://` when this process
    /// was started with `BOROUGH_INTERNAL_TLS=off`.
    pub fn grpc_url(&self) -> String {
        let plain = self
            .env
            .iter()
            .any(|(k, v)| k == "BOROUGH_INTERNAL_TLS" && v == "off");
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://127.0.0.1:{}", self.api)
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// The process id (`None` once it has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id().context("exited")?)
    }

    /// SIGTERM, then waits (up to 30 s) for the drain to end.
    pub async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("{} did not drain in 30 s", self.name))??;
        Ok(())
    }

    /// Stops this process and starts it again on the same ports.
    pub async fn restart(self, bin: &Path) -> Result<ServiceProcess> {
        let (name, api_var, ports, env) = (
            self.name,
            self.api_var,
            (self.api, self.admin),
            self.env.clone(),
        );
        self.stop().await?;
        ServiceProcess::start(bin, name, api_var, Some(ports), &env).await
    }
}

/// Resident memory of process `pid` now, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The directory of the running binary (where the release service binaries are).
pub fn binary_dir() -> Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no binary directory")?
        .to_path_buf())
}

/// The `p` quantile (0.0–1.0) of `sorted` latencies, by nearest rank (`None` when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    let index = (last as f64 * p).round() as usize;
    sorted.get(index.min(last)).copied()
}

/// The median of `values` (NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank_and_nothing_from_no_samples() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(ms(51)));
        assert_eq!(percentile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(percentile(&sorted, 1.0), Some(ms(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
