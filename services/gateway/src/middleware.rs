//! The gateway's own middleware; `lib.rs` composes them with tower-http's in order.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use borough_error::{PROBLEM_JSON, Problem};
use borough_telemetry::trace::{REQUEST_ID, TraceContext};
use http::{HeaderValue, header};

use crate::grpc::Deadline;
use crate::state::AppState;

/// The longest `x-request-id` kept as the caller sent it.
pub const MAX_REQUEST_ID: usize = 64;

/// The caller's request id if it is 1 to [`MAX_REQUEST_ID`] characters of
/// `[A-Za-z0-9._:-]` (it goes on every log line and back in the response); otherwise a
/// new one, 32 random hex digits, which replaces it on the request.
fn request_id(request: &mut Request) -> HeaderValue {
    let given = request.headers().get(REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        (1..=MAX_REQUEST_ID).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    });
    if let Some(id) = given {
        return id.clone();
    }
    let id = HeaderValue::from_str(&borough_telemetry::trace::new_id())
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    request.headers_mut().insert(REQUEST_ID, id.clone());
    id
}

/// The HTTP method as a metric label and span name part: the methods of RFC 9110 and
/// PATCH as they are, anything else `_OTHER` (OpenTelemetry's convention), so a caller
/// inventing methods cannot grow the series.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// Which requests get an access log line (`BOROUGH_ACCESS_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogMode {
    /// Every request.
    All,
    /// Responses with a 4xx or 5xx status, and requests slower than the threshold (the
    /// default: what an operator looks for, at a fraction of the cost).
    ErrorsAndSlow,
    /// None (the request span still carries its fields to other lines and to traces).
    Off,
}

impl std::str::FromStr for AccessLogMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(AccessLogMode::All),
            "errors-and-slow" => Ok(AccessLogMode::ErrorsAndSlow),
            "off" => Ok(AccessLogMode::Off),
            other => Err(format!(
                "{other:?} is not an access log mode: all, errors-and-slow or off"
            )),
        }
    }
}

/// The access log's settings: `BOROUGH_ACCESS_LOG` (`errors-and-slow`) and
/// `BOROUGH_ACCESS_LOG_SLOW` (500ms). Lines are written at INFO with target `access`
/// (so `RUST_LOG` can silence them too), through the non-blocking log output.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    pub mode: AccessLogMode,
    pub slow: Duration,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            mode: AccessLogMode::ErrorsAndSlow,
            slow: Duration::from_millis(500),
        }
    }
}

impl AccessLog {
    /// Whether a request that ended with `status` after `took` gets a line.
    pub fn wants(&self, status: u16, took: Duration) -> bool {
        match self.mode {
            AccessLogMode::All => true,
            AccessLogMode::ErrorsAndSlow => status >= 400 || took >= self.slow,
            AccessLogMode::Off => false,
        }
    }
}

/// The span of one HTTP request, and its trace: continues the caller's W3C trace
/// (`traceparent`, `tracestate`) or starts one, runs the rest of the stack inside both
/// (the deadline is the route group's, set by [`Guard`]), and writes the access log line
/// ([`AccessLog`]). The span carries `request_id` and `trace_id` (on every log line) and
/// the OpenTelemetry HTTP server attributes, each once; `otel.*` (the exported span's
/// name, kind and status) only when traces are exported. Its name becomes
/// `METHOD /route/{template}` once routing knows the template.
async fn trace_request<S>(mut request: Request, inner: S, access: AccessLog) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let request_id_value = request_id(&mut request);
    let request_id = request_id_value.to_str().unwrap_or_default();
    let method = method_label(request.method());
    let exported = borough_telemetry::otel::enabled();
    // Without export the trace context is known before the span: every field goes in at
    // creation, formatted once (each later `record` re-formats the span's fields).
    let local = (!exported).then(|| TraceContext::from_headers(request.headers()));
    let span = tracing::info_span!(
        "http",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = local.as_ref().map(|ctx| ctx.trace_id.as_str()),
        http.request.method = method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.path = %request.uri().path(),
    );
    let ctx = match local {
        Some(ctx) => ctx,
        None => {
            span.record("otel.name", method);
            span.record("otel.kind", "server");
            let ctx = match borough_telemetry::otel::continue_trace(&span, request.headers()) {
                Some((trace_id, span_id)) => TraceContext { trace_id, span_id },
                None => TraceContext::from_headers(request.headers()),
            };
            span.record("trace_id", ctx.trace_id.as_str());
            ctx
        }
    };
    let mut response = tracing::Instrument::instrument(
        // Inside the trace: a problem body carries the request's trace id.
        ctx.scope(async { problem_for_bare_errors(call(inner, request).await) }),
        span.clone(),
    )
    .await;
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id_value.clone());
    let status = response.status().as_u16();
    if exported && status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let took = started.elapsed();
    let logged = access.wants(status, took);
    if exported || logged {
        span.record("http.response.status_code", status);
    }
    if logged {
        if !exported && let Some(route) = response.extensions().get::<axum::extract::MatchedPath>()
        {
            span.record("http.route", route.as_str());
        }
        span.in_scope(|| {
            tracing::info!(
                target: "access",
                duration_ms = took.as_secs_f64() * 1e3,
                "request"
            );
        });
    }
    response
}

