//! `kvtier bench ...`: measure kvtier against the machine's ceilings and real peers (the programs
//! are in `kvtier-bench`; this file parses their arguments and prints their tables).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kvtier_core::error::{Error, Result};
use kvtier_core::tier::io::IoMode;

use crate::parse_size;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Segment store put/get against raw O_DIRECT I/O of the same bytes, in one run.
    Disk(DiskArgs),
    /// Block-key hashing throughput on one core.
    Keys(KeyBenchArgs),
    /// Save/load through the agent against single-thread memcpy; lookup latency.
    Abi(AbiArgs),
    /// Pool server put/get over loopback TCP against the disk's ceiling and real peers.
    Pool(PoolBenchArgs),
    /// Median TTFT under real vLLM (CPU) at 2k/4k/8k tokens: miss, kvtier hit (same and other
    /// replica, and through an arena smaller than the request), ExampleConnector hit, vLLM's
    /// prefix cache, and the copy and disk bounds. Runs scripts/bench_ttft.sh; every argument
    /// after `ttft` goes to it (`--kv-heavy --sizes 8192 --rounds 5 --arena-bytes 4GiB --json`).
    Ttft(TtftArgs),
    /// A trace replayed at its own rate (or faster) through a real agent and two pool servers
    /// with replication 2 while a pool server and the agent are killed and restarted and bytes
    /// are flipped on disk: requests, hit ratio, wrong bytes, calls past their deadline,
    /// latency, and each process's memory and descriptors at start and end.
    Soak(SoakArgs),
}

#[derive(Args)]
pub struct SoakArgs {
    /// The trace (Mooncake format).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mooncake_conversation_trace.jsonl"))]
    trace: PathBuf,
    /// Tokens per trace block.
    #[arg(long, default_value_t = 512)]
    block_tokens: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 1800)]
    seconds: u64,
    /// Replay speed (1: the trace's own rate).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Engine threads.
    #[arg(long, default_value_t = 2)]
    engines: usize,
    /// Payload bytes of one block.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    object_bytes: u64,
    /// The agent's arena (smaller than the trace's working set).
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    arena_bytes: u64,
    /// Each pool server's capacity (smaller than the trace).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pool_bytes: u64,
    /// Seconds between faults (0: none).
    #[arg(long, default_value_t = 20)]
    fault_every: u64,
    /// Where the processes keep their data (a fresh directory under it, removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TtftArgs {
    /// Arguments for scripts/bench_ttft.py.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct PoolBenchArgs {
    /// Directory on the disk to measure (the pool's data and the raw baseline's file).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Object sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256KiB,1MiB,4MiB", value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Requests in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Bytes per phase and round.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    total: u64,
    /// Rounds: each phase (raw disk, kvtier, every peer) runs once per round, in turn, and
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure a running pool server (`host:port`) instead of starting one.
    #[arg(long)]
    pool: Option<String>,
    /// Its shared secret file.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Also measure raw O_DIRECT writes while loopback TCP traffic runs beside them: what a
    /// writer whose bytes cross this machine's network stack can get from the disk.
    #[arg(long)]
    beside_tcp: bool,
    /// The client's transport: tcp, or ucx (built with feature `ucx`; the bench's server then
    /// serves UCX too; pick UCX's transports with `UCX_TLS`).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Peers to run beside kvtier (each started by the bench on loopback): mooncake, lmcache,
    /// redis. Their venvs come from scripts/setup_peers.sh.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Folder of the peers' venvs.
    #[arg(long, default_value = "/var/cache/kvtier/peers")]
    peers_venvs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct AbiArgs {
    /// Blocks (2 MiB each) per save/load round.
    #[arg(long, default_value_t = 128)]
    blocks: usize,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Lookups of a 128-block prefix timed for the percentiles.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DiskArgs {
    /// Directory on the disk to measure (a scratch folder is created inside and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Payload bytes per object (e.g. 2MiB, 256KiB).
    #[arg(long, default_value = "2MiB", value_parser = parse_size)]
    object_size: u64,
    /// Bytes per phase and round.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    total: u64,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent requests, for the raw baseline and the store alike.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// I/O engine: auto, psync or io_uring.
    #[arg(long, default_value = "auto")]
    io: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KeyBenchArgs {
    /// Tokens per prompt.
    #[arg(long, default_value_t = 131_072)]
    prompt_tokens: usize,
    /// Seconds to measure each block size.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs one benchmark.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Disk(a) => bench_disk(a),
        BenchCmd::Keys(a) => bench_keys(a),
        BenchCmd::Abi(a) => bench_abi(a),
        BenchCmd::Pool(a) => bench_pool(a),
        BenchCmd::Ttft(a) => bench_ttft(a),
        BenchCmd::Soak(a) => bench_soak(a),
    }
}

fn bench_disk(a: DiskArgs) -> Result<()> {
    if a.object_size == 0 || a.total < a.object_size {
        return Err(Error::invalid(
            "--object-size must be at least 1 byte and --total at least one object",
        ));
    }
    let opts = kvtier_bench::DiskBenchOptions {
        dir: a.dir,
        object_bytes: a.object_size as usize,
        total_bytes: a.total,
        rounds: a.rounds,
        threads: a.threads,
        io: IoMode::parse(&a.io)?,
    };
    let r = kvtier_bench::disk(&opts, |msg| eprintln!("kvtier bench disk: {msg}"))?;
    if a.json {
        crate::print_json(&r);
        return Ok(());
    }
    println!(
        "disk bench: {} objects of {} KiB per phase, {} thread(s), io={}, O_DIRECT={}",
        r.objects,
        r.object_bytes >> 10,
        r.threads,
        r.io,
        r.direct
    );
    println!("{:<12} {:>10}   rounds (GB/s)", "phase", "GB/s");
    for p in &r.phases {
        let rounds: Vec<String> = p.rounds.iter().map(|x| format!("{x:.2}")).collect();
        println!("{:<12} {:>10.2}   {}", p.name, p.gbps, rounds.join(" "));
    }
    println!("put / raw write: {:.2}", r.put_ratio);
    println!("get / raw read:  {:.2}", r.get_ratio);
    Ok(())
}

fn bench_abi(a: AbiArgs) -> Result<()> {
    let opts = kvtier_bench::AbiBenchOptions {
        blocks: a.blocks,
        rounds: a.rounds,
        lookups: a.lookups,
    };
    let r = kvtier_bench::abi(&opts, |m| eprintln!("kvtier bench abi: {m}"))?;
    if a.json {
        crate::print_json(&r);
        return Ok(());
    }
    println!("abi bench: {} blocks of {} KiB per round, agent in-process (memory only), one engine thread", r.blocks, r.object_bytes >> 10);
    println!("memcpy (1 thread)  {:>7.2} GB/s", r.memcpy_gbps);
    println!(
        "save               {:>7.2} GB/s   {:.2} of memcpy",
        r.save_gbps, r.save_ratio
    );
    println!(
        "load               {:>7.2} GB/s   {:.2} of memcpy",
        r.load_gbps, r.load_ratio
    );
    println!(
        "lookup, 128 blocks p50 {:.0} us, p99 {:.0} us",
        r.lookup_p50_us, r.lookup_p99_us
    );
    Ok(())
}

fn bench_ttft(a: TtftArgs) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?;
    let lib = exe.with_file_name("libkvtier.so");
    if !lib.exists() {
        return Err(Error::invalid(format!(
            "{} is missing: build it beside this binary with `cargo build --release -p kvtier-ffi`",
            lib.display()
        )));
    }
    let status = std::process::Command::new(root.join("scripts/bench_ttft.sh"))
        .args(&a.args)
        .env("KVTIER_BIN", &exe)
        .env("KVTIER_LIB", &lib)
        .status()
        .map_err(|e| Error::io("running scripts/bench_ttft.sh", e))?;
    if !status.success() {
        return Err(Error::invalid(format!("the TTFT bench failed ({status})")));
    }
    Ok(())
}

