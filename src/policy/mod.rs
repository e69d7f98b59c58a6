//! Eviction policies: which object a full tier gives up. Pure code (no I/O), shared by the host
//! tier, the segment store and `kvtier sim`, so the simulator replays the real thing.
//!
//! - [`Lru`]: least recently used.
//! - [`HitDensity`]: a prefix-aware least-hit-density policy, the candidate to replace LRU
//!   (see its docs for where it stands).

mod density;
mod lru;

pub use density::HitDensity;
pub use lru::Lru;

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
    /// A short name (`lru`, `hit-density`).
    fn name(&self) -> &'static str;
}

/// The policies kvtier offers, for configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Least recently used (the default).
    #[default]
    Lru,
    /// Prefix-aware least hit density (candidate).
    HitDensity,
}

impl PolicyKind {
    /// Parses `lru` or `hit-density`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "lru" => Ok(PolicyKind::Lru),
            "hit-density" => Ok(PolicyKind::HitDensity),
            _ => Err(crate::Error::invalid(format!(
                "unknown eviction policy `{s}`; expected lru or hit-density"
            ))),
        }
    }

    /// Builds the policy for a tier that holds about `capacity` objects.
    pub fn build<K: Copy + Eq + Hash + Send + 'static>(
        self,
        capacity: usize,
    ) -> Box<dyn EvictionPolicy<K>> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new()),
            PolicyKind::HitDensity => Box::new(HitDensity::new(capacity)),
        }
    }
}
