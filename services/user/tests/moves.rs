//! Crash safety of live tenant moves: the `borough-user` binary is killed (SIGKILL) while
//! a move stalls in a phase (`BOROUGH_MOVE_DRILL_STALL`), started again, and the move
//! finishes with nothing lost and nothing doubled; and a move to a database that cannot
//! be reached fails and leaves the tenant serving where it was.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use borough_proto::user::v1::tenant_admin_service_client::TenantAdminServiceClient;
use borough_proto::user::v1::user_service_client::UserServiceClient;
use borough_proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, ListUsersRequest, MoveTenantRequest, Placement,
    UpdateUserRequest,
};
use borough_tenant::{Placement as Where, TenantContext, TenantId};
use borough_testkit::TestDatabase;
use borough_testkit::pg::Login;
use borough_testkit::process::ServiceProcess;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_borough-user");

/// Seeded users per tenant.
const SEEDED: i64 = 1500;

async fn start_user(db: &TestDatabase, drill: Option<&str>) -> anyhow::Result<ServiceProcess> {
    start_user_with(db, drill, &[]).await
}

async fn start_user_with(
    db: &TestDatabase,
    drill: Option<&str>,
    extra: &[(&str, &str)],
) -> anyhow::Result<ServiceProcess> {
    let mut env = db.env_for(Login::User);
    for (k, v) in [
        ("BOROUGH_MOVE_BATCH_ROWS", "200"),
        ("BOROUGH_MOVE_GRACE", "1s"),
        ("BOROUGH_SHUTDOWN_GRACE", "0s"),
        ("BOROUGH_PROBE_INTERVAL", "100ms"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    if let Some(phase) = drill {
        env.push(("BOROUGH_MOVE_DRILL_STALL".to_owned(), phase.to_owned()));
    }
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let dir = Path::new(BIN).parent().context("the binary's directory")?;
    ServiceProcess::start(dir, "borough-user", "BOROUGH_GRPC_ADDR", None, &env).await
}

fn kill(process: &ServiceProcess) -> anyhow::Result<()> {
    let pid = process.pid().context("a running process")?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -KILL {pid}");
    Ok(())
}

struct Clients {
    admin: TenantAdminServiceClient<Channel>,
    users: UserServiceClient<Channel>,
}

fn clients(process: &ServiceProcess) -> anyhow::Result<Clients> {
    let channel = borough_testkit::tls::channel(&process.grpc_url(), "gateway", "user")?;
    Ok(Clients {
        admin: TenantAdminServiceClient::new(channel.clone()),
        users: UserServiceClient::new(channel),
    })
}

fn as_tenant<T>(tenant: TenantId, message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    TenantContext::new(tenant).write_metadata(request.metadata_mut());
    if let Some(key) = key
        && let Ok(value) = key.parse()
    {
        request
            .metadata_mut()
            .insert(borough_proto::IDEMPOTENCY_KEY, value);
    }
    request.set_timeout(Duration::from_secs(10));
    request
}

/// `SEEDED` users in the tenant's tables, written as an operator's SQL would.
async fn seed(db: &TestDatabase, tenant: TenantId, placement: Where) -> anyhow::Result<()> {
    let mut options: PgConnectOptions = db.admin_url.parse()?;
    let schema = match placement {
        Where::Shared => "public".to_owned(),
        Where::Schema => format!("t_{}", tenant.as_uuid().simple()),
        Where::Database => {
            options = options.database(&format!("t_{}", tenant.as_uuid().simple()));
            "borough".to_owned()
        }
    };
    let mut conn = options.connect().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('borough.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".users (tenant_id, id, name, email)
         SELECT $1, gen_random_uuid(), 'Seed ' || g, 'seed' || g || '@s.example'
           FROM generate_series(1, $2) g"
    )))
    .bind(tenant.as_uuid())
    .bind(SEEDED)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every user of the tenant, as the user service lists them: id -> version.
async fn list_all(clients: &mut Clients, tenant: TenantId) -> anyhow::Result<HashMap<String, i64>> {
    let mut users = HashMap::new();
    let mut token = String::new();
    loop {
        let page = clients
            .users
            .list_users(as_tenant(
                tenant,
                ListUsersRequest {
                    page_size: 100,
                    page_token: token,
                },
                None,
            ))
            .await?
            .into_inner();
        for user in page.users {
            anyhow::ensure!(
                users.insert(user.id.clone(), user.version).is_none(),
                "user {} listed twice",
                user.id
            );
        }
        if page.next_page_token.is_empty() {
            return Ok(users);
        }
        token = page.next_page_token;
    }
}

/// The move's phase and progress in the control database.
async fn phase(db: &TestDatabase, tenant: TenantId) -> anyhow::Result<(String, i64, i32)> {
    let admin = db.admin_pool().await?;
    let row: (String, i64, i32) = sqlx::query_as(
        "SELECT phase, rows_copied, catch_up_rounds FROM control.tenant_moves
          WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&admin)
    .await?;
    admin.close().await;
    Ok(row)
}

async fn wait_for(
    db: &TestDatabase,
    tenant: TenantId,
    what: &str,
    done: impl Fn(&(String, i64, i32)) -> bool,
) -> anyhow::Result<(String, i64, i32)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = phase(db, tenant).await?;
        if done(&seen) {
            return Ok(seen);
        }
        anyhow::ensure!(
            seen.0 != "failed" && seen.0 != "cancelled",
            "waiting for {what}: the move ended {seen:?}"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "waiting for {what}: still {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn to_proto(placement: Where) -> Placement {
    match placement {
        Where::Shared => Placement::Shared,
        Where::Schema => Placement::Schema,
        Where::Database => Placement::Database,
    }
}

/// Kills the user service while a `from` -> `to` move stalls in `stall`, starts it again,
/// and checks the move finishes with every acknowledged write there once.
async fn killed_while(stall: &str, from: Where, to: Where) -> anyhow::Result<()> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let tenant = db.provision_tenant(from).await?;
    seed(&db, tenant, from).await?;
    let process = start_user(&db, Some(stall)).await?;
    let mut c = clients(&process)?;
    // Keyed creates before the move: their records move too (a repeat is replayed, not
    // created again).
    let mut keyed = Vec::new();
    for i in 0..5 {
        let user = c
            .users
            .create_user(as_tenant(
                tenant,
                CreateUserRequest {
                    name: format!("Keyed {i}"),
                    email: format!("keyed{i}@k.example"),
                },
                Some(&format!("key-{i}")),
            ))
            .await?
            .into_inner()
            .user
            .context("a user")?;
        keyed.push(user.id);
    }
    c.admin
        .move_tenant(tonic::Request::new(MoveTenantRequest {
            tenant_id: tenant.to_string(),
            placement: to_proto(to) as i32,
            database_url: None,
            read_url: None,
        }))
        .await?;
    let stalled = wait_for(&db, tenant, stall, |(phase, copied, rounds)| {
        phase == stall
            && match stall {
                "copying" => *copied > 0,
                "catching_up" => *rounds > 0,
                _ => true,
            }
    })
    .await?;

    // Writes while it stalls: acknowledged ones must be there afterwards.
    let mut expected = list_all(&mut c, tenant).await?;
    if stall == "fenced" {
        // Give the drill a moment to have taken the fence, then: writes are held.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut request = as_tenant(
            tenant,
            CreateUserRequest {
                name: "Held".into(),
                email: "held@k.example".into(),
            },
            None,
        );
        request.set_timeout(Duration::from_millis(500));
        let held = c.users.create_user(request).await;
        assert!(held.is_err(), "a write went through the fence: {held:?}");
    } else {
        for i in 0..20 {
            let user = c
                .users
                .create_user(as_tenant(
                    tenant,
                    CreateUserRequest {
                        name: format!("During {i}"),
                        email: format!("during{i}@d.example"),
                    },
                    None,
                ))
                .await?
                .into_inner()
                .user
                .context("a user")?;
            expected.insert(user.id, user.version);
        }
        let some: Vec<String> = expected.keys().take(6).cloned().collect();
        for id in &some[..3] {
            let user = c
                .users
                .update_user(as_tenant(
                    tenant,
                    UpdateUserRequest {
                        id: id.clone(),
                        name: Some("Renamed".into()),
                        ..Default::default()
                    },
                    None,
                ))
                .await?
                .into_inner()
                .user
                .context("a user")?;
            expected.insert(user.id, user.version);
        }
        for id in &some[3..] {
            if keyed.contains(id) {
                continue;
            }
            c.users
                .delete_user(as_tenant(
                    tenant,
                    DeleteUserRequest {
                        id: id.clone(),
                        expected_version: None,
                    },
                    None,
                ))
                .await?;
            expected.remove(id);
        }
    }

    kill(&process)?;
    drop(process);
    eprintln!("killed in {stalled:?}");
    let process = start_user(&db, None).await?;
    let mut c = clients(&process)?;
    wait_for(&db, tenant, "done", |(phase, _, _)| phase == "done").await?;

    let after = list_all(&mut c, tenant).await?;
    assert_eq!(after.len(), expected.len(), "users after the move");
    for (id, version) in &expected {
        assert_eq!(after.get(id), Some(version), "user {id}");
    }
    // A keyed create repeated after the move is replayed: the same user, none added.
    let repeat = c
        .users
        .create_user(as_tenant(
            tenant,
            CreateUserRequest {
                name: "Keyed 0".into(),
                email: "keyed0@k.example".into(),
            },
            Some("key-0"),
        ))
        .await?;
    assert_eq!(
        repeat
            .metadata()
            .get(borough_proto::IDEMPOTENT_REPLAYED)
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        repeat.into_inner().user.map(|u| u.id),
        keyed.first().cloned()
    );
    assert_eq!(list_all(&mut c, tenant).await?.len(), expected.len());

    // The route is the target's, and no fence is left anywhere.
    let admin = db.admin_pool().await?;
    let placement: String =
        sqlx::query_scalar("SELECT placement FROM control.tenants WHERE id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&admin)
            .await?;
    assert_eq!(placement, to.as_str());
    let shared_left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.tenant_fences WHERE tenant_id = $1)
              + (SELECT count(*) FROM public.users WHERE tenant_id = $1)",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&admin)
    .await?;
    if to != Where::Shared {
        assert_eq!(
            shared_left, 0,
            "nothing of the tenant is left in the shared tables"
        );
    }
    // A write after the move lands where the tenant is now.
    c.users
        .create_user(as_tenant(
            tenant,
            CreateUserRequest {
                name: "After".into(),
                email: "after@a.example".into(),
            },
            None,
        ))
        .await?;
    assert_eq!(list_all(&mut c, tenant).await?.len(), expected.len() + 1);
    process.stop().await?;
    Ok(())
}

