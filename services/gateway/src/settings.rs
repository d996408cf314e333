//! The gateway's settings, from `BOROUGH_*` environment variables.

use std::time::Duration;

use borough_config_client::{Env, ServerSettings, SettingsError};
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `BOROUGH_HTTP_ADDR` (127.0.0.1:8080): the REST API; `BOROUGH_ADMIN_ADDR`
    /// (127.0.0.1:9460): health and metrics; shutdown grace and probe interval.
    pub server: ServerSettings,
    /// `BOROUGH_USER_URL`, default `http://127.0.0.1:50051`.
    pub user_url: String,
    /// `BOROUGH_QUERY_URL`, default `http://127.0.0.1:50052`.
    pub query_url: String,
    /// `BOROUGH_CONFIG_URL`, default `http://127.0.0.1:50053`.
    pub config_url: String,
    /// `BOROUGH_ADMIN_TOKEN`: bearer token of the platform admin API. Unset: admin API off.
    pub admin_token: Option<SecretString>,
    /// `BOROUGH_REQUEST_TIMEOUT` (10s): every request's deadline, passed on to services.
    pub request_timeout: Duration,
    /// `BOROUGH_BODY_LIMIT` (1MiB): the largest request body accepted.
    pub body_limit: usize,
    /// `BOROUGH_AUTH_CACHE_TTL` (5s): how long an API key's tenant is cached; also the
    /// longest a key revoked through another gateway replica keeps working here.
    pub auth_cache_ttl: Duration,
    /// `BOROUGH_CORS_ORIGINS`: comma-separated origins allowed by CORS. Unset: CORS off.
    pub cors_origins: Vec<String>,
    /// `BOROUGH_STREAM_TIMEOUT` (10m): the deadline of exports and imports, which move
    /// whole tenants' data.
    pub stream_timeout: Duration,
    /// `BOROUGH_IMPORT_BODY_LIMIT` (256MiB): the largest import body.
    pub import_body_limit: usize,
    /// `BOROUGH_RATE_LIMIT_RPS` (100) and `BOROUGH_RATE_LIMIT_BURST` (200): every tenant's
    /// token bucket unless overridden in `platform/gateway`.
    pub rate_limit: crate::ratelimit::Policy,
    /// `BOROUGH_READ_YOUR_WRITES_TTL` (60s): how long this gateway remembers the versions
    /// it wrote, so that its reads never return an older one from a cache.
    pub read_your_writes_ttl: Duration,
    /// Discovery, balancing, circuit breaking and retries of backend calls
    /// (`BOROUGH_RESOLVE_INTERVAL`, `BOROUGH_BREAKER_*`, `BOROUGH_RETRY_*`, …).
    pub client: borough_net::client::ClientSettings,
    /// Connection bounds of the HTTP server (`BOROUGH_HTTP_MAX_CONNECTIONS`,
    /// `BOROUGH_HTTP_HEADER_TIMEOUT`, `BOROUGH_HTTP_IDLE_TIMEOUT`, …).
    pub connections: crate::server::ConnectionLimits,
    /// Bounds of failed authentication (`BOROUGH_AUTH_NEGATIVE_TTL`,
    /// `BOROUGH_AUTH_FAILURES_PER_SEC`, `BOROUGH_AUTH_FAILURE_BURST`).
    pub auth: crate::auth_guard::AuthLimits,
    /// Bounds of config watches (`BOROUGH_WATCH_MAX`, `BOROUGH_WATCH_MAX_PER_TENANT`,
    /// `BOROUGH_WATCH_MAX_DURATION`).
    pub watches: crate::watches::WatchLimits,
    /// `BOROUGH_IMPORT_REPORT_LIMIT` (1000): rejected import lines reported in full; the
    /// rest are counted.
    pub import_report_limit: usize,
    /// Mutual TLS with the services (`BOROUGH_TLS_*`, `BOROUGH_INTERNAL_TLS`).
    pub tls: borough_tls::TlsSettings,
    /// `BOROUGH_HTTP_TLS_CERT` and `BOROUGH_HTTP_TLS_KEY`: the gateway terminates TLS
    /// itself (HTTPS, ALPN `h2` and `http/1.1`) with this certificate and key, reloaded
    /// when they change. Unset (the default): plain HTTP, TLS left to a proxy in front.
    pub edge_tls: Option<EdgeTls>,
    /// `BOROUGH_ACCESS_LOG` (`all`, `errors-and-slow` — the default — or `off`) and
    /// `BOROUGH_ACCESS_LOG_SLOW` (500ms): which requests get an access log line.
    pub access_log: crate::middleware::AccessLog,
}

