//! Configuration through the gateway, on the config service.
//!
//! Tenants (API key): `/api/v1/config/{name}…` is their namespace `tenant/<their id>/{name}`;
//! nothing else is reachable. The platform admin (admin token):
//! `/admin/v1/config/platform/{service}…` is `platform/{service}`. Both offer:
//!
//! - `GET {ns}` (list; `?prefix=`), `GET {ns}:watch` (Server-Sent Events: event id = revision,
//!   `Last-Event-ID` or `?from_revision=` resumes), `PUT {ns}:schema` (JSON Schema; `null`
//!   removes it);
//! - `GET/PUT/DELETE {ns}/{key}` (`ETag` = revision; `If-Match` makes a write a CAS,
//!   `If-None-Match: *` creates only), `GET {ns}/{key}/history`,
//!   `POST {ns}/{key}:rollback` with `{"revision": N}`.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use borough_error::{ErrorKind, Problem};
use borough_proto::config::v1::watch_event::Event;
use borough_proto::config::v1::{
    Change, DeleteRequest, Entry, GetRequest, GetSchemaRequest, HistoryRequest,
    ListNamespacesRequest, ListRequest, PutRequest, RollbackRequest, SetSchemaRequest,
    StatusRequest, WatchRequest,
};
use borough_proto::time::to_rfc3339;
use borough_tenant::TenantContext;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{header_value, with_headers};
use borough_error::ProblemBody;

use crate::auth::{Admin, Tenant};
use crate::extract::{ApiJson, ApiQuery};
use crate::grpc::{self, Deadline};
use crate::state::AppState;

/// Whose namespace a request addresses, and who acts.
struct Target {
    namespace: String,
    tenant: Option<TenantContext>,
    actor: String,
}

impl Target {
    fn tenant(tenant: TenantContext, name: &str) -> Target {
        Target {
            namespace: format!("tenant/{}/{name}", tenant.tenant_id),
            actor: format!("tenant:{}", tenant.tenant_id),
            tenant: Some(tenant),
        }
    }

    /// A tenant's namespace, by the platform admin.
    fn admin_tenant(tenant: TenantContext, name: &str) -> Target {
        Target {
            namespace: format!("tenant/{}/{name}", tenant.tenant_id),
            actor: "admin".to_owned(),
            tenant: Some(tenant),
        }
    }

    fn platform(service: &str) -> Target {
        Target {
            namespace: format!("platform/{service}"),
            tenant: None,
            actor: "admin".to_owned(),
        }
    }

    fn request<T>(&self, message: T, deadline: Deadline) -> tonic::Request<T> {
        let mut request = grpc::request(message, self.tenant.as_ref(), deadline);
        if let Ok(actor) = tonic::metadata::MetadataValue::try_from(self.actor.as_str()) {
            request
                .metadata_mut()
                .insert(borough_proto::config::ACTOR_METADATA, actor);
        }
        request
    }
}

/// A key's current value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryDto {
    pub key: String,
    /// Any JSON value (at most 64 KiB as text).
    pub value: Value,
    pub revision: i64,
    pub updated_at: String,
    pub updated_by: String,
}

impl From<Entry> for EntryDto {
    fn from(entry: Entry) -> Self {
        EntryDto {
            value: serde_json::from_str(&entry.value_json).unwrap_or(Value::Null),
            updated_at: to_rfc3339(entry.updated_at.as_ref()),
            key: entry.key,
            revision: entry.revision,
            updated_by: entry.updated_by,
        }
    }
}

/// One change of a key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeDto {
    pub revision: i64,
    pub key: String,
    /// `put`, `delete` or `rollback`.
    pub op: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
    pub actor: String,
    pub at: String,
}

fn json_of(text: Option<&str>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

impl From<Change> for ChangeDto {
    fn from(change: Change) -> Self {
        ChangeDto {
            old_value: json_of(change.old_value_json.as_deref()),
            new_value: json_of(change.new_value_json.as_deref()),
            at: to_rfc3339(change.at.as_ref()),
            revision: change.revision,
            key: change.key,
            op: change.op,
            actor: change.actor,
        }
    }
}

fn etag(revision: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&format!("\"{revision}\"")));
    headers
}

/// `If-Match: "N"` -> Some(N); `If-None-Match: *` -> Some(0) (create only).
fn expected_revision(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    if let Some(value) = headers.get(header::IF_MATCH) {
        let text = value.to_str().unwrap_or_default().trim();
        return text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| {
                Problem::new(
                    ErrorKind::PreconditionFailed,
                    format!("If-Match {text:?} is not a revision ETag"),
                )
            });
    }
    let create_only = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*");
    Ok(create_only.then_some(0))
}

/// A CAS conflict at the edge is 412 for an `If-Match` write (HTTP's precondition), else the
/// service's own kind.
fn cas_problem(status: tonic::Status, conditional: bool) -> Problem {
    let problem = Problem::from_status(&status);
    if conditional && problem.kind == ErrorKind::Conflict {
        Problem::new(ErrorKind::PreconditionFailed, problem.detail)
    } else {
        problem
    }
}

