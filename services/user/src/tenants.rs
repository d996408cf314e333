//! `borough.user.v1.TenantAdminService`: tenants and API keys on the control database.

use borough_error::{ErrorKind, ServiceError, to_status};
use borough_proto::page;
use borough_proto::time::to_timestamp;
use borough_proto::user::v1::{
    ApiKey, AuthenticateApiKeyRequest, AuthenticateApiKeyResponse, CreateTenantRequest,
    CreateTenantResponse, GetTenantRequest, GetTenantResponse, IssueApiKeyRequest,
    IssueApiKeyResponse, IssuedApiKey, ListTenantsRequest, ListTenantsResponse, Placement,
    RevokeApiKeyRequest, RevokeApiKeyResponse, Tenant, TenantStatus,
    tenant_admin_service_server::TenantAdminService,
};
use borough_tenancy::directory::{self, AuthError};
use borough_tenancy::{apikey, db};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
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
    #[error("could not generate a key: {0}")]
    Key(#[from] apikey::KeyError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ServiceError for TenantError {
    fn kind(&self) -> ErrorKind {
        match self {
            TenantError::Invalid(_) => ErrorKind::InvalidArgument,
            TenantError::NotFound(_) | TenantError::KeyNotFound { .. } => ErrorKind::NotFound,
            TenantError::NameTaken(_) => ErrorKind::AlreadyExists,
            TenantError::InvalidKey => ErrorKind::Unauthenticated,
            TenantError::Key(_) => ErrorKind::Internal,
            TenantError::Database(e) => db::classify(e),
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

type TenantRow = (Uuid, String, String, String, DateTime<Utc>);
type KeyRow = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);

fn tenant_to_proto((id, name, placement, status, created_at): TenantRow) -> Tenant {
    Tenant {
        id: id.to_string(),
        name,
        placement: match placement.as_str() {
            "shared" => Placement::Shared,
            _ => Placement::Unspecified,
        } as i32,
        status: match status.as_str() {
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            _ => TenantStatus::Unspecified,
        } as i32,
        created_at: Some(to_timestamp(created_at)),
    }
}

fn key_to_proto((id, prefix, created_at, revoked_at): KeyRow) -> ApiKey {
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

#[derive(Clone)]
pub struct Tenants {
    control: PgPool,
}

impl Tenants {
    pub fn new(control: PgPool) -> Self {
        Tenants { control }
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
        sqlx::query_as(
            "SELECT id, name, placement, status, created_at FROM control.tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.control)
        .await?
        .ok_or(TenantError::NotFound(id))
    }

    pub async fn create(
        &self,
        req: &CreateTenantRequest,
    ) -> Result<CreateTenantResponse, TenantError> {
        validate_name(&req.name)?;
        match Placement::try_from(req.placement) {
            Ok(Placement::Unspecified | Placement::Shared) => {}
            _ => {
                return Err(TenantError::Invalid(format!(
                    "placement {} is not supported; use shared",
                    req.placement
                )));
            }
        }
        // Tenant and first key commit together: no tenant without a way in.
        let mut tx = self.control.begin().await?;
        let row: TenantRow = sqlx::query_as(
            "INSERT INTO control.tenants (id, name, placement) VALUES ($1, $2, 'shared')
             RETURNING id, name, placement, status, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(&req.name)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match db::constraint(&e) {
            Some("tenants_name_key") => TenantError::NameTaken(req.name.clone()),
            _ => TenantError::Database(e),
        })?;
        let key = Self::insert_key(&mut tx, row.0).await?;
        tx.commit().await?;
        tracing::info!(tenant = %row.0, name = %row.1, "tenant created");
        Ok(CreateTenantResponse {
            tenant: Some(tenant_to_proto(row)),
            api_key: Some(key),
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
        let mut rows: Vec<TenantRow> = sqlx::query_as(
            "SELECT id, name, placement, status, created_at FROM control.tenants
              WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.control)
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => page::encode_token(last.0),
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
