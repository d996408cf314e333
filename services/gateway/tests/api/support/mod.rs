//! The whole stack in-process: a fresh database, the user and query services and the
//! gateway, each on 127.0.0.1 port 0, talking over real sockets.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::time::Duration;

use anyhow::{Context, Result};
use borough_config_client::Env;
use borough_testkit::pg::Login;
use borough_testkit::{Spawned, TestDatabase, spawn, spawn_at, wait_for_status};
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct Stack {
    pub db: TestDatabase,
    /// The user service's replicas ([`StackBuilder::replicas`]), all behind the gateway.
    users: Vec<Spawned>,
    user_settings: Vec<borough_user::Settings>,
    /// The query service's replicas, all behind the gateway.
    queries: Vec<Spawned>,
    query_settings: Vec<borough_query::Settings>,
    pub config: Spawned,
    pub gateway: Spawned,
    pub http: reqwest::Client,
    /// Between the gateway and the query service, when built with
    /// [`StackBuilder::query_behind_proxy`].
    query_proxy: Option<borough_testkit::proxy::FaultProxy>,
}

/// The test PKI's settings (`BOROUGH_TLS_DIR`, `BOROUGH_TRUST_DOMAIN`): every service
/// of a test stack talks mutual TLS.
pub fn tls_env() -> Vec<(String, String)> {
    borough_testkit::tls::pki()
        .map(|pki| {
            pki.env()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        })
        .unwrap_or_default()
}

pub use borough_testkit::SECRET_KEYS;

/// Settings of the service whose database login is `login`, on `db`.
pub fn service_env(db: &TestDatabase, login: Login, extra: &[(&str, &str)]) -> Env {
    let keys: &[(&str, &str)] = match login {
        Login::User => &[("BOROUGH_SECRET_KEYS", SECRET_KEYS)],
        _ => &[],
    };
    // Later pairs win: `extra` overrides the defaults.
    let pairs: Vec<(String, String)> = tls_env()
        .into_iter()
        .chain(
            [
                ("BOROUGH_DATABASE_URL", db.url_of(login)),
                ("BOROUGH_PROVISIONER_DATABASE_URL", db.admin_url.as_str()),
                ("BOROUGH_SHUTDOWN_GRACE", "0s"),
                ("BOROUGH_PROBE_INTERVAL", "100ms"),
            ]
            .iter()
            .chain(keys)
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .collect();
    Env::from_pairs(pairs)
}

pub async fn spawn_user(db: &TestDatabase) -> Result<Spawned> {
    spawn_user_with(borough_user::Settings::from_env(&service_env(
        db,
        Login::User,
        &[],
    ))?)
    .await
}

pub async fn spawn_user_with(settings: borough_user::Settings) -> Result<Spawned> {
    spawn(2, user_server(settings)).await
}

/// A service running until its shutdown signal.
type Serving = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), borough_net::ServeError>> + Send>,
>;

/// Runs the user service on its two listeners (gRPC, admin).
fn user_server(
    settings: borough_user::Settings,
) -> impl FnOnce(Vec<tokio::net::TcpListener>, borough_testkit::Shutdown) -> Serving {
    move |mut l, shutdown| {
        let admin = l.remove(1);
        let grpc = l.remove(0);
        Box::pin(borough_user::serve(
            settings,
            borough_user::Listeners { api: grpc, admin },
            shutdown,
        ))
    }
}

/// Runs the query service on its two listeners (gRPC, admin).
fn query_server(
    settings: borough_query::Settings,
) -> impl FnOnce(Vec<tokio::net::TcpListener>, borough_testkit::Shutdown) -> Serving {
    move |mut l, shutdown| {
        let admin = l.remove(1);
        let grpc = l.remove(0);
        Box::pin(borough_query::serve(
            settings,
            borough_query::Listeners { api: grpc, admin },
            shutdown,
        ))
    }
}

/// A user service on the addresses a stopped one had (a restarted replica).
pub async fn respawn_user(
    settings: borough_user::Settings,
    at: &[std::net::SocketAddr],
) -> Result<Spawned> {
    spawn_at(at, user_server(settings)).await
}

