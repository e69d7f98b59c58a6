//! Hit density: the tiers' default eviction policy. After LHD (Beckmann et al., "LHD:
//! Improving Cache Hit Rate by Maximizing Hit Density", NSDI 2018), with touch-count classes
//! remembered through eviction and a life-table estimator of return gaps.
//!
//! Why not LRU: in prefix-cache traces a block's next use is rarely soon. On the Mooncake
//! conversation trace no block is reused within ~120 requests of its last use (the user reads
//! the answer and types), the median first reuse comes ~500 requests later, and 3 in 4 blocks
//! are never reused. A small LRU cache holds only the youngest blocks, which are the least
//! likely to be hit, and drops every conversation just before it comes back.
//!
//! What this does. Time is counted in operations (one `insert` or `access` is one tick).
//!
//! - **Classes.** A block's class is how often it has been touched (1, 2, 3, 4 or more times)
//!   and whether it ended its chain at its last touch (no block was touched right after it as
//!   its child: a request's last block, usually partly filled, so the next turn's differs and
//!   it almost never returns). A block touched once is also told by where its chain began:
//!   from scratch (no parent, or a parent of the same kind), right after a known prefix (its
//!   parent was touched before), or further along a new segment. Twelve classes. An evicted
//!   block leaves a ghost (its last touch, count and kind) for `horizon` ticks, so a block
//!   that comes back resumes its count: "stored again after eviction" is the strongest sign
//!   that it will be used again.
//! - **Learning.** For each class, the policy learns the distribution of the gap from a touch
//!   to the next touch of the same block (resident or ghost), in geometric age bins (64 ticks,
//!   then +15% each) up to `horizon = max(8 · capacity, 65536)` ticks. Touches are counted in
//!   cohorts of `period = max(4096, horizon / 32)` ticks, and a bin of a cohort counts only
//!   once the cohort is old enough to have seen it whole (a life table), so blocks still
//!   waiting are never mistaken for blocks that will not return (no censoring bias). Cohorts
//!   older than the horizon merge into aggregates that decay by 0.9 at each recomputation.
//! - **Ranking.** Every `period` ticks, per class and age bin `a`, the hit density
//!   `D(a) = max over A ≥ a of P(return in [a, A) | alive at a) / E[ticks held in [a, A)]`:
//!   expected hits per tick of space if the block is kept for the best horizon from its age.
//!   Blocks older than the horizon have density 0. Until the first recomputation every density
//!   is 0 and ties go to the oldest, as in LRU.
//! - **Eviction.** Candidates are the oldest and the youngest evictable block of each class
//!   (each class's list is ordered by last touch, so within a class those are the ends of the
//!   age range); the lowest density goes (on a tie, the oldest). Then, while the victim's last
//!   inserted child in its prefix chain is resident and evictable, the victim becomes that child:
//!   a chain loses its tail first, so the prefix that remains is still usable.
//!
//! Deterministic (no randomness), O(1) per access and insert, O(request length) per eviction in
//! the worst case, and `O(classes · bins²)` (about 60k flops) per recomputation. Memory: a
//! resident entry per object (~150 bytes with its index, for 16-byte keys), and a ghost (~40
//! bytes) per object evicted within the horizon: at most 8 per object of capacity when every
//! store is new (plus up to a quarter not yet swept), so ~400 bytes per slot at worst, 0.02%
//! of 2 MiB blocks.
//!
//! Researched in a Python prototype first (not kept in the repository); when ported, this
//! reproduced its figures on the conversation trace to 0.03 points (it forgets a ghost whose
//! last touch is past the horizon even when the block was evicted after that; the prototype
//! kept those forever). `kvtier sim --sweep
//! default` gives the figures in docs/benchmarks.md.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use super::{EvictionPolicy, InsertInfo, Standing};

