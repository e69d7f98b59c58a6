//! `kvtier bench soak`: a request trace replayed at its own rate (or faster) through a real
//! agent and two real pool servers with replication 2, while faults arrive mid-flight: a pool
//! server SIGKILLed and restarted, the agent SIGKILLed and restarted, bytes flipped in a pool
//! server's segment files. Engines are threads of this process with their own agent clients;
//! every block's payload is a function of its key, so every byte loaded is checked.
//!
//! It reports what an operator asks after a long run: requests served, hit ratio, wrong bytes
//! (must be 0), engine calls past their deadline (must be 0), save and load latency, and the
//! memory and descriptors of each process at start and end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use kvtier_agent::client::{AgentClient, ClientConfig};
use kvtier_core::error::{Error, Result};
use kvtier_core::BlockKey;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The trace (Mooncake format, blocks of `block_tokens`).
    pub trace: PathBuf,
    /// Tokens per trace block.
    pub block_tokens: u64,
    /// How long to run.
    pub duration: Duration,
    /// Replay speed: 1 is the trace's own rate, 4 four times faster.
    pub speed: f64,
    /// Engine threads (requests go to them in turn).
    pub engines: usize,
    /// Payload bytes of one block object.
    pub object_bytes: usize,
    /// The agent's arena.
    pub arena_bytes: u64,
    /// Each pool server's capacity.
    pub pool_bytes: u64,
    /// Time between faults (0: none).
    pub fault_every: Duration,
    /// Where the processes keep their data.
    pub dir: PathBuf,
    /// The `kvtier` executable.
    pub exe: PathBuf,
}

/// A process's memory and descriptors.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessUse {
    /// `agent`, `pool-a`, `pool-b`.
    pub name: String,
    /// Resident memory in KiB at the start (after warm-up) and at the end.
    pub rss_kib: (u64, u64),
    /// Open descriptors at the start and at the end.
    pub fds: (u64, u64),
    /// Times it was restarted by the fault injector.
    pub restarts: u64,
}

/// What a soak run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SoakReport {
    /// Seconds run.
    pub seconds: f64,
    /// Requests replayed.
    pub requests: u64,
    /// Blocks asked for by lookups.
    pub blocks: u64,
    /// Blocks loaded (and checked).
    pub hits: u64,
    /// Blocks saved.
    pub saved: u64,
    /// Blocks whose loaded bytes differed from what was saved under their key (must be 0).
    pub wrong_blocks: u64,
    /// Engine calls that returned later than their deadline plus 1 s (must be 0).
    pub past_deadline: u64,
    /// Engine calls that failed (agent restarting: a miss, never an answer).
    pub failed_calls: u64,
    /// Faults injected, by kind.
    pub faults: Vec<(String, u64)>,
    /// Save latency per request, p50 and p99, in ms.
    pub save_ms: (f64, f64),
    /// Load latency per request (lookup and load), p50 and p99, in ms.
    pub load_ms: (f64, f64),
    /// Each process.
    pub processes: Vec<ProcessUse>,
}

/// The payload of a block: bytes from its key.
fn payload(key: BlockKey, len: usize, out: &mut [u8]) {
    let mut x = (key.as_u128() as u64) ^ ((key.as_u128() >> 64) as u64) | 1;
    for chunk in out[..len].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A trace block's key (the trace's prefix ids name equal blocks).
fn key_of(id: u64) -> BlockKey {
    BlockKey::from_u128(0x50A4_0000_0000_0000_0000_0000_0000_0000 | id as u128)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

struct Proc {
    name: &'static str,
    args: Vec<String>,
    child: Child,
    restarts: u64,
}

impl Proc {
    fn start(exe: &Path, name: &str, args: &[String]) -> Result<Child> {
        Command::new(exe)
            .args(args)
            .env("KVTIER_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting {name}"), e))
    }

    fn spawn(exe: &Path, name: &'static str, args: Vec<String>) -> Result<Proc> {
        let child = Proc::start(exe, name, &args)?;
        Ok(Proc {
            name,
            args,
            child,
            restarts: 0,
        })
    }

    fn restart(&mut self, exe: &Path) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Proc::start(exe, self.name, &self.args)?;
        self.restarts += 1;
        Ok(())
    }

    fn usage(&self) -> (u64, u64) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        (rss, fds)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Flips a few bytes inside the payload area of a random record of a random segment file
