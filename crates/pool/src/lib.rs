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
mod backend;
pub mod client;
pub mod cluster;
pub mod placement;
pub mod server;
pub mod shared_dir;
mod spec;
pub mod splice;
#[cfg(feature = "ucx")]
pub mod ucx;
pub mod wire;

/// The generated gRPC types of `proto/kvtier/v1/pool.proto` (the control plane).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("kvtier.pool.v1");
}

pub use backend::PoolBackend;
pub use spec::PoolSpec;
