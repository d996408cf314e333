//! Keeps the cache current: applies change notifications, and catches up from the outbox
//! (`user_changes`) whenever a source is (re)subscribed.
//!
//! Bound on staleness: a change is invalidated when its NOTIFY arrives (milliseconds:
//! `borough_cache_invalidation_lag_seconds`). If the listener was away, the re-subscription
//! reads the outbox of every cached tenant from `CATCH_UP_MARGIN` before the moment it was
//! lost; until then (a listener is lost when its connection fails, or when it answers no
//! ping after a quiet spell: `borough_tenancy::listen`), its tenants' users are not served
//! as fresh (`UserCache::unfollow`). If a database tenant's pool closes (so its listener
//! stops), its entries are dropped. When a tenant's route changes (a move switched it),
//! its entries are dropped as the router hears of it (`PoolRouter::route_changes`).
//! In every case the cache TTL (`BOROUGH_CACHE_TTL`) bounds the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borough_tenancy::PoolRouter;
use borough_tenancy::listen::{self, Heard, Next};
use borough_tenant::{TenantContext, TenantId};
use sqlx::postgres::PgConnectOptions;
use tokio::sync::mpsc;
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

/// Where a [`FeedEvent`] comes from: the default server's database (shared and schema
/// tenants), or one database tenant's own database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedSource {
    Default,
    Tenant(TenantId),
}

/// What a listener on one source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A notification's payload.
    Notification(String),
    /// The source is (again) followed: anything announced before now may have been missed.
    Subscribed(FeedSource),
    /// The source is no longer followed (its pool closed, or its listener failed): what is
    /// derived from it can no longer be kept current.
    Lost(FeedSource),
}

/// An event, and which listener sent it (a tenant's listener replaced or stopped may
/// still have events on the way: they are ignored).
type Tagged = (u64, FeedEvent);

