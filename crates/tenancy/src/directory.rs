//! The tenant directory: API key -> tenant.
//!
//! [`authenticate`] is the authoritative lookup on the control database (served by the
//! user service); the gateway caches its answers (`borough_tenant::keys::KeyCache`).

use sqlx::PgPool;
use uuid::Uuid;

use borough_tenant::TenantId;
use borough_tenant::apikey::{self, KeyError};
use borough_tenant::keys::Principal;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown, revoked, malformed, or the tenant is suspended: one answer for all, so a
    /// caller learns nothing about which.
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("the control database failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<KeyError> for AuthError {
    fn from(_: KeyError) -> Self {
        AuthError::InvalidKey
    }
}

/// An active key of an active tenant, by its prefix.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant_id: Uuid,
    key_hash: Vec<u8>,
}

/// Resolves a presented API key against the control database.
pub async fn authenticate(control: &PgPool, presented: &str) -> Result<Principal, AuthError> {
    let key = apikey::parse(presented)?;
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.tenant_id, k.key_hash
           FROM control.api_keys k
           JOIN control.tenants t ON t.id = k.tenant_id
          WHERE k.prefix = $1 AND k.revoked_at IS NULL AND t.status = 'active'",
    )
    .bind(&key.prefix)
    .fetch_optional(control)
    .await?;
    match row {
        Some(row) if apikey::digests_equal(&row.key_hash, &key.hash) => Ok(Principal {
            tenant_id: TenantId(row.tenant_id),
            key_id: row.id,
        }),
        _ => Err(AuthError::InvalidKey),
    }
}
