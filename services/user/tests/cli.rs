//! The `borough-user` binary as an operator runs it.

use std::process::Command;

use borough_testkit::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_borough-user");

#[tokio::test]
async fn migrate_brings_an_empty_database_to_the_latest_schema_and_is_idempotent()
-> anyhow::Result<()> {
    let db = TestDatabase::create_empty().await?;
    for _ in 0..2 {
        let output = Command::new(BIN)
            .arg("migrate")
            .env("BOROUGH_MIGRATION_DATABASE_URL", &db.admin_url)
            .env("BOROUGH_SERVICE_ROLE", borough_testkit::pg::SERVICE_ROLE)
            .env("BOROUGH_LOG_FORMAT", "json")
            .output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pool = db.admin_pool().await?;
    let applied: Vec<(String, i32)> = sqlx::query_as(
        "SELECT scope, version FROM borough_meta.migrations ORDER BY scope, version",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        applied,
        vec![
            ("control".to_owned(), 1),
            ("control".to_owned(), 2),
            ("control".to_owned(), 3),
            ("control".to_owned(), 4),
            ("control".to_owned(), 5),
            ("tenant".to_owned(), 1),
            ("tenant".to_owned(), 2),
            ("tenant".to_owned(), 3)
        ]
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(users, 0);
    Ok(())
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_the_variable() -> anyhow::Result<()> {
    for (name, value) in [
        ("BOROUGH_GRPC_ADDR", "localhost"),
        ("BOROUGH_DATABASE_URL", "mysql://x"),
        ("BOROUGH_SHUTDOWN_GRACE", "soon"),
    ] {
        let output = Command::new(BIN).env(name, value).output()?;
        assert!(!output.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    Ok(())
}

#[test]
fn an_unknown_command_is_refused() -> anyhow::Result<()> {
    let output = Command::new(BIN).arg("frobnicate").output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("frobnicate"));
    Ok(())
}

#[tokio::test]
async fn migrate_brings_every_tenant_up_to_date_and_a_failing_tenant_does_not_stop_the_others()
-> anyhow::Result<()> {
    use borough_tenancy::Placement;
    use sqlx::Connection;

    let db = TestDatabase::create().await?;
    let admin = db.admin_pool().await?;
    // First (ids are time-ordered, so migrated first): a tenant whose database is gone.
    let broken = uuid::Uuid::now_v7();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    sqlx::query(
        "INSERT INTO control.tenants (id, name, placement, status, schema_name, database_url)
         VALUES ($1, 'broken', 'database', 'active', 'borough', $2)",
    )
    .bind(broken)
    .bind(format!("postgres://nobody:secret@127.0.0.1:{closed}/gone"))
    .execute(&admin)
    .await?;
    let schema_tenant = db.provision_tenant(Placement::Schema).await?;
    let database_tenant = db.provision_tenant(Placement::Database).await?;

    // Put both behind: their tenant migrations undone.
    let schema = format!("t_{}", schema_tenant.as_uuid().simple());
    let database = format!("t_{}", database_tenant.as_uuid().simple());
    let cluster = borough_testkit::cluster()?;
    let mut own = sqlx::PgConnection::connect(&cluster.superuser_url(&database)).await?;
    for (conn, target) in [
        (&mut *admin.acquire().await?, schema.as_str()),
        (&mut own, "borough"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{target}\" CASCADE;
             DELETE FROM borough_meta.migrations WHERE scope = 'tenant' AND target = '{target}'"
        )))
        .execute(&mut *conn)
        .await?;
    }

    let output = Command::new(BIN)
        .arg("migrate")
        .env("BOROUGH_MIGRATION_DATABASE_URL", &db.admin_url)
        .env("BOROUGH_LOG_FORMAT", "json")
        .output()?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "a failed tenant must fail the run: {log}"
    );
    assert!(
        log.contains("tenant migration failed") && log.contains(&broken.to_string()),
        "{log}"
    );
    assert!(log.contains("1 of 3 tenants failed"), "{log}");
    assert!(
        !log.contains("secret"),
        "the tenant's URL leaked into the log: {log}"
    );

    // The tenants after the broken one were migrated all the same.
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'users'",
    )
    .bind(&schema)
    .fetch_one(&admin)
    .await?;
    assert_eq!(tables, 1, "the schema tenant was not migrated");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'borough' AND tablename = 'users'",
    )
    .fetch_one(&mut own)
    .await?;
    assert_eq!(tables, 1, "the database tenant was not migrated");
    Ok(())
}
