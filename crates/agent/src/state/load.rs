//! Loads: lookup (memory, then the pool), and the leases an engine copies blocks out of.

use super::*;

impl State {
    /// How many leading `keys` are stored (memory, then pool), and how many of those are in
    /// memory. With `prefetch`, pool-resident ones are read into memory in the background.
    /// With a `budget` (the engine's load budget), the prefix counts only as many blocks from
    /// the pool as reads at the measured rate fit in three quarters of it (a shortened lookup
    /// is counted): a lookup promises what a load can deliver. With `recompute` (the engine's
    /// estimate of the time to recompute all of `keys`), the prefix stops where reading more
    /// pool blocks would cost more than recomputing what they complete (counted too): a hit
    /// never costs more than a miss.
    pub fn lookup(
        self: &Arc<Self>,
        session: u64,
        keys: &[BlockKey],
        prefetch: bool,
        budget: Option<Duration>,
        recompute: Option<Duration>,
    ) -> Result<(u32, u32)> {
        self.session_digest(session)?;
        let per_block = self.read_ns_per_block.load(Ordering::Relaxed);
        let max_from_pool = match budget {
            Some(b) if per_block > 0 => (b.as_nanos() * 3 / 4 / per_block as u128) as usize,
            _ => usize::MAX,
        };
        // Per block of the prefix: whether it is in memory (else in the pool).
        let mut resident: Vec<bool> = Vec::new();
        let mut from_pool = 0usize;
        // Asked of the pool once, in one batch, from the first key not in memory on.
        let mut in_pool: Option<(usize, Vec<bool>)> = None;
        for (i, &k) in keys.iter().enumerate() {
            // Touch what is in memory: prefetching the rest must not evict this prefix's head.
            if self.arena.touch(k) {
                resident.push(true);
                continue;
            }
            let Some(store) = &self.store else { break };
            let (start, has) = in_pool.get_or_insert_with(|| {
                (
                    i,
                    timed(&self.pool_latency, PoolCall::Exists, keys.len() - i, || {
                        store.contains_many(&keys[i..])
                    }),
                )
            });
            if !has[i - *start] {
                break;
            }
            if from_pool >= max_from_pool {
                self.counters.shortened_lookups_budget.inc();
                break;
            }
            from_pool += 1;
            resident.push(false);
        }
        if let Some(r) = recompute {
            let cut = worth_loading(
                &resident,
                r.as_nanos() / keys.len().max(1) as u128,
                per_block,
            );
            if cut < resident.len() {
                self.counters.shortened_lookups_recompute.inc();
                resident.truncate(cut);
            }
        }
        let in_memory = resident.iter().filter(|&&m| m).count() as u32;
        let from_pool: Vec<BlockKey> = resident
            .iter()
            .zip(keys)
            .filter(|(&m, _)| !m)
            .map(|(_, &k)| k)
            .collect();
        if prefetch && !from_pool.is_empty() {
            let mut q = self.prefetch.lock();
            if q.len() >= PREFETCH_QUEUE {
                q.pop_front();
            }
            q.push_back(from_pool);
            self.prefetch_cv.notify_one();
        }
        Ok((resident.len() as u32, in_memory))
    }

