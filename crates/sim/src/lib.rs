//! `kvtier sim`: capacity planning by replaying a request trace through kvtier's real eviction
//! policies ([`kvtier_core::policy`]), tier by tier: a GPU prefix cache per replica, a host-memory tier
//! per node, and the shared pool.
//!
//! A request on replica `r` (on node `r % nodes`) takes the longest prefix of its blocks from
//! the replica's GPU cache, extends it from the node's host tier, then from the pool; every
//! block of the request then ends up in all three (the engine computed or loaded it, kvtier
//! saves it and writes it through). Hit tokens are `min(blocks · block_tokens, input_length)`.

pub mod plot;
pub mod trace;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;

use kvtier_core::error::{Error, Result};
use kvtier_core::policy::{EvictionPolicy, InsertInfo, PolicyKind};
pub use trace::Request;

/// How much a tier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Capacity {
    /// The tier does not exist.
    Absent,
    /// At most this many blocks.
    Blocks(usize),
    /// No bound.
    Unbounded,
}

impl Capacity {
    /// Parses `0` / `none` (absent), `inf` / `unbounded`, or a number of blocks.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "0" | "none" | "absent" => Ok(Capacity::Absent),
            "inf" | "unbounded" => Ok(Capacity::Unbounded),
            n => n
                .replace('_', "")
                .parse::<usize>()
                .map(Capacity::Blocks)
                .map_err(|_| {
                    Error::invalid(format!(
                        "capacity `{s}`: expected a number of blocks, `inf` or `none`"
                    ))
                }),
        }
    }
}

/// Which replica serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Request `i` goes to replica `i % replicas`.
    RoundRobin,
    /// To the replica whose GPU cache plus its node's host tier hold the longest prefix (then
    /// the longest in GPU), among replicas whose recent load is within 1.25x of the average;
    /// ties go round robin.
    PrefixAware,
}

impl Routing {
    /// Parses `round-robin` or `prefix-aware`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "round-robin" | "rr" => Ok(Routing::RoundRobin),
            "prefix-aware" | "prefix" => Ok(Routing::PrefixAware),
            _ => Err(Error::invalid(format!(
                "routing `{s}`: expected round-robin or prefix-aware"
            ))),
        }
    }
}

/// What to simulate. Every figure that is not measured is a stated default and overridable.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    /// Engine replicas. Default: `1`.
    pub replicas: usize,
    /// Nodes (replica `r` runs on node `r % nodes`). Default: `1`.
    pub nodes: usize,
    /// GPU prefix cache per replica. Default: absent.
    pub gpu: Capacity,
    /// Host-memory tier per node. Default: absent.
    pub host: Capacity,
    /// Shared pool. Default: unbounded.
    pub pool: Capacity,
    /// Routing policy. Default: round robin.
    pub routing: Routing,
    /// Eviction policy of every tier. Default: `hit-density` (the tiers' default).
    pub policy: PolicyKind,
    /// Tokens per trace block. Default: `512` (the Mooncake traces).
    pub block_tokens: u64,
    /// KV bytes per token of the model. Default: `131072` (128 KiB: an 8B-class model, bf16).
    pub kv_bytes_per_token: u64,
    /// Prefill throughput of one replica in tokens per second. Default: `8000` (an 8B-class
    /// model on one H100-class GPU at long context).
    pub prefill_tokens_per_s: f64,
    /// Host tier to GPU bandwidth in GB/s. Default: `20` (PCIe Gen4 x16, achieved).
    pub host_gbps: f64,
    /// Pool to GPU bandwidth in GB/s. Default: `5` (a 50 Gb/s RDMA NIC).
    pub pool_gbps: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            replicas: 1,
            nodes: 1,
            gpu: Capacity::Absent,
            host: Capacity::Absent,
            pool: Capacity::Unbounded,
            routing: Routing::RoundRobin,
            policy: PolicyKind::HitDensity,
            block_tokens: 512,
            kv_bytes_per_token: 128 << 10,
            prefill_tokens_per_s: 8000.0,
            host_gbps: 20.0,
            pool_gbps: 5.0,
        }
    }
}

impl SimConfig {
    /// Checks the values and names the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, why: &str| Err(Error::invalid(format!("sim option `{f}`: {why}")));
        if self.replicas == 0 {
            return bad("replicas", "must be at least 1");
        }
        if self.nodes == 0 || self.nodes > self.replicas {
            return bad("nodes", "must be between 1 and the number of replicas");
        }
        if self.block_tokens == 0 {
            return bad("block_tokens", "must be at least 1");
        }
        for (f, v) in [
            ("prefill_tokens_per_s", self.prefill_tokens_per_s),
            ("host_gbps", self.host_gbps),
            ("pool_gbps", self.pool_gbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(f, "must be a positive number");
            }
        }
        Ok(())
    }
}