/// Error responses made by framework layers (404 no route, 405, 408/504 timeout, 413 body
/// limit, 415) come as bare text: give them the same problem+json body as ours.
pub fn problem_for_bare_errors(response: Response) -> Response {
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

/// What a routed request meets inside the router, in one middleware: RED metrics by route
/// template (and the span named after it), then the group's deadline (504 past it) and
/// body limit (413), then load shedding (503), then the group's credential — a tenant's
/// API key and its token bucket (429), or the admin token. One layer ([`AroundLayer`]),
/// not four: each
/// axum layer costs a boxed clone of the route's service and a boxed future per request,
/// and four of them cost a quarter of the gateway's throughput on `/hello`
/// (docs/performance.md).
pub struct Guard {
    pub state: AppState,
    pub metrics: borough_telemetry::metrics::HttpMetrics,
    pub scope: GuardScope,
}

/// Who may call a route group, and its deadline and body limit. Every group's
/// [`Deadline`] (what authentication and the handlers' calls get) is the API's, hot from
/// `platform/gateway` (`http.request_timeout`, `http.body_limit`).
#[derive(Clone, Copy, Debug)]
pub enum GuardScope {
    /// Anyone; the API's deadline and body limit.
    Public,
    /// A tenant, by its API key (within its rate limit); the API's deadline and limit.
    Tenant,
    /// A tenant's whole-data streams (exports, imports): their own deadline and body limit
    /// (their handlers give the stream call its deadline).
    TenantStream {
        timeout: Duration,
        body_limit: usize,
    },
    /// The platform admin, by the admin token; the API's deadline and body limit.
    Admin,
}

impl Around for Guard {
    async fn around<S>(self: Arc<Self>, request: Request, inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        self.run(request, inner).await
    }
}

impl Guard {
    async fn run<S>(&self, request: Request, inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        let started = Instant::now();
        let method = method_label(request.method());
        // The route's template (a shared string), also put on the response for the access
        // log.
        let matched = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned();
        let route = matched
            .as_ref()
            .map_or("unmatched", axum::extract::MatchedPath::as_str)
            .to_owned();
        // Now the route template is known: name the exported span after it. (Without
        // export the access log takes it from the response, only when it writes a line.)
        if borough_telemetry::otel::enabled() {
            let span = tracing::Span::current();
            span.record("http.route", route.as_str());
            borough_telemetry::otel::rename(&span, || format!("{method} {route}"));
        }
        let mut response = guarded(self, request, inner).await;
        if let Some(matched) = matched {
            response.extensions_mut().insert(matched);
        }
        self.metrics.observe(
            borough_telemetry::metrics::HttpLabels {
                method,
                route,
                status: response.status().as_u16(),
            },
            started.elapsed().as_secs_f64(),
        );
        response
    }
}

/// Runs `inner` (ready) on `request`.
async fn call<S>(mut inner: S, request: Request) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The deadline and body limit around the rest.
async fn guarded<S>(guard: &Guard, mut request: Request, inner: S) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let crate::state::Limits {
        request_timeout,
        body_limit,
    } = *guard.state.limits.borrow();
    // The calls made before any streaming (authentication, the API's own) are bounded by
    // the API's deadline in every group.
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + request_timeout));
    let (timeout, body_limit) = match guard.scope {
        GuardScope::TenantStream {
            timeout,
            body_limit,
        } => (timeout, body_limit),
        GuardScope::Public | GuardScope::Tenant | GuardScope::Admin => {
            (request_timeout, body_limit)
        }
    };
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
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, body_limit)));
    match tokio::time::timeout(timeout, admitted(&guard.state, guard.scope, request, inner)).await {
        Ok(response) => response,
        Err(_) => borough_error::Problem::new(
            borough_error::ErrorKind::DeadlineExceeded,
            format!("the request took longer than {timeout:?}"),
        )
        .into_response(),
    }
}

