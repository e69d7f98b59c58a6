//! The eviction policy on a sample of the other public trace of the Mooncake repository's
//! FAST25 release that fits in the repository: the first 1,500 requests of the synthetic trace
//! (`tests/data/mooncake_synthetic_trace_head1500.jsonl`). The conversation trace is whole in
//! `tests/data` and has its own tests (`tests/sim_trace.rs`); the full traces' figures are in
//! docs/benchmarks.md (`scripts/fetch_traces.sh` fetches them). Fast enough for CI's debug build.

use std::path::PathBuf;

use kvtier_core::policy::PolicyKind;
use kvtier_sim::{Capacity, Request, SimConfig};

fn sample() -> Vec<Request> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/mooncake_synthetic_trace_head1500.jsonl");
    kvtier_sim::trace::load(&path, 512).unwrap()
}

fn hit_ratio(t: &[Request], cap: usize, policy: PolicyKind) -> f64 {
    let c = SimConfig {
        pool: Capacity::Blocks(cap),
        policy,
        ..Default::default()
    };
    kvtier_sim::simulate(t, &c, |_, _| {}).unwrap().hit_ratio
}

#[test]
fn the_sample_is_the_head_of_the_synthetic_trace() {
    let t = sample();
    assert_eq!(t.len(), 1500);
    let blocks: usize = t.iter().map(|r| r.hash_ids.len()).sum();
    assert_eq!(blocks, 35_135);
    // Unbounded, 24.5% of its prompt tokens are hits.
    let r = kvtier_sim::simulate(&t, &SimConfig::default(), |_, _| {}).unwrap();
    assert!((r.hit_ratio - 0.2448).abs() < 0.0005, "{}", r.hit_ratio);
}

/// From 1,000 blocks up, the default policy beats LRU and closes at least 5% of the gap to the
/// offline optimum (about 6% at 1,000 and 7% at 2,000). Below, on a sample this short (35k
/// operations, shorter than the policy's 65,536-operation learning horizon), it is still
/// learning: within 0.1 point of LRU, not above it (0.79% vs 0.88% at 250 blocks).
#[test]
fn the_default_policy_on_the_synthetic_sample() {
    let t = sample();
    for cap in [1000, 2000] {
        let lru = hit_ratio(&t, cap, PolicyKind::Lru);
        let hd = hit_ratio(&t, cap, PolicyKind::default());
        let opt = kvtier_sim::belady(&t, cap, 512);
        assert!(
            opt > hd && hd > lru,
            "at {cap} blocks: {lru:.4} {hd:.4} {opt:.4}"
        );
        let closed = (hd - lru) / (opt - lru);
        assert!(
            closed >= 0.05,
            "at {cap} blocks: {:.1}% of the gap",
            closed * 100.0
        );
    }
    for cap in [250, 500] {
        let lru = hit_ratio(&t, cap, PolicyKind::Lru);
        let hd = hit_ratio(&t, cap, PolicyKind::default());
        assert!(
            hd >= lru - 0.001,
            "at {cap} blocks: {hd:.4} vs LRU {lru:.4}"
        );
    }
}
