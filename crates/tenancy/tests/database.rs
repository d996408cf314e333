//! The tenancy guarantees that hold in PostgreSQL itself, checked against a real server.

use borough_tenancy::{PoolRouter, migrate};
use borough_tenant::{Placement, TenantContext, TenantId};
use borough_testkit::TestDatabase;
use sqlx::Connection;
use uuid::Uuid;

type TestResult = anyhow::Result<()>;

#[tokio::test]
async fn every_table_in_the_tenant_schema_has_rls_enabled_and_forced() -> TestResult {
    let db = TestDatabase::create().await?;
    let pool = db.admin_pool().await?;
    let tables: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
    )
    .bind(migrate::SHARED_SCHEMA)
    .fetch_all(&pool)
    .await?;
    assert!(!tables.is_empty(), "the tenant schema has no tables");
    let unprotected: Vec<_> = tables
        .iter()
        .filter(|(_, enabled, forced)| !(*enabled && *forced))
        .map(|(name, ..)| name)
        .collect();
    assert!(
        unprotected.is_empty(),
        "tables without RLS ENABLE + FORCE: {unprotected:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_service_role_owns_nothing_and_cannot_bypass_rls() -> TestResult {
    let db = TestDatabase::create().await?;
    let pool = db.login_pool(borough_testkit::pg::Login::User).await?;
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&pool)
            .await?;
    assert!(!superuser && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('public', 'control')
            AND pg_has_role(current_user, c.relowner, 'MEMBER')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        owned, 0,
        "the service role owns (or is a member of the owner of) tables"
    );
    Ok(())
}

async fn shared_tenant(db: &TestDatabase) -> anyhow::Result<TenantId> {
    db.provision_tenant(Placement::Shared).await
}

async fn insert_user(router: &PoolRouter, tenant: TenantId, email: &str) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let mut tx = router.begin(&TenantContext::new(tenant)).await?;
    sqlx::query("INSERT INTO users (tenant_id, id, name, email) VALUES ($1, $2, 'A', $3)")
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(email)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

#[tokio::test]
async fn a_session_scoped_to_tenant_b_sees_none_of_tenant_a_rows() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = PoolRouter::connect_lazy(&db.user_url)?;
    let (a, b) = (shared_tenant(&db).await?, shared_tenant(&db).await?);
    let id = insert_user(&router, a, "a@example.com").await?;

    // No tenant filter in the SQL: the database alone must refuse A's rows to B.
    let mut tx = router.begin(&TenantContext::new(b)).await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(seen, 0);
    let updated = sqlx::query("UPDATE users SET name = 'pwned' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    assert_eq!(deleted.rows_affected(), 0);
    tx.commit().await?;

    let mut tx = router.begin(&TenantContext::new(a)).await?;
    let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(name, "A", "A's row changed");
    Ok(())
}

#[tokio::test]
async fn a_session_without_a_tenant_sees_no_rows() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = PoolRouter::connect_lazy(&db.user_url)?;
    insert_user(&router, shared_tenant(&db).await?, "x@example.com").await?;
    let pool = db.login_pool(borough_testkit::pg::Login::User).await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(seen, 0);
    Ok(())
}

#[tokio::test]
async fn a_tenant_cannot_write_a_row_for_another_tenant() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = PoolRouter::connect_lazy(&db.user_url)?;
    let (a, b) = (shared_tenant(&db).await?, shared_tenant(&db).await?);
    let mut tx = router.begin(&TenantContext::new(b)).await?;
    let err = sqlx::query(
        "INSERT INTO users (tenant_id, id, name, email) VALUES ($1, $2, 'A', 'a@x.io')",
    )
    .bind(a.as_uuid())
    .bind(Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .expect_err("RLS WITH CHECK must refuse");
    // 42501: new row violates row-level security policy.
    assert_eq!(
        borough_tenancy::db::sqlstate(&err).as_deref(),
        Some("42501")
    );
    Ok(())
}