/// A query service on the addresses a stopped one had (a restarted replica).
pub async fn respawn_query(
    settings: borough_query::Settings,
    at: &[std::net::SocketAddr],
) -> Result<Spawned> {
    spawn_at(at, query_server(settings)).await
}

pub async fn spawn_query(db: &TestDatabase) -> Result<Spawned> {
    spawn_query_with(borough_query::Settings::from_env(&service_env(
        db,
        Login::Query,
        &[],
    ))?)
    .await
}

pub async fn spawn_query_with(settings: borough_query::Settings) -> Result<Spawned> {
    spawn(2, query_server(settings)).await
}

pub async fn spawn_config(db: &TestDatabase) -> Result<Spawned> {
    let settings = borough_config::Settings::from_env(&service_env(db, Login::Config, &[]))?;
    spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let grpc = l.remove(0);
        borough_config::serve(
            settings,
            borough_config::Listeners { api: grpc, admin },
            shutdown,
        )
    })
    .await
}

/// A gateway in front of `user_url` and `query_url`, with extra settings.
pub async fn spawn_gateway(
    user_url: &str,
    query_url: &str,
    extra: &[(&str, &str)],
) -> Result<Spawned> {
    let mut pairs: Vec<(String, String)> = tls_env();
    pairs.extend([
        ("BOROUGH_USER_URL".into(), user_url.into()),
        ("BOROUGH_QUERY_URL".into(), query_url.into()),
        ("BOROUGH_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        // Tests make bursts of requests; the rate-limit tests set their own limits.
        ("BOROUGH_RATE_LIMIT_RPS".into(), "1000000".into()),
        ("BOROUGH_RATE_LIMIT_BURST".into(), "1000000".into()),
        ("BOROUGH_SHUTDOWN_GRACE".into(), "0s".into()),
        ("BOROUGH_PROBE_INTERVAL".into(), "100ms".into()),
    ]);
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let settings = borough_gateway::Settings::from_env(&Env::from_pairs(pairs))?;
    spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let http = l.remove(0);
        borough_gateway::serve(
            settings,
            borough_gateway::Listeners { api: http, admin },
            shutdown,
        )
    })
    .await
}

/// How a [`Stack`] is started: on which database, with which settings.
#[derive(Default)]
pub struct StackBuilder {
    db: Option<TestDatabase>,
    services: Vec<(String, String)>,
    gateway: Vec<(String, String)>,
    query_proxy: bool,
    replicas: usize,
}

fn owned(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
}

impl StackBuilder {
    /// On a database of the caller's (default: a fresh one on the shared cluster).
    pub fn on(mut self, db: TestDatabase) -> Self {
        self.db = Some(db);
        self
    }

    /// Settings of the user and query services, over the test defaults.
    pub fn services(mut self, settings: &[(&str, &str)]) -> Self {
        self.services.extend(owned(settings));
        self
    }

    /// Settings of the gateway, over the test defaults.
    pub fn gateway(mut self, settings: &[(&str, &str)]) -> Self {
        self.gateway.extend(owned(settings));
        self
    }

    /// `n` replicas each of the user and query services behind the gateway (default 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The gateway reaches the query service through a fault-injecting proxy
    /// ([`Stack::query_proxy`]), passing until a test says otherwise.
    pub fn query_behind_proxy(mut self) -> Self {
        self.query_proxy = true;
        self
    }

    /// Starts the config, user and query services and the gateway, and waits until the
    /// gateway is ready.
    pub async fn start(mut self) -> Result<Stack> {
        let db = match self.db.take() {
            Some(db) => db,
            None => TestDatabase::create().await?,
        };
        Stack::start_on(db, &self).await
    }
}

