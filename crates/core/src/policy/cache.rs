//! A map bounded by total weight (bytes) that evicts by an [`EvictionPolicy`]: a DRAM cache of
//! whole records in front of a store (the pool server's) with the tiers' policy.

use std::collections::HashMap;
use std::hash::Hash;

use super::{EvictionPolicy, InsertInfo, PolicyKind};

/// A weight-bounded map evicting by a policy. Not thread-safe (wrap it in a mutex).
pub struct WeightedCache<K, V> {
    kind: PolicyKind,
    map: HashMap<K, (V, u64)>,
    /// Built at the first insert, for `capacity / weight` objects.
    policy: Option<Box<dyn EvictionPolicy<K>>>,
    used: u64,
    capacity: u64,
}

impl<K: Copy + Eq + Hash + Send + 'static, V> WeightedCache<K, V> {
    /// An empty cache of at most `capacity` total weight under policy `kind`.
    pub fn new(kind: PolicyKind, capacity: u64) -> Self {
        WeightedCache {
            kind,
            map: HashMap::new(),
            policy: None,
            used: 0,
            capacity,
        }
    }

    /// The value under `key`, counted as a use.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let (v, _) = self.map.get(key)?;
        if let Some(p) = self.policy.as_mut() {
            p.access(*key);
        }
        Some(v)
    }

    /// True when `key` is cached (not counted as a use).
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Caches `value` of `weight` under `key`, replacing what was there, and evicts until the
    /// total weight is within the capacity. Returns the values that left (the replaced one and
    /// the evicted ones), for the caller to recycle. A value heavier than the whole capacity is
    /// not cached (and is returned).
    pub fn insert(&mut self, key: K, value: V, weight: u64) -> Vec<V> {
        let mut out = Vec::new();
        if weight > self.capacity {
            out.push(value);
            return out;
        }
        let (kind, capacity) = (self.kind, self.capacity);
        let policy = self
            .policy
            .get_or_insert_with(|| kind.build((capacity / weight.max(1)).max(1) as usize));
        match self.map.insert(key, (value, weight)) {
            Some((old, w)) => {
                self.used -= w;
                out.push(old);
                policy.access(key);
            }
            None => policy.insert(key, InsertInfo { parent: None }),
        }
        self.used += weight;
        while self.used > self.capacity {
            let Some(victim) = policy.evict(&mut |k| *k != key) else {
                break;
            };
            if let Some((v, w)) = self.map.remove(&victim) {
                self.used -= w;
                out.push(v);
            }
        }
        out
    }

    /// Removes `key` (not an eviction).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, w) = self.map.remove(key)?;
        self.used -= w;
        if let Some(p) = self.policy.as_mut() {
            p.remove(*key);
        }
        Some(v)
    }

    /// Objects cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total weight cached.
    pub fn weight(&self) -> u64 {
        self.used
    }

    /// The bound on the total weight.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_weight_and_returns_what_leaves() {
        for kind in [PolicyKind::HitDensity, PolicyKind::Lru] {
            let mut c = WeightedCache::new(kind, 300);
            assert!(c.insert(1u64, "a", 100).is_empty());
            assert!(c.insert(2, "b", 100).is_empty());
            assert_eq!(c.get(&1), Some(&"a"));
            assert!(c.insert(3, "c", 100).is_empty());
            // Full: the next insert evicts one (the policy's choice; both evict 2, the oldest
            // use, before learning).
            assert_eq!(c.insert(4, "d", 100), vec!["b"]);
            assert!(!c.contains(&2) && c.contains(&4));
            assert_eq!(c.weight(), 300);
            // Replacing returns the old value.
            assert_eq!(c.insert(4, "D", 100), vec!["d"]);
            assert_eq!(c.remove(&4), Some("D"));
            assert_eq!((c.len(), c.weight()), (2, 200));
            // Too heavy to cache at all.
            assert_eq!(c.insert(9, "huge", 301), vec!["huge"]);
            assert!(!c.contains(&9) && c.len() == 2);
            // A heavy one pushes out as many as it needs, never itself.
            let out = c.insert(5, "e", 300);
            assert_eq!(out.len(), 2, "{kind:?}");
            assert_eq!((c.len(), c.weight()), (1, 300));
            assert_eq!(c.get(&5), Some(&"e"));
        }
    }
}
