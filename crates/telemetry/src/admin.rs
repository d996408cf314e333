//! The admin HTTP port every service has: `/healthz` (alive), `/readyz` (ready to take
//! traffic, with the reasons when not) and `/metrics` (Prometheus).
//!
//! Readiness is a set of named checks; the service is ready when every check passes and it
//! is not shutting down. Shutdown fails readiness first, so load balancers stop sending
//! before the listeners close.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::Metrics;

/// Named readiness checks, shared between the probes that update them and `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<ReadinessState>>,
}

#[derive(Default)]
struct ReadinessState {
    /// check name -> None when passing, Some(reason) when failing.
    checks: BTreeMap<&'static str, Option<String>>,
    /// Things an operator should know that do not make the service unready (e.g. running
    /// on a configuration snapshot): shown on `/readyz`.
    notes: BTreeMap<&'static str, String>,
    shutting_down: bool,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a check that fails until it is first reported as passing.
    pub fn register(&self, name: &'static str, initial_reason: &str) {
        self.write()
            .checks
            .insert(name, Some(initial_reason.to_owned()));
    }

    pub fn set_ok(&self, name: &'static str) {
        self.write().checks.insert(name, None);
    }

    pub fn set_failing(&self, name: &'static str, reason: impl Into<String>) {
        self.write().checks.insert(name, Some(reason.into()));
    }

    /// Shows `note` under `name` on `/readyz` without failing readiness (`None` clears it).
    pub fn set_note(&self, name: &'static str, note: Option<String>) {
        let mut state = self.write();
        match note {
            Some(note) => state.notes.insert(name, note),
            None => state.notes.remove(name),
        };
    }

    /// The notes, as `name: note`.
    pub fn notes(&self) -> Vec<String> {
        self.read()
            .notes
            .iter()
            .map(|(name, note)| format!("{name}: {note}"))
            .collect()
    }

    /// From now on the service reports not-ready, whatever its checks say.
    pub fn begin_shutdown(&self) {
        self.write().shutting_down = true;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.read().shutting_down
    }

    /// Whether a check is passing (false when unknown).
    pub fn is_ok(&self, name: &'static str) -> bool {
        matches!(self.read().checks.get(name), Some(None))
    }

    /// `Ok(())` when ready, otherwise the reasons, one per failing check.
    pub fn status(&self) -> Result<(), Vec<String>> {
        let state = self.read();
        let mut reasons: Vec<String> = state
            .checks
            .iter()
            .filter_map(|(name, reason)| reason.as_ref().map(|r| format!("{name}: {r}")))
            .collect();
        if state.shutting_down {
            reasons.insert(0, "shutting down".to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ReadinessState> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReadinessState> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub service: &'static str,
    pub readiness: Readiness,
    pub metrics: Metrics,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin router until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin server running on its own task.
pub struct AdminServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Starts serving the admin router on `listener`.
    pub fn spawn(listener: TcpListener, state: AdminState) -> AdminServer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        AdminServer { stop, task }
    }

    /// Stops it and waits for in-flight probes to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Ok(()))
    }
}

async fn healthz(State(state): State<AdminState>) -> Response {
    Json(serde_json::json!({ "status": "ok", "service": state.service })).into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.status() {
        Ok(()) => Json(serde_json::json!({
            "status": "ready",
            "service": state.service,
            "notes": state.readiness.notes(),
        }))
        .into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "not_ready",
                "service": state.service,
                "reasons": reasons,
                "notes": state.readiness.notes(),
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_failing_check_and_shutdown() {
        let readiness = Readiness::new();
        assert_eq!(readiness.status(), Ok(()));
        readiness.register("database", "not checked yet");
        assert_eq!(
            readiness.status(),
            Err(vec!["database: not checked yet".to_owned()])
        );
        readiness.set_ok("database");
        assert_eq!(readiness.status(), Ok(()));
        readiness.begin_shutdown();
        assert_eq!(readiness.status(), Err(vec!["shutting down".to_owned()]));
    }
}
