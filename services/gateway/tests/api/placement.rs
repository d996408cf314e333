//! Placement end to end: shared, schema and database tenants side by side, their
//! isolation, where their rows land, the pool bound, the per-tenant cap, provisioning
//! failures and recovery, and deletion.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::support::{ADMIN_TOKEN, Stack, assert_problem};

const PLACEMENTS: [&str; 3] = ["shared", "schema", "database"];

fn simple(id: &str) -> anyhow::Result<String> {
    Ok(uuid::Uuid::parse_str(id)?.simple().to_string())
}

#[tokio::test]
async fn no_tenant_in_any_placement_can_reach_another_placements_users() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // An owner (A) and an intruder (B) in each placement.
    let mut owners = Vec::new();
    for placement in PLACEMENTS {
        let (_, key) = stack
            .create_tenant_in(&format!("a-{placement}"), placement)
            .await?;
        let user = stack
            .create_user(&key, "Ada", &format!("ada@{placement}.example"))
            .await?;
        owners.push((placement, key, user));
    }
    let mut intruders = Vec::new();
    for placement in PLACEMENTS {
        let (_, key) = stack
            .create_tenant_in(&format!("b-{placement}"), placement)
            .await?;
        intruders.push((placement, key));
    }

    for (a_placement, _, user) in &owners {
        let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
        for (b_placement, key_b) in &intruders {
            let pair = format!("{b_placement} -> {a_placement}");
            let get = stack.http.get(stack.url(&path)).bearer_auth(key_b);
            assert_eq!(get.send().await?.status(), 404, "get {pair}");
            for request in [
                stack
                    .http
                    .patch(stack.url(&path))
                    .json(&json!({ "name": "pwned" })),
                stack
                    .http
                    .patch(stack.url(&path))
                    .header("if-match", "\"1\"")
                    .json(&json!({ "email": "b@evil.test" })),
                stack.http.delete(stack.url(&path)),
            ] {
                let response = request.bearer_auth(key_b).send().await?;
                assert_eq!(response.status(), 404, "write {pair}");
            }
            let list: Value = stack
                .http
                .get(stack.url("/api/v1/users"))
                .bearer_auth(key_b)
                .send()
                .await?
                .json()
                .await?;
            assert_eq!(list["items"], json!([]), "list {pair}");
        }
    }

    // Every owner's user is exactly as created.
    for (placement, key, user) in &owners {
        let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
        let current: Value = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(&current, user, "{placement} owner's user changed");
    }
    Ok(())
}

#[tokio::test]
async fn schema_and_database_tenants_rows_live_only_in_their_own_schema_or_database()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (schema_id, schema_key) = stack.create_tenant_in("in-schema", "schema").await?;
    let (db_id, db_key) = stack.create_tenant_in("in-database", "database").await?;
    stack
        .create_user(&schema_key, "Sam", "sam@example.com")
        .await?;
    stack.create_user(&db_key, "Dee", "dee@example.com").await?;

    // The superuser sees past RLS: the shared tables hold neither tenant's rows.
    let mut main = PgConnection::connect(&stack.db.admin_url).await?;
    let in_shared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.users WHERE tenant_id = ANY($1::uuid[])")
            .bind(vec![
                uuid::Uuid::parse_str(&schema_id)?,
                uuid::Uuid::parse_str(&db_id)?,
            ])
            .fetch_one(&mut main)
            .await?;
    assert_eq!(in_shared, 0);
    let all_shared: i64 = sqlx::query_scalar("SELECT count(*) FROM public.users")
        .fetch_one(&mut main)
        .await?;
    assert_eq!(all_shared, 0);

    // The schema tenant's row is in its schema, and only there.
    let schema = format!("t_{}", simple(&schema_id)?);
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id::text, email FROM \"{schema}\".users"
    )))
    .fetch_all(&mut main)
    .await?;
    assert_eq!(
        rows,
        vec![(schema_id.clone(), "sam@example.com".to_owned())]
    );

    // The database tenant has no schema on the main database; its row is in its database.
    let database = format!("t_{}", simple(&db_id)?);
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&database)
        .fetch_one(&mut main)
        .await?;
    assert_eq!(schemas, 0);
    let cluster = borough_testkit::cluster()?;
    let mut own = PgConnection::connect(&cluster.superuser_url(&database)).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id::text, email FROM borough.users")
            .fetch_all(&mut own)
            .await?;
    assert_eq!(rows, vec![(db_id.clone(), "dee@example.com".to_owned())]);
    let public_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'users'",
    )
    .fetch_one(&mut own)
    .await?;
    assert_eq!(
        public_tables, 0,
        "the dedicated database has no shared tables"
    );
    Ok(())
}

