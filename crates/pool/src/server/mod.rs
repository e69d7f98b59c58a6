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
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::auth;
use super::proto;
use super::wire::conn::{
    read_body, read_body_hashed, read_frame, read_header, write_frame, ReadError,
};
use super::wire::{self, Body, Frame, Handler, Op, Status};

use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::{HistogramSnapshot, OpLatency};
use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};

mod control;
mod ops;
mod records;
mod stats;
mod stream;

use control::Control;
pub use records::check_streaming;
use records::{check_header, status_of, Cache};
use stats::Counters;
pub use stats::{PoolOp, PoolServerStats};

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
    /// Shared secret peers must prove (and the server proves back); `None`: no
    /// authentication, allowed only on a loopback `listen` unless [`Self::insecure_open`].
    pub secret: Option<Vec<u8>>,
    /// Serve a non-loopback `listen` without a secret: anyone who reaches the port may read
    /// and overwrite every object. Default `false` (such a server refuses to start).
    pub insecure_open: bool,
    /// Largest body accepted, in bytes. Default [`wire::MAX_BODY`] (64 MiB + a page).
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
    /// Longest wait for the next chunk of a streamed put's body, for a whole body, and for a
    /// peer to take an answer, before the connection is closed. Default 10 s.
    pub stall_timeout: Duration,
    /// Connections served at once, at most; more are closed as they arrive (counted as
    /// rejected). Default 4096.
    pub max_connections: usize,
    /// A connection with no request for this long is closed (clients reconnect). Default 5 min.
    pub idle_timeout: Duration,
    /// Bytes of request bodies held at once across all connections, at most: a request waits
    /// for room before its body is read. Default 2 GiB.
    pub request_memory: u64,
}

