//! Live tenant moves (admin token): `POST /admin/v1/tenants/{id}:move`, and the move as it
//! stands at `/admin/v1/tenants/{id}/moves/{move_id}` (GET follows it, DELETE cancels it).

use axum::extract::{Path, State};
use axum::response::Response;
use borough_error::{ErrorKind, Problem, ProblemBody};
use borough_proto::time::to_rfc3339;
use borough_proto::user::v1::{
    CancelTenantMoveRequest, GetTenantMoveRequest, MoveTenantRequest, Placement, TenantMove,
};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::config::{split_action, wrong_action};
use super::{location, with_headers};
use crate::auth::Admin;
use crate::extract::ApiJson;
use crate::grpc::{self, Deadline};
use crate::state::AppState;

/// Where to move a tenant. `Debug` hides the URLs (secrets).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveTenantBody {
    /// `shared`, `schema` or `database`.
    #[schema(pattern = "^(shared|schema|database)$")]
    pub placement: String,
    /// `database` only: a database of its own elsewhere (it must exist; a secret). Without
    /// it, a database Borough creates on the default server.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^postgres(ql)?://")]
    pub database_url: Option<String>,
    /// With `database_url` only: a read replica of it (a secret).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^postgres(ql)?://")]
    pub read_url: Option<String>,
}

