//! Bounds on live config watches (Server-Sent Events): a watch holds a connection, a
//! gRPC stream to the config service and a task for as long as it lives, so there are
//! at most `max` of them on this gateway, at most `per_tenant` per tenant, and each ends
//! after `max_duration` (the client reconnects with `Last-Event-ID` and misses nothing).
//! The slot is held by the response stream itself: it is free again the moment the
//! stream ends or the client goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};
use borough_error::{ErrorKind, Problem};
use borough_tenant::TenantId;
use prometheus_client::metrics::gauge::Gauge;

/// The bounds of config watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// [`WatchLimits::MAX`].
    pub max: usize,
    /// [`WatchLimits::MAX_PER_TENANT`].
    pub per_tenant: usize,
    /// [`WatchLimits::MAX_DURATION`].
    pub max_duration: Duration,
}

impl Default for WatchLimits {
    /// The declared defaults.
    fn default() -> Self {
        WatchLimits {
            max: 1024,
            per_tenant: 8,
            max_duration: Duration::from_secs(3600),
        }
    }
}

impl WatchLimits {
    pub const MAX: Var = Var::new(
        "BOROUGH_WATCH_MAX",
        "1024",
        "Config watches (SSE) open on this gateway (1 to 1,000,000)",
    );
    pub const MAX_PER_TENANT: Var = Var::new(
        "BOROUGH_WATCH_MAX_PER_TENANT",
        "8",
        "Config watches one tenant may have open on this gateway (1 to 100,000)",
    );
    pub const MAX_DURATION: Var = Var::new(
        "BOROUGH_WATCH_MAX_DURATION",
        "1h",
        "A watch then ends; clients resume from the last event id (1s to 7 days)",
    );
    pub const VARS: &[&Var] = &[&Self::MAX, &Self::MAX_PER_TENANT, &Self::MAX_DURATION];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(WatchLimits {
            max: env.parse_in(&Self::MAX, 1..=1_000_000)?,
            per_tenant: env.parse_in(&Self::MAX_PER_TENANT, 1..=100_000)?,
            max_duration: env.duration_in(
                &Self::MAX_DURATION,
                Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600),
            )?,
        })
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    tenants: HashMap<TenantId, usize>,
}

/// The watches open on this gateway.
pub struct WatchSlots {
    limits: WatchLimits,
    open: Mutex<Open>,
    gauge: Gauge,
}

/// One open watch; dropping it frees its slot.
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    tenant: Option<TenantId>,
}

impl WatchSlots {
    pub fn new(limits: WatchLimits) -> Arc<Self> {
        Arc::new(WatchSlots {
            limits,
            open: Mutex::new(Open::default()),
            gauge: Gauge::default(),
        })
    }

    pub fn limits(&self) -> WatchLimits {
        self.limits
    }

    pub fn register_metrics(&self, metrics: &borough_telemetry::Metrics) {
        metrics.register(
            "config_watches_open",
            "Config watches (SSE) open on this gateway (bounded by BOROUGH_WATCH_MAX)",
            self.gauge.clone(),
        );
    }

    /// A slot for a watch of `tenant` (`None`: the platform admin's), or the problem to
    /// answer with: 429 over the tenant's share, 503 when the gateway is full.
    pub fn take(self: &Arc<Self>, tenant: Option<TenantId>) -> Result<WatchSlot, Problem> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tenant) = tenant
            && open.tenants.get(&tenant).copied().unwrap_or(0) >= self.limits.per_tenant
        {
            return Err(Problem::new(
                ErrorKind::RateLimited,
                format!(
                    "this tenant already has {} config watches open here, the most allowed \
                     (BOROUGH_WATCH_MAX_PER_TENANT); close one first",
                    self.limits.per_tenant
                ),
            )
            .with_retry_after(5));
        }
        if open.total >= self.limits.max {
            return Err(Problem::new(
                ErrorKind::Unavailable,
                "this gateway has as many config watches open as it allows; retry shortly",
            )
            .with_retry_after(5));
        }
        open.total += 1;
        if let Some(tenant) = tenant {
            *open.tenants.entry(tenant).or_default() += 1;
        }
        self.gauge
            .set(i64::try_from(open.total).unwrap_or(i64::MAX));
        Ok(WatchSlot {
            slots: self.clone(),
            tenant,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(tenant) = self.tenant
            && let Some(n) = open.tenants.get_mut(&tenant)
        {
            *n -= 1;
            if *n == 0 {
                open.tenants.remove(&tenant);
            }
        }
        self.slots
            .gauge
            .set(i64::try_from(open.total).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_capped_per_tenant_and_in_total_and_freed_on_drop() {
        let slots = WatchSlots::new(WatchLimits {
            max: 3,
            per_tenant: 2,
            max_duration: Duration::from_secs(60),
        });
        let (a, b) = (TenantId::new_v7(), TenantId::new_v7());
        let a1 = slots.take(Some(a)).expect("first");
        let _a2 = slots.take(Some(a)).expect("second");
        let refused = slots.take(Some(a)).err().expect("over the tenant's share");
        assert_eq!(refused.kind, ErrorKind::RateLimited);
        let _b1 = slots.take(Some(b)).expect("another tenant");
        let full = slots.take(None).err().expect("gateway full");
        assert_eq!(full.kind, ErrorKind::Unavailable);
        drop(a1);
        assert!(slots.take(Some(a)).is_ok(), "a slot came back");
    }
}
