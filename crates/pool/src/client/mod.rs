//! The pool client: what an agent (or `kvtier bench pool`) uses to reach pool servers.
//!
//! - Placement by [`Placement`] (weighted rendezvous, replication factor).
//! - A few multiplexed connections per server: every request carries an id, many are in
//!   flight on one connection, and a reader task hands each response to its caller.
//! - A deadline on every call, covering connecting and every replica tried.
//! - Puts go to all replicas at once and succeed when at least one stored the record; gets try
//!   replicas in order and verify every record end to end (header, key, payload checksum): a
//!   record that fails is a miss on that replica and the next one is asked.
//! - A server that failed is skipped for a second (`down_for`), so a dead member costs a
//!   refused connection once, not on every call.
//!
//! The async methods run on the client's own runtime; [`PoolBackend`] wraps them for the
//! agent's threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::placement::{Member, Placement};
use super::splice::SPLICE_MIN;
use super::wire::{self, Frame, Op, Reply, Status};
mod backend;
mod connect;
mod members;
use members::View;

use super::auth;
use crate::wire::conn::{
    read_body, read_body_hashed, read_frame, read_header, write_frame, ReadError,
};
use kvtier_core::block::verify_record;
use kvtier_core::block::BlockHeader;
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::Counter;

mod config;
pub use config::{PoolClientConfig, Splice, Transport};

/// One multiplexed connection.
struct Conn {
    out: mpsc::Sender<(Frame, Option<Arc<AlignedBuf>>, Vec<u8>)>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// UCX connections: wakes the thread that sends what `out` holds.
    #[cfg(feature = "ucx")]
    bell: Option<Arc<super::ucx::Bell>>,
}

pub(super) struct MemberState {
    /// `host:port` of its data plane.
    addr: String,
    conns: Mutex<Vec<Arc<Conn>>>,
    next: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    /// Serialises connecting, so a burst of calls opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Counters {
    replica_timeouts: Counter,
    membership_changes: Counter,
    previous_asked: Counter,
    puts: Counter,
    put_partial: Counter,
    gets: Counter,
    hits: Counter,
    misses: Counter,
    corrupt: Counter,
    replica_failures: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// A client of a set of pool servers. Cheap to share (`Arc`).
///
/// The member set is the configured list, or, in a cluster, what
/// [`set_members`](PoolClient::set_members) was last given (by the membership watch of
/// [`crate::cluster`]). For a while after the set changed, a key missing on its new replicas
/// is also asked of its replicas in the set before (rebalancing copies it meanwhile).
pub struct PoolClient {
    view: parking_lot::RwLock<Arc<View>>,
    /// The view before the current one, asked on a miss for [`REBALANCE_GRACE`].
    previous: parking_lot::RwLock<Option<Arc<View>>>,
    cfg: PoolClientConfig,
    /// etcd's state, when the member set comes from a cluster.
    cluster_health: Arc<crate::cluster::ClusterHealth>,
    next_id: AtomicU64,
    counters: Counters,
    /// Response buffers, reused (callers hand them back with [`PoolClient::recycle`]).
    bufs: Arc<BufPool>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for PoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.view();
        f.debug_struct("PoolClient")
            .field("members", &v.placement.as_ref().map(Placement::members))
            .field("replication", &v.replication())
            .finish()
    }
}

fn unavailable(addr: &str, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("pool server {addr}: {what}"),
    )
}