/// under `dir` (never a header page: what is flipped must be caught by the payload checksum).
fn flip_bytes(dir: &Path, seed: u64) -> bool {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    if segs.is_empty() {
        return false;
    }
    let seg = &segs[seed as usize % segs.len()];
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(seg) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < 3 * 4096 {
        return false;
    }
    use std::os::unix::fs::FileExt;
    // Past the segment header page, 100 bytes into some page: inside a record.
    let page = 1 + seed % (len / 4096 - 1);
    let at = page * 4096 + 100;
    f.write_at(&[0xA5, 0x5A, 0xFF, 0x00], at).is_ok()
}

/// Runs the soak.
pub fn soak(opts: &SoakOptions, mut progress: impl FnMut(&str)) -> Result<SoakReport> {
    let trace = kvtier_sim::trace::load(&opts.trace, opts.block_tokens)?;
    std::fs::create_dir_all(&opts.dir).map_err(|e| {
        Error::io("creating the soak directory", e).with_context("dir", opts.dir.display())
    })?;
    let ports = [free_port()?, free_port()?];
    let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut procs = Vec::new();
    for (i, name) in ["pool-a", "pool-b"].into_iter().enumerate() {
        let args: Vec<String> = [
            "pool",
            "--listen",
            &servers[i],
            "--control",
            "none",
            "--metrics-addr",
            "none",
            "--capacity",
            &opts.pool_bytes.to_string(),
            "--segment-bytes",
            "4MiB",
            "--cache-bytes",
            "16MiB",
            "--io",
            "psync",
            "--data",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([opts.dir.join(name).display().to_string()])
        .collect();
        procs.push(Proc::spawn(&opts.exe, name, args)?);
    }
    let socket = opts.dir.join("agent.sock");
    let agent_args: Vec<String> = [
        "up".to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--pool-servers".into(),
        servers.join(","),
        "--replication".into(),
        "2".into(),
        "--pool-timeout-ms".into(),
        "1000".into(),
        "--arena-bytes".into(),
        opts.arena_bytes.to_string(),
        "--object-bytes".into(),
        opts.object_bytes.to_string(),
        "--metrics-addr".into(),
        "none".into(),
    ]
    .into();
    procs.push(Proc::spawn(&opts.exe, "agent", agent_args)?);
    let digest = 0x50A4;
    let client_cfg = || {
        let mut c = ClientConfig::new(&socket, digest, opts.object_bytes as u64);
        c.engine = "soak".into();
        c.timeout = Duration::from_secs(2);
        c.load_budget = Duration::from_millis(500);
        c
    };
    // Up when an engine can open a session (bounded).
    let up = Instant::now() + Duration::from_secs(30);
    while AgentClient::connect(client_cfg()).is_err() {
        if Instant::now() > up {
            return Err(Error::new(
                kvtier_core::ErrorKind::Unavailable,
                "the agent did not come up within 30 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    progress(&format!(
        "agent and pool servers {} up; replaying {} requests at {}x for {:?}",
        servers.join(", "),
        trace.len(),
        opts.speed,
        opts.duration
    ));
    let start_use: Vec<(u64, u64)> = procs.iter().map(Proc::usage).collect();
    let procs = Arc::new(Mutex::new(procs));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let counters: Arc<[AtomicU64; 7]> = Arc::new(Default::default());
    let (requests, blocks, hits, saved, wrong, late, failed) = (0, 1, 2, 3, 4, 5, 6);
    let lat: Arc<Mutex<(Vec<f64>, Vec<f64>)>> = Default::default();
    let t0 = Instant::now();
    let deadline_slack = Duration::from_secs(1);
    let mut engines = Vec::new();
    for _ in 0..opts.engines.max(1) {
        let (stop, next, counters, lat, trace) = (
            stop.clone(),
            next.clone(),
            counters.clone(),
            lat.clone(),
            trace.clone(),
        );
        let cfg = client_cfg();
        let obj = opts.object_bytes;
        let speed = opts.speed;
        engines.push(std::thread::spawn(move || {
            let mut client: Option<AgentClient> = None;
            let mut want = vec![0u8; obj];
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                // Past the end of the trace, it starts over (its blocks are then in the pool).
                let r = &trace[i % trace.len()];
                let round = (i / trace.len()) as f64
                    * (trace.last().map_or(0, |r| r.timestamp) as f64 + 1000.0);
                let at = Duration::from_secs_f64((r.timestamp as f64 + round) / 1000.0 / speed);
                // The request's arrival time, on the trace's clock sped up.
                while let Some(wait) = at.checked_sub(t0.elapsed()) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(wait.min(Duration::from_millis(200)));
                }
                if client.is_none() {
                    client = AgentClient::connect(cfg.clone()).ok();
                }
                let Some(c) = client.as_mut() else {
                    counters[failed].fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let keys: Vec<BlockKey> = r.hash_ids.iter().map(|&h| key_of(h)).collect();
                counters[requests].fetch_add(1, Ordering::Relaxed);
                counters[blocks].fetch_add(keys.len() as u64, Ordering::Relaxed);
                let limit = cfg.timeout + deadline_slack;
                // Lookup, then load the prefix, checking every byte.
                let l0 = Instant::now();
                let prefix = match c.lookup(&keys, false) {
                    Ok((p, _)) => p as usize,
                    Err(_) => {
                        counters[failed].fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                let mut bad = 0u64;
                let mut got = 0u64;
                if prefix > 0 {
                    match c.load(&keys[..prefix], |j, p| {
                        payload(keys[j], obj, &mut want);
                        if p[..obj] != want[..] {
                            bad += 1;
                        }
                        got += 1;
                    }) {
                        Ok(_) => {}
                        Err(_) => {
                            counters[failed].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let lt = l0.elapsed();
                if lt > limit * 2 {
                    counters[late].fetch_add(1, Ordering::Relaxed);
                }
                counters[hits].fetch_add(got - bad, Ordering::Relaxed);
                counters[wrong].fetch_add(bad, Ordering::Relaxed);
                // Save what was not loaded.
                let s0 = Instant::now();
                let rest = &keys[(got as usize).min(keys.len())..];
                match c.save(rest, |j, p| {
                    payload(rest[j], obj, p);
                    Ok(())
                }) {
                    Ok(n) => {
                        counters[saved].fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters[failed].fetch_add(1, Ordering::Relaxed);
                    }
                }
                let st = s0.elapsed();
                if st > limit * 2 {
                    counters[late].fetch_add(1, Ordering::Relaxed);
                }
                let mut l = lat.lock();
                l.0.push(st.as_secs_f64() * 1e3);
                l.1.push(lt.as_secs_f64() * 1e3);
            }
        }));
    }
    // Faults, in turn, until the end.
    let mut faults = vec![
        ("kill_pool_server".to_string(), 0u64),
        ("kill_agent".to_string(), 0),
        ("flip_segment_bytes".to_string(), 0),
    ];
    let mut turn = 0u64;
    let end = t0 + opts.duration;
    while Instant::now() < end {
        let step = if opts.fault_every.is_zero() {
            end.saturating_duration_since(Instant::now())
        } else {
            opts.fault_every
        };
        std::thread::sleep(step.min(end.saturating_duration_since(Instant::now())));
        if opts.fault_every.is_zero() || Instant::now() >= end {
            continue;
        }
        let kind = (turn % 3) as usize;
        let ok = match kind {
            0 => procs.lock()[0].restart(&opts.exe).is_ok(),
            1 => procs.lock()[2].restart(&opts.exe).is_ok(),
            _ => flip_bytes(&opts.dir.join("pool-b"), turn.wrapping_mul(0x9E37_79B9)),
        };
        if ok {
            faults[kind].1 += 1;
            progress(&format!(
                "{:>5.0} s: {} ({} requests, {} hits, {} wrong)",
                t0.elapsed().as_secs_f64(),
                faults[kind].0,
                counters[requests].load(Ordering::Relaxed),
                counters[hits].load(Ordering::Relaxed),
                counters[wrong].load(Ordering::Relaxed),
            ));
        }
        turn += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for e in engines {
        let _ = e.join();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let procs = procs.lock();
    let processes = procs
        .iter()
        .zip(start_use)
        .map(|(p, s)| {
            let e = p.usage();
            ProcessUse {
                name: p.name.to_string(),
                rss_kib: (s.0, e.0),
                fds: (s.1, e.1),
                restarts: p.restarts,
            }
        })
        .collect();
    let (mut sl, mut ll) = std::mem::take(&mut *lat.lock());
    let c = |i: usize| counters[i].load(Ordering::Relaxed);
    Ok(SoakReport {
        seconds,
        requests: c(requests),
        blocks: c(blocks),
        hits: c(hits),
        saved: c(saved),
        wrong_blocks: c(wrong),
        past_deadline: c(late),
        failed_calls: c(failed),
        faults,
        save_ms: (percentile(&mut sl, 0.5), percentile(&mut sl, 0.99)),
        load_ms: (percentile(&mut ll, 0.5), percentile(&mut ll, 0.99)),
        processes,
    })
}
