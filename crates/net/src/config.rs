//! Following the platform configuration: what every service does with
//! `borough_config_client::remote`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use borough_config_client::remote::{RemoteConfig, RemoteSettings};
use borough_telemetry::Readiness;

/// The key of the log filter (`RUST_LOG` syntax) in every `platform/<service>` namespace.
pub const LOG_LEVEL_KEY: &str = "log.level";

/// The follower of `platform/<service>` for these settings: started on first use, shared
/// after (one watch and one snapshot file per process and settings, however many parts of
/// the service read it).
pub fn platform_config(service: &'static str, settings: &RemoteSettings) -> RemoteConfig {
    static FOLLOWERS: Mutex<BTreeMap<(String, String, PathBuf), RemoteConfig>> =
        Mutex::new(BTreeMap::new());
    let key = (
        service.to_owned(),
        settings.url.clone().unwrap_or_default(),
        settings.snapshot.clone(),
    );
    let mut followers = FOLLOWERS.lock().unwrap_or_else(|p| p.into_inner());
    followers
        .entry(key)
        .or_insert_with(|| RemoteConfig::start(service, settings.clone()))
        .clone()
}

/// Starts following `platform/<service>`: applies `log.level` as it changes (an invalid
/// filter is refused and logged), and shows on `/readyz` when the service runs on a
/// snapshot or on defaults because the config service is unreachable.
pub fn follow_platform_config(
    service: &'static str,
    settings: RemoteSettings,
    readiness: &Readiness,
) -> RemoteConfig {
    let remote = platform_config(service, &settings);
    let mut source = remote.source.clone();
    let readiness = readiness.clone();
    tokio::spawn(async move {
        loop {
            let note = source.borrow_and_update().note();
            readiness.set_note("config", note);
            if source.changed().await.is_err() {
                return;
            }
        }
    });
    let mut level = remote.typed(None::<String>, |snapshot, _| {
        match snapshot.values.get(LOG_LEVEL_KEY) {
            None => Ok(None),
            Some(serde_json::Value::String(filter)) => {
                // Checked here, so an invalid filter is refused and the last one kept.
                borough_telemetry::logging::check_filter(filter)?;
                Ok(Some(filter.clone()))
            }
            Some(other) => Err(format!("{LOG_LEVEL_KEY} must be a string, not {other}")),
        }
    });
    tokio::spawn(async move {
        loop {
            let filter = level.borrow_and_update().clone();
            let filter = filter.unwrap_or_else(|| {
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| borough_telemetry::logging::DEFAULT_FILTER.to_owned())
            });
            if let Err(e) = borough_telemetry::logging::set_filter(&filter) {
                tracing::debug!(error = %e, "log filter not applied");
            } else {
                tracing::info!(filter = %filter, "log filter applied");
            }
            if level.changed().await.is_err() {
                return;
            }
        }
    });
    remote
}
