//! `borough.config.v1.ConfigService` over real gRPC, against real PostgreSQL.

use std::time::Duration;

use borough_config_client::Env;
use borough_proto::config::v1::config_service_client::ConfigServiceClient;
use borough_proto::config::v1::watch_event::Event;
use borough_proto::config::v1::{
    DeleteRequest, GetRequest, HistoryRequest, ListRequest, PutRequest, RollbackRequest,
    SetSchemaRequest, WatchRequest,
};
use borough_tenant::{TenantContext, TenantId};
use borough_testkit::{Spawned, TestDatabase, spawn};
use tonic::Code;
use tonic::transport::Channel;

type Client = ConfigServiceClient<Channel>;

/// A client of `service` presenting `caller`'s certificate.
fn client_as(service: &Spawned, caller: &str) -> anyhow::Result<Client> {
    Ok(ConfigServiceClient::new(borough_testkit::tls::channel(
        &service.grpc_url(0),
        caller,
        "config",
    )?))
}

async fn replica(db: &TestDatabase) -> anyhow::Result<Spawned> {
    let mut pairs: Vec<(String, String)> = borough_testkit::tls::pki()?
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    pairs.push(("BOROUGH_DATABASE_URL".into(), db.config_url.clone()));
    pairs.push(("BOROUGH_SHUTDOWN_GRACE".into(), "0s".into()));
    let settings = borough_config::Settings::from_env(&Env::from_pairs(pairs))?;
    spawn(2, move |mut l, shutdown| {
        let admin = l.remove(1);
        let api = l.remove(0);
        borough_config::serve(settings, borough_config::Listeners { api, admin }, shutdown)
    })
    .await
}

async fn start() -> anyhow::Result<(TestDatabase, Spawned, Client)> {
    borough_telemetry::logging::init_test_logging();
    let db = TestDatabase::create().await?;
    let service = replica(&db).await?;
    // The gateway's identity: the platform's (and, with tenant metadata, tenants') caller.
    let client = client_as(&service, "gateway")?;
    Ok((db, service, client))
}

fn put(namespace: &str, key: &str, value: &str, expected: Option<i64>) -> PutRequest {
    PutRequest {
        namespace: namespace.into(),
        key: key.into(),
        value_json: value.into(),
        expected_revision: expected,
    }
}

fn as_tenant<T>(tenant: TenantId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    TenantContext::new(tenant).write_metadata(request.metadata_mut());
    request
}

const NS: &str = "platform/gateway";

