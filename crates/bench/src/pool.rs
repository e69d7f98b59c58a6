//! `kvtier bench pool`: put and get through a pool server over loopback TCP, beside the disk's
//! raw O_DIRECT ceiling measured in the same run, and beside real peers (Mooncake Store,
//! LMCache's server, Redis) that the bench starts itself through `benches/peers/peer_bench.py`.
//!
//! Phases per object size and concurrency: `raw_write` / `raw_read` (O_DIRECT on the pool's
//! disk, same sizes and concurrency; with `--beside-tcp` also `raw_write_beside_tcp`, the same
//! writes while loopback TCP traffic runs, a reference only), the `minimal` put and get (the
//! least work a put or get over loopback TCP can do: `minimal_tcp`), `put` (acknowledged
//! once on disk), `get_disk` (cache bypassed: read from NVMe), `get_cached` (records resident in the server's DRAM cache, after
//! an untimed pass that reads them in). Every get checks every byte against what was put.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{fill, gbps, RemoveOnDrop};
use kvtier_core::block::BlockObject;
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::tier::io::{open_file, IoMode};
use kvtier_pool::client::{PoolClient, PoolClientConfig};
use kvtier_pool::placement::Member;

/// Options of `kvtier bench pool`.
#[derive(Debug, Clone)]
pub struct PoolBenchOptions {
    /// Directory on the disk to measure: the pool server's data and the raw baseline's file.
    pub dir: PathBuf,
    /// Payload bytes per object.
    pub sizes: Vec<usize>,
    /// Requests in flight from the one client.
    pub concurrency: Vec<usize>,
    /// Bytes per phase (objects = bytes / size, at least 8).
    pub total_bytes: u64,
    /// Rounds per size and concurrency: every phase (the raw disk, kvtier's, each peer's) runs
    /// once per round, in turn, so all see the same moments of a noisy machine; medians are
    /// reported.
    pub rounds: usize,
    /// A running pool server (`host:port`) instead of one started by the bench.
    pub pool: Option<String>,
    /// Its secret, if it needs one.
    pub secret: Option<Vec<u8>>,
    /// Also measure raw writes while loopback TCP traffic runs beside them
    /// (`raw_write_beside_tcp`): a reference for what a network-fed writer can get here.
    pub beside_tcp: bool,
    /// The client's transport: TCP, or UCX (the server started by the bench then serves
    /// both; build with feature `ucx`).
    pub transport: kvtier_pool::client::Transport,
    /// The `kvtier` executable that serves the embedded pool (`kvtier pool`).
    pub server_exe: PathBuf,
    /// Peers to run the same workload against: `mooncake`, `lmcache`, `redis`. A peer that
    /// fails is left out of the rest of the run (its reason is in the report's `skipped`),
    /// rather than failing again at every size, concurrency and round.
    pub peers: Vec<String>,
    /// The repository root (for `benches/peers/peer_bench.py`) and the peers' venvs folder.
    pub peers_script: PathBuf,
    /// Folder holding one venv per peer (`<dir>/<peer>/bin/python`), made by
    /// `scripts/setup_peers.sh`.
    pub peers_venvs: PathBuf,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolBenchRow {
    /// `kvtier`, `disk`, or a peer's name.
    pub system: String,
    /// `put`, `get_cached`, `get_disk`, `get`, `raw_write`, `raw_read`.
    pub op: String,
    /// Payload bytes per object.
    pub size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// GB/s (10^9 bytes per second) of payload.
    pub gbps: f64,
    /// Median latency of one request, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Objects moved.
    pub objects: usize,
    /// Objects whose bytes were checked equal (gets), over all rounds.
    pub verified: usize,
    /// GB/s of each round (`gbps` is their median).
    pub rounds: Vec<f64>,
}

/// Result of `kvtier bench pool`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolBenchReport {
    /// Every phase.
    pub rows: Vec<PoolBenchRow>,
    /// Peers that could not run, and why.
    pub skipped: Vec<(String, String)>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        // SIGTERM first: the server drains and flushes; then make sure.
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(
    opts: &PoolBenchOptions,
    data: &std::path::Path,
    cache: u64,
) -> Result<(ServerProc, String)> {
    use std::io::BufRead;
    let mut child = Command::new(&opts.server_exe)
        .args(["pool", "--listen", "127.0.0.1:0", "--control", "none"])
        .args(if opts.transport == kvtier_pool::client::Transport::Ucx {
            &["--ucx"][..]
        } else {
            &[]
        })
        .arg("--data")
        .arg(data)
        .args([
            "--capacity",
            &format!("{}", 4 * opts.total_bytes.max(256 << 20) + (1 << 30)),
        ])
        .args([
            "--segment-bytes",
            "256MiB",
            "--cache-bytes",
            &cache.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("starting `kvtier pool`", e))?;
    let out = child.stdout.take().expect("piped");
    let mut addr = None;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.map_err(|e| Error::io("reading the pool server's output", e))?;
        if let Some(a) = line.strip_prefix("kvtier pool: data ") {
            addr = Some(a.to_string());
        }
        if line.contains("objects recovered") {
            break;
        }
    }
    let addr =
        addr.ok_or_else(|| Error::new(ErrorKind::Unavailable, "the pool server did not start"))?;
    Ok((ServerProc(child), addr))
}

/// Runs `n` operations with `conc` in flight on the client's runtime; per-op latencies.
fn run_ops<F, Fut>(
    client: &Arc<PoolClient>,
    n: usize,
    conc: usize,
    op: F,
) -> Result<(Duration, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    client.block(async move {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conc.max(1) {
            let (op, next) = (op.clone(), next.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, Error>(lat);
                    }
                    let s = Instant::now();
                    op(i).await?;
                    lat.push(s.elapsed().as_secs_f64() * 1e6);
                }
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            all.extend(r.map_err(|e| Error::new(ErrorKind::Io, format!("bench task: {e}")))??);
        }
        Ok((t0.elapsed(), all))
    })
}

