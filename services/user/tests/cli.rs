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
            ("control".to_owned(), 6),
            ("control".to_owned(), 7),
            ("tenant".to_owned(), 1),
            ("tenant".to_owned(), 2),
            ("tenant".to_owned(), 3),
            ("tenant".to_owned(), 4),
            ("tenant".to_owned(), 5),
            ("tenant".to_owned(), 6),
            ("tenant".to_owned(), 7),
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
    use borough_tenant::Placement;
    use sqlx::Connection;

    let db = TestDatabase::create().await?;
    let admin = db.admin_pool().await?;
    // First (ids are time-ordered, so migrated first): a tenant whose database is gone.
    let broken = uuid::Uuid::now_v7();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let keys = borough_tenancy::secrets::Keyring::parse(borough_testkit::SECRET_KEYS)?;
    let url = format!("postgres://nobody:secret@127.0.0.1:{closed}/gone");
    sqlx::query(
        "INSERT INTO control.tenants
             (id, name, placement, status, schema_name, database_url, database_location)
         VALUES ($1, 'broken', 'database', 'active', 'borough', $2, $3)",
    )
    .bind(broken)
    .bind(keys.seal(broken, "database_url", &url)?)
    .bind(borough_tenancy::secrets::location_of(&url))
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
        .env("BOROUGH_SECRET_KEYS", borough_testkit::SECRET_KEYS)
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

/// Runs `borough-user <command>` as the owner of `db` with `keys`: (success, its log).
fn run(command: &str, db: &TestDatabase, keys: Option<&str>) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new(BIN);
    cmd.arg(command)
        .env("BOROUGH_MIGRATION_DATABASE_URL", &db.admin_url)
        .env("BOROUGH_LOG_FORMAT", "json")
        .env_remove("BOROUGH_SECRET_KEYS");
    if let Some(keys) = keys {
        cmd.env("BOROUGH_SECRET_KEYS", keys);
    }
    let output = cmd.output()?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

#[tokio::test]
async fn migrate_seals_urls_stored_in_clear_and_rekey_moves_every_one_to_the_new_key()
-> anyhow::Result<()> {
    use borough_tenancy::secrets::Keyring;

    let db = TestDatabase::create().await?;
    let admin = db.admin_pool().await?;
    let tenant = uuid::Uuid::now_v7();
    let (url, read_url) = (
        "postgres://owner:hunter2@db.example:6432/tenant_db",
        "postgres://reader:swordfish@replica.example/tenant_db",
    );
    // A database as it was before sealing: URLs in clear, under the check the migration
    // added NOT VALID (it holds for new rows only, so the old row is put back under it).
    let check = "ALTER TABLE control.tenants ADD CONSTRAINT tenants_urls_sealed CHECK (
             (database_url IS NULL OR database_url LIKE 'enc:v1:%')
             AND (read_url IS NULL OR read_url LIKE 'enc:v1:%')) NOT VALID";
    sqlx::raw_sql("ALTER TABLE control.tenants DROP CONSTRAINT tenants_urls_sealed")
        .execute(&admin)
        .await?;
    sqlx::query(
        "INSERT INTO control.tenants (id, name, placement, status, schema_name, database_url, read_url)
         VALUES ($1, 'legacy', 'database', 'provisioning_failed', 'borough', $2, $3)",
    )
    .bind(tenant)
    .bind(url)
    .bind(read_url)
    .execute(&admin)
    .await?;
    sqlx::raw_sql(check).execute(&admin).await?;
    let stored = || async {
        sqlx::query_as::<_, (String, String, Option<String>, Option<String>, bool)>(
            "SELECT t.database_url, t.read_url, t.database_location, t.read_location, c.convalidated
               FROM control.tenants t, pg_constraint c
              WHERE t.id = $1 AND c.conname = 'tenants_urls_sealed'",
        )
        .bind(tenant)
        .fetch_one(&admin)
        .await
    };

    // Without keys: refused, nothing changed.
    let (ok, log) = run("migrate", &db, None)?;
    assert!(
        !ok,
        "migrate without keys sealed nothing yet succeeded: {log}"
    );
    assert!(log.contains("BOROUGH_SECRET_KEYS"), "{log}");
    assert_eq!(stored().await?.0, url);

    // With them: sealed, locations filled, the check validated, no secret in the log.
    let (ok, log) = run("migrate", &db, Some(borough_testkit::SECRET_KEYS))?;
    assert!(ok, "{log}");
    assert!(
        !log.contains("hunter2") && !log.contains("swordfish"),
        "{log}"
    );
    let (sealed, sealed_read, location, read_location, validated) = stored().await?;
    assert!(sealed.starts_with("enc:v1:test1:"), "{sealed}");
    assert!(!sealed.contains("hunter2") && !sealed_read.contains("swordfish"));
    assert_eq!(
        location.as_deref(),
        Some("postgres://db.example:6432/tenant_db")
    );
    assert_eq!(
        read_location.as_deref(),
        Some("postgres://replica.example:5432/tenant_db")
    );
    assert!(validated, "every row is sealed: the check is validated");
    let old = Keyring::parse(borough_testkit::SECRET_KEYS)?;
    assert_eq!(old.open(tenant, "database_url", &sealed)?, url);

    // Rekey: the new key first, the old one still listed to open.
    let new = Keyring::generate_entry("k2")?;
    let both = format!("{new},{}", borough_testkit::SECRET_KEYS);
    let (ok, log) = run("rekey", &db, Some(&both))?;
    assert!(ok, "{log}");
    let (resealed, resealed_read, ..) = stored().await?;
    assert!(resealed.starts_with("enc:v1:k2:") && resealed_read.starts_with("enc:v1:k2:"));
    // The old key can go: the new one alone opens everything.
    let only_new = Keyring::parse(&new)?;
    assert_eq!(only_new.open(tenant, "database_url", &resealed)?, url);
    assert_eq!(only_new.open(tenant, "read_url", &resealed_read)?, read_url);
    let (ok, log) = run("migrate", &db, Some(&new))?;
    assert!(ok, "{log}");
    Ok(())
}