impl std::fmt::Debug for MoveTenantBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoveTenantBody")
            .field("placement", &self.placement)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("read_url", &self.read_url.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A move of a tenant as it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantMoveDto {
    pub id: String,
    pub tenant_id: String,
    /// `preparing`, `copying`, `catching_up`, `fenced`, `switched` (at its new place; the
    /// old copy kept until `cleanup_after`), `cleaning`, `done`; or `failed`, `cancelled`.
    pub phase: String,
    pub from_placement: &'static str,
    pub to_placement: &'static str,
    /// The target's schema, and its database when Borough created it.
    pub to_schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_database: Option<String>,
    /// The target is a database given by URL (never shown).
    pub to_external_database: bool,
    /// Rows of the snapshot, and copied so far.
    pub rows_total: i64,
    pub rows_copied: i64,
    /// Changes made since the snapshot and applied to the target.
    pub changes_applied: i64,
    /// Changes committed on the source and not applied yet (the lag), as of the last look.
    pub lag_changes: i64,
    pub catch_up_rounds: i32,
    /// How long the tenant's writes were held at the switch, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_ms: Option<f64>,
    /// Why it failed, or the last trouble it is retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

fn placement_name(raw: i32) -> &'static str {
    match Placement::try_from(raw) {
        Ok(Placement::Shared) => "shared",
        Ok(Placement::Schema) => "schema",
        Ok(Placement::Database) => "database",
        _ => "unknown",
    }
}

impl From<TenantMove> for TenantMoveDto {
    fn from(m: TenantMove) -> Self {
        let time = |t: Option<prost_types::Timestamp>| t.as_ref().map(|t| to_rfc3339(Some(t)));
        TenantMoveDto {
            from_placement: placement_name(m.from_placement),
            to_placement: placement_name(m.to_placement),
            created_at: to_rfc3339(m.created_at.as_ref()),
            updated_at: to_rfc3339(m.updated_at.as_ref()),
            switched_at: time(m.switched_at),
            cleanup_after: time(m.cleanup_after),
            finished_at: time(m.finished_at),
            id: m.id,
            tenant_id: m.tenant_id,
            phase: m.phase,
            to_schema: m.to_schema,
            to_database: m.to_database,
            to_external_database: m.to_external_database,
            rows_total: m.rows_total,
            rows_copied: m.rows_copied,
            changes_applied: m.changes_applied,
            lag_changes: m.lag_changes,
            catch_up_rounds: m.catch_up_rounds,
            fence_ms: m.fence_ms,
            error: m.error,
            cancel_requested: m.cancel_requested,
        }
    }
}

fn move_location(m: &TenantMoveDto) -> HeaderMap {
    location(&format!("/admin/v1/tenants/{}/moves/{}", m.tenant_id, m.id))
}

fn answer(status: StatusCode, m: Option<TenantMove>) -> Result<Response, Problem> {
    let m: TenantMoveDto = m
        .ok_or_else(|| Problem::new(ErrorKind::Internal, "the backend answered without a move"))?
        .into();
    Ok(with_headers(status, move_location(&m), m))
}

/// `POST /admin/v1/tenants/{id}:move` (the only POST on a tenant).
pub async fn post_tenant(
    state: State<AppState>,
    admin: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
    body: ApiJson<MoveTenantBody>,
) -> Result<Response, Problem> {
    match split_action(&id, ":move") {
        (id, true) => move_tenant(state, admin, deadline, Path(id.to_owned()), body).await,
        _ => Err(wrong_action(
            "POST is for {id}:move only; POST /admin/v1/tenants creates a tenant",
        )),
    }
}

/// `POST /admin/v1/tenants/{id}:move` -> 202: the move, started; follow it at `Location`.
#[utoipa::path(post, path = "/admin/v1/tenants/{id}:move", operation_id = "moveTenant", tag = "admin-tenants",
    summary = "Move a tenant to another placement while it keeps serving",
    description = "Copies a snapshot of the tenant's data to the target, catches up on the \
        changes made meanwhile, holds the tenant's writes for a moment (they wait, and land at \
        the new place), checks both copies match and switches every service to the new place; \
        the old copy is removed after `BOROUGH_MOVE_GRACE`. Any failure before the switch rolls \
        back: the tenant stays where it was.",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id")),
    request_body = MoveTenantBody,
    responses(
        (status = 202, description = "Started", body = TenantMoveDto, headers(
            ("Location" = String, description = "/admin/v1/tenants/{id}/moves/{move_id}")),
            links(
                ("getTenantMove" = (operation_id = "getTenantMove", parameters(("id" = "$request.path.id"), ("move_id" = "$response.body#/id")))),
                ("cancelTenantMove" = (operation_id = "cancelTenantMove", parameters(("id" = "$request.path.id"), ("move_id" = "$response.body#/id")))))),
        (status = 400, description = "A bad tenant id, placement or URL", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The tenant is already there, not active, or another of its moves is unfinished; or BOROUGH_MOVE_MAX_ACTIVE moves are under way", body = ProblemBody, content_type = "application/problem+json"),
        (status = 412, description = "Moves need BOROUGH_PROVISIONER_DATABASE_URL (and BOROUGH_SECRET_KEYS for a database given by URL)", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn move_tenant(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MoveTenantBody>,
) -> Result<Response, Problem> {
    super::admin::tenant_id(&id)?;
    let placement = super::admin::placement(Some(&body.placement))?;
    let request = grpc::request(
        MoveTenantRequest {
            tenant_id: id,
            placement: placement as i32,
            database_url: body.database_url,
            read_url: body.read_url,
        },
        None,
        deadline,
    );
    let reply = state
        .tenants
        .clone()
        .move_tenant(request)
        .await?
        .into_inner();
    answer(StatusCode::ACCEPTED, reply.r#move)
}

/// `GET /admin/v1/tenants/{id}/moves/{move_id}`.
#[utoipa::path(get, path = "/admin/v1/tenants/{id}/moves/{move_id}", operation_id = "getTenantMove", tag = "admin-tenants",
    summary = "A tenant move as it stands: phase, rows copied, lag, errors",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("move_id" = uuid::Uuid, Path, description = "The move's id")),
    responses(
        (status = 200, description = "The move", body = TenantMoveDto),
        (status = 400, description = "Not an id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such move of the tenant", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_move(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((tenant_id, move_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let request = grpc::request(GetTenantMoveRequest { tenant_id, move_id }, None, deadline);
    let reply = state
        .tenants
        .clone()
        .get_tenant_move(request)
        .await?
        .into_inner();
    answer(StatusCode::OK, reply.r#move)
}

/// `DELETE /admin/v1/tenants/{id}/moves/{move_id}` -> 202: cancellation asked; the move
/// rolls back and ends `cancelled`, the tenant where it was.
#[utoipa::path(delete, path = "/admin/v1/tenants/{id}/moves/{move_id}", operation_id = "cancelTenantMove", tag = "admin-tenants",
    summary = "Cancel a tenant move that has not switched",
    security(("adminToken" = [])),
    params(("id" = uuid::Uuid, Path, description = "The tenant's id"),
        ("move_id" = uuid::Uuid, Path, description = "The move's id")),
    responses(
        (status = 202, description = "Cancellation asked (or done already)", body = TenantMoveDto),
        (status = 400, description = "Not an id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such move of the tenant", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The move has switched (or finished): too late to cancel", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn cancel_move(
    State(state): State<AppState>,
    _: Admin,
    deadline: Deadline,
    Path((tenant_id, move_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let request = grpc::request(
        CancelTenantMoveRequest { tenant_id, move_id },
        None,
        deadline,
    );
    let reply = state
        .tenants
        .clone()
        .cancel_tenant_move(request)
        .await?
        .into_inner();
    answer(StatusCode::ACCEPTED, reply.r#move)
}
