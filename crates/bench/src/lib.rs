//! The measurement programs behind `kvtier bench ...`: each compares kvtier against the ceiling
//! of the same machine measured in the same run, and reports both and their ratio.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod pool;
pub mod soak;

use kvtier_core::block::BlockObject;
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, Result};
use kvtier_core::key::{BlockKey, Namespace, NamespaceParams};
use kvtier_core::tier::io::{open_file, IoMode};
use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};
use kvtier_core::KvDtype;

/// Options of `kvtier bench disk`.
#[derive(Debug, Clone)]
pub struct DiskBenchOptions {
    /// Directory on the disk to measure (a scratch folder is made inside and removed).
    pub dir: PathBuf,
    /// Payload bytes per object. Default: `2 MiB`.
    pub object_bytes: usize,
    /// Bytes written and read per phase and round. Default: `1 GiB`.
    pub total_bytes: u64,
    /// Rounds; each runs raw and store back to back, and medians are reported. Default: `3`.
    pub rounds: usize,
    /// Concurrent requests (threads) for both raw and store. Default: `1`.
    pub threads: usize,
    /// I/O engine of the store (and of the raw baseline). Default: `auto`.
    pub io: IoMode,
}

/// Median throughput of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `raw_write`, `store_put`, `raw_read`, `store_get`.
    pub name: &'static str,
    /// Median GB/s (10^9 bytes per second) of payload bytes.
    pub gbps: f64,
    /// Every round's GB/s.
    pub rounds: Vec<f64>,
}

/// Result of `kvtier bench disk`.
#[derive(Debug, Clone, Serialize)]
pub struct DiskBenchReport {
    /// Payload bytes per object.
    pub object_bytes: usize,
    /// Objects per phase and round.
    pub objects: usize,
    /// Threads.
    pub threads: usize,
    /// I/O engine used, and whether O_DIRECT was in effect.
    pub io: String,
    /// Whether files were opened with O_DIRECT.
    pub direct: bool,
    /// The four phases.
    pub phases: Vec<Phase>,
    /// store_put / raw_write.
    pub put_ratio: f64,
    /// store_get / raw_read.
    pub get_ratio: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Runs `f(i)` for `i in 0..n` on `threads` threads (thread `t` takes `t, t+threads, ...`).
fn run_parallel(
    n: usize,
    threads: usize,
    f: impl Fn(usize, usize) -> Result<()> + Sync,
) -> Result<Duration> {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || (t..n).step_by(threads).try_for_each(|i| f(t, i)))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("bench thread panicked"))
    })?;
    Ok(t0.elapsed())
}

