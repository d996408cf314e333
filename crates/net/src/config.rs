//! Following the platform configuration: what every service does with
//! `borough_config_client::remote`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use borough_config_client::remote::{RemoteConfig, RemoteSettings};
use borough_telemetry::Readiness;

/// The key of the log filter (`RUST_LOG` syntax) in every `platform/<service>` namespace.
pub const LOG_LEVEL_KEY: &str = match borough_telemetry::settings::RUST_LOG.hot {
    Some(key) => key,
    None => panic!("RUST_LOG is declared with its hot key"),
};

/// A lazily connected channel to the config service at `url`: mutual TLS on `tls`
/// (expecting the config service's identity), plaintext without it.
pub fn config_channel(
    url: &str,
    tls: Option<&borough_tls::Materials>,
) -> Result<tonic::transport::Channel, String> {
    let secure = url.starts_with("https://");
    if secure != tls.is_some() {
        return Err(format!(
            "BOROUGH_CONFIG_URL={url:?}: inside Borough, calls are {}: use {}://",
            if tls.is_some() {
                "mutual TLS"
            } else {
                "plaintext (BOROUGH_INTERNAL_TLS=off)"
            },
            if tls.is_some() { "https" } else { "http" },
        ));
    }
    let timeout = std::time::Duration::from_secs(2);
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("BOROUGH_CONFIG_URL={url:?}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    Ok(match tls {
        Some(materials) => endpoint.connect_with_connector_lazy(
            borough_tls::client::Connector::new(materials, "config", None, timeout),
        ),
        None => endpoint.connect_lazy(),
    })
}

/// The follower of `platform/<service>` for these settings: started on first use, shared
/// after (one watch and one snapshot file per process and settings, however many parts of
/// the service read it).
pub fn platform_config(
    service: &'static str,
    settings: &RemoteSettings,
    tls: Option<&borough_tls::Materials>,
) -> RemoteConfig {
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
        .or_insert_with(|| {
            let channel = settings.url.as_deref().and_then(|url| {
                config_channel(url, tls)
                    .inspect_err(
                        |e| tracing::error!(error = %e, "not following the platform configuration"),
                    )
                    .ok()
            });
            RemoteConfig::start(service, settings.clone(), channel)
        })
        .clone()
}

/// Starts following `platform/<service>`: applies `log.level` as it changes (an invalid
/// filter is refused and logged), and shows on `/readyz` when the service runs on a
/// snapshot or on defaults because the config service is unreachable.
pub fn follow_platform_config(
    service: &'static str,
    settings: RemoteSettings,
    tls: Option<&borough_tls::Materials>,
    readiness: &Readiness,
) -> RemoteConfig {
    let remote = platform_config(service, &settings, tls);
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
                borough_config_client::Env::process().string(&borough_telemetry::settings::RUST_LOG)
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