fn bench_pool(a: PoolBenchArgs) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let opts = kvtier_bench::pool::PoolBenchOptions {
        dir: a.dir,
        sizes: a.sizes.iter().map(|&s| s as usize).collect(),
        concurrency: a.concurrency,
        total_bytes: a.total,
        rounds: a.rounds,
        pool: a.pool,
        secret: a
            .secret_file
            .as_deref()
            .map(kvtier_pool::auth::read_secret)
            .transpose()?,
        server_exe: std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?,
        transport: kvtier_pool::client::Transport::parse(&a.transport)?,
        beside_tcp: a.beside_tcp,
        peers: a.peers,
        peers_script: root.join("benches/peers/peer_bench.py"),
        peers_venvs: a.peers_venvs,
    };
    let r = kvtier_bench::pool::pool(&opts, |m| eprintln!("kvtier bench pool: {m}"))?;
    if a.json {
        crate::print_json(&r);
        return Ok(());
    }
    println!(
        "{:<9} {:<11} {:>9} {:>5} {:>8} {:>10} {:>10} {:>9}",
        "system", "op", "size", "conc", "GB/s", "p50 us", "p99 us", "verified"
    );
    for row in &r.rows {
        println!(
            "{:<9} {:<11} {:>6} KiB {:>5} {:>8.2} {:>10.0} {:>10.0} {:>9}",
            row.system,
            row.op,
            row.size >> 10,
            row.concurrency,
            row.gbps,
            row.p50_us,
            row.p99_us,
            row.verified
        );
    }
    // Ratios, like against like, per size and concurrency.
    let find = |sys: &str, op: &str, size: usize, c: usize| {
        r.rows
            .iter()
            .find(|x| x.system == sys && x.op == op && x.size == size && x.concurrency == c)
            .map(|x| x.gbps)
    };
    for size in &opts.sizes {
        for &c in &opts.concurrency {
            let mut parts = Vec::new();
            let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>| {
                if let (Some(a), Some(b)) = (a, b) {
                    parts.push(format!("{name} {:.2}", a / b));
                }
            };
            // kvtier's op against a reference row (system, op).
            for (ours, sys, op) in [
                ("put", "disk", "raw_write"),
                ("put", "disk", "raw_write_beside_tcp"),
                ("get_disk", "disk", "raw_read"),
                ("put", "minimal", "put"),
                ("get_disk", "minimal", "get"),
            ] {
                let name = match sys {
                    "disk" => format!("{ours}/{op}"),
                    _ => format!("{ours}/{sys}_{op}"),
                };
                ratio(
                    &name,
                    find("kvtier", ours, *size, c),
                    find(sys, op, *size, c),
                );
            }
            for p in ["mooncake", "lmcache", "redis"] {
                ratio(
                    &format!("get_cached/{p}_get"),
                    find("kvtier", "get_cached", *size, c),
                    find(p, "get", *size, c),
                );
                ratio(
                    &format!("put/{p}_put"),
                    find("kvtier", "put", *size, c),
                    find(p, "put", *size, c),
                );
            }
            if !parts.is_empty() {
                println!("{} KiB, {c} in flight: {}", size >> 10, parts.join(", "));
            }
        }
    }
    // Against the disk's ceiling: the best raw figure at any concurrency, per size.
    let best = |sys: &str, op: &str, size: usize| {
        r.rows
            .iter()
            .filter(|x| x.system == sys && x.op == op && x.size == size)
            .max_by(|a, b| a.gbps.total_cmp(&b.gbps))
            .map(|x| (x.gbps, x.concurrency))
    };
    // And against the minimal put/get over loopback TCP (what the network and the disk give
    // together on this machine).
    for &size in &opts.sizes {
        for (ours, sys, raw, what) in [
            ("put", "disk", "raw_write", "disk ceiling"),
            ("get_disk", "disk", "raw_read", "disk ceiling"),
            ("put", "minimal", "put", "loopback TCP + disk ceiling"),
            ("get_disk", "minimal", "get", "loopback TCP + disk ceiling"),
        ] {
            if let (Some((a, ca)), Some((b, cb))) =
                (best("kvtier", ours, size), best(sys, raw, size))
            {
                println!(
                    "{} KiB: best {ours} {a:.2} GB/s ({ca} in flight) / {what} {sys} {raw} {b:.2} GB/s ({cb} in flight) = {:.2}",
                    size >> 10,
                    a / b
                );
            }
        }
    }
    for (p, why) in &r.skipped {
        println!("skipped {p}: {why}");
    }
    Ok(())
}

