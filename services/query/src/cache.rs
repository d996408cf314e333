//! The query service's user cache: per replica, keyed by (tenant, user id).
//!
//! - **Bounded** in entries and bytes at once: each entry weighs
//!   `max(its size, max_bytes / max_entries)` against a capacity of `max_bytes`, so neither
//!   bound can be exceeded (moka evicts by TinyLFU).
//! - **Fresh for `ttl`**, then re-read. Invalidated sooner by the change feed
//!   ([`crate::feed`]): NOTIFY on every write, the outbox after a reconnect.
//! - **Single-flight**: concurrent misses for one key share one database read (moka's
//!   `try_get_with`), and share its error too.
//! - **Stale copies** of every entry are kept for `stale_ttl` (sharing the same `Arc`), used
//!   only when the database cannot be reached; an invalidated entry loses its stale copy
//!   too, so a known-changed or deleted user is never served.
//! - **Only while followed**: while the change feed a tenant's users depend on is lost
//!   (its listener cut off), nothing can say when a copy goes out of date, so its fresh
//!   copies are dropped and none are kept until the feed is back: every read goes to the
//!   database, and a stale copy (marked) answers when that fails.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use borough_config_client::{Env, SettingsError, Var};
use borough_proto::user::v1::User;
use borough_telemetry::Metrics;
use borough_tenant::TenantId;
use moka::future::Cache;
use moka::notification::RemovalCause;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use uuid::Uuid;

pub type Key = (TenantId, Uuid);

/// A cached user and when it was read.
#[derive(Debug)]
pub struct Cached {
    pub info: User,
    pub read_at: Instant,
}

impl Cached {
    fn weight(&self) -> usize {
        // The strings' heap plus the struct: close enough to bound memory.
        std::mem::size_of::<Self>()
            + self.info.id.len()
            + self.info.name.len()
            + self.info.email.len()
            + 64 // key, Arc and moka's own bookkeeping
    }
}

/// How the user cache is bounded.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// [`CacheSettings::MAX_ENTRIES`].
    pub max_entries: u64,
    /// [`CacheSettings::MAX_BYTES`].
    pub max_bytes: u64,
    /// [`CacheSettings::TTL`].
    pub ttl: Duration,
    /// [`CacheSettings::STALE_TTL`].
    pub stale_ttl: Duration,
}

