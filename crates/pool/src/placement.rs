//! Placement of block keys on pool servers: weighted rendezvous (highest-random-weight) hashing.
//!
//! Each member scores each key `weight / -ln(u)` with `u` a uniform hash of (member, key) in
//! (0, 1); the key lives on the `replication` highest scorers. A member's share of keys is
//! proportional to its weight (its capacity), and adding or removing a member moves only the
//! keys it gains or loses. Every agent computes the same answer from the same member list.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use kvtier_core::error::{Error, Result};
use kvtier_core::key::BlockKey;

/// One pool server.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// `host:port` of its data plane.
    pub addr: String,
    /// Relative share of keys (its capacity, in any unit). Positive.
    pub weight: f64,
}

impl Member {
    /// Parses `host:port` or `host:port=weight`.
    pub fn parse(s: &str) -> Result<Member> {
        let (addr, weight) = match s.split_once('=') {
            Some((a, w)) => {
                let w: f64 = w.trim().parse().map_err(|_| {
                    Error::invalid("a pool member's weight must be a positive number")
                        .with_context("member", s)
                })?;
                (a.trim(), w)
            }
            None => (s.trim(), 1.0),
        };
        if !(weight.is_finite() && weight > 0.0) {
            return Err(
                Error::invalid("a pool member's weight must be a positive number")
                    .with_context("member", s),
            );
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(
                    Error::invalid("a pool member is `host:port` or `host:port=weight`")
                        .with_context("member", s),
                )
            }
        }
        Ok(Member {
            addr: addr.to_string(),
            weight,
        })
    }
}

/// A member list with precomputed per-member seeds.
#[derive(Debug, Clone)]
pub struct Placement {
    members: Vec<Member>,
    seeds: Vec<u64>,
    replication: usize,
}

impl Placement {
    /// Checks the list (non-empty, no duplicates) and the replication factor (1..=members).
    pub fn new(members: Vec<Member>, replication: usize) -> Result<Placement> {
        if members.is_empty() {
            return Err(Error::invalid(
                "the pool has no members; list at least one `host:port`",
            ));
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| o.addr == m.addr) {
                return Err(
                    Error::invalid("a pool member is listed twice").with_context("member", &m.addr)
                );
            }
        }
        if replication == 0 || replication > members.len() {
            return Err(Error::invalid(format!(
                "replication must be between 1 and the number of members ({})",
                members.len()
            ))
            .with_context("replication", replication));
        }
        let seeds = members
            .iter()
            .map(|m| xxh3_64_with_seed(m.addr.as_bytes(), 0x6b76_7469_6572))
            .collect();
        Ok(Placement {
            members,
            seeds,
            replication,
        })
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Copies kept of each key.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// Every member index in order of preference for `key`; the first `replication` hold it.
    pub fn ranked(&self, key: BlockKey) -> Vec<usize> {
        let kb = key.to_le_bytes();
        let mut scored: Vec<(f64, usize)> = self
            .seeds
            .iter()
            .zip(&self.members)
            .enumerate()
            .map(|(i, (&seed, m))| {
                let h = xxh3_64_with_seed(&kb, seed);
                // A uniform value in (0, 1), never 0 or 1.
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (m.weight / -u.ln(), i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The members that hold `key`, most preferred first.
    pub fn replicas(&self, key: BlockKey) -> Vec<usize> {
        let mut r = self.ranked(key);
        r.truncate(self.replication);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ws: &[f64]) -> Vec<Member> {
        ws.iter()
            .enumerate()
            .map(|(i, &w)| Member {
                addr: format!("10.0.0.{i}:7070"),
                weight: w,
            })
            .collect()
    }

    fn key(i: u64) -> BlockKey {
        BlockKey::from_u128(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
    }

    #[test]
    fn shares_follow_weights() {
        let p = Placement::new(members(&[1.0, 1.0, 2.0]), 1).unwrap();
        let mut n = [0usize; 3];
        for i in 0..40_000 {
            n[p.replicas(key(i))[0]] += 1;
        }
        let share = |c: usize| c as f64 / 40_000.0;
        assert!((share(n[2]) - 0.5).abs() < 0.02, "{n:?}");
        assert!((share(n[0]) - 0.25).abs() < 0.02, "{n:?}");
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let all = Placement::new(members(&[1.0, 1.0, 1.0, 1.0]), 2).unwrap();
        let fewer = Placement::new(members(&[1.0, 1.0, 1.0]), 2).unwrap();
        for i in 0..5_000 {
            let before = all.replicas(key(i));
            let after = fewer.replicas(key(i));
            // Replicas on surviving members stay where they were.
            for m in before.iter().filter(|&&m| m != 3) {
                assert!(after.contains(m), "key {i}: {before:?} -> {after:?}");
            }
            assert_eq!(after.len(), 2);
            assert_ne!(after[0], after[1]);
        }
    }

    #[test]
    fn bad_lists_are_rejected_with_the_reason() {
        assert!(Placement::new(vec![], 1)
            .unwrap_err()
            .to_string()
            .contains("no members"));
        let e = Placement::new(members(&[1.0, 1.0]), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("replication"), "{e}");
        let mut dup = members(&[1.0]);
        dup.push(dup[0].clone());
        assert!(Placement::new(dup, 1)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(Member::parse("h:1=2.5").unwrap().weight, 2.5);
        for bad in ["h", "h:x", ":80", "h:80=0", "h:80=-1", "h:80=abc"] {
            assert!(Member::parse(bad).is_err(), "{bad}");
        }
    }
}
