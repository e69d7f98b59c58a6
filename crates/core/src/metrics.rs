//! Counters every component keeps, and their names (one place for every metric name).
//!
//! Components own plain atomic counters (cheap on the hot path) and expose a serialisable
//! snapshot; the daemons export the snapshots (Prometheus `/metrics`, `kvtier stat`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::block::VerifyError;

/// Why the process took a slower path than asked for, counted process-wide (exported as
/// `kvtier_fallbacks_total{kind}` by both daemons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// io_uring could not be set up (`io = auto`): psync instead.
    UringToPsync,
    /// The file system refused O_DIRECT (tmpfs, some FUSE mounts): buffered I/O instead.
    DirectToBuffered,
    /// Zero-copy sends to pool servers unavailable (no pipe, or `vmsplice` refused, as by
    /// some seccomp profiles): records are copied into the socket.
    SpliceToCopy,
}

impl Fallback {
    /// Every kind, in export order.
    pub const ALL: [Fallback; 3] = [
        Fallback::UringToPsync,
        Fallback::DirectToBuffered,
        Fallback::SpliceToCopy,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::UringToPsync => "io_uring_to_psync",
            Fallback::DirectToBuffered => "direct_to_buffered",
            Fallback::SpliceToCopy => "splice_to_copy",
        }
    }

    /// Counts one.
    pub fn count(self) {
        FALLBACKS[self as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many so far in this process.
    pub fn total(self) -> u64 {
        FALLBACKS[self as usize].load(Ordering::Relaxed)
    }
}

static FALLBACKS: [AtomicU64; Fallback::ALL.len()] =
    [const { AtomicU64::new(0) }; Fallback::ALL.len()];

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (usage, depth).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Subtracts `n`.
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counter per [`VerifyError`] reason: *why* objects were dropped as corrupt.
#[derive(Debug, Default)]
pub struct CorruptionCounters([Counter; VerifyError::ALL.len()]);

impl CorruptionCounters {
    /// Counts one failure of `reason`.
    pub fn record(&self, reason: VerifyError) {
        self.0[reason as usize].inc();
    }
    /// The count for `reason`.
    pub fn get(&self, reason: VerifyError) -> u64 {
        self.0[reason as usize].get()
    }
    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
    /// `(reason, count)` for every reason.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        VerifyError::ALL
            .iter()
            .map(|r| (r.as_str(), self.get(*r)))
            .collect()
    }
}

/// The counters every store keeps behind its [`StoreStats`] (the segment store, the shared
/// directory): hits, misses, puts, evictions, bytes in and out, and corrupt objects by reason.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Lookups that found the object.
    pub hits: Counter,
    /// Lookups that did not.
    pub misses: Counter,
    /// Objects stored.
    pub puts: Counter,
    /// Objects evicted to make room.
    pub evictions: Counter,
    /// Bytes stored.
    pub bytes_in: Counter,
    /// Bytes returned.
    pub bytes_out: Counter,
    /// Objects dropped as corrupt, by reason.
    pub corrupt: CorruptionCounters,
}

