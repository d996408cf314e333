//! `borough-dev run`: the whole stack on one machine, for `make run`.
//!
//! 0. A development PKI under `./.data/pki` (first run): a CA and a certificate for each
//!    service (its SPIFFE ID) and for PostgreSQL; every gRPC call is mutual TLS.
//! 1. A PostgreSQL cluster under `./.data/pg` (initialised on first run, as `postgres`
//!    when root), on 127.0.0.1:`BOROUGH_DEV_PG_PORT` (55432), TLS only; services verify it
//!    against the PKI's CA (`sslmode=verify-full`).
//! 2. The `borough` database, migrated; one login per service (`borough_user`,
//!    `borough_query`, `borough_config`), each with its own password and only its grants;
//!    tenants' database URLs sealed with the key in `./.data/secret-keys`.
//! 3. The user, query and gateway binaries (siblings of this one), with `BOROUGH_*`
//!    settings derived from the above unless already set in the environment.
//! 4. On first run a `demo` tenant and its API key (kept in `./.data/demo-api-key`).
//! 5. Copy-paste curl lines. Ctrl-C (or SIGTERM) stops the services, then PostgreSQL.
//!
//! Secrets it generates (admin token, database passwords, the sealing key, the CA's key)
//! live in `./.data`, mode 0600.

// A terminal tool: what it prints is for the person who ran it.
#![allow(clippy::print_stdout)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use borough_config_client::Var;
use borough_testkit::{Cluster, ensure_logins, pg};
use borough_tools::{DEV_DATA, DEV_PG_PORT, DEV_PORT_OFFSET};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

const DATABASE: &str = "borough";

struct Paths {
    data: PathBuf,
    bin: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    borough_telemetry::init_logging("dev");
    match std::env::args().nth(1).as_deref() {
        Some("run") => run().await,
        _ => bail!("usage: borough-dev run"),
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A tool variable, or its declared default.
fn var(var: &Var) -> String {
    env_or(var.name, var.default)
}

/// Reads a secret from `file`, or generates and stores one.
fn secret(file: &Path) -> Result<String> {
    if let Ok(existing) = std::fs::read_to_string(file)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().to_owned());
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let value = hex::encode(bytes);
    write_private(file, &value)?;
    Ok(value)
}

fn write_private(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, format!("{value}\n"))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let paths = Paths {
        data: PathBuf::from(var(&DEV_DATA)),
        bin: std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .to_owned(),
    };
    std::fs::create_dir_all(&paths.data)?;
    let data = paths.data.canonicalize()?;
    let pg_port: u16 = var(&DEV_PG_PORT)
        .parse()
        .with_context(|| format!("{} must be a port number", DEV_PG_PORT.name))?;

    // 0. The PKI (first run): a CA, each service's certificate, PostgreSQL's.
    let pki = data.join("pki");
    let trust_domain = env_or("BOROUGH_TRUST_DOMAIN", "borough.internal");
    borough_tls::generate::ensure(&pki, &trust_domain, &borough_tls::generate::SERVICES, &[])
        .context("creating the development PKI")?;
    let pki_dir = pki.display().to_string();

    // 1. PostgreSQL.
    let superuser_password = secret(&data.join("pg-superuser-password"))?;
    let passwords: Vec<(pg::Login, String)> = pg::Login::ALL
        .iter()
        .map(|login| {
            secret(&data.join(format!("pg-{}-password", login.service())))
                .map(|password| (*login, password))
        })
        .collect::<Result<_>>()?;
    // Tenants' database URLs are sealed with this key (`BOROUGH_SECRET_KEYS`).
    let secret_keys = match std::env::var("BOROUGH_SECRET_KEYS")
        .ok()
        .filter(|k| !k.is_empty())
    {
        Some(keys) => keys,
        None => {
            let file = data.join("secret-keys");
            match std::fs::read_to_string(&file) {
                Ok(keys) if !keys.trim().is_empty() => keys.trim().to_owned(),
                _ => {
                    let entry = borough_tenancy::secrets::Keyring::generate_entry("dev1")?;
                    write_private(&file, &entry)?;
                    entry
                }
            }
        }
    };
    let keyring = std::sync::Arc::new(borough_tenancy::secrets::Keyring::parse(&secret_keys)?);
    println!(
        "borough: starting PostgreSQL on 127.0.0.1:{pg_port} (data in {})",
        data.join("pg").display()
    );
    let mut cluster = Cluster::start_persistent(
        &data.join("pg"),
        pg_port,
        &superuser_password,
        &passwords,
        &borough_testkit::pg::ServerTls::in_pki(&pki),
    )?;