impl PoolClient {
    /// Checks the configuration and starts the client's runtime. Connects lazily.
    pub fn new(cfg: PoolClientConfig) -> Result<Arc<PoolClient>> {
        cfg.validate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kvtier-pool-client")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the pool client's runtime", e))?;
        let view = View {
            placement: None,
            states: Vec::new(),
            since: Instant::now(),
        };
        let bufs = Arc::new(BufPool::new(cfg.buffer_pool_bytes));
        let client = Arc::new(PoolClient {
            view: parking_lot::RwLock::new(Arc::new(view)),
            previous: parking_lot::RwLock::new(None),
            cluster_health: crate::cluster::ClusterHealth::new(),
            cfg,
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            bufs,
            rt,
        });
        if !client.cfg.members.is_empty() {
            client.set_members(client.cfg.members.clone())?;
            // The configured list is the member set from the start: nothing to fall back on.
            *client.previous.write() = None;
        }
        if let Some(c) = client.cfg.cluster.clone() {
            client.follow(c);
        }
        Ok(client)
    }

    /// Fills the buffer pool with `n` buffers of `len` bytes, their pages touched, so that a
    /// burst of gets does not page-fault (benchmarks; a warm client gets there by itself).
    pub fn prewarm(&self, n: usize, len: usize) {
        for _ in 0..n {
            let mut b = AlignedBuf::zeroed(len);
            for p in b.chunks_mut(kvtier_core::buf::ALIGN) {
                p[0] = 1;
            }
            self.bufs.give(b);
        }
    }

    /// Hands a buffer returned by [`get`](Self::get) back for reuse.
    pub fn recycle(&self, buf: AlignedBuf) {
        self.bufs.give(buf);
    }

    /// Runs `fut` on the client's runtime and waits for it, from any thread (including a
    /// thread of another tokio runtime).
    pub fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("a pool client task panicked or its runtime stopped")
    }

    /// One request to member `m`; the response frame and body.
    async fn call(
        &self,
        m: &Arc<MemberState>,
        f: Frame,
        rec: Option<Arc<AlignedBuf>>,
        bytes: Vec<u8>,
    ) -> Result<(Frame, AlignedBuf)> {
        self.call_hashed(m, f, rec, bytes)
            .await
            .map(|(f, body, _)| (f, body))
    }

    /// [`call`](Self::call), with the payload hash of a record answer when it was computed
    /// on the way in.
    async fn call_hashed(
        &self,
        m: &Arc<MemberState>,
        mut f: Frame,
        rec: Option<Arc<AlignedBuf>>,
        bytes: Vec<u8>,
    ) -> Result<(Frame, AlignedBuf, Option<u64>)> {
        let addr = &m.addr;
        let conn = self.conn(m).await?;
        f.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(f.id, tx);
        // Dropped with this call (its deadline passed, its caller gave up): forget it, or the
        // connection would keep its entry, and the answer's buffer, until it closes.
        let _forget = Forget(&conn, f.id);
        // The connection's reader marks it dead, then fails the calls pending on it; a call
        // registered after that would wait for its deadline instead of going on to the next
        // replica, so it looks at the mark once registered.
        if conn.dead.load(Ordering::Relaxed) {
            conn.pending.lock().remove(&f.id);
            return Err(unavailable(addr, "connection lost"));
        }
        if conn.out.send((f, rec, bytes)).await.is_err() {
            conn.pending.lock().remove(&f.id);
            return Err(unavailable(addr, "connection closed"));
        }
        #[cfg(feature = "ucx")]
        if let Some(b) = &conn.bell {
            b.ring();
        }
        let res = rx.await;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                *m.down_until.lock() = Some(Instant::now() + self.cfg.down_for);
                Err(unavailable(addr, e))
            }
            Err(_) => Err(unavailable(addr, "connection closed")),
        }
    }

    /// [`call_hashed`](Self::call_hashed) to one replica within `budget`: a replica that does
    /// not answer in time (stopped, black-holed, overloaded) is marked down for
    /// [`PoolClientConfig::down_for`], so that the next calls go straight to the others.
    async fn call_within(
        &self,
        m: &Arc<MemberState>,
        f: Frame,
        rec: Option<Arc<AlignedBuf>>,
        bytes: Vec<u8>,
        budget: Duration,
    ) -> Result<(Frame, AlignedBuf, Option<u64>)> {
        match tokio::time::timeout(budget, self.call_hashed(m, f, rec, bytes)).await {
            Ok(r) => r,
            Err(_) => {
                *m.down_until.lock() = Some(Instant::now() + self.cfg.down_for);
                self.counters.replica_timeouts.inc();
                let addr = &m.addr;
                tracing::warn!(server = %addr, ?budget, "pool server did not answer in time; marked down");
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("pool server {addr} did not answer within {budget:?}"),
                ))
            }
        }
    }

    /// The time left before `deadline` shared among `left` replicas still to ask (at least
    /// 1 ms).
    fn share(deadline: Instant, left: usize) -> Duration {
        (deadline.saturating_duration_since(Instant::now()) / left.max(1) as u32)
            .max(Duration::from_millis(1))
    }

    async fn with_deadline<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("pool {what} took longer than {:?}", self.cfg.timeout),
            )),
        }
    }

    /// Stores a sealed record on every replica of its key, at once. Succeeds when at least
    /// one replica stored it (fewer than all is counted in `put_partial`).
    pub async fn put(&self, record: Arc<AlignedBuf>) -> Result<usize> {
        let h = BlockHeader::decode(&record).map_err(Error::from)?;
        let key = h.key();
        let len = h.record_len();
        if record.len() < len {
            return Err(Error::invalid("a record shorter than its header says"));
        }
        self.counters.puts.inc();
        let reps = self.view().replicas(key);
        if reps.is_empty() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the pool has no members known yet",
            ));
        }
        let n = reps.len();
        let results = self
            .with_deadline("put", async {
                // Every replica at once, each within the deadline on its own: a stalled one
                // costs its own copy, not the put.
                let calls = reps.iter().map(|m| {
                    let f = Frame::request(Op::Put, 0, key, len as u32);
                    let budget = self.cfg.timeout.saturating_sub(Duration::from_millis(1));
                    let rec = record.clone();
                    async move {
                        self.call_within(m, f, Some(rec), Vec::new(), budget)
                            .await
                            .map(|(f, body, _)| (f, body))
                    }
                });
                Ok(futures_join_all(calls).await)
            })
            .await?;
        let mut stored = 0;
        let mut last = None;
        for r in results {
            match r {
                Ok((f, _)) if f.status == Status::Ok => stored += 1,
                Ok((f, body)) => {
                    self.counters.replica_failures.inc();
                    let msg = String::from_utf8_lossy(&body).into_owned();
                    let kind = if f.status == Status::NoSpace {
                        ErrorKind::NoSpace
                    } else {
                        ErrorKind::Unavailable
                    };
                    last = Some(Error::new(
                        kind,
                        format!("pool put refused ({:?}): {msg}", f.status),
                    ));
                }
                Err(e) => {
                    self.counters.replica_failures.inc();
                    last = Some(e);
                }
            }
        }
        if stored == 0 {
            return Err(last.unwrap_or_else(|| Error::new(ErrorKind::Unavailable, "no replica")));
        }
        if stored < n {
            self.counters.put_partial.inc();
        }
        self.counters.bytes_in.add(len as u64);
        Ok(stored)
    }

    /// Fetches and verifies the record of `key` from the first replica that has a good copy.
    /// `bypass_cache` asks the servers to read from disk.
    pub async fn get(&self, key: BlockKey, bypass_cache: bool) -> Result<Option<AlignedBuf>> {
        self.counters.gets.inc();
        let flags = if bypass_cache {
            wire::FLAG_BYPASS_CACHE
        } else {
            0
        };
        let res = self
            .with_deadline("get", async {
                let mut last_err = None;
                let deadline = Instant::now() + self.cfg.timeout;
                let mut reps = self.view().replicas(key);
                let current = reps.len();
                let mut n = 0;
                while n < reps.len() {
                    let m = reps[n].clone();
                    let m = &m;
                    let f = Frame::request(Op::Get, 0, key, 0).with_flags(flags);
                    // Each replica gets its share of the time left: a stalled first replica
                    // leaves the next one time to answer.
                    let budget = Self::share(deadline, reps.len() - n);
                    n += 1;
                    match self.call_within(m, f, None, Vec::new(), budget).await {
                        Ok((f, body, hash)) if f.status == Status::Ok => {
                            match verify_record(&body, Some(key), hash) {
                                Ok(_) => return Ok(Some(body)),
                                Err(v) => {
                                    self.recycle(body);
                                    self.counters.corrupt.inc();
                                    tracing::warn!(%key, server = %m.addr, reason = v.as_str(), "pool record failed verification; trying the next replica");
                                }
                            }
                        }
                        Ok((f, _, _)) if f.status == Status::NotFound => {}
                        Ok((f, body, _)) => {
                            self.counters.replica_failures.inc();
                            last_err = Some(unavailable(
                                &m.addr,
                                format_args!("{:?}: {}", f.status, String::from_utf8_lossy(&body)),
                            ));
                        }
                        Err(e) => {
                            self.counters.replica_failures.inc();
                            last_err = Some(e);
                        }
                    }
                    if n == reps.len() && n == current {
                        // Missed on the replicas now: the key may not have been copied to
                        // them yet since the member set changed; ask where it was before.
                        let before = self.previous_replicas(key, &reps);
                        if !before.is_empty() {
                            self.counters.previous_asked.inc();
                        }
                        reps.extend(before);
                    }
                }
                match last_err {
                    // Every replica failed: say so; a plain miss is `None`.
                    Some(e) if !self.any_replica_answered(key) => Err(e),
                    _ => Ok(None),
                }
            })
            .await?;
        match &res {
            Some(b) => {
                self.counters.hits.inc();
                self.counters.bytes_out.add(b.len() as u64);
            }
            None => self.counters.misses.inc(),
        }
        Ok(res)
    }

    fn any_replica_answered(&self, key: BlockKey) -> bool {
        self.view()
            .replicas(key)
            .iter()
            .any(|m| m.down_until.lock().is_none_or(|t| Instant::now() >= t))
    }

    /// Which of `keys` are stored (asked of each key's first live replica, in one batch per
    /// server; a server that fails is retried on the next replica).
    #[allow(clippy::needless_range_loop)] // `attempt` indexes every key's replica list
    pub async fn exists(&self, keys: &[BlockKey]) -> Result<Vec<bool>> {
        let view = self.view();
        let ranked: Vec<Vec<usize>> = match &view.placement {
            Some(p) => keys.iter().map(|k| p.replicas(*k)).collect(),
            None => return Ok(vec![false; keys.len()]),
        };
        let mut out = vec![false; keys.len()];
        self.with_deadline("exists", async {
            let mut todo: Vec<usize> = (0..keys.len()).collect();
            let deadline = Instant::now() + self.cfg.timeout;
            let replication = view.replication();
            for attempt in 0..replication {
                if todo.is_empty() {
                    break;
                }
                let budget = Self::share(deadline, replication - attempt);
                let mut by_member: HashMap<usize, Vec<usize>> = HashMap::new();
                for &i in &todo {
                    by_member.entry(ranked[i][attempt]).or_default().push(i);
                }
                todo.clear();
                // At most MAX_EXISTS_KEYS per frame (the server refuses more): larger asks
                // go as several frames, not as a silent miss.
                let calls = by_member
                    .into_iter()
                    .flat_map(|(m, idx)| {
                        idx.chunks(wire::MAX_EXISTS_KEYS)
                            .map(|c| (m, c.to_vec()))
                            .collect::<Vec<_>>()
                    })
                    .map(|(m, idx)| {
                        let m = view.states[m].clone();
                        async move {
                            let ks: Vec<BlockKey> = idx.iter().map(|&i| keys[i]).collect();
                            let body = wire::encode_keys(&ks);
                            let f = Frame::request(
                                Op::Exists,
                                0,
                                BlockKey::default(),
                                body.len() as u32,
                            );
                            let r = self.call_within(&m, f, None, body, budget).await;
                            (idx, r.map(|(f, body, _)| (f, body)))
                        }
                    });
                for (idx, r) in futures_join_all(calls).await {
                    match r {
                        Ok((f, body)) if f.status == Status::Ok && body.len() == idx.len() => {
                            for (j, &i) in idx.iter().enumerate() {
                                out[i] = body[j] != 0;
                                // A replica without it may still be behind another that has it.
                                if body[j] == 0 {
                                    todo.push(i);
                                }
                            }
                        }
                        _ => todo.extend(idx),
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Removes `key` from every replica. True if any had it.
    pub async fn delete(&self, key: BlockKey) -> Result<bool> {
        self.with_deadline("delete", async {
            let reps = self.view().replicas(key);
            let calls = reps
                .iter()
                .map(|m| self.call(m, Frame::request(Op::Delete, 0, key, 0), None, Vec::new()));
            Ok(futures_join_all(calls)
                .await
                .into_iter()
                .any(|r| matches!(r, Ok((f, _)) if f.status == Status::Ok)))
        })
        .await
    }

    /// The counters of member `m` of the current set, in address order
    /// ([`super::server::PoolServerStats`] as JSON).
    pub async fn server_stats(&self, m: usize) -> Result<serde_json::Value> {
        let st = self
            .view()
            .states
            .get(m)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("the pool has no member {m}")))?;
        self.with_deadline("stats", async {
            let (_, body) = self
                .call(
                    &st,
                    Frame::request(Op::Stats, 0, BlockKey::default(), 0),
                    None,
                    Vec::new(),
                )
                .await?;
            serde_json::from_slice(&body)
                .map_err(|e| Error::corrupt(format!("pool stats are not valid JSON: {e}")))
        })
        .await
    }

    /// The client's own counters.
    pub fn client_stats(&self) -> PoolClientStats {
        let c = &self.counters;
        PoolClientStats {
            puts: c.puts.get(),
            put_partial: c.put_partial.get(),
            gets: c.gets.get(),
            hits: c.hits.get(),
            misses: c.misses.get(),
            corrupt: c.corrupt.get(),
            replica_failures: c.replica_failures.get(),
            replica_timeouts: c.replica_timeouts.get(),
            membership_changes: c.membership_changes.get(),
            previous_asked: c.previous_asked.get(),
            members: self.view().states.len() as u64,
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
        }
    }
}

/// A pool client's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct PoolClientStats {
    /// Puts attempted.
    pub puts: u64,
    /// Puts stored on fewer replicas than asked.
    pub put_partial: u64,
    /// Gets attempted.
    pub gets: u64,
    /// Gets that returned a verified record.
    pub hits: u64,
    /// Gets that found no good copy.
    pub misses: u64,
    /// Records that failed verification on the way back (each is retried on another replica).
    pub corrupt: u64,
    /// Calls to one replica that failed (refused, timed out, connection lost, error status).
    pub replica_failures: u64,
    /// Calls to one replica that did not answer within their share of the deadline (the
    /// replica is then marked down for `down_for`).
    pub replica_timeouts: u64,
    /// Times the member set changed (a cluster's membership; the configured list counts 1).
    pub membership_changes: u64,
    /// Gets that missed on their replicas and asked the replicas of the set before
    /// (rebalancing in progress).
    pub previous_asked: u64,
    /// Members in the set now.
    pub members: u64,
    /// Bytes stored.
    pub bytes_in: u64,
    /// Bytes fetched.
    pub bytes_out: u64,
}

/// How long after a member-set change a miss is also asked of the replicas before it:
/// rebalancing copies keys to their new replicas meanwhile.
pub const REBALANCE_GRACE: Duration = Duration::from_secs(600);

/// Removes a call's entry from its connection's pending calls when the call ends, however it
/// ends (answered: already gone; timed out or dropped: it would otherwise stay).
struct Forget<'a>(&'a Conn, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().remove(&self.1);
    }
}