/// Measures the segment store against raw O_DIRECT I/O of the same bytes on the same disk.
pub fn disk(opts: &DiskBenchOptions, mut progress: impl FnMut(&str)) -> Result<DiskBenchReport> {
    let threads = opts.threads.max(1);
    let scratch = opts
        .dir
        .join(format!("kvtier-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| {
        Error::io("creating the bench directory", e).with_context("dir", scratch.display())
    })?;
    let _cleanup = RemoveOnDrop(scratch.clone());
    // One pool of object buffers per thread, resealed with a new key per put (so the checksum
    // is part of the measured put, as it is in real use).
    let per_thread = 4;
    let mut pools: Vec<Vec<BlockObject>> = (0..threads)
        .map(|t| {
            (0..per_thread)
                .map(|j| {
                    let mut o = BlockObject::new(opts.object_bytes)?;
                    fill(o.payload_mut(), (t * per_thread + j) as u64);
                    Ok(o)
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let record = pools[0][0].record().len();
    let n = (opts.total_bytes / opts.object_bytes as u64).max(1) as usize;
    let payload_total = (n * opts.object_bytes) as u64;
    let io = opts.io.build()?;

    // Raw baseline: records written back to back with O_DIRECT into a new preallocated file
    // each round, as the store writes into new preallocated segments (overwriting blocks that
    // were written before is faster on ext4/xfs than converting unwritten extents, so reusing
    // one file would compare unlike with like).
    let new_raw = |round: usize| -> Result<(std::fs::File, bool)> {
        let path = scratch.join(format!("raw-{round}"));
        let (f, direct) =
            open_file(&path, true, true, true).map_err(|e| Error::io("opening the raw file", e))?;
        io.allocate(&f, (n * record) as u64)
            .map_err(|e| Error::io("preallocating the raw file", e))?;
        Ok((f, direct))
    };
    let mut direct = true;

    let mut cfg = SegmentStoreConfig::new(scratch.join("store"));
    cfg.create_dir = true;
    cfg.io = opts.io;
    cfg.segment_bytes = (256u64 << 20).max(4 * record as u64);
    let seg_usable = cfg.segment_bytes - 4096;
    let segments = (n as u64 * record as u64).div_ceil(seg_usable - seg_usable % record as u64) + 2;
    cfg.capacity_bytes = segments * cfg.segment_bytes * (opts.rounds.max(1) as u64 + 1);
    let store = SegmentStore::open(cfg)?;
    let (io_name, store_direct) = store.io_mode();

    let mut rounds: [Vec<f64>; 4] = Default::default();
    let key =
        |round: usize, i: usize| BlockKey::from_u128(((round as u128) << 64) | (i as u128 + 1));
    let pools_cell: Vec<parking_lot::Mutex<Vec<BlockObject>>> =
        pools.drain(..).map(parking_lot::Mutex::new).collect();
    for round in 0..opts.rounds.max(1) {
        let (raw, raw_direct) = new_raw(round)?;
        direct &= raw_direct;
        progress(&format!(
            "round {}/{}: raw O_DIRECT write",
            round + 1,
            opts.rounds
        ));
        let d = run_parallel(n, threads, |t, i| {
            let pool = pools_cell[t].lock();
            io.write_at(&raw, pool[i % per_thread].record(), (i * record) as u64)
                .map_err(|e| Error::io("raw write", e))
        })?;
        rounds[0].push(gbps(payload_total, d));
        progress(&format!("round {}/{}: store put", round + 1, opts.rounds));
        let d = run_parallel(n, threads, |t, i| {
            let mut pool = pools_cell[t].lock();
            let o = &mut pool[i % per_thread];
            o.seal(key(round, i), 0, 0);
            store.put(o)
        })?;
        rounds[1].push(gbps(payload_total, d));
        let bufs: Vec<parking_lot::Mutex<AlignedBuf>> = (0..threads)
            .map(|_| parking_lot::Mutex::new(AlignedBuf::zeroed(record)))
            .collect();
        progress(&format!(
            "round {}/{}: raw O_DIRECT read",
            round + 1,
            opts.rounds
        ));
        let d = run_parallel(n, threads, |t, i| {
            let mut b = bufs[t].lock();
            io.read_at(&raw, &mut b, (i * record) as u64)
                .map_err(|e| Error::io("raw read", e))
        })?;
        rounds[2].push(gbps(payload_total, d));
        progress(&format!(
            "round {}/{}: store get (checksum verified)",
            round + 1,
            opts.rounds
        ));
        let d = run_parallel(n, threads, |t, i| {
            let mut b = bufs[t].lock();
            match store.get_into(key(round, i), &mut b)? {
                Some(_) => Ok(()),
                None => Err(Error::corrupt(format!(
                    "bench object {i} of round {round} missing from the store"
                ))),
            }
        })?;
        rounds[3].push(gbps(payload_total, d));
        drop(raw);
        let _ = std::fs::remove_file(scratch.join(format!("raw-{round}")));
    }
    let names = ["raw_write", "store_put", "raw_read", "store_get"];
    let phases: Vec<Phase> = names
        .iter()
        .zip(rounds.iter())
        .map(|(name, r)| Phase {
            name,
            gbps: median(r),
            rounds: r.clone(),
        })
        .collect();
    Ok(DiskBenchReport {
        object_bytes: opts.object_bytes,
        objects: n,
        threads,
        io: io_name.to_string(),
        direct: direct && store_direct,
        put_ratio: phases[1].gbps / phases[0].gbps,
        get_ratio: phases[3].gbps / phases[2].gbps,
        phases,
    })
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_err() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// One row of `kvtier bench keys`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyBenchRow {
    /// Tokens per block.
    pub tokens_per_block: u32,
    /// Tokens per prompt.
    pub prompt_tokens: usize,
    /// Median GB/s of token ids (4 bytes a token) hashed into keys, one core.
    pub gbps: f64,
    /// Median nanoseconds per block key.
    pub ns_per_block: f64,
}

/// Measures block-key hashing on one core for several block sizes.
pub fn keys(prompt_tokens: usize, seconds_per_size: f64) -> Result<Vec<KeyBenchRow>> {
    let tokens: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 128_256)
        .collect();
    let mut rows = Vec::new();
    for b in [16u32, 32, 128, 256, 512] {
        let ns = Namespace::new(&NamespaceParams::new(
            "bench/model",
            KvDtype::Bf16,
            "vllm-cpu",
            b,
        ))?;
        let blocks = prompt_tokens / b as usize;
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds_per_size);
        while Instant::now() < deadline || samples.len() < 5 {
            let t0 = Instant::now();
            let mut iters = 0u64;
            while t0.elapsed() < Duration::from_millis(50) {
                std::hint::black_box(ns.block_keys(std::hint::black_box(&tokens)));
                iters += 1;
            }
            samples.push(t0.elapsed().as_secs_f64() / iters as f64);
        }
        let per_prompt = median(&samples);
        rows.push(KeyBenchRow {
            tokens_per_block: b,
            prompt_tokens,
            gbps: (blocks * b as usize * 4) as f64 / per_prompt / 1e9,
            ns_per_block: per_prompt * 1e9 / blocks as f64,
        });
    }
    Ok(rows)
}

/// The directory `kvtier bench disk` uses by default: the current directory (so the disk under
/// test is the one the user is on).
pub fn default_bench_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_path_buf())
}

