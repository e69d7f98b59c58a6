//! `kvtier pool`: a pool server. A segment store on the node's disk, a DRAM cache of whole
//! records in front of it, the framed data plane of [`super::wire`] over TCP, and a gRPC
//! control plane (health, stats, drain) from `proto/kvtier/v1/pool.proto`.
//!
//! Per connection: one reader that parses frames and starts each request as its own task
//! (at most `max_in_flight` at once), and one writer that sends responses as they complete, so
//! many requests are in flight and a slow disk read does not hold up a cache hit behind it.
//! Bytes: a put's body is read from the socket straight into a page-aligned buffer that is
//! written to disk with O_DIRECT (one copy); a get is read from disk into such a buffer and
//! written to the socket from it, or written from the cache entry. Buffers are reused.
//! The DRAM cache is write-around: records enter it when read (hot), not when written, since
//! most KV blocks are never read again.
//!
//! A peer that sends a bad frame (wrong magic or version, unknown op, a body over the limit,
//! a truncated frame) or fails authentication is disconnected with a logged reason; everyone
//! else is served on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use super::auth;
use super::proto;
use super::wire::{self, Frame, Op, Status, HEADER_LEN};
use kvtier_core::block::{BlockHeader, HEADER_LEN as BLOCK_HEADER_LEN};
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::{Counter, Gauge, HistogramSnapshot, OpLatency, StoreStats};
use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};

mod stream;

/// Configuration of a pool server.
#[derive(Debug, Clone)]
pub struct PoolServerConfig {
    /// Data-plane address (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Control-plane (gRPC) address; `None`: no control plane.
    pub control: Option<SocketAddr>,
    /// The segment store on this node's disk.
    pub store: SegmentStoreConfig,
    /// Bytes of DRAM for hot records (0: no cache). Default 1 GiB.
    pub cache_bytes: u64,
    /// Shared secret peers must prove; `None`: no authentication.
    pub secret: Option<Vec<u8>>,
    /// Largest body accepted, in bytes. Default 64 MiB + a page.
    pub max_body: u32,
    /// Requests in flight per connection, at most. Default 64.
    pub max_in_flight: usize,
    /// Time a new peer has to authenticate. Default 5 s.
    pub auth_timeout: Duration,
    /// Also serve UCX clients (feature `ucx`). Default `false`.
    pub ucx: bool,
    /// Puts of at least two chunks of this many bytes are streamed to disk chunk by chunk
    /// while their bodies arrive (see `server/stream.rs`); 0 reads every body whole first.
    /// A multiple of 4 KiB. Default 2 MiB: a chunk's buffer is then one transparent huge page
    /// ([`kvtier_core::buf::HUGE`]), which the disk takes in far fewer, larger segments (one 4 MiB put
    /// in flight: 1.18-1.59 GB/s against 1.01-1.34 with 1 MiB chunks, three A/B runs).
    pub stream_chunk: usize,
    /// Longest wait for the next chunk of a streamed put's body before the connection is
    /// closed. Default 10 s.
    pub stall_timeout: Duration,
}