impl Stack {
    /// A stack with the test defaults on a fresh database.
    pub async fn start() -> Result<Stack> {
        Stack::builder().start().await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// Another query replica on the stack's database (not behind its gateway), with
    /// `extra` settings.
    pub async fn spawn_query_replica(&self, extra: &[(&str, &str)]) -> Result<Spawned> {
        spawn_query_with(borough_query::Settings::from_env(&service_env(
            &self.db,
            Login::Query,
            extra,
        ))?)
        .await
    }

    async fn start_on(db: TestDatabase, built: &StackBuilder) -> Result<Stack> {
        let (service_settings, gateway_settings) = (&built.services, &built.gateway);
        borough_telemetry::logging::init_test_logging();
        // The config service first: every other service follows its platform namespace,
        // each with a snapshot file of its own (tests run side by side).
        let config = spawn_config(&db).await?;
        let config_url = config.grpc_url(0);
        let snapshot = || {
            std::env::temp_dir()
                .join(format!(
                    "borough-test-config-{}.json",
                    uuid::Uuid::now_v7().simple()
                ))
                .display()
                .to_string()
        };
        let following = |snapshot: &str, extra: &[(String, String)]| -> Vec<(String, String)> {
            owned(&[
                ("BOROUGH_CONFIG_URL", config_url.as_str()),
                ("BOROUGH_CONFIG_SNAPSHOT", snapshot),
            ])
            .chain(extra.iter().cloned())
            .collect()
        };
        let settings = |login: Login| -> Result<Env> {
            let owned = following(&snapshot(), service_settings);
            let pairs: Vec<(&str, &str)> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Ok(service_env(&db, login, &pairs))
        };
        let (mut users, mut user_settings, mut queries, mut query_settings) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..built.replicas.max(1) {
            let user = borough_user::Settings::from_env(&settings(Login::User)?)?;
            users.push(spawn_user_with(user.clone()).await?);
            user_settings.push(user);
            let query = borough_query::Settings::from_env(&settings(Login::Query)?)?;
            queries.push(spawn_query_with(query.clone()).await?);
            query_settings.push(query);
        }
        let gateway_snapshot = snapshot();
        let owned = following(&gateway_snapshot, gateway_settings);
        let gateway_pairs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let gateway_settings = gateway_pairs.as_slice();
        // With a proxy, the first query replica is reached through it.
        let query_proxy = match built.query_proxy {
            true => Some(borough_testkit::proxy::FaultProxy::start(queries[0].addr(0)).await?),
            false => None,
        };
        let urls =
            |replicas: &[Spawned]| replicas.iter().map(|r| r.grpc_url(0)).collect::<Vec<_>>();
        let mut query_urls = urls(&queries);
        if let Some(proxy) = &query_proxy {
            query_urls[0] = proxy.grpc_url();
        }
        let gateway = spawn_gateway(
            &urls(&users).join(","),
            &query_urls.join(","),
            gateway_settings,
        )
        .await?;
        let stack = Stack {
            db,
            users,
            user_settings,
            queries,
            query_settings,
            config,
            gateway,
            http: reqwest::Client::new(),
            query_proxy,
        };
        wait_for_status(
            &stack.gateway_admin("/readyz"),
            200,
            Duration::from_secs(20),
        )
        .await
        .context("the stack did not become ready")?;
        Ok(stack)
    }

    /// The (first) user service.
    pub fn user(&self) -> &Spawned {
        &self.users[0]
    }

    /// The (first) query service.
    pub fn query(&self) -> &Spawned {
        &self.queries[0]
    }

    /// Stops user replica `i` (it drains), starts it again where it was, and waits until
    /// it is ready and the gateway's health checks pass it again.
    pub async fn restart_user(&mut self, i: usize) -> Result<()> {
        let old = self.users.remove(i);
        let addrs = old.addrs.clone();
        old.stop().await?;
        let new = respawn_user(self.user_settings[i].clone(), &addrs).await?;
        self.users.insert(i, new);
        self.back_in_service(&addrs).await
    }

    /// As [`Stack::restart_user`], for query replica `i`.
    pub async fn restart_query(&mut self, i: usize) -> Result<()> {
        let old = self.queries.remove(i);
        let addrs = old.addrs.clone();
        old.stop().await?;
        let new = respawn_query(self.query_settings[i].clone(), &addrs).await?;
        self.queries.insert(i, new);
        self.back_in_service(&addrs).await
    }

    /// Waits until the replica at `addrs` is ready and the gateway's health check passes it.
    async fn back_in_service(&self, addrs: &[std::net::SocketAddr]) -> Result<()> {
        let admin = addrs.get(1).context("a replica has an admin address")?;
        wait_for_status(
            &format!("http://{admin}/readyz"),
            200,
            Duration::from_secs(10),
        )
        .await?;
        let healthy = format!("endpoint=\"{}\"", addrs[0]);
        borough_testkit::wait_until(Duration::from_secs(10), || async {
            let value = borough_testkit::scrape_metric(
                &self.http,
                &self.gateway.url(1),
                "borough_backend_endpoint_healthy",
                &healthy,
            )
            .await?;
            Ok(value == Some(1.0))
        })
        .await
    }

    /// The proxy between the gateway and the query service.
    pub fn query_proxy(&self) -> Result<&borough_testkit::proxy::FaultProxy> {
        self.query_proxy
            .as_ref()
            .context("this stack was not built with query_behind_proxy()")
    }

    /// A typed client of the API as the tenant of `key`.
    pub fn api<'a>(&'a self, key: &'a str) -> Api<'a> {
        Api { stack: self, key }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url(0))
    }

