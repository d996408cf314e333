//! The config service's bounds over real gRPC against real PostgreSQL: per-tenant quotas,
//! history retention (and what a watch from before it gets), bounded pages, watch caps,
//! NUL and backtracking patterns refused, and purging a tenant.

use std::time::Duration;

use borough_config_client::Env;
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::config::v1::watch_event::Event;
use borough_proto::config::v1::{
    GetRequest, GetSchemaRequest, HistoryRequest, ListRequest, PurgeTenantRequest, PutRequest,
    SetSchemaRequest, WatchRequest,
};
use borough_tenant::{TenantContext, TenantId};
use borough_testkit::{Spawned, TestDatabase, spawn};
use tonic::Code;
use tonic::transport::Channel;

type Client = ConfigServiceClient<Channel>;

async fn start(extra: &[(&str, &str)]) -> anyhow::Result<(TestDatabase, Spawned, Client)> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let mut pairs: Vec<(String, String)> = borough_testkit::tls::pki()?
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    pairs.push(("BOROUGH_DATABASE_URL".into(), db.config_url.clone()));
    pairs.push(("BOROUGH_SHUTDOWN_GRACE".into(), "0s".into()));
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let settings = borough_config::Settings::from_env(&Env::from_pairs(pairs))?;
    let service = spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let api = l.remove(0);
        borough_config::serve(settings, borough_config::Listeners { api, admin }, shutdown)
    })
    .await?;
    let client = ConfigServiceClient::new(borough_testkit::tls::channel(
        &service.grpc_url(0),
        "gateway",
        "config",
    )?);
    Ok((db, service, client))
}

fn as_tenant<T>(tenant: TenantId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    TenantContext::new(tenant).write_metadata(request.metadata_mut());
    request
}

fn put(namespace: &str, key: &str, value: &str) -> PutRequest {
    PutRequest {
        namespace: namespace.into(),
        key: key.into(),
        value_json: value.into(),
        expected_revision: None,
    }
}

fn list(namespace: &str, page_size: i32, page_token: &str) -> ListRequest {
    ListRequest {
        namespace: namespace.into(),
        prefix: String::new(),
        page_size,
        page_token: page_token.into(),
    }
}

fn history(namespace: &str, key: &str, limit: i32, page_token: &str) -> HistoryRequest {
    HistoryRequest {
        namespace: namespace.into(),
        key: key.into(),
        limit,
        page_token: page_token.into(),
    }
}