/// How to list (or watch) a namespace.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NamespaceQuery {
    /// Only keys starting with this (letters, digits, `_`, `.`, `-`).
    #[param(pattern = "^[A-Za-z0-9_.-]{0,128}$")]
    pub prefix: Option<String>,
    /// Watch only: replay changes after this revision first (`Last-Event-ID` wins).
    #[param(minimum = 0)]
    pub from_revision: Option<i64>,
    /// Entries per page, 1 to 1000 (default 100); a page also ends after about 1 MiB.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a namespace's entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryPageDto {
    pub items: Vec<EntryDto>,
    /// The revision the first page was read at: watch from it to miss nothing.
    pub revision: i64,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a key's history, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangePageDto {
    pub items: Vec<ChangeDto>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One of a tenant's namespaces.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamespaceDto {
    /// The name a tenant uses (`app`), without `tenant/<id>/`.
    pub name: String,
    pub keys: i64,
    pub value_bytes: i64,
    /// Whether it has a JSON Schema.
    pub schema: bool,
}

/// A page of a tenant's namespaces, by name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamespacePageDto {
    pub items: Vec<NamespaceDto>,
    pub next_cursor: Option<String>,
}

/// A namespace's JSON Schema (`null`: none).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaDto {
    pub schema: Value,
}

/// A page of the namespace's entries.
async fn list_entries(
    state: AppState,
    target: Target,
    deadline: Deadline,
    query: NamespaceQuery,
) -> Result<Response, Problem> {
    let request = target.request(
        ListRequest {
            namespace: target.namespace.clone(),
            prefix: query.prefix.unwrap_or_default(),
            page_size: page_limit(query.limit)?,
            page_token: query.cursor.unwrap_or_default(),
        },
        deadline,
    );
    let list = state.config.clone().list(request).await?.into_inner();
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        EntryPageDto {
            items: list.entries.into_iter().map(EntryDto::from).collect(),
            revision: list.revision,
            next_cursor: Some(list.next_page_token).filter(|t| !t.is_empty()),
        },
    ))
}