impl CacheSettings {
    pub const MAX_ENTRIES: Var = Var::new(
        "BOROUGH_CACHE_MAX_ENTRIES",
        "100000",
        "Users cached at most; 0 disables the cache",
    );
    pub const MAX_BYTES: Var = Var::new(
        "BOROUGH_CACHE_MAX_BYTES",
        "64MiB",
        "The cache's memory bound",
    );
    pub const TTL: Var = Var::new(
        "BOROUGH_CACHE_TTL",
        "60s",
        "How long a cached user is served without reading it again (for users cached from \
         then on when changed live); also the bound on staleness should every invalidation \
         be lost",
    )
    .hot("cache.ttl");
    pub const STALE_TTL: Var = Var::new(
        "BOROUGH_CACHE_STALE_TTL",
        "1h",
        "How long a cached copy may be served (marked stale) while the database is unreachable",
    );
    pub const VARS: &[&Var] = &[
        &Self::MAX_ENTRIES,
        &Self::MAX_BYTES,
        &Self::TTL,
        &Self::STALE_TTL,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(CacheSettings {
            max_entries: env.parse(&Self::MAX_ENTRIES)?,
            max_bytes: env.bytes(&Self::MAX_BYTES)? as u64,
            ttl: env.duration(&Self::TTL)?,
            stale_ttl: env.duration(&Self::STALE_TTL)?,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone)]
pub struct CacheMetrics {
    /// `cache_lookups{result="hit"}` and `{result="miss"}`, held so that a lookup does
    /// not go through the family's lock and hash.
    hits: Counter,
    misses: Counter,
    removals: Family<CauseLabels, Counter>,
    stale_serves: Counter,
    unfollowed: Gauge,
    pub invalidation_lag: Histogram,
    pub invalidations: Counter,
}

impl CacheMetrics {
    fn register(metrics: &Metrics) -> Self {
        let lookups = Family::<ResultLabels, Counter>::default();
        // One statement each: the family's guard must be gone before the next creation
        // takes its write lock.
        let hits = lookups
            .get_or_create(&ResultLabels { result: "hit" })
            .clone();
        let misses = lookups
            .get_or_create(&ResultLabels { result: "miss" })
            .clone();
        let m = CacheMetrics {
            hits,
            misses,
            removals: Family::default(),
            stale_serves: Counter::default(),
            unfollowed: Gauge::default(),
            invalidation_lag: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            invalidations: Counter::default(),
        };
        metrics.register(
            "cache_lookups",
            "User cache lookups by result (hit, miss)",
            lookups,
        );
        metrics.register(
            "cache_evictions",
            "Entries leaving the user cache, by cause (size, expired, invalidated)",
            m.removals.clone(),
        );
        metrics.register(
            "cache_stale_serves",
            "Users served from a stale copy because the database was unreachable",
            m.stale_serves.clone(),
        );
        metrics.register(
            "cache_unfollowed_feeds",
            "Change feeds (the default database, tenants' own databases) whose listener is \
             lost: their tenants' users are read from the database on every request",
            m.unfollowed.clone(),
        );
        metrics.register(
            "cache_invalidation_lag_seconds",
            "From a user's change (database clock) to its invalidation here",
            m.invalidation_lag.clone(),
        );
        metrics.register(
            "cache_invalidations",
            "Change notifications applied to the user cache",
            m.invalidations.clone(),
        );
        m
    }
}

/// What a lookup found.
pub struct Found {
    pub user: Arc<Cached>,
    /// Set when this is a stale copy served because the database was unreachable.
    pub stale_for: Option<Duration>,
}

/// Fresh entries expire after the TTL current when they were cached (hot-reloadable).
struct CurrentTtl(Arc<AtomicU64>);

impl moka::Expiry<Key, Arc<Cached>> for CurrentTtl {
    fn expire_after_create(
        &self,
        _: &Key,
        _: &Arc<Cached>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        _: &Arc<Cached>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

#[derive(Clone)]
pub struct UserCache {
    /// `None` when disabled.
    fresh: Option<Cache<Key, Arc<Cached>>>,
    /// The fresh TTL, in milliseconds.
    ttl: Arc<AtomicU64>,
    stale: Option<Cache<Key, Arc<Cached>>>,
    following: Arc<Following>,
    pub metrics: CacheMetrics,
}

/// Which change feeds are followed (see the module's "Only while followed").
#[derive(Default)]
struct Following {
    /// Some feed is lost: the lookup has to ask [`Following::lost`] (false: the fast path).
    any_lost: AtomicBool,
    lost: RwLock<Lost>,
}

#[derive(Default)]
struct Lost {
    /// The default database's feed (shared and schema tenants).
    default: bool,
    /// Tenants whose own database's feed is lost.
    tenants: HashSet<TenantId>,
    /// Tenants with a database (and a feed) of their own.
    own: HashSet<TenantId>,
}

impl Lost {
    fn follows(&self, tenant: TenantId) -> bool {
        match self.own.contains(&tenant) {
            true => !self.tenants.contains(&tenant),
            false => !self.default,
        }
    }

    fn count(&self) -> usize {
        usize::from(self.default) + self.tenants.len()
    }
}

/// `ttl`: fixed (`Ok`), or the current value of a hot setting (`Err`).
fn bounded(
    settings: &CacheSettings,
    ttl: Result<Duration, Arc<AtomicU64>>,
    metrics: Option<CacheMetrics>,
) -> Cache<Key, Arc<Cached>> {
    let floor = (settings.max_bytes / settings.max_entries.max(1)).max(1);
    let mut builder = Cache::builder()
        .max_capacity(settings.max_bytes)
        .weigher(move |_, value: &Arc<Cached>| {
            u32::try_from((value.weight() as u64).max(floor)).unwrap_or(u32::MAX)
        })
        .support_invalidation_closures();
    builder = match ttl {
        Ok(fixed) => builder.time_to_live(fixed),
        Err(current) => builder.expire_after(CurrentTtl(current)),
    };
    if let Some(metrics) = metrics {
        builder = builder.eviction_listener(move |_, _, cause| {
            let cause = match cause {
                RemovalCause::Size => "size",
                RemovalCause::Expired => "expired",
                RemovalCause::Explicit => "invalidated",
                RemovalCause::Replaced => return,
            };
            metrics.removals.get_or_create(&CauseLabels { cause }).inc();
        });
    }
    builder.build()
}

impl UserCache {
    pub fn new(settings: &CacheSettings, metrics: &Metrics) -> Self {
        let m = CacheMetrics::register(metrics);
        let enabled = settings.max_entries > 0 && settings.max_bytes > 0;
        let ttl = Arc::new(AtomicU64::new(settings.ttl.as_millis() as u64));
        UserCache {
            fresh: enabled.then(|| bounded(settings, Err(ttl.clone()), Some(m.clone()))),
            stale: enabled
                .then(|| bounded(settings, Ok(settings.stale_ttl.max(settings.ttl)), None)),
            ttl,
            following: Arc::default(),
            metrics: m,
        }
    }

    /// Whether `tenant`'s changes are followed (its copies may be served as fresh).
    fn follows(&self, tenant: TenantId) -> bool {
        if !self.following.any_lost.load(Ordering::Acquire) {
            return true;
        }
        let lost = self
            .following
            .lost
            .read()
            .unwrap_or_else(|p| p.into_inner());
        lost.follows(tenant)
    }

    /// Applies `change` to what is lost, then keeps the fast path's flag and the gauge
    /// true to it; returns the tenants with a feed of their own.
    fn change_following(&self, change: impl FnOnce(&mut Lost)) -> HashSet<TenantId> {
        let mut lost = self
            .following
            .lost
            .write()
            .unwrap_or_else(|p| p.into_inner());
        change(&mut lost);
        self.following
            .any_lost
            .store(lost.count() > 0, Ordering::Release);
        self.metrics.unfollowed.set(lost.count() as i64);
        lost.own.clone()
    }

    /// The changes of `source` (the default database's feed, or a tenant's own) are lost:
    /// its fresh copies go now, and none are kept until [`UserCache::follow`].
    pub fn unfollow(&self, source: Option<TenantId>) {
        let own = self.change_following(|lost| match source {
            None => lost.default = true,
            Some(tenant) => {
                lost.tenants.insert(tenant);
            }
        });
        if let Some(fresh) = &self.fresh {
            // Only fails when closures are not enabled, which `bounded` does.
            let _ = match source {
                None => fresh.invalidate_entries_if(move |key, _| !own.contains(&key.0)),
                Some(tenant) => fresh.invalidate_entries_if(move |key, _| key.0 == tenant),
            };
        }
    }

    /// The feed of `source` is followed again (and caught up).
    pub fn follow(&self, source: Option<TenantId>) {
        self.change_following(|lost| match source {
            None => lost.default = false,
            Some(tenant) => {
                lost.tenants.remove(&tenant);
            }
        });
    }

    /// The tenants with a database (and a feed) of their own, as the feed follows them.
    pub fn set_own_databases(&self, tenants: HashSet<TenantId>) {
        self.change_following(|lost| {
            lost.tenants.retain(|t| tenants.contains(t));
            lost.own = tenants;
        });
    }

    /// Sets the fresh TTL of entries cached from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl.load(Ordering::Relaxed))
    }

    /// The user, from the cache when fresh (and at least `min_version`), else read by
    /// `load` — once for all concurrent callers. When `load` fails because the database is
    /// unreachable (`is_unreachable`), a stale copy is returned if there is one.
    ///
    /// `load` is called only on a miss, and the miss is a boxed future of its own: a hit
    /// neither builds nor moves the database read's state (several kilobytes, copied at
    /// every move of the caller's future otherwise).
    pub async fn get<E, F, L>(
        &self,
        key: Key,
        min_version: i64,
        load: L,
        is_unreachable: impl Fn(&E) -> bool,
    ) -> Result<Found, Arc<E>>
    where
        E: Send + Sync + 'static,
        L: FnOnce() -> F,
        F: Future<Output = Result<User, E>>,
    {
        if !self.follows(key.0) {
            return Box::pin(self.read_unfollowed(key, min_version, load(), is_unreachable)).await;
        }
        if let Some(fresh) = &self.fresh
            && let Some(user) = fresh.get(&key).await
        {
            if user.info.version >= min_version {
                self.metrics.hits.inc();
                return Ok(Found {
                    user,
                    stale_for: None,
                });
            }
            // The caller has seen a newer version than this copy: read past it.
            fresh.invalidate(&key).await;
        }
        Box::pin(self.miss(key, min_version, load(), is_unreachable)).await
    }

    /// Reads the user (one read for all concurrent callers of a key) and keeps it.
    async fn miss<E, F>(
        &self,
        key: Key,
        min_version: i64,
        load: F,
        is_unreachable: impl Fn(&E) -> bool,
    ) -> Result<Found, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<User, E>>,
    {
        let (Some(fresh), Some(stale)) = (&self.fresh, &self.stale) else {
            let info = load.await.map_err(Arc::new)?;
            return Ok(Found {
                user: Arc::new(Cached {
                    info,
                    read_at: Instant::now(),
                }),
                stale_for: None,
            });
        };
        self.metrics.misses.inc();
        let loaded = fresh
            .try_get_with(key, async {
                let info = load.await?;
                let user = Arc::new(Cached {
                    info,
                    read_at: Instant::now(),
                });
                stale.insert(key, user.clone()).await;
                Ok(user)
            })
            .await;
        match loaded {
            Ok(user) => Ok(Found {
                user,
                stale_for: None,
            }),
            Err(e) if is_unreachable(&e) => self.stale_copy(key, min_version).await.ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// The stale copy of `key` (at least `min_version`), for when the database cannot be
    /// reached; counted as a stale serve.
    async fn stale_copy(&self, key: Key, min_version: i64) -> Option<Found> {
        let user = self.stale.as_ref()?.get(&key).await?;
        if user.info.version < min_version {
            return None;
        }
        self.metrics.stale_serves.inc();
        Some(Found {
            stale_for: Some(user.read_at.elapsed()),
            user,
        })
    }

    /// A read while the tenant's feed is lost: from the database, kept only as a stale
    /// copy; a stale copy when the database cannot be reached.
    async fn read_unfollowed<E, F>(
        &self,
        key: Key,
        min_version: i64,
        load: F,
        is_unreachable: impl Fn(&E) -> bool,
    ) -> Result<Found, Arc<E>>
    where
        F: Future<Output = Result<User, E>>,
    {
        self.metrics.misses.inc();
        match load.await {
            Ok(info) => {
                let user = Arc::new(Cached {
                    info,
                    read_at: Instant::now(),
                });
                if let Some(stale) = &self.stale {
                    stale.insert(key, user.clone()).await;
                }
                Ok(Found {
                    user,
                    stale_for: None,
                })
            }
            Err(e) if is_unreachable(&e) => self
                .stale_copy(key, min_version)
                .await
                .ok_or_else(|| Arc::new(e)),
            Err(e) => Err(Arc::new(e)),
        }
    }

    /// Forgets one user (fresh and stale copies).
    pub async fn invalidate(&self, key: &Key) {
        if let (Some(fresh), Some(stale)) = (&self.fresh, &self.stale) {
            fresh.invalidate(key).await;
            stale.invalidate(key).await;
        }
    }

    /// Forgets every user of a tenant (its changes can no longer be followed).
    pub fn invalidate_tenant(&self, tenant: TenantId) {
        for cache in [&self.fresh, &self.stale].into_iter().flatten() {
            // Only fails when closures are not enabled, which `bounded` does.
            let _ = cache.invalidate_entries_if(move |key, _| key.0 == tenant);
        }
    }

    /// The tenants with users in the cache (fresh or stale).
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = [&self.fresh, &self.stale]
            .into_iter()
            .flatten()
            .flat_map(|cache| cache.iter().map(|(key, _)| key.0))
            .collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings() -> CacheSettings {
        CacheSettings {
            max_entries: 100,
            max_bytes: 1024 * 1024,
            ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(600),
        }
    }

    fn info(version: i64) -> User {
        User {
            id: "u".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            version,
            created_at: None,
            updated_at: None,
        }
    }

    #[derive(Debug)]
    struct Down;

    #[tokio::test]
    async fn concurrent_misses_for_one_key_load_once() {
        let cache = UserCache::new(&settings(), &Metrics::new("test"));
        let loads = Arc::new(AtomicUsize::new(0));
        let key = (TenantId::new_v7(), Uuid::now_v7());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (cache, loads) = (cache.clone(), loads.clone());
            calls.spawn(async move {
                cache
                    .get(
                        key,
                        0,
                        || async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, Down>(info(1))
                        },
                        |_| false,
                    )
                    .await
                    .is_ok()
            });
        }
        while let Some(ok) = calls.join_next().await {
            assert_eq!(ok.ok(), Some(true));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_copy_is_served_only_when_the_database_is_unreachable_and_never_after_invalidation()
     {
        let cache = UserCache::new(
            &CacheSettings {
                ttl: Duration::from_millis(1),
                ..settings()
            },
            &Metrics::new("test"),
        );
        let key = (TenantId::new_v7(), Uuid::now_v7());
        let loaded = cache
            .get(key, 0, || async { Ok::<_, Down>(info(3)) }, |_| true)
            .await;
        assert!(loaded.is_ok_and(|f| f.stale_for.is_none()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = cache
            .get(key, 0, || async { Err::<User, _>(Down) }, |_| true)
            .await;
        assert!(stale.is_ok_and(|f| f.stale_for.is_some() && f.user.info.version == 3));
        // A version newer than the copy is required: no stale serve.
        let newer = cache
            .get(key, 4, || async { Err::<User, _>(Down) }, |_| true)
            .await;
        assert!(newer.is_err());
        cache.invalidate(&key).await;
        let gone = cache
            .get(key, 0, || async { Err::<User, _>(Down) }, |_| true)
            .await;
        assert!(gone.is_err());
    }

    #[tokio::test]
    async fn while_a_feed_is_lost_its_tenants_are_read_every_time_and_served_stale_when_down() {
        let cache = UserCache::new(&settings(), &Metrics::new("test"));
        let (shared, own) = (TenantId::new_v7(), TenantId::new_v7());
        cache.set_own_databases(HashSet::from([own]));
        let (a, b) = ((shared, Uuid::now_v7()), (own, Uuid::now_v7()));
        let loads = AtomicUsize::new(0);
        let up = |version| {
            loads.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Down>(info(version)) }
        };
        for key in [a, b] {
            assert!(cache.get(key, 0, || up(1), |_| true).await.is_ok());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2);

        // The default database's feed is lost: the shared tenant's user is read again (not
        // from its fresh copy), every time; the own-database tenant's stays cached.
        cache.unfollow(None);
        for _ in 0..2 {
            let read = cache.get(a, 0, || up(2), |_| true).await;
            assert!(read.is_ok_and(|f| f.stale_for.is_none() && f.user.info.version == 2));
        }
        assert!(
            cache
                .get(b, 0, || up(9), |_| true)
                .await
                .is_ok_and(|f| f.user.info.version == 1)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 4);
        // Down: the latest copy read, marked stale.
        let down = cache
            .get(a, 0, || async { Err::<User, _>(Down) }, |_| true)
            .await;
        assert!(down.is_ok_and(|f| f.stale_for.is_some() && f.user.info.version == 2));

        // Followed again: cached as before.
        cache.follow(None);
        assert!(cache.get(a, 0, || up(3), |_| true).await.is_ok());
        assert!(
            cache
                .get(a, 0, || up(4), |_| true)
                .await
                .is_ok_and(|f| f.user.info.version == 3)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 5);

        // A tenant's own feed lost: only that tenant is affected.
        cache.unfollow(Some(own));
        assert!(
            cache
                .get(b, 0, || up(5), |_| true)
                .await
                .is_ok_and(|f| f.user.info.version == 5)
        );
        assert!(
            cache
                .get(a, 0, || up(9), |_| true)
                .await
                .is_ok_and(|f| f.user.info.version == 3)
        );
        // Its database closed (no longer its own feed): nothing lost any more.
        cache.set_own_databases(HashSet::new());
        assert!(cache.follows(own));
    }

    #[tokio::test]
    async fn a_hit_never_builds_the_read() {
        let cache = UserCache::new(&settings(), &Metrics::new("test"));
        let key = (TenantId::new_v7(), Uuid::now_v7());
        let built = AtomicUsize::new(0);
        let load = || {
            built.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Down>(info(1)) }
        };
        assert!(cache.get(key, 0, load, |_| false).await.is_ok());
        assert!(cache.get(key, 0, load, |_| false).await.is_ok());
        assert!(cache.get(key, 1, load, |_| false).await.is_ok());
        assert_eq!(built.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_copy_older_than_the_callers_version_is_read_again() {
        let cache = UserCache::new(&settings(), &Metrics::new("test"));
        let key = (TenantId::new_v7(), Uuid::now_v7());
        let first = cache
            .get(key, 0, || async { Ok::<_, Down>(info(1)) }, |_| false)
            .await;
        assert!(first.is_ok());
        let again = cache
            .get(key, 2, || async { Ok::<_, Down>(info(2)) }, |_| false)
            .await;
        assert!(again.is_ok_and(|f| f.user.info.version == 2));
    }

    #[tokio::test]
    async fn entries_never_exceed_the_entry_bound() {
        let cache = UserCache::new(
            &CacheSettings {
                max_entries: 10,
                ..settings()
            },
            &Metrics::new("test"),
        );
        let tenant = TenantId::new_v7();
        for _ in 0..200 {
            let key = (tenant, Uuid::now_v7());
            let _ = cache
                .get(key, 0, || async { Ok::<_, Down>(info(1)) }, |_| false)
                .await;
        }
        let Some(fresh) = &cache.fresh else {
            panic!("the cache is enabled");
        };
        fresh.run_pending_tasks().await;
        assert!(fresh.entry_count() <= 10, "{}", fresh.entry_count());
    }
}