fn bench_keys(a: KeyBenchArgs) -> Result<()> {
    let rows = kvtier_bench::keys(a.prompt_tokens, a.seconds)?;
    if a.json {
        crate::print_json(&rows);
        return Ok(());
    }
    println!(
        "block-key hashing, one core, {}-token prompt",
        a.prompt_tokens
    );
    println!("{:>16} {:>12} {:>14}", "tokens/block", "GB/s", "ns/block");
    for r in rows {
        println!(
            "{:>16} {:>12.2} {:>14.1}",
            r.tokens_per_block, r.gbps, r.ns_per_block
        );
    }
    Ok(())
}

fn bench_soak(a: SoakArgs) -> Result<()> {
    let dir = a.dir.join(format!("kvtier-soak-{}", std::process::id()));
    let opts = kvtier_bench::soak::SoakOptions {
        trace: a.trace,
        block_tokens: a.block_tokens,
        duration: std::time::Duration::from_secs(a.seconds),
        speed: a.speed,
        engines: a.engines,
        object_bytes: a.object_bytes as usize,
        arena_bytes: a.arena_bytes,
        pool_bytes: a.pool_bytes,
        fault_every: std::time::Duration::from_secs(a.fault_every),
        dir: dir.clone(),
        exe: std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?,
    };
    let r = kvtier_bench::soak::soak(&opts, |m| eprintln!("kvtier bench soak: {m}"));
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    if a.json {
        crate::print_json(&r);
        return Ok(());
    }
    let ratio = r.hits as f64 / r.blocks.max(1) as f64;
    println!(
        "seconds {:.0}, requests {}, blocks asked {}, hits {} ({:.1}%), saved {}",
        r.seconds,
        r.requests,
        r.blocks,
        r.hits,
        ratio * 100.0,
        r.saved
    );
    println!(
        "wrong blocks {}, calls past their deadline {}, failed calls {}",
        r.wrong_blocks, r.past_deadline, r.failed_calls
    );
    println!(
        "save p50 {:.2} ms p99 {:.2} ms; load p50 {:.2} ms p99 {:.2} ms",
        r.save_ms.0, r.save_ms.1, r.load_ms.0, r.load_ms.1
    );
    for (k, n) in &r.faults {
        println!("fault {k}: {n}");
    }
    for p in &r.processes {
        println!(
            "{:<7} RSS {} -> {} KiB, fds {} -> {}, restarts {}",
            p.name, p.rss_kib.0, p.rss_kib.1, p.fds.0, p.fds.1, p.restarts
        );
    }
    if r.wrong_blocks > 0 || r.past_deadline > 0 {
        return Err(Error::new(
            kvtier_core::ErrorKind::Corrupt,
            format!(
                "{} wrong blocks, {} calls past their deadline",
                r.wrong_blocks, r.past_deadline
            ),
        ));
    }
    Ok(())
}
