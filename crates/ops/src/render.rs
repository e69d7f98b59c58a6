//! The daemons' `/metrics` pages, from their counter snapshots. Names come from
//! [`kvtier_core::metrics::names`]; docs/operations.md documents each one.
//!
//! Tiers: the agent's are `memory` (its arena) then `pool` (whichever backend it writes behind
//! to); a pool server's are `cache` (its DRAM cache) then `disk` (its segment store).

use kvtier_agent::{AgentStats, State};
use kvtier_core::metrics::{names as n, HistogramSnapshot};
use kvtier_pool::server::{PoolServer, PoolServerStats};

use super::prom::Writer;

/// The agent's tiers, nearest first.
pub const AGENT_TIERS: [&str; 2] = ["memory", "pool"];
/// A pool server's tiers, nearest first.
pub const POOL_TIERS: [&str; 2] = ["cache", "disk"];

fn build_info(w: &mut Writer, role: &str) {
    w.gauge(
        n::BUILD_INFO,
        "kvtier build and role (value 1).",
        &[("role", role), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    for f in kvtier_core::metrics::Fallback::ALL {
        w.counter(
            n::FALLBACKS,
            "Times this process took a slower path than configured, by kind.",
            &[("kind", f.as_str())],
            f.total(),
        );
    }
}

fn latency(w: &mut Writer, help: &str, hists: &[(&'static str, HistogramSnapshot)]) {
    for (op, h) in hists {
        w.histogram(n::REQUEST_SECONDS, help, &[("op", op)], h);
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
    w.gauge(
        n::AGENT_POOL_BACKEND,
        "The pool the agent writes behind to (value 1).",
        &[("backend", backend)],
        1.0,
    );
    w.gauge(
        n::AGENT_SESSIONS,
        "Engine sessions open (connected engines).",
        &[],
        s.sessions as f64,
    );
    w.gauge(
        n::AGENT_LEASES,
        "Arena slots leased to engines now.",
        &[],
        s.leases as f64,
    );
    let help = "Blocks delivered to engines, by the tier they came from.";
    w.counter(n::HITS, help, &[("tier", "memory")], s.hits_memory);
    w.counter(n::HITS, help, &[("tier", "pool")], s.hits_pool);
    let help = "Blocks a tier did not have when an engine loaded them (memory: every block not in the arena; pool: blocks no tier delivered).";
    w.counter(
        n::MISSES,
        help,
        &[("tier", "memory")],
        s.hits_pool + s.misses,
    );
    w.counter(n::MISSES, help, &[("tier", "pool")], s.misses);
    let pool = s.pool.as_ref().map(|(_, p)| p);
    let help = "Bytes into a tier (memory: payload engines saved; pool: what the backend stored).";
    w.counter(
        n::BYTES_IN,
        help,
        &[("tier", "memory")],
        s.saves * s.object_bytes,
    );
    if let Some(p) = pool {
        w.counter(n::BYTES_IN, help, &[("tier", "pool")], p.bytes_in);
    }
    let help =
        "Bytes out of a tier (memory: payload engines loaded; pool: what the backend returned).";
    w.counter(
        n::BYTES_OUT,
        help,
        &[("tier", "memory")],
        (s.hits_memory + s.hits_pool) * s.object_bytes,
    );
    if let Some(p) = pool {
        w.counter(n::BYTES_OUT, help, &[("tier", "pool")], p.bytes_out);
    }
    let local = pool.filter(|p| p.capacity_bytes > 0);
    let help = "Bytes used by a tier now (the pool: only a backend on this node).";
    w.gauge(
        n::USED_BYTES,
        help,
        &[("tier", "memory")],
        (s.arena_used * s.slot_bytes) as f64,
    );
    if let Some(p) = local {
        w.gauge(
            n::USED_BYTES,
            help,
            &[("tier", "pool")],
            p.used_bytes as f64,
        );
    }
    let help = "Capacity of a tier.";
    w.gauge(
        n::CAPACITY_BYTES,
        help,
        &[("tier", "memory")],
        (s.arena_slots * s.slot_bytes) as f64,
    );
    if let Some(p) = local {
        w.gauge(
            n::CAPACITY_BYTES,
            help,
            &[("tier", "pool")],
            p.capacity_bytes as f64,
        );
    }
    let help = "Objects held by a tier now.";
    w.gauge(n::OBJECTS, help, &[("tier", "memory")], s.arena_used as f64);
    if let Some(p) = local {
        w.gauge(n::OBJECTS, help, &[("tier", "pool")], p.objects as f64);
    }
    let help = "Objects evicted to make room, by tier.";
    w.counter(n::EVICTIONS, help, &[("tier", "memory")], s.evictions);
    if let Some(p) = pool {
        w.counter(n::EVICTIONS, help, &[("tier", "pool")], p.evictions);
        for (reason, v) in &p.corrupt {
            w.counter(
                n::CORRUPT,
                "Objects that failed verification (a miss, dropped), by tier and reason.",
                &[("tier", "pool"), ("reason", reason)],
                *v,
            );
        }
    }
    w.counter(
        n::DROPPED_WRITES,
        "Writes to the pool dropped from a full write-behind queue (each a future miss).",
        &[],
        s.dropped_writes,
    );
    w.counter(n::AGENT_SAVES, "Blocks engines saved.", &[], s.saves);
    w.counter(
        n::AGENT_DEDUP,
        "Saves skipped: the block was stored or in flight.",
        &[],
        s.deduplicated,
    );
    w.counter(
        n::AGENT_POOL_WRITES,
        "Blocks written behind to the pool.",
        &[],
        s.pool_writes,
    );
    w.counter(
        n::AGENT_RECLAIMED,
        "Leases released because their engine's connection closed.",
        &[],
        s.reclaimed_leases,
    );
    let help = "Entries waiting in a queue.";
    w.gauge(
        n::QUEUE_DEPTH,
        help,
        &[("queue", "write_behind")],
        s.write_queue as f64,
    );
    w.gauge(
        n::QUEUE_DEPTH,
        help,
        &[("queue", "prefetch")],
        s.prefetch_queue as f64,
    );
    let help = "Bound of a queue.";
    w.gauge(
        n::QUEUE_CAPACITY,
        help,
        &[("queue", "write_behind")],
        s.write_queue_capacity as f64,
    );
    w.gauge(
        n::QUEUE_CAPACITY,
        help,
        &[("queue", "prefetch")],
        s.prefetch_queue_capacity as f64,
    );
    latency(&mut w, "Time the agent took to serve an RPC, by op.", hists);
    if let Some((kind, _)) = &s.pool {
        for (op, h) in pool_calls {
            w.histogram(
                n::POOL_CALL_SECONDS,
                "Time the agent's calls to its pool backend took (write-behind puts, read-through gets, exists), by op and backend.",
                &[("op", op), ("backend", kind)],
                h,
            );
        }
    }
    fn tenant(t: &kvtier_agent::TenantStats) -> [(&str, &str); 1] {
        [("tenant", t.tenant.as_str())]
    }
    for t in &s.tenants {
        w.gauge(
            n::TENANT_SESSIONS,
            "Sessions open, by tenant (the engine name given at Hello).",
            &tenant(t),
            t.sessions as f64,
        );
    }
    for t in &s.tenants {
        w.gauge(
            n::TENANT_LEASES,
            "Arena slots leased now, by tenant.",
            &tenant(t),
            t.leases as f64,
        );
    }
    for t in &s.tenants {
        w.gauge(
            n::TENANT_USED_BYTES,
            "Arena bytes held by blocks the tenant saved, by tenant.",
            &tenant(t),
            (t.resident_blocks * s.slot_bytes) as f64,
        );
    }
    for t in &s.tenants {
        w.counter(
            n::TENANT_SAVES,
            "Blocks saved, by tenant.",
            &tenant(t),
            t.saves,
        );
    }
    for t in &s.tenants {
        w.counter(
            n::TENANT_LOADS,
            "Blocks loaded (memory or pool), by tenant.",
            &tenant(t),
            t.loads,
        );
    }
    for t in &s.tenants {
        w.counter(
            n::TENANT_MISSES,
            "Blocks asked for and not delivered, by tenant.",
            &tenant(t),
            t.misses,
        );
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
        n::POOL_DRAINING,
        "Whether the server is draining: 1, no new writes; 0, serving.",
        &[],
        if s.draining { 1.0 } else { 0.0 },
    );
    w.gauge(
        n::POOL_CONNECTIONS,
        "Data-plane connections open now (agents and other clients).",
        &[],
        s.connections as f64,
    );
    w.counter(
        n::POOL_CONNECTIONS_TOTAL,
        "Data-plane connections accepted.",
        &[],
        s.connections_total,
    );
    let help = "Connections closed for a bad frame or failed authentication, by reason.";
    w.counter(
        n::POOL_REJECTED,
        help,
        &[("reason", "bad_frame")],
        s.bad_frames,
    );
    w.counter(
        n::POOL_REJECTED,
        help,
        &[("reason", "auth")],
        s.auth_failures,
    );
    let help = "Data-plane requests, by op.";
    for (op, v) in [
        ("put", s.puts),
        ("get", s.gets),
        ("exists", s.exists),
        ("delete", s.deletes),
    ] {
        w.counter(n::POOL_REQUESTS, help, &[("op", op)], v);
    }
    // Each per-tier family: (family, help, cache's value, disk's value).
    let hits = s.get_hits.saturating_sub(s.cache_hits);
    for (name, help, cache, disk) in [
        (n::HITS, "Gets served, by the tier that had the record.", s.cache_hits, hits),
        (
            n::MISSES,
            "Gets a tier could not serve (cache: every get not served from it; disk: gets that found nothing).",
            s.gets.saturating_sub(s.cache_hits),
            s.gets.saturating_sub(s.get_hits),
        ),
        (
            n::BYTES_OUT,
            "Bytes out of a tier (cache: records served; disk: payload read back).",
            s.cache_bytes_out,
            s.store.bytes_out,
        ),
    ] {
        w.counter(name, help, &[("tier", "cache")], cache);
        w.counter(name, help, &[("tier", "disk")], disk);
    }
    w.counter(
        n::BYTES_IN,
        "Bytes into a tier (disk: records stored).",
        &[("tier", "disk")],
        s.store.bytes_in,
    );
    for (name, help, cache, disk) in [
        (
            n::USED_BYTES,
            "Bytes used by a tier now.",
            s.cache_bytes,
            s.store.used_bytes,
        ),
        (
            n::CAPACITY_BYTES,
            "Capacity of a tier.",
            s.cache_capacity,
            s.store.capacity_bytes,
        ),
        (
            n::OBJECTS,
            "Objects held by a tier now.",
            s.cache_objects,
            s.store.objects,
        ),
    ] {
        w.gauge(name, help, &[("tier", "cache")], cache as f64);
        w.gauge(name, help, &[("tier", "disk")], disk as f64);
    }
    w.counter(
        n::EVICTIONS,
        "Objects evicted to make room, by tier.",
        &[("tier", "disk")],
        s.store.evictions,
    );
    for (reason, v) in &s.store.corrupt {
        w.counter(
            n::CORRUPT,
            "Objects that failed verification (a miss, dropped), by tier and reason.",
            &[("tier", "disk"), ("reason", reason)],
            *v,
        );
    }
    w.counter(
        n::POOL_BAD_RECORDS,
        "Puts refused because the record failed verification.",
        &[],
        s.bad_records,
    );
    w.counter(
        n::POOL_STREAMED_PUTS,
        "Puts whose body was written to disk chunk by chunk while it arrived (pool.stream_chunk).",
        &[],
        s.streamed_puts,
    );
    w.counter(
        n::POOL_ERRORS,
        "Requests that failed (I/O, no space, draining).",
        &[],
        s.errors,
    );
    w.gauge(
        n::QUEUE_DEPTH,
        "Entries waiting in a queue.",
        &[("queue", "in_flight")],
        s.in_flight as f64,
    );
    latency(
        &mut w,
        "Time the pool server took to serve a request, by op.",
        hists,
    );
    w.finish()
}

#[cfg(test)]
mod tests {
    use kvtier_core::metrics::{names, Fallback};

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
                        s.name == names::FALLBACKS
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
