//! Following PostgreSQL `LISTEN` channels on a connection of their own (never one of a
//! service's pooled connections), reconnecting for as long as the follower wants.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};

use crate::db;

/// What a follower hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// Subscribed, or subscribed again after a reconnection: anything announced before
    /// now may have been missed.
    Subscribed,
    /// A notification on one of the channels.
    Notification { channel: &'a str, payload: &'a str },
    /// Nothing for the quiet interval: a chance to poll, or to notice it is no longer
    /// wanted.
    Quiet,
    /// The subscription broke or could not be made; another try follows in a second.
    Lost,
}

/// What the follower wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Listen,
    /// Drop the connection and subscribe again (after a second).
    Resubscribe,
    Stop,
}

/// How long after a loss the next subscription is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a quiet listener's connection has to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the listener's server answers a ping within [`PING_TIMEOUT`].
async fn alive(listener: &mut PgListener) -> bool {
    let ping = sqlx::Executor::execute(&mut *listener, "SELECT 1");
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}

/// Listens on `channels` of the database at `options` and tells `on` what it hears, until
/// `on` answers [`Next::Stop`]. It hears [`Heard::Quiet`] after `quiet` without a
/// notification, once the connection has answered a ping; [`Heard::Lost`] if it has not
/// within [`PING_TIMEOUT`] (so a connection cut off silently is noticed within
/// `quiet` + 2 s). `on` reads what it heard at once; the future it returns may take its
/// time (the next notification waits for it).
pub async fn follow<F>(
    options: PgConnectOptions,
    channels: &[&str],
    quiet: Duration,
    mut on: impl FnMut(Heard<'_>) -> F,
) where
    F: Future<Output = Next>,
{
    let pool = db::listener_pool(options);
    loop {
        let subscribed = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all(channels.iter().copied()).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match subscribed {
            Ok(mut listener) => {
                let mut next = on(Heard::Subscribed).await;
                while next == Next::Listen {
                    next = match tokio::time::timeout(quiet, listener.try_recv()).await {
                        // Quiet: is the connection still there? A network cut leaves it
                        // silent, not closed, for as long as TCP retransmits (minutes).
                        Err(_) => match alive(&mut listener).await {
                            true => on(Heard::Quiet).await,
                            false => {
                                tracing::debug!(?channels, "listener unanswered: lost");
                                match on(Heard::Lost).await {
                                    Next::Stop => Next::Stop,
                                    _ => Next::Resubscribe,
                                }
                            }
                        },
                        Ok(Ok(Some(n))) => {
                            on(Heard::Notification {
                                channel: n.channel(),
                                payload: n.payload(),
                            })
                            .await
                        }
                        // sqlx reconnected: whatever was announced meanwhile is lost.
                        Ok(Ok(None)) => on(Heard::Subscribed).await,
                        Ok(Err(e)) => {
                            tracing::debug!(?channels, error = %e, "listener lost");
                            match on(Heard::Lost).await {
                                Next::Stop => Next::Stop,
                                _ => Next::Resubscribe,
                            }
                        }
                    };
                }
                if next == Next::Stop {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(?channels, error = %e, "listener cannot connect");
                if on(Heard::Lost).await == Next::Stop {
                    return;
                }
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}