impl StoreCounters {
    /// The snapshot, with the store's own `objects`, `used_bytes` and `capacity_bytes`.
    pub fn snapshot(&self, objects: u64, used_bytes: u64, capacity_bytes: u64) -> StoreStats {
        StoreStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            puts: self.puts.get(),
            evictions: self.evictions.get(),
            corrupt: self.corrupt.snapshot(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            objects,
            used_bytes,
            capacity_bytes,
        }
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds (10 µs to 10 s; the last bucket,
/// `+Inf`, is implicit).
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const LATENCY_BOUNDS_NS: [u64; 19] = {
    let mut b = [0u64; 19];
    let mut i = 0;
    // 10 µs, 25 µs, 50 µs, then ×10 per three buckets.
    let base = [10_000u64, 25_000, 50_000];
    let mut scale = 1u64;
    while i < 19 {
        b[i] = base[i % 3] * scale;
        if i % 3 == 2 {
            scale *= 10;
        }
        i += 1;
    }
    b
};

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]): one atomic add per
/// observation, no lock.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_n(d, 1);
    }

    /// Records `n` observations of `d` at once.
    pub fn observe_n(&self, d: std::time::Duration, n: u64) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`LATENCY_BUCKETS`], not cumulative, then `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A fixed set of operations, each timed into a histogram of its own ([`OpLatency`]): an enum
/// declared with [`op_set!`](crate::op_set).
pub trait OpSet: Copy + 'static {
    /// Every op, in export order.
    const ALL: &'static [Self];
    /// The `op` label.
    fn name(self) -> &'static str;
    /// The op's position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
}

/// Declares an enum of ops with their `op` labels and implements [`OpSet`] for it:
/// `op_set! { pub enum PoolCall { Put => "put", Get => "get" } }`.
#[macro_export]
macro_rules! op_set {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vm])* $v),+ }
        impl $crate::metrics::OpSet for $name {
            const ALL: &'static [Self] = &[$($name::$v),+];
            fn name(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// One latency histogram per op of an [`OpSet`] (the agent's RPCs, the pool's ops).
#[derive(Debug)]
pub struct OpLatency<O: OpSet> {
    hists: Vec<Histogram>,
    ops: std::marker::PhantomData<O>,
}

impl<O: OpSet> Default for OpLatency<O> {
    fn default() -> Self {
        OpLatency {
            hists: O::ALL.iter().map(|_| Histogram::default()).collect(),
            ops: std::marker::PhantomData,
        }
    }
}

impl<O: OpSet> OpLatency<O> {
    /// Records one observation of `op`.
    pub fn observe(&self, op: O, d: std::time::Duration) {
        self.observe_n(op, d, 1);
    }

    /// Records `n` observations of `d` for `op` at once.
    pub fn observe_n(&self, op: O, d: std::time::Duration, n: u64) {
        self.hists[op.index()].observe_n(d, n);
    }

    /// `(op label, counts)` for every op, in export order.
    pub fn snapshot(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        O::ALL
            .iter()
            .zip(&self.hists)
            .map(|(op, h)| (op.name(), h.snapshot()))
            .collect()
    }
}

/// How a family's samples are typed on the `/metrics` page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A latency histogram of [`LATENCY_BUCKETS`] (seconds).
    Histogram,
}

/// Declares [`Family`]: each metric family's variant, exported name, kind and help (the doc
/// comment is the `# HELP` text).
macro_rules! families {
    ($($(#[doc = $doc:literal])+ $v:ident => ($name:literal, $kind:ident),)*) => {
        /// Every metric family kvtier exports (Prometheus style): one place for names, kinds
        /// and help texts. docs/operations.md documents each one (a test checks it).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Family {
            $($(#[doc = $doc])+ $v,)*
        }

        impl Family {
            /// Every family, in page order.
            pub const ALL: &'static [Family] = &[$(Family::$v),*];

            /// The exported name (`kvtier_hits_total`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Family::$v => $name,)*
                }
            }

            /// Counter, gauge or histogram.
            pub fn kind(self) -> FamilyKind {
                match self {
                    $(Family::$v => FamilyKind::$kind,)*
                }
            }

            /// The `# HELP` text.
            pub fn help(self) -> &'static str {
                match self {
                    $(Family::$v => concat!($($doc),+).trim_ascii(),)*
                }
            }
        }
    };
}

