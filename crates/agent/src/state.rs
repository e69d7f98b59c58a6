//! The agent's state and operations, independent of the transport (the gRPC service calls
//! these; tests can too).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use super::fdpass;
use super::AgentConfig;

/// Lookups whose pool-resident blocks wait to be prefetched, at most.
const PREFETCH_QUEUE: usize = 64;

/// Blocks read through from the pool at once (a load's or a prefetch's window): a remote pool
/// fetches them concurrently instead of one round trip after another.
const READ_THROUGH_BATCH: usize = 8;

/// Blocks written behind to the pool at once, at most (one batched existence check, then the
/// missing ones put concurrently by a remote pool).
const WRITE_BEHIND_BATCH: usize = 8;

/// Distinct tenants (engine names) counted one by one; later names are counted together under
/// [`OTHER_TENANT`], so that engines named after their pid cannot grow the metrics without bound.
pub const MAX_TENANTS: usize = 64;

/// The tenant label of engines past the first [`MAX_TENANTS`] names.
pub const OTHER_TENANT: &str = "_other";

/// The agent's calls to its pool backend, in the order of their latency histograms (see
/// [`State::pool_latency`]).
pub const POOL_CALLS: &[&str] = &["put", "get", "exists"];
const POOL_PUT: usize = 0;
const POOL_GET: usize = 1;
const POOL_EXISTS: usize = 2;

/// The agent's RPCs, in the order of their latency histograms (see [`State::observe`]).
pub const AGENT_OPS: &[&str] = &[
    "hello",
    "lookup",
    "begin_save",
    "commit_save",
    "begin_load",
    "end_load",
    "goodbye",
    "stats",
];

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
    layout_digest: u64,
    engine: String,
    /// Index into the tenant table.
    tenant: usize,
    leases: HashSet<u64>,
}

/// Per-tenant counters. A tenant is the engine name an engine gives when it opens a session
/// (`HelloRequest.engine`): the agent never sees the cache salt that isolates tenants in the
/// keys, only the name.
#[derive(Default)]
struct Tenants {
    names: Vec<String>,
    index: HashMap<String, usize>,
    saves: Vec<u64>,
    loads: Vec<u64>,
    misses: Vec<u64>,
}