    // 2. Database, migrations, service role.
    let mut conn = PgConnection::connect(&cluster.superuser_url("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .execute(&mut conn)
            .await?;
    }
    ensure_logins(&mut conn, &cluster).await?;
    let mut conn = PgConnection::connect(&cluster.superuser_url(DATABASE)).await?;
    for report in borough_tenancy::migrate::run_all(&mut conn).await? {
        if !report.applied.is_empty() {
            println!(
                "borough: migrated {} to version {}",
                report.scope, report.latest
            );
        }
    }
    // The logins exist since the first run; their memberships are checked again.
    ensure_logins(&mut conn, &cluster).await?;
    let sealed = borough_tenancy::secrets::seal_stored(&mut conn, Some(&keyring), false).await?;
    if sealed.sealed > 0 {
        println!("borough: sealed {} tenant database URLs", sealed.sealed);
    }
    let provisioner_url = cluster.superuser_url(DATABASE);
    let provisioner = borough_tenancy::provision::Provisioner::new(Some(&provisioner_url))?;
    for tenant in
        borough_tenancy::provision::migrate_tenants(&mut conn, &provisioner, Some(keyring.clone()))
            .await?
    {
        match tenant.outcome {
            Ok(Some(report)) if !report.applied.is_empty() => println!(
                "borough: migrated {} tenant {} to version {}",
                tenant.placement, tenant.tenant, report.latest
            ),
            Err(reason) => eprintln!(
                "borough: tenant {} ({}) failed to migrate: {reason}",
                tenant.tenant, tenant.placement
            ),
            Ok(_) => {}
        }
    }
    drop(conn);

    // 3. Services.
    let admin_token = match std::env::var("BOROUGH_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(token) => token,
        None => secret(&data.join("admin-token"))?,
    };
    // One login per service, each with only what it needs.
    let database_url = |login| cluster.login_url(login, DATABASE);
    // BOROUGH_DEV_PORT_OFFSET moves every port (a second stack beside `make run`: the
    // fuzzing one).
    let offset: u16 = var(&DEV_PORT_OFFSET)
        .parse()
        .with_context(|| format!("{} must be a number", DEV_PORT_OFFSET.name))?;
    let addr = |port: u16| format!("127.0.0.1:{}", port + offset);
    let gateway_addr = env_or("BOROUGH_HTTP_ADDR", &addr(8080));
    let gateway_url = format!("http://{gateway_addr}");
    let (user_grpc, query_grpc, config_grpc) = (addr(50051), addr(50052), addr(50053));
    let admins = [addr(9460), addr(9461), addr(9462), addr(9463)];
    let mut children = Vec::new();
    let work = async {
        let config_url = format!("https://{config_grpc}");
        let config_url = config_url.as_str();
        let snapshot = |service: &str| {
            data.join(format!("config-{service}.json"))
                .display()
                .to_string()
        };
        // The config service may start last: the others start on their snapshot (or
        // defaults) and catch up when it answers.
        for (binary, service, grpc, admin) in [
            (
                "borough-user",
                "user",
                user_grpc.as_str(),
                admins[1].as_str(),
            ),
            (
                "borough-query",
                "query",
                query_grpc.as_str(),
                admins[2].as_str(),
            ),
            (
                "borough-config",
                "config",
                config_grpc.as_str(),
                admins[3].as_str(),
            ),
        ] {
            let snapshot = snapshot(service);
            let login = match service {
                "user" => pg::Login::User,
                "query" => pg::Login::Query,
                _ => pg::Login::Config,
            };
            let url = database_url(login);
            let mut env = vec![
                ("BOROUGH_GRPC_ADDR", grpc),
                ("BOROUGH_ADMIN_ADDR", admin),
                ("BOROUGH_DATABASE_URL", &url),
                ("BOROUGH_CONFIG_URL", config_url),
                ("BOROUGH_CONFIG_SNAPSHOT", &snapshot),
                ("BOROUGH_TLS_DIR", &pki_dir),
            ];
            if binary == "borough-user" {
                // It creates schema and database tenants, and seals URLs of the others.
                env.push(("BOROUGH_PROVISIONER_DATABASE_URL", &provisioner_url));
                env.push(("BOROUGH_SECRET_KEYS", &secret_keys));
            }
            children.push((binary, spawn(&paths.bin, binary, &env)?));
        }
        let gateway_snapshot = snapshot("gateway");
        children.push((
            "borough-gateway",
            spawn(
                &paths.bin,
                "borough-gateway",
                &[
                    ("BOROUGH_ADMIN_TOKEN", &admin_token),
                    ("BOROUGH_HTTP_ADDR", &gateway_addr),
                    ("BOROUGH_ADMIN_ADDR", &admins[0]),
                    ("BOROUGH_USER_URL", &format!("https://{user_grpc}")),
                    ("BOROUGH_QUERY_URL", &format!("https://{query_grpc}")),
                    ("BOROUGH_CONFIG_URL", config_url),
                    ("BOROUGH_CONFIG_SNAPSHOT", &gateway_snapshot),
                    ("BOROUGH_TLS_DIR", &pki_dir),
                ],
            )?,
        ));
        for admin in [&admins[3], &admins[1], &admins[2], &admins[0]] {
            wait_ready(&format!("http://{admin}/readyz"), &mut children).await?;
        }

        // 4. The demo tenant.
        let key_file = data.join("demo-api-key");
        let api_key = match std::fs::read_to_string(&key_file) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_owned(),
            _ => {
                let key = demo_key(&gateway_url, &admin_token).await?;
                write_private(&key_file, &key)?;
                key
            }
        };

        // 5. What to type.
        print_walkthrough(
            &gateway_url,
            &admins,
            &admin_token,
            &api_key,
            started.elapsed(),
        );
        supervise(&mut children).await
    };
    // Ctrl-C or SIGTERM at any point, start-up included, stops what was started.
    let result = tokio::select! {
        result = work => result,
        () = stop_requested() => Ok(()),
    };

