//! Prefix-aware least hit density: kvtier's candidate replacement for LRU (not yet the default:
//! see "Where it stands").
//!
//! Why not LRU: in prefix-cache traces a block's next use is rarely soon. On the Mooncake
//! conversation trace no block is reused within its first ~120 requests (the user is reading the
//! answer and typing), the median first reuse comes ~500 requests later, and 3 in 4 blocks are
//! never reused. LRU keeps exactly the youngest blocks, which are the least likely to be hit
//! next, and a small LRU cache thrashes before any reuse arrives.
//!
//! What this does (after Beckmann et al., "LHD: Improving Cache Hit Rate by Maximizing Hit
//! Density", NSDI 2018): it learns, online, how likely an object of a given *class* and *age*
//! (time since its last use) is to be hit before it is evicted, and how much cache time it will
//! spend until then. Its *hit density* is hits per unit of cache space-time still to come. The
//! victim is the object of lowest hit density among a random sample. A few *explorer* objects
//! are kept to the oldest age whatever their density, so the statistics cover every age.
//!
//! Classes separate what behaves differently: how often the object was hit (0, 1, 2, 3+), and
//! whether its parent block had been hit when it was stored (a block appended to a conversation
//! that already came back is likelier to come back again).
//!
//! Prefix awareness: blocks of one chain share a *cohort rank* (inherited from the parent, drawn
//! anew where a chain starts or branches off a shared prefix such as a system prompt), which
//! scales density by up to 4x. So when a cache cannot keep every conversation until its next
//! turn, it keeps the same chains whole instead of cutting all of them short.
//!
//! Where it stands (`kvtier sim --sweep` on the conversation trace): ahead of LRU at 1,000 blocks
//! (4.8% against 4.5%) but behind it at 5,000 (9.6% against 11.3%) and 20,000 (26.5% against
//! 29.3%). The age histograms are censored: objects are evicted around the age where they would
//! be hit, so the learnt densities peak there and the policy keeps evicting at that age. The
//! offline optimum (34.8% at 5,000) shows how much a policy that keeps a stable subset of
//! conversations could win.

use std::collections::HashMap;
use std::hash::Hash;

use super::{EvictionPolicy, InsertInfo};

const AGE_BINS: usize = 256;
const HIT_CLASSES: usize = 4;
const CLASSES: usize = HIT_CLASSES * 2;
/// Candidates sampled per eviction.
const SAMPLES: usize = 64;
/// Weight kept from older statistics at each reconfiguration.
const EWMA: f64 = 0.9;
/// A parent with more cached children than this is a shared prefix: chains below it draw
/// their own rank.
const BRANCHY: u32 = 3;
const RANK_BOOST: f64 = 3.0;
/// At most one object in this many is an explorer.
const EXPLORER_SHARE: usize = 64;

struct Entry<K> {
    key: K,
    parent: Option<K>,
    last_use: u64,
    hits: u32,
    hot_parent: bool,
    children: u32,
    /// Kept until the oldest age whatever its density, so the policy keeps learning what
    /// objects of every class and age would do (otherwise a class judged worthless is always
    /// evicted young and never gets the chance to show otherwise).
    explorer: bool,
    /// Cohort rank: inherited along a chain, drawn at random where a chain starts or branches
    /// off a shared prefix. Among objects of similar density the lowest rank goes first, so
    /// the same chains survive eviction after eviction instead of all being cut short.
    rank: u32,
}

impl<K> Entry<K> {
    fn class(&self) -> usize {
        (self.hits as usize).min(HIT_CLASSES - 1) * 2 + self.hot_parent as usize
    }
}

#[derive(Clone)]
struct ClassStats {
    hits: [f64; AGE_BINS],
    evictions: [f64; AGE_BINS],
    density: [f64; AGE_BINS],
}

impl Default for ClassStats {
    fn default() -> Self {
        // Before anything is learnt, rank like LRU: older means lower density.
        let mut density = [0.0; AGE_BINS];
        for (a, d) in density.iter_mut().enumerate() {
            *d = 1.0 / (a as f64 + 1.0);
        }
        ClassStats {
            hits: [0.0; AGE_BINS],
            evictions: [0.0; AGE_BINS],
            density,
        }
    }
}

