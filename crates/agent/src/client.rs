//! The engine side of the agent: a blocking client (it runs its own small tokio runtime) that
//! maps the agent's arena, leases slots over gRPC, and copies blocks in and out of the shared
//! memory. Any transport failure drops the connection; the next call reconnects, so an agent
//! restart costs the engine a few misses, never an error it must handle specially.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::proto::{self, agent_client};
use super::state::Granted;
use super::{fd_socket_path, fdpass};
use kvtier_core::block::{BlockHeader, HEADER_LEN};
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;

/// How to reach the agent, and what this engine stores.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The agent's gRPC socket.
    pub socket: PathBuf,
    /// Digest of this engine's KV layout ([`kvtier_core::layout::KvLayout::digest`]).
    pub layout_digest: u64,
    /// Payload bytes of one block object ([`kvtier_core::layout::KvLayout::object_len`]).
    pub object_len: u64,
    /// Free text naming the engine in the agent's logs.
    pub engine: String,
    /// Deadline of every call, connecting included. Default: `2 s`.
    pub timeout: Duration,
    /// Time the agent may spend reading through from the pool in one load. Default: `1 s`.
    pub load_budget: Duration,
}

impl ClientConfig {
    /// Defaults for a socket and a layout.
    pub fn new(socket: impl Into<PathBuf>, layout_digest: u64, object_len: u64) -> Self {
        ClientConfig {
            socket: socket.into(),
            layout_digest,
            object_len,
            engine: format!("pid {}", std::process::id()),
            timeout: Duration::from_secs(2),
            load_budget: Duration::from_secs(1),
        }
    }
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

struct Conn {
    grpc: agent_client::AgentClient<Channel>,
    /// Held open for as long as the session lives: its closing tells the agent we are gone.
    _fd_sock: UnixStream,
    map: Mapping,
    session: u64,
    slot_len: usize,
    payload_offset: usize,
    slots: u32,
}

/// A connection to the node agent. Not thread-safe: one per engine worker thread.
pub struct AgentClient {
    cfg: ClientConfig,
    rt: tokio::runtime::Runtime,
    conn: Option<Conn>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("{what}: {e} (is the kvtier agent running?)"),
    )
}

fn from_status(s: Status) -> Error {
    let kind = match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            ErrorKind::InvalidArgument
        }
        Code::NotFound => ErrorKind::NotFound,
        Code::ResourceExhausted => ErrorKind::NoSpace,
        Code::DataLoss => ErrorKind::Corrupt,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("agent: {}", s.message()))
}

impl AgentClient {
    /// Connects (descriptor socket, arena mapping, gRPC channel, session).
    pub fn connect(cfg: ClientConfig) -> Result<Self> {
        // One worker thread: commits of saved blocks run on it while the engine thread copies
        // the next blocks, so the agent seals (checksums) one batch while the next is copied.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kvtier-client")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the client runtime", e))?;
        let deadline = std::time::Instant::now() + cfg.timeout;
        let mut c = AgentClient {
            cfg,
            rt,
            conn: None,
        };
        c.ensure(deadline)?;
        Ok(c)
    }