#[tokio::test]
async fn with_two_tenant_pools_allowed_three_database_tenants_in_turn_all_succeed()
-> anyhow::Result<()> {
    let stack = Stack::builder()
        .services(&[("BOROUGH_MAX_TENANT_POOLS", "2")])
        .start()
        .await?;
    let mut tenants = Vec::new();
    for i in 0..3 {
        let (_, key) = stack
            .create_tenant_in(&format!("db-{i}"), "database")
            .await?;
        tenants.push(key);
    }
    let mut max_seen = 0.0_f64;
    for round in 0..3 {
        for (i, key) in tenants.iter().enumerate() {
            let user = stack
                .create_user(key, "Pat", &format!("pat{round}@{i}.example"))
                .await?;
            let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
            let response = stack
                .http
                .get(stack.url(&path))
                .bearer_auth(key)
                .send()
                .await?;
            assert_eq!(response.status(), 200, "round {round}, tenant {i}");
            let list = stack.http.get(stack.url("/api/v1/users")).bearer_auth(key);
            assert_eq!(list.send().await?.status(), 200);
            for service in [stack.user(), stack.query()] {
                let open = stack.metric(service, "borough_tenant_pools_open").await?;
                max_seen = max_seen.max(open);
                assert!(open <= 2.0, "{open} dedicated pools open");
            }
        }
    }
    assert_eq!(max_seen, 2.0, "the pools were never used up to the bound");
    let closes = stack
        .metric(stack.user(), "borough_tenant_pool_closes_total")
        .await?;
    assert!(closes >= 1.0, "no pool was closed to stay under the bound");
    Ok(())
}

#[tokio::test]
async fn a_tenant_at_its_connection_cap_gets_503_while_another_tenant_is_unaffected()
-> anyhow::Result<()> {
    let stack = Stack::builder()
        .services(&[
            ("BOROUGH_TENANT_MAX_CONNECTIONS", "1"),
            ("BOROUGH_TENANT_ACQUIRE_TIMEOUT", "200ms"),
        ])
        .start()
        .await?;
    let (_, hot) = stack.create_tenant("hot").await?;
    let (_, calm) = stack.create_tenant("calm").await?;
    let user = stack.create_user(&hot, "Hal", "hal@example.com").await?;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/api/v1/users/{id}");

    // Hold the row: the hot tenant's update waits on it, holding its only connection.
    let mut lock = PgConnection::connect(&stack.db.admin_url).await?;
    let mut tx = lock.begin().await?;
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(uuid::Uuid::parse_str(&id)?)
        .execute(&mut *tx)
        .await?;
    let blocked = tokio::spawn({
        let request = stack
            .http
            .patch(stack.url(&path))
            .bearer_auth(&hot)
            .json(&json!({ "name": "Hal 2" }));
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    // Wait until the update holds the hot tenant's permit (it waits on the row lock).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1",
        )
        .bind(&stack.db.name)
        .fetch_one(&stack.db.admin_pool().await?)
        .await?;
        if waiting > 0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the update never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The hot tenant's next call on the same service waits 200ms for its cap, then gets
    // 503 + Retry-After.
    let response = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&hot)
        .json(&json!({ "name": "Hot", "email": "hot2@example.com" }))
        .send()
        .await?;
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, 503).await?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("connections")),
        "{problem}"
    );
    // Caps are per service replica (each has its own pools): the query service, where
    // the hot tenant holds nothing, still serves it.
    let response = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(&hot)
        .send()
        .await?;
    assert_eq!(response.status(), 200);

    // Meanwhile the calm tenant's error rate is zero.
    for i in 0..20 {
        let created = stack
            .http
            .post(stack.url("/api/v1/users"))
            .bearer_auth(&calm)
            .json(&json!({ "name": "Cal", "email": format!("cal{i}@example.com") }))
            .send()
            .await?;
        assert_eq!(created.status(), 201, "calm request {i}");
        let list = stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(&calm);
        assert_eq!(list.send().await?.status(), 200, "calm list {i}");
    }

    // Release the row: the held update completes, and the hot tenant is served again.
    tx.rollback().await?;
    assert_eq!(blocked.await??, 200);
    let response = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(&hot)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let rejections = stack
        .metric(stack.user(), "borough_tenant_connection_rejections_total")
        .await?;
    assert!(rejections >= 1.0);
    Ok(())
}

