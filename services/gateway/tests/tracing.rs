//! Traces end to end: the service binaries export over OTLP/gRPC to a receiver in this
//! test (the collector's `TraceService`, from opentelemetry-proto), and one REST call
//! yields one trace — gateway request → gRPC client → gRPC server → SQL — continuing the
//! caller's `traceparent`, with the trace id in the problem body too.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borough_testkit::{TestDatabase, wait_for_status};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "trace-test-admin-token-0123456789";

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent: hex::encode(&span.parent_span_id),
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn binary(name: &str) -> String {
    match name {
        "borough-gateway" => env!("CARGO_BIN_EXE_borough-gateway").to_owned(),
        // The other services are built beside the gateway (same target directory).
        other => std::path::Path::new(env!("CARGO_BIN_EXE_borough-gateway"))
            .with_file_name(other)
            .display()
            .to_string(),
    }
}

#[tokio::test]
async fn one_rest_call_is_one_trace_from_the_gateway_through_grpc_to_sql_continuing_the_callers()
-> anyhow::Result<()> {
    // The receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The services, as processes of their own, exporting to it.
    let db = TestDatabase::create().await?;
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (user, user_admin, query, query_admin, http, gateway_admin) =
        (free()?, free()?, free()?, free()?, free()?, free()?);
    let mut common = borough_testkit::tls::pki()?.env();
    common.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
        ("BOROUGH_PROBE_INTERVAL", "100ms".to_owned()),
        ("BOROUGH_SHUTDOWN_GRACE", "0s".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]);
    let spawn = |name: &str, env: Vec<(&str, String)>| {
        tokio::process::Command::new(binary(name))
            .envs(common.iter().cloned())
            .envs(env)
            .env_remove("BOROUGH_CONFIG_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let _user = spawn(
        "borough-user",
        vec![
            ("BOROUGH_GRPC_ADDR", user.to_string()),
            ("BOROUGH_ADMIN_ADDR", user_admin.to_string()),
            ("BOROUGH_DATABASE_URL", db.user_url.clone()),
        ],
    )?;
    let _query = spawn(
        "borough-query",
        vec![
            ("BOROUGH_GRPC_ADDR", query.to_string()),
            ("BOROUGH_ADMIN_ADDR", query_admin.to_string()),
            ("BOROUGH_DATABASE_URL", db.query_url.clone()),
        ],
    )?;
    let _gateway = spawn(
        "borough-gateway",
        vec![
            ("BOROUGH_HTTP_ADDR", http.to_string()),
            ("BOROUGH_ADMIN_ADDR", gateway_admin.to_string()),
            ("BOROUGH_USER_URL", format!("https://{user}")),
            ("BOROUGH_QUERY_URL", format!("https://{query}")),
            ("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ],
    )?;
    wait_for_status(
        &format!("http://{gateway_admin}/readyz"),
        200,
        Duration::from_secs(30),
    )
    .await?;

    let client = reqwest::Client::new();
    let tenant: Value = client
        .post(format!("http://{http}/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "traced"}))
        .send()
        .await?
        .json()
        .await?;
    let key = tenant["api_key"]["key"].as_str().unwrap_or_default();

    // The caller's trace: continued, not replaced.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = client
        .post(format!("http://{http}/api/v1/users"))
        .bearer_auth(key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);

    // Wait for the batches (100 ms schedule) of all three processes.
    let started = Instant::now();
    let spans = loop {
        let spans: Vec<Received> = receiver
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let has_sql = spans.iter().any(|s| {
            s.attribute("db.query.text")
                .is_some_and(|q| q.contains(".create_user($1"))
        });
        // Every span checked below, each of which may come in a later batch than the
        // others (the gateway's server span ends last).
        let gateway_server = spans
            .iter()
            .any(|s| s.service == "borough-gateway" && s.kind == SERVER);
        let create_user = |service: &str, kind| {
            spans.iter().any(|s| {
                s.service == service
                    && s.kind == kind
                    && s.name == "borough.user.v1.UserService/CreateUser"
            })
        };
        let gateway_call = create_user("borough-gateway", CLIENT);
        let user_server = create_user("borough-user", SERVER);
        if has_sql && gateway_server && gateway_call && user_server {
            break spans;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "spans of the trace so far: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let find = |pred: &dyn Fn(&Received) -> bool, what: &str| -> anyhow::Result<Received> {
        spans
            .iter()
            .find(|s| pred(s))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {what} in {spans:#?}"))
    };
    let edge = find(
        &|s| s.service == "borough-gateway" && s.kind == SERVER,
        "gateway server span",
    )?;
    assert_eq!(edge.parent, caller_span, "the caller's span is the parent");
    assert_eq!(edge.name, "POST /api/v1/users");
    assert_eq!(edge.attribute("http.response.status_code"), Some("201"));
    let call = find(
        &|s| {
            s.service == "borough-gateway"
                && s.kind == CLIENT
                && s.name == "borough.user.v1.UserService/CreateUser"
        },
        "gateway client span of CreateUser",
    )?;
    assert_eq!(call.parent, edge.span_id);
    let server = find(
        &|s| {
            s.service == "borough-user"
                && s.kind == SERVER
                && s.name == "borough.user.v1.UserService/CreateUser"
        },
        "user server span of CreateUser",
    )?;
    assert_eq!(
        server.parent, call.span_id,
        "the server continues the client's span"
    );
    let insert = find(
        &|s| {
            s.attribute("db.query.text")
                .is_some_and(|q| q.contains(".create_user($1"))
        },
        "the create_user statement's span",
    )?;
    assert_eq!(insert.service, "borough-user");
    assert_eq!(insert.parent, server.span_id);
    assert_eq!(insert.kind, CLIENT);
    assert_eq!(insert.attribute("db.system.name"), Some("postgresql"));
    // The insert runs as one prepared call of the tenant schema's create_user function.
    assert_eq!(insert.attribute("db.operation.name"), Some("SELECT"));
    // No parameter values in any statement.
    for span in &spans {
        if let Some(query) = span.attribute("db.query.text") {
            assert!(!query.contains("ada@example.com"), "{query}");
        }
    }

    // A problem body names the trace it belongs to.
    let response = client
        .post(format!("http://{http}/api/v1/users"))
        .bearer_auth(key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"name": "", "email": "not-an-email"}))
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await?;
    assert_eq!(problem["trace_id"], trace_id);
    Ok(())
}

/// A TLS connection for tonic's server (no client certificate: a collector's).
struct CollectorConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for CollectorConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for CollectorConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CollectorConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A collector on `https://localhost:<port>` with a certificate of the test CA.
async fn https_collector() -> anyhow::Result<(Receiver, u16)> {
    let pki = borough_testkit::tls::pki()?;
    let issued = pki
        .authority()?
        .issue_server(&["localhost".into()], borough_tls::generate::Validity::YEAR)?;
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (connections, incoming) = tokio::sync::mpsc::channel::<std::io::Result<CollectorConn>>(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = connections.send(Ok(CollectorConn(tls))).await;
                }
            });
        }
    });
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming)),
    );
    Ok((receiver, port))
}

