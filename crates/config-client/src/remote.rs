//! The config service's client: a service's `platform/<service>` namespace, kept current.
//!
//! At start it loads the last snapshot from a local file (so a service whose config service
//! is down starts with the last values it had, and says so), then lists the namespace and
//! watches it from that revision, forever, reconnecting with its last revision (the watch
//! replays what was missed). Every applied revision is written back to the snapshot file and
//! reported to the config service (`GET /admin/v1/config/status`).
//!
//! Readers get a [`tokio::sync::watch::Receiver`]: the current value without locks.
//! [`RemoteConfig::typed`] turns the raw snapshot into typed settings, refusing (and
//! logging) values that do not parse while keeping the previous ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::config::v1::watch_event::Event;
use borough_proto::config::v1::{ListRequest, ReportAppliedRequest, WatchRequest};
use serde_json::Value;
use tokio::sync::watch;

use crate::{Env, SettingsError, Var};

/// How a service follows its platform namespace.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// [`RemoteSettings::URL`]; `None`: no remote configuration (environment only).
    pub url: Option<String>,
    /// [`RemoteSettings::SNAPSHOT`].
    pub snapshot: PathBuf,
    /// [`RemoteSettings::INSTANCE`]: this process in the status report.
    pub instance: String,
}

impl RemoteSettings {
    pub const URL: Var = Var::new(
        "BOROUGH_CONFIG_URL",
        "unset; the gateway's config API: https://127.0.0.1:50053 (http:// with \
         BOROUGH_INTERNAL_TLS=off)",
        "The config service (http(s)://host:port, a list for several): follow \
         platform/<service> for hot settings; the gateway also serves the config API through \
         it. Unset: environment only",
    );
    pub const SNAPSHOT: Var = Var::new(
        "BOROUGH_CONFIG_SNAPSHOT",
        "<temp dir>/borough-config-<service>.json",
        "Where the last applied platform/<service> values are kept, to start from when the \
         config service is down",
    );
    pub const INSTANCE: Var = Var::new(
        "BOROUGH_INSTANCE",
        "<hostname>-<pid>",
        "This process's name in the config service's status report",
    );
    pub const VARS: &[&Var] = &[&Self::URL, &Self::SNAPSHOT, &Self::INSTANCE];

    pub fn from_env(env: &Env, service: &str) -> Result<Self, SettingsError> {
        let url = match env.optional(&Self::URL) {
            Some(_) => Some(env.url(&Self::URL, &["http", "https"])?),
            None => None,
        };
        let snapshot = env
            .optional(&Self::SNAPSHOT)
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("borough-config-{service}.json")));
        let instance = env.optional(&Self::INSTANCE).unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned());
            format!("{host}-{}", std::process::id())
        });
        Ok(RemoteSettings {
            url,
            snapshot,
            instance,
        })
    }
}

/// The namespace's values at a revision.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub revision: i64,
    pub values: BTreeMap<String, Value>,
}

impl Snapshot {
    /// The values as settings' text, read by hot key with the settings' own parsers
    /// ([`Env::hot`]): a string as it is, a number or a boolean as written (so `3` for a
    /// duration is three seconds, as in the environment); anything else as its JSON, which
    /// the parser refuses.
    pub fn hot(&self) -> Env {
        Env::hot(self.values.iter().map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), text)
        }))
    }
}

/// Where the current values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nothing from the config service yet: environment defaults.
    Defaults,
    /// The snapshot file, because the config service has not been reached.
    Snapshot { revision: i64 },
    /// Following the config service.
    Live { revision: i64 },
}

impl Source {
    /// A note for `/readyz` when not live.
    pub fn note(&self) -> Option<String> {
        match self {
            Source::Live { .. } => None,
            Source::Defaults => {
                Some("config service not reached yet: running on defaults".to_owned())
            }
            Source::Snapshot { revision } => Some(format!(
                "config service unreachable: running on the snapshot at revision {revision}"
            )),
        }
    }
}

