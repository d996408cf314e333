//! What a service's readiness follows: a dependency it cannot serve without (its
//! database), checked on an interval and closed once the service has drained.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Readiness;

/// A future a [`Dependency`] answers with.
pub type DependencyFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long one check may take before it counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency a service cannot serve without.
pub trait Dependency: Send + Sync + 'static {
    /// The readiness check's name (`database`).
    fn name(&self) -> &'static str;
    /// One check: why the dependency cannot be used, if it cannot (a reason safe to show
    /// on `/readyz`: no address, no credential).
    fn check(&self) -> DependencyFuture<'_, Result<(), String>>;
    /// Releases it, after the service has drained.
    fn close(&self) -> DependencyFuture<'_, ()>;
}

/// Checks `dependency` every `interval` and reports the result as its readiness check
/// (and through `on_change`, e.g. to gRPC health, whenever it flips). Runs until dropped.
pub async fn follow(
    dependency: Arc<dyn Dependency>,
    readiness: Readiness,
    interval: Duration,
    on_change: impl Fn(bool) + Send + 'static,
) {
    let name = dependency.name();
    readiness.register(name, "not checked yet");
    let mut last: Option<bool> = None;
    loop {
        let check = match tokio::time::timeout(CHECK_TIMEOUT, dependency.check()).await {
            Ok(result) => result,
            Err(_) => Err("unreachable (timed out)".to_owned()),
        };
        let ok = check.is_ok();
        match check {
            Ok(()) => readiness.set_ok(name),
            Err(reason) => readiness.set_failing(name, reason),
        }
        if last != Some(ok) {
            if ok {
                tracing::info!(dependency = name, "reachable");
            } else {
                tracing::warn!(dependency = name, "unreachable");
            }
            on_change(ok);
            last = Some(ok);
        }
        tokio::time::sleep(interval).await;
    }
}
