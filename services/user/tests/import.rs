//! `UserService.ImportUsers` over real gRPC: chunked commits, and a chunk that fails while
//! PostgreSQL is down is reported whole and leaves nothing behind.

use std::time::Duration;

use borough_proto::user::v1::ImportUsersRequest;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_tenant::{Placement, TenantContext};
use borough_testkit::{TestDatabase, own_cluster, spawn};

fn row(line: u64) -> ImportUsersRequest {
    ImportUsersRequest {
        line,
        name: format!("User {line}"),
        email: format!("user{line}@example.com"),
    }
}

#[tokio::test]
async fn a_chunk_that_fails_midway_is_reported_whole_and_the_other_chunks_are_created()
-> anyhow::Result<()> {
    borough_telemetry::logging::init_test_logging();
    let mut cluster = own_cluster()?;
    let db = TestDatabase::create_on(&cluster).await?;
    let tenant = db.provision_tenant(Placement::Shared).await?;
    let settings = borough_user::Settings::from_env(&borough_testkit::tls::service_env(&[
        ("BOROUGH_DATABASE_URL", db.user_url.as_str()),
        ("BOROUGH_DB_ACQUIRE_TIMEOUT", "500ms"),
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

    // Rows 1..=500 (chunk 1) commit; then PostgreSQL stops for chunk 2 (501..=1000); it is
    // back for the last 200 rows (chunk 3).
    let (rows, rows_in) = tokio::sync::mpsc::channel(16);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rows_in));
    TenantContext::new(tenant).write_metadata(request.metadata_mut());
    let call = tokio::spawn(async move { client.import_users(request).await });
    let count = |db: TestDatabase| async move {
        let pool = db.admin_pool().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok::<i64, anyhow::Error>(n)
    };
    for line in 1..=500 {
        rows.send(row(line)).await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(db.clone()).await? < 500 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "chunk 1 never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.pause()?;
    for line in 501..=1000 {
        rows.send(row(line)).await?;
    }
    // Row 1000 completes chunk 2, whose insert now fails; let it, then bring PostgreSQL
    // back and wait out the router's fail-fast window before chunk 3.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume()?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for line in 1001..=1200 {
        rows.send(row(line)).await?;
    }
    drop(rows);
    let report = call.await??.into_inner();

    assert_eq!(report.received, 1200);
    assert_eq!(report.created, 700);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.failed_chunks.len(), 1, "{:?}", report.failed_chunks);
    let failed = &report.failed_chunks[0];
    assert_eq!(
        (failed.first_line, failed.last_line, failed.rows),
        (501, 1000, 500)
    );
    assert!(!failed.reason.is_empty());

    // Exactly chunks 1 and 3 are in the table: nothing of chunk 2.
    let pool = db.admin_pool().await?;
    let (total, from_failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE name ~ '^User ([5-9][0-9][0-9]|1000)$'
                                           AND name <> 'User 500')
           FROM users",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((total, from_failed), (700, 0));
    service.stop().await?;
    Ok(())
}
