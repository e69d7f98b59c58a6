//! A prefix-aware eviction and admission policy: class-valued GreedyDual with chain-sampled
//! admission whose rate is tuned online by miniature simulations. The candidate to replace LRU
//! as the tiers' default (see "Where it stands").
//!
//! Why not LRU: in prefix-cache traces a block's next use is rarely soon. On the Mooncake
//! conversation trace no block is reused within ~120 requests of its last use (the user reads
//! the answer and types), the median first reuse comes ~500 requests later, and 3 in 4 blocks
//! are never reused. A small LRU cache holds only the youngest blocks, which are the least likely
//! to be hit, and every conversation is evicted just before it comes back.
//!
//! What this does, in three parts:
//!
//! 1. **Chain-sampled admission.** A new chain (a block whose parent is not cached, or is a
//!    shared prefix with several children such as a system prompt) is admitted with probability
//!    `p`, decided by a hash of the chain's first block; its later blocks inherit the decision
//!    (rejected chains are remembered in a small ghost list, so chains never have holes).
//!    Blocks that extend a cached chain (a conversation that came back) are always admitted.
//!    When the cache cannot keep every conversation until its next turn, it keeps a stable
//!    subset whole instead of all of them too briefly.
//! 2. **Class-valued GreedyDual eviction.** Each object has priority `L + value(class)`, where
//!    `L` is the priority of the last victim (so priorities age as in LRU) and `value` is the
//!    learnt hit rate of its class: chain starts, chain extensions, objects already hit. The
//!    lowest priority goes first; on a tie, the older (parents before children, as in LRU).
//!    With all values equal this is exactly LRU.
//! 3. **Online tuning.** Miniature caches, each holding a sample of the chains (1 in 2 to 1 in
//!    4) with the same fraction of the capacity, run fixed configurations (`p` in {1, 0.6, 0.35,
//!    0.2, 0.1} with learnt values, and `p = 1` with equal values, i.e. LRU); every `capacity`
//!    uses the live cache adopts the configuration whose miniature hit most (decayed), if it
//!    beats the current one by 30% (after Waldspurger et al., "Cache Modeling and Optimization
//!    using Miniature Simulations", USENIX ATC 2017). It starts as LRU.
//!
//! Where it stands (`kvtier sim --sweep default` on the conversation trace, every block of the
//! trace offered to every policy): 1.27x LRU's token hit ratio at 1,000 blocks, 1.36x at 2,000,
//! 1.17x at 5,000, and equal from 10,000 up (where the miniatures keep it in LRU mode: a
//! configuration must beat the live one by 30% in its miniature to be adopted). The best fixed
//! configuration at 5,000 blocks reaches 1.20x (p = 0.6), so admission sampling alone cannot
//! reach the 1.25x the capacity-planning issue asks for there; the offline optimum is 3x.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use lru::LruCache;

use super::{EvictionPolicy, InsertInfo};

/// What the miniatures try: admission rate, and whether eviction uses learnt class values
/// (`false`: every class is worth the same, which makes eviction plain LRU).
const CONFIGS: [(f64, bool); 6] = [
    (1.0, false),
    (1.0, true),
    (0.6, true),
    (0.35, true),
    (0.2, true),
    (0.1, true),
];
/// A parent with more cached children than this is a shared prefix: its children start chains.
const BRANCHY: u32 = 2;
/// Decay of learnt class values and miniature hit counts at each re-evaluation.
const DECAY: f64 = 0.9;
/// A miniature must beat the live configuration's by this factor to be adopted.
const SWITCH_MARGIN: f64 = 1.3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Start = 0,
    Extension = 1,
    Hit = 2,
}

