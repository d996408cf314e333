//! The gateway's settings, each variable declared once beside its field.

use std::time::Duration;

use borough_config_client::remote::RemoteSettings;
use borough_config_client::{Env, ServerSettings, SettingsError, Var};
use secrecy::SecretString;

/// The gateway's settings ([`Settings::vars`]: every variable it reads).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners (127.0.0.1:8080, admin 127.0.0.1:9460), shutdown grace, probe interval.
    pub server: ServerSettings,
    /// [`Settings::USER_URL`].
    pub user_url: String,
    /// [`Settings::QUERY_URL`].
    pub query_url: String,
    /// The config service ([`RemoteSettings::URL`], default `http(s)://127.0.0.1:50053`).
    pub config_url: String,
    /// [`Settings::ADMIN_TOKEN`]; `None`: the admin API is off.
    pub admin_token: Option<SecretString>,
    /// [`Settings::REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// [`Settings::BODY_LIMIT`].
    pub body_limit: usize,
    /// [`Settings::AUTH_CACHE_TTL`].
    pub auth_cache_ttl: Duration,
    /// [`Settings::AUTH_STALE_TTL`].
    pub auth_stale_ttl: Duration,
    /// [`Settings::CORS_ORIGINS`]; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// [`Settings::STREAM_TIMEOUT`].
    pub stream_timeout: Duration,
    /// [`Settings::IMPORT_BODY_LIMIT`].
    pub import_body_limit: usize,
    /// [`Settings::RATE_LIMIT_RPS`] and [`Settings::RATE_LIMIT_BURST`].
    pub rate_limit: crate::ratelimit::Policy,
    /// [`Settings::READ_YOUR_WRITES_TTL`].
    pub read_your_writes_ttl: Duration,
    /// Discovery, balancing, circuit breaking and retries of backend calls.
    pub client: borough_net::client::ClientSettings,
    /// Connection bounds of the HTTP server.
    pub connections: crate::server::ConnectionLimits,
    /// Bounds of failed authentication.
    pub auth: crate::auth_guard::AuthLimits,
    /// Bounds of config watches.
    pub watches: crate::watches::WatchLimits,
    /// Bounds of console sessions.
    pub console: crate::console::session::SessionSettings,
    /// [`Settings::IMPORT_REPORT_LIMIT`].
    pub import_report_limit: usize,
    /// Mutual TLS with the services.
    pub tls: borough_tls::TlsSettings,
    /// [`Settings::HTTP_TLS_CERT`] and [`Settings::HTTP_TLS_KEY`]; `None`: plain HTTP.
    pub edge_tls: Option<EdgeTls>,
    /// [`Settings::ACCESS_LOG`] and [`Settings::ACCESS_LOG_SLOW`].
    pub access_log: crate::middleware::AccessLog,
}

/// The files of the edge's certificate and key.
#[derive(Debug, Clone)]
pub struct EdgeTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The range [`Settings::REQUEST_TIMEOUT`] must lie in, in the environment and hot.
pub const REQUEST_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);
/// The range [`Settings::BODY_LIMIT`] must lie in, in the environment and hot.
pub const BODY_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1..=1024 * 1024 * 1024;