/// Follows [`CHANNEL`] on the default database and on every tenant database the router
/// has a pool open for (at most `BOROUGH_MAX_TENANT_POOLS`), and keeps `cache` current.
/// Runs for the life of the service.
pub async fn follow(router: PoolRouter, cache: UserCache) {
    let (sender, mut events) = mpsc::unbounded_channel::<Tagged>();
    let default = tokio::spawn(listen_to(
        router.default_options().clone(),
        FeedSource::Default,
        0,
        sender.clone(),
    ));
    let mut databases = router.open_databases();
    let mut routes = router.route_changes();
    let mut listeners: HashMap<TenantId, Listener> = HashMap::new();
    let mut next_id = 1;
    let mut state = State {
        lost_at: HashMap::new(),
        started: Instant::now(),
    };
    // The databases open already (none, at start), then each change.
    let mut open = databases.borrow_and_update().clone();
    loop {
        listeners.retain(|tenant, listener| {
            let keep = open
                .get(tenant)
                .is_some_and(|at| Arc::ptr_eq(at, &listener.at));
            if !keep {
                listener.task.abort();
                state.closed(&cache, *tenant);
            }
            keep
        });
        cache.set_own_databases(open.keys().copied().collect());
        for (tenant, at) in open.iter() {
            listeners.entry(*tenant).or_insert_with(|| {
                next_id += 1;
                Listener {
                    id: next_id,
                    at: at.clone(),
                    task: tokio::spawn(listen_to(
                        (**at).clone(),
                        FeedSource::Tenant(*tenant),
                        next_id,
                        sender.clone(),
                    )),
                }
            });
        }
        // Events until the set of databases changes.
        loop {
            tokio::select! {
                changed = databases.changed() => {
                    if changed.is_err() {
                        default.abort();
                        for listener in listeners.into_values() {
                            listener.task.abort();
                        }
                        return;
                    }
                    open = databases.borrow_and_update().clone();
                    break;
                }
                changed = routes.recv() => match changed {
                    // A tenant moved (or changed otherwise): what is cached of it came
                    // from where it was.
                    Ok(Some(tenant)) => cache.invalidate_tenant(tenant),
                    // The router's listener reconnected: it re-reads every route; the
                    // cached users stay (a move announces itself, and the TTL bounds a
                    // missed one).
                    Ok(None) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for tenant in cache.tenants() {
                            cache.invalidate_tenant(tenant);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
                Some((id, event)) = events.recv() => {
                    let current = match &event {
                        FeedEvent::Subscribed(FeedSource::Tenant(t)) | FeedEvent::Lost(FeedSource::Tenant(t)) => {
                            listeners.get(t).is_some_and(|l| l.id == id)
                        }
                        _ => true,
                    };
                    if current {
                        state.apply(&router, &cache, event).await;
                    }
                }
            }
        }
    }
}

/// A listener on one tenant's database.
struct Listener {
    id: u64,
    at: Arc<PgConnectOptions>,
    task: tokio::task::JoinHandle<()>,
}

/// Listens on [`CHANNEL`] at `options` and sends what it hears as `id`'s events, until the
/// receiver is gone.
async fn listen_to(
    options: PgConnectOptions,
    source: FeedSource,
    id: u64,
    events: mpsc::UnboundedSender<Tagged>,
) {
    let mut subscribed = false;
    listen::follow(options, &[CHANNEL], Duration::from_secs(5), |heard| {
        let event = match heard {
            Heard::Subscribed => {
                subscribed = true;
                FeedEvent::Subscribed(source)
            }
            Heard::Notification { payload, .. } => FeedEvent::Notification(payload.to_owned()),
            // Said once per loss, not on every failed try after it.
            Heard::Lost if subscribed => {
                subscribed = false;
                FeedEvent::Lost(source)
            }
            Heard::Lost | Heard::Quiet => {
                return std::future::ready(match events.is_closed() {
                    true => Next::Stop,
                    false => Next::Listen,
                });
            }
        };
        std::future::ready(match events.send((id, event)) {
            Ok(()) => Next::Listen,
            Err(_) => Next::Stop,
        })
    })
    .await;
}

/// What the feed remembers between events.
struct State {
    /// When each source was last known followed (for the catch-up window).
    lost_at: HashMap<Option<TenantId>, Instant>,
    started: Instant,
}

fn key(source: FeedSource) -> Option<TenantId> {
    match source {
        FeedSource::Default => None,
        FeedSource::Tenant(tenant) => Some(tenant),
    }
}

impl State {
    /// A listener lost its connection: until it is back (and caught up), its tenants'
    /// copies are not served as fresh.
    fn lost(&mut self, cache: &UserCache, source: FeedSource) {
        self.lost_at.entry(key(source)).or_insert_with(Instant::now);
        cache.unfollow(key(source));
    }

    /// A tenant's database pool closed (idle, LRU): its changes can no longer be followed
    /// at all, so nothing of it is kept.
    fn closed(&mut self, cache: &UserCache, tenant: TenantId) {
        cache.invalidate_tenant(tenant);
        self.lost_at.remove(&Some(tenant));
    }

    async fn apply(&mut self, router: &PoolRouter, cache: &UserCache, event: FeedEvent) {
        match event {
            FeedEvent::Notification(payload) => {
                let Some((tenant, user, _version, at_ms)) = parse_payload(&payload) else {
                    tracing::warn!(payload, "unreadable change notification");
                    return;
                };
                cache.invalidate(&(tenant, user)).await;
                cache.metrics.invalidations.inc();
                let lag = (now_ms() - at_ms).max(0) as f64 / 1000.0;
                cache.metrics.invalidation_lag.observe(lag);
            }
            FeedEvent::Lost(source) => self.lost(cache, source),
            FeedEvent::Subscribed(source) => {
                let (key, tenants) = match source {
                    FeedSource::Default => (None, cache.tenants()),
                    FeedSource::Tenant(t) => (Some(t), vec![t]),
                };
                // Never followed before: since start (nothing cached before then).
                let since =
                    self.lost_at.remove(&key).unwrap_or(self.started).elapsed() + CATCH_UP_MARGIN;
                for tenant in tenants {
                    if let Err(e) = catch_up(router, cache, tenant, since).await {
                        tracing::warn!(tenant = %tenant, error = %e, "catch-up failed: dropping the tenant's cached users");
                        cache.invalidate_tenant(tenant);
                    }
                }
                cache.follow(key);
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
