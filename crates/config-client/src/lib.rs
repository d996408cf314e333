//! Typed settings for Borough services.
//!
//! Settings come from `BOROUGH_*` environment variables with defaults that work for
//! `make run`; [`remote`] layers the config service's values over them, hot.
//! Every parse error names the variable and the value it could not use, so a bad
//! deployment fails at start-up with a message an operator can act on.

pub mod remote;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{name} must be set")]
    Missing { name: String },
}

/// Where settings are read from: the process environment, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `None`: the process environment.
    vars: Option<HashMap<String, String>>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env { vars: None }
    }

    /// A fixed set of variables (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value; an empty value counts as unset.
    pub fn raw(&self, name: &str) -> Option<String> {
        let value = match &self.vars {
            Some(vars) => vars.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A value parsed with `FromStr`, or the default when unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e: T::Err| SettingsError::Invalid {
                    name: name.to_owned(),
                    value,
                    reason: e.to_string(),
                }),
        }
    }

    /// A socket address such as `127.0.0.1:8080` or `[::]:50051`.
    pub fn socket_addr(&self, name: &str, default: &str) -> Result<SocketAddr, SettingsError> {
        let value = self.raw(name).unwrap_or_else(|| default.to_owned());
        value.trim().parse().map_err(|_| SettingsError::Invalid {
            name: name.to_owned(),
            value,
            reason: "expected host:port with an IP address, e.g. 127.0.0.1:8080".to_owned(),
        })
    }

    /// A string with a default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// An optional string.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.raw(name)
    }

    /// A URL whose scheme is one of `schemes` (e.g. `http`, `postgres`).
    pub fn url(
        &self,
        name: &str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, SettingsError> {
        let value = self.raw(name).unwrap_or_else(|| default.to_owned());
        let value = value.trim().to_owned();
        let ok = value
            .split_once("://")
            .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
        if ok {
            Ok(value)
        } else {
            Err(SettingsError::Invalid {
                name: name.to_owned(),
                // Never echo a URL that may hold a password.
                value: redact_url(&value),
                reason: format!("expected a URL starting with {}://", schemes.join("://, ")),
            })
        }
    }

    /// A duration: `250ms`, `5s`, `2m`, or a bare number of seconds.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, SettingsError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_duration(&value).ok_or_else(|| SettingsError::Invalid {
                name: name.to_owned(),
                value,
                reason: "expected a duration such as 250ms, 5s or 2m".to_owned(),
            }),
        }
    }

    /// A byte size: `1048576`, `64KiB`, `1MiB`, `2GiB`.
    pub fn bytes(&self, name: &str, default: usize) -> Result<usize, SettingsError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse_bytes(&value).ok_or_else(|| SettingsError::Invalid {
                name: name.to_owned(),
                value,
                reason: "expected a size such as 65536, 64KiB, 1MiB or 1GiB".to_owned(),
            }),
        }
    }

    /// A value parsed with `FromStr` that must lie in `range`.
    pub fn parse_in<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(name, default)?;
        check_range(name, value, &range, |v| v.to_string())
    }

    /// A duration ([`Env::duration`]) that must lie in `range`.
    pub fn duration_in(
        &self,
        name: &str,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration, SettingsError> {
        let value = self.duration(name, default)?;
        check_range(name, value, &range, |d| format!("{d:?}"))
    }

    /// A byte size ([`Env::bytes`]) that must lie in `range`.
    pub fn bytes_in(
        &self,
        name: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, SettingsError> {
        let value = self.bytes(name, default)?;
        check_range(name, value, &range, |b| b.to_string())
    }
}

/// `value` if it lies in `range`; otherwise an error naming the variable and the range.
pub fn check_range<T: PartialOrd>(
    name: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
    show: impl Fn(&T) -> String,
) -> Result<T, SettingsError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(SettingsError::Invalid {
            name: name.to_owned(),
            value: show(&value),
            reason: format!(
                "must be between {} and {}",
                show(range.start()),
                show(range.end())
            ),
        })
    }
}

/// The longest duration any setting accepts (deadlines are computed as `now + d`: this
/// keeps them far from overflowing).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest byte size any setting accepts.
pub const MAX_BYTES: usize = 1 << 40;

