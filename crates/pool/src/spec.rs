//! [`PoolSpec`]: which pool an agent uses, and opening it.

use std::sync::Arc;

use crate::backend::PoolBackend;
use crate::client::{PoolClient, PoolClientConfig};
use crate::shared_dir::{SharedDirConfig, SharedDirStore};
use kvtier_core::error::Result;
use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};

/// Which pool an agent writes behind to.
#[derive(Debug, Clone)]
pub enum PoolSpec {
    /// A segment store on a local directory (`kvtier up` by default).
    Embedded(SegmentStoreConfig),
    /// Pool servers (`kvtier pool`), placed by rendezvous hashing.
    Servers(PoolClientConfig),
    /// A directory shared by every node (a parallel file system).
    SharedDir(SharedDirConfig),
}

impl PoolSpec {
    /// Checks the backend's configuration for objects of `payload_len` bytes; the error names
    /// the bad field (see [`kvtier_core::Error::bad_field`]).
    pub fn validate(&self, payload_len: usize) -> Result<()> {
        match self {
            PoolSpec::Embedded(c) => c.validate_for(payload_len),
            PoolSpec::Servers(c) => c.validate(),
            PoolSpec::SharedDir(c) => c.validate(),
        }
    }

    /// Opens the backend (recovering a segment store, sizing a shared directory; pool
    /// servers are connected to lazily).
    pub fn open(&self) -> Result<Arc<dyn PoolBackend>> {
        Ok(match self {
            PoolSpec::Embedded(c) => Arc::new(SegmentStore::open(c.clone())?),
            PoolSpec::Servers(c) => Arc::new(PoolClient::new(c.clone())?),
            PoolSpec::SharedDir(c) => Arc::new(SharedDirStore::open(c.clone())?),
        })
    }
}
