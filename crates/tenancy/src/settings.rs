//! A service's database settings: the URL of its default database, the default pool, and
//! the tenant router over it (imports both `db` and `router`, which do not import it).

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::db::{PoolSettings, lazy_pool};
use crate::router::{PoolRouter, RouterSettings};

/// Where a service's database is and how its pool behaves.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `BOROUGH_DATABASE_URL`: the control plane and the shared tenant tables, as the
    /// service role.
    pub url: borough_config_client::SecretUrl,
    /// `BOROUGH_DB_MAX_CONNECTIONS` (10) and `BOROUGH_DB_ACQUIRE_TIMEOUT` (3s).
    pub pool: PoolSettings,
    /// Per-tenant pools and caps (`BOROUGH_MAX_TENANT_POOLS`, `BOROUGH_TENANT_*`).
    pub router: RouterSettings,
}

/// The database `make run` creates.
pub const DEFAULT_DATABASE_URL: &str = "postgres://borough_service:borough@127.0.0.1:55432/borough";

impl DatabaseSettings {
    pub fn from_env(
        env: &borough_config_client::Env,
    ) -> Result<Self, borough_config_client::SettingsError> {
        let pool = PoolSettings {
            max_connections: env.parse("BOROUGH_DB_MAX_CONNECTIONS", 10)?,
            acquire_timeout: env.duration("BOROUGH_DB_ACQUIRE_TIMEOUT", Duration::from_secs(3))?,
        };
        Ok(DatabaseSettings {
            url: env.secret_url(
                "BOROUGH_DATABASE_URL",
                DEFAULT_DATABASE_URL,
                &["postgres", "postgresql"],
            )?,
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