/// What every server reads: where it listens and how it shuts down.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The API listener (`BOROUGH_GRPC_ADDR` for services, `BOROUGH_HTTP_ADDR` for the
    /// gateway): the variable that named it, for error messages.
    pub api_addr: SocketAddr,
    pub api_var: &'static str,
    /// `BOROUGH_ADMIN_ADDR`: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// `BOROUGH_SHUTDOWN_GRACE` (5s): how long readiness fails before listeners close.
    pub shutdown_grace: Duration,
    /// `BOROUGH_PROBE_INTERVAL` (2s): how often dependencies are checked for readiness.
    pub probe_interval: Duration,
    /// `BOROUGH_CONFIG_URL` (follow `platform/<service>`), `BOROUGH_CONFIG_SNAPSHOT`,
    /// `BOROUGH_INSTANCE`.
    pub remote: remote::RemoteSettings,
    /// Load shedding: `BOROUGH_MAX_IN_FLIGHT`, `BOROUGH_MAX_QUEUE`, `BOROUGH_QUEUE_TIMEOUT`.
    pub shed: ShedLimits,
    /// `BOROUGH_REUSE_PORT` (false): bind the API port with `SO_REUSEPORT`, so that a new
    /// process can bind it beside this one for an in-place upgrade.
    pub reuse_port: bool,
}

impl ServerSettings {
    pub fn from_env(
        env: &Env,
        service: &str,
        api_var: &'static str,
        api_default: &str,
        admin_default: &str,
    ) -> Result<Self, SettingsError> {
        Ok(ServerSettings {
            remote: remote::RemoteSettings::from_env(env, service)?,
            api_addr: env.socket_addr(api_var, api_default)?,
            api_var,
            admin_addr: env.socket_addr("BOROUGH_ADMIN_ADDR", admin_default)?,
            shutdown_grace: env.duration("BOROUGH_SHUTDOWN_GRACE", Duration::from_secs(5))?,
            probe_interval: env.duration("BOROUGH_PROBE_INTERVAL", Duration::from_secs(2))?,
            shed: ShedLimits::from_env(env)?,
            reuse_port: env.parse("BOROUGH_REUSE_PORT", false)?,
        })
    }
}

/// How much work runs at once and how much may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedLimits {
    /// `BOROUGH_MAX_IN_FLIGHT` (512), hot as `shed.max_in_flight`.
    pub max_in_flight: usize,
    /// `BOROUGH_MAX_QUEUE` (64), hot as `shed.max_queue`.
    pub max_queue: usize,
    /// `BOROUGH_QUEUE_TIMEOUT` (100ms), hot as `shed.queue_timeout`.
    pub queue_timeout: Duration,
}

impl Default for ShedLimits {
    fn default() -> Self {
        ShedLimits {
            max_in_flight: 512,
            max_queue: 64,
            queue_timeout: Duration::from_millis(100),
        }
    }
}

