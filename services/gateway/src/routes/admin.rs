//! `/admin/v1/tenants`: the platform admin API (bearer `BOROUGH_ADMIN_TOKEN`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use borough_error::{ErrorKind, Problem};
use borough_proto::time::to_rfc3339;
use borough_proto::user::v1::{
    ApiKey, CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, IssueApiKeyRequest,
    IssuedApiKey, ListTenantsRequest, Placement, RevokeApiKeyRequest, Tenant, TenantStatus,
};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageDto, PageQuery, location, with_headers};
use crate::auth::Admin;
use crate::extract::{ApiJson, ApiQuery};
use crate::grpc::{self, Deadline};
use crate::state::AppState;
use borough_error::ProblemBody;

/// A tenant as the admin API shows it. Database URLs given at creation are secrets and
/// never appear: only whether there is one (`external_database`, `read_replica`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantDto {
    pub id: String,
    pub name: String,
    /// `shared`, `schema` or `database`.
    pub placement: &'static str,
    /// `provisioning`, `provisioning_failed`, `active` or `suspended`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub external_database: bool,
    pub read_replica: bool,
    pub created_at: String,
}

impl From<Tenant> for TenantDto {
    fn from(tenant: Tenant) -> Self {
        TenantDto {
            placement: match Placement::try_from(tenant.placement) {
                Ok(Placement::Shared) => "shared",
                Ok(Placement::Schema) => "schema",
                Ok(Placement::Database) => "database",
                _ => "unknown",
            },
            status: match TenantStatus::try_from(tenant.status) {
                Ok(TenantStatus::Active) => "active",
                Ok(TenantStatus::Suspended) => "suspended",
                Ok(TenantStatus::Provisioning) => "provisioning",
                Ok(TenantStatus::ProvisioningFailed) => "provisioning_failed",
                _ => "unknown",
            },
            created_at: to_rfc3339(tenant.created_at.as_ref()),
            id: tenant.id,
            name: tenant.name,
            failure_reason: tenant.failure_reason,
            schema: tenant.schema,
            database: tenant.database,
            external_database: tenant.external_database,
            read_replica: tenant.read_replica,
        }
    }
}

/// An API key, by its public prefix (the secret is never shown again).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyDto {
    pub id: String,
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKey> for ApiKeyDto {
    fn from(key: ApiKey) -> Self {
        ApiKeyDto {
            created_at: to_rfc3339(key.created_at.as_ref()),
            revoked_at: key.revoked_at.as_ref().map(|t| to_rfc3339(Some(t))),
            id: key.id,
            prefix: key.prefix,
        }
    }
}

/// A key as issued: `key` is the full secret, shown this once (never by `Debug`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedKeyDto {
    pub id: String,
    pub prefix: String,
    pub key: String,
    pub created_at: String,
}

impl std::fmt::Debug for IssuedKeyDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKeyDto")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TryFrom<IssuedApiKey> for IssuedKeyDto {
    type Error = Problem;

    fn try_from(issued: IssuedApiKey) -> Result<Self, Problem> {
        let key = issued.key.ok_or_else(|| {
            Problem::new(ErrorKind::Internal, "the backend answered without a key")
        })?;
        Ok(IssuedKeyDto {
            created_at: to_rfc3339(key.created_at.as_ref()),
            id: key.id,
            prefix: key.prefix,
            key: issued.secret,
        })
    }
}

/// A new tenant. `Debug` hides the URLs (secrets).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantBody {
    /// 1 to 64 lowercase letters, digits and `-`, not starting or ending with `-`.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub name: String,
    /// `shared` (default), `schema` or `database`.
    #[serde(default)]
    #[schema(pattern = "^(shared|schema|database)$")]
    pub placement: Option<String>,
    /// `database` placement only: the tenant's own database elsewhere (a secret).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^postgres(ql)?://")]
    pub database_url: Option<String>,
    /// `database` placement with `database_url` only: a read replica for reads (a secret).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^postgres(ql)?://")]
    pub read_url: Option<String>,
}

impl std::fmt::Debug for CreateTenantBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |url: &Option<String>| url.as_ref().map(|_| "<redacted>");
        f.debug_struct("CreateTenantBody")
            .field("name", &self.name)
            .field("placement", &self.placement)
            .field("database_url", &redacted(&self.database_url))
            .field("read_url", &redacted(&self.read_url))
            .finish()
    }
}

/// A created tenant and its first API key (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedTenantDto {
    pub tenant: TenantDto,
    pub api_key: IssuedKeyDto,
}

