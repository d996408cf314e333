//! Keeps the cache current: applies change notifications, and catches up from the outbox
//! (`user_changes`) whenever a source is (re)subscribed.
//!
//! Bound on staleness: a change is invalidated when its NOTIFY arrives (milliseconds:
//! `borough_cache_invalidation_lag_seconds`). If the listener was away, the re-subscription
//! reads the outbox of every cached tenant from `CATCH_UP_MARGIN` before the moment it was
//! lost. If a database tenant's pool (and so its listener) closes, its entries are dropped.
//! In every case the cache TTL (`BOROUGH_CACHE_TTL`) bounds the rest.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borough_tenancy::router::{FeedEvent, FeedSource};
use borough_tenancy::{PoolRouter, TenantContext, TenantId};
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

use crate::cache::UserCache;

/// The channel the `users` trigger notifies on (`migrations/tenant/0002`).
pub const CHANNEL: &str = "borough_user_changed";

/// How far before a listener was lost the catch-up reads: covers transactions that started
/// (and stamped their changes) before the loss but committed after.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(30);

/// `<tenant>:<user>:<version>:<epoch ms>`.
pub fn parse_payload(payload: &str) -> Option<(TenantId, Uuid, i64, i64)> {
    let mut parts = payload.split(':');
    let tenant = parts.next()?.parse().ok()?;
    let user = parts.next()?.parse().ok()?;
    let version = parts.next()?.parse().ok()?;
    let at_ms = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((tenant, user, version, at_ms))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Runs until the router (the sender) is gone.
pub async fn follow(
    mut events: UnboundedReceiver<FeedEvent>,
    router: PoolRouter,
    cache: UserCache,
) {
    // When each source was last known followed (for the catch-up window).
    let mut lost_at: HashMap<Option<TenantId>, Instant> = HashMap::new();
    let started = Instant::now();
    while let Some(event) = events.recv().await {
        match event {
            FeedEvent::Notification(payload) => {
                let Some((tenant, user, _version, at_ms)) = parse_payload(&payload) else {
                    tracing::warn!(payload, "unreadable change notification");
                    continue;
                };
                cache.invalidate(&(tenant, user)).await;
                cache.metrics.invalidations.inc();
                let lag = (now_ms() - at_ms).max(0) as f64 / 1000.0;
                cache.metrics.invalidation_lag.observe(lag);
            }
            FeedEvent::Lost(FeedSource::Default) => {
                lost_at.entry(None).or_insert_with(Instant::now);
            }
            FeedEvent::Lost(FeedSource::Tenant(tenant)) => {
                // Its changes can no longer be followed.
                cache.invalidate_tenant(tenant);
                lost_at.remove(&Some(tenant));
            }
            FeedEvent::Subscribed(source) => {
                let (key, tenants) = match source {
                    FeedSource::Default => (None, cache.tenants()),
                    FeedSource::Tenant(t) => (Some(t), vec![t]),
                };
                // Never followed before: since start (nothing cached before then).
                let since = lost_at.remove(&key).unwrap_or(started).elapsed() + CATCH_UP_MARGIN;
                for tenant in tenants {
                    if let Err(e) = catch_up(&router, &cache, tenant, since).await {
                        tracing::warn!(tenant = %tenant, error = %e, "catch-up failed: dropping the tenant's cached users");
                        cache.invalidate_tenant(tenant);
                    }
                }
            }
        }
    }
}

/// Invalidates every user of `tenant` changed in the last `window` (outbox).
async fn catch_up(
    router: &PoolRouter,
    cache: &UserCache,
    tenant: TenantId,
    window: Duration,
) -> Result<(), anyhow::Error> {
    let ctx = TenantContext::new(tenant);
    let mut tx = router.begin_read(&ctx).await?;
    let changed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM user_changes
          WHERE tenant_id = $1 AND changed_at >= now() - make_interval(secs => $2)",
    )
    .bind(tenant.as_uuid())
    .bind(window.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for user in &changed {
        cache.invalidate(&(tenant, *user)).await;
    }
    if !changed.is_empty() {
        tracing::info!(tenant = %tenant, users = changed.len(), "caught up on missed changes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_only_in_the_trigger_format() {
        let (t, u) = (TenantId::new_v7(), Uuid::now_v7());
        assert_eq!(
            parse_payload(&format!("{t}:{u}:3:1700000000000")),
            Some((t, u, 3, 1_700_000_000_000))
        );
        for bad in [
            "",
            "x",
            &format!("{t}:{u}:3"),
            &format!("{t}:{u}:3:1:extra"),
        ] {
            assert_eq!(parse_payload(bad), None, "{bad}");
        }
    }
}