/// Prefix-aware least-hit-density eviction. See the module documentation.
pub struct HitDensity<K> {
    index: HashMap<K, usize>,
    entries: Vec<Entry<K>>,
    classes: Vec<ClassStats>,
    now: u64,
    age_unit: u64,
    next_reconfig: u64,
    reconfig_every: u64,
    rng: u64,
    explorers: usize,
    max_explorers: usize,
}

impl<K: Copy + Eq + Hash> HitDensity<K> {
    /// A policy for a tier of about `capacity` objects (sets the age resolution: ages are
    /// counted in uses of the tier, up to 32 times the capacity).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1) as u64;
        HitDensity {
            index: HashMap::new(),
            entries: Vec::new(),
            classes: vec![ClassStats::default(); CLASSES],
            now: 0,
            age_unit: (capacity * 32 / AGE_BINS as u64).max(1),
            next_reconfig: capacity.max(1024),
            reconfig_every: capacity.max(4096),
            rng: 0x9E37_79B9_7F4A_7C15,
            explorers: 0,
            max_explorers: (capacity as usize / EXPLORER_SHARE).max(1),
        }
    }

    fn age(&self, e: &Entry<K>) -> usize {
        (((self.now - e.last_use) / self.age_unit) as usize).min(AGE_BINS - 1)
    }

    fn tick(&mut self) {
        self.now += 1;
        if self.now >= self.next_reconfig {
            self.reconfigure();
            self.next_reconfig = self.now + self.reconfig_every;
        }
    }

    /// Recomputes hit densities from the age histograms (then decays them).
    fn reconfigure(&mut self) {
        for c in &mut self.classes {
            let (mut hits, mut events, mut lifetime) = (0.0, 0.0, 0.0);
            for a in (0..AGE_BINS).rev() {
                hits += c.hits[a];
                events += c.hits[a] + c.evictions[a];
                lifetime += events;
                c.density[a] = if lifetime > 1e-9 {
                    hits / lifetime
                } else {
                    0.0
                };
            }
            for a in 0..AGE_BINS {
                c.hits[a] *= EWMA;
                c.evictions[a] *= EWMA;
            }
        }
    }

    fn density(&self, e: &Entry<K>) -> f64 {
        self.classes[e.class()].density[self.age(e)]
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn forget(&mut self, key: K) -> Option<Entry<K>> {
        let i = self.index.remove(&key)?;
        let e = self.entries.swap_remove(i);
        if i < self.entries.len() {
            let moved = self.entries[i].key;
            self.index.insert(moved, i);
        }
        if e.explorer {
            self.explorers -= 1;
        }
        if let Some(p) = e.parent.and_then(|p| self.index.get(&p).copied()) {
            self.entries[p].children = self.entries[p].children.saturating_sub(1);
        }
        Some(e)
    }

    /// The victim's index: the lowest density among a random sample (young explorers
    /// excluded); a full scan when the sample holds nothing evictable, and explorers too when
    /// nothing else is.
    fn choose(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<usize> {
        let n = self.entries.len();
        let sample: Vec<usize> = if n <= SAMPLES {
            (0..n).collect()
        } else {
            (0..SAMPLES)
                .map(|_| (self.next_rand() % n as u64) as usize)
                .collect()
        };
        let pick = |this: &Self,
                    idx: &mut dyn Iterator<Item = usize>,
                    protect: bool,
                    evictable: &mut dyn FnMut(&K) -> bool| {
            let mut best: Option<(f64, usize)> = None;
            for i in idx {
                let e = &this.entries[i];
                if (protect && e.explorer && this.age(e) < AGE_BINS - 1) || !evictable(&e.key) {
                    continue;
                }
                let score =
                    this.density(e) * (1.0 + RANK_BOOST * (e.rank as f64 / u32::MAX as f64));
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, i));
                }
            }
            best.map(|(_, i)| i)
        };
        pick(self, &mut sample.into_iter(), true, evictable)
            .or_else(|| pick(self, &mut (0..n), true, evictable))
            .or_else(|| pick(self, &mut (0..n), false, evictable))
    }
}