    /// Connects within `deadline` (every step gets only the time left).
    fn open(&self, deadline: std::time::Instant) -> Result<Conn> {
        let cfg = &self.cfg;
        let left = || {
            deadline
                .checked_duration_since(std::time::Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Timeout,
                        format!("connecting to the agent took longer than {:?}", cfg.timeout),
                    )
                })
        };
        let fd_path = fd_socket_path(&cfg.socket);
        let fd_sock = fdpass::connect_within(&fd_path, deadline).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => Error::new(
                ErrorKind::Timeout,
                format!(
                    "the agent did not accept on {} within {:?} (is it stopped or overloaded?)",
                    fd_path.display(),
                    cfg.timeout
                ),
            ),
            _ => unavailable(&format!("connecting to {}", fd_path.display()), e),
        })?;
        fd_sock
            .set_read_timeout(Some(left()?))
            .map_err(|e| Error::io("socket timeout", e))?;
        let (fd, token, len) = fdpass::recv_fd(&fd_sock).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                Error::new(ErrorKind::PermissionDenied, e.to_string())
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::new(
                ErrorKind::Timeout,
                format!(
                    "the agent did not hand out its arena within {:?}",
                    cfg.timeout
                ),
            ),
            _ => unavailable("receiving the arena", e),
        })?;
        // SAFETY: mapping a shared memfd of `len` bytes that the agent sized.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                "mapping the agent's arena",
                std::io::Error::last_os_error(),
            ));
        }
        let map = Mapping {
            ptr: ptr.cast(),
            len: len as usize,
        };
        let path = cfg.socket.clone();
        let timeout = left()?;
        let grpc = self.rt.block_on(async move {
            let channel = Endpoint::from_static("http://kvtier-agent")
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| unavailable("connecting to the agent socket", e))?;
            Ok::<_, Error>(agent_client::AgentClient::new(channel))
        })?;
        let mut conn = Conn {
            grpc,
            _fd_sock: fd_sock,
            map,
            session: 0,
            slot_len: 0,
            payload_offset: 0,
            slots: 0,
        };
        let hello = proto::HelloRequest {
            abi_version: 1,
            layout_digest: cfg.layout_digest,
            object_len: cfg.object_len,
            engine: cfg.engine.clone(),
            fd_token: token,
        };
        let hello_time = left()?;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(hello_time, conn.grpc.hello(hello)).await })
            .map_err(|_| Error::new(ErrorKind::Timeout, "the agent did not answer hello in time"))?
            .map_err(from_status)?
            .into_inner();
        let fits = (r.slot_len as usize)
            .checked_mul(r.slots as usize)
            .is_some_and(|total| total <= conn.map.len)
            && r.payload_offset
                .checked_add(cfg.object_len)
                .is_some_and(|end| end <= r.slot_len);
        if !fits {
            return Err(Error::corrupt(
                "the agent's arena geometry does not fit its mapping",
            ));
        }
        conn.session = r.session;
        conn.slot_len = r.slot_len as usize;
        conn.payload_offset = r.payload_offset as usize;
        conn.slots = r.slots;
        Ok(conn)
    }

    fn ensure(&mut self, deadline: std::time::Instant) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(self.open(deadline)?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// True while a session is open (false after a failure, until the next call reconnects).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// What this client was connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The open session's id (for logs; the agent refuses it to every other uid).
    pub fn session(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.session)
    }

    /// Runs one RPC with the deadline; a transport failure or an unknown session (the agent
    /// restarted) drops the connection so the next call reconnects.
    fn call<T, F, Fut>(&mut self, f: F) -> Result<T>
    where
        F: FnOnce(agent_client::AgentClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = std::time::Instant::now() + self.cfg.timeout;
        self.call_by(f, deadline)
    }

    /// One RPC, reconnecting first if needed, all within `deadline`.
    fn call_by<T, F, Fut>(&mut self, f: F, deadline: std::time::Instant) -> Result<T>
    where
        F: FnOnce(agent_client::AgentClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let timeout = self.cfg.timeout;
        let conn = self.ensure(deadline)?;
        let fut = f(conn.grpc.clone(), conn.session);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let out = self
            .rt
            .block_on(async { tokio::time::timeout(left, fut).await });
        match out {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::Cancelled
                        | Code::NotFound
                        | Code::Internal
                ) {
                    self.conn = None;
                }
                Err(from_status(s))
            }
            Err(_) => {
                self.conn = None;
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("the agent did not answer within {timeout:?}"),
                ))
            }
        }
    }

    /// Like [`call`](Self::call) for calls that are safe to repeat on a new session (they hold
    /// no lease of the old one): when the connection was lost or the session is unknown (the
    /// agent restarted since), reconnect and try once more.
    fn call_again<T, F, Fut>(&mut self, f: F) -> Result<T>
    where
        F: Fn(agent_client::AgentClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        // Both attempts share one deadline.
        let deadline = std::time::Instant::now() + self.cfg.timeout;
        match self.call_by(&f, deadline) {
            Err(e)
                if self.conn.is_none()
                    && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unavailable) =>
            {
                self.call_by(&f, deadline)
            }
            r => r,
        }
    }

    /// How many leading `keys` the agent or its pool hold, and how many of those are in memory.
    /// With `prefetch`, the agent starts reading pool-resident ones into memory.
    /// The prefix counts only the blocks from the pool that the agent expects to read within
    /// the load budget ([`ClientConfig::load_budget`]), so that a load rarely fails to deliver
    /// what a lookup promised.
    pub fn lookup(&mut self, keys: &[BlockKey], prefetch: bool) -> Result<(u32, u32)> {
        self.lookup_within(keys, prefetch, self.cfg.load_budget)
    }

    /// [`lookup`](Self::lookup) with another load budget (`Duration::ZERO`: no bound).
    pub fn lookup_within(
        &mut self,
        keys: &[BlockKey],
        prefetch: bool,
        budget: Duration,
    ) -> Result<(u32, u32)> {
        self.lookup_costed(keys, prefetch, budget, Duration::ZERO)
    }

    /// [`lookup`](Self::lookup) that also weighs loading against recomputing: `recompute` is
    /// the engine's estimate of the time to recompute every block of `keys`; the prefix then
    /// stops where reading more blocks from the pool would take longer than recomputing the
    /// blocks they complete. `Duration::ZERO`: unknown (no such bound).
    pub fn lookup_vs_recompute(
        &mut self,
        keys: &[BlockKey],
        prefetch: bool,
        recompute: Duration,
    ) -> Result<(u32, u32)> {
        self.lookup_costed(keys, prefetch, self.cfg.load_budget, recompute)
    }

    fn lookup_costed(
        &mut self,
        keys: &[BlockKey],
        prefetch: bool,
        budget: Duration,
        recompute: Duration,
    ) -> Result<(u32, u32)> {
        let budget_us = budget.as_micros().clamp(0, u64::MAX as u128) as u64;
        let recompute_us = recompute.as_micros().clamp(0, u64::MAX as u128) as u64;
        let keys = to_proto(keys);
        let r = self.call_again(|mut g, session| {
            let keys = keys.clone();
            async move {
                g.lookup(proto::LookupRequest {
                    session,
                    keys,
                    prefetch,
                    budget_us,
                    recompute_us,
                })
                .await
            }
        })?;
        Ok((r.prefix_blocks, r.in_memory))
    }

    /// Leases slots for the keys the agent lacks, for at most a window of them (see
    /// [`State::begin_save`](super::State::begin_save)); also returns how many keys the agent
    /// considered: ask again from there.
    pub fn begin_save(&mut self, keys: &[BlockKey]) -> Result<(Vec<Granted>, usize)> {
        let n = keys.len();
        let keys = to_proto(keys);
        let r = self.call_again(|mut g, session| {
            let keys = keys.clone();
            async move {
                g.begin_save(proto::BeginSaveRequest { session, keys })
                    .await
            }
        })?;
        Ok((granted(r.leases), considered(r.next, n)))
    }

    /// The payload bytes of a leased slot in the shared arena.
    pub fn payload_mut(&mut self, slot: u32) -> Result<&mut [u8]> {
        let (ptr, len) = self.payload_ptr(slot)?;
        // SAFETY: in bounds of the mapping; the lease makes the slot ours.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    /// Where a leased slot's payload is in the mapped arena, and its length.
    fn payload_ptr(&self, slot: u32) -> Result<(*mut u8, usize)> {
        let len = self.cfg.object_len as usize;
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Unavailable, "not connected to the agent"))?;
        if slot >= conn.slots {
            return Err(Error::corrupt(format!(
                "the agent leased slot {slot} of {}",
                conn.slots
            )));
        }
        let off = slot as usize * conn.slot_len + conn.payload_offset;
        // SAFETY: in bounds of the mapping (checked at hello).
        Ok((unsafe { conn.map.ptr.add(off) }, len))
    }

    /// Whether leased slot `slot` holds `key`'s object in this engine's layout, by its header
    /// (magic, header checksum, key, layout digest, length): the arena is shared memory, so what
    /// the agent granted is checked before a byte of it reaches the engine. A header being
    /// rewritten at that instant (sealed by write-behind) reads torn: read once more.
    fn slot_holds(&self, slot: u32, key: BlockKey) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        if slot >= conn.slots || conn.payload_offset < HEADER_LEN {
            return false;
        }
        let check = || {
            let mut raw = [0u8; HEADER_LEN];
            // SAFETY: the slot lies inside the live mapping (checked at hello and above); a
            // racing writer can only make the copy torn, which decoding rejects.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    conn.map.ptr.add(slot as usize * conn.slot_len),
                    raw.as_mut_ptr(),
                    HEADER_LEN,
                )
            };
            BlockHeader::decode(&raw).is_ok_and(|h| {
                h.key() == key
                    && h.layout_digest() == self.cfg.layout_digest
                    && h.payload_len() == self.cfg.object_len
            })
        };
        check() || check()
    }

    /// Seals the filled leased slots. Returns (stored, deduplicated).
    pub fn commit_save(&mut self, leases: &[u64]) -> Result<(u32, u32)> {
        let leases = leases.to_vec();
        let r = self.call(|mut g, session| async move {
            g.commit_save(proto::CommitSaveRequest { session, leases })
                .await
        })?;
        Ok((r.stored, r.deduplicated))
    }

    /// Saves blocks: `fill(i, payload)` writes block `keys[i]` straight into the shared arena,
    /// for the keys the agent lacks. Returns how many were stored. A window of keys at a time
    /// (the agent grants at most a quarter of its arena per call and says where it stopped):
    /// the agent holds saved blocks in its arena until they are written behind to the pool, and
    /// a window waits for that room, so a save larger than the arena is not lost while the pool
    /// takes it. Within a window, filled blocks are committed in batches while the next batch is
    /// being filled (the agent checksums them meanwhile).
    pub fn save(
        &mut self,
        keys: &[BlockKey],
        mut fill: impl FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<u32> {
        let mut stored = 0;
        let mut at = 0;
        while at < keys.len() {
            let (n, considered) = self.save_window(&keys[at..], |i, p| fill(at + i, p))?;
            stored += n;
            at += considered;
        }
        Ok(stored)
    }

    /// [`save`](Self::save) of the window the agent considers of `keys`: (stored, considered).
    fn save_window(
        &mut self,
        keys: &[BlockKey],
        mut fill: impl FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<(u32, usize)> {
        const BATCH: usize = 4;
        let (granted, considered) = self.begin_save(keys)?;
        let timeout = self.cfg.timeout;
        let mut pending = Vec::new();
        let mut first_err = None;
        let mut failed = Vec::new();
        for chunk in granted.chunks(BATCH) {
            let mut leases = Vec::with_capacity(chunk.len());
            for g in chunk {
                let i = g.index as usize;
                let filled = if i < keys.len() {
                    self.payload_mut(g.slot).and_then(|p| fill(i, p))
                } else {
                    Err(Error::corrupt(format!(
                        "the agent leased key index {i} of {}",
                        keys.len()
                    )))
                };
                match filled {
                    Ok(()) => leases.push(g.lease),
                    Err(e) => {
                        failed.push(g.lease);
                        first_err.get_or_insert(e);
                    }
                }
            }
            let conn = self
                .conn
                .as_ref()
                .ok_or_else(|| Error::new(ErrorKind::Unavailable, "not connected to the agent"))?;
            let (mut grpc, session) = (conn.grpc.clone(), conn.session);
            pending.push(self.rt.spawn(async move {
                tokio::time::timeout(
                    timeout,
                    grpc.commit_save(proto::CommitSaveRequest { session, leases }),
                )
                .await
            }));
        }
        let mut stored = 0;
        for h in pending {
            match self.rt.block_on(h) {
                Ok(Ok(Ok(r))) => stored += r.into_inner().stored,
                Ok(Ok(Err(s))) => {
                    self.conn = None;
                    first_err.get_or_insert(from_status(s));
                }
                _ => {
                    self.conn = None;
                    first_err.get_or_insert(Error::new(
                        ErrorKind::Timeout,
                        format!("the agent did not commit within {timeout:?}"),
                    ));
                }
            }
        }
        if !failed.is_empty() {
            // Give back the slots of blocks that could not be filled (the agent releases any
            // lease kind here), or they would stay leased and their keys "in flight".
            self.release_leases(failed);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok((stored, considered)),
        }
    }

    /// Releases leases; if that fails, drops the connection, which makes the agent release
    /// every lease of this session.
    fn release_leases(&mut self, leases: Vec<u64>) {
        let r = self.call(|mut g, session| async move {
            g.end_load(proto::EndLoadRequest { session, leases }).await
        });
        if r.is_err() {
            self.conn = None;
        }
    }

    /// Loads blocks: `sink(i, payload)` copies block `keys[i]` out of the shared arena. Returns
    /// per key whether it was delivered; the others must be recomputed. A window of keys at a
    /// time (the agent considers at most a quarter of its arena per call and says where it
    /// stopped): the agent pins a window's blocks (reading through from the pool those not in
    /// memory), they are copied out and released, then the next, so a load of any size
    /// completes through an arena smaller than it. The load budget
    /// ([`ClientConfig::load_budget`]) bounds the reads from the pool of the whole load; once it
    /// is spent, later windows deliver what is in memory only.
    pub fn load(
        &mut self,
        keys: &[BlockKey],
        mut sink: impl FnMut(usize, &[u8]),
    ) -> Result<Vec<bool>> {
        self.load_windows(keys, |blocks, _| {
            for &(i, p) in blocks {
                sink(i, p);
            }
        })
    }

    /// [`load`](Self::load), handing `sink` each window's blocks at once (`(i, payload)` of
    /// `keys[i]`), so that the engine can copy them out in parallel, and whether it is the last
    /// window (no block of `keys` comes after it): the payloads stay leased until `sink`
    /// returns.
    pub fn load_windows(
        &mut self,
        keys: &[BlockKey],
        sink: impl FnMut(&[(usize, &[u8])], bool),
    ) -> Result<Vec<bool>> {
        self.load_windows_while(keys, || true, sink)
    }

    /// [`load_windows`](Self::load_windows), asking for the next window only while
    /// `keep_going()`: the keys of windows not asked for are not delivered. A cancelled load
    /// stops after the window in flight.
    pub fn load_windows_while(
        &mut self,
        keys: &[BlockKey],
        keep_going: impl Fn() -> bool,
        mut sink: impl FnMut(&[(usize, &[u8])], bool),
    ) -> Result<Vec<bool>> {
        let deadline = std::time::Instant::now() + self.cfg.load_budget;
        let mut delivered = Vec::with_capacity(keys.len());
        let mut at = 0;
        while at < keys.len() {
            if !keep_going() {
                delivered.resize(keys.len(), false);
                break;
            }
            // Each window's reads end well inside its call's deadline.
            let budget = deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(self.cfg.timeout * 3 / 4);
            let got = self.load_window(&keys[at..], budget, |blocks, last| {
                let shifted: Vec<(usize, &[u8])> =
                    blocks.iter().map(|&(i, p)| (at + i, p)).collect();
                sink(&shifted, last)
            })?;
            at += got.len();
            delivered.extend(got);
        }
        Ok(delivered)
    }

    /// [`load`](Self::load) of the window the agent considers of `keys`, reading through from
    /// the pool within `budget`: whether each key of the window was delivered.
    fn load_window(
        &mut self,
        keys: &[BlockKey],
        budget: Duration,
        sink: impl FnOnce(&[(usize, &[u8])], bool),
    ) -> Result<Vec<bool>> {
        let ks = to_proto(keys);
        let budget_ms = budget.as_millis().min(u32::MAX as u128) as u32;
        let r = self.call_again(|mut g, session| {
            let keys = ks.clone();
            async move {
                g.begin_load(proto::BeginLoadRequest {
                    session,
                    keys,
                    budget_ms,
                })
                .await
            }
        })?;
        let mut delivered = vec![false; considered(r.next, keys.len())];
        let mut leases = Vec::with_capacity(r.leases.len());
        let mut first_err = None;
        let mut blocks: Vec<(usize, &[u8])> = Vec::with_capacity(r.leases.len());
        for l in r.leases {
            // Every granted lease is released below, whatever happens to its block.
            leases.push(l.lease);
            let i = l.index as usize;
            if i >= delivered.len() {
                continue;
            }
            if !self.slot_holds(l.slot, keys[i]) {
                continue; // not the object asked for: a miss, never wrong KV
            }
            match self.payload_ptr(l.slot) {
                Ok((ptr, len)) => {
                    // SAFETY: inside the live mapping (checked); the lease keeps the slot's
                    // object in place until the leases are released below, after `sink`.
                    blocks.push((i, unsafe { std::slice::from_raw_parts(ptr, len) }));
                    delivered[i] = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        sink(&blocks, delivered.len() == keys.len());
        drop(blocks);
        self.release_leases(leases);
        match first_err {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }

    /// The agent's counters.
    pub fn stats(&mut self) -> Result<proto::StatsResponse> {
        self.call_again(|mut g, _| async move { g.stats(proto::StatsRequest {}).await })
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let session = c.session;
            let _ = self.rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(200),
                    c.grpc.goodbye(proto::GoodbyeRequest { session }),
                )
                .await
            });
        }
    }
}

fn granted(leases: Vec<proto::Lease>) -> Vec<Granted> {
    leases
        .into_iter()
        .map(|l| Granted {
            index: l.index,
            slot: l.slot,
            lease: l.lease,
        })
        .collect()
}

/// How many of `n` keys a call considered: its `next`, or all of them (0, from an agent older
/// than windows; or a value past the end).
fn considered(next: u32, n: usize) -> usize {
    match next as usize {
        0 => n,
        k => k.min(n),
    }
}

fn to_proto(keys: &[BlockKey]) -> Vec<proto::Key> {
    keys.iter()
        .map(|k| {
            let v = k.as_u128();
            proto::Key {
                lo: v as u64,
                hi: (v >> 64) as u64,
            }
        })
        .collect()
}