impl PoolServerConfig {
    /// Defaults around a store directory and a data-plane address.
    pub fn new(listen: SocketAddr, store: SegmentStoreConfig) -> Self {
        PoolServerConfig {
            listen,
            control: None,
            store,
            cache_bytes: 1 << 30,
            secret: None,
            max_body: (64 << 20) + 4096,
            max_in_flight: 64,
            auth_timeout: Duration::from_secs(5),
            ucx: false,
            stream_chunk: 2 << 20,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// The data-plane ops timed into latency histograms, in order (see [`PoolServer::latency`]).
pub const POOL_OPS: &[&str] = &["put", "get", "exists", "delete", "stats", "other"];

fn op_index(op: Op) -> usize {
    match op {
        Op::Put => 0,
        Op::Get => 1,
        Op::Exists => 2,
        Op::Delete => 3,
        Op::Stats => 4,
        _ => 5,
    }
}

/// Counters of a pool server (see [`PoolServerStats`]).
#[derive(Default)]
struct Counters {
    connections: Gauge,
    connections_total: Counter,
    rejected: Counter,
    bad_frames: Counter,
    auth_failures: Counter,
    puts: Counter,
    streamed_puts: Counter,
    gets: Counter,
    get_hits: Counter,
    cache_hits: Counter,
    cache_bytes_out: Counter,
    exists: Counter,
    deletes: Counter,
    errors: Counter,
    bad_records: Counter,
    in_flight: Gauge,
}

/// A snapshot of a pool server's counters (the `Stats` op and the control plane answer this).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PoolServerStats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections closed for a bad frame or failed authentication.
    pub rejected: u64,
    /// Of those, bad frames.
    pub bad_frames: u64,
    /// Of those, failed authentication.
    pub auth_failures: u64,
    /// Put requests.
    pub puts: u64,
    /// Of those, puts whose body was streamed to disk as it arrived (`stream_chunk`).
    pub streamed_puts: u64,
    /// Get requests.
    pub gets: u64,
    /// Gets that found the key (cache or disk).
    pub get_hits: u64,
    /// Gets served from the DRAM cache.
    pub cache_hits: u64,
    /// Record bytes served from the DRAM cache.
    pub cache_bytes_out: u64,
    /// Bound of the DRAM cache in bytes.
    pub cache_capacity: u64,
    /// Exists requests.
    pub exists: u64,
    /// Delete requests.
    pub deletes: u64,
    /// Requests that failed (I/O, no space, draining).
    pub errors: u64,
    /// Puts refused because the record failed verification.
    pub bad_records: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Records in the DRAM cache.
    pub cache_objects: u64,
    /// Bytes in the DRAM cache.
    pub cache_bytes: u64,
    /// Whether the server is draining (no new writes).
    pub draining: bool,
    /// The segment store.
    pub store: StoreStats,
}

/// A byte-bounded cache of whole records, evicting by the tiers' policy (hit density by
/// default, see `kvtier_core::policy`), so the DRAM in front of the disk keeps what is read again.
struct Cache {
    map: kvtier_core::policy::WeightedCache<BlockKey, Arc<AlignedBuf>>,
}

impl Cache {
    fn get(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.map.get(key).cloned()
    }

    /// Inserts a record; returns what was pushed out (for the caller to recycle).
    fn insert(&mut self, key: BlockKey, rec: Arc<AlignedBuf>) -> Vec<Arc<AlignedBuf>> {
        let len = rec.len() as u64;
        self.map.insert(key, rec, len)
    }

    fn remove(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.map.remove(key)
    }

    fn contains(&self, key: &BlockKey) -> bool {
        self.map.contains(key)
    }
}

/// The server's shared state.
pub struct PoolServer {
    store: SegmentStore,
    cache: Mutex<Cache>,
    cfg: PoolServerConfig,
    draining: AtomicBool,
    /// Accepting connections (from the start of `serve` until its shutdown).
    serving: AtomicBool,
    counters: Counters,
    latency: OpLatency,
    /// Request and response buffers, reused (see [`BufPool`]).
    bufs: BufPool,
    /// TCP puts received and not yet answered (a put is streamed only when it is alone).
    puts_in_flight: std::sync::atomic::AtomicUsize,
    /// The UCX data plane, once serving (feature `ucx`).
    #[cfg(feature = "ucx")]
    ucx: std::sync::OnceLock<super::ucx::UcxServer>,
}

/// Counts a TCP put in [`PoolServer::puts_in_flight`] until it is answered (dropped).
struct PutTicket(Arc<PoolServer>);

impl Drop for PutTicket {
    fn drop(&mut self) {
        self.0.puts_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bound server: its addresses are known (ports chosen) before it serves.
pub struct BoundServer {
    server: Arc<PoolServer>,
    data: TcpListener,
    control: Option<TcpListener>,
}

/// A response body.
pub(crate) enum Body {
    Empty,
    Bytes(Vec<u8>),
    Record(Arc<AlignedBuf>),
}

impl BoundServer {
    /// The data-plane address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The control-plane address, if any.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// The server state (for stats in-process).
    pub fn server(&self) -> Arc<PoolServer> {
        self.server.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish
    /// (up to 10 s), and flushes the store.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
        let BoundServer {
            server,
            data,
            control,
        } = self;
        #[cfg(feature = "ucx")]
        if server.cfg.ucx {
            let u = super::ucx::UcxServer::start(
                server.clone(),
                tokio::runtime::Handle::current(),
                server.cfg.max_body,
            )?;
            let _ = server.ucx.set(u);
            tracing::info!("pool server: UCX data plane up");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let control_task = control.map(|l| {
            let svc = proto::pool_server::PoolServer::new(Control(server.clone()));
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                let _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            })
        });
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        server.serving.store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                acc = data.accept() => match acc {
                    Ok((sock, peer)) => {
                        let s = server.clone();
                        let rx = stop_rx.clone();
                        conns.spawn(async move { s.connection(sock, peer, rx).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        server.serving.store(false, Ordering::Relaxed);
        tracing::info!("pool server stopping: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if let Some(t) = control_task {
            let _ = t.await;
        }
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.store.flush())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("flush task failed: {e}")))??;
        tracing::info!("pool server stopped");
        Ok(())
    }
}

impl PoolServer {
    /// Opens (and recovers) the store and binds both listeners.
    pub async fn bind(cfg: PoolServerConfig) -> Result<BoundServer> {
        if cfg.ucx && cfg!(not(feature = "ucx")) {
            return Err(Error::invalid(
                "this kvtier was built without UCX; rebuild with `--features ucx` (needs libucx-dev)",
            ));
        }
        if let Some(s) = &cfg.secret {
            if s.is_empty() {
                return Err(Error::invalid("the pool secret is empty"));
            }
        }
        check_streaming(cfg.stream_chunk, cfg.stall_timeout)
            .map_err(|(key, why)| Error::invalid(format!("{key}: {why}")))?;
        let store_cfg = cfg.store.clone();
        let store = tokio::task::spawn_blocking(move || SegmentStore::open(store_cfg))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("opening the store failed: {e}")))??;
        let data = TcpListener::bind(cfg.listen).await.map_err(|e| {
            Error::io("binding the pool data plane", e).with_context("addr", cfg.listen)
        })?;
        let control = match cfg.control {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|e| {
                Error::io("binding the pool control plane", e).with_context("addr", a)
            })?),
            None => None,
        };
        let server = Arc::new(PoolServer {
            store,
            cache: Mutex::new(Cache {
                map: kvtier_core::policy::WeightedCache::new(
                    kvtier_core::policy::PolicyKind::default(),
                    cfg.cache_bytes,
                ),
            }),
            cfg,
            draining: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            counters: Counters::default(),
            latency: OpLatency::new(POOL_OPS),
            bufs: BufPool::new(256 << 20),
            puts_in_flight: Default::default(),
            #[cfg(feature = "ucx")]
            ucx: std::sync::OnceLock::new(),
        });

        Ok(BoundServer {
            server,
            data,
            control,
        })
    }

