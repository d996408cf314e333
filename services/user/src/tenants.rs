//! `borough.user.v1.TenantAdminService`: tenants and API keys on the control database.

use crate::moves::Moves;
use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::page;
use borough_proto::time::to_timestamp;
use borough_proto::user::v1::{
    ApiKey, AuthenticateApiKeyRequest, AuthenticateApiKeyResponse, CancelTenantMoveRequest,
    CancelTenantMoveResponse, CreateTenantRequest, CreateTenantResponse, DeleteTenantRequest,
    DeleteTenantResponse, GetTenantMoveRequest, GetTenantMoveResponse, GetTenantRequest,
    GetTenantResponse, IssueApiKeyRequest, IssueApiKeyResponse, IssuedApiKey, ListTenantsRequest,
    ListTenantsResponse, MoveTenantRequest, MoveTenantResponse, Placement, RevokeApiKeyRequest,
    RevokeApiKeyResponse, Tenant, TenantStatus, tenant_admin_service_server::TenantAdminService,
};
use borough_telemetry::Metrics;
use borough_tenancy::directory::{self, AuthError};
use borough_tenancy::placement::{self, Route, Status as TenantState};
use borough_tenancy::provision::Provisioner;
use borough_tenancy::{PoolRouter, db};
use borough_tenant::{TenantId, apikey};
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tonic::{Request, Response, Status};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant with id {0}")]
    NotFound(Uuid),
    #[error("no API key {key} for tenant {tenant}")]
    KeyNotFound { tenant: Uuid, key: Uuid },
    #[error("a tenant named {0:?} already exists")]
    NameTaken(String),
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("tenant {name:?} is being provisioned by another request; retry in a moment")]
    Busy { name: String },
    #[error(
        "provisioning tenant {id} ({placement}) failed: {reason}. The tenant is \
         provisioning_failed; fix the cause and send the same request again to finish"
    )]
    ProvisioningFailed {
        id: Uuid,
        placement: &'static str,
        reason: String,
    },
    #[error("{0}")]
    NotConfigured(String),
    #[error(
        "move {0} of this tenant is unfinished: cancel it, or wait until it is done (its old \
         copy removed), before purging"
    )]
    Moving(Uuid),
    #[error("could not generate a key: {0}")]
    Key(#[from] apikey::KeyError),
    /// A stored route this service cannot use (a sealed URL that does not open).
    #[error("{0}")]
    Unusable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<placement::RouteLoadError> for TenantError {
    fn from(e: placement::RouteLoadError) -> Self {
        match e {
            placement::RouteLoadError::Database(e) => TenantError::Database(e),
            other => {
                tracing::error!(error = %other, "a tenant's route is unusable");
                TenantError::Unusable(other.to_string())
            }
        }
    }
}

impl From<borough_tenancy::secrets::SecretError> for TenantError {
    fn from(e: borough_tenancy::secrets::SecretError) -> Self {
        tracing::error!(error = %e, "sealing a tenant's URL failed");
        TenantError::Unusable(e.to_string())
    }
}

impl ServiceError for TenantError {
    fn kind(&self) -> ErrorKind {
        match self {
            TenantError::Invalid(_) => ErrorKind::InvalidArgument,
            TenantError::NotFound(_) | TenantError::KeyNotFound { .. } => ErrorKind::NotFound,
            TenantError::NameTaken(_) => ErrorKind::AlreadyExists,
            TenantError::InvalidKey => ErrorKind::Unauthenticated,
            TenantError::Busy { .. } | TenantError::Moving(_) => ErrorKind::Conflict,
            TenantError::ProvisioningFailed { .. } => ErrorKind::Unavailable,
            TenantError::NotConfigured(_) => ErrorKind::PreconditionFailed,
            TenantError::Key(_) | TenantError::Unusable(_) => ErrorKind::Internal,
            TenantError::Database(e) => db::classify(e),
        }
    }

    fn public_detail(&self) -> String {
        match self {
            // Written for the operator, free of URLs and internals.
            TenantError::ProvisioningFailed { .. } => self.to_string(),
            TenantError::Database(e) => db::public_detail(e),
            _ if self.kind().is_server_fault() => self.kind().title().to_owned(),
            _ => self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            TenantError::ProvisioningFailed { .. } => Some(std::time::Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl From<TenantError> for Status {
    fn from(err: TenantError) -> Status {
        to_status(&err)
    }
}

impl From<AuthError> for TenantError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidKey => TenantError::InvalidKey,
            AuthError::Database(e) => TenantError::Database(e),
        }
    }
}

/// A tenant as the admin API shows it: whether it has URLs, never the URLs themselves.
#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    name: String,
    placement: String,
    status: String,
    created_at: DateTime<Utc>,
    failure_reason: Option<String>,
    schema_name: String,
    database_name: Option<String>,
    has_database_url: bool,
    has_read_url: bool,
}

const TENANT_COLUMNS: &str = "id, name, placement, status, created_at, failure_reason, \
     schema_name, database_name, database_url IS NOT NULL AS has_database_url, \
     read_url IS NOT NULL AS has_read_url";

/// An API key as listed: never its hash.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

fn placement_to_proto(placement: &str) -> Placement {
    match placement.parse() {
        Ok(borough_tenant::Placement::Shared) => Placement::Shared,
        Ok(borough_tenant::Placement::Schema) => Placement::Schema,
        Ok(borough_tenant::Placement::Database) => Placement::Database,
        Err(_) => Placement::Unspecified,
    }
}

fn tenant_to_proto(row: TenantRow) -> Tenant {
    let TenantRow {
        id,
        name,
        placement,
        status,
        created_at,
        failure_reason,
        schema_name: schema,
        database_name: database,
        has_database_url: ext,
        has_read_url: read,
    } = row;
    Tenant {
        id: id.to_string(),
        name,
        placement: placement_to_proto(&placement) as i32,
        status: match TenantState::parse(&status) {
            Some(TenantState::Active) => TenantStatus::Active,
            Some(TenantState::Suspended) => TenantStatus::Suspended,
            Some(TenantState::Provisioning) => TenantStatus::Provisioning,
            Some(TenantState::ProvisioningFailed) => TenantStatus::ProvisioningFailed,
            None => TenantStatus::Unspecified,
        } as i32,
        created_at: Some(to_timestamp(created_at)),
        failure_reason,
        schema,
        database,
        external_database: ext,
        read_replica: read,
    }
}

fn key_to_proto(
    KeyRow {
        id,
        prefix,
        created_at,
        revoked_at,
    }: KeyRow,
) -> ApiKey {
    ApiKey {
        id: id.to_string(),
        prefix,
        created_at: Some(to_timestamp(created_at)),
        revoked_at: revoked_at.map(to_timestamp),
    }
}

fn parse_uuid(what: &str, raw: &str) -> Result<Uuid, TenantError> {
    Uuid::parse_str(raw).map_err(|_| TenantError::Invalid(format!("{raw:?} is not a valid {what}")))
}

/// Tenant names: 1 to 64 of lowercase letters, digits and '-', not starting or ending
/// with '-'. The same rule is a CHECK constraint in the control schema.
fn validate_name(name: &str) -> Result<(), TenantError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TenantError::Invalid(format!(
            "tenant name {name:?} must be 1 to 64 lowercase letters, digits or '-', \
             not starting or ending with '-'"
        )))
    }
}