#[tokio::test]
async fn killed_mid_copy_a_move_copies_again_on_the_next_start_and_loses_nothing()
-> anyhow::Result<()> {
    killed_while("copying", Where::Shared, Where::Schema).await
}

#[tokio::test]
async fn killed_while_catching_up_a_move_starts_over_on_the_next_start_and_loses_nothing()
-> anyhow::Result<()> {
    killed_while("catching_up", Where::Schema, Where::Database).await
}

#[tokio::test]
async fn killed_with_the_source_fenced_a_move_is_compared_and_switched_on_the_next_start()
-> anyhow::Result<()> {
    killed_while("fenced", Where::Database, Where::Shared).await
}

#[tokio::test]
async fn killed_after_the_switch_a_move_still_removes_the_old_copy_on_the_next_start()
-> anyhow::Result<()> {
    killed_while("switched", Where::Shared, Where::Database).await
}

#[tokio::test]
async fn a_move_to_an_unreachable_database_fails_and_the_tenant_keeps_serving_where_it_was()
-> anyhow::Result<()> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let tenant = db.provision_tenant(Where::Shared).await?;
    seed(&db, tenant, Where::Shared).await?;
    let process = start_user(&db, None).await?;
    let mut c = clients(&process)?;
    // Nothing listens there.
    let port = borough_testkit::pg::free_port()?;
    let url = format!("postgres://someone:s3cret@127.0.0.1:{port}/elsewhere");
    let started = c
        .admin
        .move_tenant(tonic::Request::new(MoveTenantRequest {
            tenant_id: tenant.to_string(),
            placement: Placement::Database as i32,
            database_url: Some(url),
            read_url: None,
        }))
        .await?
        .into_inner()
        .r#move
        .context("a move")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let seen = c
            .admin
            .get_tenant_move(tonic::Request::new(
                borough_proto::user::v1::GetTenantMoveRequest {
                    tenant_id: tenant.to_string(),
                    move_id: started.id.clone(),
                },
            ))
            .await?
            .into_inner()
            .r#move
            .context("a move")?;
        if seen.phase == "failed" {
            break seen;
        }
        anyhow::ensure!(Instant::now() < deadline, "still {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("target"), "{error}");
    assert!(
        !error.contains("s3cret") && !error.contains("someone"),
        "{error}"
    );
    // Where it was, serving reads and writes.
    assert_eq!(list_all(&mut c, tenant).await?.len(), SEEDED as usize);
    c.users
        .create_user(as_tenant(
            tenant,
            CreateUserRequest {
                name: "Still".into(),
                email: "still@here.example".into(),
            },
            None,
        ))
        .await?;
    assert_eq!(list_all(&mut c, tenant).await?.len(), SEEDED as usize + 1);
    // And it can move again (the failed move finished).
    c.admin
        .move_tenant(tonic::Request::new(MoveTenantRequest {
            tenant_id: tenant.to_string(),
            placement: Placement::Schema as i32,
            database_url: None,
            read_url: None,
        }))
        .await?;
    wait_for(&db, tenant, "done", |(phase, _, _)| phase == "done").await?;
    assert_eq!(list_all(&mut c, tenant).await?.len(), SEEDED as usize + 1);
    process.stop().await?;
    Ok(())
}