fn key(size: usize, i: usize) -> BlockKey {
    BlockKey::from_u128(((size as u128) << 64) | (i as u128 + 1))
}

/// Streams bytes over a loopback TCP connection (one thread sending 4 MiB writes, one
/// receiving) until `stop`: the network half of a put, without the put.
fn loopback_traffic(stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding the loopback traffic socket", e))?;
    let addr = l
        .local_addr()
        .map_err(|e| Error::io("loopback traffic", e))?;
    // Connected before the receiver accepts (the listen backlog holds it): a failed connect
    // returns here instead of leaving the receiver waiting.
    let mut c = std::net::TcpStream::connect(addr)
        .map_err(|e| Error::io("connecting the loopback traffic socket", e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = vec![0u8; 4 << 20];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        let buf = vec![7u8; 4 << 20];
        let sent = (|| {
            while !stop.load(Ordering::Relaxed) {
                c.write_all(&buf)?;
            }
            Ok(())
        })();
        // The receiver reads until the end of the stream: end it, whatever happened.
        let _ = c.shutdown(std::net::Shutdown::Both);
        sent.map_err(|e: std::io::Error| Error::io("sending loopback traffic", e))
    })
}

/// Raw O_DIRECT writes of `n` records of `size` payload bytes, `conc` threads, while loopback TCP
/// traffic runs beside them: what the disk gives a writer whose bytes cross the same machine's
/// network stack (on these 2-core machines the two compete). A reference, not the ceiling.
fn raw_write_beside_tcp(
    dir: &std::path::Path,
    n: usize,
    size: usize,
    conc: usize,
) -> Result<(f64, Vec<f64>)> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let traffic = s.spawn(|| loopback_traffic(&stop));
        let res = raw_disk(dir, n, size, conc, false);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        traffic.join().expect("traffic thread")?;
        res.map(|(w, _, wl, _)| (w, wl))
    })
}

