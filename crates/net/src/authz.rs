//! Who may call what: every gRPC call is authorised by its caller's identity, the SPIFFE ID
//! its client certificate names (`spiffe://<domain>/borough/<service>`), against the
//! callee's [`Policy`]: a table of which services may call which methods. Anything else is
//! `PERMISSION_DENIED`, logged with the caller's identity and counted.
//!
//! Two rules hold whatever the table says: tenant context (`x-borough-tenant-id`) is
//! accepted from the gateway alone (it authenticated the tenant's API key; nobody else
//! can speak for a tenant), and the health service answers any Borough process.
//!
//! The established [`Caller`] is a request extension for handlers that authorise finer
//! (the config service lets a service read only its own `platform/<service>` namespace).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use borough_telemetry::Metrics;
use borough_telemetry::metrics::LabelCap;
use borough_tls::server::PeerInfo;
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::body::Body;

pub use borough_tenant::context::TENANT_METADATA_KEY;

/// The service whose callers may act for tenants.
pub const GATEWAY: &str = "gateway";

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A Borough service, by the identity its certificate names.
    Service(String),
    /// Nobody verified: internal TLS is off (`BOROUGH_INTERNAL_TLS=off`, benchmarks only).
    Unverified,
}

impl Caller {
    /// The caller of a request (an extension set by [`AuthzLayer`]); unverified when
    /// there is none.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Unverified)
    }

    /// The calling service's name.
    pub fn service(&self) -> Option<&str> {
        match self {
            Caller::Service(name) => Some(name),
            Caller::Unverified => None,
        }
    }

    /// The gateway, or an unverified caller (with TLS off, everything is allowed).
    pub fn may_act_as_platform_admin(&self) -> bool {
        match self {
            Caller::Service(name) => name == GATEWAY,
            Caller::Unverified => true,
        }
    }
}

/// Who may call which methods: `callers` (service names; `*` any Borough service) may call
/// `methods` (`/package.Service/` for every method of a service, `/package.Service/Method`
/// for that method alone).
#[derive(Debug)]
pub struct Rule {
    pub callers: &'static [&'static str],
    pub methods: &'static [&'static str],
}

/// A service's authorisation table.
#[derive(Debug)]
pub struct Policy {
    pub rules: &'static [Rule],
}

/// Every Borough process may ask any other whether it is healthy.
const HEALTH: &str = "/grpc.health.v1.Health/";

impl Policy {
    /// Whether `caller` may call `path`.
    pub fn allows(&self, caller: &str, path: &str) -> bool {
        path.starts_with(HEALTH)
            || self.rules.iter().any(|rule| {
                (rule.callers.contains(&"*") || rule.callers.contains(&caller))
                    && rule.methods.iter().any(|m| {
                        // `/pkg.Service/`: every method; `/pkg.Service/Method`: that one.
                        if m.ends_with('/') {
                            path.starts_with(m)
                        } else {
                            path == *m
                        }
                    })
            })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    caller: String,
    method: Arc<str>,
}

/// Authorises every call by its caller's identity.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: &'static Policy,
    enforce: bool,
    denied: Family<DeniedLabels, Counter>,
    methods: Arc<LabelCap>,
}

impl AuthzLayer {
    /// `enforce`: false when internal TLS is off (no identities to check).
    pub fn new(policy: &'static Policy, enforce: bool, metrics: &Metrics) -> Self {
        let denied = Family::default();
        metrics.register(
            "grpc_calls_denied",
            "Calls refused (PERMISSION_DENIED) because the caller's identity may not make them",
            denied.clone(),
        );
        AuthzLayer {
            policy,
            enforce,
            denied,
            methods: Arc::new(LabelCap::new(256)),
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    layer: AuthzLayer,
    inner: S,
}

/// Why a call is refused, or who made it.
fn decide(
    policy: &Policy,
    peer: Option<&PeerInfo>,
    path: &str,
    carries_tenant: bool,
) -> Result<Caller, (String, String)> {
    let Some(identity) = peer.and_then(|p| p.identity.as_ref()) else {
        return Err((
            "unknown".to_owned(),
            "no verified client identity".to_owned(),
        ));
    };
    let caller = identity.service.as_str();
    if carries_tenant && caller != GATEWAY {
        return Err((
            caller.to_owned(),
            format!("{identity} may not act for a tenant: only the gateway may"),
        ));
    }
    if !policy.allows(caller, path) {
        return Err((caller.to_owned(), format!("{identity} may not call {path}")));
    }
    Ok(Caller::Service(caller.to_owned()))
}

impl<S> tower::Service<http::Request<Body>> for Authz<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        if !self.layer.enforce {
            request.extensions_mut().insert(Caller::Unverified);
            return Box::pin(inner.call(request));
        }
        let path = request.uri().path().to_owned();
        let verdict = decide(
            self.layer.policy,
            request.extensions().get::<PeerInfo>(),
            &path,
            request.headers().contains_key(TENANT_METADATA_KEY),
        );
        match verdict {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(inner.call(request))
            }
            Err((caller, reason)) => {
                tracing::warn!(caller = %caller, method = %path, reason = %reason, "call refused");
                let label = match caller.as_str() {
                    "gateway" | "user" | "query" | "config" => caller,
                    _ => "other".to_owned(),
                };
                self.layer
                    .denied
                    .get_or_create(&DeniedLabels {
                        caller: label,
                        method: self.layer.methods.label(&path),
                    })
                    .inc();
                let response = tonic::Status::permission_denied(reason).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borough_tls::Identity;

    const POLICY: Policy = Policy {
        rules: &[
            Rule {
                callers: &["gateway"],
                methods: &["/borough.user.v1.TenantAdminService/"],
            },
            Rule {
                callers: &["*"],
                methods: &["/borough.config.v1.ConfigService/Watch"],
            },
        ],
    };

    fn peer(service: &str) -> PeerInfo {
        PeerInfo {
            remote: None,
            identity: Some(Identity::new("borough.internal", service)),
            group: None,
        }
    }

    #[test]
    fn the_table_decides_by_caller_and_method_and_only_the_gateway_carries_tenants() {
        let admin = "/borough.user.v1.TenantAdminService/CreateTenant";
        assert_eq!(
            decide(&POLICY, Some(&peer("gateway")), admin, false),
            Ok(Caller::Service("gateway".into()))
        );
        assert!(decide(&POLICY, Some(&peer("query")), admin, false).is_err());
        let watch = "/borough.config.v1.ConfigService/Watch";
        assert!(decide(&POLICY, Some(&peer("query")), watch, false).is_ok());
        assert!(
            decide(
                &POLICY,
                Some(&peer("query")),
                "/borough.config.v1.ConfigService/WatchAll",
                false
            )
            .is_err(),
            "a method named alone is that method, not a prefix"
        );
        assert!(
            decide(&POLICY, Some(&peer("query")), watch, true).is_err(),
            "tenant context from another service"
        );
        assert!(decide(&POLICY, None, watch, false).is_err(), "no identity");
        assert!(
            decide(
                &POLICY,
                Some(&peer("query")),
                "/grpc.health.v1.Health/Check",
                false
            )
            .is_ok()
        );
    }
}