/// Admission, in the order a request meets it: load shedding first (at most so many
/// requests in flight, a short queue, then 503 with `Retry-After` at once; limits hot from
/// `platform/gateway`, `shed.*`), so that even authentication — a directory call for an
/// unknown key — is bounded; then the scope's authentication (the handler's `Tenant`
/// extractor reuses it); then, for tenants, the token bucket (over it: 429 with
/// `Retry-After`, `RateLimit` and `RateLimit-Policy`). A flooding tenant holds a shed slot
/// only for the moment its bucket takes to say no. Each step answers the refusal itself.
async fn admitted<S>(state: &AppState, scope: GuardScope, request: Request, inner: S) -> Response
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let _permit = match shed(state).await {
        Ok(permit) => permit,
        Err(refusal) => return refusal,
    };
    let (mut parts, body) = request.into_parts();
    let decision = match scope {
        GuardScope::Public => None,
        GuardScope::Admin => match admin(state, &mut parts).await {
            Ok(()) => None,
            Err(refusal) => return refusal,
        },
        GuardScope::Tenant | GuardScope::TenantStream { .. } => {
            match tenant(state, &mut parts).await {
                Ok(decision) => Some(decision),
                Err(refusal) => return refusal,
            }
        }
    };
    let mut response = call(inner, Request::from_parts(parts, body)).await;
    if let Some(decision) = decision {
        response.headers_mut().extend(decision.headers());
    }
    response
}

/// A slot among the requests in flight, or the 503 that says there is none.
async fn shed(state: &AppState) -> Result<borough_net::shed::Permit, Response> {
    state.shedder.admit().await.map_err(|shed| {
        borough_error::Problem::new(borough_error::ErrorKind::Unavailable, shed.to_string())
            .with_retry_after(u32::try_from(shed.retry_after.as_secs().max(1)).unwrap_or(u32::MAX))
            .into_response()
    })
}

/// The admin token, or the 401/403 that says it is missing or wrong.
async fn admin(state: &AppState, parts: &mut http::request::Parts) -> Result<(), Response> {
    use axum::extract::FromRequestParts;
    crate::auth::Admin::from_request_parts(parts, state)
        .await
        .map(|_| ())
        .map_err(IntoResponse::into_response)
}

/// The tenant of the API key (put in the request for its handler) and its rate-limit
/// decision, or the refusal: 401 for the key, 429 over the limit.
async fn tenant(
    state: &AppState,
    parts: &mut http::request::Parts,
) -> Result<crate::ratelimit::Decision, Response> {
    use axum::extract::FromRequestParts;
    let tenant = crate::auth::Tenant::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let decision = state.limiter.check(tenant.0.tenant_id);
    if let Some(refusal) = decision.refusal() {
        return Err(refusal);
    }
    parts.extensions.insert(tenant);
    Ok(decision)
}

/// While draining (readiness failed, listener still open), every response says
/// `Connection: close`: clients leave this process's keep-alive connections before it
/// closes them, instead of racing a request against the close.
fn close_when_draining(readiness: &borough_telemetry::Readiness, response: &mut Response) {
    if readiness.is_shutting_down() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The edge of the stack: the request's span, trace and access log ([`trace_request`]),
/// problem+json for the framework's bare errors ([`problem_for_bare_errors`]), and
/// `Connection: close` while draining.
pub struct Edge {
    pub readiness: borough_telemetry::Readiness,
    pub access_log: AccessLog,
}

impl Around for Edge {
    async fn around<S>(self: Arc<Self>, request: Request, inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let mut response = trace_request(request, inner, self.access_log).await;
        close_when_draining(&self.readiness, &mut response);
        response
    }
}

/// Middleware that runs around the rest of the stack with the request in hand.
pub trait Around: Send + Sync + 'static {
    fn around<S>(
        self: Arc<Self>,
        request: Request,
        inner: S,
    ) -> impl Future<Output = Response> + Send + 'static
    where
        S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
        S::Future: Send;
}