impl ShedLimits {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let defaults = ShedLimits::default();
        let limits = ShedLimits {
            max_in_flight: env.parse("BOROUGH_MAX_IN_FLIGHT", defaults.max_in_flight)?,
            max_queue: env.parse("BOROUGH_MAX_QUEUE", defaults.max_queue)?,
            queue_timeout: env.duration("BOROUGH_QUEUE_TIMEOUT", defaults.queue_timeout)?,
        };
        if limits.max_in_flight == 0 {
            return Err(SettingsError::Invalid {
                name: "BOROUGH_MAX_IN_FLIGHT".to_owned(),
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(limits)
    }
}

/// A URL that may carry a password (a database URL): its `Debug` shows it with the
/// password replaced by `***`, so no settings dump, log line or error prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL itself, password included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl Env {
    /// A URL holding a secret ([`Env::url`], kept as a [`SecretUrl`]).
    pub fn secret_url(
        &self,
        name: &str,
        default: &str,
        schemes: &[&str],
    ) -> Result<SecretUrl, SettingsError> {
        self.url(name, default, schemes).map(SecretUrl)
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

pub(crate) fn parse_bytes(value: &str) -> Option<usize> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: usize = number.parse().ok()?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(multiplier).filter(|n| *n <= MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_and_empty_values_take_the_default() {
        let env = Env::from_pairs([("BOROUGH_X", "  ")]);
        assert_eq!(env.parse("BOROUGH_X", 7u32), Ok(7));
        assert_eq!(env.parse("BOROUGH_Y", 8u32), Ok(8));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let env = Env::from_pairs([("BOROUGH_HTTP_ADDR", "localhost:eighty")]);
        let err = env
            .socket_addr("BOROUGH_HTTP_ADDR", "127.0.0.1:8080")
            .expect_err("not an address");
        assert!(
            err.to_string()
                .starts_with("BOROUGH_HTTP_ADDR=\"localhost:eighty\""),
            "{err}"
        );
    }

    #[test]
    fn durations_accept_units() {
        let env = Env::from_pairs([
            ("A", "250ms"),
            ("B", "5s"),
            ("C", "2m"),
            ("D", "3"),
            ("E", "soon"),
        ]);
        let d = |n| env.duration(n, Duration::ZERO);
        assert_eq!(d("A"), Ok(Duration::from_millis(250)));
        assert_eq!(d("B"), Ok(Duration::from_secs(5)));
        assert_eq!(d("C"), Ok(Duration::from_secs(120)));
        assert_eq!(d("D"), Ok(Duration::from_secs(3)));
        assert!(d("E").is_err());
    }

    #[test]
    fn byte_sizes_accept_binary_units() {
        let env = Env::from_pairs([("A", "64KiB"), ("B", "1MiB"), ("C", "100"), ("D", "1TiB")]);
        assert_eq!(env.bytes("A", 0), Ok(65536));
        assert_eq!(env.bytes("B", 0), Ok(1 << 20));
        assert_eq!(env.bytes("C", 0), Ok(100));
        assert!(env.bytes("D", 0).is_err(), "no TiB unit");
    }

    #[test]
    fn huge_durations_and_sizes_are_refused_when_parsed() {
        let env = Env::from_pairs([
            ("A", "100000000h"),
            ("B", "99999999999999999999"),
            ("C", "1000000000GiB"),
            ("D", "2GiB"),
        ]);
        assert!(env.duration("A", Duration::ZERO).is_err());
        assert!(env.duration("B", Duration::ZERO).is_err());
        assert!(env.bytes("C", 0).is_err());
        assert_eq!(env.bytes("D", 0), Ok(2 << 30));
        assert_eq!(parse_duration("3650d"), None, "no day unit");
        assert!(parse_duration(&format!("{}", MAX_DURATION.as_secs() + 1)).is_none());
    }

    #[test]
    fn ranged_settings_name_the_variable_and_the_range() {
        let env = Env::from_pairs([("T", "2h"), ("N", "0"), ("S", "1GiB")]);
        let err = env
            .duration_in(
                "T",
                Duration::ZERO,
                Duration::ZERO..=Duration::from_secs(3600),
            )
            .expect_err("over the range");
        assert!(
            err.to_string().contains("T=") && err.to_string().contains("between"),
            "{err}"
        );
        assert!(env.parse_in("N", 5u32, 1..=10).is_err());
        assert!(env.bytes_in("S", 0, 0..=1024).is_err());
        assert_eq!(env.parse_in("M", 5u32, 1..=10), Ok(5));
    }

    #[test]
    fn urls_are_checked_by_scheme_and_passwords_never_echoed() {
        let env = Env::from_pairs([
            ("DB", "mysql://app:hunter2@db/x"),
            ("OK", "postgres://db/x"),
        ]);
        let err = env
            .url("DB", "", &["postgres", "postgresql"])
            .expect_err("wrong scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("DB="), "{err}");
        assert_eq!(
            env.url("OK", "", &["postgres"]),
            Ok("postgres://db/x".to_owned())
        );
    }

    #[test]
    fn server_settings_take_the_given_defaults_and_name_bad_variables() {
        let env = Env::from_pairs([("", "")]);
        let server = ServerSettings::from_env(
            &env,
            "test",
            "BOROUGH_GRPC_ADDR",
            "127.0.0.1:50051",
            "127.0.0.1:9461",
        )
        .expect("defaults parse");
        assert_eq!(server.api_addr.port(), 50051);
        assert_eq!(server.admin_addr.port(), 9461);
        assert_eq!(server.shutdown_grace, Duration::from_secs(5));
        let env = Env::from_pairs([("BOROUGH_SHUTDOWN_GRACE", "a while")]);
        let err = ServerSettings::from_env(
            &env,
            "test",
            "BOROUGH_GRPC_ADDR",
            "127.0.0.1:1",
            "127.0.0.1:2",
        )
        .expect_err("bad duration");
        assert!(err.to_string().contains("BOROUGH_SHUTDOWN_GRACE"), "{err}");
    }

    #[test]
    fn a_secret_url_never_shows_its_password_in_debug() {
        let url = SecretUrl::new("postgres://app:hunter2@db:5432/x");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(format!("{url:?}").contains("app:***@db"));
        assert_eq!(url.expose(), "postgres://app:hunter2@db:5432/x");
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:secret@127.0.0.1:5432/borough"),
            "postgres://app:***@127.0.0.1:5432/borough"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
    }
}
