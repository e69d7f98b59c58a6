//! kvtier-core: the pure core of kvtier, with no async runtime, no network and no CLI.
//!
//! Module map (dependencies point down this list; no module reaches up):
//!
//! - [`error`]: the one error type (kind + context + source).
//! - [`dtype`]: the KV cache's element types.
//! - [`key`]: block keys, the portable, versioned names of KV blocks (`docs/key-spec.md`).
//! - [`buf`]: page-aligned buffers for O_DIRECT I/O.
//! - [`block`]: block objects: the 64-byte header, checksums, records and their one
//!   verification.
//! - [`layout`]: engine KV layouts, and gathering one engine block into one object and back.
//! - [`size`]: sizes in bytes as written in configuration (`2MiB`).
//! - [`metrics`]: counters, histograms, and metric names.
//! - [`policy`]: eviction policies (hit density, the tiers' default; LRU), pure code shared by
//!   the tiers and the simulator.
//! - [`tier`]: the storage engines: the host-memory arena ([`tier::host`]) and the NVMe
//!   segment store ([`tier::segment`]), with disk I/O behind [`tier::io`].
//! - `gpu` (feature `cuda`): the CUDA copy engine.
//!
//! The crates above this one: `kvtier-pool` (the shared pool), `kvtier-agent` (the node agent
//! and its engine-side client), `kvtier-ops` (configuration and endpoints), `kvtier-sim`,
//! `kvtier-bench`, the `kvtier` command and `kvtier-ffi` (libkvtier, the C ABI).

#![warn(missing_docs)]

pub mod block;
pub mod buf;
pub mod dtype;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod key;
pub mod layout;
pub mod metrics;
pub mod policy;
pub mod size;
pub mod tier;

pub use dtype::KvDtype;
pub use error::{Error, ErrorKind, Result};
pub use key::{BlockKey, Namespace, NamespaceParams};
pub use layout::{KvLayout, LayoutKind};