/// A port nothing listens on.
async fn closed_port() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(port)
}

#[tokio::test]
async fn an_unreachable_database_url_leaves_the_tenant_provisioning_failed_and_a_retry_finishes()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    const PASSWORD: &str = "s3cret-never-echoed";
    let port = closed_port().await?;
    let broken = format!("postgres://borough_service:{PASSWORD}@127.0.0.1:{port}/elsewhere");
    let response = stack
        .http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "remote", "placement": "database", "database_url": broken }))
        .send()
        .await?;
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, 503).await?;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("provisioning_failed"), "{problem}");
    assert!(detail.contains("could not connect"), "{problem}");
    assert!(!problem.to_string().contains(PASSWORD), "{problem}");

    let listed: Value = stack
        .http
        .get(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let tenant = &listed["items"][0];
    assert_eq!(tenant["name"], "remote");
    assert_eq!(tenant["status"], "provisioning_failed");
    assert!(
        tenant["failure_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(!listed.to_string().contains(PASSWORD));
    let id = tenant["id"].as_str().unwrap_or_default().to_owned();

    // Fix it: a real database the service role may build in; send the same request with
    // the corrected URL (and a read replica URL: here, the same database).
    let cluster = borough_testkit::cluster()?;
    let database = format!("remote_{}", simple(&id)?);
    let mut admin = PgConnection::connect(&cluster.superuser_url("postgres")).await?;
    for statement in [
        format!("CREATE DATABASE {database}"),
        format!(
            "GRANT CREATE ON DATABASE {database} TO {}",
            borough_testkit::pg::Login::User.role()
        ),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    // The operator's URL: here the user service's own login (any login will do).
    let fixed = cluster.login_url(borough_testkit::pg::Login::User, &database);
    let response = stack
        .http
        .post(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "name": "remote", "placement": "database",
            "database_url": fixed, "read_url": fixed,
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await?;
    assert_eq!(
        created["tenant"]["id"],
        id.as_str(),
        "the same tenant, finished"
    );
    assert_eq!(created["tenant"]["status"], "active");
    assert_eq!(created["tenant"]["external_database"], true);
    assert_eq!(created["tenant"]["read_replica"], true);
    assert!(
        !created
            .to_string()
            .contains(cluster.password(borough_testkit::pg::Login::User))
    );
    let key = created["api_key"]["key"].as_str().unwrap_or_default();
    // Stored sealed, bound to the row; only the location in clear.
    let password = cluster.password(borough_testkit::pg::Login::User);
    let (stored, stored_read, location): (String, String, String) = sqlx::query_as(
        "SELECT database_url, read_url, database_location FROM control.tenants WHERE id = $1::uuid",
    )
    .bind(id.as_str())
    .fetch_one(&stack.db.admin_pool().await?)
    .await?;
    for value in [&stored, &stored_read] {
        assert!(value.starts_with("enc:v1:test1:"), "{value}");
        assert!(!value.contains(password) && !value.contains("borough_user"));
    }
    assert_eq!(
        location,
        format!("postgres://127.0.0.1:{}/{database}", cluster.port)
    );

    // It works, and its rows are in the database it was given (the query service reads
    // them with its own login at that location: it never sees the URL).
    let user = stack.create_user(key, "Rem", "rem@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
    let response = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let mut own = PgConnection::connect(&cluster.superuser_url(&database)).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM borough.users")
        .fetch_one(&mut own)
        .await?;
    assert_eq!(count, 1);
    Ok(())
}

#[tokio::test]
async fn bad_placements_urls_and_duplicate_names_are_rejected_with_problems() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let create = |body: Value| {
        stack
            .http
            .post(stack.url("/admin/v1/tenants"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let problem = assert_problem(
        create(json!({ "name": "x", "placement": "rls" })).await?,
        400,
    )
    .await?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("rls")),
        "{problem}"
    );
    for (body, needle) in [
        (
            json!({ "name": "x", "placement": "database", "database_url": "localhost:5432" }),
            "database_url",
        ),
        (
            json!({ "name": "x", "placement": "database", "database_url": "mysql://u:hunter2@h/db" }),
            "database_url",
        ),
        (
            json!({ "name": "x", "placement": "shared", "database_url": "postgres://u:hunter2@h/db" }),
            "only for placement",
        ),
        (
            json!({ "name": "x", "placement": "database", "read_url": "postgres://u:hunter2@h/db" }),
            "read_url",
        ),
    ] {
        let problem = assert_problem(create(body.clone()).await?, 400).await?;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{body}: {problem}");
        assert!(!problem.to_string().contains("hunter2"), "{problem}");
    }
    for placement in PLACEMENTS {
        stack
            .create_tenant_in(&format!("dup-{placement}"), placement)
            .await?;
        for again in PLACEMENTS {
            let body = json!({ "name": format!("dup-{placement}"), "placement": again });
            assert_problem(create(body).await?, 409).await?;
        }
    }
    // Nothing half-made was left behind by the rejected requests.
    let listed: Value = stack
        .http
        .get(stack.url("/admin/v1/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
    Ok(())
}

#[tokio::test]
async fn deleting_a_tenant_suspends_it_and_purging_removes_its_schema_or_database()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut main = PgConnection::connect(&stack.db.admin_url).await?;
    for placement in PLACEMENTS {
        let (id, key) = stack
            .create_tenant_in(&format!("gone-{placement}"), placement)
            .await?;
        stack.create_user(&key, "Del", "del@example.com").await?;
        let tenant_path = format!("/admin/v1/tenants/{id}");

        // Suspend: 200, the key stops at once, the data stays.
        let response = stack
            .http
            .delete(stack.url(&tenant_path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{placement}");
        let body: Value = response.json().await?;
        assert_eq!(body["status"], "suspended");
        let response = stack
            .http
            .get(stack.url("/api/v1/users"))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_problem(response, 401).await?;

        // Purge: 204, then the tenant, its rows, its schema or database are gone.
        let response = stack
            .http
            .delete(stack.url(&format!("{tenant_path}?purge=true")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        assert_eq!(response.status(), 204, "{placement}");
        let response = stack
            .http
            .get(stack.url(&tenant_path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        assert_problem(response, 404).await?;
        let storage = format!("t_{}", simple(&id)?);
        let (rows, schemas, databases): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM public.users WHERE tenant_id = $1::uuid),
                    (SELECT count(*) FROM pg_namespace WHERE nspname = $2),
                    (SELECT count(*) FROM pg_database WHERE datname = $2)",
        )
        .bind(&id)
        .bind(&storage)
        .fetch_one(&mut main)
        .await?;
        assert_eq!((rows, schemas, databases), (0, 0, 0), "{placement}");
        // Purging again finds nothing: 404.
        let response = stack
            .http
            .delete(stack.url(&format!("{tenant_path}?purge=true")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        assert_problem(response, 404).await?;
    }
    Ok(())
}

#[tokio::test]
async fn tenants_are_found_by_a_name_prefix_in_any_case_with_like_wildcards_taken_literally()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for name in ["alpha-one", "alpha-two", "alphax", "beta"] {
        stack.create_tenant(name).await?;
    }
    let names = |q: &'static str| {
        let stack = &stack;
        async move {
            let response = stack
                .http
                .get(stack.url(&format!("/admin/v1/tenants?limit=100&q={q}")))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?;
            anyhow::ensure!(response.status() == 200, "{q}: {}", response.status());
            let page: Value = response.json().await?;
            let mut names: Vec<String> = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect();
            names.sort();
            Ok::<_, anyhow::Error>(names)
        }
    };
    assert_eq!(names("ALPHA").await?, ["alpha-one", "alpha-two", "alphax"]);
    assert_eq!(names("alpha-").await?, ["alpha-one", "alpha-two"]);
    // `_` is a character, not LIKE's any-one (no name has one); `%` (sent as %25) finds
    // nothing either.
    assert!(names("alpha_").await?.is_empty());
    assert!(names("%25").await?.is_empty());
    assert_eq!(names("").await?.len(), 4, "every tenant");
    for bad in ["a%07b".to_owned(), "x".repeat(129)] {
        let response = stack
            .http
            .get(stack.url(&format!("/admin/v1/tenants?q={bad}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        assert_problem(response, 400).await?;
    }
    Ok(())
}
