//! The agent's state and operations, independent of the transport (the gRPC service calls
//! these; tests can too).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::{Counter, HistogramSnapshot, OpLatency, StoreStats};
use kvtier_core::policy::InsertInfo;
use kvtier_core::tier::host::{Commit, HostArena, SlotId};
use kvtier_pool::PoolBackend;

use crate::access::{Access, Peer, Refusal};
use crate::fdpass;
use crate::AgentConfig;

mod load;
mod prefetch;
mod save;
mod sessions;
mod stats;
mod tenants;
mod write_behind;

use tenants::Tenants;
pub use tenants::{TenantStats, MAX_TENANTS, OTHER_TENANT};

/// Lookups whose pool-resident blocks wait to be prefetched, at most.
const PREFETCH_QUEUE: usize = 64;

/// Blocks read through from the pool at once (a load's or a prefetch's window): a remote pool
/// fetches them concurrently instead of one round trip after another.
const READ_THROUGH_BATCH: usize = 8;

/// Longest a save waits for room in the arena (blocks not yet written behind to the pool are
/// held in memory, so a save larger than the free arena waits for write-behind to make room)
/// before it gives up on the rest of its blocks (counted as dropped, reason `no_room`).
const SAVE_WAIT: Duration = Duration::from_secs(1);

/// Blocks written behind to the pool at once, at most (one batched existence check, then the
/// missing ones put concurrently by a remote pool).
const WRITE_BEHIND_BATCH: usize = 8;

kvtier_core::op_set! {
    /// The agent's calls to its pool backend, each timed (see [`State::pool_latency`]).
    pub enum PoolCall {
        /// Write-behind puts.
        Put => "put",
        /// Read-through gets.
        Get => "get",
        /// Existence checks (lookups, write-behind dedup).
        Exists => "exists",
    }
}

kvtier_core::op_set! {
    /// The agent's RPCs, each timed (see [`State::observe`]).
    pub enum AgentOp {
        /// An engine opens a session.
        Hello => "hello",
        /// How many leading blocks of a prefix are stored.
        Lookup => "lookup",
        /// Slots for the blocks an engine saves.
        BeginSave => "begin_save",
        /// The saved blocks are filled.
        CommitSave => "commit_save",
        /// Slots an engine copies blocks out of.
        BeginLoad => "begin_load",
        /// The loaded blocks are copied out.
        EndLoad => "end_load",
        /// An engine closes its session.
        Goodbye => "goodbye",
        /// The agent's counters.
        Stats => "stats",
    }
}

enum LeaseKind {
    /// An arena slot the engine is filling for `key`.
    Write {
        slot: SlotId,
        key: BlockKey,
        parent: Option<BlockKey>,
    },
    /// A pinned slot the engine is copying out.
    Read { slot: SlotId },
}

struct Lease {
    session: u64,
    kind: LeaseKind,
}

struct Session {
    token: u64,
    /// The uid of the process that opened it (from its descriptor connection): calls naming
    /// this session from another uid are refused.
    uid: u32,
    layout_digest: u64,
    engine: String,
    /// Index into the tenant table.
    tenant: usize,
    leases: HashSet<u64>,
}

/// A granted lease: index of the key in the request, the slot, the lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// Index of the key in the request.
    pub index: u32,
    /// Arena slot.
    pub slot: u32,
    /// Lease id.
    pub lease: u64,
}

