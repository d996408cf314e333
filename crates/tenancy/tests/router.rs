//! The pool router against a real server: placement routing, the pool bound, per-tenant
//! caps, and route invalidation by LISTEN/NOTIFY.

use std::time::{Duration, Instant};

use borough_telemetry::Metrics;
use borough_tenancy::db::PoolSettings;
use borough_tenancy::{PoolRouter, RouteError, RouterSettings};
use borough_tenant::{Placement, TenantContext, TenantId};
use borough_testkit::TestDatabase;

type TestResult = anyhow::Result<()>;

fn router(db: &TestDatabase, settings: RouterSettings) -> anyhow::Result<PoolRouter> {
    let pool = borough_tenancy::db::lazy_pool(&db.user_url, &PoolSettings::default())?;
    Ok(PoolRouter::new(
        pool,
        db.user_url.parse()?,
        settings,
        &Metrics::new("test"),
    ))
}

/// The service's pool with a single connection: what a test sees is what the next caller
/// of that connection gets.
fn one_connection_pool(db: &TestDatabase) -> anyhow::Result<sqlx::PgPool> {
    Ok(borough_tenancy::db::lazy_pool(
        &db.user_url,
        &PoolSettings {
            max_connections: 1,
            ..PoolSettings::default()
        },
    )?)
}

/// A router over [`one_connection_pool`] (the pool returned too, to look behind it).
fn one_connection_router(db: &TestDatabase) -> anyhow::Result<(sqlx::PgPool, PoolRouter)> {
    let pool = one_connection_pool(db)?;
    let router = PoolRouter::new(
        pool.clone(),
        db.user_url.parse()?,
        RouterSettings::default(),
        &Metrics::new("test"),
    );
    Ok((pool, router))
}

/// `current_schema()` and `current_database()` inside a tenant's transaction.
async fn whereabouts(router: &PoolRouter, tenant: TenantId) -> anyhow::Result<(String, String)> {
    let mut tx = router.begin(&TenantContext::new(tenant)).await?;
    let here: (String, String) =
        sqlx::query_as("SELECT current_schema()::text, current_database()::text")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(here)
}

#[tokio::test]
async fn each_placement_is_routed_to_its_schema_and_database() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = router(&db, RouterSettings::default())?;
    let shared = db.provision_tenant(Placement::Shared).await?;
    let schema = db.provision_tenant(Placement::Schema).await?;
    let database = db.provision_tenant(Placement::Database).await?;
    let storage = |t: TenantId| format!("t_{}", t.as_uuid().simple());
    assert_eq!(
        whereabouts(&router, shared).await?,
        ("public".to_owned(), db.name.clone())
    );
    assert_eq!(
        whereabouts(&router, schema).await?,
        (storage(schema), db.name.clone())
    );
    assert_eq!(
        whereabouts(&router, database).await?,
        ("borough".to_owned(), storage(database))
    );
    assert_eq!(router.dedicated_pools_open(), 1);
    Ok(())
}

#[tokio::test]
async fn never_more_dedicated_pools_than_the_bound_and_every_tenant_is_served() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = router(
        &db,
        RouterSettings {
            max_tenant_pools: 2,
            ..RouterSettings::default()
        },
    )?;
    let mut tenants = Vec::new();
    for _ in 0..3 {
        tenants.push(db.provision_tenant(Placement::Database).await?);
    }
    for _round in 0..3 {
        for tenant in &tenants {
            let (_, database) = whereabouts(&router, *tenant).await?;
            assert_eq!(database, format!("t_{}", tenant.as_uuid().simple()));
            assert!(router.dedicated_pools_open() <= 2);
        }
    }
    assert_eq!(router.dedicated_pools_open(), 2);
    Ok(())
}

