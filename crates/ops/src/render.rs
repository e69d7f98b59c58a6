//! The daemons' `/metrics` pages, from their counter snapshots. Names, kinds and help texts
//! come from [`kvtier_core::metrics::Family`]; docs/operations.md documents each one.
//!
//! Tiers: the agent's are `memory` (its arena) then `pool` (whichever backend it writes behind
//! to); a pool server's are `cache` (its DRAM cache) then `disk` (its segment store).

use kvtier_agent::{AgentStats, State};
use kvtier_core::metrics::{Family, HistogramSnapshot};
use kvtier_pool::server::{PoolServer, PoolServerStats};

use super::prom::Writer;

/// The agent's tiers, nearest first.
pub const AGENT_TIERS: [&str; 2] = ["memory", "pool"];
/// A pool server's tiers, nearest first.
pub const POOL_TIERS: [&str; 2] = ["cache", "disk"];

fn build_info(w: &mut Writer, role: &str) {
    w.gauge(
        Family::BuildInfo,
        &[("role", role), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    for f in kvtier_core::metrics::Fallback::ALL {
        w.counter(Family::Fallbacks, &[("kind", f.as_str())], f.total());
    }
}

fn latency(w: &mut Writer, hists: &[(&'static str, HistogramSnapshot)]) {
    for (op, h) in hists {
        w.histogram(Family::RequestSeconds, &[("op", op)], h);
    }
}

/// The agent's page.
pub fn agent(state: &State) -> String {
    agent_page(&state.stats(), &state.latency(), &state.pool_latency())
}

/// The agent's page from snapshots: its stats, its RPC latency histograms, and those of its
/// calls to the pool backend.
pub fn agent_page(
    s: &AgentStats,
    hists: &[(&'static str, HistogramSnapshot)],
    pool_calls: &[(&'static str, HistogramSnapshot)],
) -> String {
    let mut w = Writer::new();
    build_info(&mut w, "agent");
    let backend = s.pool.as_ref().map_or("none", |(k, _)| k.as_str());
    w.gauge(Family::AgentPoolBackend, &[("backend", backend)], 1.0);
    w.gauge(Family::AgentSessions, &[], s.sessions as f64);
    w.gauge(Family::AgentLeases, &[], s.leases as f64);
    w.counter(Family::Hits, &[("tier", "memory")], s.hits_memory);
    w.counter(Family::Hits, &[("tier", "pool")], s.hits_pool);
    w.counter(
        Family::Misses,
        &[("tier", "memory")],
        s.hits_pool + s.misses,
    );
    w.counter(Family::Misses, &[("tier", "pool")], s.misses);
    let pool = s.pool.as_ref().map(|(_, p)| p);
    w.counter(
        Family::BytesIn,
        &[("tier", "memory")],
        s.saves * s.object_bytes,
    );
    if let Some(p) = pool {
        w.counter(Family::BytesIn, &[("tier", "pool")], p.bytes_in);
    }
    w.counter(
        Family::BytesOut,
        &[("tier", "memory")],
        (s.hits_memory + s.hits_pool) * s.object_bytes,
    );
    if let Some(p) = pool {
        w.counter(Family::BytesOut, &[("tier", "pool")], p.bytes_out);
    }
    let local = pool.filter(|p| p.capacity_bytes > 0);
    w.gauge(
        Family::UsedBytes,
        &[("tier", "memory")],
        (s.arena_used * s.slot_bytes) as f64,
    );
    if let Some(p) = local {
        w.gauge(Family::UsedBytes, &[("tier", "pool")], p.used_bytes as f64);
    }
    w.gauge(
        Family::CapacityBytes,
        &[("tier", "memory")],
        (s.arena_slots * s.slot_bytes) as f64,
    );
    if let Some(p) = local {
        w.gauge(
            Family::CapacityBytes,
            &[("tier", "pool")],
            p.capacity_bytes as f64,
        );
    }
    w.gauge(Family::Objects, &[("tier", "memory")], s.arena_used as f64);
    if let Some(p) = local {
        w.gauge(Family::Objects, &[("tier", "pool")], p.objects as f64);
    }
    w.counter(Family::Evictions, &[("tier", "memory")], s.evictions);
    if let Some(p) = pool {
        w.counter(Family::Evictions, &[("tier", "pool")], p.evictions);
        for (reason, v) in &p.corrupt {
            w.counter(Family::Corrupt, &[("tier", "pool"), ("reason", reason)], *v);
        }
    }
    w.counter(
        Family::DroppedWrites,
        &[("reason", "queue_full")],
        s.dropped_writes,
    );
    w.counter(
        Family::DroppedWrites,
        &[("reason", "pool_error")],
        s.pool_write_errors,
    );
    w.counter(Family::AgentSaveWaits, &[], s.save_waits);
    for &(reason, n) in &s.shortened_lookups {
        w.counter(Family::AgentShortenedLookups, &[("reason", reason)], n);
    }
    w.counter(Family::AgentLoadWindows, &[], s.load_windows);
    w.gauge(
        Family::AgentReadSecondsPerBlock,
        &[],
        s.read_ns_per_block as f64 / 1e9,
    );
    // Every reason, also before the first drop.
    for reason in ["no_room", "pool_down", "lease_limit"] {
        let n = s.dropped_saves.iter().find(|(r, _)| *r == reason);
        w.counter(
            Family::AgentDroppedSaves,
            &[("reason", reason)],
            n.map_or(0, |(_, n)| *n),
        );
    }
    w.counter(Family::AgentSaves, &[], s.saves);
    w.counter(Family::AgentDedup, &[], s.deduplicated);
    w.counter(Family::AgentPoolWrites, &[], s.pool_writes);
    w.counter(Family::AgentReclaimed, &[], s.reclaimed_leases);
    // Every reason and scope, also before the first.
    let of =
        |v: &[(&'static str, u64)], k: &str| v.iter().find(|(r, _)| *r == k).map_or(0, |x| x.1);
    for r in kvtier_agent::access::Refusal::ALL {
        let reason = r.name();
        w.counter(
            Family::AgentRefused,
            &[("reason", reason)],
            of(&s.refused, reason),
        );
    }
    for scope in ["session", "tenant"] {
        w.counter(
            Family::AgentLeaseLimited,
            &[("scope", scope)],
            of(&s.lease_limited, scope),
        );
    }
    w.gauge(
        Family::QueueDepth,
        &[("queue", "write_behind")],
        s.write_queue as f64,
    );
    w.gauge(
        Family::QueueDepth,
        &[("queue", "prefetch")],
        s.prefetch_queue as f64,
    );
    w.gauge(
        Family::QueueCapacity,
        &[("queue", "write_behind")],
        s.write_queue_capacity as f64,
    );
    w.gauge(
        Family::QueueCapacity,
        &[("queue", "prefetch")],
        s.prefetch_queue_capacity as f64,
    );
    latency(&mut w, hists);
    if let Some((kind, _)) = &s.pool {
        for (op, h) in pool_calls {
            w.histogram(Family::PoolCallSeconds, &[("op", op), ("backend", kind)], h);
        }
    }
    fn tenant(t: &kvtier_agent::TenantStats) -> [(&str, &str); 1] {
        [("tenant", t.tenant.as_str())]
    }
    for t in &s.tenants {
        w.gauge(Family::TenantSessions, &tenant(t), t.sessions as f64);
    }
    for t in &s.tenants {
        w.gauge(Family::TenantLeases, &tenant(t), t.leases as f64);
    }
    for t in &s.tenants {
        w.gauge(
            Family::TenantUsedBytes,
            &tenant(t),
            (t.resident_blocks * s.slot_bytes) as f64,
        );
    }
    for t in &s.tenants {
        w.counter(Family::TenantSaves, &tenant(t), t.saves);
    }
    for t in &s.tenants {
        w.counter(Family::TenantLoads, &tenant(t), t.loads);
    }
    for t in &s.tenants {
        w.counter(Family::TenantMisses, &tenant(t), t.misses);
    }
    w.finish()
}

/// A pool server's page.
pub fn pool(server: &PoolServer) -> String {
    pool_page(&server.stats(), &server.latency())
}

/// A pool server's page from snapshots.
pub fn pool_page(s: &PoolServerStats, hists: &[(&'static str, HistogramSnapshot)]) -> String {
    let mut w = Writer::new();
    build_info(&mut w, "pool");
    w.gauge(
        Family::PoolDraining,
        &[],
        if s.draining { 1.0 } else { 0.0 },
    );
    w.gauge(Family::PoolConnections, &[], s.connections as f64);
    w.counter(Family::PoolConnectionsTotal, &[], s.connections_total);
    w.counter(
        Family::PoolRejected,
        &[("reason", "bad_frame")],
        s.bad_frames,
    );
    w.counter(Family::PoolRejected, &[("reason", "auth")], s.auth_failures);
    for (reason, v) in [
        ("max_connections", s.over_capacity),
        ("stalled", s.stalled),
        ("idle", s.idle_closed),
    ] {
        w.counter(Family::PoolRejected, &[("reason", reason)], v);
    }
    for (op, v) in [
        ("put", s.puts),
        ("get", s.gets),
        ("exists", s.exists),
        ("delete", s.deletes),
    ] {
        w.counter(Family::PoolRequests, &[("op", op)], v);
    }
    // Each per-tier family: (family, cache's value, disk's value).
    let hits = s.get_hits.saturating_sub(s.cache_hits);
    for (name, cache, disk) in [
        (Family::Hits, s.cache_hits, hits),
        (
            Family::Misses,
            s.gets.saturating_sub(s.cache_hits),
            s.gets.saturating_sub(s.get_hits),
        ),
        (Family::BytesOut, s.cache_bytes_out, s.store.bytes_out),
    ] {
        w.counter(name, &[("tier", "cache")], cache);
        w.counter(name, &[("tier", "disk")], disk);
    }
    w.counter(Family::BytesIn, &[("tier", "disk")], s.store.bytes_in);
    for (name, cache, disk) in [
        (Family::UsedBytes, s.cache_bytes, s.store.used_bytes),
        (
            Family::CapacityBytes,
            s.cache_capacity,
            s.store.capacity_bytes,
        ),
        (Family::Objects, s.cache_objects, s.store.objects),
    ] {
        w.gauge(name, &[("tier", "cache")], cache as f64);
        w.gauge(name, &[("tier", "disk")], disk as f64);
    }
    w.counter(Family::Evictions, &[("tier", "disk")], s.store.evictions);
    for (reason, v) in &s.store.corrupt {
        w.counter(Family::Corrupt, &[("tier", "disk"), ("reason", reason)], *v);
    }
    w.counter(Family::PoolBadRecords, &[], s.bad_records);
    w.counter(Family::PoolStreamedPuts, &[], s.streamed_puts);
    w.counter(Family::PoolErrors, &[], s.errors);
    w.gauge(
        Family::QueueDepth,
        &[("queue", "in_flight")],
        s.in_flight as f64,
    );
    latency(&mut w, hists);
    w.finish()
}

#[cfg(test)]
mod tests {
    use kvtier_core::metrics::{Fallback, Family};

    #[test]
    fn fallbacks_are_counted_by_kind_and_exported_on_both_pages() {
        let before = Fallback::SpliceToCopy.total();
        Fallback::SpliceToCopy.count();
        assert_eq!(Fallback::SpliceToCopy.total(), before + 1);
        let pages = [
            crate::render::pool_page(&Default::default(), &[]),
            crate::render::agent_page(&Default::default(), &[], &[]),
        ];
        for page in pages {
            let samples = crate::prom::parse(&page).unwrap();
            for f in Fallback::ALL {
                let s = samples
                    .iter()
                    .find(|s| {
                        s.name == Family::Fallbacks.name()
                            && s.labels.get("kind").map(String::as_str) == Some(f.as_str())
                    })
                    .unwrap_or_else(|| panic!("{} missing:\n{page}", f.as_str()));
                if f == Fallback::SpliceToCopy {
                    assert!(s.value >= 1.0);
                }
            }
        }
    }
}
