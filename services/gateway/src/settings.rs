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
}

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
                "http://127.0.0.1:50051",
                &["http", "https"],
            )?,
            query_url: env.url(
                "BOROUGH_QUERY_URL",
                "http://127.0.0.1:50052",
                &["http", "https"],
            )?,
            config_url: env.url(
                "BOROUGH_CONFIG_URL",
                "http://127.0.0.1:50053",
                &["http", "https"],
            )?,
            admin_token: admin_token.map(SecretString::from),
            request_timeout: env.duration("BOROUGH_REQUEST_TIMEOUT", Duration::from_secs(10))?,
            stream_timeout: env.duration("BOROUGH_STREAM_TIMEOUT", Duration::from_secs(600))?,
            import_body_limit: env.bytes("BOROUGH_IMPORT_BODY_LIMIT", 256 * 1024 * 1024)?,
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
            read_your_writes_ttl: env
                .duration("BOROUGH_READ_YOUR_WRITES_TTL", Duration::from_secs(60))?,
            body_limit: env.bytes("BOROUGH_BODY_LIMIT", 1024 * 1024)?,
            auth_cache_ttl: env.duration("BOROUGH_AUTH_CACHE_TTL", Duration::from_secs(5))?,
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
            .map(|token| borough_tenancy::apikey::hash(secrecy::ExposeSecret::expose_secret(token)))
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
    use borough_config_client::remote::{bytes_value, duration_value};
    let mut limits = *defaults;
    if let Some(value) = snapshot.values.get("http.request_timeout") {
        limits.request_timeout =
            duration_value(value).map_err(|e| format!("http.request_timeout: {e}"))?;
        if limits.request_timeout.is_zero() {
            return Err("http.request_timeout must be more than zero".to_owned());
        }
    }
    if let Some(value) = snapshot.values.get("http.body_limit") {
        limits.body_limit = bytes_value(value).map_err(|e| format!("http.body_limit: {e}"))?;
        if limits.body_limit == 0 {
            return Err("http.body_limit must be more than zero".to_owned());
        }
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
        assert_eq!(settings.user_url, "http://127.0.0.1:50051");
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
        ] {
            let err = Settings::from_env(&Env::from_pairs([(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn the_admin_token_is_never_echoed_in_errors() {
        let err = Settings::from_env(&Env::from_pairs([("BOROUGH_ADMIN_TOKEN", "s3cr3t")]))
            .expect_err("too short");
        assert!(!err.to_string().contains("s3cr3t"));
    }
}