#[tokio::test]
async fn a_tenant_over_its_cap_is_refused_after_the_wait_and_others_are_not() -> TestResult {
    let db = TestDatabase::create().await?;
    let wait = Duration::from_millis(150);
    let router = router(
        &db,
        RouterSettings {
            tenant_max_connections: 2,
            tenant_acquire_timeout: wait,
            ..RouterSettings::default()
        },
    )?;
    let hot = TenantContext::new(db.provision_tenant(Placement::Shared).await?);
    let calm = TenantContext::new(db.provision_tenant(Placement::Schema).await?);
    let held = (router.begin(&hot).await?, router.begin_read(&hot).await?);

    let started = Instant::now();
    let refused = router.begin(&hot).await.err();
    assert!(started.elapsed() >= wait, "refused without waiting");
    assert!(
        matches!(refused, Some(RouteError::Busy { cap: 2, .. })),
        "{refused:?}"
    );

    // Another tenant, many at once: not one error.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let router = router.clone();
        calls.spawn(async move {
            let tx = router.begin(&calm).await?;
            tx.commit().await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(result) = calls.join_next().await {
        result??;
    }

    // A permit freed is a permit available.
    drop(held);
    router.begin(&hot).await?.commit().await?;
    Ok(())
}

#[tokio::test]
async fn a_tenant_suspended_in_the_control_database_is_refused_at_once_despite_the_cache()
-> TestResult {
    let db = TestDatabase::create().await?;
    // A route TTL far beyond the test: only the notification can explain a refusal.
    let router = router(
        &db,
        RouterSettings {
            route_ttl: Duration::from_secs(3600),
            ..RouterSettings::default()
        },
    )?;
    let tenant = db.provision_tenant(Placement::Shared).await?;
    let ctx = TenantContext::new(tenant);
    let admin = db.admin_pool().await?;
    // Once the listener has subscribed, cache the route.
    borough_testkit::wait_until(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database()
                    AND query LIKE '%LISTEN \"borough_tenant_changed\"%'",
            )
            .fetch_one(&admin)
            .await?;
            Ok(listening > 0)
        }
    })
    .await?;
    router.begin(&ctx).await?.commit().await?;

    sqlx::query("UPDATE control.tenants SET status = 'suspended' WHERE id = $1")
        .bind(tenant.as_uuid())
        .execute(&admin)
        .await?;
    let started = Instant::now();
    loop {
        match router.begin(&ctx).await {
            Err(RouteError::Inactive { .. }) => break,
            Ok(tx) => tx.commit().await?,
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "the cached route outlived the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_tenant_is_refused() -> TestResult {
    let db = TestDatabase::create().await?;
    let router = router(&db, RouterSettings::default())?;
    let err = router
        .begin(&TenantContext::new(TenantId::new_v7()))
        .await
        .err();
    assert!(matches!(err, Some(RouteError::UnknownTenant(_))), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_transaction_gets_the_remaining_deadline_as_its_statement_timeout() -> anyhow::Result<()>
{
    let db = borough_testkit::TestDatabase::create().await?;
    let router = PoolRouter::connect_lazy(&db.user_url)?;
    let tenant = db
        .provision_tenant(borough_tenant::Placement::Shared)
        .await?;
    let ctx = TenantContext::new(tenant).with_deadline(Some(
        std::time::Instant::now() + std::time::Duration::from_millis(400),
    ));
    let mut tx = router.begin(&ctx).await?;
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *tx)
        .await?;
    let ms: u64 = timeout.trim_end_matches("ms").parse()?;
    assert!(ms > 0 && ms <= 400, "statement_timeout {timeout}");
    let started = std::time::Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *tx)
        .await
        .expect_err("cancelled at the deadline");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        borough_tenancy::db::classify(&err),
        borough_error::ErrorKind::DeadlineExceeded
    );
    drop(tx);

    // No deadline: no statement timeout. A spent one: no transaction at all.
    let mut tx = router.begin(&TenantContext::new(tenant)).await?;
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(timeout, "0");
    drop(tx);
    let spent = TenantContext::new(tenant).with_deadline(Some(std::time::Instant::now()));
    assert!(matches!(
        router.begin(&spent).await,
        Err(borough_tenancy::RouteError::DeadlineExceeded)
    ));
    Ok(())
}