    pub fn gateway_admin(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url(1))
    }

    /// The first series of `name` on a service's admin port whose labels contain `labels`.
    async fn series(&self, service: &Spawned, name: &str, labels: &str) -> Result<Option<f64>> {
        borough_testkit::scrape_metric(&self.http, &service.url(1), name, labels).await
    }

    /// The value of the first series of `name` whose labels contain `labels` (e.g.
    /// `result="miss"`); 0 when there is none yet.
    pub async fn metric_with(&self, service: &Spawned, name: &str, labels: &str) -> Result<f64> {
        Ok(self.series(service, name, labels).await?.unwrap_or(0.0))
    }

    /// The value of an unlabelled-but-`service` metric; an error when it is not exported.
    pub async fn metric(&self, service: &Spawned, name: &str) -> Result<f64> {
        self.series(service, name, "")
            .await?
            .with_context(|| format!("{name} not in /metrics"))
    }

    /// Creates a tenant through the admin API: (tenant id, API key).
    pub async fn create_tenant(&self, name: &str) -> Result<(String, String)> {
        self.create_tenant_in(name, "shared").await
    }

    /// Creates a tenant with a placement: (tenant id, API key).
    pub async fn create_tenant_in(&self, name: &str, placement: &str) -> Result<(String, String)> {
        let response = self
            .http
            .post(self.url("/admin/v1/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "name": name, "placement": placement }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "create tenant: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let body: Value = response.json().await?;
        Ok((
            body["tenant"]["id"]
                .as_str()
                .context("tenant id")?
                .to_owned(),
            body["api_key"]["key"]
                .as_str()
                .context("api key")?
                .to_owned(),
        ))
    }

    /// Creates a user as the tenant of `key`: the response body.
    pub async fn create_user(&self, key: &str, name: &str, email: &str) -> Result<Value> {
        let response = self
            .http
            .post(self.url("/api/v1/users"))
            .bearer_auth(key)
            .json(&json!({ "name": name, "email": email }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "create user: {}",
            response.status()
        );
        Ok(response.json().await?)
    }
}

/// The REST API as one tenant: one method per operation the tests make.
pub struct Api<'a> {
    stack: &'a Stack,
    key: &'a str,
}

impl Api<'_> {
    /// `GET /api/v1/users/{id}`.
    pub async fn get_user(&self, id: &str) -> Result<reqwest::Response> {
        Ok(self
            .stack
            .http
            .get(self.stack.url(&format!("/api/v1/users/{id}")))
            .bearer_auth(self.key)
            .send()
            .await?)
    }

    /// `POST /api/v1/users`: the created user's body (an error unless 201).
    pub async fn create_user(&self, name: &str, email: &str) -> Result<Value> {
        self.stack.create_user(self.key, name, email).await
    }
}

/// Asserts a problem+json response with `status`, returning its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Result<Value> {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "content type");
    let body: Value = response.json().await?;
    assert_eq!(body["status"], status, "status in body: {body}");
    for field in ["type", "title", "detail", "trace_id"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:borough:problem:")),
        "{body}"
    );
    Ok(body)
}
