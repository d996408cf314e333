//! A service's database settings: the URL of its default database, the default pool, and
//! the tenant router over it (imports both `db` and `router`, which do not import it).

use borough_config_client::{Env, SettingsError, Var};
use sqlx::postgres::PgConnectOptions;

use crate::db::{PoolSettings, lazy_pool};
use crate::router::{PoolRouter, RouterSettings};

/// Where a service's database is and how its pool behaves.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// [`DatabaseSettings::URL`].
    pub url: borough_config_client::SecretUrl,
    /// [`DatabaseSettings::MAX_CONNECTIONS`] and [`DatabaseSettings::ACQUIRE_TIMEOUT`].
    pub pool: PoolSettings,
    /// Per-tenant pools and caps ([`RouterSettings`]).
    pub router: RouterSettings,
}

/// The database `make run` creates.
pub const DEFAULT_DATABASE_URL: &str = "postgres://borough_service:borough@127.0.0.1:55432/borough";

impl DatabaseSettings {
    pub const URL: Var = Var::new(
        "BOROUGH_DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "The control plane and the shared tenant tables, as the service's own login",
    )
    .secret();
    pub const MAX_CONNECTIONS: Var = Var::new(
        "BOROUGH_DB_MAX_CONNECTIONS",
        "10",
        "The default pool's size",
    );
    pub const ACQUIRE_TIMEOUT: Var = Var::new(
        "BOROUGH_DB_ACQUIRE_TIMEOUT",
        "3s",
        "How long a call waits for a pooled connection before failing as unavailable",
    );
    pub const VARS: &[&Var] = &[&Self::URL, &Self::MAX_CONNECTIONS, &Self::ACQUIRE_TIMEOUT];

    /// Every setting of a database-backed service's pools, the router's included.
    pub fn vars() -> impl Iterator<Item = &'static Var> {
        Self::VARS.iter().chain(RouterSettings::VARS).copied()
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let pool = PoolSettings {
            max_connections: env.parse(&Self::MAX_CONNECTIONS)?,
            acquire_timeout: env.duration(&Self::ACQUIRE_TIMEOUT)?,
        };
        Ok(DatabaseSettings {
            url: env.secret_url(&Self::URL, &["postgres", "postgresql"])?,
            router: RouterSettings::from_env(env, &pool)?,
            pool,
        })
    }

    /// The default pool (lazy) and the tenant router over it.
    pub fn router(&self, metrics: &borough_telemetry::Metrics) -> Result<PoolRouter, sqlx::Error> {
        let options: PgConnectOptions = self.url.expose().parse()?;
        let pool = lazy_pool(self.url.expose(), &self.pool)?;
        Ok(PoolRouter::new(pool, options, self.router.clone(), metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borough_config_client::Env;

    #[test]
    fn database_settings_default_to_make_run_and_name_bad_variables() {
        let settings = DatabaseSettings::from_env(&Env::from_pairs([("", "")])).expect("defaults");
        assert_eq!(settings.url.expose(), DEFAULT_DATABASE_URL);
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains(":borough@"),
            "the password shows in {debug}"
        );
        assert_eq!(settings.pool.max_connections, 10);
        for (name, value) in [
            ("BOROUGH_DATABASE_URL", "localhost:5432"),
            ("BOROUGH_DB_MAX_CONNECTIONS", "many"),
            ("BOROUGH_DB_ACQUIRE_TIMEOUT", "-"),
        ] {
            let err =
                DatabaseSettings::from_env(&Env::from_pairs([(name, value)])).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