async fn watch_sse(
    state: AppState,
    target: Target,
    query: NamespaceQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                Problem::new(
                    ErrorKind::InvalidArgument,
                    "Last-Event-ID must be a revision",
                )
            })
        })
        .transpose()?;
    let from_revision = last_event_id.or(query.from_revision).unwrap_or(0);
    if from_revision < 0 {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "from_revision must not be negative",
        ));
    }
    // A slot of this gateway's (and this tenant's) watches, held by the stream below for
    // as long as it lives.
    let slot = state
        .watches
        .take(target.tenant.as_ref().map(|t| t.tenant_id))?;
    // A watch lasts at most BOROUGH_WATCH_MAX_DURATION, then ends; the client resumes
    // with Last-Event-ID. The config service is told the same deadline (and a little).
    let lifetime = state.watches.limits().max_duration;
    let request = target.request(
        WatchRequest {
            namespaces: vec![target.namespace.clone()],
            from_revision,
        },
        Deadline(Instant::now() + lifetime + Duration::from_secs(5)),
    );
    let events = state.config.clone().watch(request).await?.into_inner();
    let events = events.take_until(tokio::time::sleep(lifetime));
    let stream = events.filter_map(move |event| {
        // Moved into every item's future: the slot lives exactly as long as the stream.
        let _slot = &slot;
        async move {
        match event {
            Ok(event) => match event.event {
                Some(Event::Change(change)) => {
                    let id = change.revision.to_string();
                    let op = change.op.clone();
                    let data = serde_json::to_string(&ChangeDto::from(change)).ok()?;
                    Some(Ok::<_, Infallible>(SseEvent::default().id(id).event(op).data(data)))
                }
                Some(Event::Synced(revision)) => Some(Ok(SseEvent::default()
                    .event("synced")
                    .data(format!("{{\"revision\":{revision}}}")))),
                None => None,
            },
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "config watch ended");
                let problem = Problem::from_status(&status);
                Some(Ok(SseEvent::default()
                    .event("error")
                    .data(serde_json::to_string(&problem.body()).unwrap_or_default())))
            }
        }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET {ns}:schema`: the namespace's JSON Schema (`null`: none).
async fn get_schema(
    state: AppState,
    target: Target,
    deadline: Deadline,
) -> Result<Response, Problem> {
    let request = target.request(
        GetSchemaRequest {
            namespace: target.namespace.clone(),
        },
        deadline,
    );
    let reply = state.config.clone().get_schema(request).await?.into_inner();
    let schema = match reply.schema_json.as_str() {
        "" => Value::Null,
        text => serde_json::from_str(text).unwrap_or(Value::Null),
    };
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        SchemaDto { schema },
    ))
}

/// `PUT {ns}:schema` with the JSON Schema (`null` removes it).
async fn schema(
    state: AppState,
    target: Target,
    deadline: Deadline,
    schema: Value,
) -> Result<Response, Problem> {
    let request = target.request(
        SetSchemaRequest {
            namespace: target.namespace.clone(),
            schema_json: if schema.is_null() {
                String::new()
            } else {
                schema.to_string()
            },
        },
        deadline,
    );
    state.config.clone().set_schema(request).await?;
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        SchemaDto { schema },
    ))
}

async fn get_entry(
    state: AppState,
    target: Target,
    key: String,
    deadline: Deadline,
) -> Result<Response, Problem> {
    let request = target.request(
        GetRequest {
            namespace: target.namespace.clone(),
            key,
        },
        deadline,
    );
    let entry: EntryDto = state.config.clone().get(request).await?.into_inner().into();
    Ok(with_headers(StatusCode::OK, etag(entry.revision), entry))
}

async fn put_entry(
    state: AppState,
    target: Target,
    key: String,
    deadline: Deadline,
    headers: HeaderMap,
    value: Value,
) -> Result<Response, Problem> {
    let expected = expected_revision(&headers)?;
    let request = target.request(
        PutRequest {
            namespace: target.namespace.clone(),
            key,
            value_json: value.to_string(),
            expected_revision: expected,
        },
        deadline,
    );
    let entry: EntryDto = state
        .config
        .clone()
        .put(request)
        .await
        .map_err(|s| cas_problem(s, expected.is_some()))?
        .into_inner()
        .into();
    Ok(with_headers(StatusCode::OK, etag(entry.revision), entry))
}

async fn delete_entry(
    state: AppState,
    target: Target,
    key: String,
    deadline: Deadline,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let expected = expected_revision(&headers)?;
    let request = target.request(
        DeleteRequest {
            namespace: target.namespace.clone(),
            key,
            expected_revision: expected,
        },
        deadline,
    );
    state
        .config
        .clone()
        .delete(request)
        .await
        .map_err(|s| cas_problem(s, expected.is_some()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The revision whose value to put back.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[schema(minimum = 1)]
    pub revision: i64,
}

/// A page of history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Changes per page, 1 to 100 (default 20); a page also ends after about 1 MiB.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
    /// `next_cursor` of the previous page (older changes).
    pub cursor: Option<String>,
}

/// A `limit` parameter: absent (the service's default) or positive.
fn page_limit(limit: Option<i32>) -> Result<i32, Problem> {
    match limit {
        None => Ok(0),
        Some(n) if n >= 1 => Ok(n),
        Some(_) => Err(Problem::new(
            ErrorKind::InvalidArgument,
            "limit must be a positive number",
        )),
    }
}

async fn history(
    state: AppState,
    target: Target,
    key: String,
    deadline: Deadline,
    query: HistoryQuery,
) -> Result<Response, Problem> {
    let request = target.request(
        HistoryRequest {
            namespace: target.namespace.clone(),
            key,
            limit: page_limit(query.limit)?,
            page_token: query.cursor.unwrap_or_default(),
        },
        deadline,
    );
    let page = state.config.clone().history(request).await?.into_inner();
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        ChangePageDto {
            items: page.changes.into_iter().map(ChangeDto::from).collect(),
            next_cursor: Some(page.next_page_token).filter(|t| !t.is_empty()),
        },
    ))
}

/// `POST {ns}/{key}:rollback`.
async fn rollback(
    state: AppState,
    target: Target,
    key: &str,
    deadline: Deadline,
    body: RollbackBody,
) -> Result<Response, Problem> {
    let request = target.request(
        RollbackRequest {
            namespace: target.namespace.clone(),
            key: key.to_owned(),
            revision: body.revision,
        },
        deadline,
    );
    let entry: EntryDto = state
        .config
        .clone()
        .rollback(request)
        .await?
        .into_inner()
        .into();
    Ok(with_headers(StatusCode::OK, etag(entry.revision), entry))
}

/// `{name}` or `{name}:<action>`.
pub(crate) fn split_action<'a>(name: &'a str, action: &str) -> (&'a str, bool) {
    match name.strip_suffix(action) {
        Some(base) => (base, true),
        None => (name, false),
    }
}

/// A request that is not `{name}:schema` (PUT) or `{key}:rollback` (POST).
pub(crate) fn wrong_action(what: &str) -> Problem {
    Problem::new(ErrorKind::InvalidArgument, what.to_owned())
}

// Tenant routes (API key): `/api/v1/config/{name}…` is `tenant/<the caller's id>/{name}`.
// Actions (`:watch`, `:schema`, `:rollback`) share their path's route and are dispatched
// by suffix; each is its own documented operation.

/// `GET /api/v1/config/{name}` (a page of entries) or `GET /api/v1/config/{name}:watch`.
#[utoipa::path(get, path = "/api/v1/config/{name}", operation_id = "listConfig", tag = "config",
    summary = "List a namespace of the tenant's configuration, a page at a time",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace: letters, digits, `_`, `.`, `-` (1 to 64)", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        NamespaceQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntryPageDto),
        (status = 400, description = "A bad namespace or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_namespace(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<NamespaceQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (name, watch) = split_action(&name, ":watch");
    if watch {
        return tenant_watch(state, tenant, name, query, headers).await;
    }
    let (name, schema) = split_action(name, ":schema");
    if schema {
        return tenant_get_schema(state, tenant, deadline, name).await;
    }
    list_entries(state, Target::tenant(tenant, name), deadline, query).await
}

/// `GET /api/v1/config/{name}:schema`.
#[utoipa::path(get, path = "/api/v1/config/{name}:schema", operation_id = "getConfigSchema", tag = "config",
    summary = "The JSON Schema of a namespace (null: none)",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 200, description = "The schema", body = SchemaDto),
        (status = 400, description = "A bad namespace", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_get_schema(
    state: AppState,
    tenant: TenantContext,
    deadline: Deadline,
    name: &str,
) -> Result<Response, Problem> {
    get_schema(state, Target::tenant(tenant, name), deadline).await
}

/// A page of `tenant`'s namespaces, asked by the tenant or (`admin`) the platform admin.
async fn namespaces(
    state: AppState,
    tenant: TenantContext,
    admin: bool,
    deadline: Deadline,
    query: super::PageQuery,
) -> Result<Response, Problem> {
    let target = match admin {
        true => Target::admin_tenant(tenant, ""),
        false => Target::tenant(tenant, ""),
    };
    let request = target.request(
        ListNamespacesRequest {
            tenant_id: tenant.tenant_id.to_string(),
            page_size: query.page_size()?,
            page_token: query.cursor.clone().unwrap_or_default(),
        },
        deadline,
    );
    let page = state
        .config
        .clone()
        .list_namespaces(request)
        .await?
        .into_inner();
    let prefix = format!("tenant/{}/", tenant.tenant_id);
    let body = NamespacePageDto {
        items: page
            .namespaces
            .into_iter()
            .map(|n| NamespaceDto {
                name: n
                    .namespace
                    .strip_prefix(&prefix)
                    .unwrap_or(&n.namespace)
                    .to_owned(),
                keys: n.keys,
                value_bytes: n.value_bytes,
                schema: n.has_schema,
            })
            .collect(),
        next_cursor: Some(page.next_page_token).filter(|t| !t.is_empty()),
    };
    Ok(with_headers(StatusCode::OK, HeaderMap::new(), body))
}

/// `GET /api/v1/config`: the tenant's namespaces.
#[utoipa::path(get, path = "/api/v1/config", operation_id = "listConfigNamespaces", tag = "config",
    summary = "The tenant's namespaces (those with a key or a schema), a page at a time",
    security(("apiKey" = [])),
    params(super::PageQuery),
    responses(
        (status = 200, description = "A page of namespaces", body = NamespacePageDto),
        (status = 400, description = "A bad parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_namespaces(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<super::PageQuery>,
) -> Result<Response, Problem> {
    namespaces(state, tenant, false, deadline, query).await
}

/// `GET /admin/v1/tenants/{id}/config`: a tenant's namespaces.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/config", operation_id = "listTenantConfigNamespacesAsAdmin", tag = "admin-config",
    summary = "A tenant's namespaces (those with a key or a schema), a page at a time",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"), super::PageQuery),
    responses(
        (status = 200, description = "A page of namespaces", body = NamespacePageDto),
        (status = 400, description = "A bad tenant id or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_namespaces(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<super::PageQuery>,
) -> Result<Response, Problem> {
    namespaces(
        state,
        TenantContext::new(super::admin::tenant_id(&id)?),
        true,
        deadline,
        query,
    )
    .await
}

/// `GET /api/v1/config/{name}:watch`: Server-Sent Events.
#[utoipa::path(get, path = "/api/v1/config/{name}:watch", operation_id = "watchConfig", tag = "config",
    summary = "Watch a namespace: its changes as Server-Sent Events",
    description = "Replays the changes after `Last-Event-ID` (or `from_revision`), sends a \
                   `synced` event, then each change as it happens (event = op, id = revision). \
                   A watch ends after `BOROUGH_WATCH_MAX_DURATION`; reconnect with the last id \
                   to miss nothing. An `error` event (a problem) ends it, e.g. when history it \
                   needs was pruned (list again).",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last revision seen"),
        NamespaceQuery),
    responses(
        (status = 200, description = "The event stream", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad namespace or revision", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The tenant has BOROUGH_WATCH_MAX_PER_TENANT watches open", body = ProblemBody,
            content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
pub async fn tenant_watch(
    state: AppState,
    tenant: TenantContext,
    name: &str,
    query: NamespaceQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    watch_sse(state, Target::tenant(tenant, name), query, headers).await
}

/// `PUT /api/v1/config/{name}:schema` (the only PUT on a namespace).
pub async fn tenant_put_namespace(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    match split_action(&name, ":schema") {
        (name, true) => tenant_schema(state, tenant, deadline, name, body).await,
        _ => Err(wrong_action("PUT on a namespace is for {name}:schema only")),
    }
}

/// `PUT /api/v1/config/{name}:schema`.
#[utoipa::path(put, path = "/api/v1/config/{name}:schema", operation_id = "setConfigSchema", tag = "config",
    summary = "Set (or, with null, remove) the JSON Schema of a namespace",
    description = "Every value put in the namespace from then on must satisfy it. Patterns run \
                   on a linear-time engine (no look-around, no back-references); at most 64 KiB.",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body(content = Object, description = "A JSON Schema, or null"),
    responses(
        (status = 200, description = "The schema now in force", body = SchemaDto),
        (status = 400, description = "Not a usable schema", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Over a configuration quota", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_schema(
    state: AppState,
    tenant: TenantContext,
    deadline: Deadline,
    name: &str,
    schema_json: Value,
) -> Result<Response, Problem> {
    schema(state, Target::tenant(tenant, name), deadline, schema_json).await
}

/// `GET /api/v1/config/{name}/{key}`.
#[utoipa::path(get, path = "/api/v1/config/{name}/{key}", operation_id = "getConfigKey", tag = "config",
    summary = "Read a key",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "Letters, digits, `_`, `.`, `-` (1 to 128)", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_get_key(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    get_entry(state, Target::tenant(tenant, &name), key, deadline).await
}

/// `PUT /api/v1/config/{name}/{key}`.
#[utoipa::path(put, path = "/api/v1/config/{name}/{key}", operation_id = "putConfigKey", tag = "config",
    summary = "Set a key (a compare-and-set with If-Match)",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected: 412 when stale"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key does not exist")),
    request_body(content = Object, description = "Any JSON value, at most 64 KiB, no NUL"),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\"")),
            links(
                ("getConfigKey" = (operation_id = "getConfigKey", parameters(("name" = "$request.path.name"), ("key" = "$request.path.key")))),
                ("configKeyHistory" = (operation_id = "configKeyHistory", parameters(("name" = "$request.path.name"), ("key" = "$request.path.key")))),
                ("rollbackConfigKey" = (operation_id = "rollbackConfigKey", parameters(("name" = "$request.path.name"), ("key" = "$request.path.key")))),
                ("deleteConfigKey" = (operation_id = "deleteConfigKey", parameters(("name" = "$request.path.name"), ("key" = "$request.path.key")))))),
        (status = 400, description = "A bad namespace, key or value", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change, or over a configuration quota", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the namespace's schema", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_put_key(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, Problem> {
    put_entry(
        state,
        Target::tenant(tenant, &name),
        key,
        deadline,
        headers,
        value,
    )
    .await
}

/// `DELETE /api/v1/config/{name}/{key}`.
#[utoipa::path(delete, path = "/api/v1/config/{name}/{key}", operation_id = "deleteConfigKey", tag = "config",
    summary = "Delete a key",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_delete_key(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    delete_entry(state, Target::tenant(tenant, &name), key, deadline, headers).await
}

/// `GET /api/v1/config/{name}/{key}/history`.
#[utoipa::path(get, path = "/api/v1/config/{name}/{key}/history", operation_id = "configKeyHistory", tag = "config",
    summary = "A key's history, newest first, a page at a time",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        HistoryQuery),
    responses(
        (status = 200, description = "A page of changes", body = ChangePageDto),
        (status = 400, description = "A bad namespace, key or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_history(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, Problem> {
    history(state, Target::tenant(tenant, &name), key, deadline, query).await
}

/// `POST /api/v1/config/{name}/{key}:rollback` (the only POST on a key).
pub async fn tenant_post_key(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, Problem> {
    match split_action(&key, ":rollback") {
        (key, true) => tenant_rollback(state, tenant, deadline, &name, key, body).await,
        _ => Err(wrong_action(
            "POST is for {key}:rollback only; PUT sets a value",
        )),
    }
}

/// `POST /api/v1/config/{name}/{key}:rollback`.
#[utoipa::path(post, path = "/api/v1/config/{name}/{key}:rollback", operation_id = "rollbackConfigKey", tag = "config",
    summary = "Put back the value a key had at a revision, as a new revision",
    security(("apiKey" = [])),
    params(("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad key, or a revision that deleted it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such revision of the key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the namespace's schema now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tenant_rollback(
    state: AppState,
    tenant: TenantContext,
    deadline: Deadline,
    name: &str,
    key: &str,
    body: RollbackBody,
) -> Result<Response, Problem> {
    rollback(state, Target::tenant(tenant, name), key, deadline, body).await
}

// Platform routes (admin token): `/admin/v1/config/platform/{service}…` is
// `platform/{service}`, Borough's own settings, which the services hot-reload.

/// `GET /admin/v1/config/platform/{service}` or `…/{service}:watch`.
#[utoipa::path(get, path = "/admin/v1/config/platform/{service}", operation_id = "listPlatformConfig", tag = "admin-config",
    summary = "List a service's platform settings, a page at a time",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "gateway, user, query, config", pattern = "^[a-z][a-z0-9-]{0,62}$"), NamespaceQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntryPageDto),
        (status = 400, description = "A bad namespace or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_namespace(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(service): Path<String>,
    ApiQuery(query): ApiQuery<NamespaceQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (service, watch) = split_action(&service, ":watch");
    if watch {
        return platform_watch(state, service, query, headers).await;
    }
    let (service, schema) = split_action(service, ":schema");
    if schema {
        return platform_get_schema(state, deadline, service).await;
    }
    list_entries(state, Target::platform(service), deadline, query).await
}

/// `GET /admin/v1/config/platform/{service}:schema`.
#[utoipa::path(get, path = "/admin/v1/config/platform/{service}:schema", operation_id = "getPlatformConfigSchema", tag = "admin-config",
    summary = "The JSON Schema of a service's settings (null: none)",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, description = "The schema", body = SchemaDto),
        (status = 400, description = "A bad namespace", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_get_schema(
    state: AppState,
    deadline: Deadline,
    service: &str,
) -> Result<Response, Problem> {
    get_schema(state, Target::platform(service), deadline).await
}

/// `GET /admin/v1/config/platform/{service}:watch`.
#[utoipa::path(get, path = "/admin/v1/config/platform/{service}:watch", operation_id = "watchPlatformConfig", tag = "admin-config",
    summary = "Watch a service's platform settings as Server-Sent Events",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last revision seen"),
        NamespaceQuery),
    responses(
        (status = 200, description = "The event stream", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad namespace or revision", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_watch(
    state: AppState,
    service: &str,
    query: NamespaceQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    watch_sse(state, Target::platform(service), query, headers).await
}

/// `PUT /admin/v1/config/platform/{service}:schema` (the only PUT on a namespace).
pub async fn platform_put_namespace(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(service): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    match split_action(&service, ":schema") {
        (service, true) => platform_schema(state, deadline, service, body).await,
        _ => Err(wrong_action(
            "PUT on a namespace is for {service}:schema only",
        )),
    }
}

/// `PUT /admin/v1/config/platform/{service}:schema`.
#[utoipa::path(put, path = "/admin/v1/config/platform/{service}:schema", operation_id = "setPlatformConfigSchema", tag = "admin-config",
    summary = "Set (or, with null, remove) the JSON Schema of a service's settings",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$")),
    request_body(content = Object, description = "A JSON Schema, or null"),
    responses(
        (status = 200, description = "The schema now in force", body = SchemaDto),
        (status = 400, description = "Not a usable schema", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_schema(
    state: AppState,
    deadline: Deadline,
    service: &str,
    schema_json: Value,
) -> Result<Response, Problem> {
    schema(state, Target::platform(service), deadline, schema_json).await
}

/// `GET /admin/v1/config/platform/{service}/{key}`.
#[utoipa::path(get, path = "/admin/v1/config/platform/{service}/{key}", operation_id = "getPlatformConfigKey", tag = "admin-config",
    summary = "Read a platform setting",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_get_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((service, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    get_entry(state, Target::platform(&service), key, deadline).await
}

/// `PUT /admin/v1/config/platform/{service}/{key}`.
#[utoipa::path(put, path = "/admin/v1/config/platform/{service}/{key}", operation_id = "putPlatformConfigKey", tag = "admin-config",
    summary = "Set a platform setting (hot-reloaded by every replica of the service)",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key does not exist")),
    request_body(content = Object, description = "Any JSON value, at most 64 KiB"),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\"")),
            links(
                ("getPlatformConfigKey" = (operation_id = "getPlatformConfigKey", parameters(("service" = "$request.path.service"), ("key" = "$request.path.key")))),
                ("platformConfigKeyHistory" = (operation_id = "platformConfigKeyHistory", parameters(("service" = "$request.path.service"), ("key" = "$request.path.key")))),
                ("rollbackPlatformConfigKey" = (operation_id = "rollbackPlatformConfigKey", parameters(("service" = "$request.path.service"), ("key" = "$request.path.key")))),
                ("deletePlatformConfigKey" = (operation_id = "deletePlatformConfigKey", parameters(("service" = "$request.path.service"), ("key" = "$request.path.key")))))),
        (status = 400, description = "A bad namespace, key or value", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the namespace's schema", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_put_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, Problem> {
    put_entry(
        state,
        Target::platform(&service),
        key,
        deadline,
        headers,
        value,
    )
    .await
}

/// `DELETE /admin/v1/config/platform/{service}/{key}`.
#[utoipa::path(delete, path = "/admin/v1/config/platform/{service}/{key}", operation_id = "deletePlatformConfigKey", tag = "admin-config",
    summary = "Delete a platform setting (the environment's value applies again)",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_delete_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    delete_entry(state, Target::platform(&service), key, deadline, headers).await
}

/// `GET /admin/v1/config/platform/{service}/{key}/history`.
#[utoipa::path(get, path = "/admin/v1/config/platform/{service}/{key}/history", operation_id = "platformConfigKeyHistory", tag = "admin-config",
    summary = "A platform setting's history, newest first, a page at a time",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        HistoryQuery),
    responses(
        (status = 200, description = "A page of changes", body = ChangePageDto),
        (status = 400, description = "A bad namespace, key or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_history(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((service, key)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, Problem> {
    history(state, Target::platform(&service), key, deadline, query).await
}

/// `POST /admin/v1/config/platform/{service}/{key}:rollback` (the only POST on a key).
pub async fn platform_post_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((service, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, Problem> {
    match split_action(&key, ":rollback") {
        (key, true) => platform_rollback(state, deadline, &service, key, body).await,
        _ => Err(wrong_action(
            "POST is for {key}:rollback only; PUT sets a value",
        )),
    }
}

/// `POST /admin/v1/config/platform/{service}/{key}:rollback`.
#[utoipa::path(post, path = "/admin/v1/config/platform/{service}/{key}:rollback", operation_id = "rollbackPlatformConfigKey", tag = "admin-config",
    summary = "Put back the value a platform setting had at a revision",
    security(("adminToken" = [])),
    params(("service" = String, Path, description = "The service", pattern = "^[a-z][a-z0-9-]{0,62}$"), ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad key, or a revision that deleted it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such revision", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the schema now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn platform_rollback(
    state: AppState,
    deadline: Deadline,
    service: &str,
    key: &str,
    body: RollbackBody,
) -> Result<Response, Problem> {
    rollback(state, Target::platform(service), key, deadline, body).await
}

// A tenant's namespaces by the platform admin (admin token):
// `/admin/v1/tenants/{id}/config/{name}…` is `tenant/{id}/{name}`, as the tenant reaches
// it with its key; changes are recorded as the admin's.

fn admin_tenant(id: &str, name: &str) -> Result<Target, Problem> {
    Ok(Target::admin_tenant(
        TenantContext::new(super::admin::tenant_id(id)?),
        name,
    ))
}

/// `GET /admin/v1/tenants/{id}/config/{name}` or `…/{name}:schema`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/config/{name}", operation_id = "listTenantConfigAsAdmin", tag = "admin-config",
    summary = "List a tenant's namespace, a page at a time",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"), NamespaceQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntryPageDto),
        (status = 400, description = "A bad tenant id, namespace or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_namespace(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<NamespaceQuery>,
) -> Result<Response, Problem> {
    let (name, schema) = split_action(&name, ":schema");
    if schema {
        return admin_tenant_get_schema(state, deadline, &id, name).await;
    }
    list_entries(state, admin_tenant(&id, name)?, deadline, query).await
}

/// `GET /admin/v1/tenants/{id}/config/{name}:schema`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/config/{name}:schema", operation_id = "getTenantConfigSchemaAsAdmin", tag = "admin-config",
    summary = "The JSON Schema of a tenant's namespace (null: none)",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 200, description = "The schema", body = SchemaDto),
        (status = 400, description = "A bad tenant id or namespace", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_get_schema(
    state: AppState,
    deadline: Deadline,
    id: &str,
    name: &str,
) -> Result<Response, Problem> {
    get_schema(state, admin_tenant(id, name)?, deadline).await
}

/// `PUT /admin/v1/tenants/{id}/config/{name}:schema` (the only PUT on a namespace).
pub async fn admin_tenant_put_namespace(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    match split_action(&name, ":schema") {
        (name, true) => admin_tenant_schema(state, deadline, &id, name, body).await,
        _ => Err(wrong_action("PUT on a namespace is for {name}:schema only")),
    }
}

/// `PUT /admin/v1/tenants/{id}/config/{name}:schema`.
#[utoipa::path(put, path = "/admin/v1/tenants/{id}/config/{name}:schema", operation_id = "setTenantConfigSchemaAsAdmin", tag = "admin-config",
    summary = "Set (or, with null, remove) the JSON Schema of a tenant's namespace",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body(content = Object, description = "A JSON Schema, or null"),
    responses(
        (status = 200, description = "The schema now in force", body = SchemaDto),
        (status = 400, description = "Not a usable schema", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_schema(
    state: AppState,
    deadline: Deadline,
    id: &str,
    name: &str,
    schema_json: Value,
) -> Result<Response, Problem> {
    schema(state, admin_tenant(id, name)?, deadline, schema_json).await
}

/// `GET /admin/v1/tenants/{id}/config/{name}/{key}`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/config/{name}/{key}", operation_id = "getTenantConfigKeyAsAdmin", tag = "admin-config",
    summary = "Read a key of a tenant's namespace",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad tenant id, namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_get_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name, key)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    get_entry(state, admin_tenant(&id, &name)?, key, deadline).await
}

/// `PUT /admin/v1/tenants/{id}/config/{name}/{key}`.
#[utoipa::path(put, path = "/admin/v1/tenants/{id}/config/{name}/{key}", operation_id = "putTenantConfigKeyAsAdmin", tag = "admin-config",
    summary = "Set a key of a tenant's namespace",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: only if the key does not exist")),
    request_body(content = Object, description = "Any JSON value, at most 64 KiB"),
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad tenant id, namespace, key or value", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A concurrent change", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the namespace's schema", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_put_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, Problem> {
    put_entry(
        state,
        admin_tenant(&id, &name)?,
        key,
        deadline,
        headers,
        value,
    )
    .await
}

/// `DELETE /admin/v1/tenants/{id}/config/{name}/{key}`.
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/config/{name}/{key}", operation_id = "deleteTenantConfigKeyAsAdmin", tag = "admin-config",
    summary = "Delete a key of a tenant's namespace",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("If-Match" = Option<String>, Header, description = "The revision ETag expected")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad tenant id, namespace or key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "The precondition failed", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_delete_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    delete_entry(state, admin_tenant(&id, &name)?, key, deadline, headers).await
}

/// `GET /admin/v1/tenants/{id}/config/{name}/{key}/history`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/config/{name}/{key}/history", operation_id = "tenantConfigKeyHistoryAsAdmin", tag = "admin-config",
    summary = "A tenant's key's history, newest first, a page at a time",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        HistoryQuery),
    responses(
        (status = 200, description = "A page of changes", body = ChangePageDto),
        (status = 400, description = "A bad tenant id, namespace, key or parameter", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_history(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name, key)): Path<(String, String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, Problem> {
    history(state, admin_tenant(&id, &name)?, key, deadline, query).await
}

/// `POST /admin/v1/tenants/{id}/config/{name}/{key}:rollback` (the only POST on a key).
pub async fn admin_tenant_post_key(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((id, name, key)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, Problem> {
    match split_action(&key, ":rollback") {
        (key, true) => admin_tenant_rollback(state, deadline, &id, &name, key, body).await,
        _ => Err(wrong_action(
            "POST is for {key}:rollback only; PUT sets a value",
        )),
    }
}

/// `POST /admin/v1/tenants/{id}/config/{name}/{key}:rollback`.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}/config/{name}/{key}:rollback", operation_id = "rollbackTenantConfigKeyAsAdmin", tag = "admin-config",
    summary = "Put back the value a tenant's key had at a revision",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("name" = String, Path, description = "The namespace", pattern = "^[A-Za-z0-9_.-]{1,64}$"),
        ("key" = String, Path, description = "The key", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "The entry", body = EntryDto,
            headers(("ETag" = String, description = "\"<revision>\""))),
        (status = 400, description = "A bad key, or a revision that deleted it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such revision", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The value breaks the schema now", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn admin_tenant_rollback(
    state: AppState,
    deadline: Deadline,
    id: &str,
    name: &str,
    key: &str,
    body: RollbackBody,
) -> Result<Response, Problem> {
    rollback(state, admin_tenant(id, name)?, key, deadline, body).await
}

/// One config client, as `GET /admin/v1/config/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceDto {
    pub instance: String,
    pub service: String,
    pub applied_revision: i64,
    /// Changes to its `platform/<service>` namespace it has not applied yet.
    pub lag: i64,
    pub last_seen: String,
}

/// The global revision and every config client seen in the last 10 minutes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConfigStatusDto {
    pub revision: i64,
    pub instances: Vec<InstanceDto>,
}

/// `GET /admin/v1/config/status`: each config client's applied revision and lag.
#[utoipa::path(get, path = "/admin/v1/config/status", operation_id = "configStatus", tag = "admin-config",
    summary = "Each config client's applied revision and lag",
    security(("adminToken" = [])),
    responses((status = 200, description = "The status", body = ConfigStatusDto,
        headers(("Cache-Control" = String, description = "no-store")))))]
pub async fn status(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
) -> Result<Response, Problem> {
    let body = config_status(&state, deadline).await?;
    let mut response = with_headers(StatusCode::OK, HeaderMap::new(), body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The config service's view of its clients.
pub async fn config_status(
    state: &AppState,
    deadline: Deadline,
) -> Result<ConfigStatusDto, tonic::Status> {
    let status = state
        .config
        .clone()
        .status(grpc::request(StatusRequest {}, None, deadline))
        .await?
        .into_inner();
    Ok(ConfigStatusDto {
        revision: status.revision,
        instances: status
            .instances
            .into_iter()
            .map(|i| InstanceDto {
                instance: i.instance,
                service: i.service,
                applied_revision: i.applied_revision,
                lag: i.lag,
                last_seen: to_rfc3339(i.last_seen.as_ref()),
            })
            .collect(),
    })
}
