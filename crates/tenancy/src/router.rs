//! The per-tenant pool router.
//!
//! Callers ask for a transaction *for a tenant* and get one whose session is scoped to it
//! (`SET LOCAL borough.tenant_id`, which the row-level security policies read). Today every
//! tenant is placed in the shared tables of one pool; schema and database placements slot
//! in here (a `search_path`, another pool) without any caller changing.

use sqlx::{PgPool, Postgres, Transaction};

use crate::TenantContext;

/// A transaction scoped to one tenant. Commit it, or drop it to roll back.
pub type TenantTx = Transaction<'static, Postgres>;

/// Routes a tenant to the pool holding its data.
#[derive(Clone, Debug)]
pub struct PoolRouter {
    shared: PgPool,
}

impl PoolRouter {
    pub fn new(shared: PgPool) -> Self {
        PoolRouter { shared }
    }

    /// A read-write transaction for the tenant.
    pub async fn begin(&self, ctx: &TenantContext) -> Result<TenantTx, sqlx::Error> {
        let mut tx = self.shared.begin().await?;
        scope_to_tenant(&mut tx, ctx).await?;
        Ok(tx)
    }

    /// A read-only transaction for the tenant (a read replica, where one is placed).
    pub async fn begin_read(&self, ctx: &TenantContext) -> Result<TenantTx, sqlx::Error> {
        let mut tx = self.shared.begin_with("BEGIN READ ONLY").await?;
        scope_to_tenant(&mut tx, ctx).await?;
        Ok(tx)
    }

    /// The pool of the shared placement (health checks, metrics).
    pub fn shared_pool(&self) -> &PgPool {
        &self.shared
    }
}

/// `SET LOCAL borough.tenant_id`, as a bindable function call: it ends with the transaction.
async fn scope_to_tenant(tx: &mut TenantTx, ctx: &TenantContext) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('borough.tenant_id', $1, true)")
        .bind(ctx.tenant_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
