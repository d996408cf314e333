//! A backend client's settings.

use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};

/// How a backend's client discovers, balances, breaks circuits and retries.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// [`ClientSettings::RESOLVE_INTERVAL`].
    pub resolve_interval: Duration,
    /// [`ClientSettings::HEALTH_INTERVAL`].
    pub health_interval: Duration,
    /// [`ClientSettings::CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

/// When an endpoint's circuit opens and how it closes again.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// [`ClientSettings::BREAKER_WINDOW`].
    pub window: Duration,
    /// [`ClientSettings::BREAKER_MIN_CALLS`].
    pub min_calls: u32,
    /// [`ClientSettings::BREAKER_FAILURE_RATE`].
    pub failure_rate: f64,
    /// [`ClientSettings::BREAKER_OPEN_FOR`].
    pub open_for: Duration,
    /// [`ClientSettings::BREAKER_PROBES`].
    pub probes: u32,
}

/// How calls are retried: the backoff before retry n is uniformly random in
/// [0, min(cap, base × 2^n)).
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// [`ClientSettings::RETRY_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// [`ClientSettings::RETRY_BASE`].
    pub base: Duration,
    /// [`ClientSettings::RETRY_CAP`].
    pub cap: Duration,
    /// [`ClientSettings::RETRY_BUDGET`].
    pub budget_ratio: f64,
    /// [`ClientSettings::RETRY_MIN_PER_SEC`].
    pub budget_min_per_sec: f64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            resolve_interval: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            breaker: BreakerSettings {
                window: Duration::from_secs(1),
                min_calls: 5,
                failure_rate: 0.5,
                open_for: Duration::from_secs(1),
                probes: 3,
            },
            retry: RetrySettings {
                max_attempts: 3,
                base: Duration::from_millis(25),
                cap: Duration::from_millis(500),
                budget_ratio: 0.2,
                budget_min_per_sec: 10.0,
            },
        }
    }
}

impl ClientSettings {
    pub const RESOLVE_INTERVAL: Var = Var::new(
        "BOROUGH_RESOLVE_INTERVAL",
        "5s",
        "How often backend DNS names are resolved again",
    );
    pub const HEALTH_INTERVAL: Var = Var::new(
        "BOROUGH_HEALTH_INTERVAL",
        "1s",
        "How often each backend endpoint's gRPC health is checked",
    );
    pub const CONNECT_TIMEOUT: Var = Var::new(
        "BOROUGH_CONNECT_TIMEOUT",
        "1s",
        "How long a connection to a backend endpoint may take",
    );
    pub const BREAKER_WINDOW: Var = Var::new(
        "BOROUGH_BREAKER_WINDOW",
        "1s",
        "The sliding window an endpoint's failures are counted over (more than zero)",
    );
    pub const BREAKER_MIN_CALLS: Var = Var::new(
        "BOROUGH_BREAKER_MIN_CALLS",
        "5",
        "Calls in the window before the failure rate counts",
    );
    pub const BREAKER_FAILURE_RATE: Var = Var::new(
        "BOROUGH_BREAKER_FAILURE_RATE",
        "0.5",
        "The failure rate that opens an endpoint's circuit (more than 0, at most 1)",
    );
    pub const BREAKER_OPEN_FOR: Var = Var::new(
        "BOROUGH_BREAKER_OPEN_FOR",
        "1s",
        "How long an open circuit fails fast before probing",
    );
    pub const BREAKER_PROBES: Var = Var::new(
        "BOROUGH_BREAKER_PROBES",
        "3",
        "Probe calls that must succeed to close the circuit again",
    );
    pub const RETRY_MAX_ATTEMPTS: Var = Var::new(
        "BOROUGH_RETRY_MAX_ATTEMPTS",
        "3",
        "Attempts per call, the first included (1: no retries)",
    );
    pub const RETRY_BASE: Var = Var::new(
        "BOROUGH_RETRY_BASE",
        "25ms",
        "The backoff's base: retry n waits a random time below min(cap, base × 2^n)",
    );
    pub const RETRY_CAP: Var = Var::new("BOROUGH_RETRY_CAP", "500ms", "The backoff's cap");
    pub const RETRY_BUDGET: Var = Var::new(
        "BOROUGH_RETRY_BUDGET",
        "0.2",
        "Retries may add at most this fraction of the calls made (0 to 1), so they cannot \
         multiply an outage",
    );
    pub const RETRY_MIN_PER_SEC: Var = Var::new(
        "BOROUGH_RETRY_MIN_PER_SEC",
        "10",
        "Retries a second allowed beside the budget's fraction (for quiet periods)",
    );
    pub const VARS: &[&Var] = &[
        &Self::RESOLVE_INTERVAL,
        &Self::HEALTH_INTERVAL,
        &Self::CONNECT_TIMEOUT,
        &Self::BREAKER_WINDOW,
        &Self::BREAKER_MIN_CALLS,
        &Self::BREAKER_FAILURE_RATE,
        &Self::BREAKER_OPEN_FOR,
        &Self::BREAKER_PROBES,
        &Self::RETRY_MAX_ATTEMPTS,
        &Self::RETRY_BASE,
        &Self::RETRY_CAP,
        &Self::RETRY_BUDGET,
        &Self::RETRY_MIN_PER_SEC,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let fraction = |var: &Var, ok: fn(f64) -> bool, reason: &str| {
            let value: f64 = env.parse(var)?;
            match ok(value) {
                true => Ok(value),
                false => Err(SettingsError::Invalid {
                    name: var.name.to_owned(),
                    value: value.to_string(),
                    reason: reason.to_owned(),
                }),
            }
        };
        Ok(ClientSettings {
            resolve_interval: env.duration(&Self::RESOLVE_INTERVAL)?,
            health_interval: env.duration(&Self::HEALTH_INTERVAL)?,
            connect_timeout: env.duration(&Self::CONNECT_TIMEOUT)?,
            breaker: BreakerSettings {
                window: env.duration_in(
                    &Self::BREAKER_WINDOW,
                    Duration::from_millis(1)..=borough_config_client::MAX_DURATION,
                )?,
                min_calls: env.parse(&Self::BREAKER_MIN_CALLS)?,
                failure_rate: fraction(
                    &Self::BREAKER_FAILURE_RATE,
                    |r| r > 0.0 && r <= 1.0,
                    "must be more than 0 and at most 1",
                )?,
                open_for: env.duration(&Self::BREAKER_OPEN_FOR)?,
                probes: env.parse(&Self::BREAKER_PROBES)?,
            },
            retry: RetrySettings {
                max_attempts: env.parse_in(&Self::RETRY_MAX_ATTEMPTS, 1..=u32::MAX)?,
                base: env.duration(&Self::RETRY_BASE)?,
                cap: env.duration(&Self::RETRY_CAP)?,
                budget_ratio: fraction(
                    &Self::RETRY_BUDGET,
                    |r| (0.0..=1.0).contains(&r),
                    "must be between 0 and 1",
                )?,
                budget_min_per_sec: fraction(
                    &Self::RETRY_MIN_PER_SEC,
                    |r| r.is_finite() && r >= 0.0,
                    "must be a number of retries a second, 0 or more",
                )?,
            },
        })
    }
}
