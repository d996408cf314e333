//! Borough's test kit: real PostgreSQL, real sockets.
//!
//! - [`pg::Cluster`]: a throwaway PostgreSQL server (one per test process, started on first
//!   use and gone when the process ends) or the persistent one of `make run`.
//! - [`TestDatabase`]: a fresh, migrated database per test, with the superuser's URL (for
//!   set-up and inspection) and the service role's (what services use).
//! - [`spawn`]: runs a service's `serve` in-process on 127.0.0.1 port 0 and hands back its
//!   addresses and a shutdown trigger.

pub mod cpu;
pub mod grpc;
pub mod load;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use pg::Cluster;

static CLUSTER: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();

/// This process's throwaway cluster, started on first use.
pub fn cluster() -> Result<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            let cluster = Cluster::start_temporary(&server_tls().map_err(|e| format!("{e:#}"))?)
                .map_err(|e| format!("{e:#}"))?;
            prepare_cluster(&cluster).map_err(|e| format!("{e:#}"))?;
            Ok(cluster)
        })
        .as_ref()
        .map_err(|e| anyhow!("the test PostgreSQL cluster failed to start: {e}"))
}

/// The test clusters' TLS: PostgreSQL's certificate from this process's test PKI.
fn server_tls() -> Result<pg::ServerTls> {
    Ok(pg::ServerTls::in_pki(&tls::pki()?.dir))
}

/// A cluster of the caller's own (not shared with the process's other tests), ready for
/// [`TestDatabase::create_on`]: for tests that stop and start the server.
pub fn own_cluster() -> Result<Cluster> {
    let cluster = Cluster::start_temporary(&server_tls()?)?;
    prepare_cluster(&cluster)?;
    Ok(cluster)
}

/// Creates each service's login (and the groups) once per cluster: roles are
/// cluster-wide.
fn prepare_cluster(cluster: &Cluster) -> Result<()> {
    // Called from inside test runtimes, which cannot block: use a runtime of its own on
    // a thread of its own.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut conn =
                        PgConnection::connect(&cluster.superuser_url("postgres")).await?;
                    ensure_logins(&mut conn, cluster).await
                })
            })
            .join()
            .map_err(|_| anyhow!("preparing the cluster panicked"))?
    })
}

/// Creates (or resets the passwords of) the cluster's service logins.
pub async fn ensure_logins(conn: &mut PgConnection, cluster: &Cluster) -> Result<()> {
    let logins: Vec<(pg::Login, &str)> = cluster
        .passwords()
        .iter()
        .map(|(login, password)| (*login, password.as_str()))
        .collect();
    borough_tenancy::migrate::ensure_logins(conn, &logins).await?;
    Ok(())
}

/// The `BOROUGH_SECRET_KEYS` of tests and benchmarks (a fixed key: their tenants' URLs
/// point at throwaway clusters).
pub const SECRET_KEYS: &str = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A fresh database with every migration applied.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    /// Superuser: set-up and inspection only.
    pub admin_url: String,
    /// The user service's login (`borough_user`).
    pub user_url: String,
    /// The query service's login (`borough_query`).
    pub query_url: String,
    /// The config service's login (`borough_config`).
    pub config_url: String,
}

impl TestDatabase {
    /// Creates and migrates a new database on this process's cluster.
    pub async fn create() -> Result<TestDatabase> {
        Self::create_on(cluster()?).await
    }

    /// Creates and migrates a new database on `cluster`.
    pub async fn create_on(cluster: &Cluster) -> Result<TestDatabase> {
        let db = Self::create_empty_on(cluster).await?;
        let mut conn = PgConnection::connect(&db.admin_url).await?;
        borough_tenancy::migrate::run_all(&mut conn).await?;
        Ok(db)
    }

    /// Creates a new database with no migrations applied.
    pub async fn create_empty() -> Result<TestDatabase> {
        Self::create_empty_on(cluster()?).await
    }

