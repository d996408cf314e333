//! The backend client against real gRPC servers over real sockets: discovery by DNS name,
//! balancing away from a slow endpoint, failing fast with no address, and a deadline spent
//! on the server told as one.

use std::time::{Duration, Instant};

use borough_net::client::{Backend, ClientMetrics, ClientSettings, RetryPolicy};
use borough_telemetry::Metrics;
use borough_testkit::proxy::{Fault, FaultProxy};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const POLICY: RetryPolicy = RetryPolicy {
    idempotent: &["/grpc.health.v1.Health/Check"],
    keyed: &[],
};

/// A plaintext backend (these servers speak no TLS: balancing and discovery are tested
/// here, mutual TLS in the services' tests).
fn backend(urls: &str) -> anyhow::Result<Backend> {
    Ok(Backend::new(
        "test",
        "TEST_BACKEND_URL",
        urls,
        ClientSettings::default(),
        POLICY,
        &ClientMetrics::register(&Metrics::new("test")),
        None,
    )?)
}

async fn check(backend: &Backend, timeout: Duration) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(timeout);
    HealthClient::new(backend.clone())
        .check(request)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_dns_name_is_resolved_and_called_and_an_unknown_one_fails_fast_as_unavailable()
-> anyhow::Result<()> {
    let addr = borough_testkit::grpc::health_server().await?;
    let named = backend(&format!("http://localhost:{}", addr.port()))?;
    check(&named, Duration::from_secs(5)).await?;
    assert!(
        named
            .endpoints()
            .iter()
            .any(|(a, _, _)| a.port() == addr.port()),
        "{:?}",
        named.endpoints()
    );

    let nowhere = backend("http://borough-no-such-host.invalid:50051")?;
    let started = Instant::now();
    let status = check(&nowhere, Duration::from_secs(2))
        .await
        .expect_err("nothing to call");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A list where one name does not resolve still works through the other.
    let mixed = backend(&format!(
        "http://borough-no-such-host.invalid:1,http://127.0.0.1:{}",
        addr.port()
    ))?;
    check(&mixed, Duration::from_secs(5)).await?;
    Ok(())
}

/// Holds calls that carry `x-test-slow` for five seconds before the service sees them.
#[derive(Clone)]
struct SlowWhenAsked<S>(S);

impl<S, B> tower::Service<http::Request<B>> for SlowWhenAsked<S>
where
    S: tower::Service<http::Request<B>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let slow = request.headers().contains_key("x-test-slow");
        let call = self.0.call(request);
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            call.await
        })
    }
}

#[tokio::test]
async fn a_deadline_spent_on_the_server_reaches_the_caller_as_deadline_exceeded()
-> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(SlowWhenAsked))
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let backend = backend(&format!("http://{addr}"))?;
    check(&backend, Duration::from_secs(5)).await?;

    // tonic's server answers a spent `grpc-timeout` with CANCELLED; the caller that set the
    // deadline hears DEADLINE_EXCEEDED (a 504 at the edge, not a 499).
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_millis(200));
    request.metadata_mut().insert(
        "x-test-slow",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let started = Instant::now();
    let status = HealthClient::new(backend.clone())
        .check(request)
        .await
        .expect_err("the server held the call past its deadline");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A call answered before its deadline is untouched, whatever it answers.
    check(&backend, Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn power_of_two_choices_on_peak_ewma_sends_calls_away_from_a_slow_endpoint()
-> anyhow::Result<()> {
    let (fast, slow) = (
        borough_testkit::grpc::health_server().await?,
        borough_testkit::grpc::health_server().await?,
    );
    let slow_proxy = FaultProxy::start(slow).await?;
    let backend = backend(&format!("http://{fast},{}", slow_proxy.url()))?;
    // Both connected and measured once while equally fast.
    for _ in 0..10 {
        check(&backend, Duration::from_secs(5)).await?;
    }
    slow_proxy.set(Fault::Latency(Duration::from_millis(50)));
    let started = Instant::now();
    for _ in 0..100 {
        check(&backend, Duration::from_secs(5)).await?;
    }
    // Half of the calls on the slow endpoint would take 2.5 s; p2c learns after one or two.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "100 calls took {took:?}");
    Ok(())
}
