//! `borough-user`: serve (default), or
//!
//! - `borough-user migrate`: brings the database to the latest schema (as the owner role in
//!   `BOROUGH_MIGRATION_DATABASE_URL`, falling back to `BOROUGH_DATABASE_URL`); creates the
//!   login of each service whose password is given (`BOROUGH_USER_DB_PASSWORD`,
//!   `BOROUGH_QUERY_DB_PASSWORD`, `BOROUGH_CONFIG_DB_PASSWORD`: roles `borough_user`,
//!   `borough_query`, `borough_config`, each in its group alone); seals tenants' database
//!   URLs stored in clear (`BOROUGH_SECRET_KEYS`); then migrates every schema and database
//!   tenant, reporting each. It exits non-zero when any tenant failed, after trying them all.
//! - `borough-user rekey`: re-seals every tenant URL under the first key of
//!   `BOROUGH_SECRET_KEYS` (the others still open the old ones); afterwards the old keys
//!   can be dropped from the list.

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
        Some("rekey") => rekey(&env).await,
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; expected `serve`, `migrate` or `rekey`")
        }
    };
    // Spans and log lines still buffered are sent before the process ends.
    borough_telemetry::otel::flush().await;
    borough_telemetry::logging::flush_logs();
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

/// The owner's connection for `migrate` and `rekey`.
async fn owner_connection(env: &Env) -> anyhow::Result<(String, sqlx::PgConnection)> {
    let schemes = &["postgres", "postgresql"];
    let migration = &borough_user::Settings::MIGRATION_DATABASE_URL;
    let url = match env.secret(migration)? {
        Some(_) => env.url(migration, schemes)?,
        None => env.url(&borough_tenancy::settings::DatabaseSettings::URL, schemes)?,
    };
    let conn = sqlx::PgConnection::connect(&url)
        .await
        .context("connecting to the database as its owner")?;
    Ok((url, conn))
}

async fn rekey(env: &Env) -> anyhow::Result<()> {
    let keys = borough_user::secret_keys(env)?.with_context(|| {
        format!(
            "{} must be set (the new key first)",
            borough_user::Settings::SECRET_KEYS.name
        )
    })?;
    let (_, mut conn) = owner_connection(env).await?;
    let report = borough_tenancy::secrets::seal_stored(&mut conn, Some(&keys), true).await?;
    tracing::info!(
        key = keys.current(),
        resealed = report.resealed,
        sealed = report.sealed,
        unchanged = report.unchanged,
        "tenant URLs now sealed under the current key"
    );
    Ok(())
}

async fn migrate(env: &Env) -> anyhow::Result<()> {
    let keys = borough_user::secret_keys(env)?;
    let (url, mut conn) = owner_connection(env).await?;
    for report in borough_tenancy::migrate::run_all(&mut conn).await? {
        tracing::info!(
            scope = report.scope,
            target = %report.target,
            applied = ?report.applied,
            latest = report.latest,
            "migrated"
        );
    }
    let passwords: Vec<(borough_tenancy::migrate::Login, String)> =
        borough_tenancy::migrate::Login::ALL
            .iter()
            .map(|login| {
                env.secret(login.password_variable())
                    .map(|password| password.map(|password| (*login, password)))
            })
            .filter_map(Result::transpose)
            .collect::<Result<_, _>>()?;
    if !passwords.is_empty() {
        let logins: Vec<_> = passwords.iter().map(|(l, p)| (*l, p.as_str())).collect();
        borough_tenancy::migrate::ensure_logins(&mut conn, &logins).await?;
        for (login, _) in &passwords {
            tracing::info!(
                role = login.role(),
                group = login.group(),
                "service login ready"
            );
        }
    }
    let sealed = borough_tenancy::secrets::seal_stored(&mut conn, keys.as_deref(), false).await?;
    if sealed.sealed > 0 {
        tracing::info!(sealed = sealed.sealed, "tenant database URLs sealed");
    }
    // Then every schema and database tenant; one failing does not stop the others.
    let provisioner = Provisioner::new(Some(&url))?;
    let results = migrate_tenants(&mut conn, &provisioner, keys).await?;
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