/// Options of `kvtier bench abi`.
#[derive(Debug, Clone)]
pub struct AbiBenchOptions {
    /// Blocks per save/load round. Default: `128`.
    pub blocks: usize,
    /// Rounds (medians reported). Default: `5`.
    pub rounds: usize,
    /// Lookups of a 128-block prefix timed for the latency percentiles. Default: `2000`.
    pub lookups: usize,
}

/// Result of `kvtier bench abi`.
#[derive(Debug, Clone, Serialize)]
pub struct AbiBenchReport {
    /// Payload bytes per block object.
    pub object_bytes: u64,
    /// Blocks per round.
    pub blocks: usize,
    /// Single-thread memcpy of the same bytes, GB/s (median).
    pub memcpy_gbps: f64,
    /// Save (gather from engine memory into the shared arena, seal, index), GB/s (median).
    pub save_gbps: f64,
    /// Load (pin, scatter from the arena into engine memory), GB/s (median).
    pub load_gbps: f64,
    /// save / memcpy.
    pub save_ratio: f64,
    /// load / memcpy.
    pub load_ratio: f64,
    /// Lookup of a 128-block prefix: median microseconds.
    pub lookup_p50_us: f64,
    /// Lookup of a 128-block prefix: 99th percentile microseconds.
    pub lookup_p99_us: f64,
}

