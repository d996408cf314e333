//! `QueryService` over real gRPC: the bidirectional batch answers each id as it arrives,
//! and the server stream exports in id order.

use borough_proto::query::v1::batch_get_users_response::Result as BatchResult;
use borough_proto::query::v1::query_service_client::QueryServiceClient;
use borough_proto::query::v1::{BatchGetUsersRequest, ExportUsersRequest, SearchUsersRequest};
use borough_tenant::{Placement, TenantContext, TenantId};
use borough_testkit::{Spawned, TestDatabase, spawn};
use uuid::Uuid;

async fn start() -> anyhow::Result<(TestDatabase, Spawned)> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let settings = borough_query::Settings::from_env(&borough_testkit::tls::service_env(&[
        ("BOROUGH_DATABASE_URL", db.query_url.as_str()),
        ("BOROUGH_SHUTDOWN_GRACE", "0s"),
    ])?)?;
    let service = spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let api = l.remove(0);
        borough_query::serve(settings, borough_query::Listeners { api, admin }, shutdown)
    })
    .await?;
    Ok((db, service))
}

/// Inserts users into a schema tenant's table.
async fn seed(db: &TestDatabase, tenant: TenantId, count: i64) -> anyhow::Result<Vec<Uuid>> {
    let pool = db.admin_pool().await?;
    let schema = format!("t_{}", tenant.as_uuid().simple());
    let ids = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".users (tenant_id, id, name, email)
         SELECT $1, gen_random_uuid(), 'User ' || n, 'user' || n || '@example.com'
           FROM generate_series(1, $2) AS n
         RETURNING id"
    )))
    .bind(tenant.as_uuid())
    .bind(count)
    .fetch_all(&pool)
    .await?;
    Ok(ids)
}

fn scoped<T>(tenant: TenantId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    TenantContext::new(tenant).write_metadata(request.metadata_mut());
    request
}

#[tokio::test]
async fn batch_get_answers_each_id_before_the_next_is_sent() -> anyhow::Result<()> {
    let (db, service) = start().await?;
    let tenant = db.provision_tenant(Placement::Schema).await?;
    let ids = seed(&db, tenant, 3).await?;
    let mut client = QueryServiceClient::new(borough_testkit::tls::channel(
        &service.grpc_url(0),
        "gateway",
        "query",
    )?);
    let (ids_out, ids_in) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .batch_get_users(scoped(
            tenant,
            tokio_stream::wrappers::ReceiverStream::new(ids_in),
        ))
        .await?
        .into_inner();
    // One id in, its answer out, while the request stream is still open.
    let asked: Vec<String> = ids
        .iter()
        .map(Uuid::to_string)
        .chain([Uuid::now_v7().to_string()])
        .collect();
    for (index, id) in asked.iter().enumerate() {
        ids_out
            .send(BatchGetUsersRequest {
                user_id: id.clone(),
            })
            .await?;
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no reply"))?;
        assert_eq!(reply.index as usize, index);
        assert_eq!(&reply.user_id, id);
        match reply.result {
            Some(BatchResult::User(user)) => assert_eq!(&user.id, id),
            Some(BatchResult::Error(e)) => assert_eq!(index, 3, "only the unknown id fails: {e:?}"),
            None => anyhow::bail!("an empty result"),
        }
    }
    drop(ids_out);
    assert!(
        replies.message().await?.is_none(),
        "the stream ends with the requests"
    );
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn export_streams_every_user_in_id_order_and_search_caps_its_page() -> anyhow::Result<()> {
    let (db, service) = start().await?;
    let tenant = db.provision_tenant(Placement::Database).await?;
    // Database tenants' rows go to their own database: seed there.
    let cluster = borough_testkit::cluster()?;
    let own = TestDatabase {
        name: format!("t_{}", tenant.as_uuid().simple()),
        admin_url: cluster.superuser_url(&format!("t_{}", tenant.as_uuid().simple())),
        user_url: String::new(),
        query_url: String::new(),
        config_url: String::new(),
    };
    let pool = own.admin_pool().await?;
    sqlx::query(
        "INSERT INTO borough.users (tenant_id, id, name, email)
         SELECT $1, gen_random_uuid(), 'User ' || n, 'user' || n || '@example.com'
           FROM generate_series(1, 1234) AS n",
    )
    .bind(tenant.as_uuid())
    .execute(&pool)
    .await?;
    let mut client = QueryServiceClient::new(borough_testkit::tls::channel(
        &service.grpc_url(0),
        "gateway",
        "query",
    )?);
    let mut stream = client
        .export_users(scoped(tenant, ExportUsersRequest {}))
        .await?
        .into_inner();
    let mut ids = Vec::new();
    while let Some(user) = stream.message().await? {
        ids.push(user.id);
    }
    assert_eq!(ids.len(), 1234);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let page = client
        .search_users(scoped(
            tenant,
            SearchUsersRequest {
                query: "user1".into(),
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert_eq!(page.users.len(), 100, "page_size is capped at 100");
    assert!(!page.next_page_token.is_empty());
    service.stop().await?;
    Ok(())
}