/// Provisioning outcomes, by placement and outcome (`ok`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ProvisionLabels {
    placement: &'static str,
    outcome: &'static str,
}

/// How long a `provisioning` claim holds before another request may take it over (the
/// claimer crashed): longer than any provisioning run.
const STALE_CLAIM: &str = "10 minutes";

#[derive(Clone)]
pub struct Tenants {
    control: PgPool,
    provisioner: Provisioner,
    router: PoolRouter,
    /// Seal (and open) tenants' database URLs.
    keys: Option<std::sync::Arc<borough_tenancy::secrets::Keyring>>,
    outcomes: Family<ProvisionLabels, Counter>,
    moves: Moves,
}

impl Tenants {
    pub fn new(
        router: PoolRouter,
        provisioner: Provisioner,
        keys: Option<std::sync::Arc<borough_tenancy::secrets::Keyring>>,
        moves: Moves,
        metrics: &Metrics,
    ) -> Self {
        let outcomes = Family::<ProvisionLabels, Counter>::default();
        metrics.register(
            "tenant_provisioning",
            "Tenant provisioning runs, by placement and outcome",
            outcomes.clone(),
        );
        Tenants {
            control: router.shared_pool().clone(),
            provisioner,
            router,
            keys,
            outcomes,
            moves,
        }
    }