/// Measures the engine path through a real agent (in this process, on a Unix socket in a
/// temporary directory, memory only) against a plain single-thread memcpy of the same bytes:
/// save and load of 2 MiB blocks of a vLLM CPU layout, and lookup latency.
pub fn abi(opts: &AbiBenchOptions, mut progress: impl FnMut(&str)) -> Result<AbiBenchReport> {
    use kvtier_agent::client::{AgentClient, ClientConfig};
    use kvtier_agent::AgentConfig;
    use kvtier_core::layout::{KvLayout, LayoutKind};
    use kvtier_core::tier::host::HostArenaConfig;

    let n = opts.blocks.max(1);
    // 16 layers x 64 tokens x 8 KV heads x 128 (K+V of head size 64) x bf16 = 2 MiB a block.
    let layout = KvLayout::new(LayoutKind::VllmCpu, 16, n as u32, 64, 8, 64, KvDtype::Bf16)?;
    let obj = layout.object_len();
    let dir = std::env::temp_dir().join(format!("kvtier-bench-abi-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let socket = dir.join("agent.sock");
    let cfg = AgentConfig {
        socket: socket.clone(),
        arena: HostArenaConfig {
            capacity_bytes: (n as u64 + 4) * kvtier_core::block::record_len(obj as usize) as u64,
            payload_len: obj as usize,
            ..Default::default()
        },
        pool: None,
        write_queue: 16,
        shutdown_drain: std::time::Duration::from_secs(10),
        access: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::io("agent runtime", e))?;
        rt.block_on(kvtier_agent::run(cfg, async {
            let _ = stop_rx.await;
        }))?;
        Ok(())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match AgentClient::connect(ClientConfig::new(&socket, layout.digest(), obj)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let layer_bytes = layout.layer_bytes() as usize;
    let mut engine: Vec<Vec<u8>> = (0..16)
        .map(|l| {
            let mut v = vec![0u8; layer_bytes];
            fill(&mut v, l as u64);
            v
        })
        .collect();
    let mut copy_dst = vec![0u8; n * obj as usize];
    let mut rounds: [Vec<f64>; 3] = Default::default();
    let total = (n as u64 * obj) as f64;
    for round in 0..opts.rounds.max(1) {
        progress(&format!("round {}/{}", round + 1, opts.rounds));
        // Baseline: one thread copying the same bytes (each block's per-layer slices).
        let t0 = Instant::now();
        let seg = layer_bytes / n;
        let mut off = 0;
        for b in 0..n {
            for layer in &engine {
                copy_dst[off..off + seg].copy_from_slice(&layer[b * seg..(b + 1) * seg]);
                off += seg;
            }
        }
        std::hint::black_box(&copy_dst);
        rounds[0].push(total / t0.elapsed().as_secs_f64() / 1e9);
        let keys: Vec<BlockKey> = (0..n)
            .map(|i| BlockKey::from_u128(((round as u128 + 1) << 64) | i as u128))
            .collect();
        let views: Vec<&[u8]> = engine.iter().map(|l| l.as_slice()).collect();
        let t0 = Instant::now();
        let stored = client.save(&keys, |i, payload| layout.gather(&views, i as u32, payload))?;
        rounds[1].push(total / t0.elapsed().as_secs_f64() / 1e9);
        if stored as usize != n {
            return Err(Error::new(
                kvtier_core::ErrorKind::NoSpace,
                format!("only {stored} of {n} blocks were stored"),
            ));
        }
        let mut views: Vec<&mut [u8]> = engine.iter_mut().map(|l| l.as_mut_slice()).collect();
        let t0 = Instant::now();
        let mut bad = 0;
        let got = client.load(&keys, |i, payload| {
            if layout
                .scatter(payload, &mut views, (n - 1 - i) as u32)
                .is_err()
            {
                bad += 1;
            }
        })?;
        rounds[2].push(total / t0.elapsed().as_secs_f64() / 1e9);
        if bad > 0 || got.iter().any(|d| !d) {
            return Err(Error::corrupt("a block was not delivered during the bench"));
        }
    }
    progress("lookups");
    let keys: Vec<BlockKey> = (0..128.min(n))
        .map(|i| BlockKey::from_u128((1u128 << 64) | i as u128))
        .collect();
    let mut lat = Vec::with_capacity(opts.lookups);
    for _ in 0..opts.lookups.max(1) {
        let t0 = Instant::now();
        std::hint::black_box(client.lookup(&keys, false)?);
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    drop(client);
    let _ = stop_tx.send(());
    let _ = server.join();
    let (m, s, l) = (median(&rounds[0]), median(&rounds[1]), median(&rounds[2]));
    Ok(AbiBenchReport {
        object_bytes: obj,
        blocks: n,
        memcpy_gbps: m,
        save_gbps: s,
        load_gbps: l,
        save_ratio: s / m,
        load_ratio: l / m,
        lookup_p50_us: lat[lat.len() / 2],
        lookup_p99_us: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
    })
}
