//! Live status, for the console and anyone with the admin token:
//! `GET /admin/v1/status` (one snapshot) and `GET /admin/v1/status:watch` (Server-Sent
//! Events: a `status` event every [`WATCH_INTERVAL`]).
//!
//! A snapshot holds each config client's applied revision and lag (the config service's
//! view), each backend endpoint this gateway replica balances over with its health and
//! circuit, and per route the request rate, the share of 5xx and 4xx answers and the p99
//! latency over the last interval — read from the gateway's own request metrics (the
//! series `/metrics` exposes), not counted a second time.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use borough_error::Problem;
use borough_net::client::{Backend, BreakerState};
use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde::Serialize;

use crate::auth::Admin;
use crate::console::sampler::RouteDto;
use crate::grpc::Deadline;
use crate::routes::config::{ConfigStatusDto, config_status};
use crate::state::AppState;

/// How often a status watch sends a snapshot.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// One backend endpoint as this gateway replica sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointDto {
    pub address: String,
    /// Passes its gRPC health check.
    pub healthy: bool,
    /// `closed`, `half-open` or `open`.
    pub breaker: &'static str,
}

/// A backend service and its endpoints.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendDto {
    pub name: &'static str,
    pub endpoints: Vec<EndpointDto>,
}

/// Everything the console's status page shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusDto {
    /// When the snapshot was taken (RFC 3339).
    pub at: String,
    /// The config service's clients; `null` (with `config_error`) when it cannot be asked.
    pub config: Option<ConfigStatusDto>,
    pub config_error: Option<String>,
    pub backends: Vec<BackendDto>,
    /// The window `routes` covers, in seconds.
    pub window_seconds: f64,
    /// Routes with traffic since start, busiest first.
    pub routes: Vec<RouteDto>,
}

fn breaker_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "open",
    }
}

/// The backends' endpoints, as this replica balances over them.
pub fn backends(backends: &[(&'static str, Backend)]) -> Vec<BackendDto> {
    backends
        .iter()
        .map(|(name, backend)| BackendDto {
            name,
            endpoints: backend
                .endpoints()
                .into_iter()
                .map(|(address, healthy, breaker)| EndpointDto {
                    address: address.to_string(),
                    healthy,
                    breaker: breaker_name(breaker),
                })
                .collect(),
        })
        .collect()
}

/// A snapshot now. The config service is asked within `deadline`; when it cannot answer,
/// the rest is still reported.
async fn snapshot(state: &AppState, deadline: Deadline) -> StatusDto {
    let (config, config_error) = match config_status(state, deadline).await {
        Ok(status) => (Some(status), None),
        Err(status) => (
            None,
            Some(Problem::from_status(&status).body().detail.to_owned()),
        ),
    };
    let (window, routes) = state.routes.routes();
    StatusDto {
        at: humantime_now(),
        config,
        config_error,
        backends: backends(&state.backends),
        window_seconds: window.as_secs_f64(),
        routes,
    }
}

fn humantime_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET /admin/v1/status`: one snapshot.
#[utoipa::path(get, path = "/admin/v1/status", operation_id = "status", tag = "admin-status",
    summary = "Config clients, backend endpoints and route traffic, now",
    description = "Route rates cover the time since the previous snapshot anyone asked \
                   for (at least a second); the first reports totals only.",
    security(("adminToken" = [])),
    responses((status = 200, description = "The snapshot", body = StatusDto,
        headers(("Cache-Control" = String, description = "no-store")))))]
pub async fn status(State(state): State<AppState>, _: Admin, deadline: Deadline) -> Response {
    let mut response = axum::Json(snapshot(&state, deadline).await).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /admin/v1/status:watch`: a `status` event every two seconds.
#[utoipa::path(get, path = "/admin/v1/status:watch", operation_id = "watchStatus", tag = "admin-status",
    summary = "The status as Server-Sent Events, one snapshot every two seconds",
    description = "Each event is `status` with a snapshot as `GET /admin/v1/status` gives. \
                   A watch holds one of the gateway's watch slots (`BOROUGH_WATCH_MAX`; none free: 503) \
                   and ends after `BOROUGH_WATCH_MAX_DURATION`; reconnect to go on.",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String)))]
pub async fn watch(State(state): State<AppState>, _: Admin) -> Result<Response, Problem> {
    let slot = state.watches.take(None)?;
    let lifetime = state.watches.limits().max_duration;
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(WATCH_INTERVAL))
        .take_until(tokio::time::sleep(lifetime));
    let stream = ticks.then(move |_| {
        let state = state.clone();
        let _slot = &slot;
        async move {
            let deadline = Deadline(Instant::now() + WATCH_INTERVAL);
            let snapshot = snapshot(&state, deadline).await;
            let data = serde_json::to_string(&snapshot).unwrap_or_default();
            Ok::<_, Infallible>(SseEvent::default().event("status").data(data))
        }
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