impl Tenants {
    fn id(&mut self, engine: &str) -> usize {
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
    /// Objects that failed their checksum on the way back from the pool.
    pub corrupt: u64,
    /// Leases released because their engine's connection closed.
    pub reclaimed_leases: u64,
    /// Arena objects evicted to make room.
    pub evictions: u64,
    /// Payload bytes of one block object.
    pub object_bytes: u64,
    /// Bytes of one arena slot (header and payload, page-aligned).
    pub slot_bytes: u64,
    /// Blocks waiting to be written behind to the pool.
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
    reclaimed_leases: Counter,
}

/// The agent's shared state.
pub struct State {
    arena: HostArena,
    store: Option<Arc<dyn PoolBackend>>,
    sessions: Mutex<HashMap<u64, Session>>,
    leases: Mutex<HashMap<u64, Lease>>,
    /// Keys with a write lease outstanding (dedup of concurrent saves).
    saving: Mutex<HashMap<BlockKey, u64>>,
    /// Descriptor connections alive, by token.
    tokens: Mutex<HashSet<u64>>,
    next_id: AtomicU64,
    queue: Mutex<VecDeque<BlockKey>>,
    queue_cv: Condvar,
    queue_cap: usize,
    stopping: AtomicBool,
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
    latency: OpLatency,
    /// Latency of calls to the pool backend, by [`POOL_CALLS`].
    pool_latency: OpLatency,
}

/// Times `f`, a call about `blocks` blocks, into `hists[op]`: once per block (each waited
/// for the whole call), so the counts are blocks whatever the batching.
fn timed<T>(hists: &OpLatency, op: usize, blocks: usize, f: impl FnOnce() -> T) -> T {
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
        let arena = HostArena::new(&cfg.arena)?;
        let store = cfg.pool.as_ref().map(|p| p.open()).transpose()?;
        let state = Arc::new(State {
            arena,
            store,
            sessions: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            saving: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(first_id()),
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            prefetch: Mutex::new(VecDeque::new()),
            prefetch_cv: Condvar::new(),
            prefetcher: Mutex::new(None),
            queue_cap: cfg.write_queue.max(1),
            stopping: AtomicBool::new(false),
            writer: Mutex::new(None),
            counters: Counters::default(),
            tenants: Mutex::new(Tenants::default()),
            owners: Mutex::new(HashMap::new()),
            latency: OpLatency::new(AGENT_OPS),
            pool_latency: OpLatency::new(POOL_CALLS),
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

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The arena (for tests and the stats view).
    pub fn arena(&self) -> &HostArena {
        &self.arena
    }

    /// Serves the descriptor socket on a thread: each connection gets a token and the arena's
    /// descriptor, and its closing reclaims the token's sessions.
    pub fn serve_descriptors(self: Arc<Self>, listener: UnixListener) {
        let spawn = std::thread::Builder::new()
            .name("kvtier-fd-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let token = self.id();
                    self.tokens.lock().insert(token);
                    let len = self.arena.slot_len() as u64 * self.arena.slots() as u64;
                    if let Err(e) = fdpass::send_fd(&conn, self.arena.fd(), token, len) {
                        tracing::debug!(error = %e, "could not pass the arena descriptor (the peer left at once)");
                        self.tokens.lock().remove(&token);
                        continue;
                    }
                    let state = self.clone();
                    let watcher = std::thread::Builder::new().name("kvtier-fd-conn".into()).spawn(move || {
                        // Engines never write here: EOF (or a fatal error) means the engine is gone.
                        let mut buf = [0u8; 64];
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => continue,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                                Err(_) => break,
                            }
                        }
                        state.reclaim(token);
                    });
                    if let Err(e) = watcher {
                        // Without a watcher an engine's death would go unnoticed: refuse it now.
                        tracing::warn!(error = %e, "could not watch an engine connection; closing it");
                        self.reclaim(token);
                    }
                }
            });
        if let Err(e) = spawn {
            tracing::error!(error = %e, "could not start the descriptor socket thread");
        }
    }

    /// Opens a session for an engine whose descriptor connection holds `token`.
    pub fn hello(
        &self,
        token: u64,
        layout_digest: u64,
        object_len: u64,
        engine: &str,
    ) -> Result<u64> {
        if object_len != self.arena.payload_len() as u64 {
            return Err(Error::invalid(format!(
                "the engine's block objects are {object_len} bytes but the agent's arena holds {}-byte objects; \
                 start the agent with --object-bytes {object_len}",
                self.arena.payload_len()
            )));
        }
        if !self.tokens.lock().contains(&token) {
            return Err(Error::invalid(
                "unknown descriptor token: connect to the descriptor socket first",
            ));
        }
        let session = self.id();
        let tenant = self.tenants.lock().id(engine);
        self.sessions.lock().insert(
            session,
            Session {
                token,
                layout_digest,
                engine: engine.to_string(),
                tenant,
                leases: HashSet::new(),
            },
        );
        tracing::info!(session, engine, "engine session opened");
        Ok(session)
    }

    fn session_digest(&self, session: u64) -> Result<u64> {
        self.session_info(session).map(|(digest, _)| digest)
    }

    /// The session's layout digest and tenant.
    fn session_info(&self, session: u64) -> Result<(u64, usize)> {
        self.sessions
            .lock()
            .get(&session)
            .map(|s| (s.layout_digest, s.tenant))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "unknown session: call Hello again (the agent may have restarted)",
                )
            })
    }

    fn grant(&self, session: u64, kind: LeaseKind) -> Result<u64> {
        let id = self.id();
        self.grant_as(id, session, kind)?;
        Ok(id)
    }

    fn grant_as(&self, id: u64, session: u64, kind: LeaseKind) -> Result<()> {
        let mut sessions = self.sessions.lock();
        let s = sessions
            .get_mut(&session)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "unknown session"))?;
        s.leases.insert(id);
        self.leases.lock().insert(id, Lease { session, kind });
        Ok(())
    }

    /// Forgets `key`'s in-flight save if `lease` is the one that owns it.
    fn unmark_saving(&self, key: BlockKey, lease: u64) {
        let mut saving = self.saving.lock();
        if saving.get(&key) == Some(&lease) {
            saving.remove(&key);
        }
    }

    fn take_lease(&self, session: u64, lease: u64) -> Option<LeaseKind> {
        let mut leases = self.leases.lock();
        match leases.get(&lease) {
            Some(l) if l.session == session => {}
            _ => return None,
        }
        let l = leases.remove(&lease)?;
        drop(leases);
        if let Some(s) = self.sessions.lock().get_mut(&session) {
            s.leases.remove(&lease);
        }
        Some(l.kind)
    }

    fn release(&self, lease: u64, kind: LeaseKind) {
        match kind {
            LeaseKind::Write { slot, key, .. } => {
                self.unmark_saving(key, lease);
                self.arena.abandon_slot(slot);
            }
            LeaseKind::Read { slot } => self.arena.unpin(slot),
        }
    }

    /// How many leading `keys` are stored (memory, then pool), and how many of those are in
    /// memory. With `prefetch`, pool-resident ones are read into memory in the background.
    pub fn lookup(
        self: &Arc<Self>,
        session: u64,
        keys: &[BlockKey],
        prefetch: bool,
    ) -> Result<(u32, u32)> {
        self.session_digest(session)?;
        let (mut prefix, mut in_memory) = (0u32, 0u32);
        let mut from_pool = Vec::new();
        // Asked of the pool once, in one batch, from the first key not in memory on.
        let mut in_pool: Option<(usize, Vec<bool>)> = None;
        for (i, &k) in keys.iter().enumerate() {
            // Touch what is in memory: prefetching the rest must not evict this prefix's head.
            if self.arena.touch(k) {
                in_memory += 1;
            } else if let Some(store) = &self.store {
                let (start, has) = in_pool.get_or_insert_with(|| {
                    (
                        i,
                        timed(&self.pool_latency, POOL_EXISTS, keys.len() - i, || {
                            store.contains_many(&keys[i..])
                        }),
                    )
                });
                if !has[i - *start] {
                    break;
                }
                from_pool.push(k);
            } else {
                break;
            }
            prefix += 1;
        }
        if prefetch && !from_pool.is_empty() {
            let mut q = self.prefetch.lock();
            if q.len() >= PREFETCH_QUEUE {
                q.pop_front();
            }
            q.push_back(from_pool);
            self.prefetch_cv.notify_one();
        }
        Ok((prefix, in_memory))
    }

    fn prefetch_worker(&self) {
        loop {
            let chain = {
                let mut q = self.prefetch.lock();
                loop {
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(c) = q.pop_front() {
                        break c;
                    }
                    self.prefetch_cv
                        .wait_for(&mut q, Duration::from_millis(200));
                }
            };
            // In windows, stopping at the first block the pool does not have (the rest of a
            // chain is useless without it).
            for window in chain.chunks(READ_THROUGH_BATCH) {
                if !self.read_through_many(window).iter().all(|&b| b) {
                    break;
                }
            }
        }
    }

    /// Reads `keys` from the pool into new arena slots, all at once; for each key, whether it
    /// is now in memory.
    fn read_through_many(&self, keys: &[BlockKey]) -> Vec<bool> {
        let mut out: Vec<bool> = keys.iter().map(|&k| self.arena.contains(k)).collect();
        let Some(store) = self.store.as_ref() else {
            return out;
        };
        let mut slots = Vec::new();
        for (j, _) in keys.iter().enumerate().filter(|(j, _)| !out[*j]) {
            match self.arena.reserve_slot() {
                Ok(s) => slots.push((j, s)),
                Err(_) => break, // every slot pinned: the rest are misses
            }
        }
        if slots.is_empty() {
            return out;
        }
        let mut reqs: Vec<(BlockKey, &mut [u8])> = slots
            .iter()
            // SAFETY: each slot was just reserved by us, they are distinct, and nobody else
            // references them until they are committed or abandoned below.
            .map(|&(j, s)| (keys[j], unsafe { self.arena.slot_bytes_mut(s) }))
            .collect();
        let n = reqs.len();
        let got = timed(&self.pool_latency, POOL_GET, n, || {
            store.get_many_into(&mut reqs)
        });
        drop(reqs);
        // A slot without an answer (a backend answering fewer keys than asked) is given back.
        let mut got = got.into_iter();
        for (j, slot) in slots {
            match got.next() {
                Some(Ok(Some(h))) if h.payload_len() == self.arena.payload_len() as u64 => {
                    self.arena
                        .commit_record(slot, keys[j], InsertInfo::default());
                    out[j] = true;
                }
                _ => self.arena.abandon_slot(slot),
            }
        }
        out
    }

    /// Leases slots for the keys not stored or in flight. A full arena (every slot pinned)
    /// ends the list early: the engine just skips saving the rest.
    pub fn begin_save(&self, session: u64, keys: &[BlockKey]) -> Result<Vec<Granted>> {
        self.session_digest(session)?;
        let mut out = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            if self.arena.contains(key) {
                self.counters.deduplicated.inc();
                continue;
            }
            // Mark the key in flight under its lease id first, so that a concurrent save of the
            // same key, or a reclaim racing with this call, never leaves a stale mark behind.
            let lease = self.id();
            {
                let mut saving = self.saving.lock();
                if saving.contains_key(&key) {
                    self.counters.deduplicated.inc();
                    continue;
                }
                saving.insert(key, lease);
            }
            let slot = match self.arena.reserve_slot() {
                Ok(s) => s,
                Err(e) => {
                    self.unmark_saving(key, lease);
                    if e.kind() == ErrorKind::NoSpace {
                        break;
                    }
                    return Err(e);
                }
            };
            let parent = i.checked_sub(1).map(|p| keys[p]);
            if let Err(e) = self.grant_as(lease, session, LeaseKind::Write { slot, key, parent }) {
                self.unmark_saving(key, lease);
                self.arena.abandon_slot(slot);
                return Err(e);
            }
            out.push(Granted {
                index: i as u32,
                slot: slot.0,
                lease,
            });
        }
        Ok(out)
    }

    /// Seals and indexes filled slots, and queues them for the pool. Returns (stored, dedup).
    pub fn commit_save(&self, session: u64, leases: &[u64]) -> Result<(u32, u32)> {
        let (digest, tenant) = self.session_info(session)?;
        let (mut stored, mut dedup) = (0, 0);
        for &lease in leases {
            let Some(kind) = self.take_lease(session, lease) else {
                return Err(Error::invalid(format!(
                    "lease {lease} is not an open lease of this session"
                )));
            };
            let LeaseKind::Write { slot, key, parent } = kind else {
                self.release(lease, kind);
                return Err(Error::invalid(format!(
                    "lease {lease} is a load lease, not a save lease"
                )));
            };
            // Unsealed: the payload checksum is computed by write-behind before the block
            // leaves memory, off the engine's save path.
            match self
                .arena
                .commit_slot_unsealed(slot, key, digest, InsertInfo { parent })
            {
                Commit::Stored(_) => {
                    stored += 1;
                    self.counters.saves.inc();
                    self.own(key, tenant);
                    self.enqueue(key);
                }
                Commit::AlreadyPresent => dedup += 1,
            }
            // Only now, with the key indexed, stop marking it in flight.
            self.unmark_saving(key, lease);
        }
        self.tenants.lock().saves[tenant] += stored as u64;
        Ok((stored, dedup))
    }

    /// Records that `tenant` saved `key`; forgets evicted keys when the map outgrows the arena.
    fn own(&self, key: BlockKey, tenant: usize) {
        let mut owners = self.owners.lock();
        owners.insert(key, tenant);
        if owners.len() > 2 * self.arena.slots() as usize + 64 {
            owners.retain(|k, _| self.arena.contains(*k));
        }
    }

    fn enqueue(&self, key: BlockKey) {
        if self.store.is_none() {
            return;
        }
        let mut q = self.queue.lock();
        if q.len() >= self.queue_cap {
            q.pop_front();
            self.counters.dropped_writes.inc();
        }
        q.push_back(key);
        self.queue_cv.notify_one();
    }

    fn write_behind(&self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        loop {
            // What is queued, up to a batch.
            let mut keys: Vec<BlockKey> = {
                let mut q = self.queue.lock();
                loop {
                    if !q.is_empty() {
                        let n = q.len().min(WRITE_BEHIND_BATCH);
                        break q.drain(..n).collect();
                    }
                    if self.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    self.queue_cv.wait_for(&mut q, Duration::from_millis(200));
                }
            };
            // A key queued twice (saved, evicted, saved again) is put once.
            let mut seen = Vec::with_capacity(keys.len());
            keys.retain(|k| {
                !seen.contains(k) && {
                    seen.push(*k);
                    true
                }
            });
            let stored = timed(&self.pool_latency, POOL_EXISTS, keys.len(), || {
                store.contains_many(&keys)
            });
            // Straight from the shared arena slots to the pool (each slot is a page-aligned
            // record, pinned meanwhile), sealed first: the checksum is computed here, off the
            // engine's save path.
            let slots: Vec<_> = keys
                .iter()
                .zip(stored)
                .filter(|(_, stored)| !stored)
                .filter_map(|(&k, _)| self.arena.get(k).map(|s| (k, s)))
                .collect();
            if slots.is_empty() {
                continue;
            }
            for (k, s) in &slots {
                self.arena.seal(s.id(), *k);
            }
            let records: Vec<&[u8]> = slots.iter().map(|(_, s)| s.record()).collect();
            let results = timed(&self.pool_latency, POOL_PUT, records.len(), || {
                store.put_many(&records)
            });
            for ((key, _), r) in slots.iter().zip(results) {
                match r {
                    Ok(()) => self.counters.pool_writes.inc(),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "write-behind to the pool failed (a future miss)")
                    }
                }
            }
        }
    }

    /// Pins the slots of stored keys, reading through from the pool within `budget`. Keys not
    /// granted are misses.
    pub fn begin_load(
        &self,
        session: u64,
        keys: &[BlockKey],
        budget: Duration,
    ) -> Result<Vec<Granted>> {
        let (digest, tenant) = self.session_info(session)?;
        let deadline = Instant::now() + budget;
        let mut out = Vec::new();
        // A window at a time: the window's blocks already in memory are pinned first (so the
        // slots its reads from the pool take cannot evict them), then the others are read
        // through from the pool and pinned; then each is granted in order.
        let mut pinned = Vec::new();
        for i in 0..keys.len() {
            let j = i % READ_THROUGH_BATCH;
            if j == 0 {
                let window = &keys[i..(i + READ_THROUGH_BATCH).min(keys.len())];
                pinned = window
                    .iter()
                    .map(|&k| self.arena.get(k).map(|r| (r, false)))
                    .collect();
                let missing: Vec<BlockKey> = window
                    .iter()
                    .zip(&pinned)
                    .filter(|(_, p)| p.is_none())
                    .map(|(&k, _)| k)
                    .collect();
                if !missing.is_empty() && self.store.is_some() && Instant::now() < deadline {
                    self.read_through_many(&missing);
                    for (k, p) in window.iter().zip(pinned.iter_mut()) {
                        if p.is_none() {
                            *p = self.arena.get(*k).map(|r| (r, true));
                        }
                    }
                }
            }
            let (read, from_pool) = match pinned[j].take() {
                Some((r, p)) => (Some(r), p),
                None => (None, false),
            };
            let granted = read.and_then(|r| {
                if self.arena.slot_digest(r.id()) != digest {
                    return None; // another layout's object: never hand it to this engine
                }
                let slot = r.id();
                std::mem::forget(r); // the pin now belongs to the lease
                Some(slot)
            });
            match granted {
                Some(slot) => match self.grant(session, LeaseKind::Read { slot }) {
                    Ok(lease) => {
                        if from_pool {
                            &self.counters.hits_pool
                        } else {
                            &self.counters.hits_memory
                        }
                        .inc();
                        out.push(Granted {
                            index: i as u32,
                            slot: slot.0,
                            lease,
                        });
                    }
                    Err(e) => {
                        self.arena.unpin(slot);
                        return Err(e);
                    }
                },
                None => self.counters.misses.inc(),
            }
        }
        let mut t = self.tenants.lock();
        t.loads[tenant] += out.len() as u64;
        t.misses[tenant] += (keys.len() - out.len()) as u64;
        Ok(out)
    }

    /// Releases load leases.
    pub fn end_load(&self, session: u64, leases: &[u64]) -> Result<()> {
        for &lease in leases {
            if let Some(kind) = self.take_lease(session, lease) {
                self.release(lease, kind);
            }
        }
        Ok(())
    }

    /// Closes a session, releasing its leases.
    pub fn goodbye(&self, session: u64) {
        let Some(s) = self.sessions.lock().remove(&session) else {
            return;
        };
        for lease in s.leases {
            let taken = self.leases.lock().remove(&lease);
            if let Some(l) = taken {
                self.release(lease, l.kind);
            }
        }
    }

    /// Releases everything held by the sessions of a descriptor connection that closed.
    pub fn reclaim(&self, token: u64) {
        self.tokens.lock().remove(&token);
        let gone: Vec<(u64, Session)> = {
            let mut sessions = self.sessions.lock();
            let ids: Vec<u64> = sessions
                .iter()
                .filter(|(_, s)| s.token == token)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id).map(|s| (id, s)))
                .collect()
        };
        for (id, s) in gone {
            let n = s.leases.len();
            for lease in s.leases {
                let taken = self.leases.lock().remove(&lease);
                if let Some(l) = taken {
                    self.release(lease, l.kind);
                    self.counters.reclaimed_leases.inc();
                }
            }
            tracing::info!(session = id, engine = %s.engine, leases = n, "engine gone; leases reclaimed");
        }
    }

    /// Records how long an RPC took (`op` indexes [`AGENT_OPS`]).
    pub fn observe(&self, op: usize, took: Duration) {
        self.latency.observe(op, took);
    }

    /// The RPC latency histograms, by op.
    pub fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.latency.snapshot()
    }

    /// The latency histograms of calls to the pool backend, by op (`put`, `get`, `exists`); empty
    /// without a pool.
    pub fn pool_latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        match self.store {
            Some(_) => self.pool_latency.snapshot(),
            None => Vec::new(),
        }
    }

    /// Whether the agent is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn tenant_stats(&self) -> Vec<TenantStats> {
        let t = self.tenants.lock();
        let mut out: Vec<TenantStats> = t
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| TenantStats {
                tenant: name.clone(),
                saves: t.saves[i],
                loads: t.loads[i],
                misses: t.misses[i],
                ..TenantStats::default()
            })
            .collect();
        drop(t);
        for s in self.sessions.lock().values() {
            out[s.tenant].sessions += 1;
            out[s.tenant].leases += s.leases.len() as u64;
        }
        let mut owners = self.owners.lock();
        owners.retain(|k, _| self.arena.contains(*k));
        for &tenant in owners.values() {
            out[tenant].resident_blocks += 1;
        }
        out
    }

    /// Counter snapshot.
    pub fn stats(&self) -> AgentStats {
        let c = &self.counters;
        let arena = self.arena.stats();
        let pool = self
            .store
            .as_ref()
            .map(|s| (s.kind().to_string(), s.stats()));
        // Each lock taken on its own: the temporaries of the literal below live to its end.
        let tenants = self.tenant_stats();
        let sessions = self.sessions.lock().len() as u64;
        let leases = self.leases.lock().len() as u64;
        let write_queue = self.queue.lock().len() as u64;
        let prefetch_queue = self.prefetch.lock().len() as u64;
        AgentStats {
            sessions,
            arena_slots: self.arena.slots() as u64,
            arena_used: self.arena.len() as u64,
            leases,
            hits_memory: c.hits_memory.get(),
            hits_pool: c.hits_pool.get(),
            misses: c.misses.get(),
            saves: c.saves.get(),
            deduplicated: c.deduplicated.get(),
            pool_writes: c.pool_writes.get(),
            dropped_writes: c.dropped_writes.get(),
            corrupt: pool
                .as_ref()
                .map_or(0, |(_, s)| s.corrupt.iter().map(|(_, n)| n).sum()),
            reclaimed_leases: c.reclaimed_leases.get(),
            evictions: arena.evictions,
            object_bytes: self.arena.payload_len() as u64,
            slot_bytes: self.arena.slot_len() as u64,
            write_queue,
            write_queue_capacity: self.queue_cap as u64,
            prefetch_queue,
            prefetch_queue_capacity: PREFETCH_QUEUE as u64,
            pool,
            tenants,
        }
    }

    /// Stops the write-behind worker after it drains the queue.
    pub fn stop(&self) {
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
    fn pool_call_indices_name_their_ops() {
        assert_eq!(POOL_CALLS[POOL_PUT], "put");
        assert_eq!(POOL_CALLS[POOL_GET], "get");
        assert_eq!(POOL_CALLS[POOL_EXISTS], "exists");
        assert_eq!(POOL_CALLS.len(), 3);
    }
}