    /// Gives a record buffer back for reuse once nobody else holds it.
    fn recycle(&self, rec: Arc<AlignedBuf>) {
        if let Ok(b) = Arc::try_unwrap(rec) {
            self.bufs.give(b);
        }
    }

    fn cache_insert(&self, key: BlockKey, rec: Arc<AlignedBuf>) {
        let out = self.cache.lock().insert(key, rec);
        for r in out {
            self.recycle(r);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> PoolServerStats {
        let c = &self.counters;
        let cache = self.cache.lock();
        PoolServerStats {
            connections: c.connections.get(),
            connections_total: c.connections_total.get(),
            rejected: c.rejected.get(),
            bad_frames: c.bad_frames.get(),
            auth_failures: c.auth_failures.get(),
            puts: c.puts.get(),
            streamed_puts: c.streamed_puts.get(),
            gets: c.gets.get(),
            get_hits: c.get_hits.get(),
            cache_hits: c.cache_hits.get(),
            cache_bytes_out: c.cache_bytes_out.get(),
            cache_capacity: self.cfg.cache_bytes,
            exists: c.exists.get(),
            deletes: c.deletes.get(),
            errors: c.errors.get(),
            bad_records: c.bad_records.get(),
            in_flight: c.in_flight.get(),
            cache_objects: cache.map.len() as u64,
            cache_bytes: cache.map.weight(),
            draining: self.draining.load(Ordering::Relaxed),
            store: self.store.stats(),
        }
    }

    /// The request latency histograms, by op ([`POOL_OPS`]).
    pub fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.latency.snapshot()
    }

    /// Whether the server is draining (no new writes).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the server is accepting connections (serving, not shutting down).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Stops taking writes (puts answer `Draining`); reads go on. Flushes the store.
    pub fn drain(&self) -> Result<()> {
        self.draining.store(true, Ordering::Relaxed);
        self.store.flush()
    }

    fn reject(&self, peer: SocketAddr, why: &str, auth: bool) {
        self.counters.rejected.inc();
        if auth {
            self.counters.auth_failures.inc();
        } else {
            self.counters.bad_frames.inc();
        }
        tracing::warn!(%peer, reason = why, "closing a pool connection");
    }

    async fn connection(
        self: Arc<Self>,
        sock: TcpStream,
        peer: SocketAddr,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = sock.set_nodelay(true);
        wire::size_socket_buffers(std::os::fd::AsRawFd::as_raw_fd(&sock));
        self.counters.connections.add(1);
        self.counters.connections_total.inc();
        let (mut rd, mut wr) = sock.into_split();
        // Handshake: Hello with a nonce, then the peer's Auth (a proof, or empty without a secret).
        let nonce = auth::nonce();
        let flags = if self.cfg.secret.is_some() {
            wire::FLAG_AUTH_REQUIRED
        } else {
            0
        };
        let hello =
            Frame::request(Op::Hello, 0, BlockKey::default(), nonce.len() as u32).with_flags(flags);
        let ok = async {
            wr.write_all(&hello.encode()).await?;
            wr.write_all(&nonce).await
        }
        .await;
        if ok.is_ok() {
            let answer = tokio::time::timeout(self.cfg.auth_timeout, read_frame(&mut rd, 64)).await;
            let verdict = match answer {
                Err(_) => Err("no authentication within the deadline".to_string()),
                Ok(Err(e)) => Err(format!("bad handshake: {e}")),
                Ok(Ok((f, _))) if f.op != Op::Auth => {
                    Err(format!("expected an auth frame first, got {:?}", f.op))
                }
                Ok(Ok((f, body))) => match &self.cfg.secret {
                    Some(secret) if !auth::verify(secret, &nonce, &body) => {
                        Err("authentication failed: wrong or missing shared secret".to_string())
                    }
                    _ => Ok(f),
                },
            };
            match verdict {
                Err(why) => self.reject(peer, &why, true),
                Ok(f) => {
                    let reply = Frame::response(&f, Status::Ok, 0).encode();
                    if wr.write_all(&reply).await.is_ok() {
                        self.serve_frames(rd, wr, peer, &mut stop).await;
                    }
                }
            }
        }
        self.counters.connections.sub(1);
    }

    async fn serve_frames(
        self: &Arc<Self>,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        mut wr: tokio::net::tcp::OwnedWriteHalf,
        peer: SocketAddr,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(Frame, Body)>(self.cfg.max_in_flight);
        let me = self.clone();
        let writer = tokio::spawn(async move {
            while let Some((f, body)) = rx.recv().await {
                let bytes: &[u8] = match &body {
                    Body::Empty => &[],
                    Body::Bytes(b) => b,
                    Body::Record(r) => &r[..f.body_len as usize],
                };
                let res = write_frame(&mut wr, &f.encode(), bytes).await;
                if let Body::Record(r) = body {
                    me.recycle(r);
                }
                if res.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let permits = Arc::new(Semaphore::new(self.cfg.max_in_flight));
        // The UCX client id this connection controls, once it said UcxHello.
        let mut ucx_client: Option<u32> = None;
        loop {
            let next = tokio::select! {
                r = read_header(&mut rd, self.cfg.max_body) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let frame = match next {
                Ok(f) => f,
                Err(ReadError::Closed) => break,
                Err(e) => {
                    self.reject(peer, &e.to_string(), false);
                    break;
                }
            };
            // Puts in flight on this server (TCP), this one included until it is answered.
            let (ticket, others) = match frame.op {
                Op::Put => {
                    let others = self.puts_in_flight.fetch_add(1, Ordering::Relaxed);
                    (Some(PutTicket(self.clone())), others)
                }
                _ => (None, 0),
            };
            if self.streams(&frame, others) {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                self.counters.in_flight.add(1);
                match self.receive_put(frame, &mut rd).await {
                    Ok(finish) => {
                        let (s, tx) = (self.clone(), tx.clone());
                        tokio::spawn(async move {
                            let resp = finish.await;
                            s.counters.in_flight.sub(1);
                            let _ = tx.send(resp).await;
                            drop((permit, ticket));
                        });
                        continue;
                    }
                    Err(e) => {
                        self.counters.in_flight.sub(1);
                        self.reject(peer, &e.to_string(), false);
                        break;
                    }
                }
            }
            // A put's payload is checksummed as it arrives (see `PayloadHasher`).
            let read = if frame.op == Op::Put {
                let mut b = self.bufs.take(frame.body_len as usize);
                let fd = std::os::fd::AsRawFd::as_raw_fd(rd.as_ref());
                read_body_hashed(&mut rd, &mut b, Some(fd))
                    .await
                    .map(|h| (b, h))
            } else {
                read_body(&mut rd, &frame, Some(&self.bufs))
                    .await
                    .map(|b| (b, None))
            };
            let (body, hash) = match read {
                Ok(b) => b,
                Err(e) => {
                    self.reject(peer, &e.to_string(), false);
                    break;
                }
            };
            if frame.op == Op::UcxHello {
                let reply = self.ucx_hello(&frame, body, &mut ucx_client).await;
                if tx.send(reply).await.is_err() {
                    break;
                }
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (s, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                s.counters.in_flight.add(1);
                let resp = s.clone().handle(frame, body, hash).await;
                s.counters.in_flight.sub(1);
                let _ = tx.send(resp).await;
                drop((permit, ticket));
            });
        }
        // Let requests already started finish and their answers go out.
        let _ = permits.acquire_many(self.cfg.max_in_flight as u32).await;
        drop(tx);
        let _ = writer.await;
        #[cfg(feature = "ucx")]
        if let (Some(cid), Some(u)) = (ucx_client, self.ucx.get()) {
            u.send(super::ucx::ToServer::Unregister(cid));
        }
        let _ = ucx_client;
    }

    /// Answers `UcxHello`: registers the client's worker with the UCX thread.
    async fn ucx_hello(
        &self,
        f: &Frame,
        body: AlignedBuf,
        client: &mut Option<u32>,
    ) -> (Frame, Body) {
        let fail = |msg: String| {
            let b = msg.into_bytes();
            (
                Frame::response(f, Status::Error, b.len() as u32),
                Body::Bytes(b),
            )
        };
        #[cfg(feature = "ucx")]
        if let Some(u) = self.ucx.get() {
            if client.is_some() {
                return fail("this connection already set up UCX".into());
            }
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            u.send(super::ucx::ToServer::Register(body.to_vec(), reply_tx));
            return match reply_rx.await {
                Ok(Ok((cid, addr))) => {
                    *client = Some(cid);
                    let mut b = cid.to_le_bytes().to_vec();
                    b.extend_from_slice(&addr);
                    (
                        Frame::response(f, Status::Ok, b.len() as u32),
                        Body::Bytes(b),
                    )
                }
                Ok(Err(e)) => fail(e.to_string()),
                Err(_) => fail("the UCX thread stopped".into()),
            };
        }
        let _ = (body, client);
        fail("this pool server does not serve UCX (start it with `kvtier pool --ucx`, built with feature `ucx`)".into())
    }

    /// Serves one request (TCP or UCX) inside a span of its own
    /// (`pool_request{op, key, bytes}`), timed into the op's latency histogram. `hash`: a
    /// put payload's xxh3-64, when it was computed while the body arrived (else the put
    /// computes it).
    pub(crate) async fn handle(
        self: Arc<Self>,
        f: Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> (Frame, Body) {
        let op = op_index(f.op);
        let span = tracing::info_span!(
            "pool_request",
            op = POOL_OPS[op],
            key = %f.key,
            bytes = f.body_len,
            tier = "disk"
        );
        let t0 = std::time::Instant::now();
        let me = self.clone();
        let (frame, resp) = async move {
            let r = me.serve_request(f, body, hash).await;
            tracing::debug!(status = ?r.0.status, "done");
            r
        }
        .instrument(span)
        .await;
        self.latency.observe(op, t0.elapsed());
        (frame, resp)
    }

    async fn serve_request(
        self: Arc<Self>,
        f: Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> (Frame, Body) {
        let err = |s: &Self, status: Status, msg: String| {
            s.counters.errors.inc();
            let b = msg.into_bytes();
            (Frame::response(&f, status, b.len() as u32), Body::Bytes(b))
        };
        match f.op {
            Op::Put => {
                self.counters.puts.inc();
                if self.draining.load(Ordering::Relaxed) {
                    return err(&self, Status::Draining, "the server is draining".into());
                }
                if let Err(why) = check_header(&body, f.key, None) {
                    self.counters.bad_records.inc();
                    self.bufs.give(body);
                    return err(&self, Status::Error, why);
                }
                // One trip to a blocking thread: the checksum (unless it was computed while the
                // body arrived), then the write and the index entry. A record is stored only if
                // its checksum holds, so a bad copy never hides an older good one, not even
                // after a restart; and a bad one takes no space at all.
                let s = self.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let res = s.put_whole(&body, f.key, hash);
                    (body, res)
                })
                .await;
                let (body, outcome) = match done {
                    Ok(d) => d,
                    Err(e) => return err(&self, Status::Error, format!("put task failed: {e}")),
                };
                self.bufs.give(body);
                match outcome {
                    Ok(()) => {
                        // Write-around: the DRAM cache holds what is read (most blocks are
                        // never read again); an older cached copy of this key is replaced.
                        if let Some(old) = self.cache.lock().remove(&f.key) {
                            self.recycle(old);
                        }
                        (Frame::response(&f, Status::Ok, 0), Body::Empty)
                    }
                    Err((status, why)) => err(&self, status, why),
                }
            }
            Op::Get => {
                self.counters.gets.inc();
                let bypass = f.flags & wire::FLAG_BYPASS_CACHE != 0;
                if !bypass {
                    if let Some(r) = self.cache.lock().get(&f.key) {
                        // The store's policy hears of the use too (it decides what survives
                        // a segment's eviction).
                        self.store.touch(f.key);
                        self.counters.cache_hits.inc();
                        self.counters.get_hits.inc();
                        let len = record_len_of(&r);
                        self.counters.cache_bytes_out.add(len as u64);
                        return (Frame::response(&f, Status::Ok, len as u32), Body::Record(r));
                    }
                }
                let s = self.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let Some(len) = s.store.record_len(f.key) else {
                        return Ok(None);
                    };
                    let mut buf = s.bufs.take(len);
                    match s.store.get_into_slice(f.key, &mut buf) {
                        Ok(Some(_)) => Ok(Some(buf)),
                        other => {
                            s.bufs.give(buf);
                            other.map(|_| None)
                        }
                    }
                })
                .await;
                match res {
                    Ok(Ok(Some(buf))) => {
                        self.counters.get_hits.inc();
                        let buf = Arc::new(buf);
                        if !bypass && self.cfg.cache_bytes > 0 {
                            self.cache_insert(f.key, buf.clone());
                        }
                        let len = record_len_of(&buf);
                        (
                            Frame::response(&f, Status::Ok, len as u32),
                            Body::Record(buf),
                        )
                    }
                    Ok(Ok(None)) => (Frame::response(&f, Status::NotFound, 0), Body::Empty),
                    Ok(Err(e)) => err(&self, Status::Error, e.to_string()),
                    Err(e) => err(&self, Status::Error, format!("get task failed: {e}")),
                }
            }
            Op::Exists => {
                self.counters.exists.inc();
                match wire::decode_keys(&body) {
                    Ok(keys) => {
                        let cache = self.cache.lock();
                        let out: Vec<u8> = keys
                            .iter()
                            .map(|k| (cache.contains(k) || self.store.contains(*k)) as u8)
                            .collect();
                        drop(cache);
                        (
                            Frame::response(&f, Status::Ok, out.len() as u32),
                            Body::Bytes(out),
                        )
                    }
                    Err(why) => err(&self, Status::Error, why),
                }
            }
            Op::Delete => {
                self.counters.deletes.inc();
                if let Some(r) = self.cache.lock().remove(&f.key) {
                    self.recycle(r);
                }
                let status = if self.store.remove(f.key) {
                    Status::Ok
                } else {
                    Status::NotFound
                };
                (Frame::response(&f, status, 0), Body::Empty)
            }
            Op::Stats => {
                let b = serde_json::to_vec(&self.stats()).expect("stats serialise");
                (
                    Frame::response(&f, Status::Ok, b.len() as u32),
                    Body::Bytes(b),
                )
            }
            Op::Hello | Op::Auth | Op::UcxHello => err(
                &self,
                Status::Error,
                format!("{:?} is only valid during the handshake", f.op),
            ),
        }
    }
}

impl PoolServer {
    /// Stores a put's whole record (on a blocking thread): verifies it (`hash`: its payload's
    /// checksum, computed while it arrived, else here), then appends it to the store, which
    /// indexes it only once it is written. A bad record is counted and takes no space.
    fn put_whole(
        &self,
        record: &[u8],
        key: BlockKey,
        hash: Option<u64>,
    ) -> std::result::Result<(), (Status, String)> {
        if let Err(v) = super::verify_record_hashed(record, key, hash) {
            self.counters.bad_records.inc();
            return Err((
                Status::Error,
                format!("the record failed verification: {}", v.as_str()),
            ));
        }
        self.store
            .put_record(record)
            .map_err(|e| (status_of(&e), e.to_string()))
    }
}

/// Checks the streamed-put settings (the server's and `pool.*`'s, one rule): a chunk is 0
/// (no streaming) or a multiple of 4 KiB from 64 KiB to 64 MiB, and the stall limit is not 0.
/// The error names the setting (`stream_chunk`, `stall_timeout_ms`) and what is wrong.
pub fn check_streaming(
    stream_chunk: usize,
    stall_timeout: Duration,
) -> std::result::Result<(), (&'static str, String)> {
    let c = stream_chunk;
    if c != 0 && (c % kvtier_core::buf::ALIGN != 0 || !(64 << 10..=64 << 20).contains(&c)) {
        return Err((
            "stream_chunk",
            format!("{c} bytes is not a multiple of 4 KiB from 64 KiB to 64 MiB (0 turns streaming off)"),
        ));
    }
    if stall_timeout.is_zero() {
        return Err(("stall_timeout_ms", "0; at least 1".into()));
    }
    Ok(())
}

fn record_len_of(r: &AlignedBuf) -> usize {
    BlockHeader::decode(r)
        .map(|h| h.record_len())
        .unwrap_or(r.len())
        .min(r.len())
}

/// Checks a put's record header (in the first bytes of `body`) against the frame's key and
/// the body's length (`len`, or `body.len()` when the body is whole).
fn check_header(
    body: &[u8],
    key: BlockKey,
    len: Option<usize>,
) -> std::result::Result<BlockHeader, String> {
    let h = BlockHeader::decode(body)
        .map_err(|v| format!("the record failed verification: {}", v.as_str()))?;
    if h.key() != key {
        return Err("the record failed verification: wrong_key".into());
    }
    let len = len.unwrap_or(body.len());
    if h.record_len() != len {
        return Err(format!(
            "a put body is one page-aligned record of {} bytes, got {len}",
            h.record_len(),
        ));
    }
    Ok(h)
}

/// The status answering a store error: no space, or a plain error.
pub(super) fn status_of(e: &Error) -> Status {
    if e.kind() == ErrorKind::NoSpace {
        Status::NoSpace
    } else {
        Status::Error
    }
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// The header was invalid.
    Frame(wire::FrameError),
    /// The connection failed or ended inside a frame.
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "connection closed"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                write!(f, "truncated frame: the connection ended inside it")
            }
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Writes a frame's header and body together, in one system call when the socket takes it
/// all: a header written on its own would cross as a segment of its own and wake the peer for
/// it alone.
pub(crate) async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = wr.write_vectored(&parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let h = n.min(head.len());
        head = &head[h..];
        body = &body[n - h..];
    }
    Ok(())
}

/// Reads one small frame (a handshake's): header, then its body into a new buffer.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max_body: u32,
) -> std::result::Result<(Frame, AlignedBuf), ReadError> {
    let f = read_header(rd, max_body).await?;
    let body = read_body(rd, &f, None).await?;
    Ok((f, body))
}

/// Reads and checks one frame header. A clean close before it is [`ReadError::Closed`];
/// inside it, an error.
pub(crate) async fn read_header<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max_body: u32,
) -> std::result::Result<Frame, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    let n = rd.read(&mut h).await.map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    rd.read_exact(&mut h[n..]).await.map_err(ReadError::Io)?;
    Frame::decode(&h, max_body).map_err(ReadError::Frame)
}