impl PoolServerConfig {
    /// Checks the values (the store's too); the error names the bad field (see
    /// [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        self.store.validate()?;
        check_streaming(self.stream_chunk, self.stall_timeout)?;
        let bad = |field, msg: &str| Err(Error::bad_field("pool server", field, msg));
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "0; at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "0; at least 1");
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "0; at least 1 ms");
        }
        if self.request_memory < wire::MAX_BODY as u64 {
            return bad(
                "request_memory",
                "below one record of the largest object (64 MiB and a page)",
            );
        }
        if self.max_body < wire::MAX_BODY {
            return bad(
                "max_body",
                "below one record of the largest object (wire::MAX_BODY)",
            );
        }
        if self.ucx && cfg!(not(feature = "ucx")) {
            return bad(
                "ucx",
                "true, but this kvtier was built without feature `ucx`",
            );
        }
        if self.secret.is_none() && !self.listen.ip().is_loopback() && !self.insecure_open {
            return Err(Error::bad_field(
                "pool server",
                "secret",
                format!(
                    "none, but the data plane listens on {}, reachable from other hosts: anyone \
                     who reaches it could read and overwrite every object. Give the servers and \
                     the agents one shared secret (pool.secret_file, agent.pool_secret_file), \
                     listen on a loopback address, or accept an open pool with \
                     pool.insecure_open = true",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Defaults around a store directory and a data-plane address.
    pub fn new(listen: SocketAddr, store: SegmentStoreConfig) -> Self {
        PoolServerConfig {
            listen,
            control: None,
            store,
            cache_bytes: 1 << 30,
            secret: None,
            insecure_open: false,
            max_body: wire::MAX_BODY,
            max_in_flight: 64,
            auth_timeout: Duration::from_secs(5),
            ucx: false,
            stream_chunk: 2 << 20,
            stall_timeout: Duration::from_secs(10),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            request_memory: 2 << 30,
        }
    }
}

/// Whole KiB of `bytes`, rounded up (the unit of [`PoolServer::request_memory`]'s permits).
fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS as u64) as usize
}

/// The server's shared state.
pub struct PoolServer {
    /// Room for request bodies, in KiB ([`PoolServerConfig::request_memory`]).
    request_memory: Arc<Semaphore>,
    store: SegmentStore,
    cache: Mutex<Cache>,
    cfg: PoolServerConfig,
    draining: AtomicBool,
    /// [`draining`](Self::draining) for those who wait for it to change.
    drain_watch: tokio::sync::watch::Sender<bool>,
    /// Accepting connections (from the start of `serve` until its shutdown).
    serving: AtomicBool,
    counters: Counters,
    latency: OpLatency<PoolOp>,
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
                server.clone() as Arc<dyn Handler>,
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
                        if server.counters.connections.get() >= server.cfg.max_connections as u64 {
                            server.counters.over_capacity.inc();
                            tracing::warn!(%peer, max = server.cfg.max_connections, "refusing a connection: at pool.max_connections");
                            drop(sock);
                            continue;
                        }
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
        cfg.validate()?;
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
            request_memory: Arc::new(Semaphore::new(kib(cfg.request_memory))),
            store,
            cache: Mutex::new(Cache::new(kvtier_core::policy::WeightedCache::new(
                kvtier_core::policy::PolicyKind::default(),
                cfg.cache_bytes,
            ))),
            cfg,
            draining: AtomicBool::new(false),
            drain_watch: tokio::sync::watch::Sender::new(false),
            serving: AtomicBool::new(false),
            counters: Counters::default(),
            latency: OpLatency::default(),
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

    /// Caches a record read when its key's writes stood at `epoch` (see [`Cache::insert_if`]).
    fn cache_insert(&self, key: BlockKey, rec: Arc<AlignedBuf>, epoch: u64) {
        let out = self.cache.lock().insert_if(key, rec, epoch);
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
            over_capacity: c.over_capacity.get(),
            stalled: c.stalled.get(),
            idle_closed: c.idle_closed.get(),
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

    /// The request latency histograms, by op ([`PoolOp`]).
    pub fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.latency.snapshot()
    }

    /// Whether the server is draining (no new writes).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the server drains, as it changes (a cluster registration follows it).
    pub fn watch_draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain_watch.subscribe()
    }

    /// Whether the server is accepting connections (serving, not shutting down).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Stops taking writes (puts answer `Draining`); reads go on. Flushes the store.
    pub fn drain(&self) -> Result<()> {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_watch.send_replace(true);
        tracing::info!("draining: writes refused, reads served");
        self.store.flush()
    }

    /// Takes writes again after [`drain`](Self::drain).
    pub fn undrain(&self) {
        self.drain_watch.send_replace(false);
        if self.draining.swap(false, Ordering::Relaxed) {
            tracing::info!("undrained: writes taken again");
        }
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
        // Handshake: Hello with a nonce, then the peer's Auth (a proof and the peer's own nonce,
        // or empty without a secret), answered with the server's proof of that nonce.
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
                    Some(secret)
                        if body.len() < auth::PROOF_LEN
                            || !auth::verify(secret, &nonce, &body[..auth::PROOF_LEN]) =>
                    {
                        Err("authentication failed: wrong or missing shared secret".to_string())
                    }
                    // The client's own nonce follows its proof: prove the secret back.
                    Some(secret) if body.len() == auth::PROOF_LEN + auth::NONCE_LEN => Ok((
                        f,
                        auth::server_proof(secret, &body[auth::PROOF_LEN..]).to_vec(),
                    )),
                    _ => Ok((f, Vec::new())),
                },
            };
            match verdict {
                Err(why) => self.reject(peer, &why, true),
                Ok((f, back)) => {
                    let mut reply = Frame::response(&f, Status::Ok, back.len() as u32)
                        .encode()
                        .to_vec();
                    reply.extend_from_slice(&back);
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
        let (stall, idle) = (self.cfg.stall_timeout, self.cfg.idle_timeout);
        let writer = tokio::spawn(async move {
            while let Some((f, body)) = rx.recv().await {
                let bytes: &[u8] = match &body {
                    Body::Empty => &[],
                    Body::Bytes(b) => b,
                    Body::Record(r) => &r[..f.body_len as usize],
                };
                // A peer that stops taking answers is closed, not served forever.
                let res =
                    tokio::time::timeout(stall, write_frame(&mut wr, &f.encode(), bytes)).await;
                if let Body::Record(r) = body {
                    me.recycle(r);
                }
                if !matches!(res, Ok(Ok(_))) {
                    if res.is_err() {
                        me.counters.stalled.inc();
                        tracing::warn!(%peer, ?stall, "closing a pool connection: the peer took no answer");
                    }
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
                r = tokio::time::timeout(idle, read_header(&mut rd, self.cfg.max_body)) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let frame = match next {
                Err(_) => {
                    self.counters.idle_closed.inc();
                    tracing::debug!(%peer, ?idle, "closing an idle pool connection");
                    break;
                }
                Ok(Ok(f)) => f,
                Ok(Err(ReadError::Closed)) => break,
                Ok(Err(e)) => {
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
            // Room for the body in the server's request memory first (so that many clients
            // sending large bodies at once cannot exhaust it), then the body, within the
            // stall timeout.
            let Ok(room) = self
                .request_memory
                .clone()
                .acquire_many_owned(kib(frame.body_len as u64) as u32)
                .await
            else {
                break;
            };
            // A put's payload is checksummed as it arrives (see `PayloadHasher`).
            let read = async {
                if frame.op == Op::Put {
                    let mut b = self.bufs.take(frame.body_len as usize);
                    let fd = std::os::fd::AsRawFd::as_raw_fd(rd.as_ref());
                    read_body_hashed(&mut rd, &mut b, Some(fd))
                        .await
                        .map(|h| (b, h))
                } else {
                    read_body(&mut rd, &frame, Some(&self.bufs))
                        .await
                        .map(|b| (b, None))
                }
            };
            let (body, hash) = match tokio::time::timeout(stall, read).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    self.reject(peer, &e.to_string(), false);
                    break;
                }
                Err(_) => {
                    self.counters.stalled.inc();
                    tracing::warn!(%peer, ?stall, "closing a pool connection: no whole body in time");
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
                let resp = s.clone().handle_request(frame, body, hash).await;
                s.counters.in_flight.sub(1);
                drop(room);
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
}

impl Handler for PoolServer {
    fn handle(
        self: Arc<Self>,
        f: Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (Frame, Body)> + Send>> {
        Box::pin(self.handle_request(f, body, hash))
    }
}
