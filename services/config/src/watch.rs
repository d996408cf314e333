//! Fan-out of changes to watchers, across replicas.
//!
//! One [`Hub`] per replica follows `LISTEN borough_config_changed` on its own connection.
//! On every notification — and on every (re)subscription, and every 2 s without one — it
//! reads `config.history` after the last revision it has published, in order, and hands
//! each change to the watchers of that change's namespace only (a queue per watcher, so
//! a change to one tenant's namespace wakes nobody else). Reading from the table (not
//! trusting payloads) means a missed notification cannot lose a change.
//!
//! A watch first subscribes to the hub, then replays history after its `from_revision`
//! from the table, then forwards queued changes above the last revision it sent: nothing
//! is missed between replay and live, and nothing is sent twice. A watcher whose queue is
//! full is marked lagged and woken: it replays what it missed from the table. Revisions
//! are gap-free, so when the hub reads a gap, history was pruned before it was published:
//! every watcher then replays, and one whose history was pruned past what it has seen
//! ends with `FAILED_PRECONDITION` (`x-borough-compacted`) — its client lists again.
//!
//! Bounds: at most `max` watches per replica and `per_tenant` per tenant (the rest are
//! refused with `RESOURCE_EXHAUSTED`); a queue of [`QUEUE`] changes per watcher; replay
//! pages of [`REPLAY_PAGE`] rows or 1 MiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use borough_config_client::{Env, SettingsError, Var};
use borough_proto::config::v1::{Change, WatchEvent, watch_event::Event};
use borough_tenancy::listen::{self, Heard, Next};
use borough_tenant::TenantId;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::store::{ConfigError, Store};

pub const CHANNEL: &str = "borough_config_changed";
/// Changes queued per watcher before it is marked lagged (it then replays from the table).
const QUEUE: usize = 256;
/// Rows per replay query (a page also ends after 1 MiB).
const REPLAY_PAGE: i64 = 64;

/// How many watches one replica serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// [`WatchLimits::MAX`].
    pub max: usize,
    /// [`WatchLimits::MAX_PER_TENANT`].
    pub per_tenant: usize,
}

impl Default for WatchLimits {
    /// The declared defaults.
    fn default() -> Self {
        WatchLimits {
            max: 4096,
            per_tenant: 16,
        }
    }
}

impl WatchLimits {
    pub const MAX: Var = Var::new(
        "BOROUGH_CONFIG_MAX_WATCHES",
        "4096",
        "Watch streams open on this config replica (1 to 1,000,000)",
    );
    pub const MAX_PER_TENANT: Var = Var::new(
        "BOROUGH_CONFIG_MAX_WATCHES_PER_TENANT",
        "16",
        "Watch streams of one tenant on this config replica",
    );
    pub const VARS: &[&Var] = &[&Self::MAX, &Self::MAX_PER_TENANT];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(WatchLimits {
            max: env.parse_in(&Self::MAX, 1..=1_000_000)?,
            per_tenant: env.parse_in(&Self::MAX_PER_TENANT, 1..=1_000_000)?,
        })
    }
}

/// One watcher's queue, as the hub sees it.
struct Subscriber {
    queue: mpsc::Sender<Arc<Change>>,
    /// Set when a change could not be queued (or the hub saw a gap): replay from the table.
    lagged: AtomicBool,
    wake: Notify,
}

#[derive(Default)]
struct Registry {
    /// Subscribers by namespace, each under its id.
    by_namespace: HashMap<String, HashMap<u64, Arc<Subscriber>>>,
    total: usize,
    tenants: HashMap<TenantId, usize>,
}

struct Inner {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    published: AtomicI64,
    limits: WatchLimits,
    /// Becomes true when the replica shuts down: every watch stream then ends (its client
    /// reconnects to another replica), so draining does not wait on them forever.
    stopping: tokio::sync::watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A watcher's subscription: its queue; dropping it unsubscribes.
pub struct Subscription {
    inner: Arc<Inner>,
    id: u64,
    namespaces: Vec<String>,
    tenant: Option<TenantId>,
    subscriber: Arc<Subscriber>,
    queue: mpsc::Receiver<Arc<Change>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for namespace in &self.namespaces {
            if let Some(subscribers) = registry.by_namespace.get_mut(namespace) {
                subscribers.remove(&self.id);
                if subscribers.is_empty() {
                    registry.by_namespace.remove(namespace);
                }
            }
        }
        registry.total = registry.total.saturating_sub(1);
        if let Some(tenant) = self.tenant
            && let Some(n) = registry.tenants.get_mut(&tenant)
        {
            *n -= 1;
            if *n == 0 {
                registry.tenants.remove(&tenant);
            }
        }
    }
}