/// Checksums a record's payload while the record arrives, front to back, into one buffer:
/// verifying it then costs nothing after its last byte, and each piece is hashed while it is
/// still in the cache the receive copy left it in.
pub(crate) struct PayloadHasher {
    hasher: xxhash_rust::xxh3::Xxh3,
    /// Where the payload ends, once the record header has arrived (`Some(None)`: the first
    /// bytes are not a record header, or the record is longer than the body).
    end: Option<Option<usize>>,
    /// Bytes of the record hashed or skipped so far.
    hashed: usize,
}

impl PayloadHasher {
    /// A hasher for one body.
    pub(crate) fn new() -> Self {
        PayloadHasher {
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            end: None,
            hashed: 0,
        }
    }

    /// A hasher for a record whose header is already checked: `h`'s payload.
    pub(crate) fn for_header(h: &BlockHeader) -> Self {
        PayloadHasher {
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            end: Some(Some(BLOCK_HEADER_LEN + h.payload_len() as usize)),
            hashed: BLOCK_HEADER_LEN,
        }
    }

    /// `arrived` is the body's first bytes, all that has arrived so far (growing from call to
    /// call, within one body of `len` bytes): hashes what is new of the payload.
    pub(crate) fn advance(&mut self, arrived: &[u8], len: usize) {
        if self.end.is_none() && arrived.len() >= BLOCK_HEADER_LEN {
            self.end = Some(
                BlockHeader::decode(&arrived[..BLOCK_HEADER_LEN])
                    .ok()
                    .and_then(|h| {
                        let end = BLOCK_HEADER_LEN + h.payload_len() as usize;
                        (end <= len).then_some(end)
                    }),
            );
            self.hashed = BLOCK_HEADER_LEN;
        }
        self.feed(0, arrived);
    }

