//! Saves: leasing slots for the blocks an engine lacks, committing them, and who owns what.

use super::*;

impl State {
    /// Forgets `key`'s in-flight save if `lease` is the one that owns it.
    pub(super) fn unmark_saving(&self, key: BlockKey, lease: u64) {
        let mut saving = self.saving.lock();
        if saving.get(&key) == Some(&lease) {
            saving.remove(&key);
        }
    }

    /// A slot for a save. With a pool, blocks not yet written behind are held in the arena
    /// (at most `max_held`); a save that finds no room waits for write-behind to make some, up
    /// to `deadline`, unless the pool is failing. `NoSpace` when there is still none.
    fn reserve_for_save(&self, deadline: Instant) -> Result<SlotId> {
        let mut waited = false;
        loop {
            let wait = self.store.is_some() && !self.pool_failing.load(Ordering::Relaxed);
            if wait {
                let mut q = self.queue.lock();
                while self.held.load(Ordering::Relaxed) >= self.max_held
                    && Instant::now() < deadline
                {
                    waited = true;
                    self.room_cv.wait_until(&mut q, deadline);
                }
            }
            match self.arena.reserve_slot() {
                Ok(s) => {
                    if waited {
                        self.counters.save_waits.inc();
                    }
                    return Ok(s);
                }
                // Every slot pinned (held for write-behind, or leased): room comes back as
                // write-behind or the engines release them.
                Err(e) if e.kind() == ErrorKind::NoSpace && wait && Instant::now() < deadline => {
                    waited = true;
                    let mut q = self.queue.lock();
                    let slice = (Instant::now() + Duration::from_millis(5)).min(deadline);
                    self.room_cv.wait_until(&mut q, slice);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leases slots for the keys not stored or in flight, at most a window (a quarter of the
    /// arena): also returns the index of the first key not considered (`keys.len()` when all
    /// were), from which the engine asks again once it has committed these. With a pool, a save
    /// larger than the free arena waits for write-behind to make room (up to [`SAVE_WAIT`]); an
    /// arena still full then (every slot pinned) ends the list: the engine skips saving the
    /// rest, counted as dropped saves. A session (or tenant) holding its limit of leased slots
    /// gets no more: the list ends there (reason `lease_limit` when nothing was granted).
    pub fn begin_save(&self, session: u64, keys: &[BlockKey]) -> Result<(Vec<Granted>, u32)> {
        self.session_digest(session)?;
        let deadline = Instant::now() + SAVE_WAIT;
        let mut out = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            if out.len() >= self.window {
                return Ok((out, i as u32));
            }
            if self.arena.contains(key) {
                self.counters.deduplicated.inc();
                continue;
            }
            if let Err(e) = self.lease_room(session) {
                if e.kind() != ErrorKind::NoSpace {
                    return Err(e);
                }
                // The session or its tenant holds its share of the arena: the engine commits
                // these and asks again from here; with none granted, the rest is not saved.
                if out.is_empty() {
                    self.counters
                        .dropped_saves_limit
                        .add((keys.len() - i) as u64);
                    return Ok((out, keys.len() as u32));
                }
                return Ok((out, i as u32));
            }
            // Mark the key in flight under its lease id first, so that a concurrent save of the
            // same key, or a reclaim racing with this call, never leaves a stale mark behind.
            let lease = self.id();
            {
                let mut saving = self.saving.lock();
                if saving.contains_key(&key) {
                    self.counters.deduplicated.inc();
                    continue;
                }
                saving.insert(key, lease);
            }
            let slot = match self.reserve_for_save(deadline) {
                Ok(s) => s,
                Err(e) => {
                    self.unmark_saving(key, lease);
                    if e.kind() == ErrorKind::NoSpace {
                        let left = (keys.len() - i) as u64;
                        if self.store.is_some() && self.pool_failing.load(Ordering::Relaxed) {
                            self.counters.dropped_saves_pool_down.add(left);
                        } else {
                            self.counters.dropped_saves_no_room.add(left);
                        }
                        break;
                    }
                    return Err(e);
                }
            };
            let parent = i.checked_sub(1).map(|p| keys[p]);
            if let Err(e) = self.grant_as(lease, session, LeaseKind::Write { slot, key, parent }) {
                self.unmark_saving(key, lease);
                self.arena.abandon_slot(slot);
                return Err(e);
            }
            out.push(Granted {
                index: i as u32,
                slot: slot.0,
                lease,
            });
        }
        Ok((out, keys.len() as u32))
    }

    /// Seals and indexes filled slots, and queues them for the pool. Returns (stored, dedup).
    pub fn commit_save(&self, session: u64, leases: &[u64]) -> Result<(u32, u32)> {
        let (digest, tenant) = self.session_info(session)?;
        let (mut stored, mut dedup) = (0, 0);
        for &lease in leases {
            let Some(kind) = self.take_lease(session, lease) else {
                return Err(Error::invalid(format!(
                    "lease {lease} is not an open lease of this session"
                )));
            };
            let LeaseKind::Write { slot, key, parent } = kind else {
                self.release(lease, kind);
                return Err(Error::invalid(format!(
                    "lease {lease} is a load lease, not a save lease"
                )));
            };
            // Unsealed: the payload checksum is computed by write-behind before the block
            // leaves memory, off the engine's save path. With a pool, the slot is held from
            // before it is indexed until write-behind has put it: never evicted unwritten.
            let hold = self.store.is_some();
            if hold {
                self.arena.hold(slot);
            }
            match self
                .arena
                .commit_slot_unsealed(slot, key, digest, InsertInfo { parent })
            {
                Commit::Stored(_) => {
                    stored += 1;
                    self.counters.saves.inc();
                    self.own(key, tenant);
                    if hold {
                        self.enqueue(key, slot);
                    }
                }
                Commit::AlreadyPresent => {
                    dedup += 1;
                    if hold {
                        self.arena.unpin(slot);
                    }
                }
            }
            // Only now, with the key indexed, stop marking it in flight.
            self.unmark_saving(key, lease);
        }
        self.tenants.lock().saves[tenant] += stored as u64;
        Ok((stored, dedup))
    }

    /// Records that `tenant` saved `key`; forgets evicted keys when the map outgrows the arena.
    pub(super) fn own(&self, key: BlockKey, tenant: usize) {
        let mut owners = self.owners.lock();
        owners.insert(key, tenant);
        if owners.len() > 2 * self.arena.slots() as usize + 64 {
            owners.retain(|k, _| self.arena.contains(*k));
        }
    }
}