    async fn create_empty_on(cluster: &Cluster) -> Result<TestDatabase> {
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&cluster.superuser_url("postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .context("creating the test database")?;
        Ok(TestDatabase {
            admin_url: cluster.superuser_url(&name),
            user_url: cluster.login_url(pg::Login::User, &name),
            query_url: cluster.login_url(pg::Login::Query, &name),
            config_url: cluster.login_url(pg::Login::Config, &name),
            name,
        })
    }

    /// An active tenant placed as asked, written straight into the control tables and
    /// provisioned (schema or database created and migrated): for tests below the API.
    pub async fn provision_tenant(
        &self,
        placement: borough_tenant::Placement,
    ) -> Result<borough_tenant::TenantId> {
        use borough_tenancy::placement::{Storage, new_route};
        let tenant = borough_tenant::TenantId::new_v7();
        let route = new_route(tenant, placement, None, None);
        borough_tenancy::provision::Provisioner::new(Some(&self.admin_url))?
            .prepare(&route)
            .await?;
        let database = match &route.storage {
            Storage::OwnDatabase { name } => Some(name.clone()),
            _ => None,
        };
        let pool = self.admin_pool().await?;
        sqlx::query(
            "INSERT INTO control.tenants (id, name, placement, status, schema_name, database_name)
             VALUES ($1, $2, $3, 'active', $4, $5)",
        )
        .bind(tenant.as_uuid())
        .bind(format!("t-{}", tenant.as_uuid().simple()))
        .bind(placement.as_str())
        .bind(&route.schema)
        .bind(database)
        .execute(&pool)
        .await?;
        pool.close().await;
        Ok(tenant)
    }

    /// A superuser pool on this database.
    pub async fn admin_pool(&self) -> Result<PgPool> {
        Ok(PgPool::connect(&self.admin_url).await?)
    }

    /// A pool as `login`.
    pub async fn login_pool(&self, login: pg::Login) -> Result<PgPool> {
        Ok(PgPool::connect(self.url_of(login)).await?)
    }

    /// What a service whose login is `login` needs to run on this database:
    /// `BOROUGH_DATABASE_URL`, and for the user service its provisioner's URL and the
    /// keys it seals tenants' URLs with.
    pub fn env_for(&self, login: pg::Login) -> Vec<(String, String)> {
        let mut env = vec![(
            "BOROUGH_DATABASE_URL".to_owned(),
            self.url_of(login).to_owned(),
        )];
        if login == pg::Login::User {
            env.push((
                "BOROUGH_PROVISIONER_DATABASE_URL".to_owned(),
                self.admin_url.clone(),
            ));
            env.push(("BOROUGH_SECRET_KEYS".to_owned(), SECRET_KEYS.to_owned()));
        }
        env
    }

    /// `login`'s URL on this database.
    pub fn url_of(&self, login: pg::Login) -> &str {
        match login {
            pg::Login::User => &self.user_url,
            pg::Login::Query => &self.query_url,
            pg::Login::Config => &self.config_url,
        }
    }
}

/// Binds 127.0.0.1 on an ephemeral port.
pub async fn listener() -> Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// A service running in-process.
pub struct Spawned {
    /// The address of each listener, in the order given to [`spawn`].
    pub addrs: Vec<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<()>>,
}

impl Spawned {
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.addrs[index]
    }

    /// `http://addr` of listener `index`.
    pub fn url(&self, index: usize) -> String {
        format!("http://{}", self.addrs[index])
    }

    /// `https://<address>`: a gRPC listener (mutual TLS).
    pub fn grpc_url(&self, index: usize) -> String {
        format!("https://{}", self.addrs[index])
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits for the service to finish.
    pub async fn stop(mut self) -> Result<()> {
        self.trigger_shutdown();
        (&mut self.task).await?
    }
}

/// Runs `serve(listeners, shutdown)` on a task, with `count` listeners on 127.0.0.1:0.
pub async fn spawn<F, Fut, E>(count: usize, serve: F) -> Result<Spawned>
where
    F: FnOnce(Vec<TcpListener>, Shutdown) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        listeners.push(listener().await?);
    }
    start(listeners, serve)
}

/// As [`spawn`], on given addresses (a replica restarted where it was): binding retries
/// for up to 5 s while the old listener's port is released.
pub async fn spawn_at<F, Fut, E>(addrs: &[SocketAddr], serve: F) -> Result<Spawned>
where
    F: FnOnce(Vec<TcpListener>, Shutdown) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow!("binding {addr} again: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        listeners.push(listener);
    }
    start(listeners, serve)
}

fn start<F, Fut, E>(listeners: Vec<TcpListener>, serve: F) -> Result<Spawned>
where
    F: FnOnce(Vec<TcpListener>, Shutdown) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let (tx, rx) = oneshot::channel();
    let fut = serve(listeners, Shutdown(rx));
    let task = tokio::spawn(async move { fut.await.map_err(|e| anyhow!("{e}")) });
    Ok(Spawned {
        addrs,
        shutdown: Some(tx),
        task,
    })
}

/// The shutdown signal handed to spawned services: resolves when the test asks the
/// service to stop (or drops its handle).
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Polls `GET url` until it answers `expected`, or fails after `timeout`.
pub async fn wait_for_status(url: &str, expected: u16, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let last = client.get(url).send().await.map(|r| r.status().as_u16());
        if matches!(last, Ok(status) if status == expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{url} did not answer {expected} within {timeout:?} (last: {last:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every 20 ms until it holds, or fails after `timeout` (a test never
/// sleeps a fixed time to wait for something).
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the condition did not hold within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the first series of metric `name` on the admin port at `admin_url`
/// (`http://host:port`) whose labels contain `labels` (e.g. `result="miss"`); `None`
/// when there is none (yet).
pub async fn scrape_metric(
    http: &reqwest::Client,
    admin_url: &str,
    name: &str,
    labels: &str,
) -> Result<Option<f64>> {
    let text = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find(|line| line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}