    /// `bytes` are the record's bytes from offset `at`, which follow what was fed before
    /// (a gap makes the digest `None`): hashes the payload among them.
    pub(crate) fn feed(&mut self, at: usize, bytes: &[u8]) {
        let Some(Some(end)) = self.end else {
            return;
        };
        if at > self.hashed {
            self.end = Some(None);
            return;
        }
        let upto = (at + bytes.len()).min(end);
        if upto > self.hashed {
            self.hasher.update(&bytes[self.hashed - at..upto - at]);
            self.hashed = upto;
        }
    }

    /// The payload's xxh3-64, once all of it has been seen; `None` before, or when the body
    /// is not a record (the caller's own check then says why).
    pub(crate) fn digest(&self) -> Option<u64> {
        match self.end {
            Some(Some(end)) if self.hashed == end => Some(self.hasher.digest()),
            _ => None,
        }
    }
}

/// Reads exactly `body.len()` bytes into `body`, hashing its record's payload on the way
/// ([`PayloadHasher`]); the payload's xxh3-64 when `body` holds a whole record. `sock`: the
/// TCP socket `rd` reads from (it must be that one), if it is one, to be woken only when a
/// good piece has arrived ([`RcvLowat`]).
pub(crate) async fn read_body_hashed<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    body: &mut [u8],
    sock: Option<std::os::fd::RawFd>,
) -> std::result::Result<Option<u64>, ReadError> {
    let len = body.len();
    let mut hasher = PayloadHasher::new();
    // Made (one getsockopt) only once a first read leaves a large rest: a body that came
    // whole with it never sets a mark.
    let mut lowat: Option<RcvLowat> = None;
    let mut at = 0;
    while at < len {
        if at > 0 && (lowat.is_some() || len - at >= RcvLowat::MIN) {
            if let Some(fd) = sock {
                lowat
                    .get_or_insert_with(|| RcvLowat::new(fd))
                    .want(len - at);
            }
        }
        let n = rd.read(&mut body[at..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        at += n;
        hasher.advance(&body[..at], len);
    }
    Ok(hasher.digest())
}

/// A large body's reader asks to be woken only once a good piece of it has arrived
/// (`SO_RCVLOWAT`), not for every segment the peer's stack delivers. The mark is never above
/// what is still to come of the body (so the last bytes always wake the reader), nor above a
/// quarter of the socket's receive buffer (half its usable space: the buffer can always hold
/// that much, on any kernel), nor above [`RcvLowat::MAX`]; it is set back to 1 byte when the
/// body is done (also when the read fails or is dropped). If the kernel refuses a value the
/// reader gives the mechanism up for that body, at 1 byte again.
pub(crate) struct RcvLowat {
    fd: std::os::fd::RawFd,
    /// The mark in force.
    set: usize,
    /// The highest mark allowed (`None`: the mechanism is off for this body).
    cap: Option<usize>,
}

impl RcvLowat {
    /// The most a reader waits for before it is woken.
    const MAX: usize = 512 << 10;
    /// Smaller rests of a body are read as they come (setting the mark would cost more
    /// system calls than it saves).
    const MIN: usize = 64 << 10;

    /// For the TCP socket `fd`, which the body is read from.
    fn new(fd: std::os::fd::RawFd) -> Self {
        let mut rcvbuf: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on the caller's open socket into a c_int of the given length.
        let ok = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &mut rcvbuf as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        } == 0;
        // SO_RCVBUF reads back doubled (bookkeeping included): a quarter is half the data.
        let cap = (ok && rcvbuf > 0).then(|| (rcvbuf as usize / 4).min(Self::MAX));
        RcvLowat { fd, set: 1, cap }
    }

    /// `left` bytes of the body are still to come.
    fn want(&mut self, left: usize) {
        let Some(cap) = self.cap else {
            return;
        };
        if self.set == 1 && left < Self::MIN {
            return;
        }
        if !self.apply(left.min(cap).max(1)) {
            // Never leave a mark above what is left: back to 1 byte, and no more marks.
            self.cap = None;
            self.apply(1);
        }
    }

    /// Sets the mark; false if the kernel refused it (the old one stays in force).
    fn apply(&mut self, v: usize) -> bool {
        if v == self.set {
            return true;
        }
        let c = v as libc::c_int;
        // SAFETY: setsockopt on the caller's open socket with a c_int.
        let ok = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &c as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if ok {
            self.set = v;
        }
        ok
    }
}

impl Drop for RcvLowat {
    fn drop(&mut self) {
        if !self.apply(1) {
            tracing::warn!(
                fd = self.fd,
                "could not set SO_RCVLOWAT back to 1 byte; this connection may stall"
            );
        }
    }
}

/// Reads the body of `f` into a page-aligned buffer (from `bufs` when given).
pub(crate) async fn read_body<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    f: &Frame,
    bufs: Option<&BufPool>,
) -> std::result::Result<AlignedBuf, ReadError> {
    let mut body = match bufs {
        Some(p) if f.body_len > 0 => p.take(f.body_len as usize),
        _ => AlignedBuf::zeroed(f.body_len as usize),
    };
    rd.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Ok(body)
}

