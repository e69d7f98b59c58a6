//! Eviction policies: which object a full tier gives up. Pure code (no I/O), shared by the host
//! tier, the segment store and `kvtier sim`, so the simulator replays the real thing.
//!
//! - [`HitDensity`]: the default: evicts the block with the lowest learnt hit density for its
//!   touch count and age (after LHD), chain tails first (see its docs).
//! - [`Lru`]: least recently used.
//!
//! [`WeightedCache`] is a byte-bounded map that evicts by a policy (a DRAM cache of records).
//!
//! (A prefix-aware GreedyDual with chain-sampled admission tuned by miniature simulations was
//! the candidate before; measured side by side when hit density replaced it, hit density beat
//! it at every capacity of the sweep, so it is gone.)

mod cache;
mod density;
mod lru;

pub use cache::WeightedCache;
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
    /// The owner evicted `key` by its own choice (the segment store drops whole segments): forget
    /// it as an eviction, which a policy may remember. Default: [`remove`](Self::remove).
    fn evicted(&mut self, key: K) {
        self.remove(key);
    }
    /// What the policy knows of a tracked object, for owners that choose among objects
    /// themselves. `None` when the object is not tracked or the policy ranks by recency alone.
    fn standing(&self, _key: &K) -> Option<Standing> {
        None
    }
    /// Picks a victim among the objects for which `evictable` holds, forgets it and returns it.
    /// `None` when no object is evictable.
    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K>;
    /// Evicts up to `n` objects, the ones `n` calls of [`evict`](Self::evict) would pick, for
    /// an owner whose `evictable` does not change during the call (a policy may skip objects
    /// it already found not evictable). Fewer when fewer are evictable.
    fn evict_batch(&mut self, n: usize, evictable: &mut dyn FnMut(&K) -> bool) -> Vec<K> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.evict(evictable) {
                Some(k) => out.push(k),
                None => break,
            }
        }
        out
    }
    /// Objects tracked.
    fn len(&self) -> usize;
    /// True when nothing is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A short name (`hit-density`, `lru`).
    fn name(&self) -> &'static str;
}

/// A policy's view of one object (see [`EvictionPolicy::standing`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Times the object was stored or used, counting uses before an eviction the policy still
    /// remembers.
    pub uses: u32,
    /// Expected hits per unit of time the object occupies, from its class and age: higher is
    /// worth keeping longer. Comparable between objects of one policy at one moment; 0 until
    /// the policy has learnt.
    pub density: f64,
}

/// The policies kvtier offers, for configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Hit density (the default): [`HitDensity`].
    #[default]
    HitDensity,
    /// Least recently used.
    Lru,
}

impl PolicyKind {
    /// Parses `hit-density` (or `default`) or `lru`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "hit-density" | "default" => Ok(PolicyKind::HitDensity),
            "lru" => Ok(PolicyKind::Lru),
            _ => Err(crate::Error::invalid(format!(
                "unknown eviction policy `{s}`; expected hit-density or lru"
            ))),
        }
    }

    /// Builds the policy for a tier that holds about `capacity` objects.
    pub fn build<K: Copy + Eq + Hash + Send + 'static>(
        self,
        capacity: usize,
    ) -> Box<dyn EvictionPolicy<K>> {
        match self {
            PolicyKind::HitDensity => Box::new(HitDensity::new(capacity)),
            PolicyKind::Lru => Box::new(Lru::new()),
        }
    }
}