/// A total order on f64 priorities (never NaN).
#[derive(Clone, Copy, Debug)]
struct Prio(f64);
impl PartialEq for Prio {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Prio {}
impl PartialOrd for Prio {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Prio {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

struct Entry<K> {
    prio: Prio,
    tick: u64,
    class: Class,
    rank: u64,
    parent: Option<K>,
    children: u32,
}

/// One GreedyDual cache with a fixed or adopted admission rate: the live cache and each
/// miniature are this.
struct Gd<K> {
    entries: HashMap<K, Entry<K>>,
    heap: BinaryHeap<Reverse<(Prio, u64, K)>>,
    ghosts: LruCache<K, u64>,
    floor: f64,
    tick: u64,
    rate: f64,
    /// Use learnt class values (else all classes are worth 1).
    valued: bool,
    /// Decayed (hits, inserts) per class.
    learn: [(f64, f64); 3],
    hits: f64,
}

impl<K: Copy + Eq + Hash + Ord> Gd<K> {
    fn new(rate: f64, valued: bool, capacity: usize) -> Self {
        Gd {
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            ghosts: LruCache::new(
                std::num::NonZeroUsize::new(capacity.max(256)).expect("non-zero"),
            ),
            floor: 0.0,
            tick: 0,
            rate,
            valued,
            learn: [(1.0, 2.0); 3],
            hits: 0.0,
        }
    }

    fn value(&self, c: Class) -> f64 {
        if !self.valued {
            return 1.0;
        }
        let (h, n) = self.learn[c as usize];
        h / n
    }

    fn push(&mut self, key: K, class: Class) {
        self.tick += 1;
        let prio = Prio(self.floor + self.value(class));
        if let Some(e) = self.entries.get_mut(&key) {
            e.prio = prio;
            e.tick = self.tick;
            e.class = class;
        }
        self.heap.push(Reverse((prio, self.tick, key)));
    }

    /// Where `key` (a block not stored here) belongs: its chain's rank, its class, and whether
    /// this cache admits it. `own` is the hash of the key, the rank of a new chain.
    fn decide(&mut self, parent: Option<K>, own: u64) -> (u64, Class, bool) {
        match parent.and_then(|p| self.entries.get(&p).map(|e| (e.rank, e.children))) {
            // Extends a cached chain: a conversation that came back.
            Some((rank, children)) if children < BRANCHY => (rank, Class::Extension, true),
            // Below a shared prefix (a system prompt): a new chain.
            Some(_) => (own, Class::Start, unit(own) < self.rate),
            None => match parent.and_then(|p| self.ghosts.get(&p).copied()) {
                // The parent was not admitted: neither is the child (no holes in chains).
                Some(rank) => (rank, Class::Start, false),
                None => (own, Class::Start, unit(own) < self.rate),
            },
        }
    }

    fn store(&mut self, key: K, parent: Option<K>, rank: u64, class: Class) {
        if let Some(p) = parent.and_then(|p| self.entries.get_mut(&p)) {
            p.children += 1;
        }
        self.learn[class as usize].1 += 1.0;
        self.entries.insert(
            key,
            Entry {
                prio: Prio(0.0),
                tick: 0,
                class,
                rank,
                parent,
                children: 0,
            },
        );
        self.push(key, class);
    }

    /// A request wants `key`: a hit if present, else admitted and stored or remembered as a
    /// ghost. Returns whether it is (now) stored.
    fn offer(&mut self, key: K, parent: Option<K>, own: u64) -> bool {
        if self.entries.contains_key(&key) {
            self.access(key);
            return true;
        }
        let (rank, class, admit) = self.decide(parent, own);
        if admit {
            self.store(key, parent, rank, class);
        } else {
            self.ghosts.put(key, rank);
        }
        admit
    }

    fn access(&mut self, key: K) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        // The hit is credited to the class the object lived in; it starts a new life as `Hit`.
        self.learn[e.class as usize].0 += 1.0;
        self.learn[Class::Hit as usize].1 += 1.0;
        self.hits += 1.0;
        self.push(key, Class::Hit);
    }

    fn forget(&mut self, key: K) -> bool {
        let Some(e) = self.entries.remove(&key) else {
            return false;
        };
        if let Some(p) = e.parent.and_then(|p| self.entries.get_mut(&p)) {
            p.children = p.children.saturating_sub(1);
        }
        true
    }

    /// Pops the lowest-priority current entry for which `evictable` holds.
    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        let mut skipped = Vec::new();
        let victim = loop {
            // Skipped (unevictable) entries go back on the heap whatever happens.
            let Some(Reverse((prio, tick, key))) = self.heap.pop() else {
                break None;
            };
            let current = self
                .entries
                .get(&key)
                .is_some_and(|e| e.tick == tick && e.prio == prio);
            if !current {
                continue;
            }
            if evictable(&key) {
                self.floor = self.floor.max(prio.0);
                break Some(key);
            }
            skipped.push(Reverse((prio, tick, key)));
        };
        self.heap.extend(skipped);
        if self.heap.len() > 4 * self.entries.len() + 1024 {
            // Drop stale heap entries.
            let entries = &self.entries;
            self.heap.retain(|Reverse((p, t, k))| {
                entries.get(k).is_some_and(|e| e.tick == *t && e.prio == *p)
            });
        }
        let key = victim?;
        self.forget(key);
        Some(key)
    }

