//! Load shedding in front of a gRPC service: past its in-flight limit (and a zero-length
//! queue) a call is refused at once with UNAVAILABLE and a retry hint, while health checks
//! still answer.

use std::time::{Duration, Instant};

use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_proto::user::v1::{CreateUserRequest, UpdateUserRequest};
use borough_tenant::{Placement, TenantContext};
use borough_testkit::{TestDatabase, spawn};
use sqlx::Connection;

#[tokio::test]
async fn a_call_past_the_in_flight_limit_is_refused_at_once_with_a_retry_hint() -> anyhow::Result<()>
{
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let tenant = db.provision_tenant(Placement::Shared).await?;
    let settings = borough_user::Settings::from_env(&borough_testkit::tls::service_env(&[
        ("BOROUGH_DATABASE_URL", db.user_url.as_str()),
        ("BOROUGH_MAX_IN_FLIGHT", "1"),
        ("BOROUGH_MAX_QUEUE", "0"),
        ("BOROUGH_SHUTDOWN_GRACE", "0s"),
    ])?)?;
    let service = spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let api = l.remove(0);
        borough_user::serve(settings, borough_user::Listeners { api, admin }, shutdown)
    })
    .await?;
    let mut client = UserServiceClient::new(borough_testkit::tls::channel(
        &service.grpc_url(0),
        "gateway",
        "user",
    )?);
    let as_tenant = |message| {
        let mut request = tonic::Request::new(message);
        TenantContext::new(tenant).write_metadata(request.metadata_mut());
        request
    };
    let user = client
        .create_user(as_tenant(CreateUserRequest {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        }))
        .await?
        .into_inner()
        .user
        .unwrap_or_default();

    // Hold the row, so that an update waits on it and keeps the only slot busy.
    let mut holder = sqlx::PgConnection::connect(&db.admin_url).await?;
    let mut lock = holder.begin().await?;
    sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
        .bind(&user.id)
        .execute(&mut *lock)
        .await?;
    let mut busy_client = client.clone();
    let busy = tokio::spawn(async move {
        let mut request = tonic::Request::new(UpdateUserRequest {
            id: user.id.clone(),
            name: Some("Ada L".into()),
            ..Default::default()
        });
        TenantContext::new(tenant).write_metadata(request.metadata_mut());
        busy_client.update_user(request).await
    });
    // Once the update waits on the row (holding the only slot):
    let admin = db.admin_pool().await?;
    borough_testkit::wait_until(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&admin)
            .await?;
            Ok(waiting > 0)
        }
    })
    .await?;

    let started = Instant::now();
    let status = client
        .create_user(as_tenant(CreateUserRequest {
            name: "Alan".into(),
            email: "alan@example.com".into(),
        }))
        .await
        .expect_err("shed");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    // Health checks are never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        borough_testkit::tls::channel(&service.grpc_url(0), "query", "user")?,
    );
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;

    lock.rollback().await?;
    busy.await??;
    // The slot is free again.
    client
        .create_user(as_tenant(CreateUserRequest {
            name: "Alan".into(),
            email: "alan@example.com".into(),
        }))
        .await?;
    Ok(())
}