/// Hashes trace block ids (u64) with the splitmix64 finaliser: the eviction predicate looks a
/// block up for every candidate, and SipHash made that most of a replay. Trace ids come from a
/// file, not an adversary.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        let mut z = (self.0 ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// One tier: a block set bounded by a policy.
struct Tier {
    capacity: Capacity,
    /// Block id to the index of the request that last stored it.
    blocks: IdMap<usize>,
    policy: Box<dyn EvictionPolicy<u64>>,
    evictions: u64,
}

impl Tier {
    fn new(capacity: Capacity, policy: PolicyKind) -> Self {
        let hint = match capacity {
            Capacity::Blocks(n) => n,
            _ => 1 << 20,
        };
        Tier {
            capacity,
            blocks: IdMap::default(),
            policy: policy.build(hint),
            evictions: 0,
        }
    }

    fn exists(&self) -> bool {
        self.capacity != Capacity::Absent
    }

    /// Extends a prefix of `k` blocks with the blocks this tier holds.
    fn extend(&self, ids: &[u64], mut k: usize) -> usize {
        if self.exists() {
            while k < ids.len() && self.blocks.contains_key(&ids[k]) {
                k += 1;
            }
        }
        k
    }

    /// Stores every block of a request (accessing those present); returns how many were new.
    fn store(&mut self, request: usize, ids: &[u64]) -> u64 {
        if !self.exists() {
            return 0;
        }
        let mut new = 0;
        for (j, &id) in ids.iter().enumerate() {
            if let Some(at) = self.blocks.get_mut(&id) {
                *at = request;
                self.policy.access(id);
                continue;
            }
            let info = InsertInfo {
                parent: j.checked_sub(1).map(|p| ids[p]),
            };
            if self.policy.admit(id, info) {
                self.blocks.insert(id, request);
                self.policy.insert(id, info);
                new += 1;
            }
        }
        if let Capacity::Blocks(cap) = self.capacity {
            let excess = self.blocks.len().saturating_sub(cap);
            if excess > 0 {
                // Blocks of the request being stored go last.
                let blocks = &self.blocks;
                let mut victims = self
                    .policy
                    .evict_batch(excess, &mut |k| blocks.get(k) != Some(&request));
                if victims.len() < excess {
                    let more = self
                        .policy
                        .evict_batch(excess - victims.len(), &mut |_| true);
                    victims.extend(more);
                }
                for v in victims {
                    self.blocks.remove(&v);
                    self.evictions += 1;
                }
            }
        }
        new
    }
}

/// Figures of one tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierReport {
    /// `gpu`, `host` or `pool`.
    pub tier: &'static str,
    /// Blocks per instance (per replica, per node, or the whole pool); `None` when unbounded.
    pub capacity_blocks: Option<usize>,
    /// Bytes per instance at the model's KV size; `None` when unbounded.
    pub capacity_bytes: Option<u64>,
    /// Prompt tokens served from this tier.
    pub hit_tokens: u64,
    /// `hit_tokens` over all prompt tokens.
    pub hit_ratio: f64,
    /// Bytes per second read from this tier into engines (sum over instances).
    pub read_bytes_per_s: f64,
    /// Bytes per second written into this tier (sum over instances).
    pub write_bytes_per_s: f64,
    /// Blocks evicted.
    pub evictions: u64,
}

/// Estimated time to first token.
#[derive(Debug, Clone, Serialize)]
pub struct TtftReport {
    /// Mean seconds with the tiers.
    pub mean_s: f64,
    /// 90th percentile seconds with the tiers.
    pub p90_s: f64,
    /// Mean seconds with no cache at all (every prompt prefilled).
    pub no_cache_mean_s: f64,
    /// 90th percentile seconds with no cache.
    pub no_cache_p90_s: f64,
}

/// Result of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// The configuration replayed.
    pub config: SimConfig,
    /// Requests replayed.
    pub requests: usize,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Trace duration in seconds.
    pub duration_s: f64,
    /// Per tier that exists.
    pub tiers: Vec<TierReport>,
    /// Hit tokens over prompt tokens, all tiers.
    pub hit_ratio: f64,
    /// Prefill tokens not computed thanks to the tiers.
    pub prefill_tokens_saved: u64,
    /// Queueing-free TTFT estimate (prefill of the missed tokens plus loading the hit blocks).
    pub ttft: TtftReport,
}