    stop_all(&mut children).await;
    cluster.stop();
    println!("borough: stopped");
    result
}

fn spawn(bin: &Path, name: &str, defaults: &[(&str, &str)]) -> Result<Child> {
    let path = bin.join(name);
    let mut command = Command::new(&path);
    for (key, value) in defaults {
        if std::env::var_os(key).is_none() {
            command.env(key, value);
        }
    }
    if std::env::var_os("BOROUGH_SHUTDOWN_GRACE").is_none() {
        command.env("BOROUGH_SHUTDOWN_GRACE", "0s"); // Ctrl-C should be quick on a laptop.
    }
    command
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build it with `make run`)", path.display()))
}

async fn wait_ready(url: &str, children: &mut [(&str, Child)]) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during start-up ({status})");
            }
        }
        if Instant::now() > deadline {
            let body = match client.get(url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            bail!("{url} not ready after 60s: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the `demo` tenant (or, if it exists, a new key for it): its API key.
async fn demo_key(gateway: &str, admin_token: &str) -> Result<String> {
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{gateway}/admin/v1/tenants"))
        .bearer_auth(admin_token)
        .json(&json!({ "name": "demo" }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status == 201 {
        return body["api_key"]["key"]
            .as_str()
            .map(str::to_owned)
            .context("no key in reply");
    }
    if status != 409 {
        bail!("creating the demo tenant: {status} {body}");
    }
    let tenants: Value = client
        .get(format!("{gateway}/admin/v1/tenants?limit=100"))
        .bearer_auth(admin_token)
        .send()
        .await?
        .json()
        .await?;
    let id = tenants["items"]
        .as_array()
        .and_then(|items| items.iter().find(|t| t["name"] == "demo"))
        .and_then(|t| t["id"].as_str())
        .context("the demo tenant exists but is not listed")?;
    let issued: Value = client
        .post(format!("{gateway}/admin/v1/tenants/{id}/api-keys"))
        .bearer_auth(admin_token)
        .send()
        .await?
        .json()
        .await?;
    issued["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key in reply")
}

fn print_walkthrough(
    gateway: &str,
    admins: &[String; 4],
    admin_token: &str,
    api_key: &str,
    took: Duration,
) {
    let [gateway_admin, user_admin, query_admin, config_admin] = admins;
    println!(
        r#"
borough: ready in {took:.1?}. Gateway {gateway}; admin ports {gateway_admin} (gateway), {user_admin} (user), {query_admin} (query), {config_admin} (config).

  export BOROUGH_ADMIN_TOKEN={admin_token}
  export BOROUGH_API_KEY={api_key}

  curl -s {gateway}/hello
  curl -s -X POST {gateway}/api/v1/users -H "Authorization: Bearer $BOROUGH_API_KEY" \
       -H 'Content-Type: application/json' -d '{{"name":"Ada Lovelace","email":"ada@example.com"}}'
  curl -s "{gateway}/api/v1/users?limit=10" -H "Authorization: Bearer $BOROUGH_API_KEY"
  curl -s {gateway}/admin/v1/tenants -H "Authorization: Bearer $BOROUGH_ADMIN_TOKEN"

Press Ctrl-C to stop everything (PostgreSQL included). Data stays in .data/ for the next run.
"#
    );
}

/// Waits for Ctrl-C / SIGTERM, or for a service to exit on its own (an error).
/// Resolves on Ctrl-C or SIGTERM.
async fn stop_requested() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs until a service exits (an error: they are meant to run until stopped).
async fn supervise(children: &mut [(&str, Child)]) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited unexpectedly ({status})");
            }
        }
    }
}

/// SIGTERM every service (gateway first), then wait; SIGKILL what is left after 15s.
async fn stop_all(children: &mut [(&str, Child)]) {
    for (_, child) in children.iter_mut().rev() {
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    for (name, child) in children.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("borough: {name} did not stop in 15s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
