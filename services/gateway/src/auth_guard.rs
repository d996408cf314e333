//! Making failed authentication cheap: a key the directory refused is remembered for a
//! while (a negative cache), and each source address may send only so many unknown keys
//! (or wrong admin tokens) per second before it is refused without asking anyone.
//!
//! A random well-formed API key costs a gRPC call and a control-database query when it is
//! first seen; without these a caller could make the platform do that work at line rate.
//! With them, 10,000 random keys from one address cost about `failure_burst +
//! failures_per_sec × seconds` directory calls (docs/security.md has the measurement).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use borough_config_client::{Env, SettingsError, Var};

/// The bounds of failed authentication.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuthLimits {
    /// [`AuthLimits::NEGATIVE_TTL`].
    pub negative_ttl: Duration,
    /// [`AuthLimits::FAILURES_PER_SEC`].
    pub failures_per_sec: f64,
    /// [`AuthLimits::FAILURE_BURST`].
    pub failure_burst: f64,
}

impl Default for AuthLimits {
    /// The declared defaults.
    fn default() -> Self {
        AuthLimits {
            negative_ttl: Duration::from_secs(10),
            failures_per_sec: 5.0,
            failure_burst: 20.0,
        }
    }
}

impl AuthLimits {
    pub const NEGATIVE_TTL: Var = Var::new(
        "BOROUGH_AUTH_NEGATIVE_TTL",
        "10s",
        "How long a refused key is refused without asking the directory again (0: not \
         cached; up to 1h)",
    );
    pub const FAILURES_PER_SEC: Var = Var::new(
        "BOROUGH_AUTH_FAILURES_PER_SEC",
        "5",
        "Unknown keys and wrong admin tokens one source (an IPv4 address, an IPv6 /64) may \
         present a second; beyond them and the burst, 429 without a directory call",
    );
    pub const FAILURE_BURST: Var = Var::new(
        "BOROUGH_AUTH_FAILURE_BURST",
        "20",
        "The burst of BOROUGH_AUTH_FAILURES_PER_SEC",
    );
    pub const VARS: &[&Var] = &[
        &Self::NEGATIVE_TTL,
        &Self::FAILURES_PER_SEC,
        &Self::FAILURE_BURST,
    ];

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(AuthLimits {
            negative_ttl: env.duration_in(
                &Self::NEGATIVE_TTL,
                Duration::ZERO..=Duration::from_secs(3600),
            )?,
            failures_per_sec: env.parse_in(&Self::FAILURES_PER_SEC, 0.01..=100_000.0)?,
            failure_burst: env.parse_in(&Self::FAILURE_BURST, 1.0..=1_000_000.0)?,
        })
    }
}

/// Entries kept by the negative cache and the per-source buckets (each about 64 bytes).
const MAX_ENTRIES: usize = 65_536;

/// Keys (by hash) the directory refused lately.
pub struct NegativeCache {
    ttl: Duration,
    refused: Mutex<HashMap<[u8; 32], Instant>>,
}

impl NegativeCache {
    pub fn new(ttl: Duration) -> Self {
        NegativeCache {
            ttl,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `hash` was refused less than the TTL ago.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(hash).is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn insert(&self, hash: [u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            refused.retain(|_, at| at.elapsed() < ttl);
            if refused.len() >= MAX_ENTRIES {
                refused.clear();
            }
        }
        refused.insert(hash, Instant::now());
    }

    /// Forgets `hash` (a key issued after it was refused, say).
    pub fn remove(&self, hash: &[u8; 32]) {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }
}

/// Where failures are counted: an IPv4 address, or an IPv6 /64 (one host's usual share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                None => Source((u128::from(v6) >> 64 << 64) | 1),
            },
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket of failures per source.
pub struct FailureLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Source, Bucket>>,
}

impl FailureLimiter {
    pub fn new(limits: &AuthLimits) -> Self {
        FailureLimiter {
            rate: limits.failures_per_sec,
            burst: limits.failure_burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.at = now;
    }

    /// `None` while `source` may still fail; otherwise how long until it may again.
    pub fn refused_for(&self, source: Source) -> Option<Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get_mut(&source)?;
        self.refill(bucket, now);
        (bucket.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
    }

    /// Counts one failure of `source`.
    pub fn fail(&self, source: Source) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_ENTRIES && !buckets.contains_key(&source) {
            // Sources whose bucket has refilled hold nothing worth keeping.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_ENTRIES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_may_fail_its_burst_then_is_refused_until_its_bucket_refills() {
        let limiter = FailureLimiter::new(&AuthLimits {
            negative_ttl: Duration::from_secs(1),
            failures_per_sec: 10.0,
            failure_burst: 3.0,
        });
        let a = Source::of("10.0.0.1".parse().expect("ip"));
        let b = Source::of("10.0.0.2".parse().expect("ip"));
        assert_eq!(limiter.refused_for(a), None, "never failed");
        for _ in 0..3 {
            assert_eq!(limiter.refused_for(a), None);
            limiter.fail(a);
        }
        let wait = limiter.refused_for(a).expect("over its burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(limiter.refused_for(b), None, "another source is unaffected");
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_bit_prefix_and_mapped_ipv4_as_ipv4() {
        let one = Source::of("2001:db8::1".parse().expect("ip"));
        let other_host = Source::of("2001:db8::ffff:1".parse().expect("ip"));
        let other_net = Source::of("2001:db8:0:1::1".parse().expect("ip"));
        assert_eq!(one, other_host);
        assert_ne!(one, other_net);
        assert_eq!(
            Source::of("::ffff:10.0.0.1".parse().expect("ip")),
            Source::of("10.0.0.1".parse().expect("ip"))
        );
    }

    #[test]
    fn the_negative_cache_forgets_after_its_ttl_and_on_removal() {
        let cache = NegativeCache::new(Duration::from_millis(50));
        cache.insert([1; 32]);
        assert!(cache.contains(&[1; 32]));
        assert!(!cache.contains(&[2; 32]));
        cache.remove(&[1; 32]);
        assert!(!cache.contains(&[1; 32]));
        cache.insert([1; 32]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(&[1; 32]), "expired");
        let off = NegativeCache::new(Duration::ZERO);
        off.insert([3; 32]);
        assert!(!off.contains(&[3; 32]));
    }
}