    /// Pins the slots of stored keys, reading through from the pool within `budget`, for at most
    /// a window of keys (a quarter of the arena); also returns the index of the first key not
    /// considered (`keys.len()` when all were), from which the engine asks again once it has
    /// released these. Keys considered and not granted are misses.
    pub fn begin_load(
        &self,
        session: u64,
        keys: &[BlockKey],
        budget: Duration,
    ) -> Result<(Vec<Granted>, u32)> {
        let (digest, tenant) = self.session_info(session)?;
        let keys = &keys[..keys.len().min(self.window)];
        self.counters.load_windows.inc();
        let deadline = Instant::now() + budget;
        let mut out = Vec::new();
        // A window at a time: the window's blocks already in memory are pinned first (so the
        // slots its reads from the pool take cannot evict them), then the others are read
        // through from the pool and pinned; then each is granted in order.
        let mut pinned = Vec::new();
        let mut considered = keys.len();
        for i in 0..keys.len() {
            let j = i % READ_THROUGH_BATCH;
            if j == 0 {
                let window = &keys[i..(i + READ_THROUGH_BATCH).min(keys.len())];
                pinned = window
                    .iter()
                    .map(|&k| self.arena.get(k).map(|r| (r, false)))
                    .collect();
                let missing: Vec<BlockKey> = window
                    .iter()
                    .zip(&pinned)
                    .filter(|(_, p)| p.is_none())
                    .map(|(&k, _)| k)
                    .collect();
                if !missing.is_empty() && self.store.is_some() && Instant::now() < deadline {
                    self.read_through_many(&missing, Some(deadline));
                    for (k, p) in window.iter().zip(pinned.iter_mut()) {
                        if p.is_none() {
                            *p = self.arena.get(*k).map(|r| (r, true));
                        }
                    }
                }
            }
            let (read, from_pool) = match pinned[j].take() {
                Some((r, p)) => (Some(r), p),
                None => (None, false),
            };
            if read.is_some() {
                if let Err(e) = self.lease_room(session) {
                    if e.kind() != ErrorKind::NoSpace {
                        return Err(e);
                    }
                    // The session or its tenant holds its share of the arena: the engine copies
                    // these out, releases them and asks again from here (with none granted,
                    // the rest is a miss).
                    considered = if out.is_empty() { keys.len() } else { i };
                    break;
                }
            }
            let granted = read.and_then(|r| {
                if self.arena.slot_digest(r.id()) != digest {
                    return None; // another layout's object: never hand it to this engine
                }
                let slot = r.id();
                std::mem::forget(r); // the pin now belongs to the lease
                Some(slot)
            });
            match granted {
                Some(slot) => match self.grant(session, LeaseKind::Read { slot }) {
                    Ok(lease) => {
                        if from_pool {
                            &self.counters.hits_pool
                        } else {
                            &self.counters.hits_memory
                        }
                        .inc();
                        out.push(Granted {
                            index: i as u32,
                            slot: slot.0,
                            lease,
                        });
                    }
                    Err(e) => {
                        self.arena.unpin(slot);
                        return Err(e);
                    }
                },
                None => self.counters.misses.inc(),
            }
        }
        let mut t = self.tenants.lock();
        t.loads[tenant] += out.len() as u64;
        t.misses[tenant] += (considered - out.len()) as u64;
        Ok((out, considered as u32))
    }

    /// Releases load leases.
    pub fn end_load(&self, session: u64, leases: &[u64]) -> Result<()> {
        for &lease in leases {
            if let Some(kind) = self.take_lease(session, lease) {
                self.release(lease, kind);
            }
        }
        Ok(())
    }
}

/// The prefix length (of a prefix whose blocks are in memory or, `false`, in the pool) whose
/// load plus the recompute of the rest takes least: a block saves `recompute_ns` of prefill and
/// a pool block costs `read_ns` to read (`0`: not measured yet, free). The longest such prefix.
fn worth_loading(resident: &[bool], recompute_ns: u128, read_ns: u64) -> usize {
    let (mut saving, mut best, mut best_at) = (0i128, 0i128, 0usize);
    for (i, &m) in resident.iter().enumerate() {
        saving += recompute_ns as i128 - if m { 0 } else { read_ns as i128 };
        if saving >= best {
            (best, best_at) = (saving, i + 1);
        }
    }
    best_at
}

#[cfg(test)]
mod tests {
    use super::worth_loading;

    #[test]
    fn a_prefix_is_cut_where_reading_costs_more_than_recomputing() {
        let (m, p) = (true, false);
        // Reads cheaper than recomputing: every block is worth it.
        assert_eq!(worth_loading(&[m, p, p, p], 10, 5), 4);
        // Reads dearer: only the blocks in memory, up to the first pool block...
        assert_eq!(worth_loading(&[m, m, p, p], 10, 50), 2);
        // ...unless enough blocks in memory follow to pay for it (2 x 10 saved > 15 - 10 lost).
        assert_eq!(worth_loading(&[m, p, m, m], 10, 15), 4);
        assert_eq!(worth_loading(&[m, p, m], 10, 40), 1);
        // Nothing measured yet: reads count as free.
        assert_eq!(worth_loading(&[p, p], 10, 0), 2);
        assert_eq!(worth_loading(&[], 10, 5), 0);
    }
}
