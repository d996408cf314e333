//! Fan-out of changes to watchers, across replicas.
//!
//! One [`Hub`] per replica follows `LISTEN borough_config_changed` on its own connection.
//! On every notification — and on every (re)subscription, and every 2 s without one — it
//! reads `config.history` after the last revision it has published, in order, and
//! publishes each change on a broadcast channel. Reading from the table (not trusting
//! payloads) means a missed notification cannot lose a change: the next read picks it up.
//!
//! A watch first subscribes to the hub, then replays history after its `from_revision`
//! from the table, then forwards live changes above the last revision it sent: nothing is
//! missed between replay and live, and nothing is sent twice. A watcher too slow for the
//! broadcast buffer replays from the table again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use borough_proto::config::v1::{Change, WatchEvent, watch_event::Event};
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::store::Store;

pub const CHANNEL: &str = "borough_config_changed";
/// Changes buffered per replica for watchers that fall behind.
const BROADCAST_BUFFER: usize = 4096;
/// Rows per replay query.
const REPLAY_PAGE: i64 = 500;

#[derive(Clone)]
pub struct Hub {
    changes: broadcast::Sender<Arc<Change>>,
    published: Arc<AtomicI64>,
    /// Becomes true when the replica shuts down: every watch stream then ends (its client
    /// reconnects to another replica), so draining does not wait on them forever.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Hub {
    /// Starts following the store's database.
    pub fn start(
        store: Store,
        options: sqlx::postgres::PgConnectOptions,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Hub {
        let (changes, _) = broadcast::channel(BROADCAST_BUFFER);
        let hub = Hub {
            changes,
            published: Arc::new(AtomicI64::new(-1)),
            stopping,
        };
        tokio::spawn(hub.clone().follow(store, options));
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    async fn follow(self, store: Store, options: sqlx::postgres::PgConnectOptions) {
        let pool = borough_tenancy::db::listener_pool(options);
        loop {
            let subscribed = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            match subscribed {
                Ok(mut listener) => loop {
                    // Caught up first (what was committed while away), then on each wake.
                    if let Err(e) = self.publish_new(&store).await {
                        tracing::warn!(error = %e, "reading config history failed");
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(2), listener.try_recv()).await {
                        Err(_) | Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "config change listener lost");
                            break;
                        }
                    }
                },
                Err(e) => tracing::debug!(error = %e, "config change listener cannot connect"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Publishes every change after the last published one, in order.
    async fn publish_new(&self, store: &Store) -> Result<(), crate::store::ConfigError> {
        let mut after = self.published.load(Ordering::Acquire);
        if after < 0 {
            // Start from now: watchers replay the past from the table themselves.
            after = store.revision().await?;
            self.published.store(after, Ordering::Release);
        }
        loop {
            let changes = store.changes_since(&[], after, REPLAY_PAGE).await?;
            let last_page = (changes.len() as i64) < REPLAY_PAGE;
            for change in changes {
                after = change.revision;
                // No receivers is fine: nobody is watching right now.
                let _ = self.changes.send(Arc::new(change));
            }
            self.published.store(after, Ordering::Release);
            if last_page {
                return Ok(());
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
    namespaces: Vec<String>,
    from_revision: i64,
    out: mpsc::Sender<Outgoing>,
) {
    // The hub publishes only changes after the revision it started at: a watcher must
    // subscribe after that, so its replay covers everything before.
    let started = tokio::time::Instant::now();
    while hub.published.load(Ordering::Acquire) < 0 {
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
    let mut live = hub.subscribe();
    let mut stopping = hub.stopping.clone();
    if *stopping.borrow_and_update() {
        return;
    }
    let mut last = from_revision;
    // Replay, then a `synced` marker.
    // Boxed: the replay's database futures would otherwise sit inline in every idle
    // watch task.
    if !Box::pin(replay(&store, &namespaces, &mut last, &out)).await {
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
            received = live.recv() => match received {
                Ok(change) => {
                    if change.revision <= last {
                        continue;
                    }
                    last = change.revision;
                    if namespaces.contains(&change.namespace)
                        && out.send(event((*change).clone())).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the buffer: read what was missed from the table.
                    if !Box::pin(replay(&store, &namespaces, &mut last, &out)).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends every change after `*last`, updating it. False when the watcher is gone or the
/// store failed (the error was sent).
async fn replay(
    store: &Store,
    namespaces: &[String],
    last: &mut i64,
    out: &mpsc::Sender<Outgoing>,
) -> bool {
    loop {
        let changes = match store.changes_since(namespaces, *last, REPLAY_PAGE).await {
            Ok(changes) => changes,
            Err(e) => {
                let _ = out.send(Err(Box::new(e.into()))).await;
                return false;
            }
        };
        let done = (changes.len() as i64) < REPLAY_PAGE;
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
