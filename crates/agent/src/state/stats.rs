//! What the agent reports: latencies, per-tenant counters and the snapshot behind /metrics and kvtier stat.

use super::*;

impl State {
    /// Records how long an RPC took.
    pub fn observe(&self, op: AgentOp, took: Duration) {
        self.latency.observe(op, took);
    }

    /// The RPC latency histograms, by op.
    pub fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.latency.snapshot()
    }

    /// The latency histograms of calls to the pool backend, by op (`put`, `get`, `exists`); empty
    /// without a pool.
    pub fn pool_latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        match self.store {
            Some(_) => self.pool_latency.snapshot(),
            None => Vec::new(),
        }
    }

    pub(super) fn tenant_stats(&self) -> Vec<TenantStats> {
        let t = self.tenants.lock();
        let mut out: Vec<TenantStats> = t
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| TenantStats {
                tenant: name.clone(),
                saves: t.saves[i],
                loads: t.loads[i],
                misses: t.misses[i],
                ..TenantStats::default()
            })
            .collect();
        drop(t);
        for s in self.sessions.lock().values() {
            out[s.tenant].sessions += 1;
            out[s.tenant].leases += s.leases.len() as u64;
        }
        let mut owners = self.owners.lock();
        owners.retain(|k, _| self.arena.contains(*k));
        for &tenant in owners.values() {
            out[tenant].resident_blocks += 1;
        }
        out
    }

    /// Counter snapshot.
    pub fn stats(&self) -> AgentStats {
        let c = &self.counters;
        let arena = self.arena.stats();
        let pool = self
            .store
            .as_ref()
            .map(|s| (s.kind().to_string(), s.stats()));
        // Each lock taken on its own: the temporaries of the literal below live to its end.
        let tenants = self.tenant_stats();
        let sessions = self.sessions.lock().len() as u64;
        let leases = self.leases.lock().len() as u64;
        let write_queue = self.held.load(Ordering::Relaxed) as u64;
        let prefetch_queue = self.prefetch.lock().len() as u64;
        AgentStats {
            sessions,
            arena_slots: self.arena.slots() as u64,
            arena_used: self.arena.len() as u64,
            leases,
            hits_memory: c.hits_memory.get(),
            hits_pool: c.hits_pool.get(),
            misses: c.misses.get(),
            saves: c.saves.get(),
            deduplicated: c.deduplicated.get(),
            pool_writes: c.pool_writes.get(),
            dropped_writes: c.dropped_writes.get(),
            pool_write_errors: c.pool_write_errors.get(),
            save_waits: c.save_waits.get(),
            dropped_saves: vec![
                ("no_room", c.dropped_saves_no_room.get()),
                ("pool_down", c.dropped_saves_pool_down.get()),
                ("lease_limit", c.dropped_saves_limit.get()),
            ],
            shortened_lookups: vec![
                ("budget", c.shortened_lookups_budget.get()),
                ("recompute", c.shortened_lookups_recompute.get()),
            ],
            load_windows: c.load_windows.get(),
            read_ns_per_block: self.read_ns_per_block.load(Ordering::Relaxed),
            corrupt: pool
                .as_ref()
                .map_or(0, |(_, s)| s.corrupt.iter().map(|(_, n)| n).sum()),
            reclaimed_leases: c.reclaimed_leases.get(),
            refused: Refusal::ALL
                .iter()
                .map(|&r| (r.name(), c.refused[r as usize].get()))
                .collect(),
            lease_limited: vec![
                ("session", c.lease_limited_session.get()),
                ("tenant", c.lease_limited_tenant.get()),
            ],
            evictions: arena.evictions,
            object_bytes: self.arena.payload_len() as u64,
            slot_bytes: self.arena.slot_len() as u64,
            write_queue,
            write_queue_capacity: self.queue_cap as u64,
            prefetch_queue,
            prefetch_queue_capacity: PREFETCH_QUEUE as u64,
            pool,
            tenants,
        }
    }
}
