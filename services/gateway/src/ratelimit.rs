//! Per-tenant rate limits: a token bucket per tenant, per gateway replica.
//!
//! The policy is the platform default (`BOROUGH_RATE_LIMIT_RPS`, `BOROUGH_RATE_LIMIT_BURST`,
//! or `rate_limit.default` in `platform/gateway`) unless the tenant has an override
//! (`rate_limit.tenant.<id>`, written by `PUT /admin/v1/tenants/{id}/limits`); both
//! hot-reload. Limits are enforced per replica: with N gateway replicas behind a balancer a
//! tenant gets up to N times its rate (documented trade-off: no shared store on the hot
//! path).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use borough_config_client::remote::Snapshot;
use borough_tenant::TenantId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A token bucket's rate and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub requests_per_second: u32,
    /// 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub burst: u32,
}

impl Policy {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests_per_second == 0 || self.burst == 0 {
            return Err("requests_per_second and burst must be at least 1".to_owned());
        }
        if self.requests_per_second > 1_000_000 || self.burst > 1_000_000 {
            return Err("requests_per_second and burst must be at most 1000000".to_owned());
        }
        Ok(())
    }
}

/// The default policy and the tenants' overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub default: Policy,
    pub tenants: HashMap<TenantId, Policy>,
}

/// The config key of a tenant's override.
pub fn tenant_key(tenant: TenantId) -> String {
    format!("rate_limit.tenant.{tenant}")
}

/// `rate_limit.default` and `rate_limit.tenant.<id>` of `platform/gateway` over `env`.
pub fn parse_policies(snapshot: &Snapshot, env: &Policies) -> Result<Policies, String> {
    let policy = |key: &str, value: &serde_json::Value| -> Result<Policy, String> {
        let policy: Policy =
            serde_json::from_value(value.clone()).map_err(|e| format!("{key}: {e}"))?;
        policy.validate().map_err(|e| format!("{key}: {e}"))?;
        Ok(policy)
    };
    let mut policies = env.clone();
    for (key, value) in &snapshot.values {
        if key == "rate_limit.default" {
            policies.default = policy(key, value)?;
        } else if let Some(id) = key.strip_prefix("rate_limit.tenant.") {
            let tenant = id.parse().map_err(|_| format!("{key}: not a tenant id"))?;
            policies.tenants.insert(tenant, policy(key, value)?);
        }
    }
    Ok(policies)
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The outcome of one request's check.
pub struct Decision {
    pub policy: Policy,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// When refused: how long until a token is there.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), for
    /// every response of an admitted request and for the refusal.
    pub fn headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let reset = self.retry_after.map_or(0, borough_error::whole_seconds_up);
        if let Ok(value) = http::HeaderValue::from_str(&format!(
            "\"tenant\";q={};w=1;burst={}",
            self.policy.requests_per_second, self.policy.burst
        )) {
            headers.insert("ratelimit-policy", value);
        }
        if let Ok(value) =
            http::HeaderValue::from_str(&format!("\"tenant\";r={};t={reset}", self.remaining))
        {
            headers.insert("ratelimit", value);
        }
        headers
    }

    /// The 429 when the request is over the limit (with `Retry-After` and the headers).
    pub fn refusal(&self) -> Option<axum::response::Response> {
        use axum::response::IntoResponse;
        let retry_after = self.retry_after?;
        let mut response = borough_error::Problem::new(
            borough_error::ErrorKind::RateLimited,
            format!(
                "this tenant is over its rate limit of {} requests per second (burst {})",
                self.policy.requests_per_second, self.policy.burst
            ),
        )
        .with_retry_after(
            u32::try_from(borough_error::whole_seconds_up(retry_after).max(1)).unwrap_or(u32::MAX),
        )
        .into_response();
        response.headers_mut().extend(self.headers());
        Some(response)
    }
}

pub struct RateLimiter {
    policies: watch::Receiver<Policies>,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    metrics: std::sync::OnceLock<LimiterMetrics>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TenantLabels {
    tenant: std::sync::Arc<str>,
}

/// Admitted and limited requests; the limited ones per tenant (the first 100 tenants
/// limited, then `other`).
struct LimiterMetrics {
    decisions: prometheus_client::metrics::family::Family<
        DecisionLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    limited: prometheus_client::metrics::family::Family<
        TenantLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    tenants: borough_telemetry::metrics::LabelCap,
}

/// Buckets kept before idle full ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(policies: watch::Receiver<Policies>) -> Self {
        RateLimiter {
            policies,
            buckets: Mutex::new(HashMap::new()),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Counts decisions in `metrics` from now on.
    pub fn register_metrics(&self, metrics: &borough_telemetry::Metrics) {
        let limiter = LimiterMetrics {
            decisions: Default::default(),
            limited: Default::default(),
            tenants: borough_telemetry::metrics::LabelCap::new(100),
        };
        metrics.register(
            "rate_limit_decisions",
            "Tenant requests admitted or limited (429) by the rate limiter",
            limiter.decisions.clone(),
        );
        metrics.register(
            "rate_limited",
            "Requests limited (429) per tenant (the first 100 tenants limited, then other)",
            limiter.limited.clone(),
        );
        let _ = self.metrics.set(limiter);
    }

    fn count(&self, tenant: TenantId, admitted: bool) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        let decision = if admitted { "admitted" } else { "limited" };
        metrics
            .decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
        if !admitted {
            let tenant = metrics.tenants.label(&tenant.to_string());
            metrics
                .limited
                .get_or_create(&TenantLabels { tenant })
                .inc();
        }
    }

