//! `/api/v1/users`: a tenant's users. Writes go to the user service, reads to the query
//! service. Resources carry `version`: the `ETag` is `"<version>"`, and `If-Match` makes an
//! update or delete conditional on it (412 when stale).
//!
//! Read-your-writes: every write through this gateway records the version written, and a
//! read asks the query service for at least that version, past its cache.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use borough_error::{ErrorKind, Problem};
use borough_proto::query::v1::{GetUserInfoRequest, SearchUsersRequest};
use borough_proto::time::to_rfc3339;
use borough_proto::user::v1::{CreateUserRequest, DeleteUserRequest, UpdateUserRequest, User};
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{PageDto, PageQuery, header_value, location, with_headers};
use crate::auth::Tenant;
use crate::extract::{ApiJson, ApiQuery};
use crate::grpc::{self, Deadline};
use crate::state::AppState;
use borough_error::ProblemBody;

/// A tenant's user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserDto {
    /// UUIDv7.
    pub id: String,
    pub name: String,
    pub email: String,
    /// Raised by every change; the `ETag` is `"<version>"`.
    pub version: i64,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<User> for UserDto {
    fn from(user: User) -> Self {
        UserDto {
            created_at: to_rfc3339(user.created_at.as_ref()),
            updated_at: to_rfc3339(user.updated_at.as_ref()),
            id: user.id,
            name: user.name,
            email: user.email,
            version: user.version,
        }
    }
}

/// A new user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// 1 to 200 characters (trimmed), no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$"
    )]
    pub name: String,
    /// `local@domain`, at most 254 bytes; unique in the tenant, whatever its case.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
}

/// The fields to change (absent ones keep their value).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$"
    )]
    pub name: Option<String>,
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
}

fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

fn user_headers(user: &UserDto) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&etag(user.version)));
    headers
}

fn missing_user() -> Problem {
    Problem::new(ErrorKind::Internal, "the backend answered without a user")
}

/// The version an `If-Match` header requires: `None` for absent or `*`.
///
/// Anything else that is not one of our strong ETags can never match: 412.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::new(
                ErrorKind::PreconditionFailed,
                format!("If-Match {text:?} does not match the user's ETag"),
            )
        })
}

