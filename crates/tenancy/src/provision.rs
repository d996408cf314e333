//! Preparing and removing a tenant's storage, and migrating every tenant.
//!
//! Every step is idempotent (`IF NOT EXISTS`, migrations that skip what is applied), so a
//! provisioning that failed half way is finished by running it again, and `migrate` can
//! run any number of times.
//!
//! Runs as the owner role of the default server (`BOROUGH_PROVISIONER_DATABASE_URL`: it
//! creates schemas and databases), or, for a database the operator gave by URL, as that
//! URL's role.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use crate::migrate::{self, MigrateError, Scope, is_safe_identifier};
use crate::placement::{self, Route, Storage};

/// How long provisioning waits to connect before calling a server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The messages below are shown to the platform operator: they never include a URL.
    #[error("could not connect to the tenant's database server: {0}")]
    Connect(String),
    #[error(
        "schema and database tenants need BOROUGH_PROVISIONER_DATABASE_URL (an owner role of the default server)"
    )]
    NotConfigured,
    #[error("{0}")]
    Migrate(#[from] MigrateError),
    #[error("preparing the tenant's storage failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl ProvisionError {
    /// What the operator is told (stored as the tenant's `failure_reason`): a short
    /// description with the SQLSTATE where there is one, never a URL nor the server's or
    /// driver's own message text (the full error goes to the log).
    pub fn public(&self) -> String {
        match self {
            ProvisionError::Migrate(MigrateError::Failed {
                scope,
                version,
                name,
                source,
            }) => format!(
                "migration {scope}/{version:04} ({name}) failed: {}",
                describe(source)
            ),
            ProvisionError::Migrate(MigrateError::Database(e)) | ProvisionError::Database(e) => {
                format!("preparing the tenant's storage failed: {}", describe(e))
            }
            other => other.to_string(),
        }
    }
}

/// Short, URL-free description of a database failure, by its class (what an operator may
/// be shown: no host, no URL, no driver text).
pub fn describe(err: &sqlx::Error) -> String {
    match err {
        // std's I/O messages name no host or URL ("Connection refused (os error 111)").
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let what = match code.as_str() {
                c if c.starts_with("28") => "authentication failed",
                "3D000" => "the database does not exist",
                "42501" => "permission denied",
                "42P04" => "the database already exists",
                "53300" => "too many connections",
                c if c.starts_with("08") => "the connection failed",
                c if c.starts_with("57") => "the server is shutting down or not ready",
                _ => "the server refused a statement",
            };
            format!("{what} (SQLSTATE {code})")
        }
        sqlx::Error::Tls(_) => "TLS failed".to_owned(),
        sqlx::Error::Configuration(_) => "the URL is not usable".to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        _ => "connection failed".to_owned(),
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, ProvisionError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ProvisionError::Connect(describe(&e))),
        Err(_) => Err(ProvisionError::Connect("timed out".to_owned())),
    }
}

/// Prepares and removes tenants' storage.
#[derive(Clone)]
pub struct Provisioner {
    /// The owner role on the default server's Borough database.
    admin: Option<PgConnectOptions>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("configured", &self.admin.is_some())
            .finish()
    }
}

impl Provisioner {
    /// `admin_url`: an owner role on the default server's Borough database; `None` allows
    /// only shared tenants and databases given by URL.
    pub fn new(admin_url: Option<&str>) -> Result<Self, sqlx::Error> {
        let admin = admin_url
            .map(|url| url.parse::<PgConnectOptions>())
            .transpose()?;
        Ok(Provisioner { admin })
    }

    fn admin(&self) -> Result<&PgConnectOptions, ProvisionError> {
        self.admin.as_ref().ok_or(ProvisionError::NotConfigured)
    }

    /// Whether a tenant so placed can be provisioned here: schema tenants and databases
    /// Borough creates need the provisioner role; shared tenants and databases given by
    /// URL do not.
    pub fn check(
        &self,
        placement: borough_tenant::Placement,
        has_url: bool,
    ) -> Result<(), ProvisionError> {
        match placement {
            borough_tenant::Placement::Shared => Ok(()),
            borough_tenant::Placement::Database if has_url => Ok(()),
            _ => self.admin().map(|_| ()),
        }
    }

