//! kvtier: a KV-cache offload tier for LLM inference servers.
//!
//! Module map (dependencies point down this list; no module reaches up):
//!
//! - [`error`]: the one error type (kind + context + source).
//! - [`key`]: block keys, the portable, versioned names of KV blocks (`docs/key-spec.md`).
//! - [`layout`]: engine KV layouts, and gathering one engine block into one object and back.
//! - [`buf`]: page-aligned buffers for O_DIRECT I/O.
//! - [`block`]: block objects: the 64-byte header, checksums, records.
//! - [`metrics`]: counters and metric names.
//! - [`policy`]: eviction policies (hit density, the tiers' default; LRU), pure code shared by
//!   the tiers and the simulator.
//! - [`tier`]: the storage engines: the host-memory arena ([`tier::host`]) and the NVMe
//!   segment store ([`tier::segment`]), with disk I/O behind [`tier::io`].
//! - [`agent`]: the node agent (arena shared with engines, leases, write-behind, gRPC over a
//!   Unix socket) and the engine-side client.
//! - [`pool`]: the shared pool: pool servers and their client (framed TCP, placement,
//!   replication, authentication), the shared-directory backend, and the [`pool::PoolBackend`]
//!   trait the agent writes behind to.
//! - [`sim`]: `kvtier sim`, trace replay for capacity planning.
//! - [`bench`](mod@bench): the measurement programs behind `kvtier bench ...`.
//! - [`ops`]: operating the daemons: the TOML configuration, `/metrics`, `/healthz` and
//!   `/readyz`, readiness, `kvtier stat`.
//! - `gpu` (feature `cuda`): the CUDA copy engine.

#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod block;
pub mod buf;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod key;
pub mod layout;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod pool;
pub mod sim;
pub mod tier;

pub use error::{Error, ErrorKind, Result};
pub use key::{BlockKey, Namespace, NamespaceParams};
pub use layout::{KvDtype, KvLayout, LayoutKind};
