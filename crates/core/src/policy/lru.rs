//! Least recently used.

use std::hash::Hash;

use lru::LruCache;

use super::{EvictionPolicy, InsertInfo};

/// Least recently used: evicts the evictable object whose last use is oldest.
pub struct Lru<K: Hash + Eq> {
    order: LruCache<K, ()>,
}

impl<K: Hash + Eq> Lru<K> {
    /// An empty policy.
    pub fn new() -> Self {
        Lru {
            order: LruCache::unbounded(),
        }
    }
}

impl<K: Hash + Eq> Default for Lru<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash + Send> EvictionPolicy<K> for Lru<K> {
    fn insert(&mut self, key: K, _info: InsertInfo<K>) {
        self.order.put(key, ());
    }
    fn access(&mut self, key: K) {
        self.order.promote(&key);
    }
    fn remove(&mut self, key: K) {
        self.order.pop(&key);
    }
    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        let victim = self
            .order
            .iter()
            .rev()
            .map(|(k, _)| *k)
            .find(|k| evictable(k))?;
        self.order.pop(&victim);
        Some(victim)
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    fn name(&self) -> &'static str {
        "lru"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_evictable() {
        let mut p = Lru::new();
        for k in 0..4u32 {
            p.insert(k, InsertInfo::default());
        }
        p.access(0);
        assert_eq!(p.evict(&mut |_| true), Some(1));
        assert_eq!(p.evict(&mut |k| *k != 2), Some(3));
        p.remove(2);
        assert_eq!(p.evict(&mut |_| true), Some(0));
        assert_eq!(p.evict(&mut |_| true), None);
    }
}
