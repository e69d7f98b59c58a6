//! Eviction policies: which object a full tier gives up. Pure code (no I/O), shared by the host
//! tier, the segment store and `kvtier sim`, so the simulator replays the real thing.
//!
//! - [`Lru`]: least recently used.
//! - [`PrefixAware`]: prefix-aware GreedyDual with tuned chain-sampled admission, the
//!   candidate to replace LRU (see its docs for where it stands).

mod lru;
mod prefix;

pub use lru::Lru;
pub use prefix::PrefixAware;

use std::hash::Hash;

/// What the owner knows about an object when it is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct InsertInfo<K> {
    /// The key of the block before this one in its prefix chain, if any.
    pub parent: Option<K>,
}

/// An eviction policy over keys `K`. The owner calls `insert` for every stored object,
/// `access` for every use of a stored one, `remove` when it drops one on its own, and `evict`
/// when it needs room.
pub trait EvictionPolicy<K: Copy + Eq + Hash>: Send {
    /// A new object was stored.
    fn insert(&mut self, key: K, info: InsertInfo<K>);
    /// Whether to store `key`, which a request wants and the tier does not hold. A policy may
    /// refuse objects unlikely to be used again before they would be evicted. The owner calls
    /// [`insert`](Self::insert) next if this returns true. Default: always.
    fn admit(&mut self, _key: K, _info: InsertInfo<K>) -> bool {
        true
    }
    /// A stored object was used.
    fn access(&mut self, key: K);
    /// The owner removed an object (not an eviction).
    fn remove(&mut self, key: K);
    /// Picks a victim among the objects for which `evictable` holds, forgets it and returns it.
    /// `None` when no object is evictable.
    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K>;
    /// Objects tracked.
    fn len(&self) -> usize;
    /// True when nothing is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A short name (`lru`, `prefix-aware`).
    fn name(&self) -> &'static str;
}

/// The policies kvtier offers, for configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Least recently used (the default).
    #[default]
    Lru,
    /// Prefix-aware GreedyDual with tuned chain-sampled admission (candidate).
    PrefixAware,
}

impl PolicyKind {
    /// Parses `lru` or `prefix-aware`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "lru" => Ok(PolicyKind::Lru),
            "prefix-aware" => Ok(PolicyKind::PrefixAware),
            _ => Err(crate::Error::invalid(format!(
                "unknown eviction policy `{s}`; expected lru or prefix-aware"
            ))),
        }
    }

    /// Builds the policy for a tier that holds about `capacity` objects.
    pub fn build<K: Copy + Eq + Hash + Ord + Send + 'static>(
        self,
        capacity: usize,
    ) -> Box<dyn EvictionPolicy<K>> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new()),
            PolicyKind::PrefixAware => Box::new(PrefixAware::new(capacity)),
        }
    }
}