/// Touch-count buckets: 1, 2, 3, 4 or more.
const NCNT: u32 = 4;
/// Classes: a block touched once is one of four (a chain started from scratch or one hanging
/// off a known prefix, times whether it ended its request's chain); one touched more, one of
/// two per count bucket (whether it ended the chain at its last touch).
const NCLS: usize = 6 + 2 * (NCNT as usize - 1);
/// `Node::kind` bits: the block was the last of its chain at its last touch...
const TAIL: u8 = 1;
/// ... and (touched once) its chain began with blocks new to the tier.
const SCRATCH: u8 = 2;
/// ... or (touched once) it was the first new block after a known prefix.
const FRESH: u8 = 4;
/// First age bin edge, in ticks.
const FIRST: f64 = 64.0;
/// Age bins grow by this factor.
const RATIO: f64 = 1.15;
/// The horizon is this many times the capacity...
const HMULT: u64 = 8;
/// ... and at least this many ticks (and at most `HMAX`, which no tier reaches).
const HMIN: u64 = 1 << 16;
const HMAX: u64 = 1 << 48;
/// A cohort (and the recomputation period) is `max(PMIN, horizon / PDIV)` ticks.
const PMIN: u64 = 4096;
const PDIV: u64 = 32;
/// Decay of the aggregate statistics at each recomputation.
const ADECAY: f64 = 0.9;
/// Ghosts past the horizon are swept when the ghosts have grown by a quarter since the last
/// sweep (and by `GHOST_SLACK`), so sweeping is amortised O(1) per eviction.
const GHOST_SLACK: usize = 4096;

const NIL: u32 = u32::MAX;

fn class(cnt: u32, kind: u8) -> usize {
    let tail = (kind & TAIL != 0) as usize;
    match cnt.clamp(1, NCNT) {
        1 if kind & FRESH != 0 => 4 + tail,
        1 => tail + 2 * (kind & SCRATCH != 0) as usize,
        b => 6 + 2 * (b as usize - 2) + tail,
    }
}

struct Node<K> {
    key: K,
    last: u64,
    cnt: u32,
    /// `TAIL` and `SCRATCH` bits.
    kind: u8,
    parent: Option<K>,
    /// The last child inserted while this block was resident.
    kid: Option<K>,
    prev: u32,
    next: u32,
}

/// An intrusive list over `nodes`, oldest touch at `head`.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

#[derive(Clone, Copy)]
struct Ghost {
    last: u64,
    cnt: u32,
    kind: u8,
}

/// Touches and returns of one period of ticks.
struct Cohort {
    /// Touches by the class the block had after the touch.
    n: [f64; NCLS],
    /// Returns by the class at the earlier touch and the gap's bin (`class * bins + bin`).
    r: Vec<f64>,
}

/// The hit-density policy. See the module docs.
pub struct HitDensity<K> {
    horizon: u64,
    period: u64,
    /// Age bin edges: `edges[b] <= age < edges[b + 1]` is bin `b`; the last edge is past the
    /// horizon.
    edges: Vec<u64>,
    /// Width of each bin in ticks (the last one nominal).
    width: Vec<f64>,
    t: u64,
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    index: HashMap<K, u32>,
    lists: [List; NCLS],
    ghosts: HashMap<K, Ghost>,
    ghosts_after_sweep: usize,
    /// Cohorts not yet fully observed; `cohorts[0]` covers ticks `[coh0 · period, ...)`.
    cohorts: VecDeque<Cohort>,
    coh0: u64,
    n_agg: [f64; NCLS],
    r_agg: Vec<f64>,
    /// Hit density by class and age bin (`class * bins + bin`).
    density: Vec<f64>,
}