    async fn insert_key(
        conn: &mut PgConnection,
        tenant: Uuid,
    ) -> Result<IssuedApiKey, TenantError> {
        let issued = apikey::issue()?;
        let row: KeyRow = sqlx::query_as(
            "INSERT INTO control.api_keys (id, tenant_id, prefix, key_hash)
             VALUES ($1, $2, $3, $4)
             RETURNING id, prefix, created_at, revoked_at",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(&issued.prefix)
        .bind(&issued.hash[..])
        .fetch_one(&mut *conn)
        .await?;
        Ok(IssuedApiKey {
            key: Some(key_to_proto(row)),
            secret: issued.plain,
        })
    }

    async fn tenant_row(&self, id: Uuid) -> Result<TenantRow, TenantError> {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM control.tenants WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.control)
        .await?
        .ok_or(TenantError::NotFound(id))
    }

    /// Validates a create request into (placement, database_url, read_url).
    fn parse_create(
        req: &CreateTenantRequest,
    ) -> Result<(borough_tenant::Placement, Option<String>, Option<String>), TenantError> {
        use borough_tenant::Placement as P;
        validate_name(&req.name)?;
        let placement = match Placement::try_from(req.placement) {
            Ok(Placement::Unspecified | Placement::Shared) => P::Shared,
            Ok(Placement::Schema) => P::Schema,
            Ok(Placement::Database) => P::Database,
            Err(_) => {
                return Err(TenantError::Invalid(format!(
                    "placement {} is not one of shared, schema, database",
                    req.placement
                )));
            }
        };
        let url = req.database_url.clone().filter(|u| !u.is_empty());
        let read_url = req.read_url.clone().filter(|u| !u.is_empty());
        if placement != P::Database && (url.is_some() || read_url.is_some()) {
            return Err(TenantError::Invalid(
                "database_url and read_url are only for placement \"database\"".to_owned(),
            ));
        }
        if read_url.is_some() && url.is_none() {
            return Err(TenantError::Invalid(
                "read_url needs database_url (a replica of a database Borough creates is not known)"
                    .to_owned(),
            ));
        }
        for (field, value) in [("database_url", &url), ("read_url", &read_url)] {
            if let Some(value) = value {
                placement::validate_database_url(field, value).map_err(TenantError::Invalid)?;
            }
        }
        Ok((placement, url, read_url))
    }