impl Hub {
    /// Starts following the store's database.
    pub fn start(
        store: Store,
        options: sqlx::postgres::PgConnectOptions,
        limits: WatchLimits,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Hub {
        let hub = Hub {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::default()),
                next_id: AtomicU64::new(0),
                published: AtomicI64::new(-1),
                limits,
                stopping,
            }),
        };
        tokio::spawn(hub.clone().follow(store, options));
        hub
    }

    /// Watches open on this replica.
    pub fn watches(&self) -> usize {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }

    /// Subscribes a watcher of `namespaces` for `tenant` (`None`: the platform), within the
    /// replica's and the tenant's watch limits.
    pub fn subscribe(
        &self,
        namespaces: &[String],
        tenant: Option<TenantId>,
    ) -> Result<Subscription, ConfigError> {
        let limits = self.inner.limits;
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tenant) = tenant
            && registry.tenants.get(&tenant).copied().unwrap_or(0) >= limits.per_tenant
        {
            return Err(ConfigError::TooManyWatches(format!(
                "this tenant has {} watches open on this replica, the most allowed \
                 (BOROUGH_CONFIG_MAX_WATCHES_PER_TENANT)",
                limits.per_tenant
            )));
        }
        if registry.total >= limits.max {
            return Err(ConfigError::TooManyWatches(format!(
                "this replica has {} watches open, the most allowed (BOROUGH_CONFIG_MAX_WATCHES)",
                limits.max
            )));
        }
        let (queue_tx, queue) = mpsc::channel(QUEUE);
        let subscriber = Arc::new(Subscriber {
            queue: queue_tx,
            lagged: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        for namespace in namespaces {
            registry
                .by_namespace
                .entry(namespace.clone())
                .or_default()
                .insert(id, subscriber.clone());
        }
        registry.total += 1;
        if let Some(tenant) = tenant {
            *registry.tenants.entry(tenant).or_default() += 1;
        }
        Ok(Subscription {
            inner: self.inner.clone(),
            id,
            namespaces: namespaces.to_vec(),
            tenant,
            subscriber,
            queue,
        })
    }

    async fn follow(self, store: Store, options: sqlx::postgres::PgConnectOptions) {
        // Caught up first (what was committed while away), then on each wake: a
        // notification, or two quiet seconds.
        let (hub, store) = (&self, &store);
        listen::follow(options, &[CHANNEL], Duration::from_secs(2), |heard| {
            let lost = heard == Heard::Lost;
            async move {
                if lost {
                    return Next::Listen;
                }
                match hub.publish_new(store).await {
                    Ok(()) => Next::Listen,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading config history failed");
                        Next::Resubscribe
                    }
                }
            }
        })
        .await;
    }

    /// Publishes every change after the last published one, in order.
    async fn publish_new(&self, store: &Store) -> Result<(), ConfigError> {
        let mut after = self.inner.published.load(Ordering::Acquire);
        if after < 0 {
            // Start from now: watchers replay the past from the table themselves.
            after = store.revision().await?;
            self.inner.published.store(after, Ordering::Release);
        }
        loop {
            let changes = store.changes_since(&[], after, REPLAY_PAGE).await?;
            let last_page = changes.is_empty();
            for change in changes {
                if change.revision != after + 1 {
                    // Revisions are gap-free: these were pruned before they were published.
                    self.lag_everyone();
                }
                after = change.revision;
                self.publish(Arc::new(change));
            }
            self.inner.published.store(after, Ordering::Release);
            if last_page {
                return Ok(());
            }
        }
    }

    /// Queues `change` for the watchers of its namespace; a full queue marks its watcher
    /// lagged.
    fn publish(&self, change: Arc<Change>) {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(subscribers) = registry.by_namespace.get(&change.namespace) else {
            return;
        };
        for subscriber in subscribers.values() {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                subscriber.queue.try_send(change.clone())
            {
                subscriber.lagged.store(true, Ordering::Release);
                subscriber.wake.notify_one();
            }
        }
    }

    fn lag_everyone(&self) {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for subscribers in registry.by_namespace.values() {
            for subscriber in subscribers.values() {
                subscriber.lagged.store(true, Ordering::Release);
                subscriber.wake.notify_one();
            }
        }
    }
}

