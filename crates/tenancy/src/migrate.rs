//! Borough's migrations, embedded in every binary that applies them.
//!
//! Two scopes: `control` (the control-plane database) and `tenant` (tenant data: the shared
//! tables, each tenant schema, each tenant database; see [`crate::provision`]).
//! Files are forward-only; each run applies what is missing in one transaction under an
//! advisory lock, so concurrent starters do not race, and refuses to run when an applied
//! file has changed since (its checksum no longer matches).

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Which set of migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Control,
    Tenant,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Control => "control",
            Scope::Tenant => "tenant",
        }
    }

    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Scope::Control => CONTROL,
            Scope::Tenant => TENANT,
        }
    }
}

const CONTROL: &[Migration] = &[
    Migration {
        version: 1,
        name: "tenants",
        sql: include_str!("../../../migrations/control/0001_tenants.sql"),
    },
    Migration {
        version: 2,
        name: "placement",
        sql: include_str!("../../../migrations/control/0002_placement.sql"),
    },
    Migration {
        version: 3,
        name: "config",
        sql: include_str!("../../../migrations/control/0003_config.sql"),
    },
    Migration {
        version: 4,
        name: "config_instances_per_service",
        sql: include_str!("../../../migrations/control/0004_config_instances_per_service.sql"),
    },
    Migration {
        version: 5,
        name: "config_bounds",
        sql: include_str!("../../../migrations/control/0005_config_bounds.sql"),
    },
];

const TENANT: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        sql: include_str!("../../../migrations/tenant/0001_users.sql"),
    },
    Migration {
        version: 2,
        name: "search_and_changes",
        sql: include_str!("../../../migrations/tenant/0002_search_and_changes.sql"),
    },
    Migration {
        version: 3,
        name: "idempotency_keys",
        sql: include_str!("../../../migrations/tenant/0003_idempotency_keys.sql"),
    },
];

/// The role services connect as (through a LOGIN member of it). It owns nothing and
/// cannot bypass row-level security.
pub const APP_ROLE: &str = "borough_app";

pub use crate::placement::SHARED_SCHEMA;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {scope}/{version:04} ({name}) was changed after it was applied")]
    Modified {
        scope: &'static str,
        version: i32,
        name: &'static str,
    },
    #[error("migration {scope}/{version:04} ({name}) failed: {source}")]
    Failed {
        scope: &'static str,
        version: i32,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("schema name {0:?} is not a valid Borough schema name")]
    BadSchema(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub scope: &'static str,
    pub target: String,
    pub applied: Vec<i32>,
    pub latest: i32,
}

/// Applies the missing migrations of `scope` to `schema` (the `search_path` during the
/// run). Connect as the tables' owner, not as the service role.
pub async fn run(
    conn: &mut PgConnection,
    scope: Scope,
    schema: &str,
) -> Result<Report, MigrateError> {
    if !is_safe_identifier(schema) {
        return Err(MigrateError::BadSchema(schema.to_owned()));
    }
    let mut tx = conn.begin().await?;
    // One migrator at a time per database, whatever the scope.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('borough-migrate'))")
        .execute(&mut *tx)
        .await?;
    ensure_app_role(&mut tx).await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS borough_meta;
         CREATE TABLE IF NOT EXISTS borough_meta.migrations (
             scope      text NOT NULL,
             target     text NOT NULL,
             version    integer NOT NULL,
             name       text NOT NULL,
             checksum   bytea NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (scope, target, version)
         )",
    )
    .execute(&mut *tx)
    .await?;
    // `schema` passed is_safe_identifier above.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         GRANT USAGE ON SCHEMA \"{schema}\" TO {APP_ROLE};
         SET LOCAL search_path TO \"{schema}\""
    )))
    .execute(&mut *tx)
    .await?;

    let applied: Vec<(i32, Vec<u8>)> = sqlx::query_as(
        "SELECT version, checksum FROM borough_meta.migrations WHERE scope = $1 AND target = $2",
    )
    .bind(scope.name())
    .bind(schema)
    .fetch_all(&mut *tx)
    .await?;

    let mut report = Report {
        scope: scope.name(),
        target: schema.to_owned(),
        applied: Vec::new(),
        latest: 0,
    };
    for migration in scope.migrations() {
        let checksum = Sha256::digest(migration.sql.as_bytes()).to_vec();
        report.latest = migration.version;
        match applied.iter().find(|(v, _)| *v == migration.version) {
            Some((_, stored)) if *stored == checksum => continue,
            Some(_) => {
                return Err(MigrateError::Modified {
                    scope: scope.name(),
                    version: migration.version,
                    name: migration.name,
                });
            }
            None => {}
        }
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| MigrateError::Failed {
                scope: scope.name(),
                version: migration.version,
                name: migration.name,
                source,
            })?;
        sqlx::query(
            "INSERT INTO borough_meta.migrations (scope, target, version, name, checksum)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(scope.name())
        .bind(schema)
        .bind(migration.version)
        .bind(migration.name)
        .bind(checksum)
        .execute(&mut *tx)
        .await?;
        report.applied.push(migration.version);
    }
    tx.commit().await?;
    if !report.applied.is_empty() {
        tracing::info!(scope = scope.name(), target = schema, applied = ?report.applied, "migrations applied");
    }
    Ok(report)
}