    /// Claims the tenant named in `req` for provisioning: a new row, or an earlier attempt
    /// that failed (or whose claimer vanished). Returns its route, in `provisioning`.
    async fn claim(
        &self,
        req: &CreateTenantRequest,
        placement: borough_tenant::Placement,
        url: Option<String>,
        read_url: Option<String>,
    ) -> Result<Route, TenantError> {
        let mut tx = self.control.begin().await?;
        let existing: Option<(Uuid, String, String, bool)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT id, placement, status, status_changed_at < now() - interval '{STALE_CLAIM}'
               FROM control.tenants WHERE name = $1 FOR UPDATE"
            )))
            .bind(&req.name)
            .fetch_optional(&mut *tx)
            .await?;
        let id = match existing {
            None => TenantId::new_v7(),
            Some((id, stored, status, stale)) => {
                let resumable = stored == placement.as_str()
                    && match TenantState::parse(&status) {
                        Some(TenantState::ProvisioningFailed) => true,
                        Some(TenantState::Provisioning) if stale => true,
                        Some(TenantState::Provisioning) => {
                            return Err(TenantError::Busy {
                                name: req.name.clone(),
                            });
                        }
                        _ => false,
                    };
                if !resumable {
                    return Err(TenantError::NameTaken(req.name.clone()));
                }
                TenantId(id)
            }
        };
        let route = placement::new_route(id, placement, url, read_url);
        // URLs are stored sealed, bound to this row; their locations in clear.
        let columns =
            crate::stored::storage_columns(&route, self.keys.as_deref()).map_err(|e| match e {
                crate::stored::SealError::NoKeys => TenantError::NotConfigured(e.to_string()),
                crate::stored::SealError::Secret(e) => e.into(),
            })?;
        sqlx::query(
            "INSERT INTO control.tenants
                 (id, name, placement, status, schema_name, database_name, database_url, read_url,
                  database_location, read_location)
             VALUES ($1, $2, $3, 'provisioning', $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE
                SET status = 'provisioning', failure_reason = NULL, status_changed_at = now(),
                    schema_name = EXCLUDED.schema_name, database_name = EXCLUDED.database_name,
                    database_url = EXCLUDED.database_url, read_url = EXCLUDED.read_url,
                    database_location = EXCLUDED.database_location,
                    read_location = EXCLUDED.read_location",
        )
        .bind(id.as_uuid())
        .bind(&req.name)
        .bind(placement.as_str())
        .bind(&columns.schema)
        .bind(&columns.database_name)
        .bind(&columns.url)
        .bind(&columns.read_url)
        .bind(&columns.location)
        .bind(&columns.read_location)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db::constraint(&e) {
            Some("tenants_name_key") => TenantError::NameTaken(req.name.clone()),
            _ => TenantError::Database(e),
        })?;
        tx.commit().await?;
        Ok(route)
    }

    fn count(&self, placement: borough_tenant::Placement, outcome: &'static str) {
        self.outcomes
            .get_or_create(&ProvisionLabels {
                placement: placement.as_str(),
                outcome,
            })
            .inc();
    }

    pub async fn create(
        &self,
        req: &CreateTenantRequest,
    ) -> Result<CreateTenantResponse, TenantError> {
        let (placement, url, read_url) = Self::parse_create(req)?;
        self.provisioner
            .check(placement, url.is_some())
            .map_err(|e| TenantError::NotConfigured(e.to_string()))?;

        let route = self.claim(req, placement, url, read_url).await?;
        let id = *route.tenant_id.as_uuid();
        tracing::info!(tenant = %id, name = %req.name, placement = %placement, "provisioning tenant");
        if let Err(e) = self.provisioner.prepare(&route).await {
            let reason = e.public();
            self.count(placement, "failed");
            tracing::warn!(tenant = %id, placement = %placement, error = %e, "provisioning failed");
            sqlx::query(
                "UPDATE control.tenants
                    SET status = 'provisioning_failed', failure_reason = $2, status_changed_at = now()
                  WHERE id = $1 AND status = 'provisioning'",
            )
            .bind(id)
            .bind(&reason)
            .execute(&self.control)
            .await?;
            return Err(TenantError::ProvisioningFailed {
                id,
                placement: placement.as_str(),
                reason,
            });
        }

        // Active and its first key together: no active tenant without a way in.
        let mut tx = self.control.begin().await?;
        sqlx::query(
            "UPDATE control.tenants SET status = 'active', status_changed_at = now()
              WHERE id = $1 AND status = 'provisioning'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let key = Self::insert_key(&mut tx, id).await?;
        let row: TenantRow = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM control.tenants WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.router.invalidate(route.tenant_id);
        self.count(placement, "ok");
        tracing::info!(tenant = %id, name = %req.name, placement = %placement, "tenant created");
        Ok(CreateTenantResponse {
            tenant: Some(tenant_to_proto(row)),
            api_key: Some(key),
        })
    }

    /// Suspends the tenant (its keys stop at once); with `purge`, then removes its data and
    /// the tenant record.
    pub async fn delete(&self, id: &str, purge: bool) -> Result<DeleteTenantResponse, TenantError> {
        let id = parse_uuid("tenant id", id)?;
        let suspended: Option<Uuid> = sqlx::query_scalar(
            "UPDATE control.tenants
                SET status = 'suspended',
                    status_changed_at = CASE WHEN status = 'suspended' THEN status_changed_at ELSE now() END
              WHERE id = $1 RETURNING id",
        )
        .bind(id)
        .fetch_optional(&self.control)
        .await?;
        suspended.ok_or(TenantError::NotFound(id))?;
        self.router.invalidate(TenantId(id));
        tracing::info!(tenant = %id, "tenant suspended");
        if !purge {
            return Ok(DeleteTenantResponse {
                tenant: Some(tenant_to_proto(self.tenant_row(id).await?)),
                purged: false,
            });
        }
        // A move holds copies in two places: it ends (or is cancelled) first.
        let moving: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM control.tenant_moves
              WHERE tenant_id = $1 AND phase NOT IN ('done', 'failed', 'cancelled')",
        )
        .bind(id)
        .fetch_optional(&self.control)
        .await?;
        if let Some(moving) = moving {
            return Err(TenantError::Moving(moving));
        }
        let route = placement::load_route(
            &self.control,
            TenantId(id),
            &placement::Credentials::TenantUrls(self.keys.clone()),
        )
        .await?
        .ok_or(TenantError::NotFound(id))?;
        self.provisioner.purge(&route).await.map_err(|e| {
            tracing::warn!(tenant = %id, error = %e, "purging failed");
            TenantError::ProvisioningFailed {
                id,
                placement: route.placement.as_str(),
                reason: format!("purging its data: {}", e.public()),
            }
        })?;
        sqlx::query("DELETE FROM control.tenants WHERE id = $1")
            .bind(id)
            .execute(&self.control)
            .await?;
        tracing::warn!(tenant = %id, placement = %route.placement, "tenant purged: its data and record are deleted");
        Ok(DeleteTenantResponse {
            tenant: None,
            purged: true,
        })
    }

    pub async fn get(&self, id: &str) -> Result<GetTenantResponse, TenantError> {
        let id = parse_uuid("tenant id", id)?;
        let tenant = self.tenant_row(id).await?;
        let keys: Vec<KeyRow> = sqlx::query_as(
            "SELECT id, prefix, created_at, revoked_at FROM control.api_keys
              WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.control)
        .await?;
        Ok(GetTenantResponse {
            tenant: Some(tenant_to_proto(tenant)),
            api_keys: keys.into_iter().map(key_to_proto).collect(),
        })
    }

    pub async fn list(&self, req: &ListTenantsRequest) -> Result<ListTenantsResponse, TenantError> {
        let limit = page::page_size(req.page_size).map_err(TenantError::Invalid)?;
        let after = page::decode_token(&req.page_token).map_err(TenantError::Invalid)?;
        let prefix = name_prefix_pattern(&req.name_prefix)?;
        let mut rows: Vec<TenantRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM control.tenants
              WHERE ($1::uuid IS NULL OR id > $1)
                AND ($3 = '' OR lower(name) LIKE $3 ESCAPE '\\')
              ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit + 1)
        .bind(prefix)
        .fetch_all(&self.control)
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => page::encode_token(last.id),
            _ => String::new(),
        };
        Ok(ListTenantsResponse {
            tenants: rows.into_iter().map(tenant_to_proto).collect(),
            next_page_token,
        })
    }

    pub async fn issue_key(&self, tenant_id: &str) -> Result<IssuedApiKey, TenantError> {
        let tenant = parse_uuid("tenant id", tenant_id)?;
        let mut tx = self.control.begin().await?;
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM control.tenants WHERE id = $1 FOR SHARE")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        exists.ok_or(TenantError::NotFound(tenant))?;
        let key = Self::insert_key(&mut tx, tenant).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant, key = ?key.key.as_ref().map(|k| &k.prefix), "api key issued");
        Ok(key)
    }

    /// Revokes a key; revoking a revoked key again is a no-op.
    pub async fn revoke_key(&self, tenant_id: &str, key_id: &str) -> Result<(), TenantError> {
        let tenant = parse_uuid("tenant id", tenant_id)?;
        let key = parse_uuid("key id", key_id)?;
        let found: Option<Uuid> = sqlx::query_scalar(
            "UPDATE control.api_keys SET revoked_at = COALESCE(revoked_at, now())
              WHERE id = $1 AND tenant_id = $2 RETURNING id",
        )
        .bind(key)
        .bind(tenant)
        .fetch_optional(&self.control)
        .await?;
        found.ok_or(TenantError::KeyNotFound { tenant, key })?;
        tracing::info!(tenant = %tenant, key = %key, "api key revoked");
        Ok(())
    }
}