/// A followed namespace.
#[derive(Clone)]
pub struct RemoteConfig {
    pub snapshot: watch::Receiver<Snapshot>,
    pub source: watch::Receiver<Source>,
}

impl RemoteConfig {
    /// Follows `platform/<service>` as `settings` say, over `channel` (a lazily connected
    /// channel to the config service, which reconnects by itself). Without a channel, the
    /// values stay empty (every typed setting keeps its environment value).
    pub fn start(
        service: &'static str,
        settings: RemoteSettings,
        channel: Option<tonic::transport::Channel>,
    ) -> RemoteConfig {
        let loaded = load(&settings.snapshot);
        let source = match &loaded {
            Some(snapshot) => {
                tracing::info!(revision = snapshot.revision, file = %settings.snapshot.display(), "loaded the config snapshot");
                Source::Snapshot {
                    revision: snapshot.revision,
                }
            }
            None => Source::Defaults,
        };
        let (snapshot_tx, snapshot) = watch::channel(loaded.unwrap_or_default());
        let (source_tx, source_rx) = watch::channel(source);
        if let Some(channel) = channel {
            tokio::spawn(follow(service, channel, settings, snapshot_tx, source_tx));
        }
        RemoteConfig {
            snapshot,
            source: source_rx,
        }
    }

    /// Typed settings from the snapshot: `parse` builds them from the current values over
    /// `initial` (the environment's settings: a key deleted from the namespace reverts to
    /// it); a snapshot it refuses is logged and the previous settings kept.
    pub fn typed<T>(
        &self,
        initial: T,
        parse: impl Fn(&Snapshot, &T) -> Result<T, String> + Send + 'static,
    ) -> watch::Receiver<T>
    where
        T: Clone + PartialEq + Send + Sync + std::fmt::Debug + 'static,
    {
        let first = match parse(&self.snapshot.borrow(), &initial) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(error = %e, "invalid configuration in the snapshot: keeping the defaults");
                initial.clone()
            }
        };
        let (tx, rx) = watch::channel(first);
        let mut snapshots = self.snapshot.clone();
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                let snapshot = snapshots.borrow_and_update().clone();
                let current = tx.borrow().clone();
                match parse(&snapshot, &initial) {
                    Ok(next) if next != current => {
                        tracing::info!(revision = snapshot.revision, settings = ?next, "configuration reloaded");
                        if tx.send(next).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(
                        revision = snapshot.revision,
                        error = %e,
                        "invalid configuration refused: keeping the previous value"
                    ),
                }
            }
        });
        rx
    }
}

fn load(path: &PathBuf) -> Option<Snapshot> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the config snapshot is unreadable: ignored");
            None
        }
    }
}

/// Writes the snapshot beside its final name, then renames: never half a file.
fn save(path: &PathBuf, snapshot: &Snapshot) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(snapshot)?)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %path.display(), error = %e, "could not save the config snapshot");
    }
}

