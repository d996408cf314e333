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
    Migration {
        version: 6,
        name: "sealed_urls_and_service_logins",
        sql: include_str!("../../../migrations/control/0006_sealed_urls_and_service_logins.sql"),
    },
    Migration {
        version: 7,
        name: "tenant_moves",
        sql: include_str!("../../../migrations/control/0007_tenant_moves.sql"),
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
    Migration {
        version: 4,
        name: "query_reads",
        sql: include_str!("../../../migrations/tenant/0004_query_reads.sql"),
    },
    Migration {
        version: 5,
        name: "user_by_id",
        sql: include_str!("../../../migrations/tenant/0005_user_by_id.sql"),
    },
    Migration {
        version: 6,
        name: "create_user",
        sql: include_str!("../../../migrations/tenant/0006_create_user.sql"),
    },
    Migration {
        version: 7,
        name: "live_moves",
        sql: include_str!("../../../migrations/tenant/0007_live_moves.sql"),
    },
];

/// The user service's group role (the write side): tenant data and the control plane. Its
/// LOGIN member is [`Login::User`]. Like every group here it owns nothing and cannot
/// bypass row-level security.
pub const APP_ROLE: &str = "borough_app";
/// The query service's group: reads tenant data and the outbox, and tenants' routes
/// without their secrets.
pub const QUERY_ROLE: &str = "borough_query_app";
/// The config service's group: the `config` schema alone.
pub const CONFIG_ROLE: &str = "borough_config_app";

/// The groups, created by every migration run.
const GROUPS: [&str; 3] = [APP_ROLE, QUERY_ROLE, CONFIG_ROLE];

/// One database login per service, each a member of its group alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    User,
    Query,
    Config,
}

impl Login {
    pub const ALL: [Login; 3] = [Login::User, Login::Query, Login::Config];

    /// The LOGIN role's name.
    pub fn role(self) -> &'static str {
        match self {
            Login::User => "borough_user",
            Login::Query => "borough_query",
            Login::Config => "borough_config",
        }
    }

    /// Its group.
    pub fn group(self) -> &'static str {
        match self {
            Login::User => APP_ROLE,
            Login::Query => QUERY_ROLE,
            Login::Config => CONFIG_ROLE,
        }
    }

    /// The service (`user`, `query`, `config`).
    pub fn service(self) -> &'static str {
        match self {
            Login::User => "user",
            Login::Query => "query",
            Login::Config => "config",
        }
    }

    /// The setting its password comes from in `borough-user migrate`.
    pub fn password_variable(self) -> &'static borough_config_client::Var {
        match self {
            Login::User => &Self::USER_PASSWORD,
            Login::Query => &Self::QUERY_PASSWORD,
            Login::Config => &Self::CONFIG_PASSWORD,
        }
    }

    pub const USER_PASSWORD: borough_config_client::Var = borough_config_client::Var::new(
        "BOROUGH_USER_DB_PASSWORD",
        "",
        "borough-user migrate: creates or updates the user service's login (borough_user) \
         with this password",
    )
    .secret();
    pub const QUERY_PASSWORD: borough_config_client::Var = borough_config_client::Var::new(
        "BOROUGH_QUERY_DB_PASSWORD",
        "",
        "borough-user migrate: the query service's login (borough_query)",
    )
    .secret();
    pub const CONFIG_PASSWORD: borough_config_client::Var = borough_config_client::Var::new(
        "BOROUGH_CONFIG_DB_PASSWORD",
        "",
        "borough-user migrate: the config service's login (borough_config)",
    )
    .secret();
}

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
    ensure_groups(&mut tx).await?;
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
    // The tenant tables' schema is read by the query service too; the control schema's
    // grants to it are column by column, in the files.
    let readers = match scope {
        Scope::Tenant => format!("{APP_ROLE}, {QUERY_ROLE}"),
        Scope::Control => APP_ROLE.to_owned(),
    };
    // `schema` passed is_safe_identifier above.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         GRANT USAGE ON SCHEMA \"{schema}\" TO {readers};
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

/// Creates (or sets the password of) each given service's LOGIN role and makes it a
/// member of its group, and of nothing else Borough grants. Idempotent.
pub async fn ensure_logins(
    conn: &mut PgConnection,
    logins: &[(Login, &str)],
) -> Result<(), MigrateError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('borough-migrate'))")
        .execute(&mut *tx)
        .await?;
    ensure_groups(&mut tx).await?;
    for (login, password) in logins {
        let role = login.role();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut *tx)
                .await?;
        let verb = if exists { "ALTER" } else { "CREATE" };
        // A password cannot be a bound parameter: quoted as a literal (quotes doubled).
        let literal = password.replace('\'', "''");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "{verb} ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE \
             PASSWORD '{literal}'"
        )))
        .execute(&mut *tx)
        .await?;
        grant_group(&mut tx, role, login.group()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Makes the existing LOGIN role `login` a member of `group` (one of Borough's groups).
pub async fn grant_group(
    conn: &mut PgConnection,
    login: &str,
    group: &str,
) -> Result<(), MigrateError> {
    if !is_safe_identifier(login) || !GROUPS.contains(&group) {
        return Err(MigrateError::BadSchema(login.to_owned()));
    }
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_auth_members m
                          JOIN pg_roles g ON g.oid = m.roleid
                          JOIN pg_roles u ON u.oid = m.member
                         WHERE g.rolname = $1 AND u.rolname = $2)",
    )
    .bind(group)
    .bind(login)
    .fetch_one(&mut *conn)
    .await?;
    if !member {
        // Both names are checked above.
        sqlx::raw_sql(AssertSqlSafe(format!("GRANT {group} TO \"{login}\"")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn ensure_groups(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for group in GROUPS {
        // Roles are cluster-wide, while the advisory lock above is per database: migrators
        // of two databases on one server can race to create one. Under a savepoint, the
        // loser's unique violation leaves the surrounding transaction usable.
        let mut savepoint = conn.begin().await?;
        let created = sqlx::raw_sql(AssertSqlSafe(format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{group}') THEN
                 CREATE ROLE {group} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
               END IF;
             END $$"
        )))
        .execute(&mut *savepoint)
        .await;
        match created {
            Ok(_) => savepoint.commit().await?,
            Err(e)
                if crate::db::sqlstate(&e).as_deref()
                    == Some(crate::db::sqlstate::UNIQUE_VIOLATION) =>
            {
                savepoint.rollback().await?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
