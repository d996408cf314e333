//! The config service: Borough's configuration center on PostgreSQL alone.
//!
//! Entries `(namespace, key) -> JSON`, a global gap-free revision, full history, CAS,
//! rollback, JSON Schemas per namespace, and `Watch` (replay, then live) fanned out across
//! replicas by LISTEN/NOTIFY with catch-up from the history table ([`watch`]).
//!
//! Callers: the gateway (for tenants, with the tenant in the call's metadata: such a call
//! reaches only `tenant/<its id>/…`; for the platform admin, without it), and Borough's own
//! services through `borough-config-client`.

pub mod store;
pub mod watch;

use std::future::Future;
use std::pin::Pin;

use borough_config_client::{Env, ServerSettings, SettingsError, Var};
use borough_proto::config::v1::config_service_server::{ConfigService, ConfigServiceServer};
use borough_proto::config::v1::{
    DeleteRequest, DeleteResponse, Entry, GetRequest, GetSchemaRequest, HistoryRequest,
    HistoryResponse, InstanceStatus, ListNamespacesRequest, ListNamespacesResponse, ListRequest,
    ListResponse, PurgeTenantRequest, PurgeTenantResponse, PutRequest, ReportAppliedRequest,
    ReportAppliedResponse, RollbackRequest, SetSchemaRequest, SetSchemaResponse, StatusRequest,
    StatusResponse, WatchEvent, WatchRequest,
};
use borough_proto::time::to_timestamp;
use borough_telemetry::Metrics;
use borough_tenancy::db;
use borough_tenancy::settings::DatabaseSettings;
use borough_tenant::TenantContext;
use borough_tenant::context::TENANT_METADATA_KEY;
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::store::{
    ConfigError, Quotas, Store, check_key, check_namespace, check_prefix, parse_schema, parse_value,
};
use crate::watch::{Hub, WatchLimits};

pub use borough_net::{Listeners, ServeError};

pub const SERVICE: &str = "config";

pub use borough_proto::config::ACTOR_METADATA;

/// The service's settings ([`Settings::vars`]: every variable it reads).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners (127.0.0.1:50053, admin 127.0.0.1:9463) and shutdown.
    pub server: ServerSettings,
    /// The control database and the pool's limits.
    pub database: DatabaseSettings,
    /// Per-tenant quotas and history retention.
    pub quotas: Quotas,
    /// Watch streams per replica.
    pub watches: WatchLimits,
    /// Mutual TLS with the other services.
    pub tls: borough_tls::TlsSettings,
}

/// Who may call the config service: the gateway anything (tenants' namespaces, for
/// tenants; the platform's, for the admin; the status); every Borough service the reads a
/// follower makes (`List`, `Get`, `Watch`) and its reports (`ReportApplied`) — limited to
/// its own `platform/<service>` namespace by the handlers.
pub static POLICY: borough_net::authz::Policy = borough_net::authz::Policy {
    rules: &[
        borough_net::authz::Rule {
            callers: &["gateway"],
            methods: &["/borough.config.v1.ConfigService/"],
        },
        borough_net::authz::Rule {
            callers: &["*"],
            methods: &[
                "/borough.config.v1.ConfigService/List",
                "/borough.config.v1.ConfigService/Get",
                "/borough.config.v1.ConfigService/Watch",
                "/borough.config.v1.ConfigService/ReportApplied",
            ],
        },
    ],
};

impl Settings {
    /// Every variable the service reads, for `docs/settings.md`.
    pub fn vars() -> Vec<&'static Var> {
        std::iter::once(&ServerSettings::GRPC_ADDR)
            .chain(ServerSettings::vars())
            .chain(DatabaseSettings::vars())
            .chain(Quotas::VARS.iter().copied())
            .chain(WatchLimits::VARS.iter().copied())
            .chain(borough_tls::TlsSettings::VARS.iter().copied())
            .chain(borough_telemetry::vars())
            .collect()
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                SERVICE,
                &ServerSettings::GRPC_ADDR,
                "127.0.0.1:50053",
                "127.0.0.1:9463",
            )?,
            database: DatabaseSettings::from_env(env)?,
            quotas: Quotas::from_env(env)?,
            watches: WatchLimits::from_env(env)?,
            tls: borough_tls::TlsSettings::from_env(env, SERVICE)?,
        })
    }
}