/// `POST /api/v1/users` -> 201 with `Location` and `ETag`.
#[utoipa::path(post, path = "/api/v1/users", operation_id = "createUser", tag = "users",
    summary = "Create a user",
    security(("apiKey" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters: a repeat returns the first answer \
                       (`Idempotent-Replayed: true`), another body with the same key is 422, a \
                       repeat while the first runs is 409")),
    request_body = CreateUserBody,
    responses(
        (status = 201, description = "Created", body = UserDto, headers(
            ("Location" = String, description = "/api/v1/users/{id}"),
            ("ETag" = String, description = "\"<version>\""),
            ("Idempotent-Replayed" = Option<String>, description = "`true` on a repeat")),
            links(
                ("getUser" = (operation_id = "getUser", parameters(("id" = "$response.body#/id")))),
                ("updateUser" = (operation_id = "updateUser", parameters(("id" = "$response.body#/id")))),
                ("deleteUser" = (operation_id = "deleteUser", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Invalid name or email", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken, or the key is in use", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The key was used with another body", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<Response, Problem> {
    let mut request = grpc::request(
        CreateUserRequest {
            name: body.name,
            email: body.email,
        },
        Some(&tenant),
        deadline,
    );
    pass_idempotency_key(
        headers.get(borough_proto::IDEMPOTENCY_KEY),
        request.metadata_mut(),
    )?;
    let response = state.users.clone().create_user(request).await?;
    let replayed = was_replayed(response.metadata());
    let user: UserDto = response.into_inner().user.ok_or_else(missing_user)?.into();
    state
        .recent_writes
        .record(tenant.tenant_id, &user.id, user.version);
    let mut headers = user_headers(&user);
    headers.extend(location(&format!("/api/v1/users/{}", user.id)));
    if replayed {
        headers.insert(
            IDEMPOTENT_REPLAYED_HEADER,
            http::HeaderValue::from_static("true"),
        );
    }
    Ok(with_headers(StatusCode::CREATED, headers, user))
}

/// On a reply repeated for an idempotency key.
pub const IDEMPOTENT_REPLAYED_HEADER: http::HeaderName =
    http::HeaderName::from_static(borough_proto::IDEMPOTENT_REPLAYED);

/// Passes the request's `Idempotency-Key` on to the service (which checks its length and
/// characters); a value that is not even ASCII text is 400 here.
pub fn pass_idempotency_key(
    key: Option<&http::HeaderValue>,
    metadata: &mut tonic::metadata::MetadataMap,
) -> Result<(), Problem> {
    let Some(key) = key else {
        return Ok(());
    };
    let value = key
        .to_str()
        .ok()
        .and_then(|k| tonic::metadata::MetadataValue::try_from(k).ok())
        .ok_or_else(|| {
            Problem::new(
                ErrorKind::InvalidArgument,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    metadata.insert(borough_proto::IDEMPOTENCY_KEY, value);
    Ok(())
}

/// Whether the service answered with the reply recorded for the call's idempotency key.
pub fn was_replayed(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(borough_proto::IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v == "true")
}

/// `GET /api/v1/users/{id}` -> 200 with `ETag` (304 for a matching `If-None-Match`). When
/// the tenant's database is unreachable and the query service holds a copy, that copy,
/// with `Borough-Stale: true` and its `Age` in seconds.
#[utoipa::path(get, path = "/api/v1/users/{id}", operation_id = "getUser", tag = "users",
    summary = "Read a user",
    security(("apiKey" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The user's id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag: 304 when it is current")),
    responses(
        (status = 200, description = "The user", body = UserDto, headers(
            ("ETag" = String, description = "\"<version>\""),
            ("Borough-Stale" = Option<String>, description = "`true`: a cached copy, served while the database is unreachable"),
            ("Age" = Option<u64>, description = "The stale copy's age in seconds"))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Not a user id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such user in this tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let min_version = state.recent_writes.min_version(tenant.tenant_id, &id);
    let request = grpc::request(
        GetUserInfoRequest {
            user_id: id,
            min_version,
        },
        Some(&tenant),
        deadline,
    );
    let reply = state.query.clone().get_user_info(request).await?;
    let stale_age = reply
        .metadata()
        .get(borough_proto::query::STALE_AGE_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| {
            reply
                .metadata()
                .contains_key(borough_proto::query::STALE_METADATA)
        });
    let user: UserDto = reply.into_inner().into();
    let mut response_headers = user_headers(&user);
    if let Some(age) = stale_age {
        response_headers.insert(
            borough_proto::query::STALE_METADATA,
            http::HeaderValue::from_static("true"),
        );
        response_headers.insert(header::AGE, http::HeaderValue::from(age));
    }
    let tag = etag(user.version);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    Ok(with_headers(StatusCode::OK, response_headers, user))
}

/// `q`, `created_after`, `created_before` (RFC 3339), `limit`, `cursor`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A prefix of the name or email (any case), at most 200 characters.
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// RFC 3339: only users created after it.
    #[param(format = DateTime)]
    pub created_after: Option<String>,
    /// RFC 3339: only users created before it.
    #[param(format = DateTime)]
    pub created_before: Option<String>,
    /// Users per page: at least 1, default 20; more than 100 is taken as 100.
    #[param(minimum = 1)]
    pub limit: Option<i32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn time_param(name: &str, raw: Option<&str>) -> Result<Option<prost_types::Timestamp>, Problem> {
    raw.map(|raw| {
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| borough_proto::time::to_timestamp(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                Problem::new(
                    ErrorKind::InvalidArgument,
                    format!("{name} must be an RFC 3339 time, like 2026-01-31T12:00:00Z"),
                )
            })
    })
    .transpose()
}

/// `GET /api/v1/users?q=&created_after=&created_before=&limit=&cursor=` -> one page, in
/// creation order: users whose name or email starts with `q` (any case), created in the
/// range.
#[utoipa::path(get, path = "/api/v1/users", operation_id = "listUsers", tag = "users",
    summary = "List or search users, a page at a time",
    security(("apiKey" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of users", body = PageDto<UserDto>),
        (status = 400, description = "A bad parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Response, Problem> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let request = grpc::request(
        SearchUsersRequest {
            query: query.q.clone().unwrap_or_default(),
            created_after: time_param("created_after", query.created_after.as_deref())?,
            created_before: time_param("created_before", query.created_before.as_deref())?,
            page_size: page.page_size()?,
            page_token: page.cursor.unwrap_or_default(),
        },
        Some(&tenant),
        deadline,
    );
    let page = state
        .query
        .clone()
        .search_users(request)
        .await?
        .into_inner();
    let body = PageDto {
        items: page.users.into_iter().map(UserDto::from).collect(),
        next_cursor: Some(page.next_page_token).filter(|t| !t.is_empty()),
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}

/// `PATCH /api/v1/users/{id}` (`If-Match` honoured) -> 200 with the new `ETag`.
#[utoipa::path(patch, path = "/api/v1/users/{id}", operation_id = "updateUser", tag = "users",
    summary = "Change a user",
    security(("apiKey" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The user's id"),
        ("If-Match" = Option<String>, Header, description = "The ETag the change expects: 412 when stale")),
    request_body = PatchUserBody,
    responses(
        (status = 200, description = "The changed user", body = UserDto, headers(
            ("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Invalid id, name or email", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PatchUserBody>,
) -> Result<Response, Problem> {
    let request = grpc::request(
        UpdateUserRequest {
            id,
            name: body.name,
            email: body.email,
            expected_version: if_match(&headers)?,
        },
        Some(&tenant),
        deadline,
    );
    let user: UserDto = state
        .users
        .clone()
        .update_user(request)
        .await?
        .into_inner()
        .user
        .ok_or_else(missing_user)?
        .into();
    state
        .recent_writes
        .record(tenant.tenant_id, &user.id, user.version);
    Ok(with_headers(StatusCode::OK, user_headers(&user), user))
}

/// `DELETE /api/v1/users/{id}` (`If-Match` honoured) -> 204.
#[utoipa::path(delete, path = "/api/v1/users/{id}", operation_id = "deleteUser", tag = "users",
    summary = "Delete a user",
    security(("apiKey" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The user's id"),
        ("If-Match" = Option<String>, Header, description = "The ETag the deletion expects: 412 when stale")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a user id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let request = grpc::request(
        DeleteUserRequest {
            id: id.clone(),
            expected_version: if_match(&headers)?,
        },
        Some(&tenant),
        deadline,
    );
    state.users.clone().delete_user(request).await?;
    // No version is new enough: reads go past any cached copy.
    state.recent_writes.record(tenant.tenant_id, &id, i64::MAX);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(if_match_value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, header_value(if_match_value));
        headers
    }

    #[test]
    fn if_match_accepts_our_etags_and_star() {
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(if_match(&headers("*")).ok(), Some(None));
        assert_eq!(if_match(&headers("\"7\"")).ok(), Some(Some(7)));
    }

    #[test]
    fn if_match_with_a_foreign_etag_is_a_failed_precondition() {
        for value in ["7", "W/\"7\"", "\"seven\""] {
            let problem = if_match(&headers(value)).expect_err(value);
            assert_eq!(problem.kind, ErrorKind::PreconditionFailed);
        }
    }
}