#[tonic::async_trait]
impl TenantAdminService for Tenants {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        Ok(Response::new(self.create(request.get_ref()).await?))
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<GetTenantResponse>, Status> {
        Ok(Response::new(self.get(&request.get_ref().id).await?))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        Ok(Response::new(self.list(request.get_ref()).await?))
    }

    async fn issue_api_key(
        &self,
        request: Request<IssueApiKeyRequest>,
    ) -> Result<Response<IssueApiKeyResponse>, Status> {
        let key = self.issue_key(&request.get_ref().tenant_id).await?;
        Ok(Response::new(IssueApiKeyResponse { api_key: Some(key) }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let req = request.get_ref();
        self.revoke_key(&req.tenant_id, &req.key_id).await?;
        Ok(Response::new(RevokeApiKeyResponse {}))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        let req = request.get_ref();
        Ok(Response::new(self.delete(&req.id, req.purge).await?))
    }

    async fn move_tenant(
        &self,
        request: Request<MoveTenantRequest>,
    ) -> Result<Response<MoveTenantResponse>, Status> {
        let req = request.into_inner();
        let row = self
            .moves
            .start(
                &req.tenant_id,
                req.placement(),
                req.database_url,
                req.read_url,
            )
            .await?;
        Ok(Response::new(MoveTenantResponse {
            r#move: Some(row.to_proto()),
        }))
    }

    async fn get_tenant_move(
        &self,
        request: Request<GetTenantMoveRequest>,
    ) -> Result<Response<GetTenantMoveResponse>, Status> {
        let req = request.get_ref();
        let row = self.moves.get(&req.tenant_id, &req.move_id).await?;
        Ok(Response::new(GetTenantMoveResponse {
            r#move: Some(row.to_proto()),
        }))
    }

    async fn cancel_tenant_move(
        &self,
        request: Request<CancelTenantMoveRequest>,
    ) -> Result<Response<CancelTenantMoveResponse>, Status> {
        let req = request.get_ref();
        let row = self.moves.cancel(&req.tenant_id, &req.move_id).await?;
        Ok(Response::new(CancelTenantMoveResponse {
            r#move: Some(row.to_proto()),
        }))
    }

    async fn authenticate_api_key(
        &self,
        request: Request<AuthenticateApiKeyRequest>,
    ) -> Result<Response<AuthenticateApiKeyResponse>, Status> {
        let principal = directory::authenticate(&self.control, &request.get_ref().api_key)
            .await
            .map_err(TenantError::from)?;
        Ok(Response::new(AuthenticateApiKeyResponse {
            tenant_id: principal.tenant_id.to_string(),
            key_id: principal.key_id.to_string(),
        }))
    }
}

/// The `LIKE` pattern of a name prefix (lower case, `%`, `_` and `\` escaped); empty for
/// none.
fn name_prefix_pattern(prefix: &str) -> Result<String, TenantError> {
    if prefix.chars().count() > 128 {
        return Err(TenantError::Invalid(
            "the name prefix is longer than 128 characters".to_owned(),
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(TenantError::Invalid(
            "the name prefix has control characters".to_owned(),
        ));
    }
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    Ok(pattern)
}
