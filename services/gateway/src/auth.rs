//! Who is calling: a tenant (by API key) or the platform admin (by admin token).
//!
//! The tenant comes from the credential alone: no header or path segment can choose it.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use borough_error::{ErrorKind, Problem};
use borough_proto::user::v1::AuthenticateApiKeyRequest;
use borough_tenancy::directory::Principal;
use borough_tenancy::{TenantContext, TenantId, apikey};
use http::request::Parts;
use http::{HeaderValue, header};
use uuid::Uuid;

use crate::grpc::{self, Deadline};
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

/// The tenant a request acts for, from its API key.
#[derive(Debug, Clone, Copy)]
pub struct Tenant(pub TenantContext);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Unauthorized;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Already authenticated by the rate-limit layer of this route.
        if let Some(tenant) = parts.extensions.get::<Tenant>() {
            return Ok(*tenant);
        }
        let key = bearer(parts)?.to_owned();
        let key = key.as_str();
        if apikey::parse(key).is_err() {
            return Err(unauthorized("the API key is not valid"));
        }
        if let Some(principal) = state.keys.get(key) {
            return Ok(Tenant(TenantContext::new(principal.tenant_id)));
        }
        let deadline = Deadline::from_request_parts(parts, state)
            .await
            .map_err(Unauthorized)?;
        let request = grpc::request(
            AuthenticateApiKeyRequest {
                api_key: key.to_owned(),
            },
            None,
            deadline,
        );
        let reply = state
            .tenants
            .clone()
            .authenticate_api_key(request)
            .await
            .map_err(|status| Unauthorized(Problem::from_status(&status)))?
            .into_inner();
        let principal = Principal {
            tenant_id: TenantId(Uuid::parse_str(&reply.tenant_id).map_err(|_| {
                Unauthorized(Problem::new(ErrorKind::Internal, "bad directory reply"))
            })?),
            key_id: Uuid::parse_str(&reply.key_id).map_err(|_| {
                Unauthorized(Problem::new(ErrorKind::Internal, "bad directory reply"))
            })?,
        };
        state.keys.insert(key, principal);
        Ok(Tenant(TenantContext::new(principal.tenant_id)))
    }
}

/// The platform admin, by `BOROUGH_ADMIN_TOKEN`.
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
        let token = bearer(parts)?;
        if apikey::digests_equal(&apikey::hash(token), &expected) {
            Ok(Admin)
        } else {
            Err(unauthorized("the admin token is not valid"))
        }
    }
}