#[tokio::test]
async fn copies_that_differ_fail_the_move_before_the_switch_and_the_tenant_stays_where_it_was()
-> anyhow::Result<()> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let tenant = db.provision_tenant(Where::Shared).await?;
    seed(&db, tenant, Where::Shared).await?;
    // A slow copy, so that the target can be tampered with half way.
    let process = start_user_with(&db, None, &[("BOROUGH_MOVE_BATCH_PAUSE", "300ms")]).await?;
    let mut c = clients(&process)?;
    c.admin
        .move_tenant(tonic::Request::new(MoveTenantRequest {
            tenant_id: tenant.to_string(),
            placement: Placement::Schema as i32,
            database_url: None,
            read_url: None,
        }))
        .await?;
    wait_for(&db, tenant, "copying", |(phase, copied, _)| {
        phase == "copying" && *copied > 0
    })
    .await?;
    // A row the source never had, written straight into the target's copy.
    let admin = db.admin_pool().await?;
    let mut tx = admin.begin().await?;
    sqlx::query("SELECT set_config('borough.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"t_{}\".users (tenant_id, id, name, email)
         VALUES ($1, gen_random_uuid(), 'Rogue', 'rogue@r.example')",
        tenant.as_uuid().simple()
    )))
    .bind(tenant.as_uuid())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let failed = wait_for(&db, tenant, "the end", |(phase, _, _)| {
        phase == "failed" || phase == "done"
    })
    .await;
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM control.tenant_moves WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&admin)
            .await?;
    assert!(
        failed.is_err() || failed.as_ref().is_ok_and(|f| f.0 == "failed"),
        "{failed:?}"
    );
    let error = error.unwrap_or_default();
    assert!(
        error.contains("differ") && error.contains("users"),
        "{error}"
    );
    // Where it was, all of it, and the target's copy removed.
    let placement: String =
        sqlx::query_scalar("SELECT placement FROM control.tenants WHERE id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&admin)
            .await?;
    assert_eq!(placement, "shared");
    assert_eq!(list_all(&mut c, tenant).await?.len(), SEEDED as usize);
    let schema_left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(format!("t_{}", tenant.as_uuid().simple()))
            .fetch_one(&admin)
            .await?;
    assert!(!schema_left, "the target's copy was removed");
    process.stop().await?;
    Ok(())
}
