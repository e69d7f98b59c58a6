//! The shared pool: where blocks go when they leave a node's memory, and where any replica on
//! any node finds them again.
//!
//! Three backends behind one trait, [`PoolBackend`], which the agent's write-behind and
//! read-through use:
//!
//! - the embedded segment store ([`kvtier_core::tier::segment::SegmentStore`]): one node, one disk;
//! - pool servers ([`server`], `kvtier pool`) reached through [`client::PoolClient`]: a framed
//!   binary protocol over TCP ([`wire`]), optional shared-secret authentication ([`auth`]),
//!   rendezvous placement with replication ([`placement`]); large puts stream to disk as
//!   they arrive (`server/stream.rs`) and the client sends them to other hosts without copying
//!   ([`splice`]);
//! - a shared directory on a parallel file system ([`shared_dir`]), no server at all.
//!
//! Every backend hands back whole, verified records: a record that fails its checksum is a miss.

pub mod auth;
pub mod client;
pub mod placement;
pub mod server;
pub mod shared_dir;
pub mod splice;
#[cfg(feature = "ucx")]
pub mod ucx;
pub mod wire;

/// The generated gRPC types of `proto/kvtier/v1/pool.proto` (the control plane).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("kvtier.pool.v1");
}

use std::sync::Arc;

use kvtier_core::block::BlockHeader;
use kvtier_core::error::Result;
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::StoreStats;
use kvtier_core::tier::segment::SegmentStore;

/// What the agent needs from a pool. Implementations are thread-safe and block the caller
/// (the agent calls them from its write-behind and prefetch threads, and within a budget on
/// loads); remote ones bound every call by a deadline.
pub trait PoolBackend: Send + Sync {
    /// A short name for logs: `embedded`, `servers`, `shared-dir`.
    fn kind(&self) -> &'static str;

    /// Stores a complete, sealed, page-aligned record (header, payload, padding).
    fn put_record(&self, record: &[u8]) -> Result<()>;

    /// [`put_record`](Self::put_record) for several records; remote backends send them all
    /// at once. One result per record, in order.
    fn put_many(&self, records: &[&[u8]]) -> Vec<Result<()>> {
        records.iter().map(|r| self.put_record(r)).collect()
    }

    /// Reads and verifies the record of `key` into `buf` (page-aligned, at least the record's
    /// length). `None` on a miss, including a record that failed verification.
    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>>;

    /// [`get_into_slice`](Self::get_into_slice) for several keys, each into its own buffer;
    /// remote backends fetch them all at once. One result per request, in order.
    fn get_many_into(
        &self,
        reqs: &mut [(BlockKey, &mut [u8])],
    ) -> Vec<Result<Option<BlockHeader>>> {
        reqs.iter_mut()
            .map(|(k, b)| self.get_into_slice(*k, b))
            .collect()
    }

    /// Whether `key` is stored (may be stale by the time it is read: a later get can miss).
    fn contains(&self, key: BlockKey) -> bool;

    /// Which of `keys` are stored. Remote backends ask in one batch per server.
    fn contains_many(&self, keys: &[BlockKey]) -> Vec<bool> {
        keys.iter().map(|k| self.contains(*k)).collect()
    }

    /// Counters for stats views.
    fn stats(&self) -> StoreStats;
}

impl PoolBackend for SegmentStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn put_record(&self, record: &[u8]) -> Result<()> {
        SegmentStore::put_record(self, record)
    }

    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        SegmentStore::get_into_slice(self, key, buf)
    }

    fn contains(&self, key: BlockKey) -> bool {
        SegmentStore::contains(self, key)
    }

    fn stats(&self) -> StoreStats {
        SegmentStore::stats(self)
    }
}

/// Which pool an agent writes behind to.
#[derive(Debug, Clone)]
pub enum PoolSpec {
    /// A segment store on a local directory (`kvtier up` by default).
    Embedded(kvtier_core::tier::segment::SegmentStoreConfig),
    /// Pool servers (`kvtier pool`), placed by rendezvous hashing.
    Servers(client::PoolClientConfig),
    /// A directory shared by every node (a parallel file system).
    SharedDir(shared_dir::SharedDirConfig),
}

impl PoolSpec {
    /// Opens the backend (recovering a segment store, sizing a shared directory; pool
    /// servers are connected to lazily).
    pub fn open(&self) -> Result<Arc<dyn PoolBackend>> {
        Ok(match self {
            PoolSpec::Embedded(c) => Arc::new(SegmentStore::open(c.clone())?),
            PoolSpec::Servers(c) => Arc::new(client::PoolClient::new(c.clone())?),
            PoolSpec::SharedDir(c) => Arc::new(shared_dir::SharedDirStore::open(c.clone())?),
        })
    }
}