/// Starts a gateway exporting to `endpoint` trusting `ca`, and sends it a request.
async fn gateway_exporting(
    endpoint: &str,
    ca: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    let (http, admin) = (free()?, free()?);
    let child = tokio::process::Command::new(binary("borough-gateway"))
        .envs(borough_testkit::tls::pki()?.env())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("BOROUGH_HTTP_ADDR", http.to_string())
        .env("BOROUGH_ADMIN_ADDR", admin.to_string())
        .env("BOROUGH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("BOROUGH_CONFIG_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_for_status(
        &format!("http://{http}/hello"),
        200,
        Duration::from_secs(20),
    )
    .await?;
    Ok(child)
}

#[tokio::test]
async fn traces_reach_an_https_collector_only_when_its_certificate_verifies() -> anyhow::Result<()>
{
    let pki = borough_testkit::tls::pki()?;
    let (receiver, port) = https_collector().await?;
    let endpoint = format!("https://localhost:{port}");
    let arrived = |receiver: &Receiver| {
        receiver
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s.service == "borough-gateway")
    };

    // Trusting another CA: the collector is refused, nothing is sent.
    let elsewhere = tempfile::tempdir()?;
    let other = elsewhere.path().join("ca.crt");
    std::fs::write(
        &other,
        borough_tls::generate::Authority::new("not the collector's")?.cert_pem(),
    )?;
    let untrusting = gateway_exporting(&endpoint, &other).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!arrived(&receiver), "spans went to an unverified collector");
    drop(untrusting);

    // Trusting the collector's CA: spans arrive.
    let _trusting = gateway_exporting(&endpoint, &pki.dir.join("ca.crt")).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !arrived(&receiver) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no span reached the https collector"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
