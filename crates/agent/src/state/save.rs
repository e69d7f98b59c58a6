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

    /// Leases slots for the keys not stored or in flight. A full arena (every slot pinned)
    /// ends the list early: the engine just skips saving the rest.
    pub fn begin_save(&self, session: u64, keys: &[BlockKey]) -> Result<Vec<Granted>> {
        self.session_digest(session)?;
        let mut out = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            if self.arena.contains(key) {
                self.counters.deduplicated.inc();
                continue;
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
            let slot = match self.arena.reserve_slot() {
                Ok(s) => s,
                Err(e) => {
                    self.unmark_saving(key, lease);
                    if e.kind() == ErrorKind::NoSpace {
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
        Ok(out)
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
            // leaves memory, off the engine's save path.
            match self
                .arena
                .commit_slot_unsealed(slot, key, digest, InsertInfo { parent })
            {
                Commit::Stored(_) => {
                    stored += 1;
                    self.counters.saves.inc();
                    self.own(key, tenant);
                    self.enqueue(key);
                }
                Commit::AlreadyPresent => dedup += 1,
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
