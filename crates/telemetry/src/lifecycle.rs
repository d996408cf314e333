//! Start-up and shutdown shared by every service.
//!
//! Shutdown order: a signal arrives -> readiness fails (load balancers stop sending) ->
//! a grace period lets them notice -> listeners close and in-flight calls drain -> the
//! admin port closes last, so probes see "not ready" rather than "refused" until the end.

use std::future::Future;
use std::time::Duration;

use crate::Readiness;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// Waits for `shutdown`, fails readiness, waits `grace`, then resolves: pass it to the
/// server as its graceful-shutdown future.
pub async fn drain_after(
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
    grace: Duration,
) {
    shutdown.await;
    readiness.begin_shutdown();
    tracing::info!(grace_ms = grace.as_millis() as u64, "not ready; draining");
    tokio::time::sleep(grace).await;
}
