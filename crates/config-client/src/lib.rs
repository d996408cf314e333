//! Typed settings for Borough services.
//!
//! Settings come from `BOROUGH_*` environment variables, each declared once as a [`Var`]
//! beside the field it fills ([`env`]), with defaults that work for `make run`; [`remote`]
//! layers the config service's values over them, hot, through the same parsers. Every
//! parse error names the variable and the value it could not use, so a bad deployment
//! fails at start-up with a message an operator can act on.

pub mod env;
pub mod remote;

use std::net::SocketAddr;
use std::time::Duration;

pub use env::{
    Env, MAX_BYTES, MAX_DURATION, SecretUrl, SettingsError, Var, check_range, redact_url,
};

/// What every server reads: where it listens and how it shuts down.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The API listener ([`ServerSettings::GRPC_ADDR`] for services,
    /// [`ServerSettings::HTTP_ADDR`] for the gateway), and the variable that set it.
    pub api_addr: SocketAddr,
    pub api_var: &'static Var,
    /// [`ServerSettings::ADMIN_ADDR`]: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// [`ServerSettings::SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// [`ServerSettings::PROBE_INTERVAL`].
    pub probe_interval: Duration,
    /// Following `platform/<service>` ([`remote::RemoteSettings`]).
    pub remote: remote::RemoteSettings,
    /// Load shedding ([`ShedLimits`]).
    pub shed: ShedLimits,
    /// [`ServerSettings::REUSE_PORT`].
    pub reuse_port: bool,
}

impl ServerSettings {
    pub const GRPC_ADDR: Var = Var::new(
        "BOROUGH_GRPC_ADDR",
        "127.0.0.1:50051 (user), :50052 (query), :50053 (config)",
        "The gRPC listener",
    );
    pub const HTTP_ADDR: Var = Var::new(
        "BOROUGH_HTTP_ADDR",
        "127.0.0.1:8080",
        "The REST listener (plaintext HTTP/1.1 and h2c, or HTTPS with BOROUGH_HTTP_TLS_CERT)",
    );
    pub const ADMIN_ADDR: Var = Var::new(
        "BOROUGH_ADMIN_ADDR",
        "127.0.0.1:9460 (gateway), :9461 (user), :9462 (query), :9463 (config)",
        "The admin listener: /healthz, /readyz, /metrics",
    );
    pub const SHUTDOWN_GRACE: Var = Var::new(
        "BOROUGH_SHUTDOWN_GRACE",
        "5s",
        "How long readiness fails before the listeners close on shutdown",
    );
    pub const PROBE_INTERVAL: Var = Var::new(
        "BOROUGH_PROBE_INTERVAL",
        "2s",
        "How often dependencies (database, backends) are checked for readiness",
    );
    pub const REUSE_PORT: Var = Var::new(
        "BOROUGH_REUSE_PORT",
        "false",
        "Bind the API port with SO_REUSEPORT, so a new process can bind it beside this one \
         for an in-place upgrade",
    );
    /// What every server reads (with [`remote::RemoteSettings::VARS`] and
    /// [`ShedLimits::VARS`]); the API address is the service's own.
    pub const VARS: &[&Var] = &[
        &Self::ADMIN_ADDR,
        &Self::SHUTDOWN_GRACE,
        &Self::PROBE_INTERVAL,
        &Self::REUSE_PORT,
    ];

    /// `api` (with `api_default`) and the admin address (`admin_default`) are the
    /// service's own.
    pub fn from_env(
        env: &Env,
        service: &str,
        api: &'static Var,
        api_default: &str,
        admin_default: &str,
    ) -> Result<Self, SettingsError> {
        Ok(ServerSettings {
            remote: remote::RemoteSettings::from_env(env, service)?,
            api_addr: env.socket_addr_or(api, api_default)?,
            api_var: api,
            admin_addr: env.socket_addr_or(&Self::ADMIN_ADDR, admin_default)?,
            shutdown_grace: env.duration(&Self::SHUTDOWN_GRACE)?,
            probe_interval: env.duration(&Self::PROBE_INTERVAL)?,
            shed: ShedLimits::from_env(env)?,
            reuse_port: env.parse(&Self::REUSE_PORT)?,
        })
    }