impl Settings {
    pub const USER_URL: Var = Var::new(
        "BOROUGH_USER_URL",
        "https://127.0.0.1:50051 (http:// with BOROUGH_INTERNAL_TLS=off)",
        "The user service: a URL, or several separated by commas (a DNS name is resolved \
         to every address, again every BOROUGH_RESOLVE_INTERVAL)",
    );
    pub const QUERY_URL: Var = Var::new(
        "BOROUGH_QUERY_URL",
        "https://127.0.0.1:50052 (http:// with BOROUGH_INTERNAL_TLS=off)",
        "The query service, as BOROUGH_USER_URL",
    );
    pub const ADMIN_TOKEN: Var = Var::new(
        "BOROUGH_ADMIN_TOKEN",
        "",
        "The platform admin API's bearer token (at least 16 characters); unset: the admin \
         API is off. Rotated live by the token's SHA-256 (64 hex digits) in \
         admin.token_sha256, never the token itself",
    )
    .hot("admin.token_sha256")
    .secret();
    pub const REQUEST_TIMEOUT: Var = Var::new(
        "BOROUGH_REQUEST_TIMEOUT",
        "10s",
        "Every API request's deadline, passed on to the services (1ms to 1h)",
    )
    .hot("http.request_timeout");
    pub const BODY_LIMIT: Var = Var::new(
        "BOROUGH_BODY_LIMIT",
        "1MiB",
        "The largest API request body (1 byte to 1GiB); over it, 413",
    )
    .hot("http.body_limit");
    pub const AUTH_CACHE_TTL: Var = Var::new(
        "BOROUGH_AUTH_CACHE_TTL",
        "5s",
        "How long an API key's tenant is cached (0 to 1h); also the longest a key revoked \
         through another gateway replica keeps working here",
    );
    pub const AUTH_STALE_TTL: Var = Var::new(
        "BOROUGH_AUTH_STALE_TTL",
        "5m",
        "While the key directory cannot be reached (its database down or cut off), a key \
         this gateway verified within this long is still accepted for reads (GET, HEAD) \
         only, so cached users can be served stale; 0: never (0 to 24h)",
    );
    pub const CORS_ORIGINS: Var = Var::new(
        "BOROUGH_CORS_ORIGINS",
        "",
        "Origins allowed by CORS, separated by commas; unset: CORS off",
    );
    pub const STREAM_TIMEOUT: Var = Var::new(
        "BOROUGH_STREAM_TIMEOUT",
        "10m",
        "The deadline of exports and imports, which move whole tenants' data (1s to 24h)",
    );
    pub const IMPORT_BODY_LIMIT: Var = Var::new(
        "BOROUGH_IMPORT_BODY_LIMIT",
        "256MiB",
        "The largest import body (up to 64GiB); over it, 413",
    );
    pub const RATE_LIMIT_RPS: Var = Var::new(
        "BOROUGH_RATE_LIMIT_RPS",
        "100",
        "Every tenant's token bucket: requests a second (1 to 1,000,000). Live: \
         rate_limit.default as {\"requests_per_second\": R, \"burst\": B}, and \
         rate_limit.tenant.<id> per tenant",
    )
    .hot("rate_limit.default");
    pub const RATE_LIMIT_BURST: Var = Var::new(
        "BOROUGH_RATE_LIMIT_BURST",
        "200",
        "Every tenant's token bucket: its size (1 to 1,000,000)",
    )
    .hot("rate_limit.default");
    pub const READ_YOUR_WRITES_TTL: Var = Var::new(
        "BOROUGH_READ_YOUR_WRITES_TTL",
        "60s",
        "How long this gateway remembers the versions it wrote, so that its reads never \
         return an older one from a cache (0 to 24h)",
    );
    pub const IMPORT_REPORT_LIMIT: Var = Var::new(
        "BOROUGH_IMPORT_REPORT_LIMIT",
        "1000",
        "Rejected import lines reported in full; the rest are counted",
    );
    pub const HTTP_TLS_CERT: Var = Var::new(
        "BOROUGH_HTTP_TLS_CERT",
        "",
        "The gateway terminates TLS itself (HTTPS, ALPN h2 and http/1.1) with this \
         certificate chain, reloaded when it changes; unset: plain HTTP, TLS left to a proxy",
    );
    pub const HTTP_TLS_KEY: Var = Var::new(
        "BOROUGH_HTTP_TLS_KEY",
        "",
        "The key of BOROUGH_HTTP_TLS_CERT (both or neither)",
    );
    pub const ACCESS_LOG: Var = Var::new(
        "BOROUGH_ACCESS_LOG",
        "errors-and-slow",
        "Which requests get an access log line: all, errors-and-slow or off",
    );
    pub const ACCESS_LOG_SLOW: Var = Var::new(
        "BOROUGH_ACCESS_LOG_SLOW",
        "500ms",
        "What errors-and-slow counts as slow (0 to 1h)",
    );
    pub const VARS: &[&Var] = &[
        &ServerSettings::HTTP_ADDR,
        &Self::USER_URL,
        &Self::QUERY_URL,
        &Self::ADMIN_TOKEN,
        &Self::REQUEST_TIMEOUT,
        &Self::BODY_LIMIT,
        &Self::AUTH_CACHE_TTL,
        &Self::AUTH_STALE_TTL,
        &Self::CORS_ORIGINS,
        &Self::STREAM_TIMEOUT,
        &Self::IMPORT_BODY_LIMIT,
        &Self::RATE_LIMIT_RPS,
        &Self::RATE_LIMIT_BURST,
        &Self::READ_YOUR_WRITES_TTL,
        &Self::IMPORT_REPORT_LIMIT,
        &Self::HTTP_TLS_CERT,
        &Self::HTTP_TLS_KEY,
        &Self::ACCESS_LOG,
        &Self::ACCESS_LOG_SLOW,
    ];

