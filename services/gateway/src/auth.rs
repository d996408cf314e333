//! Who is calling: a tenant (by API key) or the platform admin (by admin token).
//!
//! The tenant comes from the credential alone: no header or path segment can choose it.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use borough_error::{ErrorKind, Problem};
use borough_proto::user::v1::AuthenticateApiKeyRequest;
use borough_tenant::keys::Principal;
use borough_tenant::{TenantContext, TenantId, apikey};
use http::request::Parts;
use http::{HeaderValue, header};
use uuid::Uuid;

use crate::auth_guard::Source;
use crate::grpc::{self, Deadline};
use crate::server::Peer;
use crate::state::AppState;

/// A 401 with the `WWW-Authenticate` challenge RFC 9110 asks for.
pub struct Unauthorized(Problem);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        if response.status() == http::StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn unauthorized(detail: &str) -> Unauthorized {
    Unauthorized(Problem::new(ErrorKind::Unauthenticated, detail))
}

fn bearer(parts: &Parts) -> Result<&str, Unauthorized> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer credential"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <credential>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized(
            "the Authorization header must be `Bearer <credential>`",
        ));
    }
    Ok(token.trim())
}

/// Where failures are counted for this request: its connection's peer (`0.0.0.0` when
/// served in-process without one).
fn source(parts: &Parts) -> Source {
    source_of(parts.extensions.get::<Peer>())
}

/// Whose failed-authentication budget a request spends: its peer's address.
pub(crate) fn source_of(peer: Option<&Peer>) -> Source {
    Source::of(peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |peer| peer.0.ip()))
}

/// `token` checked against the admin token within `source`'s failed-authentication
/// budget (a wrong one spends it): the token's hash when it is the admin's. The admin API
/// and the console's sign-in both check this way.
pub(crate) fn verify_admin_token(
    state: &AppState,
    source: Source,
    token: &str,
) -> Result<[u8; 32], Unauthorized> {
    let current = *state.admin_token_hash.borrow();
    let Some(expected) = current else {
        return Err(unauthorized(
            "the admin API is disabled: BOROUGH_ADMIN_TOKEN is not set",
        ));
    };
    if let Some(wait) = state.auth_failures.refused_for(source) {
        return Err(too_many_failures(wait));
    }
    if apikey::digests_equal(&apikey::hash(token), &expected) {
        Ok(expected)
    } else {
        state.auth_failures.fail(source);
        Err(unauthorized("the admin token is not valid"))
    }
}

/// 429 for a source over its failure budget.
fn too_many_failures(wait: std::time::Duration) -> Unauthorized {
    let seconds = borough_error::whole_seconds_up(wait);
    Unauthorized(
        Problem::new(
            ErrorKind::RateLimited,
            "too many failed authentications from this address; retry later",
        )
        .with_retry_after(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)),
    )
}

/// The tenant a request acts for, from its API key.
#[derive(Debug, Clone, Copy)]
pub struct Tenant(pub TenantContext);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Unauthorized;

    /// A malformed key, a key refused lately or a source over its failure budget is
    /// refused here without a call; an unknown key costs one directory call (and then
    /// counts against its source); a known one is served from the cache.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Already authenticated by the guard of this route.
        if let Some(tenant) = parts.extensions.get::<Tenant>() {
            return Ok(*tenant);
        }
        let key = bearer(parts)?;
        let Ok(presented) = apikey::parse(key) else {
            return Err(unauthorized("the API key is not valid"));
        };
        if let Some(principal) = state.keys.get_hash(&presented.hash) {
            return Ok(Tenant(TenantContext::new(principal.tenant_id)));
        }
        if state.refused_keys.contains(&presented.hash) {
            return Err(unauthorized("the API key is not valid"));
        }
        let source = source(parts);
        if let Some(wait) = state.auth_failures.refused_for(source) {
            return Err(too_many_failures(wait));
        }
        let key = key.to_owned();
        let deadline = Deadline::from_request_parts(parts, state)
            .await
            .map_err(Unauthorized)?;
        let request = grpc::request(AuthenticateApiKeyRequest { api_key: key }, None, deadline);
        let reply = match state.tenants.clone().authenticate_api_key(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                if status.code() == tonic::Code::Unauthenticated {
                    state.refused_keys.insert(presented.hash);
                    state.auth_failures.fail(source);
                }
                // The directory cannot be reached: a key verified lately may still read
                // (cached users, served stale), never write.
                if status.code() == tonic::Code::Unavailable
                    && matches!(parts.method, http::Method::GET | http::Method::HEAD)
                    && let Some(principal) = state.keys.get_stale_hash(&presented.hash)
                {
                    tracing::debug!("key directory unreachable: a key verified lately reads");
                    return Ok(Tenant(TenantContext::new(principal.tenant_id)));
                }
                return Err(Unauthorized(Problem::from_status(&status)));
            }
        };
        let principal = Principal {
            tenant_id: TenantId(Uuid::parse_str(&reply.tenant_id).map_err(|_| {
                Unauthorized(Problem::new(ErrorKind::Internal, "bad directory reply"))
            })?),
            key_id: Uuid::parse_str(&reply.key_id).map_err(|_| {
                Unauthorized(Problem::new(ErrorKind::Internal, "bad directory reply"))
            })?,
        };
        state.keys.insert_hash(presented.hash, principal);
        Ok(Tenant(TenantContext::new(principal.tenant_id)))
    }
}

/// The platform admin, by `BOROUGH_ADMIN_TOKEN`. Wrong tokens count against their
/// source's failure budget like unknown API keys.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Unauthorized;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let current = *state.admin_token_hash.borrow();
        let Some(expected) = current else {
            return Err(unauthorized(
                "the admin API is disabled: BOROUGH_ADMIN_TOKEN is not set",
            ));
        };
        // The console's session cookie, when no bearer token is given (a change needs the
        // session's CSRF token too).
        if !parts.headers.contains_key(header::AUTHORIZATION)
            && crate::console::session::cookie(&parts.headers).is_some()
        {
            return state
                .console
                .authorize(&parts.headers, &parts.method, Some(&expected))
                .map(|_| Admin)
                .map_err(|refused| Unauthorized(refused.problem()));
        }
        let token = bearer(parts)?;
        verify_admin_token(state, source(parts), token).map(|_| Admin)
    }
}