    /// Creates and migrates the tenant's schema or database; nothing for shared tenants
    /// (their tables are the shared ones, migrated with the service). Idempotent.
    pub async fn prepare(&self, route: &Route) -> Result<Option<migrate::Report>, ProvisionError> {
        if !is_safe_identifier(&route.schema) {
            return Err(MigrateError::BadSchema(route.schema.clone()).into());
        }
        match &route.storage {
            Storage::Default if route.schema == placement::SHARED_SCHEMA => Ok(None),
            Storage::Default => {
                let mut conn = connect(self.admin()?).await?;
                Ok(Some(
                    migrate::run(&mut conn, Scope::Tenant, &route.schema).await?,
                ))
            }
            Storage::OwnDatabase { name } => {
                let admin = self.admin()?;
                let mut conn = connect(admin).await?;
                create_database(&mut conn, name).await?;
                let mut conn = connect(&admin.clone().database(name)).await?;
                Ok(Some(
                    migrate::run(&mut conn, Scope::Tenant, &route.schema).await?,
                ))
            }
            Storage::External(external) => {
                let mut conn = connect(&operator_options(external)?).await?;
                Ok(Some(
                    migrate::run(&mut conn, Scope::Tenant, &route.schema).await?,
                ))
            }
        }
    }

    /// Refreshes the planner's statistics of the tables in the route's schema (after a
    /// bulk copy into them: a table the planner has no statistics of may be read with a
    /// sequential scan where an index lookup was meant). As the owner, who alone may.
    pub async fn analyze(&self, route: &Route) -> Result<(), ProvisionError> {
        if !is_safe_identifier(&route.schema) {
            return Err(MigrateError::BadSchema(route.schema.clone()).into());
        }
        let mut conn = match &route.storage {
            Storage::Default => connect(self.admin()?).await?,
            Storage::OwnDatabase { name } => connect(&self.admin()?.clone().database(name)).await?,
            Storage::External(external) => connect(&operator_options(external)?).await?,
        };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
        )
        .bind(&route.schema)
        .fetch_all(&mut conn)
        .await?;
        for table in tables.iter().filter(|t| is_safe_identifier(t)) {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "ANALYZE \"{}\".\"{table}\"",
                route.schema
            )))
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }

    /// Removes the tenant's data: its rows from the shared tables, its schema, its
    /// database (or, in a database Borough did not create, its schema there). Idempotent.
    pub async fn purge(&self, route: &Route) -> Result<(), ProvisionError> {
        if !is_safe_identifier(&route.schema) {
            return Err(MigrateError::BadSchema(route.schema.clone()).into());
        }
        match &route.storage {
            Storage::Default if route.schema == placement::SHARED_SCHEMA => {
                let mut conn = connect(self.admin()?).await?;
                delete_shared_rows(&mut conn, route).await?;
            }
            Storage::Default => {
                let mut conn = connect(self.admin()?).await?;
                drop_schema(&mut conn, &route.schema).await?;
            }
            Storage::OwnDatabase { name } => {
                let mut conn = connect(self.admin()?).await?;
                if !is_safe_identifier(name) {
                    return Err(MigrateError::BadSchema(name.clone()).into());
                }
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
            }
            Storage::External(external) => {
                let mut conn = connect(&operator_options(external)?).await?;
                drop_schema(&mut conn, &route.schema).await?;
            }
        }
        Ok(())
    }
}

/// The operator's URL of a database elsewhere (provisioning needs its credentials).
fn operator_options(external: &placement::External) -> Result<PgConnectOptions, ProvisionError> {
    external
        .url
        .as_deref()
        .ok_or_else(|| {
            ProvisionError::Connect(
                "the database URL is sealed and this process has no BOROUGH_SECRET_KEYS".to_owned(),
            )
        })?
        .parse()
        .map_err(|_| ProvisionError::Connect("the URL is not usable".to_owned()))
}

