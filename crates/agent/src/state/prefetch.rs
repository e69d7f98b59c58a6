//! Prefetch and read-through: pool-resident blocks a lookup found, brought into the arena.

use super::*;

impl State {
    pub(super) fn prefetch_worker(&self) {
        loop {
            let chain = {
                let mut q = self.prefetch.lock();
                loop {
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(c) = q.pop_front() {
                        break c;
                    }
                    self.prefetch_cv
                        .wait_for(&mut q, Duration::from_millis(200));
                }
            };
            // In windows no larger than a load's (so that a load finds room beside them),
            // stopping at the first block the pool does not have (the rest of a chain is
            // useless without it), and at half the arena: more would evict the chain's own head.
            let chain = &chain[..chain.len().min(self.max_held)];
            for window in chain.chunks(READ_THROUGH_BATCH.min(self.window)) {
                if !self.read_through_many(window, None).iter().all(|&b| b) {
                    break;
                }
            }
        }
    }

    /// Reads `keys` from the pool into new arena slots, all at once; for each key, whether it
    /// is now in memory. With a `deadline` (a load's), a full arena (every slot pinned, for
    /// moments: other windows, write-behind) is waited out until then; without, the keys that
    /// got no slot are not read.
    pub(super) fn read_through_many(
        &self,
        keys: &[BlockKey],
        deadline: Option<Instant>,
    ) -> Vec<bool> {
        let mut out: Vec<bool> = keys.iter().map(|&k| self.arena.contains(k)).collect();
        let Some(store) = self.store.as_ref() else {
            return out;
        };
        let mut slots = Vec::new();
        'keys: for (j, _) in keys.iter().enumerate().filter(|(j, _)| !out[*j]) {
            loop {
                match self.arena.reserve_slot() {
                    Ok(s) => {
                        slots.push((j, s));
                        break;
                    }
                    Err(_) => match deadline {
                        Some(d) if Instant::now() < d && slots.is_empty() => {
                            let mut q = self.queue.lock();
                            let slice = (Instant::now() + Duration::from_millis(5)).min(d);
                            self.room_cv.wait_until(&mut q, slice);
                        }
                        // Every slot pinned: the rest are misses.
                        _ => break 'keys,
                    },
                }
            }
        }
        if slots.is_empty() {
            return out;
        }
        let mut reqs: Vec<(BlockKey, &mut [u8])> = slots
            .iter()
            // SAFETY: each slot was just reserved by us, they are distinct, and nobody else
            // references them until they are committed or abandoned below.
            .map(|&(j, s)| (keys[j], unsafe { self.arena.slot_bytes_mut(s) }))
            .collect();
        let n = reqs.len();
        let t0 = Instant::now();
        let got = timed(&self.pool_latency, PoolCall::Get, n, || {
            store.get_many_into(&mut reqs)
        });
        self.measured_read(t0.elapsed(), n);
        drop(reqs);
        // A slot without an answer (a backend answering fewer keys than asked) is given back.
        let mut got = got.into_iter();
        for (j, slot) in slots {
            match got.next() {
                Some(Ok(Some(h))) if h.payload_len() == self.arena.payload_len() as u64 => {
                    self.arena
                        .commit_record(slot, keys[j], InsertInfo::default());
                    out[j] = true;
                }
                _ => self.arena.abandon_slot(slot),
            }
        }
        out
    }
}