#[tokio::test]
async fn a_tenant_over_a_quota_is_refused_naming_it_and_nothing_is_stored() -> anyhow::Result<()> {
    let (_db, service, mut client) = start(&[
        ("BOROUGH_CONFIG_MAX_KEYS", "3"),
        ("BOROUGH_CONFIG_MAX_BYTES", "300"),
        ("BOROUGH_CONFIG_MAX_NAMESPACES", "2"),
    ])
    .await?;
    let tenant = TenantId::new_v7();
    let ns = |name: &str| format!("tenant/{tenant}/{name}");
    for key in ["a", "b", "c"] {
        client
            .put(as_tenant(tenant, put(&ns("one"), key, "1")))
            .await?;
    }
    let err = client
        .put(as_tenant(tenant, put(&ns("one"), "d", "1")))
        .await
        .expect_err("a fourth key");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("BOROUGH_CONFIG_MAX_KEYS"),
        "{}",
        err.message()
    );
    assert_eq!(
        err.metadata()
            .get(borough_error::KIND_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("quota-exceeded")
    );
    let absent = client
        .get(as_tenant(
            tenant,
            GetRequest {
                namespace: ns("one"),
                key: "d".into(),
            },
        ))
        .await
        .expect_err("not stored");
    assert_eq!(absent.code(), Code::NotFound);
    // Replacing a key adds none: allowed, until the bytes run out.
    let big = format!("\"{}\"", "x".repeat(400));
    let err = client
        .put(as_tenant(tenant, put(&ns("one"), "a", &big)))
        .await
        .expect_err("over the byte quota");
    assert!(
        err.message().contains("BOROUGH_CONFIG_MAX_BYTES"),
        "{}",
        err.message()
    );
    // Deleting is always allowed, and frees room.
    client
        .delete(as_tenant(
            tenant,
            borough_proto::config::v1::DeleteRequest {
                namespace: ns("one"),
                key: "c".into(),
                expected_revision: None,
            },
        ))
        .await?;
    client
        .put(as_tenant(tenant, put(&ns("two"), "x", "1")))
        .await?;
    let err = client
        .put(as_tenant(tenant, put(&ns("three"), "x", "1")))
        .await
        .expect_err("a third namespace");
    assert!(
        err.message().contains("BOROUGH_CONFIG_MAX_NAMESPACES"),
        "{}",
        err.message()
    );
    // Another tenant has quotas of its own.
    let other = TenantId::new_v7();
    client
        .put(as_tenant(
            other,
            put(&format!("tenant/{other}/one"), "a", "1"),
        ))
        .await?;
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn history_past_its_bounds_is_pruned_and_a_watch_from_before_must_list_again()
-> anyhow::Result<()> {
    let (_db, service, mut client) = start(&[("BOROUGH_CONFIG_HISTORY_ROWS", "5")]).await?;
    let ns = "platform/query";
    let mut revisions = Vec::new();
    for i in 0..12 {
        let entry = client.put(put(ns, "k", &i.to_string())).await?.into_inner();
        revisions.push(entry.revision);
    }
    client.put(put(ns, "other", "1")).await?;
    let kept = client
        .history(history(ns, "k", 100, ""))
        .await?
        .into_inner()
        .changes;
    assert!(kept.len() <= 5, "{} rows kept", kept.len());
    assert_eq!(
        kept[0].new_value_json.as_deref(),
        Some("11"),
        "newest first"
    );
    // A watcher that had seen the first revision cannot be told what it missed.
    let mut stream = client
        .watch(WatchRequest {
            namespaces: vec![ns.into()],
            from_revision: revisions[0],
        })
        .await?
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await?
        .expect_err("compacted");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.metadata()
            .contains_key(borough_config_client::remote::COMPACTED_METADATA),
        "{err:?}"
    );
    // From the beginning: what is kept, and the current values come out right.
    let mut stream = client
        .watch(WatchRequest {
            namespaces: vec![ns.into()],
            from_revision: 0,
        })
        .await?
        .into_inner();
    let mut last_k = None;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        match event.event {
            Some(Event::Change(change)) if change.key == "k" => last_k = change.new_value_json,
            Some(Event::Synced(_)) => break,
            _ => {}
        }
    }
    assert_eq!(last_k.as_deref(), Some("11"));
    // From a kept revision: no error.
    let recent = *revisions.last().unwrap_or(&0) - 1;
    let mut stream = client
        .watch(WatchRequest {
            namespaces: vec![ns.into()],
            from_revision: recent,
        })
        .await?
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
    assert!(event.is_some());
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn lists_and_histories_come_in_bounded_pages() -> anyhow::Result<()> {
    let (_db, service, mut client) = start(&[]).await?;
    let ns = "platform/user";
    for i in 0..150 {
        client.put(put(ns, &format!("k{i:03}"), "1")).await?;
    }
    let first = client.list(list(ns, 0, "")).await?.into_inner();
    assert_eq!(first.entries.len(), 100, "the default page");
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list(list(ns, 0, &first.next_page_token))
        .await?
        .into_inner();
    assert_eq!(second.entries.len(), 50);
    assert!(second.next_page_token.is_empty(), "the last page");
    assert_eq!(second.entries[0].key, "k100");
    let err = client
        .list(list(ns, 1001, ""))
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .list(list(ns, 10, "not-a-token"))
        .await
        .expect_err("a foreign token");
    assert_eq!(err.code(), Code::InvalidArgument);

    for i in 0..30 {
        client.put(put(ns, "h", &i.to_string())).await?;
    }
    let page = client.history(history(ns, "h", 0, "")).await?.into_inner();
    assert_eq!(page.changes.len(), 20);
    let rest = client
        .history(history(ns, "h", 0, &page.next_page_token))
        .await?
        .into_inner();
    assert_eq!(rest.changes.len(), 10);
    assert!(rest.next_page_token.is_empty());
    assert!(rest.changes[0].revision < page.changes[19].revision);
    let err = client
        .history(history(ns, "h", 101, ""))
        .await
        .expect_err("over 100");
    assert_eq!(err.code(), Code::InvalidArgument);
    // A page also ends at about 1 MiB of values.
    let big = format!("\"{}\"", "x".repeat(60 * 1024));
    for i in 0..20 {
        client.put(put(ns, &format!("big{i:02}"), &big)).await?;
    }
    let page = client
        .list(ListRequest {
            namespace: ns.into(),
            prefix: "big".into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert!(
        page.entries.len() < 20,
        "{} entries in one page",
        page.entries.len()
    );
    assert!(!page.next_page_token.is_empty());
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_tenants_watches_on_a_replica_are_capped() -> anyhow::Result<()> {
    let (_db, service, mut client) =
        start(&[("BOROUGH_CONFIG_MAX_WATCHES_PER_TENANT", "2")]).await?;
    let tenant = TenantId::new_v7();
    let watch = |tenant: TenantId| {
        as_tenant(
            tenant,
            WatchRequest {
                namespaces: vec![format!("tenant/{tenant}/app")],
                from_revision: 0,
            },
        )
    };
    let first = client.watch(watch(tenant)).await?;
    let _second = client.watch(watch(tenant)).await?;
    let err = client.watch(watch(tenant)).await.expect_err("a third");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("BOROUGH_CONFIG_MAX_WATCHES_PER_TENANT"),
        "{}",
        err.message()
    );
    // Another tenant is not affected; a closed watch frees its slot.
    let _other = client.watch(watch(TenantId::new_v7())).await?;
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.watch(watch(tenant)).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn nul_characters_and_backtracking_patterns_are_invalid_arguments() -> anyhow::Result<()> {
    let (_db, service, mut client) = start(&[]).await?;
    let ns = "platform/gateway";
    for value in [r#""a\u0000b""#, r#"{"k\u0000": 1}"#] {
        let err = client.put(put(ns, "k", value)).await.expect_err(value);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("NUL"), "{}", err.message());
    }
    let schema = |json: &str| SetSchemaRequest {
        namespace: ns.into(),
        schema_json: json.into(),
    };
    let err = client
        .set_schema(schema(r#"{"description": "\u0000"}"#))
        .await
        .expect_err("NUL in a schema");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .set_schema(schema(r#"{"type": "string", "pattern": "^(a|a)*\\1$"}"#))
        .await
        .expect_err("a back-reference");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("linear-time"), "{}", err.message());
    // A pattern that is catastrophic for a backtracking engine is linear here.
    client
        .set_schema(schema(
            r#"{"type": "object", "properties": {"v": {"type": "string", "pattern": "^(a|a)*$"}}}"#,
        ))
        .await?;
    let started = std::time::Instant::now();
    let value = format!(r#"{{"v": "{}b"}}"#, "a".repeat(60_000));
    let err = client
        .put(put(ns, "k", &value))
        .await
        .expect_err("not matching");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn purging_a_tenant_removes_its_namespaces_history_schemas_and_rate_limit_override()
-> anyhow::Result<()> {
    let (db, service, mut client) = start(&[]).await?;
    let tenant = TenantId::new_v7();
    let other = TenantId::new_v7();
    let ns = format!("tenant/{tenant}/app");
    for i in 0..3 {
        client
            .put(as_tenant(tenant, put(&ns, "k", &i.to_string())))
            .await?;
    }
    client
        .set_schema(as_tenant(
            tenant,
            SetSchemaRequest {
                namespace: ns.clone(),
                schema_json: r#"{"type": "integer"}"#.into(),
            },
        ))
        .await?;
    client
        .put(as_tenant(
            other,
            put(&format!("tenant/{other}/app"), "k", "1"),
        ))
        .await?;
    let override_key = format!("rate_limit.tenant.{tenant}");
    client
        .put(put(
            "platform/gateway",
            &override_key,
            r#"{"requests_per_second": 5, "burst": 5}"#,
        ))
        .await?;
    // Only the platform may purge.
    let err = client
        .purge_tenant(as_tenant(
            tenant,
            PurgeTenantRequest {
                tenant_id: tenant.to_string(),
            },
        ))
        .await
        .expect_err("a tenant purging");
    assert_eq!(err.code(), Code::PermissionDenied);
    let purged = client
        .purge_tenant(PurgeTenantRequest {
            tenant_id: tenant.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(purged.entries, 2, "its key and its override");
    let listed = client.list(list(&ns, 0, "")).await?.into_inner();
    assert!(listed.entries.is_empty());
    let schema = client
        .get_schema(GetSchemaRequest {
            namespace: ns.clone(),
        })
        .await?
        .into_inner();
    assert!(schema.schema_json.is_empty());
    let err = client
        .get(GetRequest {
            namespace: "platform/gateway".into(),
            key: override_key,
        })
        .await
        .expect_err("the override is gone");
    assert_eq!(err.code(), Code::NotFound);
    let pool = db.admin_pool().await?;
    let (history, usage): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM config.history WHERE namespace = $1
                  AND revision < (SELECT max(revision) FROM config.history)),
                (SELECT count(*) FROM config.namespaces WHERE tenant_id = $2)",
    )
    .bind(&ns)
    .bind(tenant.as_uuid())
    .fetch_one(&pool)
    .await?;
    assert_eq!((history, usage), (0, 0));
    // The other tenant keeps its configuration; purging again is harmless.
    let kept = client
        .list(list(&format!("tenant/{other}/app"), 0, ""))
        .await?
        .into_inner();
    assert_eq!(kept.entries.len(), 1);
    let again = client
        .purge_tenant(PurgeTenantRequest {
            tenant_id: tenant.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(again.entries, 0);
    service.stop().await?;
    Ok(())
}
