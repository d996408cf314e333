//! The gateway's own middleware; `lib.rs` composes them with tower-http's in order.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use borough_error::{PROBLEM_JSON, Problem};
use borough_telemetry::trace::{REQUEST_ID, TRACEPARENT, TraceContext};
use http::{HeaderValue, header};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::grpc::Deadline;

/// Request ids for requests that come without one: 32 random hex digits.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestHex;

impl MakeRequestId for MakeRequestHex {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&TraceContext::new_root().trace_id)
            .ok()
            .map(RequestId::new)
    }
}

/// The span of one HTTP request, and its trace: continues the caller's W3C trace
/// (`traceparent`, `tracestate`) or starts one, stamps the request's deadline, runs the
/// rest of the stack inside both, and logs the outcome. The span carries `request_id` and
/// `trace_id` (on every log line) and the OpenTelemetry HTTP server attributes; its name
/// becomes `METHOD /route/{template}` once routing knows the template.
pub async fn trace_request(
    State(timeout): State<Duration>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        method = %method,
        route = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.path = %request.uri().path(),
    );
    let ctx = match borough_telemetry::otel::continue_trace(&span, request.headers()) {
        Some((trace_id, span_id)) => TraceContext { trace_id, span_id },
        None => TraceContext::from_traceparent(
            request
                .headers()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        ),
    };
    span.record("trace_id", ctx.trace_id.as_str());
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + timeout));
    request.extensions_mut().insert(ctx.clone());
    let response =
        tracing::Instrument::instrument(ctx.scope(next.run(request)), span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "finished processing request"
        );
    });
    response
}

/// Error responses made by framework layers (404 no route, 405, 408/504 timeout, 413 body
/// limit, 415) come as bare text: give them the same problem+json body as ours.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let detail = match status.as_u16() {
        404 => "no such route".to_owned(),
        405 => "method not allowed on this route".to_owned(),
        408 | 504 => "the request took longer than the gateway's timeout".to_owned(),
        413 => "the request body is larger than allowed".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut problem = Problem::from_http_status(status, detail).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// Counts each routed request and its latency by route template, method and status.
pub async fn record_metrics(
    State(metrics): State<borough_telemetry::metrics::HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Now the route template is known: name the request's span after it.
    let span = tracing::Span::current();
    span.record("route", route.as_str());
    span.record("http.route", route.as_str());
    borough_telemetry::otel::rename(&span, format!("{method} {route}"));
    let response = next.run(request).await;
    metrics.observe(
        borough_telemetry::metrics::HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        },
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The API routes' deadline and body limit, read from their current configuration: a body
/// declared or grown past the limit is 413, a request past the deadline is 504.
pub async fn limits(
    State(limits): State<tokio::sync::watch::Receiver<crate::state::Limits>>,
    mut request: Request,
    next: Next,
) -> Response {
    let crate::state::Limits {
        request_timeout,
        body_limit,
    } = *limits.borrow();
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > body_limit) {
        return borough_error::Problem::new(
            borough_error::ErrorKind::PayloadTooLarge,
            format!("the body is larger than {body_limit} bytes"),
        )
        .into_response();
    }
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + request_timeout));
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, body_limit)));
    match tokio::time::timeout(request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => borough_error::Problem::new(
            borough_error::ErrorKind::DeadlineExceeded,
            format!("the request took longer than {request_timeout:?}"),
        )
        .into_response(),
    }
}

/// Tenant API routes: authenticates the caller (the handler's `Tenant` extractor then
/// reuses it) and takes a token from its bucket; over the limit, 429 with `Retry-After`,
/// `RateLimit` and `RateLimit-Policy`.
pub async fn rate_limit(
    State(state): State<crate::state::AppState>,
    request: Request,
    next: Next,
) -> Response {
    use axum::extract::FromRequestParts;
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let tenant = match crate::auth::Tenant::from_request_parts(&mut parts, &state).await {
        Ok(tenant) => tenant,
        Err(rejection) => return rejection.into_response(),
    };
    let decision = state.limiter.check(tenant.0.tenant_id);
    let policy = decision.policy;
    let mut headers = http::HeaderMap::new();
    let reset = decision
        .retry_after
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    if let Ok(value) = http::HeaderValue::from_str(&format!(
        "\"tenant\";q={};w=1;burst={}",
        policy.requests_per_second, policy.burst
    )) {
        headers.insert("ratelimit-policy", value);
    }
    if let Ok(value) =
        http::HeaderValue::from_str(&format!("\"tenant\";r={};t={reset}", decision.remaining))
    {
        headers.insert("ratelimit", value);
    }
    if decision.retry_after.is_some() {
        let mut response = borough_error::Problem::new(
            borough_error::ErrorKind::RateLimited,
            format!(
                "this tenant is over its rate limit of {} requests per second (burst {})",
                policy.requests_per_second, policy.burst
            ),
        )
        .with_retry_after(u32::try_from(reset.max(1)).unwrap_or(u32::MAX))
        .into_response();
        response.headers_mut().extend(headers);
        return response;
    }
    parts.extensions.insert(tenant);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    response.headers_mut().extend(headers);
    response
}

/// Load shedding: at most so many requests in flight, a short queue, and 503 with
/// `Retry-After` at once beyond it (limits hot from `platform/gateway`, `shed.*`). Runs
/// inside the rate limit, so a flooding tenant is turned away by its own bucket first.
pub async fn shed(
    State(state): State<crate::state::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(shedder) = &state.shedder else {
        return next.run(request).await;
    };
    match shedder.admit().await {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(shed) => {
            borough_error::Problem::new(borough_error::ErrorKind::Unavailable, shed.to_string())
                .with_retry_after(
                    u32::try_from(shed.retry_after.as_secs().max(1)).unwrap_or(u32::MAX),
                )
                .into_response()
        }
    }
}

/// While draining (readiness failed, listener still open), every response says
/// `Connection: close`: clients leave this process's keep-alive connections before it
/// closes them, instead of racing a request against the close.
pub async fn close_when_draining(
    State(readiness): State<borough_telemetry::Readiness>,
    mut response: Response,
) -> Response {
    if readiness.is_shutting_down() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
