//! How the router bounds pools and tenants.

use std::time::Duration;

use borough_config_client::{Env, SettingsError};

use crate::db::PoolSettings;
use crate::placement;

/// How the router bounds pools and tenants.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// `BOROUGH_MAX_TENANT_POOLS` (32): dedicated pools (database tenants, and their read
    /// replicas) open at once.
    pub max_tenant_pools: usize,
    /// `BOROUGH_TENANT_POOL_MAX_CONNECTIONS` (4): the size of each dedicated pool.
    pub tenant_pool: PoolSettings,
    /// `BOROUGH_TENANT_POOL_IDLE_TIMEOUT` (5m): a dedicated pool unused this long is closed.
    pub pool_idle_timeout: Duration,
    /// `BOROUGH_TENANT_MAX_CONNECTIONS` (half the default pool, at least 1): connections
    /// one tenant may hold at once.
    pub tenant_max_connections: u32,
    /// `BOROUGH_TENANT_ACQUIRE_TIMEOUT` (250ms): how long a tenant at its cap waits.
    pub tenant_acquire_timeout: Duration,
    /// `BOROUGH_TENANT_ROUTE_TTL` (60s): the backstop lifetime of a cached route.
    pub route_ttl: Duration,
    /// How tenant databases elsewhere are reached: this service's own login (the default)
    /// or the operator's URLs opened with `BOROUGH_SECRET_KEYS` (the user service).
    pub credentials: placement::Credentials,
}

impl RouterSettings {
    pub fn from_env(env: &Env, default_pool: &PoolSettings) -> Result<Self, SettingsError> {
        let max_tenant_pools: usize = env.parse("BOROUGH_MAX_TENANT_POOLS", 32)?;
        let tenant_max_connections: u32 = env.parse(
            "BOROUGH_TENANT_MAX_CONNECTIONS",
            (default_pool.max_connections / 2).max(1),
        )?;
        for (name, value) in [
            ("BOROUGH_MAX_TENANT_POOLS", max_tenant_pools),
            (
                "BOROUGH_TENANT_MAX_CONNECTIONS",
                tenant_max_connections as usize,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::Invalid {
                    name: name.to_owned(),
                    value: "0".to_owned(),
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(RouterSettings {
            max_tenant_pools,
            tenant_pool: PoolSettings {
                max_connections: env.parse("BOROUGH_TENANT_POOL_MAX_CONNECTIONS", 4)?,
                acquire_timeout: default_pool.acquire_timeout,
            },
            pool_idle_timeout: env
                .duration("BOROUGH_TENANT_POOL_IDLE_TIMEOUT", Duration::from_secs(300))?,
            tenant_max_connections,
            tenant_acquire_timeout: env
                .duration("BOROUGH_TENANT_ACQUIRE_TIMEOUT", Duration::from_millis(250))?,
            route_ttl: env.duration("BOROUGH_TENANT_ROUTE_TTL", Duration::from_secs(60))?,
            credentials: placement::Credentials::OwnLogin,
        })
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            max_tenant_pools: 32,
            tenant_pool: PoolSettings {
                max_connections: 4,
                acquire_timeout: Duration::from_secs(3),
            },
            pool_idle_timeout: Duration::from_secs(300),
            tenant_max_connections: 5,
            tenant_acquire_timeout: Duration::from_millis(250),
            route_ttl: Duration::from_secs(60),
            credentials: placement::Credentials::OwnLogin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_settings_reject_zero_bounds_naming_the_variable() {
        let pool = PoolSettings::default();
        let defaults =
            RouterSettings::from_env(&Env::from_pairs([("", "")]), &pool).expect("defaults");
        assert_eq!(defaults.max_tenant_pools, 32);
        assert_eq!(defaults.tenant_max_connections, 5);
        for name in ["BOROUGH_MAX_TENANT_POOLS", "BOROUGH_TENANT_MAX_CONNECTIONS"] {
            let err =
                RouterSettings::from_env(&Env::from_pairs([(name, "0")]), &pool).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