/// What a watch task sends its stream: boxed, so an idle stream's buffer holds pointers,
/// not whole events (memory per watcher is a target).
pub type Outgoing = Result<Box<WatchEvent>, Box<Status>>;

fn event(change: Change) -> Outgoing {
    Ok(Box::new(WatchEvent {
        event: Some(Event::Change(change)),
    }))
}

/// Serves one watch into `out` until the watcher goes away.
pub async fn serve_watch(
    hub: Hub,
    store: Store,
    mut subscription: Subscription,
    from_revision: i64,
    out: mpsc::Sender<Outgoing>,
) {
    // The hub publishes only changes after the revision it started at: a watcher must
    // subscribe after that, so its replay covers everything before.
    let started = tokio::time::Instant::now();
    while hub.inner.published.load(Ordering::Acquire) < 0 {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = out
                .send(Err(Box::new(Status::unavailable(
                    "the config store is not reachable yet",
                ))))
                .await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut stopping = hub.inner.stopping.clone();
    if *stopping.borrow_and_update() {
        return;
    }
    let namespaces = subscription.namespaces.clone();
    let mut last = from_revision;
    // A watch from the beginning replays what history is kept: every current value's
    // change is (pruning keeps them), so its state comes out right; only later pruning
    // can take what it has not read yet. A watch from a revision needs everything after it.
    let baseline = if from_revision == 0 {
        match store.compaction(&namespaces).await {
            Ok(compaction) => compaction.map_or(0, |(_, through)| through),
            Err(e) => {
                let _ = out.send(Err(Box::new(e.into()))).await;
                return;
            }
        }
    } else {
        0
    };
    // Replay, then a `synced` marker.
    // Boxed: the replay's database futures would otherwise sit inline in every idle
    // watch task.
    if !Box::pin(replay(&store, &namespaces, &mut last, baseline, &out)).await {
        return;
    }
    let synced = WatchEvent {
        event: Some(Event::Synced(last)),
    };
    if out.send(Ok(Box::new(synced))).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = out.closed() => return,
            // Any change is to `true`; a dropped sender means the replica is gone too.
            _ = stopping.changed() => return,
            () = subscription.subscriber.wake.notified() => {}
            received = subscription.queue.recv() => match received {
                Some(change) => {
                    if change.revision > last {
                        last = change.revision;
                        if out.send(event((*change).clone())).await.is_err() {
                            return;
                        }
                    }
                }
                None => return,
            },
        }
        if subscription.subscriber.lagged.swap(false, Ordering::AcqRel)
            && !Box::pin(replay(&store, &namespaces, &mut last, baseline, &out)).await
        {
            return;
        }
    }
}

/// Sends every change after `*last`, updating it. False when the watcher is gone or the
/// store failed, or history it has not seen was pruned past `baseline` (what was already
/// pruned when a watch from the beginning started): the error was sent.
async fn replay(
    store: &Store,
    namespaces: &[String],
    last: &mut i64,
    baseline: i64,
    out: &mpsc::Sender<Outgoing>,
) -> bool {
    loop {
        let seen = *last;
        let page = async {
            let changes = store.changes_since(namespaces, seen, REPLAY_PAGE).await?;
            // Checked after the read: anything pruned before it is caught either way.
            if let Some((namespace, through)) = store.compaction(namespaces).await?
                && through > seen.max(baseline)
            {
                return Err(ConfigError::Compacted { namespace, through });
            }
            Ok::<_, ConfigError>(changes)
        }
        .await;
        let changes = match page {
            Ok(changes) => changes,
            Err(e) => {
                let _ = out.send(Err(Box::new(e.into()))).await;
                return false;
            }
        };
        let done = changes.is_empty();
        for change in changes {
            *last = change.revision;
            if out.send(event(change)).await.is_err() {
                return false;
            }
        }
        if done {
            return true;
        }
    }
}