#[tokio::test]
async fn a_connection_killed_while_idle_is_replaced_without_an_error() -> TestResult {
    let db = TestDatabase::create().await?;
    let pool = one_connection_pool(&db)?;
    let (before,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    // A busy connection is not pinged: the same one serves the next call at once.
    let (again,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    assert_eq!(before, again);
    // The server ends the idle connection; once idle past the ping threshold, the pool
    // finds out before handing it out and opens another.
    let admin = db.admin_pool().await?;
    let (ended,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
        .bind(before)
        .fetch_one(&admin)
        .await?;
    assert!(ended);
    tokio::time::sleep(borough_tenancy::db::PING_AFTER_IDLE + Duration::from_millis(200)).await;
    let (after,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    assert_ne!(after, before);
    Ok(())
}

#[tokio::test]
async fn a_transaction_dropped_unfinished_is_rolled_back_before_its_connection_is_reused()
-> TestResult {
    let db = TestDatabase::create().await?;
    let (pool, router) = one_connection_router(&db)?;
    let tenant = db.provision_tenant(Placement::Shared).await?;
    let ctx = TenantContext::new(tenant);
    {
        let mut tx = router.begin(&ctx).await?;
        sqlx::query(
            "INSERT INTO users (tenant_id, id, name, email) VALUES ($1, $2, 'A', 'a@x.io')",
        )
        .bind(tenant.as_uuid())
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await?;
        // Dropped here, neither committed nor rolled back.
    }
    // The pool's only connection: its transaction ended (the scope, local to it, is gone).
    let (scope,): (Option<String>,) =
        sqlx::query_as("SELECT NULLIF(current_setting('borough.tenant_id', true), '')")
            .fetch_one(&pool)
            .await?;
    assert_eq!(scope, None, "the tenant scope outlived its transaction");
    let mut tx = router.begin_read(&ctx).await?;
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(rows, 0, "the dropped transaction's insert was kept");
    // A read-only transaction refuses writes, and ends cleanly after the error.
    let refused = sqlx::query("DELETE FROM users").execute(&mut *tx).await;
    assert!(refused.is_err());
    tx.rollback().await?;
    let mut tx = router.begin(&ctx).await?;
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn a_one_trip_read_is_scoped_read_only_and_bounded_by_the_deadline() -> TestResult {
    let db = TestDatabase::create().await?;
    let (pool, router) = one_connection_router(&db)?;
    let (a, b) = (
        db.provision_tenant(Placement::Shared).await?,
        db.provision_tenant(Placement::Shared).await?,
    );
    let id = uuid::Uuid::now_v7();
    let mut tx = router.begin(&TenantContext::new(a)).await?;
    sqlx::query("INSERT INTO users (tenant_id, id, name, email) VALUES ($1, $2, 'A', 'a@x.io')")
        .bind(a.as_uuid())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // No tenant filter in the statement: row-level security scopes it.
    let by_id = "SELECT id FROM users WHERE id = $1";
    let rows = router
        .read_one_trip(&TenantContext::new(a), by_id, &[id])
        .await?;
    let found: Vec<uuid::Uuid> = rows
        .iter()
        .map(|r| sqlx::Row::try_get(r, 0))
        .collect::<Result<_, _>>()?;
    assert_eq!(found, vec![id]);
    let rows = router
        .read_one_trip(&TenantContext::new(b), by_id, &[id])
        .await?;
    assert!(rows.is_empty(), "tenant b saw tenant a's user");

    // Read-only: a write is refused, and nothing of it stays.
    let refused = router
        .read_one_trip(
            &TenantContext::new(a),
            "DELETE FROM users RETURNING id",
            &[],
        )
        .await;
    assert!(refused.is_err(), "a write ran in a one-trip read");
    // The connection (the pool's only one) keeps no scope and no transaction afterwards.
    let (scope,): (Option<String>,) =
        sqlx::query_as("SELECT NULLIF(current_setting('borough.tenant_id', true), '')")
            .fetch_one(&pool)
            .await?;
    assert_eq!(scope, None);
    let rows = router
        .read_one_trip(&TenantContext::new(a), "SELECT count(*) FROM users", &[])
        .await?;
    let count: i64 = sqlx::Row::try_get(&rows[0], 0)?;
    assert_eq!(count, 1);

    // Each placement lands in its schema and database.
    for placement in [Placement::Schema, Placement::Database] {
        let tenant = db.provision_tenant(placement).await?;
        let rows = router
            .read_one_trip(
                &TenantContext::new(tenant),
                "SELECT current_schema()::text, current_database()::text",
                &[],
            )
            .await?;
        let (schema, database): (String, String) = sqlx::FromRow::from_row(&rows[0])?;
        let (in_tx_schema, in_tx_database) = whereabouts(&router, tenant).await?;
        assert_eq!((schema, database), (in_tx_schema, in_tx_database));
    }

    // The remaining deadline bounds the statement.
    let ctx =
        TenantContext::new(a).with_deadline(Some(Instant::now() + Duration::from_millis(300)));
    let started = Instant::now();
    let err = router
        .read_one_trip(&ctx, "SELECT pg_sleep(5)", &[])
        .await
        .expect_err("cancelled at the deadline");
    assert!(started.elapsed() < Duration::from_secs(1));
    match err {
        RouteError::Database(e) => assert_eq!(
            borough_tenancy::db::classify(&e),
            borough_error::ErrorKind::DeadlineExceeded
        ),
        other => panic!("expected a cancelled statement, got {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_tenant_function_call_is_scoped_to_its_tenant_and_its_parked_connection_serves_others_at_once()
-> TestResult {
    let db = TestDatabase::create().await?;
    // Two connections: one may be parked after a call.
    let pool = borough_tenancy::db::lazy_pool(
        &db.user_url,
        &PoolSettings {
            max_connections: 2,
            ..PoolSettings::default()
        },
    )?;
    let router = PoolRouter::new(
        pool.clone(),
        db.user_url.parse()?,
        RouterSettings::default(),
        &Metrics::new("test"),
    );
    let a = db.provision_tenant(Placement::Shared).await?;
    let b = db.provision_tenant(Placement::Shared).await?;
    let count = |tenant: TenantId| {
        let router = router.clone();
        async move {
            let mut tx = router.begin(&TenantContext::new(tenant)).await?;
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            anyhow::Ok(seen)
        }
    };
    assert_eq!(count(b).await?, 0);
    let create = |tenant: TenantId, id: uuid::Uuid, email: &'static str| {
        let router = router.clone();
        async move {
            let ctx = TenantContext::new(tenant)
                .with_deadline(Some(Instant::now() + Duration::from_secs(5)));
            router
                .call_tenant_function::<(uuid::Uuid, String, String, i64)>(
                    &ctx,
                    false,
                    "create_user($1, $2, $3, $4, $5)",
                    move |q| {
                        q.bind(id)
                            .bind("Ada".to_owned())
                            .bind(email.to_owned())
                            .bind("5000ms".to_owned())
                    },
                )
                .await
        }
    };
    let id = uuid::Uuid::now_v7();
    let created = create(a, id, "ada@x.io").await?;
    assert_eq!(
        created.map(|(id, _, email, version)| (id, email, version)),
        Some((id, "ada@x.io".to_owned(), 1))
    );

    // The call's connection is parked; with the pool's other one held elsewhere, a
    // transaction still gets a connection at once — the parked one — and it carries no
    // tenant scope (tenant b sees nothing of a's).
    let held = pool.acquire().await?;
    let started = Instant::now();
    assert_eq!(count(b).await?, 0, "tenant b saw tenant a's user");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the transaction waited for the parked connection: {:?}",
        started.elapsed()
    );
    drop(held);
    assert_eq!(count(a).await?, 1);

    // A failed call (the email taken) reports the constraint and writes nothing.
    match create(a, uuid::Uuid::now_v7(), "ada@x.io").await {
        Err(RouteError::Database(e)) => {
            assert_eq!(
                borough_tenancy::db::constraint(&e),
                Some("users_tenant_email")
            );
        }
        other => anyhow::bail!("expected a unique violation, got {:?}", other.map(|_| ())),
    }

    // A parked connection goes back to the pool once it has waited a second unused (the
    // other one held meanwhile, so the pool's idle connection can only be the parked one).
    let held = pool.acquire().await?;
    create(b, uuid::Uuid::now_v7(), "bob@x.io").await?;
    assert_eq!(pool.num_idle(), 0, "the call's connection was not parked");
    let started = Instant::now();
    while pool.num_idle() == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "the parked connection never went back to the pool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);

    // Closing the pool (a service shutting down) gets the parked connection back at once:
    // the close, which waits for every checked-out connection, does not wait a second.
    create(b, uuid::Uuid::now_v7(), "bo@x.io").await?;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_millis(500), pool.close())
        .await
        .map_err(|_| anyhow::anyhow!("the close waited for the parked connection"))?;
    assert!(started.elapsed() < Duration::from_millis(500));
    Ok(())
}
