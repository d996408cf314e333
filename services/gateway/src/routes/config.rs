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
    Change, DeleteRequest, Entry, GetRequest, HistoryRequest, ListRequest, PutRequest,
    RollbackRequest, SetSchemaRequest, StatusRequest, WatchRequest,
};
use borough_proto::time::to_rfc3339;
use borough_tenancy::TenantContext;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{header_value, with_headers};
use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::auth::{Admin, Tenant, Unauthorized};
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
            request.metadata_mut().insert("x-borough-actor", actor);
        }
        request
    }
}

#[derive(Debug, Serialize)]
pub struct EntryDto {
    pub key: String,
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

#[derive(Debug, Serialize)]
pub struct ChangeDto {
    pub revision: i64,
    pub key: String,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceQuery {
    pub prefix: Option<String>,
    pub from_revision: Option<i64>,
    /// Entries per page, 1 to 1000 (default 100).
    pub limit: Option<i32>,
    pub cursor: Option<String>,
}

/// `GET {ns}` (list) or `GET {ns}:watch` (SSE).
async fn namespace(
    state: AppState,
    target: Target,
    watch: bool,
    deadline: Deadline,
    query: NamespaceQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if watch {
        return watch_sse(state, target, query, headers).await;
    }
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
    #[derive(Serialize)]
    struct ListDto {
        items: Vec<EntryDto>,
        revision: i64,
        next_cursor: Option<String>,
    }
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        ListDto {
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
        serde_json::json!({ "schema": schema }),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub revision: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Changes per page, 1 to 100 (default 20).
    pub limit: Option<i32>,
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
    let items: Vec<ChangeDto> = page.changes.into_iter().map(ChangeDto::from).collect();
    Ok(with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        serde_json::json!({
            "items": items,
            "next_cursor": Some(page.next_page_token).filter(|t| !t.is_empty()),
        }),
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
    let Some(key) = key.strip_suffix(":rollback") else {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "POST is for {key}:rollback only; PUT sets a value",
        ));
    };
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
fn split_action<'a>(name: &'a str, action: &str) -> (&'a str, bool) {
    match name.strip_suffix(action) {
        Some(base) => (base, true),
        None => (name, false),
    }
}

/// Whose namespaces a request addresses, from its route: `/admin/v1/config/platform/{name}…`
/// needs the admin token and addresses `platform/{name}`; `/api/v1/config/{name}…` needs
/// an API key and addresses the caller's own `tenant/<its id>/{name}`.
pub enum Scope {
    Platform,
    Tenant(TenantContext),
}

impl FromRequestParts<AppState> for Scope {
    type Rejection = Unauthorized;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.uri.path().starts_with("/admin/") {
            Admin::from_request_parts(parts, state).await?;
            Ok(Scope::Platform)
        } else {
            let Tenant(tenant) = Tenant::from_request_parts(parts, state).await?;
            Ok(Scope::Tenant(tenant))
        }
    }
}

impl Scope {
    fn target(self, name: &str) -> Target {
        match self {
            Scope::Platform => Target::platform(name),
            Scope::Tenant(tenant) => Target::tenant(tenant, name),
        }
    }
}

/// `GET {ns}` (list) and `GET {ns}:watch` (SSE).
pub async fn get_namespace(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<NamespaceQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (name, watch) = split_action(&name, ":watch");
    namespace(state, scope.target(name), watch, deadline, query, headers).await
}

/// `PUT {ns}:schema`.
pub async fn put_namespace(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    let (name, is_schema) = split_action(&name, ":schema");
    if !is_schema {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "PUT on a namespace is for {name}:schema only",
        ));
    }
    schema(state, scope.target(name), deadline, body).await
}

pub async fn get_key(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    get_entry(state, scope.target(&name), key, deadline).await
}

pub async fn put_key(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, Problem> {
    put_entry(state, scope.target(&name), key, deadline, headers, value).await
}

pub async fn delete_key(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    delete_entry(state, scope.target(&name), key, deadline, headers).await
}

pub async fn get_history(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Response, Problem> {
    history(state, scope.target(&name), key, deadline, query).await
}

/// `POST {ns}/{key}:rollback`.
pub async fn post_key(
    State(state): State<AppState>,
    scope: Scope,
    deadline: Deadline,
    Path((name, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, Problem> {
    rollback(state, scope.target(&name), &key, deadline, body).await
}

/// `GET /admin/v1/config/status`: each config client's applied revision and lag.
pub async fn status(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
) -> Result<Response, Problem> {
    let status = state
        .config
        .clone()
        .status(grpc::request(StatusRequest {}, None, deadline))
        .await?
        .into_inner();
    let instances: Vec<Value> = status
        .instances
        .into_iter()
        .map(|i| {
            serde_json::json!({
                "instance": i.instance,
                "service": i.service,
                "applied_revision": i.applied_revision,
                "lag": i.lag,
                "last_seen": to_rfc3339(i.last_seen.as_ref()),
            })
        })
        .collect();
    let mut response = with_headers(
        StatusCode::OK,
        HeaderMap::new(),
        serde_json::json!({ "revision": status.revision, "instances": instances }),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
