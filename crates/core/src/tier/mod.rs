//! Storage tiers: where block objects live.
//!
//! - [`host`]: the host-memory arena (memfd-backed, shareable with engine processes).
//! - [`segment`]: the log-structured NVMe segment store.
//! - [`io`]: the disk I/O edge (psync or io_uring, O_DIRECT).

pub mod host;
pub mod io;
pub mod segment;
