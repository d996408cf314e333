//! Who an API key acts for, and the gateway's short-lived cache of those answers, so the
//! hot path costs no call; a revocation through the same gateway evicts at once, others
//! within the cache's TTL. The authoritative lookup is `borough_tenancy::directory`.
//!
//! Entries are kept past the TTL for a stale TTL: while the directory cannot be reached,
//! [`KeyCache::get_stale_hash`] still knows a key verified that recently (the gateway
//! accepts it for reads only, so cached users can be served during an outage).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::TenantId;
use crate::apikey;

/// Who an API key acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub key_id: Uuid,
}

/// A bounded TTL cache from a key's hash to its principal.
pub struct KeyCache {
    ttl: Duration,
    /// How long an entry is kept for [`KeyCache::get_stale_hash`] (at least `ttl`).
    keep: Duration,
    capacity: usize,
    entries: RwLock<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        KeyCache {
            ttl,
            keep: ttl,
            capacity: capacity.max(1),
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// Keeps entries for `stale_ttl` past their caching, for [`KeyCache::get_stale_hash`].
    pub fn with_stale_ttl(self, stale_ttl: Duration) -> Self {
        KeyCache {
            keep: stale_ttl.max(self.ttl),
            ..self
        }
    }

    /// The principal of a key by its hash, verified within the stale TTL: for when the
    /// directory cannot be reached, never instead of asking it.
    pub fn get_stale_hash(&self, hash: &[u8; 32]) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.keep)
            .map(|(principal, _)| *principal)
    }

    /// The cached principal of a presented key, if fresh.
    pub fn get(&self, presented: &str) -> Option<Principal> {
        self.get_hash(&apikey::hash(presented))
    }

    /// The cached principal of a key by its hash, if fresh.
    pub fn get_hash(&self, hash: &[u8; 32]) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(principal, _)| *principal)
    }

    pub fn insert(&self, presented: &str, principal: Principal) {
        self.insert_hash(apikey::hash(presented), principal);
    }

    /// Caches a key's principal by the key's hash.
    pub fn insert_hash(&self, hash: [u8; 32], principal: Principal) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            // Expired entries first; if none, the cache is full of live keys: start over.
            entries.retain(|_, (_, at)| at.elapsed() < self.keep);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// Forgets every entry of one key (after a revocation).
    pub fn evict_key(&self, key_id: Uuid) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (principal, _)| principal.key_id != key_id);
    }

    /// Forgets every entry of one tenant (after suspension).
    pub fn evict_tenant(&self, tenant_id: TenantId) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (principal, _)| principal.tenant_id != tenant_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            tenant_id: TenantId::new_v7(),
            key_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn cache_returns_fresh_entries_and_forgets_evicted_keys() {
        let cache = KeyCache::new(Duration::from_secs(60), 10);
        let p = principal();
        cache.insert("bk_key", p);
        assert_eq!(cache.get("bk_key"), Some(p));
        assert_eq!(cache.get("bk_other"), None);
        cache.evict_key(p.key_id);
        assert_eq!(cache.get("bk_key"), None);
    }

    #[test]
    fn a_key_past_its_ttl_is_known_only_as_stale_and_only_within_the_stale_ttl() {
        let cache =
            KeyCache::new(Duration::from_millis(10), 10).with_stale_ttl(Duration::from_millis(300));
        let p = principal();
        cache.insert("bk_key", p);
        let hash = apikey::hash("bk_key");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get("bk_key"), None);
        assert_eq!(cache.get_stale_hash(&hash), Some(p));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(cache.get_stale_hash(&hash), None);
        // Revoked: gone for stale use too.
        cache.insert("bk_key", p);
        cache.evict_key(p.key_id);
        assert_eq!(cache.get_stale_hash(&hash), None);
    }

    #[test]
    fn cache_with_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO, 10);
        cache.insert("bk_key", principal());
        assert_eq!(cache.get("bk_key"), None);
    }

    #[test]
    fn cache_never_grows_past_its_capacity() {
        let cache = KeyCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(&format!("bk_{i}"), principal());
        }
        let len = cache.entries.read().map(|e| e.len()).unwrap_or(0);
        assert!(len <= 3, "{len}");
        assert!(cache.get("bk_9").is_some());
    }
}