/// Prefix-aware routing skips replicas with more than this times the average recent load.
const LOAD_SLACK: f64 = 1.25;

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Replays `trace` under `cfg`. `progress(done, total)` is called every ~5% of requests.
pub fn simulate(
    trace: &[Request],
    cfg: &SimConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<SimReport> {
    cfg.validate()?;
    let mut gpu: Vec<Tier> = (0..cfg.replicas)
        .map(|_| Tier::new(cfg.gpu, cfg.policy))
        .collect();
    let mut host: Vec<Tier> = (0..cfg.nodes)
        .map(|_| Tier::new(cfg.host, cfg.policy))
        .collect();
    let mut pool = Tier::new(cfg.pool, cfg.policy);
    let b = cfg.block_tokens;
    let block_bytes = (cfg.kv_bytes_per_token * b) as f64;
    let (mut hits, mut reads, mut writes) = ([0u64; 3], [0u64; 3], [0u64; 3]);
    let mut ttft = Vec::with_capacity(trace.len());
    let mut ttft_none = Vec::with_capacity(trace.len());
    let mut input_tokens = 0;
    let step = (trace.len() / 20).max(1);
    // Recent requests per replica (exponentially decayed), for load-bounded routing.
    let mut load = vec![0.0f64; cfg.replicas];
    for (i, r) in trace.iter().enumerate() {
        let ids = &r.hash_ids;
        let replica = match cfg.routing {
            Routing::RoundRobin => i % cfg.replicas,
            Routing::PrefixAware => {
                // Longest prefix among replicas that are not overloaded: without the load bound,
                // whichever replica first caches a shared system prompt attracts every request.
                let start = i % cfg.replicas;
                let avg = load.iter().sum::<f64>() / cfg.replicas as f64;
                (0..cfg.replicas)
                    .map(|o| (start + o) % cfg.replicas)
                    .filter(|&rep| load[rep] <= avg * LOAD_SLACK + 1.0)
                    .max_by_key(|&rep| {
                        let k = gpu[rep].extend(ids, 0);
                        let local = host[rep % cfg.nodes].extend(ids, k);
                        (
                            local,
                            k,
                            std::cmp::Reverse((rep + cfg.replicas - start) % cfg.replicas),
                        )
                    })
                    .unwrap_or(start)
            }
        };
        let decay = 1.0 - 1.0 / (16.0 * cfg.replicas as f64);
        load.iter_mut().for_each(|l| *l *= decay);
        load[replica] += 1.0;
        let node = replica % cfg.nodes;
        let k1 = gpu[replica].extend(ids, 0);
        let k2 = host[node].extend(ids, k1);
        let k3 = pool.extend(ids, k2);
        let tok = |k: usize| (k as u64 * b).min(r.input_length);
        let t = [tok(k1), tok(k2) - tok(k1), tok(k3) - tok(k2)];
        for (h, x) in hits.iter_mut().zip(t) {
            *h += x;
        }
        reads[1] += (k2 - k1) as u64;
        reads[2] += (k3 - k2) as u64;
        writes[0] += gpu[replica].store(i, ids);
        writes[1] += host[node].store(i, ids);
        writes[2] += pool.store(i, ids);
        input_tokens += r.input_length;
        let missed = r.input_length - tok(k3);
        let secs = missed as f64 / cfg.prefill_tokens_per_s
            + (k2 - k1) as f64 * block_bytes / (cfg.host_gbps * 1e9)
            + (k3 - k2) as f64 * block_bytes / (cfg.pool_gbps * 1e9);
        ttft.push(secs);
        ttft_none.push(r.input_length as f64 / cfg.prefill_tokens_per_s);
        if (i + 1) % step == 0 || i + 1 == trace.len() {
            progress(i + 1, trace.len());
        }
    }
    let first = trace.first().map_or(0, |r| r.timestamp);
    let last = trace.last().map_or(0, |r| r.timestamp);
    let duration_s = ((last.saturating_sub(first)) as f64 / 1000.0).max(1e-3);
    let mut tiers = Vec::new();
    let all_hits: u64 = hits.iter().sum();
    for (j, (name, cap, evictions)) in [
        ("gpu", cfg.gpu, gpu.iter().map(|t| t.evictions).sum::<u64>()),
        ("host", cfg.host, host.iter().map(|t| t.evictions).sum()),
        ("pool", cfg.pool, pool.evictions),
    ]
    .into_iter()
    .enumerate()
    {
        if cap == Capacity::Absent {
            continue;
        }
        let blocks = match cap {
            Capacity::Blocks(n) => Some(n),
            _ => None,
        };
        tiers.push(TierReport {
            tier: name,
            capacity_blocks: blocks,
            capacity_bytes: blocks.map(|n| n as u64 * b * cfg.kv_bytes_per_token),
            hit_tokens: hits[j],
            hit_ratio: hits[j] as f64 / input_tokens as f64,
            read_bytes_per_s: reads[j] as f64 * block_bytes / duration_s,
            write_bytes_per_s: writes[j] as f64 * block_bytes / duration_s,
            evictions,
        });
    }
    ttft.sort_by(f64::total_cmp);
    ttft_none.sort_by(f64::total_cmp);
    Ok(SimReport {
        config: cfg.clone(),
        requests: trace.len(),
        input_tokens,
        duration_s,
        tiers,
        hit_ratio: all_hits as f64 / input_tokens as f64,
        prefill_tokens_saved: all_hits,
        ttft: TtftReport {
            mean_s: ttft.iter().sum::<f64>() / ttft.len() as f64,
            p90_s: pct(&ttft, 0.9),
            no_cache_mean_s: ttft_none.iter().sum::<f64>() / ttft_none.len() as f64,
            no_cache_p90_s: pct(&ttft_none, 0.9),
        },
    })
}

/// Token hit ratio of one tier of `capacity` blocks under the offline optimum (Belady: evict
/// the block whose next use is farthest; a block whose next use is farther than every cached
/// one is not admitted).
pub fn belady(trace: &[Request], capacity: usize, block_tokens: u64) -> f64 {
    // Next request index using each (request, block) pair's id.
    let mut next_use: Vec<Vec<usize>> = trace
        .iter()
        .map(|r| vec![usize::MAX; r.hash_ids.len()])
        .collect();
    let mut last_seen: IdMap<usize> = IdMap::default();
    for (i, r) in trace.iter().enumerate().rev() {
        for (j, id) in r.hash_ids.iter().enumerate() {
            next_use[i][j] = last_seen.get(id).copied().unwrap_or(usize::MAX);
        }
        for id in &r.hash_ids {
            last_seen.insert(*id, i);
        }
    }
    let mut cached: IdMap<usize> = IdMap::default();
    let mut heap = std::collections::BinaryHeap::new();
    let (mut hit, mut total) = (0u64, 0u64);
    for (i, r) in trace.iter().enumerate() {
        let k = r
            .hash_ids
            .iter()
            .take_while(|id| cached.contains_key(id))
            .count();
        hit += (k as u64 * block_tokens).min(r.input_length);
        total += r.input_length;
        for (j, &id) in r.hash_ids.iter().enumerate() {
            let nu = next_use[i][j];
            if let Some(v) = cached.get_mut(&id) {
                *v = nu;
                heap.push((nu, id));
                continue;
            }
            if nu == usize::MAX {
                continue; // never used again: not worth a slot
            }
            if cached.len() >= capacity {
                // Pop stale heap entries until the top is current.
                let far = loop {
                    match heap.peek() {
                        Some(&(n, v)) if cached.get(&v) == Some(&n) => break Some((n, v)),
                        Some(_) => {
                            heap.pop();
                        }
                        None => break None,
                    }
                };
                match far {
                    Some((n, v)) if n > nu => {
                        heap.pop();
                        cached.remove(&v);
                    }
                    _ => continue,
                }
            }
            cached.insert(id, nu);
            heap.push((nu, id));
        }
    }
    hit as f64 / total as f64
}

/// One row of a capacity sweep: token hit ratio of a single tier under each policy.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Blocks.
    pub capacity_blocks: usize,
    /// Bytes at the model's KV size.
    pub capacity_bytes: u64,
    /// Least recently used.
    pub lru: f64,
    /// Hit density, the tiers' default policy.
    pub hit_density: f64,
    /// The offline optimum.
    pub belady: f64,
}

