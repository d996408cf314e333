//! Zero trust between services: every gRPC port speaks mutual TLS 1.3 only, a caller is
//! who its certificate says (a SPIFFE ID of the trust bundle, unexpired), each service
//! answers only the callers its table allows, key exchange is X25519MLKEM768, and
//! certificates rotate under traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::config::v1::{GetRequest, PutRequest};
use borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_proto::user::v1::{GetUserRequest, ListTenantsRequest};
use borough_testkit::pg::Login;
use borough_testkit::tls::{
    TRUST_DOMAIN, TestPki, channel, channel_with, issue_into, pki, settings_in,
};
use borough_testkit::{TestDatabase, scrape_metric};
use borough_tls::generate::{Authority, Validity};
use borough_tls::{Identity, Materials, TlsMetrics};
use rustls::pki_types::pem::PemObject;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{Stack, service_env, spawn_gateway, spawn_query_with, spawn_user_with};

/// A health check over `channel`: `Ok` when the service answered at all.
async fn health(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

async fn metric(admin_url: &str, name: &str, labels: &str) -> Result<f64> {
    Ok(
        scrape_metric(&reqwest::Client::new(), admin_url, name, labels)
            .await?
            .unwrap_or(0.0),
    )
}

/// Every series of `name` on the admin port at `admin_url`, as `labels value` lines.
async fn series(admin_url: &str, name: &str) -> Result<Vec<String>> {
    let text = reqwest::get(format!("{admin_url}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .map(str::to_owned)
        .collect())
}

/// A plaintext (h2c) channel: what anything on the network could open.
fn plaintext(url: &str) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(url.replacen("https://", "http://", 1))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
    )
}

