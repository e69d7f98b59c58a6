//! Write-behind: the queue of committed blocks and the worker that puts them to the pool in
//! batches. Each queued block holds a pin on its arena slot until the pool has it (or refused
//! it), so a block is never evicted before it is written; saves wait for that room
//! (see `save.rs`).

use super::*;

impl State {
    /// Queues a committed block, held in `slot`, for the pool. A full queue drops its oldest
    /// block (a future miss, counted) and releases its hold.
    pub(super) fn enqueue(&self, key: BlockKey, slot: SlotId) {
        let mut q = self.queue.lock();
        if q.len() >= self.queue_cap {
            if let Some((_, old)) = q.pop_front() {
                self.arena.unpin(old);
                self.held.fetch_sub(1, Ordering::Relaxed);
                self.counters.dropped_writes.inc();
            }
        }
        q.push_back((key, slot));
        self.held.fetch_add(1, Ordering::Relaxed);
        self.queue_cv.notify_one();
    }

    /// Releases the holds of written (or refused) blocks and wakes saves waiting for room.
    fn release_held(&self, held: &[(BlockKey, SlotId)]) {
        for (_, slot) in held {
            self.arena.unpin(*slot);
        }
        // Under the queue's lock, so that a save checking for room cannot miss the wake-up.
        let _q = self.queue.lock();
        self.held.fetch_sub(held.len(), Ordering::Relaxed);
        self.room_cv.notify_all();
    }

    /// Shutting down, and the time to drain the queue is up.
    fn drain_time_up(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
            && self.drain_until.lock().is_some_and(|t| Instant::now() >= t)
    }

    pub(super) fn write_behind(&self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        loop {
            // What is queued, up to a batch.
            let batch: Vec<(BlockKey, SlotId)> = {
                let mut q = self.queue.lock();
                loop {
                    if self.drain_time_up() {
                        let left: Vec<_> = q.drain(..).collect();
                        drop(q);
                        if !left.is_empty() {
                            tracing::warn!(blocks = left.len(), "shutting down: blocks not written to the pool in time are dropped (future misses)");
                            self.counters.dropped_writes.add(left.len() as u64);
                            self.release_held(&left);
                        }
                        return;
                    }
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
            self.write_batch(store.as_ref(), &batch);
            self.release_held(&batch);
        }
    }

    /// Puts a batch's blocks the pool does not have yet.
    fn write_batch(&self, store: &dyn PoolBackend, batch: &[(BlockKey, SlotId)]) {
        // A key queued twice (saved, evicted, saved again) is put once.
        let mut keys: Vec<BlockKey> = Vec::with_capacity(batch.len());
        for (k, _) in batch {
            if !keys.contains(k) {
                keys.push(*k);
            }
        }
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
            return;
        }
        for (k, s) in &slots {
            self.arena.seal(s.id(), *k);
        }
        let records: Vec<&[u8]> = slots.iter().map(|(_, s)| s.record()).collect();
        let results = timed(&self.pool_latency, PoolCall::Put, records.len(), || {
            store.put_many(&records)
        });
        let mut failed = false;
        for ((key, _), r) in slots.iter().zip(results) {
            match r {
                Ok(()) => self.counters.pool_writes.inc(),
                Err(e) => {
                    failed = true;
                    self.counters.pool_write_errors.inc();
                    tracing::warn!(%key, error = %e, "write-behind to the pool failed (a future miss)")
                }
            }
        }
        self.pool_failing.store(failed, Ordering::Relaxed);
    }
}