/// Who is calling: a tenant (its namespaces only) or the platform.
struct Caller {
    tenant: Option<TenantContext>,
    actor: String,
    /// A Borough service other than the gateway reaches only its own namespace,
    /// `platform/<service>` (the gateway, or any caller with internal TLS off, all).
    own_namespace: Option<String>,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        let metadata = request.metadata();
        let peer = borough_net::authz::Caller::of(request);
        // Tenant context reaches here from the gateway alone (the authorisation layer).
        let tenant = match metadata.contains_key(TENANT_METADATA_KEY) {
            true => Some(TenantContext::from_metadata(metadata)?),
            false => None,
        };
        let own_namespace = match peer.service() {
            Some(service) if !peer.may_act_as_platform_admin() => {
                Some(format!("platform/{service}"))
            }
            _ => None,
        };
        let actor = match (&own_namespace, peer.service()) {
            (Some(_), Some(service)) => format!("service:{service}"),
            _ => metadata
                .get(ACTOR_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(|a| a.chars().take(200).collect::<String>())
                .unwrap_or_else(|| match &tenant {
                    Some(t) => format!("tenant:{}", t.tenant_id),
                    None => "platform".to_owned(),
                }),
        };
        Ok(Caller {
            tenant,
            actor,
            own_namespace,
        })
    }