families! {
    /// kvtier build and role: `role` (agent, pool) and `version` labels, value 1.
    BuildInfo => ("kvtier_build_info", Gauge),
    /// Blocks (agent) or gets (pool server) served, by the tier that had them: `memory` then
    /// `pool` on the agent, `cache` then `disk` on a pool server.
    Hits => ("kvtier_hits_total", Counter),
    /// Lookups a tier could not serve, by tier (agent `memory`: every block not in the arena;
    /// `pool`: blocks no tier delivered).
    Misses => ("kvtier_misses_total", Counter),
    /// Objects dropped because they failed verification, by tier and reason.
    Corrupt => ("kvtier_corrupt_objects_total", Counter),
    /// Objects evicted, by tier.
    Evictions => ("kvtier_evictions_total", Counter),
    /// Bytes written into a tier (agent `memory`: payload engines saved; `pool`: what the
    /// backend stored).
    BytesIn => ("kvtier_bytes_in_total", Counter),
    /// Bytes read out of a tier (agent `memory`: payload engines loaded; `pool`: what the
    /// backend returned).
    BytesOut => ("kvtier_bytes_out_total", Counter),
    /// Bytes currently used by a tier (the agent's pool: only a backend on this node).
    UsedBytes => ("kvtier_used_bytes", Gauge),
    /// Configured capacity of a tier.
    CapacityBytes => ("kvtier_capacity_bytes", Gauge),
    /// Objects currently held by a tier.
    Objects => ("kvtier_objects", Gauge),
    /// Fallbacks to a slower path (io_uring to psync, O_DIRECT to buffered, splice to copy), by kind.
    Fallbacks => ("kvtier_fallbacks_total", Counter),
    /// Time to serve a request, by op (histogram, seconds).
    RequestSeconds => ("kvtier_request_duration_seconds", Histogram),
    /// Agent: time its calls to its pool backend took, by op (histogram, seconds).
    PoolCallSeconds => ("kvtier_pool_call_duration_seconds", Histogram),
    /// Entries waiting in a queue, by queue.
    QueueDepth => ("kvtier_queue_depth", Gauge),
    /// Bound of a queue, by queue.
    QueueCapacity => ("kvtier_queue_capacity", Gauge),
    /// Writes to the pool dropped (each a future miss), by reason: `queue_full` (the oldest of a
    /// full write-behind queue), `pool_error` (the pool refused or failed: down, full, late).
    DroppedWrites => ("kvtier_dropped_writes_total", Counter),
    /// Engine sessions open on the agent (connected engines).
    AgentSessions => ("kvtier_agent_sessions", Gauge),
    /// Arena slots leased to engines now (being filled or copied out).
    AgentLeases => ("kvtier_agent_leases", Gauge),
    /// Blocks engines saved (stored in the arena).
    AgentSaves => ("kvtier_agent_saved_blocks_total", Counter),
    /// Saves skipped because the block was stored or in flight.
    AgentDedup => ("kvtier_agent_deduplicated_blocks_total", Counter),
    /// Blocks written behind to the pool.
    AgentPoolWrites => ("kvtier_agent_pool_writes_total", Counter),
    /// Blocks whose save waited for write-behind to make room in the arena (a save larger than
    /// the free arena streams through it).
    AgentSaveWaits => ("kvtier_agent_save_waits_total", Counter),
    /// Blocks not saved, by reason: `no_room` (the arena stayed full for the save's whole
    /// wait), `pool_down` (the arena was full while writes to the pool were failing).
    AgentDroppedSaves => ("kvtier_agent_dropped_saves_total", Counter),
    /// Lookups whose prefix was cut, by reason: `budget` (reading more blocks from the pool
    /// would not fit the engine's load budget at the measured read rate), `recompute` (it would
    /// take longer than the engine recomputing them).
    AgentShortenedLookups => ("kvtier_agent_shortened_lookups_total", Counter),
    /// Windows of blocks handed out by loads: a load larger than the agent's window (a quarter
    /// of the arena) takes several, each copied out and released before the next.
    AgentLoadWindows => ("kvtier_agent_load_windows_total", Counter),
    /// Measured time to read one block through from the pool (a moving average of batched
    /// reads; 0 until the first), which bounds what a lookup promises.
    AgentReadSecondsPerBlock => ("kvtier_agent_read_seconds_per_block", Gauge),
    /// Leases released because their engine's connection closed.
    AgentReclaimed => ("kvtier_agent_reclaimed_leases_total", Counter),
    /// Peers the agent refused, by reason: `no_tenant` (its uid and groups may use no tenant of
    /// `agent.tenants`: it never got the arena), `tenant` (it asked for a tenant it may not
    /// use), `not_owner` (it named a session or descriptor token of another uid).
    AgentRefused => ("kvtier_agent_refused_total", Counter),
    /// Leases not granted because the session (`scope="session"`: three quarters of the arena)
    /// or its tenant (`scope="tenant"`: its `arena=` share) held its limit of slots.
    AgentLeaseLimited => ("kvtier_agent_lease_limited_total", Counter),
    /// The agent's pool backend (`backend` label: embedded, servers, shared-dir, none), value 1.
    AgentPoolBackend => ("kvtier_agent_pool_backend", Gauge),
    /// Per tenant (the engine name): sessions open.
    TenantSessions => ("kvtier_tenant_sessions", Gauge),
    /// Per tenant: arena slots leased now.
    TenantLeases => ("kvtier_tenant_leases", Gauge),
    /// Per tenant: bytes of the arena held by blocks the tenant saved.
    TenantUsedBytes => ("kvtier_tenant_used_bytes", Gauge),
    /// Per tenant: blocks saved.
    TenantSaves => ("kvtier_tenant_saved_blocks_total", Counter),
    /// Per tenant: blocks loaded (from memory or the pool).
    TenantLoads => ("kvtier_tenant_loaded_blocks_total", Counter),
    /// Per tenant: blocks asked for and not delivered.
    TenantMisses => ("kvtier_tenant_missed_blocks_total", Counter),
    /// Pool server: connections open now.
    PoolConnections => ("kvtier_pool_connections", Gauge),
    /// Pool server: connections accepted since start.
    PoolConnectionsTotal => ("kvtier_pool_connections_total", Counter),
    /// Pool server: connections it closed, by reason: `bad_frame`, `auth` (failed
    /// authentication), `max_connections` (closed as it arrived), `stalled` (a body or an
    /// answer not moving for the stall timeout), `idle` (no request for the idle timeout).
    PoolRejected => ("kvtier_pool_rejected_connections_total", Counter),
    /// Pool server: requests, by op.
    PoolRequests => ("kvtier_pool_requests_total", Counter),
    /// Pool server: puts refused because the record failed verification (checksum, header, key).
    PoolBadRecords => ("kvtier_pool_bad_records_total", Counter),
    /// Pool server: puts whose body was streamed to disk while it arrived.
    PoolStreamedPuts => ("kvtier_pool_streamed_puts_total", Counter),
    /// Pool server: requests that failed (I/O, no space, draining).
    PoolErrors => ("kvtier_pool_errors_total", Counter),
    /// Pool server: whether it is draining (1) or taking writes (0).
    PoolDraining => ("kvtier_pool_draining", Gauge),
}