/// Replays one shared tier at each capacity under LRU, hit density (the default) and Belady.
pub fn sweep(
    trace: &[Request],
    capacities: &[usize],
    cfg: &SimConfig,
    mut progress: impl FnMut(&SweepRow),
) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    for &cap in capacities {
        let one = |policy| -> Result<f64> {
            let c = SimConfig {
                replicas: 1,
                nodes: 1,
                gpu: Capacity::Absent,
                host: Capacity::Absent,
                pool: Capacity::Blocks(cap),
                policy,
                ..cfg.clone()
            };
            Ok(simulate(trace, &c, |_, _| {})?.hit_ratio)
        };
        let row = SweepRow {
            capacity_blocks: cap,
            capacity_bytes: cap as u64 * cfg.block_tokens * cfg.kv_bytes_per_token,
            lru: one(PolicyKind::Lru)?,
            hit_density: one(PolicyKind::HitDensity)?,
            belady: belady(trace, cap, cfg.block_tokens),
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: u64, ids: &[u64]) -> Request {
        Request {
            timestamp: t,
            input_length: ids.len() as u64 * 4,
            output_length: 1,
            hash_ids: ids.to_vec(),
        }
    }

    #[test]
    fn tiers_fill_in_order_and_count_tokens() {
        let trace = vec![
            req(0, &[1, 2, 3]),
            req(1000, &[1, 2, 3, 4]),
            req(2000, &[1, 2, 9]),
        ];
        let cfg = SimConfig {
            block_tokens: 4,
            replicas: 2,
            nodes: 1,
            gpu: Capacity::Unbounded,
            host: Capacity::Unbounded,
            ..Default::default()
        };
        let r = simulate(&trace, &cfg, |_, _| {}).unwrap();
        // Request 2 runs on replica 1 (round robin): nothing in its GPU cache, 3 blocks from host.
        // Request 3 on replica 0: blocks 1, 2 from GPU.
        let by = |n: &str| r.tiers.iter().find(|t| t.tier == n).unwrap().hit_tokens;
        assert_eq!(by("gpu"), 8);
        assert_eq!(by("host"), 12);
        assert_eq!(by("pool"), 0);
        assert_eq!(r.prefill_tokens_saved, 20);
        assert_eq!(r.input_tokens, 40);
        assert!(r.ttft.mean_s < r.ttft.no_cache_mean_s);
    }

    #[test]
    fn prefix_aware_routing_finds_the_warm_replica() {
        let trace = vec![req(0, &[1, 2]), req(1, &[7]), req(2, &[1, 2, 3])];
        let cfg = SimConfig {
            block_tokens: 4,
            replicas: 2,
            nodes: 2,
            gpu: Capacity::Unbounded,
            pool: Capacity::Absent,
            routing: Routing::PrefixAware,
            ..Default::default()
        };
        let r = simulate(&trace, &cfg, |_, _| {}).unwrap();
        assert_eq!(r.tiers[0].hit_tokens, 8);
        let rr = simulate(
            &trace,
            &SimConfig {
                routing: Routing::RoundRobin,
                ..cfg
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(
            rr.tiers[0].hit_tokens, 8,
            "request 3 lands on replica 0 by round robin too"
        );
    }

    #[test]
    fn belady_is_an_upper_bound_and_exact_when_unbounded() {
        let trace: Vec<Request> = (0..200u64)
            .map(|i| req(i, &[i % 7, 100 + i % 13, 1000 + i]))
            .collect();
        let inf = SimConfig {
            block_tokens: 4,
            ..Default::default()
        };
        let all = simulate(&trace, &inf, |_, _| {}).unwrap().hit_ratio;
        assert!((belady(&trace, 1 << 20, 4) - all).abs() < 1e-12);
        for cap in [2, 5, 10, 20] {
            let c = SimConfig {
                pool: Capacity::Blocks(cap),
                ..inf.clone()
            };
            let opt = belady(&trace, cap, 4);
            for p in [PolicyKind::Lru, PolicyKind::HitDensity] {
                let got = simulate(
                    &trace,
                    &SimConfig {
                        policy: p,
                        ..c.clone()
                    },
                    |_, _| {},
                )
                .unwrap()
                .hit_ratio;
                assert!(got <= opt + 1e-12, "{p:?} at {cap}: {got} > optimum {opt}");
            }
        }
    }

    #[test]
    fn bad_options_are_named() {
        let e = simulate(
            &[],
            &SimConfig {
                replicas: 0,
                ..Default::default()
            },
            |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("replicas"));
        let e = SimConfig {
            host_gbps: -1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("host_gbps"));
        assert!(Capacity::parse("12x")
            .unwrap_err()
            .to_string()
            .contains("12x"));
        assert_eq!(Capacity::parse("5_000").unwrap(), Capacity::Blocks(5000));
    }
}