impl<K: Copy + Eq + Hash> HitDensity<K> {
    /// A policy for a tier holding about `capacity` objects (which sets the horizon).
    pub fn new(capacity: usize) -> Self {
        let horizon = HMULT.saturating_mul(capacity as u64).clamp(HMIN, HMAX);
        let period = (horizon / PDIV).max(PMIN);
        let mut edges = vec![0u64];
        let mut e = FIRST;
        while *edges.last().expect("non-empty") <= horizon {
            edges.push(e as u64);
            e *= RATIO;
        }
        let nb = edges.len();
        let mut width: Vec<f64> = edges.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        width.push(edges[nb - 1] as f64 * (RATIO - 1.0));
        HitDensity {
            horizon,
            period,
            edges,
            width,
            t: 0,
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; NCLS],
            ghosts: HashMap::new(),
            ghosts_after_sweep: 0,
            cohorts: VecDeque::new(),
            coh0: 0,
            n_agg: [0.0; NCLS],
            r_agg: vec![0.0; NCLS * nb],
            density: vec![0.0; NCLS * nb],
        }
    }

    /// The observation horizon in ticks (ghost lifetime, longest gap learnt).
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Ghosts held (evicted objects still remembered).
    pub fn ghosts(&self) -> usize {
        self.ghosts.len()
    }

    fn bins(&self) -> usize {
        self.edges.len()
    }

    fn bin(&self, age: u64) -> usize {
        self.edges.partition_point(|&e| e <= age) - 1
    }

    /// Density of a block of class `c` last touched `age` ticks ago.
    fn density_at(&self, c: usize, age: u64) -> f64 {
        if age <= self.horizon {
            self.density[c * self.bins() + self.bin(age)]
        } else {
            0.0
        }
    }

    fn cohort(&mut self, t0: u64) -> Option<&mut Cohort> {
        let k = t0 / self.period;
        let nb = self.bins();
        while self.coh0 + (self.cohorts.len() as u64) <= k {
            self.cohorts.push_back(Cohort {
                n: [0.0; NCLS],
                r: vec![0.0; NCLS * nb],
            });
        }
        if k >= self.coh0 {
            self.cohorts.get_mut((k - self.coh0) as usize)
        } else {
            None
        }
    }

    /// One tick: a touch of a block now of class `c`, whose previous touch (if remembered) was
    /// at `prev.0` in class `prev.1`.
    fn touch(&mut self, prev: Option<(u64, usize)>, c: usize) {
        self.t += 1;
        let nb = self.bins();
        if let Some((t0, c0)) = prev {
            let gap = self.t - t0;
            if gap <= self.horizon {
                let i = c0 * nb + self.bin(gap);
                match self.cohort(t0) {
                    Some(co) => co.r[i] += 1.0,
                    None => self.r_agg[i] += 1.0,
                }
            }
        }
        let t = self.t;
        if let Some(co) = self.cohort(t) {
            co.n[c] += 1.0;
        }
        if self.t % self.period == 0 {
            self.recompute();
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, c) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, class(n.cnt, n.kind))
        };
        match prev {
            NIL => self.lists[c].head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.lists[c].tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    /// Appends `i` at the young end of its class's list.
    fn push_young(&mut self, i: u32) {
        let c = {
            let n = &self.nodes[i as usize];
            class(n.cnt, n.kind)
        };
        let tail = self.lists[c].tail;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = tail;
            n.next = NIL;
        }
        match tail {
            NIL => self.lists[c].head = i,
            t => self.nodes[t as usize].next = i,
        }
        self.lists[c].tail = i;
    }

    /// Unlinks and frees `i`, returning its node's key and what its ghost would hold.
    fn release(&mut self, i: u32) -> (K, Ghost) {
        self.unlink(i);
        self.free.push(i);
        let n = &self.nodes[i as usize];
        self.index.remove(&n.key);
        let g = Ghost {
            last: n.last,
            cnt: n.cnt,
            kind: n.kind,
        };
        (n.key, g)
    }

    fn remember(&mut self, key: K, g: Ghost) {
        self.ghosts.insert(key, g);
    }

    /// A block is being touched after `parent`: if the parent was the last touch, it no
    /// longer ends its chain. It was the youngest block of all, so moving it to the young end
    /// of its new class keeps every list ordered. Its touch is recounted in its new class.
    fn continues(&mut self, parent: Option<&K>) {
        let Some(&p) = parent.and_then(|p| self.index.get(p)) else {
            return;
        };
        let n = &self.nodes[p as usize];
        if n.last != self.t || n.kind & TAIL == 0 {
            return;
        }
        let (c0, last) = (class(n.cnt, n.kind), n.last);
        self.unlink(p);
        self.nodes[p as usize].kind &= !TAIL;
        let n = &self.nodes[p as usize];
        let c1 = class(n.cnt, n.kind);
        self.push_young(p);
        if let Some(co) = self.cohort(last) {
            co.n[c0] -= 1.0;
            co.n[c1] += 1.0;
        }
    }

    /// Forgets ghosts past the horizon once they have grown enough since the last sweep.
    fn sweep_ghosts(&mut self) {
        let after = self.ghosts_after_sweep;
        if self.ghosts.len() <= after + after / 4 + GHOST_SLACK {
            return;
        }
        let (t, h) = (self.t, self.horizon);
        // A ghost older than the horizon is never used again (see `insert`).
        self.ghosts.retain(|_, g| t - g.last < h);
        self.ghosts_after_sweep = self.ghosts.len();
    }

    fn recompute(&mut self) {
        self.sweep_ghosts();
        let nb = self.bins();
        let lim = self.t as i64 - self.horizon as i64;
        // Cohorts whose youngest touch is older than the horizon are fully observed.
        while !self.cohorts.is_empty() && (((self.coh0 + 1) * self.period) as i64) <= lim {
            let co = self.cohorts.pop_front().expect("non-empty");
            self.coh0 += 1;
            for c in 0..NCLS {
                self.n_agg[c] += co.n[c];
            }
            for (a, r) in self.r_agg.iter_mut().zip(&co.r) {
                *a += r;
            }
        }
        let mut num = vec![0.0f64; nb];
        let mut den = vec![0.0f64; nb];
        let mut ret = vec![0.0f64; nb];
        let mut occ = vec![0.0f64; nb];
        for c in 0..NCLS {
            num.iter_mut().for_each(|x| *x = 0.0);
            den.iter_mut().for_each(|x| *x = 0.0);
            let ra = &self.r_agg[c * nb..(c + 1) * nb];
            let na = self.n_agg[c];
            let mut cum = 0.0;
            for b in 0..nb {
                num[b] += ra[b];
                den[b] += na - cum;
                cum += ra[b];
            }
            for (k, co) in self.cohorts.iter().enumerate() {
                // Age of the cohort's youngest touch: bins it has seen whole count.
                let age = self.t as i64 - ((self.coh0 + k as u64 + 1) * self.period) as i64;
                if age <= 0 {
                    break;
                }
                let rc = &co.r[c * nb..(c + 1) * nb];
                let mut cum = 0.0;
                for b in 0..nb {
                    if b + 1 >= nb || self.edges[b + 1] as i64 > age {
                        break;
                    }
                    num[b] += rc[b];
                    den[b] += co.n[c] - cum;
                    cum += rc[b];
                }
            }
            // Life table: hazard per bin, then returns and occupancy per block entering bin 0.
            let mut s = 1.0f64;
            for b in 0..nb {
                let h = if den[b] >= 1.0 {
                    (num[b] / den[b]).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                ret[b] = s * h;
                occ[b] = (s - ret[b] / 2.0) * self.width[b];
                s *= 1.0 - h;
            }
            // The best window [a, A) for each starting bin a.
            let d = &mut self.density[c * nb..(c + 1) * nb];
            for (a, d) in d.iter_mut().enumerate() {
                let (mut best, mut hits, mut held) = (0.0f64, 0.0f64, 0.0f64);
                for (r, o) in ret[a..].iter().zip(&occ[a..]) {
                    hits += r;
                    held += o;
                    if held > 0.0 && hits / held > best {
                        best = hits / held;
                    }
                }
                *d = best;
            }
            self.n_agg[c] *= ADECAY;
            self.r_agg[c * nb..(c + 1) * nb]
                .iter_mut()
                .for_each(|x| *x *= ADECAY);
        }
    }

    /// The first evictable block from `cursor` toward the other end of its class's list
    /// (`young`: from the young end toward the old), leaving the cursor on it.
    fn scan(
        &self,
        cursor: &mut u32,
        young: bool,
        evictable: &mut dyn FnMut(&K) -> bool,
    ) -> Option<u32> {
        while *cursor != NIL {
            let n = &self.nodes[*cursor as usize];
            if evictable(&n.key) {
                return Some(*cursor);
            }
            *cursor = if young { n.prev } else { n.next };
        }
        None
    }

    /// Evicts one object. `cursors` (per class, young and old end) start scans past the
    /// objects an earlier call with the same `evictable` found not evictable.
    fn evict_one(
        &mut self,
        cursors: &mut [[u32; 2]; NCLS],
        evictable: &mut dyn FnMut(&K) -> bool,
    ) -> Option<K> {
        // Lowest density, then oldest.
        let mut best: Option<(f64, u64, u32)> = None;
        for (c, cursor) in cursors.iter_mut().enumerate() {
            for (e, young) in [(0, true), (1, false)] {
                let Some(i) = self.scan(&mut cursor[e], young, evictable) else {
                    continue;
                };
                let age = self.t - self.nodes[i as usize].last;
                let d = self.density_at(c, age);
                if best.is_none_or(|(bd, ba, _)| d < bd || (d == bd && age > ba)) {
                    best = Some((d, age, i));
                }
            }
        }
        let (_, _, mut v) = best?;
        // Chain tails first: walk down to the deepest resident, evictable last child.
        loop {
            let n = &self.nodes[v as usize];
            let Some(kid) = n.kid else { break };
            match self.index.get(&kid) {
                Some(&k)
                    if self.nodes[k as usize].parent.as_ref() == Some(&n.key)
                        && evictable(&kid) =>
                {
                    v = k
                }
                _ => break,
            }
        }
        let (prev, next, c) = {
            let n = &self.nodes[v as usize];
            (n.prev, n.next, class(n.cnt, n.kind))
        };
        if cursors[c][0] == v {
            cursors[c][0] = prev;
        }
        if cursors[c][1] == v {
            cursors[c][1] = next;
        }
        let (key, g) = self.release(v);
        self.remember(key, g);
        Some(key)
    }

    fn cursors(&self) -> [[u32; 2]; NCLS] {
        self.lists.map(|l| [l.tail, l.head])
    }
}

