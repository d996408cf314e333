//! How the router bounds pools and tenants.

use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};

use crate::db::PoolSettings;
use crate::placement;

/// How the router bounds pools and tenants.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// [`RouterSettings::MAX_TENANT_POOLS`].
    pub max_tenant_pools: usize,
    /// [`RouterSettings::TENANT_POOL_MAX_CONNECTIONS`] (and the default pool's acquire
    /// timeout).
    pub tenant_pool: PoolSettings,
    /// [`RouterSettings::TENANT_POOL_IDLE_TIMEOUT`].
    pub pool_idle_timeout: Duration,
    /// [`RouterSettings::TENANT_MAX_CONNECTIONS`].
    pub tenant_max_connections: u32,
    /// [`RouterSettings::TENANT_ACQUIRE_TIMEOUT`].
    pub tenant_acquire_timeout: Duration,
    /// [`RouterSettings::TENANT_ROUTE_TTL`].
    pub route_ttl: Duration,
    /// How tenant databases elsewhere are reached: this service's own login (the default)
    /// or the operator's URLs opened with the secret keys (the user service).
    pub credentials: placement::Credentials,
}

impl RouterSettings {
    pub const MAX_TENANT_POOLS: Var = Var::new(
        "BOROUGH_MAX_TENANT_POOLS",
        "32",
        "Dedicated pools (database tenants, and their read replicas) open at once, least \
         recently used closed first (at least 1)",
    );
    pub const TENANT_POOL_MAX_CONNECTIONS: Var = Var::new(
        "BOROUGH_TENANT_POOL_MAX_CONNECTIONS",
        "4",
        "The size of each dedicated pool",
    );
    pub const TENANT_POOL_IDLE_TIMEOUT: Var = Var::new(
        "BOROUGH_TENANT_POOL_IDLE_TIMEOUT",
        "5m",
        "A dedicated pool unused this long is closed",
    );
    pub const TENANT_MAX_CONNECTIONS: Var = Var::new(
        "BOROUGH_TENANT_MAX_CONNECTIONS",
        "half of BOROUGH_DB_MAX_CONNECTIONS, at least 1",
        "Connections one tenant may hold at once (at least 1); over it, 503 with Retry-After",
    );
    pub const TENANT_ACQUIRE_TIMEOUT: Var = Var::new(
        "BOROUGH_TENANT_ACQUIRE_TIMEOUT",
        "250ms",
        "How long a tenant at its connection cap waits before its 503",
    );
    pub const TENANT_ROUTE_TTL: Var = Var::new(
        "BOROUGH_TENANT_ROUTE_TTL",
        "60s",
        "The backstop lifetime of a cached tenant route (changes are announced at once)",
    );
    pub const VARS: &[&Var] = &[
        &Self::MAX_TENANT_POOLS,
        &Self::TENANT_POOL_MAX_CONNECTIONS,
        &Self::TENANT_POOL_IDLE_TIMEOUT,
        &Self::TENANT_MAX_CONNECTIONS,
        &Self::TENANT_ACQUIRE_TIMEOUT,
        &Self::TENANT_ROUTE_TTL,
    ];

    pub fn from_env(env: &Env, default_pool: &PoolSettings) -> Result<Self, SettingsError> {
        Ok(RouterSettings {
            max_tenant_pools: env.parse_in(&Self::MAX_TENANT_POOLS, 1..=usize::MAX)?,
            tenant_pool: PoolSettings {
                max_connections: env.parse(&Self::TENANT_POOL_MAX_CONNECTIONS)?,
                acquire_timeout: default_pool.acquire_timeout,
            },
            pool_idle_timeout: env.duration(&Self::TENANT_POOL_IDLE_TIMEOUT)?,
            tenant_max_connections: env.parse_in_or(
                &Self::TENANT_MAX_CONNECTIONS,
                (default_pool.max_connections / 2).max(1),
                1..=u32::MAX,
            )?,
            tenant_acquire_timeout: env.duration(&Self::TENANT_ACQUIRE_TIMEOUT)?,
            route_ttl: env.duration(&Self::TENANT_ROUTE_TTL)?,
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