async fn create_database(conn: &mut PgConnection, name: &str) -> Result<(), ProvisionError> {
    if !is_safe_identifier(name) {
        return Err(MigrateError::BadSchema(name.to_owned()).into());
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        // CREATE DATABASE cannot run in a transaction; a concurrent creator is excluded by
        // the tenant's `provisioning` claim in the control database.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut *conn)
            .await?;
        tracing::info!(database = name, "tenant database created");
    }
    Ok(())
}

async fn drop_schema(conn: &mut PgConnection, schema: &str) -> Result<(), ProvisionError> {
    let mut tx = conn.begin().await?;
    // `schema` passed is_safe_identifier in the callers.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut *tx)
    .await?;
    let has_meta: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = 'borough_meta' AND tablename = 'migrations')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if has_meta {
        sqlx::query("DELETE FROM borough_meta.migrations WHERE scope = 'tenant' AND target = $1")
            .bind(schema)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes the tenant's rows from every shared table with a `tenant_id` column.
async fn delete_shared_rows(conn: &mut PgConnection, route: &Route) -> Result<(), ProvisionError> {
    let mut tx = conn.begin().await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
          WHERE c.table_schema = $1 AND c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'
          ORDER BY 1",
    )
    .bind(placement::SHARED_SCHEMA)
    .fetch_all(&mut *tx)
    .await?;
    // Removed rows are not changes: no outbox rows, no notifications, no move fence
    // (`borough.relocating`, migrations/tenant/0007).
    sqlx::query(
        "SELECT set_config('borough.tenant_id', $1, true), \
                set_config('borough.relocating', 'on', true)",
    )
    .bind(route.tenant_id.to_string())
    .execute(&mut *tx)
    .await?;
    for table in tables.iter().filter(|t| is_safe_identifier(t)) {
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.\"{table}\" WHERE tenant_id = $1",
            placement::SHARED_SCHEMA
        )))
        .bind(route.tenant_id.as_uuid())
        .execute(&mut *tx)
        .await?;
        tracing::info!(tenant = %route.tenant_id, table, rows = deleted.rows_affected(), "tenant rows deleted");
    }
    tx.commit().await?;
    Ok(())
}

/// One tenant's outcome in [`migrate_tenants`].
#[derive(Debug)]
pub struct TenantMigration {
    pub tenant: String,
    pub placement: String,
    pub outcome: Result<Option<migrate::Report>, String>,
}

/// Brings every provisioned (active or suspended) schema and database tenant to the latest
/// tenant migration. A tenant that fails is reported and does not stop the others.
pub async fn migrate_tenants(
    control: &mut PgConnection,
    provisioner: &Provisioner,
    keys: Option<std::sync::Arc<crate::secrets::Keyring>>,
) -> Result<Vec<TenantMigration>, sqlx::Error> {
    let mut out = Vec::new();
    let credentials = placement::Credentials::TenantUrls(keys);
    for route in placement::load_all_routes(control, &credentials).await? {
        let route = match route {
            Ok(route) => route,
            Err(e) => {
                let tenant = match &e {
                    placement::RouteLoadError::Corrupt { tenant, .. }
                    | placement::RouteLoadError::Secret { tenant, .. } => tenant.to_string(),
                    placement::RouteLoadError::Database(_) => "?".to_owned(),
                };
                out.push(TenantMigration {
                    tenant,
                    placement: "?".to_owned(),
                    outcome: Err(e.to_string()),
                });
                continue;
            }
        };
        if !matches!(
            route.status,
            placement::Status::Active | placement::Status::Suspended
        ) {
            continue;
        }
        let outcome = provisioner.prepare(&route).await.map_err(|e| e.to_string());
        out.push(TenantMigration {
            tenant: route.tenant_id.to_string(),
            placement: route.placement.to_string(),
            outcome,
        });
    }
    Ok(out)
}
