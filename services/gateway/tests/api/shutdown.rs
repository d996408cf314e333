//! Graceful shutdown: readiness fails before the listener closes, and work in flight
//! completes.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Stack, spawn_gateway};

#[tokio::test]
async fn gateway_in_flight_request_completes_and_readiness_fails_before_the_listener_closes()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("draining").await?;
    let mut gateway = spawn_gateway(
        &stack.user().grpc_url(0),
        &stack.query().grpc_url(0),
        &[("BOROUGH_SHUTDOWN_GRACE", "1s")],
    )
    .await?;
    let addr = gateway.addr(0);
    let readyz = format!("{}/readyz", gateway.url(1));
    borough_testkit::wait_for_status(&readyz, 200, Duration::from_secs(10)).await?;

    // A request in flight: headers sent, body still to come.
    let body = json!({ "name": "Late Larry", "email": "larry@example.com" }).to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body.as_bytes()[..10]).await?;

    gateway.trigger_shutdown();
    // Readiness fails at once...
    borough_testkit::wait_for_status(&readyz, 503, Duration::from_secs(5)).await?;
    // ...while the listener still accepts new requests during the grace period.
    let hello = reqwest::get(format!("http://{addr}/hello")).await?;
    assert_eq!(hello.status(), 200);

    // The in-flight request finishes and succeeds.
    socket.write_all(&body.as_bytes()[10..]).await?;
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut response))
        .await
        .context("the in-flight request got no answer")??;
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    tokio::time::timeout(Duration::from_secs(10), gateway.task)
        .await
        .context("the gateway did not stop")???;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is still open after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn user_service_call_in_flight_completes_during_shutdown() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (tenant, _) = stack.create_tenant("slowcall").await?;
    let mut user = crate::support::spawn_user(&stack.db).await?;

    // Hold a lock on the users table so a create waits inside the service.
    let admin = stack.db.admin_pool().await?;
    let mut blocker = admin.begin().await?;
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;

    let mut client = borough_proto::user::v1::user_service_client::UserServiceClient::new(
        borough_testkit::tls::channel(&user.grpc_url(0), "gateway", "user")?,
    );
    let mut request = tonic::Request::new(borough_proto::user::v1::CreateUserRequest {
        name: "Patient Pat".into(),
        email: "pat@example.com".into(),
    });
    borough_tenant::TenantContext::new(tenant.parse()?).write_metadata(request.metadata_mut());
    let call = tokio::spawn(async move { client.create_user(request).await });

    // Wait until the insert is blocked on the lock, then shut the service down.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&admin)
        .await?;
        if waiting > 0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the call never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    user.trigger_shutdown();
    borough_testkit::wait_for_status(
        &format!("{}/readyz", user.url(1)),
        503,
        Duration::from_secs(5),
    )
    .await
    .ok(); // The admin port may already be closing; the call's outcome is what counts.
    blocker.commit().await?;

    let reply = tokio::time::timeout(Duration::from_secs(10), call).await???;
    assert_eq!(
        reply.into_inner().user.map(|u| u.name).as_deref(),
        Some("Patient Pat")
    );
    tokio::time::timeout(Duration::from_secs(10), user.task).await???;
    Ok(())
}