impl<K: Copy + Eq + Hash + Send> EvictionPolicy<K> for HitDensity<K> {
    fn insert(&mut self, key: K, info: InsertInfo<K>) {
        self.tick();
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].last_use = self.now;
            return;
        }
        let parent = info.parent.and_then(|p| self.index.get(&p).copied());
        let hot_parent = parent.is_some_and(|p| self.entries[p].hits > 0);
        let explorer = self.explorers < self.max_explorers && self.next_rand() % 16 == 0;
        let rank = match parent {
            Some(p) if self.entries[p].children <= BRANCHY => self.entries[p].rank,
            _ => self.next_rand() as u32,
        };
        self.explorers += explorer as usize;
        if let Some(p) = parent {
            self.entries[p].children += 1;
        }
        self.index.insert(key, self.entries.len());
        self.entries.push(Entry {
            key,
            parent: info.parent,
            last_use: self.now,
            hits: 0,
            hot_parent,
            children: 0,
            explorer,
            rank,
        });
    }

    fn access(&mut self, key: K) {
        self.tick();
        let Some(&i) = self.index.get(&key) else {
            return;
        };
        let age = self.age(&self.entries[i]);
        let class = self.entries[i].class();
        self.classes[class].hits[age] += 1.0;
        let e = &mut self.entries[i];
        e.hits = e.hits.saturating_add(1);
        e.last_use = self.now;
    }

    fn remove(&mut self, key: K) {
        self.forget(key);
    }

    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        let i = self.choose(evictable)?;
        let (age, class, key) = {
            let e = &self.entries[i];
            (self.age(e), e.class(), e.key)
        };
        self.classes[class].evictions[age] += 1.0;
        self.forget(key);
        Some(key)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn name(&self) -> &'static str {
        "hit-density"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_and_forgets() {
        let mut p = HitDensity::new(8);
        for k in 0..5u32 {
            p.insert(
                k,
                InsertInfo {
                    parent: k.checked_sub(1),
                },
            );
        }
        assert_eq!(p.len(), 5);
        p.remove(2);
        assert_eq!(p.len(), 4);
        let mut evicted = Vec::new();
        while let Some(k) = p.evict(&mut |_| true) {
            evicted.push(k);
        }
        evicted.sort();
        assert_eq!(evicted, vec![0, 1, 3, 4]);
    }

    #[test]
    fn respects_evictable() {
        let mut p = HitDensity::new(4);
        p.insert(1u32, InsertInfo::default());
        p.insert(2u32, InsertInfo::default());
        assert_eq!(p.evict(&mut |k| *k == 2), Some(2));
        assert_eq!(p.evict(&mut |k| *k == 2), None);
        assert_eq!(p.len(), 1);
    }

    /// Objects that are reused only after a long pause, mixed with many that are never reused:
    /// hit density learns to keep the former and beats LRU, which thrashes.
    #[test]
    fn learns_delayed_reuse_and_beats_lru() {
        fn run(p: &mut dyn EvictionPolicy<u64>, cap: usize) -> u64 {
            let mut cached = std::collections::HashSet::new();
            let mut hits = 0;
            let mut next = 1_000_000u64;
            for round in 0..200u64 {
                // 50 "regulars" come back every round, each after 300 one-off objects.
                for r in 0..50u64 {
                    let key = r;
                    if cached.contains(&key) {
                        hits += 1;
                        p.access(key);
                    } else {
                        cached.insert(key);
                        p.insert(key, InsertInfo::default());
                    }
                    for _ in 0..6 {
                        next += 1;
                        cached.insert(next);
                        p.insert(next, InsertInfo::default());
                    }
                    while cached.len() > cap {
                        let v = p.evict(&mut |_| true).unwrap();
                        cached.remove(&v);
                    }
                }
                let _ = round;
            }
            hits
        }
        let lru = run(&mut crate::policy::Lru::new(), 200);
        let hd = run(&mut HitDensity::new(200), 200);
        assert!(hd > 2 * lru.max(1), "hit density {hd} hits vs LRU {lru}");
    }
}