#[tokio::test]
async fn migrations_run_twice_apply_nothing_the_second_time() -> TestResult {
    let db = TestDatabase::create().await?;
    let mut conn = sqlx::PgConnection::connect(&db.admin_url).await?;
    let reports = migrate::run_all(&mut conn).await?;
    assert!(reports.iter().all(|r| r.applied.is_empty()), "{reports:?}");
    Ok(())
}

#[tokio::test]
async fn a_migration_changed_after_it_was_applied_is_refused() -> TestResult {
    let db = TestDatabase::create().await?;
    let mut conn = sqlx::PgConnection::connect(&db.admin_url).await?;
    sqlx::query("UPDATE borough_meta.migrations SET checksum = '\\x00' WHERE scope = 'tenant'")
        .execute(&mut conn)
        .await?;
    let err = migrate::run(&mut conn, migrate::Scope::Tenant, migrate::SHARED_SCHEMA)
        .await
        .expect_err("checksum mismatch");
    assert!(
        matches!(err, migrate::MigrateError::Modified { .. }),
        "{err}"
    );
    Ok(())
}

/// Whether `sql` runs as the pool's login: `Ok(false)` when PostgreSQL refuses it for
/// want of a privilege (42501), anything else an error of the test.
async fn allowed(pool: &sqlx::PgPool, tenant: Uuid, sql: &str) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('borough.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if borough_tenancy::db::sqlstate(&e).as_deref() == Some("42501") => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{sql}: {e}")),
    }
}

#[tokio::test]
async fn each_service_login_holds_only_what_its_service_needs() -> TestResult {
    use borough_testkit::pg::Login;

    let db = TestDatabase::create().await?;
    let tenant = db.provision_tenant(Placement::Shared).await?;
    let tenant = *tenant.as_uuid();
    let insert_user = format!(
        "INSERT INTO users (tenant_id, id, name, email) VALUES ('{tenant}', gen_random_uuid(), 'A', 'a@example.com')"
    );
    // (statement, user, query, config)
    let table: Vec<(&str, bool, bool, bool)> = vec![
        (insert_user.as_str(), true, false, false),
        ("UPDATE users SET name = 'B'", true, false, false),
        ("DELETE FROM users", true, false, false),
        ("SELECT count(*) FROM users", true, true, false),
        ("SELECT count(*) FROM user_changes", true, true, false),
        (
            "SELECT id, placement, status, schema_name, database_name, database_location, read_location FROM control.tenants",
            true,
            true,
            false,
        ),
        (
            "SELECT database_url FROM control.tenants",
            true,
            false,
            false,
        ),
        ("SELECT read_url FROM control.tenants", true, false, false),
        ("SELECT * FROM control.tenants", true, false, false),
        ("SELECT count(*) FROM control.api_keys", true, false, false),
        ("UPDATE control.tenants SET name = name", true, false, false),
        ("SELECT count(*) FROM config.entries", false, false, true),
        ("SELECT count(*) FROM config.history", false, false, true),
        (
            "INSERT INTO config.namespaces (namespace) VALUES ('platform/x') ON CONFLICT DO NOTHING",
            false,
            false,
            true,
        ),
        (
            "SELECT count(*) FROM borough_meta.migrations",
            false,
            false,
            false,
        ),
    ];
    let pools = [
        db.login_pool(Login::User).await?,
        db.login_pool(Login::Query).await?,
        db.login_pool(Login::Config).await?,
    ];
    let mut wrong = Vec::new();
    for (sql, user, query, config) in &table {
        for (pool, login, expected) in [
            (&pools[0], "user", *user),
            (&pools[1], "query", *query),
            (&pools[2], "config", *config),
        ] {
            // Each statement in a transaction of its own, rolled back: nothing changes.
            if allowed(pool, tenant, sql).await? != expected {
                wrong.push(format!(
                    "{login} {} {sql}",
                    if expected {
                        "was refused"
                    } else {
                        "was allowed"
                    }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}