    /// Every variable the gateway reads, for `docs/settings.md`.
    pub fn vars() -> Vec<&'static Var> {
        Self::VARS
            .iter()
            .copied()
            .chain(ServerSettings::vars())
            .chain(borough_net::client::ClientSettings::VARS.iter().copied())
            .chain(crate::server::ConnectionLimits::VARS.iter().copied())
            .chain(crate::auth_guard::AuthLimits::VARS.iter().copied())
            .chain(crate::watches::WatchLimits::VARS.iter().copied())
            .chain(
                crate::console::session::SessionSettings::VARS
                    .iter()
                    .copied(),
            )
            .chain(borough_tls::TlsSettings::VARS.iter().copied())
            .chain(borough_telemetry::vars())
            .collect()
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let admin_token = env.secret(&Self::ADMIN_TOKEN)?;
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            return Err(SettingsError::Invalid {
                name: Self::ADMIN_TOKEN.name.to_owned(),
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
            env.optional(&Self::HTTP_TLS_CERT),
            env.optional(&Self::HTTP_TLS_KEY),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(EdgeTls {
                cert: cert.into(),
                key: key.into(),
            }),
            (cert, _) => {
                let (missing, with) = match cert {
                    Some(_) => (Self::HTTP_TLS_KEY.name, Self::HTTP_TLS_CERT.name),
                    None => (Self::HTTP_TLS_CERT.name, Self::HTTP_TLS_KEY.name),
                };
                return Err(SettingsError::Missing {
                    name: format!("{missing} (with {with})"),
                });
            }
        };
        let backend = |var: &Var, port: u16| {
            env.url_or(
                var,
                &format!("{scheme}://127.0.0.1:{port}"),
                &["http", "https"],
            )
        };
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                "gateway",
                &ServerSettings::HTTP_ADDR,
                "127.0.0.1:8080",
                "127.0.0.1:9460",
            )?,
            user_url: backend(&Self::USER_URL, 50051)?,
            query_url: backend(&Self::QUERY_URL, 50052)?,
            config_url: backend(&RemoteSettings::URL, 50053)?,
            tls,
            edge_tls,
            admin_token: admin_token.map(SecretString::from),
            request_timeout: env.duration_in(&Self::REQUEST_TIMEOUT, REQUEST_TIMEOUT_RANGE)?,
            stream_timeout: env.duration_in(
                &Self::STREAM_TIMEOUT,
                Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            )?,
            import_body_limit: env
                .bytes_in(&Self::IMPORT_BODY_LIMIT, 1..=64 * 1024 * 1024 * 1024)?,
            rate_limit: crate::ratelimit::Policy {
                requests_per_second: env.parse_in(&Self::RATE_LIMIT_RPS, 1..=1_000_000)?,
                burst: env.parse_in(&Self::RATE_LIMIT_BURST, 1..=1_000_000)?,
            },
            client: borough_net::client::ClientSettings::from_env(env)?,
            read_your_writes_ttl: env.duration_in(
                &Self::READ_YOUR_WRITES_TTL,
                Duration::ZERO..=Duration::from_secs(24 * 3600),
            )?,
            body_limit: env.bytes_in(&Self::BODY_LIMIT, BODY_LIMIT_RANGE)?,
            auth_cache_ttl: env.duration_in(
                &Self::AUTH_CACHE_TTL,
                Duration::ZERO..=Duration::from_secs(3600),
            )?,
            auth_stale_ttl: env.duration_in(
                &Self::AUTH_STALE_TTL,
                Duration::ZERO..=Duration::from_secs(24 * 3600),
            )?,
            connections: crate::server::ConnectionLimits::from_env(env)?,
            auth: crate::auth_guard::AuthLimits::from_env(env)?,
            watches: crate::watches::WatchLimits::from_env(env)?,
            console: crate::console::session::SessionSettings::from_env(env)?,
            import_report_limit: env.parse_in(
                &Self::IMPORT_REPORT_LIMIT,
                1..=borough_proto::user::MAX_IMPORT_REJECTIONS,
            )?,
            access_log: crate::middleware::AccessLog {
                mode: env.parse(&Self::ACCESS_LOG)?,
                slow: env.duration_in(
                    &Self::ACCESS_LOG_SLOW,
                    Duration::ZERO..=Duration::from_secs(3600),
                )?,
            },
            cors_origins: env
                .optional(&Self::CORS_ORIGINS)
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
    /// SHA-256 of the admin token.
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

/// [`Settings::REQUEST_TIMEOUT`] and [`Settings::BODY_LIMIT`] as `platform/gateway` sets
/// them, over `defaults` (absent keys keep them), by the environment's parsers and ranges.
pub fn parse_limits(
    snapshot: &borough_config_client::remote::Snapshot,
    defaults: &crate::state::Limits,
) -> Result<crate::state::Limits, String> {
    let hot = snapshot.hot();
    let invalid = |e: SettingsError| e.to_string();
    Ok(crate::state::Limits {
        request_timeout: hot
            .duration_in_or(
                &Settings::REQUEST_TIMEOUT,
                defaults.request_timeout,
                REQUEST_TIMEOUT_RANGE,
            )
            .map_err(invalid)?,
        body_limit: hot
            .bytes_in_or(&Settings::BODY_LIMIT, defaults.body_limit, BODY_LIMIT_RANGE)
            .map_err(invalid)?,
    })
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
