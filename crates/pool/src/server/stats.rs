//! A pool server's counters and the snapshot its `Stats` op and control plane answer.

use serde::Serialize;

use crate::wire::Op;
use kvtier_core::metrics::{Counter, Gauge, StoreStats};

kvtier_core::op_set! {
    /// The data-plane ops timed into latency histograms (see [`PoolServer::latency`](super::PoolServer::latency)).
    pub enum PoolOp {
        /// Puts, whole or streamed.
        Put => "put",
        /// Gets.
        Get => "get",
        /// Batched existence checks.
        Exists => "exists",
        /// Deletes.
        Delete => "delete",
        /// The `Stats` op.
        Stats => "stats",
        /// Anything else (authentication, UCX set-up).
        Other => "other",
    }
}

impl PoolOp {
    /// The op a request frame is timed under.
    pub fn of(op: Op) -> PoolOp {
        match op {
            Op::Put => PoolOp::Put,
            Op::Get => PoolOp::Get,
            Op::Exists => PoolOp::Exists,
            Op::Delete => PoolOp::Delete,
            Op::Stats => PoolOp::Stats,
            _ => PoolOp::Other,
        }
    }
}

/// Counters of a pool server (see [`PoolServerStats`]).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) connections: Gauge,
    pub(super) connections_total: Counter,
    pub(super) rejected: Counter,
    pub(super) bad_frames: Counter,
    pub(super) auth_failures: Counter,
    pub(super) over_capacity: Counter,
    pub(super) stalled: Counter,
    pub(super) idle_closed: Counter,
    pub(super) puts: Counter,
    pub(super) streamed_puts: Counter,
    pub(super) gets: Counter,
    pub(super) get_hits: Counter,
    pub(super) cache_hits: Counter,
    pub(super) cache_bytes_out: Counter,
    pub(super) exists: Counter,
    pub(super) deletes: Counter,
    pub(super) errors: Counter,
    pub(super) bad_records: Counter,
    pub(super) in_flight: Gauge,
}

/// A snapshot of a pool server's counters (the `Stats` op and the control plane answer this).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PoolServerStats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections closed for a bad frame or failed authentication.
    pub rejected: u64,
    /// Of those, bad frames.
    pub bad_frames: u64,
    /// Of those, failed authentication.
    pub auth_failures: u64,
    /// Connections closed as they arrived: `max_connections` were open.
    pub over_capacity: u64,
    /// Connections closed because a body did not arrive, or the peer took no answer, within
    /// the stall timeout.
    pub stalled: u64,
    /// Connections closed after the idle timeout without a request.
    pub idle_closed: u64,
    /// Put requests.
    pub puts: u64,
    /// Of those, puts whose body was streamed to disk as it arrived (`stream_chunk`).
    pub streamed_puts: u64,
    /// Get requests.
    pub gets: u64,
    /// Gets that found the key (cache or disk).
    pub get_hits: u64,
    /// Gets served from the DRAM cache.
    pub cache_hits: u64,
    /// Record bytes served from the DRAM cache.
    pub cache_bytes_out: u64,
    /// Bound of the DRAM cache in bytes.
    pub cache_capacity: u64,
    /// Exists requests.
    pub exists: u64,
    /// Delete requests.
    pub deletes: u64,
    /// Requests that failed (I/O, no space, draining).
    pub errors: u64,
    /// Puts refused because the record failed verification.
    pub bad_records: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Records in the DRAM cache.
    pub cache_objects: u64,
    /// Bytes in the DRAM cache.
    pub cache_bytes: u64,
    /// Whether the server is draining (no new writes).
    pub draining: bool,
    /// The segment store.
    pub store: StoreStats,
}
