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

/// Listens on `channels` of the database at `options` and tells `on` what it hears, until
/// `on` answers [`Next::Stop`]. It hears [`Heard::Quiet`] after `quiet` without a
/// notification. `on` reads what it heard at once; the future it returns may take its
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
                        Err(_) => on(Heard::Quiet).await,
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
