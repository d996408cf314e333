//! `borough-user`: serve (default), or `borough-user migrate` to bring the database to the
//! latest schema (as the owner role in `BOROUGH_MIGRATION_DATABASE_URL`, falling back to
//! `BOROUGH_DATABASE_URL`; with `BOROUGH_SERVICE_ROLE` set, that LOGIN role is granted the
//! service role), then every schema and database tenant, reporting each; it exits non-zero
//! when any tenant failed, after trying them all.

use anyhow::Context;
use borough_config_client::Env;
use borough_tenancy::provision::{Provisioner, migrate_tenants};
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_user::SERVICE);
    let env = Env::process();
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve(&env).await,
        Some("migrate") => migrate(&env).await,
        Some(other) => anyhow::bail!("unknown command {other:?}; expected `serve` or `migrate`"),
    };
    // Spans still buffered are sent before the process ends.
    borough_telemetry::otel::flush().await;
    result
}

async fn serve(env: &Env) -> anyhow::Result<()> {
    let settings = borough_user::Settings::from_env(env)?;
    let listeners = borough_user::Listeners::bind(&settings.server).await?;
    borough_user::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn migrate(env: &Env) -> anyhow::Result<()> {
    let url = match env.optional("BOROUGH_MIGRATION_DATABASE_URL") {
        Some(_) => env.url(
            "BOROUGH_MIGRATION_DATABASE_URL",
            "",
            &["postgres", "postgresql"],
        )?,
        None => env.url(
            "BOROUGH_DATABASE_URL",
            borough_tenancy::db::DEFAULT_DATABASE_URL,
            &["postgres", "postgresql"],
        )?,
    };
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .context("connecting to the database to migrate")?;
    for report in borough_tenancy::migrate::run_all(&mut conn).await? {
        tracing::info!(
            scope = report.scope,
            target = %report.target,
            applied = ?report.applied,
            latest = report.latest,
            "migrated"
        );
    }
    if let Some(role) = env.optional("BOROUGH_SERVICE_ROLE") {
        borough_tenancy::migrate::grant_app_role(&mut conn, &role).await?;
        tracing::info!(role = %role, "service role granted");
    }
    // Then every schema and database tenant; one failing does not stop the others.
    let provisioner = Provisioner::new(Some(&url))?;
    let results = migrate_tenants(&mut conn, &provisioner).await?;
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    for result in &results {
        match &result.outcome {
            Ok(report) => tracing::info!(
                tenant = %result.tenant,
                placement = %result.placement,
                applied = ?report.as_ref().map(|r| r.applied.clone()).unwrap_or_default(),
                latest = report.as_ref().map(|r| r.latest),
                "tenant migrated"
            ),
            Err(reason) => tracing::error!(
                tenant = %result.tenant,
                placement = %result.placement,
                reason = %reason,
                "tenant migration failed"
            ),
        }
    }
    tracing::info!(tenants = results.len(), failed, "tenant migrations done");
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} tenants failed to migrate",
        results.len()
    );
    Ok(())
}