/// An [`Around`] as a tower layer. Hand-written rather than `axum::middleware::from_fn`,
/// which boxes the inner service again on every request; one boxed future per request.
pub struct AroundLayer<M>(Arc<M>);

impl<M> AroundLayer<M> {
    pub fn new(around: M) -> Self {
        AroundLayer(Arc::new(around))
    }
}

impl<M> Clone for AroundLayer<M> {
    fn clone(&self) -> Self {
        AroundLayer(self.0.clone())
    }
}

impl<M, S> tower::Layer<S> for AroundLayer<M> {
    type Service = AroundService<M, S>;

    fn layer(&self, inner: S) -> AroundService<M, S> {
        AroundService {
            around: self.0.clone(),
            inner,
        }
    }
}

pub struct AroundService<M, S> {
    around: Arc<M>,
    inner: S,
}

impl<M, S: Clone> Clone for AroundService<M, S> {
    fn clone(&self) -> Self {
        AroundService {
            around: self.around.clone(),
            inner: self.inner.clone(),
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<M, S> tower::Service<Request> for AroundService<M, S>
where
    M: Around,
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> ResponseFuture {
        // The service polled ready serves this request; a fresh clone waits for the next.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let around = self.around.clone();
        // Built inside the box on first poll, not on the stack and then moved into it.
        Box::pin(async move { Ok(M::around(around, request, inner).await) })
    }
}

/// What is worth compressing: bodies of 1 KiB or more, or of unknown length (streams), and
/// not gRPC, images or server-sent events. A small JSON body would barely shrink (or grow)
/// and costs the CPU all the same.
pub type CompressPredicate = tower_http::compression::predicate::And<
    tower_http::compression::predicate::And<
        tower_http::compression::predicate::And<
            tower_http::compression::predicate::SizeAbove,
            tower_http::compression::predicate::NotForContentType,
        >,
        tower_http::compression::predicate::NotForContentType,
    >,
    tower_http::compression::predicate::NotForContentType,
>;

/// gzip / br for clients that ask for them. A request without `Accept-Encoding` bypasses
/// the compression layer altogether (it cost 6 % of the gateway's `/hello` throughput to
/// pass through it for nothing) and its response still says `Vary: accept-encoding`.
#[derive(Clone)]
pub struct CompressWhenAsked<S> {
    plain: S,
    compressed: tower_http::compression::Compression<S, CompressPredicate>,
}

impl<S: Clone> CompressWhenAsked<S> {
    pub fn new(inner: S) -> Self {
        use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
        let predicate = SizeAbove::new(1024)
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES)
            .and(NotForContentType::SSE);
        CompressWhenAsked {
            compressed: tower_http::compression::Compression::new(inner.clone())
                .gzip(true)
                .br(true)
                .compress_when(predicate),
            plain: inner,
        }
    }
}

impl<S> tower::Service<Request> for CompressWhenAsked<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call drives a clone of its own to readiness (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use tower::ServiceExt;
        if request.headers().contains_key(header::ACCEPT_ENCODING) {
            let compressed = self.compressed.clone();
            Box::pin(async move {
                let mut response = compressed.oneshot(request).await?.map(Body::new);
                vary_by_accept_encoding(&mut response);
                Ok(response)
            })
        } else {
            let plain = self.plain.clone();
            Box::pin(async move {
                let mut response = plain.oneshot(request).await?;
                vary_by_accept_encoding(&mut response);
                Ok(response)
            })
        }
    }
}

/// Every response says it varies by `Accept-Encoding` (once), compressed or not: a cache
/// must not hand an identity body to a client that asked for gzip, or the reverse.
fn vary_by_accept_encoding(response: &mut Response) {
    let said = response.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !said {
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// [`CompressWhenAsked`] as a layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressWhenAskedLayer;

impl<S: Clone> tower::Layer<S> for CompressWhenAskedLayer {
    type Service = CompressWhenAsked<S>;

    fn layer(&self, inner: S) -> CompressWhenAsked<S> {
        CompressWhenAsked::new(inner)
    }
}