    fn decay(&mut self) {
        for (h, n) in &mut self.learn {
            *h = (*h * DECAY).max(1e-3);
            *n = (*n * DECAY).max(2e-3);
        }
        self.hits *= DECAY;
    }
}

/// A miniature: a [`Gd`] on a sample of chains with a fraction of the capacity.
struct Mini<K> {
    gd: Gd<K>,
    capacity: usize,
}

/// kvtier's default policy. See the module documentation.
pub struct PrefixAware<K> {
    live: Gd<K>,
    minis: Vec<Mini<K>>,
    sample_every: u64,
    accesses: u64,
    tune_every: u64,
    /// The decision of the last `admit`, used by the `insert` that follows it.
    pending: Option<(K, u64, Class)>,
}

/// Uniform value in [0, 1) of a 64-bit hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn hash_of<K: Hash>(key: &K) -> u64 {
    struct W(xxhash_rust::xxh3::Xxh3Default);
    impl std::hash::Hasher for W {
        fn finish(&self) -> u64 {
            self.0.digest()
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut w = W(xxhash_rust::xxh3::Xxh3Default::new());
    key.hash(&mut w);
    std::hash::Hasher::finish(&w)
}

impl<K: Copy + Eq + Hash + Ord> PrefixAware<K> {
    /// A policy for a tier of about `capacity` objects.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // Miniatures of at least ~128 objects; none for tiny tiers (the rate then stays 1).
        let sample = (capacity / 128).clamp(1, 4);
        let minis = if sample >= 2 {
            CONFIGS
                .iter()
                .map(|&(r, v)| Mini {
                    gd: Gd::new(r, v, capacity / sample),
                    capacity: capacity / sample,
                })
                .collect()
        } else {
            Vec::new()
        };
        PrefixAware {
            live: Gd::new(1.0, false, capacity),
            minis,
            sample_every: sample as u64,
            accesses: 0,
            tune_every: (capacity as u64).max(1024),
            pending: None,
        }
    }

    /// The admission rate in use.
    pub fn rate(&self) -> f64 {
        self.live.rate
    }

    fn sampled(&self, rank: u64) -> bool {
        // A second hash of the rank, independent of the admission threshold.
        !self.minis.is_empty()
            && rank.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % self.sample_every == 0
    }

    fn tick(&mut self) {
        self.accesses += 1;
        if self.accesses % self.tune_every == 0 {
            // Adopt the best miniature's configuration, with a margin over the current one so
            // that noise does not flip it back and forth.
            let current = self
                .minis
                .iter()
                .find(|m| m.gd.rate == self.live.rate && m.gd.valued == self.live.valued)
                .map_or(0.0, |m| m.gd.hits);
            if let Some(best) = self
                .minis
                .iter()
                .max_by(|a, b| a.gd.hits.total_cmp(&b.gd.hits))
            {
                if best.gd.hits > current * SWITCH_MARGIN {
                    self.live.rate = best.gd.rate;
                    self.live.valued = best.gd.valued;
                }
            }
            self.live.decay();
            for m in &mut self.minis {
                m.gd.decay();
            }
        }
    }
}

impl<K: Copy + Eq + Hash + Ord + Send> EvictionPolicy<K> for PrefixAware<K> {
    fn admit(&mut self, key: K, info: InsertInfo<K>) -> bool {
        let own = hash_of(&key);
        let (rank, class, admit) = self.live.decide(info.parent, own);
        if self.sampled(rank) {
            for m in &mut self.minis {
                m.gd.offer(key, info.parent, own);
                while m.gd.entries.len() > m.capacity {
                    m.gd.evict(&mut |_| true);
                }
            }
        }
        self.tick();
        if admit {
            self.pending = Some((key, rank, class));
        } else {
            self.live.ghosts.put(key, rank);
        }
        admit
    }

