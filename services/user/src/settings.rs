//! The user service's settings, from `BOROUGH_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use borough_config_client::{Env, SettingsError};
use borough_tenancy::db::PoolSettings;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `BOROUGH_GRPC_ADDR`, default `127.0.0.1:50051`.
    pub grpc_addr: SocketAddr,
    /// `BOROUGH_ADMIN_ADDR`, default `127.0.0.1:9461`.
    pub admin_addr: SocketAddr,
    /// `BOROUGH_DATABASE_URL`: the control plane and the shared tenant tables, as the
    /// service role.
    pub database_url: String,
    /// `BOROUGH_DB_MAX_CONNECTIONS` (default 10) and `BOROUGH_DB_ACQUIRE_TIMEOUT` (3s).
    pub pool: PoolSettings,
    /// `BOROUGH_SHUTDOWN_GRACE`: how long readiness fails before listeners close (5s).
    pub shutdown_grace: Duration,
    /// `BOROUGH_PROBE_INTERVAL`: how often the database is checked for readiness (2s).
    pub probe_interval: Duration,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://borough_service:borough@127.0.0.1:55432/borough";

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Settings {
            grpc_addr: env.socket_addr("BOROUGH_GRPC_ADDR", "127.0.0.1:50051")?,
            admin_addr: env.socket_addr("BOROUGH_ADMIN_ADDR", "127.0.0.1:9461")?,
            database_url: env.url(
                "BOROUGH_DATABASE_URL",
                DEFAULT_DATABASE_URL,
                &["postgres", "postgresql"],
            )?,
            pool: PoolSettings {
                max_connections: env.parse("BOROUGH_DB_MAX_CONNECTIONS", 10)?,
                acquire_timeout: env
                    .duration("BOROUGH_DB_ACQUIRE_TIMEOUT", Duration::from_secs(3))?,
            },
            shutdown_grace: env.duration("BOROUGH_SHUTDOWN_GRACE", Duration::from_secs(5))?,
            probe_interval: env.duration("BOROUGH_PROBE_INTERVAL", Duration::from_secs(2))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_for_make_run() {
        let settings = Settings::from_env(&Env::from_pairs([("", "")])).expect("defaults parse");
        assert_eq!(settings.grpc_addr.port(), 50051);
        assert_eq!(settings.admin_addr.port(), 9461);
    }

    #[test]
    fn a_bad_database_url_fails_naming_the_variable() {
        let env = Env::from_pairs([("BOROUGH_DATABASE_URL", "localhost:5432")]);
        let err = Settings::from_env(&env).expect_err("not a URL");
        assert!(err.to_string().contains("BOROUGH_DATABASE_URL"), "{err}");
    }
}
