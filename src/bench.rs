//! The measurement programs behind `kvtier bench ...`: each compares kvtier against the ceiling
//! of the same machine measured in the same run, and reports both and their ratio.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::block::BlockObject;
use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::key::{BlockKey, Namespace, NamespaceParams};
use crate::layout::KvDtype;
use crate::tier::io::{open_file, IoMode};
use crate::tier::segment::{SegmentStore, SegmentStoreConfig};

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
        let _ = std::fs::remove_dir_all(&self.0);
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