/// Snapshot of a store's counters, for `--json`, `kvtier stat` and tests.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Lookups that found the object.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Objects stored.
    pub puts: u64,
    /// Objects evicted to make room.
    pub evictions: u64,
    /// Objects dropped as corrupt, by reason.
    pub corrupt: Vec<(&'static str, u64)>,
    /// Bytes stored.
    pub bytes_in: u64,
    /// Bytes returned.
    pub bytes_out: u64,
    /// Objects currently indexed.
    pub objects: u64,
    /// Bytes currently used (slots or segment files).
    pub used_bytes: u64,
    /// Configured capacity in bytes.
    pub capacity_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn families_are_named_by_their_kind_and_documented() {
        let mut seen = std::collections::HashSet::new();
        for f in Family::ALL {
            let n = f.name();
            assert!(seen.insert(n), "{n} declared twice");
            assert!(n.starts_with("kvtier_"), "{n}");
            match f.kind() {
                FamilyKind::Counter => assert!(n.ends_with("_total"), "{n}"),
                FamilyKind::Histogram => assert!(n.ends_with("_seconds"), "{n}"),
                FamilyKind::Gauge => assert!(!n.ends_with("_total"), "{n}"),
            }
            assert!(f.help().len() > 10 && !f.help().starts_with(' '), "{n}");
        }
    }

    #[test]
    fn bucket_bounds_match_the_published_seconds() {
        for (ns, s) in LATENCY_BOUNDS_NS.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*ns, (s * 1e9).round() as u64);
        }
    }

    #[test]
    fn histogram_puts_each_observation_in_its_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10)); // on a bound: that bucket (le is inclusive)
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // past the last bound: +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[8], 1, "3 ms falls in (2.5 ms, 5 ms]");
        assert_eq!(s.counts[LATENCY_BUCKETS.len()], 1);
        assert!((s.sum_seconds - 60.003_021).abs() < 1e-9);
    }

    crate::op_set! {
        /// Two ops, for the test.
        enum TwoOps { A => "a", B => "b" }
    }

    #[test]
    fn op_latency_times_each_op_under_its_label() {
        let l = OpLatency::<TwoOps>::default();
        l.observe(TwoOps::B, Duration::from_millis(1));
        l.observe_n(TwoOps::A, Duration::from_millis(1), 3);
        let s = l.snapshot();
        assert_eq!((s[0].0, s[1].0), ("a", "b"));
        assert_eq!((s[0].1.count(), s[1].1.count()), (3, 1));
    }
}