/// The least work a put or a get through loopback TCP can do, on this disk and these cores:
/// `conc` connections, a thread at each end of each (blocking sockets, sized as the pool's);
/// a put sends a record, the server reads it into a page-aligned buffer (hashing it as it
/// arrives), writes it with O_DIRECT and answers one byte; a get is answered with the record
/// read with O_DIRECT, which the client reads (hashing it as it arrives) and checks. No
/// framing, no index, no space management, no runtime: a reference for what a network-fed
/// pool can reach here, measured beside the disk alone. Returns (put GB/s, get GB/s, put
/// latencies, get latencies) in µs.
fn minimal_tcp(
    dir: &std::path::Path,
    n: usize,
    size: usize,
    conc: usize,
) -> Result<(f64, f64, Vec<f64>, Vec<f64>)> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let record = kvtier_core::block::record_len(size);
    let (io, f, path) = scratch_file(dir, "minimal", n * record)?;
    let _remove = RemoveOnDrop(path);
    let mut rec = AlignedBuf::zeroed(record);
    fill(&mut rec, 9);
    let expect = xxhash_rust::xxh3::xxh3_64(&rec);
    let conc = conc.max(1);
    let net = |e| Error::io("minimal loopback put/get", e);
    let l = TcpListener::bind("127.0.0.1:0").map_err(net)?;
    let addr = l.local_addr().map_err(net)?;
    // Reads exactly `buf.len()` bytes, hashing them as they come.
    fn read_hashed(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<u64> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut at = 0;
        while at < buf.len() {
            let k = s.read(&mut buf[at..])?;
            if k == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            h.update(&buf[at..at + k]);
            at += k;
        }
        Ok(h.digest())
    }
    // Every client connects before the server's thread starts accepting (the listen backlog,
    // 128 connections or more, holds them; the bench runs up to a few dozen): a failed connect
    // then returns here instead of leaving that thread waiting.
    let conns: Vec<parking_lot::Mutex<TcpStream>> = (0..conc)
        .map(|_| {
            let c = TcpStream::connect(addr)?;
            c.set_nodelay(true)?;
            kvtier_pool::wire::size_socket_buffers(std::os::fd::AsRawFd::as_raw_fd(&c));
            Ok(parking_lot::Mutex::new(c))
        })
        .collect::<std::io::Result<_>>()
        .map_err(net)?;
    std::thread::scope(|sc| {
        let (f, io) = (&f, &io);
        let server = sc.spawn(move || -> std::io::Result<()> {
            let mut conns = Vec::new();
            for _ in 0..conc {
                let (c, _) = l.accept()?;
                conns.push(c);
            }
            std::thread::scope(|sc| {
                let hs: Vec<_> = conns
                    .into_iter()
                    .map(|mut c| {
                        sc.spawn(move || -> std::io::Result<()> {
                            kvtier_pool::wire::size_socket_buffers(
                                std::os::fd::AsRawFd::as_raw_fd(&c),
                            );
                            let mut buf = AlignedBuf::zeroed(record);
                            let mut req = [0u8; 9];
                            // Until the client hangs up.
                            while c.read_exact(&mut req).is_ok() {
                                let at = u64::from_le_bytes(req[1..].try_into().expect("8"));
                                if req[0] == b'p' {
                                    if read_hashed(&mut c, &mut buf)? != expect {
                                        return Err(std::io::Error::other("a bad record"));
                                    }
                                    io.write_at(f, &buf, at)?;
                                    c.write_all(&[1])?;
                                } else {
                                    io.read_at(f, &mut buf, at)?;
                                    c.write_all(&buf)?;
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .try_for_each(|h| h.join().expect("minimal server thread"))
            })
        });
        let bufs: Vec<parking_lot::Mutex<AlignedBuf>> = (0..conc)
            .map(|_| parking_lot::Mutex::new(AlignedBuf::zeroed(record)))
            .collect();
        let lat = parking_lot::Mutex::new(Vec::new());
        let run = |op: u8| -> Result<Duration> {
            lat.lock().clear();
            super::run_parallel(n, conc, |t, i| {
                let s = Instant::now();
                let mut c = conns[t].lock();
                let mut req = [op; 9];
                req[1..].copy_from_slice(&((i * record) as u64).to_le_bytes());
                let r = (|| -> std::io::Result<()> {
                    c.write_all(&req)?;
                    if op == b'p' {
                        c.write_all(&rec)?;
                        c.read_exact(&mut [0u8])
                    } else if read_hashed(&mut c, &mut bufs[t].lock())? != expect {
                        Err(std::io::Error::other("read back different bytes"))
                    } else {
                        Ok(())
                    }
                })();
                lat.lock().push(s.elapsed().as_secs_f64() * 1e6);
                r.map_err(net)
            })
        };
        let dp = run(b'p');
        let pl = lat.lock().clone();
        let dg = dp.as_ref().ok().map(|_| run(b'g'));
        let gl = lat.lock().clone();
        // Hanging up ends the server's threads.
        for c in &conns {
            let _ = c.lock().shutdown(std::net::Shutdown::Both);
        }
        let served = server.join().expect("minimal server");
        let (dp, dg) = (dp?, dg.expect("ran after the puts")?);
        served.map_err(net)?;
        let payload = (n * size) as u64;
        Ok((gbps(payload, dp), gbps(payload, dg), pl, gl))
    })
}

/// A file `name` in `dir` opened for O_DIRECT and preallocated to `bytes`, with the I/O engine
/// the pool's server picks (`auto`), for the raw references.
fn scratch_file(
    dir: &std::path::Path,
    name: &str,
    bytes: usize,
) -> Result<(
    Arc<dyn kvtier_core::tier::io::IoEngine>,
    std::fs::File,
    PathBuf,
)> {
    let io = IoMode::Auto.build()?;
    let path = dir.join(name);
    let (f, _) =
        open_file(&path, true, true, true).map_err(|e| Error::io("opening the raw file", e))?;
    io.allocate(&f, bytes as u64)
        .map_err(|e| Error::io("preallocating the raw file", e))?;
    Ok((io, f, path))
}

/// Raw O_DIRECT writes of `n` records of `size` payload bytes, `conc` threads, then (when `read`)
/// reads of them: the disk's ceiling for the same bytes.
fn raw_disk(
    dir: &std::path::Path,
    n: usize,
    size: usize,
    conc: usize,
    read: bool,
) -> Result<(f64, f64, Vec<f64>, Vec<f64>)> {
    let record = kvtier_core::block::record_len(size);
    let (io, f, path) = scratch_file(dir, "raw", n * record)?;
    let _remove = RemoveOnDrop(path);
    let mut buf = AlignedBuf::zeroed(record);
    fill(&mut buf, 7);
    let lat = parking_lot::Mutex::new(Vec::new());
    // One read buffer per thread, reused (as the pool's buffers are).
    let bufs: Vec<parking_lot::Mutex<AlignedBuf>> = (0..conc.max(1))
        .map(|_| parking_lot::Mutex::new(AlignedBuf::zeroed(record)))
        .collect();
    let run = |write: bool| -> Result<Duration> {
        lat.lock().clear();
        super::run_parallel(n, conc, |t, i| {
            let s = Instant::now();
            let r = if write {
                io.write_at(&f, &buf, (i * record) as u64)
            } else {
                io.read_at(&f, &mut bufs[t].lock(), (i * record) as u64)
            };
            lat.lock().push(s.elapsed().as_secs_f64() * 1e6);
            r.map_err(|e| Error::io("raw I/O", e))
        })
    };
    let payload = (n * size) as u64;
    let dw = run(true)?;
    let wl = lat.lock().clone();
    let (r, rl) = if read {
        let dr = run(false)?;
        (gbps(payload, dr), lat.lock().clone())
    } else {
        (0.0, Vec::new())
    };
    Ok((gbps(payload, dw), r, wl, rl))
}

/// Runs the benchmark.
pub fn pool(opts: &PoolBenchOptions, mut progress: impl FnMut(&str)) -> Result<PoolBenchReport> {
    let scratch = opts
        .dir
        .join(format!("kvtier-bench-pool-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| {
        Error::io("creating the bench directory", e).with_context("dir", scratch.display())
    })?;
    let _cleanup = RemoveOnDrop(scratch.clone());
    let max_size = opts.sizes.iter().copied().max().unwrap_or(4 << 20);
    let max_n = (opts.total_bytes as usize / opts.sizes.iter().copied().min().unwrap_or(1)).max(8);
    let cache = (max_n * kvtier_core::block::record_len(max_size))
        .min(opts.total_bytes as usize * 2) as u64
        + (64 << 20);
    let (_server, addr) = match &opts.pool {
        Some(a) => (None, a.clone()),
        None => {
            progress("starting `kvtier pool` on 127.0.0.1");
            let (s, a) = start_server(opts, &scratch.join("pool"), cache)?;
            (Some(s), a)
        }
    };
    let mut cfg = PoolClientConfig::new(vec![Member { addr, weight: 1.0 }]);
    cfg.secret = opts.secret.clone();
    cfg.transport = opts.transport;
    cfg.timeout = Duration::from_secs(30);
    // One client with as many connections as requests in flight, as the peers get (LMCache: one
    // connector per request in flight; Redis: a pool of that many connections).
    cfg.conns_per_member = opts.concurrency.iter().copied().max().unwrap_or(1).max(1);
    cfg.buffer_pool_bytes = (opts.total_bytes as usize) * 2 + (256 << 20);
    let client = PoolClient::new(cfg)?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (si, &size) in opts.sizes.iter().enumerate() {
        let n = ((opts.total_bytes / size as u64) as usize).max(8);
        // A handful of distinct payloads, resealed per key (so each object is unique).
        let base: Vec<Arc<AlignedBuf>> = (0..4)
            .map(|j| {
                let mut o = BlockObject::new(size)?;
                fill(o.payload_mut(), j as u64 + 1);
                o.seal(key(size, 0), 0, 0);
                Ok(Arc::new(o.into_record()))
            })
            .collect::<Result<_>>()?;
        for &conc in &opts.concurrency {
            // Per (system, op), in order of first appearance: every round's measurement.
            let mut acc: Vec<(String, Vec<Measured>)> = Vec::new();
            let mut add = |sys: &str, m: Measured| match acc
                .iter_mut()
                .find(|a| a.0 == sys && a.1[0].op == m.op)
            {
                Some(a) => a.1.push(m),
                None => acc.push((sys.into(), vec![m])),
            };
            for round in 0..opts.rounds.max(1) {
                let tag = format!(
                    "{} KiB x{n}, {conc} in flight, round {}/{}",
                    size >> 10,
                    round + 1,
                    opts.rounds.max(1)
                );
                if opts.pool.is_none() {
                    progress(&format!("{tag}: raw O_DIRECT write/read"));
                    let (w, r, wl, rl) = raw_disk(&scratch, n, size, conc, true)?;
                    add("disk", Measured::new("raw_write", w, wl, 0));
                    add("disk", Measured::new("raw_read", r, rl, 0));
                    progress(&format!("{tag}: minimal put/get over loopback TCP"));
                    let (p, g, pl, gl) = minimal_tcp(&scratch, n, size, conc)?;
                    add("minimal", Measured::new("put", p, pl, 0));
                    add("minimal", Measured::new("get", g, gl, n));
                    if opts.beside_tcp {
                        progress(&format!("{tag}: raw O_DIRECT write beside loopback TCP"));
                        let (w, wl) = raw_write_beside_tcp(&scratch, n, size, conc)?;
                        add("disk", Measured::new("raw_write_beside_tcp", w, wl, 0));
                    }
                }
                let base_key = ((si * 100 + conc) * 100 + round) * 1_000_000;
                for m in kvtier_round(&client, &base, size, n, conc, base_key, &tag, &mut progress)?
                {
                    add("kvtier", m);
                }
                for peer in &opts.peers {
                    if skipped.iter().any(|(p, _)| p == peer) {
                        continue;
                    }
                    progress(&format!("{tag}: peer {peer}"));
                    match run_peer(opts, peer, size, n, conc) {
                        Ok(rs) => {
                            for m in rs {
                                add(peer, m);
                            }
                        }
                        Err(e) => {
                            progress(&format!("peer {peer} skipped: {e}"));
                            skipped.push((peer.clone(), e.to_string()));
                        }
                    }
                }
            }
            for (system, ms) in acc {
                let per_round: Vec<f64> = ms.iter().map(|m| m.gbps).collect();
                let mut lat: Vec<f64> = ms.iter().flat_map(|m| m.latencies.clone()).collect();
                rows.push(PoolBenchRow {
                    system,
                    op: ms[0].op.clone(),
                    size,
                    concurrency: conc,
                    gbps: super::median(&per_round),
                    p50_us: pct(&mut lat, 0.5),
                    p99_us: pct(&mut lat, 0.99),
                    objects: n,
                    verified: ms.iter().map(|m| m.verified).sum(),
                    rounds: per_round,
                });
            }
        }
    }
    Ok(PoolBenchReport { rows, skipped })
}

/// One round of kvtier's phases on `n` objects of `size` bytes, `conc` in flight: `put`,
/// `get_disk`, `get_cached`, each as (op, GB/s, latencies in µs, objects verified); the objects
/// are deleted after.
#[allow(clippy::too_many_arguments)]
fn kvtier_round(
    client: &Arc<PoolClient>,
    base: &[Arc<AlignedBuf>],
    size: usize,
    n: usize,
    conc: usize,
    base_key: usize,
    tag: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Measured>> {
    let payload = (n * size) as u64;
    let records: Arc<Vec<Arc<AlignedBuf>>> = Arc::new(
        (0..n)
            .map(|i| {
                let mut b = AlignedBuf::zeroed(base[i % base.len()].len());
                b.copy_from_slice(&base[i % base.len()]);
                let mut o = BlockObject::from_record(b, None, None)?;
                o.seal(key(size, base_key + i), 0, 0);
                Ok(Arc::new(o.into_record()))
            })
            .collect::<Result<_>>()?,
    );
    let k = move |i: usize| key(size, base_key + i);
    let mut out = Vec::new();
    progress(&format!("{tag}: put"));
    let (c, recs) = (client.clone(), records.clone());
    let (d, lat) = run_ops(client, n, conc, move |i| {
        let (c, r) = (c.clone(), recs[i].clone());
        async move { c.put(r).await.map(|_| ()) }
    })?;
    out.push(Measured::new("put", gbps(payload, d), lat, 0));
    for (op, bypass) in [("get_disk", true), ("get_cached", false)] {
        if !bypass {
            // Bring every object into the server's DRAM cache (write-around: reads fill it).
            progress(&format!("{tag}: warming the DRAM cache"));
            let c = client.clone();
            client.block(async move {
                for i in 0..n {
                    if let Ok(Some(b)) = c.get(k(i), false).await {
                        c.recycle(b);
                    }
                }
            });
        }
        progress(&format!("{tag}: {op}"));
        // As the peers do: every byte is compared after the timed phase (the client itself
        // verifies each record's checksum inside it), into buffers whose pages are already
        // mapped.
        client.prewarm(n, kvtier_core::block::record_len(size));
        let got: Arc<parking_lot::Mutex<Vec<Option<AlignedBuf>>>> =
            Arc::new(parking_lot::Mutex::new((0..n).map(|_| None).collect()));
        let (c, g) = (client.clone(), got.clone());
        let (d, lat) = run_ops(client, n, conc, move |i| {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let b = c.get(k(i), bypass).await?.ok_or_else(|| {
                    Error::corrupt(format!("bench object {i} missing from the pool"))
                })?;
                g.lock()[i] = Some(b);
                Ok(())
            }
        })?;
        let len = kvtier_core::block::record_len(size);
        let mut verified = 0;
        for (i, b) in got.lock().drain(..).enumerate() {
            let b = b.expect("every get stored its buffer");
            if b[..len] != records[i][..len] {
                return Err(Error::corrupt(format!(
                    "bench object {i} read back different bytes"
                )));
            }
            verified += 1;
            client.recycle(b);
        }
        out.push(Measured::new(op, gbps(payload, d), lat, verified));
    }
    // Free the pool's cache for the next round.
    let c = client.clone();
    client.block(async move {
        for i in 0..n {
            let _ = c.delete(k(i)).await;
        }
    });
    Ok(out)
}

/// One phase of one round: op, GB/s, every request's latency (µs), objects verified.
struct Measured {
    op: String,
    gbps: f64,
    latencies: Vec<f64>,
    verified: usize,
}

impl Measured {
    fn new(op: &str, gbps: f64, latencies: Vec<f64>, verified: usize) -> Self {
        Measured {
            op: op.into(),
            gbps,
            latencies,
            verified,
        }
    }
}

/// Runs one peer through `benches/peers/peer_bench.py` in its venv; rows `put` and `get`.
fn run_peer(
    opts: &PoolBenchOptions,
    peer: &str,
    size: usize,
    n: usize,
    conc: usize,
) -> Result<Vec<Measured>> {
    let python = opts.peers_venvs.join(peer).join("bin/python");
    if !python.exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no venv for {peer} at {} (run scripts/setup_peers.sh)",
                python.display()
            ),
        ));
    }
    let out = Command::new(&python)
        .arg(&opts.peers_script)
        .args([
            "--system",
            peer,
            "--size",
            &size.to_string(),
            "--count",
            &n.to_string(),
        ])
        .args(["--concurrency", &conc.to_string(), "--json"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io(format!("running the {peer} peer bench"), e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!("the {peer} peer bench failed ({})", out.status),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!("the {peer} peer bench printed no JSON"),
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Error::corrupt(format!("the {peer} peer bench's JSON: {e}")))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mism = v["mismatches"].as_u64().unwrap_or(0);
    if mism > 0 {
        return Err(Error::corrupt(format!(
            "{peer} read back {mism} objects with wrong bytes"
        )));
    }
    let verified = v["verified"].as_u64().unwrap_or(0) as usize;
    let mk = |op: &str, ver: usize| Measured {
        op: op.into(),
        gbps: f(&format!("{op}_gbps")),
        latencies: v[format!("{op}_latencies_us")]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default(),
        verified: ver,
    };
    Ok(vec![mk("put", 0), mk("get", verified)])
}
