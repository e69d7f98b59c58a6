//! Unit tests of the hit-density policy.
use super::*;

fn ins(p: &mut HitDensity<u64>, key: u64, parent: Option<u64>) {
    p.insert(key, InsertInfo { parent });
}

#[test]
fn bins_are_geometric_and_cover_the_horizon() {
    let p = HitDensity::<u64>::new(1000);
    assert_eq!(p.horizon(), 65536);
    assert_eq!(&p.edges[..4], &[0, 64, 73, 84]);
    assert!(*p.edges.last().unwrap() > p.horizon());
    assert!(p.edges[p.edges.len() - 2] <= p.horizon());
    assert_eq!(p.bin(0), 0);
    assert_eq!(p.bin(63), 0);
    assert_eq!(p.bin(64), 1);
    assert_eq!(p.bin(73), 2);
    assert_eq!(p.bin(p.horizon()), p.bins() - 2);
    assert_eq!(HitDensity::<u64>::new(100_000).horizon(), 800_000);
    assert_eq!(HitDensity::<u64>::new(100_000).period, 25_000);
    assert_eq!(HitDensity::<u64>::new(usize::MAX).horizon(), HMAX);
}

#[test]
fn before_learning_it_evicts_the_oldest() {
    let mut p = HitDensity::new(10);
    for k in 0..4u64 {
        ins(&mut p, k, None);
    }
    p.access(0);
    assert_eq!(p.evict(&mut |_| true), Some(1));
    assert_eq!(p.evict(&mut |k| *k != 2), Some(3));
    p.remove(2);
    assert_eq!(p.evict(&mut |_| true), Some(0));
    assert_eq!(p.evict(&mut |_| true), None);
    assert!(p.is_empty());
}

#[test]
fn chain_tails_go_before_their_parents() {
    let mut p = HitDensity::new(10);
    ins(&mut p, 1, None);
    ins(&mut p, 2, Some(1));
    ins(&mut p, 3, Some(2));
    ins(&mut p, 9, None);
    // 1 is the oldest, but its chain loses its tail first.
    assert_eq!(p.evict(&mut |_| true), Some(3));
    assert_eq!(p.evict(&mut |_| true), Some(2));
    // When the tail may not go, its parent goes and the tail stays.
    ins(&mut p, 4, Some(1));
    assert_eq!(p.evict(&mut |k| *k != 4), Some(1));
    assert_eq!(p.evict(&mut |_| true), Some(9));
    assert_eq!(p.evict(&mut |_| true), Some(4));
}

/// Blocks touched twice come back (after a gap of ~3000 ticks); blocks touched once never
/// do. After learning, a twice-touched block outlives once-touched ones of the same age.
#[test]
fn learns_that_reused_blocks_come_back() {
    let mut p = HitDensity::<u64>::new(1000);
    let mut next = 0u64;
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    while p.t < 3 * p.period {
        next += 1;
        ins(&mut p, next, None);
        if next % 2 == 0 {
            // Every second block is used twice more, 1500 and 3000 ticks later.
            pending.push_back((p.t + 1500, next));
        }
        while pending.front().is_some_and(|&(at, _)| at <= p.t) {
            let (at, k) = pending.pop_front().unwrap();
            p.access(k);
            if p.nodes[p.index[&k] as usize].cnt == 2 {
                pending.push_back((at + 1500, k));
            }
        }
        while p.len() > 4000 {
            p.evict(&mut |_| true);
        }
    }
    assert!(p.density.iter().any(|&d| d > 0.0), "learnt something");
    // Two fresh blocks of the same age: one used once more, one never.
    ins(&mut p, 1 << 40, None);
    ins(&mut p, 1 << 41, None);
    p.access(1 << 40);
    for i in 0..200 {
        ins(&mut p, (1 << 42) + i, None);
    }
    let once = p.standing(&(1 << 41)).unwrap();
    let twice = p.standing(&(1 << 40)).unwrap();
    assert_eq!((once.uses, twice.uses), (1, 2));
    assert!(
        twice.density > once.density,
        "{twice:?} should beat {once:?}"
    );
    let only = [1u64 << 40, 1 << 41];
    assert_eq!(p.evict(&mut |k| only.contains(k)), Some(1 << 41));
}

#[test]
fn a_ghost_resumes_the_count_within_the_horizon_only() {
    let mut p = HitDensity::<u64>::new(10);
    ins(&mut p, 7, None);
    p.access(7);
    assert_eq!(p.evict(&mut |_| true), Some(7));
    assert_eq!(p.ghosts(), 1);
    ins(&mut p, 7, None);
    assert_eq!(p.standing(&7).unwrap().uses, 3, "two touches remembered");
    assert_eq!(p.evict(&mut |_| true), Some(7));
    // Past the horizon the ghost is forgotten, and swept away eventually.
    for k in 0..(p.horizon() + 2 * p.period) {
        ins(&mut p, 1000 + k, None);
        p.evict(&mut |_| true);
    }
    ins(&mut p, 7, None);
    assert_eq!(p.standing(&7).unwrap().uses, 1);
    assert!(
        p.ghosts() as u64 <= p.horizon() * 5 / 4 + 2 * GHOST_SLACK as u64,
        "{}",
        p.ghosts()
    );
    // A removed object leaves no ghost.
    p.remove(7);
    ins(&mut p, 7, None);
    assert_eq!(p.standing(&7).unwrap().uses, 1);
}

