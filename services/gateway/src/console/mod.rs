//! The operator console, served by the gateway under `/console`.
//!
//! One page (`assets/index.html`) with its script and stylesheet, embedded in the binary:
//! no CDN, no network at run time, no build step. The script does everything through the
//! admin API (`/admin/v1/...`), the same routes `curl` uses; the console adds only its
//! sign-in (`session`), nothing that changes state.
//!
//! Every response under `/console` carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script or style, no framing), `X-Frame-Options:
//! DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
//! `Cache-Control: no-store`.

pub mod sampler;
pub mod session;
pub mod status;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use borough_error::{ErrorKind, Problem};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::server::Peer;
use crate::state::AppState;

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// The console's routes (not part of the API document: a page, its assets, sign-in).
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/assets/{file}", get(asset))
        .route(
            "/console/session",
            get(session_get).post(sign_in).delete(sign_out),
        )
}

/// The headers every console response carries.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    secured(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "console.js" => page("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => page("text/css; charset=utf-8", STYLE),
        _ => secured(Problem::new(ErrorKind::NotFound, "no such console asset").into_response()),
    }
}

/// Whether the request reached us over TLS: the gateway's own, or a proxy's that says so.
fn over_tls(state: &AppState, headers: &HeaderMap) -> bool {
    state.edge_tls
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// What a signed-in page needs.
#[derive(Debug, Serialize)]
struct SessionDto {
    csrf_token: String,
    idle_timeout_seconds: u64,
}

/// The sign-in form: the admin token. `Debug` hides it.
#[derive(Deserialize)]
struct SignIn {
    token: String,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignIn { token: <redacted> }")
    }
}

fn problem(kind: ErrorKind, detail: &str) -> Response {
    secured(Problem::new(kind, detail).into_response())
}

/// `POST /console/session` with `{"token": "<admin token>"}`: a session cookie and the
/// page's CSRF token. Checked as the admin API checks the token (a wrong one counts
/// against the source's failed-authentication budget).
async fn sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(form) = serde_json::from_slice::<SignIn>(&body) else {
        return problem(
            ErrorKind::InvalidArgument,
            "expected {\"token\": \"<the admin token>\"}",
        );
    };
    let source = crate::auth::source_of(peer.as_deref());
    let expected = match crate::auth::verify_admin_token(&state, source, &form.token) {
        Ok(expected) => expected,
        Err(refusal) => return secured(refusal.into_response()),
    };
    let Ok(started) = state.console.start(expected) else {
        return problem(ErrorKind::Internal, "no randomness for a session id");
    };
    tracing::info!("console: signed in");
    let cookie = session::set_cookie(Some(&started.id), over_tls(&state, &headers));
    let mut response = (
        StatusCode::CREATED,
        Json(SessionDto {
            csrf_token: started.csrf,
            idle_timeout_seconds: state.console.idle_timeout().as_secs(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    secured(response)
}

/// `GET /console/session`: the session's CSRF token (for a page loaded again), or 401.
async fn session_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let current = *state.admin_token_hash.borrow();
    match state
        .console
        .authorize(&headers, &http::Method::GET, current.as_ref())
    {
        Ok((_, live)) => secured(
            Json(SessionDto {
                csrf_token: live.csrf,
                idle_timeout_seconds: state.console.idle_timeout().as_secs(),
            })
            .into_response(),
        ),
        Err(refused) => secured(refused.problem().into_response()),
    }
}

/// `DELETE /console/session` (with the CSRF token): signs out.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let current = *state.admin_token_hash.borrow();
    let id = match state
        .console
        .authorize(&headers, &http::Method::DELETE, current.as_ref())
    {
        Ok((id, _)) => id,
        Err(refused) => return secured(refused.problem().into_response()),
    };
    state.console.end(id);
    tracing::info!("console: signed out");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(None, over_tls(&state, &headers)))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    secured(response)
}