#[tokio::test]
async fn cas_history_rollback_delete_and_list_by_prefix() -> anyhow::Result<()> {
    let (_db, service, mut client) = start().await?;
    // Create only if absent (expected 0); again: conflict.
    let first = client
        .put(put(NS, "http.timeout", "\"5s\"", Some(0)))
        .await?
        .into_inner();
    let err = client
        .put(put(NS, "http.timeout", "\"6s\"", Some(0)))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::Aborted);
    // CAS on the current revision succeeds; on a stale one, ABORTED and nothing changes.
    let second = client
        .put(put(NS, "http.timeout", "\"7s\"", Some(first.revision)))
        .await?
        .into_inner();
    assert!(second.revision > first.revision);
    let err = client
        .put(put(NS, "http.timeout", "\"8s\"", Some(first.revision)))
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted);
    let current = client
        .get(GetRequest {
            namespace: NS.into(),
            key: "http.timeout".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (current.value_json.as_str(), current.revision),
        ("\"7s\"", second.revision)
    );

    // History, newest first, with old and new values.
    let history = client
        .history(HistoryRequest {
            namespace: NS.into(),
            key: "http.timeout".into(),
            limit: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .changes;
    let seen: Vec<(i64, Option<&str>, Option<&str>)> = history
        .iter()
        .map(|c| {
            (
                c.revision,
                c.old_value_json.as_deref(),
                c.new_value_json.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (second.revision, Some("\"5s\""), Some("\"7s\"")),
            (first.revision, None, Some("\"5s\"")),
        ]
    );

    // Rollback to the first revision: a new revision with the old value.
    let rolled = client
        .rollback(RollbackRequest {
            namespace: NS.into(),
            key: "http.timeout".into(),
            revision: first.revision,
        })
        .await?
        .into_inner();
    assert_eq!(rolled.value_json, "\"5s\"");
    assert!(rolled.revision > second.revision);
    let err = client
        .rollback(RollbackRequest {
            namespace: NS.into(),
            key: "http.timeout".into(),
            revision: 9999,
        })
        .await
        .expect_err("no such revision");
    assert_eq!(err.code(), Code::NotFound);

    // List by prefix.
    client
        .put(put(NS, "http.body_limit", "1048576", None))
        .await?;
    client.put(put(NS, "log.level", "\"info\"", None)).await?;
    let listed = client
        .list(ListRequest {
            namespace: NS.into(),
            prefix: "http.".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let keys: Vec<&str> = listed.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["http.body_limit", "http.timeout"]);
    assert!(listed.revision >= rolled.revision + 2);

    // Delete with a stale revision: conflict; then delete; then it is gone.
    let err = client
        .delete(DeleteRequest {
            namespace: NS.into(),
            key: "log.level".into(),
            expected_revision: Some(1),
        })
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted);
    client
        .delete(DeleteRequest {
            namespace: NS.into(),
            key: "log.level".into(),
            expected_revision: None,
        })
        .await?;
    let err = client
        .get(GetRequest {
            namespace: NS.into(),
            key: "log.level".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);

    // Bad input: namespace, key, JSON.
    for (ns, key, value) in [("gateway", "k", "1"), (NS, "a b", "1"), (NS, "k", "{")] {
        let err = client
            .put(put(ns, key, value, None))
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{ns} {key} {value}");
    }
    service.stop().await?;
    Ok(())
}

/// Collects watch changes until `count` have arrived.
async fn changes(
    stream: &mut tonic::Streaming<borough_proto::config::v1::WatchEvent>,
    count: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    while out.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        if let Some(Event::Change(change)) = event.event {
            out.push((change.revision, change.new_value_json.unwrap_or_default()));
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_watcher_reconnecting_with_its_last_revision_gets_exactly_what_it_missed()
-> anyhow::Result<()> {
    let (_db, service, mut client) = start().await?;
    let ns = "platform/query";
    let mut stream = client
        .watch(WatchRequest {
            namespaces: vec![ns.into()],
            from_revision: 0,
        })
        .await?
        .into_inner();
    client.put(put(ns, "k", "0", None)).await?;
    let seen = changes(&mut stream, 1).await?;
    let last = seen[0].0;
    drop(stream); // Disconnected.

    let mut expected = Vec::new();
    for i in 1..=100 {
        let entry = client
            .put(put(ns, &format!("k{}", i % 7), &i.to_string(), None))
            .await?
            .into_inner();
        expected.push((entry.revision, i.to_string()));
        // Changes to another namespace are not for this watcher.
        client
            .put(put("platform/user", "noise", &i.to_string(), None))
            .await?;
    }

    let mut stream = client
        .watch(WatchRequest {
            namespaces: vec![ns.into()],
            from_revision: last,
        })
        .await?
        .into_inner();
    let replayed = changes(&mut stream, 100).await?;
    assert_eq!(replayed, expected);
    // Then live, and nothing twice.
    let live = client.put(put(ns, "k", "101", None)).await?.into_inner();
    let next = changes(&mut stream, 1).await?;
    assert_eq!(next, vec![(live.revision, "101".to_owned())]);
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_put_on_one_replica_reaches_a_watcher_on_another() -> anyhow::Result<()> {
    let (db, first, mut writer) = start().await?;
    let second = replica(&db).await?;
    let mut reader = client_as(&second, "gateway")?;
    let mut stream = reader
        .watch(WatchRequest {
            namespaces: vec![NS.into()],
            from_revision: 0,
        })
        .await?
        .into_inner();
    // Wait for the replay marker: the watch is live on the second replica.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
        if matches!(event.and_then(|e| e.event), Some(Event::Synced(_))) {
            break;
        }
    }
    for i in 0..20 {
        let entry = writer
            .put(put(NS, "shared", &i.to_string(), None))
            .await?
            .into_inner();
        let got = changes(&mut stream, 1).await?;
        assert_eq!(got, vec![(entry.revision, i.to_string())]);
    }
    first.stop().await?;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_value_breaking_the_namespace_schema_is_rejected_with_its_errors_and_not_stored()
-> anyhow::Result<()> {
    let (_db, service, mut client) = start().await?;
    let schema = r#"{"type":"object","properties":{"port":{"type":"integer","maximum":65535}},"required":["port"]}"#;
    client
        .set_schema(SetSchemaRequest {
            namespace: NS.into(),
            schema_json: schema.into(),
        })
        .await?;
    let err = client
        .put(put(NS, "listen", r#"{"port":"eighty"}"#, None))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("/port"), "{}", err.message());
    assert_eq!(
        err.metadata()
            .get(borough_error::KIND_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("unprocessable")
    );
    let err = client
        .put(put(NS, "listen", r#"{}"#, None))
        .await
        .expect_err("missing port");
    assert!(err.message().contains("port"), "{}", err.message());
    let err = client
        .get(GetRequest {
            namespace: NS.into(),
            key: "listen".into(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(err.code(), Code::NotFound);
    let history = client
        .history(HistoryRequest {
            namespace: NS.into(),
            key: "listen".into(),
            limit: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert!(history.changes.is_empty());
    client
        .put(put(NS, "listen", r#"{"port":8080}"#, None))
        .await?;
    // A schema that is not a JSON Schema is refused.
    let err = client
        .set_schema(SetSchemaRequest {
            namespace: NS.into(),
            schema_json: r#"{"type":"nope"}"#.into(),
        })
        .await
        .expect_err("bad schema");
    assert_eq!(err.code(), Code::InvalidArgument);
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_tenant_reaches_only_its_own_namespaces() -> anyhow::Result<()> {
    let (_db, service, mut client) = start().await?;
    let (a, b) = (TenantId::new_v7(), TenantId::new_v7());
    let own = format!("tenant/{a}/app");
    let other = format!("tenant/{b}/app");
    client
        .put(as_tenant(a, put(&own, "theme", "\"dark\"", None)))
        .await?;
    client.put(put(&other, "theme", "\"light\"", None)).await?; // as the platform
    for namespace in [other.as_str(), "platform/gateway"] {
        let err = client
            .get(as_tenant(
                a,
                GetRequest {
                    namespace: namespace.into(),
                    key: "theme".into(),
                },
            ))
            .await
            .expect_err("foreign read");
        assert_eq!(err.code(), Code::PermissionDenied, "{namespace}");
        let err = client
            .put(as_tenant(a, put(namespace, "theme", "\"pwned\"", None)))
            .await
            .expect_err("foreign write");
        assert_eq!(err.code(), Code::PermissionDenied, "{namespace}");
        let err = client
            .watch(as_tenant(
                a,
                WatchRequest {
                    namespaces: vec![namespace.into()],
                    from_revision: 0,
                },
            ))
            .await
            .expect_err("foreign watch");
        assert_eq!(err.code(), Code::PermissionDenied, "{namespace}");
    }
    let theirs = client
        .get(GetRequest {
            namespace: other.clone(),
            key: "theme".into(),
        })
        .await?
        .into_inner();
    assert_eq!(theirs.value_json, "\"light\"");

    // Listing: its own namespaces only; another tenant's or the platform's are refused.
    let list = |tenant: &TenantId| borough_proto::config::v1::ListNamespacesRequest {
        tenant_id: tenant.to_string(),
        ..Default::default()
    };
    let mine = client
        .list_namespaces(as_tenant(a, list(&a)))
        .await?
        .into_inner();
    let names: Vec<&str> = mine
        .namespaces
        .iter()
        .map(|n| n.namespace.as_str())
        .collect();
    assert_eq!(names, [own.as_str()]);
    assert_eq!(mine.namespaces[0].keys, 1);
    for asked in [list(&b), Default::default()] {
        let err = client
            .list_namespaces(as_tenant(a, asked))
            .await
            .expect_err("a foreign listing");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    // The platform lists any tenant's.
    let theirs = client.list_namespaces(list(&b)).await?.into_inner();
    assert_eq!(theirs.namespaces.len(), 1);
    assert_eq!(theirs.namespaces[0].namespace, other);
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn one_instance_running_two_services_reports_each_separately() -> anyhow::Result<()> {
    let (_db, _service, mut client) = start().await?;
    for (service, revision) in [("user", 3), ("query", 5), ("user", 4)] {
        client
            .report_applied(borough_proto::config::v1::ReportAppliedRequest {
                instance: "host-1".into(),
                service: service.into(),
                revision,
            })
            .await?;
    }
    let status = client
        .status(borough_proto::config::v1::StatusRequest {})
        .await?
        .into_inner();
    let mut seen: Vec<(String, i64)> = status
        .instances
        .iter()
        .filter(|i| i.instance == "host-1")
        .map(|i| (i.service.clone(), i.applied_revision))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![("query".to_owned(), 5), ("user".to_owned(), 4)]);
    Ok(())
}
