//! The read side end to end: search, export, import and batchGet through the gateway in
//! every placement, the cache's single flight and invalidation, and degradation while
//! PostgreSQL is down.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{Stack, assert_problem};

const PLACEMENTS: [&str; 3] = ["shared", "schema", "database"];

async fn get_json(stack: &Stack, key: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = stack
        .http
        .get(stack.url(path))
        .bearer_auth(key)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|u| u["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn import(stack: &Stack, key: &str, body: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http
        .post(stack.url("/api/v1/users:import"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body.to_owned())
        .send()
        .await?)
}

#[tokio::test]
async fn search_export_import_and_batch_get_work_in_every_placement() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for placement in PLACEMENTS {
        let (_, key) = stack
            .create_tenant_in(&format!("reads-{placement}"), placement)
            .await?;
        let ada = stack
            .create_user(&key, "Ada Lovelace", "ada@example.com")
            .await?;
        let alan = stack
            .create_user(&key, "Alan Turing", "alan@example.com")
            .await?;
        let grace = stack
            .create_user(&key, "Grace Hopper", "hopper@navy.example")
            .await?;

        // Search: name or email prefix, any case; `%` is literal; time range; paging.
        let (status, page) = get_json(&stack, &key, "/api/v1/users?q=a").await?;
        assert_eq!(status, 200, "{placement}");
        assert_eq!(names(&page), ["Ada Lovelace", "Alan Turing"], "{placement}");
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=HOP").await?;
        assert_eq!(names(&page), ["Grace Hopper"], "{placement}: email prefix");
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=gra").await?;
        assert_eq!(names(&page), ["Grace Hopper"], "{placement}: name prefix");
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=%25").await?;
        assert_eq!(
            names(&page),
            Vec::<String>::new(),
            "{placement}: % is literal"
        );
        let after = ada["created_at"]
            .as_str()
            .unwrap_or_default()
            .replace('+', "%2B");
        let (_, page) = get_json(
            &stack,
            &key,
            &format!("/api/v1/users?created_after={after}"),
        )
        .await?;
        assert_eq!(
            names(&page),
            ["Alan Turing", "Grace Hopper"],
            "{placement}: created_after"
        );
        let before = grace["created_at"].as_str().unwrap_or_default();
        let (_, page) = get_json(
            &stack,
            &key,
            &format!("/api/v1/users?created_after={after}&created_before={before}"),
        )
        .await?;
        assert_eq!(names(&page), ["Alan Turing"], "{placement}: range");
        let mut seen = Vec::new();
        let mut path = "/api/v1/users?limit=1".to_owned();
        loop {
            let (_, page) = get_json(&stack, &key, &path).await?;
            seen.extend(names(&page));
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/users?limit=1&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["Ada Lovelace", "Alan Turing", "Grace Hopper"],
            "{placement}"
        );
        for bad in [
            "created_after=yesterday",
            "limit=0",
            "cursor=nope",
            "sort=name",
        ] {
            let response = stack
                .http
                .get(stack.url(&format!("/api/v1/users?{bad}")))
                .bearer_auth(&key)
                .send()
                .await?;
            assert_problem(response, 400).await?;
        }

        // Export: NDJSON, one user per line, as GET shows them; CSV with a header.
        let response = stack
            .http
            .get(stack.url("/api/v1/users:export"))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await?;
        let exported: Vec<Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(
            exported,
            vec![ada.clone(), alan.clone(), grace.clone()],
            "{placement}"
        );
        let response = stack
            .http
            .get(stack.url("/api/v1/users:export"))
            .bearer_auth(&key)
            .header("accept", "text/csv")
            .send()
            .await?;
        assert!(
            response.headers()["content-type"]
                .to_str()?
                .starts_with("text/csv")
        );
        let csv = response.text().await?;
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 4, "{csv}");
        assert_eq!(rows[0], "id,name,email,version,created_at,updated_at");
        assert!(rows[1].starts_with(&format!(
            "{},Ada Lovelace,ada@example.com,1,",
            ada["id"].as_str().unwrap_or_default()
        )));

        // Import: good lines, a broken line, an invalid email, an existing email, a
        // duplicate within the file, a blank line (skipped).
        let body = [
            r#"{"name":"Barbara Liskov","email":"barbara@example.com"}"#,
            r#"{"name":"Broken","email":"#,
            r#"{"name":"Bad Email","email":"not-an-email"}"#,
            r#"{"name":"Ada Again","email":"ADA@example.com"}"#,
            "",
            r#"{"name":"Edsger Dijkstra","email":"edsger@example.com"}"#,
            r#"{"name":"Edsger Twice","email":"edsger@example.com"}"#,
        ]
        .join("\n");
        let response = import(&stack, &key, &body).await?;
        assert_eq!(response.status(), 200, "{placement}");
        let report: Value = response.json().await?;
        assert_eq!(report["received"], 6, "{report}");
        assert_eq!(report["created"], 2, "{report}");
        let rejected: Vec<u64> = report["rejected"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x["line"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(rejected, [2, 3, 4, 7], "{report}");
        assert!(
            report["rejected"][2]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already exists")),
            "{report}"
        );
        assert_eq!(report["failed_chunks"], json!([]));
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=barbara").await?;
        assert_eq!(names(&page), ["Barbara Liskov"]);
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=edsger").await?;
        assert_eq!(names(&page), ["Edsger Dijkstra"]);
        let response = stack
            .http
            .post(stack.url("/api/v1/users:import"))
            .bearer_auth(&key)
            .json(&json!({ "name": "x", "email": "x@example.com" }))
            .send()
            .await?;
        assert_problem(response, 415).await?;

        // batchGet: results in request order, each with its own outcome.
        let missing = uuid::Uuid::now_v7().to_string();
        let ids = json!([grace["id"], missing, "not-a-uuid", ada["id"]]);
        let response = stack
            .http
            .post(stack.url("/api/v1/users:batchGet"))
            .bearer_auth(&key)
            .json(&json!({ "ids": ids }))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        let reply: Value = response.json().await?;
        let results = &reply["results"];
        assert_eq!(results[0]["user"], grace, "{reply}");
        assert_eq!(results[1]["id"], missing.as_str());
        assert_eq!(results[1]["error"]["status"], 404, "{reply}");
        assert_eq!(results[2]["error"]["status"], 400, "{reply}");
        assert_eq!(results[3]["user"], ada, "{reply}");
        for body in [json!({ "ids": [] }), json!({ "ids": vec!["x"; 1001] })] {
            let response = stack
                .http
                .post(stack.url("/api/v1/users:batchGet"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?;
            assert_problem(response, 400).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn no_tenant_finds_another_tenants_users_by_search_export_or_batch_get() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let mut owners = Vec::new();
    for placement in PLACEMENTS {
        let (_, key) = stack
            .create_tenant_in(&format!("owner-{placement}"), placement)
            .await?;
        let user = stack
            .create_user(&key, "Ada", &format!("ada@{placement}.example"))
            .await?;
        owners.push(user);
    }
    for placement in PLACEMENTS {
        let (_, key) = stack
            .create_tenant_in(&format!("other-{placement}"), placement)
            .await?;
        let (_, page) = get_json(&stack, &key, "/api/v1/users?q=ada").await?;
        assert_eq!(page["items"], json!([]), "{placement} search");
        let text = stack
            .http
            .get(stack.url("/api/v1/users:export"))
            .bearer_auth(&key)
            .send()
            .await?
            .text()
            .await?;
        assert_eq!(text, "", "{placement} export");
        let ids: Vec<&Value> = owners.iter().map(|u| &u["id"]).collect();
        let reply: Value = stack
            .http
            .post(stack.url("/api/v1/users:batchGet"))
            .bearer_auth(&key)
            .json(&json!({ "ids": ids }))
            .send()
            .await?
            .json()
            .await?;
        for result in reply["results"].as_array().into_iter().flatten() {
            assert_eq!(result["error"]["status"], 404, "{placement}: {reply}");
            assert!(result.get("user").is_none());
        }
    }
    Ok(())
}

/// Inserts `count` users for the tenant straight into its shared table. Names are ~200
/// characters, so an export (~20 MB at 50,000) is far more than the kernel's socket buffers
/// can hold: a stalled client really holds the producer back.
async fn seed(stack: &Stack, tenant: &str, count: i64) -> anyhow::Result<()> {
    let pool = stack.db.admin_pool().await?;
    sqlx::query(
        "INSERT INTO users (tenant_id, id, name, email)
         SELECT $1::uuid, gen_random_uuid(), 'User ' || n || ' ' || repeat('x', 180),
                'user' || n || '@example.com'
           FROM generate_series(1, $2) AS n",
    )
    .bind(tenant)
    .bind(count)
    .execute(&pool)
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_export_of_50000_users_streams_under_backpressure_and_stops_when_the_client_leaves()
-> anyhow::Result<()> {
    const USERS: i64 = 50_000;
    let stack = Stack::start().await?;
    let (tenant, key) = stack.create_tenant("big").await?;
    seed(&stack, &tenant, USERS).await?;

    // A client that reads one chunk and then stalls: the service stops producing long
    // before the end (the stream is consumed incrementally, memory stays bounded).
    let response = stack
        .http
        .get(stack.url("/api/v1/users:export"))
        .bearer_auth(&key)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let first = body.next().await.transpose()?.unwrap_or_default();
    assert!(!first.is_empty());
    // The producer fills what buffers there are, then waits for the client: the count
    // settles well short of the end.
    let started = Instant::now();
    let mut produced = -1.0_f64;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stack
            .metric(stack.query(), "borough_export_rows_total")
            .await?;
        if (now - produced).abs() < 1.0 {
            break;
        }
        produced = now;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the export never settled ({produced} rows)"
        );
    }
    assert!(
        produced < (USERS * 3 / 4) as f64,
        "{produced} of {USERS} rows produced for a stalled client"
    );
    assert_eq!(
        stack
            .metric(stack.query(), "borough_export_streams_active")
            .await?,
        1.0
    );

    // The client leaves: the export stops promptly, far short of the end.
    drop(body);
    let left = Instant::now();
    while stack
        .metric(stack.query(), "borough_export_streams_active")
        .await?
        > 0.0
    {
        anyhow::ensure!(
            left.elapsed() < Duration::from_secs(5),
            "the export kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let produced = stack
        .metric(stack.query(), "borough_export_rows_total")
        .await?;
    assert!(produced < USERS as f64, "{produced}");

    // A client that reads it all gets every user exactly once, in id order.
    let response = stack
        .http
        .get(stack.url("/api/v1/users:export"))
        .bearer_auth(&key)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let (mut lines, mut pending, mut last_id) = (0_i64, Vec::new(), String::new());
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let user: Value = serde_json::from_slice(&line)?;
            let id = user["id"].as_str().unwrap_or_default().to_owned();
            assert!(id > last_id, "out of order at line {lines}");
            last_id = id;
            lines += 1;
        }
    }
    assert_eq!(lines, USERS);
    assert!(pending.is_empty());
    Ok(())
}

#[tokio::test]
async fn one_hundred_concurrent_gets_of_an_uncached_user_make_one_database_read()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, key) = stack.create_tenant("hot-id").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
    let before = stack
        .metric(stack.query(), "borough_user_reads_total")
        .await?;
    let gets = (0..100).map(|_| {
        let request = stack.http.get(stack.url(&path)).bearer_auth(&key);
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures_util::future::join_all(gets).await;
    for status in statuses {
        assert_eq!(status?, 200);
    }
    let reads = stack
        .metric(stack.query(), "borough_user_reads_total")
        .await?
        - before;
    assert_eq!(reads, 1.0, "database reads for 100 concurrent gets");
    let hits = stack
        .metric_with(
            stack.query(),
            "borough_cache_lookups_total",
            "result=\"hit\"",
        )
        .await?;
    let misses = stack
        .metric_with(
            stack.query(),
            "borough_cache_lookups_total",
            "result=\"miss\"",
        )
        .await?;
    assert_eq!(hits + misses, 100.0);
    Ok(())
}

#[tokio::test]
async fn writes_are_read_back_at_once_and_invalidate_another_query_replica_within_the_bound()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // A second query replica.
    let replica = stack.spawn_query_replica(&[]).await?;
    let client = borough_proto::query::v1::query_service_client::QueryServiceClient::new(
        borough_testkit::tls::channel(&replica.grpc_url(0), "gateway", "query")?,
    );
    // A shared tenant's changes are announced on the default database; a database
    // tenant's on its own, which each replica follows while it has a pool open there.
    for placement in ["shared", "database"] {
        let (tenant, key) = stack
            .create_tenant_in(&format!("fresh-{placement}"), placement)
            .await?;
        let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
        let id = user["id"].as_str().unwrap_or_default().to_owned();
        let path = format!("/api/v1/users/{id}");
        let version_on_replica = || {
            let mut request = tonic::Request::new(borough_proto::query::v1::GetUserInfoRequest {
                user_id: id.clone(),
                min_version: 0,
            });
            if let Ok(tenant) = tenant.parse() {
                borough_tenant::TenantContext::new(tenant).write_metadata(request.metadata_mut());
            }
            let mut client = client.clone();
            async move {
                Ok::<i64, anyhow::Error>(client.get_user_info(request).await?.into_inner().version)
            }
        };
        // The replica warmed with version 1, and the gateway's replica too.
        assert_eq!(version_on_replica().await?, 1, "{placement}");
        let (_, fetched) = get_json(&stack, &key, &path).await?;
        assert_eq!(fetched["version"], 1, "{placement}");

        // Update through the gateway; read straight back: the new version (read-your-writes).
        let written = Instant::now();
        let response = stack
            .http
            .patch(stack.url(&path))
            .bearer_auth(&key)
            .json(&json!({ "name": "Ada King" }))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{placement}");
        let (_, fetched) = get_json(&stack, &key, &path).await?;
        assert_eq!(
            (fetched["version"].clone(), fetched["name"].clone()),
            (json!(2), json!("Ada King")),
            "{placement}"
        );

        // The other replica drops its copy within the bound (NOTIFY; well under the TTL).
        loop {
            if version_on_replica().await? == 2 {
                break;
            }
            anyhow::ensure!(
                written.elapsed() < Duration::from_secs(2),
                "{placement}: replica still stale"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lag = written.elapsed();
        tracing::info!(?lag, placement, "invalidation seen on the second replica");

        // Delete through the gateway: gone at once, never served from a cache.
        let response = stack
            .http
            .delete(stack.url(&path))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_eq!(response.status(), 204, "{placement}");
        let response = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_problem(response, 404).await?;
    }
    let invalidations = stack
        .metric(stack.query(), "borough_cache_invalidations_total")
        .await?;
    assert!(invalidations >= 2.0, "{invalidations}");
    replica.stop().await?;
    Ok(())
}

#[tokio::test]
async fn with_postgresql_stopped_cached_users_are_served_stale_others_fail_fast_and_reads_resume()
-> anyhow::Result<()> {
    let mut cluster = borough_testkit::own_cluster()?;
    let db = borough_testkit::TestDatabase::create_on(&cluster).await?;
    let stack = Stack::builder()
        .on(db)
        .services(&[
            ("BOROUGH_CACHE_TTL", "100ms"),
            ("BOROUGH_DB_ACQUIRE_TIMEOUT", "1s"),
        ])
        .gateway(&[("BOROUGH_AUTH_CACHE_TTL", "10m")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("resilient").await?;
    let cached = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let uncached = stack.create_user(&key, "Alan", "alan@example.com").await?;
    let cached_path = format!(
        "/api/v1/users/{}",
        cached["id"].as_str().unwrap_or_default()
    );
    let uncached_path = format!(
        "/api/v1/users/{}",
        uncached["id"].as_str().unwrap_or_default()
    );
    let (status, _) = get_json(&stack, &key, &cached_path).await?;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await; // Past the TTL: only a stale copy.

    cluster.pause()?;
    let response = stack
        .http
        .get(stack.url(&cached_path))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["borough-stale"], "true");
    assert!(response.headers()["age"].to_str()?.parse::<u64>().is_ok());
    let body: Value = response.json().await?;
    assert_eq!(body, cached);

    let started = Instant::now();
    let response = stack
        .http
        .get(stack.url(&uncached_path))
        .bearer_auth(&key)
        .send()
        .await?;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503).await?;
    for path in ["/api/v1/users?q=a", "/api/v1/users:export"] {
        let response = stack
            .http
            .get(stack.url(path))
            .bearer_auth(&key)
            .send()
            .await?;
        assert!(response.headers().contains_key("retry-after"), "{path}");
        assert_problem(response, 503).await?;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let stale = stack
        .metric(stack.query(), "borough_cache_stale_serves_total")
        .await?;
    assert!(stale >= 1.0);

    // PostgreSQL returns: fresh reads resume without restarting anything.
    cluster.resume()?;
    let back = Instant::now();
    loop {
        let response = stack
            .http
            .get(stack.url(&uncached_path))
            .bearer_auth(&key)
            .send()
            .await?;
        if response.status() == 200 {
            assert!(!response.headers().contains_key("borough-stale"));
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(15),
            "reads did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = stack
        .http
        .get(stack.url(&cached_path))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("borough-stale"));
    stack
        .create_user(&key, "Grace", "grace@example.com")
        .await?;
    Ok(())
}

/// PostgreSQL silent (stopped, its connections left open, as a network cut leaves them):
/// the query service notices its change feed is gone by a ping that gets no answer, and
/// from then on serves its cached users only as marked stale copies (not as fresh ones it
/// can no longer keep current); the gateway, unable to verify keys, still lets a key it
/// verified lately read, but not write.
#[tokio::test]
async fn with_postgresql_silent_cached_users_turn_stale_once_the_feed_is_lost_and_a_lately_verified_key_reads_but_cannot_write()
-> anyhow::Result<()> {
    let mut cluster = borough_testkit::own_cluster()?;
    let db = borough_testkit::TestDatabase::create_on(&cluster).await?;
    let stack = Stack::builder()
        .on(db)
        .services(&[("BOROUGH_DB_ACQUIRE_TIMEOUT", "1s")])
        .gateway(&[("BOROUGH_AUTH_CACHE_TTL", "200ms")])
        .start()
        .await?;
    let (_, key) = stack.create_tenant("cut-off").await?;
    let user = stack.create_user(&key, "Ada", "ada@example.com").await?;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap_or_default());
    let (status, _) = get_json(&stack, &key, &path).await?;
    assert_eq!(status, 200);

    cluster.pause()?;
    let cut = Instant::now();
    // Every read answers; the copy is fresh (cache TTL 60 s) until the feed is declared
    // lost (5 quiet seconds, then a 2 s ping), then stale.
    loop {
        let response = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(&key)
            .send()
            .await?;
        assert_eq!(response.status(), 200, "after {:?}", cut.elapsed());
        if response.headers().contains_key("borough-stale") {
            assert_eq!(response.headers()["borough-stale"], "true");
            let body: Value = response.json().await?;
            assert_eq!(body, user);
            break;
        }
        anyhow::ensure!(
            cut.elapsed() < Duration::from_secs(20),
            "a cached user was still served as fresh 20 s after PostgreSQL went silent"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        stack
            .metric(stack.query(), "borough_cache_unfollowed_feeds")
            .await?
            >= 1.0
    );
    // The same key cannot write: the directory's 503, not a 401.
    let response = stack
        .http
        .post(stack.url("/api/v1/users"))
        .bearer_auth(&key)
        .json(&json!({"name": "Alan", "email": "alan@example.com"}))
        .send()
        .await?;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503).await?;

    // Back: the feed resubscribes and catches up, and the user is fresh again.
    cluster.resume()?;
    let back = Instant::now();
    loop {
        let response = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(&key)
            .send()
            .await?;
        let unfollowed = stack
            .metric(stack.query(), "borough_cache_unfollowed_feeds")
            .await?;
        if response.status() == 200
            && !response.headers().contains_key("borough-stale")
            && unfollowed == 0.0
        {
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(20),
            "the feed did not come back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stack
        .create_user(&key, "Grace", "grace@example.com")
        .await?;
    Ok(())
}