/// Waits for all futures, concurrently, keeping their order.
pub(super) async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<_>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Answers of at least this many bytes have their record payload hashed while they arrive (a
/// threshold chosen, not tuned; measured on 4 MiB records).
const HASH_WHILE_READING: usize = 256 << 10;

/// Reads one answer. A get's record of [`HASH_WHILE_READING`] bytes or more is checksummed
/// while the rest of it crosses the socket, so verifying it costs no time after its last
/// byte: returns the payload's xxh3-64 then (`None` otherwise, or when the first bytes are
/// not a record header: the caller's verification then says why).
async fn read_answer<R: tokio::io::AsyncReadExt + Unpin>(
    rd: &mut R,
    max_body: u32,
    bufs: &BufPool,
    sock: Option<std::os::fd::RawFd>,
) -> std::result::Result<(Frame, AlignedBuf, Option<u64>), ReadError> {
    let f = read_header(rd, max_body).await?;
    let len = f.body_len as usize;
    if f.op != Op::Get || f.status != Status::Ok || len < HASH_WHILE_READING {
        let body = read_body(rd, &f, Some(bufs)).await?;
        return Ok((f, body, None));
    }
    let mut body = bufs.take(len);
    let hash = read_body_hashed(rd, &mut body, sock).await?;
    Ok((f, body, hash))
}

#[cfg(test)]
mod tests;
