//! Write-behind: the queue of committed blocks and the worker that puts them to the pool in batches.

use super::*;

impl State {
    pub(super) fn enqueue(&self, key: BlockKey) {
        if self.store.is_none() {
            return;
        }
        let mut q = self.queue.lock();
        if q.len() >= self.queue_cap {
            q.pop_front();
            self.counters.dropped_writes.inc();
        }
        q.push_back(key);
        self.queue_cv.notify_one();
    }

    pub(super) fn write_behind(&self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        loop {
            // What is queued, up to a batch.
            let mut keys: Vec<BlockKey> = {
                let mut q = self.queue.lock();
                loop {
                    if !q.is_empty() {
                        let n = q.len().min(WRITE_BEHIND_BATCH);
                        break q.drain(..n).collect();
                    }
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    self.queue_cv.wait_for(&mut q, Duration::from_millis(200));
                }
            };
            // A key queued twice (saved, evicted, saved again) is put once.
            let mut seen = Vec::with_capacity(keys.len());
            keys.retain(|k| {
                !seen.contains(k) && {
                    seen.push(*k);
                    true
                }
            });
            let stored = timed(&self.pool_latency, PoolCall::Exists, keys.len(), || {
                store.contains_many(&keys)
            });
            // Straight from the shared arena slots to the pool (each slot is a page-aligned
            // record, pinned meanwhile), sealed first: the checksum is computed here, off the
            // engine's save path.
            let slots: Vec<_> = keys
                .iter()
                .zip(stored)
                .filter(|(_, stored)| !stored)
                .filter_map(|(&k, _)| self.arena.get(k).map(|s| (k, s)))
                .collect();
            if slots.is_empty() {
                continue;
            }
            for (k, s) in &slots {
                self.arena.seal(s.id(), *k);
            }
            let records: Vec<&[u8]> = slots.iter().map(|(_, s)| s.record()).collect();
            let results = timed(&self.pool_latency, PoolCall::Put, records.len(), || {
                store.put_many(&records)
            });
            for ((key, _), r) in slots.iter().zip(results) {
                match r {
                    Ok(()) => self.counters.pool_writes.inc(),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "write-behind to the pool failed (a future miss)")
                    }
                }
            }
        }
    }
}
