//! A backend client's settings, from `BOROUGH_*` variables.

use std::time::Duration;

use borough_config_client::{Env, SettingsError};

/// How a backend's client discovers, balances, breaks circuits and retries.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `BOROUGH_RESOLVE_INTERVAL` (5s): how often DNS names are resolved again.
    pub resolve_interval: Duration,
    /// `BOROUGH_HEALTH_INTERVAL` (1s): how often each endpoint's gRPC health is checked.
    pub health_interval: Duration,
    /// `BOROUGH_CONNECT_TIMEOUT` (1s).
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

/// When an endpoint's circuit opens and how it closes again.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// `BOROUGH_BREAKER_WINDOW` (1s): the sliding window failures are counted over.
    pub window: Duration,
    /// `BOROUGH_BREAKER_MIN_CALLS` (5): calls in the window before the rate counts.
    pub min_calls: u32,
    /// `BOROUGH_BREAKER_FAILURE_RATE` (0.5): the failure rate that opens the circuit.
    pub failure_rate: f64,
    /// `BOROUGH_BREAKER_OPEN_FOR` (1s): how long an open circuit fails fast.
    pub open_for: Duration,
    /// `BOROUGH_BREAKER_PROBES` (3): probe calls that must succeed to close it again.
    pub probes: u32,
}

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// `BOROUGH_RETRY_MAX_ATTEMPTS` (3): attempts per call, the first included.
    pub max_attempts: u32,
    /// `BOROUGH_RETRY_BASE` (25ms) and `BOROUGH_RETRY_CAP` (500ms): the backoff before
    /// retry n is uniformly random in [0, min(cap, base × 2^n)).
    pub base: Duration,
    pub cap: Duration,
    /// `BOROUGH_RETRY_BUDGET` (0.2): retries may add at most this fraction of the calls made,
    /// plus `BOROUGH_RETRY_MIN_PER_SEC` (10) a second, so they cannot multiply an outage.
    pub budget_ratio: f64,
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
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let d = ClientSettings::default();
        let invalid = |name: &str, value: String, reason: &str| SettingsError::Invalid {
            name: name.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        let settings = ClientSettings {
            resolve_interval: env.duration("BOROUGH_RESOLVE_INTERVAL", d.resolve_interval)?,
            health_interval: env.duration("BOROUGH_HEALTH_INTERVAL", d.health_interval)?,
            connect_timeout: env.duration("BOROUGH_CONNECT_TIMEOUT", d.connect_timeout)?,
            breaker: BreakerSettings {
                window: env.duration("BOROUGH_BREAKER_WINDOW", d.breaker.window)?,
                min_calls: env.parse("BOROUGH_BREAKER_MIN_CALLS", d.breaker.min_calls)?,
                failure_rate: env.parse("BOROUGH_BREAKER_FAILURE_RATE", d.breaker.failure_rate)?,
                open_for: env.duration("BOROUGH_BREAKER_OPEN_FOR", d.breaker.open_for)?,
                probes: env.parse("BOROUGH_BREAKER_PROBES", d.breaker.probes)?,
            },
            retry: RetrySettings {
                max_attempts: env.parse("BOROUGH_RETRY_MAX_ATTEMPTS", d.retry.max_attempts)?,
                base: env.duration("BOROUGH_RETRY_BASE", d.retry.base)?,
                cap: env.duration("BOROUGH_RETRY_CAP", d.retry.cap)?,
                budget_ratio: env.parse("BOROUGH_RETRY_BUDGET", d.retry.budget_ratio)?,
                budget_min_per_sec: env
                    .parse("BOROUGH_RETRY_MIN_PER_SEC", d.retry.budget_min_per_sec)?,
            },
        };
        let rate = settings.breaker.failure_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(invalid(
                "BOROUGH_BREAKER_FAILURE_RATE",
                rate.to_string(),
                "must be more than 0 and at most 1",
            ));
        }
        if settings.breaker.window.is_zero() {
            return Err(invalid(
                "BOROUGH_BREAKER_WINDOW",
                "0".to_owned(),
                "must be more than zero",
            ));
        }
        if settings.retry.max_attempts == 0 {
            return Err(invalid(
                "BOROUGH_RETRY_MAX_ATTEMPTS",
                "0".to_owned(),
                "must be at least 1 (1: no retries)",
            ));
        }
        let budget = settings.retry.budget_ratio;
        if !(0.0..=1.0).contains(&budget) || !settings.retry.budget_min_per_sec.is_finite() {
            return Err(invalid(
                "BOROUGH_RETRY_BUDGET",
                budget.to_string(),
                "must be between 0 and 1",
            ));
        }
        Ok(settings)
    }
}