impl<K: Copy + Eq + Hash + Send> EvictionPolicy<K> for HitDensity<K> {
    fn insert(&mut self, key: K, info: InsertInfo<K>) {
        if self.index.contains_key(&key) {
            // Stored again while resident (a replaced object): a use.
            self.access(key);
            return;
        }
        // A ghost counts while its last touch is within the horizon of this touch.
        let ghost = self
            .ghosts
            .remove(&key)
            .filter(|g| self.t + 1 - g.last <= self.horizon);
        let cnt = ghost.map_or(1, |g| g.cnt.saturating_add(1));
        // Touched once: a chain from scratch when its parent is too (or it has none).
        let pk = info
            .parent
            .as_ref()
            .and_then(|p| self.index.get(p))
            .map(|&i| {
                let n = &self.nodes[i as usize];
                (n.cnt, n.kind)
            });
        let kind = TAIL
            | match (cnt, info.parent.is_some(), pk) {
                (1, false, _) => SCRATCH,
                (1, _, Some((1, k))) if k & SCRATCH != 0 => SCRATCH,
                (1, _, Some((c, _))) if c >= 2 => FRESH,
                _ => 0,
            };
        self.continues(info.parent.as_ref());
        self.touch(
            ghost.map(|g| (g.last, class(g.cnt, g.kind))),
            class(cnt, kind),
        );
        let node = Node {
            key,
            last: self.t,
            cnt,
            kind,
            parent: info.parent,
            kid: None,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                assert!(self.nodes.len() < NIL as usize, "too many objects");
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        if let Some(&p) = info.parent.as_ref().and_then(|p| self.index.get(p)) {
            self.nodes[p as usize].kid = Some(key);
        }
        self.push_young(i);
    }

    fn access(&mut self, key: K) {
        let Some(&i) = self.index.get(&key) else {
            return;
        };
        let parent = self.nodes[i as usize].parent;
        self.continues(parent.as_ref());
        self.unlink(i);
        let (last, c0, c) = {
            let n = &mut self.nodes[i as usize];
            let c0 = class(n.cnt, n.kind);
            n.cnt = n.cnt.saturating_add(1);
            n.kind = TAIL;
            (n.last, c0, class(n.cnt, n.kind))
        };
        self.touch(Some((last, c0)), c);
        self.nodes[i as usize].last = self.t;
        self.push_young(i);
    }

    fn remove(&mut self, key: K) {
        if let Some(&i) = self.index.get(&key) {
            self.release(i);
        }
    }

    fn evicted(&mut self, key: K) {
        if let Some(&i) = self.index.get(&key) {
            let (k, g) = self.release(i);
            self.remember(k, g);
        }
    }

    fn evict(&mut self, evictable: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        let mut cursors = self.cursors();
        self.evict_one(&mut cursors, evictable)
    }

    fn evict_batch(&mut self, n: usize, evictable: &mut dyn FnMut(&K) -> bool) -> Vec<K> {
        // Nothing is touched during the batch, so a block found not evictable stays so.
        let mut cursors = self.cursors();
        let mut out = Vec::new();
        while out.len() < n {
            match self.evict_one(&mut cursors, evictable) {
                Some(k) => out.push(k),
                None => break,
            }
        }
        out
    }

    fn standing(&self, key: &K) -> Option<Standing> {
        let n = &self.nodes[*self.index.get(key)? as usize];
        Some(Standing {
            uses: n.cnt,
            density: self.density_at(class(n.cnt, n.kind), self.t - n.last),
        })
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn name(&self) -> &'static str {
        "hit-density"
    }
}

#[cfg(test)]
mod tests;