/// A tenant and its keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantDetailDto {
    #[serde(flatten)]
    pub tenant: TenantDto,
    pub api_keys: Vec<ApiKeyDto>,
}

/// `Cache-Control: no-store`: the response carries a secret no cache may keep.
fn no_store(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
}

fn missing(what: &str) -> Problem {
    Problem::new(
        ErrorKind::Internal,
        format!("the backend answered without a {what}"),
    )
}

pub(crate) fn placement(raw: Option<&str>) -> Result<Placement, Problem> {
    match raw.map(str::parse::<borough_tenant::Placement>) {
        None | Some(Ok(borough_tenant::Placement::Shared)) => Ok(Placement::Shared),
        Some(Ok(borough_tenant::Placement::Schema)) => Ok(Placement::Schema),
        Some(Ok(borough_tenant::Placement::Database)) => Ok(Placement::Database),
        Some(Err(e)) => Err(Problem::new(ErrorKind::InvalidArgument, e.to_string())),
    }
}

/// `POST /admin/v1/tenants` -> 201: the tenant and its first API key.
#[utoipa::path(post, path = "/admin/v1/tenants", operation_id = "createTenant", tag = "admin-tenants",
    summary = "Create (or finish provisioning) a tenant, with its first API key",
    security(("adminToken" = [])),
    request_body = CreateTenantBody,
    responses(
        (status = 201, description = "Created; the key is shown this once", body = CreatedTenantDto, headers(
            ("Location" = String, description = "/admin/v1/tenants/{id}"),
            ("Cache-Control" = String, description = "no-store")),
            links(
                ("getTenant" = (operation_id = "getTenant", parameters(("id" = "$response.body#/tenant/id")))),
                ("issueApiKey" = (operation_id = "issueApiKey", parameters(("id" = "$response.body#/tenant/id")))),
                ("getTenantLimits" = (operation_id = "getTenantLimits", parameters(("id" = "$response.body#/tenant/id")))),
                ("putTenantLimits" = (operation_id = "putTenantLimits", parameters(("id" = "$response.body#/tenant/id")))),
                ("deleteTenant" = (operation_id = "deleteTenant", parameters(("id" = "$response.body#/tenant/id")))))),
        (status = 400, description = "A bad name, placement or URL", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken, or being provisioned", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "Schema and database tenants need BOROUGH_PROVISIONER_DATABASE_URL", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Provisioning failed: retry the same request", body = ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
pub async fn create_tenant(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    ApiJson(body): ApiJson<CreateTenantBody>,
) -> Result<Response, Problem> {
    let request = grpc::request(
        CreateTenantRequest {
            name: body.name,
            placement: placement(body.placement.as_deref())? as i32,
            database_url: body.database_url,
            read_url: body.read_url,
        },
        None,
        deadline,
    );
    let reply = state
        .tenants
        .clone()
        .create_tenant(request)
        .await?
        .into_inner();
    let tenant: TenantDto = reply.tenant.ok_or_else(|| missing("tenant"))?.into();
    let api_key = reply.api_key.ok_or_else(|| missing("key"))?.try_into()?;
    let mut headers = location(&format!("/admin/v1/tenants/{}", tenant.id));
    no_store(&mut headers);
    Ok(with_headers(
        StatusCode::CREATED,
        headers,
        CreatedTenantDto { tenant, api_key },
    ))
}

/// `limit`, `cursor` and `q` of the tenant list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantListQuery {
    /// Items per page: at least 1, default 20; more than 100 is taken as 100.
    #[param(minimum = 1)]
    pub limit: Option<i32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only tenants whose name starts with this, in any case (at most 128 characters).
    #[param(max_length = 128)]
    pub q: Option<String>,
}

/// `GET /admin/v1/tenants?limit=&cursor=&q=`.
#[utoipa::path(get, path = "/admin/v1/tenants", operation_id = "listTenants", tag = "admin-tenants",
    summary = "List tenants (or those whose name starts with `q`), a page at a time",
    security(("adminToken" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, description = "A page of tenants", body = PageDto<TenantDto>),
        (status = 400, description = "A bad parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_tenants(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<TenantListQuery>,
) -> Result<Response, Problem> {
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let request = grpc::request(
        ListTenantsRequest {
            page_size: page.page_size()?,
            page_token: page.cursor.unwrap_or_default(),
            name_prefix: query.q.unwrap_or_default(),
        },
        None,
        deadline,
    );
    let page = state
        .tenants
        .clone()
        .list_tenants(request)
        .await?
        .into_inner();
    let body = PageDto {
        items: page.tenants.into_iter().map(TenantDto::from).collect(),
        next_cursor: Some(page.next_page_token).filter(|t| !t.is_empty()),
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}

/// `GET /admin/v1/tenants/{id}`: the tenant and its keys (prefixes only).
#[utoipa::path(get, path = "/admin/v1/tenants/{id}", operation_id = "getTenant", tag = "admin-tenants",
    summary = "Read a tenant and its keys",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    responses(
        (status = 200, description = "The tenant", body = TenantDetailDto),
        (status = 400, description = "Not a tenant id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_tenant(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let request = grpc::request(GetTenantRequest { id }, None, deadline);
    let reply = state
        .tenants
        .clone()
        .get_tenant(request)
        .await?
        .into_inner();
    let body = TenantDetailDto {
        tenant: reply.tenant.ok_or_else(|| missing("tenant"))?.into(),
        api_keys: reply.api_keys.into_iter().map(ApiKeyDto::from).collect(),
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}

/// `?purge=true` on `DELETE /admin/v1/tenants/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Also remove its configuration, data and record.
    #[serde(default)]
    pub purge: bool,
}

/// `DELETE /admin/v1/tenants/{id}`: suspends the tenant (200, the tenant; its keys stop at
/// once); with `?purge=true`, then removes its configuration (namespaces, history,
/// schemas, rate-limit override), its data and its record (204).
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}", operation_id = "deleteTenant", tag = "admin-tenants",
    summary = "Suspend a tenant, or purge it",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"), DeleteQuery),
    responses(
        (status = 200, description = "Suspended", body = TenantDto),
        (status = 204, description = "Purged"),
        (status = 400, description = "Not a tenant id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, Problem> {
    let delete = |purge| {
        grpc::request(
            DeleteTenantRequest {
                id: id.clone(),
                purge,
            },
            None,
            deadline,
        )
    };
    if query.purge {
        // Suspended first (it writes nothing more), then its configuration, then its
        // data and record; each step can be repeated.
        let tenant = tenant_id(&id)?;
        state.tenants.clone().delete_tenant(delete(false)).await?;
        state.keys.evict_tenant(tenant);
        let mut purge = grpc::request(
            borough_proto::config::v1::PurgeTenantRequest {
                tenant_id: tenant.to_string(),
            },
            None,
            deadline,
        );
        purge.metadata_mut().insert(
            borough_proto::config::ACTOR_METADATA,
            tonic::metadata::MetadataValue::from_static("admin"),
        );
        state.config.clone().purge_tenant(purge).await?;
    }
    let reply = state
        .tenants
        .clone()
        .delete_tenant(delete(query.purge))
        .await;
    // Suspension happened even if a purge then failed: stop its keys here either way.
    if let Ok(tenant) = id.parse() {
        state.keys.evict_tenant(tenant);
    }
    let reply = reply?.into_inner();
    match reply.tenant {
        Some(tenant) if !reply.purged => Ok(with_headers(
            StatusCode::OK,
            HeaderMap::new(),
            TenantDto::from(tenant),
        )),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `POST /admin/v1/tenants/{id}/api-keys` -> 201: a new key, shown once.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/api-keys", operation_id = "issueApiKey", tag = "admin-tenants",
    summary = "Issue another API key",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    responses(
        (status = 201, description = "The key, shown this once", body = IssuedKeyDto, headers(
            ("Location" = String, description = "/admin/v1/tenants/{id}"),
            ("Cache-Control" = String, description = "no-store")),
            links(("revokeApiKey" = (operation_id = "revokeApiKey",
                parameters(("id" = "$request.path.id"), ("key_id" = "$response.body#/id")))))),
        (status = 400, description = "Not a tenant id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn issue_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(tenant_id): Path<String>,
) -> Result<Response, Problem> {
    let request = grpc::request(
        IssueApiKeyRequest {
            tenant_id: tenant_id.clone(),
        },
        None,
        deadline,
    );
    let issued = state
        .tenants
        .clone()
        .issue_api_key(request)
        .await?
        .into_inner()
        .api_key
        .ok_or_else(|| missing("key"))?;
    let key: IssuedKeyDto = issued.try_into()?;
    let mut headers = location(&format!("/admin/v1/tenants/{tenant_id}"));
    no_store(&mut headers);
    Ok(with_headers(StatusCode::CREATED, headers, key))
}

/// `DELETE /admin/v1/tenants/{id}/api-keys/{key_id}` -> 204; the key stops working here at
/// once (and on other gateway replicas within `BOROUGH_AUTH_CACHE_TTL`).
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/api-keys/{key_id}", operation_id = "revokeApiKey", tag = "admin-tenants",
    summary = "Revoke an API key",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("key_id" = uuid::Uuid, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Not an id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key of the tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((tenant_id, key_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let request = grpc::request(
        RevokeApiKeyRequest {
            tenant_id,
            key_id: key_id.clone(),
        },
        None,
        deadline,
    );
    state.tenants.clone().revoke_api_key(request).await?;
    if let Ok(key_id) = Uuid::parse_str(&key_id) {
        state.keys.evict_key(key_id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The tenant's rate limit: its override, or the platform default.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsDto {
    pub requests_per_second: u32,
    pub burst: u32,
    /// `tenant` (an override) or `default`.
    pub source: &'static str,
}

pub(crate) fn tenant_id(raw: &str) -> Result<borough_tenant::TenantId, Problem> {
    raw.parse().map_err(|_| {
        Problem::new(
            ErrorKind::InvalidArgument,
            format!(
                "{:?} is not a tenant id",
                raw.chars().take(80).collect::<String>()
            ),
        )
    })
}

/// `GET /admin/v1/tenants/{id}/limits`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/limits", operation_id = "getTenantLimits", tag = "admin-tenants",
    summary = "A tenant's rate limit",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    responses(
        (status = 200, description = "The limit and where it comes from", body = LimitsDto),
        (status = 400, description = "Not a tenant id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_limits(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let tenant = tenant_id(&id)?;
    // The tenant must exist.
    state
        .tenants
        .clone()
        .get_tenant(grpc::request(GetTenantRequest { id }, None, deadline))
        .await?;
    let request = grpc::request(
        borough_proto::config::v1::GetRequest {
            namespace: "platform/gateway".into(),
            key: crate::ratelimit::tenant_key(tenant),
        },
        None,
        deadline,
    );
    let body = match state.config.clone().get(request).await {
        Ok(entry) => {
            let policy: crate::ratelimit::Policy =
                serde_json::from_str(&entry.into_inner().value_json).map_err(|_| {
                    Problem::new(ErrorKind::Internal, "the stored limit is unreadable")
                })?;
            LimitsDto {
                requests_per_second: policy.requests_per_second,
                burst: policy.burst,
                source: "tenant",
            }
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            let policy = state.limiter.policy(tenant);
            LimitsDto {
                requests_per_second: policy.requests_per_second,
                burst: policy.burst,
                source: "default",
            }
        }
        Err(status) => return Err(status.into()),
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}

/// `PUT /admin/v1/tenants/{id}/limits` with `{"requests_per_second": R, "burst": B}`: the
/// tenant's override, kept in the config service and applied by every gateway replica.
#[utoipa::path(put, path = "/admin/v1/tenants/{id}/limits", operation_id = "putTenantLimits", tag = "admin-tenants",
    summary = "Set a tenant's rate limit (every gateway replica applies it)",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    request_body = crate::ratelimit::Policy,
    responses(
        (status = 200, description = "The limit now in force", body = LimitsDto),
        (status = 400, description = "A bad id or limit", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn put_limits(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
    ApiJson(policy): ApiJson<crate::ratelimit::Policy>,
) -> Result<Response, Problem> {
    let tenant = tenant_id(&id)?;
    policy
        .validate()
        .map_err(|e| Problem::new(ErrorKind::InvalidArgument, e))?;
    state
        .tenants
        .clone()
        .get_tenant(grpc::request(GetTenantRequest { id }, None, deadline))
        .await?;
    let mut request = grpc::request(
        borough_proto::config::v1::PutRequest {
            namespace: "platform/gateway".into(),
            key: crate::ratelimit::tenant_key(tenant),
            value_json: serde_json::to_string(&policy)
                .map_err(|_| Problem::new(ErrorKind::Internal, "could not encode the limit"))?,
            expected_revision: None,
        },
        None,
        deadline,
    );
    request.metadata_mut().insert(
        borough_proto::config::ACTOR_METADATA,
        tonic::metadata::MetadataValue::from_static("admin"),
    );
    state.config.clone().put(request).await?;
    let body = LimitsDto {
        requests_per_second: policy.requests_per_second,
        burst: policy.burst,
        source: "tenant",
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}
