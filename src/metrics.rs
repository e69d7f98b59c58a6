//! Counters every component keeps, and their names (one place for every metric name).
//!
//! Components own plain atomic counters (cheap on the hot path) and expose a serialisable
//! snapshot; the daemons export the snapshots (Prometheus `/metrics`, `kvtier stat`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::block::VerifyError;

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

/// Metric names (Prometheus style). Every exported metric is named here.
pub mod names {
    /// Lookups that found the object, by tier.
    pub const HITS: &str = "kvtier_hits_total";
    /// Lookups that did not, by tier.
    pub const MISSES: &str = "kvtier_misses_total";
    /// Objects dropped because they failed verification, by tier and reason.
    pub const CORRUPT: &str = "kvtier_corrupt_objects_total";
    /// Objects evicted, by tier.
    pub const EVICTIONS: &str = "kvtier_evictions_total";
    /// Bytes written into a tier.
    pub const BYTES_IN: &str = "kvtier_bytes_in_total";
    /// Bytes read out of a tier.
    pub const BYTES_OUT: &str = "kvtier_bytes_out_total";
    /// Bytes currently used by a tier.
    pub const USED_BYTES: &str = "kvtier_used_bytes";
    /// Configured capacity of a tier.
    pub const CAPACITY_BYTES: &str = "kvtier_capacity_bytes";
    /// Fallbacks to a slower path (io_uring to psync, O_DIRECT to buffered), by kind.
    pub const FALLBACKS: &str = "kvtier_fallbacks_total";
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