#[test]
fn evicted_by_the_owner_leaves_a_ghost() {
    let mut p = HitDensity::<u64>::new(10);
    ins(&mut p, 5, None);
    p.evicted(5);
    assert!(p.is_empty());
    ins(&mut p, 5, None);
    assert_eq!(p.standing(&5).unwrap().uses, 2);
}

#[test]
fn reinserting_a_resident_key_is_a_use() {
    let mut p = HitDensity::<u64>::new(10);
    ins(&mut p, 5, None);
    ins(&mut p, 5, None);
    assert_eq!(p.len(), 1);
    assert_eq!(p.standing(&5).unwrap().uses, 2);
}

fn churn(seed: u64) -> Vec<u64> {
    let mut p = HitDensity::<u64>::new(500);
    let mut x = seed;
    let mut held = std::collections::HashSet::new();
    let mut out = Vec::new();
    for step in 0..100_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A skewed key space: small keys come back often.
        let key = (x % 4000) / (1 + (x >> 60));
        if held.contains(&key) {
            p.access(key);
        } else {
            let parent = key.checked_sub(1).filter(|k| held.contains(k));
            ins(&mut p, key, parent);
            held.insert(key);
        }
        while held.len() > 500 {
            // Never the current key, nor keys divisible by 7 on odd steps.
            let v = p
                .evict(&mut |k| *k != key && (step % 2 == 0 || k % 7 != 0))
                .unwrap();
            assert!(
                v != key && (step % 2 == 0 || v % 7 != 0),
                "{v} not evictable"
            );
            assert!(held.remove(&v), "{v} was not held");
            out.push(v);
        }
        assert_eq!(p.len(), held.len());
    }
    out
}

#[test]
fn never_evicts_what_may_not_go_and_is_deterministic() {
    let a = churn(0x9e3779b97f4a7c15);
    assert!(a.len() > 10_000);
    assert_eq!(a, churn(0x9e3779b97f4a7c15));
}

#[test]
fn a_batch_evicts_what_single_evictions_would() {
    let fill = |p: &mut HitDensity<u64>| {
        for k in 0..3000u64 {
            ins(p, k, k.checked_sub(1).filter(|_| k % 5 != 0));
            if k % 3 == 0 {
                p.access(k / 2);
            }
        }
    };
    let (mut a, mut b) = (HitDensity::new(500), HitDensity::new(500));
    fill(&mut a);
    fill(&mut b);
    // The youngest 400 may not go (a request being stored), nor multiples of 11.
    let ok = |k: &u64| *k < 2600 && k % 11 != 0;
    let batch = a.evict_batch(2000, &mut |k| ok(k));
    let single: Vec<u64> = (0..2000).map_while(|_| b.evict(&mut |k| ok(k))).collect();
    assert_eq!(batch, single);
    assert!(batch.len() > 1500 && batch.iter().all(ok));
}

#[test]
fn nothing_evictable_is_none() {
    let mut p = HitDensity::<u64>::new(10);
    ins(&mut p, 1, None);
    assert_eq!(p.evict(&mut |_| false), None);
    assert_eq!(p.len(), 1);
}

#[test]
fn a_block_ends_its_chain_until_a_child_follows_it() {
    let mut p = HitDensity::<u64>::new(10);
    let kind = |p: &HitDensity<u64>, k: u64| p.nodes[p.index[&k] as usize].kind;
    ins(&mut p, 1, None);
    assert_eq!(kind(&p, 1), TAIL | SCRATCH);
    ins(&mut p, 2, Some(1));
    assert_eq!((kind(&p, 1), kind(&p, 2)), (SCRATCH, TAIL | SCRATCH));
    // A later request uses the prefix 1, 2 and adds 3: 2 is followed, 3 comes after a known
    // prefix, 4 further along the new segment.
    p.access(1);
    p.access(2);
    ins(&mut p, 3, Some(2));
    ins(&mut p, 4, Some(3));
    assert_eq!((kind(&p, 1), kind(&p, 2)), (0, 0));
    assert_eq!((kind(&p, 3), kind(&p, 4)), (FRESH, TAIL));
    // A child stored long after its parent's last touch says nothing of the parent's chain.
    ins(&mut p, 9, None);
    ins(&mut p, 5, Some(4));
    assert_eq!(kind(&p, 4), TAIL);
    // Every list stays ordered by last touch.
    for l in p.lists {
        let mut i = l.head;
        let mut last = 0;
        while i != NIL {
            assert!(p.nodes[i as usize].last >= last);
            last = p.nodes[i as usize].last;
            i = p.nodes[i as usize].next;
        }
    }
    // Classes are distinct for each kind and count.
    let mut seen = std::collections::HashSet::new();
    for cnt in 1..=NCNT {
        for kind in [0, TAIL, SCRATCH, SCRATCH | TAIL, FRESH, FRESH | TAIL] {
            if cnt > 1 && kind & !TAIL != 0 {
                continue;
            }
            assert!(seen.insert(class(cnt, kind)));
        }
    }
    assert_eq!(seen.len(), NCLS);
}