#[tokio::test]
async fn every_service_refuses_plaintext_and_counts_the_failed_handshake() -> Result<()> {
    let stack = Stack::start().await?;
    for (name, service) in [
        ("user", stack.user()),
        ("query", stack.query()),
        ("config", &stack.config),
    ] {
        let refused = health(plaintext(&service.grpc_url(0))?).await;
        ensure!(refused.is_err(), "{name} answered plaintext");
        let failures = metric(
            &service.url(1),
            "borough_tls_handshake_failures_total",
            "role=\"server\"",
        )
        .await?;
        ensure!(
            failures >= 1.0,
            "{name} counted {failures} failed handshakes"
        );
        // The same port answers mutual TLS.
        health(channel(&service.grpc_url(0), "gateway", name)?)
            .await
            .with_context(|| format!("{name} over mutual TLS"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_even_naming_the_gateway() -> Result<()> {
    let stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    // It trusts our CA (so it would accept the server), but its own certificate is
    // someone else's, naming the gateway.
    std::fs::copy(pki()?.dir.join("ca.crt"), dir.path().join("ca.crt"))?;
    let other = Authority::new("someone else's CA")?;
    issue_into(
        &other,
        dir.path(),
        "gateway",
        &Identity::new(TRUST_DOMAIN, "gateway"),
        Validity::YEAR,
    )?;
    let forged = Materials::load(
        &settings_in(dir.path(), "gateway"),
        "gateway",
        TlsMetrics::default(),
    )?;
    let refused =
        TenantAdminServiceClient::new(channel_with(&stack.user().grpc_url(0), &forged, "user")?)
            .list_tenants(ListTenantsRequest {
                page_size: 10,
                ..Default::default()
            })
            .await;
    ensure!(refused.is_err(), "a foreign certificate was accepted");
    let failures = metric(
        &stack.user().url(1),
        "borough_tls_handshake_failures_total",
        "role=\"server\"",
    )
    .await?;
    ensure!(failures >= 1.0, "failures: {failures}");
    Ok(())
}

#[tokio::test]
async fn an_expired_certificate_is_refused() -> Result<()> {
    let stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(pki()?.dir.join("ca.crt"), dir.path().join("ca.crt"))?;
    // Valid when loaded, expired two seconds later (a process that missed its renewal).
    issue_into(
        &pki()?.authority()?,
        dir.path(),
        "gateway",
        &Identity::new(TRUST_DOMAIN, "gateway"),
        Validity { seconds: 2 },
    )?;
    let expiring = Materials::load(
        &settings_in(dir.path(), "gateway"),
        "gateway",
        TlsMetrics::default(),
    )?;
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let refused = health(channel_with(&stack.user().grpc_url(0), &expiring, "user")?).await;
    ensure!(refused.is_err(), "an expired certificate was accepted");
    // The same identity, current: accepted.
    health(channel(&stack.user().grpc_url(0), "gateway", "user")?).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_refuses_a_server_that_names_another_service() -> Result<()> {
    let stack = Stack::start().await?;
    // The query service's port, reached by a client that meant the user service.
    let refused = health(channel(&stack.query().grpc_url(0), "gateway", "user")?).await;
    ensure!(
        refused.is_err(),
        "the query service passed for the user service"
    );
    // The client's alert ends the server's handshake too.
    let failures = metric(
        &stack.query().url(1),
        "borough_tls_handshake_failures_total",
        "role=\"server\"",
    )
    .await?;
    ensure!(failures >= 1.0, "failures: {failures}");
    health(channel(&stack.query().grpc_url(0), "gateway", "query")?).await?;
    Ok(())
}

fn code<T>(result: &Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn only_the_gateway_administers_tenants_acts_for_them_or_writes_platform_configuration()
-> Result<()> {
    let stack = Stack::start().await?;
    let (tenant, key) = stack.create_tenant("zero-trust").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let list = || ListTenantsRequest {
        page_size: 10,
        ..Default::default()
    };

    // The query service's own certificate, against the user service.
    let as_query = channel(&stack.user().grpc_url(0), "query", "user")?;
    let admin = TenantAdminServiceClient::new(as_query.clone())
        .list_tenants(list())
        .await;
    assert_eq!(code(&admin), tonic::Code::PermissionDenied, "{admin:?}");
    let mut get = tonic::Request::new(GetUserRequest {
        id: user["id"].as_str().unwrap_or_default().to_owned(),
    });
    get.metadata_mut()
        .insert("x-borough-tenant-id", tenant.parse()?);
    let acting = UserServiceClient::new(as_query).get_user(get).await;
    assert_eq!(code(&acting), tonic::Code::PermissionDenied, "{acting:?}");
    // The gateway's: accepted.
    let as_gateway = channel(&stack.user().grpc_url(0), "gateway", "user")?;
    let listed = TenantAdminServiceClient::new(as_gateway)
        .list_tenants(list())
        .await?;
    ensure!(
        listed.get_ref().tenants.iter().any(|t| t.id == tenant),
        "the gateway lists the tenant"
    );
    let denied: f64 = series(&stack.user().url(1), "borough_grpc_calls_denied_total")
        .await?
        .iter()
        .filter(|s| s.contains("caller=\"query\""))
        .filter_map(|s| s.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(denied, 2.0, "both refusals counted, by caller and method");

    // The config service: the query service reads its own namespace, nothing else, and
    // writes nothing; the gateway writes platform configuration.
    let put = |namespace: &str| PutRequest {
        namespace: namespace.to_owned(),
        key: "zero_trust_probe".to_owned(),
        value_json: "1".to_owned(),
        expected_revision: None,
    };
    let get = |namespace: &str| GetRequest {
        namespace: namespace.to_owned(),
        key: "zero_trust_probe".to_owned(),
    };
    let mut as_query =
        ConfigServiceClient::new(channel(&stack.config.grpc_url(0), "query", "config")?);
    for namespace in ["platform/gateway", "platform/query"] {
        let written = as_query.put(put(namespace)).await;
        assert_eq!(
            code(&written),
            tonic::Code::PermissionDenied,
            "{namespace}: {written:?}"
        );
    }
    let read = as_query.get(get("platform/gateway")).await;
    assert_eq!(code(&read), tonic::Code::PermissionDenied, "{read:?}");
    let mut as_gateway =
        ConfigServiceClient::new(channel(&stack.config.grpc_url(0), "gateway", "config")?);
    as_gateway.put(put("platform/query")).await?;
    let own = as_query.get(get("platform/query")).await?;
    assert_eq!(
        own.get_ref().value_json,
        "1",
        "its own namespace, written by the gateway"
    );
    Ok(())
}

#[tokio::test]
async fn borough_services_agree_on_x25519mlkem768_and_count_each_handshakes_group() -> Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("pq").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let read = stack
        .http
        .get(stack.url(&format!(
            "/api/v1/users/{}",
            user["id"].as_str().unwrap_or_default()
        )))
        .bearer_auth(&key)
        .send()
        .await?;
    ensure!(read.status() == 200, "read: {}", read.status());
    for (name, service) in [("user", stack.user()), ("query", stack.query())] {
        let all = series(&service.url(1), "borough_tls_handshakes_total").await?;
        let from_gateway = all
            .iter()
            .find(|s| {
                s.contains("role=\"server\"")
                    && s.contains("peer=\"gateway\"")
                    && s.contains("group=\"X25519MLKEM768\"")
            })
            .with_context(|| format!("{name}: {all:?}"))?;
        ensure!(!from_gateway.ends_with(" 0"), "{from_gateway}");
        ensure!(
            all.iter().all(|s| s.contains("group=\"X25519MLKEM768\"")),
            "{name} negotiated another group: {all:?}"
        );
    }
    let gateway = series(&stack.gateway.url(1), "borough_tls_handshakes_total").await?;
    ensure!(
        gateway.iter().any(|s| s.contains("role=\"client\"")
            && s.contains("peer=\"user\"")
            && s.contains("group=\"X25519MLKEM768\"")),
        "{gateway:?}"
    );
    Ok(())
}

/// A channel as the gateway that offers classical key exchange only (X25519).
fn classical_only(url: &str, callee: &str) -> Result<Channel> {
    let materials = pki()?.materials("gateway")?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let config = borough_tls::client::client_config_with(&materials, callee, Arc::new(provider));
    Ok(
        tonic::transport::Endpoint::from_shared(url.to_owned())?.connect_with_connector_lazy(
            borough_tls::client::Connector::with_config(
                config,
                &materials,
                callee,
                None,
                Duration::from_secs(5),
            ),
        ),
    )
}

#[tokio::test]
async fn required_post_quantum_refuses_a_classical_only_peer_that_preferred_accepts() -> Result<()>
{
    let db = TestDatabase::create().await?;
    let required = spawn_user_with(borough_user::Settings::from_env(&service_env(
        &db,
        Login::User,
        &[("BOROUGH_TLS_PQ", "required")],
    ))?)
    .await?;
    let refused = health(classical_only(&required.grpc_url(0), "user")?).await;
    ensure!(
        refused.is_err(),
        "a classical-only handshake passed `required`"
    );
    health(channel(&required.grpc_url(0), "gateway", "user")?).await?;

    let preferred = spawn_user_with(borough_user::Settings::from_env(&service_env(
        &db,
        Login::User,
        &[],
    ))?)
    .await?;
    health(classical_only(&preferred.grpc_url(0), "user")?).await?;
    let classical = metric(
        &preferred.url(1),
        "borough_tls_handshakes_total",
        "group=\"X25519\"",
    )
    .await?;
    assert_eq!(classical, 1.0, "the classical handshake is counted as such");
    Ok(())
}

/// Waits until every admin port in `admins` counts at least `at_least` reloads.
async fn reloaded(admins: &[String], at_least: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for admin in admins {
        while metric(admin, "borough_tls_reloads_total", "outcome=\"loaded\"").await? < at_least {
            if Instant::now() > deadline {
                bail!("{admin} did not reload its TLS material {at_least} times");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn certificates_and_the_ca_rotate_under_traffic_without_a_failed_request() -> Result<()> {
    let db = TestDatabase::create().await?;
    // A PKI of this test's own: it is rotated.
    let own = TestPki::create()?;
    let dir = own.dir.display().to_string();
    let tls = [
        ("BOROUGH_TLS_DIR", dir.as_str()),
        ("BOROUGH_TLS_RELOAD_INTERVAL", "50ms"),
    ];
    let user = spawn_user_with(borough_user::Settings::from_env(&service_env(
        &db,
        Login::User,
        &tls,
    ))?)
    .await?;
    let query = spawn_query_with(borough_query::Settings::from_env(&service_env(
        &db,
        Login::Query,
        &tls,
    ))?)
    .await?;
    let gateway = spawn_gateway(&user.grpc_url(0), &query.grpc_url(0), &tls).await?;
    let admins = [user.url(1), query.url(1), gateway.url(1)];
    let http = reqwest::Client::new();
    borough_testkit::wait_for_status(
        &format!("{}/readyz", gateway.url(1)),
        200,
        Duration::from_secs(20),
    )
    .await?;
    let created = http
        .post(format!("{}/admin/v1/tenants", gateway.url(0)))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&serde_json::json!({"name": "rotating"}))
        .send()
        .await?
        .error_for_status()?
        .json::<serde_json::Value>()
        .await?;
    let key = created["api_key"]["key"]
        .as_str()
        .context("api key")?
        .to_owned();

    // Traffic: REST through the gateway (its connections stay open) and, beside it, a
    // new connection for every call as the gateway from the rotating files (a handshake
    // on whatever each side holds at that moment).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client_side = Materials::load(
        &settings_in(&own.dir, "gateway"),
        "gateway",
        TlsMetrics::default(),
    )?;
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (url, grpc, http) = (gateway.url(0), user.grpc_url(0), http.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let rest = http
                    .post(format!("{url}/api/v1/users"))
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"name": "R", "email": format!("r{n}@example.com")}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201);
                let fresh = match channel_with(&grpc, &client_side, "user") {
                    Ok(channel) => health(channel).await.is_ok(),
                    Err(_) => false,
                };
                for outcome in [rest, fresh] {
                    if outcome { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Each phase is held until calls have gone through on what every side holds then.
    let calls = |count: u64| {
        let ok = ok.clone();
        let from = ok.load(Ordering::Relaxed);
        borough_testkit::wait_until(Duration::from_secs(10), move || {
            let ok = ok.clone();
            async move { Ok(ok.load(Ordering::Relaxed) >= from + count) }
        })
    };
    calls(10).await?;

    // 1. The new CA joins the bundle (every process trusts both).
    let old = own.authority()?;
    let new = Authority::new("Borough test CA, rotated")?;
    let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
    borough_tls::generate::write(&own.dir.join("ca.crt"), &bundle, false)?;
    reloaded(&admins, 1.0).await?;
    calls(10).await?;
    // 2. Every certificate re-issued by the new CA (a shorter life shows it is the new one).
    for service in ["gateway", "user", "query"] {
        issue_into(
            &new,
            &own.dir,
            service,
            &Identity::new(TRUST_DOMAIN, service),
            Validity::days(30),
        )?;
    }
    reloaded(&admins, 2.0).await?;
    calls(10).await?;
    // 3. The old CA leaves the bundle.
    borough_tls::generate::write(&own.dir.join("ca.crt"), new.cert_pem(), false)?;
    reloaded(&admins, 3.0).await?;
    calls(10).await?;
    stop.store(true, Ordering::Release);
    traffic.await?;

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    ensure!(ok >= 20, "too little traffic to show anything: {ok}");
    for admin in &admins {
        let expiry = metric(
            admin,
            "borough_tls_certificate_expiry_timestamp_seconds",
            "",
        )
        .await?;
        let days = (expiry - std::time::SystemTime::UNIX_EPOCH.elapsed()?.as_secs_f64()) / 86_400.0;
        ensure!(
            (29.0..31.0).contains(&days),
            "{admin} still holds the old certificate ({days:.0} days)"
        );
    }
    // A certificate of the old CA is no longer accepted.
    let stale = tempfile::tempdir()?;
    std::fs::write(stale.path().join("ca.crt"), new.cert_pem())?;
    issue_into(
        &old,
        stale.path(),
        "gateway",
        &Identity::new(TRUST_DOMAIN, "gateway"),
        Validity::YEAR,
    )?;
    let stale = Materials::load(
        &settings_in(stale.path(), "gateway"),
        "gateway",
        TlsMetrics::default(),
    )?;
    ensure!(
        health(channel_with(&user.grpc_url(0), &stale, "user")?)
            .await
            .is_err(),
        "the retired CA's certificate was accepted"
    );
    Ok(())
}

#[tokio::test]
async fn the_gateway_can_terminate_tls_itself_offering_h2_and_http1_with_a_post_quantum_group()
-> Result<()> {
    let stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    let authority = pki()?.authority()?;
    let issued =
        authority.issue_server(&["localhost".into(), "127.0.0.1".into()], Validity::YEAR)?;
    let (cert, key) = (dir.path().join("edge.crt"), dir.path().join("edge.key"));
    borough_tls::generate::write(&cert, &issued.cert_pem, false)?;
    borough_tls::generate::write(&key, &issued.key_pem, true)?;
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let gateway = spawn_gateway(
        &stack.user().grpc_url(0),
        &stack.query().grpc_url(0),
        &[
            ("BOROUGH_HTTP_TLS_CERT", cert.as_str()),
            ("BOROUGH_HTTP_TLS_KEY", key.as_str()),
        ],
    )
    .await?;

    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(authority.cert_pem().as_bytes()) {
        roots.add(der?)?;
    }
    let connect = |alpn: &[&[u8]]| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|b| {
            b.with_root_certificates(roots.clone())
                .with_no_client_auth()
        });
        if let Ok(config) = &mut config {
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        }
        let addr = gateway.addr(0);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config?))
                .connect(name, tcp)
                .await?;
            anyhow::Ok(stream)
        }
    };

    // HTTP/1.1 when that is all the client offers.
    let mut http1 = connect(&[b"http/1.1"]).await?;
    let (_, session) = http1.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        session
            .negotiated_key_exchange_group()
            .map(|g| borough_tls::group_name(g.name())),
        Some("X25519MLKEM768")
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    http1
        .write_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    http1.read_to_string(&mut answer).await.ok();
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2 when offered first.
    let h2 = connect(&[b"h2", b"http/1.1"]).await?;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = h2::client::handshake(h2).await?;
    tokio::spawn(connection);
    let (response, _) = sender.send_request(
        http::Request::get("https://localhost/hello").body(())?,
        true,
    )?;
    assert_eq!(response.await?.status(), 200);

    // Counted with its group.
    let edge = metric(
        &gateway.url(1),
        "borough_tls_handshakes_total",
        "role=\"edge\",peer=\"client\",group=\"X25519MLKEM768\"",
    )
    .await?;
    assert_eq!(edge, 2.0);
    // Plain HTTP on the same port gets no answer.
    let plain = reqwest::get(format!("{}/hello", gateway.url(0))).await;
    ensure!(plain.is_err(), "plain HTTP answered: {plain:?}");
    Ok(())
}