/// The gRPC control plane.
struct Control(Arc<PoolServer>);

#[tonic::async_trait]
impl proto::pool_server::Pool for Control {
    async fn health(
        &self,
        _: tonic::Request<proto::HealthRequest>,
    ) -> std::result::Result<tonic::Response<proto::HealthReply>, tonic::Status> {
        Ok(tonic::Response::new(proto::HealthReply {
            serving: !self.0.draining.load(Ordering::Relaxed),
            draining: self.0.draining.load(Ordering::Relaxed),
        }))
    }

    async fn stats(
        &self,
        _: tonic::Request<proto::StatsRequest>,
    ) -> std::result::Result<tonic::Response<proto::StatsReply>, tonic::Status> {
        let s = self.0.stats();
        Ok(tonic::Response::new(proto::StatsReply {
            objects: s.store.objects,
            used_bytes: s.store.used_bytes,
            capacity_bytes: s.store.capacity_bytes,
            json: serde_json::to_string(&s).expect("stats serialise"),
        }))
    }

    async fn drain(
        &self,
        _: tonic::Request<proto::DrainRequest>,
    ) -> std::result::Result<tonic::Response<proto::DrainReply>, tonic::Status> {
        let s = self.0.clone();
        tokio::task::spawn_blocking(move || s.drain())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(proto::DrainReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_core::block::BlockObject;

    fn record(payload_len: usize) -> (AlignedBuf, u64) {
        let mut o = BlockObject::new(payload_len).unwrap();
        for (i, b) in o.payload_mut().iter_mut().enumerate() {
            *b = (i * 31 + i / 4096) as u8;
        }
        o.seal(BlockKey::from_u128(5), 0, 0);
        let r = o.into_record();
        let h = BlockHeader::decode(&r).unwrap();
        (r, h.payload_checksum())
    }

    fn rcvlowat(fd: std::os::fd::RawFd) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a c_int of the given length.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        v
    }

    /// A body arriving in paused pieces is read whole with the wake-up mark in use, and the
    /// mark is back at 1 byte after it: a lone small frame that follows is read at once.
    #[tokio::test]
    async fn a_large_body_read_with_a_wakeup_mark_ends_and_the_next_small_frame_still_arrives() {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        let body: Vec<u8> = (0..1_500_000u32)
            .map(|i| (i * 13 + i / 977) as u8)
            .collect();
        let sent = body.clone();
        let sender = tokio::spawn(async move {
            for piece in sent.chunks(400_000) {
                peer.write_all(piece).await.unwrap();
                // Pacing only: the reader must wait for the rest with its mark set.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peer.write_all(&[7u8; 64]).await.unwrap();
            peer
        });
        let (mut rd, _wr) = c.into_split();
        let fd = std::os::fd::AsRawFd::as_raw_fd(rd.as_ref());
        let mut got = vec![0u8; body.len()];
        let read = read_body_hashed(&mut rd, &mut got, Some(fd));
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the body is read whole")
            .unwrap();
        assert!(got == body, "the body arrived intact");
        assert_eq!(rcvlowat(fd), 1, "the mark is back at 1 byte");
        let mut small = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut small))
            .await
            .expect("a small frame after the body is not held back")
            .unwrap();
        assert_eq!(small, [7u8; 64]);
        drop(sender.await.unwrap());
    }