/// The files of the edge's certificate and key.
#[derive(Debug, Clone)]
pub struct EdgeTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The range `BOROUGH_REQUEST_TIMEOUT` and `http.request_timeout` must lie in.
pub const REQUEST_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);
/// The range `BOROUGH_BODY_LIMIT` and `http.body_limit` must lie in.
pub const BODY_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1..=1024 * 1024 * 1024;

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let admin_token = env.optional("BOROUGH_ADMIN_TOKEN");
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            return Err(SettingsError::Invalid {
                name: "BOROUGH_ADMIN_TOKEN".to_owned(),
                value: "***".to_owned(),
                reason: "must be at least 16 characters".to_owned(),
            });
        }
        let tls = borough_tls::TlsSettings::from_env(env, "gateway")?;
        // Inside Borough calls are mutual TLS (https), unless it is switched off.
        let scheme = match tls.mode {
            borough_tls::Mode::Mutual => "https",
            borough_tls::Mode::Off => "http",
        };
        let edge_tls = match (
            env.optional("BOROUGH_HTTP_TLS_CERT"),
            env.optional("BOROUGH_HTTP_TLS_KEY"),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(EdgeTls {
                cert: cert.into(),
                key: key.into(),
            }),
            (cert, _) => {
                return Err(SettingsError::Missing {
                    name: if cert.is_some() {
                        "BOROUGH_HTTP_TLS_KEY (with BOROUGH_HTTP_TLS_CERT)".to_owned()
                    } else {
                        "BOROUGH_HTTP_TLS_CERT (with BOROUGH_HTTP_TLS_KEY)".to_owned()
                    },
                });
            }
        };
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                "gateway",
                "BOROUGH_HTTP_ADDR",
                "127.0.0.1:8080",
                "127.0.0.1:9460",
            )?,
            user_url: env.url(
                "BOROUGH_USER_URL",
                &format!("{scheme}://127.0.0.1:50051"),
                &["http", "https"],
            )?,
            query_url: env.url(
                "BOROUGH_QUERY_URL",
                &format!("{scheme}://127.0.0.1:50052"),
                &["http", "https"],
            )?,
            config_url: env.url(
                "BOROUGH_CONFIG_URL",
                &format!("{scheme}://127.0.0.1:50053"),
                &["http", "https"],
            )?,
            tls,
            edge_tls,
            admin_token: admin_token.map(SecretString::from),
            request_timeout: env.duration_in(
                "BOROUGH_REQUEST_TIMEOUT",
                Duration::from_secs(10),
                REQUEST_TIMEOUT_RANGE,
            )?,
            stream_timeout: env.duration_in(
                "BOROUGH_STREAM_TIMEOUT",
                Duration::from_secs(600),
                Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            )?,
            import_body_limit: env.bytes_in(
                "BOROUGH_IMPORT_BODY_LIMIT",
                256 * 1024 * 1024,
                1..=64 * 1024 * 1024 * 1024,
            )?,
            rate_limit: {
                let policy = crate::ratelimit::Policy {
                    requests_per_second: env.parse("BOROUGH_RATE_LIMIT_RPS", 100)?,
                    burst: env.parse("BOROUGH_RATE_LIMIT_BURST", 200)?,
                };
                policy.validate().map_err(|reason| SettingsError::Invalid {
                    name: "BOROUGH_RATE_LIMIT_RPS".to_owned(),
                    value: format!("{}/{}", policy.requests_per_second, policy.burst),
                    reason,
                })?;
                policy
            },
            client: borough_net::client::ClientSettings::from_env(env)?,
            read_your_writes_ttl: env.duration_in(
                "BOROUGH_READ_YOUR_WRITES_TTL",
                Duration::from_secs(60),
                Duration::ZERO..=Duration::from_secs(24 * 3600),
            )?,
            body_limit: env.bytes_in("BOROUGH_BODY_LIMIT", 1024 * 1024, BODY_LIMIT_RANGE)?,
            auth_cache_ttl: env.duration_in(
                "BOROUGH_AUTH_CACHE_TTL",
                Duration::from_secs(5),
                Duration::ZERO..=Duration::from_secs(3600),
            )?,
            connections: crate::server::ConnectionLimits::from_env(env)?,
            auth: crate::auth_guard::AuthLimits::from_env(env)?,
            watches: crate::watches::WatchLimits::from_env(env)?,
            import_report_limit: env.parse_in(
                "BOROUGH_IMPORT_REPORT_LIMIT",
                1000,
                1..=borough_proto::user::MAX_IMPORT_REJECTIONS,
            )?,
            access_log: crate::middleware::AccessLog {
                mode: env.parse(
                    "BOROUGH_ACCESS_LOG",
                    crate::middleware::AccessLogMode::ErrorsAndSlow,
                )?,
                slow: env.duration_in(
                    "BOROUGH_ACCESS_LOG_SLOW",
                    Duration::from_millis(500),
                    Duration::ZERO..=Duration::from_secs(3600),
                )?,
            },
            cors_origins: env
                .optional("BOROUGH_CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

impl Settings {
    /// SHA-256 of `BOROUGH_ADMIN_TOKEN`.
    pub fn admin_token_hash(&self) -> Option<[u8; 32]> {
        self.admin_token
            .as_ref()
            .map(|token| borough_tenant::apikey::hash(secrecy::ExposeSecret::expose_secret(token)))
    }

    /// The rate-limit policies as the environment sets them (no overrides).
    pub fn rate_limits(&self) -> crate::ratelimit::Policies {
        crate::ratelimit::Policies {
            default: self.rate_limit,
            tenants: std::collections::HashMap::new(),
        }
    }

    /// The API routes' limits as the environment sets them.
    pub fn limits(&self) -> crate::state::Limits {
        crate::state::Limits {
            request_timeout: self.request_timeout,
            body_limit: self.body_limit,
        }
    }
}

/// What `platform/gateway` may change while the gateway runs, each a watch of its current
/// value: the environment's settings until the namespace says otherwise.
pub struct Hot {
    pub limits: tokio::sync::watch::Receiver<crate::state::Limits>,
    pub admin_token_hash: tokio::sync::watch::Receiver<Option<[u8; 32]>>,
    pub rate_limits: tokio::sync::watch::Receiver<crate::ratelimit::Policies>,
    pub shed: tokio::sync::watch::Receiver<borough_net::shed::ShedLimits>,
}

impl Hot {
    /// Fixed at the environment's settings (no config service).
    pub fn fixed(settings: &Settings) -> Hot {
        Hot {
            limits: tokio::sync::watch::channel(settings.limits()).1,
            admin_token_hash: tokio::sync::watch::channel(settings.admin_token_hash()).1,
            rate_limits: tokio::sync::watch::channel(settings.rate_limits()).1,
            shed: tokio::sync::watch::channel(settings.server.shed).1,
        }
    }

    /// Following `remote` (`platform/gateway`), over the environment's settings.
    pub fn following(
        settings: &Settings,
        remote: &borough_config_client::remote::RemoteConfig,
    ) -> Hot {
        Hot {
            limits: remote.typed(settings.limits(), parse_limits),
            admin_token_hash: remote.typed(settings.admin_token_hash(), parse_admin_token_hash),
            rate_limits: remote.typed(settings.rate_limits(), crate::ratelimit::parse_policies),
            shed: remote.typed(settings.server.shed, borough_net::shed::parse_limits),
        }
    }
}

/// `admin.token_sha256` of `platform/gateway` (64 hex digits: the SHA-256 of the new admin
/// token, never the token itself) over the environment's token: rotates the admin token
/// without a restart.
pub fn parse_admin_token_hash(
    snapshot: &borough_config_client::remote::Snapshot,
    default: &Option<[u8; 32]>,
) -> Result<Option<[u8; 32]>, String> {
    match snapshot.values.get("admin.token_sha256") {
        None => Ok(*default),
        Some(serde_json::Value::String(text)) => {
            let mut hash = [0_u8; 32];
            hex::decode_to_slice(text.trim(), &mut hash)
                .map_err(|_| "admin.token_sha256 must be 64 hex digits".to_owned())?;
            Ok(Some(hash))
        }
        Some(_) => Err("admin.token_sha256 must be a string of 64 hex digits".to_owned()),
    }
}

/// `http.request_timeout` and `http.body_limit` of `platform/gateway`, over `defaults`
/// (absent keys keep them). Refused: zero or unparsable values.
pub fn parse_limits(
    snapshot: &borough_config_client::remote::Snapshot,
    defaults: &crate::state::Limits,
) -> Result<crate::state::Limits, String> {
    use borough_config_client::check_range;
    use borough_config_client::remote::{bytes_value, duration_value};
    let mut limits = *defaults;
    if let Some(value) = snapshot.values.get("http.request_timeout") {
        let timeout = duration_value(value).map_err(|e| format!("http.request_timeout: {e}"))?;
        limits.request_timeout = check_range(
            "http.request_timeout",
            timeout,
            &REQUEST_TIMEOUT_RANGE,
            |d| format!("{d:?}"),
        )
        .map_err(|e| e.to_string())?;
    }
    if let Some(value) = snapshot.values.get("http.body_limit") {
        let limit = bytes_value(value).map_err(|e| format!("http.body_limit: {e}"))?;
        limits.body_limit = check_range("http.body_limit", limit, &BODY_LIMIT_RANGE, |b| {
            b.to_string()
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_for_make_run() {
        let settings = Settings::from_env(&Env::from_pairs([("", "")])).expect("defaults parse");
        assert_eq!(settings.server.api_addr.port(), 8080);
        assert_eq!(settings.server.admin_addr.port(), 9460);
        assert_eq!(settings.user_url, "https://127.0.0.1:50051");
        assert!(settings.edge_tls.is_none());
        assert!(settings.admin_token.is_none());
        assert!(settings.cors_origins.is_empty());
    }

    #[test]
    fn each_bad_value_fails_naming_its_variable() {
        for (name, value) in [
            ("BOROUGH_HTTP_ADDR", "eighty"),
            ("BOROUGH_ADMIN_ADDR", "127.0.0.1"),
            ("BOROUGH_USER_URL", "127.0.0.1:50051"),
            ("BOROUGH_QUERY_URL", "grpc://x"),
            ("BOROUGH_REQUEST_TIMEOUT", "forever"),
            ("BOROUGH_BODY_LIMIT", "big"),
            ("BOROUGH_ADMIN_TOKEN", "short"),
            ("BOROUGH_REQUEST_TIMEOUT", "100000000h"),
            ("BOROUGH_REQUEST_TIMEOUT", "2h"),
            ("BOROUGH_BODY_LIMIT", "2GiB"),
            ("BOROUGH_HTTP_MAX_CONNECTIONS", "0"),
            ("BOROUGH_HTTP_HEADER_TIMEOUT", "0s"),
            ("BOROUGH_WATCH_MAX_PER_TENANT", "0"),
            ("BOROUGH_AUTH_FAILURES_PER_SEC", "-1"),
            ("BOROUGH_IMPORT_REPORT_LIMIT", "1000000"),
        ] {
            let err = Settings::from_env(&Env::from_pairs([(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn a_huge_or_zero_hot_request_timeout_or_body_limit_is_refused_not_applied() {
        let defaults = Settings::from_env(&Env::from_pairs([("", "")]))
            .expect("defaults")
            .limits();
        for (key, value) in [
            ("http.request_timeout", serde_json::json!("100000000h")),
            ("http.request_timeout", serde_json::json!(u64::MAX)),
            ("http.request_timeout", serde_json::json!("2h")),
            ("http.request_timeout", serde_json::json!("0s")),
            ("http.body_limit", serde_json::json!(0)),
            ("http.body_limit", serde_json::json!("2GiB")),
        ] {
            let mut snapshot = borough_config_client::remote::Snapshot::default();
            snapshot.values.insert(key.to_owned(), value.clone());
            let err = parse_limits(&snapshot, &defaults).expect_err(&format!("{key}={value}"));
            assert!(err.contains(key), "{err}");
        }
        let mut snapshot = borough_config_client::remote::Snapshot::default();
        snapshot
            .values
            .insert("http.request_timeout".into(), serde_json::json!("30s"));
        let limits = parse_limits(&snapshot, &defaults).expect("in range");
        assert_eq!(limits.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_admin_token_is_never_echoed_in_errors() {
        let err = Settings::from_env(&Env::from_pairs([("BOROUGH_ADMIN_TOKEN", "s3cr3t")]))
            .expect_err("too short");
        assert!(!err.to_string().contains("s3cr3t"));
    }
}