    /// Every setting a server reads, for `docs/settings.md`: these, following the config
    /// service, and load shedding.
    pub fn vars() -> impl Iterator<Item = &'static Var> {
        Self::VARS
            .iter()
            .chain(remote::RemoteSettings::VARS)
            .chain(ShedLimits::VARS)
            .copied()
    }
}

/// How much work runs at once and how much may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedLimits {
    /// [`ShedLimits::MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// [`ShedLimits::MAX_QUEUE`].
    pub max_queue: usize,
    /// [`ShedLimits::QUEUE_TIMEOUT`].
    pub queue_timeout: Duration,
}

impl ShedLimits {
    pub const MAX_IN_FLIGHT: Var = Var::new(
        "BOROUGH_MAX_IN_FLIGHT",
        "512",
        "Requests served at once before load shedding queues them (at least 1)",
    )
    .hot("shed.max_in_flight");
    pub const MAX_QUEUE: Var = Var::new(
        "BOROUGH_MAX_QUEUE",
        "64",
        "Requests waiting for a slot; past it, 503 with Retry-After at once",
    )
    .hot("shed.max_queue");
    pub const QUEUE_TIMEOUT: Var = Var::new(
        "BOROUGH_QUEUE_TIMEOUT",
        "100ms",
        "How long a queued request waits for a slot before its 503",
    )
    .hot("shed.queue_timeout");
    pub const VARS: &[&Var] = &[&Self::MAX_IN_FLIGHT, &Self::MAX_QUEUE, &Self::QUEUE_TIMEOUT];

    /// From the environment.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(ShedLimits {
            max_in_flight: env.parse_in(&Self::MAX_IN_FLIGHT, 1..=usize::MAX)?,
            max_queue: env.parse(&Self::MAX_QUEUE)?,
            queue_timeout: env.duration(&Self::QUEUE_TIMEOUT)?,
        })
    }

    /// `current` with what `hot` (a snapshot's values) changes, by the same parsers.
    pub fn updated(&self, hot: &Env) -> Result<Self, SettingsError> {
        Ok(ShedLimits {
            max_in_flight: hot.parse_in_or(
                &Self::MAX_IN_FLIGHT,
                self.max_in_flight,
                1..=usize::MAX,
            )?,
            max_queue: hot.parse_or(&Self::MAX_QUEUE, self.max_queue)?,
            queue_timeout: hot.duration_or(&Self::QUEUE_TIMEOUT, self.queue_timeout)?,
        })
    }
}

impl Default for ShedLimits {
    /// The declared defaults.
    fn default() -> Self {
        ShedLimits {
            max_in_flight: 512,
            max_queue: 64,
            queue_timeout: Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_settings_take_the_given_defaults_and_name_bad_variables() {
        let env = Env::from_pairs([("", "")]);
        let server = ServerSettings::from_env(
            &env,
            "test",
            &ServerSettings::GRPC_ADDR,
            "127.0.0.1:50051",
            "127.0.0.1:9461",
        )
        .expect("defaults parse");
        assert_eq!(server.api_addr.port(), 50051);
        assert_eq!(server.admin_addr.port(), 9461);
        assert_eq!(server.shutdown_grace, Duration::from_secs(5));
        assert_eq!(server.shed, ShedLimits::default());
        let env = Env::from_pairs([("BOROUGH_SHUTDOWN_GRACE", "a while")]);
        let err = ServerSettings::from_env(
            &env,
            "test",
            &ServerSettings::GRPC_ADDR,
            "127.0.0.1:1",
            "127.0.0.1:2",
        )
        .expect_err("bad duration");
        assert!(err.to_string().contains("BOROUGH_SHUTDOWN_GRACE"), "{err}");
        let env = Env::from_pairs([("BOROUGH_MAX_IN_FLIGHT", "0")]);
        let err = ShedLimits::from_env(&env).expect_err("zero");
        assert!(err.to_string().contains("BOROUGH_MAX_IN_FLIGHT"), "{err}");
    }
}