    #[test]
    fn payload_hashed_in_any_pieces_matches_the_header_and_gaps_or_junk_do_not() {
        let (r, sum) = record(300_000);
        let len = r.len();
        // Arriving in uneven pieces, the first shorter than a record header.
        for step in [1000, 4096, 33_333, len] {
            let mut h = PayloadHasher::new();
            let mut at = 0;
            while at < len {
                at = (at + step).min(len);
                h.advance(&r[..at], len);
                if at < BLOCK_HEADER_LEN + 300_000 {
                    assert_eq!(h.digest(), None, "not before the payload's last byte");
                }
            }
            assert_eq!(h.digest(), Some(sum), "pieces of {step}");
        }
        // Fed in chunks after the header was checked.
        let hdr = BlockHeader::decode(&r).unwrap();
        let mut h = PayloadHasher::for_header(&hdr);
        for (i, c) in r.chunks(65_536).enumerate() {
            h.feed(i * 65_536, c);
        }
        assert_eq!(h.digest(), Some(sum));
        // A chunk skipped: no digest, whatever comes after.
        let mut h = PayloadHasher::for_header(&hdr);
        for (i, c) in r.chunks(65_536).enumerate().filter(|(i, _)| *i != 2) {
            h.feed(i * 65_536, c);
        }
        assert_eq!(h.digest(), None);
        // A flipped payload byte changes the digest; junk instead of a header gives none.
        let mut bad = AlignedBuf::zeroed(len);
        bad.copy_from_slice(&r);
        bad[len / 2] ^= 1;
        let mut h = PayloadHasher::new();
        h.advance(&bad, len);
        assert_ne!(h.digest(), Some(sum));
        let junk = AlignedBuf::zeroed(len);
        let mut h = PayloadHasher::new();
        h.advance(&junk, len);
        assert_eq!(h.digest(), None);
    }
}