    fn insert(&mut self, key: K, info: InsertInfo<K>) {
        if self.live.entries.contains_key(&key) {
            return;
        }
        let (rank, class) = match self.pending.take() {
            Some((k, rank, class)) if k == key => (rank, class),
            _ => {
                let (rank, class, _) = self.live.decide(info.parent, hash_of(&key));
                (rank, class)
            }
        };
        self.live.store(key, info.parent, rank, class);
    }

    fn access(&mut self, key: K) {
        if let Some(rank) = self.live.entries.get(&key).map(|e| e.rank) {
            if self.sampled(rank) {
                for m in &mut self.minis {
                    m.gd.access(key);
                }
            }
        }
        self.tick();
        self.live.access(key);
    }

    fn remove(&mut self, key: K) {
        self.live.forget(key);
    }

    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        self.live.evict(evictable)
    }

    fn len(&self) -> usize {
        self.live.entries.len()
    }

    fn name(&self) -> &'static str {
        "prefix-aware"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Lru;

    fn offer(p: &mut PrefixAware<u64>, key: u64, parent: Option<u64>) -> bool {
        let info = InsertInfo { parent };
        let ok = p.admit(key, info);
        if ok {
            p.insert(key, info);
        }
        ok
    }

    #[test]
    fn chains_are_admitted_or_refused_whole() {
        let mut p = PrefixAware::new(100);
        p.live.rate = 0.0;
        // A new chain is refused, and so is every block below it: no holes.
        assert!(!offer(&mut p, 1, None));
        assert!(!offer(&mut p, 2, Some(1)));
        assert!(!offer(&mut p, 3, Some(2)));
        // A chain that is cached keeps growing whatever the rate (a conversation came back).
        p.live.rate = 1.0;
        assert!(offer(&mut p, 10, None));
        p.live.rate = 0.0;
        assert!(offer(&mut p, 11, Some(10)));
        assert!(offer(&mut p, 12, Some(11)));
        assert_eq!(p.len(), 3);
        p.remove(12);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn with_equal_values_and_full_admission_it_is_lru() {
        let mut p = PrefixAware::new(1 << 20);
        let mut l = Lru::new();
        let mut x = 7u64;
        let mut present = std::collections::HashSet::new();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 300;
            if present.contains(&k) {
                p.access(k);
                l.access(k);
            } else {
                assert!(offer(&mut p, k, None));
                l.insert(k, InsertInfo::default());
                present.insert(k);
            }
            if present.len() > 100 {
                let a = p.evict(&mut |_| true).unwrap();
                let b = l.evict(&mut |_| true).unwrap();
                assert_eq!(a, b);
                present.remove(&a);
            }
        }
    }

    #[test]
    fn respects_evictable() {
        let mut p = PrefixAware::new(10);
        offer(&mut p, 1, None);
        offer(&mut p, 2, None);
        assert_eq!(p.evict(&mut |k| *k == 2), Some(2));
        assert_eq!(p.evict(&mut |k| *k == 2), None);
        assert_eq!(p.evict(&mut |_| true), Some(1));
    }

    /// A loop over twice the capacity: LRU never hits; the miniatures find that admitting a
    /// fraction of the chains pays, and the live cache adopts it.
    #[test]
    fn tuning_beats_lru_on_a_loop_larger_than_the_cache() {
        fn run(p: &mut dyn EvictionPolicy<u64>, cap: usize) -> u64 {
            let mut present = std::collections::HashSet::new();
            let mut hits = 0;
            for round in 0..60u64 {
                for k in 0..(2 * cap as u64) {
                    let _ = round;
                    if present.contains(&k) {
                        hits += 1;
                        p.access(k);
                    } else if p.admit(k, InsertInfo::default()) {
                        p.insert(k, InsertInfo::default());
                        present.insert(k);
                    }
                    while present.len() > cap {
                        let v = p.evict(&mut |_| true).unwrap();
                        present.remove(&v);
                    }
                }
            }
            hits
        }
        let lru = run(&mut Lru::new(), 512);
        let mut pa = PrefixAware::new(512);
        let hits = run(&mut pa, 512);
        assert_eq!(lru, 0);
        assert!(pa.rate() < 1.0, "the live cache adopted admission sampling");
        assert!(hits > 10_000, "prefix-aware hit {hits} times");
    }
}
