//! Tenants: the configured tenants (`agent.tenants`), or without them the names engines give,
//! each with its counters (bounded: past [`MAX_TENANTS`] names, engines count together under
//! [`OTHER_TENANT`]).

use std::collections::HashMap;

use serde::Serialize;

/// Distinct tenants (engine names) counted one by one; later names are counted together under
/// [`OTHER_TENANT`], so that engines named after their pid cannot grow the metrics without bound.
pub const MAX_TENANTS: usize = 64;

/// The tenant label of engines past the first [`MAX_TENANTS`] names.
pub const OTHER_TENANT: &str = "_other";

/// Per-tenant counters. A tenant is one of `agent.tenants` its peer may use, or without them the
/// engine name an engine gives when it opens a session (`HelloRequest.engine`, up to its first
/// `/`); see [`crate::access::Access::tenant`]. The agent never sees the cache salt that
/// isolates tenants in the keys.
#[derive(Default)]
pub(super) struct Tenants {
    pub(super) names: Vec<String>,
    index: HashMap<String, usize>,
    pub(super) saves: Vec<u64>,
    pub(super) loads: Vec<u64>,
    pub(super) misses: Vec<u64>,
    /// Slots the tenant's sessions may hold leased at once (its `arena=` share).
    pub(super) caps: Vec<Option<usize>>,
}

impl Tenants {
    /// The index of tenant `engine`, added (with its lease cap) when new.
    pub(super) fn id(&mut self, engine: &str, cap: Option<usize>) -> usize {
        if let Some(&i) = self.index.get(engine) {
            return i;
        }
        let name = if self.names.len() < MAX_TENANTS {
            engine
        } else {
            OTHER_TENANT
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        self.saves.push(0);
        self.loads.push(0);
        self.misses.push(0);
        self.caps.push(cap);
        i
    }
}

/// One tenant's usage (see [`AgentStats::tenants`]).
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// The engine name (or [`OTHER_TENANT`]).
    pub tenant: String,
    /// Sessions open now.
    pub sessions: u64,
    /// Arena slots leased now.
    pub leases: u64,
    /// Blocks the tenant saved that are in the arena now.
    pub resident_blocks: u64,
    /// Blocks saved.
    pub saves: u64,
    /// Blocks loaded (from memory or through from the pool).
    pub loads: u64,
    /// Blocks asked for and not delivered.
    pub misses: u64,
}