    pub fn policy(&self, tenant: TenantId) -> Policy {
        let policies = self.policies.borrow();
        policies
            .tenants
            .get(&tenant)
            .copied()
            .unwrap_or(policies.default)
    }

    /// Takes a token for `tenant`, or says when one will be there.
    /// Takes a token from the tenant's bucket, or says how long until there is one.
    pub fn check(&self, tenant: TenantId) -> Decision {
        let decision = self.decide(tenant);
        self.count(tenant, decision.retry_after.is_none());
        decision
    }

    fn decide(&self, tenant: TenantId) -> Decision {
        let policy = self.policy(tenant);
        let (rate, burst) = (
            f64::from(policy.requests_per_second),
            f64::from(policy.burst),
        );
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            // Full buckets hold no state worth keeping.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(tenant).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision {
                policy,
                remaining: bucket.tokens as u32,
                retry_after: None,
            }
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Decision {
                policy,
                remaining: 0,
                retry_after: Some(Duration::from_secs_f64(wait)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_renders_its_ratelimit_headers_and_a_429_only_when_refused() {
        let policy = Policy {
            requests_per_second: 5,
            burst: 10,
        };
        let admitted = Decision {
            policy,
            remaining: 7,
            retry_after: None,
        };
        let headers = admitted.headers();
        assert_eq!(headers["ratelimit-policy"], "\"tenant\";q=5;w=1;burst=10");
        assert_eq!(headers["ratelimit"], "\"tenant\";r=7;t=0");
        assert!(admitted.refusal().is_none());

        let refused = Decision {
            policy,
            remaining: 0,
            retry_after: Some(Duration::from_millis(1_200)),
        };
        let response = refused.refusal().expect("over the limit");
        assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["ratelimit"], "\"tenant\";r=0;t=2");
    }

    fn limiter(rps: u32, burst: u32) -> RateLimiter {
        let policies = Policies {
            default: Policy {
                requests_per_second: rps,
                burst,
            },
            tenants: HashMap::new(),
        };
        RateLimiter::new(watch::channel(policies).1)
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_refuses_with_the_wait_for_one_token() {
        let limiter = limiter(10, 3);
        let tenant = TenantId::new_v7();
        for expected in [2, 1, 0] {
            let decision = limiter.check(tenant);
            assert_eq!(decision.retry_after, None);
            assert_eq!(decision.remaining, expected);
        }
        let refused = limiter.check(tenant);
        let wait = refused.retry_after.expect("refused");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another tenant has its own bucket.
        assert!(limiter.check(TenantId::new_v7()).retry_after.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let limiter = limiter(10, 3);
        let tenant = TenantId::new_v7();
        let admitted = |limiter: &RateLimiter| {
            (0..10)
                .take_while(|_| limiter.check(tenant).retry_after.is_none())
                .count()
        };
        assert_eq!(admitted(&limiter), 3, "the burst");
        tokio::time::advance(Duration::from_millis(99)).await;
        let refused = limiter.check(tenant);
        assert_eq!(
            refused.retry_after,
            Some(Duration::from_millis(1)),
            "a token is 100 ms at 10 per second"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(admitted(&limiter), 1, "one token after 100 ms");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&limiter), 3, "never more than the burst");
    }

    #[test]
    fn overrides_parse_from_the_config_and_bad_ones_are_refused() {
        let env = Policies {
            default: Policy {
                requests_per_second: 50,
                burst: 100,
            },
            tenants: HashMap::new(),
        };
        let tenant = TenantId::new_v7();
        let mut snapshot = Snapshot::default();
        snapshot.values.insert(
            tenant_key(tenant),
            serde_json::json!({"requests_per_second": 5, "burst": 10}),
        );
        let parsed = parse_policies(&snapshot, &env).expect("valid");
        assert_eq!(parsed.tenants[&tenant].burst, 10);
        snapshot.values.insert(
            "rate_limit.default".into(),
            serde_json::json!({"requests_per_second": 0, "burst": 1}),
        );
        assert!(parse_policies(&snapshot, &env).is_err());
    }
}