/// Applies both scopes to one database: the control plane and the shared tenant tables.
pub async fn run_all(conn: &mut PgConnection) -> Result<Vec<Report>, MigrateError> {
    Ok(vec![
        run(conn, Scope::Control, "control").await?,
        run(conn, Scope::Tenant, SHARED_SCHEMA).await?,
    ])
}

/// Lets a LOGIN role act as the service role (used by `make run` and the test kit).
pub async fn grant_app_role(conn: &mut PgConnection, login_role: &str) -> Result<(), MigrateError> {
    if !is_safe_identifier(login_role) {
        return Err(MigrateError::BadSchema(login_role.to_owned()));
    }
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('borough-migrate'))")
        .execute(&mut *tx)
        .await?;
    ensure_app_role(&mut tx).await?;
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_auth_members m
                          JOIN pg_roles g ON g.oid = m.roleid
                          JOIN pg_roles u ON u.oid = m.member
                         WHERE g.rolname = $1 AND u.rolname = $2)",
    )
    .bind(APP_ROLE)
    .bind(login_role)
    .fetch_one(&mut *tx)
    .await?;
    if member {
        return Ok(());
    }
    // `login_role` passed is_safe_identifier above.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "GRANT {APP_ROLE} TO \"{login_role}\""
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn ensure_app_role(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // Roles are cluster-wide, while the advisory lock above is per database: migrators of
    // two databases on one server can race to create it. Under a savepoint, the loser's
    // unique violation leaves the surrounding transaction usable.
    let mut savepoint = conn.begin().await?;
    let created = sqlx::raw_sql(AssertSqlSafe(format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
             CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
           END IF;
         END $$"
    )))
    .execute(&mut *savepoint)
    .await;
    match created {
        Ok(_) => savepoint.commit().await,
        Err(e)
            if crate::db::sqlstate(&e).as_deref()
                == Some(crate::db::sqlstate::UNIQUE_VIOLATION) =>
        {
            savepoint.rollback().await
        }
        Err(e) => Err(e),
    }
}

/// Lowercase letters, digits and `_`, starting with a letter; at most 63 bytes.
pub fn is_safe_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_unique_and_increasing() {
        for scope in [Scope::Control, Scope::Tenant] {
            let versions: Vec<i32> = scope.migrations().iter().map(|m| m.version).collect();
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{scope:?}: {versions:?}"
            );
            assert_eq!(versions.first(), Some(&1));
        }
    }

    #[test]
    fn only_plain_identifiers_are_accepted_as_schema_names() {
        assert!(is_safe_identifier("public"));
        assert!(is_safe_identifier("t_0192ab"));
        for bad in [
            "",
            "Public",
            "1abc",
            "a-b",
            "a\"; DROP TABLE users; --",
            &"a".repeat(64),
        ] {
            assert!(!is_safe_identifier(bad), "{bad:?}");
        }
    }
}