async fn follow(
    service: &'static str,
    channel: tonic::transport::Channel,
    settings: RemoteSettings,
    snapshot_tx: watch::Sender<Snapshot>,
    source_tx: watch::Sender<Source>,
) {
    let namespace = format!("platform/{service}");
    let mut listed = false;
    let mut warned = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = async {
            let mut client = ConfigServiceClient::new(channel.clone());
            if !listed {
                // The whole namespace once, page by page; from then on, only changes. The
                // watch starts from the first page's revision: what changed while the
                // later pages were read is replayed (and applied again, harmlessly).
                let mut values = BTreeMap::new();
                let mut revision = None;
                let mut page_token = String::new();
                loop {
                    let page = client
                        .list(ListRequest {
                            namespace: namespace.clone(),
                            prefix: String::new(),
                            page_size: 1000,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    revision.get_or_insert(page.revision);
                    for entry in page.entries {
                        if let Ok(value) = serde_json::from_str(&entry.value_json) {
                            values.insert(entry.key, value);
                        }
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                let snapshot = Snapshot {
                    revision: revision.unwrap_or(0),
                    values,
                };
                save(&settings.snapshot, &snapshot);
                let revision = snapshot.revision;
                snapshot_tx.send_replace(snapshot);
                listed = true;
                // The whole namespace as of `revision` is applied: say so now, not only when
                // the first change arrives.
                source_tx.send_replace(Source::Live { revision });
                let report = ReportAppliedRequest {
                    instance: settings.instance.clone(),
                    service: service.to_owned(),
                    revision,
                };
                if let Err(e) = client.report_applied(report).await {
                    tracing::debug!(error = %e, "could not report the applied config revision");
                }
            }
            let from = snapshot_tx.borrow().revision;
            let mut events = client
                .watch(WatchRequest {
                    namespaces: vec![namespace.clone()],
                    from_revision: from,
                })
                .await?
                .into_inner();
            while let Some(event) = events.message().await? {
                match event.event {
                    Some(Event::Change(change)) => {
                        let mut snapshot = snapshot_tx.borrow().clone();
                        snapshot.revision = change.revision;
                        match change
                            .new_value_json
                            .as_deref()
                            .and_then(|v| serde_json::from_str(v).ok())
                        {
                            Some(value) => snapshot.values.insert(change.key, value),
                            None => snapshot.values.remove(&change.key),
                        };
                        save(&settings.snapshot, &snapshot);
                        snapshot_tx.send_replace(snapshot);
                    }
                    Some(Event::Synced(_)) | None => {}
                }
                let revision = snapshot_tx.borrow().revision;
                source_tx.send_replace(Source::Live { revision });
                let report = ReportAppliedRequest {
                    instance: settings.instance.clone(),
                    service: service.to_owned(),
                    revision,
                };
                if let Err(e) = client.report_applied(report).await {
                    tracing::debug!(error = %e, "could not report the applied config revision");
                }
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        if let Err(status) = &result
            && status.metadata().contains_key(COMPACTED_METADATA)
        {
            // History this client had not seen was pruned: start again from a list.
            tracing::warn!(
                message = status.message(),
                "config history compacted: listing again"
            );
            listed = false;
            continue;
        }
        if let Err(status) = result {
            if !warned {
                let revision = snapshot_tx.borrow().revision;
                tracing::warn!(code = ?status.code(), message = status.message(), revision, "config service unreachable: keeping the current configuration");
                warned = true;
            }
            let current = source_tx.borrow().clone();
            if let Source::Live { revision } = current {
                source_tx.send_replace(Source::Snapshot { revision });
            }
        } else {
            warned = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub use borough_proto::config::COMPACTED_METADATA;

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Var = Var::new("BOROUGH_TTL", "30s", "test").hot("cache.ttl");
    const SIZE: Var = Var::new("BOROUGH_SIZE", "1MiB", "test").hot("http.body_limit");

    #[test]
    fn hot_values_parse_as_the_environment_would_and_odd_json_is_refused() {
        let snapshot = |value: Value| Snapshot {
            revision: 1,
            values: [
                ("cache.ttl".to_owned(), value.clone()),
                ("http.body_limit".to_owned(), value),
            ]
            .into_iter()
            .collect(),
        };
        let ttl = |value| snapshot(value).hot().duration_or(&TTL, Duration::ZERO);
        assert_eq!(ttl(Value::from("250ms")), Ok(Duration::from_millis(250)));
        assert_eq!(
            ttl(Value::from(3)),
            Ok(Duration::from_secs(3)),
            "seconds, as BOROUGH_TTL=3"
        );
        assert!(ttl(Value::from("soon")).is_err());
        assert!(ttl(Value::from(-1)).is_err());
        assert!(
            ttl(Value::from(u64::MAX)).is_err(),
            "bounded: never a deadline that overflows"
        );
        assert!(ttl(serde_json::json!({"s": 1})).is_err());
        let size = |value| snapshot(value).hot().bytes_or(&SIZE, 0);
        assert_eq!(size(Value::from("1MiB")), Ok(1024 * 1024));
        assert_eq!(size(Value::from(4096)), Ok(4096));
        assert!(size(Value::Bool(true)).is_err());
        assert!(size(Value::from(u64::MAX)).is_err());
    }
}
