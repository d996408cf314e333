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
            ("tenant".to_owned(), 1)
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