    /// The namespace is well formed and this caller may use it.
    fn check(&self, namespace: &str) -> Result<(), ConfigError> {
        check_namespace(namespace)?;
        match (&self.tenant, &self.own_namespace) {
            (Some(t), _) if !namespace.starts_with(&format!("tenant/{}/", t.tenant_id)) => {
                Err(ConfigError::Forbidden(namespace.to_owned()))
            }
            (None, Some(own)) if namespace != own => {
                Err(ConfigError::Forbidden(namespace.to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// The platform itself (the gateway for the admin): not a tenant, not a service
    /// limited to its own namespace.
    fn is_platform(&self) -> bool {
        self.tenant.is_none() && self.own_namespace.is_none()
    }
}

#[derive(Clone)]
pub struct Config {
    store: Store,
    hub: Hub,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

/// Events buffered per watch stream (each at most two 64 KiB values).
const WATCH_BUFFER: usize = 8;

#[tonic::async_trait]
impl ConfigService for Config {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Entry>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_key(&req.key)?;
        Ok(Response::new(
            self.store.get(&req.namespace, &req.key).await?,
        ))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_prefix(&req.prefix)?;
        let page = self
            .store
            .list(&req.namespace, &req.prefix, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(ListResponse {
            entries: page.entries,
            revision: page.revision,
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        let tenant = match req.tenant_id.as_str() {
            "" => None,
            id => Some(uuid::Uuid::parse_str(id).map_err(|_| {
                Status::invalid_argument(format!(
                    "{:?} is not a tenant id",
                    id.chars().take(80).collect::<String>()
                ))
            })?),
        };
        // A tenant lists its own; a service its own namespace only (never a listing); the
        // gateway as platform admin, any.
        let allowed = match (&caller.tenant, &caller.own_namespace, tenant) {
            (Some(own), _, Some(asked)) => own.tenant_id.as_uuid() == &asked,
            (Some(_), _, None) => false,
            (None, Some(_), _) => false,
            (None, None, _) => true,
        };
        if !allowed {
            return Err(Status::permission_denied(
                "these namespaces are not this caller's to list",
            ));
        }
        let (namespaces, next_page_token) = self
            .store
            .namespaces(tenant, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces,
            next_page_token,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<Entry>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_key(&req.key)?;
        let value = parse_value(&req.value_json)?;
        let entry = self
            .store
            .put(
                &req.namespace,
                &req.key,
                value,
                req.expected_revision,
                &caller.actor,
                "put",
            )
            .await?;
        tracing::info!(namespace = %req.namespace, key = %req.key, revision = entry.revision, actor = %caller.actor, "config put");
        Ok(Response::new(entry))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_key(&req.key)?;
        let revision = self
            .store
            .delete(
                &req.namespace,
                &req.key,
                req.expected_revision,
                &caller.actor,
            )
            .await?;
        tracing::info!(namespace = %req.namespace, key = %req.key, revision, actor = %caller.actor, "config delete");
        Ok(Response::new(DeleteResponse { revision }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_key(&req.key)?;
        let (changes, next_page_token) = self
            .store
            .history(&req.namespace, &req.key, req.limit, &req.page_token)
            .await?;
        Ok(Response::new(HistoryResponse {
            changes,
            next_page_token,
        }))
    }

    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<Entry>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        check_key(&req.key)?;
        let entry = self
            .store
            .rollback(&req.namespace, &req.key, req.revision, &caller.actor)
            .await?;
        tracing::info!(namespace = %req.namespace, key = %req.key, to = req.revision, revision = entry.revision, "config rollback");
        Ok(Response::new(entry))
    }

    async fn set_schema(
        &self,
        request: Request<SetSchemaRequest>,
    ) -> Result<Response<SetSchemaResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        let schema = match req.schema_json.trim() {
            "" => None,
            text => Some(parse_schema(text)?),
        };
        self.store.set_schema(&req.namespace, schema).await?;
        Ok(Response::new(SetSchemaResponse {
            namespace: req.namespace.clone(),
            schema_json: req.schema_json.clone(),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<GetSchemaRequest>,
    ) -> Result<Response<SetSchemaResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        caller.check(&req.namespace)?;
        let schema = self.store.schema(&req.namespace).await?;
        Ok(Response::new(SetSchemaResponse {
            namespace: req.namespace.clone(),
            schema_json: schema.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        if req.namespaces.is_empty() {
            return Err(ConfigError::Invalid("watch at least one namespace".into()).into());
        }
        for namespace in &req.namespaces {
            caller.check(namespace)?;
        }
        if req.from_revision < 0 {
            return Err(ConfigError::Invalid("from_revision must not be negative".into()).into());
        }
        if req.namespaces.len() > 16 {
            return Err(ConfigError::Invalid("watch at most 16 namespaces at once".into()).into());
        }
        let subscription = self
            .hub
            .subscribe(&req.namespaces, caller.tenant.map(|t| t.tenant_id))?;
        let (out, events) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch::serve_watch(
            self.hub.clone(),
            self.store.clone(),
            subscription,
            req.from_revision,
            out,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(events)
                .map(|event| event.map(|e| *e).map_err(|e| *e)),
        )))
    }

    async fn report_applied(
        &self,
        request: Request<ReportAppliedRequest>,
    ) -> Result<Response<ReportAppliedResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.get_ref();
        let own = format!("platform/{}", req.service);
        if caller.tenant.is_some() || caller.own_namespace.as_ref().is_some_and(|ns| *ns != own) {
            return Err(ConfigError::Forbidden("instance status".into()).into());
        }
        if req.instance.is_empty()
            || req.instance.len() > 200
            || req.service.is_empty()
            || req.service.len() > 63
        {
            return Err(ConfigError::Invalid(
                "instance (1-200) and service (1-63) are required".into(),
            )
            .into());
        }
        self.store
            .report_applied(&req.instance, &req.service, req.revision)
            .await?;
        Ok(Response::new(ReportAppliedResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let caller = Caller::of(&request)?;
        if !caller.is_platform() {
            return Err(ConfigError::Forbidden("instance status".into()).into());
        }
        let revision = self.store.revision().await?;
        let instances = self
            .store
            .instances()
            .await?
            .into_iter()
            .map(|row| InstanceStatus {
                instance: row.instance,
                service: row.service,
                applied_revision: row.applied,
                // Revisions of its own namespace it has not applied yet.
                lag: (row.wanted - row.applied).max(0),
                last_seen: Some(to_timestamp(row.last_seen)),
            })
            .collect();
        Ok(Response::new(StatusResponse {
            revision,
            instances,
        }))
    }

    async fn purge_tenant(
        &self,
        request: Request<PurgeTenantRequest>,
    ) -> Result<Response<PurgeTenantResponse>, Status> {
        let caller = Caller::of(&request)?;
        if !caller.is_platform() {
            return Err(ConfigError::Forbidden("purging a tenant".into()).into());
        }
        let tenant: borough_tenant::TenantId =
            request.get_ref().tenant_id.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "{} is not a tenant id",
                    store::shown(&request.get_ref().tenant_id)
                ))
            })?;
        let entries = self.store.purge_tenant(tenant, &caller.actor).await?;
        tracing::warn!(tenant = %tenant, entries, actor = %caller.actor, "tenant configuration purged");
        Ok(Response::new(PurgeTenantResponse { entries }))
    }
}

/// Serves until `shutdown` resolves, then fails readiness, waits the grace period, drains
/// in-flight calls and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(SERVICE);
    let tls = borough_net::tls_materials(SERVICE, &settings.tls, &metrics)?;
    let pool = db::lazy_pool(settings.database.url.expose(), &settings.database.pool)
        .map_err(|e| ServeError::DatabaseUrl(e.into()))?;
    let options = settings
        .database
        .url
        .expose()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| ServeError::DatabaseUrl(e.into()))?;
    let store = Store::new(pool.clone(), settings.quotas);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let hub = Hub::start(store.clone(), options, settings.watches, stopping);
    let shutdown = async move {
        shutdown.await;
        // Watch streams never end on their own: end them, or draining would wait forever.
        let _ = stop.send(true);
    };
    let routes = tonic::service::Routes::new(ConfigServiceServer::new(Config { store, hub }));
    borough_net::serve_grpc(
        SERVICE,
        &settings.server,
        tls,
        &POLICY,
        listeners,
        routes,
        std::sync::Arc::new(borough_tenancy::db::Database(pool)),
        metrics,
        shutdown,
    )
    .await
}