/// Counters of an agent.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Open sessions.
    pub sessions: u64,
    /// Arena slots.
    pub arena_slots: u64,
    /// Arena slots holding objects.
    pub arena_used: u64,
    /// Leases outstanding.
    pub leases: u64,
    /// Blocks loaded from memory.
    pub hits_memory: u64,
    /// Blocks loaded by reading through from the pool.
    pub hits_pool: u64,
    /// Blocks asked for and not delivered.
    pub misses: u64,
    /// Blocks saved.
    pub saves: u64,
    /// Saves skipped because the key was stored or in flight.
    pub deduplicated: u64,
    /// Blocks written to the pool.
    pub pool_writes: u64,
    /// Pool writes dropped from a full queue.
    pub dropped_writes: u64,
    /// Pool writes the pool refused or failed (down, full, past the deadline).
    pub pool_write_errors: u64,
    /// Blocks whose save waited for write-behind to make room in the arena.
    pub save_waits: u64,
    /// Blocks not saved: no room in the arena within the save's wait (`no_room`), none while
    /// the pool was failing (`pool_down`), or the session or tenant held its limit of leased
    /// slots (`lease_limit`).
    pub dropped_saves: Vec<(&'static str, u64)>,
    /// Lookups whose prefix was cut, by reason: reading more from the pool would not fit the
    /// engine's load budget (`budget`), or would take longer than recomputing (`recompute`).
    pub shortened_lookups: Vec<(&'static str, u64)>,
    /// Windows of blocks handed out by loads (a load larger than a window takes several).
    pub load_windows: u64,
    /// Measured time to read one block through from the pool, in ns (0: none read yet).
    pub read_ns_per_block: u64,
    /// Objects that failed their checksum on the way back from the pool.
    pub corrupt: u64,
    /// Leases released because their engine's connection closed.
    pub reclaimed_leases: u64,
    /// Peers refused, by reason ([`Refusal::name`]: `no_tenant`, `tenant`, `not_owner`).
    pub refused: Vec<(&'static str, u64)>,
    /// Leases not granted because the session (`session`) or its tenant (`tenant`) held its
    /// limit of arena slots.
    pub lease_limited: Vec<(&'static str, u64)>,
    /// Arena objects evicted to make room.
    pub evictions: u64,
    /// Payload bytes of one block object.
    pub object_bytes: u64,
    /// Bytes of one arena slot (header and payload, page-aligned).
    pub slot_bytes: u64,
    /// Blocks held in the arena until written behind to the pool (queued or being written).
    pub write_queue: u64,
    /// Bound of the write-behind queue.
    pub write_queue_capacity: u64,
    /// Lookups waiting for their blocks to be prefetched.
    pub prefetch_queue: u64,
    /// Bound of the prefetch queue.
    pub prefetch_queue_capacity: u64,
    /// The pool backend (`embedded`, `servers`, `shared-dir`) and its counters; `None` without
    /// a pool.
    pub pool: Option<(String, StoreStats)>,
    /// Usage per tenant (engine name), in order of first appearance.
    pub tenants: Vec<TenantStats>,
}

#[derive(Default)]
struct Counters {
    hits_memory: Counter,
    hits_pool: Counter,
    misses: Counter,
    saves: Counter,
    deduplicated: Counter,
    pool_writes: Counter,
    dropped_writes: Counter,
    pool_write_errors: Counter,
    save_waits: Counter,
    dropped_saves_no_room: Counter,
    dropped_saves_pool_down: Counter,
    dropped_saves_limit: Counter,
    shortened_lookups_budget: Counter,
    shortened_lookups_recompute: Counter,
    load_windows: Counter,
    reclaimed_leases: Counter,
    refused: [Counter; 3],
    lease_limited_session: Counter,
    lease_limited_tenant: Counter,
}

/// The agent's shared state.
pub struct State {
    arena: HostArena,
    store: Option<Arc<dyn PoolBackend>>,
    sessions: Mutex<HashMap<u64, Session>>,
    leases: Mutex<HashMap<u64, Lease>>,
    /// Keys with a write lease outstanding (dedup of concurrent saves).
    saving: Mutex<HashMap<BlockKey, u64>>,
    /// Descriptor connections alive, by token, with their peers.
    tokens: Mutex<HashMap<u64, Peer>>,
    /// Who may use which tenant.
    access: Access,
    /// Slots one session may hold leased at once: three quarters of the arena (an engine
    /// holds one window, a quarter, per call), so that no engine can pin all of it.
    session_cap: usize,
    /// The secret that makes ids unpredictable ([`State::id`]).
    id_key: std::collections::hash_map::RandomState,
    next_id: AtomicU64,
    /// Blocks to write behind, each holding a pin on its arena slot until it is written (or
    /// refused), so that a block is never evicted before the pool has it.
    queue: Mutex<VecDeque<(BlockKey, SlotId)>>,
    queue_cv: Condvar,
    queue_cap: usize,
    /// Blocks held for write-behind, at most: half the arena, so loads always find room.
    max_held: usize,
    /// Blocks held for write-behind now: queued, or in the batch being written.
    held: AtomicUsize,
    /// Keys one save or load call considers, at most: a quarter of the arena, so that a request
    /// larger than the arena streams through it window by window and one engine cannot pin it
    /// all.
    window: usize,
    /// Signalled when write-behind releases held blocks.
    room_cv: Condvar,
    /// The last write-behind batch failed: saves do not wait for room that may not come.
    pool_failing: AtomicBool,
    /// Time to read one block through from the pool (a moving average of batched reads:
    /// batch time / blocks), in ns; 0 until the first read.
    read_ns_per_block: AtomicU64,
    stopping: AtomicBool,
    /// At shutdown, until when write-behind may keep writing its queue.
    drain_until: Mutex<Option<Instant>>,
    shutdown_drain: Duration,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Chains to read from the pool into memory (bounded: the oldest is dropped when full).
    prefetch: Mutex<VecDeque<Vec<BlockKey>>>,
    prefetch_cv: Condvar,
    prefetcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Counters,
    tenants: Mutex<Tenants>,
    /// Which tenant saved each key in the arena (pruned of evicted keys when it outgrows the
    /// arena, and on every stats snapshot).
    owners: Mutex<HashMap<BlockKey, usize>>,
    latency: OpLatency<AgentOp>,
    /// Latency of calls to the pool backend, by [`PoolCall`].
    pool_latency: OpLatency<PoolCall>,
}

/// Times `f`, a call about `blocks` blocks, into `hists[op]`: once per block (each waited
/// for the whole call), so the counts are blocks whatever the batching.
fn timed<T>(hists: &OpLatency<PoolCall>, op: PoolCall, blocks: usize, f: impl FnOnce() -> T) -> T {
    let t0 = std::time::Instant::now();
    let r = f();
    hists.observe_n(op, t0.elapsed(), blocks as u64);
    r
}

/// Where this agent's session, lease and descriptor ids start: different for every agent
/// process. An engine whose agent restarted reaches the new one through the same socket path
/// with its old session id; were ids to start at 1 in every agent, that id could name another
/// engine's new session, and the engine would copy blocks from its stale mapping of the old
/// arena at slots the new agent granted: wrong KV, silently. A fresh random start makes the
/// old id unknown (the call fails, the engine reconnects and maps the new arena).
fn first_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    // High bit clear: billions of ids before it could wrap; never 0.
    (u64::from_le_bytes(b) >> 1) | 1
}

impl State {
    /// Creates the arena and opens the store, and starts the write-behind worker.
    pub fn new(cfg: &AgentConfig) -> Result<Arc<Self>> {
        cfg.validate()?;
        let arena = HostArena::new(&cfg.arena)?;
        let arena_slots = arena.slots() as usize;
        let store = cfg.pool.as_ref().map(|p| p.open()).transpose()?;
        let state = Arc::new(State {
            arena,
            store,
            sessions: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            saving: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            access: cfg.access.clone(),
            session_cap: (arena_slots * 3 / 4).max(1),
            id_key: std::collections::hash_map::RandomState::new(),
            next_id: AtomicU64::new(first_id()),
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            max_held: (arena_slots / 2).max(1),
            held: AtomicUsize::new(0),
            window: (arena_slots / 4).max(1),
            room_cv: Condvar::new(),
            pool_failing: AtomicBool::new(false),
            read_ns_per_block: AtomicU64::new(0),
            prefetch: Mutex::new(VecDeque::new()),
            prefetch_cv: Condvar::new(),
            prefetcher: Mutex::new(None),
            queue_cap: cfg.write_queue.max(1),
            stopping: AtomicBool::new(false),
            drain_until: Mutex::new(None),
            shutdown_drain: cfg.shutdown_drain,
            writer: Mutex::new(None),
            counters: Counters::default(),
            tenants: Mutex::new(Tenants::default()),
            owners: Mutex::new(HashMap::new()),
            latency: OpLatency::default(),
            pool_latency: OpLatency::default(),
        });
        if state.store.is_some() {
            let s = state.clone();
            let handle = std::thread::Builder::new()
                .name("kvtier-write-behind".into())
                .spawn(move || s.write_behind())
                .map_err(|e| Error::io("starting the write-behind thread", e))?;
            *state.writer.lock() = Some(handle);
            let s = state.clone();
            let handle = std::thread::Builder::new()
                .name("kvtier-prefetch".into())
                .spawn(move || s.prefetch_worker())
                .map_err(|e| Error::io("starting the prefetch thread", e))?;
            *state.prefetcher.lock() = Some(handle);
        }
        Ok(state)
    }

    /// Folds a read-through of `blocks` blocks that took `took` into the per-block estimate.
    fn measured_read(&self, took: Duration, blocks: usize) {
        if blocks == 0 {
            return;
        }
        let now = (took.as_nanos() / blocks as u128).clamp(1, u64::MAX as u128) as u64;
        let old = self.read_ns_per_block.load(Ordering::Relaxed);
        let avg = if old == 0 { now } else { (old * 7 + now) / 8 };
        self.read_ns_per_block.store(avg, Ordering::Relaxed);
    }

    /// A fresh session, lease or descriptor token id: a keyed hash (SipHash, keyed by this
    /// process's random secret) of a counter, so that no engine can guess another's ids from
    /// its own. Never 0, high bit clear.
    fn id(&self) -> u64 {
        use std::hash::BuildHasher;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        (self.id_key.hash_one(n) >> 1) | 1
    }

    /// Counts a refused peer.
    pub(super) fn refused(&self, why: Refusal) {
        self.counters.refused[why as usize].inc();
    }

    /// The arena (for tests and the stats view).
    pub fn arena(&self) -> &HostArena {
        &self.arena
    }

    /// Whether the agent is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Stops the write-behind worker after it drains the queue, or once the configured drain
    /// time ([`AgentConfig::shutdown_drain`]) is up: what is left then is dropped, counted.
    pub fn stop(&self) {
        *self.drain_until.lock() = Some(Instant::now() + self.shutdown_drain);
        self.stopping.store(true, Ordering::Relaxed);
        self.queue_cv.notify_all();
        self.prefetch_cv.notify_all();
        for worker in [&self.writer, &self.prefetcher] {
            if let Some(h) = worker.lock().take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_calls_name_their_ops() {
        use kvtier_core::metrics::OpSet;
        let names: Vec<_> = PoolCall::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["put", "get", "exists"]);
    }
}
